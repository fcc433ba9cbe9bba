/**
 * The web console in headless Chromium against a real hub and real hypha agents:
 * what an operator sees and does. Screenshots land in test-artifacts/.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Page } from 'playwright-core';
import { describe, expect, it } from 'vitest';
import { startHub } from '../src/index.js';
import { artifact, openPage, runCommand as run } from './browser.js';
import { PACKAGE_VERSION } from '../src/package-root.js';
import { cleanup, freePort, spawnHypha, startAgents, startTestHub, tempDir, waitFor } from './helpers.js';

async function openConsole(url: string): Promise<Page> {
  const page = await openPage();
  await page.goto(url);
  await page.waitForSelector('.connection[data-state="connected"]');
  return page;
}

describe('web console', () => {
  it('lists agents live, runs commands, shows ok/ng, literal HTML, history, and an agent going offline', async () => {
    const hub = await startTestHub();
    const [kitchen] = await startAgents(hub, ['pi-kitchen-01', 'gw-garage'], hub.urls.mqtt);
    const page = await openConsole(`${hub.urls.http}/`);

    await expect.poll(() => page.locator('.device-row.online').count()).toBe(2);
    expect(await page.textContent('#counts')).toContain('2 online / 2 devices');

    // The page talks to the hub through the client SDK: its compiled modules are served from an
    // allow-list, and nothing else of dist/ is.
    for (const path of ['/sdk/client/index.js', '/sdk/protocol/topics.js', '/sdk/errors.js']) {
      const res = await fetch(`${hub.urls.http}${path}`);
      expect([path, res.status, res.headers.get('content-type')]).toEqual([path, 200, expect.stringContaining('javascript')]);
    }
    for (const path of ['/sdk/hub.js', '/sdk/protocol/schemas.js', '/sdk/client/%2e%2e/hub.js', '/sdk/client/index.js.map', '/sdk/']) {
      expect([path, (await fetch(`${hub.urls.http}${path}`)).status]).toEqual([path, 404]);
    }
    await page.screenshot({ path: artifact('console-device-list.png') });

    // Each agent's version, from its birth, in the list and on its page.
    await expect.poll(() => page.locator('.device-row[data-id="pi-kitchen-01"] .agent').textContent()).toBe(`hypha/${PACKAGE_VERSION}`);
    await page.click('.device-row[data-id="pi-kitchen-01"]');
    expect(page.url()).toContain('#/devices/pi-kitchen-01');
    await expect.poll(() => page.locator('.device-facts').textContent()).toContain(`hypha/${PACKAGE_VERSION}`);
    const hello = await run(page, 'echo hello');
    expect(await hello.locator('.output.stdout pre').textContent()).toBe('hello');
    expect(await hello.locator('.exit-code').textContent()).toBe('exit 0');

    const ng = await run(page, 'false', 'exec_bash_ret_okng_only');
    expect(await ng.locator('.okng').textContent()).toBe('ng');
    expect(await (await run(page, 'true', 'exec_bash_ret_okng_only')).locator('.okng').textContent()).toBe('ok');

    // Device output is shown as text: never parsed as HTML, never run.
    const hostile = '<img src=x onerror="alert(1)"><script>alert(2)</script><b>bold</b>';
    const html = await run(page, `printf '%s' '${hostile}'; echo ' and <i>err</i>' >&2`);
    expect(await html.locator('.output.stdout pre').textContent()).toBe(hostile);
    expect(await html.locator('.output.stderr pre').textContent()).toBe(' and <i>err</i>');
    expect(await html.locator('img, script, b, i').count()).toBe(0);

    const failing = await run(page, 'echo out; echo err >&2; exit 3');
    expect(await failing.locator('.exit-code').textContent()).toBe('exit 3');

    // Long output scrolls inside its box, and the copy button copies all of it.
    await page.context().grantPermissions(['clipboard-read', 'clipboard-write'], { origin: hub.urls.http });
    const long = await run(page, 'seq 1 3000');
    const box = long.locator('.output.stdout pre');
    expect(await box.evaluate((pre) => pre.scrollHeight > pre.clientHeight)).toBe(true);
    await long.locator('.output.stdout .copy').click();
    await expect.poll(() => long.locator('.output.stdout .copy').textContent()).toBe('Copied');
    const copied = await page.evaluate(() => navigator.clipboard.readText());
    expect(copied.split('\n')).toHaveLength(3000);
    expect(copied.endsWith('2999\n3000')).toBe(true);
    await page.screenshot({ path: artifact('console-result.png') });

    // Up-arrow recalls the last command sent to this device, with its order.
    await page.fill('.command-input', '');
    await page.press('.command-input', 'ArrowUp');
    expect(await page.inputValue('.command-input')).toBe('seq 1 3000');
    await page.press('.command-input', 'ArrowUp');
    expect(await page.inputValue('.command-input')).toBe('echo out; echo err >&2; exit 3');
    await page.press('.command-input', 'ArrowDown');
    expect(await page.inputValue('.command-input')).toBe('seq 1 3000');
    expect(await page.locator('.history-item').count()).toBe(6);

    // Kill the agent: the row and the open device view turn offline without a reload.
    kitchen!.child.kill('SIGKILL');
    await page.locator('.device-row[data-id="pi-kitchen-01"]:not(.online)').waitFor({ timeout: 5000 });
    await page.locator('.state-pill.offline').waitFor();
    expect(await page.textContent('.offline-banner')).toContain('DEVICE_OFFLINE');
    expect(await page.textContent('#counts')).toContain('1 online / 2 devices');
    const refused = await run(page, 'echo still there?');
    expect(await refused.locator('.error-code').textContent()).toBe('DEVICE_OFFLINE');
    await page.screenshot({ path: artifact('console-offline.png') });
  });

  it('filters by id and tag and shows the connection state through a hub restart', async () => {
    const [mqttPort, httpPort] = [await freePort(), await freePort()];
    const dataDir = tempDir();
    const options = { host: '127.0.0.1', mqttPort, httpPort, dataDir, logLevel: 'silent' as const, allowAnonymous: true };
    let hub = await startHub(options);
    cleanup(() => hub.close());
    await startAgents(hub, ['alpha-1', 'alpha-2'], hub.urls.mqtt, ['--tag', 'kitchen']);
    await startAgents(hub, ['beta-1'], hub.urls.mqtt, ['--tag', 'attic', '--tag', 'pi4']);
    const page = await openConsole(`${hub.urls.http}/`);
    await expect.poll(() => page.locator('.device-row').count()).toBe(3);
    await expect.poll(() => page.locator('.device-row[data-id="beta-1"] .tag').allTextContents()).toEqual(['attic', 'pi4']);

    await page.fill('#filter', 'alpha');
    await expect.poll(() => page.locator('.device-row').count()).toBe(2);
    await page.fill('#filter', 'pi4');
    await expect.poll(() => page.locator('.device-row').count()).toBe(1);
    await page.fill('#filter', 'kitchen alpha-2');
    await expect.poll(() => page.locator('.device-row').allTextContents()).toEqual([expect.stringContaining('alpha-2')]);
    await page.fill('#filter', 'alpha');
    await page.selectOption('#show', 'offline');
    await page.locator('.list-empty').waitFor();
    await page.selectOption('#show', 'all');
    await page.fill('#filter', '');

    await hub.close();
    await page.locator('.connection[data-state="reconnecting"]').waitFor({ timeout: 5000 });
    hub = await startHub(options);
    // The agents come back by themselves, and so does the console.
    await page.locator('.connection[data-state="connected"]').waitFor({ timeout: 15_000 });
    await expect.poll(() => page.locator('.device-row.online').count(), { timeout: 15_000 }).toBe(3);
  });

  it('stays responsive with 20000 devices (virtualised list)', async () => {
    const dataDir = tempDir();
    const now = Date.now();
    const records = Array.from({ length: 20_000 }, (_, i) => ({
      id: `dev-${String(i).padStart(5, '0')}`,
      transport: 'mqtt',
      remoteAddress: '10.0.0.1',
      connectedAt: now - 3_600_000,
      lastSeen: now - 60_000,
    }));
    writeFileSync(join(dataDir, 'devices.json'), JSON.stringify(records));
    const hub = await startTestHub({ dataDir });
    spawnHypha(hub.urls.mqtt, 'dev-live');
    await waitFor(() => hub.device('dev-live')?.online, { what: 'live agent' });

    const started = Date.now();
    const page = await openConsole(`${hub.urls.http}/`);
    await page.waitForFunction(() => document.querySelector('#counts')?.textContent?.startsWith('1 online / 20001 devices'));
    const loadMs = Date.now() - started;
    // Only the rows in view exist in the page.
    expect(await page.locator('.device-row').count()).toBeLessThan(60);

    // Main-thread time (scripts, style, layout) as Chromium counts it: frame intervals in a
    // headless software renderer on a busy machine measure the machine, not the console.
    const cdp = await page.context().newCDPSession(page);
    await cdp.send('Performance.enable');
    const busy = async () => {
      const { metrics } = await cdp.send('Performance.getMetrics');
      return (metrics.find((m) => m.name === 'TaskDuration')?.value ?? 0) * 1000;
    };
    const nextFrames = () => page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
    // On connect the broker sends the retained status of all 20001 devices: wait until the
    // page has digested them (its main thread goes quiet), then measure.
    const first = await busy();
    let last = Number.NEGATIVE_INFINITY;
    for (;;) {
      const now = await busy();
      if (now - last < 20) break;
      last = now;
      await new Promise((r) => setTimeout(r, 250));
    }
    const settledMs = Date.now() - started;
    const digestMs = last - first;

    let before = await busy();
    await page.fill('#filter', 'dev-1999');
    await nextFrames();
    const filterMs = (await busy()) - before;
    expect(await page.locator('.device-row').count()).toBe(10);
    await page.fill('#filter', '');
    await nextFrames();

    const steps = 20;
    before = await busy();
    for (let i = 1; i <= steps; i++) {
      await page.evaluate((fraction) => {
        const list = document.querySelector<HTMLElement>('#device-list')!;
        list.scrollTop = list.scrollHeight * fraction;
      }, i / steps);
      await nextFrames();
    }
    const scrollMs = ((await busy()) - before) / steps;
    expect(await page.locator('.device-row').count()).toBeLessThan(60);
    await page.locator('.device-row[data-id="dev-live"]').waitFor();
    await page.screenshot({ path: artifact('console-20000.png') });
    console.log(`console with 20001 devices: listed ${loadMs} ms after opening; all live statuses digested ${settledMs} ms after opening (${digestMs.toFixed(0)} ms of main thread once listed); then ${filterMs.toFixed(0)} ms to filter, ${scrollMs.toFixed(1)} ms per scroll step`);
  });
});
