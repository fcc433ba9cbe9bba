/**
 * Tunnel frames (docs/protocol.md "Remote access: tunnels"): the binary payloads that carry a
 * terminal, a file transfer or a TCP connection over a device's MQTT connection.
 *
 *   byte 0      frame type: 0 = DATA (raw bytes), 1 = CONTROL (UTF-8 JSON object with "t")
 *   bytes 1-4   sequence number, unsigned 32-bit big-endian, from 0 on each topic
 *   bytes 5-…   the body
 *
 * Shared by the hub, hypha and the client SDK (which runs in browsers too), so it uses
 * Uint8Array, DataView and TextEncoder only.
 */

import { isValidId } from './ids.js';

export const FRAME_DATA = 0;
export const FRAME_CONTROL = 1;
export const FRAME_HEADER_BYTES = 5;

/** The largest DATA body a frame may carry; a bigger one ends the tunnel with PAYLOAD_TOO_LARGE. */
export const MAX_DATA_BYTES = 65_536;
/** The largest CONTROL body (its JSON). */
export const MAX_CONTROL_BYTES = 4096;
/**
 * Flow control: a sender may have at most this many DATA bytes that the receiver has not
 * acknowledged (`ack`); an `open` may ask for another window.
 */
export const DEFAULT_WINDOW_BYTES = 262_144;
/** A tunnel id chosen by a client: the characters of a device id, 1 to 64 of them. */
export const TUNNEL_ID_MAX_LENGTH = 64;

/** Null for a usable tunnel id, else what is wrong with it (for "tunnel id …"). */
export function tunnelIdProblem(id: string): string | null {
  if (id.length > TUNNEL_ID_MAX_LENGTH) return `must be at most ${TUNNEL_ID_MAX_LENGTH} characters (got ${id.length})`;
  if (!isValidId(id)) return 'may contain only A-Z a-z 0-9 . _ : -';
  return null;
}

/** `agent_upgrade` is opened by the hub itself only (`rhizosphere agent upgrade`), never by a client. */
export const TUNNEL_KINDS = ['shell', 'file_put', 'file_get', 'tcp', 'agent_upgrade'] as const;
export type TunnelKind = (typeof TUNNEL_KINDS)[number];

/** `open`, client → hub: which device, which kind, and the kind's parameters. */
export interface OpenControl {
  t: 'open';
  /** Client → hub only: the device to open the tunnel to. */
  device?: string;
  kind: TunnelKind;
  /** shell: terminal size and TERM. */
  cols?: number;
  rows?: number;
  term?: string;
  /** file_put / file_get: the path on the device (absolute). */
  path?: string;
  /** file_put: the exact byte count and the SHA-256 (hex) the device must see. */
  size?: number;
  sha256?: string;
  /** file_put: permission bits of a newly created file (default 0o644). */
  mode?: number;
  /** agent_upgrade: the version of the agent carried (its `hypha --version`). */
  version?: string;
  /** tcp: where the device connects, as seen from the device. */
  host?: string;
  port?: number;
  /** The receive window the opener grants (bytes), default DEFAULT_WINDOW_BYTES. */
  window?: number;
  /** Hub → device only: who opened it, for the device's own log. */
  actor?: string;
}

/** The device accepted the open; file_get says the size and mode of what follows. */
export interface OpenedControl {
  t: 'opened';
  size?: number;
  mode?: number;
  window?: number;
}
/** The receiver has consumed `bytes` DATA bytes in all (cumulative): the sender may send up to bytes + window. */
export interface AckControl {
  t: 'ack';
  bytes: number;
}
export interface ResizeControl {
  t: 'resize';
  cols: number;
  rows: number;
}
/** The sender has no more DATA (the end of an upload; a TCP half-close). */
export interface EofControl {
  t: 'eof';
}
/** A file transfer completed: what was written (file_put) or sent (file_get). */
export interface DoneControl {
  t: 'done';
  size: number;
  sha256: string;
}
/** The shell's process ended. */
export interface ExitControl {
  t: 'exit';
  code: number | null;
  signal: string | null;
}
/** Asks the other end to finish; it answers `closed`. */
export interface CloseControl {
  t: 'close';
}
/** The last frame of a tunnel that ended normally. */
export interface ClosedControl {
  t: 'closed';
  reason?: string;
}
/** The last frame of a tunnel that failed: a stable code (src/errors.ts) and a message for people. */
export interface ErrorControl {
  t: 'error';
  code: string;
  message: string;
}

export type Control =
  | OpenControl
  | OpenedControl
  | AckControl
  | ResizeControl
  | EofControl
  | DoneControl
  | ExitControl
  | CloseControl
  | ClosedControl
  | ErrorControl;

export type Frame = { type: 'data'; seq: number; data: Uint8Array } | { type: 'control'; seq: number; control: Control };

