/**
 * The tables of alerts and webhooks (migration 14, src/store/db.ts): rules, the alerts they
 * fired, webhooks and their deliveries. Each hub node keeps its own, as it does its jobs and
 * schedules. At most one alert fires per rule and subject at a time (a partial unique index).
 */
import type { Db } from '../store/db.js';
import type { AlertKind, AlertRuleView, AlertState, AlertView, WebhookEvent, WebhookView } from '../protocol/alerts.js';
import { MASKED_SECRET } from '../protocol/alerts.js';

/** The kind-specific fields of a rule, kept as JSON. */
export interface RuleSettings {
  tags?: string[];
  minutes?: number;
  metric?: string;
  op?: 'above' | 'below';
  value?: number;
  states?: string[];
}

export interface RuleRow {
  id: string;
  created_at: number;
  actor: string;
  name: string | null;
  kind: AlertKind;
  enabled: number;
  spec: string;
}

export interface AlertRow {
  id: string;
  rule_id: string;
  rule_name: string | null;
  kind: AlertKind;
  subject: string;
  state: AlertState;
  fired_at: number;
  resolved_at: number | null;
  resolved_by: string | null;
  summary: string;
  resolution: string | null;
  detail: string;
}

export interface WebhookRow {
  id: string;
  created_at: number;
  actor: string;
  url: string;
  secret: string;
  events: string;
}

export interface DeliveryRow {
  seq: number;
  id: string;
  webhook_id: string;
  event: WebhookEvent;
  alert_id: string;
  body: string;
  state: 'pending' | 'delivered' | 'failed';
  attempts: number;
  next_at: number | null;
  created_at: number;
  updated_at: number;
  last_status: number | null;
  last_error: string | null;
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

export function ruleView(row: RuleRow, firing: number): AlertRuleView {
  const settings = JSON.parse(row.spec) as RuleSettings;
  return {
    id: row.id,
    name: row.name,
    kind: row.kind,
    enabled: row.enabled === 1,
    created_at: iso(row.created_at)!,
    actor: row.actor,
    ...(settings as Partial<AlertRuleView>),
    firing,
  };
}

export function alertView(row: AlertRow): AlertView {
  const onDevice = row.kind !== 'job';
  return {
    id: row.id,
    rule: row.rule_id,
    rule_name: row.rule_name,
    kind: row.kind,
    subject: row.subject,
    device: onDevice ? row.subject : null,
    job: onDevice ? null : row.subject,
    state: row.state,
    fired_at: iso(row.fired_at)!,
    resolved_at: iso(row.resolved_at),
    resolved_by: row.resolved_by,
    summary: row.summary,
    resolution: row.resolution,
    detail: JSON.parse(row.detail) as Record<string, unknown>,
  };
}

export class AlertStore {
  constructor(private readonly db: Db) {}

  // --- rules ---

  rules(): RuleRow[] {
    return this.db.prepare<[], RuleRow>('SELECT * FROM alert_rules ORDER BY created_at DESC, id').all();
  }

  rule(id: string): RuleRow | undefined {
    return this.db.prepare<[string], RuleRow>('SELECT * FROM alert_rules WHERE id = ?').get(id);
  }

  ruleCount(): number {
    return this.db.prepare<[], { n: number }>('SELECT COUNT(*) AS n FROM alert_rules').get()!.n;
  }

  insertRule(row: RuleRow): void {
    this.db.prepare('INSERT INTO alert_rules (id, created_at, actor, name, kind, enabled, spec) VALUES (@id, @created_at, @actor, @name, @kind, @enabled, @spec)').run(row);
  }

  updateRule(row: RuleRow): void {
    this.db.prepare('UPDATE alert_rules SET name = @name, enabled = @enabled, spec = @spec WHERE id = @id').run(row);
  }

  deleteRule(id: string): boolean {
    return this.db.prepare('DELETE FROM alert_rules WHERE id = ?').run(id).changes > 0;
  }

  firingCounts(): Map<string, number> {
    const rows = this.db.prepare<[], { rule_id: string; n: number }>(`SELECT rule_id, COUNT(*) AS n FROM alerts WHERE state = 'firing' GROUP BY rule_id`).all();
    return new Map(rows.map((r) => [r.rule_id, r.n]));
  }

  // --- alerts ---

  firing(): AlertRow[] {
    return this.db.prepare<[], AlertRow>(`SELECT * FROM alerts WHERE state = 'firing'`).all();
  }

  alert(id: string): AlertRow | undefined {
    return this.db.prepare<[string], AlertRow>('SELECT * FROM alerts WHERE id = ?').get(id);
  }

  /** Newest first; firing ones by when they fired, resolved ones by when they resolved. */
  alerts(state: AlertState | undefined, limit: number): AlertRow[] {
    if (state === 'firing') return this.db.prepare<[number], AlertRow>(`SELECT * FROM alerts WHERE state = 'firing' ORDER BY fired_at DESC, id LIMIT ?`).all(limit);
    if (state === 'resolved') return this.db.prepare<[number], AlertRow>(`SELECT * FROM alerts WHERE state = 'resolved' ORDER BY resolved_at DESC, id LIMIT ?`).all(limit);
    return this.db.prepare<[number], AlertRow>(`SELECT * FROM alerts ORDER BY state = 'firing' DESC, COALESCE(resolved_at, fired_at) DESC, id LIMIT ?`).all(limit);
  }

