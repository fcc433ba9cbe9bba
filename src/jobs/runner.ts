/**
 * Fleet jobs (PROTOCOL.md "Fleet jobs"): one command sent to many devices, at most
 * `concurrency` at a time. Each target goes queued → sent → succeeded, failed or timed_out;
 * or queued → canceled, or queued → timed_out when the deadline passes before it could be
 * sent (the device stayed offline). Every command goes through the dispatcher, so each one
 * is audited under the job's creator. State is kept in memory while a job runs and written to
 * the database in batches; a restarted hub resumes running jobs.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { z } from 'zod';
import type { Dispatcher, Origin } from '../dispatcher.js';
import { HubError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Presence } from '../presence.js';
import { expect, ORDERS, TIMEOUT_MS_DEFAULT, TIMEOUT_MS_MAX, TIMEOUT_MS_MIN, validate, type Order, type Reply } from '../protocol/schemas.js';
import { HUB_TASKS, type DeployParams, type HubTask, type JobCounts, type JobOrder, type JobSummary, type JobTarget, type JobView } from '../protocol/jobs.js';
import type { Topics } from '../protocol/topics.js';
import type { Stores } from '../store/stores.js';
import { windowWait, WindowSchema } from './schedule.js';
import { abortReason, AbortSchema, CanarySchema, canaryVerdict, Pacer, ratePerMinute, RolloutSchema, type Staging } from './rollout.js';
import { resolveSelector, SelectorSchema, type Selector } from './selector.js';
import type { JobRow, JobState, TargetRow, TargetState } from './store.js';

export type { JobState, TargetState } from './store.js';

export const CONCURRENCY_DEFAULT = 50;
export const CONCURRENCY_MAX = 10_000;
export const DEADLINE_MS_DEFAULT = 3_600_000;
export const DEADLINE_MS_MIN = 1000;
export const DEADLINE_MS_MAX = 7 * 24 * 3_600_000;
/** What a target whose command was in flight when the hub stopped records. */
export const RESTART_ERROR = 'hub restarted while the command was in flight';
/** Result and error text kept per target (the rest is cut). */
export const TARGET_TEXT_MAX = 64 * 1024;

const STATUS_INTERVAL_MS = 200;
const FLUSH_INTERVAL_MS = 200;
const BUSY_RETRY_MS = 500;
/** After BROKER_UNAVAILABLE: about the uplink's reconnect period. */
const BROKER_RETRY_MS = 1000;
/** At start, the retained status of this many of the newest jobs is published again. */
const REPUBLISH_AT_START = 200;

const whole = (what: string, min: number, max: number) =>
  z
    .number({ error: expect(`must be a number${what}`) })
    .int({ error: `must be a whole number${what}` })
    .min(min, { error: `must be at least ${min}` })
    .max(max, { error: `must be at most ${max}` });

const JOB_ORDERS = [...ORDERS, ...HUB_TASKS] as const;

/** A job as `POST /api/jobs` (or `hub.jobs.create`) takes it; a hub task (`agent_upgrade`) takes no cmd_str. */
export const JobSpecSchema = z
  .object(
    {
      target: SelectorSchema,
      order: z.enum(JOB_ORDERS, { error: expect(`must be one of ${JOB_ORDERS.join(', ')}`) }),
      cmd_str: z.string({ error: expect('must be a string') }).min(1, { error: 'must not be empty' }).optional(),
      timeout_ms: whole(' of milliseconds', TIMEOUT_MS_MIN, TIMEOUT_MS_MAX).optional(),
      concurrency: whole('', 1, CONCURRENCY_MAX).optional(),
      deadline_ms: whole(' of milliseconds', DEADLINE_MS_MIN, DEADLINE_MS_MAX).optional(),
      rollout: RolloutSchema.optional(),
      abort: AbortSchema.optional(),
      canary: CanarySchema.optional(),
      window: WindowSchema.optional(),
      // deploy only (docs/protocol.md "Software deployment")
      artifact: z.string({ error: expect('must be the SHA-256 of an uploaded artifact') }).regex(/^[0-9a-f]{64}$/, { error: 'must be the SHA-256 (64 hex digits) of an uploaded artifact' }).optional(),
      install: z.string({ error: expect('must be a command') }).min(1, { error: 'must not be empty' }).max(65_536, { error: 'must be at most 65536 characters' }).optional(),
      rollback: z.string({ error: expect('must be a command') }).min(1, { error: 'must not be empty' }).max(65_536, { error: 'must be at most 65536 characters' }).optional(),
      dir: z
        .string({ error: expect('must be an absolute directory path') })
        .regex(/^\/([A-Za-z0-9._\/-]|\{device\}){0,255}$/, { error: 'must be an absolute directory path of A-Z a-z 0-9 . _ - / (and {device}, the device id)' })
        .refine((dir) => !dir.split('/').includes('..'), { error: 'must not contain ..' })
        .optional(),
    },
    { error: 'must be a JSON object' },
  )
  .superRefine((spec, ctx) => {
    const isTask = (HUB_TASKS as readonly string[]).includes(spec.order);
    if (!isTask && spec.cmd_str === undefined) ctx.addIssue({ code: 'custom', path: ['cmd_str'], message: 'is required' });
    if (isTask && spec.cmd_str !== undefined) ctx.addIssue({ code: 'custom', path: ['cmd_str'], message: `is not a field of a${spec.order === 'deploy' ? '' : 'n'} ${spec.order} job` });
    for (const key of ['artifact', 'install', 'rollback', 'dir'] as const) {
      if (spec.order !== 'deploy' && spec[key] !== undefined) ctx.addIssue({ code: 'custom', path: [key], message: 'is a field of deploy jobs only' });
    }
    if (spec.order === 'deploy') {
      if (spec.artifact === undefined) ctx.addIssue({ code: 'custom', path: ['artifact'], message: 'is required' });
      if (spec.install === undefined) ctx.addIssue({ code: 'custom', path: ['install'], message: 'is required' });
    }
  });
