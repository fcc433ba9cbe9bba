/**
 * The client SDK: talks to a rhizosphere hub over MQTT (docs/protocol.md) and, for fleet
 * jobs, over its REST API. Runs in Node and in browsers (bundled): nothing Node-only is
 * imported here beyond MQTT.js itself.
 *
 *   const hub = await connect('mqtt://hub:1883', { tokenName: 'ops', token: SECRET });
 *   const { result, exitCode } = await hub.device('pi-01').exec('uptime');
 *   await hub.close();
 */
import type { IClientOptions, ISubscriptionGrant, MqttClient } from 'mqtt';
import { idProblem } from '../protocol/ids.js';
import { DEFAULT_TOPIC_PREFIX, Topics } from '../protocol/topics.js';
import { Emitter } from './emitter.js';
import { ClientError, codeOf } from './errors.js';
import { httpUrlFromMqttUrl, Rest } from './rest.js';
import { decodeFrame, FrameError } from '../protocol/tunnel.js';
import { Sha256 } from './sha256.js';
import { Tunnel, type TunnelEnd, type TunnelSpec } from './tunnel.js';
import {
  isJobFinished,
  type ConnectOptions,
  type CreatedJob,
  type Credentials,
  type DeviceSelector,
  type DeviceStatus,
  type ExecOptions,
  type ExecResult,
  type HubClientEvents,
  type JobSpec,
  type JobStatus,
  type JobSummary,
  type JobView,
  type Order,
} from './types.js';
import type { FleetHealth, FleetHealthQuery, HealthQuery, HealthSeries, HealthTime } from './types.js';
import type { DeviceState, JsonValue, SetDesiredOptions } from './types.js';
import type { ArtifactView, ScheduleSpec, ScheduleView } from './types.js';
import type { AlertQuery, AlertRuleSpec, AlertRuleView, AlertView, WebhookSpec, WebhookView } from './types.js';

export { ClientError, type ClientErrorCode } from './errors.js';
export { httpUrlFromMqttUrl } from './rest.js';
export { Sha256 } from './sha256.js';
export { Tunnel, sha256Hex, type TunnelEnd, type TunnelEvents, type TunnelKind, type TunnelSpec } from './tunnel.js';
export * from './types.js';

/** How long past the command's own timeout the SDK waits for the hub's Reply before giving up with TIMEOUT. */
const REPLY_GRACE_MS = 15_000;
const HUB_DEFAULT_TIMEOUT_MS = 60_000;
/** How long close() lets what is being sent finish before it drops the connection anyway. */
const CLOSE_DRAIN_MS = 2000;

/**
 * Connects to a hub. Resolves once the MQTT connection is up and the SDK's subscriptions are in
 * place, or at once with `waitForConnection: false`.
 */
export async function connect(url: string, options: ConnectOptions = {}): Promise<HubClient> {
  if (options.token !== undefined && options.tokenName === undefined) {
    throw new ClientError('BAD_REQUEST', 'tokenName is required with token (the MQTT user name is the API token\'s name)');
  }
  const clientId = options.clientId ?? `sdk-${randomSuffix()}`;
  const problem = idProblem(clientId);
  if (problem) throw new ClientError('BAD_REQUEST', `clientId ${problem}`);
  const topics = new Topics(options.topicPrefix ?? DEFAULT_TOPIC_PREFIX);
  const reconnectPeriodMs = options.reconnectPeriodMs ?? 1000;
  const wait = options.waitForConnection ?? true;
  if (!wait && reconnectPeriodMs <= 0) throw new ClientError('BAD_REQUEST', 'waitForConnection: false needs reconnection (reconnectPeriodMs > 0)');

  const mqttOptions: IClientOptions = {
    connectTimeout: options.connectTimeoutMs ?? 10_000,
    reconnectPeriod: reconnectPeriodMs,
    ...(options.ca !== undefined ? { ca: options.ca as IClientOptions['ca'] } : {}),
    ...options.mqttOptions,
    protocolVersion: 4,
    clientId,
    clean: true,
    ...(options.tokenName !== undefined ? { username: options.tokenName, password: options.token ?? '' } : {}),
  };
  // Loaded here, not with the module: the `rhizosphere` command imports this SDK for its
  // client commands, and the hub it also starts has no use for MQTT.js. The default export:
  // MQTT.js's browser bundle (mqtt/dist/mqtt.esm.js) has no named exports.
  const { default: mqtt } = await import('mqtt');
  const client = mqtt.connect(url, mqttOptions);
  const httpUrl = options.httpUrl ?? httpUrlFromMqttUrl(url);
  const settings: Settings = {
    settleMs: options.settleMs ?? 200,
    statusQos: options.statusQos ?? 1,
    reconnectPeriodMs,
    renewCredentials: options.renewCredentials ?? null,
  };
  if (!wait) {
    const hub = new HubClient(client, clientId, topics, new Rest(httpUrl, options.token), settings);
    hub.startInBackground();
    return hub;
  }
  await firstConnection(client, url);
  const hub = new HubClient(client, clientId, topics, new Rest(httpUrl, options.token), settings);
  try {
    await hub.start();
  } catch (error) {
    await hub.close();
    throw error;
  }
  return hub;
}

