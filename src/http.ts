/**
 * The hub's one HTTP port: REST, /healthz, and WebSocket endpoints routed by path on the
 * shared server's `upgrade` event (MQTT over WebSocket at /mqtt; the legacy endpoints
 * register here too).
 */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
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

export interface HttpFrontOptions {
  /** Origins besides the hub's own whose pages may open WebSockets here. */
  allowedOrigins: string[];
  /** The Content-Security-Policy of the hub's pages. */
  contentSecurityPolicy: string;
  /** An HTTPS server to use instead of plain HTTP (TLS on). */
  server?: Server;
}

/**
 * A browser sends `Origin` with every WebSocket upgrade, and a page from anywhere can ask for
 * one (cookies included): so an upgrade whose Origin is not the hub's own page, nor on the
 * allow-list, is refused. Clients that are not browsers (hypha, MQTT tools) send no Origin.
 */
export function originAllowed(origin: string | undefined, host: string | undefined, allowed: string[]): boolean {
  if (origin === undefined) return true;
  if (allowed.includes(origin)) return true;
  try {
    return host !== undefined && new URL(origin).host === host;
  } catch {
    return false;
  }
}

export function createHttpFront(log: Logger, options: HttpFrontOptions): HttpFront {
  const app = express();
  app.disable('x-powered-by');
  app.use((_req, res, next) => {
    res.setHeader('x-content-type-options', 'nosniff');
    res.setHeader('x-frame-options', 'DENY');
    res.setHeader('referrer-policy', 'no-referrer');
    res.setHeader('cross-origin-opener-policy', 'same-origin');
    res.setHeader('content-security-policy', options.contentSecurityPolicy);
    next();
  });
  const server = options.server ?? createServer();
  server.on('request', app);
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
    if (!originAllowed(req.headers.origin, req.headers.host, options.allowedOrigins)) {
      log.warn({ code: 'FORBIDDEN', origin: req.headers.origin, path: pathname, remote: req.socket.remoteAddress }, 'WebSocket refused: foreign Origin');
      socket.end('HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: 37\r\n\r\nFORBIDDEN: this Origin is not allowed');
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
export function mqttOverWebSocket(handle: (stream: Duplex, req: IncomingMessage) => void, maxPayload: number): { handler: UpgradeHandler; close(): void } {
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
        // The broker keeps what it is given as the client's `req` for the connection's life; of
        // the upgrade request the hub reads only the socket (remote address, TLS certificate).
        handle(stream, { socket: req.socket } as IncomingMessage);
      });
    },
    close() {
      for (const ws of wss.clients) ws.terminate();
      wss.close();
    },
  };
}
