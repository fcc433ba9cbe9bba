/**
 * The device side of tunnels (docs/protocol.md "Remote access: tunnels"): takes the frames
 * the hub publishes on `P/devices/{id}/tunnels/{tunnel}/in`, checks their order and windows,
 * opens and routes each tunnel to its kind's handler, and publishes the answers on `…/out`.
 * Bad input ends one tunnel with an `error` frame; it never throws into the agent.
 */
import { FrameError, FrameSequence, FrameWriter, decodeFrame, tunnelIdProblem, type Control } from '../../protocol/tunnel.js';
import type { Topics } from '../../protocol/topics.js';
import type { Logger } from '../log.js';
import { Channel, TunnelError } from './channel.js';
import { openAgentUpgrade } from './agent-upgrade.js';
import { openFileGet, openFilePut } from './files.js';
import type { SelfUpgrade } from '../self-upgrade.js';
import type { TunnelContext, TunnelHandler } from './handler.js';
import { parseAck, parseOpen, parseResize, type OpenRequest } from './schemas.js';
import { openShell } from './shell.js';
import { openTcp } from './tcp.js';

export const DEFAULT_MAX_TUNNELS = 32;
export const DEFAULT_MAX_FILE_BYTES = 1024 * 1024 * 1024;
/** Ended tunnel ids remembered, so their numbering goes on and a stray frame is answered once, not once per frame. */
const ENDED_KEPT = 256;
/** On stop: how long handlers get to kill shells and delete partial uploads. */
const DISPOSE_WAIT_MS = 3000;

export interface TunnelManagerOptions {
  deviceId: string;
  topics: Topics;
  log: Logger;
  /** Publishes a frame at QoS 1. */
  publish: (topic: string, payload: Buffer) => void;
  fileRoot?: string;
  maxFileBytes?: number;
  maxTunnels?: number;
  loadPty?: () => Promise<unknown>;
  /** How this agent replaces itself (agent_upgrade tunnels); absent: it cannot. */
  selfUpgrade?: SelfUpgrade;
}

interface Tunnel {
  channel: Channel;
  sequence: FrameSequence;
  kind: OpenRequest['kind'];
  /** Set once the opener has sent `opened`. */
  handler?: TunnelHandler;
  /** Settles when the open finished either way; frames for the handler wait on it, in order. */
  ready: Promise<void>;
}

export class TunnelManager {
  private readonly tunnels = new Map<string, Tunnel>();
  private readonly ended = new Map<string, { writer: FrameWriter; answered: boolean }>();
  private readonly disposing = new Set<Promise<void>>();
  private readonly context: TunnelContext;
  private readonly maxTunnels: number;
  private stopped = false;

  constructor(private readonly options: TunnelManagerOptions) {
    this.maxTunnels = options.maxTunnels ?? DEFAULT_MAX_TUNNELS;
    this.context = {
      log: options.log,
      fileRoot: options.fileRoot,
      maxFileBytes: options.maxFileBytes ?? DEFAULT_MAX_FILE_BYTES,
      loadPty: options.loadPty ?? (() => import('node-pty')),
      selfUpgrade: options.selfUpgrade,
    };
  }

  /**
   * Says once, at start, when shells cannot be served: node-pty is optional (the standalone
   * agent carries none), and everything else works without it.
   */
  async probeShells(): Promise<boolean> {
    try {
      const loaded = (await this.context.loadPty()) as { spawn?: unknown; default?: { spawn?: unknown } };
      if (typeof (loaded.spawn ?? loaded.default?.spawn) === 'function') return true;
    } catch {
      // not installed, or built for another Node.js
    }
    this.options.log.warn('node-pty is not installed: this agent runs commands, file transfers and port forwards, but no shells (npm install node-pty beside hypha.js adds them)');
    return false;
  }

  get openCount(): number {
    return this.tunnels.size;
  }

  /** One message from a tunnel's `…/in` topic. */
  handle(tunnelId: string, payload: Buffer): void {
    if (this.stopped) return;
    // The hub's tunnel ids are 16 hex digits; any usable id is answered, anything else dropped.
    if (tunnelIdProblem(tunnelId)) {
      this.options.log.warn('tunnel frame with an unusable tunnel id dropped', { tunnel: tunnelId });
      return;
    }
    try {
      this.route(tunnelId, payload);
    } catch (err) {
      // A bug here must cost one tunnel, not the agent.
      this.options.log.error('tunnel frame failed', { tunnel: tunnelId, error: err });
      this.tunnels.get(tunnelId)?.channel.fail('INTERNAL', 'hypha could not handle the frame');
    }
  }

