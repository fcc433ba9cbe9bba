/**
 * The web console in headless Chromium against a hub on an external Mosquitto (`--broker`),
 * with real hypha agents connected to that broker: the top bar shows the broker, the list is
 * live, a command and a job run through the broker, and the console shows the broker going
 * away and coming back. Screenshots land in test-artifacts/.
 */
import { describe, expect, it } from 'vitest';
import { artifact, openPage, runCommand as run } from './browser.js';
import { startMosquitto } from './brokers.js';
import { spawnHypha, startTestHub, waitFor } from './helpers.js';

describe('web console on an external broker', () => {
  it('shows the broker, lists its agents live, runs a command and a job through it, and shows it unreachable and back', async () => {
    const mosquitto = await startMosquitto();
    const hub = await startTestHub({ broker: mosquitto.url });
    const ids = ['ext-01', 'ext-02', 'ext-03', 'ext-04'];
    for (const id of ids) spawnHypha(mosquitto.url, id, ['--keepalive', '2', '--tag', 'attic']);
    await waitFor(() => ids.every((id) => hub.device(id)?.online), { timeoutMs: 15_000, what: 'agents online' });

    const page = await openPage();
    await page.goto(`${hub.urls.http}/`);
    await page.waitForSelector('.connection[data-state="connected"]');
    const badge = page.locator('#broker');
    await badge.waitFor();
    expect(await badge.getAttribute('data-state')).toBe('connected');
    expect(await badge.textContent()).toBe(`broker ${mosquitto.url}`);
    expect(await badge.getAttribute('title')).toContain('MQTT 5');
    await expect.poll(() => page.locator('.device-row.online').count()).toBe(4);

    // A command from the device page, through Mosquitto to a real bash and back.
    await page.click('.device-row[data-id="ext-02"]');
    const card = await run(page, 'echo "$((6 * 7)) via the broker"');
    expect(await card.locator('.output.stdout pre').textContent()).toContain('42 via the broker');
    await page.screenshot({ path: artifact('console-external.png'), fullPage: true });

    // A job on a tag the agents declare, started from the jobs page.
    await page.goto(`${hub.urls.http}/#/jobs`);
    await page.fill('.job-tags', 'attic');
    await page.fill('.job-command', 'hostname > /dev/null && echo done');
    await page.click('.job-start');
    await page.waitForURL((u) => u.hash.startsWith('#/jobs/'));
    await expect.poll(() => page.getAttribute('.job', 'data-state'), { timeout: 15_000 }).toBe('done');
    expect(await page.getAttribute('.job .job-legend .count-succeeded', 'data-count')).toBe('4');

    // The broker goes away: the top bar says so, with the reason in its title, and a command is refused BROKER_UNAVAILABLE.
    const connectedBefore = new Map(ids.map((id) => [id, hub.device(id)?.connectedAt]));
    await mosquitto.kill();
    await expect.poll(() => badge.getAttribute('data-state'), { timeout: 10_000 }).toBe('unreachable');
    expect(await badge.textContent()).toBe(`broker unreachable: ${mosquitto.url}`);
    expect(await badge.getAttribute('title')).toContain('BROKER_UNAVAILABLE');
    await page.screenshot({ path: artifact('console-external-unreachable.png'), fullPage: true });
    await page.goto(`${hub.urls.http}/#/devices/ext-01`);
    const refused = await run(page, 'true');
    expect(await refused.textContent()).toContain('BROKER_UNAVAILABLE');

    // It comes back: so do the badge and the agents.
    await mosquitto.start();
    await expect.poll(() => badge.getAttribute('data-state'), { timeout: 15_000 }).toBe('connected');
    await expect.poll(() => page.locator('.device-row.online').count(), { timeout: 20_000 }).toBe(4);
    // The restarted broker forgot every session: the hub shows the agents online from before
    // until each announces itself again (3 s at most), and a command in between reaches nobody.
    await waitFor(() => ids.every((id) => hub.device(id)?.online && hub.device(id)?.connectedAt !== connectedBefore.get(id)), { timeoutMs: 20_000, what: 'every agent back through the restarted broker' });
    const again = await run(page, 'echo back');
    expect(await again.locator('.output.stdout pre').textContent()).toContain('back');
  }, 90_000);
});