export type JobSpec = z.infer<typeof JobSpecSchema>;

/**
 * Work the hub does itself on each target instead of sending one command (an agent upgrade).
 * `start` answers at once, like the dispatcher: a refusal the runner treats as it treats the
 * dispatcher's (DEVICE_OFFLINE waits for the device, BUSY retries), or the outcome to come.
 */
/** A hub task's own settings, from the job's spec (a deploy job's artifact and commands); empty for others. */
export type TaskParams = Partial<DeployParams>;

export interface TargetTask {
  /**
   * What the job records as its cmd_str (the build it installs, the install command) from the
   * job's own settings (`params`: the spec's task fields); throws a HubError when the task cannot run at all.
   */
  describe(params: TaskParams): string;
  /** The timeout per target when the job gives none. */
  readonly defaultTimeoutMs: number;
  start(device: string, origin: Origin, timeoutMs: number, params: TaskParams): { refused: Reply } | { outcome: Promise<Reply> };
}

/** Who created a job: recorded with it, and the actor of every command it sends. */
export interface JobCreator {
  actor: string;
  actorKind: string;
  remote?: string | null;
}

export type Counts = JobCounts;
export type { JobSummary, JobTarget, JobView };

export interface CreatedJob {
  id: string;
  /** How many devices the job targets. */
  targets: number;
  /** Device ids listed in the selector that the hub does not know yet (targeted: they wait as offline targets). */
  unknown: string[];
}

interface Target extends JobTarget {
  jobId: string;
  seq: number;
  updatedAt: number;
}

interface Job {
  id: string;
  createdAt: number;
  actor: string;
  actorKind: string;
  remote: string | null;
  order: JobOrder;
  cmdStr: string;
  timeoutMs: number;
  concurrency: number;
  deadlineAt: number;
  selector: Selector;
  /** Rollout, abort criteria, canary (empty: all at once, up to `concurrency`). */
  staging: Staging;
  /** A hub task's own settings (a deploy job's), or null. */
  params: TaskParams | null;
  state: JobState;
  /** Why the job was aborted. */
  reason: string | null;
  finishedAt: number | null;
  targets: Map<string, Target>;
  /** Queued targets to try, in order (`head` is the next one). */
  ready: string[];
  head: number;
  /** Queued targets whose device is offline: moved to `ready` when it comes online. */
  waiting: Set<string>;
  /** Requests handed to the dispatcher whose refusal (or acceptance) is not known yet. */
  attempting: number;
  counts: Counts;
  /** After a BUSY refusal: no new sends before this time. */
  pausedUntil: number;
  /** Paces the sends of a rollout. */
  pacer: Pacer;
  /** The canary's targets (the first `canary.count` sent), until it has passed. */
  canary: { members: Set<string>; passed: boolean } | null;
  deadlineTimer: NodeJS.Timeout | null;
  retryTimer: NodeJS.Timeout | null;
  statusTimer: NodeJS.Timeout | null;
  lastStatusAt: number;
}

export interface JobRunnerOptions {
  stores: Stores;
  presence: Presence;
  dispatcher: Dispatcher;
  topics: Topics;
  log: Logger;
  /** Publishes a retained QoS 1 message. */
  publish: (topic: string, payload: string) => void;
  /** The hub tasks a job may run (absent: refused with UNSUPPORTED). */
  tasks?: Partial<Record<HubTask, TargetTask>>;
  /** The time of day windows are judged by (tests move it); default Date.now. */
  clock?: () => number;
}

/** Outside its window a job looks again at least this often (a clock that jumps, a DST change). */
const WINDOW_RECHECK_MS = 1000;