/** Waits for the first CONNACK; a refusal or a lost attempt ends the client and rejects. */
function firstConnection(client: MqttClient, url: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let lastError: Error | undefined;
    const done = (error?: ClientError) => {
      client.off('connect', onConnect);
      client.off('error', onError);
      client.off('close', onClose);
      if (!error) return resolve();
      client.end(true);
      reject(error);
    };
    const onConnect = () => done();
    const onError = (error: Error & { code?: number | string }) => {
      lastError = error;
      // CONNACK 4 (bad user name or password) and 5 (not authorized) are final.
      if (error.code === 4 || error.code === 5) done(new ClientError('FORBIDDEN', `the hub refused the connection: ${error.message}`, { cause: error }));
    };
    const onClose = () => done(new ClientError('NOT_CONNECTED', `cannot connect to ${url}${lastError ? `: ${lastError.message}` : ''}`, { cause: lastError }));
    client.on('connect', onConnect);
    client.on('error', onError);
    client.on('close', onClose);
  });
}

interface Settings {
  settleMs: number;
  statusQos: 0 | 1;
  reconnectPeriodMs: number;
  renewCredentials: (() => Promise<Credentials | null>) | null;
}

type TopicHandler = (payload: string, topic: string) => void;

const copyStatus = (status: Readonly<DeviceStatus>): DeviceStatus => ({ ...status, tags: [...status.tags] });
const isString = (value: unknown): value is string => typeof value === 'string';

/** Whether an MQTT topic filter with `+` (one level) and a final `#` (the rest) matches a topic. */
function topicMatches(filter: string, topic: string): boolean {
  const wanted = filter.split('/');
  const levels = topic.split('/');
  for (let i = 0; i < wanted.length; i++) {
    if (wanted[i] === '#') return true;
    if (i >= levels.length || (wanted[i] !== '+' && wanted[i] !== levels[i])) return false;
  }
  return wanted.length === levels.length;
}

/** The selector as a filter over statuses: every key given must match. */
function matches(selector: DeviceSelector): (status: DeviceStatus) => boolean {
  const wanted = selector.devices ? new Set(selector.devices) : null;
  const tags = selector.tags ?? [];
  return (s) =>
    (wanted === null || wanted.has(s.id)) && (selector.online === undefined || s.online === selector.online) && tags.every((t) => s.tags.includes(t));
}

interface Pending {
  device: string;
  resolve: (result: ExecResult) => void;
  reject: (error: ClientError) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** A connection to a hub. Get one from `connect()`. */
export class HubClient extends Emitter<HubClientEvents> {
  /** Fleet jobs (REST for create/get/cancel/list, MQTT for progress). */
  readonly jobs: Jobs;
  /** Schedules: jobs created at a time or on a cron expression (REST; docs/protocol.md "Schedules"). */
  readonly schedules: Schedules;
  /** Files kept on the hub for deploy jobs (REST; docs/protocol.md "Software deployment"). */
  readonly artifacts: Artifacts;
  /** Alerts, their rules and the webhooks they are sent to (REST; docs/protocol.md "Alerts and webhooks"). */
  readonly alerts: Alerts;
  private readonly pending = new Map<string, Pending>();
  private readonly statuses = new Map<string, Readonly<DeviceStatus>>();
  /** Handlers by topic filter; `wildcards` lists the filters that contain + or #. */
  private readonly topicHandlers = new Map<string, Set<TopicHandler>>();
  private wildcards: string[] = [];
  private readonly responseTopic: string;
  /** Open tunnels by the client's tunnel id; their frames come on `tunnelsPrefix{id}/out`. */
  private readonly tunnels = new Map<string, Tunnel>();
  private readonly tunnelsPrefix: string;
  private tunnelSubscription: Promise<void> | null = null;
  private readonly decoder = new TextDecoder();
  private sequence = 0;
  private settled = false;
  private settleTimer: ReturnType<typeof setTimeout> | null = null;
  /** When the last status of the retained burst came (the settle timer is re-armed from it, not per message). */
  private lastStatusAt = 0;
  private readonly settledWaiters: (() => void)[] = [];
  private everConnected: boolean;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private closed = false;

  /** @internal use connect() */
  constructor(
    private readonly client: MqttClient,
    /** This connection's MQTT client id. */
    readonly clientId: string,
    readonly topics: Topics,
    private readonly rest: Rest,
    private readonly settings: Settings,
  ) {
    super();
    this.responseTopic = topics.clientResponse(clientId);
    this.tunnelsPrefix = topics.clientTunnel(clientId, '', 'out').slice(0, -'/out'.length);
    this.jobs = new Jobs(this, rest);
    this.schedules = new Schedules(rest);
    this.artifacts = new Artifacts(rest);
    this.alerts = new Alerts(rest);
    this.everConnected = client.connected;
    client.on('message', (topic, payload) => {
      if (topic.startsWith(this.tunnelsPrefix)) return this.onTunnelFrame(topic, payload);
      this.onMessage(topic, this.decoder.decode(payload));
    });
    client.on('offline', () => this.emit('disconnect'));
    // The hub ends a client's tunnels when its connection goes: so do we.
    client.on('close', () => this.endTunnels('the connection to the hub was lost'));
    client.on('connect', () => {
      if (this.everConnected) return this.emit('reconnect');
      this.everConnected = true;
      this.emit('connect');
    });
    // Other errors end in a lost connection, which MQTT.js retries.
    client.on('error', (error: Error & { code?: unknown }) => {
      if (error.code === 4 || error.code === 5) this.onRefused(error);
    });
  }

  /** @internal */
  async start(): Promise<void> {
    await this.subscribe(this.responseTopic);
    await this.subscribe(this.topics.allDeviceStatuses, this.settings.statusQos);
    this.lastStatusAt = Date.now();
    this.armSettle();
  }

  /** @internal start() for waitForConnection: false: the subscriptions wait for the connection. */
  startInBackground(): void {
    this.start().catch((error: unknown) => {
      if (!this.closed) this.emit('error', error instanceof ClientError ? error : new ClientError('INTERNAL', String(error), { cause: error }));
    });
  }

