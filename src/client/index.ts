/**
 * The client SDK: talks to a rhizosphere hub over MQTT (docs/protocol.md) and, for fleet
 * jobs, over its REST API. Runs in Node and in browsers (bundled): nothing Node-only is
 * imported here beyond MQTT.js itself.
 *
 *   const hub = await connect('mqtt://hub:1883', { tokenName: 'ops', token: SECRET });
 *   const { result, exitCode } = await hub.device('pi-01').exec('uptime');
 *   await hub.close();
 */
import { connect as mqttConnect, type IClientOptions, type ISubscriptionGrant, type MqttClient } from 'mqtt';
import { idProblem } from '../protocol/ids.js';
import { DEFAULT_TOPIC_PREFIX, Topics } from '../protocol/topics.js';
import { Emitter } from './emitter.js';
import { ClientError, codeOf } from './errors.js';
import { httpUrlFromMqttUrl, Rest } from './rest.js';
import {
  isJobFinished,
  type ConnectOptions,
  type CreatedJob,
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

export { ClientError, type ClientErrorCode } from './errors.js';
export { httpUrlFromMqttUrl } from './rest.js';
export * from './types.js';

/** How long past the command's own timeout the SDK waits for the hub's Reply before giving up with TIMEOUT. */
const REPLY_GRACE_MS = 15_000;
const HUB_DEFAULT_TIMEOUT_MS = 60_000;

/** Connects to a hub. Resolves once the MQTT connection is up and the SDK's subscriptions are in place. */
export async function connect(url: string, options: ConnectOptions = {}): Promise<HubClient> {
  if (options.token !== undefined && options.tokenName === undefined) {
    throw new ClientError('BAD_REQUEST', 'tokenName is required with token (the MQTT user name is the API token\'s name)');
  }
  const clientId = options.clientId ?? `sdk-${randomSuffix()}`;
  const problem = idProblem(clientId);
  if (problem) throw new ClientError('BAD_REQUEST', `clientId ${problem}`);
  const topics = new Topics(options.topicPrefix ?? DEFAULT_TOPIC_PREFIX);

  const mqttOptions: IClientOptions = {
    protocolVersion: 4,
    clientId,
    clean: true,
    connectTimeout: options.connectTimeoutMs ?? 10_000,
    reconnectPeriod: options.reconnectPeriodMs ?? 1000,
    ...(options.tokenName !== undefined ? { username: options.tokenName, password: options.token ?? '' } : {}),
    ...(options.ca !== undefined ? { ca: options.ca as IClientOptions['ca'] } : {}),
  };
  const client = mqttConnect(url, mqttOptions);
  await new Promise<void>((resolve, reject) => {
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

  const httpUrl = options.httpUrl ?? httpUrlFromMqttUrl(url);
  const hub = new HubClient(client, clientId, topics, new Rest(httpUrl, options.token), options.settleMs ?? 200);
  try {
    await hub.start();
  } catch (error) {
    await hub.close();
    throw error;
  }
  return hub;
}

const copyStatus = (status: DeviceStatus): DeviceStatus => ({ ...status, tags: [...status.tags] });

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
  private readonly pending = new Map<string, Pending>();
  private readonly statuses = new Map<string, DeviceStatus>();
  private readonly topicHandlers = new Map<string, Set<(payload: string) => void>>();
  private readonly responseTopic: string;
  private sequence = 0;
  private settled = false;
  private settleTimer: ReturnType<typeof setTimeout> | null = null;
  private readonly settledWaiters: (() => void)[] = [];
  private closed = false;

  /** @internal use connect() */
  constructor(
    private readonly client: MqttClient,
    /** This connection's MQTT client id. */
    readonly clientId: string,
    readonly topics: Topics,
    rest: Rest,
    private readonly settleMs: number,
  ) {
    super();
    this.responseTopic = topics.clientResponse(clientId);
    this.jobs = new Jobs(this, rest);
    client.on('message', (topic, payload) => this.onMessage(topic, payload.toString()));
    client.on('offline', () => this.emit('disconnect'));
    client.on('reconnect', () => undefined);
    client.on('connect', () => {
      if (this.started) this.emit('reconnect');
    });
    // Errors after the first connect are reported as disconnects; MQTT.js reconnects.
    client.on('error', () => undefined);
  }

  private started = false;

  /** @internal */
  async start(): Promise<void> {
    await this.subscribe(this.responseTopic);
    await this.subscribe(this.topics.allDeviceStatuses);
    this.started = true;
    this.armSettle();
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
   * The devices the hub has a status for, from the retained `P/devices/+/status` messages:
   * resolves once the retained burst that followed the subscription has settled (no new status
   * for `settleMs`, 200 ms by default), then answers from the live copy. Sorted by id.
   */
  async devices(selector: DeviceSelector = {}): Promise<DeviceStatus[]> {
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

  /** Closes the connection. Commands still waiting for a Reply are rejected with NOT_CONNECTED. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.settleTimer) clearTimeout(this.settleTimer);
    for (const [id, entry] of this.pending) {
      clearTimeout(entry.timer);
      entry.reject(new ClientError('NOT_CONNECTED', 'the client was closed before the reply came', { device: entry.device }));
      this.pending.delete(id);
    }
    await new Promise<void>((resolve) => this.client.end(false, {}, () => resolve()));
  }

  /** @internal Subscribes to a topic and routes its messages to `handler`; returns the unsubscribe. */
  async watchTopic(topic: string, handler: (payload: string) => void): Promise<() => void> {
    let set = this.topicHandlers.get(topic);
    const first = !set;
    if (!set) this.topicHandlers.set(topic, (set = new Set()));
    set.add(handler);
    if (first) {
      try {
        await this.subscribe(topic);
      } catch (error) {
        set.delete(handler);
        if (set.size === 0) this.topicHandlers.delete(topic);
        throw error;
      }
    }
    return () => {
      const current = this.topicHandlers.get(topic);
      if (!current) return;
      current.delete(handler);
      if (current.size === 0) {
        this.topicHandlers.delete(topic);
        if (!this.closed && this.client.connected) this.client.unsubscribe(topic);
      }
    };
  }

  private async subscribe(topic: string): Promise<void> {
    let granted: ISubscriptionGrant[];
    try {
      granted = await this.client.subscribeAsync(topic, { qos: 1 });
    } catch (error) {
      throw new ClientError('FORBIDDEN', `the hub refused the subscription to ${topic}`, { cause: error });
    }
    if (granted.some((g) => g.qos === 128)) throw new ClientError('FORBIDDEN', `the hub refused the subscription to ${topic}`);
  }

  private armSettle(): void {
    if (this.settled || this.closed) return;
    if (this.settleTimer) clearTimeout(this.settleTimer);
    this.settleTimer = setTimeout(() => {
      this.settleTimer = null;
      this.settled = true;
      for (const waiter of this.settledWaiters.splice(0)) waiter();
    }, this.settleMs);
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
    if (handlers) for (const handler of [...handlers]) handler(payload);
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
    if (!this.settled) this.armSettle();
    if (payload.length === 0) {
      // A removed device: the hub cleared its retained status.
      this.statuses.delete(id);
      this.emit('status', id, null);
      return;
    }
    let raw: { online?: unknown; since?: unknown; transport?: unknown; tags?: unknown };
    try {
      raw = JSON.parse(payload) as typeof raw;
    } catch {
      return;
    }
    if (typeof raw.online !== 'boolean') return;
    const status: DeviceStatus = {
      id,
      online: raw.online,
      since: typeof raw.since === 'string' ? raw.since : '',
      transport: typeof raw.transport === 'string' ? (raw.transport as DeviceStatus['transport']) : null,
      tags: Array.isArray(raw.tags) ? raw.tags.filter((t): t is string => typeof t === 'string') : [],
    };
    const before = this.statuses.get(id);
    this.statuses.set(id, status);
    this.emit('status', id, copyStatus(status));
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

  /** The device's current status, or undefined when the hub has none. */
  async status(): Promise<DeviceStatus | undefined> {
    return (await this.hub.devices({ devices: [this.id] }))[0];
  }
}

/** Fleet jobs: create, read and cancel over REST; progress from the retained `P/jobs/{id}/status`. */
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

  /**
   * Follows a job's retained status topic, calling `onProgress` with every status, and
   * resolves with the final one (not running, nothing queued or sent). Pass an AbortSignal
   * to stop watching early (the promise then rejects with the signal's reason).
   */
  async watch(id: string, onProgress?: (status: JobStatus) => void, options: { signal?: AbortSignal } = {}): Promise<JobStatus> {
    const topic = this.hub.topics.jobStatus(id);
    let settle!: { resolve: (s: JobStatus) => void; reject: (e: unknown) => void };
    const finished = new Promise<JobStatus>((resolve, reject) => (settle = { resolve, reject }));
    const stop = await this.hub.watchTopic(topic, (payload) => {
      let status: JobStatus;
      try {
        status = JSON.parse(payload) as JobStatus;
      } catch {
        return;
      }
      if (!status || typeof status !== 'object' || !status.counts) return;
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

function randomSuffix(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c?.randomUUID) return c.randomUUID().replace(/-/g, '').slice(0, 12);
  return Math.random().toString(36).slice(2, 14);
}