  /** Whether the rule ever fired on the subject (a job fires once, whatever came after). */
  everFired(ruleId: string, subject: string): boolean {
    return this.db.prepare<[string, string], { n: number }>('SELECT COUNT(*) AS n FROM alerts WHERE rule_id = ? AND subject = ?').get(ruleId, subject)!.n > 0;
  }

  insertAlert(row: AlertRow): void {
    this.db
      .prepare(
        `INSERT INTO alerts (id, rule_id, rule_name, kind, subject, state, fired_at, resolved_at, resolved_by, summary, resolution, detail)
         VALUES (@id, @rule_id, @rule_name, @kind, @subject, @state, @fired_at, @resolved_at, @resolved_by, @summary, @resolution, @detail)`,
      )
      .run(row);
  }

  resolveAlert(row: AlertRow): void {
    this.db.prepare(`UPDATE alerts SET state = 'resolved', resolved_at = @resolved_at, resolved_by = @resolved_by, resolution = @resolution, detail = @detail WHERE id = @id`).run(row);
  }

  /** Keeps the newest `keep` resolved alerts. */
  pruneResolved(keep: number): number {
    return this.db
      .prepare(`DELETE FROM alerts WHERE state = 'resolved' AND id NOT IN (SELECT id FROM alerts WHERE state = 'resolved' ORDER BY resolved_at DESC LIMIT ?)`)
      .run(keep).changes;
  }

  // --- webhooks ---

  webhooks(): WebhookRow[] {
    return this.db.prepare<[], WebhookRow>('SELECT * FROM webhooks ORDER BY created_at DESC, id').all();
  }

  webhook(id: string): WebhookRow | undefined {
    return this.db.prepare<[string], WebhookRow>('SELECT * FROM webhooks WHERE id = ?').get(id);
  }

  insertWebhook(row: WebhookRow): void {
    this.db.prepare('INSERT INTO webhooks (id, created_at, actor, url, secret, events) VALUES (@id, @created_at, @actor, @url, @secret, @events)').run(row);
  }

  /** Removes the webhook and its deliveries. */
  deleteWebhook(id: string): boolean {
    return this.db.transaction(() => {
      this.db.prepare('DELETE FROM webhook_deliveries WHERE webhook_id = ?').run(id);
      return this.db.prepare('DELETE FROM webhooks WHERE id = ?').run(id).changes > 0;
    })();
  }

  webhookView(row: WebhookRow): WebhookView {
    const pending = this.db.prepare<[string], { n: number }>(`SELECT COUNT(*) AS n FROM webhook_deliveries WHERE webhook_id = ? AND state = 'pending'`).get(row.id)!.n;
    const last = this.db
      .prepare<[string], DeliveryRow>(`SELECT * FROM webhook_deliveries WHERE webhook_id = ? AND attempts > 0 ORDER BY updated_at DESC, seq DESC LIMIT 1`)
      .get(row.id);
    return {
      id: row.id,
      url: row.url,
      events: JSON.parse(row.events) as WebhookEvent[],
      secret: MASKED_SECRET,
      created_at: iso(row.created_at)!,
      actor: row.actor,
      pending,
      last_delivery: last
        ? { at: iso(last.updated_at)!, outcome: last.state === 'delivered' ? 'delivered' : 'failed', status: last.last_status, error: last.last_error }
        : null,
    };
  }

  // --- deliveries ---

  insertDelivery(row: Omit<DeliveryRow, 'seq'>): void {
    this.db
      .prepare(
        `INSERT INTO webhook_deliveries (id, webhook_id, event, alert_id, body, state, attempts, next_at, created_at, updated_at, last_status, last_error)
         VALUES (@id, @webhook_id, @event, @alert_id, @body, @state, @attempts, @next_at, @created_at, @updated_at, @last_status, @last_error)`,
      )
      .run(row);
  }

  /** The oldest pending delivery of each webhook (deliveries go out in order, one at a time per webhook). */
  heads(): (DeliveryRow & { url: string; secret: string })[] {
    return this.db
      .prepare<[], DeliveryRow & { url: string; secret: string }>(
        `SELECT d.*, w.url AS url, w.secret AS secret FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
         WHERE d.seq IN (SELECT MIN(seq) FROM webhook_deliveries WHERE state = 'pending' GROUP BY webhook_id)`,
      )
      .all();
  }

  updateDelivery(row: Pick<DeliveryRow, 'id' | 'state' | 'attempts' | 'next_at' | 'updated_at' | 'last_status' | 'last_error'>): void {
    this.db
      .prepare('UPDATE webhook_deliveries SET state = @state, attempts = @attempts, next_at = @next_at, updated_at = @updated_at, last_status = @last_status, last_error = @last_error WHERE id = @id')
      .run(row);
  }

  delivery(id: string): DeliveryRow | undefined {
    return this.db.prepare<[string], DeliveryRow>('SELECT * FROM webhook_deliveries WHERE id = ?').get(id);
  }

  /** Deletes finished deliveries last touched before `before`. */
  pruneDeliveries(before: number): number {
    return this.db.prepare(`DELETE FROM webhook_deliveries WHERE state != 'pending' AND updated_at < ?`).run(before).changes;
  }
}
