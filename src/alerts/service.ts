/**
 * Alerts (docs/protocol.md "Alerts and webhooks"): rules watched against what the hub already
 * knows, an alert fired once per rule and subject while the rule's condition holds, resolved
 * when it ends, and each change sent to the webhooks.
 *
 * - `device_offline`: from presence. A device counts as offline from the hub's 'offline' event
 *   (by the hub's clock), or from the hub's start for one that was offline then (a device
 *   cannot reach a hub that is down, so the time it was down does not count). Fires once it has
 *   been offline more than `minutes`; resolves when it is online again.
 * - `telemetry`: from the health reports as they arrive (HealthTelemetry's 'report' event). The
 *   condition holds from the first report that meets it until a report that does not (which
 *   resolves); it fires once it has held `minutes`. Reports without the metric change nothing.
 *   Since when it holds is kept in memory: after a restart it starts again from the next report.
 * - `job`: from the runner's 'finished' event: a job that ended `aborted`, or `done` with targets
 *   failed or timed out. It has no end: it stays firing until someone resolves it.
 *
 * Events fire at once; a tick every 2 s (by the injectable clock, like the scheduler) fires
 * what became due with time and resolves alerts whose device, tags or rule went. The alerts
 * are in the database: a firing alert survives a restart and is not fired again.
 */
import { randomBytes } from 'node:crypto';
import { HubError } from '../errors.js';
import type { HealthTelemetry } from '../health.js';
import type { JobRunner, JobSummary } from '../jobs/runner.js';
import type { Logger } from '../log.js';
import type { DeviceInfo, Presence } from '../presence.js';
import {
  JOB_ALERT_STATES,
  AlertRulePatchSchema,
  AlertRuleSpecSchema,
  WebhookSpecSchema,
  type AlertKind,
  type AlertMetric,
  type AlertRuleView,
  type AlertState,
  type AlertView,
  type JobAlertState,
  type WebhookView,
} from '../protocol/alerts.js';
import type { HealthSample } from '../protocol/health.js';
import { validate } from '../protocol/schemas.js';
import type { AuditLog } from '../store/audit.js';
import type { Db } from '../store/db.js';
import { alertView, AlertStore, ruleView, type AlertRow, type RuleRow, type RuleSettings } from './store.js';
import { WebhookSender } from './webhooks.js';

/** How often time-based conditions are judged (the clock may be moved by tests, or jump). */
const TICK_MS = 2000;
export const ALERT_RULES_MAX = 1000;
export const WEBHOOKS_MAX = 100;
/** Resolved alerts kept (the oldest go first). */
export const RESOLVED_ALERTS_KEPT = 10_000;
const MINUTE_MS = 60_000;

/** A rule as the evaluation reads it. */
interface Rule {
  id: string;
  name: string | null;
  kind: AlertKind;
  enabled: boolean;
  tags: string[];
  minutes: number;
  metric?: AlertMetric;
  op?: 'above' | 'below';
  value?: number;
  states: JobAlertState[];
}

export interface AlertCreator {
  actor: string;
  actorKind: string;
  remote?: string | null;
}

export interface AlertServiceOptions {
  db: Db;
  audit: AuditLog;
  presence: Presence;
  health: HealthTelemetry;
  jobs: JobRunner;
  log: Logger;
  clock?: () => number;
}

const keyOf = (rule: string, subject: string) => `${rule}\u0000${subject}`;
const newId = (prefix: string, now: number) => `${prefix}-${now.toString(36)}-${randomBytes(4).toString('hex')}`;
const hasTags = (deviceTags: readonly string[] | undefined, wanted: readonly string[]) => wanted.every((tag) => deviceTags?.includes(tag) ?? false);
const minutesText = (minutes: number) => `${minutes} min`;

/** A metric of a report, the ratios worked out from their pairs; undefined when the report lacks it. */
export function metricOf(sample: HealthSample, metric: AlertMetric): number | undefined {
  const ratio = (part: number | undefined, total: number | undefined) => (part === undefined || !total ? undefined : Math.round((part / total) * 10_000) / 10_000);
  switch (metric) {
    case 'mem_available_ratio':
      return ratio(sample.mem_available_bytes, sample.mem_total_bytes);
    case 'disk_free_ratio':
      return ratio(sample.disk_free_bytes, sample.disk_total_bytes);
    default:
      return sample[metric];
  }
}

