/**
 * Health telemetry, the hub's side (docs/protocol.md "Health telemetry"): every report on
 * `P/devices/{id}/telemetry/health` is checked at the edge (size, then the schema) and dropped
 * with a logged code when it fails; a good one goes into the device's aggregate of the current
 * minute, in memory. Once a minute the completed minutes are written to the database together
 * (a few transactions of up to WRITE_CHUNK rows, not one per message), devices online are
 * sampled from presence, and the history is pruned to a week and to `--health-max-rows`.
 * Queries read the database and what is still in memory, so a report shows at once.
 *
 * For rules built on top (alerts on thresholds): `latest()` / `latestAll()` give each device's
 * last report, the 'report' event every accepted one as it comes, and `series()` / `fleet()`
 * the history.
 */
import { EventEmitter } from 'node:events';
import { setImmediate as nextTurn } from 'node:timers/promises';
import type { Logger } from './log.js';
import type { Presence } from './presence.js';
import {
  FLEET_RANKINGS,
  HEALTH_RETENTION_MINUTES,
  HEALTH_SERIES,
  HEALTH_STEP_S,
  HealthReportSchema,
  MAX_HEALTH_REPORT_BYTES,
  type FleetHealth,
  type FleetHealthEntry,
  type FleetRanking,
  type HealthReport,
  type HealthSample,
  type HealthSeries,
  type HealthSeriesName,
} from './protocol/health.js';
import { parsePayload } from './protocol/schemas.js';
import { mergeAgg, type HealthStore, type MinuteAgg, type MinuteRow } from './store/health.js';

const MINUTE_MS = 60_000;
/** Rows per write transaction: 20000 devices' minute in 10 steps, the event loop free between them. */
const WRITE_CHUNK = 2000;
/** Minutes of a series read in one step (a day), the event loop free between steps. */
const READ_CHUNK = 1440;
/** Rows the row cap deletes in one step; more waits for the next tick. */
const PRUNE_BUDGET = 500_000;
/** A report older than this is not "now": the device is left out of the fleet's rankings. */
export const FRESH_MS = 10 * MINUTE_MS;
/** Dropped reports logged one by one per minute; the rest are counted in the next line. */
const DROPS_LOGGED_PER_MINUTE = 20;
/** The tick runs this long after each minute starts, so reports sent on the minute count in it. */
const TICK_DELAY_MS = 1000;

export type IngestOutcome = 'stored' | 'BAD_REQUEST' | 'PAYLOAD_TOO_LARGE';

export interface HealthEvents {
  /** An accepted report, as kept for the device (with the hub's time of arrival). */
  report: [device: string, sample: HealthSample];
}

export interface HealthTelemetryOptions {
  store: HealthStore;
  presence: Presence;
  log: Logger;
  /** The most rows of history kept (all devices together); the oldest minutes go first. 0: no history. */
  maxRows: number;
  /** The clock (tests set one). */
  now?: () => number;
  /** Run the minute tick by a timer (default); tests call tick() themselves. */
  timer?: boolean;
}

interface Current {
  minute: number;
  agg: MinuteAgg;
}

export interface SeriesQuery {
  since?: number;
  until?: number;
  /** Series to return (besides `samples`, always there); default all. */
  metrics?: readonly HealthSeriesName[];
}

export interface FleetQuery {
  since?: number;
  until?: number;
  /** Devices per ranking; default 10. */
  limit?: number;
}

export const DEFAULT_RANGE_MS = 24 * 60 * MINUTE_MS;

export class HealthTelemetry extends EventEmitter<HealthEvents> {
  private readonly store: HealthStore;
  private readonly presence: Presence;
  private readonly log: Logger;
  private readonly maxRows: number;
  private readonly now: () => number;
  /** Each device's minute in progress. */
  private readonly current = new Map<string, Current>();
  /** Completed minutes not yet in the database (being written, or waiting for the tick). */
  private pending: MinuteRow[] = [];
  private writing: MinuteRow[] = [];
  private readonly latestByDevice = new Map<string, Latest>();
  private timer: NodeJS.Timeout | undefined;
  private busy: Promise<void> = Promise.resolve();
  private closed = false;
  private drops = { windowStart: 0, logged: 0, suppressed: 0 };
  /** Reports accepted and dropped since start, by outcome. */
  readonly counts: Record<IngestOutcome, number> = { stored: 0, BAD_REQUEST: 0, PAYLOAD_TOO_LARGE: 0 };

