/**
 * Access control end to end: real MQTT clients, real agents, REST and the admin CLI against
 * a hub that refuses strangers (no --allow-anonymous).
 */
import { spawnSync } from 'node:child_process';
import { WebSocket } from 'ws';
import { describe, expect, it } from 'vitest';
import type { Hub } from '../src/index.js';
import { capturedLog, connectMqtt, grantedQos, HUB_BIN, RequestClient, spawnHypha, startTestHub, waitFor } from './helpers.js';

const secure = () => startTestHub({ allowAnonymous: false });

function cli(hub: Hub, args: string[], input?: string) {
  return spawnSync(process.execPath, [HUB_BIN, ...args, '--data-dir', hub.config.dataDir], { encoding: 'utf8', timeout: 15_000, input });
}

async function api(hub: Hub, path: string, { token, method = 'GET', body }: { token?: string; method?: string; body?: unknown } = {}) {
  const res = await fetch(`${hub.urls.http}${path}`, {
    method,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json().catch(() => null)) as Record<string, unknown> | unknown[] | null, headers: res.headers };
}

/** A device made of a bare MQTT.js client with its credentials, subscribed to its command topic like a real one. */
async function deviceClient(hub: Hub, id: string, token: string, { subscribe = true } = {}) {
  const client = await connectMqtt(hub.urls.mqtt, { clientId: id, username: id, password: token, clean: false });
  const received: string[] = [];
  client.on('message', (topic) => received.push(topic));
  if (subscribe) await client.subscribeAsync(`rhizosphere/devices/${id}/command`, { qos: 1 });
  return { client, received };
}

describe('who gets in', () => {
  it('refuses anonymous clients and wrong credentials, and lets registered devices and tokens in', async () => {
    const hub = await secure();
    expect(hub.initialAdminPassword).toMatch(/^[A-Za-z0-9_-]{20}$/);
    await expect(connectMqtt(hub.urls.mqtt, { clientId: 'stranger' })).rejects.toMatchObject({ code: 5 });
    const token = hub.stores.devices.add('pi-01');
    await expect(connectMqtt(hub.urls.mqtt, { clientId: 'pi-01', username: 'pi-01', password: 'guess' })).rejects.toMatchObject({ code: 4 });
    await expect(connectMqtt(hub.urls.mqtt, { clientId: 'pi-02', username: 'pi-02', password: token })).rejects.toMatchObject({ code: 4 });
    // A device's token used with another client id is not a device credential.
    await expect(connectMqtt(hub.urls.mqtt, { clientId: 'pi-other', username: 'pi-01', password: token })).rejects.toMatchObject({ code: 4 });

    // Authenticated as a device: it is a device, online once it holds its command subscription.
    const { client } = await deviceClient(hub, 'pi-01', token, { subscribe: false });
    await new Promise((r) => setTimeout(r, 100));
    expect(hub.device('pi-01')?.online ?? false).toBe(false);
    await client.subscribeAsync('rhizosphere/devices/pi-01/command', { qos: 1 });
    await waitFor(() => hub.device('pi-01')?.online, { what: 'pi-01 online' });

    const secret = hub.stores.tokens.add('ops', 'operator');
    await expect(connectMqtt(hub.urls.mqtt, { clientId: 'ops-1', username: 'ops', password: secret })).resolves.toBeTruthy();
    await expect(connectMqtt(hub.urls.mqtt, { clientId: 'ops-2', username: 'ops', password: 'nope' })).rejects.toMatchObject({ code: 4 });
    expect(hub.device('ops-1')).toBeUndefined();
  });

  it('runs a real agent that has a token, end to end', async () => {
    const hub = await secure();
    const token = hub.stores.devices.add('pi-real', ['kitchen']);
    spawnHypha(hub.urls.mqtt, 'pi-real', ['--token', token]);
    await waitFor(() => hub.device('pi-real')?.online, { timeoutMs: 15_000, what: 'agent online' });
    const ops = hub.stores.tokens.add('ops', 'operator');
    const res = await api(hub, '/api/devices/pi-real/commands', { token: ops, method: 'POST', body: { order: 'exec_bash', cmd_str: 'echo secured' } });
    expect(res).toMatchObject({ status: 200, body: { status: 'ok', result: 'secured' } });
  });
});

