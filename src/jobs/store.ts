/** Fleet jobs in the database: one row per job, one per (job, device). Written in batches by the runner. */
import type { Db } from '../store/db.js';

import type { JobState, TargetState } from '../protocol/jobs.js';

export { JOB_STATES, TARGET_STATES, type JobState, type TargetState } from '../protocol/jobs.js';

export interface JobRow {
  id: string;
  created_at: number;
  actor: string;
  actor_kind: string;
  remote: string | null;
  command_order: string;
  cmd_str: string;
  timeout_ms: number;
  concurrency: number;
  deadline_at: number;
  state: JobState;
  target: string;
  finished_at: number | null;
  /** JSON of the rollout, abort criteria and canary (src/jobs/rollout.ts), or null. */
  staging: string | null;
  /** Why an aborted job stopped. */
  reason: string | null;
  canary_passed: number;
  /** A hub task's own settings (a deploy job's artifact and commands), JSON, or null. */
  params: string | null;
}

export interface TargetRow {
  job_id: string;
  device: string;
  seq: number;
  state: TargetState;
  result: string | null;
  error: string | null;
  exit_code: number | null;
  updated_at: number;
}

export type CountRow = { state: TargetState; n: number };

export class JobStore {
  private readonly insertJob;
  private readonly insertTarget;
  private readonly updateTarget;
  private readonly updateJob;
  private readonly byId;
  private readonly targetsOf;
  private readonly countsOf;
  private readonly recent;
  private readonly running;

  constructor(private readonly db: Db) {
    this.insertJob = db.prepare(
      `INSERT INTO jobs (id, created_at, actor, actor_kind, remote, command_order, cmd_str, timeout_ms, concurrency, deadline_at, state, target, finished_at, staging, reason, canary_passed, params)
       VALUES (@id, @created_at, @actor, @actor_kind, @remote, @command_order, @cmd_str, @timeout_ms, @concurrency, @deadline_at, @state, @target, @finished_at, @staging, @reason, @canary_passed, @params)`,
    );
    this.insertTarget = db.prepare(
      `INSERT INTO job_targets (job_id, device, seq, state, result, error, exit_code, updated_at)
       VALUES (@job_id, @device, @seq, @state, @result, @error, @exit_code, @updated_at)`,
    );
    this.updateTarget = db.prepare(
      `UPDATE job_targets SET state = @state, result = @result, error = @error, exit_code = @exit_code, updated_at = @updated_at
       WHERE job_id = @job_id AND device = @device`,
    );
    this.updateJob = db.prepare('UPDATE jobs SET state = @state, finished_at = @finished_at, reason = @reason, canary_passed = @canary_passed WHERE id = @id');
    this.byId = db.prepare<[string], JobRow>('SELECT * FROM jobs WHERE id = ?');
    this.targetsOf = db.prepare<[string], TargetRow>('SELECT * FROM job_targets WHERE job_id = ? ORDER BY seq');
    this.countsOf = db.prepare<[string], CountRow>('SELECT state, COUNT(*) AS n FROM job_targets WHERE job_id = ? GROUP BY state');
    this.recent = db.prepare<[number], JobRow>('SELECT * FROM jobs ORDER BY created_at DESC, id DESC LIMIT ?');
    this.running = db.prepare<[], JobRow>(`SELECT * FROM jobs WHERE state IN ('running', 'paused') ORDER BY created_at`);
  }

  /** A new job with all its targets, in one transaction. */
  create(job: JobRow, targets: TargetRow[]): void {
    this.db.transaction(() => {
      this.insertJob.run(job);
      for (const target of targets) this.insertTarget.run(target);
    })();
  }

  /** Many target and job changes in one transaction. */
  write(targets: Iterable<TargetRow>, jobs: Iterable<Pick<JobRow, 'id' | 'state' | 'finished_at' | 'reason' | 'canary_passed'>>): void {
    this.db.transaction(() => {
      for (const target of targets) this.updateTarget.run(target);
      for (const job of jobs) this.updateJob.run(job);
    })();
  }

  get(id: string): JobRow | undefined {
    return this.byId.get(id);
  }

  targets(id: string): TargetRow[] {
    return this.targetsOf.all(id);
  }

  counts(id: string): CountRow[] {
    return this.countsOf.all(id);
  }

  list(limit: number): JobRow[] {
    return this.recent.all(limit);
  }

  runningJobs(): JobRow[] {
    return this.running.all();
  }

  /**
   * At start: commands that were in flight when the hub stopped have an unknown outcome.
   * They become failed with `error`; returns how many.
   */
  failInFlight(error: string, now: number): number {
    return this.db.transaction(() => {
      const changes = this.db.prepare(`UPDATE job_targets SET state = 'failed', error = ?, updated_at = ? WHERE state = 'sent'`).run(error, now).changes;
      // A canceled job that was waiting only for those commands is finished now.
      this.db.prepare(`UPDATE jobs SET finished_at = ? WHERE state IN ('canceled', 'aborted') AND finished_at IS NULL`).run(now);
      return changes;
    })();
  }
}
