/**
 * Desired state (docs/protocol.md "Desired state"): a desired document set over REST, the SDK
 * and handlers; real hypha agents applying the delta with a real --state-command script, on
 * connect and on change, also after being away; versions; job selectors on state; coded
 * refusals (size cap, not an object, a forged report, malformed JSON); persistence across a
 * hub restart. Plus the pure parts: delta, condition parser, topics and ACL rules.
 */
import { spawn } from 'node:child_process';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { afterAll, describe, expect, it } from 'vitest';
import { mayPublish, maySubscribe } from '../src/auth/acl.js';
import { connect } from '../src/client/index.js';
import type { Hub } from '../src/index.js';
import { compileStateCondition, parseStateCondition } from '../src/jobs/state-condition.js';
import { SelectorSchema } from '../src/jobs/selector.js';
import { parsePayload, validate } from '../src/protocol/schemas.js';
import { ReportMessageSchema, stateDelta, stateProblem, type StateView } from '../src/protocol/state.js';
import { Topics } from '../src/protocol/topics.js';
import { capturedLog, cleanup, connectMqtt, grantedQos, HUB_BIN, spawnHypha, startTestHub, tempDir, waitFor, type HyphaProcess } from './helpers.js';
import { claimDatabase, REDIS_BASE_URL } from './redis-claim.js';
import { startMosquitto } from './brokers.js';

const claimed = await claimDatabase();
if (!claimed) console.warn(`the cluster test of desired state is skipped: no Redis at ${REDIS_BASE_URL} (set REDIS_URL), or no empty database 1-15 in it`);

const P = 'rhizosphere';

