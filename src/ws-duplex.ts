/**
 * A WebSocket as a byte stream for the broker, like ws's createWebSocketStream, with one
 * difference that matters at fleet scale: MQTT packets written while an earlier send is
 * still in progress are coalesced into one WebSocket frame (`writev`). MQTT over WebSocket
 * lets a frame carry several packets; a console that subscribes to the retained status of
 * 20000 devices then receives a few hundred frames instead of 20000, and a browser pays
 * per frame far more than per byte.
 */
import { Duplex } from 'node:stream';
import type { WebSocket } from 'ws';

export function webSocketDuplex(ws: WebSocket): Duplex {
  const duplex = new Duplex({
    read() {
      if (ws.isPaused) ws.resume();
    },
    writev(chunks, callback) {
      const data = chunks.length === 1 ? chunks[0]!.chunk : Buffer.concat(chunks.map(({ chunk }) => chunk as Buffer));
      if (ws.readyState !== ws.OPEN) return callback(new Error('WebSocket is not open'));
      ws.send(data, { binary: true }, callback);
    },
    final(callback) {
      ws.close();
      callback();
    },
    destroy(error, callback) {
      ws.terminate();
      callback(error);
    },
  });
  ws.on('message', (data: Buffer | ArrayBuffer | Buffer[]) => {
    const chunk = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
    // Backpressure: stop reading from the socket until the broker has caught up.
    if (!duplex.push(chunk)) ws.pause();
  });
  ws.once('close', () => duplex.push(null));
  ws.on('error', (error) => duplex.destroy(error));
  return duplex;
}
