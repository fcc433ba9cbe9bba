/**
 * The history of devices' health reports in the hub's database (docs/protocol.md "Health
 * telemetry"): one row per device and minute, kept for a week and under a cap on rows.
 *
 * Layout, chosen for 20000 devices reporting every minute:
 * - `health_minutes` is keyed (minute, device number), WITHOUT ROWID: a minute's rows are
 *   appended together at the end of the table (a few hundred pages, whatever the fleet), and
 *   pruning the oldest minute is a range delete at its start. Keyed by device first, each
 *   minute would dirty one page per device (measured 7× slower to write). A device's series is
 *   read with one primary-key seek per minute of the range instead.
 * - Devices are numbered in `health_devices` (an integer key is a few bytes where an id is up
 *   to 128), which also keeps each one's last reported version and CPU count.
 * - Values are integers: loads and °C in hundredths, bytes in KiB. The minute's aggregate is
 *   kept as sums with counts, so two parts of a minute (before and after a restart) merge
 *   exactly. A minimum or maximum equal to the only value, or a count equal to `samples`, is
 *   NULL (no bytes on disk): with one report a minute, the default, most rows have only means.
 * - `health_minute_rows` counts each minute's rows, so the cap is enforced without counting
 *   the table.
 */
import type { Db } from './db.js';

/** One minute of one device's reports: sums and extremes in the stored units. */
export interface MinuteAgg {
  /** Reports in the minute. */
  samples: number;
  /** Hundredths: sums of load1, load5, load15 over `n` reports, and the largest load1. */
  load?: { n: number; sum1: number; max1: number; sum5: number; sum15: number };
  /** KiB: the last total; the sum and the least of what was available. */
  mem?: { n: number; total: number; sum: number; min: number };
  /** KiB: the last total; the sum and the least of what was free. */
  disk?: { n: number; total: number; sum: number; min: number };
  /** Hundredths of °C: sum and hottest. */
  temp?: { n: number; sum: number; max: number };
  /** Seconds: the largest (the last) uptime. */
  uptime?: number;
}

export interface MinuteRow {
  minute: number;
  device: string;
  agg: MinuteAgg;
}

/** Merges b into a copy of a (b being the later part of the minute). */
export function mergeAgg(a: MinuteAgg, b: MinuteAgg): MinuteAgg {
  const out: MinuteAgg = { samples: a.samples + b.samples };
  if (a.load && b.load) out.load = { n: a.load.n + b.load.n, sum1: a.load.sum1 + b.load.sum1, max1: Math.max(a.load.max1, b.load.max1), sum5: a.load.sum5 + b.load.sum5, sum15: a.load.sum15 + b.load.sum15 };
  else if (a.load ?? b.load) out.load = { ...(a.load ?? b.load)! };
  for (const key of ['mem', 'disk'] as const) {
    const x = a[key];
    const y = b[key];
    if (x && y) out[key] = { n: x.n + y.n, total: y.total, sum: x.sum + y.sum, min: Math.min(x.min, y.min) };
    else if (x ?? y) out[key] = { ...(x ?? y)! };
  }
  if (a.temp && b.temp) out.temp = { n: a.temp.n + b.temp.n, sum: a.temp.sum + b.temp.sum, max: Math.max(a.temp.max, b.temp.max) };
  else if (a.temp ?? b.temp) out.temp = { ...(a.temp ?? b.temp)! };
  if (a.uptime !== undefined || b.uptime !== undefined) out.uptime = Math.max(a.uptime ?? 0, b.uptime ?? 0);
  return out;
}

type Cell = number | null;
/** The columns after (minute, num), in order. */
const COLUMNS = [
  'samples',
  'load_n',
  'load1',
  'load1_max',
  'load5',
  'load15',
  'mem_n',
  'mem_total',
  'mem_available',
  'mem_available_min',
  'disk_n',
  'disk_total',
  'disk_free',
  'disk_free_min',
  'temp_n',
  'temp',
  'temp_max',
  'uptime',
] as const;
type StoredRow = Record<(typeof COLUMNS)[number], Cell> & { minute: number; num: number };

/** NULL where the value says nothing the others do not: a count equal to samples, an extreme of a single value. */
function encode(agg: MinuteAgg): Cell[] {
  const n = (count: number) => (count === agg.samples ? null : count);
  const only = (count: number, value: number) => (count === 1 ? null : value);
  const { load, mem, disk, temp } = agg;
  return [
    agg.samples,
    load ? n(load.n) : 0,
    load?.sum1 ?? null,
    load ? only(load.n, load.max1) : null,
    load?.sum5 ?? null,
    load?.sum15 ?? null,
    mem ? n(mem.n) : 0,
    mem?.total ?? null,
    mem?.sum ?? null,
    mem ? only(mem.n, mem.min) : null,
    disk ? n(disk.n) : 0,
    disk?.total ?? null,
    disk?.sum ?? null,
    disk ? only(disk.n, disk.min) : null,
    temp ? n(temp.n) : 0,
    temp?.sum ?? null,
    temp ? only(temp.n, temp.max) : null,
    agg.uptime ?? null,
  ];
}