const emptyCounts = (): Counts => ({ queued: 0, sent: 0, succeeded: 0, failed: 0, timed_out: 0, canceled: 0 });

type Runtime = Pick<
  Job,
  'targets' | 'ready' | 'head' | 'waiting' | 'attempting' | 'counts' | 'pausedUntil' | 'pacer' | 'canary' | 'deadlineTimer' | 'retryTimer' | 'statusTimer' | 'lastStatusAt'
>;

/** The in-memory part of a running job, empty: a new job and a resumed one both start from it. */
function freshRuntime(): Runtime {
  return {
    targets: new Map(),
    ready: [],
    head: 0,
    waiting: new Set(),
    attempting: 0,
    counts: emptyCounts(),
    pausedUntil: 0,
    pacer: new Pacer(),
    canary: null,
    deadlineTimer: null,
    retryTimer: null,
    statusTimer: null,
    lastStatusAt: 0,
  };
}
const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());
const cut = (text: string | null | undefined): string | null =>
  text === null || text === undefined ? null : text.length > TARGET_TEXT_MAX ? text.slice(0, TARGET_TEXT_MAX) : text;

function newJobId(): string {
  return `${Date.now().toString(36)}-${randomBytes(5).toString('hex')}`;
}

/** The final state of a target from its command's Reply (a hub task's Reply: ok is success). */
export function outcomeOf(order: JobOrder, reply: Reply): { state: TargetState; result: string | null; error: string | null; exit_code: number | null } {
  if (reply.status === 'error') {
    return { state: reply.code === 'TIMEOUT' ? 'timed_out' : 'failed', result: null, error: `${reply.code}: ${reply.message}`, exit_code: null };
  }
  const succeeded =
    order === 'exec_bash_no_return' || order === 'agent_upgrade' ? true : order === 'exec_bash_ret_okng_only' ? reply.result === 'ok' : reply.exit_code === 0;
  return { state: succeeded ? 'succeeded' : 'failed', result: cut(reply.result), error: cut(reply.error) || null, exit_code: reply.exit_code };
}

const isHubTask = (order: string): order is HubTask => (HUB_TASKS as readonly string[]).includes(order);

/**
 * `finished`: a job ended (done, canceled or aborted), once, with its final summary; the
 * alerts (src/alerts/service.ts) listen. A listener that throws is logged, never thrown into
 * the runner.
 */
export interface JobRunnerEvents {
  finished: [job: JobSummary];
}

export class JobRunner extends EventEmitter<JobRunnerEvents> {
  /** Jobs with work left (or results not yet written), by id. */
  private readonly active = new Map<string, Job>();
  private readonly dirtyTargets = new Set<Target>();
  private readonly dirtyJobs = new Set<Job>();
  private flushTimer: NodeJS.Timeout | null = null;
  private closed = false;
  private readonly onOnline = (device: { id: string }) => setImmediate(() => this.deviceOnline(device.id));

  constructor(private readonly options: JobRunnerOptions) {
    super();
    options.presence.on('online', this.onOnline);
  }

  /**
   * At start: marks commands that were in flight as failed, resumes running jobs and republishes
   * recent statuses. `resume: false` (a cluster node joining nodes that share its database)
   * leaves the jobs alone: they belong to the nodes that run them.
   */
  start({ resume = true }: { resume?: boolean } = {}): void {
    const { stores, log } = this.options;
    const now = Date.now();
    const interrupted = resume ? stores.jobs.failInFlight(RESTART_ERROR, now) : 0;
    if (interrupted > 0) log.warn({ targets: interrupted }, `fleet jobs: ${interrupted} commands were in flight when the hub stopped; marked failed`);
    for (const row of resume ? stores.jobs.runningJobs() : []) {
      const job = this.fromRow(row, stores.jobs.targets(row.id));
      this.active.set(job.id, job);
      log.info({ job: job.id, queued: job.counts.queued }, 'fleet job resumed');
      this.startJob(job);
    }
    for (const row of stores.jobs.list(REPUBLISH_AT_START)) {
      if (!this.active.has(row.id)) this.publishStatus(row.id, row.state, this.countsFromDb(row.id), row.reason);
    }
  }

