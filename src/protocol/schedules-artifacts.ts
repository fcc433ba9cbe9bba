/** The JSON shapes the REST API returns for schedules and deploy artifacts, shared by the hub and the SDK (a deploy job's own settings, DeployParams, are with the job views in jobs.ts). */

/** A file on the hub for deploy jobs (docs/protocol.md "Software deployment"), as `POST /api/artifacts` answers it and `GET /api/artifacts` lists it. */
export interface ArtifactView {
  /** What a deploy job's `artifact` names. */
  sha256: string;
  /** The file name it keeps on the device. */
  name: string;
  size: number;
  uploaded_at: string;
  actor: string;
}

/**
 * A schedule as `GET /api/schedules` lists it (docs/protocol.md "Schedules"). `job` is the body
 * of `POST /api/jobs` it was given, checked then and kept as it was: the hub passes it on
 * unread (`unknown`), the SDK types it as its JobSpec.
 */
export interface ScheduleView<Job = unknown> {
  id: string;
  name: string | null;
  created_at: string;
  actor: string;
  job: Job;
  at: string | null;
  cron: string | null;
  tz: string | null;
  enabled: boolean;
  /** When it runs next; null once an `at` schedule has run, or a disabled one. */
  next_at: string | null;
  last_run_at: string | null;
  /** The job the last run created. */
  last_job: string | null;
  /** Why the last run created no job, if it did not. */
  last_error: string | null;
  runs: number;
}