function decode(row: StoredRow): MinuteAgg {
  const samples = row.samples ?? 0;
  const count = (stored: Cell) => stored ?? samples;
  const agg: MinuteAgg = { samples };
  if (row.load1 !== null) {
    const n = count(row.load_n);
    agg.load = { n, sum1: row.load1, max1: row.load1_max ?? row.load1, sum5: row.load5 ?? 0, sum15: row.load15 ?? 0 };
  }
  if (row.mem_available !== null) {
    const n = count(row.mem_n);
    agg.mem = { n, total: row.mem_total ?? 0, sum: row.mem_available, min: row.mem_available_min ?? row.mem_available };
  }
  if (row.disk_free !== null) {
    const n = count(row.disk_n);
    agg.disk = { n, total: row.disk_total ?? 0, sum: row.disk_free, min: row.disk_free_min ?? row.disk_free };
  }
  if (row.temp !== null) {
    const n = count(row.temp_n);
    agg.temp = { n, sum: row.temp, max: row.temp_max ?? row.temp };
  }
  if (row.uptime !== null) agg.uptime = row.uptime;
  return agg;
}

export interface HealthDeviceInfo {
  num: number;
  version: string | null;
  cpus: number | null;
}

export interface FleetRow {
  minute: number;
  online: number;
  known: number;
}

export class HealthStore {
  private readonly devices = new Map<string, HealthDeviceInfo>();
  private readonly idsByNum = new Map<number, string>();
  private total: number;
  private readonly insertRow;
  private readonly readRow;
  private readonly replaceRow;
  private readonly countRows;
  private readonly insertDevice;
  private readonly updateDevice;
  private readonly seriesOf;
  private readonly rowsSince;
  private readonly insertFleet;
  private readonly fleetRows;
  private readonly oldestMinute;
  private readonly deleteMinutesBefore;
  private readonly deleteCountsBefore;
  private readonly deleteFleetBefore;

  constructor(private readonly db: Db) {
    const cols = COLUMNS.join(', ');
    const marks = COLUMNS.map(() => '?').join(', ');
    this.insertRow = db.prepare(`INSERT INTO health_minutes (minute, num, ${cols}) VALUES (?, ?, ${marks}) ON CONFLICT (minute, num) DO NOTHING`);
    this.readRow = db.prepare<[number, number], StoredRow>(`SELECT * FROM health_minutes WHERE minute = ? AND num = ?`);
    this.replaceRow = db.prepare(`REPLACE INTO health_minutes (minute, num, ${cols}) VALUES (?, ?, ${marks})`);
    this.countRows = db.prepare(`INSERT INTO health_minute_rows (minute, rows) VALUES (?, ?) ON CONFLICT (minute) DO UPDATE SET rows = rows + excluded.rows`);
    this.insertDevice = db.prepare<[string]>(`INSERT INTO health_devices (device) VALUES (?)`);
    this.updateDevice = db.prepare<[string | null, number | null, number]>(`UPDATE health_devices SET version = ?, cpus = ? WHERE num = ?`);
    // One seek per minute of the range on the (minute, num) key: a generated list of minutes joined to it.
    this.seriesOf = db.prepare<[number, number, number], StoredRow>(
      `WITH RECURSIVE m(x) AS (SELECT ? UNION ALL SELECT x + 1 FROM m WHERE x < ?) SELECT h.* FROM m JOIN health_minutes h ON h.minute = m.x AND h.num = ? ORDER BY h.minute`,
    );
    this.rowsSince = db.prepare<[number], StoredRow>(`SELECT * FROM health_minutes WHERE minute >= ? ORDER BY minute DESC`);
    this.insertFleet = db.prepare<[number, number, number]>(`REPLACE INTO health_fleet (minute, online, known) VALUES (?, ?, ?)`);
    this.fleetRows = db.prepare<[number, number], FleetRow>(`SELECT minute, online, known FROM health_fleet WHERE minute BETWEEN ? AND ? ORDER BY minute`);
    this.oldestMinute = db.prepare<[], { minute: number; rows: number }>(`SELECT minute, rows FROM health_minute_rows ORDER BY minute LIMIT 1`);
    this.deleteMinutesBefore = db.prepare<[number]>(`DELETE FROM health_minutes WHERE minute < ?`);
    this.deleteCountsBefore = db.prepare<[number]>(`DELETE FROM health_minute_rows WHERE minute < ?`);
    this.deleteFleetBefore = db.prepare<[number]>(`DELETE FROM health_fleet WHERE minute < ?`);
    for (const row of db.prepare<[], { num: number; device: string; version: string | null; cpus: number | null }>(`SELECT num, device, version, cpus FROM health_devices`).all()) {
      this.devices.set(row.device, { num: row.num, version: row.version, cpus: row.cpus });
      this.idsByNum.set(row.num, row.device);
    }
    this.total = db.prepare<[], { total: number | null }>(`SELECT sum(rows) AS total FROM health_minute_rows`).get()?.total ?? 0;
  }

