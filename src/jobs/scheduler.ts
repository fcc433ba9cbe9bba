/**
 * Schedules (docs/protocol.md "Schedules"): a job to create at a given time (`at`) or each time
 * a cron expression fires (`cron`, in `tz`). Kept in the database, so they survive a restart;
 * a run missed while the hub was down is made once at start, not once per missed firing. The
 * job itself is created through the runner as its creator would have, so it is checked,
 * audited and run like any other.
 */
import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { HubError } from '../errors.js';
import type { Logger } from '../log.js';
import { expect, validate } from '../protocol/schemas.js';
import type { ScheduleView } from '../protocol/schedules-artifacts.js';
import type { Db } from '../store/db.js';
import type { AuditLog } from '../store/audit.js';
import type { JobCreator, JobRunner } from './runner.js';
import { JobSpecSchema } from './runner.js';
import { cronProblem, nextCronRun, TimeZoneSchema } from './schedule.js';

/** How often due schedules are looked for (the clock may be moved by tests, or jump). */
const TICK_MS = 1000;
export const SCHEDULES_MAX = 10_000;

const cron = z
  .string({ error: expect('must be a cron expression like "0 3 * * *"') })
  .max(128, { error: 'must be at most 128 characters' })
  .superRefine((value, ctx) => {
    const problem = cronProblem(value);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  });
const at = z
  .string({ error: expect('must be a time like 2026-12-24T03:00:00Z') })
  .refine((value) => /^\d{4}-\d{2}-\d{2}T/.test(value) && !Number.isNaN(Date.parse(value)), { error: 'must be a time like 2026-12-24T03:00:00Z (ISO 8601, with its offset)' });
const name = z.string({ error: expect('must be a string') }).max(128, { error: 'must be at most 128 characters' });

const fields = {
  name: name.optional(),
  /** The job to create, as `POST /api/jobs` takes it. */
  job: z.unknown().optional(),
  at: at.optional(),
  cron: cron.optional(),
  tz: TimeZoneSchema.optional(),
  enabled: z.boolean({ error: expect('must be true or false') }).optional(),
};

const objectError = (issue: { code?: string }) =>
  issue.code === 'unrecognized_keys' ? 'has an unknown key (allowed: name, job, at, cron, tz, enabled)' : 'must be an object like {"job": {…}, "cron": "0 3 * * *"}';

export const ScheduleSpecSchema = z
  .strictObject(fields, { error: objectError })
  .superRefine((spec, ctx) => {
    if (spec.job === undefined) ctx.addIssue({ code: 'custom', path: ['job'], message: 'is required' });
    if ((spec.at === undefined) === (spec.cron === undefined)) ctx.addIssue({ code: 'custom', path: ['cron'], message: 'give either at (once) or cron (again and again), not both' });
    if (spec.tz !== undefined && spec.cron === undefined) ctx.addIssue({ code: 'custom', path: ['tz'], message: 'is for cron (an at time carries its own offset)' });
  });
export const SchedulePatchSchema = z.strictObject(fields, { error: objectError });

interface Row {
  id: string;
  created_at: number;
  actor: string;
  actor_kind: string;
  remote: string | null;
  name: string | null;
  job: string;
  at: number | null;
  cron: string | null;
  tz: string | null;
  enabled: number;
  next_at: number | null;
  last_run_at: number | null;
  last_job: string | null;
  last_error: string | null;
  runs: number;
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

function view(row: Row): ScheduleView {
  return {
    id: row.id,
    name: row.name,
    created_at: iso(row.created_at)!,
    actor: row.actor,
    job: JSON.parse(row.job) as unknown,
    at: iso(row.at),
    cron: row.cron,
    tz: row.tz,
    enabled: row.enabled === 1,
    next_at: iso(row.next_at),
    last_run_at: iso(row.last_run_at),
    last_job: row.last_job,
    last_error: row.last_error,
    runs: row.runs,
  };
}

/** `job` checked as `POST /api/jobs` would, its problems named under `job.`. */
function checkJob(job: unknown): void {
  const checked = validate(JobSpecSchema, job);
  if (!checked.ok) throw new HubError('BAD_REQUEST', `job.${checked.message}`);
}

export interface SchedulerOptions {
  db: Db;
  jobs: JobRunner;
  audit: AuditLog;
  log: Logger;
  clock?: () => number;
}

export class Scheduler {
  private readonly db: Db;
  private timer: NodeJS.Timeout | null = null;
  private readonly now: () => number;

  constructor(private readonly options: SchedulerOptions) {
    this.db = options.db;
    this.now = options.clock ?? Date.now;
  }

