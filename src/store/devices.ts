/**
 * Devices in the database: their credentials (a token hash), enrolment state, tags, and
 * what the hub last saw of them. Presence writes the last-seen fields in batches; the admin
 * commands and REST write the rest.
 */
import { existsSync, readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { HubError } from '../errors.js';
import { idProblem, isValidId } from '../protocol/ids.js';
import type { Transport } from '../protocol/schemas.js';
import { hashToken, newToken, tokenMatches } from '../auth/secrets.js';
import type { Db } from './db.js';

export type DeviceState = 'active' | 'pending';

export interface StoredDevice {
  id: string;
  state: DeviceState;
  tags: string[];
  hasToken: boolean;
  createdAt: number;
  transport: Transport | null;
  remoteAddress: string | null;
  connectedAt: number | null;
  lastSeen: number | null;
}

/** What presence records about a connection. */
export interface SeenRecord {
  id: string;
  transport: Transport | null;
  remoteAddress: string | null;
  connectedAt: number | null;
  lastSeen: number | null;
}

export type TokenCheck = 'ok' | 'unknown' | 'wrong' | 'pending' | 'no-token';

interface Row {
  id: string;
  token_hash: string | null;
  state: DeviceState;
  tags: string;
  created_at: number;
  transport: Transport | null;
  remote_address: string | null;
  connected_at: number | null;
  last_seen: number | null;
}

const TAG_PATTERN = /^[A-Za-z0-9._:-]{1,64}$/;

export function tagProblem(tag: string): string | null {
  return TAG_PATTERN.test(tag) ? null : `tag ${JSON.stringify(tag)} must be 1 to 64 of A-Z a-z 0-9 . _ : -`;
}

function toDevice(row: Row): StoredDevice {
  return {
    id: row.id,
    state: row.state,
    tags: JSON.parse(row.tags) as string[],
    hasToken: row.token_hash !== null,
    createdAt: row.created_at,
    transport: row.transport,
    remoteAddress: row.remote_address,
    connectedAt: row.connected_at,
    lastSeen: row.last_seen,
  };
}

export class DeviceStore {
  private readonly byId;
  private readonly all;
  private readonly credentials;
  private readonly seen;

  constructor(private readonly db: Db) {
    this.byId = db.prepare<[string], Row>('SELECT * FROM devices WHERE id = ?');
    this.all = db.prepare<[], Row>('SELECT * FROM devices ORDER BY id');
    this.credentials = db.prepare<[], { id: string; token_hash: string | null; state: DeviceState }>('SELECT id, token_hash, state FROM devices');
    this.seen = db.prepare(
      `INSERT INTO devices (id, created_at, transport, remote_address, connected_at, last_seen)
       VALUES (@id, @now, @transport, @remoteAddress, @connectedAt, @lastSeen)
       ON CONFLICT(id) DO UPDATE SET transport = excluded.transport, remote_address = excluded.remote_address,
         connected_at = excluded.connected_at, last_seen = excluded.last_seen`,
    );
  }

  get(id: string): StoredDevice | undefined {
    const row = this.byId.get(id);
    return row ? toDevice(row) : undefined;
  }

  list(): StoredDevice[] {
    return this.all.all().map(toDevice);
  }

  /** id → token hash and state, for noticing removals and rotations made by another process. */
  credentialMap(): Map<string, { tokenHash: string | null; state: DeviceState }> {
    return new Map(this.credentials.all().map((r) => [r.id, { tokenHash: r.token_hash, state: r.state }]));
  }

  /** Registers a device and returns its token: shown once, stored only as a hash. */
  add(id: string, tags: string[] = []): string {
    checkId(id);
    checkTags(tags);
    const existing = this.byId.get(id);
    if (existing?.token_hash) throw new HubError('BAD_REQUEST', `device ${id} exists already (rotate its token with: rhizosphere device rotate ${id})`);
    const token = newToken();
    this.db
      .prepare(
        `INSERT INTO devices (id, token_hash, state, tags, created_at) VALUES (?, ?, 'active', ?, ?)
         ON CONFLICT(id) DO UPDATE SET token_hash = excluded.token_hash, state = 'active', tags = excluded.tags`,
      )
      .run(id, hashToken(token), JSON.stringify(tags), Date.now());
    return token;
  }

  /** A new token; the old one stops working at once. */
  rotate(id: string): string {
    const token = newToken();
    const result = this.db.prepare(`UPDATE devices SET token_hash = ?, state = 'active' WHERE id = ?`).run(hashToken(token), id);
    if (result.changes === 0) throw new HubError('UNKNOWN_DEVICE', `no device ${id}`);
    return token;
  }

  remove(id: string): void {
    const result = this.db.prepare('DELETE FROM devices WHERE id = ?').run(id);
    if (result.changes === 0) throw new HubError('UNKNOWN_DEVICE', `no device ${id}`);
  }

  setTags(id: string, tags: string[]): void {
    checkTags(tags);
    const result = this.db.prepare('UPDATE devices SET tags = ? WHERE id = ?').run(JSON.stringify(tags), id);
    if (result.changes === 0) throw new HubError('UNKNOWN_DEVICE', `no device ${id}`);
  }

  /** An unknown device that presented the enrolment key: it waits, with the token it chose, for an admin. */
  addPending(id: string, tokenHash: string): void {
    this.db
      .prepare(`INSERT INTO devices (id, token_hash, state, created_at) VALUES (?, ?, 'pending', ?) ON CONFLICT(id) DO NOTHING`)
      .run(id, tokenHash, Date.now());
  }

  accept(id: string): void {
    const result = this.db.prepare(`UPDATE devices SET state = 'active' WHERE id = ? AND state = 'pending'`).run(id);
    if (result.changes === 0) throw new HubError('UNKNOWN_DEVICE', `no pending device ${id}`);
  }

  reject(id: string): void {
    const result = this.db.prepare(`DELETE FROM devices WHERE id = ? AND state = 'pending'`).run(id);
    if (result.changes === 0) throw new HubError('UNKNOWN_DEVICE', `no pending device ${id}`);
  }

  checkToken(id: string, token: string): TokenCheck {
    const row = this.byId.get(id);
    if (!row) return 'unknown';
    if (!row.token_hash) return 'no-token';
    if (!tokenMatches(token, row.token_hash)) return 'wrong';
    return row.state === 'pending' ? 'pending' : 'ok';
  }

  /** Writes what presence saw, many devices in one transaction. */
  recordSeen(records: Iterable<SeenRecord>): void {
    const now = Date.now();
    this.db.transaction((list: Iterable<SeenRecord>) => {
      for (const r of list) this.seen.run({ ...r, now });
    })(records);
  }

  /**
   * Devices known from `devices.json` (kept by versions before the database) are imported
   * once; the file is renamed so it is not imported again.
   */
  importLegacyRegistry(dataDir: string): number {
    const file = join(dataDir, 'devices.json');
    if (!existsSync(file)) return 0;
    let list: unknown;
    try {
      list = JSON.parse(readFileSync(file, 'utf8'));
    } catch {
      list = [];
    }
    const records = (Array.isArray(list) ? list : []).filter((r): r is SeenRecord => isValidId((r as SeenRecord)?.id));
    this.recordSeen(records);
    renameSync(file, `${file}.imported`);
    return records.length;
  }
}

function checkId(id: string): void {
  const problem = idProblem(id);
  if (problem) throw new HubError('BAD_REQUEST', `device id ${problem}`);
}

function checkTags(tags: string[]): void {
  for (const tag of tags) {
    const problem = tagProblem(tag);
    if (problem) throw new HubError('BAD_REQUEST', problem);
  }
}