  /** Rows in the history now. */
  get rows(): number {
    return this.total;
  }

  /** What the database keeps of a device besides its rows: its number, last version and CPU count. */
  device(id: string): HealthDeviceInfo | undefined {
    return this.devices.get(id);
  }

  /** Records the version and CPU count a device reported, when they changed. */
  noteDevice(id: string, version: string | undefined, cpus: number | undefined): void {
    const info = this.numbered(id);
    const nextVersion = version ?? info.version;
    const nextCpus = cpus ?? info.cpus;
    if (nextVersion === info.version && nextCpus === info.cpus) return;
    this.updateDevice.run(nextVersion, nextCpus, info.num);
    info.version = nextVersion;
    info.cpus = nextCpus;
  }

  private numbered(id: string): HealthDeviceInfo {
    let info = this.devices.get(id);
    if (!info) {
      const num = Number(this.insertDevice.run(id).lastInsertRowid);
      info = { num, version: null, cpus: null };
      this.devices.set(id, info);
      this.idsByNum.set(num, id);
    }
    return info;
  }

  /**
   * Writes minute rows in one transaction. A row already there (the same minute before a
   * restart) is merged with the new one. Returns the rows added.
   */
  write(rows: readonly MinuteRow[]): number {
    if (rows.length === 0) return 0;
    return this.db.transaction(() => {
      const added = new Map<number, number>();
      for (const { minute, device, agg } of rows) {
        const num = this.numbered(device).num;
        if (this.insertRow.run(minute, num, ...encode(agg)).changes === 1) {
          added.set(minute, (added.get(minute) ?? 0) + 1);
          continue;
        }
        const existing = this.readRow.get(minute, num);
        this.replaceRow.run(minute, num, ...encode(existing ? mergeAgg(decode(existing), agg) : agg));
      }
      let count = 0;
      for (const [minute, n] of added) {
        this.countRows.run(minute, n);
        count += n;
      }
      this.total += count;
      return count;
    })();
  }

  /** A device's minutes from `from` to `to` (inclusive), oldest first. */
  series(id: string, from: number, to: number): { minute: number; agg: MinuteAgg }[] {
    const info = this.devices.get(id);
    if (!info || to < from) return [];
    return this.seriesOf.all(from, to, info.num).map((row) => ({ minute: row.minute, agg: decode(row) }));
  }

  /** The last row of each device that has one from minute `from` on. */
  latestSince(from: number): MinuteRow[] {
    const rows: MinuteRow[] = [];
    const seen = new Set<number>();
    for (const row of this.rowsSince.iterate(from)) {
      if (seen.has(row.num)) continue;
      seen.add(row.num);
      const device = this.idsByNum.get(row.num);
      if (device !== undefined) rows.push({ minute: row.minute, device, agg: decode(row) });
    }
    return rows;
  }

  recordFleet(minute: number, online: number, known: number): void {
    this.insertFleet.run(minute, online, known);
  }

  fleet(from: number, to: number): FleetRow[] {
    return this.fleetRows.all(from, to);
  }

  /** Deletes every minute before `minute` (the retention); returns the rows deleted. */
  pruneBefore(minute: number): number {
    return this.db.transaction(() => {
      const deleted = this.deleteMinutesBefore.run(minute).changes;
      this.deleteCountsBefore.run(minute);
      this.deleteFleetBefore.run(minute);
      this.total = Math.max(0, this.total - deleted);
      return deleted;
    })();
  }

  /**
   * Deletes the oldest minutes, whole, until at most `maxRows` rows are left, or `budget`
   * rows were deleted (the caller comes back for the rest). Returns the rows deleted.
   */
  pruneToRows(maxRows: number, budget = Number.POSITIVE_INFINITY): number {
    let deleted = 0;
    while (this.total > maxRows && deleted < budget) {
      const oldest = this.oldestMinute.get();
      if (!oldest) {
        this.total = 0;
        break;
      }
      deleted += this.db.transaction(() => {
        const gone = this.deleteMinutesBefore.run(oldest.minute + 1).changes;
        this.deleteCountsBefore.run(oldest.minute + 1);
        return gone;
      })();
      this.total = Math.max(0, this.total - oldest.rows);
    }
    return deleted;
  }
}