/** Why a payload is not a frame; the receiver ends the tunnel with BAD_REQUEST. */
export class FrameError extends Error {
  constructor(readonly code: 'BAD_REQUEST' | 'PAYLOAD_TOO_LARGE', message: string) {
    super(message);
    this.name = 'FrameError';
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

function header(type: number, seq: number, bodyLength: number): Uint8Array {
  const bytes = new Uint8Array(FRAME_HEADER_BYTES + bodyLength);
  bytes[0] = type;
  new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).setUint32(1, seq >>> 0);
  return bytes;
}

export function encodeData(seq: number, data: Uint8Array): Uint8Array {
  if (data.byteLength > MAX_DATA_BYTES) throw new FrameError('PAYLOAD_TOO_LARGE', `a DATA frame carries at most ${MAX_DATA_BYTES} bytes (got ${data.byteLength})`);
  const bytes = header(FRAME_DATA, seq, data.byteLength);
  bytes.set(data, FRAME_HEADER_BYTES);
  return bytes;
}

export function encodeControl(seq: number, control: Control): Uint8Array {
  const body = encoder.encode(JSON.stringify(control));
  if (body.byteLength > MAX_CONTROL_BYTES) throw new FrameError('PAYLOAD_TOO_LARGE', `a CONTROL frame carries at most ${MAX_CONTROL_BYTES} bytes (got ${body.byteLength})`);
  const bytes = header(FRAME_CONTROL, seq, body.byteLength);
  bytes.set(body, FRAME_HEADER_BYTES);
  return bytes;
}

/**
 * Reads a frame. The control's `t` is checked to be a string; the fields of each control are
 * checked by whoever acts on them (the hub and hypha validate `open` with a schema).
 */
export function decodeFrame(payload: Uint8Array): Frame {
  if (payload.byteLength < FRAME_HEADER_BYTES) throw new FrameError('BAD_REQUEST', `a tunnel frame has at least ${FRAME_HEADER_BYTES} bytes (got ${payload.byteLength})`);
  const type = payload[0];
  const seq = new DataView(payload.buffer, payload.byteOffset, payload.byteLength).getUint32(1);
  const body = payload.subarray(FRAME_HEADER_BYTES);
  if (type === FRAME_DATA) {
    if (body.byteLength > MAX_DATA_BYTES) throw new FrameError('PAYLOAD_TOO_LARGE', `a DATA frame carries at most ${MAX_DATA_BYTES} bytes (got ${body.byteLength})`);
    return { type: 'data', seq, data: body };
  }
  if (type !== FRAME_CONTROL) throw new FrameError('BAD_REQUEST', `unknown tunnel frame type ${type} (0 is DATA, 1 is CONTROL)`);
  if (body.byteLength > MAX_CONTROL_BYTES) throw new FrameError('PAYLOAD_TOO_LARGE', `a CONTROL frame carries at most ${MAX_CONTROL_BYTES} bytes (got ${body.byteLength})`);
  let control: unknown;
  try {
    control = JSON.parse(decoder.decode(body));
  } catch {
    throw new FrameError('BAD_REQUEST', 'a CONTROL frame\'s body is not UTF-8 JSON');
  }
  if (control === null || typeof control !== 'object' || Array.isArray(control) || typeof (control as { t?: unknown }).t !== 'string') {
    throw new FrameError('BAD_REQUEST', 'a CONTROL frame\'s body must be a JSON object with a string "t"');
  }
  return { type: 'control', seq, control: control as Control };
}

/** Numbers the frames one side publishes on one topic. */
export class FrameWriter {
  private seq = 0;
  data(data: Uint8Array): Uint8Array {
    return encodeData(this.seq++, data);
  }
  control(control: Control): Uint8Array {
    return encodeControl(this.seq++, control);
  }
}

/** Checks that the frames read from one topic come in order with none missing. */
export class FrameSequence {
  private next = 0;
  /** Null when `seq` is the one expected, else what is wrong. */
  check(seq: number): string | null {
    if (seq !== this.next) return `frame ${seq} arrived where ${this.next} was expected (a frame was lost or reordered)`;
    this.next = (this.next + 1) >>> 0;
    return null;
  }
}

/**
 * The sending half of flow control: how many DATA bytes may go out now. The receiver's `ack`
 * carries the total it has consumed; the sender keeps sent - acked <= window.
 */
export class SendWindow {
  private sent = 0;
  private acked = 0;
  private waiters: (() => void)[] = [];
  constructor(private window: number = DEFAULT_WINDOW_BYTES) {}

  get available(): number {
    return Math.max(0, this.window - (this.sent - this.acked));
  }
  /** Call as bytes go out. */
  consume(bytes: number): void {
    this.sent += bytes;
  }
  /** An `ack` arrived. Returns false when it acknowledges more than was ever sent (a broken peer). */
  ack(total: number): boolean {
    if (!Number.isFinite(total) || total < this.acked) return true;
    if (total > this.sent) return false;
    this.acked = total;
    if (this.available > 0) for (const wake of this.waiters.splice(0)) wake();
    return true;
  }
  /** Resolves once some window is free. */
  async ready(): Promise<void> {
    if (this.available > 0) return;
    await new Promise<void>((resolve) => this.waiters.push(resolve));
  }
  /** Wakes every waiter (the tunnel ended); they must check whether it is still open. */
  release(): void {
    for (const wake of this.waiters.splice(0)) wake();
  }
}

/**
 * The receiving half: counts consumed DATA bytes and says when to send an `ack` (once half a
 * window has been consumed since the last one, so the sender never stalls on a full window).
 */
export class ReceiveWindow {
  private consumed = 0;
  private lastAcked = 0;
  constructor(private readonly window: number = DEFAULT_WINDOW_BYTES) {}
  /** The bytes the sender may still send before it must wait: more than that is a protocol error. */
  overrun(received: number): boolean {
    return received - this.lastAcked > this.window;
  }
  /** Call once `bytes` have been consumed (written to the PTY, the file, the socket). Returns the ack to send, if any. */
  consume(bytes: number): AckControl | null {
    this.consumed += bytes;
    if (this.consumed - this.lastAcked < this.window / 2) return null;
    this.lastAcked = this.consumed;
    return { t: 'ack', bytes: this.consumed };
  }
}
