/**
 * The client end of a tunnel as a Node Duplex stream (for the CLI's forwards and the hub's
 * proxy to a device's web page), with both sides' flow control joined up: what the device
 * sends waits (the tunnel is paused) while the reader is behind, and writes wait for the
 * device's window. `eof` from the device ends the readable side; `end()` sends `eof`.
 */
import { Duplex } from 'node:stream';
import type { Tunnel, TunnelEnd } from '../client/index.js';

export function tunnelDuplex(tunnel: Tunnel): Duplex {
  let ended: TunnelEnd | null = null;
  const stream = new Duplex({
    // Chunks as they come from the tunnel (at most 64 KiB each).
    readableHighWaterMark: 256 * 1024,
    read() {
      tunnel.resume();
    },
    write(chunk: Buffer, _encoding, callback) {
      tunnel.write(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength)).then(() => callback(), callback);
    },
    final(callback) {
      if (ended) return callback();
      tunnel.eof().then(() => callback(), callback);
    },
    destroy(error, callback) {
      if (!ended) void tunnel.close();
      callback(error);
    },
  });
  tunnel.on('data', (bytes) => {
    if (!stream.push(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength))) tunnel.pause();
  });
  tunnel.on('control', (control) => {
    if (control.t === 'eof') stream.push(null);
  });
  tunnel.on('end', (end) => {
    ended = end;
    if (end.reason === 'error') stream.destroy(Object.assign(new Error(`${end.code}: ${end.message}`), { code: end.code }));
    else {
      stream.push(null);
      // Nothing more can be written once the tunnel has ended.
      if (!stream.writableEnded) stream.end();
    }
  });
  return stream;
}
