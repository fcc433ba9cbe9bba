/**
 * The hub's listening sockets: opened with one clear line naming the flag when a port cannot
 * be had, and closed so that shutdown waits for the connections they carried.
 */
import type { Server as HttpServer } from 'node:http';
import type { Server as TcpServer, Socket } from 'node:net';
import type { Server as TlsServer } from 'node:tls';
import { StartError } from './errors.js';

type Listener = TcpServer | HttpServer | TlsServer;

/**
 * A reconnect storm brings thousands of SYNs at once: Node's default queue of 511 pending
 * connections overflowed, and each dropped SYN costs its device a retry a second or more
 * later. The kernel caps this at net.core.somaxconn.
 */
const LISTEN_BACKLOG = 4096;

/** Listens on `host:port`; resolves with the port (the real one for port 0), or rejects with a StartError naming `flag`. */
export function listen(server: Listener, port: number, host: string, flag: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException) => {
      server.off('listening', onListening);
      const where = `${host}:${port}`;
      const why =
        error.code === 'EADDRINUSE'
          ? `port ${port} is already in use on ${host}; choose another with ${flag} N`
          : error.code === 'EACCES'
            ? `no permission to listen on ${where}; choose a port above 1023 with ${flag} N`
            : error.code === 'EADDRNOTAVAIL' || error.code === 'ENOTFOUND'
              ? `cannot listen on ${where}: --host ${host} is not an address of this machine`
              : `cannot listen on ${where} (${error.code ?? error.message})`;
      reject(new StartError(`${flag} ${port}: ${why}`, { cause: error }));
    };
    const onListening = () => {
      server.off('error', onError);
      const address = server.address();
      resolve(typeof address === 'object' && address ? address.port : port);
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen({ port, host, backlog: LISTEN_BACKLOG });
  });
}

/**
 * Stops accepting connections at once. The returned promise settles only when every open
 * connection has ended too, so it is awaited last, after the broker dropped its clients.
 */
export function stopListening(server: Listener): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) return resolve();
    server.close(() => resolve());
  });
}

/** Waits for `work`, but at most `ms`: a step of shutdown may not hold up the rest. */
export function withinBudget(work: Promise<void>, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    timer.unref();
    void work.finally(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/**
 * Connections that arrive before the hub can serve them, held unread until `open` hands them
 * to the broker. The MQTT ports listen from the start of a start: in a restart under a fleet,
 * opening the database and building the device table would otherwise be time every device is
 * refused, and each refusal doubles a device's backoff. Held, a device waits for its CONNACK.
 */
export class ConnectionGate {
  private held: Set<Socket> | null = new Set();
  private serve: ((socket: Socket) => void) | null = null;

  /** The servers' connection listener. */
  readonly accept = (socket: Socket): void => {
    if (this.serve) return this.serve(socket);
    const held = this.held;
    if (!held) return void socket.destroy();
    // Kept even if it closes meanwhile (skipped at `open`): the start takes seconds.
    held.add(socket);
    // A held socket reset by its peer must not be an uncaught error.
    socket.on('error', ignore);
  };

  /** From now on connections go to `serve`, those held first. */
  open(serve: (socket: Socket) => void): void {
    this.serve = serve;
    const held = this.held ?? new Set<Socket>();
    this.held = null;
    for (const socket of held) {
      socket.off('error', ignore);
      if (!socket.destroyed) serve(socket);
    }
  }

  /** A start that failed: the held connections end, and later ones are refused. */
  drop(): void {
    for (const socket of this.held ?? []) socket.destroy();
    this.held = null;
  }
}

const ignore = () => {};