  constructor(options: HealthTelemetryOptions) {
    super();
    this.store = options.store;
    this.presence = options.presence;
    this.log = options.log;
    this.maxRows = options.maxRows;
    this.now = options.now ?? Date.now;
    this.seedLatest();
    if (options.timer !== false) this.arm();
  }

  /** A report from `device` (the access rules let only that device publish on its topic). */
  ingest(device: string, payload: Buffer | string): IngestOutcome {
    if (this.closed) return 'stored';
    const size = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
    if (size > MAX_HEALTH_REPORT_BYTES) return this.drop(device, 'PAYLOAD_TOO_LARGE', `health report of ${size} bytes is larger than ${MAX_HEALTH_REPORT_BYTES}`);
    const checked = parsePayload(HealthReportSchema, payload);
    if (!checked.ok) return this.drop(device, 'BAD_REQUEST', `health report ignored: ${checked.message}`, checked.field);
    this.accept(device, checked.value, this.now());
    return 'stored';
  }

  /** Adds a report that was already checked, received at `at` (epoch ms). */
  accept(device: string, report: HealthReport, at: number): void {
    const minute = Math.floor(at / MINUTE_MS);
    let current = this.current.get(device);
    if (current && current.minute !== minute) {
      this.pending.push({ minute: current.minute, device, agg: current.agg });
      current = undefined;
    }
    const agg = aggOf(report);
    if (current) current.agg = mergeAgg(current.agg, agg);
    else this.current.set(device, { minute, agg });
    const sample: HealthSample = { ...report, at: new Date(at).toISOString() };
    this.latestByDevice.set(device, latestOf(sample, at));
    if (report.version !== undefined || report.cpus !== undefined) {
      const known = this.store.device(device);
      if (!known || (report.version !== undefined && report.version !== known.version) || (report.cpus !== undefined && report.cpus !== known.cpus)) {
        try {
          this.store.noteDevice(device, report.version, report.cpus);
        } catch (error) {
          this.log.error({ device, err: error }, 'cannot save the version of a health report');
        }
      }
    }
    this.counts.stored++;
    this.emit('report', device, sample);
  }

  private drop(device: string, code: 'BAD_REQUEST' | 'PAYLOAD_TOO_LARGE', message: string, field?: string): IngestOutcome {
    this.counts[code]++;
    const now = this.now();
    if (now - this.drops.windowStart >= MINUTE_MS) this.drops = { windowStart: now, logged: 0, suppressed: this.drops.suppressed };
    if (this.drops.logged >= DROPS_LOGGED_PER_MINUTE) {
      this.drops.suppressed++;
      return code;
    }
    this.drops.logged++;
    const suppressed = this.drops.suppressed;
    this.drops.suppressed = 0;
    this.log.warn({ device, code, ...(field ? { field } : {}), ...(suppressed ? { suppressed } : {}) }, suppressed ? `${message} (and ${suppressed} more dropped before, not logged)` : message);
    return code;
  }

  /** The last report of a device (from this run, or the last minute in the database within FRESH_MS of the start). */
  latest(device: string): HealthSample | null {
    return this.latestByDevice.get(device)?.sample ?? null;
  }

  /** Every device's last report. */
  *latestAll(): IterableIterator<[device: string, sample: HealthSample]> {
    for (const [device, latest] of this.latestByDevice) yield [device, latest.sample];
  }

  /** Rows of history in the database. */
  get rows(): number {
    return this.store.rows;
  }

  /** Whether the hub has health data of a device (a report now or a version on record). */
  knows(device: string): boolean {
    return this.latestByDevice.has(device) || this.store.device(device) !== undefined;
  }

  private minuteNow(): number {
    return Math.floor(this.now() / MINUTE_MS);
  }

