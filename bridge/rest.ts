/**
 * The REST face of the hub (PROTOCOL.md "HTTP"): the device list and the command round
 * trip for curl, scripts and tools that do not speak MQTT. Error bodies carry the same
 * codes as MQTT Replies.
 */
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import type { Authenticator } from '../src/auth/authenticator.js';
import { actorOf, canRunCommands, isAdmin } from '../src/auth/roles.js';
import { errorReply, type Dispatcher } from '../src/dispatcher.js';
import { HubError } from '../src/errors.js';
import type { Stores } from '../src/store/stores.js';
import { requirePrincipal } from '../src/web-auth.js';
import { ERROR_CODES, httpStatusOf } from '../src/errors.js';
import type { Logger } from '../src/log.js';
import { toDeviceInfo, type DeviceInfo, type Presence } from '../src/presence.js';
import { idProblem } from '../src/protocol/ids.js';
import { RestCommandSchema, validate } from '../src/protocol/schemas.js';
import { principalOf, sendError } from './rest-kit.js';

export interface HubInfo {
  topicPrefix: string;
  version: string;
  /** The MQTT ports devices connect to (the console shows them in the hypha command line). */
  mqttPort: number | null;
  mqttsPort: number | null;
  /**
   * On an external broker only: where devices connect (`urls`, every node of --broker), the
   * node the hub is on (`url`), and whether it is connected to it now.
   */
  broker?: { readonly url: string; urls: string[]; readonly connected: boolean; readonly reason: string | null; readonly mqtt: '5' | '3.1.1' | null };
}

export interface RestOptions {
  presence: Presence;
  dispatcher: Dispatcher;
  maxPayloadBytes: number;
  log: Logger;
  /** What `GET /api/hub` tells consoles and tools about this hub. */
  info: HubInfo;
  auth: Authenticator;
  stores: Stores;
  /** Credentials changed in-process: apply at once (drop connections, update the table). */
  onCredentialsChanged: () => void;
}

const remoteOf = (req: Request) => req.socket.remoteAddress ?? null;

