/**
 * Alerts and webhooks (docs/protocol.md "Alerts and webhooks"): the rules operators set (a
 * device offline too long, a health metric past a threshold, a job that went wrong), the alerts
 * they fire, and the webhooks every alert is POSTed to. The schemas check what REST takes; the
 * views are what it answers. The client SDK imports the views as types only.
 */
import { z } from 'zod';
import { expect } from './schemas.js';
import { MAX_DEVICE_TAGS, tagSchema } from './tags.js';

export const ALERT_KINDS = ['device_offline', 'telemetry', 'job'] as const;
export type AlertKind = (typeof ALERT_KINDS)[number];

/**
 * What a telemetry rule may watch: the numeric fields of a health report (src/protocol/health.ts),
 * and memory available and disk free as a fraction 0–1 of their totals (as `GET
 * /api/health/fleet` ranks them).
 */
export const ALERT_METRICS = [
  'load1',
  'load5',
  'load15',
  'mem_available_bytes',
  'mem_available_ratio',
  'disk_free_bytes',
  'disk_free_ratio',
  'temp_c',
  'uptime_s',
] as const;
export type AlertMetric = (typeof ALERT_METRICS)[number];

/** What a job rule fires on: a job that ended `aborted`, or `done` with targets `failed` or `timed_out`. */
export const JOB_ALERT_STATES = ['aborted', 'failed', 'timed_out'] as const;
export type JobAlertState = (typeof JOB_ALERT_STATES)[number];

export const ALERT_STATES = ['firing', 'resolved'] as const;
export type AlertState = (typeof ALERT_STATES)[number];

export const WEBHOOK_EVENTS = ['alert.firing', 'alert.resolved'] as const;
export type WebhookEvent = (typeof WEBHOOK_EVENTS)[number];

/** The longest `minutes` a rule may wait: a week. */
export const ALERT_MINUTES_MAX = 7 * 24 * 60;
export const WEBHOOK_SECRET_MIN = 16;
export const WEBHOOK_SECRET_MAX = 256;
export const WEBHOOK_URL_MAX = 2048;

const name = z.string({ error: expect('must be a string') }).min(1, { error: 'must not be empty' }).max(128, { error: 'must be at most 128 characters' });
const minutes = z
  .number({ error: expect('must be a number of minutes') })
  .min(0, { error: 'must be at least 0' })
  .max(ALERT_MINUTES_MAX, { error: `must be at most ${ALERT_MINUTES_MAX} (a week)` });

const ruleFields = {
  name: name.optional(),
  kind: z.enum(ALERT_KINDS, { error: expect(`must be one of ${ALERT_KINDS.join(', ')}`) }),
  enabled: z.boolean({ error: expect('must be true or false') }).optional(),
  /** device_offline, telemetry: only devices with every one of these tags (default: every device). */
  tags: z.array(tagSchema, { error: expect('must be a list of tags') }).max(MAX_DEVICE_TAGS, { error: `must have at most ${MAX_DEVICE_TAGS} tags` }).optional(),
  /** device_offline: offline longer than this; telemetry: the condition held at least this long. */
  minutes: minutes.optional(),
  metric: z.enum(ALERT_METRICS, { error: expect(`must be one of ${ALERT_METRICS.join(', ')}`) }).optional(),
  op: z.enum(['above', 'below'], { error: expect('must be "above" or "below"') }).optional(),
  value: z.number({ error: expect('must be a number') }).optional(),
  /** job: which endings fire (default all three). */
  states: z
    .array(z.enum(JOB_ALERT_STATES, { error: `must be one of ${JOB_ALERT_STATES.join(', ')}` }), { error: expect('must be a list') })
    .min(1, { error: 'must name at least one of aborted, failed, timed_out' })
    .optional(),
};

const ALLOWED = 'name, kind, enabled, tags, minutes, metric, op, value, states';
const objectError = (issue: { code?: string }) =>
  issue.code === 'unrecognized_keys' ? `has an unknown key (allowed: ${ALLOWED})` : 'must be an object like {"kind": "device_offline", "minutes": 5}';

/** The fields each kind takes; the others are refused, so a typo does not pass unnoticed. */
const FIELDS_OF: Record<AlertKind, readonly string[]> = {
  device_offline: ['tags', 'minutes'],
  telemetry: ['tags', 'minutes', 'metric', 'op', 'value'],
  job: ['states'],
};
const REQUIRED_OF: Record<AlertKind, readonly string[]> = {
  device_offline: ['minutes'],
  telemetry: ['metric', 'op', 'value', 'minutes'],
  job: [],
};