  /** Creates a job and starts it; throws a HubError (BAD_REQUEST) for an invalid spec. */
  create(input: unknown, creator: JobCreator): CreatedJob {
    if (this.closed) throw new HubError('INTERNAL', 'the hub is shutting down');
    const checked = validate(JobSpecSchema, input);
    if (!checked.ok) throw new HubError('BAD_REQUEST', checked.message);
    const spec = checked.value;
    const { stores, presence, log } = this.options;
    const task = isHubTask(spec.order) ? this.options.tasks?.[spec.order] : undefined;
    if (isHubTask(spec.order) && !task) throw new HubError('UNSUPPORTED', `this hub does not run ${spec.order} jobs`);
    const params: TaskParams | null =
      spec.order === 'deploy' ? { artifact: spec.artifact!, install: spec.install!, ...(spec.rollback ? { rollback: spec.rollback } : {}), ...(spec.dir ? { dir: spec.dir } : {}) } : null;
    const cmdStr = task ? task.describe(params ?? {}) : spec.cmd_str!;
    const selection = resolveSelector(spec.target, { stored: stores.devices.list(), live: presence.table, state: () => stores.deviceState.all() });
    const now = Date.now();
    const job: Job = {
      id: newJobId(),
      createdAt: now,
      actor: creator.actor,
      actorKind: creator.actorKind,
      remote: creator.remote ?? null,
      order: spec.order,
      cmdStr,
      timeoutMs: spec.timeout_ms ?? task?.defaultTimeoutMs ?? TIMEOUT_MS_DEFAULT,
      concurrency: spec.concurrency ?? CONCURRENCY_DEFAULT,
      deadlineAt: now + (spec.deadline_ms ?? DEADLINE_MS_DEFAULT),
      selector: spec.target,
      params,
      staging: {
        ...(spec.rollout ? { rollout: spec.rollout } : {}),
        ...(spec.abort ? { abort: spec.abort } : {}),
        ...(spec.canary ? { canary: spec.canary } : {}),
        ...(spec.window ? { window: spec.window } : {}),
      },
      state: 'running',
      reason: null,
      finishedAt: null,
      ...freshRuntime(),
    };
    if (job.staging.canary) job.canary = { members: new Set(), passed: false };
    selection.devices.forEach((device, seq) => {
      job.targets.set(device, { jobId: job.id, device, seq, state: 'queued', result: null, error: null, exit_code: null, updatedAt: now });
    });
    job.counts.queued = job.targets.size;
    if (job.targets.size === 0) {
      job.state = 'done';
      job.finishedAt = now;
    }
    stores.jobs.create(this.toRow(job), [...job.targets.values()].map(toTargetRow));
    log.info({ job: job.id, targets: job.targets.size, actor: job.actor, order: job.order }, 'fleet job created');
    if (job.state === 'running') {
      this.active.set(job.id, job);
      this.startJob(job);
    } else {
      this.publishNow(job);
    }
    return { id: job.id, targets: job.targets.size, unknown: selection.unknown };
  }

  /** A job with its targets, or undefined. */
  get(id: string): JobView | undefined {
    const job = this.active.get(id);
    if (job) return { ...this.summaryOf(job), targets: [...job.targets.values()].map(publicTarget) };
    const row = this.options.stores.jobs.get(id);
    if (!row) return undefined;
    const targets = this.options.stores.jobs.targets(id);
    const counts = emptyCounts();
    for (const t of targets) counts[t.state]++;
    return { ...summaryOfRow(row, counts), targets: targets.map(publicTarget) };
  }

  /** The newest jobs first, without their targets. */
  list(limit = 100): JobSummary[] {
    return this.options.stores.jobs.list(limit).map((row) => {
      const job = this.active.get(row.id);
      return job ? this.summaryOf(job) : summaryOfRow(row, this.countsFromDb(row.id));
    });
  }

  /** Cancels the targets not sent yet; those in flight finish and are recorded. Undefined for an unknown job. */
  cancel(id: string): JobSummary | undefined {
    const job = this.active.get(id);
    if (!job) {
      const row = this.options.stores.jobs.get(id);
      return row ? summaryOfRow(row, this.countsFromDb(id)) : undefined;
    }
    if (job.state !== 'running' && job.state !== 'paused') return this.summaryOf(job);
    job.state = 'canceled';
    const now = Date.now();
    for (const target of job.targets.values()) {
      if (target.state === 'queued') this.setState(job, target, { state: 'canceled', result: null, error: 'canceled before it was sent', exit_code: null }, now);
    }
    job.ready = [];
    job.head = 0;
    job.waiting.clear();
    this.options.log.info({ job: id, counts: job.counts }, 'fleet job canceled');
    this.dirtyJobs.add(job);
    this.checkFinished(job);
    this.publishNow(job);
    this.scheduleFlush();
    return this.summaryOf(job);
  }

  /**
   * Stops sending: targets in flight finish and are recorded, queued ones wait (their deadline
   * still runs). Undefined for an unknown job; a job not running is answered as it is.
   */
  pause(id: string): JobSummary | undefined {
    const job = this.active.get(id);
    if (!job) return this.summaryOfStored(id);
    if (job.state !== 'running') return this.summaryOf(job);
    job.state = 'paused';
    this.options.log.info({ job: id, counts: job.counts }, 'fleet job paused');
    this.dirtyJobs.add(job);
    this.publishNow(job);
    this.scheduleFlush();
    return this.summaryOf(job);
  }

