/**
 * Runs commands with bash on the device (PROTOCOL.md "Orders"). No MQTT here: a Command
 * goes in, a Response-shaped object comes out, whatever happens to the process.
 *
 * Every command gets its own process group (`detached: true`), so a timeout can kill the
 * command together with everything it started, grandchildren included.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import type { Readable } from 'node:stream';
import type { Command, DEVICE_ERROR_CODES, Response } from '../protocol/schemas.js';

export const DEFAULT_OUTPUT_CAP = 1024 * 1024;
export const DEFAULT_MAX_CONCURRENT = 4;
export const DEFAULT_MAX_QUEUE = 64;
/** Between SIGTERM and SIGKILL of a timed-out group: time for a clean exit. */
export const DEFAULT_KILL_GRACE_MS = 1000;
/** How long to keep collecting output after bash exited while something it started still holds the pipes. */
export const LATE_OUTPUT_WAIT_MS = 200;
export const SHUTDOWN_MESSAGE = 'hypha is shutting down';

export type DeviceErrorCode = (typeof DEVICE_ERROR_CODES)[number];

/** A Response (ResponseSchema) with every field hypha always fills in made required. */
export interface CommandResponse extends Response {
  type: 'response';
  id: string;
  result: string | null;
  error: string;
  exit_code: number | null;
  duration_ms: number;
  truncated: boolean;
  code?: DeviceErrorCode;
  message?: string;
}

export interface RunSettings {
  /** Largest number of bytes kept per stream; the rest is read and dropped. */
  outputCap?: number;
  killGraceMs?: number;
  /** The shell to run `-c cmd_str` with. */
  bash?: string;
}

export interface RunOptions extends RunSettings {
  /**
   * When the command was received, on the monotonicNow() clock: the deadline is counted
   * from here, so time spent waiting in the queue counts against timeout_ms.
   */
  receivedAt?: number;
  /** Aborting kills the group like a timeout and answers INTERNAL with the abort reason. */
  signal?: AbortSignal;
}

export interface Execution {
  readonly response: Promise<CommandResponse>;
  /** Resolves once a killed group has had its SIGKILL (if it needed one); at once for commands not killed. */
  readonly cleanedUp: Promise<void>;
}

/**
 * Deadlines use a monotonic clock: a Raspberry Pi has no real-time clock and its wall
 * clock jumps by years when NTP first syncs after boot.
 */
export function monotonicNow(): number {
  return performance.now();
}

export function runCommand(cmd: Command, options: RunOptions = {}): Promise<CommandResponse> {
  return startExecution(cmd, options).response;
}

export function startExecution(cmd: Command, options: RunOptions = {}): Execution {
  const receivedAt = options.receivedAt ?? monotonicNow();
  const remainingMs = receivedAt + cmd.timeout_ms - monotonicNow();
  if (remainingMs <= 0) return finished(notStartedInTime(cmd));
  if (cmd.order === 'exec_bash_no_return') return finished(startWithoutWaiting(cmd, options));
  return new CapturedRun(cmd, options, remainingMs).execution;
}

/** A Response for a command that never produced output (refused, expired, failed to start). */
export function failureResponse(id: string, code: DeviceErrorCode, message: string, durationMs = 0): CommandResponse {
  return { type: 'response', id, result: null, error: '', exit_code: null, duration_ms: durationMs, truncated: false, code, message };
}

function finished(response: CommandResponse | Promise<CommandResponse>): Execution {
  return { response: Promise.resolve(response), cleanedUp: Promise.resolve() };
}

function notStartedInTime(cmd: Command): CommandResponse {
  return failureResponse(cmd.id, 'TIMEOUT', `not started: timeout_ms ${cmd.timeout_ms} passed while waiting in the queue`);
}

/** exec_bash_no_return: answer once bash has started and let it run on, unwatched and not killed at timeout. */
function startWithoutWaiting(cmd: Command, options: RunOptions): Promise<CommandResponse> {
  const startedAt = monotonicNow();
  return new Promise((resolve) => {
    let child: ChildProcess;
    try {
      child = spawn(options.bash ?? 'bash', ['-c', cmd.cmd_str], { detached: true, stdio: 'ignore' });
    } catch (err) {
      resolve(failureResponse(cmd.id, 'INTERNAL', `could not start bash: ${errorText(err)}`));
      return;
    }
    // Neither the event loop nor hypha's exit should wait for it.
    child.unref();
    child.once('spawn', () => {
      resolve({ type: 'response', id: cmd.id, result: null, error: '', exit_code: null, duration_ms: elapsedSince(startedAt), truncated: false });
    });
    child.once('error', (err) => resolve(failureResponse(cmd.id, 'INTERNAL', `could not start bash: ${err.message}`)));
  });
}

