/**
 * What health telemetry costs the hub (docs/protocol.md "Health telemetry"): N devices each
 * reporting once a minute for M simulated minutes, through the real edge check (size, JSON,
 * schema), the minute aggregation and the database writes of src/health.ts and
 * src/store/health.ts, on a fresh database in a temp dir, with a simulated clock. Prints the
 * ingest cost per report, the write cost per minute (and the longest single transaction, i.e.
 * the longest the event loop is held), the bytes per row on disk, the storage per device and
 * day, and the time to read a device's day and week and the fleet's rankings.
 *
 *   npx tsx bench/health-store.ts [--devices 20000] [--minutes 60] [--prefill-minutes 0]
 *
 * --prefill-minutes writes that many minutes of every device first (straight to the store,
 * 20000 rows a transaction), so the writes and reads are also measured on a table that holds
 * a day or a week.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { aggOf, HealthTelemetry } from '../src/health.js';
import { createLogger } from '../src/log.js';
import type { Presence } from '../src/presence.js';
import type { HealthReport } from '../src/protocol/health.js';
import { HealthStore, type MinuteRow } from '../src/store/health.js';
import { openStores } from '../src/store/stores.js';

const { values } = parseArgs({
  options: {
    devices: { type: 'string', default: '20000' },
    minutes: { type: 'string', default: '60' },
    'prefill-minutes': { type: 'string', default: '0' },
  },
});
const DEVICES = Number(values.devices);
const MINUTES = Number(values.minutes);
const PREFILL = Number(values['prefill-minutes']);
const MINUTE = 60_000;
const GiB = 1024 ** 3;

/** A plausible device: its sizes fixed, its readings moving a little each minute. */
function reportOf(device: number, minute: number): HealthReport {
  const r = (salt: number) => ((Math.sin(device * 12.9898 + minute * 78.233 + salt) * 43758.5453) % 1 + 1) % 1;
  const memTotal = [1, 2, 4, 8][device % 4]! * GiB - 200 * 1024 * 1024;
  const diskTotal = [16, 32, 64, 128][device % 4]! * 1_000_000_000;
  const report: HealthReport = {
    load1: Math.round(r(1) * 400) / 100,
    load5: Math.round(r(2) * 300) / 100,
    load15: Math.round(r(3) * 200) / 100,
    cpus: 4,
    mem_total_bytes: memTotal,
    mem_available_bytes: Math.round(memTotal * (0.2 + r(4) * 0.6)),
    disk_total_bytes: diskTotal,
    disk_free_bytes: Math.round(diskTotal * (0.3 + (device % 50) / 100)) - minute * 4096,
    uptime_s: 100_000 + device * 37 + minute * 60,
    version: '0.1.0',
  };
  // Three boards in four have a sensor.
  if (device % 4 !== 3) report.temp_c = Math.round((45 + r(5) * 20) * 10) / 10;
  return report;
}

const presence = {
  get: () => ({ online: true }),
  onlineCount: () => DEVICES,
  table: { size: DEVICES },
} as unknown as Presence;

const dir = mkdtempSync(join(tmpdir(), 'rhizo-health-bench-'));
const stores = openStores(dir);
const clock = { now: 29_000_000 * MINUTE };
const ids = Array.from({ length: DEVICES }, (_, i) => `pi-${String(i).padStart(6, '0')}`);