export function restRouter({ presence, dispatcher, maxPayloadBytes, log, info, auth, stores, onCredentialsChanged }: RestOptions): Router {
  const router = express.Router();

  router.get('/hub', (_req, res) => {
    res.json(info);
  });

  // Everything below needs a principal: an API token, a session, or anonymous access.
  router.use(requirePrincipal(auth));

  const adminOnly = (req: Request, res: Response, next: NextFunction) => {
    if (isAdmin(principalOf(res))) return next();
    sendError(res, 'FORBIDDEN', `${actorOf(principalOf(res)).actor} is not an admin`);
  };
  /** Runs an admin change, records it, and answers; a HubError becomes its coded answer. */
  const change = (req: Request, res: Response, action: string, device: string | null, run: () => unknown, status = 200) => {
    const { actor, kind } = actorOf(principalOf(res));
    const entry = { at: Date.now(), actor, actorKind: kind, remote: remoteOf(req), action, device };
    try {
      const body = run();
      stores.audit.record({ ...entry, outcome: 'ok' });
      onCredentialsChanged();
      res.status(status).json(body ?? { ok: true });
    } catch (error) {
      if (!(error instanceof HubError)) throw error;
      stores.audit.record({ ...entry, outcome: error.code, detail: { message: error.message } });
      sendError(res, error.code, error.message);
    }
  };

  router.post('/devices', adminOnly, express.json({ limit: 16 * 1024, type: () => true }), (req, res) => {
    const { id, tags = [] } = (req.body ?? {}) as { id?: unknown; tags?: unknown };
    if (typeof id !== 'string') return sendError(res, 'BAD_REQUEST', 'id is required');
    if (!Array.isArray(tags) || !tags.every((t) => typeof t === 'string')) return sendError(res, 'BAD_REQUEST', 'tags must be a list of strings');
    change(req, res, 'device.add', id, () => ({ id, token: stores.devices.add(id, tags as string[]) }), 201);
  });
  router.delete('/devices/:id', adminOnly, (req, res) => change(req, res, 'device.remove', req.params.id as string, () => stores.devices.remove(req.params.id as string)));
  router.post('/devices/:id/rotate', adminOnly, (req, res) =>
    change(req, res, 'device.rotate', req.params.id as string, () => ({ id: req.params.id, token: stores.devices.rotate(req.params.id as string) })),
  );

  router.get('/enrolments', adminOnly, (_req, res) => {
    res.json(stores.devices.list().filter((d) => d.state === 'pending').map((d) => ({ id: d.id, askedAt: new Date(d.createdAt).toISOString() })));
  });
  router.post('/devices/:id/accept', adminOnly, (req, res) => change(req, res, 'device.accept', req.params.id as string, () => stores.devices.accept(req.params.id as string)));
  router.post('/devices/:id/reject', adminOnly, (req, res) => change(req, res, 'device.reject', req.params.id as string, () => stores.devices.reject(req.params.id as string)));

  router.get('/audit', adminOnly, (req, res) => {
    const device = typeof req.query.device === 'string' ? req.query.device : undefined;
    const since = typeof req.query.since === 'string' ? Date.parse(req.query.since) : undefined;
    if (since !== undefined && Number.isNaN(since)) return sendError(res, 'BAD_REQUEST', 'since must be a date, e.g. 2026-11-24T10:00:00Z');
    const limit = typeof req.query.limit === 'string' ? Number(req.query.limit) : undefined;
    if (limit !== undefined && !(Number.isInteger(limit) && limit > 0)) return sendError(res, 'BAD_REQUEST', 'limit must be a positive whole number');
    res.json(stores.audit.query({ device, since, limit }).map((e) => ({ ...e, at: new Date(e.at).toISOString() })));
  });

  // The live view from presence (which keeps each device's tags too).
  router.get('/devices', (_req, res) => {
    res.json(presence.list());
  });

  router.get('/devices/:id', (req, res) => {
    const id = req.params.id;
    const problem = idProblem(id);
    if (problem) return sendError(res, 'BAD_REQUEST', `device id ${problem}`);
    const entry = presence.get(id);
    if (!entry) return sendError(res, 'UNKNOWN_DEVICE', `no device ${id} has connected to this hub`);
    res.json(withTagSources(toDeviceInfo(entry)));
  });
  /** One device also shows where its tags come from: an admin (assigned) or itself (declared). */
  const withTagSources = (device: DeviceInfo) => {
    const stored = stores.devices.get(device.id);
    return { ...device, assignedTags: stored?.assignedTags ?? [], declaredTags: stored?.declaredTags ?? [] };
  };

  router.put('/devices/:id/tags', adminOnly, express.json({ limit: 16 * 1024, type: () => true }), (req, res) => {
    const { tags } = (req.body ?? {}) as { tags?: unknown };
    if (!Array.isArray(tags) || !tags.every((t) => typeof t === 'string')) return sendError(res, 'BAD_REQUEST', 'tags must be a list of strings');
    const id = req.params.id as string;
    change(req, res, 'device.tags', id, () => {
      stores.devices.setTags(id, tags as string[]);
      const stored = stores.devices.get(id)!;
      return { id, tags: stored.tags, assignedTags: stored.assignedTags, declaredTags: stored.declaredTags };
    });
  });

  const parseJson = express.json({ limit: maxPayloadBytes, strict: true, type: () => true });
  router.post(
    '/devices/:id/commands',
    // The body parser's own failures are answered here, where the device id from the path is known.
    (req, res, next) =>
      parseJson(req, res, (error?: unknown) => {
        const failure = error as { type?: string } | undefined;
        if (!failure) return next();
        const device = req.params.id ?? null;
        if (failure.type === 'entity.too.large') {
          res.status(413).json(errorReply(null, device, 'PAYLOAD_TOO_LARGE', `body is larger than ${maxPayloadBytes} bytes`));
        } else if (failure.type === 'entity.parse.failed') {
          res.status(400).json(errorReply(null, device, 'BAD_REQUEST', 'body is not valid JSON'));
        } else {
          next(error);
        }
      }),
    async (req, res) => {
      const device = req.params.id as string;
      const problem = idProblem(device);
      if (problem) {
        res.status(400).json(errorReply(null, device, 'BAD_REQUEST', `device ${problem}`));
        return;
      }
      const body: unknown = req.body;
      if (body === null || typeof body !== 'object' || Array.isArray(body)) {
        res.status(400).json(errorReply(null, device, 'BAD_REQUEST', 'body must be a JSON object'));
        return;
      }
      const checked = validate(RestCommandSchema, body);
      if (!checked.ok) {
        const rawId = (body as { id?: unknown }).id;
        res.status(400).json(errorReply(typeof rawId === 'string' ? rawId : null, device, 'BAD_REQUEST', checked.message));
        return;
      }
      const principal = principalOf(res);
      const { actor, kind } = actorOf(principal);
      const origin = { clientId: `rest@${remoteOf(req) ?? 'unknown'}`, via: 'rest' as const, actor, actorKind: kind, remote: remoteOf(req) };
      const command = { ...checked.value, device };
      const reply = canRunCommands(principal)
        ? await dispatcher.request(command, origin)
        : dispatcher.refuse(command, origin, 'FORBIDDEN', `${actor} may not run commands (role ${'role' in principal ? principal.role : 'none'})`);
      res.status(reply.status === 'ok' ? 200 : httpStatusOf(reply.code)).json(reply);
    },
  );

  router.use((req, res) => {
    sendError(res, 'BAD_REQUEST', `no route ${req.method} ${req.originalUrl}`, 404);
  });

  // Anything unexpected (a malformed request the HTTP layer rejected, a bug): a coded JSON answer, never a crash.
  router.use((error: Error & { status?: number }, _req: Request, res: Response, _next: NextFunction) => {
    if (error.status && error.status >= 400 && error.status < 500) {
      sendError(res, 'BAD_REQUEST', error.message, error.status);
      return;
    }
    log.error({ err: error }, 'REST request failed');
    sendError(res, 'INTERNAL', ERROR_CODES.INTERNAL.summary);
  });

  return router;
}