type KillReason = { kind: 'timeout' } | { kind: 'aborted'; message: string };

/** exec_bash and exec_bash_ret_okng_only: run to completion (or deadline) while capturing output. */
class CapturedRun {
  readonly execution: Execution;
  private readonly startedAt = monotonicNow();
  private readonly stdout: OutputCapture;
  private readonly stderr: OutputCapture;
  private child: ChildProcess | undefined;
  private exitCode: number | null = null;
  private killReason: KillReason | null = null;
  private settled = false;
  private readonly timers = new Set<NodeJS.Timeout>();
  private deadlineTimer: NodeJS.Timeout | undefined;
  private sigkillTimer: NodeJS.Timeout | undefined;
  private resolveResponse!: (response: CommandResponse) => void;
  private resolveCleanup!: () => void;
  private readonly onAbort = () => this.killGroup({ kind: 'aborted', message: abortMessage(this.options.signal) });

  constructor(
    private readonly cmd: Command,
    private readonly options: RunOptions,
    remainingMs: number,
  ) {
    const response = new Promise<CommandResponse>((resolve) => (this.resolveResponse = resolve));
    const cleanedUp = new Promise<void>((resolve) => (this.resolveCleanup = resolve));
    this.execution = { response, cleanedUp };
    // ret_okng_only never shows the output, so none of it is kept.
    const cap = cmd.order === 'exec_bash' ? (options.outputCap ?? DEFAULT_OUTPUT_CAP) : 0;
    this.stdout = new OutputCapture(cap);
    this.stderr = new OutputCapture(cap);
    this.start(remainingMs);
  }

