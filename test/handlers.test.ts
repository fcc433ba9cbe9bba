/**
 * Server-side handlers (docs/handlers.md) on a real hub: the loader's errors, isolation of a
 * handler's failures, clean-up when one stops, its persistent store, and the shipped
 * examples against real hypha agents and scripted MQTT devices.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { describe, expect, it } from 'vitest';
import { ConfigError, resolveConfig } from '../src/config.js';
import { StartError, type Hub, type HubOptions } from '../src/index.js';
import type { Command } from '../src/protocol/schemas.js';
import { cleanup, connectMqtt, freePort, HUB_BIN, ROOT, spawnHub, spawnHypha, startAgents, startTestHub, tempDir, waitFor } from './helpers.js';

const EXAMPLES = join(ROOT, 'config', 'handlers');

/** Writes a handler module to a fresh directory and returns its path. */
function fixture(code: string, file = 'handler.mjs'): string {
  const path = join(tempDir('rhizo-handler-'), file);
  writeFileSync(path, code);
  return path;
}

/** What fixtures record, shared with them through globalThis. */
type Trace = string[];
function trace(key: string): Trace {
  const list: Trace = [];
  (globalThis as Record<string, unknown>)[key] = list;
  cleanup(() => delete (globalThis as Record<string, unknown>)[key]);
  return list;
}

async function get(hub: Hub, path: string, token?: string, method = 'GET') {
  const res = await fetch(`${hub.urls.http}${path}`, { method, headers: token ? { authorization: `Bearer ${token}` } : {} });
  const text = await res.text();
  let body: any = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: res.status, body };
}

/** A scripted in-process device: answers every command with "ran CMD" and records it. */
async function scriptedDevice(hub: Hub, id: string): Promise<{ client: MqttClient; commands: Command[] }> {
  const client = await connectMqtt(hub.urls.mqtt, { clientId: id, clean: false });
  const commands: Command[] = [];
  client.on('message', (topic, payload) => {
    if (topic !== `rhizosphere/devices/${id}/command`) return;
    const command = JSON.parse(payload.toString()) as Command;
    commands.push(command);
    client.publish(`rhizosphere/devices/${id}/response`, JSON.stringify({ type: 'response', id: command.id, result: `ran ${command.cmd_str}`, error: '', exit_code: 0 }), { qos: 1 });
  });
  await client.subscribeAsync(`rhizosphere/devices/${id}/command`, { qos: 1 });
  await waitFor(() => hub.device(id)?.online, { what: `${id} online` });
  return { client, commands };
}

const startWith = (handlers: HubOptions['handlers'], options: HubOptions = {}) => startTestHub({ handlers, ...options });

