/**
 * Terminal recordings over REST (docs/protocol.md "Audit and recordings"): the list comes from
 * the audit trail's `tunnel.close` entries that name a recording, the file from
 * `<data-dir>/recordings/{tunnel}.cast`. Operators and admins only: a recording holds
 * everything typed and shown in a shell, passwords included.
 */
import { createReadStream, statSync } from 'node:fs';
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import type { Authenticator } from '../src/auth/authenticator.js';
import { actorOf, canRunCommands } from '../src/auth/roles.js';
import type { Logger } from '../src/log.js';
import { idProblem } from '../src/protocol/ids.js';
import type { Stores } from '../src/store/stores.js';
import { RECORDING_ID, recordingPath } from '../src/tunnels/recorder.js';
import { requirePrincipal } from '../src/web-auth.js';
import { principalOf, sendError } from './rest-kit.js';

export interface RecordingsRestOptions {
  auth: Authenticator;
  stores: Stores;
  log: Logger;
  recordingsDir: string;
}

/** One recording as `GET /api/recordings` lists it. */
export interface RecordingInfo {
  tunnel: string;
  device: string;
  actor: string;
  startedAt: string;
  endedAt: string;
  /** The recording's size in bytes. */
  bytes: number | null;
}

const LIST_DEFAULT = 50;
const LIST_MAX = 1000;
/** tunnel.close entries read to find recordings (shell tunnels among the others). */
const SCAN_MAX = 10_000;

export function recordingsRouter({ auth, stores, log, recordingsDir }: RecordingsRestOptions): Router {
  const router = express.Router();
  const operator = (_req: Request, res: Response, next: NextFunction) => {
    const who = principalOf(res);
    if (canRunCommands(who)) return next();
    sendError(res, 'FORBIDDEN', `${actorOf(who).actor} may not read terminal recordings (role ${'role' in who ? who.role : 'none'})`);
  };

  router.get('/recordings', requirePrincipal(auth), operator, (req, res) => {
    const device = req.query.device;
    if (device !== undefined && (typeof device !== 'string' || idProblem(device))) return sendError(res, 'BAD_REQUEST', 'device must be a device id');
    const raw = req.query.limit;
    const limit = typeof raw === 'string' ? Number(raw) : LIST_DEFAULT;
    if (!(Number.isInteger(limit) && limit > 0 && limit <= LIST_MAX)) return sendError(res, 'BAD_REQUEST', `limit must be a whole number from 1 to ${LIST_MAX}`);
    const list: RecordingInfo[] = [];
    for (const entry of stores.audit.query({ action: 'tunnel.close', device: device as string | undefined, limit: SCAN_MAX })) {
      const detail = (entry.detail ?? {}) as { recording?: unknown; startedAt?: unknown; recordingBytes?: unknown };
      if (typeof detail.recording !== 'string' || !RECORDING_ID.test(detail.recording)) continue;
      list.push({
        tunnel: detail.recording,
        device: entry.device ?? '',
        actor: entry.actor,
        startedAt: typeof detail.startedAt === 'string' ? detail.startedAt : new Date(entry.at).toISOString(),
        endedAt: new Date(entry.at).toISOString(),
        bytes: typeof detail.recordingBytes === 'number' ? detail.recordingBytes : null,
      });
      if (list.length >= limit) break;
    }
    res.json(list);
  });

  router.get('/recordings/:tunnel', requirePrincipal(auth), operator, (req, res) => {
    const id = req.params.tunnel as string;
    // The id becomes a file name: only 16 hex digits, so no path can be smuggled in.
    if (!RECORDING_ID.test(id)) return sendError(res, 'BAD_REQUEST', 'a recording id is 16 hex digits (the tunnel id on the device\'s side)');
    const file = recordingPath(recordingsDir, id);
    let size: number;
    try {
      size = statSync(file).size;
    } catch {
      return sendError(res, 'NOT_FOUND', `no recording ${id}`);
    }
    res.status(200).set({ 'content-type': 'application/x-asciicast', 'content-length': String(size), 'cache-control': 'no-store' });
    const stream = createReadStream(file);
    stream.on('error', (error) => {
      log.warn({ err: error.message, file }, 'cannot read a terminal recording');
      res.destroy(error);
    });
    stream.pipe(res);
  });

  return router;
}
