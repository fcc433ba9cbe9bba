/**
 * Changes to credentials take effect at once, whoever makes them: an admin command in another
 * process (noticed through the credentials' change counter, which database triggers bump and
 * this polls twice a second), another node of a cluster (its changes are replicated into this
 * node's database, src/cluster/replication.ts, which then calls `check()`) or the hub's own
 * REST API (which calls `check()` directly). A removed or rotated device, a removed token
 * or user, an ended browser session loses its live connections; a newly registered device
 * appears in the table; new tags reach the table (and the retained statuses).
 */
import type { Aedes, Client } from 'aedes';
import type { Authenticator } from './auth/authenticator.js';
import type { Principal, Role } from './auth/roles.js';
import type { Logger } from './log.js';
import type { Presence } from './presence.js';
import { credentialsVersion } from './store/db.js';
import type { Stores } from './store/stores.js';

const POLL_MS = 500;


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
  // Removals are found by comparing with the last list of ids; everything else is checked
  // against the database as it is now, so it also catches changes made in this process.
  let known = new Set(stores.devices.credentialMap().keys());
  const currentVersion = credentialsVersion(stores.db);
  let version = currentVersion();

  const dropClients = (stillValid: (principal: Principal) => boolean, userHolds: (name: string, role: Role) => boolean) => {
    for (const client of Object.values((broker as unknown as { clients: Record<string, Client> }).clients)) {
      const principal = principalOf(client);
      if (!principal || stillValid(principal)) continue;
      log.info({ clientId: client.id, principal: principal.kind }, 'credentials gone or changed: connection dropped');
      if (principal.kind === 'user') {
        // The user is gone or has another role: every console token of theirs; else only the session ended.
        if (!userHolds(principal.name, principal.role)) auth.revokeConsoleTokens(principal.name);
        else if (principal.session !== undefined) auth.revokeSessionTokens(principal.session);
      }
      client.close();
    }
  };

  const check = () => {
    const devices = stores.devices.credentialMap();
    const removed = new Set([...known].filter((id) => !devices.has(id)));
    // A device added and removed between two polls was never in `known`: one that connected
    // with its token meanwhile is found by its link, and its connection ends too.
    for (const [id, entry] of presence.table) if (entry.link?.credential !== undefined && !devices.has(id)) removed.add(id);
    for (const id of removed) presence.forget(id);
    for (const [id, current] of devices) {
      // New, or just accepted after enrolment: it belongs in the table now.
      if (current.state === 'active' && !presence.get(id)) presence.know(id, current.tags);
      presence.setTags(id, current.tags);
      const link = presence.get(id)?.link;
      // A link that authenticated with a token ends when that token is no longer the device's.
      if (link?.credential !== undefined && (link.credential !== current.tokenHash || current.state !== 'active')) {
        log.info({ device: id }, 'device credentials changed: its connection is dropped');
        link.close('credentials changed');
      }
    }
    known = new Set(devices.keys());

    const tokens: Map<string, Role> = stores.tokens.roleMap();
    const users = new Map(stores.users.list().map((u) => [u.name, u.role]));
    const userHolds = (name: string, role: Role) => users.get(name) === role;
    // A console connection also ends with its browser session (logged out, perhaps on another node).
    const stillValid = (p: Principal) =>
      p.kind === 'token' ? tokens.get(p.name) === p.role : p.kind === 'user' ? userHolds(p.name, p.role) && (p.session === undefined || stores.sessions.exists(p.session)) : true;
    dropClients(stillValid, userHolds);
  };

  const timer = setInterval(() => {
    try {
      const now = currentVersion();
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
