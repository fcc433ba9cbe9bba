/** The client SDK (src/client) against a real hub with API tokens, real hypha agents and scripted devices. */
import { createServer } from 'node:net';
import { Aedes } from 'aedes';
import { describe, expect, it } from 'vitest';
import { connect, type Credentials, type DeviceStatus, type HubClient, type JobStatus } from '../src/client/index.js';
import { startHub, type Hub } from '../src/index.js';
import type { Command } from '../src/protocol/schemas.js';
import { cleanup, connectMqtt, freePort, startAgents, startTestHub, tempDir, waitFor } from './helpers.js';

async function sdk(url: string, options: Parameters<typeof connect>[1] = {}): Promise<HubClient> {
  const hub = await connect(url, { reconnectPeriodMs: 0, ...options });
  cleanup(() => hub.close());
  return hub;
}

/** A device played by an MQTT.js client: answers each command after `delayMs` with exit status 0. */
async function scriptedDevice(hub: Hub, id: string, token: string, delayMs = 20) {
  const client = await connectMqtt(hub.urls.mqtt, { clientId: id, username: id, password: token, clean: false });
  const commands: Command[] = [];
  client.on('message', (topic, payload) => {
    if (topic !== `rhizosphere/devices/${id}/command`) return;
    const command = JSON.parse(payload.toString()) as Command;
    commands.push(command);
    const timer = setTimeout(() => {
      if (client.connected) client.publish(`rhizosphere/devices/${id}/response`, JSON.stringify({ type: 'response', id: command.id, result: `ran ${command.cmd_str}`, error: '', exit_code: 0 }), { qos: 1 });
    }, delayMs);
    cleanup(() => clearTimeout(timer));
  });
  await client.subscribeAsync(`rhizosphere/devices/${id}/command`, { qos: 1 });
  await waitFor(() => hub.device(id)?.online, { what: `${id} online` });
  return { client, commands };
}

