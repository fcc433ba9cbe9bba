/**
 * hypha, the device agent: connects out to the hub over MQTT (so a device behind NAT
 * needs no open port), receives Commands on its command topic, runs them with the
 * Runner and publishes each Response (PROTOCOL.md "Device topics"). It also serves the
 * tunnels the hub relays to it (shells, file transfers, TCP forwards: src/hypha/tunnels),
 * and announces itself with a birth and a will on its presence topic (src/hypha/presence.ts),
 * which is all a hub attached to someone else's broker learns of its connections.
 */
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { connect, type IClientOptions, type MqttClient } from 'mqtt';
import { idProblem } from '../protocol/ids.js';
import { CommandSchema, parsePayload, PresenceMessageSchema, type Command } from '../protocol/schemas.js';
import { MAX_DEVICE_TAGS, tagProblem } from '../protocol/tags.js';
import { DEFAULT_TOPIC_PREFIX, Topics } from '../protocol/topics.js';
import { applyTarget, brokerTarget, urlProblem, type BrokerTarget } from './broker-urls.js';
import { createLogger, type Logger, type LogLevel } from './log.js';
import type { SelfUpgrade } from './self-upgrade.js';
import type { Gate } from './gate.js';
import { HealthReporter } from './health.js';
import { AGENT_VERSION, birthPayload, judgePresence, newPresenceNonce, offlinePayload } from './presence.js';
import { failureResponse, monotonicNow, Runner, type CommandResponse } from './runner.js';
import { StateApplier } from './state.js';
import { TunnelManager } from './tunnels/index.js';

export const DEFAULT_KEEPALIVE_S = 30;
export const DEFAULT_BACKOFF_BASE_MS = 500;
export const DEFAULT_BACKOFF_CAP_MS = 30_000;
export { SUPPORTED_URL_SCHEMES, urlProblem } from './broker-urls.js';
export const MQTT_VERSIONS = ['auto', 5, 4] as const;
/** 'auto': MQTT 5, or 3.1.1 with a broker that refuses 5 (Aedes, NATS). */
export type MqttVersionSetting = (typeof MQTT_VERSIONS)[number];
/** Command ids remembered to drop QoS 1 redeliveries; the hub never reuses an id, so a short memory suffices. */
const RECENT_IDS_KEPT = 1000;
/** Answers kept for the next connection when a closing one failed them (beyond that, logged and dropped). */
const UNSENT_RESPONSES_KEPT = 1000;
/** On stop: how long killed commands get to end and have their answers published. */
const STOP_COMMANDS_WAIT_MS = 3000;
/** On stop: how long the broker gets to acknowledge the last answers before the connection is cut. */
const STOP_DISCONNECT_WAIT_MS = 2000;
/** A connection that ends sooner than this without an error hints at a duplicate client id. */
const QUICK_CLOSE_MS = 2000;
/** MQTT 5 ends a session at disconnect unless told otherwise; this keeps it like 3.1.1's clean = false. */
const SESSION_NEVER_EXPIRES = 0xffffffff;
/** CONNACK codes for "not this protocol version": 3.1.1's 1 (Aedes and NATS answer an MQTT 5 CONNECT so), MQTT 5's 0x84. */
const PROTOCOL_VERSION_REFUSED = new Set([1, 0x84]);
/** Session takeover (MQTT 5 DISCONNECT reason): another connection logged in with this client id. */
const SESSION_TAKEN_OVER = 0x8e;
/** Nonces of earlier connections remembered, to know this agent's own stale births. */
const PAST_NONCES_KEPT = 64;

