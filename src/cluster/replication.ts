/**
 * Credential replication: each node keeps its own SQLite database (its own --data-dir, on any
 * machine), and the rows of devices (credentials and tags, not the connection columns), users,
 * API tokens, browser sessions and devices' desired and reported state are the same on every node.
 *
 * - Local writes, whoever makes them (this hub, an admin command in another process, even while
 *   the hub is down), are logged by database triggers in `local_changes` (migration 6).
 * - Push: a poll sends the current value of each logged row, or a tombstone when it is gone, to
 *   a Redis hash per table plus a notice on one stream (in one MULTI), then drops those log rows.
 * - Pull: a dedicated connection follows the stream and applies the hash's current value of each
 *   noticed row, inside a transaction that sets `applying` so the triggers do not log it back.
 *   A row with a local change not pushed yet is left alone: the push that follows wins.
 * - Join (and after losing Redis, or falling behind the trimmed stream): the local changes are
 *   pushed, every hash is applied, and local rows Redis does not know are pushed (the first
 *   node seeds the cluster from its data dir).
 *
 * Conflicts: the last write to reach Redis wins, per row. Tombstones stay (a node that was down
 * must not resurrect a removed device); those of sessions are dropped once such a session would
 * have expired anyway.
 */
import type { Statement } from 'better-sqlite3';
import type { Redis } from 'ioredis';
import type { Logger } from '../log.js';
import type { Db } from '../store/db.js';
import { SESSION_TTL_MS } from '../store/people.js';
import { canonical, encodeEntry, isReplicatedTable, parseEntry, REPLICATED_TABLES, TABLES, type Entry, type ReplicatedTable, type Row } from './replica-rows.js';

export const REPLICA_PREFIX = 'rhizosphere:replica:';
export const CHANGES_STREAM = `${REPLICA_PREFIX}changes`;
export const hashKey = (table: ReplicatedTable) => `${REPLICA_PREFIX}${table}`;
/** Approximate length the stream is trimmed to; a node further behind reconciles in full. */
const STREAM_MAX = 10_000;
const PUSH_POLL_MS = 250;
const PUSH_BATCH = 500;
const READ_BLOCK_MS = 5000;
const RETRY_MS = 1000;

export interface ReplicationOptions {
  db: Db;
  /** Commands (push, reads of the hashes). */
  redis: Redis;
  /** A connection of its own for the blocking stream read. */
  reader: Redis;
  nodeId: string;
  log: Logger;
  /** Rows changed by another node were applied (`changed`: which): act on them (drop connections, know devices, publish a state delta …). */
  onApplied: (changed: readonly ReplicaChange[]) => void;
}

/** A row of a replicated table, by its key. */
export interface ReplicaChange {
  table: ReplicatedTable;
  key: string;
}

type Notice = ReplicaChange;

/** Orders stream ids (`ms-seq`). */
export function compareStreamIds(a: string, b: string): number {
  const [am = 0n, as = 0n] = a.split('-').map((p) => BigInt(p));
  const [bm = 0n, bs = 0n] = b.split('-').map((p) => BigInt(p));
  return am === bm ? (as === bs ? 0 : as < bs ? -1 : 1) : am < bm ? -1 : 1;
}

export class Replication {
  private readonly db: Db;
  private readonly redis: Redis;
  private readonly reader: Redis;
  private readonly log: Logger;
  private lastId = '0-0';
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private pushing: Promise<void> | null = null;
  private following: Promise<void> | null = null;
  private readonly statements;

  constructor(private readonly options: ReplicationOptions) {
    ({ db: this.db, redis: this.redis, reader: this.reader, log: this.log } = options);
    const db = this.db;
    const perTable = <P extends unknown[]>(build: (table: ReplicatedTable) => string) =>
      Object.fromEntries(REPLICATED_TABLES.map((t) => [t, db.prepare<P>(build(t))])) as Record<ReplicatedTable, Statement<P>>;
    this.statements = {
      changes: db.prepare<[number], { seq: number; tbl: string; key: string }>('SELECT seq, tbl, key FROM local_changes ORDER BY seq LIMIT ?'),
      anyChange: db.prepare<[], { seq: number }>('SELECT seq FROM local_changes LIMIT 1'),
      pending: db.prepare<[string, string], { seq: number }>('SELECT seq FROM local_changes WHERE tbl = ? AND key = ?'),
      dropPushed: db.prepare<[number]>('DELETE FROM local_changes WHERE seq <= ?'),
      logChange: db.prepare<[string, string, number]>('INSERT INTO local_changes (tbl, key, at) VALUES (?, ?, ?) ON CONFLICT (tbl, key) DO NOTHING'),
      applying: db.prepare<[number]>('UPDATE replication_state SET applying = ? WHERE id = 1'),
      userExists: db.prepare<[string], { one: number }>('SELECT 1 AS one FROM users WHERE name = ?'),
      get: perTable<[string]>((t) => `SELECT ${TABLES[t].columns.join(', ')} FROM ${t} WHERE ${TABLES[t].key} = ?`),
      keys: perTable<[]>((t) => `SELECT ${TABLES[t].key} AS key FROM ${t}`),
      remove: perTable<[string]>((t) => `DELETE FROM ${t} WHERE ${TABLES[t].key} = ?`),
      upsert: perTable<[Row]>((t) => {
        const { key, columns } = TABLES[t];
        const updates = columns.filter((c) => c !== key).map((c) => `${c} = excluded.${c}`);
        return `INSERT INTO ${t} (${columns.join(', ')}) VALUES (${columns.map((c) => `@${c}`).join(', ')}) ON CONFLICT (${key}) DO UPDATE SET ${updates.join(', ')}`;
      }),
    };
  }

