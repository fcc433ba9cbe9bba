/**
 * The REST face of the hub (PROTOCOL.md "HTTP"): the device list and the command round
 * trip for curl, scripts and tools that do not speak MQTT. Error bodies carry the same
 * codes as MQTT Replies.
 */
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { errorReply, type Dispatcher } from '../src/dispatcher.js';
import { ERROR_CODES, httpStatusOf, type ErrorCode } from '../src/errors.js';
import type { Logger } from '../src/log.js';
import type { Presence } from '../src/presence.js';
import { toDeviceInfo } from '../src/presence.js';
import { idProblem } from '../src/protocol/ids.js';
import { RestCommandSchema, validate } from '../src/protocol/schemas.js';

export interface RestOptions {
  presence: Presence;
  dispatcher: Dispatcher;
  maxPayloadBytes: number;
  log: Logger;
  /** What `GET /api/hub` tells consoles and tools about this hub. */
  info: { topicPrefix: string; version: string };
}

function sendError(res: Response, code: ErrorCode, message: string, httpStatus = httpStatusOf(code)): void {
  res.status(httpStatus).json({ status: 'error', code, message });
}

export function restRouter({ presence, dispatcher, maxPayloadBytes, log, info }: RestOptions): Router {
  const router = express.Router();

  router.get('/hub', (_req, res) => {
    res.json(info);
  });

  router.get('/devices', (_req, res) => {
    res.json(presence.list());
  });

  router.get('/devices/:id', (req, res) => {
    const id = req.params.id;
    const problem = idProblem(id);
    if (problem) return sendError(res, 'BAD_REQUEST', `device id ${problem}`);
    const entry = presence.get(id);
    if (!entry) return sendError(res, 'UNKNOWN_DEVICE', `no device ${id} has connected to this hub`);
    res.json(toDeviceInfo(entry));
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
      const clientId = `rest@${req.socket.remoteAddress ?? 'unknown'}`;
      const reply = await dispatcher.request({ ...checked.value, device }, { clientId, via: 'rest' });
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