export interface AgentOptions {
  /** mqtt://, mqtts://, ws://…/mqtt or wss://…/mqtt; or `urls`. */
  url?: string;
  /**
   * Several brokers (of one cluster, say), each like `url`: a failed attempt or a lost
   * connection moves on to the next, round robin. TLS files apply to all of them.
   */
  urls?: string[];
  /** Default 'auto'. */
  mqttVersion?: MqttVersionSetting;
  id: string;
  /** The device credential; sent as password with the id as username. */
  token?: string;
  topicPrefix?: string;
  /** Seconds. */
  keepalive?: number;
  maxConcurrent?: number;
  maxQueue?: number;
  /** Bytes kept per stream of a command's output. */
  outputCap?: number;
  /**
   * Tags the device declares, published on `P/devices/{id}/telemetry/tags` after every connect
   * (an empty list withdraws earlier ones). Undefined: nothing is declared.
   */
  tags?: string[];
  /**
   * Applies desired state (docs/protocol.md "Desired state"): run with bash for each delta, the
   * delta JSON on stdin and in HYPHA_STATE_DELTA; its stdout, a JSON object of the values now
   * applied, is reported. Undefined: deltas are ignored (said once in the log).
   */
  stateCommand?: string;
  backoffBaseMs?: number;
  backoffCapMs?: number;
  logLevel?: LogLevel;
  /** Replaces the stdout logger (logLevel is then ignored). */
  logger?: Logger;
  /** PEM file of the CA that signed the hub's certificate, for mqtts:// and wss://. */
  caFile?: string;
  /** PEM client certificate for mutual TLS (its CN is the device id), with `keyFile`. */
  certFile?: string;
  /** PEM private key of `certFile`. */
  keyFile?: string;
  /** Source of the backoff jitter, in [0, 1). */
  random?: () => number;
  /** Serve tunnels (shell, file_put, file_get, tcp); default true. False: no tunnel subscription at all. */
  tunnels?: boolean;
  /** Confines file tunnels to this directory (symbolic links followed); unset: any path the agent's user may use. */
  fileRoot?: string;
  /** The largest file a file tunnel moves, in bytes; default 1 GiB. */
  maxFileBytes?: number;
  /** Tunnels open at once on this device; past that an `open` is answered BUSY. Default 32. */
  maxTunnels?: number;
  /** Loads node-pty for shell tunnels; replaceable in tests. */
  loadPty?: () => Promise<unknown>;
  /** How the standalone agent replaces itself (agent_upgrade tunnels); it commits once its command subscription is granted. */
  selfUpgrade?: SelfUpgrade;
  /** Simulated devices (hypha --simulate): one runner for them all, so their commands take turns on this machine. */
  runner?: Runner;
  /** Simulated devices: their state commands take turns too. */
  stateGate?: Gate;
  /**
   * Seconds between health reports on `P/devices/{id}/telemetry/health` (docs/protocol.md
   * "Health telemetry"), the first at the first connect; 0 or unset: none (`hypha` defaults to 60).
   */
  healthIntervalS?: number;
}

export interface AgentEvents {
  /** Every successful connection, the first and each reconnect. */
  connect: [{ sessionPresent: boolean }];
  /** Each retry scheduled after the connection was lost or could not be made; `url` is the one tried next. */
  retry: [{ attempt: number; delayMs: number; reason: string; url: string }];
  /** Each Response handed to MQTT for publishing. */
  response: [CommandResponse];
}

/** Whether a SUBACK refused the filter (MQTT.js reports a refusal as an error that carries the SUBACK). */
function subscriptionRefused(err: Error | null | undefined, granted: { qos: number }[] | undefined): boolean {
  const suback = (err as { packet?: { granted?: (number | { qos: number })[] } } | null | undefined)?.packet;
  const codes = [...(granted ?? []).map((grant) => grant.qos), ...(suback?.granted ?? []).map((grant) => (typeof grant === 'number' ? grant : grant.qos))];
  return codes.some((code) => (code & 0x80) !== 0);
}

/**
 * Full-jitter exponential backoff: uniformly random in [0, min(cap, base·2^attempt)), so a
 * fleet that lost the hub at the same moment does not come back in lockstep.
 */
export function backoffDelay(attempt: number, baseMs: number, capMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(attempt, 40));
  return Math.floor(random() * ceiling);
}

/**
 * The delay after `failures` failed attempts in a row over `urlCount` brokers: moving on to
 * the next broker takes a short jittered delay below the base, and each full round of the list
 * counts as one attempt of the exponential backoff (with one URL: the backoff itself).
 */
export function retryDelay(failures: number, urlCount: number, baseMs: number, capMs: number, random: () => number = Math.random): number {
  if (failures % urlCount !== 0) return backoffDelay(0, baseMs, capMs, random);
  return backoffDelay(failures / urlCount - 1, baseMs, capMs, random);
}

/** The URL as fit for a log line: any password in it is masked. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password) parsed.password = '***';
    return parsed.toString();
  } catch {
    return url;
  }
}

export async function startAgent(options: AgentOptions): Promise<Agent> {
  return new Agent(options);
}

/**
 * MQTT.js internals used for the backoff. MQTT.js only knows a fixed `reconnectPeriod`: on
 * 'close' its own listener calls `_setupReconnect()`, which starts a setInterval of that
 * period (cleared again by `connect()`). `client.reconnect()` is no substitute, as it throws
 * away the outgoing store, and with it unacknowledged answers of the persistent session.
 */
