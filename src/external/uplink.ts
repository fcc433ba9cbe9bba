/**
 * The hub's own connection to an external broker (`--broker`): one privileged MQTT client
 * with a persistent session. MQTT 5 where the broker speaks it, else 3.1.1 (Aedes and NATS
 * answer an MQTT 5 CONNECT with "unacceptable protocol version"). It subscribes to what the
 * hub reads, again after every reconnect that lost the session, and tells whether the
 * broker can be reached now: while it cannot, the hub answers BROKER_UNAVAILABLE.
 */
import { EventEmitter } from 'node:events';
import { Socket } from 'node:net';
import type { IClientOptions, IConnackPacket, IClientPublishOptions, IPublishPacket, MqttClient } from 'mqtt';
import { connectMqtt } from './mqtt-connect.js';
import { StartError } from '../errors.js';
import { brokerEndpoint, failoverOptions } from './broker-urls.js';
import type { Logger } from '../log.js';

export interface UplinkCredentials {
  username?: string;
  password?: string;
  /** PEM texts, already read and checked. */
  ca?: string;
  cert?: string;
  key?: string;
}

/** The credentials as MQTT.js options, leaving out those not given. */
export function credentialOptions({ username, password, ca, cert, key }: UplinkCredentials): IClientOptions {
  return {
    ...(username !== undefined ? { username } : {}),
    ...(password !== undefined ? { password } : {}),
    ...(ca !== undefined ? { ca } : {}),
    ...(cert !== undefined ? { cert } : {}),
    ...(key !== undefined ? { key } : {}),
  };
}

