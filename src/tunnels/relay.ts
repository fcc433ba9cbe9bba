/**
 * The hub's half of tunnels (docs/protocol.md "Remote access: tunnels"): a client's frames on
 * `P/clients/{cid}/tunnels/{t}/in` go to `P/devices/{id}/tunnels/{dt}/in`, and the device's
 * frames on `…/{dt}/out` come back on `P/clients/{cid}/tunnels/{t}/out`. The relay decides who
 * may open a tunnel, renumbers every frame it publishes, checks the numbers it receives,
 * enforces the limits, audits each tunnel and records shell sessions.
 *
 * Client frames arrive through the broker's 'publish' event (a client's frames reach the node
 * it is connected to, which holds its tunnels). Device frames are read with a subscription on
 * the broker's emitter: in a cluster that is the shared Redis emitter, so a device held by
 * another node reaches the node that holds the tunnel; every other node drops the frame as
 * not its own.
 */
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import type { Aedes, AedesPublishPacket, Client } from 'aedes';
import { filterCovers } from '../auth/acl.js';
import { actorOf, canRunCommands, type Principal } from '../auth/roles.js';
import type { ErrorCode } from '../errors.js';
import type { Logger } from '../log.js';
import type { Presence } from '../presence.js';
import type { Topics } from '../protocol/topics.js';
import {
  FrameError,
  FrameSequence,
  FrameWriter,
  tunnelIdProblem,
  decodeFrame,
  type Control,
  type Frame,
} from '../protocol/tunnel.js';
import type { AuditLog } from '../store/audit.js';
import { validateClientOpen, type ClientOpen } from '../protocol/tunnel-open.js';
import { CastRecorder, recordingPath } from './recorder.js';

/** How long a device has to answer an `open` with `opened` or `error`. */
export const OPEN_TIMEOUT_MS = 10_000;

export interface TunnelLimits {
  maxFileBytes: number;
  maxTunnelsPerDevice: number;
  /** A shell tunnel with no DATA either way for this long ends with TIMEOUT. */
  idleMs: number;
  openTimeoutMs?: number;
}

export interface TunnelRelayOptions {
  broker: Aedes;
  topics: Topics;
  presence: Presence;
  log: Logger;
  audit: AuditLog;
  principalOf: (client: Client) => Principal | undefined;
  remoteOf: (client: Client) => string | null;
  /** Where shell recordings go (`<data-dir>/recordings`); created if missing. */
  recordingsDir: string;
  limits: TunnelLimits;
}

/**
 * A client inside the hub (the HTTP proxy to a device's web page): it sends and receives the
 * frames a client would publish and read on its topics, and acts as `principal`.
 */
export interface LocalTunnelClient {
  /** A frame from this client on its tunnel `clientTunnel`. */
  send(clientTunnel: string, frame: Uint8Array): void;
  /** Frames for this client, by its tunnel id. */
  onFrame: (clientTunnel: string, frame: Uint8Array) => void;
  /** Ends its tunnels, as a client that disconnects. */
  close(): void;
}

export interface TunnelRelay {
  /** Tunnels open (or opening) now. */
  readonly size: number;
  /** A client inside the hub acting as `principal` (audited as it). */
  localClient(principal: Principal, remote: string | null): LocalTunnelClient;
  /** Ends every tunnel (the hub is closing) and stops listening; resolves once recordings are written. */
  close(): Promise<void>;
}

/** Who asked, for the log and the audit trail. */
interface Actor {
  clientId: string;
  actor: string;
  actorKind: string;
  remote: string | null;
}

/** The client's end as the relay sees it: an MQTT connection, or a local client. */
interface Endpoint {
  readonly id: string;
  /** A client inside the hub (not an MQTT connection). */
  readonly local?: boolean;
  who(): Actor & { principal: Principal | undefined };
  /** A frame for this client's tunnel `clientTunnel`. */
  deliver(clientTunnel: string, frame: Uint8Array): void;
}