interface ReconnectInternals {
  _clearReconnect(): void;
  _setupReconnect(): void;
}

export class Agent extends EventEmitter<AgentEvents> {
  readonly id: string;
  /** Resolves on the first successful connection; rejects if stop() comes first. */
  readonly firstConnect: Promise<void>;
  private readonly topics: Topics;
  private readonly tags: string[] | undefined;
  private readonly commandTopic: string;
  private readonly responseTopic: string;
  private readonly log: Logger;
  private readonly runner: Runner;
  private readonly recentIds = new RecentIds(RECENT_IDS_KEPT);
  /** Answers a closed connection failed to send, for the next one (sendResponse). */
  private readonly unsent: CommandResponse[] = [];
  private readonly backoff: { baseMs: number; capMs: number; random: () => number };
  private readonly client: MqttClient;
  /** The brokers to try, in turn (one unless several `urls` were given). */
  private readonly targets: BrokerTarget[];
  private targetIndex = 0;
  private readonly mqttVersion: MqttVersionSetting;
  /** With 'auto': the brokers (by index) that refused MQTT 5, so they get 3.1.1 from then on. */
  private readonly speaksOnly311 = new Set<number>();
  /** The refusal of MQTT 5 just seen: the next attempt is 3.1.1 at once, not after a backoff. */
  private versionFallback = false;
  /** The next 'offline' is that fallback's, not worth a warning. */
  private quietOffline = false;
  private readonly credentials: { username?: string; password?: string };
  private readonly presenceTopic: string;
  /** The nonce of the connection being made or held (a new one for every attempt). */
  private nonce = newPresenceNonce();
  private readonly pastNonces: string[] = [];
  private duplicateLogged = false;
  /** Undefined when tunnels are switched off. */
  private readonly tunnels: TunnelManager | undefined;
  private readonly selfUpgrade: SelfUpgrade | undefined;
  /** Undefined when health reports are off. */
  private readonly health: HealthReporter | undefined;
  private readonly tunnelsTopic: string;
  private tunnelsRefusalLogged = false;
  /** Desired state: the deltas the hub sends, applied with --state-command. */
  private readonly state: StateApplier;
  private readonly stateTopic: string;
  private attempt = 0;
  private lastError: string | undefined;
  private connectedAt: number | undefined;
  private stopping: Promise<void> | undefined;
  private settleFirstConnect!: { resolve: () => void; reject: (err: Error) => void };

  constructor(options: AgentOptions) {
    super();
    checkOptions(options);
    this.id = options.id;
    const hasClientCertificate = options.certFile !== undefined;
    this.targets = brokerUrls(options).map((url) => brokerTarget(url, hasClientCertificate));
    this.mqttVersion = options.mqttVersion ?? 'auto';
    this.credentials = options.token !== undefined ? { username: this.id, password: options.token } : {};
    this.topics = new Topics(options.topicPrefix ?? DEFAULT_TOPIC_PREFIX);
    this.tags = options.tags;
    this.commandTopic = this.topics.deviceCommand(this.id);
    this.responseTopic = this.topics.deviceResponse(this.id);
    this.presenceTopic = this.topics.devicePresence(this.id);
    this.log = options.logger ?? createLogger({ level: options.logLevel ?? 'info' });
    this.runner = options.runner ?? new Runner({ maxConcurrent: options.maxConcurrent, maxQueue: options.maxQueue, outputCap: options.outputCap });
    this.backoff = {
      baseMs: options.backoffBaseMs ?? DEFAULT_BACKOFF_BASE_MS,
      capMs: options.backoffCapMs ?? DEFAULT_BACKOFF_CAP_MS,
      random: options.random ?? Math.random,
    };
    this.tunnelsTopic = this.topics.deviceTunnelsIn(this.id);
    this.stateTopic = this.topics.deviceStateDelta(this.id);
    this.state = new StateApplier({ command: options.stateCommand, deviceId: this.id, log: this.log, report: (report) => this.publishStateReport(report), ...(options.stateGate ? { gate: options.stateGate } : {}) });
    this.tunnels =
      options.tunnels === false
        ? undefined
        : new TunnelManager({
            deviceId: this.id,
            topics: this.topics,
            log: this.log,
            publish: (topic, payload) => this.publishFrame(topic, payload),
            fileRoot: options.fileRoot,
            maxFileBytes: options.maxFileBytes,
            maxTunnels: options.maxTunnels,
            loadPty: options.loadPty,
            selfUpgrade: options.selfUpgrade,
          });
    this.selfUpgrade = options.selfUpgrade;
    this.health = options.healthIntervalS ? this.healthReporter(options.healthIntervalS) : undefined;
    void this.tunnels?.probeShells();
    this.firstConnect = new Promise<void>((resolve, reject) => (this.settleFirstConnect = { resolve, reject }));
    // Only callers who await firstConnect care that a stop came first.
    this.firstConnect.catch(() => {});
    this.log.info('starting', { url: this.targets.map((target) => redactUrl(target.url)).join(' '), id: this.id, topic: this.commandTopic });
    const clientOptions = this.clientOptions(options);
    this.prepareAttempt(clientOptions);
    this.client = connect(clientOptions);
    this.listen();
  }

