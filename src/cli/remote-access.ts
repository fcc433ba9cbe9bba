/**
 * `rhizosphere shell|cp|forward`: remote access from the command line, over tunnels
 * (docs/protocol.md "Remote access: tunnels"). Each resolves with the exit status.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { rename, stat, unlink } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { basename, dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { ClientError, type HubClient } from '../client/index.js';
import { isValidId } from '../protocol/ids.js';
import { tunnelDuplex } from '../tunnels/duplex.js';
import { ProgressLine } from './progress.js';

export interface RemoteIo {
  out: (text: string) => void;
  err: (text: string) => void;
  errIsTty: boolean;
}

/** A usage problem in the arguments: the CLI prints it and exits 2. */
export class RemoteUsageError extends Error {}

/**
 * `rhizosphere shell DEVICE`: the local terminal attached to a shell on the device. Raw mode
 * on a terminal (Ctrl-C goes to the device), the size follows the window, and the exit status
 * is the remote shell's.
 */
export async function shellCommand(hub: HubClient, device: string, io: RemoteIo): Promise<number> {
  const stdin = process.stdin;
  const stdout = process.stdout;
  const tunnel = await hub.device(device).shell({
    cols: stdout.columns || 80,
    rows: stdout.rows || 24,
    term: process.env.TERM || 'xterm-256color',
  });
  const raw = stdin.isTTY === true;
  if (raw) stdin.setRawMode(true);
  const onResize = () => tunnel.resize(stdout.columns || 80, stdout.rows || 24);
  stdout.on('resize', onResize);
  tunnel.on('data', (bytes) => {
    if (!stdout.write(bytes)) {
      tunnel.pause();
      stdout.once('drain', () => tunnel.resume());
    }
  });
  const onInput = (chunk: Buffer) => {
    stdin.pause();
    tunnel.write(new Uint8Array(chunk)).then(
      () => stdin.resume(),
      () => undefined,
    );
  };
  // Input that is not a terminal (a pipe) ends with Ctrl-D, as a terminal's would.
  const onInputEnd = () => void tunnel.write('\u0004').catch(() => undefined);
  stdin.on('data', onInput);
  stdin.on('end', onInputEnd);
  stdin.resume();
  const end = await tunnel.ended;
  stdin.off('data', onInput);
  stdin.off('end', onInputEnd);
  stdout.off('resize', onResize);
  if (raw) stdin.setRawMode(false);
  stdin.pause();
  if (end.reason === 'error') throw new ClientError(end.code ?? 'INTERNAL', end.message ?? 'the shell ended with an error', { device });
  if (end.exit?.signal) io.err(`rhizosphere: the shell on ${device} ended by signal ${end.exit.signal}\n`);
  return end.exit?.code ?? (end.exit?.signal ? 1 : 0);
}

/** `DEVICE:/path` → its parts; null for a local path. Device ids have no `/`, so the first `:/` splits. */
export function remotePath(arg: string): { device: string; path: string } | null {
  if (arg.startsWith('/') || arg.startsWith('.')) return null;
  const at = arg.indexOf(':/');
  if (at <= 0) return null;
  const device = arg.slice(0, at);
  return isValidId(device) ? { device, path: arg.slice(at + 1) } : null;
}

/**
 * `rhizosphere cp LOCAL DEVICE:PATH` and `cp DEVICE:PATH LOCAL`: chunked, checked by SHA-256
 * at both ends, a progress bar on a terminal; a failure leaves the target as it was.
 */
export async function cpCommand(hub: HubClient, from: string, to: string, io: RemoteIo): Promise<number> {
  const source = remotePath(from);
  const target = remotePath(to);
  if (source && target) throw new RemoteUsageError('cp: copy between a device and this machine (one side is DEVICE:/PATH, the other a local path)');
  if (!source && !target) throw new RemoteUsageError('cp: one side must be DEVICE:/ABSOLUTE/PATH');
  const started = Date.now();
  if (target) {
    const info = await stat(from).catch((error: NodeJS.ErrnoException) => {
      throw new ClientError(error.code === 'ENOENT' ? 'NOT_FOUND' : 'IO_ERROR', `${from}: ${error.message}`);
    });
    if (!info.isFile()) throw new ClientError('BAD_REQUEST', `${from} is not a regular file`);
    const remote = target.path.endsWith('/') ? `${target.path}${basename(from)}` : target.path;
    const sha256 = await fileSha256(from);
    const progress = new TransferProgress(io, `${from} → ${target.device}:${remote}`);
    const done = await hub.device(target.device).upload(
      remote,
      { size: info.size, sha256, chunks: createReadStream(from, { highWaterMark: 64 * 1024 }) as AsyncIterable<Uint8Array> },
      { mode: info.mode & 0o777, onProgress: (n, total) => progress.update(n, total) },
    );
    progress.end();
    io.err(`${target.device}:${remote}: ${summary(done.size, done.sha256, started)}\n`);
    return 0;
  }
  const remote = source!;
  let local = to;
  const localInfo = await stat(to).catch(() => null);
  if (localInfo?.isDirectory() || to.endsWith('/')) local = join(to, basename(remote.path));
  const temp = join(dirname(local), `.${basename(local)}.rz-${randomBytes(4).toString('hex')}.part`);
  const hash = createHash('sha256');
  // Room for a whole window of chunks, so a write seldom waits (and holds back the device).
  const out = createWriteStream(temp, { flags: 'wx', highWaterMark: 1024 * 1024 });
  const progress = new TransferProgress(io, `${remote.device}:${remote.path} → ${local}`);
  let written = 0;
  try {
    await new Promise<void>((resolve, reject) => {
      out.once('open', () => resolve());
      out.once('error', reject);
    }).catch((error: NodeJS.ErrnoException) => {
      throw new ClientError(error.code === 'ENOENT' ? 'NOT_FOUND' : 'IO_ERROR', `cannot write beside ${local}: ${error.message}`);
    });
    const done = await hub.device(remote.device).download(remote.path, {
      onProgress: (n, total) => progress.update(n, total),
      onData: (chunk) => {
        hash.update(chunk);
        written += chunk.byteLength;
        if (out.write(chunk)) return;
        return new Promise<void>((resolve) => out.once('drain', resolve));
      },
    });
    await new Promise<void>((resolve, reject) => out.end((error?: Error | null) => (error ? reject(error) : resolve())));
    progress.end();
    const actual = hash.digest('hex');
    if (actual !== done.sha256 || written !== done.size) {
      throw new ClientError('CHECKSUM_MISMATCH', `received ${written} bytes with SHA-256 ${actual}; the device sent ${done.size} with ${done.sha256}; ${local} left as it was`);
    }
    await rename(temp, local);
    io.err(`${local}: ${summary(done.size, done.sha256, started)}\n`);
    return 0;
  } catch (error) {
    progress.end();
    out.destroy();
    await unlink(temp).catch(() => undefined);
    throw error;
  }
}