  /**
   * Before serving: brings this node's database and the cluster's together, then keeps them so
   * (push poll, stream follower).
   */
  async join(): Promise<void> {
    // Notices from here on are read by the follower: none falls between the reconcile and it.
    const last = (await this.redis.xrevrange(CHANGES_STREAM, '+', '-', 'COUNT', 1))[0];
    this.lastId = last?.[0] ?? '0-0';
    await this.reconcile();
    this.timer = setInterval(() => void this.push().catch((error: Error) => this.log.debug({ err: error.message }, 'replication: push failed; retrying')), PUSH_POLL_MS);
    this.timer.unref();
    this.following = this.follow();
  }

  /** Sends the logged local changes to Redis (one batch at a time; concurrent calls share one run). */
  push(): Promise<void> {
    this.pushing ??= this.pushAll().finally(() => (this.pushing = null));
    return this.pushing;
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    this.reader.disconnect();
    await this.following?.catch(() => {});
  }

  /** Pushes pending changes, applies every row Redis holds, pushes local rows Redis does not know. */
  async reconcile(): Promise<void> {
    await this.push();
    const applied: Notice[] = [];
    for (const table of REPLICATED_TABLES) {
      const values = await this.redis.hgetall(hashKey(table));
      const entries: [Notice, Entry][] = [];
      const expired: string[] = [];
      for (const [key, value] of Object.entries(values)) {
        const parsed = parseEntry(table, key, value);
        if ('problem' in parsed) {
          this.log.warn({ table, key: key.slice(0, 200), problem: parsed.problem }, 'replication: malformed entry in Redis skipped');
          continue;
        }
        if (table === 'sessions' && sessionExpired(parsed.entry, parsed.at)) expired.push(key);
        entries.push([{ table, key }, parsed.entry]);
      }
      applied.push(...this.apply(entries));
      // Session rows and tombstones past any session's lifetime: nothing to keep them for.
      if (expired.length > 0) await this.redis.hdel(hashKey(table), ...expired);
      const now = Date.now();
      this.db.transaction(() => {
        for (const { key } of this.statements.keys[table].all() as { key: string }[]) {
          if (!(key in values)) this.statements.logChange.run(table, key, now);
        }
      })();
    }
    await this.push();
    if (applied.length > 0) this.options.onApplied(applied);
    this.log.info({ applied: applied.length }, 'replication: in step with the cluster');
  }

  private async pushAll(): Promise<void> {
    for (;;) {
      if (this.statements.anyChange.get() === undefined) return;
      const changes = this.statements.changes.all(PUSH_BATCH);
      const multi = this.redis.multi();
      const now = Date.now();
      for (const { tbl, key } of changes) {
        if (!isReplicatedTable(tbl)) continue;
        const row = this.statements.get[tbl].get(key) as Row | undefined;
        multi.hset(hashKey(tbl), key, encodeEntry(row ? { row } : { deleted: true }, this.options.nodeId, now));
        multi.xadd(CHANGES_STREAM, 'MAXLEN', '~', String(STREAM_MAX), '*', 't', tbl, 'k', key, 'n', this.options.nodeId);
      }
      const results = await multi.exec();
      const failed = results?.find(([error]) => error) ?? (results ? undefined : [new Error('transaction discarded')]);
      if (failed) throw failed[0] as Error;
      // Changes logged meanwhile have a higher seq and stay for the next round.
      this.statements.dropPushed.run(changes.at(-1)!.seq);
      this.log.debug({ rows: changes.length }, 'replication: pushed local changes');
    }
  }