  /** The broker connected to, or tried next. */
  get url(): string {
    return this.target.url;
  }

  /** 5 or 4 (3.1.1): what the current or next connection speaks. */
  get protocolVersion(): 4 | 5 {
    return this.mqttVersion === 4 || this.speaksOnly311.has(this.targetIndex) ? 4 : 5;
  }

  private get target(): BrokerTarget {
    return this.targets[this.targetIndex] as BrokerTarget;
  }

  get connected(): boolean {
    return this.client.connected;
  }

  /** Stops reconnecting, kills running commands (their answers still go out), then disconnects cleanly. */
  stop(): Promise<void> {
    this.stopping ??= this.shutDown();
    return this.stopping;
  }

  private clientOptions(options: AgentOptions): IClientOptions {
    return {
      clientId: this.id,
      // A persistent session: QoS 1 commands sent during a short drop arrive on return.
      clean: false,
      keepalive: options.keepalive ?? DEFAULT_KEEPALIVE_S,
      // Must stay above 0 for MQTT.js to reconnect at all; each retry's real delay is set in onClose.
      reconnectPeriod: this.backoff.baseMs,
      // A refused CONNACK (say, a device not yet registered on the hub) is retried like a lost connection.
      reconnectOnConnackError: true,
      // The command subscription is made on every connect in onConnect, session or not.
      resubscribe: false,
      ...(options.caFile !== undefined ? { ca: readFileSync(options.caFile) } : {}),
      ...(options.certFile !== undefined ? { cert: readFileSync(options.certFile) } : {}),
      ...(options.keyFile !== undefined ? { key: readFileSync(options.keyFile) } : {}),
    };
  }

  /**
   * Points the client at the broker to try now, in the MQTT version it takes, with a will
   * that carries a new nonce (MQTT.js builds each CONNECT and stream from these options).
   */
  private prepareAttempt(options: IClientOptions): void {
    applyTarget(options, this.target, this.credentials);
    this.nonce = newPresenceNonce();
    const version = this.protocolVersion;
    options.protocolVersion = version;
    if (version === 5) options.properties = { ...options.properties, sessionExpiryInterval: SESSION_NEVER_EXPIRES };
    else delete options.properties;
    options.will = { topic: this.presenceTopic, payload: Buffer.from(offlinePayload(this.nonce)), qos: 1, retain: true };
  }

  private listen(): void {
    this.client.on('connect', (connack) => this.onConnect(connack.sessionPresent));
    // Registered after MQTT.js's own 'close' listener, so it runs after that one has set up its fixed-period retry.
    this.client.on('close', () => this.onClose());
    this.client.on('error', (err) => this.onError(err));
    this.client.on('offline', () => {
      // Falling back from MQTT 5 to 3.1.1 (the embedded broker) is no loss of connection.
      if (this.quietOffline) this.quietOffline = false;
      else this.log.warn('offline', { url: redactUrl(this.url) });
    });
    this.client.on('reconnect', () => {
      this.prepareAttempt(this.client.options);
      this.log.debug('reconnecting', { url: redactUrl(this.url), mqtt: this.protocolVersion === 5 ? '5' : '3.1.1' });
    });
    this.client.on('message', (topic, payload, packet) => this.onMessage(topic, payload, packet.retain));
  }

  private onConnect(sessionPresent: boolean): void {
    this.connectedAt = monotonicNow();
    this.lastError = undefined;
    // QoS 1 commands and answers are small and latency-bound; Nagle's algorithm with delayed
    // ACKs adds tens of milliseconds to each. (ws:// sockets get this from the ws library.)
    if (this.client.stream instanceof Socket) this.client.stream.setNoDelay(true);
    this.log.info('connected', { url: redactUrl(this.url), id: this.id, mqtt: this.protocolVersion === 5 ? '5' : '3.1.1', session: sessionPresent ? 'resumed' : 'new' });
    this.subscribeToCommands();
    this.subscribeToTunnels(sessionPresent);
    this.subscribeToState();
    for (const response of this.unsent.splice(0)) this.sendResponse(response);
    this.announce();
    this.declareTags();
    this.health?.start();
    this.settleFirstConnect.resolve();
    this.emit('connect', { sessionPresent });
  }

