/**
 * Alerts and webhooks over REST (docs/protocol.md "Alerts and webhooks"): any principal reads
 * alerts and rules; operators and admins manage rules and resolve job alerts; webhooks, which
 * carry a secret, are for admins alone (listing too). Each change is audited. An unknown rule,
 * alert or webhook is 404 with code BAD_REQUEST, as an unknown job is.
 */
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import type { AlertService } from '../src/alerts/service.js';
import type { Authenticator } from '../src/auth/authenticator.js';
import { actorOf, canRunCommands, isAdmin, type Principal } from '../src/auth/roles.js';
import { HubError } from '../src/errors.js';
import type { Logger } from '../src/log.js';
import { ALERT_STATES, type AlertState } from '../src/protocol/alerts.js';
import type { Stores } from '../src/store/stores.js';
import { requirePrincipal } from '../src/web-auth.js';
import { jsonBody, principalOf, sendError } from './rest-kit.js';

export interface AlertsRestOptions {
  alerts: AlertService;
  auth: Authenticator;
  stores: Stores;
  log: Logger;
}

const BODY_LIMIT = 64 * 1024;
const LIST_DEFAULT = 100;
const LIST_MAX = 1000;

const remoteOf = (req: Request) => req.socket.remoteAddress ?? null;
const roleOf = (who: Principal) => ('role' in who ? who.role : 'none');

export function alertsRouter({ alerts, auth, stores, log }: AlertsRestOptions): Router {
  const router = express.Router();
  const principal = requirePrincipal(auth);
  const operator = (_req: Request, res: Response, next: NextFunction) => {
    const who = principalOf(res);
    if (canRunCommands(who)) return next();
    sendError(res, 'FORBIDDEN', `${actorOf(who).actor} may not change alerts (role ${roleOf(who)}; operators and admins may)`);
  };
  const admin = (_req: Request, res: Response, next: NextFunction) => {
    const who = principalOf(res);
    if (isAdmin(who)) return next();
    sendError(res, 'FORBIDDEN', `${actorOf(who).actor} may not manage webhooks (role ${roleOf(who)}; admins only: they carry a secret)`);
  };
  const body = jsonBody(BODY_LIMIT);
  const creatorOf = (req: Request, res: Response) => {
    const { actor, kind } = actorOf(principalOf(res));
    return { actor, actorKind: kind, remote: remoteOf(req) };
  };
  const audit = (req: Request, res: Response, action: string, outcome: string, detail: unknown) => {
    const { actor, actorKind, remote } = creatorOf(req, res);
    stores.audit.record({ at: Date.now(), actor, actorKind, remote, action, outcome, detail });
  };
  const coded = (req: Request, res: Response, action: string, error: unknown) => {
    if (!(error instanceof HubError)) throw error;
    audit(req, res, action, error.code, { message: error.message });
    sendError(res, error.code, error.message);
  };
  const none = (res: Response, what: string, id: string) => sendError(res, 'BAD_REQUEST', `no ${what} ${id}`, 404);

  // Rules (before /alerts/:id, which would take "rules" for an id).
  router.get('/alerts/rules', principal, (_req, res) => {
    res.json(alerts.listRules());
  });

  router.post('/alerts/rules', principal, operator, body, (req, res) => {
    try {
      const created = alerts.createRule(req.body, creatorOf(req, res));
      audit(req, res, 'alert.rule.create', 'ok', { rule: created.id, spec: req.body });
      res.status(201).json(created);
    } catch (error) {
      coded(req, res, 'alert.rule.create', error);
    }
  });

  router.get('/alerts/rules/:id', principal, (req, res) => {
    const id = req.params.id as string;
    const rule = alerts.getRule(id);
    if (!rule) return none(res, 'alert rule', id);
    res.json(rule);
  });

  router.patch('/alerts/rules/:id', principal, operator, body, (req, res) => {
    const id = req.params.id as string;
    try {
      const changed = alerts.updateRule(id, req.body);
      if (!changed) return none(res, 'alert rule', id);
      audit(req, res, 'alert.rule.change', 'ok', { rule: id, change: req.body });
      res.json(changed);
    } catch (error) {
      coded(req, res, 'alert.rule.change', error);
    }
  });

  router.delete('/alerts/rules/:id', principal, operator, (req, res) => {
    const id = req.params.id as string;
    if (!alerts.removeRule(id)) return none(res, 'alert rule', id);
    audit(req, res, 'alert.rule.remove', 'ok', { rule: id });
    res.json({ ok: true, id });
  });

  // Alerts.
  router.get('/alerts', principal, (req, res) => {
    const state = req.query.state;
    if (state !== undefined && !(typeof state === 'string' && (ALERT_STATES as readonly string[]).includes(state))) {
      return sendError(res, 'BAD_REQUEST', `state must be one of ${ALERT_STATES.join(', ')}`);
    }
    const raw = req.query.limit;
    const limit = typeof raw === 'string' ? Number(raw) : LIST_DEFAULT;
    if (!(Number.isInteger(limit) && limit > 0 && limit <= LIST_MAX)) return sendError(res, 'BAD_REQUEST', `limit must be a whole number from 1 to ${LIST_MAX}`);
    res.json(alerts.list(state as AlertState | undefined, limit));
  });

  router.get('/alerts/:id', principal, (req, res) => {
    const id = req.params.id as string;
    const alert = alerts.get(id);
    if (!alert) return none(res, 'alert', id);
    res.json(alert);
  });

  router.post('/alerts/:id/resolve', principal, operator, (req, res) => {
    const id = req.params.id as string;
    try {
      const resolved = alerts.resolveByHand(id, creatorOf(req, res));
      if (!resolved) return none(res, 'alert', id);
      res.json(resolved);
    } catch (error) {
      coded(req, res, 'alert.resolve', error);
    }
  });

  // Webhooks: admins only.
  router.get('/webhooks', principal, admin, (_req, res) => {
    res.json(alerts.listWebhooks());
  });

  router.post('/webhooks', principal, admin, body, (req, res) => {
    try {
      const created = alerts.createWebhook(req.body, creatorOf(req, res));
      audit(req, res, 'webhook.create', 'ok', { webhook: created.id, url: created.url, events: created.events });
      res.status(201).json(created);
    } catch (error) {
      coded(req, res, 'webhook.create', error);
    }
  });

  router.delete('/webhooks/:id', principal, admin, (req, res) => {
    const id = req.params.id as string;
    if (!alerts.removeWebhook(id)) return none(res, 'webhook', id);
    audit(req, res, 'webhook.remove', 'ok', { webhook: id });
    res.json({ ok: true, id });
  });

  const failed = (error: Error & { status?: number }, _req: Request, res: Response, _next: NextFunction) => {
    if (error.status && error.status >= 400 && error.status < 500) return sendError(res, 'BAD_REQUEST', error.message, error.status);
    log.error({ err: error }, 'alerts request failed');
    sendError(res, 'INTERNAL', 'internal error');
  };
  router.use('/alerts', failed);
  router.use('/webhooks', failed);

  return router;
}
