/**
 * `deploy` jobs (`rhizosphere deploy`, docs/protocol.md "Software deployment"): for each target
 * the hub copies an artifact it holds (uploaded once, `POST /api/artifacts`) into a directory on
 * the device over a file tunnel (SHA-256 checked by the device), unpacks it when it is a
 * tarball, runs the install command there, and runs the rollback command where the install
 * fails. Each step is a real command or tunnel in the job creator's name, so the audit trail
 * holds every one.
 */
import { principalOf } from './agent-upgrade.js';
import type { Dispatcher, Origin } from './dispatcher.js';
import { HubError } from './errors.js';
import type { ArtifactStore } from './jobs/artifacts.js';
import type { TargetTask, TaskParams } from './jobs/runner.js';
import { taskDone, taskError } from './jobs/task-replies.js';
import type { Logger } from './log.js';
import type { Presence } from './presence.js';
import type { Reply } from './protocol/schemas.js';
import { uploadFromHub } from './tunnels/local-upload.js';
import type { TunnelRelay } from './tunnels/relay.js';

export const DEPLOY_DIR_DEFAULT = '/var/tmp/rhizosphere';
export const DEPLOY_TIMEOUT_MS_DEFAULT = 600_000;
const MKDIR_TIMEOUT_MS = 30_000;
const TARBALL = /\.(tar|tar\.gz|tgz|tar\.xz|txz|tar\.bz2|tbz2)$/;

export interface DeployerOptions {
  artifacts: ArtifactStore;
  relay: TunnelRelay;
  dispatcher: Dispatcher;
  presence: Presence;
  log: Logger;
}

const firstLine = (text: string | null | undefined) => (text ?? '').split('\n').find((line) => line.trim() !== '') ?? '';

export class Deployer implements TargetTask {
  readonly defaultTimeoutMs = DEPLOY_TIMEOUT_MS_DEFAULT;

  constructor(private readonly options: DeployerOptions) {}

  describe(params: TaskParams): string {
    if (!params.artifact || !this.options.artifacts.get(params.artifact)) {
      throw new HubError('BAD_REQUEST', `artifact ${params.artifact ?? '(none)'} is not on the hub: upload it first (POST /api/artifacts, or rhizosphere deploy --file)`);
    }
    return params.install!;
  }

  start(device: string, origin: Origin, timeoutMs: number, params: TaskParams): { refused: Reply } | { outcome: Promise<Reply> } {
    const entry = this.options.presence.get(device);
    if (!entry) return { refused: taskError(device, 'UNKNOWN_DEVICE', `no device ${device} has connected to this hub`) };
    if (!entry.online) return { refused: taskError(device, 'DEVICE_OFFLINE', `device ${device} is not connected`) };
    return { outcome: this.deploy(device, origin, timeoutMs, params) };
  }

  private async deploy(device: string, origin: Origin, timeoutMs: number, params: TaskParams): Promise<Reply> {
    const { artifacts, relay, dispatcher, log } = this.options;
    const artifact = artifacts.get(params.artifact!);
    if (!artifact) return taskError(device, 'NOT_FOUND', `artifact ${params.artifact} was removed from the hub`);
    // The directory, the name and the id are of characters that need no quoting beyond '…' (checked at the edge).
    // `{device}` in the directory: one per device (several devices sharing a disk, as simulated ones do).
    const dir = (params.dir ?? DEPLOY_DIR_DEFAULT).replaceAll('{device}', device);
    const path = `${dir}/${artifact.name}`;
    const sh = (cmd: string, timeout: number) => dispatcher.request({ device, order: 'exec_bash', cmd_str: cmd, timeout_ms: timeout }, origin);
    const inDir = `cd -- '${dir}' && export RHIZOSPHERE_ARTIFACT='${path}' RHIZOSPHERE_DEVICE='${device}' && `;

    const made = await sh(`mkdir -p -- '${dir}' && chmod 700 -- '${dir}'`, MKDIR_TIMEOUT_MS);
    if (made.status === 'error') return made;
    if (made.exit_code !== 0) return taskError(device, 'IO_ERROR', `cannot make ${dir} on the device: ${firstLine(made.error) || `exit ${made.exit_code}`}`);

    const sent = await uploadFromHub(relay, principalOf(origin), origin.remote ?? null, device, { kind: 'file_put', path, size: artifact.size, sha256: artifact.sha256, mode: 0o600 }, artifacts.read(artifact.sha256));
    if (!sent.ok) return taskError(device, sent.code, `copying ${artifact.name} to ${path}: ${sent.message}`);

    const unpack = TARBALL.test(artifact.name) ? `tar -xf '${artifact.name}' && ` : '';
    const installed = await sh(`${inDir}${unpack}${params.install}`, timeoutMs);
    if (installed.status === 'ok' && installed.exit_code === 0) return taskDone(device, `installed ${artifact.name}${firstLine(installed.result) ? `: ${firstLine(installed.result)}` : ''}`, 0, installed.error ?? '');

    const why = installed.status === 'error' ? `${installed.code}: ${installed.message}` : `install exited ${installed.exit_code}${firstLine(installed.error) ? `: ${firstLine(installed.error)}` : ''}`;
    if (!params.rollback) {
      log.info({ device, artifact: artifact.sha256, why }, 'deploy: the install failed; no rollback given');
      return installed.status === 'error' ? installed : taskDone(device, `${why}; no rollback given`, installed.exit_code ?? 1, installed.error ?? '');
    }
    const rolled = await sh(`${inDir}${params.rollback}`, timeoutMs);
    const rollback = rolled.status === 'error' ? `rollback failed (${rolled.code}: ${rolled.message})` : rolled.exit_code === 0 ? 'rolled back' : `rollback exited ${rolled.exit_code}${firstLine(rolled.error) ? `: ${firstLine(rolled.error)}` : ''}`;
    log.info({ device, artifact: artifact.sha256, why, rollback }, 'deploy: the install failed');
    if (installed.status === 'error') return taskError(device, installed.code, `${installed.message}; ${rollback}`);
    return taskDone(device, `${why}; ${rollback}`, installed.exit_code ?? 1, installed.error ?? '');
  }
}
