/**
 * The console's alerts page in headless Chromium against a real hub, with a clock the test moves:
 * two MQTT.js devices go offline past a rule (one comes back: resolved), a job whose target
 * stayed offline fires a job alert; the admin sees what fires and what resolved, the rules and
 * the webhooks (secret masked), resolves the job alert, adds a rule from the form and has a bad
 * one refused with the hub's code; a viewer only reads. Screenshot in test-artifacts/.
 */
import type { Page } from 'playwright-core';
import { describe, expect, it } from 'vitest';
import type { Hub } from '../src/index.js';
import { artifact, openPage } from './browser.js';
import { connectMqtt, startTestHub, waitFor } from './helpers.js';

const MINUTE = 60_000;

async function api(hub: Hub, method: string, path: string, token: string, body?: unknown) {
  const res = await fetch(`${hub.urls.http}${path}`, { method, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as any };
}

async function logIn(page: Page, url: string, name: string, password: string): Promise<void> {
  await page.goto(`${url}/#/alerts`);
  await page.waitForURL((u) => u.pathname === '/login');
  await page.fill('#name', name);
  await page.fill('#password', password);
  await page.click('#login button[type="submit"]');
  await page.waitForURL((u) => u.pathname === '/' && u.hash === '#/alerts');
  await page.waitForSelector('.connection[data-state="connected"]');
}

describe('web console: alerts', () => {
  it('shows firing and resolved alerts, the rules and webhooks; an admin resolves a job alert and adds rules; a viewer reads', async () => {
    let offset = 0;
    const hub = await startTestHub({ allowAnonymous: false, clock: () => Date.now() + offset });
    const admin = hub.stores.tokens.add('root', 'admin');
    hub.stores.users.add('vera', 'viewer', 'vera-password');
    const tokens = Object.fromEntries(['pi-cellar', 'pi-attic'].map((id) => [id, hub.stores.devices.add(id, ['house'])]));
    const connect = async (id: string) => {
      const client = await connectMqtt(hub.urls.mqtt, { clientId: id, username: id, password: tokens[id] });
      await client.subscribeAsync(`rhizosphere/devices/${id}/command`, { qos: 1 });
      await waitFor(() => hub.device(id)?.online, { what: `${id} online` });
      return client;
    };
    for (const id of Object.keys(tokens)) await (await connect(id)).endAsync(true);
    await waitFor(() => !hub.device('pi-cellar')?.online && !hub.device('pi-attic')?.online, { what: 'both offline' });

    expect((await api(hub, 'POST', '/api/alerts/rules', admin, { name: 'house offline', kind: 'device_offline', minutes: 5, tags: ['house'] })).status).toBe(201);
    expect((await api(hub, 'POST', '/api/alerts/rules', admin, { name: 'jobs gone wrong', kind: 'job' })).status).toBe(201);
    expect((await api(hub, 'POST', '/api/webhooks', admin, { url: 'https://alerts.example.net/rhizosphere', secret: 'not-to-be-shown-again' })).status).toBe(201);
    // A job whose one target stays offline past its deadline: done with a timed-out target.
    const job = await api(hub, 'POST', '/api/jobs', admin, { target: { devices: ['pi-cellar'] }, order: 'exec_bash', cmd_str: 'apt-get -y upgrade', deadline_ms: 1000 });
    offset += 6 * MINUTE;
    await waitFor(async () => (await api(hub, 'GET', '/api/alerts?state=firing', admin)).body.length === 3, { what: 'three alerts firing' });
    // pi-attic comes back: resolved.
    await connect('pi-attic');
    await waitFor(async () => (await api(hub, 'GET', '/api/alerts?state=resolved', admin)).body.length === 1, { what: 'pi-attic resolved' });

    const page = await openPage();
    await logIn(page, hub.urls.http, 'admin', hub.initialAdminPassword!);
    expect(await page.getAttribute('#alerts-link', 'aria-current')).toBe('page');
    const firing = page.locator('.alerts-firing tbody tr[data-id]');
    await expect.poll(() => firing.count()).toBe(2);
    expect(await page.textContent('.alerts-firing-summary')).toBe('2 alerts firing');
    const cellar = page.locator('.alerts-firing tr[data-subject="pi-cellar"]');
    expect(await cellar.locator('.alert-summary').textContent()).toBe('pi-cellar offline for more than 5 min');
    expect(await cellar.locator('.cell-rule').textContent()).toBe('house offline');
    expect(await cellar.locator('.device-link').getAttribute('href')).toBe('#/devices/pi-cellar');
    const jobRow = page.locator(`.alerts-firing tr[data-subject="${job.body.id}"]`);
    expect(await jobRow.locator('.alert-summary').textContent()).toBe(`job ${job.body.id} done with 1 timed out of 1 targets`);
    expect(await jobRow.locator('.job-link').getAttribute('href')).toBe(`#/jobs/${job.body.id}`);
    expect(await cellar.locator('.alert-resolve').count()).toBe(0);
    const attic = page.locator('.alerts-resolved tr[data-subject="pi-attic"]');
    expect(await attic.locator('.cell-resolution').textContent()).toBe('pi-attic is online again');
    expect(await page.locator('.alert-rules tbody tr[data-id]').count()).toBe(2);
    expect(await page.locator('.alert-rules tr[data-kind="device_offline"] .cell-condition').textContent()).toBe('offline more than 5 min · tags house');
    expect(await page.locator('.alert-rules tr[data-kind="device_offline"] .cell-firing').textContent()).toBe('1');
    expect(await page.locator('.webhooks-table .cell-secret').textContent()).toBe('********');
    expect(await page.content()).not.toContain('not-to-be-shown-again');
    // Tall enough for the webhooks too (the view scrolls inside the page).
    await page.setViewportSize({ width: 1280, height: 1150 });
    await page.screenshot({ path: artifact('console-alerts.png'), fullPage: true });
    await page.setViewportSize({ width: 1280, height: 760 });

    // The job alert resolved by hand moves to the resolved ones.
    await jobRow.locator('.alert-resolve').click();
    await expect.poll(() => firing.count()).toBe(1);
    await page.locator(`.alerts-resolved tr[data-subject="${job.body.id}"]`).waitFor();
    expect(await page.textContent(`.alerts-resolved tr[data-subject="${job.body.id}"] .cell-resolution`)).toBe('resolved by admin');

    // A rule from the form; a bad one refused with the hub's code and message.
    await page.selectOption('.rule-kind', 'telemetry');
    await page.fill('.rule-name', 'hot');
    await page.selectOption('.rule-metric', 'temp_c');
    await page.fill('.rule-value', '80');
    await page.fill('.rule-minutes', '5');
    await page.click('.rule-add');
    await expect.poll(() => page.locator('.alert-rules tr[data-kind="telemetry"] .cell-condition').textContent()).toBe('temp_c above 80 for 5 min');
    await page.selectOption('.rule-kind', 'device_offline');
    await page.fill('.rule-minutes', '-1');
    await page.click('.rule-add');
    await expect.poll(() => page.textContent('.alerts .problem')).toBe('BAD_REQUEST minutes must be at least 0');

    // A viewer reads: no forms, no webhooks, no Resolve.
    const viewer = await openPage();
    await logIn(viewer, hub.urls.http, 'vera', 'vera-password');
    await expect.poll(() => viewer.locator('.alerts-firing tbody tr[data-id]').count()).toBe(1);
    expect(await viewer.locator('.alert-rule-form').count()).toBe(0);
    expect(await viewer.locator('.webhooks-table').count()).toBe(0);
    expect(await viewer.textContent('.alerts .read-only-note')).toContain('Viewers see alerts and rules');
  }, 60_000);
});
