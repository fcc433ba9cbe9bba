/**
 * Agent upgrades from the hub: real standalone agents (the file `npm run build` makes), each in
 * its own directory under a supervisor that starts it again when it exits (as systemd does),
 * and a new build made by the same bundler with another version. `rhizosphere agent upgrade`
 * through the real CLI; the refusals and both ways back to the previous agent.
 */
import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildAgentBundle } from '../src/build/agent-bundle.js';
import type { Hub } from '../src/index.js';
import { PACKAGE_VERSION } from '../src/package-root.js';
import { cleanup, ROOT, startTestHub, tempDir, waitFor, runCli as cli } from './helpers.js';

const CURRENT = join(ROOT, 'dist', 'agent', 'hypha.js');
const NEXT_VERSION = `${PACKAGE_VERSION}-next.1`;

let builds: string;
let next: string;

beforeAll(async () => {
  if (!existsSync(CURRENT)) throw new Error(`${CURRENT} is missing: run npm run build`);
  builds = mkdtempSync(join(tmpdir(), 'rhizo-builds-'));
  next = (await buildAgentBundle({ outDir: join(builds, 'next'), version: NEXT_VERSION })).file;
}, 60_000);
afterAll(() => rmSync(builds, { recursive: true, force: true }));

interface Installed {
  id: string;
  dir: string;
  file: string;
  output: () => string;
}

/** A device: the current agent in a directory of its own, run by a shell loop that starts it again whenever it ends. */
function install(hub: Hub, id: string, env: Record<string, string> = {}): Installed {
  const dir = tempDir(`rhizo-dev-${id}-`);
  const file = join(dir, 'hypha.js');
  copyFileSync(CURRENT, file);
  const supervisor = spawn('bash', ['-c', 'while :; do "$NODE" "$AGENT"; sleep 0.2; done'], {
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      NODE: process.execPath,
      AGENT: file,
      HYPHA_URL: hub.urls.mqtt,
      HYPHA_ID: id,
      HYPHA_SUPERVISED: '1',
      HYPHA_LOG_LEVEL: 'info',
      ...env,
    },
  });
  let output = '';
  supervisor.stdout!.on('data', (chunk: Buffer) => (output = (output + chunk.toString()).slice(-20_000)));
  supervisor.stderr!.on('data', (chunk: Buffer) => (output = (output + chunk.toString()).slice(-20_000)));
  cleanup(() => {
    try {
      process.kill(-supervisor.pid!, 'SIGKILL');
    } catch {
      // gone
    }
  });
  return { id, dir, file, output: () => output };
}