function ruleOf(row: RuleRow): Rule {
  const settings = JSON.parse(row.spec) as RuleSettings;
  return {
    id: row.id,
    name: row.name,
    kind: row.kind,
    enabled: row.enabled === 1,
    tags: settings.tags ?? [],
    minutes: settings.minutes ?? 0,
    ...(settings.metric ? { metric: settings.metric as AlertMetric } : {}),
    ...(settings.op ? { op: settings.op } : {}),
    ...(settings.value !== undefined ? { value: settings.value } : {}),
    states: (settings.states as JobAlertState[] | undefined) ?? ['aborted', 'failed', 'timed_out'],
  };
}

/** The kind's own fields of a checked spec, as stored. */
function settingsOf(spec: { tags?: string[]; minutes?: number; metric?: string; op?: 'above' | 'below'; value?: number; states?: string[] }): RuleSettings {
  const out: RuleSettings = {};
  if (spec.tags !== undefined) out.tags = spec.tags;
  if (spec.minutes !== undefined) out.minutes = spec.minutes;
  if (spec.metric !== undefined) out.metric = spec.metric;
  if (spec.op !== undefined) out.op = spec.op;
  if (spec.value !== undefined) out.value = spec.value;
  if (spec.states !== undefined) out.states = [...new Set(spec.states)];
  return out;
}

export class AlertService {
  readonly store: AlertStore;
  private readonly webhooks: WebhookSender;
  private readonly now: () => number;
  private readonly rules = new Map<string, Rule>();
  /** Firing alerts by rule and subject. */
  private readonly firing = new Map<string, AlertRow>();
  /** Since when each device is offline, by the alerts' clock. */
  private readonly offlineSince = new Map<string, number>();
  /** Telemetry conditions holding now, by rule and device: since when, and the last value. */
  private readonly held = new Map<string, { since: number; observed: number }>();
  private readonly startedAt: number;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private lastPrune = 0;

  private readonly onOnline = (device: DeviceInfo) => this.guard('online', () => this.deviceOnline(device.id));
  private readonly onOffline = (device: DeviceInfo) => this.guard('offline', () => this.offlineSince.set(device.id, this.now()));
  private readonly onReport = (device: string, sample: HealthSample) => this.guard('report', () => this.report(device, sample));
  private readonly onJobFinished = (job: JobSummary) => this.guard('job', () => this.jobFinished(job));

  /** Loads the rules and firing alerts and listens at once: a job that ends while the hub starts is not missed. */
  constructor(private readonly options: AlertServiceOptions) {
    this.now = options.clock ?? Date.now;
    this.store = new AlertStore(options.db);
    this.webhooks = new WebhookSender({ store: this.store, audit: options.audit, log: options.log, clock: this.now });
    this.startedAt = this.now();
    for (const row of this.store.rules()) this.rules.set(row.id, ruleOf(row));
    for (const row of this.store.firing()) this.firing.set(keyOf(row.rule_id, row.subject), row);
    for (const entry of options.presence.table.values()) if (!entry.online) this.offlineSince.set(entry.id, this.startedAt);
    options.presence.on('online', this.onOnline);
    options.presence.on('offline', this.onOffline);
    options.health.on('report', this.onReport);
    options.jobs.on('finished', this.onJobFinished);
  }

  /** Starts the tick and the webhook deliveries (those a restart left pending first). */
  start(): void {
    this.timer = setInterval(() => this.tick(), TICK_MS);
    this.timer.unref();
    this.webhooks.start();
    this.tick();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    const { presence, health, jobs } = this.options;
    presence.off('online', this.onOnline);
    presence.off('offline', this.onOffline);
    health.off('report', this.onReport);
    jobs.off('finished', this.onJobFinished);
    this.webhooks.close();
  }

  // --- rules ---

  listRules(): AlertRuleView[] {
    const counts = this.store.firingCounts();
    return this.store.rules().map((row) => ruleView(row, counts.get(row.id) ?? 0));
  }

  getRule(id: string): AlertRuleView | undefined {
    const row = this.store.rule(id);
    return row ? ruleView(row, this.store.firingCounts().get(id) ?? 0) : undefined;
  }