interface Tunnel extends Actor {
  readonly endpoint: Endpoint;
  readonly clientTunnel: string;
  readonly device: string;
  readonly id: string;
  readonly open: ClientOpen;
  readonly startedAt: number;
  opened: boolean;
  readonly fromClient: FrameSequence;
  readonly fromDevice: FrameSequence;
  readonly toClient: FrameWriter;
  readonly toDevice: FrameWriter;
  /** DATA bytes client → device, and device → client. */
  bytesIn: number;
  bytesOut: number;
  /** file_get: the size the device announced in `opened`. */
  fileSize?: number;
  /** File kinds: the SHA-256 of the bytes relayed, for the audit trail. */
  readonly hash: Hash | null;
  openTimer: NodeJS.Timeout | null;
  idleTimer: NodeJS.Timeout | null;
  recorder: CastRecorder | null;
}

/** How a tunnel ended: the audit outcome, who ended it, and the frames each side gets last. */
interface Ending {
  outcome: string;
  by: 'client' | 'device' | 'hub';
  toClient?: Control;
  toDevice?: Control;
}

const bytesOf = (payload: Buffer | string): Uint8Array => (typeof payload === 'string' ? Buffer.from(payload) : payload);
const asBuffer = (bytes: Uint8Array): Buffer => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
const clientKey = (clientId: string, tunnel: string) => `${clientId}\u0000${tunnel}`;
const isCount = (value: unknown): value is number => typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
const isTerminalSize = (value: unknown): value is number => typeof value === 'number' && Number.isInteger(value) && value >= 1 && value <= 1000;

