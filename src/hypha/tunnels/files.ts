/**
 * `file_put` and `file_get` tunnels. An upload goes into a new temporary file beside its
 * target and is renamed over it only once its size and SHA-256 match the `open`, so the target
 * is never left half-written; every early end deletes the temporary file.
 */
import { createHash, randomBytes, type Hash } from 'node:crypto';
import { lstat, open as openFile, realpath, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join, sep } from 'node:path';
import { MAX_DATA_BYTES } from '../../protocol/tunnel.js';
import { TunnelError, type Channel } from './channel.js';
import type { TunnelContext, TunnelHandler } from './handler.js';
import type { FileGetOpenRequest, FilePutOpenRequest } from './schemas.js';

/** A file-system failure as the tunnel reports it: a missing file is NOT_FOUND, the rest IO_ERROR with the system's words. */
function fsError(err: unknown, what: string): TunnelError {
  if (err instanceof TunnelError) return err;
  const { code, message } = err as NodeJS.ErrnoException;
  if (code === 'ENOENT' || code === 'ENOTDIR') return new TunnelError('NOT_FOUND', `${what}: no such file or directory`);
  return new TunnelError('IO_ERROR', `${what}: ${message}`);
}

/** The real path of --file-root, read at each open so a root made or moved later is honoured. */
async function realRoot(context: TunnelContext): Promise<string | undefined> {
  if (context.fileRoot === undefined) return undefined;
  try {
    return await realpath(context.fileRoot);
  } catch (err) {
    throw new TunnelError('IO_ERROR', `the file root ${context.fileRoot} is unusable: ${(err as Error).message}`);
  }
}

/** Refuses a real path outside the root (the root itself included: it is a directory, not a file). */
function confine(real: string, root: string | undefined, asked: string): void {
  if (root === undefined) return;
  const prefix = root.endsWith(sep) ? root : root + sep;
  if (!real.startsWith(prefix)) throw new TunnelError('PATH_OUTSIDE_ROOT', `${asked} is outside the directory this device allows file transfer in`);
}

function checkSize(size: number, context: TunnelContext, path: string): void {
  if (size > context.maxFileBytes) throw new TunnelError('PAYLOAD_TOO_LARGE', `${path} has ${size} bytes; this device moves files of at most ${context.maxFileBytes} bytes`);
}

/**
 * Where an upload lands: the real path of its directory (symbolic links followed) joined with
 * its name. The name itself is not followed: the rename replaces a link, never writes through it.
 */
async function putTarget(path: string, context: TunnelContext): Promise<string> {
  const name = basename(path);
  if (path.endsWith('/') || name === '' || name === '.' || name === '..') throw new TunnelError('BAD_REQUEST', `path ${path} does not name a file`);
  const root = await realRoot(context);
  let directory: string;
  try {
    directory = await realpath(dirname(path));
  } catch (err) {
    throw fsError(err, `the directory of ${path}`);
  }
  const target = join(directory, name);
  confine(target, root, path);
  return target;
}

/** What an upload does once its bytes are in place, before and after it answers `done` (agent upgrades). */
export interface PutFinish {
  /** Throws a TunnelError to answer that instead of `done`. */
  check(target: string): Promise<void>;
  /** After `done` went out. */
  then(): void;
}

export async function openFilePut(open: FilePutOpenRequest, channel: Channel, context: TunnelContext, finish?: PutFinish): Promise<TunnelHandler> {
  checkSize(open.size, context, open.path);
  const target = await putTarget(open.path, context);
  const existing = await lstat(target).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return null;
    throw fsError(err, open.path);
  });
  if (existing?.isDirectory()) throw new TunnelError('BAD_REQUEST', `${open.path} is a directory`);
  const temp = join(dirname(target), `.${basename(target)}.rz-${randomBytes(6).toString('hex')}.part`);
  let handle: FileHandle;
  try {
    // O_EXCL: never reuse, or write through, something already there.
    handle = await openFile(temp, 'wx', 0o600);
  } catch (err) {
    throw fsError(err, `a temporary file beside ${open.path}`);
  }
  try {
    await handle.chmod(open.mode);
  } catch (err) {
    await handle.close().catch(() => {});
    await unlink(temp).catch(() => {});
    throw fsError(err, open.path);
  }
  context.log.debug('upload started', { tunnel: channel.id, temp });
  channel.control({ t: 'opened' });
  return new FilePut(open, target, temp, handle, channel, finish);
}

class FilePut implements TunnelHandler {
  private readonly hash: Hash = createHash('sha256');
  private received = 0;
  private eofSeen = false;
  private renamed = false;
  /** Writes run one after another, in the order the DATA came. */
  private writing: Promise<void> = Promise.resolve();
  private disposing: Promise<void> | undefined;

  constructor(
    private readonly open: FilePutOpenRequest,
    private readonly target: string,
    private readonly temp: string,
    private readonly handle: FileHandle,
    private readonly channel: Channel,
    private readonly finish?: PutFinish,
  ) {}