  /** The range of a query, in whole minutes, clipped to the retention. */
  private range(since: number | undefined, until: number | undefined): { since: number; until: number; from: number; to: number } {
    const end = until ?? this.now();
    const start = since ?? end - DEFAULT_RANGE_MS;
    const oldest = this.minuteNow() - HEALTH_RETENTION_MINUTES + 1;
    return { since: start, until: end, from: Math.max(Math.ceil(start / MINUTE_MS), oldest), to: Math.floor(end / MINUTE_MS) };
  }

  /** A device's history at one point a minute (`GET /api/devices/{id}/health`). */
  async series(device: string, query: SeriesQuery = {}): Promise<HealthSeries> {
    const { since, until, from, to } = this.range(query.since, query.until);
    const byMinute = new Map<number, MinuteAgg>();
    const add = (minute: number, agg: MinuteAgg) => {
      if (minute < from || minute > to) return;
      const known = byMinute.get(minute);
      byMinute.set(minute, known ? mergeAgg(known, agg) : agg);
    };
    for (let start = from; start <= to; start += READ_CHUNK) {
      if (start > from) await nextTurn();
      for (const row of this.store.series(device, start, Math.min(to, start + READ_CHUNK - 1))) add(row.minute, row.agg);
    }
    for (const row of [...this.writing, ...this.pending]) if (row.device === device) add(row.minute, row.agg);
    const current = this.current.get(device);
    if (current) add(current.minute, current.agg);
    const minutes = [...byMinute.keys()].sort((a, b) => a - b);
    const wanted = new Set<HealthSeriesName>(['samples', ...(query.metrics ?? HEALTH_SERIES)]);
    const series: HealthSeries['series'] = {};
    for (const name of HEALTH_SERIES) if (wanted.has(name)) series[name] = minutes.map((minute) => valueOf(byMinute.get(minute)!, name));
    return {
      device,
      since: new Date(since).toISOString(),
      until: new Date(until).toISOString(),
      step_s: HEALTH_STEP_S,
      t: minutes.map((minute) => minute * HEALTH_STEP_S),
      series,
      latest: this.latest(device),
    };
  }

  /** Devices online over time, and the worst devices now by each ranking (`GET /api/health/fleet`). */
  fleet(query: FleetQuery = {}): FleetHealth {
    const { since, until, from, to } = this.range(query.since, query.until);
    const limit = query.limit ?? 10;
    const rows = this.store.fleet(from, to);
    const now = this.now();
    const fresh: [string, Latest][] = [];
    for (const [device, latest] of this.latestByDevice) {
      if (now - latest.at <= FRESH_MS && this.presence.get(device)?.online) fresh.push([device, latest]);
    }
    // The `limit` worst in one pass each, on numbers worked out when the reports came: a fleet
    // of 20000 is neither sorted nor re-read four times per call.
    const rank = (key: 'load1' | 'mem' | 'disk' | 'temp', worst: 'high' | 'low'): FleetHealthEntry[] => {
      const top: { device: string; value: number; latest: Latest }[] = [];
      const before = (value: number, device: string, other: { device: string; value: number }) =>
        value !== other.value ? (worst === 'high' ? value > other.value : value < other.value) : device < other.device;
      for (const [device, latest] of fresh) {
        const value = latest[key];
        if (value === undefined) continue;
        if (top.length === limit && !before(value, device, top[limit - 1]!)) continue;
        let at = top.length;
        while (at > 0 && before(value, device, top[at - 1]!)) at--;
        top.splice(at, 0, { device, value, latest });
        if (top.length > limit) top.pop();
      }
      return top.map(({ device, value, latest }) => ({ device, value, sample: latest.sample }));
    };
    const worst: Record<FleetRanking, FleetHealthEntry[]> = {
      load1: rank('load1', 'high'),
      mem_available_ratio: rank('mem', 'low'),
      disk_free_ratio: rank('disk', 'low'),
      temp_c: rank('temp', 'high'),
    };
    return {
      at: new Date(now).toISOString(),
      since: new Date(since).toISOString(),
      until: new Date(until).toISOString(),
      step_s: HEALTH_STEP_S,
      online: { t: rows.map((r) => r.minute * HEALTH_STEP_S), online: rows.map((r) => r.online), known: rows.map((r) => r.known) },
      now: { online: this.presence.onlineCount(), known: this.presence.table.size },
      reporting: fresh.length,
      worst: Object.fromEntries(FLEET_RANKINGS.map((name) => [name, worst[name]])) as Record<FleetRanking, FleetHealthEntry[]>,
    };
  }