  /** Ends every tunnel: on stop with `error`, on a lost connection silently (the hub ends them itself). */
  async endAll(why: 'stop' | 'disconnect'): Promise<void> {
    if (why === 'stop') this.stopped = true;
    for (const tunnel of [...this.tunnels.values()]) {
      if (why === 'stop') tunnel.channel.fail('INTERNAL', 'hypha is shutting down');
      else tunnel.channel.end();
    }
    await Promise.race([Promise.allSettled([...this.disposing]), new Promise((r) => setTimeout(r, DISPOSE_WAIT_MS).unref())]);
  }

  private route(tunnelId: string, payload: Buffer): void {
    const tunnel = this.tunnels.get(tunnelId);
    let frame;
    try {
      frame = decodeFrame(payload);
    } catch (err) {
      const { code, message } = err instanceof FrameError ? err : { code: 'BAD_REQUEST' as const, message: 'unreadable frame' };
      if (tunnel) tunnel.channel.fail(code, message);
      else this.answerStray(tunnelId, code, message);
      return;
    }
    if (!tunnel) {
      if (frame.type === 'control' && frame.control.t === 'open') this.open(tunnelId, frame.seq, frame.control);
      else this.answerStray(tunnelId, 'UNKNOWN_TUNNEL', `tunnel ${tunnelId} is not open on this device`);
      return;
    }
    const gap = tunnel.sequence.check(frame.seq);
    if (gap) return tunnel.channel.fail('BAD_REQUEST', gap);
    if (frame.type === 'data') return this.data(tunnel, Buffer.from(frame.data.buffer, frame.data.byteOffset, frame.data.byteLength));
    this.control(tunnel, frame.control);
  }

  private data(tunnel: Tunnel, bytes: Buffer): void {
    const { channel } = tunnel;
    if (!channel.receive(bytes.byteLength)) return channel.fail('PAYLOAD_TOO_LARGE', 'DATA beyond the window hypha granted (wait for its ack)');
    void tunnel.ready.then(() => {
      if (channel.ended || !tunnel.handler) return;
      if (!tunnel.handler.data) return channel.fail('BAD_REQUEST', `a ${tunnel.kind} tunnel takes no DATA towards the device`);
      tunnel.handler.data(bytes);
    });
  }

  private control(tunnel: Tunnel, control: Control): void {
    const { channel } = tunnel;
    switch (control.t) {
      case 'open':
        return channel.fail('BAD_REQUEST', `tunnel ${channel.id} is already open`);
      case 'ack': {
        const ack = parseAck(control);
        if (!ack.ok) return channel.fail('BAD_REQUEST', `ack: ${ack.message}`);
        if (!channel.acked(ack.value.bytes)) return channel.fail('BAD_REQUEST', 'ack: bytes is more than was ever sent');
        return;
      }
      case 'close':
        return channel.close('closed by the peer');
      case 'closed':
      case 'error':
        this.options.log.info('tunnel ended by the hub', { tunnel: channel.id, how: control.t, code: control.t === 'error' ? control.code : undefined });
        return channel.end();
      case 'resize': {
        const size = parseResize(control);
        if (!size.ok) return channel.fail('BAD_REQUEST', `resize: ${size.message}`);
        return this.afterOpen(tunnel, 'resize', (handler) => handler.resize?.(size.value.cols, size.value.rows));
      }
      case 'eof':
        return this.afterOpen(tunnel, 'eof', (handler) => handler.eof?.());
      default:
        return channel.fail('BAD_REQUEST', `t ${JSON.stringify(control.t)} is not a frame a device takes`);
    }
  }

  /** Runs a control on the handler once the tunnel is open, or refuses it when the kind has no use for it. */
  private afterOpen(tunnel: Tunnel, what: 'resize' | 'eof', act: (handler: TunnelHandler) => void): void {
    void tunnel.ready.then(() => {
      const { handler, channel } = tunnel;
      if (channel.ended || !handler) return;
      if (!handler[what]) return channel.fail('BAD_REQUEST', `a ${tunnel.kind} tunnel takes no ${what}`);
      act(handler);
    });
  }

