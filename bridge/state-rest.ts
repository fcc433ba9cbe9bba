/**
 * Desired state over REST (docs/protocol.md "Desired state"): read a device's documents and
 * delta (any principal), set its desired document (operator or admin; PUT replaces it, PATCH
 * merges a patch where null removes a key). Mounted on `/api` before the main REST router.
 * Every change and every refusal is in the audit trail (action `state.desired`).
 */
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import type { Authenticator } from '../src/auth/authenticator.js';
import { actorOf, canRunCommands } from '../src/auth/roles.js';
import type { DeviceStateService } from '../src/device-state.js';
import { HubError } from '../src/errors.js';
import type { Logger } from '../src/log.js';
import type { Stores } from '../src/store/stores.js';
import { requirePrincipal } from '../src/web-auth.js';
import { principalOf, sendError } from './rest-kit.js';

export interface StateRestOptions {
  state: DeviceStateService;
  auth: Authenticator;
  stores: Stores;
  log: Logger;
  /** `--max-state-bytes`: a body larger than this is refused before it is parsed. */
  maxStateBytes: number;
  /** A job selector (target) resolved to device ids, as a job would target them; throws a HubError for a bad one. */
  select: (target: unknown) => { devices: string[]; unknown: string[] };
}

const remoteOf = (req: Request) => req.socket.remoteAddress ?? null;

export function stateRouter({ state, auth, stores, log, maxStateBytes, select }: StateRestOptions): Router {
  const router = express.Router();
  const principal = requirePrincipal(auth);
  const audit = (req: Request, res: Response, outcome: string, detail: unknown) => {
    const { actor, kind } = actorOf(principalOf(res));
    stores.audit.record({ at: Date.now(), actor, actorKind: kind, remote: remoteOf(req), action: 'state.desired', device: (req.params.id as string | undefined) ?? null, outcome, detail });
  };
  const operator = (req: Request, res: Response, next: NextFunction) => {
    const who = principalOf(res);
    if (canRunCommands(who)) return next();
    const message = `${actorOf(who).actor} may not set desired state (role ${'role' in who ? who.role : 'none'})`;
    audit(req, res, 'FORBIDDEN', { message });
    sendError(res, 'FORBIDDEN', message);
  };
  // Not strict: any JSON is parsed, and a body that is not an object is refused with words that say so.
  const parseJson = express.json({ limit: maxStateBytes, strict: false, type: () => true });
  const body = (req: Request, res: Response, next: NextFunction) =>
    parseJson(req, res, (error?: unknown) => {
      const failure = error as { type?: string } | undefined;
      if (!failure) return next();
      if (failure.type === 'entity.too.large') {
        const message = `body is larger than ${maxStateBytes} bytes (--max-state-bytes)`;
        audit(req, res, 'PAYLOAD_TOO_LARGE', { message });
        sendError(res, 'PAYLOAD_TOO_LARGE', message);
      } else if (failure.type === 'entity.parse.failed') {
        audit(req, res, 'BAD_REQUEST', { message: 'body is not valid JSON' });
        sendError(res, 'BAD_REQUEST', 'body is not valid JSON');
      } else next(error);
    });
  const answer = (res: Response, run: () => unknown) => {
    try {
      res.json(run());
    } catch (error) {
      if (!(error instanceof HubError)) throw error;
      sendError(res, error.code, error.message);
    }
  };

  router.get('/devices/:id/state', principal, (req, res) => answer(res, () => state.get(req.params.id as string)));

  const setDesired = (replace: boolean) => (req: Request, res: Response) => {
    const { actor, kind } = actorOf(principalOf(res));
    answer(res, () => state.setDesired(req.params.id as string, req.body, { replace, by: { actor, actorKind: kind, remote: remoteOf(req) } }));
  };
  router.put('/devices/:id/state/desired', principal, operator, body, setDesired(true));
  router.patch('/devices/:id/state/desired', principal, operator, body, setDesired(false));

  // Many devices at once: {"target": <a job's target>, "desired": {…}, "replace"?: bool}. Each
  // device's change is its own (versioned, audited, its delta published); devices the hub has
  // never seen are listed as unknown and left out (they have no state yet).
  router.patch('/state/desired', principal, operator, body, (req, res) => {
    const { actor, kind } = actorOf(principalOf(res));
    answer(res, () => {
      const input = req.body as { target?: unknown; desired?: unknown; replace?: unknown } | null;
      if (typeof input !== 'object' || input === null || Array.isArray(input)) throw new HubError('BAD_REQUEST', 'body must be an object like {"target": {"tags": ["lab"]}, "desired": {"fw": "2.1"}}');
      const extra = Object.keys(input).find((key) => !['target', 'desired', 'replace'].includes(key));
      if (extra) throw new HubError('BAD_REQUEST', `${extra} is not a field (target, desired, replace)`);
      if (input.target === undefined) throw new HubError('BAD_REQUEST', 'target is required');
      if (input.desired === undefined) throw new HubError('BAD_REQUEST', 'desired is required');
      if (input.replace !== undefined && typeof input.replace !== 'boolean') throw new HubError('BAD_REQUEST', 'replace must be true or false');
      const selection = select(input.target);
      const changed: { device: string; version: number }[] = [];
      const unknown = [...selection.unknown];
      for (const device of selection.devices) {
        try {
          const view = state.setDesired(device, input.desired, { replace: input.replace === true, by: { actor, actorKind: kind, remote: remoteOf(req) } });
          changed.push({ device, version: view.desired.version });
        } catch (error) {
          if (error instanceof HubError && error.code === 'UNKNOWN_DEVICE') {
            if (!unknown.includes(device)) unknown.push(device);
            continue;
          }
          // The first bad document is bad for every device: nothing more is tried.
          if (changed.length === 0) throw error;
          throw new HubError(error instanceof HubError ? error.code : 'INTERNAL', `${(error as Error).message} (after ${changed.length} devices were changed)`);
        }
      }
      return { devices: changed.length, changed, ...(unknown.length > 0 ? { unknown } : {}) };
    });
  });

  // Other methods on these routes: a coded answer, not the main router's "no route".
  router.all(['/devices/:id/state', '/devices/:id/state/desired'], principal, (req, res) => {
    log.debug({ method: req.method, path: req.originalUrl }, 'state route: method not allowed');
    sendError(res, 'BAD_REQUEST', `${req.method} is not a method of ${req.originalUrl} (GET /api/devices/{id}/state; PUT or PATCH /api/devices/{id}/state/desired)`, 405);
  });

  return router;
}
