/**
 * Changes to credentials take effect at once, whoever makes them: an admin command in another
 * process (noticed through SQLite's `data_version`, polled twice a second) or the hub's own
 * REST API (which calls `check()` directly). A removed or rotated device, a removed token
 * or user loses its live connections; a newly registered device appears in the table.
 */
import type { Aedes, Client } from 'aedes';
import type { Authenticator } from './auth/authenticator.js';
import type { Principal, Role } from './auth/roles.js';
import type { Logger } from './log.js';
import type { Presence } from './presence.js';
import type { DeviceState } from './store/devices.js';
import type { Stores } from './store/stores.js';

const POLL_MS = 500;

type DeviceCredentials = Map<string, { tokenHash: string | null; state: DeviceState }>;

export interface CredentialWatch {
  /** Re-reads credentials and acts on what changed. */
  check(): void;
  close(): void;
}

export function watchCredentials(
  stores: Stores,
  presence: Presence,
  broker: Aedes,
  principalOf: (client: Client) => Principal | undefined,
  auth: Authenticator,
  log: Logger,
): CredentialWatch {
  let devices: DeviceCredentials = stores.devices.credentialMap();
  let tokens: Map<string, Role> = stores.tokens.roleMap();
  let users: Map<string, Role> = new Map(stores.users.list().map((u) => [u.name, u.role]));
  let version = stores.db.pragma('data_version', { simple: true }) as number;

  const dropClients = (matches: (principal: Principal) => boolean, why: string) => {
    for (const client of Object.values((broker as unknown as { clients: Record<string, Client> }).clients)) {
      const principal = principalOf(client);
      if (principal && matches(principal)) {
        log.info({ clientId: client.id, why }, 'connection dropped');
        client.close();
      }
    }
  };

  const check = () => {
    const nextDevices = stores.devices.credentialMap();
    for (const [id, before] of devices) {
      const after = nextDevices.get(id);
      if (!after) {
        presence.forget(id);
        continue;
      }
      if (after.tokenHash !== before.tokenHash || (after.state === 'pending' && before.state !== 'pending')) {
        const link = presence.get(id)?.link;
        if (link) {
          log.info({ device: id }, 'device credentials changed: its connection is dropped');
          link.close('credentials changed');
        }
      }
    }
    for (const [id, after] of nextDevices) if (!devices.has(id) && after.state === 'active') presence.know(id);
    devices = nextDevices;

    const nextTokens = stores.tokens.roleMap();
    for (const [name, role] of tokens) {
      if (nextTokens.get(name) !== role) dropClients((p) => p.kind === 'token' && p.name === name, `token ${name} was removed`);
    }
    tokens = nextTokens;

    const nextUsers = new Map(stores.users.list().map((u) => [u.name, u.role]));
    for (const [name, role] of users) {
      if (nextUsers.get(name) !== role) {
        auth.revokeConsoleTokens(name);
        dropClients((p) => p.kind === 'user' && p.name === name, `user ${name} was removed or changed`);
      }
    }
    users = nextUsers;
  };

  const timer = setInterval(() => {
    try {
      const now = stores.db.pragma('data_version', { simple: true }) as number;
      if (now === version) return;
      version = now;
      check();
    } catch (error) {
      log.error({ err: error }, 'cannot read credential changes');
    }
  }, POLL_MS);
  timer.unref();

  return {
    check,
    close: () => clearInterval(timer),
  };
}