  /**
   * Made on every connect, even with a resumed session: this subscription is how the hub
   * recognizes a device. Refused (a NATS node that could not create its consumer in time, an
   * ACL), the connection is useless for commands: it is ended and tried again with backoff,
   * which grows until a subscription is granted.
   */
  private subscribeToCommands(): void {
    this.client.subscribe(this.commandTopic, { qos: 1 }, (err, granted) => {
      if (subscriptionRefused(err, granted)) {
        this.log.error('subscription refused by the broker: connecting again', { topic: this.commandTopic });
        this.lastError = `the broker refused the subscription to ${this.commandTopic}`;
        this.client.stream?.destroy();
      } else if (err) {
        this.log.error('subscribe failed', { topic: this.commandTopic, error: err });
      } else {
        this.attempt = 0;
        this.log.debug('subscribed', { topic: this.commandTopic });
        void this.selfUpgrade?.commit().catch((error: unknown) => this.log.warn('cannot commit the agent upgrade', { error }));
      }
    });
  }

  /**
   * Also made on every connect. A hub that predates tunnels refuses the filter (SUBACK 0x80):
   * the agent then simply offers none, and says so once.
   */
  private subscribeToTunnels(sessionPresent: boolean): void {
    if (!this.tunnels) {
      // A session kept from a run with tunnels on still holds the filter, and the hub would
      // take it as an offer that nobody here answers.
      if (sessionPresent) this.client.unsubscribe(this.tunnelsTopic, (err) => err && this.log.debug('unsubscribe failed', { topic: this.tunnelsTopic, error: err }));
      return;
    }
    this.client.subscribe(this.tunnelsTopic, { qos: 1 }, (err, granted) => {
      if (subscriptionRefused(err, granted)) {
        if (!this.tunnelsRefusalLogged) this.log.warn('the hub refused the tunnel subscription: no tunnels on this connection', { topic: this.tunnelsTopic });
        this.tunnelsRefusalLogged = true;
      } else if (err) {
        this.log.error('subscribe failed', { topic: this.tunnelsTopic, error: err });
      } else {
        this.log.debug('subscribed', { topic: this.tunnelsTopic });
      }
    });
  }

  /**
   * The birth, after the presence subscription so that a stale message retained there (an
   * earlier connection's will) arrives first and is then replaced by this one.
   */
  private announce(): void {
    this.client.subscribe(this.presenceTopic, { qos: 1 }, (err) => {
      if (err) this.log.debug('presence subscription failed', { topic: this.presenceTopic, error: err });
    });
    this.publishBirth();
  }

  private publishBirth(): void {
    const birth = birthPayload(this.nonce, this.target.transport, this.tunnels !== undefined);
    this.client.publish(this.presenceTopic, birth, { qos: 1, retain: true }, (err) => {
      if (err) this.log.debug('birth not delivered', { error: err });
    });
  }

  private onPresence(payload: Buffer, retained: boolean): void {
    const parsed = parsePayload(PresenceMessageSchema, payload);
    if (!parsed.ok) return;
    const verdict = judgePresence(parsed.value, { current: this.nonce, retained, isOwn: (nonce) => this.pastNonces.includes(nonce) });
    if (verdict === 'republish') {
      this.log.info('a stale presence message replaced this connection\'s birth: announcing again', { online: parsed.value.online });
      this.publishBirth();
    } else if (verdict === 'duplicate' && !this.duplicateLogged) {
      this.duplicateLogged = true;
      this.log.warn(`another connection announced itself as ${this.id}: is another device using this id?`, { nonce: parsed.value.nonce });
    }
  }

  /** Tunnel frames are QoS 1 like everything else: in order, and queued across a short drop. */
  private publishFrame(topic: string, payload: Buffer): void {
    this.client.publish(topic, payload, { qos: 1 }, (err) => {
      if (err) this.log.debug('tunnel frame not delivered', { topic, error: err });
    });
  }

