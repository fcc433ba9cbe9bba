/**
 * Artifacts over REST (docs/protocol.md "Software deployment"): `POST /api/artifacts?name=F`
 * streams a file to the hub (operators and admins), `GET /api/artifacts` lists them (any
 * principal), `DELETE /api/artifacts/{sha256}` removes one. A deploy job then names one by its
 * SHA-256, and the hub sends it to each device from its own disk.
 */
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import type { Authenticator } from '../src/auth/authenticator.js';
import { actorOf, canRunCommands } from '../src/auth/roles.js';
import { HubError } from '../src/errors.js';
import type { ArtifactStore } from '../src/jobs/artifacts.js';
import type { Logger } from '../src/log.js';
import type { Stores } from '../src/store/stores.js';
import { requirePrincipal } from '../src/web-auth.js';
import { principalOf, sendError } from './rest-kit.js';

export interface ArtifactsRestOptions {
  artifacts: ArtifactStore;
  auth: Authenticator;
  stores: Stores;
  log: Logger;
}

export function artifactsRouter({ artifacts, auth, stores, log }: ArtifactsRestOptions): Router {
  const router = express.Router();
  const principal = requirePrincipal(auth);
  const operator = (_req: Request, res: Response, next: NextFunction) => {
    const who = principalOf(res);
    if (canRunCommands(who)) return next();
    sendError(res, 'FORBIDDEN', `${actorOf(who).actor} may not upload artifacts (role ${'role' in who ? who.role : 'none'})`);
  };
  const audit = (remote: string | null, res: Response, action: string, outcome: string, detail: unknown) => {
    const { actor, kind } = actorOf(principalOf(res));
    stores.audit.record({ at: Date.now(), actor, actorKind: kind, remote, action, outcome, detail });
  };

  router.post('/artifacts', principal, operator, async (req, res) => {
    const name = typeof req.query.name === 'string' ? req.query.name : '';
    const { actor } = actorOf(principalOf(res));
    // Read now: a refused upload destroys the request and its socket.
    const remote = req.socket.remoteAddress ?? null;
    try {
      const artifact = await artifacts.put(req, name, actor);
      audit(remote, res, 'artifact.upload', 'ok', artifact);
      res.status(201).json(artifact);
    } catch (error) {
      if (!(error instanceof HubError)) {
        log.warn({ err: error }, 'artifact upload failed');
        return sendError(res, 'IO_ERROR', `the upload failed: ${(error as Error).message}`);
      }
      audit(remote, res, 'artifact.upload', error.code, { name, message: error.message });
      // The client may still be sending: answer, then stop reading.
      sendError(res, error.code, error.message);
      req.unpipe();
      req.resume();
    }
  });

  router.get('/artifacts', principal, (_req, res) => {
    res.json(artifacts.list());
  });

  router.delete('/artifacts/:sha256', principal, operator, (req, res) => {
    const sha256 = req.params.sha256 as string;
    if (!artifacts.remove(sha256)) return sendError(res, 'NOT_FOUND', `no artifact ${sha256}`);
    audit(req.socket.remoteAddress ?? null, res, 'artifact.remove', 'ok', { sha256 });
    res.json({ ok: true, sha256 });
  });

  return router;
}
