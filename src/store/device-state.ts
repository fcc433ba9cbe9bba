/**
 * Desired and reported state in the database (migration 10; docs/protocol.md "Desired state"):
 * one row per device in each table, the document as JSON and a version that grows by one with
 * every change. Written only through here, checked before (src/device-state.ts): what is
 * stored is a valid document. Rows replicated from other nodes are checked on arrival
 * (src/cluster/replica-rows.ts).
 */
import type { StateDoc } from '../protocol/state.js';
import { sameState } from '../protocol/state.js';
import type { Db } from './db.js';

export interface DesiredDocument {
  /** 0 while nothing was ever desired. */
  version: number;
  state: StateDoc;
  /** Milliseconds since the epoch; null while nothing was ever desired. */
  updatedAt: number | null;
  /** Who set it last (an actor of the audit trail). */
  updatedBy: string | null;
}

/** What the device said when it could not apply a delta. */
export interface StateError {
  message: string;
  /** The desired version it worked from, when it said. */
  version: number | null;
  at: number;
}

export interface ReportedDocument {
  /** 0 while the device never reported. */
  version: number;
  state: StateDoc;
  updatedAt: number | null;
  /** The last report's error; null after a report without one. */
  error: StateError | null;
}

export interface DeviceStateDocs {
  desired: DesiredDocument;
  reported: ReportedDocument;
}

interface DesiredRow {
  id: string;
  doc: string;
  version: number;
  updated_at: number;
  updated_by: string | null;
}

interface ReportedRow {
  id: string;
  doc: string;
  version: number;
  updated_at: number;
  error: string | null;
}

const NO_DESIRED: DesiredDocument = Object.freeze({ version: 0, state: Object.freeze({}) as StateDoc, updatedAt: null, updatedBy: null });
const NO_REPORTED: ReportedDocument = Object.freeze({ version: 0, state: Object.freeze({}) as StateDoc, updatedAt: null, error: null });

function toDesired(row: DesiredRow | undefined): DesiredDocument {
  if (!row) return NO_DESIRED;
  return { version: row.version, state: JSON.parse(row.doc) as StateDoc, updatedAt: row.updated_at, updatedBy: row.updated_by };
}

function toReported(row: ReportedRow | undefined): ReportedDocument {
  if (!row) return NO_REPORTED;
  return { version: row.version, state: JSON.parse(row.doc) as StateDoc, updatedAt: row.updated_at, error: row.error === null ? null : (JSON.parse(row.error) as StateError) };
}

function sameError(a: StateError | null, b: StateError | null): boolean {
  return a === b || (a !== null && b !== null && a.message === b.message && a.version === b.version);
}

export class DeviceStateStore {
  private readonly desiredOf;
  private readonly reportedOf;
  private readonly allDesired;
  private readonly allReported;
  private readonly upsertDesired;
  private readonly upsertReported;

  constructor(private readonly db: Db) {
    this.desiredOf = db.prepare<[string], DesiredRow>('SELECT * FROM device_desired WHERE id = ?');
    this.reportedOf = db.prepare<[string], ReportedRow>('SELECT * FROM device_reported WHERE id = ?');
    this.allDesired = db.prepare<[], DesiredRow>('SELECT * FROM device_desired');
    this.allReported = db.prepare<[], ReportedRow>('SELECT * FROM device_reported');
    this.upsertDesired = db.prepare(
      `INSERT INTO device_desired (id, doc, version, updated_at, updated_by) VALUES (@id, @doc, @version, @updated_at, @updated_by)
       ON CONFLICT (id) DO UPDATE SET doc = excluded.doc, version = excluded.version, updated_at = excluded.updated_at, updated_by = excluded.updated_by`,
    );
    this.upsertReported = db.prepare(
      `INSERT INTO device_reported (id, doc, version, updated_at, error) VALUES (@id, @doc, @version, @updated_at, @error)
       ON CONFLICT (id) DO UPDATE SET doc = excluded.doc, version = excluded.version, updated_at = excluded.updated_at, error = excluded.error`,
    );
  }

  get(id: string): DeviceStateDocs {
    return { desired: toDesired(this.desiredOf.get(id)), reported: toReported(this.reportedOf.get(id)) };
  }

  /** Every device that has a desired or a reported document (for selectors and the retained deltas at start). */
  all(): Map<string, DeviceStateDocs> {
    const docs = new Map<string, DeviceStateDocs>();
    for (const row of this.allDesired.iterate()) docs.set(row.id, { desired: toDesired(row), reported: NO_REPORTED });
    for (const row of this.allReported.iterate()) docs.set(row.id, { desired: docs.get(row.id)?.desired ?? NO_DESIRED, reported: toReported(row) });
    return docs;
  }

  /**
   * Computes the new desired document from the current one and stores it with the next
   * version, in one transaction; a document equal to the current one changes nothing.
   */
  updateDesired(id: string, next: (current: DesiredDocument) => StateDoc, by: string, now = Date.now()): { before: DesiredDocument; after: DesiredDocument; changed: boolean } {
    return this.db.transaction(() => {
      const before = toDesired(this.desiredOf.get(id));
      const state = next(before);
      if (before.updatedAt !== null && sameState(before.state, state)) return { before, after: before, changed: false };
      const after: DesiredDocument = { version: before.version + 1, state, updatedAt: now, updatedBy: by };
      this.upsertDesired.run({ id, doc: JSON.stringify(state), version: after.version, updated_at: now, updated_by: by });
      return { before, after, changed: true };
    })();
  }

  /** The same for the reported document and its error. */
  updateReported(id: string, next: (current: ReportedDocument) => { state: StateDoc; error: StateError | null }, now = Date.now()): { before: ReportedDocument; after: ReportedDocument; changed: boolean } {
    return this.db.transaction(() => {
      const before = toReported(this.reportedOf.get(id));
      const { state, error } = next(before);
      if (before.updatedAt !== null && sameState(before.state, state) && sameError(before.error, error)) return { before, after: before, changed: false };
      const after: ReportedDocument = { version: before.version + 1, state, updatedAt: now, error };
      this.upsertReported.run({ id, doc: JSON.stringify(state), version: after.version, updated_at: now, error: error === null ? null : JSON.stringify(error) });
      return { before, after, changed: true };
    })();
  }
}