  /**
   * QoS 0, not retained: a report is about now and the next one replaces it, so a lost one is
   * not worth a PUBACK from every device every minute, and none is queued while the connection
   * is down (the hub stamps each with its arrival time: a late one would be misplaced).
   */
  private healthReporter(intervalS: number): HealthReporter {
    const topic = this.topics.deviceHealth(this.id);
    return new HealthReporter({
      intervalMs: intervalS * 1000,
      version: AGENT_VERSION,
      publish: (payload) => {
        if (!this.client.connected) return false;
        this.client.publish(topic, payload, { qos: 0 });
        return true;
      },
      onError: (error) => this.log.debug('health report not read', { error }),
    });
  }

  /**
   * On every connect, like the others: the retained delta then comes again, so a device that
   * was away when its desired state changed applies it now. A hub that predates desired state
   * refuses the filter; nothing else changes.
   */
  private subscribeToState(): void {
    this.state.connected();
    this.client.subscribe(this.stateTopic, { qos: 1 }, (err, granted) => {
      if (subscriptionRefused(err, granted)) this.log.debug('the hub refused the state delta subscription: no desired state on this connection', { topic: this.stateTopic });
      else if (err) this.log.debug('subscribe failed', { topic: this.stateTopic, error: err });
    });
  }

  /** QoS 1, not retained: a report patches the reported document; a short drop delays it, as with answers. */
  private publishStateReport(report: object): void {
    this.client.publish(this.topics.deviceStateReported(this.id), JSON.stringify(report), { qos: 1 }, (err) => {
      if (err) this.log.warn('state report not delivered', { error: err.message });
    });
  }

  private declareTags(): void {
    if (this.tags === undefined) return;
    this.client.publish(this.topics.deviceTags(this.id), JSON.stringify({ tags: this.tags }), { qos: 1 }, (err) => {
      if (err) this.log.warn('could not declare tags', { error: err });
      else this.log.debug('tags declared', { tags: this.tags });
    });
  }

  private onError(err: Error & { code?: string | number }): void {
    if (this.mqttVersion === 'auto' && this.protocolVersion === 5 && typeof err.code === 'number' && PROTOCOL_VERSION_REFUSED.has(err.code)) {
      this.speaksOnly311.add(this.targetIndex);
      this.versionFallback = true;
      this.quietOffline = true;
      this.log.info('the broker refused MQTT 5: speaking 3.1.1 to it', { url: redactUrl(this.url) });
      return;
    }
    this.lastError = connectionErrorReason(err);
    this.log.debug('connection error', { error: err });
  }

  private onClose(): void {
    if (this.stopping) return;
    // The hub ends a device's tunnels when its connection drops (DEVICE_OFFLINE), so nothing
    // would ever reach them again: end them here too, without a word.
    void this.tunnels?.endAll('disconnect');
    this.rememberNonce();
    if (this.versionFallback) {
      // Same broker, other version, no backoff: this is no failure.
      this.versionFallback = false;
      this.retryIn(1);
      return;
    }
    const delayMs = retryDelay(this.attempt + 1, this.targets.length, this.backoff.baseMs, this.backoff.capMs, this.backoff.random);
    this.attempt += 1;
    // With several brokers, each failure moves on to the next one.
    this.targetIndex = (this.targetIndex + 1) % this.targets.length;
    this.retryIn(delayMs);
    const reason = this.lastError ?? this.closeReason();
    this.lastError = undefined;
    this.connectedAt = undefined;
    this.log.warn('retrying', { in_ms: delayMs, attempt: this.attempt, url: redactUrl(this.url), reason });
    this.emit('retry', { attempt: this.attempt, delayMs, reason, url: this.url });
  }

  private rememberNonce(): void {
    this.pastNonces.push(this.nonce);
    if (this.pastNonces.length > PAST_NONCES_KEPT) this.pastNonces.shift();
  }

  /**
   * A broker drops an MQTT session when another connection takes over its client id, so
   * two devices sharing an id knock each other off within moments of each connect.
   */
  private closeReason(): string {
    if (this.connectedAt === undefined) return this.isTls() ? `connection closed before the hub answered (${CLIENT_CERTIFICATE_HINT})` : 'connection closed';
    const lastedMs = Math.round(monotonicNow() - this.connectedAt);
    if (lastedMs >= QUICK_CLOSE_MS) return 'connection closed';
    return `connection closed ${lastedMs} ms after connecting (is another device using id ${this.id}?)`;
  }

  private isTls(): boolean {
    return this.target.tls;
  }

  /** Replaces the fixed-period retry MQTT.js just set up with one after `delayMs`. */
  private retryIn(delayMs: number): void {
    const internals = this.client as unknown as ReconnectInternals;
    internals._clearReconnect();
    // 0 would mean "never reconnect" to MQTT.js.
    this.client.options.reconnectPeriod = Math.max(1, delayMs);
    internals._setupReconnect();
  }

