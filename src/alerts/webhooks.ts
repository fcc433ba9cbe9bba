/**
 * Webhook deliveries (docs/protocol.md "Alerts and webhooks"): each alert that fires or
 * resolves is POSTed as JSON to every webhook that wants the event, signed with the webhook's
 * secret (`X-Rhizosphere-Signature: sha256=HEX`, an HMAC-SHA256 of the raw body). A delivery is
 * written to the database before it is sent, so a restart does not lose it; a failed attempt
 * (no answer within 10 s, a network error, any status but 2xx, a redirect, which is never
 * followed) is tried again after 1, 2, 4, 8… s up to 10 minutes apart, 12 attempts in all.
 * Each webhook's deliveries go out in order, one at a time. Every attempt is audited as
 * `webhook.delivery`.
 */
import { createHmac, randomBytes } from 'node:crypto';
import type { Logger } from '../log.js';
import { PACKAGE_VERSION } from '../package-root.js';
import type { AlertView, WebhookEvent, WebhookPayload } from '../protocol/alerts.js';
import type { AuditLog } from '../store/audit.js';
import type { AlertStore, DeliveryRow } from './store.js';

/** How long an attempt may take, answer included. */
export const WEBHOOK_TIMEOUT_MS = 10_000;
/** Attempts per delivery, the first included; then it is given up (`failed`). */
export const WEBHOOK_MAX_ATTEMPTS = 12;
/** The wait after the first failure; it doubles after each, up to WEBHOOK_BACKOFF_MAX_MS. */
export const WEBHOOK_BACKOFF_BASE_MS = 1000;
export const WEBHOOK_BACKOFF_MAX_MS = 10 * 60_000;
/** How often due deliveries are looked for (besides at once when an alert fires). */
const POLL_MS = 1000;
/** Finished deliveries are kept this long (the webhooks list shows the last one). */
const KEEP_FINISHED_MS = 7 * 24 * 3_600_000;
/** Error text kept per attempt. */
const ERROR_MAX = 300;

/** The wait before attempt `attempt + 1`, after `attempt` attempts failed. */
export function backoffMs(attempt: number): number {
  return Math.min(WEBHOOK_BACKOFF_MAX_MS, WEBHOOK_BACKOFF_BASE_MS * 2 ** Math.max(0, attempt - 1));
}

/** The `X-Rhizosphere-Signature` of a body: `sha256=` and the hex HMAC-SHA256 of its bytes with the secret. */
export function signature(secret: string, body: string): string {
  return `sha256=${createHmac('sha256', secret).update(body, 'utf8').digest('hex')}`;
}

export interface WebhookSenderOptions {
  store: AlertStore;
  audit: AuditLog;
  log: Logger;
  clock: () => number;
}

export class WebhookSender {
  private readonly store: AlertStore;
  private readonly audit: AuditLog;
  private readonly log: Logger;
  private readonly now: () => number;
  /** Webhooks with an attempt in flight. */
  private readonly busy = new Set<string>();
  private readonly inFlight = new Set<AbortController>();
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  private lastPrune = 0;

  constructor(options: WebhookSenderOptions) {
    this.store = options.store;
    this.audit = options.audit;
    this.log = options.log;
    this.now = options.clock;
  }

  /** Sends what a restart left pending, then looks every second. */
  start(): void {
    this.timer = setInterval(() => this.pump(), POLL_MS);
    this.timer.unref();
    this.pump();
  }

  /** Queues the event for every webhook that wants it, and sends at once what it can. */
  enqueue(event: WebhookEvent, alert: AlertView, at: number): void {
    if (this.closed) return;
    const now = this.now();
    for (const webhook of this.store.webhooks()) {
      if (!(JSON.parse(webhook.events) as string[]).includes(event)) continue;
      const id = `wd-${now.toString(36)}-${randomBytes(5).toString('hex')}`;
      const payload: WebhookPayload = { event, delivery: id, at: new Date(at).toISOString(), alert };
      this.store.insertDelivery({
        id,
        webhook_id: webhook.id,
        event,
        alert_id: alert.id,
        body: JSON.stringify(payload),
        state: 'pending',
        attempts: 0,
        next_at: now,
        created_at: now,
        updated_at: now,
        last_status: null,
        last_error: null,
      });
    }
    this.pump();
  }