  /**
   * Replaces the credentials used from the next connection attempt on (MQTT user name and
   * password) and for REST calls (`Authorization: Bearer`). The live connection is kept.
   */
  setCredentials(tokenName: string, token: string): void {
    this.client.options.username = tokenName;
    this.client.options.password = token;
    this.rest.setToken(token);
  }

  /** CONNACK 4 or 5: MQTT.js stops reconnecting. Fresh credentials from renewCredentials, if any, start it again. */
  private onRefused(error: Error): void {
    const refused = () => new ClientError('FORBIDDEN', `the hub refused the connection: ${error.message}`, { cause: error });
    const renew = this.settings.renewCredentials;
    if (!renew || this.closed) return this.emit('error', refused());
    renew().then(
      (fresh) => {
        if (this.closed) return;
        if (!fresh) return this.emit('error', refused());
        this.setCredentials(fresh.tokenName, fresh.token);
        if (this.retryTimer) clearTimeout(this.retryTimer);
        this.retryTimer = setTimeout(() => {
          this.retryTimer = null;
          if (!this.closed) this.client.reconnect();
        }, this.settings.reconnectPeriodMs);
      },
      () => this.emit('error', refused()),
    );
  }

  /** Whether the MQTT connection is up now. */
  get connected(): boolean {
    return this.client.connected;
  }

  /** A handle on one device. */
  device(id: string): DeviceHandle {
    return new DeviceHandle(this, id);
  }

  /**
   * `PATCH /api/state/desired` (operator or admin): the same desired change on every device a job
   * with this `target` would select (tags, ids, online, a state condition). Devices the hub has
   * never seen are listed in `unknown` and left out.
   */
  setDesiredMany(target: DeviceSelector & { state?: string }, patch: Record<string, JsonValue>, options: { replace?: boolean } = {}): Promise<{ devices: number; changed: { device: string; version: number }[]; unknown?: string[] }> {
    return this.rest.call('PATCH', '/api/state/desired', { target, desired: patch, ...(options.replace ? { replace: true } : {}) });
  }

  /** `GET /api/devices/{id}/health` (any role): the device's health history, one point a minute, in columns. */
  deviceHealth(id: string, query: HealthQuery = {}): Promise<HealthSeries> {
    const problem = idProblem(id);
    if (problem) return Promise.reject(new ClientError('BAD_REQUEST', `device ${problem}`, { device: id }));
    return this.rest.call<HealthSeries>('GET', `/api/devices/${encodeURIComponent(id)}/health${healthParams({ since: query.since, until: query.until, metric: query.metrics?.join(',') })}`);
  }

  /** `GET /api/health/fleet` (any role): devices online over time, and the worst devices now by load, memory, disk and temperature. */
  fleetHealth(query: FleetHealthQuery = {}): Promise<FleetHealth> {
    return this.rest.call<FleetHealth>('GET', `/api/health/fleet${healthParams({ since: query.since, until: query.until, limit: query.limit })}`);
  }

  /**
   * The devices the hub has a status for, from the retained `P/devices/+/status` messages:
   * resolves once the retained burst that followed the subscription has settled (no new status
   * for `settleMs`, 200 ms by default), then answers from the live copy. Sorted by id.
   */
  async devices(selector: DeviceSelector = {}): Promise<DeviceStatus[]> {
    // Statuses carry no state: a state condition is for jobs, which the hub resolves.
    if (selector.state !== undefined) throw new ClientError('BAD_REQUEST', 'devices() takes no state condition (jobs do: hub.jobs.create({ target: { state }, … }))');
    await this.whenSettled();
    return [...this.statuses.values()]
      .filter(matches(selector))
      .sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
      .map(copyStatus);
  }