/** A REST call as `token` (anonymous without one): the status and the parsed body. */
async function api(hub: Hub, method: string, path: string, body?: unknown, token?: string, raw?: string) {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(`${hub.urls.http}${path}`, { method, headers, body: raw ?? (body === undefined ? undefined : JSON.stringify(body)) });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

const getState = async (hub: Hub, id: string) => (await api(hub, 'GET', `/api/devices/${id}/state`)).body as unknown as StateView;

/**
 * The state command of these tests: it checks that stdin and HYPHA_STATE_DELTA agree, notes
 * each delta in `log`, and says it applied every value of the delta (a key named `fail`
 * makes it fail with a message on stderr).
 */
function stateScript(): { command: string; applied: () => { version: number; state: Record<string, unknown> }[] } {
  const dir = tempDir('rhizo-state-');
  const log = join(dir, 'applied.jsonl');
  const script = join(dir, 'apply-state.sh');
  writeFileSync(
    script,
    `#!/usr/bin/env bash
set -euo pipefail
delta="$(cat)"
[ "$delta" = "$HYPHA_STATE_DELTA" ] || { echo "stdin and HYPHA_STATE_DELTA differ" >&2; exit 4; }
printf '%s\\n' "$delta" >> ${JSON.stringify(log)}
case "$delta" in *'"fail"'*) echo "cannot apply fail on $HYPHA_DEVICE_ID" >&2; exit 3;; esac
# What was applied: the delta's values, as one JSON object on stdout.
node -e 'process.stdout.write(JSON.stringify(JSON.parse(process.argv[1]).state))' "$delta"
`,
  );
  chmodSync(script, 0o755);
  return {
    command: script,
    applied: () => {
      try {
        return readFileSync(log, 'utf8').trim().split('\n').filter(Boolean).map((line) => JSON.parse(line) as { version: number; state: Record<string, unknown> });
      } catch {
        return [];
      }
    },
  };
}

/** A device's retained delta as an MQTT subscriber sees it. */
async function deltaWatcher(hub: Hub, id: string, options = {}) {
  const client = await connectMqtt(hub.urls.mqtt, { clientId: `watch-${id}-${Math.random().toString(36).slice(2, 8)}`, ...options });
  const seen: { version: number; state: Record<string, unknown> }[] = [];
  client.on('message', (_topic, payload) => {
    if (payload.length > 0) seen.push(JSON.parse(payload.toString()) as (typeof seen)[number]);
  });
  await client.subscribeAsync(`${P}/devices/${id}/state/delta`, { qos: 1 });
  return { client, seen, last: () => seen.at(-1) };
}

async function stop(agent: HyphaProcess): Promise<void> {
  agent.child.kill('SIGTERM');
  await agent.exited;
}

/** An MQTT.js client that is device `id` (its command subscription makes it one). */
async function fakeDevice(hub: Hub, id: string, token: string): Promise<MqttClient> {
  const client = await connectMqtt(hub.urls.mqtt, { clientId: id, username: id, password: token, clean: false });
  await client.subscribeAsync(`${P}/devices/${id}/command`, { qos: 1 });
  await waitFor(() => hub.device(id)?.online, { what: `${id} online` });
  return client;
}

describe('desired state with real agents', () => {
  it('is applied by hypha --state-command on connect and on change; the delta closes and versions grow', async () => {
    const hub = await startTestHub();
    const token = hub.stores.devices.add('pi-01');
    const script = stateScript();

    // Set before the device ever connected: it gets it on connect.
    const first = await api(hub, 'PATCH', '/api/devices/pi-01/state/desired', { fw: '1.0.0', led: 'on', config: { interval: 5, sensors: ['t', 'h'] } });
    expect(first.status).toBe(200);
    expect(first.body).toMatchObject({ device: 'pi-01', desired: { version: 1, state: { fw: '1.0.0', led: 'on' }, updatedBy: 'anonymous' }, reported: { version: 0, state: {} } });
    expect((first.body.delta as { version: number; state: object }).state).toEqual({ fw: '1.0.0', led: 'on', config: { interval: 5, sensors: ['t', 'h'] } });
    const watcher = await deltaWatcher(hub, 'pi-01');
    await waitFor(() => watcher.last()?.version === 1, { what: 'the retained delta of version 1' });

    spawnHypha(hub.urls.mqtt, 'pi-01', ['--token', token, '--state-command', script.command]);
    const applied = await waitFor(async () => {
      const view = await getState(hub, 'pi-01');
      return view.reported.state.fw === '1.0.0' && Object.keys(view.delta.state).length === 0 ? view : undefined;
    }, { timeoutMs: 15_000, what: 'version 1 applied and reported' });
    expect(applied.reported.state).toEqual({ fw: '1.0.0', led: 'on', config: { interval: 5, sensors: ['t', 'h'] } });
    expect(applied.reported.error).toBeNull();
    expect(script.applied()).toEqual([{ version: 1, state: { fw: '1.0.0', led: 'on', config: { interval: 5, sensors: ['t', 'h'] } } }]);
    // The delta closed, retained for whoever subscribes next.
    await waitFor(() => watcher.last()?.version === 1 && Object.keys(watcher.last()!.state).length === 0, { what: 'the empty delta' });
    const reportedVersion = applied.reported.version;
    expect(reportedVersion).toBeGreaterThanOrEqual(1);

    // A change while connected: only what differs is sent; null removes a desired key.
    const second = await api(hub, 'PATCH', '/api/devices/pi-01/state/desired', { fw: '1.1.0', led: null });
    expect(second.body).toMatchObject({ desired: { version: 2, state: { fw: '1.1.0', config: { interval: 5, sensors: ['t', 'h'] } } }, delta: { version: 2, state: { fw: '1.1.0' } } });
    expect((second.body.desired as { state: object }).state).not.toHaveProperty('led');
    const after = await waitFor(async () => {
      const view = await getState(hub, 'pi-01');
      return view.reported.state.fw === '1.1.0' ? view : undefined;
    }, { timeoutMs: 15_000, what: 'version 2 applied' });
    expect(after.reported.version).toBeGreaterThan(reportedVersion);
    expect(after.delta).toEqual({ version: 2, state: {} });
    expect(script.applied().at(-1)).toEqual({ version: 2, state: { fw: '1.1.0' } });

    // A PATCH that changes nothing keeps the version; a PUT replaces the document.
    expect((await api(hub, 'PATCH', '/api/devices/pi-01/state/desired', { fw: '1.1.0' })).body).toMatchObject({ desired: { version: 2 } });
    const put = await api(hub, 'PUT', '/api/devices/pi-01/state/desired', { fw: '1.2.0' });
    expect(put.body).toMatchObject({ desired: { version: 3, state: { fw: '1.2.0' } } });
    expect((put.body.desired as { state: object }).state).not.toHaveProperty('config');
    await waitFor(async () => (await getState(hub, 'pi-01')).reported.state.fw === '1.2.0', { timeoutMs: 15_000, what: 'version 3 applied' });

    // A delta the command cannot apply: the error is reported beside the reported document.
    await api(hub, 'PATCH', '/api/devices/pi-01/state/desired', { fail: true });
    const failed = await waitFor(async () => {
      const view = await getState(hub, 'pi-01');
      return view.reported.error ? view : undefined;
    }, { timeoutMs: 15_000, what: 'the failure reported' });
    expect(failed.reported.error).toMatchObject({ version: 4, message: expect.stringContaining('exited with status 3: cannot apply fail on pi-01') });
    expect(failed.delta).toEqual({ version: 4, state: { fail: true } });
    // Removing it closes the delta; the next report clears the error.
    await api(hub, 'PATCH', '/api/devices/pi-01/state/desired', { fail: null, fw: '1.3.0' });
    await waitFor(async () => {
      const view = await getState(hub, 'pi-01');
      return view.reported.state.fw === '1.3.0' && view.reported.error === null;
    }, { timeoutMs: 15_000, what: 'the error cleared by the next report' });

    // Audited, with the actor and the keys.
    const audit = hub.stores.audit.query({ device: 'pi-01', action: 'state.desired' });
    expect(audit.map((e) => e.outcome)).toEqual(['ok', 'ok', 'ok', 'unchanged', 'ok', 'ok']);
    expect(audit.at(-1)).toMatchObject({ actor: 'anonymous', detail: { mode: 'merge', version: 1, keys: ['fw', 'led', 'config'] } });
  });

  it('reaches a device that was offline when desired state changed, once it reconnects', async () => {
    const hub = await startTestHub();
    const token = hub.stores.devices.add('pi-01');
    const script = stateScript();
    const args = ['--token', token, '--state-command', script.command];
    const agent = spawnHypha(hub.urls.mqtt, 'pi-01', args);
    await waitFor(() => hub.device('pi-01')?.online, { timeoutMs: 15_000, what: 'pi-01 online' }).catch((error: Error) => {
      throw new Error(`${error.message}\n${agent.output()}`);
    });
    await api(hub, 'PATCH', '/api/devices/pi-01/state/desired', { fw: '2.0.0' });
    await waitFor(async () => (await getState(hub, 'pi-01')).reported.state.fw === '2.0.0', { timeoutMs: 15_000, what: 'version 1 applied' });

    await stop(agent);
    await waitFor(() => hub.device('pi-01')?.online === false, { what: 'pi-01 offline' });
    const changed = await api(hub, 'PATCH', '/api/devices/pi-01/state/desired', { fw: '2.1.0', mode: 'eco' });
    expect(changed.body).toMatchObject({ desired: { version: 2 }, delta: { version: 2, state: { fw: '2.1.0', mode: 'eco' } } });
    expect((await getState(hub, 'pi-01')).reported.state).toEqual({ fw: '2.0.0' });

    const again = spawnHypha(hub.urls.mqtt, 'pi-01', args);
    const view = await waitFor(async () => {
      const current = await getState(hub, 'pi-01');
      return current.reported.state.fw === '2.1.0' ? current : undefined;
    }, { timeoutMs: 15_000, what: 'the change applied after the reconnect' });
    expect(view.reported.state).toEqual({ fw: '2.1.0', mode: 'eco' });
    expect(view.delta).toEqual({ version: 2, state: {} });
    expect(script.applied().map((a) => a.version)).toEqual([1, 2]);
    expect(again.output()).toContain('desired state applied');
  });

  it('lets a job target the devices whose reported state differs from the desired one', async () => {
    const hub = await startTestHub();
    const script = stateScript();
    const tokens = { 'pi-a': hub.stores.devices.add('pi-a'), 'pi-b': hub.stores.devices.add('pi-b'), 'pi-c': hub.stores.devices.add('pi-c') };
    spawnHypha(hub.urls.mqtt, 'pi-a', ['--token', tokens['pi-a'], '--state-command', script.command]);
    // pi-b runs without --state-command: it ignores desired state and says so once.
    const pib = spawnHypha(hub.urls.mqtt, 'pi-b', ['--token', tokens['pi-b']]);
    await waitFor(() => hub.device('pi-a')?.online && hub.device('pi-b')?.online, { timeoutMs: 15_000, what: 'agents online' });
    for (const id of ['pi-a', 'pi-b']) expect((await api(hub, 'PATCH', `/api/devices/${id}/state/desired`, { fw: '3.0.0' })).status).toBe(200);
    await waitFor(async () => (await getState(hub, 'pi-a')).reported.state.fw === '3.0.0', { timeoutMs: 15_000, what: 'pi-a in step' });
    await waitFor(() => pib.output().includes('desired state ignored: no --state-command'), { what: 'pi-b saying it ignores desired state' });
    expect(pib.output().match(/desired state ignored/g)).toHaveLength(1);
    expect((await getState(hub, 'pi-b')).reported.version).toBe(0);

    /** Creates a job; with `finish`, waits for it to be done; answers its targets. */
    const run = async (target: unknown, finish: boolean) => {
      const created = await api(hub, 'POST', '/api/jobs', { target, order: 'exec_bash', cmd_str: 'echo updating', timeout_ms: 10_000 });
      expect(created.status, JSON.stringify(created.body)).toBe(201);
      const id = created.body.id as string;
      const job = await waitFor(async () => {
        const current = (await api(hub, 'GET', `/api/jobs/${id}`)).body as { state: string; targets: { device: string; state: string }[] };
        return !finish || current.state === 'done' ? current : undefined;
      }, { timeoutMs: 15_000, what: 'the job done' });
      if (!finish) await api(hub, 'POST', `/api/jobs/${id}/cancel`);
      return job.targets;
    };
    // Text and structured forms, the same devices: pi-b only (pi-c has no desired fw at all).
    expect(await run({ state: 'state.reported.fw != state.desired.fw and state.desired.fw != null' }, true)).toEqual([expect.objectContaining({ device: 'pi-b', state: 'succeeded', result: 'updating' })]);
    expect(await run({ state: [{ left: { path: 'state.delta.fw' }, op: '!=', right: { value: null } }] }, true)).toEqual([expect.objectContaining({ device: 'pi-b' })]);
    expect((await run({ state: 'state.reported.fw == "3.0.0"' }, true)).map((t) => t.device)).toEqual(['pi-a']);
    // pi-c (offline, no state at all) has nothing to apply either: it waits as an offline target.
    expect((await run({ tags: [], state: 'state.delta == {}' }, false)).map((t) => t.device)).toEqual(['pi-a', 'pi-c']);

    const bad = await api(hub, 'POST', '/api/jobs', { target: { state: 'state.reported.fw !! 1' }, order: 'exec_bash', cmd_str: 'true' });
    expect(bad).toMatchObject({ status: 400, body: { code: 'BAD_REQUEST', message: expect.stringMatching(/^target\.state/) } });
    const code = await api(hub, 'POST', '/api/jobs', { target: { state: 'process.exit(1)' }, order: 'exec_bash', cmd_str: 'true' });
    expect(code).toMatchObject({ status: 400, body: { code: 'BAD_REQUEST', message: expect.stringContaining('must start with state.desired, state.reported or state.delta') } });
  });
});

describe('desired state refusals', () => {
  it('refuses bad desired documents with coded errors, and audits them', async () => {
    const hub = await startTestHub({ maxStateBytes: 1024 });
    hub.stores.devices.add('pi-01');
    const viewer = hub.stores.tokens.add('dash', 'viewer');
    const path = '/api/devices/pi-01/state/desired';

    expect(await api(hub, 'PATCH', path, { blob: 'x'.repeat(2000) })).toMatchObject({ status: 413, body: { code: 'PAYLOAD_TOO_LARGE' } });
    expect((await api(hub, 'PATCH', path, { a: 'x'.repeat(600) })).status).toBe(200);
    // Each patch fits, the merged document would not.
    expect(await api(hub, 'PATCH', path, { b: 'y'.repeat(600) })).toMatchObject({ status: 413, body: { code: 'PAYLOAD_TOO_LARGE', message: expect.stringContaining('over the limit of 1024 (--max-state-bytes)') } });
    for (const body of [[1, 2], 'fw', 42, null]) {
      expect(await api(hub, 'PUT', path, body)).toMatchObject({ status: 400, body: { code: 'BAD_REQUEST', message: 'desired state must be a JSON object of keys and values' } });
    }
    expect(await api(hub, 'PUT', path, undefined, undefined, '{"fw":')).toMatchObject({ status: 400, body: { code: 'BAD_REQUEST', message: 'body is not valid JSON' } });
    expect(await api(hub, 'PATCH', path, { 'a.b': 1 })).toMatchObject({ status: 400, body: { code: 'BAD_REQUEST', message: expect.stringContaining('key "a.b" must be 1 to 64 of') } });
    let deep: unknown = 1;
    for (let i = 0; i < 20; i++) deep = [deep];
    expect(await api(hub, 'PATCH', path, { deep })).toMatchObject({ status: 400, body: { message: expect.stringContaining('nested deeper than 16') } });
    expect(await api(hub, 'PATCH', '/api/devices/ghost/state/desired', { fw: '1' })).toMatchObject({ status: 404, body: { code: 'UNKNOWN_DEVICE' } });
    expect(await api(hub, 'GET', '/api/devices/ghost/state')).toMatchObject({ status: 404, body: { code: 'UNKNOWN_DEVICE' } });
    expect(await api(hub, 'GET', '/api/devices/a%2Fb/state')).toMatchObject({ status: 400, body: { code: 'BAD_REQUEST' } });
    // Viewers read, and may not write.
    expect(await api(hub, 'PATCH', path, { fw: '1' }, viewer)).toMatchObject({ status: 403, body: { code: 'FORBIDDEN' } });
    expect((await api(hub, 'GET', '/api/devices/pi-01/state', undefined, viewer)).body).toMatchObject({ desired: { version: 1, state: { a: 'x'.repeat(600) } } });
    expect(await api(hub, 'POST', path, { fw: '1' })).toMatchObject({ status: 405, body: { code: 'BAD_REQUEST' } });

    const outcomes = hub.stores.audit.query({ action: 'state.desired' }).map((e) => e.outcome);
    expect(outcomes.filter((o) => o === 'PAYLOAD_TOO_LARGE')).toHaveLength(2);
    expect(outcomes.filter((o) => o === 'BAD_REQUEST').length).toBeGreaterThanOrEqual(7);
    expect(outcomes).toContain('FORBIDDEN');
    expect(outcomes).toContain('UNKNOWN_DEVICE');
    expect(outcomes.filter((o) => o === 'ok')).toHaveLength(1);
  });

  it('refuses a forged report from another device, and ignores malformed ones while serving on', async () => {
    const { logger, lines } = capturedLog();
    const hub = await startTestHub({ allowAnonymous: false, logger, maxStateBytes: 2048 });
    const tokens = { 'pi-01': hub.stores.devices.add('pi-01'), 'pi-02': hub.stores.devices.add('pi-02') };
    const ops = hub.stores.tokens.add('ops', 'operator');
    const real = await fakeDevice(hub, 'pi-01', tokens['pi-01']);
    const reported = `${P}/devices/pi-01/state/reported`;

    await real.publishAsync(reported, JSON.stringify({ state: { fw: '1.0.0' } }), { qos: 1 });
    await waitFor(() => hub.state.get('pi-01').reported.state.fw === '1.0.0', { what: 'the real report' });
    const before = hub.state.get('pi-01').reported;

    // pi-02, with its own valid credential, reports for pi-01: refused, its connection closed.
    const forger = await fakeDevice(hub, 'pi-02', tokens['pi-02']);
    const closed = new Promise<void>((resolve) => forger.once('close', () => resolve()));
    forger.publish(reported, JSON.stringify({ state: { fw: 'evil' } }), { qos: 1 });
    await closed;
    await waitFor(() => lines.some((l) => l.code === 'FORBIDDEN' && l.clientId === 'pi-02' && l.topic === reported), { what: 'the refusal logged' });
    // pi-02 may not read pi-01's delta either, nor publish a delta of its own.
    const forger2 = await connectMqtt(hub.urls.mqtt, { clientId: 'pi-02', username: 'pi-02', password: tokens['pi-02'] });
    expect(await grantedQos(forger2, `${P}/devices/pi-01/state/delta`)).toBe(128);
    expect(await grantedQos(forger2, `${P}/devices/pi-02/state/delta`)).toBe(1);

    // Malformed reports from the real device: logged with their code, nothing changes, it stays connected.
    const cases: [payload: string | Buffer, code: string, text: string][] = [
      ['{not json', 'BAD_REQUEST', 'payload is not valid JSON'],
      ['[1]', 'BAD_REQUEST', 'payload must be a JSON object'],
      ['{"state":"fw"}', 'BAD_REQUEST', 'must be a JSON object of keys and values'],
      ['{"version":3}', 'BAD_REQUEST', 'must have state or error'],
      [JSON.stringify({ state: { big: 'z'.repeat(3000) } }), 'PAYLOAD_TOO_LARGE', 'larger than --max-state-bytes'],
    ];
    for (const [payload] of cases) await real.publishAsync(reported, payload, { qos: 1 });
    for (const [, code, text] of cases) {
      await waitFor(() => lines.some((l) => l.code === code && l.device === 'pi-01' && String(l.msg).includes(text)), { what: `the ${code} log line "${text}"` });
    }
    expect(real.connected).toBe(true);
    expect(hub.state.get('pi-01').reported).toEqual(before);

    // The hub serves on: REST, and the next good report.
    await real.publishAsync(reported, JSON.stringify({ state: { fw: '1.0.1', extra: null } }), { qos: 1 });
    await waitFor(() => hub.state.get('pi-01').reported.state.fw === '1.0.1', { what: 'the next good report' });
    expect(hub.state.get('pi-01').reported.version).toBe(before.version + 1);
    expect(await api(hub, 'PATCH', '/api/devices/pi-01/state/desired', { fw: '1.0.2' }, ops)).toMatchObject({ status: 200, body: { delta: { state: { fw: '1.0.2' } } } });
  });
});

describe('desired state elsewhere', () => {
  it('survives a hub restart with the same data directory, delta retained again', async () => {
    const dataDir = tempDir('rhizo-state-hub-');
    const hub = await startTestHub({ dataDir });
    const token = hub.stores.devices.add('pi-01');
    const device = await fakeDevice(hub, 'pi-01', token);
    await api(hub, 'PATCH', '/api/devices/pi-01/state/desired', { fw: '9.0', led: 'off' });
    await device.publishAsync(`${P}/devices/pi-01/state/reported`, JSON.stringify({ state: { fw: '8.0', led: 'off' }, version: 1 }), { qos: 1 });
    await waitFor(() => hub.state.get('pi-01').reported.version === 1, { what: 'the report' });
    const before = hub.state.get('pi-01');
    await device.endAsync();
    await hub.close();

    const again = await startTestHub({ dataDir });
    const after = await getState(again, 'pi-01');
    expect(after).toEqual(before);
    expect(after.delta).toEqual({ version: 1, state: { fw: '9.0' } });
    const watcher = await deltaWatcher(again, 'pi-01');
    await waitFor(() => watcher.last(), { what: 'the retained delta after the restart' });
    expect(watcher.last()).toEqual({ version: 1, state: { fw: '9.0' } });
    // Versions go on from where they were.
    expect((await api(again, 'PATCH', '/api/devices/pi-01/state/desired', { fw: '9.1' })).body).toMatchObject({ desired: { version: 2 } });
  });

  it('is read and set through the SDK, the CLI-facing REST and a handler context, the handler audited as actor', async () => {
    const dir = tempDir('rhizo-state-handler-');
    const module = join(dir, 'auto-mode.mjs');
    writeFileSync(
      module,
      `export default { start(ctx) {
        ctx.on('online', (device) => {
          const view = ctx.state.setDesired(device.id, { mode: 'auto' });
          ctx.log.info({ version: view.desired.version }, 'mode set');
        });
      } };\n`,
    );
    const hub = await startTestHub({ handlers: [{ name: 'auto-mode', module }] });
    const token = hub.stores.devices.add('pi-01');
    await fakeDevice(hub, 'pi-01', token);
    await waitFor(() => hub.state.get('pi-01').desired.version === 1, { what: 'the handler setting desired state' });
    expect(hub.stores.audit.query({ action: 'state.desired' })[0]).toMatchObject({ actor: 'auto-mode', actorKind: 'handler', outcome: 'ok' });

    const sdk = await connect(hub.urls.mqtt, { httpUrl: hub.urls.http, reconnectPeriodMs: 0 });
    cleanup(() => sdk.close());
    expect(await sdk.device('pi-01').state()).toMatchObject({ desired: { version: 1, state: { mode: 'auto' }, updatedBy: 'auto-mode' } });
    expect(await sdk.device('pi-01').setDesired({ fw: '4.0' })).toMatchObject({ desired: { version: 2, state: { mode: 'auto', fw: '4.0' } } });
    expect(await sdk.device('pi-01').setDesired({ fw: '4.1' }, { replace: true })).toMatchObject({ desired: { version: 3, state: { fw: '4.1' } } });
    await expect(sdk.device('ghost').state()).rejects.toMatchObject({ code: 'UNKNOWN_DEVICE' });
    await expect(sdk.device('pi-01').setDesired({ 'bad key': 1 })).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    await expect(sdk.devices({ state: 'state.delta == {}' })).rejects.toMatchObject({ code: 'BAD_REQUEST' });
  });
});

/** The CLI as a process (the hub under test lives in this one). */
function cli(args: string[], env: Record<string, string> = {}): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [HUB_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    child.once('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

describe('rhizosphere state get|set', () => {
  it('reads and sets desired state from the command line, values as JSON or strings; errors coded', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    hub.stores.devices.add('pi-01');
    const env = { RHIZOSPHERE_TOKEN_NAME: 'ops', RHIZOSPHERE_TOKEN: hub.stores.tokens.add('ops', 'operator') };
    const viewer = { RHIZOSPHERE_TOKEN_NAME: 'dash', RHIZOSPHERE_TOKEN: hub.stores.tokens.add('dash', 'viewer') };

    const set = await cli(['state', 'set', '--url', hub.urls.ws, 'pi-01', 'fw=1.2.3', 'interval=30', 'debug=true', 'cfg={"a":[1,2]}', '--json'], env);
    expect(set.status, set.stderr).toBe(0);
    expect(JSON.parse(set.stdout)).toMatchObject({ device: 'pi-01', desired: { version: 1, state: { fw: '1.2.3', interval: 30, debug: true, cfg: { a: [1, 2] } }, updatedBy: 'ops' } });
    const removed = await cli(['state', 'set', '--url', hub.urls.mqtt, '--http-url', hub.urls.http, 'pi-01', 'debug=null'], env);
    expect(removed.status, removed.stderr).toBe(0);
    expect(removed.stdout).toMatch(/^pi-01: desired version 2 \(.* by ops\), reported version 0\n/);
    expect(removed.stdout).toMatch(/^fw\s+"1\.2\.3"\s+-\s+\*$/m);
    expect(removed.stdout).toContain('delta: cfg, fw, interval (not reported yet)');

    const got = await cli(['state', 'get', '--url', hub.urls.ws, 'pi-01'], viewer);
    expect(got.status, got.stderr).toBe(0);
    expect(got.stdout).toMatch(/^KEY\s+DESIRED\s+REPORTED\s+DELTA$/m);
    expect(got.stdout).not.toContain('debug');

    const [forbidden, unknown, usage, noRest] = await Promise.all([
      cli(['state', 'set', '--url', hub.urls.ws, 'pi-01', 'fw=2'], viewer),
      cli(['state', 'get', '--url', hub.urls.ws, 'ghost'], env),
      cli(['state', 'set', '--url', hub.urls.ws, 'pi-01', 'nokey'], env),
      cli(['state', 'get', '--url', hub.urls.mqtt, 'pi-01'], env),
    ]);
    expect(forbidden).toMatchObject({ status: 1, stderr: expect.stringContaining('rhizosphere: FORBIDDEN: dash may not set desired state') });
    expect(unknown).toMatchObject({ status: 1, stderr: expect.stringContaining('rhizosphere: UNKNOWN_DEVICE:') });
    expect(usage).toMatchObject({ status: 2, stderr: expect.stringContaining('"nokey" is not key=value') });
    expect(noRest).toMatchObject({ status: 2, stderr: expect.stringContaining('--http-url is required') });
  });
});

describe('desired state on many devices at once', () => {
  it('sets a value on every device a target selects (PATCH /api/state/desired, state set --tag): online ones apply it at once, an offline one when it comes back', async () => {
    const hub = await startTestHub();
    const script = stateScript();
    const fleet = spawnHypha(hub.urls.mqtt, 'lab', ['--simulate', '4', '--tag', 'lab', '--state-command', script.command, '--log-level', 'warn']);
    const ids = ['lab-000', 'lab-001', 'lab-002', 'lab-003'];
    await waitFor(() => ids.every((id) => hub.device(id)?.online), { timeoutMs: 15_000, what: 'four simulated devices online' });
    const away = spawnHypha(hub.urls.mqtt, 'far', ['--simulate', '1', '--tag', 'lab', '--state-command', script.command, '--log-level', 'warn']);
    await waitFor(() => hub.device('far-000')?.online, { what: 'far-000 online' });
    away.child.kill('SIGTERM');
    await away.exited;

    const changed = await cli(['state', 'set', '--url', hub.urls.ws, '--tag', 'lab', 'fw="2.1"']);
    expect(changed).toMatchObject({ status: 0, stdout: 'desired state changed on 5 devices\n' });
    await waitFor(async () => (await Promise.all(ids.map((id) => getState(hub, id)))).every((view) => view.reported.state.fw === '2.1'), { timeoutMs: 15_000, what: 'every online device applied fw 2.1' });
    expect((await getState(hub, 'far-000')).delta.state).toEqual({ fw: '2.1' });
    spawnHypha(hub.urls.mqtt, 'far', ['--simulate', '1', '--tag', 'lab', '--state-command', script.command, '--log-level', 'warn']);
    await waitFor(async () => (await getState(hub, 'far-000')).reported.state.fw === '2.1', { timeoutMs: 15_000, what: 'far-000 applied it once back' });

    const body = await api(hub, 'PATCH', '/api/state/desired', { target: { devices: ['lab-000', 'ghost'] }, desired: { mode: 'eco' } });
    expect(body).toMatchObject({ status: 200, body: { devices: 1, changed: [{ device: 'lab-000', version: 2 }], unknown: ['ghost'] } });
    for (const [bad, message] of [
      [{ desired: { a: 1 } }, 'target is required'],
      [{ target: { tags: ['lab'] } }, 'desired is required'],
      [{ target: { tags: ['lab'] }, desired: { a: 1 }, extra: 1 }, 'extra is not a field'],
      [{ target: { colour: 'red' }, desired: { a: 1 } }, 'target.'],
      [{ target: { tags: ['lab'] }, desired: [1] }, ''],
    ] as const) {
      const refused = await api(hub, 'PATCH', '/api/state/desired', bad);
      expect([JSON.stringify(bad), refused.status, refused.body.code]).toEqual([JSON.stringify(bad), 400, 'BAD_REQUEST']);
      expect(refused.body.message).toContain(message);
    }
    fleet.child.kill('SIGTERM');
  }, 60_000);
});

describe('desired state on an external broker', () => {
  it('reaches hypha through Mosquitto, also after it was away, and its report comes back through the uplink', async () => {
    const mosquitto = await startMosquitto();
    const hub = await startTestHub({ broker: mosquitto.url });
    hub.stores.devices.add('pi-01');
    const script = stateScript();
    const agent = spawnHypha(mosquitto.url, 'pi-01', ['--state-command', script.command]);
    await waitFor(() => hub.device('pi-01')?.online, { timeoutMs: 15_000, what: 'pi-01 online through the broker' });
    await api(hub, 'PATCH', '/api/devices/pi-01/state/desired', { fw: '6.0' });
    await waitFor(async () => (await getState(hub, 'pi-01')).reported.state.fw === '6.0', { timeoutMs: 15_000, what: 'the report through the uplink' });

    await stop(agent);
    await waitFor(() => hub.device('pi-01')?.online === false, { timeoutMs: 15_000, what: 'pi-01 offline' });
    await api(hub, 'PATCH', '/api/devices/pi-01/state/desired', { fw: '6.1' });
    // Retained on the broker itself, for devices and tools there.
    const watcher = await connectMqtt(mosquitto.url, { clientId: 'watcher' });
    const retained = new Promise<string>((resolve) => watcher.on('message', (_t, payload) => resolve(payload.toString())));
    await watcher.subscribeAsync(`${P}/devices/pi-01/state/delta`, { qos: 1 });
    expect(JSON.parse(await retained)).toEqual({ version: 2, state: { fw: '6.1' } });

    spawnHypha(mosquitto.url, 'pi-01', ['--state-command', script.command]);
    await waitFor(async () => (await getState(hub, 'pi-01')).reported.state.fw === '6.1', { timeoutMs: 15_000, what: 'the change applied after the reconnect' });
    expect(script.applied().map((d) => d.version)).toEqual([1, 2]);
  });
});

describe.skipIf(!claimed)('desired state in a cluster', () => {
  afterAll(() => claimed?.release());

  it('is replicated: set on one node, applied by a device on another, its report read on the first', async () => {
    const a = await startTestHub({ cluster: claimed!.url, nodeId: 'node-a' });
    const b = await startTestHub({ cluster: claimed!.url, nodeId: 'node-b' });
    const token = a.stores.devices.add('pi-01');
    await waitFor(() => b.stores.devices.get('pi-01'), { what: 'pi-01 replicated to node-b' });
    const script = stateScript();
    spawnHypha(b.urls.mqtt, 'pi-01', ['--token', token, '--state-command', script.command]);
    await waitFor(() => a.device('pi-01')?.online && b.device('pi-01')?.online, { timeoutMs: 15_000, what: 'pi-01 online on both nodes' });

    expect((await api(a, 'PATCH', '/api/devices/pi-01/state/desired', { fw: '5.0' })).body).toMatchObject({ desired: { version: 1 } });
    // Applied through node-b, its report replicated back to node-a.
    const seen = await waitFor(async () => {
      const view = await getState(a, 'pi-01');
      return view.reported.state.fw === '5.0' ? view : undefined;
    }, { timeoutMs: 15_000, what: 'the report on node-a' });
    expect(seen.delta).toEqual({ version: 1, state: {} });
    await waitFor(async () => (await getState(b, 'pi-01')).desired.version === 1, { what: 'the desired document on node-b' });
    expect(await getState(b, 'pi-01')).toMatchObject({ desired: { version: 1, state: { fw: '5.0' } }, reported: { state: { fw: '5.0' } } });
    // And the other way round.
    await api(b, 'PATCH', '/api/devices/pi-01/state/desired', { fw: '5.1' });
    await waitFor(async () => (await getState(a, 'pi-01')).reported.state.fw === '5.1', { timeoutMs: 15_000, what: 'the second change applied and seen on node-a' });
    expect(script.applied().map((d) => d.state)).toEqual([{ fw: '5.0' }, { fw: '5.1' }]);
  });
});

describe('desired state, pure parts', () => {
  it('computes the delta key by key, values compared as JSON', () => {
    expect(stateDelta({ a: 1, b: { x: [1, 2], y: 'z' }, c: 'same' }, { a: 2, b: { y: 'z', x: [1, 2] }, c: 'same', d: 'extra' })).toEqual({ a: 1 });
    expect(stateDelta({ a: null as never }, {})).toEqual({ a: null });
    expect(stateDelta({}, { a: 1 })).toEqual({});
  });

  it('checks documents and reports', () => {
    expect(stateProblem({ fw: '1', n: 2, ok: true, list: [1, { a: null }] })).toBeNull();
    expect(stateProblem({ fw: null })).toMatch(/must not be null/);
    expect(stateProblem({ fw: null }, { nullRemoves: true })).toBeNull();
    expect(stateProblem([])).toMatch(/JSON object/);
    expect(stateProblem({ '': 1 })).toMatch(/key "" must be/);
    expect(parsePayload(ReportMessageSchema, '{"state":{"fw":"1"},"version":2}')).toMatchObject({ ok: true });
    expect(parsePayload(ReportMessageSchema, '{"error":"no disk","version":2}')).toMatchObject({ ok: true });
    expect(parsePayload(ReportMessageSchema, '{"error":"","version":2}')).toMatchObject({ ok: false, field: 'error' });
    expect(parsePayload(ReportMessageSchema, '{"state":{},"version":-1}')).toMatchObject({ ok: false, field: 'version' });
  });

  it('parses state conditions into comparisons, and refuses anything else with where it went wrong', () => {
    expect(parseStateCondition('state.reported.fw != state.desired.fw and state.desired.n == 3 && state.reported.on == true')).toEqual([
      { left: { path: 'state.reported.fw' }, op: '!=', right: { path: 'state.desired.fw' } },
      { left: { path: 'state.desired.n' }, op: '==', right: { value: 3 } },
      { left: { path: 'state.reported.on' }, op: '==', right: { value: true } },
    ]);
    expect(parseStateCondition('state.delta == {} and "a \\"q\\"" != state.reported.cfg.list.0')).toEqual([
      { left: { path: 'state.delta' }, op: '==', right: { value: {} } },
      { left: { value: 'a "q"' }, op: '!=', right: { path: 'state.reported.cfg.list.0' } },
    ]);
    for (const [text, message] of [
      ['', /expected a path or a value, found the end/],
      ['state.reported.fw', /expected == or !=/],
      ['state.reported.fw == ', /after ==/],
      ['state.reported.fw == 1 or state.desired.fw == 2', /must start with state/],
      ['state.reported.fw == 1 state.desired.fw == 2', /expected and/],
      ['state.other.fw == 1', /must start with state.desired, state.reported or state.delta/],
      ['state.reported.fw == "open', /does not end/],
      ['state.reported.fw = 1', /unexpected "="/],
      ['require("fs") == 1', /must start with state/],
    ] as const) {
      expect(() => parseStateCondition(text), text).toThrow(message);
    }
    expect(validate(SelectorSchema, { state: 'state.reported.fw ==' })).toMatchObject({ ok: false, field: 'state' });
    expect(validate(SelectorSchema, { state: [{ left: { path: 'x' }, op: '==', right: { value: 1 } }] })).toMatchObject({ ok: false, field: 'state.0.left.path' });
    expect(validate(SelectorSchema, { state: [{ left: { path: 'state.desired.a' }, op: '<', right: { value: 1 } }] })).toMatchObject({ ok: false, field: 'state.0.op' });
    expect(validate(SelectorSchema, { state: [] })).toMatchObject({ ok: false, field: 'state' });
    expect(validate(SelectorSchema, { state: 'state.delta != {}' })).toMatchObject({ ok: true });
  });

  it('evaluates conditions with missing values as null', () => {
    const docs = (desired: Record<string, unknown>, reported: Record<string, unknown>) => ({
      desired: { version: 1, state: desired as never, updatedAt: 1, updatedBy: null },
      reported: { version: 1, state: reported as never, updatedAt: 1, error: null },
    });
    const differs = compileStateCondition('state.reported.fw != state.desired.fw');
    expect(differs(docs({ fw: '2' }, { fw: '1' }))).toBe(true);
    expect(differs(docs({ fw: '2' }, {}))).toBe(true);
    expect(differs(docs({ fw: { a: [1] } }, { fw: { a: [1] } }))).toBe(false);
    expect(differs(undefined)).toBe(false);
    const pending = compileStateCondition([{ left: { path: 'state.delta.fw' }, op: '!=', right: { value: null } }]);
    expect(pending(docs({ fw: '2' }, { fw: '1' }))).toBe(true);
    expect(pending(docs({}, { fw: '1' }))).toBe(false);
    expect(compileStateCondition('state.reported.list.1 == "b"')(docs({}, { list: ['a', 'b'] }))).toBe(true);
  });

  it('has topics and access rules: a device reports only its own state and reads only its own delta', () => {
    const topics = new Topics(P);
    expect(topics.deviceStateDelta('pi-01')).toBe(`${P}/devices/pi-01/state/delta`);
    expect(topics.parseDeviceTopic(`${P}/devices/pi-01/state/reported`)).toEqual({ id: 'pi-01', kind: 'state', state: 'reported' });
    expect(topics.parseDeviceTopic(`${P}/devices/pi-01/state/other`)).toBeNull();
    const device = { kind: 'device', id: 'pi-01' } as const;
    expect(mayPublish(device, 'pi-01', `${P}/devices/pi-01/state/reported`, topics).ok).toBe(true);
    expect(mayPublish(device, 'pi-01', `${P}/devices/pi-02/state/reported`, topics).ok).toBe(false);
    expect(mayPublish(device, 'pi-01', `${P}/devices/pi-01/state/delta`, topics).ok).toBe(false);
    expect(maySubscribe(device, 'pi-01', `${P}/devices/pi-01/state/delta`, topics).ok).toBe(true);
    expect(maySubscribe(device, 'pi-01', `${P}/devices/+/state/delta`, topics).ok).toBe(false);
    const anonymous = { kind: 'anonymous', role: 'operator' } as const;
    expect(mayPublish(anonymous, 'pi-02', `${P}/devices/pi-01/state/reported`, topics).ok).toBe(false);
    expect(mayPublish(anonymous, 'pi-01', `${P}/devices/pi-01/state/delta`, topics).ok).toBe(false);
    expect(mayPublish(anonymous, 'pi-01', `${P}/devices/pi-01/state/reported`, topics).ok).toBe(true);
    const viewer = { kind: 'token', name: 'dash', role: 'viewer' } as const;
    expect(maySubscribe(viewer, 'dash', `${P}/devices/+/state/#`, topics).ok).toBe(true);
    expect(mayPublish(viewer, 'dash', `${P}/devices/pi-01/state/reported`, topics).ok).toBe(false);
    const operator = { kind: 'token', name: 'ops', role: 'operator' } as const;
    expect(mayPublish(operator, 'ops', `${P}/devices/pi-01/state/delta`, topics).ok).toBe(false);
  });
});
