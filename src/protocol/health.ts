/**
 * Health telemetry (docs/protocol.md "Health telemetry"): what a device reports about itself
 * every so often on `P/devices/{id}/telemetry/health` (load, memory, disk, temperature,
 * uptime, agent version), and the shapes in which the hub serves the history it keeps
 * (`GET /api/devices/{id}/health`, `GET /api/health/fleet`). hypha and the hub share the schema;
 * the client SDK imports the REST shapes as types only, so it stays free of zod and server code.
 */
import { z } from 'zod';

/** The telemetry sub-topic of health reports: `P/devices/{id}/telemetry/health` (Topics.deviceHealth). */
export { HEALTH_SUBTOPIC } from './topics.js';

/** hypha's default reporting period, in seconds (`--health-interval`; 0 = no reports). */
export const DEFAULT_HEALTH_INTERVAL_S = 60;

/** A report larger than this is dropped unread (PAYLOAD_TOO_LARGE): hypha's are about 300 bytes. */
export const MAX_HEALTH_REPORT_BYTES = 4096;

/** The resolution of the history the hub keeps: one row per device and minute. */
export const HEALTH_STEP_S = 60;

/** How far back the history goes: a week of minutes, so at most this many rows per device. */
export const HEALTH_RETENTION_MINUTES = 7 * 24 * 60;

const MAX_BYTES = Number.MAX_SAFE_INTEGER;

const load = z
  .number({ error: 'must be a number' })
  .min(0, { error: 'must be at least 0' })
  .max(1_000_000, { error: 'must be at most 1000000' });
const bytes = z
  .number({ error: 'must be a number of bytes' })
  .int({ error: 'must be a whole number of bytes' })
  .min(0, { error: 'must be at least 0' })
  .max(MAX_BYTES, { error: `must be at most ${MAX_BYTES}` });

/**
 * A health report, device → hub (and any subscriber), QoS 0, not retained. Every metric is
 * optional, so a device that knows only some reports those (a board without a sensor leaves
 * `temp_c` out), but a report must carry at least one; the three load averages come together,
 * and memory and disk as pairs (total and available or free).
 * The hub stamps each report with its own clock when it arrives: devices without a real-time
 * clock (a Raspberry Pi before NTP) cannot put them in the wrong place. Unknown keys are ignored.
 */
export const HealthReportSchema = z
  .object(
    {
      /** Load averages over 1, 5 and 15 minutes (/proc/loadavg). */
      load1: load.optional(),
      load5: load.optional(),
      load15: load.optional(),
      /** Logical CPUs, to read the load against. */
      cpus: z.number({ error: 'must be a number' }).int({ error: 'must be a whole number' }).min(1, { error: 'must be at least 1' }).max(65_536, { error: 'must be at most 65536' }).optional(),
      /** Memory: total, and available to new programs (MemAvailable of /proc/meminfo). */
      mem_total_bytes: bytes.optional(),
      mem_available_bytes: bytes.optional(),
      /** The root file system: total, and free for unprivileged users (statfs of /: blocks, bavail). */
      disk_total_bytes: bytes.optional(),
      disk_free_bytes: bytes.optional(),
      /** The hottest thermal zone (/sys/class/thermal/thermal_zone*\/temp), in °C; absent without one. */
      temp_c: z.number({ error: 'must be a number of °C' }).min(-100, { error: 'must be at least -100' }).max(200, { error: 'must be at most 200' }).optional(),
      /** Seconds since the device booted. */
      uptime_s: z.number({ error: 'must be a number of seconds' }).min(0, { error: 'must be at least 0' }).max(MAX_BYTES, { error: 'is too large' }).optional(),
      /** The agent's version, e.g. "0.1.0". */
      version: z.string({ error: 'must be a string' }).min(1, { error: 'must not be empty' }).max(64, { error: 'must be at most 64 characters' }).optional(),
    },
    { error: 'must be a JSON object' },
  )
  .superRefine((report, ctx) => {
    const pair = (total: keyof typeof report, part: keyof typeof report) => {
      const a = report[total];
      const b = report[part];
      if ((a === undefined) !== (b === undefined)) ctx.addIssue({ code: 'custom', path: [a === undefined ? total : part], message: `is required with ${a === undefined ? part : total}` });
      else if (typeof a === 'number' && typeof b === 'number' && b > a) ctx.addIssue({ code: 'custom', path: [part], message: `must not exceed ${total}` });
    };
    const loads = (['load1', 'load5', 'load15'] as const).filter((key) => report[key] !== undefined);
    if (loads.length > 0 && loads.length < 3) {
      const missing = (['load1', 'load5', 'load15'] as const).find((key) => report[key] === undefined)!;
      ctx.addIssue({ code: 'custom', path: [missing], message: 'is required with the other load averages (load1, load5 and load15 come together)' });
    }
    pair('mem_total_bytes', 'mem_available_bytes');
    pair('disk_total_bytes', 'disk_free_bytes');
    if (!HEALTH_METRIC_KEYS.some((key) => report[key] !== undefined)) ctx.addIssue({ code: 'custom', path: [], message: `must carry at least one of ${HEALTH_METRIC_KEYS.join(', ')}` });
  });