  /** Sends one command and waits for its Reply (see DeviceHandle.exec). */
  exec(device: string, cmd: string, options: ExecOptions = {}): Promise<ExecResult> {
    const problem = idProblem(device);
    if (problem) return Promise.reject(new ClientError('BAD_REQUEST', `device ${problem}`, { device }));
    if (typeof cmd !== 'string' || cmd.length === 0) return Promise.reject(new ClientError('BAD_REQUEST', 'cmd_str must not be empty', { device }));
    if (this.closed) return Promise.reject(new ClientError('NOT_CONNECTED', 'the client is closed', { device }));
    const id = `${(++this.sequence).toString(36)}-${randomSuffix()}`;
    const order: Order = options.order ?? 'exec_bash';
    const request: Record<string, unknown> = { type: 'command', id, device, order, cmd_str: cmd };
    if (options.timeoutMs !== undefined) request.timeout_ms = options.timeoutMs;
    const waitMs = (options.timeoutMs ?? HUB_DEFAULT_TIMEOUT_MS) + REPLY_GRACE_MS;
    return new Promise<ExecResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new ClientError('TIMEOUT', `no reply from the hub within ${waitMs} ms`, { device }));
      }, waitMs);
      this.pending.set(id, { device, resolve, reject, timer });
      this.client.publish(this.topics.clientRequest(this.clientId), JSON.stringify(request), { qos: 1 }, (error) => {
        if (!error) return;
        const entry = this.pending.get(id);
        if (!entry) return;
        this.pending.delete(id);
        clearTimeout(entry.timer);
        reject(new ClientError('NOT_CONNECTED', `cannot send the request: ${error.message}`, { device, cause: error }));
      });
    });
  }

  /** `GET /api/devices/{id}/state` (any role): the device's desired and reported state and their delta. */
  deviceState(id: string): Promise<DeviceState> {
    const problem = idProblem(id);
    if (problem) return Promise.reject(new ClientError('BAD_REQUEST', `device ${problem}`, { device: id }));
    return this.rest.call<DeviceState>('GET', `/api/devices/${encodeURIComponent(id)}/state`);
  }

  /**
   * `PATCH /api/devices/{id}/state/desired` (operator or admin): merges `patch` into the desired
   * document, null removing a key; with `replace`, `PUT`: the whole document. Resolves with the
   * device's state after the change; rejects with BAD_REQUEST, UNKNOWN_DEVICE, PAYLOAD_TOO_LARGE, FORBIDDEN.
   */
  setDesired(id: string, patch: Record<string, JsonValue>, options: SetDesiredOptions = {}): Promise<DeviceState> {
    const problem = idProblem(id);
    if (problem) return Promise.reject(new ClientError('BAD_REQUEST', `device ${problem}`, { device: id }));
    return this.rest.call<DeviceState>(options.replace ? 'PUT' : 'PATCH', `/api/devices/${encodeURIComponent(id)}/state/desired`, patch);
  }

  /**
   * Opens a tunnel to a device (docs/protocol.md "Remote access: tunnels") and resolves once the
   * device answered `opened`; rejects with the ClientError of a refused open (FORBIDDEN,
   * DEVICE_OFFLINE, UNSUPPORTED, NOT_FOUND, …).
   */
  async openTunnel(device: string, spec: TunnelSpec): Promise<Tunnel> {
    const problem = idProblem(device);
    if (problem) throw new ClientError('BAD_REQUEST', `device ${problem}`, { device });
    if (this.closed) throw new ClientError('NOT_CONNECTED', 'the client is closed', { device });
    this.tunnelSubscription ??= this.subscribe(this.topics.clientTunnelsOut(this.clientId));
    try {
      await this.tunnelSubscription;
    } catch (error) {
      this.tunnelSubscription = null;
      throw error;
    }
    const id = `${(++this.sequence).toString(36)}-${randomSuffix()}`;
    const tunnel = new Tunnel(id, device, spec, {
      inTopic: this.topics.clientTunnel(this.clientId, id, 'in'),
      publish: async (topic, payload) => {
        await this.client.publishAsync(topic, payload as Buffer, { qos: 1 });
      },
      forget: () => this.tunnels.delete(id),
    });
    this.tunnels.set(id, tunnel);
    tunnel.start();
    await tunnel.opened;
    return tunnel;
  }

  private onTunnelFrame(topic: string, payload: Uint8Array): void {
    const parsed = this.topics.parseClientTopic(topic);
    if (parsed?.kind !== 'tunnel' || parsed.direction !== 'out' || parsed.id !== this.clientId) return;
    const tunnel = this.tunnels.get(parsed.tunnel!);
    if (!tunnel) return;
    try {
      tunnel.receiveFrame(decodeFrame(payload));
    } catch (error) {
      if (error instanceof FrameError) tunnel.connectionLost(`the hub sent a malformed frame: ${error.message}`);
      else throw error;
    }
  }

  private endTunnels(message: string): void {
    for (const tunnel of [...this.tunnels.values()]) tunnel.connectionLost(message);
  }

  /** Closes the connection. Commands still waiting for a Reply are rejected with NOT_CONNECTED. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const tunnel of [...this.tunnels.values()]) await Promise.race([tunnel.close(), new Promise((r) => setTimeout(r, 1000))]);
    this.endTunnels('the client was closed');
    if (this.settleTimer) clearTimeout(this.settleTimer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    for (const [id, entry] of this.pending) {
      clearTimeout(entry.timer);
      entry.reject(new ClientError('NOT_CONNECTED', 'the client was closed before the reply came', { device: entry.device }));
      this.pending.delete(id);
    }
    // While connected, what is being sent is finished first, but not for ever: MQTT.js' own
    // graceful end waits for every acknowledgement, and a hub that went away a moment ago (the
    // client has not noticed yet) never sends them.
    await this.drainOutgoing();
    const graceful = this.client.connected && Object.keys(this.client.outgoing).length === 0;
    await new Promise<void>((resolve) => this.client.end(!graceful, {}, () => resolve()));
  }

  /** Resolves once nothing sent waits for its acknowledgement, the connection ends, or CLOSE_DRAIN_MS pass. */
  private drainOutgoing(): Promise<void> {
    const client = this.client;
    if (!client.connected || Object.keys(client.outgoing).length === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        client.off('outgoingEmpty', done);
        client.off('close', done);
        resolve();
      };
      const timer = setTimeout(done, CLOSE_DRAIN_MS);
      client.on('outgoingEmpty', done);
      client.on('close', done);
    });
  }

  /**
   * @internal Subscribes to a topic filter (`+` and `#` allowed) and routes its messages to
   * `handler`; returns the unsubscribe. The subscription survives reconnects.
   */
  async watchTopic(filter: string, handler: TopicHandler): Promise<() => void> {
    let set = this.topicHandlers.get(filter);
    const first = !set;
    if (!set) this.setHandlers(filter, (set = new Set()));
    set.add(handler);
    if (first) {
      try {
        await this.subscribe(filter);
      } catch (error) {
        set.delete(handler);
        if (set.size === 0) this.setHandlers(filter, null);
        throw error;
      }
    }
    return () => {
      const current = this.topicHandlers.get(filter);
      if (!current) return;
      current.delete(handler);
      if (current.size === 0) {
        this.setHandlers(filter, null);
        // Also while disconnected: MQTT.js then drops it from the topics it subscribes again.
        if (!this.closed) this.client.unsubscribe(filter);
      }
    };
  }

  private setHandlers(filter: string, set: Set<TopicHandler> | null): void {
    if (set) this.topicHandlers.set(filter, set);
    else this.topicHandlers.delete(filter);
    this.wildcards = [...this.topicHandlers.keys()].filter((f) => f.includes('+') || f.includes('#'));
  }

  /**
   * Subscribes once connected. MQTT.js drops a subscription whose connection is lost before the
   * SUBACK (and subscribes again only after a connection that worked), so it is sent again then.
   */
  private async subscribe(topic: string, qos: 0 | 1 = 1): Promise<void> {
    for (;;) {
      await this.whenConnected();
      let granted: ISubscriptionGrant[];
      try {
        granted = await this.client.subscribeAsync(topic, { qos });
      } catch (error) {
        if (!this.closed && !this.client.connected && this.settings.reconnectPeriodMs > 0) continue;
        throw new ClientError('FORBIDDEN', `the hub refused the subscription to ${topic}`, { cause: error });
      }
      if (granted.some((g) => g.qos === 128)) throw new ClientError('FORBIDDEN', `the hub refused the subscription to ${topic}`);
      return;
    }
  }

  /** Resolves when connected; rejects with NOT_CONNECTED when closed, or when it will not reconnect. */
  private whenConnected(): Promise<void> {
    if (this.client.connected) return Promise.resolve();
    if (this.closed || this.settings.reconnectPeriodMs <= 0) return Promise.reject(new ClientError('NOT_CONNECTED', 'not connected to the hub'));
    return new Promise((resolve, reject) => {
      const onConnect = () => {
        this.client.off('end', onEnd);
        resolve();
      };
      const onEnd = () => {
        this.client.off('connect', onConnect);
        reject(new ClientError('NOT_CONNECTED', 'the client was closed'));
      };
      this.client.once('connect', onConnect);
      this.client.once('end', onEnd);
    });
  }

  /** Arms the timer that ends the burst `settleMs` after its last status (one timer, not one per status). */
  private armSettle(): void {
    if (this.settled || this.closed || this.settleTimer) return;
    const wait = this.lastStatusAt + this.settings.settleMs - Date.now();
    this.settleTimer = setTimeout(() => {
      this.settleTimer = null;
      if (Date.now() - this.lastStatusAt < this.settings.settleMs) return this.armSettle();
      this.settled = true;
      for (const waiter of this.settledWaiters.splice(0)) waiter();
    }, Math.max(0, wait));
  }

  private whenSettled(): Promise<void> {
    if (this.settled) return Promise.resolve();
    return new Promise((resolve) => this.settledWaiters.push(resolve));
  }

  private onMessage(topic: string, payload: string): void {
    if (topic === this.responseTopic) return this.onReply(payload);
    const parsed = this.topics.parseDeviceTopic(topic);
    if (parsed?.kind === 'status') return this.onStatus(parsed.id, payload);
    const handlers = this.topicHandlers.get(topic);
    if (handlers) for (const handler of [...handlers]) handler(payload, topic);
    for (const filter of this.wildcards) {
      if (filter === topic || !topicMatches(filter, topic)) continue;
      for (const handler of [...(this.topicHandlers.get(filter) ?? [])]) handler(payload, topic);
    }
  }

  private onReply(payload: string): void {
    let reply: Record<string, unknown>;
    try {
      reply = JSON.parse(payload) as Record<string, unknown>;
    } catch {
      return;
    }
    if (typeof reply.id !== 'string') return;
    const entry = this.pending.get(reply.id);
    if (!entry) return;
    this.pending.delete(reply.id);
    clearTimeout(entry.timer);
    if (reply.status === 'ok') {
      entry.resolve({
        device: entry.device,
        result: typeof reply.result === 'string' ? reply.result : null,
        error: typeof reply.error === 'string' ? reply.error : '',
        exitCode: typeof reply.exit_code === 'number' ? reply.exit_code : null,
        durationMs: typeof reply.duration_ms === 'number' ? reply.duration_ms : null,
        truncated: reply.truncated === true,
      });
    } else {
      entry.reject(new ClientError(codeOf(reply.code), typeof reply.message === 'string' ? reply.message : 'the hub answered with an error', { device: entry.device }));
    }
  }

  private onStatus(id: string, payload: string): void {
    if (!this.settled) {
      this.lastStatusAt = Date.now();
      this.armSettle();
    }
    if (payload.length === 0) {
      // A removed device: the hub cleared its retained status.
      this.statuses.delete(id);
      this.emit('status', id, null);
      return;
    }
    let raw: { online?: unknown; since?: unknown; transport?: unknown; tags?: unknown; agent?: unknown };
    try {
      raw = JSON.parse(payload) as typeof raw;
    } catch {
      return;
    }
    if (typeof raw.online !== 'boolean') return;
    // Frozen, so the one snapshot can be handed to every 'status' listener: a burst of 20000
    // statuses makes no copies.
    const status: Readonly<DeviceStatus> = Object.freeze({
      id,
      online: raw.online,
      since: typeof raw.since === 'string' ? raw.since : '',
      transport: typeof raw.transport === 'string' ? (raw.transport as DeviceStatus['transport']) : null,
      tags: Object.freeze(Array.isArray(raw.tags) ? (raw.tags.every(isString) ? raw.tags : raw.tags.filter(isString)) : []) as string[],
      agent: typeof raw.agent === 'string' ? raw.agent : null,
    });
    const before = this.statuses.get(id);
    this.statuses.set(id, status);
    this.emit('status', id, status);
    // Presence events: changes seen after the retained burst at connect has settled.
    if (this.settled && (!before || before.online !== status.online || before.since !== status.since)) {
      this.emit(status.online ? 'online' : 'offline', id, copyStatus(status));
    }
  }
}

