/**
 * The web console with access control on, in headless Chromium against a real hub and real
 * hypha agents: logging in and out, what each role may do, the admin's device panel (tokens
 * shown once, rotation, removal) and the audit view. Screenshots land in test-artifacts/.
 */
import type { Locator, Page } from 'playwright-core';
import { describe, expect, it } from 'vitest';
import { startHub, type Hub } from '../src/index.js';
import { artifact, openPage } from './browser.js';
import { cleanup, freePort, startAgents, startTestHub, tempDir } from './helpers.js';

/** Fills in the login page and submits it. */
async function logIn(page: Page, name: string, password: string): Promise<void> {
  await page.fill('#name', name);
  await page.fill('#password', password);
  await page.click('#login button[type="submit"]');
}

async function logInToConsole(page: Page, name: string, password: string): Promise<void> {
  await logIn(page, name, password);
  await page.waitForURL((url) => url.pathname === '/');
  await page.waitForSelector('.connection[data-state="connected"]');
}

async function run(page: Page, command: string): Promise<Locator> {
  await page.fill('.command-input', command);
  await page.press('.command-input', 'Enter');
  const card = page.locator('.result').last();
  await card.locator('.result-foot, .result-status.error').first().waitFor();
  return card;
}

/** Registers devices in the hub's database and starts a real hypha with each one's token. */
async function startRegisteredAgents(hub: Hub, ids: string[]) {
  return Promise.all(ids.map((id) => startAgents(hub, [id], hub.urls.mqtt, ['--token', hub.stores.devices.add(id)])));
}

async function sessionStatus(url: string, cookie: string): Promise<number> {
  return (await fetch(`${url}/api/session`, { headers: { cookie } })).status;
}

