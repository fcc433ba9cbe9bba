/**
 * Health telemetry in the console, in headless Chromium against a real hub: a device's Health
 * tab draws its charts (uPlot canvases with data) from a real hypha agent's reports and from an
 * hour and a half of history; the fleet page draws devices online over time and ranks the worst
 * devices, each linking to its Health tab. A viewer sees all of it; the page breaks no rule of
 * the Content-Security-Policy. Screenshots land in test-artifacts/.
 */
import type { Page } from 'playwright-core';
import { describe, expect, it } from 'vitest';
import { readTemperature } from '../src/hypha/health.js';
import type { Hub } from '../src/index.js';
import { PACKAGE_VERSION } from '../src/package-root.js';
import type { HealthReport } from '../src/protocol/health.js';
import { HealthStore } from '../src/store/health.js';
import { artifact, openPage } from './browser.js';
import { connectMqtt, spawnHypha, startTestHub, waitFor } from './helpers.js';

const MINUTE = 60_000;
const GiB = 1024 ** 3;

function report(minute: number, hot: boolean): HealthReport {
  const wave = Math.sin(minute / 7);
  return {
    load1: Math.round((hot ? 50 + wave : 0.3 + wave / 5 + 0.2) * 100) / 100,
    load5: hot ? 48 : 0.3,
    load15: hot ? 45 : 0.25,
    cpus: 4,
    mem_total_bytes: 4 * GiB,
    mem_available_bytes: Math.round((hot ? 0.1 : 2.5 + wave / 2) * GiB),
    disk_total_bytes: 32 * GiB,
    disk_free_bytes: Math.round((hot ? 20 : 0.3) * GiB - minute * 1024 * 1024),
    temp_c: Math.round((hot ? 95 + 3 * wave : 45 + wave) * 10) / 10,
    uptime_s: 86_400 + minute * 60,
    version: '9.9.9',
  };
}

/**
 * An hour and a half of history for crafted devices, and the fleet's online count each minute.
 * pi-hot is worse than any real machine in load, memory and temperature, pi-cool in disk.
 */
function seedHistory(hub: Hub, devices: Record<string, boolean>): void {
  const now = Date.now();
  const first = Math.floor(now / MINUTE) - 90;
  const store = new HealthStore(hub.stores.db);
  for (let i = 0; i < 90; i++) {
    for (const [device, hot] of Object.entries(devices)) hub.health.accept(device, report(i, hot), (first + i) * MINUTE + 30_000);
    store.recordFleet(first + i, 2 + (i > 30 ? 1 : 0), 3);
  }
}

/** A device played by MQTT.js: online, with one report now. */
async function craftedDevice(hub: Hub, id: string, token: string, hot: boolean): Promise<void> {
  const client = await connectMqtt(hub.urls.mqtt, { clientId: id, username: id, password: token, clean: false });
  await client.subscribeAsync(`rhizosphere/devices/${id}/command`, { qos: 1 });
  await client.publishAsync(`rhizosphere/devices/${id}/telemetry/health`, JSON.stringify(report(90, hot)), { qos: 0 });
}

async function logIn(page: Page, url: string, hash: string, name: string, password: string): Promise<void> {
  await page.goto(`${url}/${hash}`);
  await page.waitForURL((u) => u.pathname === '/login');
  await page.fill('#name', name);
  await page.fill('#password', password);
  await page.click('#login button[type="submit"]');
  await page.waitForURL((u) => u.pathname === '/' && u.hash === hash);
  await page.waitForSelector('.connection[data-state="connected"]');
}

/** Pixels of a chart's canvas that something was drawn on. */
function drawnPixels(page: Page, chart: string): Promise<number> {
  return page.locator(`${chart} canvas`).first().evaluate((canvas: HTMLCanvasElement) => {
    const context = canvas.getContext('2d');
    if (!context || canvas.width === 0) return 0;
    const { data } = context.getImageData(0, 0, canvas.width, canvas.height);
    let drawn = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i]! > 0) drawn++;
    return drawn;
  });
}

