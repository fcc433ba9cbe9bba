/**
 * `agent_upgrade` jobs (`rhizosphere agent upgrade`, docs/protocol.md "Agent upgrades"): for
 * each target, the hub sends its current agent build over an `agent_upgrade` tunnel, as the job's
 * creator; the device checks it, swaps it in and restarts under its supervisor
 * (src/hypha/self-upgrade.ts); the target succeeds once the device is back announcing the new
 * version, and fails when it comes back as another one (it restored its previous agent) or not
 * within the target's timeout.
 */
import type { AgentDistribution } from './agent-distribution.js';
import type { Principal, Role } from './auth/roles.js';
import type { Origin } from './dispatcher.js';
import { HubError } from './errors.js';
import { taskDone, taskError } from './jobs/task-replies.js';
import type { TargetTask, TaskParams } from './jobs/runner.js';
import type { Logger } from './log.js';
import type { Presence } from './presence.js';
import type { Reply } from './protocol/schemas.js';
import { uploadFromHub } from './tunnels/local-upload.js';
import type { TunnelRelay } from './tunnels/relay.js';

/** Per target: the transfer, the device's check, its restart and reconnect. */
export const UPGRADE_TIMEOUT_MS_DEFAULT = 180_000;
const COMEBACK_POLL_MS = 100;

export interface AgentUpgraderOptions {
  distribution: AgentDistribution;
  relay: TunnelRelay;
  presence: Presence;
  log: Logger;
}

const errorReply = taskError;
const okReply = (device: string, result: string) => taskDone(device, result);

/** The job's creator, as the relay checks and audits it (the runner already checked the role when the job was made). */
export function principalOf(origin: Origin): Principal {
  const role: Role = 'operator';
  const name = origin.actor ?? origin.clientId;
  if (origin.actorKind === 'user') return { kind: 'user', name, role };
  if (origin.actorKind === 'anonymous') return { kind: 'anonymous', role };
  return { kind: 'token', name, role };
}

export class AgentUpgrader implements TargetTask {
  readonly defaultTimeoutMs = UPGRADE_TIMEOUT_MS_DEFAULT;

  constructor(private readonly options: AgentUpgraderOptions) {}

  describe(_params: TaskParams): string {
    const build = this.options.distribution.current();
    if (!build) throw new HubError('UNSUPPORTED', `the hub has no agent build to send (${this.options.distribution.file} is missing): run npm run build`);
    return `hypha ${build.version} (sha256 ${build.sha256})`;
  }

  start(device: string, origin: Origin, timeoutMs: number, _params: TaskParams): { refused: Reply } | { outcome: Promise<Reply> } {
    const build = this.options.distribution.current();
    if (!build) return { refused: errorReply(device, 'UNSUPPORTED', `the hub has no agent build to send (${this.options.distribution.file} is missing)`) };
    const entry = this.options.presence.get(device);
    if (!entry) return { refused: errorReply(device, 'UNKNOWN_DEVICE', `no device ${device} has connected to this hub`) };
    if (!entry.online) return { refused: errorReply(device, 'DEVICE_OFFLINE', `device ${device} is not connected`) };
    const wanted = `hypha/${build.version}`;
    if (entry.agent === wanted) return { outcome: Promise.resolve(okReply(device, `already ${wanted}`)) };
    return { outcome: this.upgrade(device, origin, timeoutMs, build, entry.agent) };
  }

  private async upgrade(device: string, origin: Origin, timeoutMs: number, build: { body: Buffer; sha256: string; version: string }, from: string | null): Promise<Reply> {
    const { relay, presence, log } = this.options;
    const startedAt = Date.now();
    const deadline = startedAt + timeoutMs;
    const sent = await uploadFromHub(relay, principalOf(origin), origin.remote ?? null, device, { kind: 'agent_upgrade', size: build.body.length, sha256: build.sha256, version: build.version }, [build.body]);
    if (!sent.ok) return errorReply(device, sent.code, sent.message);
    if (!sent.end.done) return errorReply(device, 'UPGRADE_FAILED', 'the device closed the upgrade without saying it had the file');
    const sentAt = Date.now();
    log.info({ device, version: build.version, ms: sentAt - startedAt }, 'agent upgrade: sent and checked on the device; waiting for it to come back');

    // The device restarts into the new file: wait for a connection made after that, with its birth.
    const wanted = `hypha/${build.version}`;
    for (;;) {
      const entry = presence.get(device);
      if (entry?.online && entry.connectedAt !== null && entry.connectedAt >= sentAt && entry.agent !== null) {
        if (entry.agent === wanted) return okReply(device, `${from ?? 'unknown'} → ${wanted} in ${((Date.now() - startedAt) / 1000).toFixed(1)} s`);
        return errorReply(device, 'UPGRADE_FAILED', `the device came back as ${entry.agent}, not ${wanted}: the new agent did not connect, and the previous one was restored`);
      }
      if (Date.now() >= deadline) {
        const state = entry?.online ? `still announcing ${entry.agent ?? 'no agent'}` : 'offline';
        return errorReply(device, 'TIMEOUT', `the device did not come back as ${wanted} within ${Math.round(timeoutMs / 1000)} s (${state}); a new agent that cannot connect restores the previous one by itself`);
      }
      await new Promise((resolve) => setTimeout(resolve, COMEBACK_POLL_MS));
    }
  }
}