  /** Sends again after a pause, at the pace the rollout allows now. */
  resume(id: string): JobSummary | undefined {
    const job = this.active.get(id);
    if (!job) return this.summaryOfStored(id);
    if (job.state !== 'paused') return this.summaryOf(job);
    job.state = 'running';
    // Every queued target is tried again (those that came online or were refused BUSY during
    // the pause included); the ones still offline go back to waiting.
    job.ready = [];
    job.head = 0;
    job.waiting.clear();
    for (const target of job.targets.values()) if (target.state === 'queued') job.ready.push(target.device);
    this.options.log.info({ job: id, counts: job.counts }, 'fleet job resumed');
    this.dirtyJobs.add(job);
    this.publishNow(job);
    this.scheduleFlush();
    this.pump(job);
    this.checkFinished(job);
    return this.summaryOf(job);
  }

  private summaryOfStored(id: string): JobSummary | undefined {
    const row = this.options.stores.jobs.get(id);
    return row ? summaryOfRow(row, this.countsFromDb(id)) : undefined;
  }

  /** Whether jobs are running (for health and tests). */
  get running(): number {
    let n = 0;
    for (const job of this.active.values()) if (job.state === 'running') n++;
    return n;
  }

  /**
   * Stops: no new sends, timers cleared, everything written. Commands in flight stay `sent`
   * in the database; the next start marks them failed (their outcome is unknown).
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.options.presence.off('online', this.onOnline);
    for (const job of this.active.values()) this.clearTimers(job);
    this.flush();
  }

  // --- scheduling ---

  private startJob(job: Job): void {
    const now = Date.now();
    if (job.deadlineAt <= now) {
      this.deadlinePassed(job);
      return;
    }
    for (const target of job.targets.values()) if (target.state === 'queued') job.ready.push(target.device);
    job.deadlineTimer = setTimeout(() => this.deadlinePassed(job), job.deadlineAt - now);
    job.deadlineTimer.unref();
    this.publishNow(job);
    this.pump(job);
    this.checkFinished(job);
  }

  private deviceOnline(device: string): void {
    if (this.closed) return;
    for (const job of this.active.values()) {
      if (job.state === 'running' && job.waiting.delete(device)) {
        job.ready.push(device);
        this.pump(job);
      }
    }
  }

  /** Sends to as many ready targets as the job's concurrency allows. */
  private pump(job: Job): void {
    if (this.closed || job.state !== 'running') return;
    const now = Date.now();
    if (job.pausedUntil > now) {
      this.scheduleRetry(job, job.pausedUntil - now);
      return;
    }
    const { presence } = this.options;
    const { rollout, canary, window } = job.staging;
    const perDevice = window?.tz === 'device';
    if (window && !perDevice && job.head < job.ready.length) {
      const wait = windowWait(window, this.now());
      if (wait > 0) {
        this.scheduleRetry(job, Math.min(wait, WINDOW_RECHECK_MS));
        return;
      }
    }
    /** In the device's own time zone: targets outside their window wait and are looked at again. */
    const outside: string[] = [];
    while (job.counts.sent + job.attempting < job.concurrency && job.head < job.ready.length) {
      // The canary's targets go first and alone; the rest wait for its verdict.
      if (canary && job.canary && !job.canary.passed && job.canary.members.size >= canary.count) break;
      if (rollout) {
        const wait = job.pacer.wait(now);
        if (wait > 0) {
          this.scheduleRetry(job, wait);
          break;
        }
      }
      const device = job.ready[job.head++]!;
      const target = job.targets.get(device);
      if (!target || target.state !== 'queued') continue;
      const entry = presence.get(device);
      if (!entry?.online) {
        job.waiting.add(device);
        continue;
      }
      if (perDevice && windowWait(window!, this.now(), entry.tz) > 0) {
        outside.push(device);
        continue;
      }
      if (job.canary && !job.canary.passed) job.canary.members.add(device);
      this.send(job, target);
      if (rollout) job.pacer.took(now, ratePerMinute(rollout, job.counts.succeeded));
    }
    if (outside.length > 0) {
      job.ready.push(...outside);
      this.scheduleRetry(job, WINDOW_RECHECK_MS);
    }
    if (job.head > 1024 && job.head * 2 > job.ready.length) {
      job.ready = job.ready.slice(job.head);
      job.head = 0;
    }
  }

  private send(job: Job, target: Target): void {
    const { dispatcher } = this.options;
    const origin: Origin = { clientId: `job:${job.id}`, via: 'api', actor: job.actor, actorKind: job.actorKind, remote: job.remote };
    if (isHubTask(job.order)) return this.runTask(job, target, origin);
    const before = dispatcher.inflight;
    job.attempting++;
    const reply = dispatcher.request({ device: target.device, order: job.order, cmd_str: job.cmdStr, timeout_ms: job.timeoutMs }, origin);
    // The dispatcher takes a command in flight synchronously; a refusal leaves its count as it was.
    const accepted = dispatcher.inflight > before;
    if (accepted) {
      job.attempting--;
      this.setState(job, target, { state: 'sent', result: null, error: null, exit_code: null }, Date.now());
    }
    void reply.then((answer) => (accepted ? this.answered(job, target, answer) : this.refused(job, target, answer)));
  }

