/**
 * Device tags (docs/protocol.md "Device tags"): assigned by admins, declared by real hypha
 * agents with --tag, carried in the retained Status and REST, matched by the SDK's devices()
 * and by job selectors, and bad declarations ignored with a logged code.
 */
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { connect } from '../src/client/index.js';
import type { Hub } from '../src/index.js';
import type { Status } from '../src/protocol/schemas.js';
import { capturedLog, cleanup, connectMqtt, HUB_BIN, HYPHA_BIN, spawnHypha, startAgents, startTestHub, waitFor } from './helpers.js';

function admin(hub: Hub, args: string[]) {
  return spawnSync(process.execPath, [HUB_BIN, ...args, '--data-dir', hub.config.dataDir], { encoding: 'utf8', timeout: 15_000 });
}

async function api(hub: Hub, path: string, token: string) {
  const response = await fetch(`${hub.urls.http}${path}`, { headers: { authorization: `Bearer ${token}` } });
  return (await response.json()) as Record<string, unknown>;
}

/** The retained Status of each device, as a subscriber sees it. */
async function statusWatcher(hub: Hub, token: string) {
  const client = await connectMqtt(hub.urls.mqtt, { username: 'watch', password: token });
  const statuses = new Map<string, Status>();
  client.on('message', (topic, payload) => {
    const id = /devices\/([^/]+)\/status$/.exec(topic)?.[1];
    if (id && payload.length > 0) statuses.set(id, JSON.parse(payload.toString()) as Status);
  });
  await client.subscribeAsync('rhizosphere/devices/+/status', { qos: 1 });
  return statuses;
}

