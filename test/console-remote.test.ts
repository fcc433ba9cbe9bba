/**
 * Remote access in the web console, in headless Chromium against a real hub (access control
 * on) and a real hypha agent on this machine: terminals (typing, Ctrl-C, following the
 * window's size, two at once, how a shell ended), uploading and downloading a file, replaying
 * a terminal recording, the device's web page link; a viewer sees none of these controls.
 * Screenshots land in test-artifacts/ (console-terminal.png is the README's).
 */
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { Locator, Page } from 'playwright-core';
import { describe, expect, it } from 'vitest';
import type { Hub } from '../src/index.js';
import { artifact, openPage } from './browser.js';
import { cleanup, startAgents, startTestHub, tempDir } from './helpers.js';

async function logInToConsole(page: Page, name: string, password: string): Promise<void> {
  await page.fill('#name', name);
  await page.fill('#password', password);
  await page.click('#login button[type="submit"]');
  await page.waitForURL((url) => url.pathname === '/');
  await page.waitForSelector('.connection[data-state="connected"]');
}

async function startRegisteredAgent(hub: Hub, id: string) {
  return startAgents(hub, [id], hub.urls.mqtt, ['--token', hub.stores.devices.add(id)]);
}

/** The text on a terminal's screen, one line per row, as xterm.js draws it in the page. */
async function screenText(scope: Locator): Promise<string> {
  const rows = await scope.locator('.xterm-rows > div').allTextContents();
  return rows.map((row) => row.replace(/\u00a0/g, ' ').trimEnd()).join('\n');
}

/** Types a line into the terminal shown (it has the keyboard focus). */
async function typeLine(page: Page, text: string): Promise<void> {
  await page.keyboard.type(text);
  await page.keyboard.press('Enter');
}

const current = (page: Page) => page.locator('.shell-session[data-current]');