describe('web console with access control', () => {
  it('admin: logs in, runs commands, adds, rotates and removes a device, reads the audit trail, logs out', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    const password = hub.initialAdminPassword!;
    expect(password).toBeTruthy();
    await startRegisteredAgents(hub, ['pi-kitchen-01', 'gw-garage']);
    const page = await openPage();
    const url = hub.urls.http;

    // No session: the console sends the browser to the login page.
    await page.goto(`${url}/`);
    await page.waitForURL((u) => u.pathname === '/login');
    await logIn(page, 'admin', 'not-the-password');
    await expect.poll(() => page.textContent('#problem')).toBe('wrong name or password');
    await page.screenshot({ path: artifact('console-login.png') });

    await logInToConsole(page, 'admin', password);
    await expect.poll(() => page.locator('.device-row.online').count()).toBe(2);
    expect(await page.textContent('#who .who-name')).toBe('admin');
    expect(await page.textContent('#who .role-badge')).toBe('admin');
    expect(await page.isVisible('#views')).toBe(true);
    await page.click('.device-row[data-id="pi-kitchen-01"]');
    const hi = await run(page, 'echo hi');
    expect(await hi.locator('.output.stdout pre').textContent()).toBe('hi');
    const longCommand = `echo ${'a-rather-long-argument '.repeat(8).trim()}`;
    await run(page, longCommand);

    // The device panel: a bad id is refused with its code and message.
    await page.click('#views a[data-view="admin-devices"]');
    expect(page.url()).toContain('#/admin/devices');
    const table = page.locator('.devices-table');
    await expect.poll(() => table.locator('tbody tr[data-id]').count()).toBe(2);
    await page.fill('.new-device-id', 'bad id!');
    await page.click('.add-device button[type="submit"]');
    await expect.poll(() => page.textContent('.problem')).toMatch(/^BAD_REQUEST device id /);

    // Adding a device shows its token once, with the hypha command line that uses it.
    await page.fill('.new-device-id', 'pi-new');
    await page.fill('.new-device-tags', 'lab, floor-1');
    await page.click('.add-device button[type="submit"]');
    await page.locator('.secret').waitFor();
    expect(await page.locator('.problem').count()).toBe(0);
    const token = (await page.textContent('.secret .token'))!;
    expect(token).toMatch(/^rz_[A-Za-z0-9_-]{43}$/);
    // The port is the hub's when it tells it, else the standard 1883.
    const mqttPort = ((await (await fetch(`${url}/api/hub`)).json()) as { mqttPort?: number }).mqttPort ?? 1883;
    expect(await page.textContent('.secret .hypha-command')).toBe(`hypha --url mqtt://127.0.0.1:${mqttPort} --id pi-new --token ${token}`);
    await page.context().grantPermissions(['clipboard-read', 'clipboard-write'], { origin: url });
    const copyToken = page.locator('.secret-line', { has: page.locator('.token') }).locator('.copy');
    await copyToken.click();
    await expect.poll(() => copyToken.textContent()).toBe('Copied');
    expect(await page.evaluate(() => navigator.clipboard.readText())).toBe(token);
    expect(hub.stores.devices.get('pi-new')?.tags).toEqual(['lab', 'floor-1']);

    // A real hypha with that token comes online, in the panel and in the console's list.
    const [first] = await startAgents(hub, ['pi-new'], hub.urls.mqtt, ['--token', token]);
    const newRow = table.locator('tr[data-id="pi-new"]');
    await table.locator('tr[data-id="pi-new"].online').waitFor();
    await page.screenshot({ path: artifact('console-admin-devices.png') });

    // Shown once: Done (or leaving the panel) forgets it; adding the same id again is refused.
    await page.click('.secret-done');
    expect(await page.locator('.secret').isHidden()).toBe(true);
    await page.fill('.new-device-id', 'pi-new');
    await page.click('.add-device button[type="submit"]');
    await expect.poll(() => page.textContent('.problem')).toMatch(/^BAD_REQUEST device pi-new exists already/);

    // Rotating asks first, then shows the new token once; the agent with the old one drops.
    await newRow.locator('button[data-action="rotate"]').click();
    expect(await newRow.locator('.confirm-text').textContent()).toContain('New token for pi-new?');
    await newRow.locator('button[data-action="confirm-rotate"]').click();
    await expect.poll(() => page.textContent('.secret h3')).toBe('New token for pi-new');
    const rotated = (await page.textContent('.secret .token'))!;
    expect(rotated).not.toBe(token);
    await table.locator('tr[data-id="pi-new"].offline').waitFor({ timeout: 5000 });
    first!.child.kill('SIGKILL');
    await startAgents(hub, ['pi-new'], hub.urls.mqtt, ['--token', rotated]);
    await table.locator('tr[data-id="pi-new"].online').waitFor();

    // Removing asks first; Cancel keeps the device, then it goes from the panel and the list.
    await newRow.locator('button[data-action="remove"]').click();
    await newRow.locator('button[data-action="cancel"]').click();
    await newRow.locator('button[data-action="remove"]').click();
    await newRow.locator('button[data-action="confirm-remove"]').click();
    await newRow.waitFor({ state: 'detached' });
    expect(await page.textContent('.notice')).toContain('Removed pi-new');
    expect(hub.device('pi-new')).toBeUndefined();
    await page.click('#views a[data-view="console"]');
    expect(page.url()).toContain('#/devices/pi-kitchen-01');
    await expect.poll(() => page.locator('.device-row').count()).toBe(2);
    expect(await page.textContent('#counts')).toContain('2 online / 2 devices');

    // The audit view: the commands (who, where, what, how it ended) and the logins, newest first.
    await page.click('#views a[data-view="audit"]');
    const rows = page.locator('.audit-table tbody tr[data-seq]');
    await rows.first().waitFor();
    const command = rows.filter({ has: page.locator('.command-text', { hasText: /^echo hi$/ }) });
    expect(await command.locator('.actor-name').textContent()).toBe('admin');
    expect(await command.locator('.cell-remote').textContent()).toBe('127.0.0.1');
    expect(await command.locator('.cell-action').textContent()).toBe('command');
    expect(await command.locator('.cell-device').textContent()).toBe('pi-kitchen-01');
    expect(await command.locator('.cell-order').textContent()).toBe('exec_bash');
    expect(await command.locator('.cell-outcome').getAttribute('class')).toBe('cell-outcome outcome-ok');
    expect(await command.locator('.cell-exit').textContent()).toBe('0');
    const logins = rows.filter({ has: page.locator('.cell-action', { hasText: /^login$/ }) });
    expect(await logins.locator('.cell-outcome').allTextContents()).toEqual(['ok', 'FORBIDDEN']);
    expect(await logins.last().locator('.cell-outcome').getAttribute('class')).toBe('cell-outcome outcome-error');
    const seqs = await rows.evaluateAll((trs) => trs.map((tr) => Number((tr as HTMLElement).dataset.seq)));
    expect(seqs).toEqual([...seqs].sort((a, b) => b - a));
    // Newest first: remove, rotate, the duplicate add, the add, the add with a bad id.
    const changes = rows.filter({ has: page.locator('.cell-action', { hasText: /^device\./ }) });
    expect(await changes.locator('.cell-action').allTextContents()).toEqual(['device.remove', 'device.rotate', 'device.add', 'device.add', 'device.add']);
    expect(await changes.locator('.cell-outcome').allTextContents()).toEqual(['ok', 'ok', 'BAD_REQUEST', 'ok', 'BAD_REQUEST']);
    // A long command line is cut in its cell and whole in the title.
    const long = page.locator('.command-text', { hasText: 'a-rather-long-argument' });
    expect(await long.getAttribute('title')).toBe(longCommand);
    expect(await long.evaluate((code) => code.scrollWidth > code.clientWidth)).toBe(true);
    await page.screenshot({ path: artifact('console-audit.png') });

    // Filters: by device, since a moment, and a limit.
    await page.fill('.audit-device', 'pi-kitchen-01');
    await page.click('.audit-filters button[type="submit"]');
    await expect.poll(async () => new Set(await rows.locator('.cell-device').allTextContents())).toEqual(new Set(['pi-kitchen-01']));
    expect(await rows.count()).toBe(2);
    await page.fill('.audit-device', '');
    await page.fill('.audit-limit', '1');
    await page.click('.audit-filters button[type="submit"]');
    await expect.poll(() => rows.count()).toBe(1);
    await page.fill('.audit-since', '2999-01-01T00:00');
    await page.click('.audit-filters button[type="submit"]');
    await page.locator('.audit-table .table-empty').waitFor();

    // Log out: back to the login page, and the session is over on the hub too.
    const cookie = (await page.context().cookies(url)).map((c) => `${c.name}=${c.value}`).join('; ');
    expect(await sessionStatus(url, cookie)).toBe(200);
    await page.click('#logout');
    await page.waitForURL((u) => u.pathname === '/login');
    expect(await sessionStatus(url, cookie)).toBe(401);
    expect(await page.evaluate(() => fetch('/api/session').then((r) => r.status))).toBe(401);
  });

  it('viewer sees devices but cannot run commands (a forced Request is answered FORBIDDEN); an operator can', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    await startRegisteredAgents(hub, ['pi-view']);
    hub.stores.users.add('vera', 'viewer', 'vera-password');
    hub.stores.users.add('otto', 'operator', 'otto-password');
    const page = await openPage();
    const url = hub.urls.http;

    // A link to a device survives the detour through the login page.
    await page.goto(`${url}/#/devices/pi-view`);
    await page.waitForURL((u) => u.pathname === '/login');
    await logInToConsole(page, 'vera', 'vera-password');
    expect(page.url()).toBe(`${url}/#/devices/pi-view`);
    await page.locator('.device-row.online[data-id="pi-view"]').waitFor();
    expect(await page.textContent('#who .who-name')).toBe('vera');
    expect(await page.textContent('#who .role-badge')).toBe('viewer');
    expect(await page.isVisible('#views')).toBe(false);
    expect(await page.isDisabled('.command-input')).toBe(true);
    expect(await page.isDisabled('.command-form .send')).toBe(true);
    expect(await page.isDisabled('.order')).toBe(true);
    expect(await page.textContent('.read-only-note')).toContain('Viewers cannot run commands');
    await page.screenshot({ path: artifact('console-viewer.png') });

    // Forced anyway, the Request reaches the hub, which refuses it.
    await page.evaluate(() => document.querySelectorAll('.command-form [disabled]').forEach((node) => node.removeAttribute('disabled')));
    const refused = await run(page, 'echo sneaky');
    expect(await refused.locator('.error-code').textContent()).toBe('FORBIDDEN');
    hub.stores.audit.flush();
    expect(hub.stores.audit.query({ device: 'pi-view' })[0]).toMatchObject({ actor: 'vera', cmdStr: 'echo sneaky', outcome: 'FORBIDDEN' });

    // The admin views are for admins, in the page and on the hub.
    await page.evaluate(() => (location.hash = '#/admin/audit'));
    await page.locator('.admins-only').waitFor();
    expect(await page.evaluate(() => fetch('/api/audit').then((r) => r.status))).toBe(403);

    // An operator runs commands, and sees no admin views either.
    await page.click('#logout');
    await page.waitForURL((u) => u.pathname === '/login');
    await logInToConsole(page, 'otto', 'otto-password');
    await page.click('.device-row[data-id="pi-view"]');
    expect(await page.isEnabled('.command-input')).toBe(true);
    expect(await page.locator('.read-only-note').count()).toBe(0);
    expect(await page.isVisible('#views')).toBe(false);
    const ok = await run(page, 'echo operated');
    expect(await ok.locator('.output.stdout pre').textContent()).toBe('operated');
  });

  it('reconnects after a hub restart with a fresh MQTT token (the old one died with the hub)', async () => {
    const [mqttPort, httpPort] = [await freePort(), await freePort()];
    const options = { host: '127.0.0.1', mqttPort, httpPort, dataDir: tempDir(), logLevel: 'silent' as const, allowAnonymous: false };
    let hub = await startHub(options);
    cleanup(() => hub.close());
    await startRegisteredAgents(hub, ['pi-restart']);
    const page = await openPage();
    await page.goto(`${hub.urls.http}/#/devices/pi-restart`);
    await page.waitForURL((u) => u.pathname === '/login');
    await logInToConsole(page, 'admin', hub.initialAdminPassword!);

    await hub.close();
    await page.locator('.connection[data-state="reconnecting"]').waitFor({ timeout: 5000 });
    hub = await startHub(options);
    // The session lives in the database; the console's MQTT token lived in the old hub's memory.
    await page.locator('.connection[data-state="connected"]').waitFor({ timeout: 15_000 });
    await page.locator('.device-row.online[data-id="pi-restart"]').waitFor({ timeout: 15_000 });
    const back = await run(page, 'echo back');
    expect(await back.locator('.output.stdout pre').textContent()).toBe('back');
  });
});
