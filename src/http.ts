/**
 * The hub's one HTTP port: REST, /healthz, and WebSocket endpoints routed by path on the
 * shared server's `upgrade` event (MQTT over WebSocket at /mqtt; the legacy endpoints
 * register here too).
 */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { Socket } from 'node:net';
import type { Aedes } from 'aedes';
import express, { type Express } from 'express';
import { WebSocketServer } from 'ws';
import type { Logger } from './log.js';
import { webSocketDuplex } from './ws-duplex.js';

export type UpgradeHandler = (req: IncomingMessage, socket: Socket, head: Buffer) => void;

export interface HttpFront {
  app: Express;
  server: Server;
  /** Routes WebSocket upgrades whose path equals `path`, or starts with it when it ends in `/`. */
  addUpgrade(path: string, handler: UpgradeHandler): void;
  /** Closes every WebSocket and HTTP connection. */
  closeConnections(): void;
}

export function createHttpFront(log: Logger): HttpFront {
  const app = express();
  app.disable('x-powered-by');
  const server = createServer(app);
  const routes: { path: string; handler: UpgradeHandler }[] = [];
  const sockets = new Set<Socket>();

  server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
    socket.on('error', () => socket.destroy());
    const pathname = new URL(req.url ?? '/', 'http://hub').pathname;
    const route = routes.find((r) => (r.path.endsWith('/') ? pathname.startsWith(r.path) : pathname === r.path));
    if (!route) {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    route.handler(req, socket, head);
  });
  server.on('clientError', (error, socket) => {
    log.debug({ err: error.message }, 'bad HTTP request');
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
  });

  return {
    app,
    server,
    addUpgrade(path, handler) {
      routes.push({ path, handler });
    },
    closeConnections() {
      for (const socket of sockets) socket.destroy();
      server.closeAllConnections();
    },
  };
}

/** MQTT over WebSocket (subprotocol `mqtt`) handed to the broker as a stream. */
export function mqttOverWebSocket(broker: Aedes, maxPayload: number): { handler: UpgradeHandler; close(): void } {
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload,
    // MQTT.js and most tools ask for `mqtt`; older ones for `mqttv3.1`; some for none.
    handleProtocols: (protocols) => (protocols.has('mqtt') ? 'mqtt' : protocols.has('mqttv3.1') ? 'mqttv3.1' : false),
  });
  return {
    handler(req, socket, head) {
      socket.setNoDelay(true);
      wss.handleUpgrade(req, socket, head, (ws) => {
        const stream = webSocketDuplex(ws);
        stream.on('error', () => stream.destroy());
        broker.handle(stream, req);
      });
    },
    close() {
      for (const ws of wss.clients) ws.terminate();
      wss.close();
    },
  };
}
