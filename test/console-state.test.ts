/**
 * The console's State tab in headless Chromium against a real hub and a real hypha applying
 * desired state with a real command: an operator sets a key, the device applies and reports it,
 * the tab shows it in step; removing it; a bad value refused with its code; a viewer only reads.
 */
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Page } from 'playwright-core';
import { describe, expect, it } from 'vitest';
import { artifact, openPage } from './browser.js';
import { startAgents, startTestHub, tempDir } from './helpers.js';

async function logIn(page: Page, url: string, name: string, password: string, hash: string): Promise<void> {
  await page.goto(`${url}/${hash}`);
  await page.waitForURL((u) => u.pathname === '/login');
  await page.fill('#name', name);
  await page.fill('#password', password);
  await page.click('#login button[type="submit"]');
  await page.waitForURL((u) => u.pathname === '/');
  await page.waitForSelector('.connection[data-state="connected"]');
}

describe('web console: desired state', () => {
  it('sets a desired value that the device applies, shows it in step, removes it; a viewer only reads', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    const script = join(tempDir('rhizo-state-ui-'), 'apply.sh');
    writeFileSync(script, `#!/bin/sh\nsed -e 's/^{"version":[0-9]*,"state"://' -e 's/}$//'\n`);
    chmodSync(script, 0o755);
    await startAgents(hub, ['pi-state'], hub.urls.mqtt, ['--token', hub.stores.devices.add('pi-state'), '--state-command', script]);
    hub.stores.users.add('vera', 'viewer', 'vera-password');

    const page = await openPage();
    await logIn(page, hub.urls.http, 'admin', hub.initialAdminPassword!, '#/devices/pi-state/state');
    await page.locator('.device-state .state-table').waitFor();
    await expect.poll(() => page.textContent('.state-table tbody')).toContain('No desired or reported state yet.');

    await page.fill('.state-key', 'fw');
    await page.fill('.state-value', '"2.1"');
    await page.click('.state-set');
    const fw = page.locator('.state-table tr[data-key="fw"]');
    await expect.poll(() => fw.getAttribute('data-in-step'), { timeout: 15_000 }).toBe('true');
    expect(await fw.locator('.state-desired').textContent()).toBe('"2.1"');
    expect(await fw.locator('.state-reported').textContent()).toBe('"2.1"');
    expect(await page.textContent('.state-summary')).toMatch(/^desired version 1 \(by admin\) · reported version 1 · in step/);
    await page.fill('.state-key', 'interval');
    await page.fill('.state-value', '30');
    await page.click('.state-set');
    await expect.poll(() => page.locator('.state-table tr[data-key="interval"] .state-reported').textContent(), { timeout: 15_000 }).toBe('30');
    await page.screenshot({ path: artifact('console-state.png'), fullPage: true });

    // A key the hub refuses: the code and the message, nothing changed.
    await page.fill('.state-key', 'bad key!');
    await page.fill('.state-value', '1');
    await page.click('.state-set');
    await expect.poll(() => page.textContent('.device-state .problem')).toMatch(/^BAD_REQUEST/);

    await fw.locator('.state-remove').click();
    await expect.poll(() => page.locator('.state-table tr[data-key="fw"] .state-desired').textContent()).toBe('—');
    expect((await hub.state.get('pi-state')).desired.state).toEqual({ interval: 30 });

    await page.click('#logout');
    await page.waitForURL((u) => u.pathname === '/login');
    await logIn(page, hub.urls.http, 'vera', 'vera-password', '#/devices/pi-state/state');
    await page.locator('.state-table tr[data-key="interval"]').waitFor();
    expect(await page.locator('.state-form, .state-remove').count()).toBe(0);
  }, 60_000);
});