/** A clean DISCONNECT, or the socket cut after 2 s when the broker does not take it. */
export function endGracefully(client: MqttClient): Promise<void> {
  return new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      client.end(true);
      resolve();
    }, 2000);
    client.end(false, {}, () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

export interface UplinkSubscription {
  filter: string;
  qos: 0 | 1;
}

/** What the broker said of itself in its CONNACK. */
export interface BrokerAbilities {
  protocolVersion: 4 | 5;
  /**
   * MQTT 5 brokers say so in the CONNACK (absent means yes); of a 3.1.1 broker nothing is
   * known, and NATS, which speaks only 3.1.1, takes `$share/…` for a plain topic name.
   */
  sharedSubscriptions: boolean;
}

export interface UplinkOptions extends UplinkCredentials {
  /** The broker's URL, or its nodes' (brokerUrls), tried in turn. */
  urls: readonly string[];
  clientId: string;
  log: Logger;
  subscriptions: (broker: BrokerAbilities) => readonly UplinkSubscription[];
  onMessage: (topic: string, payload: Buffer, packet: IPublishPacket) => void;
  /** How long the first connection may take before the start fails (default 10 s). */
  connectTimeoutMs?: number;
  /** Retry period after a lost connection (default 1 s). */
  reconnectPeriodMs?: number;
  keepaliveS?: number;
  /** How long a QoS 1 publish may wait for the broker's acknowledgement before the hub reconnects to send it again (default 10 s). */
  ackTimeoutMs?: number;
  /**
   * False for one of several hubs: a session that outlived the hub would stay a member of
   * the shared subscription, and the broker would go on queueing that hub's share of the
   * Requests for it while it is dead (Mosquitto does). Default true.
   */
  persistentSession?: boolean;
}

export interface UplinkEvents {
  /** Connected; `sessionPresent` false means the broker forgot the session (and its subscriptions). */
  up: [{ sessionPresent: boolean }];
  down: [reason: string];
}

const DEFAULT_ACK_TIMEOUT_MS = 10_000;
/** Failed publishes kept for the next connection; past that they fail. */
const UNSENT_KEPT = 10_000;
/** Never expires: as 3.1.1's clean = false, the broker keeps the hub's subscriptions and queue across a restart of the hub. */
const SESSION_NEVER_EXPIRES = 0xffffffff;
/** MQTT 3.1.1 CONNACK return code and MQTT 5 reason code for "unsupported protocol version". */
const UNACCEPTABLE_PROTOCOL = new Set([1, 0x84]);
const BAD_CREDENTIALS = new Set([4, 5, 0x86, 0x87, 0x8c]);

/**
 * What the hub writes while handling one read from the broker leaves in one write: the socket
 * is corked as data arrives and uncorked once the loop has run all that data caused
 * (setImmediate comes after this turn's ticks and promise jobs). MQTT.js alone flushes after
 * each packet it handles; on the one connection that carries all traffic, those write calls
 * (on loopback they carry the broker's receive work too) were the largest single cost.
 * outbound.ts corks each embedded connection per round the same way, from its first write;
 * they stay apart because a shared wrapper split out of its governWrites slowed the embedded
 * hot path (1.55-1.59 to 1.67-1.72 hub CPU s per 10000 round trips, alternating bench runs).
 */
function coalesceWrites(socket: Socket): void {
  let corked = false;
  const uncork = () => {
    corked = false;
    socket.uncork();
  };
  socket.prependListener('data', () => {
    if (corked) return;
    corked = true;
    socket.cork();
    setImmediate(uncork);
  });
}

/** Whether the broker takes `$share/…` (MQTT 5 CONNACK; absent means yes, and 3.1.1 says nothing). */
function sharedSubscriptionsOf(version: 4 | 5, connack: IConnackPacket): boolean {
  return version === 5 && connack.properties?.sharedSubscriptionAvailable !== false;
}

/** Errors of a node that cannot be reached (as against one that refuses the hub). */
const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNRESET', 'ETIMEDOUT']);

type ErrorWithCode = Error & { code?: string | number };

/** What a failed first connect means, as the one start line naming the flag to fix. */
export function startProblem(error: ErrorWithCode, url: string): string {
  const code = error.code;
  if (typeof code === 'number' && BAD_CREDENTIALS.has(code)) {
    return `--broker-username/--broker-password-file: ${url} refused the hub's credentials (${error.message})`;
  }
  if (typeof code === 'string' && /CERT|SSL|TLS|SELF_SIGNED|UNABLE_TO_VERIFY|ALTNAME/.test(code)) {
    return `--broker-ca: the TLS handshake with ${url} failed (${code}: ${error.message}); give the CA that signed the broker's certificate, and --broker-cert/--broker-key if it asks for one`;
  }
  if (typeof code === 'string' && ['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNRESET', 'ETIMEDOUT'].includes(code)) {
    return `--broker ${url}: cannot connect (${code})`;
  }
  return `--broker ${url}: cannot connect (${error.message})`;
}

export class Uplink extends EventEmitter<UplinkEvents> {
  /** 5 or 4, as the broker accepted. */
  protocolVersion: 4 | 5 = 5;
  /** Set by every CONNACK. */
  sharedSubscriptions = false;
  private client!: MqttClient;
  private closing = false;
  private lastDown = 'not connected yet';
  /** Connected since the last 'down' was told (so a run of failed retries tells it once). */
  private wasUp = false;
  /** QoS 1 publishes not yet acknowledged: sequence number → when published (oldest first). */
  private readonly unacked = new Map<number, number>();
  private publishSeq = 0;
  /** The latest publish (by sequence number) the broker has acknowledged. */
  private lastAckedSeq = 0;
  /** Publishes a closing connection failed, sent again once connected. */
  private unsent: { topic: string; payload: Buffer | string; options: IClientPublishOptions; done?: (error?: Error) => void }[] = [];
  private connectedAt = 0;
  private readonly ackTimeoutMs: number;
  private readonly ackTimer: NodeJS.Timeout;

  private constructor(private readonly options: UplinkOptions) {
    super();
    this.ackTimeoutMs = options.ackTimeoutMs ?? DEFAULT_ACK_TIMEOUT_MS;
    this.ackTimer = setInterval(() => this.checkAcks(), Math.min(1000, this.ackTimeoutMs / 2));
    this.ackTimer.unref();
  }

  /** Connects (MQTT 5, else 3.1.1) and subscribes; a failure is a StartError naming the flag. */
  static async open(options: UplinkOptions): Promise<Uplink> {
    const uplink = new Uplink(options);
    try {
      await uplink.firstConnect();
    } catch (error) {
      clearInterval(uplink.ackTimer);
      throw error;
    }
    return uplink;
  }

  get connected(): boolean {
    return this.client.connected;
  }

  /** The URL of the node the hub is (or was last) connected to. */
  get url(): string {
    const { urls } = this.options;
    const { host, port } = this.client.options;
    return urls.find((url) => { const at = brokerEndpoint(url); return at.host === host && at.port === port; }) ?? urls[0]!;
  }

  /** Why it is down (for /readyz and logs), or null when connected. */
  get unavailableReason(): string | null {
    return this.client.connected ? null : this.lastDown;
  }

  /** Publishes; MQTT.js keeps QoS 1 messages across a drop and sends them on reconnect. */
  publish(topic: string, payload: Buffer | string, options: IClientPublishOptions, done?: (error?: Error) => void): void {
    if (!options.qos) {
      this.client.publish(topic, payload, options, (error) => done?.(error ?? undefined));
      return;
    }
    const seq = ++this.publishSeq;
    this.unacked.set(seq, Date.now());
    this.client.publish(topic, payload, options, (error) => {
      this.unacked.delete(seq);
      if (!error && seq > this.lastAckedSeq) this.lastAckedSeq = seq;
      // MQTT.js keeps a QoS 1 message across a drop, except one published while it replayed
      // its store after a connect: a close then fails it ("Connection closed") and forgets it.
      if (error && !this.closing && this.unsent.length < UNSENT_KEPT) {
        this.unsent.push({ topic, payload, options, done });
        return;
      }
      done?.(error ?? undefined);
    });
  }

  /**
   * A broker node can keep the connection up and still lose what it was given: NATS, while its
   * JetStream stream moves to a new leader, takes a QoS 1 publish and never acknowledges it.
   * MQTT sends unacknowledged messages again only on a new connection, so one left waiting
   * longer than `ackTimeoutMs` while later ones were acknowledged ends this connection: MQTT.js reconnects (to the next node of
   * --broker) and sends it again; devices drop a command id they have already run.
   */
  private checkAcks(): void {
    const oldest = this.unacked.entries().next();
    if (oldest.done || !this.client.connected) return;
    const [seq, sentAt] = oldest.value;
    // A busy broker acknowledges in order, only late: the message is lost only when later ones were acknowledged past it.
    if (this.lastAckedSeq < seq) return;
    const waited = Date.now() - Math.max(sentAt, this.connectedAt);
    if (waited < this.ackTimeoutMs) return;
    this.options.log.warn({ code: 'BROKER_NO_ACK', broker: this.url, waitingMs: waited, unacknowledged: this.unacked.size }, 'the broker has not acknowledged a message: reconnecting to send it again');
    this.client.stream.destroy();
  }

  async close(): Promise<void> {
    this.closing = true;
    clearInterval(this.ackTimer);
    await endGracefully(this.client);
  }

  private clientOptions(version: 4 | 5): IClientOptions {
    const { clientId, keepaliveS } = this.options;
    const persistent = this.options.persistentSession ?? true;
    return {
      clientId,
      protocolVersion: version,
      clean: !persistent,
      ...(version === 5 && persistent ? { properties: { sessionExpiryInterval: SESSION_NEVER_EXPIRES } } : {}),
      keepalive: keepaliveS ?? 30,
      reconnectPeriod: 0,
      connectTimeout: this.options.connectTimeoutMs ?? 10_000,
      // MQTT.js logs every packet through `debug`, which costs even when off.
      log: () => {},
      // Subscriptions are made here, on every connect that lost the session.
      resubscribe: false,
      ...credentialOptions(this.options),
    };
  }

  /** The first URL that answers, in order; a node that cannot be reached makes way for the next. */
  private async firstConnect(): Promise<void> {
    const { urls } = this.options;
    const unreachable: string[] = [];
    for (const [index, url] of urls.entries()) {
      const error = await this.tryConnect(url, index);
      if (error === null) {
        if (unreachable.length > 0) this.options.log.warn({ unreachable }, 'broker nodes not reached at start; the hub joined the next');
        return;
      }
      // Refused credentials or a bad certificate are the same on every node: say so now.
      if (urls.length === 1 || !UNREACHABLE.has(String(error.code))) throw new StartError(startProblem(error, url), { cause: error });
      unreachable.push(`${url} (${error.code})`);
    }
    throw new StartError(`--broker: none of its URLs could be reached: ${unreachable.join(', ')}`);
  }

  /** Connects to `url` (MQTT 5, else 3.1.1) with the others to fall back on later: null when connected. */
  private async tryConnect(url: string, index: number): Promise<ErrorWithCode | null> {
    for (const version of [5, 4] as const) {
      const client = connectMqtt(url, { ...this.clientOptions(version), ...failoverOptions(this.options.urls, index) });
      const outcome = await new Promise<{ ok: true; sessionPresent: boolean } | { ok: false; error: ErrorWithCode }>((resolve) => {
        client.once('connect', (connack) => {
          this.sharedSubscriptions = sharedSubscriptionsOf(version, connack);
          resolve({ ok: true, sessionPresent: connack.sessionPresent });
        });
        client.once('error', (error) => resolve({ ok: false, error }));
        client.once('close', () => resolve({ ok: false, error: Object.assign(new Error('connection closed before CONNACK'), { code: 'ECONNRESET' }) }));
      });
      if (outcome.ok) {
        this.protocolVersion = version;
        this.client = client;
        this.attach(client);
        await this.connected$(outcome.sessionPresent);
        return null;
      }
      client.end(true);
      if (version === 5 && typeof outcome.error.code === 'number' && UNACCEPTABLE_PROTOCOL.has(outcome.error.code)) continue;
      return outcome.error;
    }
    return Object.assign(new Error('the broker speaks neither MQTT 5 nor 3.1.1'), { code: 'UNSUPPORTED_PROTOCOL' });
  }

  private attach(client: MqttClient): void {
    const { log } = this.options;
    // From now on MQTT.js reconnects by itself; the outgoing store (QoS 1 in flight) survives.
    client.options.reconnectPeriod = this.options.reconnectPeriodMs ?? 1000;
    client.on('connect', (connack) => {
      this.sharedSubscriptions = sharedSubscriptionsOf(this.protocolVersion, connack);
      void this.connected$(connack.sessionPresent);
    });
    client.on('message', (topic, payload, packet) => {
      try {
        this.options.onMessage(topic, payload, packet);
      } catch (error) {
        // One bad message must not take the hub's connection down.
        log.error({ err: error, topic }, 'error while handling a message from the broker');
      }
    });
    client.on('error', (error) => {
      this.lastDown = (error as ErrorWithCode).code ? `${(error as ErrorWithCode).code}: ${error.message}` : error.message;
      log.warn({ broker: this.url, err: error.message }, 'broker connection error');
    });
    client.on('close', () => {
      if (this.closing || !this.wasUp) return;
      this.wasUp = false;
      if (this.lastDown === 'connected') this.lastDown = 'connection lost';
      log.warn({ broker: this.url, reason: this.lastDown }, 'broker unreachable: requests get BROKER_UNAVAILABLE until it is back');
      this.emit('down', this.lastDown);
    });
  }

  private async connected$(sessionPresent: boolean): Promise<void> {
    const { log } = this.options;
    const url = this.url;
    const subscriptions = this.options.subscriptions({ protocolVersion: this.protocolVersion, sharedSubscriptions: this.sharedSubscriptions });
    if (this.client.stream instanceof Socket) {
      // Commands and Replies are small and latency-bound (Nagle with delayed ACK adds tens of ms).
      this.client.stream.setNoDelay(true);
      coalesceWrites(this.client.stream);
    }
    if (!sessionPresent) {
      const granted = await this.client.subscribeAsync(
        subscriptions.map((s) => s.filter),
        // Retain-handling 0 (MQTT 5): retained presences and statuses come with the subscription.
        { qos: 1 },
      );
      const refused = granted.filter((g) => (g.qos & 0x80) !== 0).map((g) => g.topic);
      if (refused.length > 0) log.error({ broker: url, refused }, 'the broker refused subscriptions the hub needs: give its client the rights docs/external-broker.md lists');
    }
    this.lastDown = 'connected';
    this.wasUp = true;
    this.connectedAt = Date.now();
    const unsent = this.unsent.splice(0);
    if (unsent.length > 0) log.info({ broker: url, messages: unsent.length }, 'sending again what the last connection failed to send');
    for (const message of unsent) this.publish(message.topic, message.payload, message.options, message.done);
    log.info({ broker: url, mqtt: this.protocolVersion === 5 ? '5' : '3.1.1', session: sessionPresent ? 'resumed' : 'new' }, 'connected to the broker');
    this.emit('up', { sessionPresent });
  }
}
