/**
 * The shapes of fleet jobs on the wire (PROTOCOL.md "Fleet jobs"): what `GET /api/jobs…`
 * answers and `P/jobs/{id}/status` carries. The hub's job runner and the client SDK both use
 * them; the SDK imports them as types only, so it stays free of server code.
 */
import type { Order } from './schemas.js';

export const JOB_STATES = ['running', 'done', 'canceled'] as const;
export type JobState = (typeof JOB_STATES)[number];
export const TARGET_STATES = ['queued', 'sent', 'succeeded', 'failed', 'timed_out', 'canceled'] as const;
export type TargetState = (typeof TARGET_STATES)[number];

export type JobCounts = Record<TargetState, number>;

/** Retained on `P/jobs/{id}/status`. */
export interface JobStatus {
  id: string;
  state: JobState;
  counts: JobCounts;
}

/** A job as `GET /api/jobs` lists it. */
export interface JobSummary extends JobStatus {
  created_at: string;
  actor: string;
  order: Order;
  cmd_str: string;
  timeout_ms: number;
  concurrency: number;
  deadline_at: string;
  finished_at: string | null;
}

export interface JobTarget {
  device: string;
  state: TargetState;
  result: string | null;
  error: string | null;
  exit_code: number | null;
}

/** A job as `GET /api/jobs/{id}` answers it. */
export interface JobView extends JobSummary {
  targets: JobTarget[];
}