  private onMessage(topic: string, payload: Buffer, retained: boolean): void {
    if (topic === this.presenceTopic) return this.onPresence(payload, retained);
    if (topic === this.stateTopic) return this.state.onDelta(payload);
    if (topic !== this.commandTopic) return this.onTunnelMessage(topic, payload);
    const receivedAt = monotonicNow();
    const parsed = parsePayload(CommandSchema, payload);
    const id = parsed.ok ? parsed.value.id : readableId(parsed.raw);
    if (id !== null && !this.recentIds.add(id)) {
      this.log.debug('duplicate command dropped', { id });
      return;
    }
    if (parsed.ok) {
      this.run(parsed.value, receivedAt);
    } else if (id !== null) {
      this.log.warn('invalid command', { id, problem: parsed.message });
      this.publishResponse(failureResponse(id, 'BAD_REQUEST', parsed.message));
    } else {
      this.log.warn('unreadable command dropped', { problem: parsed.message, bytes: payload.length });
    }
  }

  private onTunnelMessage(topic: string, payload: Buffer): void {
    if (!this.tunnels) return;
    const parsed = this.topics.parseDeviceTopic(topic);
    if (parsed?.kind !== 'tunnel' || parsed.id !== this.id || parsed.direction !== 'in' || parsed.tunnel === undefined) return;
    this.tunnels.handle(parsed.tunnel, payload);
  }

  private run(cmd: Command, receivedAt: number): void {
    this.log.info('command', { id: cmd.id, order: cmd.order, timeout_ms: cmd.timeout_ms });
    this.log.debug('command text', { id: cmd.id, cmd: cmd.cmd_str });
    void this.runner.submit(cmd, receivedAt).then((response) => this.publishResponse(response));
  }

  private publishResponse(response: CommandResponse): void {
    const { id, exit_code, duration_ms, truncated, code, message } = response;
    this.log.info('response', { id, exit_code, duration_ms, truncated: truncated || undefined, code, message });
    this.sendResponse(response);
    this.emit('response', response);
  }

  /**
   * MQTT.js keeps an unacknowledged answer across a drop, except one published while it was
   * still replaying its store after a connect: if the connection closes then, it fails that
   * publish ("Connection closed") and forgets it. Such answers wait here for the next connect.
   */
  private sendResponse(response: CommandResponse): void {
    this.client.publish(this.responseTopic, JSON.stringify(response), { qos: 1 }, (err) => {
      if (!err) return;
      if (this.stopping !== undefined || this.unsent.length >= UNSENT_RESPONSES_KEPT) {
        this.log.error('response not delivered', { id: response.id, error: err });
        return;
      }
      this.log.warn('response not delivered: sent again on the next connection', { id: response.id, error: err.message });
      this.unsent.push(response);
    });
  }

  private async shutDown(): Promise<void> {
    this.log.info('stopping', { running: this.runner.runningCount, waiting: this.runner.waitingCount });
    this.stopReconnecting();
    this.health?.stop();
    this.runner.killAll();
    // A state command is killed too; its failure is not reported (the delta stays, and is applied at the next start).
    await this.state.stop();
    // Shells are killed and partial uploads deleted; each tunnel's `error` goes out before the disconnect.
    await this.tunnels?.endAll('stop');
    if (!(await settlesWithin(this.runner.settled(), STOP_COMMANDS_WAIT_MS))) {
      this.log.warn('commands still ending at stop');
    }
    await this.disconnect();
    this.settleFirstConnect.reject(new Error('hypha stopped before it connected'));
    this.log.info('stopped');
  }

  private stopReconnecting(): void {
    this.client.options.reconnectPeriod = 0;
    (this.client as unknown as ReconnectInternals)._clearReconnect();
  }

  /**
   * A clean DISCONNECT, so the broker does not publish the will: the agent says it is going
   * offline itself first (a hub on its own broker also sees the disconnect).
   */
  private async disconnect(): Promise<void> {
    if (this.client.connected) this.client.publish(this.presenceTopic, offlinePayload(this.nonce), { qos: 1, retain: true });
    const ended = this.client.endAsync(!this.client.connected);
    if (!(await settlesWithin(ended, STOP_DISCONNECT_WAIT_MS))) {
      this.log.warn('broker did not acknowledge in time, closing the connection');
      this.client.stream?.destroy();
    }
  }
}

