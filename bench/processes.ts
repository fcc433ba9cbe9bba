/**
 * Every process and temp dir the bench starts, so that all of them go away at the end, on a
 * failure and on Ctrl-C.
 */
import { fork, spawn, type ChildProcess, type ForkOptions } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const TAIL_LINES = 30;

export class ManagedChild {
  private readonly lines: string[] = [];
  /** Called with every line of its output, e.g. to count warnings the tail would lose. */
  readonly lineListeners: ((line: string) => void)[] = [];
  readonly exited: Promise<number | null>;
  exitCode: number | null | undefined = undefined;

  constructor(
    readonly name: string,
    readonly proc: ChildProcess,
  ) {
    const keep = (chunk: Buffer) => {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line.trim()) continue;
        this.lines.push(line);
        for (const listener of this.lineListeners) listener(line);
      }
      if (this.lines.length > TAIL_LINES) this.lines.splice(0, this.lines.length - TAIL_LINES);
    };
    proc.stdout?.on('data', keep);
    proc.stderr?.on('data', keep);
    this.exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve((this.exitCode = code ?? (signal ? -1 : null)))));
    proc.on('error', (error) => this.lines.push(`spawn failed: ${error.message}`));
  }

  get pid(): number {
    if (this.proc.pid === undefined) throw new Error(`${this.name} did not start: ${this.tail()}`);
    return this.proc.pid;
  }

  get running(): boolean {
    return this.exitCode === undefined;
  }

  /** Its last lines of output, for error messages. */
  tail(): string {
    return this.lines.join('\n');
  }
}

export class Supervisor {
  private readonly children = new Set<ManagedChild>();
  private readonly dirs = new Set<string>();

  spawn(name: string, command: string, args: string[], cwd?: string): ManagedChild {
    return this.track(new ManagedChild(name, spawn(command, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] })));
  }

  /** A Node child with an IPC channel (it exits when the channel closes). */
  fork(name: string, module: string, args: string[] = [], options: ForkOptions = {}): ManagedChild {
    return this.track(new ManagedChild(name, fork(module, args, { stdio: ['ignore', 'pipe', 'pipe', 'ipc'], ...options })));
  }

  tempDir(prefix: string): string {
    const dir = mkdtempSync(join(tmpdir(), prefix));
    this.dirs.add(dir);
    return dir;
  }

  removeTempDir(dir: string): void {
    rmSync(dir, { recursive: true, force: true });
    this.dirs.delete(dir);
  }

  /** SIGTERM, then SIGKILL after graceMs. */
  async stop(child: ManagedChild, graceMs = 3000): Promise<void> {
    if (child.running) {
      child.proc.kill('SIGTERM');
      const timer = setTimeout(() => child.proc.kill('SIGKILL'), graceMs);
      await child.exited;
      clearTimeout(timer);
    }
    this.children.delete(child);
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.children].map((c) => this.stop(c)));
    for (const dir of [...this.dirs]) this.removeTempDir(dir);
  }

  /** For process 'exit' and signals: nothing asynchronous runs any more. */
  killAllSync(): void {
    for (const child of this.children) if (child.running) child.proc.kill('SIGKILL');
    for (const dir of this.dirs) rmSync(dir, { recursive: true, force: true });
    this.children.clear();
    this.dirs.clear();
  }

  private track(child: ManagedChild): ManagedChild {
    this.children.add(child);
    return child;
  }
}

/** A free TCP port on 127.0.0.1 (the OS picks it among the ephemeral ones). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    socket.once('connect', () => (socket.destroy(), resolve(true)));
    socket.once('error', () => resolve(false));
  });
}

/** Wall-clock ms with sub-ms precision, comparable across the bench's processes. */
export const wallMs = () => performance.timeOrigin + performance.now();

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Waits until something accepts connections on the port, or the child exits. */
export async function waitForPort(child: ManagedChild, port: number): Promise<void> {
  while (!(await canConnect(port))) {
    if (!child.running) throw new Error(`${child.name} exited with status ${child.exitCode}:\n${child.tail()}`);
    await sleep(50);
  }
}

export class PhaseError extends Error {}

/** Runs one phase with a time limit; the error names the phase. */
export async function phase<T>(target: string, name: string, timeoutMs: number, work: () => Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new PhaseError(`${target}: phase "${name}" timed out after ${Math.round(timeoutMs / 1000)} s`)), timeoutMs);
  });
  const running = work();
  // Past the time limit the work may still fail (its processes are stopped): not unhandled.
  running.catch(() => {});
  try {
    return await Promise.race([running, timeout]);
  } catch (error) {
    if (error instanceof PhaseError) throw error;
    throw new PhaseError(`${target}: phase "${name}" failed: ${(error as Error).message}`);
  } finally {
    clearTimeout(timer);
  }
}