  private open(tunnelId: string, seq: number, control: Control): void {
    const sequence = new FrameSequence();
    const gap = sequence.check(seq);
    if (gap) return this.answerStray(tunnelId, 'BAD_REQUEST', `open: ${gap}`, true);
    if (this.tunnels.size >= this.maxTunnels) return this.answerStray(tunnelId, 'BUSY', `this device has ${this.maxTunnels} tunnels open, its limit`, true);
    const parsed = parseOpen(control);
    if (!parsed.ok) return this.answerStray(tunnelId, 'BAD_REQUEST', `open: ${parsed.message}`, true);
    const open = parsed.value;
    this.ended.delete(tunnelId);
    const channel = new Channel(tunnelId, {
      publish: (frame) => this.options.publish(this.outTopic(tunnelId), Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength)),
      sendWindow: open.window,
      onEnd: () => this.onEnd(tunnelId),
    });
    const tunnel: Tunnel = { channel, sequence, kind: open.kind, ready: Promise.resolve() };
    this.tunnels.set(tunnelId, tunnel);
    this.options.log.info('tunnel open', { tunnel: tunnelId, kind: open.kind, actor: open.actor, ...describe(open) });
    tunnel.ready = this.start(open, channel).then(
      (handler) => {
        tunnel.handler = handler;
        // Ended while opening (a `close`, a stop): release what the opener just set up.
        if (channel.ended) this.dispose(tunnelId, handler);
      },
      (err: unknown) => {
        const known = err instanceof TunnelError;
        if (!known) this.options.log.error('tunnel open failed', { tunnel: tunnelId, error: err });
        channel.fail(known ? err.code : 'INTERNAL', known ? err.message : `hypha could not open the ${open.kind} tunnel`);
      },
    );
  }

  private start(open: OpenRequest, channel: Channel): Promise<TunnelHandler> {
    switch (open.kind) {
      case 'shell':
        return openShell(open, channel, this.context);
      case 'file_put':
        return openFilePut(open, channel, this.context);
      case 'file_get':
        return openFileGet(open, channel, this.context);
      case 'tcp':
        return openTcp(open, channel, this.context);
      case 'agent_upgrade':
        return openAgentUpgrade(open, channel, this.context);
    }
  }

  private onEnd(tunnelId: string): void {
    const tunnel = this.tunnels.get(tunnelId);
    if (!tunnel) return;
    this.tunnels.delete(tunnelId);
    this.remember(tunnelId, tunnel.channel.writer, false);
    this.options.log.info('tunnel ended', { tunnel: tunnelId, kind: tunnel.kind });
    if (tunnel.handler) this.dispose(tunnelId, tunnel.handler);
  }

  private dispose(tunnelId: string, handler: TunnelHandler): void {
    const disposing = Promise.resolve()
      .then(() => handler.dispose())
      .catch((err: unknown) => this.options.log.warn('tunnel cleanup failed', { tunnel: tunnelId, error: err }))
      .finally(() => this.disposing.delete(disposing));
    this.disposing.add(disposing);
  }

  /**
   * An `error` for a tunnel id that is not open. Each id is answered once: frames the hub
   * queued for a tunnel that already ended (say, across a reconnect) do not each get an answer.
   */
  private answerStray(tunnelId: string, code: 'UNKNOWN_TUNNEL' | 'BAD_REQUEST' | 'PAYLOAD_TOO_LARGE' | 'BUSY', message: string, always = false): void {
    const memory = this.ended.get(tunnelId);
    if (memory?.answered && !always) {
      this.options.log.debug('frame for an unknown tunnel dropped', { tunnel: tunnelId });
      return;
    }
    const writer = memory?.writer ?? new FrameWriter();
    this.options.log.warn('tunnel refused', { tunnel: tunnelId, code, message });
    this.options.publish(this.outTopic(tunnelId), Buffer.from(writer.control({ t: 'error', code, message })));
    this.remember(tunnelId, writer, true);
  }

  private remember(tunnelId: string, writer: FrameWriter, answered: boolean): void {
    this.ended.delete(tunnelId);
    this.ended.set(tunnelId, { writer, answered });
    if (this.ended.size > ENDED_KEPT) this.ended.delete(this.ended.keys().next().value!);
  }

  private outTopic(tunnelId: string): string {
    return this.options.topics.deviceTunnel(this.options.deviceId, tunnelId, 'out');
  }
}

/** The log fields of an open: where it goes, never what it carries. */
function describe(open: OpenRequest): Record<string, unknown> {
  switch (open.kind) {
    case 'shell':
      return { cols: open.cols, rows: open.rows };
    case 'file_put':
      return { path: open.path, size: open.size };
    case 'file_get':
      return { path: open.path };
    case 'tcp':
      return { host: open.host, port: open.port };
    case 'agent_upgrade':
      return { version: open.version, size: open.size };
  }
}

export { TunnelError } from './channel.js';