describe('handler loading', () => {
  it('ends the start naming the handler, the module and the cause', async () => {
    const missing = join(tempDir(), 'nope.mjs');
    await expect(startWith([{ name: 'ghost', module: missing }])).rejects.toThrow(
      new RegExp(`^handler "ghost" \\(module ${missing.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}\\) failed to load: .*nope\\.mjs`),
    );

    const empty = fixture('export const nothing = 1;\n');
    const error = await startWith([{ name: 'empty', module: empty }]).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(StartError);
    expect((error as Error).message).toMatch(/^handler "empty" \(module .*handler\.mjs\) failed to load: the module exports no handler/);

    const events = trace('__rhizoLoadTrace');
    const good = fixture(`export default { start(ctx) { globalThis.__rhizoLoadTrace.push('start ' + ctx.name); }, stop() { globalThis.__rhizoLoadTrace.push('stop'); } };\n`);
    const throws = fixture(`export const handler = (ctx) => { throw new Error('needs option "x"\\nsecond line'); };\n`);
    const thrown = await startWith([
      { name: 'good', module: good },
      { name: 'bad', module: throws },
    ]).catch((e: unknown) => e);
    expect((thrown as Error).message).toMatch(/^handler "bad" \(module .*handler\.mjs\) failed to start: needs option "x" second line$/);
    // The handler started before it is stopped again, and the hub's ports are released.
    expect(events).toEqual(['start good', 'stop']);
  });

  it('validates the handlers key of the config file and resolves modules next to it', () => {
    const dir = tempDir();
    const file = join(dir, 'hub.json');
    writeFileSync(file, JSON.stringify({ handlers: [{ name: 'inv', module: './handlers/inventory.js', options: { a: 1 } }, { name: 'pkg', module: 'some-package' }] }));
    expect(resolveConfig({ file }).handlers).toEqual([
      { name: 'inv', module: join(dir, 'handlers', 'inventory.js'), options: { a: 1 } },
      { name: 'pkg', module: 'some-package' },
    ]);
    const problems: [unknown, RegExp][] = [
      [{ handlers: {} }, /"handlers" in .*: \{\} must be an array/],
      [{ handlers: [{ name: 'bad name', module: './x.js' }] }, /"handlers\[0\]\.name" in .*: "bad name" /],
      [{ handlers: [{ name: 'x' }] }, /"handlers\[0\]\.module" in .*: missing; must be a string/],
      [{ handlers: [{ name: 'x', module: 'a', opts: {} }] }, /"handlers\[0\]" in .*: unknown key "opts"/],
      [{ handlers: [{ name: 'x', module: 'a' }, { name: 'x', module: 'b' }] }, /"handlers\[1\]\.name" in .*: "x" names handler "x" twice/],
    ];
    for (const [content, pattern] of problems) {
      writeFileSync(file, JSON.stringify(content));
      expect(() => resolveConfig({ file })).toThrow(ConfigError);
      expect(() => resolveConfig({ file })).toThrow(pattern);
    }
  });

  it('the CLI exits 2 with one line when a handler of --config cannot load', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'broken.mjs'), 'export default 42;\n');
    const config = join(dir, 'hub.json');
    writeFileSync(config, JSON.stringify({ handlers: [{ name: 'broken', module: './broken.mjs' }] }));
    const hub = spawnHub(['--config', config, '--mqtt-port', '0', '--http-port', String(await freePort()), '--data-dir', join(dir, 'data'), '--log-level', 'silent']);
    const { code } = await hub.exited;
    expect(code).toBe(2);
    expect(hub.output()).toBe(`rhizosphere: handler "broken" (module ${join(dir, 'broken.mjs')}) failed to load: the module exports no handler (export default defineHandler(...), or export const handler = ...)\n`);
  });
});

