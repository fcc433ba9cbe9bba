/**
 * Desired state (docs/protocol.md "Desired state"): operators, admins and server-side handlers
 * set what a device should be (its desired document); the device says what it is (its reported
 * document, on `P/devices/{id}/state/reported`); the hub keeps both in its database and tells
 * the device the delta, the desired keys it has not reported yet, on the retained
 * `P/devices/{id}/state/delta`. Retained, so a device that was offline when desired changed
 * gets the current delta as it subscribes again; published again whenever it changes.
 *
 * In a cluster the documents are replicated (src/cluster/replication.ts); a node that applies
 * another node's change publishes the delta again, unless another node holds the device (that
 * one does). A report that answers a desired version this node has not got yet changes the
 * reported document but not the delta: the replicated desired document brings it.
 */
import { createHash } from 'node:crypto';
import { HubError } from './errors.js';
import type { Logger } from './log.js';
import type { ReplicaChange } from './cluster/replication.js';
import { idProblem } from './protocol/ids.js';
import { parsePayload } from './protocol/schemas.js';
import { mergeState, ReportMessageSchema, stateDelta, stateProblem, withoutNulls, type DeltaMessage, type JsonValue, type StateView } from './protocol/state.js';
import type { Topics } from './protocol/topics.js';
import type { AuditLog } from './store/audit.js';
import type { DeviceStateDocs, DeviceStateStore } from './store/device-state.js';

export type { StateView };

/** Who changes desired state, as the audit trail records it. */
export interface StateActor {
  actor: string;
  actorKind: string;
  remote?: string | null;
}

export interface SetDesiredOptions {
  /** true: the body is the whole new document (PUT); false: a patch, null removes a key (PATCH). */
  replace?: boolean;
  by: StateActor;
}

export interface DeviceStateOptions {
  store: DeviceStateStore;
  audit: AuditLog;
  topics: Topics;
  log: Logger;
  /** A document's JSON at most, and a report's (`--max-state-bytes`). */
  maxStateBytes: number;
  /** Whether the hub knows the device (registered, or seen). */
  isKnown: (id: string) => boolean;
  /** Whether another node of a cluster holds the device now: that node publishes its delta. */
  heldElsewhere: (id: string) => boolean;
  /** Publishes a retained message where devices read it; an empty payload clears it. */
  publishRetained: (topic: string, payload: Buffer) => void;
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

export function stateView(device: string, { desired, reported }: DeviceStateDocs): StateView {
  return {
    device,
    desired: { version: desired.version, state: desired.state, updatedAt: iso(desired.updatedAt), updatedBy: desired.updatedBy },
    reported: {
      version: reported.version,
      state: reported.state,
      updatedAt: iso(reported.updatedAt),
      error: reported.error === null ? null : { message: reported.error.message, version: reported.error.version, at: new Date(reported.error.at).toISOString() },
    },
    delta: { version: desired.version, state: stateDelta(desired.state, reported.state) },
  };
}

export class DeviceStateService {
  /** A digest of the delta this node published last, per device: the same one is not sent twice. */
  private readonly published = new Map<string, string>();

  constructor(private readonly options: DeviceStateOptions) {}

  /** The device's documents and delta; BAD_REQUEST for an invalid id, UNKNOWN_DEVICE for one the hub does not know. */
  get(id: string): StateView {
    this.checkDevice(id);
    return stateView(id, this.options.store.get(id));
  }

  /** Every device with a desired or reported document (selectors match them). */
  all(): Map<string, DeviceStateDocs> {
    return this.options.store.all();
  }

  /**
   * Sets desired state: a patch (null removes a key) or, with `replace`, the whole document.
   * Audited (action `state.desired`), refusals included. Throws a HubError: BAD_REQUEST (not an
   * object, a bad key or value), UNKNOWN_DEVICE, PAYLOAD_TOO_LARGE (the document would be over
   * `--max-state-bytes`). A change publishes the new delta.
   */
  setDesired(id: string, body: unknown, { replace = false, by }: SetDesiredOptions): StateView {
    const { store, audit, maxStateBytes } = this.options;
    const mode = replace ? 'replace' : 'merge';
    const entry = { at: Date.now(), actor: by.actor, actorKind: by.actorKind, remote: by.remote ?? null, action: 'state.desired', device: id };
    try {
      this.checkDevice(id);
      const problem = stateProblem(body, { nullRemoves: true });
      if (problem) throw new HubError('BAD_REQUEST', `desired state ${problem}`);
      const patch = body as Record<string, JsonValue>;
      const result = store.updateDesired(
        id,
        (current) => {
          const next = replace ? withoutNulls(patch) : mergeState(current.state, patch);
          const bytes = Buffer.byteLength(JSON.stringify(next));
          if (bytes > maxStateBytes) throw new HubError('PAYLOAD_TOO_LARGE', `the desired state of ${id} would be ${bytes} bytes of JSON, over the limit of ${maxStateBytes} (--max-state-bytes)`);
          return next;
        },
        by.actor,
      );
      audit.record({ ...entry, outcome: result.changed ? 'ok' : 'unchanged', detail: { mode, version: result.after.version, keys: Object.keys(patch) } });
      if (result.changed) {
        this.options.log.info({ device: id, version: result.after.version, actor: by.actor, keys: Object.keys(patch) }, 'desired state changed');
        this.publishDelta(id);
      }
      return this.get(id);
    } catch (error) {
      if (error instanceof HubError) audit.record({ ...entry, outcome: error.code, detail: { mode, message: error.message } });
      throw error;
    }
  }

