/**
 * `shell` tunnels: the user's login shell in a pseudo-terminal. node-pty is an optional
 * dependency (it needs a native build), so it is loaded only when a shell is asked for and a
 * device without it still offers files and TCP.
 */
import { constants, homedir } from 'node:os';
import type { IPty } from 'node-pty';
import { TunnelError, type Channel } from './channel.js';
import type { TunnelContext, TunnelHandler } from './handler.js';
import type { ShellOpenRequest } from './schemas.js';

/** After SIGHUP, how long a shell gets before SIGKILL. */
const KILL_GRACE_MS = 1000;
/** How often input still queued for the PTY is looked at again. */
const INPUT_POLL_MS = 10;

/**
 * node-pty's write() takes no callback; on Unix it queues what the kernel will not take yet
 * (a shell that does not read its input) in `_writeStream._writeQueue`. Keystrokes are
 * acknowledged only once that queue is empty, so a paste into a busy shell holds the client
 * back instead of piling up in hypha. Where the internals differ, input counts as written.
 */
function writeQueue(pty: IPty): unknown[] | null {
  const queue = (pty as unknown as { _writeStream?: { _writeQueue?: unknown } })._writeStream?._writeQueue;
  return Array.isArray(queue) ? queue : null;
}

function inputQueued(pty: IPty): boolean {
  return (writeQueue(pty)?.length ?? 0) > 0;
}

/** Input still queued when the shell is killed would only be reported as a failed write to a closed PTY. */
function dropQueuedInput(pty: IPty): void {
  const queue = writeQueue(pty);
  if (queue) queue.length = 0;
}

type Spawn = typeof import('node-pty').spawn;

async function loadSpawn(context: TunnelContext): Promise<Spawn> {
  let loaded: unknown;
  try {
    loaded = await context.loadPty();
  } catch (err) {
    context.log.debug('node-pty not loadable', { error: err });
  }
  const module = loaded as { spawn?: Spawn; default?: { spawn?: Spawn } } | undefined;
  const spawn = module?.spawn ?? module?.default?.spawn;
  if (typeof spawn !== 'function') throw new TunnelError('UNSUPPORTED', 'shell tunnels need node-pty on the device');
  return spawn;
}

export async function openShell(open: ShellOpenRequest, channel: Channel, context: TunnelContext): Promise<TunnelHandler> {
  const spawn = await loadSpawn(context);
  const shell = process.env.SHELL || 'bash';
  let pty: IPty;
  try {
    pty = spawn(shell, ['-l'], {
      name: open.term,
      cols: open.cols,
      rows: open.rows,
      cwd: homedir(),
      env: { ...process.env, TERM: open.term },
      // Raw bytes: the terminal's output is not necessarily UTF-8, and chunks may split characters.
      encoding: null,
    });
  } catch (err) {
    throw new TunnelError('INTERNAL', `could not start ${shell}: ${(err as Error).message}`);
  }
  channel.control({ t: 'opened' });
  return new ShellTunnel(pty, channel, context);
}

class ShellTunnel implements TunnelHandler {
  private paused = false;
  private exited = false;
  /** Input bytes handed to the PTY and not yet acknowledged. */
  private unacknowledged = 0;
  private inputTimer: NodeJS.Timeout | undefined;
  private readonly exit: Promise<void>;

  constructor(
    private readonly pty: IPty,
    private readonly channel: Channel,
    private readonly context: TunnelContext,
  ) {
    pty.onData((chunk: string | Buffer) => this.output(typeof chunk === 'string' ? Buffer.from(chunk) : chunk));
    this.exit = new Promise((resolve) =>
      pty.onExit(({ exitCode, signal }) => {
        this.exited = true;
        clearTimeout(this.inputTimer);
        resolve();
        void this.finish(exitCode, signal);
      }),
    );
  }

  data(bytes: Buffer): void {
    if (this.exited) return;
    this.pty.write(bytes);
    this.unacknowledged += bytes.byteLength;
    this.acknowledgeInput();
  }

  private acknowledgeInput(): void {
    if (this.inputTimer || this.exited) return;
    if (!inputQueued(this.pty)) {
      this.channel.consumed(this.unacknowledged);
      this.unacknowledged = 0;
      return;
    }
    this.inputTimer = setTimeout(() => {
      this.inputTimer = undefined;
      this.acknowledgeInput();
    }, INPUT_POLL_MS);
  }

  resize(cols: number, rows: number): void {
    if (!this.exited) this.pty.resize(cols, rows);
  }

  async dispose(): Promise<void> {
    clearTimeout(this.inputTimer);
    if (this.exited) return;
    dropQueuedInput(this.pty);
    this.pty.kill('SIGHUP');
    const timer = setTimeout(() => {
      if (!this.exited) this.pty.kill('SIGKILL');
    }, KILL_GRACE_MS);
    await this.exit;
    clearTimeout(timer);
  }

  /** Terminal output goes out as the window allows; meanwhile the PTY is not read, so the shell blocks on write. */
  private output(bytes: Buffer): void {
    if (this.channel.send(bytes) || this.paused) return;
    this.paused = true;
    this.pty.pause();
    void this.channel.drained().then(() => {
      this.paused = false;
      if (!this.exited) this.pty.resume();
    });
  }

  private async finish(exitCode: number, signal: number | undefined): Promise<void> {
    // The last output goes before `exit`, however long the window makes it wait.
    await this.channel.drained();
    const signalName = signal ? (Object.entries(constants.signals).find(([, number]) => number === signal)?.[0] ?? String(signal)) : null;
    this.context.log.info('shell exited', { tunnel: this.channel.id, code: exitCode, signal: signalName ?? undefined });
    this.channel.control({ t: 'exit', code: signalName ? null : exitCode, signal: signalName });
    this.channel.close('exit');
  }
}