  /** Runs what fell due while the hub was down (once each), then looks every second. */
  start(): void {
    this.tick();
    this.timer = setInterval(() => this.tick(), TICK_MS);
    this.timer.unref();
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  create(input: unknown, creator: JobCreator): ScheduleView {
    const checked = validate(ScheduleSpecSchema, input);
    if (!checked.ok) throw new HubError('BAD_REQUEST', checked.message);
    const spec = checked.value;
    checkJob(spec.job);
    const count = this.db.prepare<[], { n: number }>('SELECT COUNT(*) AS n FROM schedules').get()!.n;
    if (count >= SCHEDULES_MAX) throw new HubError('BUSY', `there are ${count} schedules (at most ${SCHEDULES_MAX}): remove some first`);
    const now = this.now();
    const row: Row = {
      id: `s-${now.toString(36)}-${randomBytes(4).toString('hex')}`,
      created_at: now,
      actor: creator.actor,
      actor_kind: creator.actorKind,
      remote: creator.remote ?? null,
      name: spec.name ?? null,
      job: JSON.stringify(spec.job),
      at: spec.at !== undefined ? Date.parse(spec.at) : null,
      cron: spec.cron ?? null,
      tz: spec.tz ?? null,
      enabled: spec.enabled === false ? 0 : 1,
      next_at: null,
      last_run_at: null,
      last_job: null,
      last_error: null,
      runs: 0,
    };
    row.next_at = this.nextOf(row, now);
    this.db
      .prepare(
        `INSERT INTO schedules (id, created_at, actor, actor_kind, remote, name, job, at, cron, tz, enabled, next_at, last_run_at, last_job, last_error, runs)
         VALUES (@id, @created_at, @actor, @actor_kind, @remote, @name, @job, @at, @cron, @tz, @enabled, @next_at, @last_run_at, @last_job, @last_error, @runs)`,
      )
      .run(row);
    this.options.log.info({ schedule: row.id, at: iso(row.at), cron: row.cron, next: iso(row.next_at), actor: row.actor }, 'schedule created');
    return view(row);
  }

  list(): ScheduleView[] {
    return this.db.prepare<[], Row>('SELECT * FROM schedules ORDER BY created_at DESC, id').all().map(view);
  }

  get(id: string): ScheduleView | undefined {
    const row = this.row(id);
    return row ? view(row) : undefined;
  }

  /** Changes some fields (`enabled`: false holds it, true takes it up again from now). */
  update(id: string, input: unknown): ScheduleView | undefined {
    const row = this.row(id);
    if (!row) return undefined;
    const checked = validate(SchedulePatchSchema, input);
    if (!checked.ok) throw new HubError('BAD_REQUEST', checked.message);
    const patch = checked.value;
    if (patch.job !== undefined) {
      checkJob(patch.job);
      row.job = JSON.stringify(patch.job);
    }
    if (patch.name !== undefined) row.name = patch.name;
    if (patch.at !== undefined) {
      row.at = Date.parse(patch.at);
      row.cron = null;
      row.tz = null;
    }
    if (patch.cron !== undefined) {
      row.cron = patch.cron;
      row.at = null;
    }
    if (patch.tz !== undefined) {
      if (row.cron === null) throw new HubError('BAD_REQUEST', 'tz is for cron (an at time carries its own offset)');
      row.tz = patch.tz;
    }
    if (patch.enabled !== undefined) row.enabled = patch.enabled ? 1 : 0;
    row.next_at = this.nextOf(row, this.now());
    this.db
      .prepare('UPDATE schedules SET name = @name, job = @job, at = @at, cron = @cron, tz = @tz, enabled = @enabled, next_at = @next_at WHERE id = @id')
      .run(row);
    return view(row);
  }

  remove(id: string): boolean {
    return this.db.prepare('DELETE FROM schedules WHERE id = ?').run(id).changes > 0;
  }

  /** Creates the jobs of every schedule due now. */
  tick(): void {
    const now = this.now();
    const due = this.db.prepare<[number], Row>('SELECT * FROM schedules WHERE enabled = 1 AND next_at IS NOT NULL AND next_at <= ? ORDER BY next_at').all(now);
    for (const row of due) this.run(row, now);
  }

  private run(row: Row, now: number): void {
    const { jobs, audit, log } = this.options;
    const creator: JobCreator = { actor: row.actor, actorKind: row.actor_kind, remote: row.remote };
    let job: string | null = null;
    let error: string | null = null;
    try {
      job = jobs.create(JSON.parse(row.job) as unknown, creator).id;
    } catch (failure) {
      error = failure instanceof HubError ? `${failure.code}: ${failure.message}` : `INTERNAL: ${(failure as Error).message}`;
    }
    row.runs += 1;
    row.last_run_at = now;
    row.last_job = job ?? row.last_job;
    row.last_error = error;
    // Missed firings are not made up: the next one is counted from now.
    row.next_at = row.cron === null ? null : this.nextOf(row, now);
    this.db.prepare('UPDATE schedules SET runs = @runs, last_run_at = @last_run_at, last_job = @last_job, last_error = @last_error, next_at = @next_at WHERE id = @id').run(row);
    audit.record({ at: now, actor: row.actor, actorKind: row.actor_kind, remote: null, action: 'schedule.run', outcome: error ? 'failed' : 'ok', detail: { schedule: row.id, job, error } });
    if (error) log.warn({ schedule: row.id, err: error }, 'a schedule could not create its job');
    else log.info({ schedule: row.id, job, next: iso(row.next_at) }, 'schedule ran');
  }

  private nextOf(row: Row, now: number): number | null {
    if (row.enabled !== 1) return null;
    if (row.cron !== null) return nextCronRun(row.cron, row.tz ?? undefined, now);
    // A one-off: once run, never again (a time in the past runs at the next tick).
    return row.runs > 0 ? null : row.at;
  }

  private row(id: string): Row | undefined {
    return this.db.prepare<[string], Row>('SELECT * FROM schedules WHERE id = ?').get(id);
  }
}