  /**
   * The minute's work: the completed minutes into the database, the fleet's online count
   * sampled, the history pruned to the retention and the row cap. Runs one at a time.
   */
  tick(): Promise<void> {
    const run = this.busy.then(() => this.runTick());
    this.busy = run.catch((error: unknown) => this.log.error({ err: error }, 'health telemetry: the minute\'s write failed'));
    return run;
  }

  private async runTick(): Promise<void> {
    const minute = this.minuteNow();
    for (const [device, current] of this.current) {
      if (current.minute === minute) continue;
      this.pending.push({ minute: current.minute, device, agg: current.agg });
      this.current.delete(device);
    }
    await this.writePending(true);
    if (this.closed) return;
    this.store.recordFleet(minute, this.presence.onlineCount(), this.presence.table.size);
    this.store.pruneBefore(minute - HEALTH_RETENTION_MINUTES + 1);
    if (this.store.rows > this.maxRows) {
      const deleted = this.store.pruneToRows(this.maxRows, PRUNE_BUDGET);
      this.log.debug({ deleted, rows: this.store.rows, maxRows: this.maxRows }, 'health history pruned to the row cap');
    }
    const forgotten = this.now() - HEALTH_RETENTION_MINUTES * MINUTE_MS;
    for (const [device, latest] of this.latestByDevice) if (latest.at < forgotten) this.latestByDevice.delete(device);
  }

  /** Writes what is pending, in chunks; `yieldBetween` lets the event loop run between them. */
  private async writePending(yieldBetween: boolean): Promise<void> {
    this.writing = this.pending;
    this.pending = [];
    try {
      if (this.maxRows === 0) return;
      const started = performance.now();
      for (let i = 0; i < this.writing.length; i += WRITE_CHUNK) {
        if (i > 0 && yieldBetween) await nextTurn();
        this.store.write(this.writing.slice(i, i + WRITE_CHUNK));
      }
      if (this.writing.length > 0) this.log.debug({ rows: this.writing.length, ms: Math.round(performance.now() - started) }, 'health minutes written');
    } finally {
      this.writing = [];
    }
  }

  private arm(): void {
    if (this.closed) return;
    const now = this.now();
    const delay = MINUTE_MS - (now % MINUTE_MS) + TICK_DELAY_MS;
    this.timer = setTimeout(() => {
      void this.tick().finally(() => this.arm());
    }, delay);
    this.timer.unref();
  }

  /** Latest samples after a restart: each device's last minute in the database, if recent. */
  private seedLatest(): void {
    const from = Math.floor((this.now() - FRESH_MS) / MINUTE_MS);
    for (const row of this.store.latestSince(from)) {
      const info = this.store.device(row.device);
      const at = row.minute * MINUTE_MS + MINUTE_MS - 1;
      const sample: HealthSample = { ...reportOf(row.agg), at: new Date(at).toISOString() };
      if (info?.version) sample.version = info.version;
      if (info?.cpus) sample.cpus = info.cpus;
      this.latestByDevice.set(row.device, latestOf(sample, at));
    }
  }

  /** Writes everything in memory, the minute in progress too (a restart merges the rest of it in). */
  async close(): Promise<void> {
    if (this.closed) return;
    clearTimeout(this.timer);
    await this.busy;
    this.closed = true;
    for (const [device, current] of this.current) this.pending.push({ minute: current.minute, device, agg: current.agg });
    this.current.clear();
    try {
      await this.writePending(false);
    } catch (error) {
      this.log.error({ err: error }, 'health telemetry: the last minutes could not be written');
    }
    this.removeAllListeners();
  }
}

/** A device's last report, with what the fleet's rankings compare. */
interface Latest {
  sample: HealthSample;
  /** Epoch ms of its arrival. */
  at: number;
  load1?: number;
  /** Fractions 0–1 of memory available and disk free. */
  mem?: number;
  disk?: number;
  temp?: number;
}

