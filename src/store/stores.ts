/** Everything the hub keeps in its database, opened together. */
import type { Logger } from '../log.js';
import { newPassword } from '../auth/secrets.js';
import { AuditLog } from './audit.js';
import { openDatabase, type Db } from './db.js';
import { DeviceStore } from './devices.js';
import { DeviceStateStore } from './device-state.js';
import { JobStore } from '../jobs/store.js';
import { SessionStore, TokenStore, UserStore } from './people.js';

export interface Stores {
  db: Db;
  devices: DeviceStore;
  /** Desired and reported state of devices (docs/protocol.md "Desired state"). */
  deviceState: DeviceStateStore;
  users: UserStore;
  tokens: TokenStore;
  sessions: SessionStore;
  audit: AuditLog;
  jobs: JobStore;
  close(): void;
}

export function openStores(dataDir: string): Stores {
  const db = openDatabase(dataDir);
  const audit = new AuditLog(db);
  return {
    db,
    devices: new DeviceStore(db),
    deviceState: new DeviceStateStore(db),
    users: new UserStore(db),
    tokens: new TokenStore(db),
    sessions: new SessionStore(db),
    audit,
    jobs: new JobStore(db),
    close() {
      audit.flush();
      db.close();
    },
  };
}

export const FIRST_ADMIN = 'admin';

/**
 * On the first start (no users at all) creates the admin and returns its password, to be
 * shown once; null otherwise.
 */
export function ensureFirstAdmin(stores: Stores, log: Logger): string | null {
  if (stores.users.count() > 0) return null;
  const password = newPassword();
  stores.users.add(FIRST_ADMIN, 'admin', password);
  stores.audit.record({ at: Date.now(), actor: 'hub', actorKind: 'hub', remote: null, action: 'user.add', outcome: 'added', detail: { name: FIRST_ADMIN, role: 'admin' } });
  log.warn({ user: FIRST_ADMIN }, 'first start: created the admin user; its password is shown once (change it with: rhizosphere user passwd admin)');
  return password;
}