async function fileSha256(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}

function summary(size: number, sha256: string, started: number): string {
  const seconds = Math.max(0.001, (Date.now() - started) / 1000);
  return `${size} bytes, sha256 ${sha256} (${seconds.toFixed(1)} s, ${(size / seconds / 1048576).toFixed(1)} MiB/s)`;
}

/** A transfer's progress on stderr (src/cli/progress.ts); the first plain line after 2 s. */
class TransferProgress {
  private readonly line: ProgressLine;
  constructor(
    io: RemoteIo,
    private readonly label: string,
  ) {
    this.line = new ProgressLine(io, Date.now());
  }
  update(done: number, total: number): void {
    const percent = total > 0 ? Math.floor((done / total) * 100) : 100;
    this.line.show(percent / 100, `${percent}% (${done}/${total} bytes) ${this.label}`);
  }
  end(): void {
    this.line.end();
  }
}

/** One `[BIND:]LOCALPORT:HOST:PORT` (or `LOCALPORT:PORT`, host localhost). */
export interface ForwardSpec {
  localPort: number;
  host: string;
  port: number;
}

export function parseForward(spec: string): ForwardSpec {
  const parts = spec.split(':');
  const port = (text: string | undefined, what: string, min: number) => {
    const n = Number(text);
    if (!text || !/^\d+$/.test(text) || n < min || n > 65535) throw new RemoteUsageError(`forward: ${spec}: ${what} must be ${min} to 65535`);
    return n;
  };
  if (parts.length === 2) return { localPort: port(parts[0], 'LOCALPORT', 0), host: 'localhost', port: port(parts[1], 'PORT', 1) };
  if (parts.length === 3 && parts[1]) return { localPort: port(parts[0], 'LOCALPORT', 0), host: parts[1], port: port(parts[2], 'PORT', 1) };
  throw new RemoteUsageError(`forward: ${spec}: expected LOCALPORT:HOST:PORT (or LOCALPORT:PORT for localhost)`);
}

/**
 * `rhizosphere forward DEVICE LOCALPORT:HOST:PORT…`: listens on each local port (on `bind`,
 * 127.0.0.1 by default) and carries each connection over a tunnel to HOST:PORT as the device
 * sees it. Runs until SIGINT/SIGTERM (or `signal`), then closes the listeners and tunnels.
 */
export async function forwardCommand(hub: HubClient, device: string, specs: ForwardSpec[], bind: string, io: RemoteIo, signal?: AbortSignal): Promise<number> {
  const servers: Server[] = [];
  const sockets = new Set<Socket>();
  for (const spec of specs) {
    const server = createServer((socket) => {
      sockets.add(socket);
      socket.on('close', () => sockets.delete(socket));
      socket.pause();
      hub
        .device(device)
        .connectTcp(spec.port, spec.host)
        .then((tunnel) => {
          const stream = tunnelDuplex(tunnel);
          socket.pipe(stream).pipe(socket);
          stream.on('error', (error) => {
            io.err(`rhizosphere: ${device} ${spec.host}:${spec.port}: ${error.message}\n`);
            socket.destroy();
          });
          socket.on('error', () => stream.destroy());
          socket.on('close', () => stream.destroy());
          socket.resume();
        })
        .catch((error: Error) => {
          io.err(`rhizosphere: ${device} ${spec.host}:${spec.port}: ${error instanceof ClientError ? `${error.code}: ` : ''}${error.message}\n`);
          socket.destroy();
        });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (error: NodeJS.ErrnoException) =>
        reject(new RemoteUsageError(`forward: cannot listen on ${bind}:${spec.localPort}: ${error.code === 'EADDRINUSE' ? 'the port is in use' : error.message}`)),
      );
      server.listen(spec.localPort, bind, () => resolve());
    }).catch(async (error) => {
      for (const open of servers) open.close();
      throw error;
    });
    servers.push(server);
    const address = server.address();
    const localPort = typeof address === 'object' && address ? address.port : spec.localPort;
    io.out(`forwarding ${bind}:${localPort} -> ${device} ${spec.host}:${spec.port}\n`);
  }
  io.err('rhizosphere: forwarding; Ctrl-C to stop\n');
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    signal?.addEventListener('abort', stop, { once: true });
  });
  for (const server of servers) server.close();
  for (const socket of sockets) socket.destroy();
  return 0;
}
