/**
 * When jobs run (docs/protocol.md "Schedules"): a job's maintenance window (it sends only
 * between two times of day, in a time zone), and schedules that create a job at a given time
 * or on a cron expression (croner parses them: no hand-written parser). Pure functions of a
 * clock, so the runner and the scheduler decide, and tests can move the clock.
 */
import { Cron } from 'croner';
import { z } from 'zod';
import { expect } from '../protocol/schemas.js';

/** A time zone this Node.js knows (IANA name), or null. */
export function timeZoneProblem(tz: string): string | null {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return null;
  } catch {
    return `"${tz}" is not a time zone (an IANA name like Europe/Berlin or UTC)`;
  }
}

export const TimeZoneSchema = z
  .string({ error: expect('must be a time zone name like Europe/Berlin') })
  .max(64, { error: 'must be at most 64 characters' })
  .superRefine((value, ctx) => {
    if (timeZoneProblem(value)) ctx.addIssue({ code: 'custom', message: 'is not a time zone (an IANA name like Europe/Berlin or UTC)' });
  });

const timeOfDay = z.string({ error: expect('must be a time of day HH:MM') }).regex(/^([01]\d|2[0-3]):[0-5]\d$/, { error: 'must be a time of day HH:MM (00:00 to 23:59)' });

export const WindowSchema = z
  .strictObject(
    {
      start: timeOfDay,
      end: timeOfDay,
      /** Default: the hub's own time zone; "device": each device's own, from its birth (the hub's when it never said). */
      tz: z.union([z.literal('device'), TimeZoneSchema]).optional(),
    },
    { error: 'must be an object like {"start": "02:00", "end": "04:00", "tz": "Europe/Berlin"}' },
  )
  .refine((w) => w.start !== w.end, { error: 'must not start and end at the same time', path: ['end'] });
export type Window = z.infer<typeof WindowSchema>;

const minutesOf = (hhmm: string) => Number(hhmm.slice(0, 2)) * 60 + Number(hhmm.slice(3, 5));

/** Minutes since midnight (and seconds into the minute) at `now` in `tz`. */
function clockIn(tz: string | undefined, now: number): { minutes: number; seconds: number } {
  const parts = new Intl.DateTimeFormat('en-GB', { timeZone: tz, hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' }).formatToParts(new Date(now));
  const get = (type: string) => Number(parts.find((p) => p.type === type)?.value ?? 0);
  return { minutes: get('hour') * 60 + get('minute'), seconds: get('second') };
}

/**
 * Milliseconds until the window opens (0 while it is open). A window may cross midnight
 * (22:00–04:00). Across a daylight-saving change the answer can be an hour off; callers look
 * again at least every minute, so that settles itself.
 */
export function windowWait(window: Window, now: number, deviceTz?: string | null): number {
  const zone = window.tz === 'device' ? (deviceTz ?? undefined) : window.tz;
  const { minutes, seconds } = clockIn(zone, now);
  const start = minutesOf(window.start);
  const end = minutesOf(window.end);
  const open = start < end ? minutes >= start && minutes < end : minutes >= start || minutes < end;
  if (open) return 0;
  const until = (start - minutes + 1440) % 1440;
  return Math.max(1000, until * 60_000 - seconds * 1000);
}

/** The next time a cron expression fires after `after`, in `tz` (default: the hub's), or null if never. */
export function nextCronRun(cron: string, tz: string | undefined, after: number): number | null {
  const next = new Cron(cron, { paused: true, ...(tz ? { timezone: tz } : {}) }).nextRun(new Date(after));
  return next ? next.getTime() : null;
}

/** Why a cron expression cannot be used, or null. */
export function cronProblem(cron: string): string | null {
  try {
    new Cron(cron, { paused: true });
    return null;
  } catch (error) {
    return `is not a cron expression (${(error as Error).message})`;
  }
}