describe('web console: health', () => {
  it('draws a device\'s health charts and the fleet\'s, for a viewer, within the CSP', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    const tokens = { 'pi-real': hub.stores.devices.add('pi-real'), 'pi-hot': hub.stores.devices.add('pi-hot'), 'pi-cool': hub.stores.devices.add('pi-cool') };
    hub.stores.users.add('vera', 'viewer', 'vera-password');
    seedHistory(hub, { 'pi-hot': true, 'pi-cool': false });
    spawnHypha(hub.urls.mqtt, 'pi-real', ['--token', tokens['pi-real'], '--health-interval', '1']);
    await craftedDevice(hub, 'pi-hot', tokens['pi-hot'], true);
    await craftedDevice(hub, 'pi-cool', tokens['pi-cool'], false);
    await waitFor(() => ['pi-real', 'pi-hot', 'pi-cool'].every((id) => hub.device(id)?.online && hub.health.latest(id)), { timeoutMs: 15_000, what: 'three devices online and reporting' });
    // The minute's work now (the history into the database, this minute's count of devices online).
    await hub.health.tick();

    const page = await openPage();
    // Any report of a broken Content-Security-Policy rule fails the test.
    await page.addInitScript(() => {
      const seen: string[] = [];
      (window as unknown as { cspViolations: string[] }).cspViolations = seen;
      document.addEventListener('securitypolicyviolation', (event) => seen.push(`${event.violatedDirective} ${event.blockedURI}`));
    });
    const cspMessages: string[] = [];
    page.on('console', (message) => {
      if (/Content Security Policy/i.test(message.text())) cspMessages.push(message.text());
    });
    await logIn(page, hub.urls.http, '#/devices/pi-hot/health', 'vera', 'vera-password');

    // A viewer has Commands, Health and State (no remote access).
    expect(await page.locator('.device-tab-link').allTextContents()).toEqual(['Commands', 'Health', 'State']);
    expect(await page.getAttribute('.device-tab-link[data-tab="health"]', 'aria-current')).toBe('page');

    // pi-hot: 90 minutes of history and its report now, in four charts drawn on canvas.
    await page.locator('.device-health[data-state="loaded"]').waitFor();
    for (const metric of ['load', 'memory', 'disk', 'temperature']) {
      const chart = `.device-health .health-chart[data-metric="${metric}"]`;
      expect(Number(await page.getAttribute(chart, 'data-points')), metric).toBeGreaterThanOrEqual(90);
      expect(Number(await page.getAttribute(chart, 'data-lines')), metric).toBeGreaterThanOrEqual(2);
      expect(await drawnPixels(page, chart), metric).toBeGreaterThan(1000);
    }
    expect(await page.textContent('.device-health .health-facts')).toMatch(/^hypha 9\.9\.9 · 4 CPUs · up 1 d 1 h · last report/);
    // The legend follows the cursor: a value for the point under it.
    const plot = page.locator('.health-chart[data-metric="temperature"] .u-over');
    const box = (await plot.boundingBox())!;
    await page.mouse.move(box.x + box.width * 0.5, box.y + box.height / 2);
    await expect.poll(() => page.locator('.health-chart[data-metric="temperature"] .u-legend .u-value').nth(1).textContent()).toMatch(/^\d+\.\d °C$/);
    await page.screenshot({ path: artifact('console-health-device.png'), fullPage: true });

    // The 7-day range asks the hub again: the same 90 minutes of history and the one in progress.
    await page.selectOption('.health-range', '7d');
    await page.locator('.device-health[data-state="loaded"]').waitFor();
    expect(Number(await page.getAttribute('.device-health .health-chart[data-metric="load"]', 'data-points'))).toBe(91);

    // pi-real: the real agent's reports of this machine, a point or two so far.
    await page.goto(`${hub.urls.http}/#/devices/pi-real/health`);
    await expect.poll(() => page.getAttribute('.device-health', 'data-points').then(Number), { timeout: 10_000 }).toBeGreaterThanOrEqual(1);
    await expect.poll(() => page.textContent('.device-health .health-facts')).toContain(`hypha ${PACKAGE_VERSION}`);
    expect(Number(await page.getAttribute('.device-health .health-chart[data-metric="memory"]', 'data-lines'))).toBeGreaterThanOrEqual(2);
    expect(await drawnPixels(page, '.device-health .health-chart[data-metric="load"]')).toBeGreaterThan(500);
    if ((await readTemperature()) === undefined) {
      expect(await page.textContent('.device-health .health-chart[data-metric="temperature"] .health-chart-empty')).toBe('no data in this range');
      expect(await page.textContent('.device-health .health-facts')).toContain('no temperature sensor');
    }
    await page.screenshot({ path: artifact('console-health-agent.png'), fullPage: true });

    // The fleet page: devices online over time, and the worst devices now.
    await page.click('#health-link');
    await page.waitForURL((u) => u.hash === '#/health');
    await page.locator('.health-fleet[data-state="loaded"]').waitFor();
    expect(await page.getAttribute('#health-link', 'aria-current')).toBe('page');
    const online = '.health-fleet .health-chart[data-metric="online"]';
    expect(Number(await page.getAttribute(online, 'data-points'))).toBeGreaterThanOrEqual(90);
    expect(await drawnPixels(page, online)).toBeGreaterThan(1000);
    expect(await page.textContent('.fleet-summary')).toBe('3 online of 3 · 3 reporting health');
    const rows = (ranking: string) => page.locator(`.health-ranking[data-ranking="${ranking}"] tbody tr[data-device]`);
    expect(await rows('load1').evaluateAll((trs) => trs.map((tr) => (tr as HTMLElement).dataset.device))).toEqual(expect.arrayContaining(['pi-hot', 'pi-cool', 'pi-real']));
    expect(await rows('load1').first().getAttribute('data-device')).toBe('pi-hot');
    expect(await rows('mem_available_ratio').first().getAttribute('data-device')).toBe('pi-hot');
    expect(await rows('disk_free_ratio').first().getAttribute('data-device')).toBe('pi-cool');
    expect(await rows('temp_c').first().getAttribute('data-device')).toBe('pi-hot');
    expect(await rows('temp_c').first().locator('.cell-value').textContent()).toMatch(/^\d+\.\d °C$/);
    expect(await rows('mem_available_ratio').first().locator('.cell-detail').textContent()).toBe('102 MiB of 4.0 GiB');
    await page.screenshot({ path: artifact('console-health-fleet.png'), fullPage: true });

    // Each device links to its Health tab.
    await rows('temp_c').first().locator('a').click();
    await page.waitForURL((u) => u.hash === '#/devices/pi-hot/health');
    await page.locator('.device-health[data-state="loaded"]').waitFor();

    expect(await page.evaluate(() => (window as unknown as { cspViolations: string[] }).cspViolations)).toEqual([]);
    expect(cspMessages).toEqual([]);
  }, 60_000);
});
