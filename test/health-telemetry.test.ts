/**
 * Health telemetry (docs/protocol.md "Health telemetry"): real hypha processes report with
 * --health-interval 1 to a real hub, which keeps and serves the history over REST and the SDK;
 * the minute aggregation, the restart merge, the week's retention and the row cap checked with
 * a controlled clock on the store; crafted reports from an MQTT.js device; bad reports dropped
 * with a logged code while the hub serves on, and another device's topic refused by the ACL.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { connect } from '../src/client/index.js';
import { HealthTelemetry } from '../src/health.js';
import { readHealth, readTemperature } from '../src/hypha/health.js';
import { createLogger } from '../src/log.js';
import { PACKAGE_VERSION } from '../src/package-root.js';
import type { Presence } from '../src/presence.js';
import { HEALTH_RETENTION_MINUTES, HealthReportSchema, MAX_HEALTH_REPORT_BYTES, type FleetHealth, type HealthReport, type HealthSeries } from '../src/protocol/health.js';
import { HealthStore } from '../src/store/health.js';
import { openStores } from '../src/store/stores.js';
import { capturedLog, cleanup, connectMqtt, spawnHypha, startTestHub, tempDir, waitFor } from './helpers.js';

const MINUTE = 60_000;

async function getJson<T>(url: string, token: string): Promise<{ status: number; body: T }> {
  const res = await fetch(url, { headers: { authorization: `Bearer ${token}` } });
  return { status: res.status, body: (await res.json()) as T };
}

/** Presence as the health service reads it: who is online, how many are known. */
function fakePresence(online: string[], known = online.length): Presence {
  return {
    get: (id: string) => (online.includes(id) ? { online: true } : undefined),
    onlineCount: () => online.length,
    table: { size: known },
  } as unknown as Presence;
}

/** A health service on its own database, driven by a clock the test moves. */
function controlled(maxRows = 1_000_000, dataDir = tempDir('rhizo-health-')) {
  const stores = openStores(dataDir);
  const clock = { now: 0 };
  const make = () => new HealthTelemetry({ store: new HealthStore(stores.db), presence: fakePresence(['pi-01', 'pi-02']), log: createLogger({ level: 'silent' }), maxRows, now: () => clock.now, timer: false });
  const health = make();
  cleanup(() => stores.close());
  return { stores, clock, health, make };
}

const report = (values: Partial<HealthReport>): HealthReport => ({
  load1: 0.5,
  load5: 0.4,
  load15: 0.3,
  cpus: 4,
  mem_total_bytes: 4096 * 1024 * 1024,
  mem_available_bytes: 2048 * 1024 * 1024,
  disk_total_bytes: 32 * 1024 ** 3,
  disk_free_bytes: 16 * 1024 ** 3,
  uptime_s: 1000,
  version: '9.9.9',
  ...values,
});