  /** Applies entries from Redis in one transaction; returns the rows that changed. */
  private apply(entries: [Notice, Entry][]): Notice[] {
    if (entries.length === 0) return [];
    const { statements } = this;
    const changed: Notice[] = [];
    this.db.transaction(() => {
      statements.applying.run(1);
      for (const [{ table, key }, entry] of entries) {
        // A local change not pushed yet is newer than what Redis holds: its push wins.
        if (statements.pending.get(table, key)) continue;
        try {
          const local = statements.get[table].get(key) as Row | undefined;
          const wanted = 'row' in entry && !(table === 'sessions' && sessionExpired(entry, 0)) ? entry.row : null;
          if (wanted === null) {
            if (local && statements.remove[table].run(key).changes > 0) changed.push({ table, key });
            continue;
          }
          if (local && canonical(table, local) === canonical(table, wanted)) continue;
          // A session of a user this node does not have (yet): its user's entry comes first.
          if (table === 'sessions' && !statements.userExists.get(String(wanted.user))) continue;
          statements.upsert[table].run(wanted);
          changed.push({ table, key });
        } catch (error) {
          this.log.warn({ table, key: key.slice(0, 200), err: (error as Error).message }, 'replication: entry not applied');
        }
      }
      statements.applying.run(0);
    })();
    return changed;
  }

  /** Follows the stream of notices until closed; after an error, reconciles in full once back. */
  private async follow(): Promise<void> {
    let lost = false;
    while (!this.closed) {
      try {
        if (lost) {
          const last = (await this.redis.xrevrange(CHANGES_STREAM, '+', '-', 'COUNT', 1))[0];
          this.lastId = last?.[0] ?? '0-0';
          await this.reconcile();
          lost = false;
        }
        const result = (await this.reader.xread('COUNT', PUSH_BATCH, 'BLOCK', READ_BLOCK_MS, 'STREAMS', CHANGES_STREAM, this.lastId)) as [string, [string, string[]][]][] | null;
        const entries = result?.[0]?.[1] ?? [];
        if (entries.length === 0) continue;
        const behind = this.lastId !== '0-0' && (await this.trimmedPast(this.lastId));
        this.lastId = entries.at(-1)![0];
        if (behind) {
          this.log.warn('replication: fell behind the stream of changes; reconciling in full');
          await this.reconcile();
          continue;
        }
        await this.pull(entries);
      } catch (error) {
        if (this.closed) return;
        this.log.debug({ err: (error as Error).message }, 'replication: following the stream failed; retrying');
        lost = true;
        await new Promise((resolve) => setTimeout(resolve, RETRY_MS).unref());
      }
    }
  }

  /** Whether the stream no longer holds `id`: notices after it may be lost. */
  private async trimmedPast(id: string): Promise<boolean> {
    const oldest = (await this.redis.xrange(CHANGES_STREAM, '-', '+', 'COUNT', 1))[0];
    return oldest !== undefined && compareStreamIds(oldest[0], id) > 0;
  }

  private async pull(entries: [string, string[]][]): Promise<void> {
    const notices = new Map<string, Notice>();
    for (const [, fields] of entries) {
      const notice = parseNotice(fields);
      if (!notice) {
        this.log.warn({ fields: fields.slice(0, 6).map((f) => String(f).slice(0, 100)) }, 'replication: malformed notice skipped');
        continue;
      }
      if (notice.node === this.options.nodeId) continue;
      notices.set(`${notice.table}\n${notice.key}`, notice);
    }
    if (notices.size === 0) return;
    // Users first: a session needs its user.
    const ordered = [...notices.values()].sort((a, b) => REPLICATED_TABLES.indexOf(a.table) - REPLICATED_TABLES.indexOf(b.table));
    const pipeline = this.redis.pipeline();
    for (const { table, key } of ordered) pipeline.hget(hashKey(table), key);
    const values = (await pipeline.exec()) ?? [];
    const apply: [Notice, Entry][] = [];
    ordered.forEach((notice, i) => {
      const [error, value] = values[i] ?? [new Error('no reply'), null];
      if (error || typeof value !== 'string') return;
      const parsed = parseEntry(notice.table, notice.key, value);
      if ('problem' in parsed) {
        this.log.warn({ table: notice.table, key: notice.key.slice(0, 200), problem: parsed.problem }, 'replication: malformed entry in Redis skipped');
        return;
      }
      apply.push([notice, parsed.entry]);
    });
    const changed = this.apply(apply);
    if (changed.length > 0) this.options.onApplied(changed);
  }
}

function sessionExpired(entry: Entry, at: number): boolean {
  if ('row' in entry) return Number(entry.row.expires_at) <= Date.now();
  return at > 0 && at + SESSION_TTL_MS <= Date.now();
}

/** A stream entry's fields (`t TABLE k KEY n NODE`), or null when malformed. */
export function parseNotice(fields: unknown): (Notice & { node: string }) | null {
  if (!Array.isArray(fields)) return null;
  const map = new Map<string, unknown>();
  for (let i = 0; i + 1 < fields.length; i += 2) map.set(String(fields[i]), fields[i + 1]);
  const [table, key, node] = [map.get('t'), map.get('k'), map.get('n')];
  if (!isReplicatedTable(table) || typeof key !== 'string' || key.length === 0 || key.length > 256 || typeof node !== 'string') return null;
  return { table, key, node };
}