async function job(hub: Hub, body: unknown) {
  const created = await fetch(`${hub.urls.http}/api/jobs`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  expect(created.status).toBe(201);
  const { id } = (await created.json()) as { id: string };
  return waitFor(
    async () => {
      const view = (await (await fetch(`${hub.urls.http}/api/jobs/${id}`)).json()) as { state: string; targets: { device: string; state: string; result: string | null; error: string | null }[] };
      return view.state === 'done' ? view : undefined;
    },
    { timeoutMs: 60_000, intervalMs: 200, what: `job ${id} done` },
  );
}

describe('agent upgrades', () => {
  it('moves 20 supervised standalone agents to a new build through `rhizosphere agent upgrade`, reporting each', async () => {
    const hub = await startTestHub({ agentFile: next });
    const ids = Array.from({ length: 20 }, (_, i) => `pi-up-${String(i).padStart(2, '0')}`);
    const devices = ids.map((id) => install(hub, id));
    await waitFor(() => ids.every((id) => hub.device(id)?.online && hub.connections.get(id)?.agent === `hypha/${PACKAGE_VERSION}`), {
      timeoutMs: 30_000,
      what: 'every agent online as the current version',
    });

    const startedAt = Date.now();
    const run = await cli(['agent', 'upgrade', '--url', hub.urls.ws, '--all', '--concurrency', '10']);
    const seconds = (Date.now() - startedAt) / 1000;
    console.log(`agent upgrade: 20 agents moved to ${NEXT_VERSION} in ${seconds.toFixed(1)} s (concurrency 10)`);
    expect(run.stderr).not.toMatch(/rhizosphere: [A-Z_]+:/);
    expect(run.status).toBe(0);
    expect(run.stdout).toContain('20 devices: 20 succeeded');
    for (const id of ids) expect(run.stdout).toMatch(new RegExp(`${id}\\s+succeeded\\s+0\\s+hypha/${PACKAGE_VERSION} → hypha/${NEXT_VERSION.replaceAll('.', '\\.')} in`));

    const nextBytes = readFileSync(next);
    for (const device of devices) {
      expect(readFileSync(device.file).equals(nextBytes)).toBe(true);
      expect(readFileSync(`${device.file}.prev`).equals(readFileSync(CURRENT))).toBe(true);
      expect(existsSync(`${device.file}.upgrade.json`)).toBe(false);
      expect(device.output()).toContain('agent upgrade committed');
    }
    // The version is in each device's status, in the REST list and in the table.
    const listed = (await (await fetch(`${hub.urls.http}/api/devices`)).json()) as { id: string; agent: string | null }[];
    expect(listed.filter((d) => ids.includes(d.id)).every((d) => d.agent === `hypha/${NEXT_VERSION}`)).toBe(true);
    expect(hub.status('pi-up-00')).toMatchObject({ online: true, agent: `hypha/${NEXT_VERSION}` });

    // Run again: every device already has the build, nothing is sent.
    const again = await job(hub, { target: { tags: [] }, order: 'agent_upgrade' });
    expect(again.targets.every((t) => t.state === 'succeeded' && t.result === `already hypha/${NEXT_VERSION}`)).toBe(true);
  }, 240_000);

  it('keeps the agent in place when the new one fails its check, restores it when the new one cannot connect, and refuses where it cannot swap', async () => {
    // A build whose banner announces a version its code does not say: it fails the device's check.
    const lying = join(builds, 'lying.js');
    writeFileSync(lying, readFileSync(next, 'utf8').replace(`// hypha ${NEXT_VERSION}:`, '// hypha 9.9.9:'));
    const hub = await startTestHub({ agentFile: lying });
    const checked = install(hub, 'pi-check');
    const unsupervised = install(hub, 'pi-loose', { HYPHA_SUPERVISED: '' });
    await waitFor(() => hub.connections.get('pi-check')?.agent && hub.connections.get('pi-loose')?.agent, { timeoutMs: 20_000, what: 'both agents announced' });
    const first = await job(hub, { target: { devices: ['pi-check', 'pi-loose'] }, order: 'agent_upgrade', timeout_ms: 30_000 });
    const byId = new Map(first.targets.map((t) => [t.device, t]));
    expect(byId.get('pi-check')).toMatchObject({ state: 'failed', error: expect.stringMatching(/^UPGRADE_FAILED: the new agent did not pass its check .*says "0\.1\.0-next\.1", not 9\.9\.9/) });
    expect(byId.get('pi-loose')).toMatchObject({ state: 'failed', error: expect.stringMatching(/^UNSUPPORTED: nothing would start the new agent/) });
    expect(readFileSync(checked.file).equals(readFileSync(CURRENT))).toBe(true);
    expect(existsSync(`${checked.file}.new`)).toBe(false);
    expect(hub.connections.get('pi-check')?.online).toBe(true);
    void unsupervised;

    // A build that cannot reach the hub: the device restores its previous agent after its window.
    const lost = join(builds, 'lost.js');
    const body = readFileSync(next, 'utf8');
    const afterBanner = body.indexOf('\n', body.indexOf('\n') + 1) + 1;
    writeFileSync(lost, `${body.slice(0, afterBanner)}process.env.HYPHA_URL = 'mqtt://127.0.0.1:9';\n${body.slice(afterBanner)}`);
    const second = await startTestHub({ agentFile: lost });
    const device = install(second, 'pi-lost', { HYPHA_UPGRADE_WINDOW: '4' });
    await waitFor(() => second.connections.get('pi-lost')?.agent, { timeoutMs: 20_000, what: 'pi-lost announced' });
    const startedAt = Date.now();
    const outcome = await job(second, { target: { devices: ['pi-lost'] }, order: 'agent_upgrade', timeout_ms: 60_000 });
    console.log(`agent upgrade: a build that cannot connect was rolled back and reported after ${Date.now() - startedAt} ms (window 4 s)`);
    expect(outcome.targets[0]).toMatchObject({ state: 'failed', error: expect.stringContaining(`UPGRADE_FAILED: the device came back as hypha/${PACKAGE_VERSION}, not hypha/${NEXT_VERSION}`) });
    expect(readFileSync(device.file).equals(readFileSync(CURRENT))).toBe(true);
    expect(existsSync(`${device.file}.upgrade.json`)).toBe(false);
    expect(device.output()).toContain('the previous one is restored');
    expect(second.connections.get('pi-lost')).toMatchObject({ online: true, agent: `hypha/${PACKAGE_VERSION}` });

    // A hypha run from the project (not the standalone file) says how it is upgraded instead.
    const checkout = spawn(process.execPath, [join(ROOT, 'bin', 'hypha.js'), '--url', second.urls.mqtt, '--id', 'pi-tree'], { stdio: 'ignore', env: { ...process.env, HYPHA_SUPERVISED: '1' } });
    cleanup(() => checkout.kill('SIGKILL'));
    await waitFor(() => second.connections.get('pi-tree')?.agent, { timeoutMs: 20_000, what: 'pi-tree announced' });
    const tree = await job(second, { target: { devices: ['pi-tree'] }, order: 'agent_upgrade', timeout_ms: 30_000 });
    expect(tree.targets[0]).toMatchObject({ state: 'failed', error: expect.stringMatching(/^UNSUPPORTED: this hypha runs from a project checkout/) });

    // Bad input: an upgrade with a cmd_str, and a command job without one.
    for (const [body, message] of [
      [{ target: { devices: ['pi-tree'] }, order: 'agent_upgrade', cmd_str: 'x' }, 'cmd_str is not a field of an agent_upgrade job'],
      [{ target: { devices: ['pi-tree'] }, order: 'exec_bash' }, 'cmd_str is required'],
    ] as const) {
      const answer = await fetch(`${second.urls.http}/api/jobs`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      expect(answer.status).toBe(400);
      expect(await answer.json()).toMatchObject({ code: 'BAD_REQUEST', message });
    }
  }, 180_000);
});
