/**
 * Staged rollouts of a fleet job (docs/protocol.md "Rollouts"), after AWS IoT Jobs' rollout and
 * abort configurations: how fast targets are sent (a start rate per minute that grows by a
 * factor each time enough targets succeeded, up to a maximum), a canary (the first K targets,
 * the rest only once all K succeeded) and abort criteria (stop when too many of the finished
 * targets failed). Pure functions of the job's counts and clock, so the runner stays the one
 * place that sends, and this stays testable on its own.
 */
import { z } from 'zod';
import type { JobCounts } from '../protocol/jobs.js';
import { expect } from '../protocol/schemas.js';
import type { Window } from './schedule.js';

export const RATE_MAX_PER_MINUTE = 1_000_000;
const ABORT_CRITERIA_MAX = 10;

const whole = (min: number, max: number) =>
  z
    .number({ error: expect(`must be a whole number from ${min} to ${max}`) })
    .int({ error: `must be a whole number from ${min} to ${max}` })
    .min(min, { error: `must be at least ${min}` })
    .max(max, { error: `must be at most ${max}` });

export const RolloutSchema = z
  .strictObject(
    {
      start_per_minute: whole(1, RATE_MAX_PER_MINUTE),
      max_per_minute: whole(1, RATE_MAX_PER_MINUTE).optional(),
      increase: z
        .strictObject(
          {
            factor: z
              .number({ error: expect('must be a number from 1.1 to 10') })
              .min(1.1, { error: 'must be at least 1.1' })
              .max(10, { error: 'must be at most 10' }),
            every_succeeded: whole(1, 1_000_000),
          },
          { error: 'must be an object like {"factor": 2, "every_succeeded": 20}' },
        )
        .optional(),
    },
    { error: 'must be an object like {"start_per_minute": 10, "increase": {"factor": 2, "every_succeeded": 20}}' },
  )
  .refine((r) => r.max_per_minute === undefined || r.max_per_minute >= r.start_per_minute, {
    error: 'must be at least start_per_minute',
    path: ['max_per_minute'],
  });
export type Rollout = z.infer<typeof RolloutSchema>;

export const AbortCriterionSchema = z.strictObject(
  {
    /** Which finished targets count as failures. */
    when: z.enum(['failed', 'timed_out', 'any'], { error: expect('must be failed, timed_out or any') }),
    above_percent: z
      .number({ error: expect('must be a number from 0 to 100') })
      .min(0, { error: 'must be at least 0' })
      .max(100, { error: 'must be at most 100' }),
    min_finished: whole(1, 1_000_000),
  },
  { error: 'must be an object like {"when": "any", "above_percent": 20, "min_finished": 10}' },
);
export const AbortSchema = z
  .array(AbortCriterionSchema, { error: 'must be a list of criteria' })
  .min(1, { error: 'must have at least one criterion' })
  .max(ABORT_CRITERIA_MAX, { error: `must have at most ${ABORT_CRITERIA_MAX} criteria` });
export type AbortCriterion = z.infer<typeof AbortCriterionSchema>;

export const CanarySchema = z.strictObject(
  { count: whole(1, 100_000) },
  { error: 'must be an object like {"count": 5}' },
);
export type Canary = z.infer<typeof CanarySchema>;

/** Everything of a job that shapes its pace; stored with the job as JSON. */
export interface Staging {
  rollout?: Rollout;
  abort?: AbortCriterion[];
  canary?: Canary;
  /** Sends only inside this time of day (src/jobs/schedule.ts). */
  window?: Window;
}

/** Sends per minute allowed now: the start rate times the factor once per `every_succeeded` successes, capped. */
export function ratePerMinute(rollout: Rollout, succeeded: number): number {
  const steps = rollout.increase ? Math.floor(succeeded / rollout.increase.every_succeeded) : 0;
  const rate = rollout.start_per_minute * (rollout.increase ? rollout.increase.factor ** Math.min(steps, 64) : 1);
  return Math.min(Math.floor(rate), rollout.max_per_minute ?? RATE_MAX_PER_MINUTE);
}

/**
 * Paces sends at a rate that may change: each send takes the next slot, 60000 / rate ms after
 * the one before, and a faster rate applies from the next slot on. The first send is at once.
 */
export class Pacer {
  private nextAt = 0;

  /** Milliseconds to wait before the next send may go (0: now). */
  wait(now: number): number {
    return Math.max(0, this.nextAt - now);
  }

  /** A send went at `now` under `rate` per minute. */
  took(now: number, rate: number): void {
    this.nextAt = Math.max(this.nextAt, now) + 60_000 / rate;
  }
}

const failuresOf = (when: AbortCriterion['when'], counts: JobCounts): number =>
  when === 'failed' ? counts.failed : when === 'timed_out' ? counts.timed_out : counts.failed + counts.timed_out;

/** Why the job must stop now, or null: the first criterion met by the targets finished so far. */
export function abortReason(criteria: readonly AbortCriterion[] | undefined, counts: JobCounts): string | null {
  if (!criteria) return null;
  const finished = counts.succeeded + counts.failed + counts.timed_out;
  for (const criterion of criteria) {
    if (finished < criterion.min_finished) continue;
    const failures = failuresOf(criterion.when, counts);
    const percent = (failures / finished) * 100;
    if (percent > criterion.above_percent) {
      const what = criterion.when === 'any' ? 'failed or timed out' : criterion.when === 'failed' ? 'failed' : 'timed out';
      return `${failures} of ${finished} finished targets ${what} (${percent.toFixed(1)}%, above ${criterion.above_percent}% with at least ${criterion.min_finished} finished)`;
    }
  }
  return null;
}

/** The canary's verdict once its targets have all finished: null to go on, else why the job stops. */
export function canaryVerdict(canary: Canary, outcomes: { succeeded: number; failed: number; timed_out: number }): string | null {
  const bad = outcomes.failed + outcomes.timed_out;
  if (bad === 0) return null;
  return `canary: ${bad} of ${outcomes.succeeded + bad} canary targets failed or timed out`;
}