describe('handler runtime', () => {
  it('isolates a handler that throws later; the hub and other handlers keep working', async () => {
    const seen = trace('__rhizoIsolation');
    const faulty = fixture(`export default {
      start(ctx) {
        ctx.on('online', () => { throw new Error('listener boom'); });
        ctx.on('offline', async () => { throw new Error('async boom'); });
        ctx.router.get('/', () => { throw new Error('route boom'); });
        ctx.setTimeout(() => { throw new Error('timer boom'); }, 10);
      },
    };\n`);
    const healthy = fixture(`export default (ctx) => {
      ctx.on('online', (device) => globalThis.__rhizoIsolation.push('online ' + device.id));
      ctx.router.get('/', (_req, res) => res.json({ ok: true }));
    };\n`);
    const hub = await startWith([
      { name: 'faulty', module: faulty },
      { name: 'healthy', module: healthy },
    ]);
    const device = await scriptedDevice(hub, 'iso-1');
    await waitFor(() => seen.includes('online iso-1'), { what: 'the healthy handler saw the device' });
    expect(await get(hub, '/handlers/faulty/')).toMatchObject({ status: 500, body: { code: 'INTERNAL' } });
    expect(await get(hub, '/handlers/healthy/')).toEqual({ status: 200, body: { ok: true } });
    await device.client.endAsync(true);
    await waitFor(() => (hub.handlers.list().find((h) => h.name === 'faulty')?.errors ?? 0) >= 4, { what: 'four errors caught' });
    // The hub still runs commands.
    await scriptedDevice(hub, 'iso-2');
    await expect(hub.exec('iso-2', 'true')).resolves.toMatchObject({ result: 'ran true', exit_code: 0 });
    expect(hub.handlers.list().find((h) => h.name === 'healthy')?.errors).toBe(0);
  });

  it('stopping a handler removes its routes, listeners, subscriptions and timers', async () => {
    const seen = trace('__rhizoLifecycle');
    const module = fixture(`export default {
      start(ctx) {
        ctx.on('online', (d) => globalThis.__rhizoLifecycle.push('online ' + d.id));
        ctx.on('telemetry', (m) => globalThis.__rhizoLifecycle.push('telemetry ' + m.device + ' ' + m.subtopic + ' ' + JSON.stringify(m.json)));
        ctx.setInterval(() => globalThis.__rhizoLifecycle.push('tick'), 20);
        ctx.signal.addEventListener('abort', () => globalThis.__rhizoLifecycle.push('aborted'));
        ctx.router.get('/', (_req, res) => res.json({ up: true }));
      },
      stop() { globalThis.__rhizoLifecycle.push('stop'); },
    };\n`);
    const hub = await startWith([{ name: 'life', module }]);
    const token = hub.stores.tokens.add('ops', 'operator');
    expect(await get(hub, '/handlers/life/', token)).toEqual({ status: 200, body: { up: true } });
    const a = await scriptedDevice(hub, 'life-1');
    await a.client.publishAsync('rhizosphere/devices/life-1/telemetry/env/temp', JSON.stringify({ value: 21 }), { qos: 1 });
    await waitFor(() => seen.includes('telemetry life-1 env/temp {"value":21}') && seen.includes('tick'), { what: 'telemetry and ticks' });

    expect(await hub.handlers.stop('life')).toBe(true);
    expect(seen.slice(-2)).toEqual(['aborted', 'stop']);
    const count = seen.length;
    expect(await get(hub, '/handlers/life/', token)).toMatchObject({ status: 404 });
    await scriptedDevice(hub, 'life-2');
    await a.client.publishAsync('rhizosphere/devices/life-1/telemetry/env/temp', '22', { qos: 1 });
    await new Promise((r) => setTimeout(r, 150));
    expect(seen.length).toBe(count);
    expect(hub.handlers.list()).toEqual([]);
  });

  it('keeps its store across a restart of the hub', async () => {
    const dataDir = tempDir();
    const module = fixture(`export default (ctx) => {
      const runs = (ctx.store.get('runs') ?? 0) + 1;
      ctx.store.set('runs', runs);
      ctx.store.set('last', { runs, note: 'ü' });
      ctx.router.get('/', (_req, res) => res.json({ runs: ctx.store.get('runs'), keys: ctx.store.keys() }));
      ctx.router.delete('/last', (_req, res) => res.json({ deleted: ctx.store.delete('last') }));
    };\n`);
    const first = await startWith([{ name: 'kv', module }], { dataDir });
    const token = first.stores.tokens.add('ops', 'operator');
    expect((await get(first, '/handlers/kv/', token)).body).toEqual({ runs: 1, keys: ['last', 'runs'] });
    await first.close();
    const second = await startWith([{ name: 'kv', module }], { dataDir });
    expect((await get(second, '/handlers/kv/', token)).body).toEqual({ runs: 2, keys: ['last', 'runs'] });
    expect((await get(second, '/handlers/kv/last', token, 'DELETE')).body).toEqual({ deleted: true });
    // Another handler's store is its own.
    expect(second.stores.db.prepare("SELECT handler, key FROM handler_kv ORDER BY key").all()).toEqual([{ handler: 'kv', key: 'runs' }]);
  });
});

