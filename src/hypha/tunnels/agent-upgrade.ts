/**
 * `agent_upgrade` tunnels: the hub's agent build, written beside this agent and checked, then
 * swapped in (src/hypha/self-upgrade.ts says how and when it is rolled back).
 */
import { TunnelError, type Channel } from './channel.js';
import { openFilePut } from './files.js';
import type { TunnelContext, TunnelHandler } from './handler.js';
import type { AgentUpgradeOpenRequest } from './schemas.js';

export async function openAgentUpgrade(open: AgentUpgradeOpenRequest, channel: Channel, context: TunnelContext): Promise<TunnelHandler> {
  const upgrade = context.selfUpgrade;
  if (!upgrade) throw new TunnelError('UNSUPPORTED', 'this agent cannot replace itself');
  const staged = upgrade.stagingPath();
  // The agent's own directory, whatever --file-root confines file transfers to.
  return openFilePut(
    { t: 'open', kind: 'file_put', path: staged, size: open.size, sha256: open.sha256, mode: 0o755 },
    channel,
    { ...context, fileRoot: undefined },
    {
      check: (target) => upgrade.check(target, open.version),
      then: () => {
        // Once `done` is on its way: the hub then waits for this device to come back as the new version.
        setTimeout(() => {
          upgrade.swapAndRestart(open.version).catch((err: unknown) => context.log.error('cannot swap in the new agent', { error: err }));
        }, 200);
      },
    },
  );
}
