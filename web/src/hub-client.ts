/**
 * The console's link to the hub: the device list from REST, then live statuses, the command
 * round trip, job statuses and tunnels (terminals, file transfers) through the client SDK
 * (docs/sdk.md), like any other client.
 * What is the console's own stays here: the connection badge, the session's short-lived MQTT
 * token, and 'devices' events batched per animation frame.
 */
import { ClientError, connect, type Credentials, type DeviceStatus, type ExecResult, type HubClient as SdkClient, type TransferResult, type Tunnel } from 'rhizosphere/client';
import { getJson, goToLogin, LOGIN_NEEDED } from './api.js';
import type { Device, HubInfo, JobStatus, Order, Reply, Session } from './types.js';

/** Called with each status of a watched job, the retained one first. */
export type JobListener = (status: JobStatus) => void;

export type ConnectionState = 'connecting' | 'connected' | 'reconnecting' | 'offline';

/** Pause between connection attempts, also after the hub refused a token and a fresh one was fetched. */
const RECONNECT_MS = 2000;
/** The MQTT token is short-lived: renew it well before it expires, so reconnects keep working. */
const TOKEN_RENEWAL_MS = 20 * 60 * 1000;

interface InFlight {
  device: string;
  settle: (reply: Reply) => void;
}

export class HubClient extends EventTarget {
  readonly devices = new Map<string, Device>();
  /** Online devices, kept up to date as statuses arrive (counting 20000 each time would not do). */
  onlineCount = 0;
  /** Bumped whenever the set of device ids (or the objects behind them) changes, not on status changes. */
  idsVersion = 0;
  state: ConnectionState = 'connecting';
  info: HubInfo = { topicPrefix: 'rhizosphere', version: '' };
  /** Who is logged in; start() rejects with LOGIN_NEEDED (api.ts) when nobody is. */
  session: Session | null = null;
  private sdk: SdkClient | null = null;
  /** Commands waiting for their Reply: answered CONNECTION_LOST when the connection drops. */
  private readonly inFlight = new Set<InFlight>();
  /** Devices changed since the last 'devices' event: events go out once per frame, not per message. */
  private readonly dirty = new Set<string>();
  private flush = 0;

  async start(): Promise<void> {
    this.info = await getJson<HubInfo>('/api/hub');
    this.session = await getJson<Session>('/api/session');
    await this.loadDevices();
    const credentials = credentialsOf(this.session);
    const sdk = await connect(`${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/mqtt`, {
      clientId: `console-${crypto.randomUUID().slice(0, 8)}`,
      topicPrefix: this.info.topicPrefix,
      // The badge says "connecting…" meanwhile, and attempts go on until one succeeds.
      waitForConnection: false,
      reconnectPeriodMs: RECONNECT_MS,
      statusQos: 0,
      // Browsers throttle timers in background tabs to once a minute or less; Web Worker
      // timers are not throttled, so a console left in a background tab keeps its keepalive.
      mqttOptions: { keepalive: 30, timerVariant: 'worker' },
      // The token may have expired, or a restarted hub no longer knows it.
      ...(credentials ? { ...credentials, renewCredentials: () => this.freshCredentials() } : {}),
    });
    this.sdk = sdk;
    sdk.on('status', (id, status) => (status ? this.applyStatus(id, status) : this.forget(id)));
    sdk.on('connect', () => this.onConnect(false));
    sdk.on('reconnect', () => this.onConnect(true));
    sdk.on('disconnect', () => this.onDisconnect());
    sdk.on('error', (error) => console.warn(error.message));
    if (credentials) {
      window.setInterval(() => void this.freshCredentials().then((fresh) => fresh && sdk.setCredentials(fresh.tokenName, fresh.token)), TOKEN_RENEWAL_MS);
    }
    window.addEventListener('offline', () => this.setState('offline'));
    window.addEventListener('online', () => this.setState(sdk.connected ? 'connected' : 'reconnecting'));
  }