try {
  const fileBytes = () => ['rhizosphere.db', 'rhizosphere.db-wal'].reduce((sum, name) => sum + (statSync(join(dir, name), { throwIfNoEntry: false })?.size ?? 0), 0);
  const emptyBytes = fileBytes();

  if (PREFILL > 0) {
    const store = new HealthStore(stores.db);
    const started = performance.now();
    for (let m = 0; m < PREFILL; m++) {
      const minute = clock.now / MINUTE - PREFILL + m;
      const rows: MinuteRow[] = ids.map((device, i) => ({ minute, device, agg: aggOf(reportOf(i, m - PREFILL)) }));
      store.write(rows);
      if (m % 60 === 59) stores.db.pragma('wal_checkpoint(PASSIVE)');
    }
    console.log(`prefill: ${PREFILL} minutes of ${DEVICES} devices (${PREFILL * DEVICES} rows) in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  }

  const health = new HealthTelemetry({ store: new HealthStore(stores.db), presence, log: createLogger({ level: 'silent' }), maxRows: Number.MAX_SAFE_INTEGER, now: () => clock.now, timer: false });
  // Each transaction's time, from the store's write(), to find the longest hold of the event loop.
  const transactions: number[] = [];
  const store = (health as unknown as { store: HealthStore }).store;
  const write = store.write.bind(store);
  store.write = (rows) => {
    const started = performance.now();
    const added = write(rows);
    transactions.push(performance.now() - started);
    return added;
  };

  const payloads = ids.map((_, i) => Buffer.from(JSON.stringify(reportOf(i, 0))));
  let ingestMs = 0;
  const ticks: number[] = [];
  for (let m = 0; m < MINUTES; m++) {
    const minuteStart = clock.now - (clock.now % MINUTE);
    for (let i = 0; i < DEVICES; i++) {
      clock.now = minuteStart + 1000 + Math.floor((i / DEVICES) * 55_000);
      const payload = m === 0 ? payloads[i]! : Buffer.from(JSON.stringify(reportOf(i, m)));
      const started = performance.now();
      health.ingest(ids[i]!, payload);
      ingestMs += performance.now() - started;
    }
    clock.now = minuteStart + MINUTE + 1000;
    const started = performance.now();
    await health.tick();
    ticks.push(performance.now() - started);
  }
  await health.close();
  stores.db.pragma('wal_checkpoint(TRUNCATE)');

  const rows = store.rows;
  const bytes = fileBytes() - emptyBytes;
  const sorted = [...ticks].sort((a, b) => a - b);
  const median = sorted[Math.floor(sorted.length / 2)]!;
  const p95 = sorted[Math.floor(sorted.length * 0.95)]!;
  const longest = Math.max(...transactions);
  console.log(`devices ${DEVICES}, minutes ${MINUTES}, rows ${rows}`);
  console.log(`ingest (size check, JSON, schema, aggregate): ${((ingestMs * 1000) / (DEVICES * MINUTES)).toFixed(1)} µs a report, ${((ingestMs / MINUTES) | 0)} ms of CPU a minute for the fleet`);
  console.log(`minute tick (write ${DEVICES} rows in ${Math.ceil(DEVICES / 2000)} transactions, sample, prune): median ${median.toFixed(1)} ms, p95 ${p95.toFixed(1)} ms; longest transaction ${longest.toFixed(1)} ms`);
  console.log(`disk: ${(bytes / rows).toFixed(1)} bytes a row → ${((bytes / rows) * 1440 / 1024).toFixed(0)} KiB a device a day, ${((bytes / rows) * 10080 / 1024 / 1024).toFixed(2)} MiB a device a week`);

  // For comparison: one transaction per report, as a naive writer would do it (2000 of them).
  {
    const single = new HealthStore(stores.db);
    const minute = Math.floor(clock.now / MINUTE) + 10;
    const started = performance.now();
    for (let i = 0; i < 2000; i++) single.write([{ minute, device: ids[i]!, agg: aggOf(reportOf(i, 0)) }]);
    const each = (performance.now() - started) / 2000;
    console.log(`one transaction per report instead: ${(each * 1000).toFixed(0)} µs a report → ${((each * DEVICES) / 1000).toFixed(1)} s a minute for the fleet`);
  }

  const reader = new HealthTelemetry({ store: new HealthStore(stores.db), presence, log: createLogger({ level: 'silent' }), maxRows: Number.MAX_SAFE_INTEGER, now: () => clock.now, timer: false });
  for (const [label, ms] of [
    ['1 h', 3_600_000],
    ['24 h', 86_400_000],
    ['7 d', 7 * 86_400_000],
  ] as const) {
    const started = performance.now();
    const series = await reader.series(ids[DEVICES >> 1]!, { since: clock.now - ms, until: clock.now });
    console.log(`series of one device, ${label}: ${series.t.length} points in ${(performance.now() - started).toFixed(1)} ms`);
  }
  for (const call of ['first', 'second']) {
    const started = performance.now();
    const fleet = reader.fleet({});
    console.log(`fleet, ${call} call (online series, ${fleet.reporting} devices ranked 4 ways): ${(performance.now() - started).toFixed(1)} ms`);
  }
  await reader.close();
} finally {
  stores.close();
  rmSync(dir, { recursive: true, force: true });
}
