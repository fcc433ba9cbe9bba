/**
 * The bench's baseline: Aedes with nothing on top (no hub logic, no authentication), over TCP
 * and optionally MQTT over WebSocket. Usage: node dist/bench/bare-aedes.js --port P [--ws-port Q]
 */
import { createServer as createHttpServer } from 'node:http';
import { createServer } from 'node:net';
import { parseArgs } from 'node:util';
import { Aedes } from 'aedes';
import { WebSocketServer, createWebSocketStream } from 'ws';

const { values } = parseArgs({ options: { port: { type: 'string' }, 'ws-port': { type: 'string' }, host: { type: 'string', default: '127.0.0.1' } } });
if (!values.port) {
  console.error('bare-aedes: --port is required');
  process.exit(2);
}

const broker = await Aedes.createBroker();
const tcp = createServer((socket) => {
  // Without it QoS 1 round trips wait on Nagle and delayed ACK (~40-90 ms each).
  socket.setNoDelay(true);
  broker.handle(socket);
});
tcp.listen(Number(values.port), values.host);

if (values['ws-port']) {
  const http = createHttpServer();
  const wss = new WebSocketServer({ server: http, perMessageDeflate: false });
  wss.on('connection', (ws, req) => {
    const stream = createWebSocketStream(ws);
    stream.on('error', () => stream.destroy());
    broker.handle(stream, req);
  });
  http.listen(Number(values['ws-port']), values.host);
}

const stop = () => broker.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
// Spawned with an IPC channel: go away with the bench.
process.on('disconnect', () => process.exit(0));
