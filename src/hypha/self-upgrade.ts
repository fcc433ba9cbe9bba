/**
 * How a standalone hypha replaces itself (`rhizosphere agent upgrade`, docs/protocol.md
 * "Agent upgrades"). The hub sends the new file over an `agent_upgrade` tunnel; the agent:
 *
 * 1. writes it beside itself (`hypha.js.new`) and checks its size and SHA-256;
 * 2. runs it once (`node hypha.js.new --version`): it must start on this Node.js and say the
 *    version announced, or nothing changes (UPGRADE_FAILED);
 * 3. keeps itself as `hypha.js.prev`, writes the marker `hypha.js.upgrade.json`, renames the
 *    new file over itself (atomic), and exits for its supervisor (systemd) to start the new one;
 * 4. the new agent commits (deletes the marker) once its command subscription is granted. If it
 *    has not within the commit window (it cannot connect, or keeps crashing), the agent that
 *    starts next restores `hypha.js.prev` and exits, and the previous agent comes back.
 *
 * Only the standalone build can do this (a checkout is upgraded with git and npm), and only
 * under a supervisor that starts it again: systemd (INVOCATION_ID) or HYPHA_SUPERVISED=1.
 */
import { spawn } from 'node:child_process';
import { copyFile, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { readFileSync, renameSync, unlinkSync } from 'node:fs';
import { TunnelError } from './tunnels/channel.js';
import type { Logger } from './log.js';

/** How long a new agent has to connect and commit before the next start restores the previous one. */
export const DEFAULT_COMMIT_WINDOW_MS = 120_000;
/** How long `node hypha.js.new --version` may take. */
const CHECK_TIMEOUT_MS = 30_000;

export interface UpgradeMarker {
  from: string;
  to: string;
  /** Epoch ms by which the new agent must have committed. */
  commitBy: number;
}

export interface SelfUpgradeOptions {
  /** The standalone agent file running now; undefined when this hypha is not the standalone build. */
  agentFile: string | undefined;
  /** This agent's version. */
  version: string;
  /** Whether something starts hypha again when it exits. */
  supervised: boolean;
  commitWindowMs?: number;
  log: Logger;
  /** Stops the agent cleanly and ends the process (the supervisor then starts the new file). */
  exitForRestart: () => void;
}

const paths = (agentFile: string) => ({ staged: `${agentFile}.new`, previous: `${agentFile}.prev`, marker: `${agentFile}.upgrade.json` });

export class SelfUpgrade {
  private committed = false;
  private rollbackTimer: NodeJS.Timeout | undefined;

  constructor(private readonly options: SelfUpgradeOptions) {}

  /** Where the new file is written, after checking that an upgrade can happen here at all. */
  stagingPath(): string {
    const { agentFile, supervised } = this.options;
    if (agentFile === undefined) {
      throw new TunnelError('UNSUPPORTED', 'this hypha runs from a project checkout, not the standalone agent: upgrade it where it was installed (git pull, npm ci)');
    }
    if (!supervised) {
      throw new TunnelError('UNSUPPORTED', 'nothing would start the new agent: run hypha under systemd (install.sh sets it up) or another supervisor that restarts it, with HYPHA_SUPERVISED=1');
    }
    return paths(agentFile).staged;
  }

  /** Step 2: the staged file must run here and say the version the hub announced. */
  async check(staged: string, version: string): Promise<void> {
    const { stdout, code, error } = await runVersion(staged);
    const said = stdout.trim();
    if (code !== 0 || said !== version) {
      await unlink(staged).catch(() => {});
      const why = error ?? (code !== 0 ? `it exited with status ${code}` : `it says ${JSON.stringify(said.slice(0, 64))}, not ${version}`);
      throw new TunnelError('UPGRADE_FAILED', `the new agent did not pass its check on this device (node ${process.version}): ${why}; the agent in place is unchanged`);
    }
  }

  /** Step 3: swap the files and leave; called once the hub has been told. */
  async swapAndRestart(version: string): Promise<void> {
    const agentFile = this.options.agentFile!;
    const { staged, previous, marker } = paths(agentFile);
    const record: UpgradeMarker = { from: this.options.version, to: version, commitBy: Date.now() + (this.options.commitWindowMs ?? DEFAULT_COMMIT_WINDOW_MS) };
    await copyFile(agentFile, previous);
    await writeFile(marker, `${JSON.stringify(record)}\n`, { mode: 0o600 });
    await rename(staged, agentFile);
    this.options.log.info('agent replaced: restarting into the new one', { from: record.from, to: version, file: agentFile });
    this.options.exitForRestart();
  }

  /**
   * Step 4, at every start, before connecting: an upgrade to this version waits for its
   * commit (a timer restores the previous agent when it does not come); a marker whose time
   * has passed is rolled back at once; a marker for another version is an old one, removed.
   * True when this start ended in a rollback (the caller exits).
   */
  startCheck(): boolean {
    const { agentFile, version, log } = this.options;
    if (agentFile === undefined) return false;
    const { marker, previous } = paths(agentFile);
    let record: UpgradeMarker;
    try {
      record = JSON.parse(readFileSync(marker, 'utf8')) as UpgradeMarker;
    } catch {
      return false;
    }
    if (record.to !== version) {
      log.warn('the upgrade to a newer agent was rolled back: this is the previous one', { to: record.to, running: version });
      try {
        unlinkSync(marker);
      } catch {
        // already gone
      }
      return false;
    }
    const left = record.commitBy - Date.now();
    if (left <= 0) return this.rollback(previous, agentFile, marker, record);
    log.info('new agent on trial: it commits once its command subscription is granted', { from: record.from, within_ms: left });
    this.rollbackTimer = setTimeout(() => {
      if (!this.committed && this.rollback(previous, agentFile, marker, record)) this.options.exitForRestart();
    }, left);
    this.rollbackTimer.unref();
    return false;
  }

  /** The new agent is connected and subscribed: the upgrade stays. */
  async commit(): Promise<void> {
    if (this.committed || this.options.agentFile === undefined) return;
    this.committed = true;
    clearTimeout(this.rollbackTimer);
    const { marker } = paths(this.options.agentFile);
    try {
      await readFile(marker);
    } catch {
      return;
    }
    await unlink(marker).catch(() => {});
    this.options.log.info('agent upgrade committed', { version: this.options.version });
  }

  private rollback(previous: string, agentFile: string, marker: string, record: UpgradeMarker): boolean {
    const { log } = this.options;
    try {
      renameSync(previous, agentFile);
      log.error('the new agent did not connect within its commit window: the previous one is restored', { from: record.to, to: record.from });
    } catch (err) {
      log.error('cannot restore the previous agent', { file: previous, error: err });
      return false;
    }
    try {
      unlinkSync(marker);
    } catch {
      // already gone
    }
    return true;
  }
}

function runVersion(file: string): Promise<{ stdout: string; code: number | null; error?: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [file, '--version'], { stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout = (stdout + chunk).slice(0, 4096)));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr = (stderr + chunk).slice(-4096)));
    const timer = setTimeout(() => child.kill('SIGKILL'), CHECK_TIMEOUT_MS);
    child.on('error', (err) => {
      clearTimeout(timer);
      resolve({ stdout, code: null, error: err.message });
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const firstLine = stderr.trim().split('\n').find(Boolean);
      resolve({ stdout, code: code ?? -1, ...(code !== 0 ? { error: `it ended with ${signal ?? `status ${code}`}${firstLine ? `: ${firstLine}` : ''}` } : {}) });
    });
  });
}
