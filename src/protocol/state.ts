/**
 * Desired and reported state (docs/protocol.md "Desired state"): per device, a desired
 * document set by operators and handlers, a reported one from the device, and their delta,
 * the desired keys whose values the device has not reported. Pure functions and schemas,
 * shared by the hub, hypha (bundled into the standalone agent: nothing but zod here) and the
 * SDK's types.
 */
import { z } from 'zod';

/** A top-level key of a state document: one path level of a selector, so no `.`. */
export const STATE_KEY_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
/** Keys of one document at most. */
export const MAX_STATE_KEYS = 1000;
/** Nesting of values at most (an object or list inside a key's value counts one level each). */
export const MAX_STATE_DEPTH = 16;
/** The default of the hub's `--max-state-bytes`: a document's JSON at most. */
export const DEFAULT_MAX_STATE_BYTES = 64 * 1024;
/** What a device may say about a delta it could not apply. */
export const STATE_ERROR_MAX_LENGTH = 1024;

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };
/** A state document's keys and values (`version` is kept beside it, never in it). */
export type StateDoc = Record<string, JsonValue>;

/** The retained delta, hub → device on `P/devices/{id}/state/delta`. */
export interface DeltaMessage {
  /** The desired document's version the delta was computed from. */
  version: number;
  /** The desired keys whose values differ from the reported ones ({} when none). */
  state: StateDoc;
}

/** A report, device → hub on `P/devices/{id}/state/reported`. */
export interface ReportMessage {
  /** Merged into the reported document: each key replaced, null removes it. */
  state?: Record<string, JsonValue>;
  /** The device could not apply the delta: why (kept beside the reported document until a report without one). */
  error?: string;
  /** The desired version the device worked from. */
  version?: number;
}

/** A device's state as `GET /api/devices/{id}/state`, the SDK and handlers give it. Times are ISO 8601. */
export interface StateView {
  device: string;
  /** version 0 and updatedAt null while nothing was ever desired. */
  desired: { version: number; state: StateDoc; updatedAt: string | null; updatedBy: string | null };
  /** version 0 and updatedAt null while the device never reported; `error`: what its last report said it could not apply. */
  reported: { version: number; state: StateDoc; updatedAt: string | null; error: { message: string; version: number | null; at: string } | null };
  /** What the device is told on `P/devices/{id}/state/delta`. */
  delta: DeltaMessage;
}

const isPlainObject = (value: unknown): value is Record<string, unknown> =>
  value !== null && typeof value === 'object' && !Array.isArray(value) && Object.getPrototypeOf(value) === Object.prototype;

/** Why a value is not JSON this protocol keeps (too deep, not finite, not a plain object), or null. */
function valueProblem(value: unknown, depth: number): string | null {
  if (depth > MAX_STATE_DEPTH) return `is nested deeper than ${MAX_STATE_DEPTH} levels`;
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return null;
  if (typeof value === 'number') return Number.isFinite(value) ? null : 'must be a finite number';
  if (Array.isArray(value)) {
    for (const item of value) {
      const problem = valueProblem(item, depth + 1);
      if (problem) return problem;
    }
    return null;
  }
  if (isPlainObject(value)) {
    for (const item of Object.values(value)) {
      const problem = valueProblem(item, depth + 1);
      if (problem) return problem;
    }
    return null;
  }
  return 'must be a JSON value';
}

/**
 * Why `doc` cannot be a state document (or, with `nullRemoves`, a patch of one, where null
 * means "remove this key"), naming the key; null when it can.
 */
export function stateProblem(doc: unknown, { nullRemoves = false } = {}): string | null {
  if (!isPlainObject(doc)) return 'must be a JSON object of keys and values';
  const keys = Object.keys(doc);
  if (keys.length > MAX_STATE_KEYS) return `must have at most ${MAX_STATE_KEYS} keys (${keys.length} given)`;
  for (const key of keys) {
    if (!STATE_KEY_PATTERN.test(key)) return `key ${JSON.stringify(key.slice(0, 80))} must be 1 to 64 of A-Z a-z 0-9 _ -`;
    const value = doc[key];
    if (value === null && !nullRemoves) return `key ${key} must not be null`;
    const problem = valueProblem(value, 1);
    if (problem) return `key ${key} ${problem}`;
  }
  return null;
}

/** A zod schema for a state document or patch (see stateProblem). */
export function stateSchema(options: { nullRemoves?: boolean } = {}) {
  return z.custom<Record<string, JsonValue>>().superRefine((value, ctx) => {
    const problem = stateProblem(value, options);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  });
}

const version = z
  .number({ error: (issue) => (issue.input === undefined ? 'is required' : 'must be a whole number') })
  .int({ error: 'must be a whole number' })
  .min(0, { error: 'must be 0 or more' });

export const DeltaMessageSchema = z.object({ version, state: stateSchema() });

export const ReportMessageSchema = z
  .object({
    state: stateSchema({ nullRemoves: true }).optional(),
    error: z
      .string({ error: 'must be a string' })
      .min(1, { error: 'must not be empty' })
      .max(STATE_ERROR_MAX_LENGTH, { error: `must be at most ${STATE_ERROR_MAX_LENGTH} characters` })
      .optional(),
    version: version.optional(),
  })
  .refine((report) => report.state !== undefined || report.error !== undefined, { error: 'must have state or error' });

/** Deep equality of JSON values; object keys in any order. */
export function jsonEqual(a: JsonValue | undefined, b: JsonValue | undefined): boolean {
  if (a === b) return true;
  if (a === null || b === null || a === undefined || b === undefined || typeof a !== 'object' || typeof b !== 'object') return false;
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((item, i) => jsonEqual(item, b[i]));
  }
  const keys = Object.keys(a);
  if (keys.length !== Object.keys(b).length) return false;
  return keys.every((key) => Object.hasOwn(b, key) && jsonEqual(a[key], b[key]));
}

/** `base` with `patch` applied: each key of the patch replaces the base's (a nested object whole), null removes it. */
export function mergeState(base: StateDoc, patch: Record<string, JsonValue>): StateDoc {
  const merged: StateDoc = { ...base };
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete merged[key];
    else merged[key] = value;
  }
  return merged;
}

/** A patch without its nulls: what a full replacement stores. */
export function withoutNulls(doc: Record<string, JsonValue>): StateDoc {
  return Object.fromEntries(Object.entries(doc).filter(([, value]) => value !== null));
}

/** The desired keys whose values differ from the reported ones (a key the device never reported differs). */
export function stateDelta(desired: StateDoc, reported: StateDoc): StateDoc {
  const delta: StateDoc = {};
  for (const [key, value] of Object.entries(desired)) {
    if (!Object.hasOwn(reported, key) || !jsonEqual(value, reported[key])) delta[key] = value;
  }
  return delta;
}

/** Whether two documents hold the same keys and values. */
export function sameState(a: StateDoc, b: StateDoc): boolean {
  return jsonEqual(a, b);
}