  private runTask(job: Job, target: Target, origin: Origin): void {
    const task = this.options.tasks?.[job.order as HubTask];
    job.attempting++;
    if (!task) {
      // A job resumed by a hub that no longer runs this task.
      return this.refused(job, target, { type: 'response', id: null, device: target.device, status: 'error', code: 'UNSUPPORTED', message: `this hub does not run ${job.order} jobs` });
    }
    const started = task.start(target.device, origin, job.timeoutMs, job.params ?? {});
    if ('refused' in started) return this.refused(job, target, started.refused);
    job.attempting--;
    this.setState(job, target, { state: 'sent', result: null, error: null, exit_code: null }, Date.now());
    void started.outcome.then((answer) => this.answered(job, target, answer));
  }

  private answered(job: Job, target: Target, reply: Reply): void {
    // Closing: the outcome is left unknown (`sent`); the next start records it as such.
    if (this.closed || target.state !== 'sent') return;
    this.setState(job, target, outcomeOf(job.order, reply), Date.now());
    this.judge(job);
    this.checkFinished(job);
    this.pump(job);
  }

  /** After an outcome: stop the job when an abort criterion is met or its canary failed; open the gate when the canary passed. */
  private judge(job: Job): void {
    if (job.state !== 'running' && job.state !== 'paused') return;
    const reason = abortReason(job.staging.abort, job.counts);
    if (reason) return this.abort(job, reason);
    const canary = job.canary;
    if (!canary || canary.passed) return;
    const members = [...canary.members].map((device) => job.targets.get(device)!);
    if (members.some((t) => t.state === 'queued' || t.state === 'sent')) return;
    const full = canary.members.size >= job.staging.canary!.count || job.counts.queued === 0;
    if (!full) return;
    const outcomes = { succeeded: 0, failed: 0, timed_out: 0 };
    for (const t of members) if (t.state === 'succeeded' || t.state === 'failed' || t.state === 'timed_out') outcomes[t.state]++;
    const verdict = canaryVerdict(job.staging.canary!, outcomes);
    if (verdict) return this.abort(job, verdict);
    canary.passed = true;
    this.options.log.info({ job: job.id, canary: canary.members.size }, 'fleet job: the canary passed, the rest follow');
    this.dirtyJobs.add(job);
  }

  /** Stops a job for `reason`: what was not sent is canceled, what is in flight finishes and is recorded. */
  private abort(job: Job, reason: string): void {
    job.state = 'aborted';
    job.reason = reason;
    const now = Date.now();
    for (const target of job.targets.values()) {
      if (target.state === 'queued') this.setState(job, target, { state: 'canceled', result: null, error: `aborted: ${reason}`, exit_code: null }, now);
    }
    job.ready = [];
    job.head = 0;
    job.waiting.clear();
    this.options.log.warn({ job: job.id, reason, counts: job.counts }, 'fleet job aborted');
    this.options.stores.audit.record({ at: now, actor: 'hub', actorKind: 'hub', remote: null, action: 'job.abort', outcome: 'aborted', detail: { job: job.id, reason, counts: job.counts } });
    this.dirtyJobs.add(job);
    this.publishNow(job);
    this.scheduleFlush();
  }

  /** The dispatcher did not send the command: retry later (BUSY, BROKER_UNAVAILABLE), wait for the device (offline), or fail. */
  private refused(job: Job, target: Target, reply: Reply): void {
    job.attempting--;
    if (this.closed) return;
    if (target.state !== 'queued' || job.state !== 'running') {
      this.checkFinished(job);
      return;
    }
    const code = reply.status === 'error' ? reply.code : 'INTERNAL';
    if (code === 'BUSY' || code === 'BROKER_UNAVAILABLE') {
      // Both pass: the device is busy, or the hub is rejoining its broker (it does so by itself).
      const wait = code === 'BUSY' ? BUSY_RETRY_MS : BROKER_RETRY_MS;
      job.ready.push(target.device);
      job.pausedUntil = Date.now() + wait;
      this.scheduleRetry(job, wait);
      return;
    }
    if (code === 'DEVICE_OFFLINE') {
      // Not sent after all: its place in the canary goes to another target.
      job.canary?.members.delete(target.device);
      if (this.options.presence.get(target.device)?.online) {
        // Online again already (a reconnect in between): try again shortly, not in a tight loop.
        job.ready.push(target.device);
        job.pausedUntil = Date.now() + BUSY_RETRY_MS;
      } else {
        job.waiting.add(target.device);
      }
    } else {
      const message = reply.status === 'error' ? reply.message : 'not sent';
      this.setState(job, target, { state: 'failed', result: null, error: `${code}: ${message}`, exit_code: null }, Date.now());
      this.checkFinished(job);
    }
    this.pump(job);
  }

