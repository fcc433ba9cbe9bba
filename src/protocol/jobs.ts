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
export const HUB_TASKS = ['agent_upgrade', 'deploy'] as const;
export type HubTask = (typeof HUB_TASKS)[number];
export type JobOrder = Order | HubTask;

/** `paused` and `aborted` are additions to the v1 states (docs/protocol.md "Rollouts"). */
export const JOB_STATES = ['running', 'paused', 'done', 'canceled', 'aborted'] as const;
export type JobState = (typeof JOB_STATES)[number];
export const TARGET_STATES = ['queued', 'sent', 'succeeded', 'failed', 'timed_out', 'canceled'] as const;
export type TargetState = (typeof TARGET_STATES)[number];

export type JobCounts = Record<TargetState, number>;

/** Retained on `P/jobs/{id}/status`. */
export interface JobStatus {
  id: string;
  state: JobState;
  counts: JobCounts;
  /** Why an aborted job stopped (its abort criterion or its canary); absent otherwise. */
  reason?: string;
}

/** How a staged rollout paces, stops and starts a job (docs/protocol.md "Rollouts"); each part optional. */
export interface JobStaging {
  rollout?: { start_per_minute: number; max_per_minute?: number; increase?: { factor: number; every_succeeded: number } };
  abort?: { when: 'failed' | 'timed_out' | 'any'; above_percent: number; min_finished: number }[];
  canary?: { count: number };
  /** Sends only between `start` and `end` (HH:MM) each day, in `tz` (default: the hub's time zone). */
  window?: { start: string; end: string; tz?: string };
}

/** A `deploy` job's own settings (docs/protocol.md "Software deployment"). */
export interface DeployParams {
  /** SHA-256 of an artifact uploaded to the hub (`POST /api/artifacts`). */
  artifact: string;
  install: string;
  rollback?: string;
  /** Where on the device the artifact goes (default /var/tmp/rhizosphere). */
  dir?: string;
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
  /** The job's rollout, abort criteria and canary, where it has them. */
  staging?: JobStaging;
  /** With a rollout, while the job runs: the sends per minute allowed now. */
  rate_per_minute?: number;
  /** With a window, while the job runs outside it: when it opens next. */
  window_opens_at?: string;
  /** A `deploy` job's artifact and commands. */
  deploy?: DeployParams;
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
