/**
 * The client's end of a tunnel (docs/protocol.md "Remote access: tunnels"): a terminal, a
 * file transfer or a TCP connection to a device, carried by the hub over MQTT. Frames go out
 * on `P/clients/{clientId}/tunnels/{tunnel}/in` and come back on `…/out`. Runs in browsers
 * too: Uint8Array and WebCrypto only.
 */
import {
  DEFAULT_WINDOW_BYTES,
  FrameSequence,
  FrameWriter,
  MAX_DATA_BYTES,
  ReceiveWindow,
  SendWindow,
  type Control,
  type DoneControl,
  type ExitControl,
  type Frame,
  type OpenControl,
  type OpenedControl,
  type TunnelKind,
} from '../protocol/tunnel.js';
import { Emitter } from './emitter.js';
import { Sha256 } from './sha256.js';
import { ClientError, codeOf } from './errors.js';

export type { TunnelKind } from '../protocol/tunnel.js';

/** What to open: the kind and its fields (docs/protocol.md "Kinds"); the SDK adds the rest of the `open`. */
export type TunnelSpec = Omit<OpenControl, 't' | 'device' | 'window' | 'actor'>;

/** How a tunnel ended: `closed` normally, or `error` with a code. `exit` is the shell's, when there was one. */
export interface TunnelEnd {
  reason: 'closed' | 'error';
  code?: ClientError['code'];
  message?: string;
  exit?: { code: number | null; signal: string | null };
  /** file transfers: what the device reported in `done`. */
  done?: { size: number; sha256: string };
}

export interface TunnelEvents {
  /** DATA from the device. Acknowledged (flow control) once the listeners return, unless paused. */
  data: (bytes: Uint8Array) => void;
  /** Every CONTROL frame from the device, after the tunnel acted on it. */
  control: (control: Control) => void;
  end: (end: TunnelEnd) => void;
  [key: string]: (...args: any[]) => void;
}

/** @internal what a tunnel needs of the connection. */
export interface TunnelTransport {
  publish(topic: string, payload: Uint8Array): Promise<void>;
  inTopic: string;
  /** Called once the tunnel has ended, to forget it. */
  forget(): void;
}

/** How long the SDK waits for `opened` (the hub answers TIMEOUT after 10 s). */
const OPEN_WAIT_MS = 20_000;

export class Tunnel extends Emitter<TunnelEvents> {
  /** Resolves when the device answered `opened`; rejects with a ClientError when the open failed. */
  readonly opened: Promise<OpenedControl>;
  /** Resolves when the tunnel has ended, however it ended (it never rejects). */
  readonly ended: Promise<TunnelEnd>;
  private resolveOpened!: (opened: OpenedControl) => void;
  private rejectOpened!: (error: ClientError) => void;
  private resolveEnded!: (end: TunnelEnd) => void;
  private readonly writer = new FrameWriter();
  private readonly sequence = new FrameSequence();
  private send: SendWindow = new SendWindow(DEFAULT_WINDOW_BYTES);
  private readonly receive = new ReceiveWindow(DEFAULT_WINDOW_BYTES);
  private received = 0;
  private pausedBytes = 0;
  private paused = false;
  private isOpen = false;
  private endInfo: TunnelEnd | null = null;
  private exit: ExitControl | null = null;
  private done: DoneControl | null = null;
  private openTimer: ReturnType<typeof setTimeout> | null = null;
  /** Frames go out one after another: each publish waits for the one before (ordering). */
  private outbox: Promise<void> = Promise.resolve();

  /** @internal use DeviceHandle.openTunnel() and friends */
  constructor(
    /** The client's id for this tunnel. */
    readonly id: string,
    readonly device: string,
    readonly spec: TunnelSpec,
    private readonly transport: TunnelTransport,
  ) {
    super();
    this.opened = new Promise((resolve, reject) => {
      this.resolveOpened = resolve;
      this.rejectOpened = reject;
    });
    // An open that fails is also reported by `ended`; nobody has to catch both.
    this.opened.catch(() => {});
    this.ended = new Promise((resolve) => (this.resolveEnded = resolve));
  }

  /** @internal sends `open` */
  start(): void {
    this.openTimer = setTimeout(() => this.finish({ reason: 'error', code: 'TIMEOUT', message: `no answer to the open within ${OPEN_WAIT_MS} ms` }, true), OPEN_WAIT_MS);
    this.sendControl({ t: 'open', device: this.device, window: DEFAULT_WINDOW_BYTES, ...this.spec });
  }

  /** Whether the tunnel is up (opened and not ended). */
  get active(): boolean {
    return this.isOpen && this.endInfo === null;
  }

  /**
   * Sends bytes to the device, in frames of at most 64 KiB, waiting for the device's window
   * (flow control): resolves once the last frame is handed to MQTT.
   */
  async write(bytes: Uint8Array | string): Promise<void> {
    const data = typeof bytes === 'string' ? new TextEncoder().encode(bytes) : bytes;
    await this.opened;
    for (let offset = 0; offset < data.byteLength; ) {
      if (this.endInfo) throw this.endedError();
      await this.send.ready();
      if (this.endInfo) throw this.endedError();
      const length = Math.min(MAX_DATA_BYTES, this.send.available, data.byteLength - offset);
      const chunk = data.subarray(offset, offset + length);
      this.send.consume(length);
      offset += length;
      await this.enqueue(this.writer.data(chunk));
    }
  }