  private scheduleRetry(job: Job, ms: number): void {
    if (job.retryTimer) return;
    job.retryTimer = setTimeout(() => {
      job.retryTimer = null;
      this.pump(job);
    }, ms);
    job.retryTimer.unref();
  }

  private deadlinePassed(job: Job): void {
    job.deadlineTimer = null;
    if (this.closed || (job.state !== 'running' && job.state !== 'paused')) return;
    const now = Date.now();
    let late = 0;
    for (const target of job.targets.values()) {
      if (target.state !== 'queued') continue;
      late++;
      this.setState(job, target, { state: 'timed_out', result: null, error: 'not sent before the deadline (the device was offline or the hub busy)', exit_code: null }, now);
    }
    job.ready = [];
    job.head = 0;
    job.waiting.clear();
    if (late > 0) this.options.log.info({ job: job.id, targets: late }, 'fleet job deadline passed with targets not sent');
    this.checkFinished(job);
  }

  private checkFinished(job: Job): void {
    if (job.counts.queued > 0 || job.counts.sent > 0 || job.attempting > 0) return;
    if (job.finishedAt !== null) return;
    if (job.state === 'running' || job.state === 'paused') job.state = 'done';
    job.finishedAt = Date.now();
    this.clearTimers(job);
    this.dirtyJobs.add(job);
    this.publishNow(job);
    this.scheduleFlush();
    this.options.log.info({ job: job.id, state: job.state, counts: job.counts }, 'fleet job finished');
    try {
      this.emit('finished', this.summaryOf(job));
    } catch (error) {
      this.options.log.error({ job: job.id, err: error }, 'a listener of finished jobs failed');
    }
  }

  private clearTimers(job: Job): void {
    for (const key of ['deadlineTimer', 'retryTimer', 'statusTimer'] as const) {
      const timer = job[key];
      if (timer) clearTimeout(timer);
      job[key] = null;
    }
  }

  // --- state, status, persistence ---

  private setState(job: Job, target: Target, next: Pick<JobTarget, 'state' | 'result' | 'error' | 'exit_code'>, now: number): void {
    job.counts[target.state]--;
    job.counts[next.state]++;
    target.state = next.state;
    target.result = next.result;
    target.error = next.error;
    target.exit_code = next.exit_code;
    target.updatedAt = now;
    this.dirtyTargets.add(target);
    this.scheduleFlush();
    this.scheduleStatus(job);
  }

  private scheduleStatus(job: Job): void {
    if (job.statusTimer || this.closed) return;
    const wait = Math.max(0, job.lastStatusAt + STATUS_INTERVAL_MS - Date.now());
    job.statusTimer = setTimeout(() => {
      job.statusTimer = null;
      this.publishNow(job);
    }, wait);
    job.statusTimer.unref();
  }

  private publishNow(job: Job): void {
    if (job.statusTimer) clearTimeout(job.statusTimer);
    job.statusTimer = null;
    job.lastStatusAt = Date.now();
    this.publishStatus(job.id, job.state, job.counts, job.reason);
  }

  private publishStatus(id: string, state: JobState, counts: Counts, reason: string | null): void {
    if (this.closed) return;
    try {
      this.options.publish(this.options.topics.jobStatus(id), JSON.stringify({ id, state, counts, ...(reason ? { reason } : {}) }));
    } catch (error) {
      this.options.log.warn({ err: error, job: id }, 'cannot publish a job status');
    }
  }

  private scheduleFlush(): void {
    if (this.flushTimer || this.closed) return;
    this.flushTimer = setTimeout(() => this.flush(), FLUSH_INTERVAL_MS);
    this.flushTimer.unref();
  }

  /** Writes every changed target and job in one transaction; finished jobs then leave memory. */
  flush(): void {
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = null;
    if (this.dirtyTargets.size === 0 && this.dirtyJobs.size === 0) return;
    const targets = [...this.dirtyTargets].map(toTargetRow);
    const jobs = [...this.dirtyJobs].map((job) => ({ id: job.id, state: job.state, finished_at: job.finishedAt, reason: job.reason, canary_passed: job.canary?.passed ? 1 : 0 }));
    this.dirtyTargets.clear();
    const finished = [...this.dirtyJobs].filter((job) => job.finishedAt !== null);
    this.dirtyJobs.clear();
    try {
      this.options.stores.jobs.write(targets, jobs);
    } catch (error) {
      this.options.log.error({ err: error }, 'cannot write fleet job results to the database');
      return;
    }
    for (const job of finished) if (!this.closed) this.active.delete(job.id);
  }