describe('credentials that change', () => {
  it('drops a device at once when its token is rotated or it is removed, by the CLI in another process', async () => {
    const hub = await secure();
    const added = cli(hub, ['device', 'add', 'pi-rot', '--tag', 'lab', '--json']);
    expect(added.status).toBe(0);
    const { id, token } = JSON.parse(added.stdout) as { id: string; token: string };
    expect(id).toBe('pi-rot');
    // Registered while the hub runs: it shows in the table, offline.
    await waitFor(() => hub.device('pi-rot'), { what: 'the hub to learn of pi-rot' });
    expect(hub.device('pi-rot')!.online).toBe(false);

    const agent = spawnHypha(hub.urls.mqtt, 'pi-rot', ['--token', token]);
    await waitFor(() => hub.device('pi-rot')?.online, { timeoutMs: 15_000, what: 'online' });

    const rotated = cli(hub, ['device', 'rotate', 'pi-rot', '--json']);
    expect(rotated.status).toBe(0);
    const fresh = (JSON.parse(rotated.stdout) as { token: string }).token;
    expect(fresh).not.toBe(token);
    const t0 = Date.now();
    await waitFor(() => hub.device('pi-rot')?.online === false, { what: 'dropped after rotation' });
    expect(Date.now() - t0).toBeLessThan(2000);
    // The old token no longer opens the door (the agent keeps retrying with it).
    await new Promise((r) => setTimeout(r, 1500));
    expect(hub.device('pi-rot')!.online).toBe(false);
    await expect(connectMqtt(hub.urls.mqtt, { clientId: 'pi-rot', username: 'pi-rot', password: token })).rejects.toMatchObject({ code: 4 });
    agent.child.kill('SIGTERM');
    await agent.exited;

    const { client } = await deviceClient(hub, 'pi-rot', fresh);
    await waitFor(() => hub.device('pi-rot')?.online);
    const closed = new Promise<void>((r) => client.once('close', () => r()));
    expect(cli(hub, ['device', 'remove', 'pi-rot']).status).toBe(0);
    await closed;
    await waitFor(() => hub.device('pi-rot') === undefined, { what: 'pi-rot gone from the table' });
    await expect(connectMqtt(hub.urls.mqtt, { clientId: 'pi-rot', username: 'pi-rot', password: fresh })).rejects.toMatchObject({ code: 4 });
  });

  it('drops a device removed moments after it was added and connected (both between two looks at the database)', async () => {
    const hub = await secure();
    // The hub looks for credential changes twice a second; each round fits in one interval most times.
    for (let round = 0; round < 4; round++) {
      const id = `pi-brief-${round}`;
      const token = hub.stores.devices.add(id);
      const { client } = await deviceClient(hub, id, token);
      const closed = new Promise<void>((r) => client.once('close', () => r()));
      hub.stores.devices.remove(id);
      await closed;
      await waitFor(() => hub.device(id) === undefined, { what: `${id} gone from the table` });
    }
  });

  it('drops the connections of a removed API token', async () => {
    const hub = await secure();
    const secret = hub.stores.tokens.add('tool', 'viewer');
    const tool = await connectMqtt(hub.urls.mqtt, { clientId: 'tool-1', username: 'tool', password: secret });
    const closed = new Promise<void>((r) => tool.once('close', () => r()));
    expect(cli(hub, ['token', 'remove', 'tool']).status).toBe(0);
    await closed;
    expect((await api(hub, '/api/devices', { token: secret })).status).toBe(401);
  });
});