describe('the example handlers', () => {
  it('inventory collects uname and os-release from agents coming online and serves them', async () => {
    const hub = await startWith([{ name: 'inventory', module: join(EXAMPLES, 'inventory.js') }], { allowAnonymous: false });
    const [idA, idB] = ['inv-a', 'inv-b'];
    const tokens = [idA, idB].map((id) => hub.stores.devices.add(id));
    const viewer = hub.stores.tokens.add('dash', 'viewer');
    await Promise.all([startAgents(hub, [idA], hub.urls.mqtt, ['--token', tokens[0]!]), startAgents(hub, [idB], hub.urls.mqtt, ['--token', tokens[1]!])]);

    const all = await waitFor(
      async () => {
        const res = await get(hub, '/handlers/inventory/', viewer);
        return res.status === 200 && res.body.length === 2 ? res.body : null;
      },
      { what: 'inventory of both agents' },
    );
    const a = all.find((entry: { device: string }) => entry.device === idA);
    expect(a.uname).toMatch(/^Linux /);
    if (existsSync('/etc/os-release')) expect(a.osRelease).toMatchObject({ ID: expect.any(String) });
    expect((await get(hub, `/handlers/inventory/${idB}`, viewer)).body.device).toBe(idB);
    expect((await get(hub, '/handlers/inventory/')).status).toBe(401);
    expect((await get(hub, '/handlers/inventory/', viewer, 'DELETE')).status).toBe(403);
  });

  it('health publishes a summary of the online agents every interval', async () => {
    const hub = await startWith([{ name: 'health', module: join(EXAMPLES, 'health.js'), options: { intervalSeconds: 0.5, command: 'echo fine' } }]);
    await startAgents(hub, ['hl-1', 'hl-2']);
    const watcher = await connectMqtt(hub.urls.mqtt, { clientId: 'health-watcher' });
    const summaries: any[] = [];
    watcher.on('message', (_topic, payload) => summaries.push(JSON.parse(payload.toString())));
    await watcher.subscribeAsync('rhizosphere/handlers/health/summary', { qos: 1 });
    const summary = await waitFor(() => summaries.find((s) => s.online === 2), { what: 'a summary of two devices' });
    expect(summary).toMatchObject({ command: 'echo fine', online: 2, healthy: 2, unhealthy: 0, devices: { 'hl-1': { ok: true, output: 'fine' }, 'hl-2': { ok: true, output: 'fine' } } });
  });

  it('the threshold rule runs its command when telemetry crosses the threshold', async () => {
    const hub = await startWith([
      { name: 'overheat', module: join(EXAMPLES, 'threshold-rule.js'), options: { topic: 'temp', field: 'value', above: 80, command: 'fan --max', cooldownSeconds: 60 } },
    ]);
    const device = await scriptedDevice(hub, 'rule-1');
    const watcher = await connectMqtt(hub.urls.mqtt, { clientId: 'rule-watcher' });
    const fired: any[] = [];
    watcher.on('message', (_topic, payload) => fired.push(JSON.parse(payload.toString())));
    await watcher.subscribeAsync('rhizosphere/handlers/overheat/fired', { qos: 1 });

    const send = (sub: string, value: unknown) => device.client.publishAsync(`rhizosphere/devices/rule-1/telemetry/${sub}`, JSON.stringify(value), { qos: 1 });
    await send('temp', { value: 70 });
    await send('humidity', { value: 95 });
    await send('temp', { value: 85 });
    await waitFor(() => fired.length === 1, { what: 'the rule fired' });
    expect(device.commands.map((c) => c.cmd_str)).toEqual(['fan --max']);
    expect(fired[0]).toMatchObject({ device: 'rule-1', value: 85, above: 80, exit_code: 0, output: 'ran fan --max' });
    // Within the cooldown it does not fire again; the command is audited with the handler as actor.
    await send('temp', { value: 90 });
    await new Promise((r) => setTimeout(r, 150));
    expect(device.commands).toHaveLength(1);
    const audit = hub.stores.db.prepare("SELECT actor, actor_kind, cmd_str FROM audit WHERE action = 'command'").all();
    expect(audit).toEqual([{ actor: 'overheat', actor_kind: 'handler', cmd_str: 'fan --max' }]);
  });
});

/** The first ```js block after `marker` in docs/handlers.md: the code a reader copies. */
function docsExample(marker: string): string {
  const docs = readFileSync(join(ROOT, 'docs', 'handlers.md'), 'utf8');
  const at = docs.indexOf(marker);
  const block = /```js\n([\s\S]*?)```/.exec(docs.slice(at));
  if (at < 0 || !block?.[1]) throw new Error(`no js example after ${marker} in docs/handlers.md`);
  return block[1];
}