describe('device tags', () => {
  it('are declared by hypha --tag, merged with assigned ones, and matched by the SDK and jobs', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    const tokens = {
      'pi-01': hub.stores.devices.add('pi-01', ['kitchen']),
      'pi-02': hub.stores.devices.add('pi-02'),
      'pi-03': hub.stores.devices.add('pi-03', ['attic']),
    };
    const viewer = hub.stores.tokens.add('watch', 'viewer');
    const statuses = await statusWatcher(hub, viewer);

    spawnHypha(hub.urls.mqtt, 'pi-01', ['--token', tokens['pi-01'], '--tag', 'floor:2', '--tag', 'kitchen']);
    const pi02 = spawnHypha(hub.urls.ws, 'pi-02', ['--token', tokens['pi-02'], '--tag', 'kitchen,pi4']);
    spawnHypha(hub.urls.mqtt, 'pi-03', ['--token', tokens['pi-03']]);

    await waitFor(() => statuses.get('pi-01')?.online && statuses.get('pi-01')!.tags.includes('floor:2'), { what: 'pi-01 declared tags in its status' });
    await waitFor(() => statuses.get('pi-02')?.tags.includes('pi4'), { what: 'pi-02 declared tags in its status' });
    await waitFor(() => statuses.get('pi-03')?.online, { what: 'pi-03 online' });
    expect(statuses.get('pi-01')).toMatchObject({ online: true, transport: 'mqtt', tags: ['kitchen', 'floor:2'] });
    expect(statuses.get('pi-02')).toMatchObject({ online: true, transport: 'mqtt-ws', tags: ['kitchen', 'pi4'] });
    expect(statuses.get('pi-03')?.tags).toEqual(['attic']);

    // REST: the union in the list, the two sources on one device.
    const list = (await (await fetch(`${hub.urls.http}/api/devices`, { headers: { authorization: `Bearer ${viewer}` } })).json()) as { id: string; tags: string[] }[];
    expect(Object.fromEntries(list.map((d) => [d.id, d.tags]))).toEqual({ 'pi-01': ['kitchen', 'floor:2'], 'pi-02': ['kitchen', 'pi4'], 'pi-03': ['attic'] });
    expect(await api(hub, '/api/devices/pi-01', viewer)).toMatchObject({ tags: ['kitchen', 'floor:2'], assignedTags: ['kitchen'], declaredTags: ['floor:2', 'kitchen'] });

    // The SDK selects by tags from the statuses alone.
    const sdk = await connect(hub.urls.mqtt, { tokenName: 'ops', token: hub.stores.tokens.add('ops', 'operator'), httpUrl: hub.urls.http, reconnectPeriodMs: 0 });
    cleanup(() => sdk.close());
    expect((await sdk.devices({ tags: ['kitchen'] })).map((d) => d.id)).toEqual(['pi-01', 'pi-02']);
    expect((await sdk.devices({ tags: ['kitchen', 'pi4'] })).map((d) => d.id)).toEqual(['pi-02']);
    expect((await sdk.devices({ tags: [] })).map((d) => d.id)).toEqual(['pi-01', 'pi-02', 'pi-03']);
    expect((await sdk.devices({ tags: ['attic'], online: false })).map((d) => d.id)).toEqual([]);
    expect((await sdk.device('pi-02').status())?.tags).toEqual(['kitchen', 'pi4']);

    // A job aimed at a declared tag reaches the device that declared it.
    const created = await sdk.jobs.create({ target: { tags: ['pi4'] }, cmd_str: 'echo $((40+2))' });
    expect(created.targets).toBe(1);
    await sdk.jobs.watch(created.id);
    const job = await sdk.jobs.get(created.id);
    expect(job.targets).toEqual([expect.objectContaining({ device: 'pi-02', state: 'succeeded', result: '42' })]);

    // Declared tags stay while the device is offline, for selectors; a restart without --tag withdraws them.
    pi02.child.kill('SIGTERM');
    await pi02.exited;
    await waitFor(() => statuses.get('pi-02')?.online === false, { what: 'pi-02 offline' });
    expect(statuses.get('pi-02')?.tags).toEqual(['kitchen', 'pi4']);
    expect((await sdk.devices({ tags: ['pi4'], online: false })).map((d) => d.id)).toEqual(['pi-02']);
    spawnHypha(hub.urls.mqtt, 'pi-02', ['--token', tokens['pi-02']]);
    await waitFor(() => statuses.get('pi-02')?.online && statuses.get('pi-02')!.tags.length === 0, { what: 'pi-02 back without tags' });
    expect(hub.stores.devices.get('pi-02')?.declaredTags).toEqual([]);
  });

  it('follow admin changes made by the CLI in another process, statuses included', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    const token = hub.stores.devices.add('pi-01', ['lab']);
    const statuses = await statusWatcher(hub, hub.stores.tokens.add('watch', 'viewer'));
    await startAgents(hub, ['pi-01'], hub.urls.mqtt, ['--token', token, '--tag', 'model.pi4']);
    await waitFor(() => statuses.get('pi-01')?.tags.includes('model.pi4'), { what: 'declared tag' });

    const tagged = admin(hub, ['device', 'tag', 'pi-01', '--tag', 'kitchen', '--tag', 'floor-1', '--json']);
    expect(tagged.status, tagged.stderr).toBe(0);
    expect(JSON.parse(tagged.stdout)).toEqual({ id: 'pi-01', tags: ['kitchen', 'floor-1', 'model.pi4'], assignedTags: ['kitchen', 'floor-1'], declaredTags: ['model.pi4'] });
    // The hub notices the other process's write and publishes the Status again, still online.
    await waitFor(() => statuses.get('pi-01')?.tags.includes('kitchen'), { timeoutMs: 3000, what: 'the new tags in the status' });
    expect(statuses.get('pi-01')).toMatchObject({ online: true, tags: ['kitchen', 'floor-1', 'model.pi4'] });
    expect(hub.device('pi-01')?.tags).toEqual(['kitchen', 'floor-1', 'model.pi4']);

    const listed = admin(hub, ['device', 'list']);
    // The agent column: hypha/VERSION once the hub has written what it saw (batched, within a second), else -.
    expect(listed.stdout).toMatch(/pi-01\s+active\s+token\s+(hypha\/\S+|-)\s+kitchen,floor-1,model\.pi4\*/);
    const cleared = admin(hub, ['device', 'tag', 'pi-01']);
    expect(cleared.status, cleared.stderr).toBe(0);
    await waitFor(() => statuses.get('pi-01')?.tags.join() === 'model.pi4', { timeoutMs: 3000, what: 'assigned tags cleared' });

    const bad = admin(hub, ['device', 'tag', 'pi-01', '--tag', 'no spaces']);
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toContain('tag "no spaces" must be 1 to 64 of');
    const unknown = admin(hub, ['device', 'tag', 'ghost', '--tag', 'x']);
    expect(unknown.status).not.toBe(0);
    expect(unknown.stderr).toContain('no device ghost');
  });

  it('ignores bad declarations with a logged BAD_REQUEST, keeps the device connected and its tags unchanged', async () => {
    const { logger, lines } = capturedLog();
    const hub = await startTestHub({ allowAnonymous: false, logger });
    const token = hub.stores.devices.add('pi-01');
    const otherToken = hub.stores.devices.add('pi-02');
    const device = await connectMqtt(hub.urls.mqtt, { clientId: 'pi-01', username: 'pi-01', password: token, clean: false });
    await device.subscribeAsync('rhizosphere/devices/pi-01/command', { qos: 1 });
    await waitFor(() => hub.device('pi-01')?.online, { what: 'pi-01 online' });
    const topic = 'rhizosphere/devices/pi-01/telemetry/tags';
    await device.publishAsync(topic, JSON.stringify({ tags: ['good'] }), { qos: 1 });
    await waitFor(() => hub.device('pi-01')?.tags.includes('good'), { what: 'a good declaration' });

    const cases: [payload: string, field: string][] = [
      ['not json', 'payload is not valid JSON'],
      ['["a"]', 'payload must be a JSON object'],
      ['{"tags":"kitchen"}', 'tags'],
      ['{"tags":["ok","bad tag"]}', 'tags.1'],
      ['{"tags":["a/b"]}', 'tags.0'],
      ['{"tags":["+"]}', 'tags.0'],
      [JSON.stringify({ tags: Array.from({ length: 65 }, (_, i) => `t${i}`) }), 'tags'],
      [JSON.stringify({ tags: ['x'.repeat(65)] }), 'tags.0'],
      ['{}', 'tags'],
    ];
    for (const [payload] of cases) await device.publishAsync(topic, payload, { qos: 1 });
    await waitFor(() => lines.filter((l) => String(l.msg).startsWith('declared tags ignored')).length >= cases.length, { what: 'a warning per bad declaration' });
    const warnings = lines.filter((l) => String(l.msg).startsWith('declared tags ignored'));
    for (const [index, [, field]] of cases.entries()) {
      expect(warnings[index]).toMatchObject({ code: 'BAD_REQUEST', device: 'pi-01' });
      expect(String(warnings[index]!.msg)).toContain(field);
    }
    expect(device.connected).toBe(true);
    expect(hub.device('pi-01')).toMatchObject({ online: true, tags: ['good'] });
    expect(hub.stores.devices.get('pi-01')?.declaredTags).toEqual(['good']);

    // Another device may not declare tags for pi-01: its connection is closed, pi-01's tags stay.
    const other = await connectMqtt(hub.urls.mqtt, { clientId: 'pi-02', username: 'pi-02', password: otherToken, reconnectPeriod: 0 });
    const closed = new Promise<void>((resolve) => other.once('close', () => resolve()));
    other.publish(topic, JSON.stringify({ tags: ['evil'] }), { qos: 1 });
    await closed;
    expect(hub.device('pi-01')?.tags).toEqual(['good']);

    // And the hub still serves: pi-01 answers a command.
    device.on('message', (_t, payload) => {
      const command = JSON.parse(payload.toString()) as { id: string };
      device.publish('rhizosphere/devices/pi-01/response', JSON.stringify({ type: 'response', id: command.id, result: 'fine', error: '', exit_code: 0 }), { qos: 1 });
    });
    expect(await hub.exec('pi-01', 'true')).toMatchObject({ result: 'fine', exit_code: 0 });
  });

  it('hypha refuses a bad --tag with exit status 2 naming the flag', async () => {
    const bad = spawnHypha('mqtt://127.0.0.1:1', 'pi-01', ['--tag', 'ok', '--tag', 'no/slash']);
    expect(await bad.exited).toBe(2);
    expect(bad.output()).toContain('hypha: --tag: tag "no/slash" must be 1 to 64 of');
    const fromEnv = spawnSync(process.execPath, [HYPHA_BIN, '--url', 'mqtt://127.0.0.1:1', '--id', 'pi-01'], {
      encoding: 'utf8',
      timeout: 10_000,
      env: { ...process.env, HYPHA_TAGS: 'kitchen, $SYS' },
    });
    expect(fromEnv.status).toBe(2);
    expect(fromEnv.stderr).toContain('hypha: HYPHA_TAGS: tag "$SYS" must be 1 to 64 of');
  });
});
