/**
 * Health telemetry over REST (docs/protocol.md "Health telemetry"), for any principal:
 * `GET /api/devices/{id}/health?since=&until=&metric=` (a device's history, one point a
 * minute) and `GET /api/health/fleet?since=&until=&limit=` (devices online over time, the worst
 * devices now). Mounted on `/api` before the main REST router.
 */
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import type { Authenticator } from '../src/auth/authenticator.js';
import type { HealthTelemetry } from '../src/health.js';
import type { Logger } from '../src/log.js';
import type { Presence } from '../src/presence.js';
import { HEALTH_SERIES, type HealthSeriesName } from '../src/protocol/health.js';
import { idProblem } from '../src/protocol/ids.js';
import { requirePrincipal } from '../src/web-auth.js';
import { sendError } from './rest-kit.js';

export interface HealthRestOptions {
  health: HealthTelemetry;
  presence: Presence;
  auth: Authenticator;
  log: Logger;
}

const FLEET_LIMIT_DEFAULT = 10;
const FLEET_LIMIT_MAX = 100;
const UNITS_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

class BadQuery extends Error {}

/** A point in time: an ISO date, or a duration back from now (`90m`, `24h`, `7d`, also with a leading `-`). */
export function parseTime(name: string, value: unknown, now: number): number | undefined {
  if (value === undefined || value === '') return undefined;
  if (typeof value !== 'string') throw new BadQuery(`${name} must be given once`);
  const relative = /^-?(\d{1,9})([smhd])$/.exec(value.trim());
  if (relative) return now - Number(relative[1]) * UNITS_MS[relative[2]!]!;
  const parsed = Date.parse(value);
  if (Number.isNaN(parsed)) throw new BadQuery(`${name} must be a date like 2026-11-24T10:00:00Z or a time back from now like 90m, 24h or 7d`);
  return parsed;
}

/** `metric=a,b` and `metric=a&metric=b` alike. */
function parseMetrics(value: unknown): HealthSeriesName[] | undefined {
  if (value === undefined || value === '') return undefined;
  const items = (Array.isArray(value) ? value : [value]).flatMap((item) => (typeof item === 'string' ? item.split(',') : [])).map((item) => item.trim()).filter(Boolean);
  const unknown = items.find((item) => !(HEALTH_SERIES as readonly string[]).includes(item));
  if (unknown !== undefined) throw new BadQuery(`metric ${JSON.stringify(unknown)} is not one of ${HEALTH_SERIES.join(', ')}`);
  return items as HealthSeriesName[];
}

function rangeOf(req: Request): { since?: number; until?: number } {
  const now = Date.now();
  const until = parseTime('until', req.query.until, now);
  const since = parseTime('since', req.query.since, now);
  if (since !== undefined && until !== undefined && since > until) throw new BadQuery('since must not be after until');
  return { since, until };
}

export function healthRouter({ health, presence, auth, log }: HealthRestOptions): Router {
  const router = express.Router();
  const principal = requirePrincipal(auth);

  router.get('/devices/:id/health', principal, async (req, res, next) => {
    const id = req.params.id as string;
    const problem = idProblem(id);
    if (problem) return sendError(res, 'BAD_REQUEST', `device id ${problem}`);
    if (!presence.get(id) && !health.knows(id)) return sendError(res, 'UNKNOWN_DEVICE', `no device ${id} has connected to this hub`);
    try {
      const range = rangeOf(req);
      res.json(await health.series(id, { ...range, metrics: parseMetrics(req.query.metric) }));
    } catch (error) {
      if (error instanceof BadQuery) return sendError(res, 'BAD_REQUEST', error.message);
      next(error);
    }
  });

  router.get('/health/fleet', principal, (req, res, next) => {
    try {
      const range = rangeOf(req);
      const raw = req.query.limit;
      const limit = raw === undefined ? FLEET_LIMIT_DEFAULT : typeof raw === 'string' && /^\d+$/.test(raw) ? Number(raw) : Number.NaN;
      if (!Number.isInteger(limit) || limit < 1 || limit > FLEET_LIMIT_MAX) throw new BadQuery(`limit must be a whole number from 1 to ${FLEET_LIMIT_MAX}`);
      res.json(health.fleet({ ...range, limit }));
    } catch (error) {
      if (error instanceof BadQuery) return sendError(res, 'BAD_REQUEST', error.message);
      next(error);
    }
  });

  // A failure of these routes (the database, say): a coded JSON answer, never a crash.
  router.use((error: Error, _req: Request, res: Response, _next: NextFunction) => {
    log.error({ err: error }, 'health request failed');
    sendError(res, 'INTERNAL', 'the health history could not be read');
  });

  return router;
}