describe('the examples of docs/handlers.md, as a user runs them', () => {
  it('copied into files, named in the config, and the hub restarted: they run commands across the fleet by themselves', async () => {
    const dir = tempDir();
    mkdirSync(join(dir, 'handlers'));
    const hello = docsExample('`handlers/hello.js`');
    const fleetCheck = docsExample('`handlers/fleet-check.js`');
    expect(fleetCheck.trim().split('\n').length).toBeLessThanOrEqual(20);
    writeFileSync(join(dir, 'handlers', 'hello.js'), hello);
    writeFileSync(join(dir, 'handlers', 'fleet-check.js'), fleetCheck);
    const dataDir = join(dir, 'data');
    const admin = (...args: string[]) => {
      const run = spawnSync(process.execPath, [HUB_BIN, ...args, '--data-dir', dataDir, '--json'], { encoding: 'utf8', timeout: 15_000 });
      expect(run.status, run.stderr).toBe(0);
      return JSON.parse(run.stdout) as { token: string };
    };
    const ids = ['pi-01', 'pi-02', 'pi-03'];
    const tokens = ids.map((id, i) => admin('device', 'add', id, ...(i < 2 ? ['--tag', 'kitchen'] : [])).token);
    const apiToken = admin('token', 'add', 'ops', '--role', 'operator').token;
    const [mqttPort, httpPort] = [await freePort(), await freePort()];
    const flags = ['--mqtt-port', String(mqttPort), '--http-port', String(httpPort), '--data-dir', dataDir, '--log-level', 'warn'];

    // The fleet runs against a hub without handlers first.
    let hub = spawnHub(flags);
    await waitFor(async () => (await fetch(`http://127.0.0.1:${httpPort}/healthz`).catch(() => null))?.ok, { what: 'hub up' });
    ids.forEach((id, i) => spawnHypha(`mqtt://127.0.0.1:${mqttPort}`, id, ['--token', tokens[i]!]));
    // null while the hub restarts.
    const api = async (path: string): Promise<any> =>
      fetch(`http://127.0.0.1:${httpPort}${path}`, { headers: { authorization: `Bearer ${apiToken}` } }).then((r) => r.json(), () => null);
    await waitFor(async () => ((await api('/api/devices')) ?? []).filter((d: { online: boolean }) => d.online).length === 3, { what: 'agents online' });

    // Name the handlers in a config file and restart the hub with it.
    const config = join(dir, 'hub.json');
    writeFileSync(
      config,
      JSON.stringify({
        handlers: [
          { name: 'hello', module: './handlers/hello.js', options: { greeting: 'hi' } },
          { name: 'fleet-check', module: './handlers/fleet-check.js', options: { tag: 'kitchen', command: 'echo checked $(hostname)', everySeconds: 1 } },
        ],
      }),
    );
    hub.child.kill('SIGTERM');
    expect((await hub.exited).code).toBe(0);
    hub = spawnHub(['--config', config, ...flags]);

    // The agents come back by themselves; hello runs `hostname` on each one coming online.
    const greeted = await waitFor(async () => {
      const seen = (await api('/handlers/hello/')) as { id: string; hostname: string }[];
      return Array.isArray(seen) && seen.length === 3 ? seen : null;
    }, { timeoutMs: 20_000, what: 'hello greeted the three agents' });
    expect(greeted.map((d) => d.id).sort()).toEqual(ids);
    expect(greeted[0]!.hostname).toBe(hostname());

    // fleet-check runs a job over the kitchen devices every second, by itself (a round may run
    // while one of them is still reconnecting: the next one finds both).
    const last = await waitFor(async () => {
      const view = await api('/handlers/fleet-check/');
      return view?.state === 'done' && view.counts?.succeeded === 2 ? view : null;
    }, { timeoutMs: 15_000, what: 'a finished fleet-check job over both kitchen devices' }).catch(async (error) => {
      console.log(JSON.stringify(await api('/handlers/fleet-check/')), JSON.stringify(await api('/api/jobs')), hub.output());
      throw error;
    });
    expect(last).toMatchObject({ targets: expect.any(Array), counts: { succeeded: 2, failed: 0 } });
    expect(last.targets.map((t: { device: string; result: string }) => [t.device, t.result])).toEqual([
      ['pi-01', `checked ${hostname()}`],
      ['pi-02', `checked ${hostname()}`],
    ]);
    const jobs = (await api('/api/jobs')) as { actor: string }[];
    expect(jobs.length).toBeGreaterThanOrEqual(1);
    expect(jobs.every((job) => job.actor === 'fleet-check')).toBe(true);
  });
});