  private start(remainingMs: number): void {
    let child: ChildProcess;
    try {
      child = spawn(this.options.bash ?? 'bash', ['-c', this.cmd.cmd_str], { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    } catch (err) {
      this.failToStart(err);
      return;
    }
    this.child = child;
    collect(child.stdout, this.stdout);
    collect(child.stderr, this.stderr);
    child.once('error', (err) => this.failToStart(err));
    child.once('exit', (code, signal) => this.onExit(code, signal));
    child.once('close', () => this.finish());
    this.deadlineTimer = this.after(remainingMs, () => this.killGroup({ kind: 'timeout' }));
    if (this.options.signal?.aborted) this.onAbort();
    else this.options.signal?.addEventListener('abort', this.onAbort, { once: true });
  }

  private onExit(code: number | null, signal: NodeJS.Signals | null): void {
    this.exitCode = code ?? 128 + (signal ? osConstants.signals[signal] : 0);
    // bash is done: the deadline no longer applies, only late output may still come.
    if (this.deadlineTimer) this.cancel(this.deadlineTimer);
    // A background child (`sleep 100 & echo hi`) can hold the pipes open long after
    // bash is gone; answer with what came so far instead of waiting for it. The answer waits
    // for one more turn of the event loop's I/O (setImmediate): on a busy machine the timer
    // can be due before the pipes' last bytes and end, already waiting, have been read.
    this.after(LATE_OUTPUT_WAIT_MS, () => setImmediate(() => this.finish()));
  }

  private failToStart(err: unknown): void {
    if (this.settled) return;
    this.settle(failureResponse(this.cmd.id, 'INTERNAL', `could not start bash: ${errorText(err)}`));
    this.resolveCleanup();
  }

  /** SIGTERM the whole group now, SIGKILL whatever is left of it after the grace period. */
  private killGroup(reason: KillReason): void {
    const pid = this.child?.pid;
    if (this.settled || this.killReason || pid === undefined) return;
    this.killReason = reason;
    signalGroup(pid, 'SIGTERM');
    this.sigkillTimer = this.after(this.options.killGraceMs ?? DEFAULT_KILL_GRACE_MS, () => {
      if (groupExists(pid)) signalGroup(pid, 'SIGKILL');
      this.resolveCleanup();
      // Normally 'exit' or 'close' has answered by now; this covers bash surviving even SIGKILL's delivery for a moment.
      this.after(LATE_OUTPUT_WAIT_MS, () => this.finish());
    });
  }

  private finish(): void {
    if (this.settled) return;
    this.settle(this.buildResponse());
    if (!this.killReason) this.resolveCleanup();
    else if (!groupExists(this.child?.pid)) this.skipSigkill();
  }

  /** The whole group went at SIGTERM: no need to wait out the grace period (a shutdown waits on it). */
  private skipSigkill(): void {
    if (this.sigkillTimer) this.cancel(this.sigkillTimer);
    this.resolveCleanup();
  }

  private settle(response: CommandResponse): void {
    this.settled = true;
    this.stdout.stopKeeping();
    this.stderr.stopKeeping();
    this.options.signal?.removeEventListener('abort', this.onAbort);
    // A pending SIGKILL escalation must still run after the answer: only the other timers go.
    for (const timer of this.timers) if (timer !== this.sigkillTimer) this.cancel(timer);
    this.resolveResponse(response);
  }

  private buildResponse(): CommandResponse {
    const isExecBash = this.cmd.order === 'exec_bash';
    const response: CommandResponse = {
      type: 'response',
      id: this.cmd.id,
      result: isExecBash ? trimTrailingNewlines(this.stdout.text()) : this.exitCode === 0 ? 'ok' : 'ng',
      error: isExecBash ? trimTrailingNewlines(this.stderr.text()) : '',
      exit_code: this.exitCode,
      duration_ms: elapsedSince(this.startedAt),
      // Only exec_bash returns output; ok/ng keeps none, so nothing of it can be cut.
      truncated: isExecBash && (this.stdout.truncated || this.stderr.truncated),
    };
    if (this.killReason?.kind === 'timeout') {
      return { ...response, exit_code: null, code: 'TIMEOUT', message: `killed after ${this.cmd.timeout_ms} ms` };
    }
    if (this.killReason?.kind === 'aborted') {
      return { ...response, exit_code: null, code: 'INTERNAL', message: this.killReason.message };
    }
    return response;
  }

  private after(ms: number, action: () => void): NodeJS.Timeout {
    const timer = setTimeout(() => {
      this.timers.delete(timer);
      action();
    }, ms);
    this.timers.add(timer);
    return timer;
  }

  private cancel(timer: NodeJS.Timeout): void {
    clearTimeout(timer);
    this.timers.delete(timer);
  }
}

/** Reading never stops, even past the cap or after the answer, so a chatty child never blocks on a full pipe. */
function collect(stream: Readable | null, capture: OutputCapture): void {
  stream?.on('data', (chunk: Buffer) => capture.add(chunk));
  stream?.on('error', () => {});
}

/** Keeps the first `cap` bytes of a stream and counts the rest. */
class OutputCapture {
  private readonly chunks: Buffer[] = [];
  private keptBytes = 0;
  private seenBytes = 0;
  private keeping = true;

  constructor(private readonly cap: number) {}

  add(chunk: Buffer): void {
    if (!this.keeping) return;
    this.seenBytes += chunk.length;
    const room = this.cap - this.keptBytes;
    if (room <= 0) return;
    const kept = chunk.length <= room ? chunk : chunk.subarray(0, room);
    this.chunks.push(kept);
    this.keptBytes += kept.length;
  }

  stopKeeping(): void {
    this.keeping = false;
  }

  get truncated(): boolean {
    return this.seenBytes > this.cap;
  }

  /** Decoded after capping: a character cut at the cap becomes U+FFFD instead of breaking the text. */
  text(): string {
    return new TextDecoder('utf-8', { ignoreBOM: true }).decode(Buffer.concat(this.chunks, this.keptBytes));
  }
}

/** Drops `\n` and `\r\n` at the very end only (a loop, not a regex: a regex on 1 MiB of newlines can go quadratic). */
export function trimTrailingNewlines(text: string): string {
  let end = text.length;
  while (end > 0 && text.charCodeAt(end - 1) === 0x0a) {
    end -= 1;
    if (end > 0 && text.charCodeAt(end - 1) === 0x0d) end -= 1;
  }
  return end === text.length ? text : text.slice(0, end);
}

function signalGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // ESRCH: the group is already gone.
  }
}

