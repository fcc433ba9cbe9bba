/**
 * What the hub writes to each MQTT connection (TCP, TLS, WebSocket): coalesced, and bounded.
 *
 * Coalesced: the broker writes each MQTT packet separately, and each write costs a syscall
 * (writev) when it is not buffered; with 100 commands in flight that was a quarter of the hub's
 * CPU. The connection is corked at its first write and uncorked once the event loop's current
 * round of I/O has been handled (setImmediate), so every packet written to it in that round
 * leaves in one syscall, and for MQTT over WebSocket in one frame.
 *
 * Bounded: when a write does not fit the socket's buffer, the broker waits for the socket to
 * drain before it completes the delivery, and each waiting delivery holds one of the broker's
 * few concurrent message slots: a handful of connections that stop reading (a frozen console
 * tab, a device behind a dead link) would stall delivery for everybody. So the broker is
 * always told the write went through, and a connection whose unsent bytes pass
 * `maxBufferedBytes` is closed instead: one slow reader costs at most that much memory and
 * never holds up the others.
 */
import type { Duplex } from 'node:stream';

export interface OutboundOptions {
  /** Unsent bytes a connection may have before it is closed as too slow. */
  maxBufferedBytes: number;
  /** Called once, just before a too-slow connection is closed. */
  onTooSlow: (bufferedBytes: number) => void;
}

export function governWrites(stream: Duplex, { maxBufferedBytes, onTooSlow }: OutboundOptions): void {
  coalesceWrites(stream, () => {
    if (stream.writableLength > maxBufferedBytes) {
      onTooSlow(stream.writableLength);
      stream.destroy();
    }
  });
}

/**
 * Every write to `stream` in one round of the event loop leaves in one syscall: the stream is
 * corked at the first and uncorked once the round's I/O has been handled (setImmediate).
 * `afterWrite` runs after each write; a write to a destroyed stream is dropped.
 */
export function coalesceWrites(stream: Duplex, afterWrite: () => void = () => {}): void {
  const write = stream.write;
  let corked = false;
  const flush = () => {
    corked = false;
    stream.uncork();
  };
  stream.write = function (this: Duplex, ...args: Parameters<Duplex['write']>): boolean {
    if (stream.destroyed) return true;
    if (!corked) {
      corked = true;
      stream.cork();
      setImmediate(flush);
    }
    write.apply(this, args);
    afterWrite();
    return true;
  } as Duplex['write'];
}