describe('client SDK', () => {
  it('runs commands on a real agent: ok, non-zero, stderr, okng, DEVICE_OFFLINE, UNKNOWN_DEVICE, FORBIDDEN for a viewer', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    const token = hub.stores.devices.add('pi-01', ['kitchen']);
    hub.stores.devices.add('pi-02');
    await startAgents(hub, ['pi-01'], hub.urls.mqtt, ['--token', token]);
    const ops = await sdk(hub.urls.mqtt, { tokenName: 'ops', token: hub.stores.tokens.add('ops', 'operator') });

    const ok = await ops.device('pi-01').exec('echo hello; echo warn >&2');
    expect(ok).toMatchObject({ device: 'pi-01', result: 'hello', error: 'warn', exitCode: 0, truncated: false });
    expect(typeof ok.durationMs).toBe('number');

    expect(await ops.device('pi-01').exec('exit 3', { timeoutMs: 5000 })).toMatchObject({ exitCode: 3, result: '' });
    expect(await ops.device('pi-01').exec('false', { order: 'exec_bash_ret_okng_only' })).toMatchObject({ result: 'ng', exitCode: 1 });

    // Several at once, each matched to its own Reply.
    const many = await Promise.all([1, 2, 3, 4, 5].map((n) => ops.device('pi-01').exec(`echo ${n}`)));
    expect(many.map((r) => r.result)).toEqual(['1', '2', '3', '4', '5']);

    await expect(ops.device('pi-02').exec('uptime')).rejects.toMatchObject({ name: 'ClientError', code: 'DEVICE_OFFLINE', device: 'pi-02' });
    await expect(ops.device('nobody').exec('uptime')).rejects.toMatchObject({ code: 'UNKNOWN_DEVICE' });
    await expect(ops.device('bad/id').exec('uptime')).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    await expect(ops.device('pi-01').exec('sleep 5', { timeoutMs: 1000 })).rejects.toMatchObject({ code: 'TIMEOUT' });

    const viewer = await sdk(hub.urls.ws, { tokenName: 'dash', token: hub.stores.tokens.add('dash', 'viewer') });
    await expect(viewer.device('pi-01').exec('uptime')).rejects.toMatchObject({ code: 'FORBIDDEN' });

    // Wrong credentials and none at all are refused at connect.
    await expect(connect(hub.urls.mqtt, { tokenName: 'ops', token: 'guess', reconnectPeriodMs: 0 })).rejects.toMatchObject({ code: 'FORBIDDEN' });
    await expect(connect(hub.urls.mqtt, { reconnectPeriodMs: 0 })).rejects.toMatchObject({ code: 'FORBIDDEN' });
    await expect(connect('mqtt://127.0.0.1:1', { reconnectPeriodMs: 0 })).rejects.toMatchObject({ code: 'NOT_CONNECTED' });
  });

  it('lists devices from the retained statuses and reports presence changes', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    const tokens = Object.fromEntries(['d-1', 'd-2', 'd-3'].map((id) => [id, hub.stores.devices.add(id)]));
    // A registered device is in the table (offline) once the hub has seen the registration.
    await waitFor(() => hub.device('d-3'), { what: 'd-3 registered' });
    const d1 = await scriptedDevice(hub, 'd-1', tokens['d-1']!);
    await scriptedDevice(hub, 'd-2', tokens['d-2']!);
    await d1.client.endAsync(true);
    await waitFor(() => hub.device('d-1')?.online === false, { what: 'd-1 offline' });

    const viewer = await sdk(hub.urls.mqtt, { tokenName: 'dash', token: hub.stores.tokens.add('dash', 'viewer') });
    const all = await viewer.devices();
    expect(all.map((d) => [d.id, d.online])).toEqual([
      ['d-1', false],
      ['d-2', true],
      ['d-3', false],
    ]);
    expect(all[1]).toMatchObject({ transport: 'mqtt' });
    expect(Date.parse(all[1]!.since)).toBeGreaterThan(0);
    expect((await viewer.devices({ online: true })).map((d) => d.id)).toEqual(['d-2']);
    expect((await viewer.devices({ devices: ['d-1', 'zzz'] })).map((d) => d.id)).toEqual(['d-1']);

    const events: [string, string, DeviceStatus][] = [];
    const snapshots: Readonly<DeviceStatus>[] = [];
    viewer.on('status', (_id, status) => status && snapshots.push(status));
    viewer.on('online', (id, status) => events.push(['online', id, status]));
    viewer.on('offline', (id, status) => events.push(['offline', id, status]));
    const d3 = await scriptedDevice(hub, 'd-3', tokens['d-3']!);
    await waitFor(() => events.some(([e, id]) => e === 'online' && id === 'd-3'), { what: 'online event' });
    await d3.client.endAsync(true);
    await waitFor(() => events.some(([e, id]) => e === 'offline' && id === 'd-3'), { what: 'offline event' });
    expect(events.map(([e, id]) => `${e} ${id}`)).toEqual(['online d-3', 'offline d-3']);
    expect(events[0]![2]).toMatchObject({ id: 'd-3', online: true, transport: 'mqtt' });
    expect((await viewer.device('d-3').status())?.online).toBe(false);
    // 'status' hands out the SDK's own snapshots, frozen, not copies.
    expect(snapshots.map((s) => `${s.id} ${s.online}`)).toEqual(['d-3 true', 'd-3 false']);
    expect(Object.isFrozen(snapshots[0]) && Object.isFrozen(snapshots[0]!.tags)).toBe(true);
  });

  it('connects in the background, renews credentials the hub refuses, follows every job', async () => {
    const [mqttPort, httpPort] = [await freePort(), await freePort()];
    const hubOptions = { host: '127.0.0.1', mqttPort, httpPort, logLevel: 'silent' as const, allowAnonymous: false };
    let current: Credentials | null = null;
    let renewals = 0;
    // No hub yet: connect() resolves anyway and keeps trying, with a token no hub knows.
    const ops = await connect(`mqtt://127.0.0.1:${mqttPort}`, {
      tokenName: 'ops',
      token: 'not-a-token',
      httpUrl: `http://127.0.0.1:${httpPort}`,
      waitForConnection: false,
      reconnectPeriodMs: 100,
      statusQos: 0,
      mqttOptions: { keepalive: 5 },
      renewCredentials: async () => {
        renewals++;
        return current;
      },
    });
    cleanup(() => ops.close());
    const events: string[] = [];
    for (const event of ['connect', 'reconnect', 'disconnect'] as const) ops.on(event, () => events.push(event));
    expect(ops.connected).toBe(false);

    let hub = await startHub({ ...hubOptions, dataDir: tempDir() });
    cleanup(() => hub.close());
    current = { tokenName: 'ops', token: hub.stores.tokens.add('ops', 'operator') };
    await waitFor(() => events.includes('connect'), { what: 'first connect' });
    expect(renewals).toBeGreaterThanOrEqual(1);
    await scriptedDevice(hub, 'k-1', hub.stores.devices.add('k-1', ['kitchen']), 300);
    await waitFor(async () => (await ops.devices({ online: true })).some((d) => d.id === 'k-1'), { what: 'k-1 in devices()' });

    // Every job, then one: REST (with the renewed token) creates, MQTT follows.
    const everyJob: JobStatus[] = [];
    const stopEvery = await ops.jobs.follow(null, (status) => everyJob.push(status));
    const job = await ops.jobs.create({ target: { tags: ['kitchen'] }, cmd_str: 'true' });
    const oneJob: JobStatus[] = [];
    const stopOne = await ops.jobs.follow(job.id, (status) => oneJob.push(status));
    await waitFor(() => everyJob.some((s) => s.state === 'done') && oneJob.some((s) => s.state === 'done'), { what: 'job done' });
    expect(everyJob.every((s) => s.id === job.id)).toBe(true);
    expect(oneJob.at(-1)).toEqual({ id: job.id, state: 'done', counts: { queued: 0, sent: 0, succeeded: 1, failed: 0, timed_out: 0, canceled: 0 } });
    stopEvery();
    stopOne();

    // A new hub with another database no longer knows the token: refused, renewed, reconnected.
    await hub.close();
    await waitFor(() => events.includes('disconnect'), { what: 'disconnect' });
    const before = renewals;
    hub = await startHub({ ...hubOptions, dataDir: tempDir() });
    current = { tokenName: 'ops', token: hub.stores.tokens.add('ops', 'operator') };
    await waitFor(() => events.includes('reconnect'), { what: 'reconnect with a renewed token' });
    expect(renewals).toBeGreaterThan(before);
    expect(ops.connected).toBe(true);
    expect(events.filter((e) => e === 'connect')).toHaveLength(1);

    await expect(connect(`mqtt://127.0.0.1:${mqttPort}`, { waitForConnection: false, reconnectPeriodMs: 0 })).rejects.toMatchObject({ code: 'BAD_REQUEST' });
  });

  it('closes at once when the hub is gone, even with a request waiting to be sent', async () => {
    const hub = await startTestHub();
    const ops = await connect(hub.urls.mqtt, { reconnectPeriodMs: 100 });
    await hub.close();
    await waitFor(() => !ops.connected, { what: 'the SDK disconnected' });
    const pending = ops.exec('somewhere', 'true').catch((error: { code: string }) => error.code);
    const started = Date.now();
    await ops.close();
    expect(Date.now() - started).toBeLessThan(2000);
    expect(await pending).toBe('NOT_CONNECTED');
  });

  it('closes within its drain time when a broker never acknowledges what it sent', async () => {
    // A broker that takes publishes and never answers them (no PUBACK): what a hub that went
    // away a moment ago looks like to a client that has not noticed yet.
    const broker = await Aedes.createBroker({ authorizePublish: () => {} });
    const server = createServer(broker.handle);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanup(() => new Promise<void>((resolve) => broker.close(() => server.close(() => resolve()))));
    const ops = await connect(`mqtt://127.0.0.1:${(server.address() as { port: number }).port}`, { reconnectPeriodMs: 0, waitForConnection: true });
    const pending = ops.exec('somewhere', 'true').catch((error: { code: string }) => error.code);
    await new Promise((r) => setTimeout(r, 200));
    const started = Date.now();
    await ops.close();
    expect(Date.now() - started).toBeLessThan(4000);
    expect(await pending).toBe('NOT_CONNECTED');
  });

  it('creates, watches and cancels fleet jobs', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    const ids = ['k-1', 'k-2', 'k-3'];
    for (const id of ids) await scriptedDevice(hub, id, hub.stores.devices.add(id, ['kitchen']), 50);
    const ops = await sdk(hub.urls.ws, { tokenName: 'ops', token: hub.stores.tokens.add('ops', 'operator') });

    const created = await ops.jobs.create({ target: { tags: ['kitchen'] }, cmd_str: 'apt-get update', concurrency: 1 });
    expect(created).toEqual({ id: expect.any(String), targets: 3 });
    const seen: JobStatus[] = [];
    const final = await ops.jobs.watch(created.id, (s) => seen.push(s));
    expect(final).toEqual({ id: created.id, state: 'done', counts: { queued: 0, sent: 0, succeeded: 3, failed: 0, timed_out: 0, canceled: 0 } });
    expect(seen.length).toBeGreaterThanOrEqual(1);
    const job = await ops.jobs.get(created.id);
    expect(job.targets.map((t) => [t.device, t.state, t.result])).toEqual(ids.map((id) => [id, 'succeeded', 'ran apt-get update']));
    expect((await ops.jobs.list()).map((j) => j.id)).toContain(created.id);

    // Cancel: one device is offline, so its target waits, then is canceled.
    hub.stores.devices.add('k-off', ['kitchen']);
    const slow = await ops.jobs.create({ target: { devices: ['k-off', 'ghost'] }, cmd_str: 'true' });
    // A named device the hub has never seen is a target too: it waits, offline.
    expect(slow).toMatchObject({ targets: 2, unknown: ['ghost'] });
    const watching = ops.jobs.watch(slow.id);
    const canceled = await ops.jobs.cancel(slow.id);
    expect(canceled.state).toBe('canceled');
    expect((await watching).counts).toMatchObject({ canceled: 2, queued: 0, sent: 0 });

    await expect(ops.jobs.get('no-such-job')).rejects.toMatchObject({ code: 'BAD_REQUEST', message: 'no job no-such-job' });
    await expect(ops.jobs.create({ target: {}, cmd_str: 'true' })).rejects.toMatchObject({ code: 'BAD_REQUEST' });

    // A viewer may watch and read, not create; an mqtt:// URL without httpUrl has no REST.
    const viewer = await sdk(hub.urls.mqtt, { tokenName: 'dash', token: hub.stores.tokens.add('dash', 'viewer'), httpUrl: hub.urls.http });
    await expect(viewer.jobs.create({ target: { tags: ['kitchen'] }, cmd_str: 'true' })).rejects.toMatchObject({ code: 'FORBIDDEN' });
    expect((await viewer.jobs.watch(created.id)).state).toBe('done');
    const noRest = await sdk(hub.urls.mqtt, { tokenName: 'ops2', token: hub.stores.tokens.add('ops2', 'operator') });
    await expect(noRest.jobs.get(created.id)).rejects.toMatchObject({ code: 'BAD_REQUEST', message: expect.stringContaining('httpUrl') });
  });
});
