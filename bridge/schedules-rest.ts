/**
 * Schedules over REST (docs/protocol.md "Schedules"): operators and admins create, change and
 * remove them; any principal reads them. Each change is audited. An unknown schedule is 404
 * with code BAD_REQUEST, as an unknown job is.
 */
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import type { Authenticator } from '../src/auth/authenticator.js';
import { actorOf, canRunCommands } from '../src/auth/roles.js';
import { HubError } from '../src/errors.js';
import type { Scheduler } from '../src/jobs/scheduler.js';
import type { Logger } from '../src/log.js';
import type { Stores } from '../src/store/stores.js';
import { requirePrincipal } from '../src/web-auth.js';
import { jsonBody, principalOf, sendError } from './rest-kit.js';

export interface SchedulesRestOptions {
  schedules: Scheduler;
  auth: Authenticator;
  stores: Stores;
  log: Logger;
}

/** A job with 100000 device ids fits. */
const BODY_LIMIT = 16 * 1024 * 1024;

export function schedulesRouter({ schedules, auth, stores, log }: SchedulesRestOptions): Router {
  const router = express.Router();
  const principal = requirePrincipal(auth);
  const operator = (_req: Request, res: Response, next: NextFunction) => {
    const who = principalOf(res);
    if (canRunCommands(who)) return next();
    sendError(res, 'FORBIDDEN', `${actorOf(who).actor} may not schedule jobs (role ${'role' in who ? who.role : 'none'})`);
  };
  const body = jsonBody(BODY_LIMIT);
  const audit = (req: Request, res: Response, action: string, outcome: string, detail: unknown) => {
    const { actor, kind } = actorOf(principalOf(res));
    stores.audit.record({ at: Date.now(), actor, actorKind: kind, remote: req.socket.remoteAddress ?? null, action, outcome, detail });
  };
  const noSchedule = (res: Response, id: string) => sendError(res, 'BAD_REQUEST', `no schedule ${id}`, 404);
  const coded = (req: Request, res: Response, action: string, error: unknown) => {
    if (!(error instanceof HubError)) throw error;
    audit(req, res, action, error.code, { message: error.message });
    sendError(res, error.code, error.message);
  };

  router.post('/schedules', principal, operator, body, (req, res) => {
    const { actor, kind } = actorOf(principalOf(res));
    try {
      const created = schedules.create(req.body, { actor, actorKind: kind, remote: req.socket.remoteAddress ?? null });
      audit(req, res, 'schedule.create', 'ok', { schedule: created.id, at: created.at, cron: created.cron, tz: created.tz, job: created.job });
      res.status(201).json(created);
    } catch (error) {
      coded(req, res, 'schedule.create', error);
    }
  });

  router.get('/schedules', principal, (_req, res) => {
    res.json(schedules.list());
  });

  router.get('/schedules/:id', principal, (req, res) => {
    const id = req.params.id as string;
    const schedule = schedules.get(id);
    if (!schedule) return noSchedule(res, id);
    res.json(schedule);
  });

  router.patch('/schedules/:id', principal, operator, body, (req, res) => {
    const id = req.params.id as string;
    try {
      const changed = schedules.update(id, req.body);
      if (!changed) return noSchedule(res, id);
      audit(req, res, 'schedule.change', 'ok', { schedule: id, change: req.body });
      res.json(changed);
    } catch (error) {
      coded(req, res, 'schedule.change', error);
    }
  });

  router.delete('/schedules/:id', principal, operator, (req, res) => {
    const id = req.params.id as string;
    if (!schedules.remove(id)) return noSchedule(res, id);
    audit(req, res, 'schedule.remove', 'ok', { schedule: id });
    res.json({ ok: true, id });
  });

  router.use('/schedules', (error: Error & { status?: number }, _req: Request, res: Response, _next: NextFunction) => {
    if (error.status && error.status >= 400 && error.status < 500) return sendError(res, 'BAD_REQUEST', error.message, error.status);
    log.error({ err: error }, 'schedules request failed');
    sendError(res, 'INTERNAL', 'internal error');
  });

  return router;
}
