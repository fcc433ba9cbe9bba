/**
 * The console's jobs page in headless Chromium against a real hub: 20 scripted MQTT devices
 * with tags answer the job's commands; the page starts a job from its form, follows the
 * progress bar live to the end, shows the targets, cancels a long job; a viewer only watches.
 * Screenshots land in test-artifacts/.
 */
import type { MqttClient } from 'mqtt';
import type { Page } from 'playwright-core';
import { describe, expect, it } from 'vitest';
import type { Hub } from '../src/index.js';
import type { Command } from '../src/protocol/schemas.js';
import { artifact, openPage } from './browser.js';
import { cleanup, connectMqtt, startTestHub, waitFor } from './helpers.js';

/** How long a device takes to answer; changed by the test between jobs. */
let answerDelay = (_id: string) => 200 + Math.floor(Math.random() * 200);
/** Devices that answer with exit 1. */
const FAILING = new Set(['dev-03', 'dev-07', 'dev-11']);

/** Registers a device with tags and plays it with MQTT.js: each Command answered after a delay. */
async function startDevice(hub: Hub, id: string, tags: string[]): Promise<MqttClient> {
  const token = hub.stores.devices.add(id, tags);
  const client = await connectMqtt(hub.urls.mqtt, { clientId: id, clean: false, username: id, password: token });
  const timers = new Set<NodeJS.Timeout>();
  cleanup(() => timers.forEach((timer) => clearTimeout(timer)));
  client.on('message', (topic, payload) => {
    if (topic !== `rhizosphere/devices/${id}/command`) return;
    const command = JSON.parse(payload.toString()) as Command;
    const exit = FAILING.has(id) ? 1 : 0;
    const timer = setTimeout(() => {
      timers.delete(timer);
      if (!client.connected) return;
      const body = { type: 'response', id: command.id, result: `${id} ran ${command.cmd_str}\nsecond line`, error: exit ? 'it went wrong' : '', exit_code: exit, duration_ms: 5, truncated: false };
      client.publish(`rhizosphere/devices/${id}/response`, JSON.stringify(body), { qos: 1 });
    }, answerDelay(id));
    timers.add(timer);
  });
  await client.subscribeAsync(`rhizosphere/devices/${id}/command`, { qos: 1 });
  return client;
}

async function logIn(page: Page, url: string, name: string, password: string): Promise<void> {
  await page.goto(`${url}/#/jobs`);
  await page.waitForURL((u) => u.pathname === '/login');
  await page.fill('#name', name);
  await page.fill('#password', password);
  await page.click('#login button[type="submit"]');
  await page.waitForURL((u) => u.pathname === '/' && u.hash === '#/jobs');
  await page.waitForSelector('.connection[data-state="connected"]');
}

const count = (page: Page, state: string) => page.getAttribute(`.job .job-legend .count-${state}`, 'data-count').then(Number);