/** A rule as `POST /api/alerts/rules` takes it (and as a changed rule must end up). */
export const AlertRuleSpecSchema = z.strictObject(ruleFields, { error: objectError }).superRefine((spec, ctx) => {
  const given = spec as Record<string, unknown>;
  for (const key of ['tags', 'minutes', 'metric', 'op', 'value', 'states']) {
    if (given[key] !== undefined && !FIELDS_OF[spec.kind].includes(key)) ctx.addIssue({ code: 'custom', path: [key], message: `is not a field of ${spec.kind} rules (they take ${FIELDS_OF[spec.kind].join(', ')})` });
  }
  for (const key of REQUIRED_OF[spec.kind]) if (given[key] === undefined) ctx.addIssue({ code: 'custom', path: [key], message: `is required for ${spec.kind} rules` });
  if (spec.metric?.endsWith('_ratio') && spec.value !== undefined && (spec.value < 0 || spec.value > 1)) {
    ctx.addIssue({ code: 'custom', path: ['value'], message: `must be from 0 to 1 for ${spec.metric} (a fraction of the total)` });
  }
});
export type AlertRuleSpec = z.infer<typeof AlertRuleSpecSchema>;

/** `PATCH /api/alerts/rules/{id}`: any field but `kind` (the result is checked as a whole). */
export const AlertRulePatchSchema = z.strictObject({ ...ruleFields, kind: ruleFields.kind.optional() }, { error: objectError }).superRefine((patch, ctx) => {
  if (patch.kind !== undefined) ctx.addIssue({ code: 'custom', path: ['kind'], message: 'cannot be changed: remove the rule and add another' });
});
export type AlertRulePatch = z.infer<typeof AlertRulePatchSchema>;

/** A webhook as `POST /api/webhooks` takes it. */
export const WebhookSpecSchema = z.strictObject(
  {
    url: z
      .string({ error: expect('must be a string') })
      .max(WEBHOOK_URL_MAX, { error: `must be at most ${WEBHOOK_URL_MAX} characters` })
      .superRefine((value, ctx) => {
        const problem = webhookUrlProblem(value);
        if (problem) ctx.addIssue({ code: 'custom', message: problem });
      }),
    secret: z
      .string({ error: expect('must be a string') })
      .min(WEBHOOK_SECRET_MIN, { error: `must be at least ${WEBHOOK_SECRET_MIN} characters` })
      .max(WEBHOOK_SECRET_MAX, { error: `must be at most ${WEBHOOK_SECRET_MAX} characters` }),
    events: z
      .array(z.enum(WEBHOOK_EVENTS, { error: `must be one of ${WEBHOOK_EVENTS.join(', ')}` }), { error: expect('must be a list') })
      .min(1, { error: 'must name at least one event' })
      .optional(),
  },
  {
    error: (issue: { code?: string }) =>
      issue.code === 'unrecognized_keys' ? 'has an unknown key (allowed: url, secret, events)' : 'must be an object like {"url": "https://…", "secret": "…"}',
  },
);
export type WebhookSpec = z.infer<typeof WebhookSpecSchema>;

/** Why a webhook URL is refused, or null: only absolute http(s) URLs, without user name or password. */
export function webhookUrlProblem(value: string): string | null {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return 'must be an absolute http:// or https:// URL';
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return `must be an http:// or https:// URL, not ${url.protocol}`;
  if (url.username || url.password) return 'must not carry a user name or password (receivers check the signature)';
  return null;
}

/** A rule as REST answers it: the fields of its kind only. */
export interface AlertRuleView {
  id: string;
  name: string | null;
  kind: AlertKind;
  enabled: boolean;
  created_at: string;
  actor: string;
  tags?: string[];
  minutes?: number;
  metric?: AlertMetric;
  op?: 'above' | 'below';
  value?: number;
  states?: JobAlertState[];
  /** How many of its alerts fire now. */
  firing: number;
}

/** An alert: one rule's condition on one subject (a device, or a job), from firing to resolved. */
export interface AlertView {
  id: string;
  rule: string;
  /** The rule's name when it fired (null when it had none). */
  rule_name: string | null;
  kind: AlertKind;
  /** The device (device_offline, telemetry) or the job (job) it is about. */
  subject: string;
  device: string | null;
  job: string | null;
  state: AlertState;
  fired_at: string;
  resolved_at: string | null;
  /** `hub` when its condition ended (or its rule went), else who resolved it. */
  resolved_by: string | null;
  /** One line for people: what fired. */
  summary: string;
  /** One line for people: why it resolved. */
  resolution: string | null;
  /** The facts: last_seen and offline_since; metric, observed, threshold; the job's state, counts, reason. */
  detail: Record<string, unknown>;
}

/** A webhook as REST answers it: the secret masked, always. */
export interface WebhookView {
  id: string;
  url: string;
  events: WebhookEvent[];
  secret: string;
  created_at: string;
  actor: string;
  /** Deliveries waiting to be sent or retried. */
  pending: number;
  /** The last attempt: when, and how it went. */
  last_delivery: { at: string; outcome: 'delivered' | 'failed'; status: number | null; error: string | null } | null;
}

/** What each delivery POSTs (the body signed by `X-Rhizosphere-Signature`). */
export interface WebhookPayload {
  event: WebhookEvent;
  /** The delivery's id, as in `X-Rhizosphere-Delivery`: the same on every retry of it. */
  delivery: string;
  /** When the alert fired or resolved. */
  at: string;
  alert: AlertView;
}

/** The mask `GET /api/webhooks` shows for every secret. */
export const MASKED_SECRET = '********';