/** One device of the hub. */
export class DeviceHandle {
  constructor(
    private readonly hub: HubClient,
    readonly id: string,
  ) {}

  /**
   * Runs a command: one Request on `P/clients/{clientId}/request`, the Reply matched by id.
   * Resolves for a command that ran (whatever its exit status); rejects with a ClientError
   * whose `code` is the Reply's (DEVICE_OFFLINE, TIMEOUT, FORBIDDEN, BUSY, …).
   */
  exec(cmd: string, options: ExecOptions = {}): Promise<ExecResult> {
    return this.hub.exec(this.id, cmd, options);
  }

  /** Its desired and reported state and their delta (see HubClient.deviceState). */
  state(): Promise<DeviceState> {
    return this.hub.deviceState(this.id);
  }

  /** Changes its desired state (see HubClient.setDesired): `setDesired({ fw: '1.2.3', debug: null })`. */
  setDesired(patch: Record<string, JsonValue>, options: SetDesiredOptions = {}): Promise<DeviceState> {
    return this.hub.setDesired(this.id, patch, options);
  }

  /** The device's current status, or undefined when the hub has none. */
  async status(): Promise<DeviceStatus | undefined> {
    return (await this.hub.devices({ devices: [this.id] }))[0];
  }

  /** The device's health history (see HubClient.deviceHealth). */
  health(query: HealthQuery = {}): Promise<HealthSeries> {
    return this.hub.deviceHealth(this.id, query);
  }

