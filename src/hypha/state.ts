/**
 * hypha's side of desired state (docs/protocol.md "Desired state"): the hub tells the device its
 * delta on the retained `P/devices/{id}/state/delta`; with `--state-command CMD`, hypha runs CMD
 * with bash, the delta on its stdin and in HYPHA_STATE_DELTA, and reads on its stdout a JSON
 * object of the values now applied, which it reports on `P/devices/{id}/state/reported` (merged
 * there: null removes a key), so the delta closes. A command that fails (exit status not 0,
 * stdout not such an object, too slow) is reported as the report's `error`.
 *
 * One command at a time: a delta that comes while one runs waits, and only the newest waiting
 * one runs. A delta the same as the last one applied, or as the one that failed on this
 * connection, is not run again (QoS 1 redeliveries, the retained copy after a reconnect).
 * No MQTT here: the agent hands deltas in and publishes the reports it gets back.
 */
import type { Gate } from './gate.js';
import { spawn } from 'node:child_process';
import type { Logger } from './log.js';
import { DeltaMessageSchema, stateProblem, STATE_ERROR_MAX_LENGTH, type DeltaMessage, type JsonValue, type ReportMessage } from '../protocol/state.js';
import { parsePayload } from '../protocol/schemas.js';

/** How long a state command may run before its process group is killed. */
export const STATE_COMMAND_TIMEOUT_MS = 5 * 60 * 1000;
/** stdout kept from a state command (its JSON answer); more is an error. */
const STDOUT_CAP = 1024 * 1024;
/** stderr kept, for the error a failed command reports. */
const STDERR_CAP = 8 * 1024;
const KILL_GRACE_MS = 1000;

export interface StateApplierOptions {
  /** The bash command line; undefined: desired state is ignored (said once in the log). */
  command: string | undefined;
  deviceId: string;
  log: Logger;
  /** Publishes a report on the device's state/reported topic. */
  report: (report: ReportMessage) => void;
  timeoutMs?: number;
  /** Shared by simulated devices: their state commands take turns. */
  gate?: Gate;
}

export class StateApplier {
  private running: Promise<void> | null = null;
  private waiting: DeltaMessage | null = null;
  /** The delta applied last (its JSON), and the one that failed on this connection. */
  private lastApplied: string | null = null;
  private lastFailed: string | null = null;
  private ignoredLogged = false;
  private stopped = false;
  private kill: (() => void) | null = null;

  constructor(private readonly options: StateApplierOptions) {}

  /** A new connection: a delta that failed before is tried again when it comes. */
  connected(): void {
    this.lastFailed = null;
  }

  /** A message on the delta topic. */
  onDelta(payload: Buffer): void {
    // The retained delta cleared (the device was removed): nothing to do.
    if (payload.length === 0) return;
    const parsed = parsePayload(DeltaMessageSchema, payload);
    if (!parsed.ok) {
      this.options.log.warn('invalid state delta ignored', { problem: parsed.message });
      return;
    }
    const delta = parsed.value as DeltaMessage;
    if (Object.keys(delta.state).length === 0) {
      this.options.log.debug('state delta: nothing to apply', { version: delta.version });
      return;
    }
    if (this.options.command === undefined) {
      if (!this.ignoredLogged) this.options.log.info('desired state ignored: no --state-command to apply it with', { version: delta.version, keys: Object.keys(delta.state).join(',') });
      this.ignoredLogged = true;
      return;
    }
    this.waiting = delta;
    this.schedule();
  }

  private schedule(): void {
    if (this.running) return;
    this.running = this.drain().finally(() => {
      this.running = null;
      // One that came as the last run ended.
      if (this.waiting && !this.stopped) this.schedule();
    });
  }