  /** A fresh MQTT token from the session, or null; a session that has ended sends the page to /login. */
  private async freshCredentials(): Promise<Credentials | null> {
    try {
      return credentialsOf(await getJson<Session>('/api/session'));
    } catch (error) {
      if ((error as Error).message === LOGIN_NEEDED) goToLogin();
      return null;
    }
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

  /** The SDK subscribes again by itself (statuses come as a retained burst), job watches included. */
  private onConnect(again: boolean): void {
    this.setState('connected');
    // Devices that first connected while the console was away are in the registry.
    if (again) void this.loadDevices().catch(() => {});
  }

  private onDisconnect(): void {
    if (this.state !== 'offline') this.setState('reconnecting');
    // Replies addressed to this connection are lost with it.
    for (const entry of [...this.inFlight]) {
      entry.settle(errorReply(entry.device, 'CONNECTION_LOST', 'the connection to the hub was lost before the reply came'));
    }
  }

  private applyStatus(id: string, status: Readonly<DeviceStatus>): void {
    let device = this.devices.get(id);
    if (!device) {
      device = { id, online: false, transport: null, connectedAt: null, lastSeen: null, remoteAddress: null, tags: [], agent: null };
      this.devices.set(id, device);
      this.idsVersion++;
    }
    if (status.online !== device.online) this.onlineCount += status.online ? 1 : -1;
    device.online = status.online;
    device.transport = status.transport ?? device.transport;
    device.tags = status.tags;
    device.agent = status.agent ?? device.agent;
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
    let stop: (() => void) | null = null;
    let stopped = false;
    this.sdk?.jobs.follow(id, listener).then(
      (unwatch) => (stopped ? unwatch() : (stop = unwatch)),
      (error: Error) => console.warn(error.message),
    );
    return () => {
      stopped = true;
      stop?.();
    };
  }

  /** Sends a command and resolves with the Reply (never rejects). */
  run(device: string, order: Order, cmd_str: string, timeout_ms: number): Promise<Reply> {
    const sdk = this.sdk;
    if (!sdk?.connected) return Promise.resolve(errorReply(device, 'NOT_CONNECTED', 'the console is not connected to the hub'));
    return new Promise<Reply>((resolve) => {
      const entry: InFlight = {
        device,
        settle: (reply) => {
          if (this.inFlight.delete(entry)) resolve(reply);
        },
      };
      this.inFlight.add(entry);
      sdk.exec(device, cmd_str, { order, timeoutMs: timeout_ms }).then(
        (result) => entry.settle(okReply(result)),
        (error: unknown) => entry.settle(error instanceof ClientError ? errorReply(device, error.code, error.message) : errorReply(device, 'INTERNAL', String(error))),
      );
    });
  }

  /** Resolves once the console is connected to the hub: at once when it is. */
  whenConnected(): Promise<void> {
    const ready = () => this.state === 'connected' && this.sdk?.connected === true;
    if (ready()) return Promise.resolve();
    return new Promise((resolve) => {
      const check = () => {
        if (!ready()) return;
        this.removeEventListener('state', check);
        resolve();
      };
      this.addEventListener('state', check);
    });
  }

  /**
   * A shell in a pseudo-terminal on the device, `cols`×`rows`: resolves once the device has
   * opened it; rejects with a ClientError (FORBIDDEN, DEVICE_OFFLINE, UNSUPPORTED, …).
   */
  async shell(device: string, cols: number, rows: number): Promise<Tunnel> {
    return this.connectedSdk().device(device).shell({ cols, rows });
  }

  /** Writes a file on the device (checked by size and SHA-256 there); rejects with a ClientError. */
  async upload(device: string, path: string, bytes: Uint8Array | Blob, onProgress: (done: number, total: number) => void): Promise<TransferResult> {
    return this.connectedSdk().device(device).upload(path, bytes, { onProgress });
  }

  /** Reads a file of the device, checked against the device's SHA-256; rejects with a ClientError. */
  async download(device: string, path: string, onProgress: (done: number, total: number) => void): Promise<TransferResult & { bytes: Uint8Array }> {
    const result = await this.connectedSdk().device(device).download(path, { onProgress });
    return { size: result.size, sha256: result.sha256, bytes: result.bytes ?? new Uint8Array(0) };
  }

  private connectedSdk(): SdkClient {
    if (!this.sdk?.connected) throw new ClientError('NOT_CONNECTED', 'the console is not connected to the hub');
    return this.sdk;
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

/** The session's MQTT credentials; null with anonymous access. */
function credentialsOf(session: Session): Credentials | null {
  return session.mqtt ? { tokenName: session.mqtt.username, token: session.mqtt.password } : null;
}

function okReply(result: ExecResult): Reply {
  return {
    type: 'response',
    id: null,
    device: result.device,
    status: 'ok',
    result: result.result,
    error: result.error,
    exit_code: result.exitCode,
    duration_ms: result.durationMs,
    truncated: result.truncated,
  };
}

function errorReply(device: string, code: string, message: string): Reply {
  return { type: 'response', id: null, device, status: 'error', code, message };
}