  /** Opens a tunnel of any kind (see HubClient.openTunnel). */
  openTunnel(spec: TunnelSpec): Promise<Tunnel> {
    return this.hub.openTunnel(this.id, spec);
  }

  /**
   * An interactive shell in a pseudo-terminal on the device: `write()` keystrokes, read the
   * 'data' events, `resize()` with the terminal; 'end' says how it ended (its `exit` code).
   */
  shell(options: { cols?: number; rows?: number; term?: string } = {}): Promise<Tunnel> {
    return this.hub.openTunnel(this.id, { kind: 'shell', ...options });
  }

  /** A TCP connection from the device to `host:port` (as the device sees them). */
  connectTcp(port: number, host = 'localhost'): Promise<Tunnel> {
    return this.hub.openTunnel(this.id, { kind: 'tcp', host, port });
  }

  /**
   * Writes a file on the device at `path` (absolute). The bytes are given whole, as a Blob (a
   * browser's File: read twice, slice by slice, to hash it and then to send it, so it is never
   * all in memory), or as chunks with their size and SHA-256 known beforehand. The device writes a
   * temporary file and renames it over `path` only when size and SHA-256 match; resolves with
   * what it wrote, rejects with the ClientError of the failure (CHECKSUM_MISMATCH, NOT_FOUND,
   * PATH_OUTSIDE_ROOT, PAYLOAD_TOO_LARGE, …).
   */
  async upload(path: string, source: Uint8Array | Blob | UploadSource, options: TransferOptions & { mode?: number } = {}): Promise<TransferResult> {
    if (isBlob(source)) source = { size: source.size, sha256: await blobSha256(source), chunks: blobSlices(source) };
    const whole = source instanceof Uint8Array ? source : null;
    const size = whole ? whole.byteLength : (source as UploadSource).size;
    const sha256 = whole ? new Sha256().update(whole).hex() : (source as UploadSource).sha256;
    const tunnel = await this.hub.openTunnel(this.id, { kind: 'file_put', path, size, sha256, ...(options.mode !== undefined ? { mode: options.mode } : {}) });
    try {
      let sent = 0;
      const chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array> = whole ? [whole] : (source as UploadSource).chunks;
      for await (const chunk of chunks) {
        await tunnel.write(chunk);
        sent += chunk.byteLength;
        options.onProgress?.(sent, size);
      }
      await tunnel.eof();
    } catch (error) {
      void tunnel.close();
      const end = await tunnel.ended;
      throw end.reason === 'error' ? endError(end, this.id) : error;
    }
    return transferResult(await tunnel.ended, this.id);
  }

  /**
   * Reads a file of the device. Without `onData` the bytes are collected, checked against the
   * device's SHA-256 and returned; with `onData` each chunk is handed over as it comes (the
   * device waits while a returned promise is pending) and the caller checks the SHA-256
   * against the result's.
   */
  async download(path: string, options: TransferOptions & { onData?: (chunk: Uint8Array) => void | Promise<void> } = {}): Promise<TransferResult & { bytes?: Uint8Array; mode?: number }> {
    const tunnel = await this.hub.openTunnel(this.id, { kind: 'file_get', path });
    const opened = await tunnel.opened;
    const size = opened.size ?? 0;
    const parts: Uint8Array[] = [];
    const hash = new Sha256();
    let received = 0;
    let failure: unknown = null;
    tunnel.on('data', (chunk) => {
      received += chunk.byteLength;
      options.onProgress?.(received, size);
      if (!options.onData) {
        hash.update(chunk);
        return void parts.push(chunk.slice());
      }
      const pending = options.onData(chunk);
      if (pending && typeof (pending as Promise<void>).then === 'function') {
        tunnel.pause();
        (pending as Promise<void>).then(
          () => tunnel.resume(),
          (error: unknown) => {
            failure = error;
            void tunnel.close();
          },
        );
      }
    });
    const end = await tunnel.ended;
    if (failure) throw failure;
    const result = transferResult(end, this.id);
    if (options.onData) return { ...result, mode: opened.mode };
    const bytes = new Uint8Array(received);
    let offset = 0;
    for (const part of parts) {
      bytes.set(part, offset);
      offset += part.byteLength;
    }
    const actual = hash.hex();
    if (actual !== result.sha256 || received !== result.size) {
      throw new ClientError('CHECKSUM_MISMATCH', `received ${received} bytes with SHA-256 ${actual}; the device sent ${result.size} with ${result.sha256}`, { device: this.id });
    }
    return { ...result, bytes, mode: opened.mode };
  }
}