describe('what each connection may reach', () => {
  it('keeps devices to their own topics: commands to another device reach nobody, # receives nothing of others', async () => {
    const hub = await secure();
    const a = await deviceClient(hub, 'dev-a', hub.stores.devices.add('dev-a'));
    const b = await deviceClient(hub, 'dev-b', hub.stores.devices.add('dev-b'));
    expect(await grantedQos(a.client, '#')).toBe(128);
    expect(await grantedQos(a.client, 'rhizosphere/devices/dev-a/command')).toBe(1);

    // dev-a tries to command dev-b directly: refused, its connection closed, dev-b hears nothing.
    const closed = new Promise<void>((r) => a.client.once('close', () => r()));
    a.client.publish('rhizosphere/devices/dev-b/command', JSON.stringify({ type: 'command', id: 'x', order: 'exec_bash', cmd_str: 'reboot', timeout_ms: 1000 }), { qos: 1 });
    await closed;

    // A real command to dev-b through the hub reaches dev-b, and nothing reaches dev-a's '#'.
    const secret = hub.stores.tokens.add('ops', 'operator');
    const ops = await connectMqtt(hub.urls.mqtt, { clientId: 'ops-1', username: 'ops', password: secret });
    await ops.subscribeAsync('rhizosphere/clients/ops-1/response', { qos: 1 });
    ops.publish('rhizosphere/clients/ops-1/request', JSON.stringify({ type: 'command', id: 'r1', device: 'dev-b', order: 'exec_bash', cmd_str: 'uptime', timeout_ms: 1000 }), { qos: 1 });
    await waitFor(() => b.received.length === 1, { what: 'the hub\'s command at dev-b' });
    await new Promise((r) => setTimeout(r, 300));
    expect(b.received).toEqual(['rhizosphere/devices/dev-b/command']);
    expect(a.received).toEqual([]);
  });

  it('lets a viewer watch statuses but not commands, and answers its Requests FORBIDDEN', async () => {
    const hub = await secure();
    const token = hub.stores.devices.add('pi-v');
    await deviceClient(hub, 'pi-v', token);
    await waitFor(() => hub.device('pi-v')?.online);
    const secret = hub.stores.tokens.add('dashboard', 'viewer');
    const viewer = await connectMqtt(hub.urls.mqtt, { clientId: 'dash-1', username: 'dashboard', password: secret });
    const statuses: string[] = [];
    viewer.on('message', (topic) => statuses.push(topic));
    expect(await grantedQos(viewer, 'rhizosphere/devices/+/status')).toBe(1);
    expect(await grantedQos(viewer, 'rhizosphere/devices/+/command')).toBe(128);
    expect(await grantedQos(viewer, 'rhizosphere/clients/+/response')).toBe(128);
    expect(await grantedQos(viewer, 'rhizosphere/clients/dash-1/response')).toBe(1);
    await waitFor(() => statuses.includes('rhizosphere/devices/pi-v/status'));

    const replies: Record<string, unknown>[] = [];
    viewer.on('message', (topic, payload) => topic.endsWith('/response') && replies.push(JSON.parse(payload.toString()) as Record<string, unknown>));
    viewer.publish('rhizosphere/clients/dash-1/request', JSON.stringify({ type: 'command', id: 'v1', device: 'pi-v', order: 'exec_bash', cmd_str: 'id' }), { qos: 1 });
    await waitFor(() => replies.length === 1);
    expect(replies[0]).toMatchObject({ id: 'v1', status: 'error', code: 'FORBIDDEN' });
  });
});