  /** Throws HubError BAD_REQUEST for a bad rule, BUSY past ALERT_RULES_MAX. */
  createRule(input: unknown, creator: AlertCreator): AlertRuleView {
    const checked = validate(AlertRuleSpecSchema, input);
    if (!checked.ok) throw new HubError('BAD_REQUEST', checked.message);
    const spec = checked.value;
    const count = this.store.ruleCount();
    if (count >= ALERT_RULES_MAX) throw new HubError('BUSY', `there are ${count} alert rules (at most ${ALERT_RULES_MAX}): remove some first`);
    // Said in the rule, so that it reads the same later.
    if (spec.kind === 'job' && spec.states === undefined) spec.states = [...JOB_ALERT_STATES];
    const now = this.now();
    const row: RuleRow = {
      id: newId('ar', now),
      created_at: now,
      actor: creator.actor,
      name: spec.name ?? null,
      kind: spec.kind,
      enabled: spec.enabled === false ? 0 : 1,
      spec: JSON.stringify(settingsOf(spec)),
    };
    this.store.insertRule(row);
    this.rules.set(row.id, ruleOf(row));
    this.options.log.info({ rule: row.id, kind: row.kind, actor: row.actor }, 'alert rule created');
    // A device offline long enough already fires now, not at the next tick.
    setImmediate(() => this.tick());
    return ruleView(row, 0);
  }

  /** Changes some fields (not the kind); undefined for an unknown rule. Disabling resolves its alerts. */
  updateRule(id: string, input: unknown): AlertRuleView | undefined {
    const row = this.store.rule(id);
    if (!row) return undefined;
    const checked = validate(AlertRulePatchSchema, input);
    if (!checked.ok) throw new HubError('BAD_REQUEST', checked.message);
    const { kind: _kind, ...patch } = checked.value;
    const merged = { ...(row.name !== null ? { name: row.name } : {}), kind: row.kind, enabled: row.enabled === 1, ...(JSON.parse(row.spec) as RuleSettings), ...patch };
    const whole = validate(AlertRuleSpecSchema, merged);
    if (!whole.ok) throw new HubError('BAD_REQUEST', whole.message);
    const spec = whole.value;
    const next: RuleRow = { ...row, name: spec.name ?? null, enabled: spec.enabled === false ? 0 : 1, spec: JSON.stringify(settingsOf(spec)) };
    this.store.updateRule(next);
    const rule = ruleOf(next);
    this.rules.set(id, rule);
    // A telemetry condition is judged again from the next report; its firing alerts stay until a report says otherwise.
    for (const key of [...this.held.keys()]) if (key.startsWith(`${id}\u0000`)) this.held.delete(key);
    if (!rule.enabled) this.resolveRule(id, 'its rule was disabled');
    setImmediate(() => this.tick());
    return ruleView(next, this.store.firingCounts().get(id) ?? 0);
  }

  /** Removes a rule; its firing alerts resolve. False for an unknown rule. */
  removeRule(id: string): boolean {
    if (!this.store.deleteRule(id)) return false;
    this.rules.delete(id);
    for (const key of [...this.held.keys()]) if (key.startsWith(`${id}\u0000`)) this.held.delete(key);
    this.resolveRule(id, 'its rule was removed');
    return true;
  }

  // --- alerts ---

  list(state: AlertState | undefined, limit: number): AlertView[] {
    return this.store.alerts(state, limit).map(alertView);
  }

  get(id: string): AlertView | undefined {
    const row = this.store.alert(id);
    return row ? alertView(row) : undefined;
  }

  /**
   * Resolves a job alert by hand (they have no end of their own); undefined for an unknown
   * alert, a resolved one answered as it is. Other kinds resolve when their condition ends:
   * BAD_REQUEST.
   */
  resolveByHand(id: string, by: AlertCreator): AlertView | undefined {
    const row = this.store.alert(id);
    if (!row) return undefined;
    if (row.state === 'resolved') return alertView(row);
    if (row.kind !== 'job') {
      throw new HubError('BAD_REQUEST', `alert ${id} is a ${row.kind} alert: it resolves by itself when its condition ends (disable or remove its rule to stop it)`);
    }
    const live = this.firing.get(keyOf(row.rule_id, row.subject)) ?? row;
    return alertView(this.resolve(live, by.actor, `resolved by ${by.actor}`, {}, by.actorKind));
  }

  // --- webhooks ---

  listWebhooks(): WebhookView[] {
    return this.store.webhooks().map((row) => this.store.webhookView(row));
  }

