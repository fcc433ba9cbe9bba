/**
 * The console's link to the hub: the device list from REST, then live statuses and the
 * command round trip over MQTT over WebSocket (docs/protocol.md), like any other client.
 */
import mqtt, { type MqttClient } from 'mqtt';
import { getJson, goToLogin, LOGIN_NEEDED } from './api.js';
import type { Device, HubInfo, JobStatus, Order, Reply, Session, Status } from './types.js';

/** Called with each status of a watched job, the retained one first. */
export type JobListener = (status: JobStatus) => void;

export type ConnectionState = 'connecting' | 'connected' | 'reconnecting' | 'offline';

interface Pending {
  resolve: (reply: Reply) => void;
  timer: number;
  device: string;
}

/** Extra time the console waits beyond the hub's own timeout before it gives up on a reply. */
const REPLY_GRACE_MS = 5000;
/** Pause before connecting again with a renewed token, so a hub that keeps refusing is not hammered. */
const REFUSED_RETRY_MS = 2000;

export class HubClient extends EventTarget {
  readonly devices = new Map<string, Device>();
  /** Online devices, kept up to date as statuses arrive (counting 20000 each time would not do). */
  onlineCount = 0;
  /** Bumped whenever the set of device ids (or the objects behind them) changes, not on status changes. */
  idsVersion = 0;
  state: ConnectionState = 'connecting';
  info: HubInfo = { topicPrefix: 'rhizosphere', version: '' };
  private client: MqttClient | null = null;
  private readonly clientId = `console-${crypto.randomUUID().slice(0, 8)}`;
  private readonly pending = new Map<string, Pending>();
  private sequence = 0;
  private readonly decoder = new TextDecoder();
  /** Devices changed since the last 'devices' event: events go out once per frame, not per message. */
  private readonly dirty = new Set<string>();
  private flush = 0;
  /** Job status watchers by what they watch: a job id, or '+' for every job. */
  private readonly jobWatches = new Map<string, Set<JobListener>>();

  /** Who is logged in; start() rejects with LOGIN_NEEDED (api.ts) when nobody is. */
  session: Session | null = null;

