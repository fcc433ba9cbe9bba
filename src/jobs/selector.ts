/**
 * Which devices a fleet job targets (PROTOCOL.md "Fleet jobs"): a selector of device ids,
 * tags, online state and a condition on desired and reported state, every key given must
 * match. It is resolved once, when the job is created, against the devices the hub knows
 * (registered or seen, in the database), presence (who is online now) and their state.
 */
import { z } from 'zod';
import { idProblem } from '../protocol/ids.js';
import type { StoredDevice } from '../store/devices.js';
import type { DeviceStateDocs } from '../store/device-state.js';
import { tagSchema } from '../protocol/tags.js';
import { compileStateCondition, StateConditionSchema, type StateCondition } from './state-condition.js';

export const SELECTOR_MAX_DEVICES = 100_000;
export const SELECTOR_MAX_TAGS = 64;

export interface Selector {
  /** Only these device ids. */
  devices?: string[];
  /** Only devices that have every one of these tags (`[]`: every device). */
  tags?: string[];
  /** Only devices online (true) or offline (false) when the job is created. */
  online?: boolean;
  /**
   * Only devices whose desired or reported state compares so (state-condition.ts), e.g.
   * `state.reported.fw != state.desired.fw`. Jobs only: the SDK's `devices()` refuses it.
   */
  state?: StateCondition;
}

const deviceId = z.string({ error: 'must be a string' }).superRefine((value, ctx) => {
  const problem = idProblem(value);
  if (problem) ctx.addIssue({ code: 'custom', message: problem });
});

export const SelectorSchema = z
  .strictObject(
    {
      devices: z
        .array(deviceId, { error: 'must be a list of device ids' })
        .max(SELECTOR_MAX_DEVICES, { error: `must have at most ${SELECTOR_MAX_DEVICES} device ids` })
        .optional(),
      tags: z
        .array(tagSchema, { error: 'must be a list of tags' })
        .max(SELECTOR_MAX_TAGS, { error: `must have at most ${SELECTOR_MAX_TAGS} tags` })
        .optional(),
      online: z.boolean({ error: 'must be true or false' }).optional(),
      state: StateConditionSchema.optional(),
    },
    {
      error: (issue) =>
        issue.code === 'unrecognized_keys'
          ? 'has an unknown key (allowed: devices, tags, online, state)'
          : issue.input === undefined
            ? 'is required'
            : 'must be an object with devices, tags, online or state',
    },
  )
  .refine((s) => s.devices !== undefined || s.tags !== undefined || s.online !== undefined || s.state !== undefined, {
    error: 'must name devices, tags, online or state (tags [] selects every device)',
  });

/** What the selector needs to know of the hub. */
export interface SelectorSources {
  /** Devices in the database: registered and seen ones, with their tags. */
  stored: readonly StoredDevice[];
  /** Devices presence knows (some may not be written to the database yet), with their online state. */
  live: ReadonlyMap<string, { online: boolean }>;
  /** The desired and reported state of devices that have some; read only for a selector with `state`. */
  state?: () => ReadonlyMap<string, DeviceStateDocs>;
}

export interface Selection {
  /** Matching devices, in the order given (`devices`) or by id. */
  devices: string[];
  /** Ids listed in `devices` that the hub does not know yet: targeted all the same (they wait as offline targets), listed for the caller. */
  unknown: string[];
}

/**
 * Resolves a selector into device ids. A device named in `devices` is a target whether the hub
 * knows it or not (never seen, or waiting for enrolment: it waits as an offline target and gets
 * the command if it connects before the deadline), unless another key excludes it: such a device
 * has no tags and is offline. Otherwise pending devices are never targeted.
 */
export function resolveSelector(selector: Selector, { stored, live, state }: SelectorSources): Selection {
  // A device without state documents has every path null.
  const stateTest = selector.state === undefined ? null : compileStateCondition(selector.state);
  const docs = stateTest ? (state?.() ?? new Map<string, DeviceStateDocs>()) : null;
  const known = new Map<string, string[]>();
  const pending = new Set<string>();
  for (const device of stored) {
    if (device.state === 'pending') pending.add(device.id);
    else known.set(device.id, device.tags);
  }
  for (const id of live.keys()) if (!known.has(id) && !pending.has(id)) known.set(id, []);

  const matches = (id: string): boolean => {
    const tags = known.get(id);
    if (!tags) return false;
    if (selector.tags && !selector.tags.every((t) => tags.includes(t))) return false;
    if (selector.online !== undefined && (live.get(id)?.online ?? false) !== selector.online) return false;
    if (stateTest && !stateTest(docs!.get(id))) return false;
    return true;
  };

  if (selector.devices) {
    const seen = new Set<string>();
    const devices: string[] = [];
    const unknown: string[] = [];
    // Not known (or pending): no tags, offline.
    const admitsUnseen = (selector.tags === undefined || selector.tags.length === 0) && selector.online !== true && (!stateTest || stateTest(undefined));
    for (const id of selector.devices) {
      if (seen.has(id)) continue;
      seen.add(id);
      if (known.has(id)) {
        if (matches(id)) devices.push(id);
        continue;
      }
      if (!pending.has(id)) unknown.push(id);
      if (admitsUnseen) devices.push(id);
    }
    return { devices, unknown };
  }
  return { devices: [...known.keys()].filter(matches).sort(), unknown: [] };
}