export function startTunnelRelay(options: TunnelRelayOptions): TunnelRelay {
  const { broker, topics, presence, log, audit, principalOf, remoteOf, recordingsDir, limits } = options;
  const openTimeoutMs = limits.openTimeoutMs ?? OPEN_TIMEOUT_MS;
  mkdirSync(recordingsDir, { recursive: true, mode: 0o700 });

  const byClient = new Map<string, Tunnel>();
  const byId = new Map<string, Tunnel>();
  const byDevice = new Map<string, Set<Tunnel>>();
  const pendingRecordings = new Set<Promise<unknown>>();

  const publish = (topic: string, bytes: Uint8Array) =>
    broker.publish({ cmd: 'publish', topic, payload: asBuffer(bytes), qos: 1, retain: false, dup: false }, () => {});
  const toClient = (t: Tunnel, control: Control) => t.endpoint.deliver(t.clientTunnel, t.toClient.control(control));
  const toDevice = (t: Tunnel, control: Control) => publish(topics.deviceTunnel(t.device, t.id, 'in'), t.toDevice.control(control));

  const actorFor = (principal: Principal | undefined, clientId: string, remote: string | null): Actor & { principal: Principal | undefined } => {
    const { actor, kind } = principal ? actorOf(principal) : { actor: clientId, kind: 'unknown' };
    return { principal, clientId, actor, actorKind: kind, remote };
  };
  // One endpoint per MQTT connection, so a disconnect finds the tunnels it held.
  const mqttEndpoints = new WeakMap<Client, Endpoint>();
  const mqttEndpoint = (client: Client): Endpoint => {
    let endpoint = mqttEndpoints.get(client);
    if (!endpoint) {
      endpoint = {
        id: client.id,
        who: () => actorFor(principalOf(client), client.id, remoteOf(client)),
        deliver: (clientTunnel, frame) => publish(topics.clientTunnel(client.id, clientTunnel, 'out'), frame),
      };
      mqttEndpoints.set(client, endpoint);
    }
    return endpoint;
  };

  const fileDetail = (open: Partial<ClientOpen>) => ({
    kind: open.kind,
    ...(open.path !== undefined ? { path: open.path } : {}),
    ...(open.size !== undefined ? { size: open.size } : {}),
    ...(open.sha256 !== undefined ? { sha256: open.sha256 } : {}),
    ...(open.kind === 'tcp' ? { host: open.host, port: open.port } : {}),
    ...(open.version !== undefined ? { version: open.version } : {}),
  });

  /**
   * A frame the relay will not act on: logged with its code and answered with `error` on the
   * publisher's own `…/out` for the tunnel id it used (a fresh numbering: no tunnel holds it).
   * A refused `open` is audited as `tunnel.refused`.
   */
  const refuse = (client: Endpoint, clientTunnel: string, code: ErrorCode, message: string, frame?: Frame, device?: string) => {
    const actor = client.who();
    const isOpen = frame?.type === 'control' && frame.control.t === 'open';
    log.info({ code, clientId: client.id, tunnel: clientTunnel, device }, `tunnel frame refused: ${message}`);
    client.deliver(clientTunnel, new FrameWriter().control({ t: 'error', code, message }));
    if (!isOpen) return;
    const open = frame.control as Partial<ClientOpen>;
    audit.record({
      at: Date.now(),
      actor: actor.actor,
      actorKind: actor.actorKind,
      remote: actor.remote,
      action: 'tunnel.refused',
      device: device ?? (typeof open.device === 'string' ? open.device.slice(0, 128) : null),
      outcome: code,
      detail: { clientId: client.id, clientTunnel: clientTunnel.slice(0, 128), ...(typeof open.kind === 'string' ? { kind: open.kind } : {}), message },
    });
  };

  const auditDetail = (t: Tunnel, outcome: string) => ({
    tunnel: t.id,
    clientId: t.clientId,
    clientTunnel: t.clientTunnel,
    ...fileDetail(t.open),
    ...(t.fileSize !== undefined ? { size: t.fileSize } : {}),
    ...(t.hash && t.opened ? { sha256: t.hash.copy().digest('hex') } : {}),
    bytesIn: t.bytesIn,
    bytesOut: t.bytesOut,
    outcome,
  });

  /** Ends a tunnel: the last frames, the timers, the recording, the audit entry. */
  const end = (t: Tunnel, ending: Ending) => {
    if (byId.get(t.id) !== t) return;
    byId.delete(t.id);
    byClient.delete(clientKey(t.clientId, t.clientTunnel));
    const forDevice = byDevice.get(t.device);
    forDevice?.delete(t);
    if (forDevice?.size === 0) byDevice.delete(t.device);
    if (t.openTimer) clearTimeout(t.openTimer);
    if (t.idleTimer) clearTimeout(t.idleTimer);
    if (ending.toClient) toClient(t, ending.toClient);
    if (ending.toDevice) toDevice(t, ending.toDevice);
    log.info({ tunnel: t.id, device: t.device, clientId: t.clientId, kind: t.open.kind, outcome: ending.outcome, by: ending.by, bytesIn: t.bytesIn, bytesOut: t.bytesOut }, 'tunnel ended');
    const entry = { actor: t.actor, actorKind: t.actorKind, remote: t.remote, device: t.device };
    if (!t.opened) {
      audit.record({ ...entry, at: Date.now(), action: 'tunnel.refused', outcome: ending.outcome, durationMs: Date.now() - t.startedAt, detail: { ...auditDetail(t, ending.outcome), by: ending.by } });
      return;
    }
    const record = (recordingBytes?: number) =>
      audit.record({
        ...entry,
        at: Date.now(),
        action: 'tunnel.close',
        outcome: ending.outcome,
        durationMs: Date.now() - t.startedAt,
        detail: {
          ...auditDetail(t, ending.outcome),
          by: ending.by,
          startedAt: new Date(t.startedAt).toISOString(),
          recording: t.recorder ? t.id : null,
          ...(recordingBytes !== undefined ? { recordingBytes } : {}),
        },
      });
    if (!t.recorder) return record();
    // The entry is written once the file is complete, so a recording it names can be read.
    const done = t.recorder.close().then(record, () => record());
    pendingRecordings.add(done);
    void done.finally(() => pendingRecordings.delete(done));
  };

  /** A protocol failure on an open tunnel: `error` to both ends. */
  const fail = (t: Tunnel, code: ErrorCode, message: string, by: Ending['by']) => {
    log.info({ code, tunnel: t.id, device: t.device, clientId: t.clientId }, `tunnel failed: ${message}`);
    const error: Control = { t: 'error', code, message };
    end(t, { outcome: code, by, toClient: error, toDevice: error });
  };

  const startIdleTimer = (t: Tunnel) => {
    if (t.open.kind !== 'shell') return;
    t.idleTimer = setTimeout(() => {
      const message = `no data either way for ${limits.idleMs} ms`;
      log.info({ code: 'TIMEOUT', tunnel: t.id, device: t.device }, `tunnel idle: ${message}`);
      end(t, { outcome: 'TIMEOUT', by: 'hub', toClient: { t: 'error', code: 'TIMEOUT', message }, toDevice: { t: 'close' } });
    }, limits.idleMs);
    t.idleTimer.unref();
  };

  // ---- opening ------------------------------------------------------------------------

  /** Whether a device connected here has subscribed to its tunnel topics; true for a device held by another node (its node knows). */
  const offersTunnels = (device: string): boolean => {
    if (!presence.holdsLocally(device)) return true;
    if (presence.get(device)?.transport === 'legacy-ws') return false;
    // A link that knows (a device on an external broker says so in its birth).
    const told = presence.get(device)?.link?.tunnels;
    if (told !== undefined) return told;
    const client = (broker as unknown as { clients: Record<string, Client | undefined> }).clients[device];
    // `subscriptions` holds restored and new subscriptions alike (not in Aedes' typings).
    const subscriptions = (client as unknown as { subscriptions?: Record<string, unknown> } | undefined)?.subscriptions ?? {};
    const wanted = topics.deviceTunnelsIn(device);
    return Object.keys(subscriptions).some((filter) => filterCovers(filter, wanted));
  };

  const newTunnelId = (): string => {
    for (;;) {
      const id = randomBytes(8).toString('hex');
      if (!byId.has(id)) return id;
    }
  };

  const openTunnel = (client: Endpoint, clientTunnel: string, frame: Frame & { type: 'control' }) => {
    const refused = (code: ErrorCode, message: string, device?: string) => refuse(client, clientTunnel, code, message, frame, device);
    const checked = validateClientOpen(frame.control);
    if (!checked.ok) return refused('BAD_REQUEST', checked.message);
    const open = checked.value;
    const { device } = open;
    if (frame.seq !== 0) return refused('BAD_REQUEST', `an open is frame 0 of its tunnel (got ${frame.seq})`, device);
    const entry = presence.get(device);
    if (!entry) return refused('UNKNOWN_DEVICE', `no device ${device} has connected to this hub`, device);
    if (!entry.online || !entry.link) return refused('DEVICE_OFFLINE', `device ${device} is not connected`, device);
    if (open.kind === 'agent_upgrade' && !client.local) {
      return refused('FORBIDDEN', 'agent_upgrade tunnels are opened by the hub only, with its own agent build (rhizosphere agent upgrade)', device);
    }
    if ((open.kind === 'file_put' || open.kind === 'agent_upgrade') && open.size! > limits.maxFileBytes) {
      return refused('PAYLOAD_TOO_LARGE', `size is ${open.size} bytes (limit ${limits.maxFileBytes})`, device);
    }
    const count = byDevice.get(device)?.size ?? 0;
    if (count >= limits.maxTunnelsPerDevice) return refused('BUSY', `device ${device} has ${count} tunnels open (limit ${limits.maxTunnelsPerDevice})`, device);
    if (!offersTunnels(device)) return refused('UNSUPPORTED', `device ${device} offers no tunnels (its agent has not subscribed to ${topics.deviceTunnelsIn(device)})`, device);

    const actor = client.who();
    const t: Tunnel = {
      endpoint: client,
      clientId: client.id,
      actor: actor.actor,
      actorKind: actor.actorKind,
      remote: actor.remote,
      clientTunnel,
      device,
      id: newTunnelId(),
      open,
      startedAt: Date.now(),
      opened: false,
      fromClient: new FrameSequence(),
      fromDevice: new FrameSequence(),
      toClient: new FrameWriter(),
      toDevice: new FrameWriter(),
      bytesIn: 0,
      bytesOut: 0,
      hash: open.kind === 'file_put' || open.kind === 'file_get' || open.kind === 'agent_upgrade' ? createHash('sha256') : null,
      openTimer: null,
      idleTimer: null,
      recorder: null,
    };
    t.fromClient.check(0);
    byId.set(t.id, t);
    byClient.set(clientKey(t.clientId, clientTunnel), t);
    let forDevice = byDevice.get(device);
    if (!forDevice) byDevice.set(device, (forDevice = new Set()));
    forDevice.add(t);
    const { device: _device, ...forward } = open;
    toDevice(t, { ...forward, actor: actor.actor });
    t.openTimer = setTimeout(() => {
      t.openTimer = null;
      const message = `device ${device} did not answer the open within ${openTimeoutMs} ms`;
      log.info({ code: 'TIMEOUT', tunnel: t.id, device }, message);
      end(t, { outcome: 'TIMEOUT', by: 'hub', toClient: { t: 'error', code: 'TIMEOUT', message }, toDevice: { t: 'close' } });
    }, openTimeoutMs);
    t.openTimer.unref();
    log.debug({ tunnel: t.id, clientTunnel, clientId: t.clientId, device, kind: open.kind, actor: actor.actor }, 'tunnel opening');
  };

  const onOpened = (t: Tunnel, control: Extract<Control, { t: 'opened' }>) => {
    if (t.opened) return fail(t, 'BAD_REQUEST', 'the device sent a second opened', 'device');
    if (t.openTimer) clearTimeout(t.openTimer);
    t.openTimer = null;
    if (t.open.kind === 'file_get') {
      if (!isCount(control.size)) return fail(t, 'BAD_REQUEST', 'opened.size must be a whole number of bytes for a file_get', 'device');
      if (control.size > limits.maxFileBytes) return fail(t, 'PAYLOAD_TOO_LARGE', `the file has ${control.size} bytes (limit ${limits.maxFileBytes})`, 'device');
      t.fileSize = control.size;
    }
    t.opened = true;
    audit.record({
      at: Date.now(),
      actor: t.actor,
      actorKind: t.actorKind,
      remote: t.remote,
      action: 'tunnel.open',
      device: t.device,
      outcome: 'ok',
      detail: { tunnel: t.id, clientId: t.clientId, clientTunnel: t.clientTunnel, ...fileDetail(t.open), ...(t.fileSize !== undefined ? { size: t.fileSize } : {}) },
    });
    if (t.open.kind === 'shell') {
      t.recorder = new CastRecorder(
        recordingPath(recordingsDir, t.id),
        { width: t.open.cols!, height: t.open.rows!, term: t.open.term!, title: `${t.device} by ${t.actor}`, startedAt: Date.now() },
        log,
      );
      startIdleTimer(t);
    }
    log.info({ tunnel: t.id, clientId: t.clientId, device: t.device, kind: t.open.kind, actor: t.actor }, 'tunnel open');
    toClient(t, control);
  };

  // ---- client → device ----------------------------------------------------------------

  const fromClient = (t: Tunnel, frame: Frame) => {
    const gap = t.fromClient.check(frame.seq);
    if (gap) return fail(t, 'BAD_REQUEST', gap, 'client');
    if (frame.type === 'data') {
      if (t.open.kind === 'file_get') return fail(t, 'BAD_REQUEST', 'a file_get tunnel carries no DATA from the client', 'client');
      t.bytesIn += frame.data.byteLength;
      if ((t.open.kind === 'file_put' || t.open.kind === 'agent_upgrade') && t.bytesIn > t.open.size!) {
        return fail(t, 'PAYLOAD_TOO_LARGE', `more than the ${t.open.size} bytes the open announced`, 'client');
      }
      t.hash?.update(frame.data);
      t.recorder?.in(frame.data);
      t.idleTimer?.refresh();
      return publish(topics.deviceTunnel(t.device, t.id, 'in'), t.toDevice.data(frame.data));
    }
    const control = frame.control;
    switch (control.t) {
      case 'ack':
        if (!isCount(control.bytes)) return fail(t, 'BAD_REQUEST', 'ack.bytes must be a whole number of bytes', 'client');
        return toDevice(t, { t: 'ack', bytes: control.bytes });
      case 'resize':
        if (t.open.kind !== 'shell') return fail(t, 'BAD_REQUEST', `a ${t.open.kind} tunnel has no terminal to resize`, 'client');
        if (!isTerminalSize(control.cols) || !isTerminalSize(control.rows)) return fail(t, 'BAD_REQUEST', 'resize.cols and resize.rows must be 1 to 1000', 'client');
        t.recorder?.resize(control.cols, control.rows);
        return toDevice(t, { t: 'resize', cols: control.cols, rows: control.rows });
      case 'eof':
      case 'close':
        return toDevice(t, { t: control.t });
      case 'closed':
        return end(t, { outcome: 'ok', by: 'client', toDevice: { t: 'closed', ...(typeof control.reason === 'string' ? { reason: control.reason } : {}) } });
      case 'error': {
        const code = typeof control.code === 'string' ? control.code : 'INTERNAL';
        const message = typeof control.message === 'string' ? control.message : '';
        return end(t, { outcome: code, by: 'client', toDevice: { t: 'error', code, message } });
      }
      default:
        return fail(t, 'BAD_REQUEST', `a client may not send "${control.t}" on an open tunnel`, 'client');
    }
  };

  const onClientPublish = (packet: AedesPublishPacket, client: Client | null) => {
    if (!client) return;
    const target = topics.parseClientTopic(packet.topic);
    if (target?.kind !== 'tunnel' || target.direction !== 'in') return;
    fromEndpoint(mqttEndpoint(client), target.id, target.tunnel!, bytesOf(packet.payload));
  };

  /** A frame a client sent, on the tunnel topic of client `topicClientId`. */
  const fromEndpoint = (client: Endpoint, topicClientId: string, clientTunnel: string, payload: Uint8Array) => {
    const own = topicClientId === client.id;
    const t = own ? byClient.get(clientKey(client.id, clientTunnel)) : undefined;
    let frame: Frame;
    try {
      frame = decodeFrame(payload);
    } catch (error) {
      if (!(error instanceof FrameError)) throw error;
      if (t) return fail(t, error.code, error.message, 'client');
      return refuse(client, clientTunnel, error.code, error.message);
    }
    if (!own) {
      return refuse(client, clientTunnel, 'FORBIDDEN', `publish tunnel frames on ${topics.clientTunnel(client.id, clientTunnel, 'in')}: answers go to the publisher's own client id`, frame);
    }
    const idProblem = tunnelIdProblem(clientTunnel);
    if (idProblem) return refuse(client, clientTunnel, 'BAD_REQUEST', `tunnel id ${idProblem}`, frame);
    const { principal, actor } = client.who();
    if (!principal || !canRunCommands(principal)) {
      return refuse(client, clientTunnel, 'FORBIDDEN', `${actor} may not open tunnels (role ${principal && 'role' in principal ? principal.role : 'none'})`, frame);
    }
    if (t) return fromClient(t, frame);
    if (frame.type === 'control' && frame.control.t === 'open') return openTunnel(client, clientTunnel, frame);
    refuse(client, clientTunnel, 'UNKNOWN_TUNNEL', `tunnel ${clientTunnel} is not open`, frame);
  };

  // ---- device → client ----------------------------------------------------------------

  const fromDevice = (t: Tunnel, frame: Frame) => {
    const gap = t.fromDevice.check(frame.seq);
    if (gap) return fail(t, 'BAD_REQUEST', gap, 'device');
    if (frame.type === 'data') {
      if (t.open.kind === 'file_put' || t.open.kind === 'agent_upgrade') return fail(t, 'BAD_REQUEST', `a ${t.open.kind} tunnel carries no DATA from the device`, 'device');
      t.bytesOut += frame.data.byteLength;
      if (t.fileSize !== undefined && t.bytesOut > t.fileSize) return fail(t, 'PAYLOAD_TOO_LARGE', `more than the ${t.fileSize} bytes opened announced`, 'device');
      t.hash?.update(frame.data);
      t.recorder?.out(frame.data);
      t.idleTimer?.refresh();
      return t.endpoint.deliver(t.clientTunnel, t.toClient.data(frame.data));
    }
    const control = frame.control;
    switch (control.t) {
      case 'opened':
        return onOpened(t, control);
      case 'ack':
        if (!isCount(control.bytes)) return fail(t, 'BAD_REQUEST', 'ack.bytes must be a whole number of bytes', 'device');
        return toClient(t, { t: 'ack', bytes: control.bytes });
      case 'eof':
      case 'done':
      case 'exit':
      case 'close':
        return toClient(t, control);
      case 'closed':
        return end(t, { outcome: 'ok', by: 'device', toClient: control });
      case 'error': {
        const code = typeof control.code === 'string' ? control.code : 'INTERNAL';
        return end(t, { outcome: code, by: 'device', toClient: control });
      }
      default:
        return fail(t, 'BAD_REQUEST', `a device may not send "${control.t}" on a tunnel`, 'device');
    }
  };

  const onDeviceFrame = (packet: AedesPublishPacket, done: () => void) => {
    done();
    const target = topics.parseDeviceTopic(packet.topic);
    if (target?.kind !== 'tunnel' || target.direction !== 'out') return;
    const t = byId.get(target.tunnel!);
    if (!t || t.device !== target.id) {
      // Not a tunnel of this node (in a cluster, another node's), or one that has ended.
      log.debug({ device: target.id, tunnel: target.tunnel }, 'tunnel frame from a device for no tunnel here: dropped');
      return;
    }
    let frame: Frame;
    try {
      frame = decodeFrame(bytesOf(packet.payload));
    } catch (error) {
      if (!(error instanceof FrameError)) throw error;
      return fail(t, error.code, error.message, 'device');
    }
    fromDevice(t, frame);
  };

  // ---- connections that end -----------------------------------------------------------

  const endpointGone = (endpoint: Endpoint | undefined) => {
    if (!endpoint) return;
    for (const t of [...byId.values()]) {
      if (t.endpoint === endpoint) end(t, { outcome: 'disconnected', by: 'client', toDevice: { t: 'close' } });
    }
  };
  const onClientDisconnect = (client: Client) => endpointGone(mqttEndpoints.get(client));

  let localClients = 0;

  const onOffline = (device: { id: string }) => {
    for (const t of [...(byDevice.get(device.id) ?? [])]) {
      end(t, { outcome: 'DEVICE_OFFLINE', by: 'device', toClient: { t: 'error', code: 'DEVICE_OFFLINE', message: `device ${device.id} disconnected` } });
    }
  };

  const deviceFrames = `${topics.prefix}/devices/+/tunnels/+/out`;
  broker.on('publish', onClientPublish);
  broker.on('clientDisconnect', onClientDisconnect);
  broker.subscribe(deviceFrames, onDeviceFrame, () => {});
  presence.on('offline', onOffline);

  return {
    get size() {
      return byId.size;
    },
    localClient(principal, remote) {
      // '@' is not a character of client ids: no MQTT client can share these tunnel keys.
      const id = `@local-${++localClients}`;
      const local: LocalTunnelClient = {
        send: (clientTunnel, frame) => fromEndpoint(endpoint, id, clientTunnel, frame),
        onFrame: () => {},
        close: () => endpointGone(endpoint),
      };
      const endpoint: Endpoint = {
        id,
        local: true,
        who: () => actorFor(principal, id, remote),
        // Later, in order: the local client may answer at once without re-entering the relay.
        deliver: (clientTunnel, frame) => queueMicrotask(() => local.onFrame(clientTunnel, frame)),
      };
      return local;
    },
    async close() {
      broker.off('publish', onClientPublish);
      broker.off('clientDisconnect', onClientDisconnect);
      presence.off('offline', onOffline);
      for (const t of [...byId.values()]) {
        end(t, { outcome: 'hub-closing', by: 'hub', toClient: { t: 'error', code: 'INTERNAL', message: 'the hub is shutting down' }, toDevice: { t: 'close' } });
      }
      if (!broker.closed) broker.unsubscribe(deviceFrames, onDeviceFrame, () => {});
      await Promise.all(pendingRecordings);
    },
  };
}