/** Blob slices read at a time: big enough to keep the tunnel busy, small enough to hold. */
const BLOB_SLICE_BYTES = 1024 * 1024;

function isBlob(value: unknown): value is Blob {
  return typeof Blob !== 'undefined' && value instanceof Blob;
}

async function* blobSlices(blob: Blob): AsyncIterable<Uint8Array> {
  for (let offset = 0; offset < blob.size; offset += BLOB_SLICE_BYTES) {
    yield new Uint8Array(await blob.slice(offset, offset + BLOB_SLICE_BYTES).arrayBuffer());
  }
}

async function blobSha256(blob: Blob): Promise<string> {
  const hash = new Sha256();
  for await (const slice of blobSlices(blob)) hash.update(slice);
  return hash.hex();
}

/** An upload given as chunks, with what they add up to. */
export interface UploadSource {
  size: number;
  sha256: string;
  chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>;
}

export interface TransferOptions {
  /** Called as bytes go through: done so far, and the total. */
  onProgress?: (done: number, total: number) => void;
}

/** What the device reported for a completed transfer. */
export interface TransferResult {
  size: number;
  sha256: string;
}

function endError(end: TunnelEnd, device: string): ClientError {
  return new ClientError(end.code ?? 'INTERNAL', end.message ?? 'the transfer failed', { device });
}

function transferResult(end: TunnelEnd, device: string): TransferResult {
  if (end.reason === 'error') throw endError(end, device);
  if (!end.done) throw new ClientError('INTERNAL', 'the device ended the transfer without saying it was done', { device });
  return end.done;
}

/** Fleet jobs: create, read and cancel over REST; progress from the retained `P/jobs/{id}/status`. */
/** `/api/artifacts`: files uploaded once to the hub, which deploy jobs send to each device. */
export class Artifacts {
  /** @internal */
  constructor(private readonly rest: Rest) {}

  /** `POST /api/artifacts?name=` (operator or admin): bytes, a Blob (a browser's File), or a stream of bytes. */
  upload(name: string, body: Uint8Array | Blob | ReadableStream<Uint8Array>): Promise<ArtifactView> {
    return this.rest.call<ArtifactView>('POST', `/api/artifacts?name=${encodeURIComponent(name)}`, body, { contentType: 'application/octet-stream' });
  }

  list(): Promise<ArtifactView[]> {
    return this.rest.call<ArtifactView[]>('GET', '/api/artifacts');
  }

  remove(sha256: string): Promise<{ ok: true; sha256: string }> {
    return this.rest.call<{ ok: true; sha256: string }>('DELETE', `/api/artifacts/${encodeURIComponent(sha256)}`);
  }
}

/** `/api/schedules`: jobs to create later, once (`at`) or on a cron expression (`cron`, in `tz`). */
export class Schedules {
  /** @internal */
  constructor(private readonly rest: Rest) {}

  /** `POST /api/schedules` (operator or admin). */
  create(spec: ScheduleSpec): Promise<ScheduleView> {
    return this.rest.call<ScheduleView>('POST', '/api/schedules', spec);
  }

  list(): Promise<ScheduleView[]> {
    return this.rest.call<ScheduleView[]>('GET', '/api/schedules');
  }

  get(id: string): Promise<ScheduleView> {
    return this.rest.call<ScheduleView>('GET', `/api/schedules/${encodeURIComponent(id)}`);
  }

  /** `PATCH /api/schedules/{id}`: some fields; `{ enabled: false }` holds it. */
  update(id: string, patch: Partial<ScheduleSpec>): Promise<ScheduleView> {
    return this.rest.call<ScheduleView>('PATCH', `/api/schedules/${encodeURIComponent(id)}`, patch);
  }

  remove(id: string): Promise<{ ok: true; id: string }> {
    return this.rest.call<{ ok: true; id: string }>('DELETE', `/api/schedules/${encodeURIComponent(id)}`);
  }
}

/** `/api/alerts` and `/api/webhooks`: what fires, the rules that fire it, and where it is sent. */
export class Alerts {
  /** @internal */
  constructor(private readonly rest: Rest) {}

  /** `GET /api/alerts?state=&limit=` (any role): firing ones first, then the newest resolved. */
  list(query: AlertQuery = {}): Promise<AlertView[]> {
    const params = new URLSearchParams();
    if (query.state) params.set('state', query.state);
    if (query.limit !== undefined) params.set('limit', String(query.limit));
    const text = params.toString();
    return this.rest.call<AlertView[]>('GET', `/api/alerts${text ? `?${text}` : ''}`);
  }

  get(id: string): Promise<AlertView> {
    return this.rest.call<AlertView>('GET', `/api/alerts/${encodeURIComponent(id)}`);
  }

  /** `POST /api/alerts/{id}/resolve` (operator or admin): a job alert, which has no end of its own. */
  resolve(id: string): Promise<AlertView> {
    return this.rest.call<AlertView>('POST', `/api/alerts/${encodeURIComponent(id)}/resolve`);
  }

  rules(): Promise<AlertRuleView[]> {
    return this.rest.call<AlertRuleView[]>('GET', '/api/alerts/rules');
  }

