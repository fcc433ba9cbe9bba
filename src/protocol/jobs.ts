/**
 * The shapes of fleet jobs on the wire (PROTOCOL.md "Fleet jobs"): what `GET /api/jobs…`
 * answers and `P/jobs/{id}/status` carries. The hub's job runner and the client SDK both use
 * them; the SDK imports them as types only, so it stays free of server code.
 */
import type { Order } from './schemas.js';

/**
 * What a job does on each target: one of the orders, or work the hub does itself (docs/protocol.md
 * "Agent upgrades": `agent_upgrade` sends the hub's agent build to each device).
 */
export const HUB_TASKS = ['agent_upgrade'] as const;
export type HubTask = (typeof HUB_TASKS)[number];
export type JobOrder = Order | HubTask;

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
  order: JobOrder;
  /** For a hub task, what it carries (the agent build). */
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
