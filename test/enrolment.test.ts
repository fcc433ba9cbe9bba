/**
 * Enrolment: devices that know the hub's enrolment key ask to join with a token they make
 * themselves, and wait as pending until an admin accepts or rejects them.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { Hub } from '../src/index.js';
import { connectMqtt, HUB_BIN, spawnHypha, startTestHub, tempDir, waitFor } from './helpers.js';

const KEY = 'enrol-key-0123456789';

function cli(hub: Hub, args: string[]) {
  return spawnSync(process.execPath, [HUB_BIN, ...args, '--data-dir', hub.config.dataDir], { encoding: 'utf8', timeout: 15_000 });
}

async function pending(hub: Hub, admin: string): Promise<string[]> {
  const res = await fetch(`${hub.urls.http}/api/enrolments`, { headers: { authorization: `Bearer ${admin}` } });
  return ((await res.json()) as { id: string }[]).map((e) => e.id);
}

describe('enrolment', () => {
  it('lets a device ask to join, wait as pending, and come online once an admin accepts it', async () => {
    const hub = await startTestHub({ allowAnonymous: false, enrollKey: KEY });
    const admin = hub.stores.tokens.add('root', 'admin');
    const tokenFile = join(tempDir(), 'hypha', 'token');

    const asking = spawnHypha(hub.urls.mqtt, 'pi-new', ['--enroll-key', KEY, '--token-file', tokenFile]);
    await waitFor(async () => (await pending(hub, admin)).includes('pi-new'), { what: 'pi-new pending' });
    expect(hub.device('pi-new')).toBeUndefined();
    const token = readFileSync(tokenFile, 'utf8').trim();
    expect(token).toMatch(/^rz_[A-Za-z0-9_-]{43}$/);
    expect(statSync(tokenFile).mode & 0o777).toBe(0o600);
    expect(cli(hub, ['device', 'list']).stdout).toMatch(/pi-new\s+pending/);
    asking.child.kill('SIGTERM');
    await asking.exited;

    expect(cli(hub, ['device', 'accept', 'pi-new']).status).toBe(0);
    expect(await pending(hub, admin)).toEqual([]);
    // The same agent, the same token file: now it is let in.
    spawnHypha(hub.urls.mqtt, 'pi-new', ['--enroll-key', KEY, '--token-file', tokenFile]);
    await waitFor(() => hub.device('pi-new')?.online, { timeoutMs: 15_000, what: 'pi-new online' });
    const res = await fetch(`${hub.urls.http}/api/devices/pi-new/commands`, {
      method: 'POST',
      headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
      body: JSON.stringify({ order: 'exec_bash', cmd_str: 'echo joined' }),
    });
    expect(await res.json()).toMatchObject({ status: 'ok', result: 'joined' });
    // Another machine that knows the key cannot take over the id with a token of its own.
    await expect(connectMqtt(hub.urls.mqtt, { clientId: 'pi-new', username: 'pi-new', password: `${KEY}.rz_someone-elses-token-0000` })).rejects.toMatchObject({ code: 4 });
  });

  it('refuses a wrong key, and lets an admin reject a device that asks', async () => {
    const hub = await startTestHub({ allowAnonymous: false, enrollKey: KEY });
    const admin = hub.stores.tokens.add('root', 'admin');
    await expect(connectMqtt(hub.urls.mqtt, { clientId: 'pi-x', username: 'pi-x', password: 'wrong-key-000000000.rz_token-of-pi-x-00000' })).rejects.toMatchObject({ code: 4 });
    expect(await pending(hub, admin)).toEqual([]);

    await expect(connectMqtt(hub.urls.mqtt, { clientId: 'pi-x', username: 'pi-x', password: `${KEY}.rz_token-of-pi-x-00000` })).rejects.toMatchObject({ code: 5 });
    expect(await pending(hub, admin)).toEqual(['pi-x']);
    const rejected = await fetch(`${hub.urls.http}/api/devices/pi-x/reject`, { method: 'POST', headers: { authorization: `Bearer ${admin}` } });
    expect(rejected.status).toBe(200);
    expect(await pending(hub, admin)).toEqual([]);
    const audit = (await (await fetch(`${hub.urls.http}/api/audit?device=pi-x`, { headers: { authorization: `Bearer ${admin}` } })).json()) as { action: string }[];
    expect(audit.map((e) => e.action)).toContain('device.reject');
  });

  it('is off without --enroll-key, and a short key is refused at start', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    await expect(connectMqtt(hub.urls.mqtt, { clientId: 'pi-y', username: 'pi-y', password: `${KEY}.rz_token-of-pi-y-00000` })).rejects.toMatchObject({ code: 4 });
    const short = spawnSync(process.execPath, [HUB_BIN, '--enroll-key', 'short', '--data-dir', tempDir()], { encoding: 'utf8' });
    expect(short.status).toBe(2);
    expect(short.stderr).toMatch(/^rhizosphere: --enroll-key: "short" must be at least 16 characters/);
    const hyphaAlone = spawnSync(process.execPath, [join(HUB_BIN, '..', 'hypha.js'), '--url', 'mqtt://127.0.0.1:1', '--id', 'x', '--enroll-key', KEY], { encoding: 'utf8' });
    expect(hyphaAlone.status).toBe(2);
    expect(hyphaAlone.stderr).toMatch(/--enroll-key: needs --token-file FILE/);
  });
});

describe('enrolment in the console', () => {
  it('shows a device waiting to join to an admin, who accepts it, and it comes online', async () => {
    const { openPage, artifact } = await import('./browser.js');
    const { startAgent } = await import('../src/hypha/agent.js');
    const hub = await startTestHub({ allowAnonymous: false, enrollKey: KEY });
    // A real agent that asks to join and retries quickly (the CLI's backoff would wait longer).
    const agent = await startAgent({ url: hub.urls.mqtt, id: 'pi-web', token: `${KEY}.rz_token-made-by-pi-web-0000`, logLevel: 'error', backoffBaseMs: 100, backoffCapMs: 300 });
    const { cleanup } = await import('./helpers.js');
    cleanup(() => agent.stop());

    const page = await openPage();
    await page.goto(`${hub.urls.http}/`);
    await page.waitForURL(/\/login/);
    await page.fill('#name', 'admin');
    await page.fill('#password', hub.initialAdminPassword!);
    await page.click('button[type=submit]');
    await page.locator('.connection[data-state="connected"]').waitFor();
    await page.goto(`${hub.urls.http}/#/admin/devices`);
    const waiting = page.locator('.pending-device[data-id="pi-web"]');
    await waiting.waitFor({ timeout: 10_000 });
    await page.screenshot({ path: artifact('console-enrolment.png') });
    await waiting.locator('.accept').click();
    await waiting.waitFor({ state: 'detached' });
    await waitFor(() => hub.device('pi-web')?.online, { what: 'pi-web online after acceptance' });
    await page.goto(`${hub.urls.http}/#/devices/pi-web`);
    await page.locator('.device-row.online[data-id="pi-web"]').waitFor();
  });
});