  /** `POST /api/alerts/rules` (operator or admin). */
  addRule(spec: AlertRuleSpec): Promise<AlertRuleView> {
    return this.rest.call<AlertRuleView>('POST', '/api/alerts/rules', spec);
  }

  /** `PATCH /api/alerts/rules/{id}`: any field but `kind`; `{ enabled: false }` holds it (its alerts resolve). */
  updateRule(id: string, patch: Partial<Omit<AlertRuleSpec, 'kind'>>): Promise<AlertRuleView> {
    return this.rest.call<AlertRuleView>('PATCH', `/api/alerts/rules/${encodeURIComponent(id)}`, patch);
  }

  removeRule(id: string): Promise<{ ok: true; id: string }> {
    return this.rest.call<{ ok: true; id: string }>('DELETE', `/api/alerts/rules/${encodeURIComponent(id)}`);
  }

  /** `GET /api/webhooks` (admins): secrets masked. */
  webhooks(): Promise<WebhookView[]> {
    return this.rest.call<WebhookView[]>('GET', '/api/webhooks');
  }

  /** `POST /api/webhooks` (admins). */
  addWebhook(spec: WebhookSpec): Promise<WebhookView> {
    return this.rest.call<WebhookView>('POST', '/api/webhooks', spec);
  }

  removeWebhook(id: string): Promise<{ ok: true; id: string }> {
    return this.rest.call<{ ok: true; id: string }>('DELETE', `/api/webhooks/${encodeURIComponent(id)}`);
  }
}

export class Jobs {
  constructor(
    private readonly hub: HubClient,
    private readonly rest: Rest,
  ) {}

  /** `POST /api/jobs` (operator or admin). */
  create(spec: JobSpec): Promise<CreatedJob> {
    return this.rest.call<CreatedJob>('POST', '/api/jobs', { order: 'exec_bash', ...spec });
  }

  /** `GET /api/jobs/{id}`: the job with its targets. */
  get(id: string): Promise<JobView> {
    return this.rest.call<JobView>('GET', `/api/jobs/${encodeURIComponent(id)}`);
  }

  /** `GET /api/jobs?limit=`: the newest jobs first, without targets. */
  list(limit?: number): Promise<JobSummary[]> {
    return this.rest.call<JobSummary[]>('GET', `/api/jobs${limit !== undefined ? `?limit=${limit}` : ''}`);
  }

  /** `POST /api/jobs/{id}/cancel` (operator or admin): targets not yet sent become canceled. */
  cancel(id: string): Promise<JobSummary> {
    return this.rest.call<JobSummary>('POST', `/api/jobs/${encodeURIComponent(id)}/cancel`);
  }

  /** `POST /api/jobs/{id}/pause` (operator or admin): no more sends until resumed; what is in flight finishes. */
  pause(id: string): Promise<JobSummary> {
    return this.rest.call<JobSummary>('POST', `/api/jobs/${encodeURIComponent(id)}/pause`);
  }

  /** `POST /api/jobs/{id}/resume` (operator or admin). */
  resume(id: string): Promise<JobSummary> {
    return this.rest.call<JobSummary>('POST', `/api/jobs/${encodeURIComponent(id)}/resume`);
  }

  /**
   * Follows the retained `P/jobs/{id}/status` of one job, or of every job (`id` null): `onStatus`
   * gets the current status at once (it is retained), then each change, across reconnects,
   * until the returned function is called. Resolves once subscribed.
   */
  follow(id: string | null, onStatus: (status: JobStatus) => void): Promise<() => void> {
    const topics = this.hub.topics;
    return this.hub.watchTopic(topics.jobStatus(id ?? '+'), (payload, topic) => {
      let status: JobStatus;
      try {
        status = JSON.parse(payload) as JobStatus;
      } catch {
        return;
      }
      if (!status || typeof status !== 'object' || typeof status.counts !== 'object' || status.counts === null) return;
      // A status names its own job: ignore one that does not match its topic.
      if (typeof status.id !== 'string' || topic !== topics.jobStatus(status.id)) return;
      onStatus(status);
    });
  }

  /**
   * Follows a job's retained status topic, calling `onProgress` with every status, and
   * resolves with the final one (not running, nothing queued or sent). Pass an AbortSignal
   * to stop watching early (the promise then rejects with the signal's reason).
   */
  async watch(id: string, onProgress?: (status: JobStatus) => void, options: { signal?: AbortSignal } = {}): Promise<JobStatus> {
    let settle!: { resolve: (s: JobStatus) => void; reject: (e: unknown) => void };
    const finished = new Promise<JobStatus>((resolve, reject) => (settle = { resolve, reject }));
    const stop = await this.follow(id, (status) => {
      onProgress?.(status);
      if (isJobFinished(status)) settle.resolve(status);
    });
    const onAbort = () => settle.reject(options.signal?.reason ?? new Error('aborted'));
    if (options.signal?.aborted) onAbort();
    options.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      return await finished;
    } finally {
      options.signal?.removeEventListener('abort', onAbort);
      stop();
    }
  }
}

/** The query string of a health call: times as ISO (or as given when a string), empty values left out. */
function healthParams(params: { since?: HealthTime; until?: HealthTime; metric?: string; limit?: number }): string {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === '') continue;
    query.set(key, value instanceof Date ? value.toISOString() : (key === 'since' || key === 'until') && typeof value === 'number' ? new Date(value).toISOString() : String(value));
  }
  const text = query.toString();
  return text ? `?${text}` : '';
}

function randomSuffix(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c?.randomUUID) return c.randomUUID().replace(/-/g, '').slice(0, 12);
  return Math.random().toString(36).slice(2, 14);
}