  /** Throws HubError BAD_REQUEST for a bad webhook, BUSY past WEBHOOKS_MAX. The secret is never shown again. */
  createWebhook(input: unknown, creator: AlertCreator): WebhookView {
    const checked = validate(WebhookSpecSchema, input);
    if (!checked.ok) throw new HubError('BAD_REQUEST', checked.message);
    const spec = checked.value;
    const count = this.store.webhooks().length;
    if (count >= WEBHOOKS_MAX) throw new HubError('BUSY', `there are ${count} webhooks (at most ${WEBHOOKS_MAX}): remove some first`);
    const now = this.now();
    const row = { id: newId('wh', now), created_at: now, actor: creator.actor, url: spec.url, secret: spec.secret, events: JSON.stringify([...new Set(spec.events ?? ['alert.firing', 'alert.resolved'])]) };
    this.store.insertWebhook(row);
    this.options.log.info({ webhook: row.id, url: row.url, actor: row.actor }, 'webhook created');
    return this.store.webhookView(row);
  }

  /** Removes a webhook with the deliveries it still had pending. False for an unknown one. */
  removeWebhook(id: string): boolean {
    return this.store.deleteWebhook(id);
  }

  // --- evaluation ---

  /** Judges what time decides: offline devices, telemetry conditions held long enough, alerts whose subject or rule went. */
  tick(): void {
    if (this.closed) return;
    this.guard('tick', () => {
      const now = this.now();
      const { presence } = this.options;
      const offlineRules = [...this.rules.values()].filter((rule) => rule.enabled && rule.kind === 'device_offline');
      if (offlineRules.length > 0) {
        for (const entry of presence.table.values()) {
          // Never connected (registered, waiting for its first connection): it never went offline.
          if (entry.online || entry.lastSeen === null) continue;
          const since = this.offlineSince.get(entry.id) ?? this.startedAt;
          for (const rule of offlineRules) {
            if (this.firing.has(keyOf(rule.id, entry.id)) || !hasTags(entry.tags, rule.tags)) continue;
            if (now - since <= rule.minutes * MINUTE_MS) continue;
            const lastSeen = entry.lastSeen === null ? null : new Date(entry.lastSeen).toISOString();
            this.fire(rule, entry.id, `${entry.id} offline for more than ${minutesText(rule.minutes)}`, {
              last_seen: lastSeen,
              offline_since: new Date(since).toISOString(),
              minutes: rule.minutes,
              tags: rule.tags,
            });
          }
        }
      }
      for (const [key, held] of this.held) {
        if (this.firing.has(key)) continue;
        const [ruleId, device] = key.split('\u0000') as [string, string];
        const rule = this.rules.get(ruleId);
        if (!rule || !rule.enabled) continue;
        if (now - held.since >= rule.minutes * MINUTE_MS) this.fireTelemetry(rule, device, held);
      }
      for (const row of [...this.firing.values()]) {
        if (row.kind === 'job') continue;
        const rule = this.rules.get(row.rule_id);
        const entry = presence.get(row.subject);
        if (!entry) this.resolve(row, 'hub', `${row.subject} was removed`);
        else if (rule && !hasTags(entry.tags, rule.tags)) this.resolve(row, 'hub', `${row.subject} no longer has the tags ${rule.tags.join(', ')}`);
        else if (row.kind === 'device_offline' && entry.online) this.resolve(row, 'hub', `${row.subject} is online again`);
      }
      if (now - this.lastPrune > 3_600_000) {
        this.lastPrune = now;
        this.store.pruneResolved(RESOLVED_ALERTS_KEPT);
      }
    });
  }

  private deviceOnline(id: string): void {
    this.offlineSince.delete(id);
    for (const row of [...this.firing.values()]) {
      if (row.kind === 'device_offline' && row.subject === id) this.resolve(row, 'hub', `${id} is online again`);
    }
  }

  private report(device: string, sample: HealthSample): void {
    const now = this.now();
    const tags = this.options.presence.get(device)?.tags;
    for (const rule of this.rules.values()) {
      if (!rule.enabled || rule.kind !== 'telemetry') continue;
      const key = keyOf(rule.id, device);
      if (!hasTags(tags, rule.tags)) {
        this.held.delete(key);
        continue;
      }
      const observed = metricOf(sample, rule.metric!);
      if (observed === undefined) continue;
      const holds = rule.op === 'above' ? observed > rule.value! : observed < rule.value!;
      if (holds) {
        const held = this.held.get(key) ?? { since: now, observed };
        held.observed = observed;
        this.held.set(key, held);
        if (!this.firing.has(key) && now - held.since >= rule.minutes * MINUTE_MS) this.fireTelemetry(rule, device, held);
      } else {
        this.held.delete(key);
        const firing = this.firing.get(key);
        if (firing) this.resolve(firing, 'hub', `${device} ${rule.metric} ${observed} is no longer ${rule.op} ${rule.value}`, { observed });
      }
    }
  }