export type HealthReport = z.infer<typeof HealthReportSchema>;

/** The measured fields of a report (not `cpus` or `version`). */
export const HEALTH_METRIC_KEYS = ['load1', 'load5', 'load15', 'mem_total_bytes', 'mem_available_bytes', 'disk_total_bytes', 'disk_free_bytes', 'temp_c', 'uptime_s'] as const;

/**
 * The series of `GET /api/devices/{id}/health`, one value per minute each (null where the
 * minute had none): the mean of the minute's reports, and for some the extreme within it.
 */
export const HEALTH_SERIES = [
  'samples',
  'load1',
  'load1_max',
  'load5',
  'load15',
  'mem_total_bytes',
  'mem_available_bytes',
  'mem_available_min_bytes',
  'disk_total_bytes',
  'disk_free_bytes',
  'disk_free_min_bytes',
  'temp_c',
  'temp_max_c',
  'uptime_s',
] as const;
export type HealthSeriesName = (typeof HEALTH_SERIES)[number];

/** `GET /api/devices/{id}/health`: columns, one entry per minute that has data, oldest first. */
export interface HealthSeries {
  device: string;
  /** ISO times of the range asked for. */
  since: string;
  until: string;
  /** Seconds per point: 60. */
  step_s: number;
  /** The start of each minute, in Unix seconds (the x axis). */
  t: number[];
  /** The series asked for (`?metric=`), all by default; `samples` = reports in the minute. */
  series: Partial<Record<HealthSeriesName, (number | null)[]>>;
  /** The device's last report, as it came (null when there is none in memory). */
  latest: HealthSample | null;
}

/** One report as the hub keeps the latest of each device: the values, with when it arrived. */
export interface HealthSample extends HealthReport {
  /** ISO time at which the hub received it. */
  at: string;
}

/** The rankings of `GET /api/health/fleet`: which devices are worst now by each. */
export const FLEET_RANKINGS = ['load1', 'mem_available_ratio', 'disk_free_ratio', 'temp_c'] as const;
export type FleetRanking = (typeof FLEET_RANKINGS)[number];

export interface FleetHealthEntry {
  device: string;
  /** The ranked value: load1, a fraction 0–1 of memory or disk free, or °C. */
  value: number;
  sample: HealthSample;
}

/** `GET /api/health/fleet`. */
export interface FleetHealth {
  /** ISO time of the answer. */
  at: string;
  since: string;
  until: string;
  step_s: number;
  /** Devices online and known, sampled by the hub from presence once a minute. */
  online: { t: number[]; online: number[]; known: number[] };
  /** Devices online now, known now. */
  now: { online: number; known: number };
  /** Online devices with a report in the last 10 minutes: the ones ranked. */
  reporting: number;
  /** Highest load, least memory free, least disk free, hottest: worst first. */
  worst: Record<FleetRanking, FleetHealthEntry[]>;
}