  /**
   * A device's report on `P/devices/{id}/state/reported` (only the device itself may publish
   * there). Anything wrong with it is logged with its code and changes nothing; the device stays
   * connected.
   */
  report(id: string, payload: Buffer | string): void {
    const { store, log, maxStateBytes, isKnown } = this.options;
    const bytes = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
    if (bytes > maxStateBytes) {
      log.warn({ device: id, code: 'PAYLOAD_TOO_LARGE', bytes, limit: maxStateBytes }, 'state report ignored: larger than --max-state-bytes');
      return;
    }
    if (!isKnown(id)) {
      log.debug({ device: id }, 'state report of a device the hub does not know ignored');
      return;
    }
    const parsed = parsePayload(ReportMessageSchema, payload);
    if (!parsed.ok) {
      log.warn({ device: id, code: 'BAD_REQUEST', field: parsed.field }, `state report ignored: ${parsed.message}`);
      return;
    }
    const report = parsed.value;
    const now = Date.now();
    let result;
    try {
      result = store.updateReported(
        id,
        (current) => {
          const state = report.state ? mergeState(current.state, report.state) : current.state;
          const size = Buffer.byteLength(JSON.stringify(state));
          if (size > maxStateBytes) throw new HubError('PAYLOAD_TOO_LARGE', `the reported state would be ${size} bytes of JSON, over the limit of ${maxStateBytes} (--max-state-bytes)`);
          const error = report.error !== undefined ? { message: report.error, version: report.version ?? null, at: now } : report.state ? null : current.error;
          return { state, error };
        },
        now,
      );
    } catch (error) {
      if (!(error instanceof HubError)) throw error;
      log.warn({ device: id, code: error.code }, `state report ignored: ${error.message}`);
      return;
    }
    if (!result.changed) return;
    if (report.error !== undefined) log.warn({ device: id, version: report.version, error: report.error }, 'the device could not apply its desired state');
    else log.info({ device: id, version: result.after.version, keys: Object.keys(report.state ?? {}) }, 'device reported its state');
    const desired = store.get(id).desired;
    if (report.version !== undefined && report.version > desired.version) {
      // Another node changed desired state and its row has not reached this one yet: a delta
      // from the older document would send the device back. The replicated row brings it.
      log.debug({ device: id, answers: report.version, known: desired.version }, 'state report answers a desired version not here yet: the delta waits for it');
      return;
    }
    this.publishDelta(id);
  }

  /** At start: the retained delta of every device with desired state (the broker's retained store may be new). */
  publishAll(): void {
    let count = 0;
    for (const [id, docs] of this.options.store.all()) {
      if (docs.desired.updatedAt === null) continue;
      this.publishDelta(id, docs, true);
      count++;
    }
    if (count > 0) this.options.log.info({ devices: count }, 'published the state deltas of devices with desired state');
  }

  /** Rows changed by another node of the cluster: their devices' deltas, unless another node holds the device. */
  replicated(changes: readonly ReplicaChange[]): void {
    const devices = new Set<string>();
    for (const { table, key } of changes) if (table === 'device_desired' || table === 'device_reported') devices.add(key);
    for (const id of devices) {
      if (this.options.heldElsewhere(id)) continue;
      this.publishDelta(id, undefined, true);
    }
  }

  /** A removed device: its retained delta is cleared (its rows went with it). */
  forget(id: string): void {
    this.published.delete(id);
    this.options.publishRetained(this.options.topics.deviceStateDelta(id), Buffer.alloc(0));
  }

  private publishDelta(id: string, docs = this.options.store.get(id), force = false): void {
    if (docs.desired.updatedAt === null) {
      // No desired document (never set, or gone with its device): nothing to tell, and nothing retained.
      if (force || this.published.has(id)) this.forget(id);
      return;
    }
    const message: DeltaMessage = { version: docs.desired.version, state: stateDelta(docs.desired.state, docs.reported.state) };
    const payload = JSON.stringify(message);
    // A digest, not the payload: up to --max-state-bytes for each device would add up.
    const digest = createHash('sha256').update(payload).digest('base64url');
    if (!force && this.published.get(id) === digest) return;
    this.published.set(id, digest);
    this.options.publishRetained(this.options.topics.deviceStateDelta(id), Buffer.from(payload));
  }

  private checkDevice(id: string): void {
    const problem = idProblem(id);
    if (problem) throw new HubError('BAD_REQUEST', `device id ${problem}`);
    if (!this.options.isKnown(id)) throw new HubError('UNKNOWN_DEVICE', `no device ${id} is known to this hub`);
  }
}