function latestOf(sample: HealthSample, at: number): Latest {
  const ratio = (part: number | undefined, total: number | undefined) => (part === undefined || !total ? undefined : Math.round((part / total) * 10_000) / 10_000);
  return { sample, at, load1: sample.load1, mem: ratio(sample.mem_available_bytes, sample.mem_total_bytes), disk: ratio(sample.disk_free_bytes, sample.disk_total_bytes), temp: sample.temp_c };
}

/** One report as a minute's aggregate, in the stored units. */
export function aggOf(report: HealthReport): MinuteAgg {
  const agg: MinuteAgg = { samples: 1 };
  if (report.load1 !== undefined || report.load5 !== undefined || report.load15 !== undefined) {
    const l1 = hundredths(report.load1 ?? 0);
    agg.load = { n: 1, sum1: l1, max1: l1, sum5: hundredths(report.load5 ?? 0), sum15: hundredths(report.load15 ?? 0) };
  }
  if (report.mem_total_bytes !== undefined && report.mem_available_bytes !== undefined) {
    const available = kib(report.mem_available_bytes);
    agg.mem = { n: 1, total: kib(report.mem_total_bytes), sum: available, min: available };
  }
  if (report.disk_total_bytes !== undefined && report.disk_free_bytes !== undefined) {
    const free = kib(report.disk_free_bytes);
    agg.disk = { n: 1, total: kib(report.disk_total_bytes), sum: free, min: free };
  }
  if (report.temp_c !== undefined) {
    const t = hundredths(report.temp_c);
    agg.temp = { n: 1, sum: t, max: t };
  }
  if (report.uptime_s !== undefined) agg.uptime = Math.round(report.uptime_s);
  return agg;
}

/** A minute's means as a report (for the latest sample after a restart). */
function reportOf(agg: MinuteAgg): HealthReport {
  const report: HealthReport = {};
  for (const [key, name] of [
    ['load1', 'load1'],
    ['load5', 'load5'],
    ['load15', 'load15'],
    ['mem_total_bytes', 'mem_total_bytes'],
    ['mem_available_bytes', 'mem_available_bytes'],
    ['disk_total_bytes', 'disk_total_bytes'],
    ['disk_free_bytes', 'disk_free_bytes'],
    ['temp_c', 'temp_c'],
    ['uptime_s', 'uptime_s'],
  ] as const) {
    const value = valueOf(agg, name);
    if (value !== null) report[key] = value;
  }
  return report;
}

/** One series' value for a minute, in the units of the API, or null. */
function valueOf(agg: MinuteAgg, name: HealthSeriesName): number | null {
  const { load, mem, disk, temp } = agg;
  switch (name) {
    case 'samples':
      return agg.samples;
    case 'load1':
      return load ? round2(load.sum1 / load.n / 100) : null;
    case 'load1_max':
      return load ? load.max1 / 100 : null;
    case 'load5':
      return load ? round2(load.sum5 / load.n / 100) : null;
    case 'load15':
      return load ? round2(load.sum15 / load.n / 100) : null;
    case 'mem_total_bytes':
      return mem ? mem.total * 1024 : null;
    case 'mem_available_bytes':
      return mem ? Math.round(mem.sum / mem.n) * 1024 : null;
    case 'mem_available_min_bytes':
      return mem ? mem.min * 1024 : null;
    case 'disk_total_bytes':
      return disk ? disk.total * 1024 : null;
    case 'disk_free_bytes':
      return disk ? Math.round(disk.sum / disk.n) * 1024 : null;
    case 'disk_free_min_bytes':
      return disk ? disk.min * 1024 : null;
    case 'temp_c':
      return temp ? round2(temp.sum / temp.n / 100) : null;
    case 'temp_max_c':
      return temp ? temp.max / 100 : null;
    case 'uptime_s':
      return agg.uptime ?? null;
  }
}

const hundredths = (value: number) => Math.round(value * 100);
const kib = (bytes: number) => Math.round(bytes / 1024);
const round2 = (value: number) => Math.round(value * 100) / 100;