function groupExists(pgid: number | undefined): boolean {
  if (pgid === undefined) return false;
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function elapsedSince(start: number): number {
  return Math.round(monotonicNow() - start);
}

function abortMessage(signal: AbortSignal | undefined): string {
  const reason: unknown = signal?.reason;
  if (typeof reason === 'string') return reason;
  if (reason instanceof Error && reason.name !== 'AbortError') return reason.message;
  return 'canceled';
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export interface RunnerOptions extends RunSettings {
  /** Commands running at once; more wait in the queue. */
  maxConcurrent?: number;
  /** Commands waiting at most; past that a command is answered BUSY at once. */
  maxQueue?: number;
}

interface Waiting {
  cmd: Command;
  receivedAt: number;
  resolve: (response: CommandResponse) => void;
  expiry: NodeJS.Timeout;
}

interface Running {
  controller: AbortController;
  execution: Execution;
}

/** Runs commands at most `maxConcurrent` at a time, the rest first come first served. */
export class Runner {
  readonly maxConcurrent: number;
  readonly maxQueue: number;
  private readonly settings: RunSettings;
  private readonly queue: Waiting[] = [];
  private readonly running = new Set<Running>();
  private readonly pendingCleanups = new Set<Promise<void>>();
  private closed = false;

  constructor(options: RunnerOptions = {}) {
    this.maxConcurrent = options.maxConcurrent ?? DEFAULT_MAX_CONCURRENT;
    this.maxQueue = options.maxQueue ?? DEFAULT_MAX_QUEUE;
    if (!Number.isInteger(this.maxConcurrent) || this.maxConcurrent < 1) throw new Error('maxConcurrent must be a whole number of at least 1');
    if (!Number.isInteger(this.maxQueue) || this.maxQueue < 0) throw new Error('maxQueue must be a whole number of at least 0');
    this.settings = { outputCap: options.outputCap, killGraceMs: options.killGraceMs, bash: options.bash };
  }

  get runningCount(): number {
    return this.running.size;
  }

  get waitingCount(): number {
    return this.queue.length;
  }

  /** `receivedAt` is on the monotonicNow() clock; the answer always comes, never a rejection. */
  submit(cmd: Command, receivedAt: number = monotonicNow()): Promise<CommandResponse> {
    if (this.closed) return Promise.resolve(failureResponse(cmd.id, 'INTERNAL', SHUTDOWN_MESSAGE));
    if (this.running.size < this.maxConcurrent) return this.start(cmd, receivedAt);
    if (this.queue.length >= this.maxQueue) {
      return Promise.resolve(failureResponse(cmd.id, 'BUSY', `hypha queue is full (${this.queue.length} waiting)`));
    }
    return new Promise((resolve) => this.enqueue(cmd, receivedAt, resolve));
  }

  /** For shutdown: answers the waiting commands and kills every running command's group (SIGTERM, then SIGKILL after the grace). */
  killAll(reason: string = SHUTDOWN_MESSAGE): void {
    this.closed = true;
    for (const waiting of this.queue.splice(0)) {
      clearTimeout(waiting.expiry);
      waiting.resolve(failureResponse(waiting.cmd.id, 'INTERNAL', reason));
    }
    for (const run of this.running) run.controller.abort(reason);
  }

  /** Resolves when nothing runs or waits and every killed group has had its SIGKILL escalation. */
  async settled(): Promise<void> {
    while (this.running.size > 0 || this.queue.length > 0 || this.pendingCleanups.size > 0) {
      const runs = [...this.running].map((run) => run.execution.response);
      await Promise.all([...runs, ...this.pendingCleanups]);
      if (this.queue.length > 0) await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  private enqueue(cmd: Command, receivedAt: number, resolve: (response: CommandResponse) => void): void {
    const remainingMs = Math.max(0, receivedAt + cmd.timeout_ms - monotonicNow());
    const waiting: Waiting = {
      cmd,
      receivedAt,
      resolve,
      // Expires in the queue at its deadline rather than when a slot frees up, so the answer is not late.
      expiry: setTimeout(() => {
        this.removeFromQueue(waiting);
        resolve(notStartedInTime(cmd));
      }, remainingMs),
    };
    this.queue.push(waiting);
  }

  private removeFromQueue(waiting: Waiting): void {
    const index = this.queue.indexOf(waiting);
    if (index >= 0) this.queue.splice(index, 1);
  }

  private start(cmd: Command, receivedAt: number): Promise<CommandResponse> {
    const controller = new AbortController();
    const execution = startExecution(cmd, { ...this.settings, receivedAt, signal: controller.signal });
    const run: Running = { controller, execution };
    this.running.add(run);
    this.trackCleanup(execution.cleanedUp);
    void execution.response.then(() => {
      this.running.delete(run);
      this.startNext();
    });
    return execution.response;
  }

  private trackCleanup(cleanedUp: Promise<void>): void {
    this.pendingCleanups.add(cleanedUp);
    void cleanedUp.then(() => this.pendingCleanups.delete(cleanedUp));
  }

  private startNext(): void {
    while (this.running.size < this.maxConcurrent && !this.closed) {
      const next = this.queue.shift();
      if (!next) return;
      clearTimeout(next.expiry);
      void this.start(next.cmd, next.receivedAt).then(next.resolve);
    }
  }
}