describe('REST roles', () => {
  it('answers 401 without credentials and applies each role', async () => {
    const hub = await secure();
    hub.stores.devices.add('pi-r');
    const viewer = hub.stores.tokens.add('v', 'viewer');
    const operator = hub.stores.tokens.add('o', 'operator');
    const admin = hub.stores.tokens.add('a', 'admin');

    expect(await api(hub, '/api/devices')).toMatchObject({ status: 401, body: { code: 'FORBIDDEN' } });
    expect((await api(hub, '/api/devices', { token: 'wrong' })).status).toBe(401);
    expect((await api(hub, '/api/hub')).status).toBe(200);
    expect((await fetch(`${hub.urls.http}/healthz`)).status).toBe(200);

    expect((await api(hub, '/api/devices', { token: viewer })).status).toBe(200);
    const command = { order: 'exec_bash', cmd_str: 'id' };
    expect(await api(hub, '/api/devices/pi-r/commands', { token: viewer, method: 'POST', body: command })).toMatchObject({ status: 403, body: { code: 'FORBIDDEN' } });
    expect(await api(hub, '/api/devices/pi-r/commands', { token: operator, method: 'POST', body: command })).toMatchObject({ status: 409, body: { code: 'DEVICE_OFFLINE' } });

    for (const token of [viewer, operator]) {
      expect((await api(hub, '/api/devices', { token, method: 'POST', body: { id: 'new' } })).status).toBe(403);
      expect((await api(hub, '/api/audit', { token })).status).toBe(403);
      expect((await api(hub, '/api/devices/pi-r', { token, method: 'DELETE' })).status).toBe(403);
    }
    const created = await api(hub, '/api/devices', { token: admin, method: 'POST', body: { id: 'pi-new', tags: ['lab'] } });
    expect(created).toMatchObject({ status: 201, body: { id: 'pi-new', token: expect.any(String) } });
    expect((await api(hub, '/api/devices', { token: admin, method: 'POST', body: { id: 'a/b' } })).body).toMatchObject({ code: 'BAD_REQUEST' });
    expect((await api(hub, '/api/devices', { token: admin, method: 'POST', body: { id: 'pi-new' } })).body).toMatchObject({ code: 'BAD_REQUEST' });
    expect((await api(hub, '/api/devices/pi-new/rotate', { token: admin, method: 'POST' })).body).toMatchObject({ id: 'pi-new', token: expect.any(String) });
    // Tags: admins set them, everyone reads them.
    expect((await api(hub, '/api/devices/pi-new/tags', { token: operator, method: 'PUT', body: { tags: ['x'] } })).status).toBe(403);
    expect((await api(hub, '/api/devices/pi-new/tags', { token: admin, method: 'PUT', body: { tags: 'kitchen' } })).body).toMatchObject({ code: 'BAD_REQUEST' });
    expect((await api(hub, '/api/devices/pi-new/tags', { token: admin, method: 'PUT', body: { tags: ['bad tag'] } })).body).toMatchObject({ code: 'BAD_REQUEST' });
    expect((await api(hub, '/api/devices/ghost/tags', { token: admin, method: 'PUT', body: { tags: [] } })).body).toMatchObject({ code: 'UNKNOWN_DEVICE' });
    expect(await api(hub, '/api/devices/pi-new/tags', { token: admin, method: 'PUT', body: { tags: ['kitchen', 'floor-1'] } })).toMatchObject({ status: 200, body: { tags: ['kitchen', 'floor-1'] } });
    expect((await api(hub, '/api/devices/pi-new', { token: viewer })).body).toMatchObject({ id: 'pi-new', online: false, tags: ['kitchen', 'floor-1'] });
    expect((await api(hub, '/api/devices', { token: viewer })).body).toEqual(expect.arrayContaining([expect.objectContaining({ id: 'pi-new', tags: ['kitchen', 'floor-1'] })]));
    expect((await api(hub, '/api/devices/pi-new', { token: admin, method: 'DELETE' })).status).toBe(200);
    expect((await api(hub, '/api/devices/pi-new', { token: admin, method: 'DELETE' })).body).toMatchObject({ code: 'UNKNOWN_DEVICE' });

    const audit = (await api(hub, '/api/audit?limit=50', { token: admin })).body as { action: string; actor: string; outcome: string; device: string | null }[];
    expect(audit.map((e) => `${e.action}:${e.actor}:${e.outcome}`)).toEqual(
      expect.arrayContaining(['command:v:FORBIDDEN', 'command:o:DEVICE_OFFLINE', 'device.add:a:ok', 'device.add:a:BAD_REQUEST', 'device.rotate:a:ok', 'device.remove:a:ok']),
    );
  });

  it('logs people in with a session cookie, rate-limits guessing, and gives the console an MQTT token', async () => {
    const hub = await secure();
    hub.stores.users.add('olga', 'operator', 'correct horse');
    const login = (name: string, password: string) =>
      fetch(`${hub.urls.http}/api/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name, password }) });

    const wrong = await login('olga', 'wrong');
    expect(wrong.status).toBe(401);
    const ok = await login('olga', 'correct horse');
    expect(ok.status).toBe(200);
    const cookie = ok.headers.get('set-cookie')!;
    expect(cookie).toMatch(/^rhizosphere_session=[^;]+; Path=\/; HttpOnly; SameSite=Strict/);
    const session = (await (await fetch(`${hub.urls.http}/api/session`, { headers: { cookie: cookie.split(';')[0]! } })).json()) as { name: string; role: string; mqtt: { username: string; password: string } };
    expect(session).toMatchObject({ name: 'olga', role: 'operator', mqtt: { username: '@console' } });
    // The console's MQTT token is a credential of olga, the operator.
    const console = await connectMqtt(hub.urls.ws, { clientId: 'console-x', username: session.mqtt.username, password: session.mqtt.password });
    expect((await console.subscribeAsync('rhizosphere/devices/+/status', { qos: 0 }))[0]!.qos).toBe(0);
    await expect(connectMqtt(hub.urls.mqtt, { clientId: 'c2', username: '@console', password: 'forged' })).rejects.toMatchObject({ code: 4 });

    // Logging out ends the session, and drops the console connection it opened.
    const consoleClosed = new Promise<void>((r) => console.once('close', () => r()));
    await fetch(`${hub.urls.http}/api/logout`, { method: 'POST', headers: { cookie: cookie.split(';')[0]! } });
    await consoleClosed;
    await expect(connectMqtt(hub.urls.mqtt, { clientId: 'c3', username: session.mqtt.username, password: session.mqtt.password })).rejects.toMatchObject({ code: 4 });
    expect((await fetch(`${hub.urls.http}/api/session`, { headers: { cookie: cookie.split(';')[0]! } })).status).toBe(401);

    // Ten tries a minute per address, then 429 BUSY, even with the right password.
    let limited: Response | undefined;
    for (let i = 0; i < 12 && !limited; i++) {
      const res = await login('olga', `guess-${i}`);
      if (res.status === 429) limited = res;
    }
    expect(limited).toBeDefined();
    expect(await limited!.json()).toMatchObject({ code: 'BUSY' });
    expect((await login('olga', 'correct horse')).status).toBe(429);
  });
});

describe('web hardening', () => {
  it('refuses WebSocket upgrades from foreign origins, and sends security headers', async () => {
    const hub = await startTestHub({ allowedOrigins: 'https://ops.example.com' });
    const open = (origin?: string) =>
      new Promise<number | 'open'>((resolve) => {
        const ws = new WebSocket(`${hub.urls.ws}`, 'mqtt', origin ? { origin } : {});
        ws.once('open', () => {
          ws.terminate();
          resolve('open');
        });
        ws.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
        ws.once('error', () => resolve(0));
      });
    expect(await open('http://evil.example')).toBe(403);
    expect(await open(hub.urls.http)).toBe('open');
    expect(await open('https://ops.example.com')).toBe('open');
    expect(await open()).toBe('open');

    const page = await fetch(`${hub.urls.http}/`);
    expect(page.headers.get('x-content-type-options')).toBe('nosniff');
    expect(page.headers.get('x-frame-options')).toBe('DENY');
    expect(page.headers.get('content-security-policy')).toMatch(/default-src 'self'; script-src 'self' 'sha256-[A-Za-z0-9+/=]+'/);
  });

  it('checks the legacy device token', async () => {
    const hub = await secure();
    const token = hub.stores.devices.add('pi-old');
    const connect = (bearer: string) =>
      new Promise<{ code: number; reason: string } | 'open'>((resolve) => {
        const ws = new WebSocket(`${hub.urls.http.replace('http', 'ws')}/device`, { headers: { 'x-custome-id': 'pi-old', authorization: `Bearer ${bearer}` } });
        ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() }));
        const timer = setTimeout(() => {
          ws.terminate();
          resolve('open');
        }, 500);
        ws.once('close', () => clearTimeout(timer));
      });
    expect(await connect('0000')).toMatchObject({ code: 1008, reason: expect.stringMatching(/^not authorized/) });
    expect(await connect(token)).toBe('open');
  });
});

describe('what lasts and what is limited', () => {
  it('keeps devices, users, tokens and the audit across a restart', async () => {
    const first = await secure();
    const dataDir = first.config.dataDir;
    const deviceToken = first.stores.devices.add('pi-keep', ['lab']);
    const apiToken = first.stores.tokens.add('ops', 'operator');
    expect(cli(first, ['user', 'add', 'vera', '--role', 'viewer', '--password-stdin'], 'vera-password\n').status).toBe(0);
    await api(first, '/api/devices/pi-keep/commands', { token: apiToken, method: 'POST', body: { order: 'exec_bash', cmd_str: 'before restart' } });
    await first.close();

    const second = await startTestHub({ allowAnonymous: false, dataDir });
    expect(second.initialAdminPassword).toBeNull();
    expect(second.device('pi-keep')).toMatchObject({ online: false });
    const { client } = await deviceClient(second, 'pi-keep', deviceToken);
    await waitFor(() => second.device('pi-keep')?.online);
    void client;
    expect((await api(second, '/api/devices', { token: apiToken })).status).toBe(200);
    const login = await fetch(`${second.urls.http}/api/login`, { method: 'POST', body: JSON.stringify({ name: 'vera', password: 'vera-password' }) });
    expect(await login.json()).toEqual({ name: 'vera', role: 'viewer' });

    const audit = cli(second, ['audit', '--device', 'pi-keep', '--json']);
    expect(audit.status).toBe(0);
    const entries = (JSON.parse(audit.stdout) as { entries: { action: string; cmdStr: string; actor: string; outcome: string }[] }).entries;
    expect(entries).toEqual([expect.objectContaining({ action: 'command', cmdStr: 'before restart', actor: 'ops', outcome: 'DEVICE_OFFLINE' })]);
    expect(JSON.parse(cli(second, ['audit', '--since', '2999-01-01T00:00:00Z', '--json']).stdout)).toEqual({ entries: [] });
    expect(cli(second, ['audit', '--since', 'yesterday']).status).toBe(2);
  });

  it('slows a client past its publish rate, answers every request, and holds up nobody else', async () => {
    const { logger, lines } = capturedLog();
    const hub = await startTestHub({ logger, maxClientPublishRate: 40, maxInflightPerDevice: 256 });
    const device = await connectMqtt(hub.urls.mqtt, { clientId: 'pi-fast' });
    device.on('message', (_topic, payload) => {
      const command = JSON.parse(payload.toString()) as { id: string };
      device.publish('rhizosphere/devices/pi-fast/response', JSON.stringify({ type: 'response', id: command.id, status: 'ok', result: 'ok', exit_code: 0 }), { qos: 1 });
    });
    await device.subscribeAsync('rhizosphere/devices/pi-fast/command', { qos: 1 });
    await waitFor(() => hub.device('pi-fast')?.online);
    const busy = await RequestClient.connect(hub.urls.mqtt, 'busy-tool');
    const calm = await RequestClient.connect(hub.urls.mqtt, 'calm-tool');

    // 200 Requests at once: a burst of 80 passes, the other 120 at 40 a second.
    const started = Date.now();
    const all = Promise.all(Array.from({ length: 200 }, (_, i) => busy.request({ id: `b-${i}`, device: 'pi-fast', order: 'exec_bash', cmd_str: 'true' }, 30_000)));
    await new Promise((r) => setTimeout(r, 1000));
    const calmStarted = Date.now();
    expect(await calm.request({ device: 'pi-fast', order: 'exec_bash', cmd_str: 'true' }, 5000)).toMatchObject({ status: 'ok' });
    const calmMs = Date.now() - calmStarted;
    const replies = await all;
    const elapsed = Date.now() - started;

    expect(replies.map((r) => r.status)).toEqual(Array(200).fill('ok'));
    expect(new Set(replies.map((r) => r.id)).size).toBe(200);
    expect(elapsed).toBeGreaterThan(2500);
    expect(calmMs).toBeLessThan(1000);
    expect(busy.client.connected).toBe(true);
    expect(lines.some((l) => l.code === 'BUSY' && l.clientId === 'busy-tool' && /publishes slowed/.test(l.msg))).toBe(true);
    expect(lines.some((l) => /connection closed/.test(l.msg))).toBe(false);
  });

  it('slows a device past its publish rate without losing what it sent, and closes only a flood', async () => {
    const { logger, lines } = capturedLog();
    const hub = await startTestHub({ logger, maxPublishRate: 20 });
    const watcher = await connectMqtt(hub.urls.mqtt, { clientId: 'watcher' });
    await watcher.subscribeAsync('sensors/#', { qos: 0 });
    const seen: string[] = [];
    watcher.on('message', (topic, payload) => seen.push(`${topic} ${payload.toString()}`));

    // A device: it authenticated with a device token, so the device rate applies.
    const token = hub.stores.devices.add('pi-chatty');
    const chatty = await connectMqtt(hub.urls.mqtt, { clientId: 'pi-chatty', username: 'pi-chatty', password: token });
    await watcher.subscribeAsync('rhizosphere/devices/pi-chatty/telemetry/#', { qos: 0 });
    const started = Date.now();
    for (let i = 0; i < 100; i++) chatty.publish('rhizosphere/devices/pi-chatty/telemetry/n', String(i), { qos: 1 });
    // A burst of 40 passes, the other 60 at 20 a second: all 100, in order.
    await waitFor(() => seen.length >= 100, { timeoutMs: 15_000, what: 'telemetry' });
    expect(Date.now() - started).toBeGreaterThan(2000);
    expect(seen).toEqual(Array.from({ length: 100 }, (_, i) => `rhizosphere/devices/pi-chatty/telemetry/n ${i}`));
    expect(chatty.connected).toBe(true);

    // A client that keeps writing while it is slowed: past 10 s of backlog (20 publishes at 2 a second) it is a flood.
    const strict = await startTestHub({ logger, maxClientPublishRate: 2 });
    const flood = await connectMqtt(strict.urls.mqtt, { clientId: 'flood' });
    const closed = new Promise<void>((r) => flood.once('close', () => r()));
    for (let i = 0; i < 2000; i++) flood.publish('sensors/flood', String(i), { qos: 0 });
    await closed;
    expect(lines.some((l) => l.code === 'BUSY' && l.clientId === 'flood' && /connection closed/.test(l.msg))).toBe(true);
    expect(chatty.connected).toBe(true);
  });
});