describe('health telemetry', () => {
  it('real hypha agents report every second; the hub keeps the history and serves it over REST and the SDK', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    const tokens = { 'pi-01': hub.stores.devices.add('pi-01'), 'pi-02': hub.stores.devices.add('pi-02') };
    const viewer = hub.stores.tokens.add('watch', 'viewer');

    // What goes over the wire: a viewer may watch the reports (QoS 0, small, valid).
    const watcher = await connectMqtt(hub.urls.mqtt, { username: 'watch', password: viewer });
    const seen: { topic: string; qos: number; retain: boolean; bytes: number; report: unknown }[] = [];
    watcher.on('message', (topic, payload, packet) => seen.push({ topic, qos: packet.qos, retain: packet.retain, bytes: payload.length, report: JSON.parse(payload.toString()) }));
    await watcher.subscribeAsync('rhizosphere/devices/+/telemetry/health', { qos: 1 });

    spawnHypha(hub.urls.mqtt, 'pi-01', ['--token', tokens['pi-01'], '--health-interval', '1']);
    spawnHypha(hub.urls.ws, 'pi-02', ['--token', tokens['pi-02'], '--health-interval', '1']);
    const url = (id: string, query = '') => `${hub.urls.http}/api/devices/${id}/health${query}`;
    const samples = async (id: string) => {
      const { body } = await getJson<HealthSeries>(url(id), viewer);
      return (body.series?.samples ?? []).reduce<number>((sum, n) => sum + (n ?? 0), 0);
    };
    await waitFor(async () => (await samples('pi-01')) >= 3 && (await samples('pi-02')) >= 3, { timeoutMs: 20_000, what: 'three reports from each agent' });

    const first = seen.find((m) => m.topic === 'rhizosphere/devices/pi-01/telemetry/health')!;
    expect(first).toMatchObject({ qos: 0, retain: false });
    expect(first.bytes).toBeLessThan(MAX_HEALTH_REPORT_BYTES);
    expect(HealthReportSchema.safeParse(first.report).success).toBe(true);

    const { status, body } = await getJson<HealthSeries>(url('pi-01'), viewer);
    expect(status).toBe(200);
    expect(body).toMatchObject({ device: 'pi-01', step_s: 60 });
    expect(body.t.length).toBeGreaterThanOrEqual(1);
    expect(body.t.every((t) => t % 60 === 0)).toBe(true);
    const last = body.t.length - 1;
    expect(body.series.load1![last]).toBeGreaterThanOrEqual(0);
    expect(body.series.mem_total_bytes![last]).toBeGreaterThan(0);
    expect(body.series.mem_available_bytes![last]).toBeLessThanOrEqual(body.series.mem_total_bytes![last]!);
    expect(body.series.disk_total_bytes![last]).toBeGreaterThan(0);
    expect(body.series.uptime_s![last]).toBeGreaterThan(0);
    // Temperature where this machine has a thermal zone, none otherwise.
    const hasSensor = (await readTemperature()) !== undefined;
    expect(body.series.temp_c![last] !== null).toBe(hasSensor);
    expect(body.latest).toMatchObject({ version: PACKAGE_VERSION });
    expect(body.latest!.cpus).toBeGreaterThanOrEqual(1);
    expect(Date.now() - Date.parse(body.latest!.at)).toBeLessThan(5000);

    // ?metric= picks series (samples always come along); a bad query is BAD_REQUEST.
    const picked = await getJson<HealthSeries>(url('pi-01', '?metric=load1,temp_c&since=-1h'), viewer);
    expect(Object.keys(picked.body.series).sort()).toEqual(['load1', 'samples', 'temp_c']);
    for (const [query, message] of [
      ['?metric=cpu', 'metric "cpu" is not one of'],
      ['?since=yesterday', 'since must be a date'],
      ['?since=-1h&until=-2h', 'since must not be after until'],
    ] as const) {
      const bad = await getJson<{ code: string; message: string }>(url('pi-01', query), viewer);
      expect(bad.status).toBe(400);
      expect(bad.body.code).toBe('BAD_REQUEST');
      expect(bad.body.message).toContain(message);
    }
    expect((await getJson<{ code: string }>(url('ghost'), viewer)).body.code).toBe('UNKNOWN_DEVICE');
    expect((await fetch(url('pi-01'))).status).toBe(401);

    // The fleet: the minute's sample of who is online, and the worst devices now.
    await hub.health.tick();
    const fleet = await getJson<FleetHealth>(`${hub.urls.http}/api/health/fleet`, viewer);
    expect(fleet.status).toBe(200);
    expect(fleet.body.now).toEqual({ online: 2, known: 2 });
    expect(fleet.body.online.online.at(-1)).toBe(2);
    expect(fleet.body.reporting).toBe(2);
    expect(fleet.body.worst.load1.map((e) => e.device).sort()).toEqual(['pi-01', 'pi-02']);
    expect(fleet.body.worst.mem_available_ratio[0]!.value).toBeGreaterThan(0);
    expect(fleet.body.worst.mem_available_ratio[0]!.value).toBeLessThanOrEqual(1);
    expect(fleet.body.worst.temp_c.length).toBe(hasSensor ? 2 : 0);

    // The SDK: the same two routes.
    const sdk = await connect(hub.urls.ws, { tokenName: 'watch', token: viewer, reconnectPeriodMs: 0 });
    cleanup(() => sdk.close());
    const series = await sdk.device('pi-02').health({ since: new Date(Date.now() - 3_600_000), metrics: ['load1'] });
    expect(series.device).toBe('pi-02');
    expect(Object.keys(series.series).sort()).toEqual(['load1', 'samples']);
    expect((await sdk.fleetHealth({ limit: 1 })).worst.load1).toHaveLength(1);
    await expect(sdk.deviceHealth('pi-01', { since: 'soon' })).rejects.toMatchObject({ code: 'BAD_REQUEST' });
  });

  it('aggregates each minute: means, extremes and counts per metric, merged across a restart', () => {
    const { clock, health, make } = controlled();
    const m0 = 29_000_000;
    clock.now = m0 * MINUTE + 5_000;
    health.accept('pi-01', report({ load1: 1, temp_c: 40, mem_available_bytes: 1000 * 1024 * 1024, uptime_s: 100 }), clock.now);
    health.accept('pi-01', report({ load1: 2, temp_c: 50, mem_available_bytes: 2000 * 1024 * 1024, uptime_s: 101 }), clock.now + 10_000);
    // A report without a temperature: the temperature's mean is over the two that had one.
    const { temp_c: _none, ...noTemp } = report({ load1: 6, mem_available_bytes: 3000 * 1024 * 1024, uptime_s: 102 });
    health.accept('pi-01', noTemp, clock.now + 20_000);
    // The next minute.
    health.accept('pi-01', report({ load1: 4, temp_c: 45, uptime_s: 160 }), (m0 + 1) * MINUTE + 1000);

    const read = (h: HealthTelemetry, query = {}) => h.series('pi-01', { since: (m0 - 5) * MINUTE, until: (m0 + 10) * MINUTE, ...query });
    return (async () => {
      // Before any write: from memory.
      let series = await read(health);
      expect(series.t).toEqual([m0 * 60, (m0 + 1) * 60]);
      expect(series.series.samples).toEqual([3, 1]);
      expect(series.series.load1).toEqual([3, 4]);
      expect(series.series.load1_max).toEqual([6, 4]);
      expect(series.series.temp_c).toEqual([45, 45]);
      expect(series.series.temp_max_c).toEqual([50, 45]);
      expect(series.series.mem_available_bytes).toEqual([2000 * 1024 * 1024, 2048 * 1024 * 1024]);
      expect(series.series.mem_available_min_bytes).toEqual([1000 * 1024 * 1024, 2048 * 1024 * 1024]);
      expect(series.series.uptime_s).toEqual([102, 160]);

      // The tick of minute m0+2 writes both completed minutes; the database gives the same.
      clock.now = (m0 + 2) * MINUTE + 1000;
      await health.tick();
      expect(health.rows).toBe(2);
      series = await read(health);
      expect(series.series.samples).toEqual([3, 1]);
      expect(series.series.load1).toEqual([3, 4]);
      expect(series.series.temp_c).toEqual([45, 45]);
      expect(series.series.mem_available_min_bytes).toEqual([1000 * 1024 * 1024, 2048 * 1024 * 1024]);

      // A minute split by a restart: the part written at close and the rest merge exactly.
      health.accept('pi-01', report({ load1: 1, temp_c: 30 }), clock.now + 1000);
      await health.close();
      expect(health.rows).toBe(3);
      const again = make();
      expect(again.latest('pi-01')).toMatchObject({ load1: 1, temp_c: 30, version: '9.9.9', cpus: 4 });
      again.accept('pi-01', report({ load1: 3, temp_c: 40 }), clock.now + 2000);
      clock.now = (m0 + 3) * MINUTE + 1000;
      await again.tick();
      expect(again.rows).toBe(3);
      series = await read(again);
      expect(series.series.samples).toEqual([3, 1, 2]);
      expect(series.series.load1).toEqual([3, 4, 2]);
      expect(series.series.load1_max).toEqual([6, 4, 3]);
      expect(series.series.temp_c).toEqual([45, 45, 35]);

      // The range is honoured, in whole minutes.
      series = await read(again, { since: (m0 + 1) * MINUTE, until: (m0 + 1) * MINUTE + 59_999 });
      expect(series.t).toEqual([(m0 + 1) * 60]);
      await again.close();
    })();
  });

  it('keeps a week, at most 10080 rows a device, and prunes the oldest minutes past --health-max-rows', async () => {
    const { stores, clock, make } = controlled(HEALTH_RETENTION_MINUTES + 100);
    const m0 = 29_000_000;
    // More than a week of one device, written straight to the store.
    const minutes = HEALTH_RETENTION_MINUTES + 20;
    const store = new HealthStore(stores.db);
    store.write(Array.from({ length: minutes }, (_, i) => ({ minute: m0 + i, device: 'pi-02', agg: { samples: 1, load: { n: 1, sum1: i, max1: i, sum5: 0, sum15: 0 } } })));
    expect(store.rows).toBe(minutes);
    clock.now = (m0 + minutes - 1) * MINUTE + 1000;
    const health = make();
    await health.tick();
    const week = await health.series('pi-02', { since: m0 * MINUTE, until: (m0 + minutes) * MINUTE });
    expect(week.t).toHaveLength(HEALTH_RETENTION_MINUTES);
    expect(week.t[0]).toBe((m0 + 20) * 60);
    expect(week.series.load1?.at(-1)).toBe((minutes - 1) / 100);
    expect(health.rows).toBe(HEALTH_RETENTION_MINUTES);
    await health.close();

    // The row cap: 10 devices × 8 minutes = 80 rows, at most 50 kept: the 3 oldest minutes go, whole.
    const fresh = controlled(50);
    const m1 = 30_000_000;
    for (let minute = 0; minute < 8; minute++) {
      fresh.clock.now = (m1 + minute) * MINUTE + 2000;
      for (let d = 0; d < 10; d++) fresh.health.accept(`dev-${d}`, report({ load1: minute }), fresh.clock.now);
    }
    fresh.clock.now = (m1 + 8) * MINUTE + 1000;
    await fresh.health.tick();
    expect(fresh.health.rows).toBe(50);
    const kept = await fresh.health.series('dev-3', { since: m1 * MINUTE, until: (m1 + 9) * MINUTE });
    expect(kept.t).toEqual([3, 4, 5, 6, 7].map((m) => (m1 + m) * 60));
    expect(kept.series.load1).toEqual([3, 4, 5, 6, 7]);
  });

  it('a device\'s crafted reports over MQTT: the minute\'s mean and extremes over REST', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    const token = hub.stores.devices.add('pi-07');
    const viewer = hub.stores.tokens.add('watch', 'viewer');
    const device = await connectMqtt(hub.urls.mqtt, { clientId: 'pi-07', username: 'pi-07', password: token });
    // Not in the last seconds of a minute: the three reports must fall in one.
    if (Date.now() % MINUTE > 50_000) await new Promise((r) => setTimeout(r, MINUTE - (Date.now() % MINUTE) + 200));
    const topic = 'rhizosphere/devices/pi-07/telemetry/health';
    for (const [load1, temp_c, free] of [
      [0.5, 41.5, 900],
      [1.5, 43.5, 800],
      [4, 42.5, 700],
    ] as const) {
      await device.publishAsync(topic, JSON.stringify({ load1, load5: 1, load15: 0.5, temp_c, disk_total_bytes: 1000 * 1024 ** 2, disk_free_bytes: free * 1024 ** 2, version: 'custom-1' }), { qos: 1 });
    }
    const url = `${hub.urls.http}/api/devices/pi-07/health?since=-10m`;
    await waitFor(async () => (await getJson<HealthSeries>(url, viewer)).body.series.samples?.at(-1) === 3, { what: 'three reports in the minute' });
    const { body } = await getJson<HealthSeries>(url, viewer);
    expect(body.t).toHaveLength(1);
    expect(body.series).toMatchObject({
      samples: [3],
      load1: [2],
      load1_max: [4],
      load5: [1],
      temp_c: [42.5],
      temp_max_c: [43.5],
      disk_total_bytes: [1000 * 1024 ** 2],
      disk_free_bytes: [800 * 1024 ** 2],
      disk_free_min_bytes: [700 * 1024 ** 2],
      mem_total_bytes: [null],
      uptime_s: [null],
    });
    expect(body.latest).toMatchObject({ load1: 4, version: 'custom-1' });
  });

  it('drops malformed, mistyped and huge reports with a logged code, refuses another device\'s topic, and serves on', async () => {
    const { logger, lines } = capturedLog();
    const hub = await startTestHub({ allowAnonymous: false, logger });
    const tokens = { 'pi-01': hub.stores.devices.add('pi-01'), 'pi-02': hub.stores.devices.add('pi-02') };
    const viewer = hub.stores.tokens.add('watch', 'viewer');
    const device = await connectMqtt(hub.urls.mqtt, { clientId: 'pi-01', username: 'pi-01', password: tokens['pi-01'] });
    const topic = 'rhizosphere/devices/pi-01/telemetry/health';
    const cases: [payload: string, code: string, says: string][] = [
      ['not json', 'BAD_REQUEST', 'payload is not valid JSON'],
      ['[1,2]', 'BAD_REQUEST', 'payload must be a JSON object'],
      ['{"load1":"high","load5":1,"load15":1}', 'BAD_REQUEST', 'load1 must be a number'],
      ['{"load1":-1,"load5":1,"load15":1}', 'BAD_REQUEST', 'load1 must be at least 0'],
      ['{"mem_total_bytes":1000}', 'BAD_REQUEST', 'mem_available_bytes is required with mem_total_bytes'],
      ['{"disk_total_bytes":10,"disk_free_bytes":20}', 'BAD_REQUEST', 'disk_free_bytes must not exceed disk_total_bytes'],
      ['{"temp_c":1e9}', 'BAD_REQUEST', 'temp_c must be at most 200'],
      ['{"version":"1.0"}', 'BAD_REQUEST', 'must carry at least one of'],
      [JSON.stringify({ load1: 1, load5: 1, load15: 1, padding: 'x'.repeat(100_000) }), 'PAYLOAD_TOO_LARGE', 'larger than 4096'],
    ];
    for (const [payload] of cases) await device.publishAsync(topic, payload, { qos: 1 });
    const dropped = () => lines.filter((l) => l.device === 'pi-01' && (l.code === 'BAD_REQUEST' || l.code === 'PAYLOAD_TOO_LARGE'));
    await waitFor(() => dropped().length >= cases.length, { what: 'a logged drop per bad report' });
    for (const [index, [, code, says]] of cases.entries()) {
      expect(dropped()[index]).toMatchObject({ code });
      expect(String(dropped()[index]!.msg)).toContain(says);
    }
    expect(hub.health.counts).toMatchObject({ stored: 0, BAD_REQUEST: cases.length - 1, PAYLOAD_TOO_LARGE: 1 });
    expect(device.connected).toBe(true);

    // A good report after all that is stored.
    await device.publishAsync(topic, JSON.stringify({ load1: 0.25, load5: 0.2, load15: 0.1 }), { qos: 0 });
    await waitFor(() => hub.health.latest('pi-01')?.load1 === 0.25, { what: 'the good report' });

    // pi-02 publishing pi-01's health: refused by the ACL, its connection closed, nothing stored.
    const other = await connectMqtt(hub.urls.mqtt, { clientId: 'pi-02', username: 'pi-02', password: tokens['pi-02'] });
    const closed = new Promise<void>((resolve) => other.once('close', () => resolve()));
    other.publish(topic, JSON.stringify({ load1: 99, load5: 99, load15: 99 }), { qos: 1 });
    await closed;
    expect(lines.some((l) => l.code === 'FORBIDDEN' && l.clientId === 'pi-02' && l.topic === topic)).toBe(true);
    expect(hub.health.latest('pi-01')?.load1).toBe(0.25);

    // The hub serves on: health, REST, and the device's own next report.
    expect((await fetch(`${hub.urls.http}/healthz`)).status).toBe(200);
    await device.publishAsync(topic, JSON.stringify({ load1: 0.75, load5: 0.2, load15: 0.1 }), { qos: 1 });
    await waitFor(() => hub.health.latest('pi-01')?.load1 === 0.75, { what: 'a report after the refusal' });
    const series = await getJson<HealthSeries>(`${hub.urls.http}/api/devices/pi-01/health`, viewer);
    expect(series.body.series.samples?.reduce<number>((a, b) => a + (b ?? 0), 0)).toBe(2);
  });

  it('hypha reads load, MemAvailable, the root file system, the hottest plausible thermal zone and uptime', async () => {
    const root = tempDir('rhizo-sys-');
    mkdirSync(join(root, 'proc'));
    writeFileSync(join(root, 'proc', 'meminfo'), 'MemTotal:        3884052 kB\nMemFree:          204000 kB\nMemAvailable:    2841236 kB\n');
    const zone = (name: string, value: string) => {
      mkdirSync(join(root, 'sys', 'class', 'thermal', name), { recursive: true });
      writeFileSync(join(root, 'sys', 'class', 'thermal', name, 'temp'), value);
    };
    const noSensor = await readHealth({ root, version: '1.2.3' });
    expect(noSensor.temp_c).toBeUndefined();
    zone('thermal_zone0', '48312\n');
    zone('thermal_zone1', '-273000\n');
    zone('thermal_zone2', '51950\n');
    zone('cooling_device0', '99000\n');
    const report = await readHealth({ root, version: '1.2.3' });
    expect(report).toMatchObject({ mem_total_bytes: 3884052 * 1024, mem_available_bytes: 2841236 * 1024, temp_c: 52, version: '1.2.3' });
    expect(report.disk_total_bytes).toBeGreaterThan(0);
    expect(report.disk_free_bytes).toBeLessThanOrEqual(report.disk_total_bytes!);
    expect(report.uptime_s).toBeGreaterThan(0);
    expect(HealthReportSchema.safeParse(report).success).toBe(true);
    expect(Buffer.byteLength(JSON.stringify(report))).toBeLessThan(400);
  });

  it('hypha refuses a bad --health-interval with exit status 2 naming the flag', async () => {
    const bad = spawnHypha('mqtt://127.0.0.1:1', 'pi-01', ['--health-interval', 'often']);
    expect(await bad.exited).toBe(2);
    expect(bad.output()).toContain('hypha: --health-interval: "often" must be a whole number from 0 to 86400');
  });
});