  private summaryOf(job: Job): JobSummary {
    return {
      id: job.id,
      state: job.state,
      counts: { ...job.counts },
      created_at: iso(job.createdAt)!,
      actor: job.actor,
      order: job.order,
      cmd_str: job.cmdStr,
      timeout_ms: job.timeoutMs,
      concurrency: job.concurrency,
      deadline_at: iso(job.deadlineAt)!,
      finished_at: iso(job.finishedAt),
      ...stagingFields(job.staging, job.reason),
      ...(job.staging.rollout && (job.state === 'running' || job.state === 'paused') ? { rate_per_minute: ratePerMinute(job.staging.rollout, job.counts.succeeded) } : {}),
      ...this.windowFields(job),
      ...(job.order === 'deploy' && job.params ? { deploy: job.params as DeployParams } : {}),
    };
  }

  private windowFields(job: Job): Pick<JobSummary, 'window_opens_at'> {
    if (!job.staging.window || job.state !== 'running') return {};
    const now = this.now();
    const wait = windowWait(job.staging.window, now);
    return wait > 0 ? { window_opens_at: new Date(now + wait).toISOString() } : {};
  }

  private now(): number {
    return (this.options.clock ?? Date.now)();
  }

  private countsFromDb(id: string): Counts {
    const counts = emptyCounts();
    for (const { state, n } of this.options.stores.jobs.counts(id)) counts[state] = n;
    return counts;
  }

  private toRow(job: Job): JobRow {
    return {
      id: job.id,
      created_at: job.createdAt,
      actor: job.actor,
      actor_kind: job.actorKind,
      remote: job.remote,
      command_order: job.order,
      cmd_str: job.cmdStr,
      timeout_ms: job.timeoutMs,
      concurrency: job.concurrency,
      deadline_at: job.deadlineAt,
      state: job.state,
      target: JSON.stringify(job.selector),
      finished_at: job.finishedAt,
      staging: Object.keys(job.staging).length > 0 ? JSON.stringify(job.staging) : null,
      params: job.params ? JSON.stringify(job.params) : null,
      reason: job.reason,
      canary_passed: job.canary?.passed ? 1 : 0,
    };
  }

  private fromRow(row: JobRow, targets: TargetRow[]): Job {
    const job: Job = {
      id: row.id,
      createdAt: row.created_at,
      actor: row.actor,
      actorKind: row.actor_kind,
      remote: row.remote,
      order: row.command_order as JobOrder,
      cmdStr: row.cmd_str,
      timeoutMs: row.timeout_ms,
      concurrency: row.concurrency,
      deadlineAt: row.deadline_at,
      selector: JSON.parse(row.target) as Selector,
      staging: row.staging ? (JSON.parse(row.staging) as Staging) : {},
      params: row.params ? (JSON.parse(row.params) as TaskParams) : null,
      state: row.state,
      reason: row.reason,
      finishedAt: row.finished_at,
      ...freshRuntime(),
    };
    for (const t of targets) {
      job.targets.set(t.device, { jobId: row.id, device: t.device, seq: t.seq, state: t.state, result: t.result, error: t.error, exit_code: t.exit_code, updatedAt: t.updated_at });
      job.counts[t.state]++;
    }
    if (job.staging.canary) {
      // The canary's members are the targets it had sent (the first ones, by their sending).
      const members = new Set(targets.filter((t) => t.state !== 'queued').map((t) => t.device).slice(0, job.staging.canary.count));
      job.canary = { members, passed: row.canary_passed === 1 };
    }
    return job;
  }
}

function toTargetRow(t: Target): TargetRow {
  return { job_id: t.jobId, device: t.device, seq: t.seq, state: t.state, result: t.result, error: t.error, exit_code: t.exit_code, updated_at: t.updatedAt };
}

function publicTarget(t: JobTarget): JobTarget {
  return { device: t.device, state: t.state, result: t.result, error: t.error, exit_code: t.exit_code };
}

function summaryOfRow(row: JobRow, counts: Counts): JobSummary {
  return {
    id: row.id,
    state: row.state,
    counts,
    created_at: iso(row.created_at)!,
    actor: row.actor,
    order: row.command_order as JobOrder,
    cmd_str: row.cmd_str,
    timeout_ms: row.timeout_ms,
    concurrency: row.concurrency,
    deadline_at: iso(row.deadline_at)!,
    finished_at: iso(row.finished_at),
    ...stagingFields(row.staging ? (JSON.parse(row.staging) as Staging) : {}, row.reason),
    ...(row.command_order === 'deploy' && row.params ? { deploy: JSON.parse(row.params) as DeployParams } : {}),
  };
}

function stagingFields(staging: Staging, reason: string | null): Pick<JobSummary, 'staging' | 'reason'> {
  return { ...(Object.keys(staging).length > 0 ? { staging } : {}), ...(reason ? { reason } : {}) };
}