  data(bytes: Buffer): void {
    if (this.eofSeen) return this.channel.fail('BAD_REQUEST', 'DATA after eof');
    this.received += bytes.byteLength;
    if (this.received > this.open.size) return this.channel.fail('CHECKSUM_MISMATCH', `more than the ${this.open.size} bytes announced arrived; ${this.open.path} is unchanged`);
    this.hash.update(bytes);
    this.queue(async () => {
      await writeAll(this.handle, bytes);
      this.channel.consumed(bytes.byteLength);
    });
  }

  eof(): void {
    if (this.eofSeen) return;
    this.eofSeen = true;
    this.queue(async () => {
      const { size, path } = this.open;
      if (this.received !== size) return this.channel.fail('CHECKSUM_MISMATCH', `${this.received} bytes arrived, ${size} were announced; ${path} is unchanged`);
      const sha256 = this.hash.digest('hex');
      if (sha256 !== this.open.sha256) return this.channel.fail('CHECKSUM_MISMATCH', `the bytes have SHA-256 ${sha256}, not the ${this.open.sha256} announced; ${path} is unchanged`);
      await this.handle.sync();
      await this.handle.close();
      await rename(this.temp, this.target);
      this.renamed = true;
      await syncDirectory(dirname(this.target));
      await this.finish?.check(this.target);
      this.channel.control({ t: 'done', size, sha256 });
      this.channel.close();
      this.finish?.then();
    });
  }

  dispose(): Promise<void> {
    this.disposing ??= (async () => {
      await this.writing;
      await this.handle.close().catch(() => {});
      if (!this.renamed) await unlink(this.temp).catch(() => {});
    })();
    return this.disposing;
  }

  /** Queues a step of the upload; a failure ends the tunnel with its code, IO_ERROR for the file system's (dispose then deletes the temporary file). */
  private queue(step: () => Promise<void>): void {
    this.writing = this.writing.then(async () => {
      if (this.channel.ended) return;
      try {
        await step();
      } catch (err) {
        const failure = fsError(err, this.open.path);
        this.channel.fail(failure.code, failure.message);
      }
    });
  }
}

async function writeAll(handle: FileHandle, bytes: Buffer): Promise<void> {
  let offset = 0;
  while (offset < bytes.byteLength) {
    const { bytesWritten } = await handle.write(bytes, offset, bytes.byteLength - offset);
    offset += bytesWritten;
  }
}

/** Makes the rename itself durable; best effort (not every file system lets a directory be opened). */
async function syncDirectory(directory: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await openFile(directory, 'r');
    await handle.sync();
  } catch {
    // the file is in place either way
  } finally {
    await handle?.close().catch(() => {});
  }
}

export async function openFileGet(open: FileGetOpenRequest, channel: Channel, context: TunnelContext): Promise<TunnelHandler> {
  const root = await realRoot(context);
  let real: string;
  try {
    real = await realpath(open.path);
  } catch (err) {
    throw fsError(err, open.path);
  }
  confine(real, root, open.path);
  let handle: FileHandle;
  let size: number;
  let mode: number;
  try {
    const info = await stat(real);
    if (info.isDirectory()) throw new TunnelError('BAD_REQUEST', `${open.path} is a directory, not a file`);
    if (!info.isFile()) throw new TunnelError('BAD_REQUEST', `${open.path} is not a regular file`);
    checkSize(info.size, context, open.path);
    handle = await openFile(real, 'r');
    ({ size, mode } = info);
  } catch (err) {
    throw fsError(err, open.path);
  }
  channel.control({ t: 'opened', size, mode: mode & 0o7777 });
  const tunnel = new FileGet(open.path, handle, size, channel);
  void tunnel.stream();
  return tunnel;
}

class FileGet implements TunnelHandler {
  private closing: Promise<void> | undefined;

  constructor(
    private readonly path: string,
    private readonly handle: FileHandle,
    private readonly size: number,
    private readonly channel: Channel,
  ) {}

  /** Reads no faster than the window drains, and never past the size `opened` announced. */
  async stream(): Promise<void> {
    const hash = createHash('sha256');
    let sent = 0;
    try {
      while (sent < this.size && !this.channel.ended) {
        const buffer = Buffer.allocUnsafe(Math.min(MAX_DATA_BYTES, this.size - sent));
        const { bytesRead } = await this.handle.read(buffer, 0, buffer.byteLength, sent);
        if (bytesRead === 0) break;
        const chunk = buffer.subarray(0, bytesRead);
        hash.update(chunk);
        sent += bytesRead;
        if (!this.channel.send(chunk)) await this.channel.drained();
      }
      await this.channel.drained();
      if (this.channel.ended) return;
      if (sent !== this.size) return this.channel.fail('IO_ERROR', `${this.path} shrank from ${this.size} to ${sent} bytes while it was sent`);
      this.channel.control({ t: 'done', size: sent, sha256: hash.digest('hex') });
      this.channel.close();
    } catch (err) {
      this.channel.fail('IO_ERROR', fsError(err, this.path).message);
    } finally {
      await this.dispose();
    }
  }

  dispose(): Promise<void> {
    this.closing ??= this.handle.close().catch(() => {});
    return this.closing;
  }
}