  /** shell: the terminal's new size. */
  resize(cols: number, rows: number): void {
    if (this.active) this.sendControl({ t: 'resize', cols, rows });
  }

  /** No more data from this side (the end of an upload; a TCP half-close). */
  async eof(): Promise<void> {
    await this.opened;
    if (!this.endInfo) await this.sendControl({ t: 'eof' });
  }

  /** Asks the device to end the tunnel; resolves with how it ended. */
  async close(): Promise<TunnelEnd> {
    if (!this.endInfo) {
      this.sendControl({ t: 'close' }).catch(() => {});
      // A device that does not answer is not waited for forever.
      const timer = setTimeout(() => this.finish({ reason: 'closed', message: 'closed without an answer from the device' }, false), 5000);
      void this.ended.then(() => clearTimeout(timer));
    }
    return this.ended;
  }

  /** Stops acknowledging DATA: the device stops sending once its window is full. */
  pause(): void {
    this.paused = true;
  }

  /** Acknowledges what arrived while paused, and goes on. */
  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    const bytes = this.pausedBytes;
    this.pausedBytes = 0;
    if (bytes > 0) this.consumed(bytes);
  }

  /** @internal a frame from the hub on this tunnel's `…/out` */
  receiveFrame(frame: Frame): void {
    if (this.endInfo) return;
    const gap = this.sequence.check(frame.seq);
    if (gap) return this.abort('BAD_REQUEST', gap);
    if (frame.type === 'data') {
      this.received += frame.data.byteLength;
      if (this.receive.overrun(this.received)) return this.abort('PAYLOAD_TOO_LARGE', 'the device sent past the window it was granted');
      this.emit('data', frame.data);
      if (this.paused) this.pausedBytes += frame.data.byteLength;
      else this.consumed(frame.data.byteLength);
      return;
    }
    this.onControl(frame.control);
  }

  /** @internal the connection to the hub is gone or closed */
  connectionLost(message: string): void {
    this.finish({ reason: 'error', code: 'NOT_CONNECTED', message }, false);
  }

  private onControl(control: Control): void {
    switch (control.t) {
      case 'opened':
        if (this.openTimer) clearTimeout(this.openTimer);
        this.isOpen = true;
        if (typeof control.window === 'number' && control.window > 0) this.send = new SendWindow(control.window);
        this.resolveOpened(control);
        break;
      case 'ack':
        if (!this.send.ack(control.bytes)) return this.abort('BAD_REQUEST', 'the device acknowledged more than was sent');
        break;
      case 'exit':
        this.exit = control;
        break;
      case 'done':
        this.done = control;
        break;
      case 'close':
        this.emit('control', control);
        this.sendControl({ t: 'closed' }).catch(() => {});
        return this.finish({ reason: 'closed' }, false);
      case 'closed':
        this.emit('control', control);
        return this.finish({ reason: 'closed', ...(control.reason ? { message: control.reason } : {}) }, false);
      case 'error':
        this.emit('control', control);
        return this.finish({ reason: 'error', code: codeOf(control.code), message: String(control.message ?? control.code) }, false);
      default:
        break;
    }
    this.emit('control', control);
  }

  private consumed(bytes: number): void {
    const ack = this.receive.consume(bytes);
    if (ack && !this.endInfo) this.sendControl(ack).catch(() => {});
  }

  /** A protocol fault on this side: tell the hub, end here. */
  private abort(code: ClientError['code'], message: string): void {
    this.sendControl({ t: 'error', code, message }).catch(() => {});
    this.finish({ reason: 'error', code, message }, false);
  }

  private finish(end: TunnelEnd, sendClose: boolean): void {
    if (this.endInfo) return;
    if (sendClose) this.sendControl({ t: 'close' }).catch(() => {});
    if (this.openTimer) clearTimeout(this.openTimer);
    const full: TunnelEnd = { ...end, ...(this.exit ? { exit: { code: this.exit.code, signal: this.exit.signal } } : {}), ...(this.done ? { done: { size: this.done.size, sha256: this.done.sha256 } } : {}) };
    this.endInfo = full;
    this.send.release();
    if (!this.isOpen) this.rejectOpened(new ClientError(full.code ?? 'INTERNAL', full.message ?? 'the tunnel ended before it opened', { device: this.device }));
    this.transport.forget();
    this.emit('end', full);
    this.resolveEnded(full);
  }

  private endedError(): ClientError {
    const end = this.endInfo!;
    return new ClientError(end.code ?? 'INTERNAL', end.message ?? 'the tunnel has ended', { device: this.device });
  }

  private sendControl(control: Control): Promise<void> {
    return this.enqueue(this.writer.control(control));
  }

  private enqueue(frame: Uint8Array): Promise<void> {
    const next = this.outbox.then(() => this.transport.publish(this.transport.inTopic, frame));
    this.outbox = next.catch(() => {});
    return next;
  }
}

/**
 * The SHA-256 of some bytes, as lowercase hex. Not WebCrypto: browsers offer it only in secure
 * contexts, and a console on plain HTTP in a LAN must hash too.
 */
export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  return new Sha256().update(bytes).hex();
}