  async start(): Promise<void> {
    this.info = await getJson<HubInfo>('/api/hub');
    this.session = await getJson<Session>('/api/session');
    await this.loadDevices();
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/mqtt`;
    this.client = mqtt.connect(url, {
      clientId: this.clientId,
      protocolVersion: 4, // the hub's broker speaks MQTT 3.1.1
      clean: true,
      keepalive: 30,
      reconnectPeriod: 2000,
      connectTimeout: 10_000,
      // Browsers throttle timers in background tabs to once a minute or less; Web Worker
      // timers are not throttled, so a console left in a background tab keeps its keepalive.
      timerVariant: 'worker',
      ...(this.session.mqtt ? { username: this.session.mqtt.username, password: this.session.mqtt.password } : {}),
    });
    // The MQTT token is short-lived: renew it well before it expires, so reconnects keep working.
    if (this.session.mqtt) window.setInterval(() => void this.renewToken(), 20 * 60 * 1000);
    this.client.on('connect', () => this.onConnect());
    this.client.on('reconnect', () => this.setState('reconnecting'));
    this.client.on('close', () => this.onClose());
    this.client.on('message', (topic, payload) => this.onMessage(topic, payload));
    this.client.on('error', (error) => this.onError(error as Error & { code?: number }));
    window.addEventListener('offline', () => this.setState('offline'));
    window.addEventListener('online', () => this.client?.reconnect());
  }

  /** Fetches a fresh MQTT token; true when the client now holds one. */
  private async renewToken(): Promise<boolean> {
    try {
      const session = await getJson<Session>('/api/session');
      if (session.mqtt && this.client) {
        this.client.options.username = session.mqtt.username;
        this.client.options.password = session.mqtt.password;
        return true;
      }
    } catch (error) {
      if ((error as Error).message === LOGIN_NEEDED) goToLogin();
    }
    return false;
  }

  /**
   * The hub refused the connection (CONNACK 4 or 5): MQTT.js then stops reconnecting. The
   * token may have expired, or a restarted hub no longer knows it: renew it and try again;
   * a session that has ended sends the page to /login instead.
   */
  private onError(error: Error & { code?: number }): void {
    if (error.code !== 4 && error.code !== 5) return;
    if (!this.session?.mqtt) return;
    void this.renewToken().then((renewed) => {
      if (renewed) window.setTimeout(() => this.client?.reconnect(), REFUSED_RETRY_MS);
    });
  }

  private get responseTopic(): string {
    return `${this.info.topicPrefix}/clients/${this.clientId}/response`;
  }

  private async loadDevices(): Promise<void> {
    const list = await getJson<Device[]>('/api/devices');
    this.devices.clear();
    this.onlineCount = 0;
    for (const device of list) {
      this.devices.set(device.id, device);
      if (device.online) this.onlineCount++;
    }
    this.idsVersion++;
    this.changed();
  }

  private onConnect(): void {
    const wasReconnect = this.state !== 'connecting';
    this.setState('connected');
    // Statuses are retained and resent in full on every connect: QoS 0 spares a PUBACK for
    // each of thousands of them. Replies are not retained, so they get QoS 1.
    this.client!.subscribe(`${this.info.topicPrefix}/devices/+/status`, { qos: 0 });
    this.client!.subscribe(this.responseTopic, { qos: 1 });
    for (const key of this.jobWatches.keys()) this.client!.subscribe(this.jobTopic(key), { qos: 1 });
    // Devices that first connected while the console was away are in the registry.
    if (wasReconnect) void this.loadDevices().catch(() => {});
  }

  private onClose(): void {
    if (this.state !== 'offline') this.setState('reconnecting');
    // Replies addressed to this connection are lost with it.
    for (const [id, pending] of this.pending) {
      this.settle(id, { type: 'response', id, device: pending.device, status: 'error', code: 'CONNECTION_LOST', message: 'the connection to the hub was lost before the reply came' });
    }
  }

  private onMessage(topic: string, payload: Uint8Array): void {
    const removed = payload.length === 0 && /\/devices\/([^/]+)\/status$/.exec(topic);
    if (removed && removed[1]) return this.forget(removed[1]);
    let body: unknown;
    try {
      body = JSON.parse(this.decoder.decode(payload));
    } catch {
      return;
    }
    const job = /\/jobs\/([^/]+)\/status$/.exec(topic);
    if (job?.[1] && topic === this.jobTopic(job[1])) return this.jobStatus(job[1], body as JobStatus);
    if (topic === this.responseTopic) {
      const reply = body as Reply;
      if (reply.id) this.settle(reply.id, reply);
      return;
    }
    const match = /\/devices\/([^/]+)\/status$/.exec(topic);
    if (match?.[1]) this.applyStatus(match[1], body as Status);
  }

  private applyStatus(id: string, status: Status): void {
    let device = this.devices.get(id);
    if (!device) {
      device = { id, online: false, transport: null, connectedAt: null, lastSeen: null, remoteAddress: null, tags: [] };
      this.devices.set(id, device);
      this.idsVersion++;
    }
    const online = status.online === true;
    if (online !== device.online) this.onlineCount += online ? 1 : -1;
    device.online = online;
    device.transport = status.transport ?? device.transport;
    if (Array.isArray(status.tags)) device.tags = status.tags;
    if (device.online) device.connectedAt = status.since;
    else device.lastSeen = status.since;
    this.changed(id);
  }

  /** An admin removed the device: the hub cleared its retained status (an empty payload). */
  private forget(id: string): void {
    const device = this.devices.get(id);
    if (!device) return;
    if (device.online) this.onlineCount--;
    this.devices.delete(id);
    this.idsVersion++;
    this.changed(id);
  }

  /**
   * Watches the retained `P/jobs/{id}/status` of one job (`id`), or of every job (null):
   * the listener gets the current status at once (it is retained), then each change.
   * Returns the function that stops watching. Watches survive reconnects.
   */
  watchJobs(id: string | null, listener: JobListener): () => void {
    const key = id ?? '+';
    let listeners = this.jobWatches.get(key);
    if (!listeners) {
      listeners = new Set();
      this.jobWatches.set(key, listeners);
      if (this.client?.connected) this.client.subscribe(this.jobTopic(key), { qos: 1 });
    }
    listeners.add(listener);
    return () => {
      const current = this.jobWatches.get(key);
      if (!current?.delete(listener) || current.size > 0) return;
      this.jobWatches.delete(key);
      if (this.client?.connected) this.client.unsubscribe(this.jobTopic(key));
    };
  }

  private jobTopic(key: string): string {
    return `${this.info.topicPrefix}/jobs/${key}/status`;
  }

  private jobStatus(id: string, status: JobStatus): void {
    if (!status || typeof status !== 'object' || status.id !== id || typeof status.counts !== 'object' || status.counts === null) return;
    for (const key of [id, '+']) {
      for (const listener of this.jobWatches.get(key) ?? []) listener(status);
    }
  }

  /** Sends a command and resolves with the Reply (never rejects). */
  run(device: string, order: Order, cmd_str: string, timeout_ms: number): Promise<Reply> {
    const id = `c${++this.sequence}-${Date.now().toString(36)}`;
    return new Promise<Reply>((resolve) => {
      const timer = window.setTimeout(
        () => this.settle(id, { type: 'response', id, device, status: 'error', code: 'TIMEOUT', message: `no reply from the hub within ${Math.round((timeout_ms + REPLY_GRACE_MS) / 1000)} s` }),
        timeout_ms + REPLY_GRACE_MS,
      );
      this.pending.set(id, { resolve, timer, device });
      if (!this.client?.connected) {
        this.settle(id, { type: 'response', id, device, status: 'error', code: 'NOT_CONNECTED', message: 'the console is not connected to the hub' });
        return;
      }
      const request = { type: 'command', id, device, order, cmd_str, timeout_ms };
      this.client.publish(`${this.info.topicPrefix}/clients/${this.clientId}/request`, JSON.stringify(request), { qos: 1 });
    });
  }

  private settle(id: string, reply: Reply): void {
    const pending = this.pending.get(id);
    if (!pending) return;
    this.pending.delete(id);
    window.clearTimeout(pending.timer);
    pending.resolve(reply);
  }

  private setState(state: ConnectionState): void {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new Event('state'));
  }

  /**
   * Announces changed devices, batched per animation frame: on connect the broker sends the
   * retained status of every device at once, thousands of messages in a burst.
   * The event's detail is the set of changed ids, or null when everything may have changed.
   */
  private changed(id?: string): void {
    if (id === undefined) this.dirty.add('*');
    else this.dirty.add(id);
    if (this.flush) return;
    this.flush = requestAnimationFrame(() => {
      this.flush = 0;
      const ids = this.dirty.has('*') ? null : new Set(this.dirty);
      this.dirty.clear();
      this.dispatchEvent(new CustomEvent<ReadonlySet<string> | null>('devices', { detail: ids }));
    });
  }
}