  /** Kills a command that runs (its failure is not reported) and applies nothing more. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.waiting = null;
    this.kill?.();
    await this.running;
  }

  private async drain(): Promise<void> {
    while (this.waiting && !this.stopped) {
      const delta = this.waiting;
      this.waiting = null;
      const key = JSON.stringify(delta);
      if (key === this.lastApplied || key === this.lastFailed) {
        this.options.log.debug('state delta already handled', { version: delta.version });
        continue;
      }
      const outcome = this.options.gate ? await this.options.gate.run(() => this.apply(delta)) : await this.apply(delta);
      if (this.stopped) return;
      if ('state' in outcome) {
        this.lastApplied = key;
        this.options.log.info('desired state applied', { version: delta.version, keys: Object.keys(outcome.state).join(',') });
        this.options.report({ state: outcome.state, version: delta.version });
      } else {
        this.lastFailed = key;
        this.options.log.warn('desired state not applied', { version: delta.version, error: outcome.error });
        this.options.report({ error: outcome.error.slice(0, STATE_ERROR_MAX_LENGTH), version: delta.version });
      }
    }
  }

  /** Runs the command once for `delta`. */
  private apply(delta: DeltaMessage): Promise<{ state: Record<string, JsonValue> } | { error: string }> {
    const json = JSON.stringify(delta);
    const timeoutMs = this.options.timeoutMs ?? STATE_COMMAND_TIMEOUT_MS;
    this.options.log.info('applying desired state', { version: delta.version, keys: Object.keys(delta.state).join(',') });
    return new Promise((resolve) => {
      let stdout = '';
      let stderr = '';
      let overflow = false;
      let timedOut = false;
      let settled = false;
      const child = spawn('bash', ['-c', this.options.command!], {
        // A group of its own, so a timeout kills what the command started too.
        detached: true,
        stdio: ['pipe', 'pipe', 'pipe'],
        env: { ...process.env, HYPHA_STATE_DELTA: json, HYPHA_DEVICE_ID: this.options.deviceId },
      });
      const killGroup = (signal: NodeJS.Signals) => {
        try {
          if (child.pid !== undefined) process.kill(-child.pid, signal);
        } catch {
          // already gone
        }
      };
      const kill = () => {
        killGroup('SIGTERM');
        setTimeout(() => killGroup('SIGKILL'), KILL_GRACE_MS).unref();
      };
      this.kill = kill;
      const timer = setTimeout(() => {
        timedOut = true;
        kill();
      }, timeoutMs);
      const done = (result: { state: Record<string, JsonValue> } | { error: string }) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.kill = null;
        resolve(result);
      };
      child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
        if (stdout.length + chunk.length > STDOUT_CAP) overflow = true;
        else stdout += chunk;
      });
      child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
        if (stderr.length < STDERR_CAP) stderr += chunk.slice(0, STDERR_CAP - stderr.length);
      });
      // A command that never reads its stdin closes the pipe early: nothing wrong with that.
      child.stdin!.on('error', () => {});
      child.stdin!.end(json);
      child.on('error', (error) => done({ error: `could not start bash: ${error.message}` }));
      child.on('close', (code, signal) => {
        const why = lastLine(stderr);
        if (timedOut) return done({ error: `the state command ran past ${Math.round(timeoutMs / 1000)} s and was killed` });
        if (code !== 0) return done({ error: `the state command ${signal ? `was killed by ${signal}` : `exited with status ${code}`}${why ? `: ${why}` : ''}` });
        if (overflow) return done({ error: `the state command wrote more than ${STDOUT_CAP} bytes on stdout` });
        let applied: unknown;
        try {
          applied = JSON.parse(stdout);
        } catch {
          return done({ error: `the state command's stdout is not JSON (it must be an object of the values applied): ${JSON.stringify(stdout.trim().slice(0, 200))}` });
        }
        const problem = stateProblem(applied, { nullRemoves: true });
        if (problem) return done({ error: `the state command's stdout ${problem}` });
        done({ state: applied as Record<string, JsonValue> });
      });
    });
  }
}

function lastLine(text: string): string {
  const lines = text.trim().split('\n');
  return (lines[lines.length - 1] ?? '').trim().slice(0, 300);
}