describe('web console: jobs', () => {
  it('starts a job on a tag, follows it live to the end, cancels a long one; a viewer only watches', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    const ids = Array.from({ length: 20 }, (_, i) => `dev-${String(i).padStart(2, '0')}`);
    // dev-00 … dev-15 are in the kitchen; every device is on floor-1.
    await Promise.all(ids.map((id, i) => startDevice(hub, id, i < 16 ? ['kitchen', 'floor-1'] : ['floor-1'])));
    await waitFor(() => ids.every((id) => hub.device(id)?.online), { what: '20 devices online' });
    hub.stores.users.add('vera', 'viewer', 'vera-password');

    const page = await openPage();
    const url = hub.urls.http;
    await logIn(page, url, 'admin', hub.initialAdminPassword!);
    expect(await page.isVisible('#jobs-link')).toBe(true);
    expect(await page.getAttribute('#jobs-link', 'aria-current')).toBe('page');
    await page.locator('.jobs-table .table-empty').waitFor();

    // An invalid job is refused with the hub's code and message.
    await page.fill('.job-command', 'uptime');
    await page.click('.job-start');
    await expect.poll(() => page.textContent('.problem')).toMatch(/^BAD_REQUEST target/);

    // A job on the kitchen tag: 16 devices, 3 of them failing.
    await page.fill('.job-tags', 'kitchen');
    await page.fill('.job-command', 'uname -a');
    await page.fill('.job-concurrency', '4');
    await page.click('.job-start');
    await page.waitForURL((u) => u.hash.startsWith('#/jobs/'));
    const jobId = decodeURIComponent(new URL(page.url()).hash.slice('#/jobs/'.length));
    expect(await page.textContent('.notice')).toContain('Started on 16 devices');

    // The bar moves while the job runs (live from MQTT), then ends with the right counts. The
    // page itself notes every value the bar shows, so a slow test loop misses none of them.
    await page.evaluate(() => {
      const seen = new Set<string>();
      (window as unknown as { barSeen: Set<string> }).barSeen = seen;
      const note = () => {
        const finished = document.querySelector<HTMLElement>('.job .job-progress')?.dataset.finished;
        if (finished) seen.add(finished);
      };
      note();
      new MutationObserver(note).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-finished'] });
    });
    await expect.poll(() => page.getAttribute('.job', 'data-state'), { timeout: 15_000 }).toBe('done');
    const seen = await page.evaluate(() => [...(window as unknown as { barSeen: Set<string> }).barSeen]);
    expect(seen.length, `the bar showed ${seen.join(', ')} finished`).toBeGreaterThan(2);
    expect(await count(page, 'succeeded')).toBe(13);
    expect(await count(page, 'failed')).toBe(3);
    for (const state of ['timed_out', 'canceled', 'sent', 'queued']) expect(await count(page, state)).toBe(0);
    expect(await page.getAttribute('.job .job-progress', 'data-finished')).toBe('16');
    expect(await page.isVisible('.job-cancel')).toBe(false);

    // The targets: the final outcome of each, the first line of output, the whole in a title.
    const rows = page.locator('.job-targets tbody tr[data-device]');
    await expect.poll(() => page.locator('.job-targets tbody tr[data-state="succeeded"]').count()).toBe(13);
    expect(await rows.count()).toBe(16);
    const failed = page.locator('.job-targets tr[data-device="dev-07"]');
    expect(await failed.getAttribute('data-state')).toBe('failed');
    expect(await failed.locator('.cell-exit').textContent()).toBe('1');
    expect(await failed.locator('.target-output').textContent()).toBe('dev-07 ran uname -a');
    expect(await failed.locator('.target-output').getAttribute('title')).toBe('dev-07 ran uname -a\nsecond line\nit went wrong');
    expect(await page.locator('.job-targets tr[data-device="dev-00"] .cell-exit').textContent()).toBe('0');
    await page.screenshot({ path: artifact('console-jobs.png'), fullPage: true });

    // The list shows it, with its state and counts.
    await page.click('.jobs-back');
    const listed = page.locator(`.jobs-table tr[data-id="${jobId}"]`);
    await listed.waitFor();
    expect(await listed.getAttribute('data-state')).toBe('done');
    expect(await listed.locator('.job-counts').textContent()).toBe('16/16 · 13 succeeded · 3 failed');

    // A long job (answers after 5 s), two at a time: canceled from the page.
    answerDelay = () => 5000;
    await page.fill('.job-tags', 'floor-1');
    await page.fill('.job-command', 'sleep 5');
    await page.fill('.job-concurrency', '2');
    await page.click('.job-start');
    await page.waitForURL((u) => u.hash.startsWith('#/jobs/') && !u.hash.endsWith(encodeURIComponent(jobId)));
    const longId = decodeURIComponent(new URL(page.url()).hash.slice('#/jobs/'.length));
    await expect.poll(() => count(page, 'sent')).toBe(2);
    await expect.poll(() => count(page, 'queued')).toBe(18);
    await page.screenshot({ path: artifact('console-jobs-running.png'), fullPage: true });
    await page.click('.job-cancel');
    await expect.poll(() => page.getAttribute('.job', 'data-state')).toBe('canceled');
    await expect.poll(() => count(page, 'canceled')).toBe(18);
    await expect.poll(() => page.locator('.job-targets tbody tr[data-state="canceled"]').count()).toBe(18);
    expect(await page.isVisible('.job-cancel')).toBe(false);
    expect(hub.jobs.get(longId)?.state).toBe('canceled');
    await page.screenshot({ path: artifact('console-jobs-canceled.png'), fullPage: true });

    // A viewer sees the jobs, but neither the form nor Cancel.
    await page.click('#logout');
    await page.waitForURL((u) => u.pathname === '/login');
    await logIn(page, url, 'vera', 'vera-password');
    expect(await page.isVisible('#jobs-link')).toBe(true);
    expect(await page.isVisible('#views')).toBe(false);
    await page.locator(`.jobs-table tr[data-id="${jobId}"]`).waitFor();
    expect(await page.locator('.jobs-table tr[data-id]').count()).toBe(2);
    expect(await page.locator('.job-form').count()).toBe(0);
    expect(await page.textContent('.read-only-note')).toContain('Viewers watch jobs');
    await page.click(`.jobs-table tr[data-id="${jobId}"] .job-link`);
    await expect.poll(() => page.getAttribute('.job', 'data-state')).toBe('done');
    expect(await count(page, 'succeeded')).toBe(13);
    await expect.poll(() => page.locator('.job-targets tbody tr[data-device]').count()).toBe(16);
    expect(await page.isVisible('.job-cancel')).toBe(false);
    await page.screenshot({ path: artifact('console-jobs-viewer.png'), fullPage: true });
  }, 40_000);

  it('starts a staged rollout from the form: a canary that aborts a failing job with its reason; pause and resume a paced one', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    answerDelay = () => 50;
    const ids = Array.from({ length: 12 }, (_, i) => `dev-${String(i).padStart(2, '0')}`);
    await Promise.all(ids.map((id) => startDevice(hub, id, ['floor-1'])));
    await waitFor(() => ids.every((id) => hub.device(id)?.online), { what: '12 devices online' });
    const page = await openPage();
    await logIn(page, hub.urls.http, 'admin', hub.initialAdminPassword!);

    // The canary is dev-03 (the first listed), which fails: the other devices are never touched.
    await page.fill('.job-devices', ['dev-03', ...ids.filter((id) => id !== 'dev-03')].join(', '));
    await page.fill('.job-command', 'apt-get install broken');
    await page.click('.job-staging summary');
    await page.fill('.job-canary', '1');
    await page.click('.job-start');
    await page.waitForURL((u) => u.hash.startsWith('#/jobs/'));
    await expect.poll(() => page.getAttribute('.job', 'data-state')).toBe('aborted');
    await expect.poll(() => page.textContent('.job-reason')).toBe('Aborted: canary: 1 of 1 canary targets failed or timed out');
    await expect.poll(() => count(page, 'canceled')).toBe(11);
    expect(await count(page, 'failed')).toBe(1);
    expect(await page.textContent('.job-facts')).toContain('canary of 1');
    await page.screenshot({ path: artifact('console-jobs-aborted.png'), fullPage: true });

    // Paced at 60 a minute: paused from the page, nothing more is sent, then resumed to the end.
    await page.click('.jobs-back');
    await page.fill('.job-tags', 'floor-1');
    await page.fill('.job-command', 'true');
    await page.click('.job-staging summary');
    await page.fill('.job-rate', '60');
    await page.fill('.job-abort-above', '50');
    await page.fill('.job-abort-after', '5');
    await page.click('.job-start');
    await page.waitForURL((u) => u.hash.startsWith('#/jobs/'));
    const pacedId = decodeURIComponent(new URL(page.url()).hash.slice('#/jobs/'.length));
    await expect.poll(() => count(page, 'succeeded'), { timeout: 10_000 }).toBeGreaterThanOrEqual(2);
    expect(await page.textContent('.job-facts')).toMatch(/60\/min \(now 60\/min\) · abort above 50% failed or timed out of 5\+ finished/);
    await page.click('.job-pause');
    await expect.poll(() => page.getAttribute('.job', 'data-state')).toBe('paused');
    expect(await page.isVisible('.job-resume')).toBe(true);
    expect(await page.isVisible('.job-pause')).toBe(false);
    const finishedOf = (c: { succeeded: number; failed: number }) => c.succeeded + c.failed;
    const held = hub.jobs.get(pacedId)!.counts;
    await new Promise((r) => setTimeout(r, 2000));
    // What was in flight finished; nothing else was sent.
    expect(finishedOf(hub.jobs.get(pacedId)!.counts)).toBe(finishedOf(held) + held.sent);
    expect(hub.jobs.get(pacedId)!.counts.sent).toBe(0);
    await page.screenshot({ path: artifact('console-jobs-paused.png'), fullPage: true });
    await page.click('.job-resume');
    await expect.poll(() => page.getAttribute('.job', 'data-state')).toBe('running');
    await expect.poll(() => finishedOf(hub.jobs.get(pacedId)!.counts), { timeout: 5000 }).toBeGreaterThan(finishedOf(held) + held.sent);
    await page.click('.job-cancel');
    await expect.poll(() => page.getAttribute('.job', 'data-state')).toBe('canceled');

    // A schedule from the same form: every night at 03:00 in Berlin, inside a 02:00–05:00 window.
    await page.click('.jobs-back');
    await page.fill('.job-tags', 'floor-1');
    await page.fill('.job-command', 'apt-get update');
    await page.click('.job-when summary');
    await page.fill('.job-cron', '0 3 * * *');
    await page.fill('.job-tz', 'Europe/Berlin');
    await page.fill('.job-window-start', '02:00');
    await page.fill('.job-window-end', '05:00');
    await page.click('.job-start');
    await expect.poll(() => page.textContent('.notice')).toMatch(/^Scheduled: next run /);
    const scheduled = page.locator('.schedules-table tr[data-id]');
    await expect.poll(() => scheduled.count()).toBe(1);
    expect(await scheduled.locator('.cell-when').textContent()).toBe('0 3 * * * (Europe/Berlin)');
    const [schedule] = hub.schedules.list();
    expect(schedule).toMatchObject({ cron: '0 3 * * *', tz: 'Europe/Berlin', job: { target: { tags: ['floor-1'] }, cmd_str: 'apt-get update', window: { start: '02:00', end: '05:00', tz: 'Europe/Berlin' } } });
    await page.screenshot({ path: artifact('console-jobs-schedules.png'), fullPage: true });
    await scheduled.locator('.schedule-toggle').click();
    await expect.poll(() => scheduled.getAttribute('data-enabled')).toBe('false');
    await scheduled.locator('.schedule-remove').click();
    await expect.poll(() => page.locator('.schedules-table tr[data-id]').count()).toBe(0);
    expect(hub.schedules.list()).toEqual([]);
  }, 60_000);
});