/** Node's codes for a hub certificate that no trusted CA vouches for. */
const UNTRUSTED_HUB_CERTIFICATE = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_UNTRUSTED',
]);

/**
 * Node closes a TLS connection whose client certificate it refuses right after the handshake,
 * without a word, so a close before CONNACK over TLS most often means this.
 */
const CLIENT_CERTIFICATE_HINT = 'a hub that requires client certificates closes the connection when --cert is missing or not signed by its CA';

/**
 * A connection error in words that say what to do: certificate problems are the usual
 * first-day trouble with TLS, and OpenSSL's own messages carry file names and line numbers.
 */
export function connectionErrorReason(err: Error & { code?: string | number }): string {
  const message = /:SSL routines:[^:]*:([^:]+):/.exec(err.message)?.[1] ?? err.message.trim();
  if (typeof err.code === 'string' && UNTRUSTED_HUB_CERTIFICATE.has(err.code)) {
    return `${message}: no trusted CA signed the hub certificate (give hypha the hub's CA with --ca FILE)`;
  }
  if (err.code === 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED') return `${message}: the hub requires a client certificate (--cert FILE --key FILE)`;
  if (err.code === 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA' || err.code === 'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE') {
    return `${message}: the hub refused the client certificate (--cert must be signed by the hub's --tls-ca)`;
  }
  return message;
}

/** `urls`, else `url`; at least one. */
function brokerUrls(options: AgentOptions): string[] {
  return options.urls ?? (options.url !== undefined ? [options.url] : []);
}

function checkOptions(options: AgentOptions): void {
  const urls = brokerUrls(options);
  const problems = [
    urls.length === 0 ? 'url or urls is required' : null,
    options.url !== undefined && options.urls !== undefined ? 'give url or urls, not both' : null,
    ...urls.map(urlProblem),
    options.mqttVersion === undefined || (MQTT_VERSIONS as readonly unknown[]).includes(options.mqttVersion) ? null : 'mqttVersion must be auto, 5 or 4',
    prefixed('id', idProblem(options.id)),
    wholeNumberProblem('keepalive', options.keepalive, 0, 65535),
    wholeNumberProblem('backoffBaseMs', options.backoffBaseMs, 1),
    wholeNumberProblem('backoffCapMs', options.backoffCapMs, 1),
    wholeNumberProblem('outputCap', options.outputCap, 0),
    wholeNumberProblem('maxFileBytes', options.maxFileBytes, 0),
    wholeNumberProblem('maxTunnels', options.maxTunnels, 1),
    wholeNumberProblem('healthIntervalS', options.healthIntervalS, 0, 86_400),
    (options.certFile === undefined) !== (options.keyFile === undefined) ? 'certFile and keyFile go together' : null,
    options.tags === undefined ? null : options.tags.length > MAX_DEVICE_TAGS ? `tags: at most ${MAX_DEVICE_TAGS}` : prefixed('tags:', options.tags.map(tagProblem).find((p) => p !== null) ?? null),
  ].filter((problem) => problem !== null);
  if (problems.length > 0) throw new Error(problems.join('; '));
}

function prefixed(name: string, problem: string | null): string | null {
  return problem === null ? null : `${name} ${problem}`;
}

function wholeNumberProblem(name: string, value: number | undefined, min: number, max = Number.MAX_SAFE_INTEGER): string | null {
  if (value === undefined) return null;
  if (!Number.isInteger(value) || value < min || value > max) return `${name} must be a whole number from ${min} to ${max}`;
  return null;
}

/** The id of an invalid command, when it has a usable one, so the hub can be told what was wrong. */
function readableId(raw: unknown): string | null {
  if (raw === null || typeof raw !== 'object') return null;
  const id: unknown = (raw as { id?: unknown }).id;
  return typeof id === 'string' && id.length >= 1 && id.length <= 256 ? id : null;
}

/** True when the promise settled in time (rejections count as settled). */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  const settled = promise.then(
    () => true as const,
    () => true as const,
  );
  try {
    return await Promise.race([settled, timedOut]);
  } finally {
    clearTimeout(timer);
  }
}

/** A bounded memory of recently seen ids, oldest forgotten first. */
class RecentIds {
  private readonly ids = new Set<string>();

  constructor(private readonly capacity: number) {}

  /** False when the id was already there. */
  add(id: string): boolean {
    if (this.ids.has(id)) return false;
    this.ids.add(id);
    if (this.ids.size > this.capacity) {
      const oldest = this.ids.values().next().value;
      if (oldest !== undefined) this.ids.delete(oldest);
    }
    return true;
  }
}