/** Waits until the shell shown has printed its prompt (a line ending in $ or #). */
async function waitForPrompt(page: Page): Promise<void> {
  await expect.poll(() => screenText(current(page)), { timeout: 10_000 }).toMatch(/[$#] ?$/m);
}

describe('web console: remote access', () => {
  it('operator: two terminals that follow the window, Ctrl-C, upload and download, a recording replayed; a viewer sees none of it', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    await startRegisteredAgent(hub, 'pi-remote');
    hub.stores.users.add('otto', 'operator', 'otto-password');
    hub.stores.users.add('vera', 'viewer', 'vera-password');
    const page = await openPage();
    const url = hub.urls.http;
    // xterm.js runs under the console's Content-Security-Policy without being refused anything.
    const refusals: string[] = [];
    page.on('console', (message) => {
      if (/Content.Security.Policy/i.test(message.text())) refusals.push(message.text());
    });

    // A link to a device's terminal survives the detour through the login page.
    await page.goto(`${url}/#/devices/pi-remote/terminal`);
    await page.waitForURL((u) => u.pathname === '/login');
    await logInToConsole(page, 'otto', 'otto-password');
    expect(page.url()).toBe(`${url}/#/devices/pi-remote/terminal`);
    expect(await page.isVisible('#recordings-link')).toBe(true);

    // The first visit to the tab opens a shell, sized to the terminal's box.
    await page.locator('.shell-session[data-current][data-state="connected"]').waitFor({ timeout: 15_000 });
    expect(await current(page).locator('.terminal-status').textContent()).toBe('connected');
    await waitForPrompt(page);
    await typeLine(page, 'echo $((6*7))');
    await expect.poll(() => screenText(current(page)), { timeout: 10_000 }).toMatch(/^42$/m);

    // Ctrl-C reaches the program in the terminal (it is a PTY): sleep is interrupted.
    await typeLine(page, 'sleep 30');
    await page.waitForTimeout(300);
    await page.keyboard.press('Control+C');
    await typeLine(page, 'echo after-$((1+1))');
    await expect.poll(() => screenText(current(page)), { timeout: 5000 }).toMatch(/^after-2$/m);

    // A pseudo-terminal; output past the flow-control window (256 KiB) arrives whole, paced by xterm.js.
    await typeLine(page, 'tty -s && echo is-a-tty');
    await expect.poll(() => screenText(current(page))).toMatch(/^is-a-tty$/m);
    await typeLine(page, 'seq 1 60000; echo flood-done');
    await expect.poll(() => screenText(current(page)), { timeout: 30_000 }).toMatch(/^60000\nflood-done$/m);
    // A full-screen program draws the whole screen, reads single keys, and quits on q.
    await typeLine(page, 'top -d 1');
    await expect.poll(() => screenText(current(page)), { timeout: 10_000 }).toMatch(/load average/);
    await page.keyboard.press('q');
    await expect.poll(async () => (await screenText(current(page))).trimEnd()).toMatch(/[$#]$/);
    await typeLine(page, 'clear');
    await expect.poll(() => screenText(current(page))).not.toMatch(/flood-done/);
    await waitForPrompt(page);

    // The terminal follows the window; the shell learns its new size.
    await typeLine(page, 'echo wide=$(tput cols)');
    await expect.poll(() => screenText(current(page))).toMatch(/^wide=\d+$/m);
    const wide = Number(/^wide=(\d+)$/m.exec(await screenText(current(page)))![1]);
    const screenWidth = () => current(page).locator('.xterm-screen').evaluate((node) => node.clientWidth);
    const before = await screenWidth();
    await page.setViewportSize({ width: 960, height: 700 });
    await expect.poll(screenWidth).toBeLessThan(before);
    await typeLine(page, 'echo narrow=$(tput cols)');
    await expect.poll(() => screenText(current(page))).toMatch(/^narrow=\d+$/m);
    const narrow = Number(/^narrow=(\d+)$/m.exec(await screenText(current(page)))![1]);
    expect(narrow).toBeLessThan(wide);
    await page.setViewportSize({ width: 1280, height: 760 });

    // A second terminal at once, in its own tab; the first one goes on.
    await page.click('.new-terminal');
    await expect.poll(() => page.locator('.terminal-tab').count()).toBe(2);
    await page.locator('.shell-session[data-current][data-state="connected"]').waitFor({ timeout: 15_000 });
    await waitForPrompt(page);
    await typeLine(page, 'echo second-$((2+3)); uname -sm');
    await expect.poll(() => screenText(current(page))).toMatch(/^second-5$/m);
    await typeLine(page, 'ls -F --color=always /usr');
    await expect.poll(() => screenText(current(page))).toMatch(/\bbin\//);
    expect(await page.locator('.shell-session[data-state="connected"]').count()).toBe(2);
    // The README's docs/console-terminal.png is this one.
    await page.screenshot({ path: artifact('console-terminal.png') });

    // The shell's end shows how it ended.
    await typeLine(page, 'exit 3');
    await expect.poll(() => current(page).locator('.terminal-status').textContent()).toBe('exited with 3');
    expect(await current(page).getAttribute('data-state')).toBe('ended');
    await page.locator('.terminal-tab').first().click();
    expect(await screenText(current(page))).toMatch(/^narrow=\d+$/m);
    // Close ends the shell and takes the terminal away.
    await current(page).locator('.terminal-close').click();
    await expect.poll(() => page.locator('.terminal-tab').count()).toBe(1);
    await current(page).locator('.terminal-close').click();
    await expect.poll(() => page.locator('.terminal-tab').count()).toBe(0);

    // Files: upload into a folder of this machine (the agent runs here), download it back.
    const dir = tempDir('rhizo-files-');
    const content = 'hello from the console\n';
    await page.click('.device-tab-link[data-tab="files"]');
    expect(page.url()).toBe(`${url}/#/devices/pi-remote/files`);
    await page.setInputFiles('.upload-file', { name: 'hello.txt', mimeType: 'text/plain', buffer: Buffer.from(content) });
    await page.fill('.upload-path', `${dir}/`);
    await page.click('.upload-send');
    await page.locator('.upload-result .transfer-done').waitFor({ timeout: 10_000 });
    expect(await page.textContent('.upload-result .transfer-size')).toBe(`${content.length} bytes`);
    expect(await page.textContent('.upload-result .transfer-sha256')).toMatch(/^[0-9a-f]{64}$/);
    expect(readFileSync(join(dir, 'hello.txt'), 'utf8')).toBe(content);
    expect(await page.evaluate(() => (document.querySelector('.upload-progress') as HTMLProgressElement).position)).toBe(1);

    await page.fill('.download-path', join(dir, 'hello.txt'));
    await page.click('.download-send');
    await page.locator('.download-link').waitFor({ timeout: 10_000 });
    expect(await page.getAttribute('.download-link', 'download')).toBe('hello.txt');
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('.download-link')]);
    expect(download.suggestedFilename()).toBe('hello.txt');
    expect(readFileSync((await download.path())!, 'utf8')).toBe(content);
    await page.screenshot({ path: artifact('console-files.png') });

    // A failure shows the code and the message.
    await page.fill('.download-path', join(dir, 'missing.txt'));
    await page.click('.download-send');
    await expect.poll(() => page.locator('.download-result .error-code').textContent(), { timeout: 10_000 }).toBe('NOT_FOUND');

    // The device's web page, through the hub, in a new tab: a local HTTP service of the agent's machine.
    expect(await page.getAttribute('.web-page-open', 'href')).toBe('/api/devices/pi-remote/http/80/');
    expect(await page.getAttribute('.web-page-open', 'target')).toBe('_blank');
    const web = createServer((_req, res) => res.writeHead(200, { 'content-type': 'text/html' }).end('<!doctype html><title>device</title><p id="hello">served by the device</p>'));
    await new Promise<void>((resolve) => web.listen(0, '127.0.0.1', resolve));
    cleanup(() => new Promise((resolve) => web.close(resolve)));
    const webPort = (web.address() as AddressInfo).port;
    await page.fill('.web-page-port', String(webPort));
    expect(await page.getAttribute('.web-page-open', 'href')).toBe(`/api/devices/pi-remote/http/${webPort}/`);
    const [tab] = await Promise.all([page.context().waitForEvent('page'), page.click('.web-page-open')]);
    await tab.waitForLoadState();
    expect(tab.url()).toBe(`${url}/api/devices/pi-remote/http/${webPort}/`);
    expect(await tab.textContent('#hello')).toBe('served by the device');
    await tab.close();

    // Recordings: the device's tab lists both sessions; the player replays one.
    await page.click('.device-tab-link[data-tab="recordings"]');
    await expect.poll(() => page.locator('.recordings-table tbody tr[data-tunnel]').count(), { timeout: 10_000 }).toBe(2);
    expect(await page.locator('.recordings-table tbody tr[data-tunnel] .cell-actor').allTextContents()).toEqual(['otto', 'otto']);
    await page.locator('.recordings-table .play-recording').first().click();
    await page.waitForURL((u) => u.hash.startsWith('#/recordings/'));
    await page.locator('.recording-player[data-state]').waitFor();
    await page.selectOption('.player-speed', '4');
    await expect.poll(() => screenText(page.locator('.player-screen')), { timeout: 30_000 }).toMatch(/^(narrow=\d+|second-5)$/m);
    await page.locator('.recording-player[data-state="ended"]').waitFor({ timeout: 30_000 });
    expect(await page.textContent('.player-play')).toBe('Replay');
    await page.screenshot({ path: artifact('console-recording.png') });

    // Everything the operator did from the browser is in the audit trail, in the operator's name.
    const opened = hub.stores.audit.query({ device: 'pi-remote', action: 'tunnel.open', limit: 100 }).filter((entry) => entry.actor === 'otto');
    expect(new Set(opened.map((entry) => (entry.detail as { kind: string }).kind))).toEqual(new Set(['shell', 'file_put', 'file_get', 'tcp']));

    // The admin's audit trail links a terminal session's end to its recording.
    await page.click('#logout');
    await page.waitForURL((u) => u.pathname === '/login');
    await logInToConsole(page, 'admin', hub.initialAdminPassword!);
    await page.evaluate(() => (location.hash = '#/admin/audit?device=pi-remote'));
    await expect.poll(() => page.locator('tr[data-action="tunnel.close"] .audit-recording').count(), { timeout: 10_000 }).toBe(2);
    await page.locator('tr[data-action="tunnel.close"] .audit-recording').first().click();
    await page.waitForURL((u) => u.hash.startsWith('#/recordings/'));
    await page.locator('.recording-player[data-state]').waitFor();

    // A viewer has the commands and the device's health only: no terminal, no files, no web page, no recordings.
    await page.click('#logout');
    await page.waitForURL((u) => u.pathname === '/login');
    await logInToConsole(page, 'vera', 'vera-password');
    await page.evaluate(() => (location.hash = '#/devices/pi-remote/terminal'));
    await page.locator('.device-title').waitFor();
    await page.locator('.command-input').waitFor();
    expect(await page.locator('.device-tab-link').evaluateAll((links) => links.map((link) => (link as HTMLElement).dataset.tab))).toEqual(['commands', 'health', 'state']);
    expect(await page.locator('.terminal, .terminals, .files, .web-page').count()).toBe(0);
    expect(await page.isVisible('#recordings-link')).toBe(false);
    expect(await page.evaluate(() => fetch('/api/recordings').then((r) => r.status))).toBe(403);
    expect(refusals).toEqual([]);
  }, 180_000);
});