  /** Starts an attempt for every webhook whose oldest pending delivery is due. */
  pump(): void {
    if (this.closed) return;
    const now = this.now();
    let heads: ReturnType<AlertStore['heads']>;
    try {
      heads = this.store.heads();
      if (now - this.lastPrune > 3_600_000) {
        this.lastPrune = now;
        this.store.pruneDeliveries(now - KEEP_FINISHED_MS);
      }
    } catch (error) {
      this.log.error({ err: error }, 'webhooks: cannot read the pending deliveries');
      return;
    }
    for (const head of heads) {
      if (this.busy.has(head.webhook_id) || (head.next_at ?? 0) > now) continue;
      this.busy.add(head.webhook_id);
      void this.attempt(head).finally(() => {
        this.busy.delete(head.webhook_id);
        // The next one of this webhook, if due, without waiting for the poll.
        if (!this.closed) setImmediate(() => this.pump());
      });
    }
  }

  private async attempt(delivery: DeliveryRow & { url: string; secret: string }): Promise<void> {
    const attempt = delivery.attempts + 1;
    const controller = new AbortController();
    this.inFlight.add(controller);
    const timeout = setTimeout(() => controller.abort(new Error(`no answer within ${WEBHOOK_TIMEOUT_MS / 1000} s`)), WEBHOOK_TIMEOUT_MS);
    const started = performance.now();
    let status: number | null = null;
    let error: string | null = null;
    try {
      const res = await fetch(delivery.url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'user-agent': `rhizosphere/${PACKAGE_VERSION}`,
          'x-rhizosphere-event': delivery.event,
          'x-rhizosphere-delivery': delivery.id,
          'x-rhizosphere-signature': signature(delivery.secret, delivery.body),
        },
        body: delivery.body,
        // A webhook is the URL an admin gave: a redirect elsewhere (or to another scheme) is not followed.
        redirect: 'manual',
        signal: controller.signal,
      });
      status = res.status;
      // The answer is read (and dropped) so the connection can be reused, within the same timeout.
      await res.arrayBuffer().catch(() => undefined);
      if (status < 200 || status > 299) error = status >= 300 && status < 400 ? `HTTP ${status}: redirects are not followed` : `HTTP ${status}`;
    } catch (failure) {
      const reason = controller.signal.aborted ? controller.signal.reason : failure;
      const cause = (reason as Error & { cause?: Error })?.cause;
      error = `${(reason as Error)?.message ?? String(reason)}${cause?.message ? `: ${cause.message}` : ''}`.slice(0, ERROR_MAX);
    } finally {
      clearTimeout(timeout);
      this.inFlight.delete(controller);
    }
    // Closing: the attempt was cut short; it stays pending and is made again after the restart.
    if (this.closed) return;
    const durationMs = Math.round(performance.now() - started);
    const now = this.now();
    const delivered = error === null;
    const givenUp = !delivered && attempt >= WEBHOOK_MAX_ATTEMPTS;
    const outcome = delivered ? 'delivered' : givenUp ? 'gave_up' : 'failed';
    const nextAt = delivered || givenUp ? null : now + backoffMs(attempt);
    try {
      this.store.updateDelivery({
        id: delivery.id,
        state: delivered ? 'delivered' : givenUp ? 'failed' : 'pending',
        attempts: attempt,
        next_at: nextAt,
        updated_at: now,
        last_status: status,
        last_error: error,
      });
    } catch (failure) {
      // The webhook was removed meanwhile (its deliveries with it), or the database is closing.
      this.log.warn({ err: failure, delivery: delivery.id }, 'webhooks: cannot record a delivery attempt');
    }
    this.audit.record({
      at: now,
      actor: 'hub',
      actorKind: 'hub',
      remote: null,
      action: 'webhook.delivery',
      outcome,
      durationMs,
      detail: {
        webhook: delivery.webhook_id,
        url: delivery.url,
        delivery: delivery.id,
        event: delivery.event,
        alert: delivery.alert_id,
        attempt,
        status,
        error,
        ...(nextAt !== null ? { next_attempt_at: new Date(nextAt).toISOString() } : {}),
      },
    });
    if (delivered) this.log.info({ webhook: delivery.webhook_id, delivery: delivery.id, event: delivery.event, attempt, status }, 'webhook delivered');
    else this.log.warn({ webhook: delivery.webhook_id, delivery: delivery.id, event: delivery.event, attempt, status, err: error }, givenUp ? 'webhook delivery given up' : 'webhook delivery failed; will retry');
  }

  /** Stops: attempts in flight are cut short and stay pending for the next start. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    for (const controller of this.inFlight) controller.abort(new Error('the hub is closing'));
  }
}