  private fireTelemetry(rule: Rule, device: string, held: { since: number; observed: number }): void {
    const lasting = rule.minutes > 0 ? ` for ${minutesText(rule.minutes)}` : '';
    this.fire(rule, device, `${device} ${rule.metric} ${held.observed} ${rule.op} ${rule.value}${lasting}`, {
      metric: rule.metric,
      op: rule.op,
      threshold: rule.value,
      observed: held.observed,
      since: new Date(held.since).toISOString(),
      minutes: rule.minutes,
      tags: rule.tags,
    });
  }

  private jobFinished(job: JobSummary): void {
    for (const rule of this.rules.values()) {
      if (!rule.enabled || rule.kind !== 'job') continue;
      const why: string[] = [];
      if (job.state === 'aborted' && rule.states.includes('aborted')) why.push(`aborted: ${job.reason ?? 'no reason given'}`);
      if (job.state === 'done') {
        if (job.counts.failed > 0 && rule.states.includes('failed')) why.push(`${job.counts.failed} failed`);
        if (job.counts.timed_out > 0 && rule.states.includes('timed_out')) why.push(`${job.counts.timed_out} timed out`);
      }
      if (why.length === 0 || this.store.everFired(rule.id, job.id)) continue;
      const targets = Object.values(job.counts).reduce((sum, n) => sum + n, 0);
      const summary = job.state === 'aborted' ? `job ${job.id} ${why[0]}` : `job ${job.id} done with ${why.join(', ')} of ${targets} targets`;
      this.fire(rule, job.id, summary, { job: job.id, state: job.state, counts: job.counts, reason: job.reason ?? null, order: job.order, cmd_str: job.cmd_str, actor: job.actor });
    }
  }

  private fire(rule: Rule, subject: string, summary: string, detail: Record<string, unknown>): void {
    const now = this.now();
    const row: AlertRow = {
      id: newId('al', now),
      rule_id: rule.id,
      rule_name: rule.name,
      kind: rule.kind,
      subject,
      state: 'firing',
      fired_at: now,
      resolved_at: null,
      resolved_by: null,
      summary,
      resolution: null,
      detail: JSON.stringify(detail),
    };
    this.store.insertAlert(row);
    this.firing.set(keyOf(rule.id, subject), row);
    this.options.log.warn({ alert: row.id, rule: rule.id, kind: rule.kind, subject }, `alert firing: ${summary}`);
    this.options.audit.record({ at: now, actor: 'hub', actorKind: 'hub', remote: null, action: 'alert.fire', device: rule.kind === 'job' ? null : subject, outcome: 'firing', detail: { alert: row.id, rule: rule.id, kind: rule.kind, subject, summary } });
    this.webhooks.enqueue('alert.firing', alertView(row), now);
  }

  private resolve(row: AlertRow, by: string, resolution: string, extra: Record<string, unknown> = {}, byKind = 'hub'): AlertRow {
    const now = this.now();
    const detail = Object.keys(extra).length > 0 ? JSON.stringify({ ...(JSON.parse(row.detail) as Record<string, unknown>), resolved: extra }) : row.detail;
    const resolved: AlertRow = { ...row, state: 'resolved', resolved_at: now, resolved_by: by, resolution, detail };
    this.store.resolveAlert(resolved);
    this.firing.delete(keyOf(row.rule_id, row.subject));
    this.options.log.info({ alert: row.id, rule: row.rule_id, subject: row.subject, by }, `alert resolved: ${resolution}`);
    this.options.audit.record({ at: now, actor: by, actorKind: byKind, remote: null, action: 'alert.resolve', device: row.kind === 'job' ? null : row.subject, outcome: 'resolved', detail: { alert: row.id, rule: row.rule_id, kind: row.kind, subject: row.subject, resolution } });
    this.webhooks.enqueue('alert.resolved', alertView(resolved), now);
    return resolved;
  }

  private resolveRule(ruleId: string, why: string): void {
    for (const row of [...this.firing.values()]) if (row.rule_id === ruleId) this.resolve(row, 'hub', why);
  }

  /** An event handler's failure (the database, say) is logged, never thrown into presence, health or jobs. */
  private guard(what: string, run: () => void): void {
    if (this.closed) return;
    try {
      run();
    } catch (error) {
      this.options.log.error({ err: error, what }, 'alerts: evaluation failed');
    }
  }
}
