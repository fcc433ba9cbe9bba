/**
 * One tunnel's wire state on the device: its frame numbering, both flow-control windows and
 * the DATA waiting for window. A kind's handler talks to the hub only through its Channel.
 */
import type { ErrorCode } from '../../errors.js';
import { FrameWriter, MAX_DATA_BYTES, ReceiveWindow, SendWindow, type Control } from '../../protocol/tunnel.js';

/** A failure with a stable code, ended as an `error` frame. */
export class TunnelError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'TunnelError';
  }
}

export interface ChannelOptions {
  /** Publishes one encoded frame on the tunnel's `…/out` topic. */
  publish: (frame: Uint8Array) => void;
  /** The window the hub granted in its `open`: how many DATA bytes may await its `ack`. */
  sendWindow?: number;
  /** Called once, when the tunnel ends for whatever reason. */
  onEnd: (channel: Channel) => void;
}

export class Channel {
  readonly writer = new FrameWriter();
  private readonly sendWindow: SendWindow;
  private readonly receiveWindow = new ReceiveWindow();
  private readonly chunkBytes: number;
  private received = 0;
  private readonly outbox: Uint8Array[] = [];
  private outboxBytes = 0;
  private waitingForWindow = false;
  private drainWaiters: (() => void)[] = [];
  private isEnded = false;

  constructor(
    readonly id: string,
    private readonly options: ChannelOptions,
  ) {
    this.sendWindow = new SendWindow(options.sendWindow);
    // A DATA frame never carries more than the whole window, or it could never be sent.
    this.chunkBytes = Math.min(MAX_DATA_BYTES, options.sendWindow ?? MAX_DATA_BYTES);
  }

  get ended(): boolean {
    return this.isEnded;
  }

  /** A CONTROL frame to the hub; dropped once the tunnel has ended. */
  control(control: Control): void {
    if (this.isEnded) return;
    this.options.publish(this.writer.control(control));
  }

  /**
   * Queues DATA for the hub; it goes out as the window allows. False when some of it has to
   * wait: the caller pauses its source (PTY, socket, file) until `drained()`.
   */
  send(bytes: Uint8Array): boolean {
    if (this.isEnded) return true;
    if (bytes.byteLength > 0) {
      this.outbox.push(bytes);
      this.outboxBytes += bytes.byteLength;
      this.pump();
    }
    return this.outboxBytes === 0;
  }

  /** Resolves once every queued DATA byte has been published (or the tunnel ended). */
  drained(): Promise<void> {
    if (this.outboxBytes === 0 || this.isEnded) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  /** The hub's `ack`; false when it acknowledges bytes never sent. */
  acked(total: number): boolean {
    return this.sendWindow.ack(total);
  }

  /** DATA arrived from the hub: false when it overruns the window hypha granted. */
  receive(bytes: number): boolean {
    this.received += bytes;
    return !this.receiveWindow.overrun(this.received);
  }

  /** The handler has written `bytes` of received DATA (to the PTY, the file, the socket): ack when due. */
  consumed(bytes: number): void {
    const ack = this.receiveWindow.consume(bytes);
    if (ack) this.control(ack);
  }

  /** Ends the tunnel normally with `closed`. */
  close(reason?: string): void {
    this.control(reason === undefined ? { t: 'closed' } : { t: 'closed', reason });
    this.end();
  }

  /** Ends the tunnel with `error`. */
  fail(code: ErrorCode, message: string): void {
    this.control({ t: 'error', code, message });
    this.end();
  }

  /** Ends the tunnel without a word (the hub already knows: it sent `closed` or `error`, or the connection is gone). */
  end(): void {
    if (this.isEnded) return;
    this.isEnded = true;
    this.outbox.length = 0;
    this.outboxBytes = 0;
    this.sendWindow.release();
    this.wakeDrainWaiters();
    this.options.onEnd(this);
  }

  private pump(): void {
    while (!this.isEnded && this.outboxBytes > 0) {
      const room = Math.min(this.sendWindow.available, this.chunkBytes);
      if (room === 0) {
        this.waitForWindow();
        return;
      }
      const head = this.outbox[0]!;
      const chunk = head.byteLength <= room ? head : head.subarray(0, room);
      if (chunk === head) this.outbox.shift();
      else this.outbox[0] = head.subarray(room);
      this.outboxBytes -= chunk.byteLength;
      this.sendWindow.consume(chunk.byteLength);
      this.options.publish(this.writer.data(chunk));
    }
    if (this.outboxBytes === 0) this.wakeDrainWaiters();
  }

  private waitForWindow(): void {
    if (this.waitingForWindow) return;
    this.waitingForWindow = true;
    void this.sendWindow.ready().then(() => {
      this.waitingForWindow = false;
      this.pump();
    });
  }

  private wakeDrainWaiters(): void {
    for (const wake of this.drainWaiters.splice(0)) wake();
  }
}
