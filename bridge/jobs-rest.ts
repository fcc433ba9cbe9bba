/**
 * Fleet jobs over REST (PROTOCOL.md "Fleet jobs"): create (operator or admin), read (any
 * principal), cancel (operator or admin), and the list of recent jobs. Mounted on `/api`
 * before the main REST router. A job id no one knows is HTTP 404 with code BAD_REQUEST
 * (the contract has no code of its own for it).
 */
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import type { Authenticator } from '../src/auth/authenticator.js';
import { actorOf, canRunCommands } from '../src/auth/roles.js';
import { HubError } from '../src/errors.js';
import type { JobRunner } from '../src/jobs/runner.js';
import type { Logger } from '../src/log.js';
import type { Stores } from '../src/store/stores.js';
import { requirePrincipal } from '../src/web-auth.js';
import { jsonBody, principalOf, sendError } from './rest-kit.js';

export interface JobsRestOptions {
  jobs: JobRunner;
  auth: Authenticator;
  stores: Stores;
  log: Logger;
}

/** Room for 100000 device ids of up to 128 characters. */
const BODY_LIMIT = 16 * 1024 * 1024;
const LIST_DEFAULT = 50;
const LIST_MAX = 1000;

const remoteOf = (req: Request) => req.socket.remoteAddress ?? null;

export function jobsRouter({ jobs, auth, stores, log }: JobsRestOptions): Router {
  const router = express.Router();
  const principal = requirePrincipal(auth);
  const operator = (_req: Request, res: Response, next: NextFunction) => {
    const who = principalOf(res);
    if (canRunCommands(who)) return next();
    sendError(res, 'FORBIDDEN', `${actorOf(who).actor} may not run jobs (role ${'role' in who ? who.role : 'none'})`);
  };
  const body = jsonBody(BODY_LIMIT);
  const audit = (req: Request, res: Response, action: string, outcome: string, detail: unknown) => {
    const { actor, kind } = actorOf(principalOf(res));
    stores.audit.record({ at: Date.now(), actor, actorKind: kind, remote: remoteOf(req), action, outcome, detail });
  };
  const noJob = (res: Response, id: string) => sendError(res, 'BAD_REQUEST', `no job ${id}`, 404);

  router.post('/jobs', principal, operator, body, (req, res) => {
    const { actor, kind } = actorOf(principalOf(res));
    try {
      const created = jobs.create(req.body, { actor, actorKind: kind, remote: remoteOf(req) });
      const spec = req.body as { order?: string; cmd_str?: string };
      audit(req, res, 'job.create', 'ok', { job: created.id, targets: created.targets, order: spec.order, cmd_str: spec.cmd_str });
      res.status(201).json(created.unknown.length > 0 ? created : { id: created.id, targets: created.targets });
    } catch (error) {
      if (!(error instanceof HubError)) throw error;
      audit(req, res, 'job.create', error.code, { message: error.message });
      sendError(res, error.code, error.message);
    }
  });

  router.get('/jobs', principal, (req, res) => {
    const raw = req.query.limit;
    const limit = typeof raw === 'string' ? Number(raw) : LIST_DEFAULT;
    if (!(Number.isInteger(limit) && limit > 0 && limit <= LIST_MAX)) return sendError(res, 'BAD_REQUEST', `limit must be a whole number from 1 to ${LIST_MAX}`);
    res.json(jobs.list(limit));
  });

  router.get('/jobs/:id', principal, (req, res) => {
    const id = req.params.id as string;
    const job = jobs.get(id);
    if (!job) return noJob(res, id);
    res.json(job);
  });

  router.post('/jobs/:id/cancel', principal, operator, (req, res) => {
    const id = req.params.id as string;
    const job = jobs.cancel(id);
    if (!job) return noJob(res, id);
    audit(req, res, 'job.cancel', 'ok', { job: id, state: job.state, counts: job.counts });
    res.json(job);
  });

  for (const action of ['pause', 'resume'] as const) {
    router.post(`/jobs/:id/${action}`, principal, operator, (req, res) => {
      const id = req.params.id as string;
      const job = action === 'pause' ? jobs.pause(id) : jobs.resume(id);
      if (!job) return noJob(res, id);
      audit(req, res, `job.${action}`, 'ok', { job: id, state: job.state, counts: job.counts });
      res.json(job);
    });
  }

  router.use('/jobs', (error: Error & { status?: number }, _req: Request, res: Response, _next: NextFunction) => {
    if (error.status && error.status >= 400 && error.status < 500) return sendError(res, 'BAD_REQUEST', error.message, error.status);
    log.error({ err: error }, 'jobs request failed');
    sendError(res, 'INTERNAL', 'internal error');
  });

  return router;
}
