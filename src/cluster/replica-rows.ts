/**
 * The rows a cluster replicates (README "Cluster"), as they travel through Redis: one hash per
 * table, field = the row's key, value = JSON `{"row": {...}, "node", "at"}` or, for a row that
 * is gone, a tombstone `{"deleted": true, "node", "at"}`. What comes from Redis was written by
 * another node: `parseEntry` checks every column and returns null for anything else.
 */
import { z } from 'zod';
import { isValidId } from '../protocol/ids.js';
import { STATE_ERROR_MAX_LENGTH, stateProblem } from '../protocol/state.js';
import { MAX_DEVICE_TAGS, tagProblem } from '../protocol/tags.js';

/** Users before sessions: a session refers to its user. Devices before their state. */
export const REPLICATED_TABLES = ['users', 'tokens', 'devices', 'sessions', 'device_desired', 'device_reported'] as const;
export type ReplicatedTable = (typeof REPLICATED_TABLES)[number];

export function isReplicatedTable(name: unknown): name is ReplicatedTable {
  return (REPLICATED_TABLES as readonly unknown[]).includes(name);
}

export type Row = Record<string, string | number | null>;

const hex64 = z.string().regex(/^[0-9a-f]{64}$/);
const id = z.string().refine(isValidId);
const role = z.enum(['admin', 'operator', 'viewer']);
const time = z.number().int().nonnegative();
const tagsJson = z.string().max(16_384).refine((text) => {
  try {
    const tags = JSON.parse(text) as unknown;
    return Array.isArray(tags) && tags.length <= MAX_DEVICE_TAGS && tags.every((t) => typeof t === 'string' && tagProblem(t) === null);
  } catch {
    return false;
  }
});
/**
 * A state document (docs/protocol.md "Desired state"). Each node checks the size of what it
 * stores against its own --max-state-bytes; here only a bound no node would store past.
 */
const stateJson = z.string().max(16 * 1024 * 1024).refine((text) => {
  try {
    return stateProblem(JSON.parse(text)) === null;
  } catch {
    return false;
  }
});
const stateErrorJson = z.string().max(4 * STATE_ERROR_MAX_LENGTH).refine((text) => {
  try {
    const error = JSON.parse(text) as { message?: unknown; version?: unknown; at?: unknown };
    return typeof error.message === 'string' && (error.version === null || Number.isInteger(error.version)) && Number.isInteger(error.at);
  } catch {
    return false;
  }
});
const version = z.number().int().nonnegative();

interface TableSpec {
  /** The primary key column. */
  key: string;
  /** The replicated columns, in the order rows are compared in. */
  columns: readonly string[];
  schema: z.ZodType<Row>;
}

export const TABLES: Record<ReplicatedTable, TableSpec> = {
  devices: {
    key: 'id',
    // Not the connection columns (transport, remote_address, connected_at, last_seen): each node writes its own.
    columns: ['id', 'token_hash', 'state', 'tags', 'declared_tags', 'created_at'],
    schema: z.object({ id, token_hash: hex64.nullable(), state: z.enum(['active', 'pending']), tags: tagsJson, declared_tags: tagsJson, created_at: time }),
  },
  users: {
    key: 'name',
    columns: ['name', 'role', 'password_hash', 'created_at'],
    schema: z.object({ name: id, role, password_hash: z.string().min(1).max(1024), created_at: time }),
  },
  tokens: {
    key: 'name',
    columns: ['name', 'role', 'secret_hash', 'created_at'],
    schema: z.object({ name: id, role, secret_hash: hex64, created_at: time }),
  },
  sessions: {
    key: 'id_hash',
    columns: ['id_hash', 'user', 'created_at', 'expires_at'],
    schema: z.object({ id_hash: hex64, user: id, created_at: time, expires_at: time }),
  },
  device_desired: {
    key: 'id',
    columns: ['id', 'doc', 'version', 'updated_at', 'updated_by'],
    schema: z.object({ id, doc: stateJson, version, updated_at: time, updated_by: z.string().max(256).nullable() }),
  },
  device_reported: {
    key: 'id',
    columns: ['id', 'doc', 'version', 'updated_at', 'error'],
    schema: z.object({ id, doc: stateJson, version, updated_at: time, error: stateErrorJson.nullable() }),
  },
};

export type Entry = { row: Row } | { deleted: true };

/** The columns of `row` in the table's order, as one comparable string. */
export function canonical(table: ReplicatedTable, row: Row): string {
  return JSON.stringify(TABLES[table].columns.map((column) => row[column] ?? null));
}

export function encodeEntry(entry: Entry, node: string, at: number): string {
  return JSON.stringify({ ...entry, node, at });
}

/** A Redis hash value as an entry for `key` of `table`, or null (with the reason) when malformed. */
export function parseEntry(table: ReplicatedTable, key: string, value: string): { entry: Entry; at: number } | { problem: string } {
  let data: unknown;
  try {
    data = JSON.parse(value);
  } catch {
    return { problem: 'not JSON' };
  }
  if (typeof data !== 'object' || data === null) return { problem: 'not an object' };
  const { row, deleted, at } = data as { row?: unknown; deleted?: unknown; at?: unknown };
  const when = typeof at === 'number' && Number.isFinite(at) ? at : 0;
  if (deleted === true) return { entry: { deleted: true }, at: when };
  const spec = TABLES[table];
  const parsed = spec.schema.safeParse(row);
  if (!parsed.success) return { problem: `bad row: ${parsed.error.issues.map((i) => `${i.path.join('.') || 'row'} ${i.message}`).join('; ').slice(0, 200)}` };
  if (parsed.data[spec.key] !== key) return { problem: `the row's ${spec.key} is not its key` };
  // Only the known columns (a newer node may send more).
  const clean: Row = {};
  for (const column of spec.columns) clean[column] = parsed.data[column] ?? null;
  return { entry: { row: clean }, at: when };
}
