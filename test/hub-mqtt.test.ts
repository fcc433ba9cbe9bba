/**
 * The hub's MQTT side with plain MQTT.js clients playing devices, so each test controls
 * exactly what the "device" answers, and when it vanishes.
 */
import type { MqttClient } from 'mqtt';
import { describe, expect, it } from 'vitest';
import type { Hub } from '../src/index.js';
import type { Command } from '../src/protocol/schemas.js';
import { connectMqtt, RequestClient, startTestHub, waitFor } from './helpers.js';

type Answer = (command: Command) => Record<string, unknown> | null;

/** A device made of a bare MQTT.js client: subscribes to its command topic and answers with `answer`. */
async function scriptedDevice(hub: Hub, id: string, answer: Answer = (c) => ({ result: `ran ${c.cmd_str}`, error: '', exit_code: 0 }), url = hub.urls.mqtt) {
  const client = await connectMqtt(url, {
    clientId: id,
    clean: false,
    will: { topic: `rhizosphere/devices/${id}/status`, payload: Buffer.from('{"online":false}'), qos: 1, retain: true },
  });
  const commands: Command[] = [];
  client.on('message', (topic, payload) => {
    if (topic !== `rhizosphere/devices/${id}/command`) return;
    const command = JSON.parse(payload.toString()) as Command;
    commands.push(command);
    const body = answer(command);
    if (body) client.publish(`rhizosphere/devices/${id}/response`, JSON.stringify({ type: 'response', id: command.id, ...body }), { qos: 1 });
  });
  await client.subscribeAsync(`rhizosphere/devices/${id}/command`, { qos: 1 });
  await waitFor(() => hub.device(id)?.online, { what: `${id} online` });
  return { client, commands };
}

/** Collects every status message of a device seen by a third-party subscriber. */
async function watchStatuses(hub: Hub, filter = 'rhizosphere/devices/+/status') {
  const watcher = await connectMqtt(hub.urls.mqtt, { clientId: `watcher-${Math.random().toString(36).slice(2)}` });
  const seen: { topic: string; status: { online: boolean; since: string; transport: string | null }; retain: boolean }[] = [];
  watcher.on('message', (topic, payload, packet) => seen.push({ topic, status: JSON.parse(payload.toString()), retain: packet.retain }));
  await watcher.subscribeAsync(filter, { qos: 1 });
  return seen;
}

describe('presence', () => {
  it('tells devices from clients and publishes the retained status', async () => {
    const hub = await startTestHub();
    await scriptedDevice(hub, 'pi-01');
    await connectMqtt(hub.urls.mqtt, { clientId: 'console-1' });

    const info = hub.device('pi-01')!;
    expect(info).toMatchObject({ id: 'pi-01', online: true, transport: 'mqtt', remoteAddress: '127.0.0.1' });
    expect(Date.parse(info.connectedAt!)).toBeGreaterThan(Date.now() - 10_000);
    expect(hub.device('console-1')).toBeUndefined();

    // A third-party tool connecting later gets the retained status.
    const seen = await watchStatuses(hub);
    const status = await waitFor(() => seen.find((s) => s.topic === 'rhizosphere/devices/pi-01/status'));
    expect(status.retain).toBe(true);
    expect(status.status).toMatchObject({ online: true, transport: 'mqtt', since: info.connectedAt });
  });

  it('gives retained statuses to exact, wildcard and mixed subscriptions, and none for a removed device', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    for (const id of ['pi-01', 'pi-02', 'pi-03']) hub.stores.devices.add(id);
    await hub.close();
    // A restart publishes the retained offline status of every registered device.
    const restarted = await startTestHub({ allowAnonymous: false, dataDir: hub.config.dataDir });
    const token = restarted.stores.tokens.add('watch', 'viewer');
    const retainedFor = async (filters: string[]) => {
      const client = await connectMqtt(restarted.urls.mqtt, { username: 'watch', password: token });
      const topics: string[] = [];
      client.on('message', (topic, _payload, packet) => packet.retain && topics.push(topic));
      await client.subscribeAsync(filters.map((topic) => ({ topic, qos: 1 as const })).reduce((all, f) => ({ ...all, [f.topic]: { qos: f.qos } }), {}));
      await new Promise((resolve) => setTimeout(resolve, 300));
      await client.endAsync();
      return topics.sort();
    };
    const P = 'rhizosphere/devices';
    expect(await retainedFor([`${P}/pi-02/status`])).toEqual([`${P}/pi-02/status`]);
    expect(await retainedFor([`${P}/+/status`])).toEqual([`${P}/pi-01/status`, `${P}/pi-02/status`, `${P}/pi-03/status`]);
    expect(await retainedFor([`${P}/pi-01/status`, 'rhizosphere/jobs/+/status', `${P}/nobody/status`])).toEqual([`${P}/pi-01/status`]);
    restarted.jobs.create({ target: { devices: ['pi-03'] }, order: 'exec_bash', cmd_str: 'true', deadline_ms: 1000 }, { actor: 'test', actorKind: 'api', remote: null });
    expect(await retainedFor([`${P}/pi-03/status`, 'rhizosphere/jobs/+/status'])).toEqual([`${P}/pi-03/status`, expect.stringMatching(/^rhizosphere\/jobs\/.+\/status$/)]);
    const admin = restarted.stores.tokens.add('root', 'admin');
    await fetch(`${restarted.urls.http}/api/devices/pi-02`, { method: 'DELETE', headers: { authorization: `Bearer ${admin}` } });
    await waitFor(() => restarted.device('pi-02') === undefined, { what: 'pi-02 forgotten' });
    expect(await retainedFor([`${P}/pi-02/status`])).toEqual([]);
  });

  it('marks a device offline when its connection dies without a DISCONNECT, and only once', async () => {
    const hub = await startTestHub();
    const { client } = await scriptedDevice(hub, 'pi-02');
    const seen = await watchStatuses(hub, 'rhizosphere/devices/pi-02/status');
    await waitFor(() => seen.length === 1);
    client.stream.destroy(); // an abrupt drop: the broker fires the will, the hub publishes offline
    await waitFor(() => hub.device('pi-02')?.online === false, { what: 'offline' });
    await new Promise((r) => setTimeout(r, 300));
    const offline = seen.filter((s) => !s.status.online);
    expect(offline).toHaveLength(1);
    expect(offline[0]!.status.since).toBe(hub.device('pi-02')!.lastSeen);
  });

  it('keeps a device online through a takeover by a new connection with the same id', async () => {
    const hub = await startTestHub();
    await scriptedDevice(hub, 'pi-03');
    const seen = await watchStatuses(hub, 'rhizosphere/devices/pi-03/status');
    const offlineEvents: string[] = [];
    hub.on('offline', (d) => offlineEvents.push(d.id));

    // Same id, persistent session: the broker closes the first connection.
    const second = await scriptedDevice(hub, 'pi-03');
    await waitFor(() => seen.length >= 2, { what: 'second online status' });
    await new Promise((r) => setTimeout(r, 300));
    expect(seen.every((s) => s.status.online)).toBe(true);
    expect(offlineEvents).toEqual([]);
    expect(hub.device('pi-03')!.online).toBe(true);

    // And the new connection is the one commands reach.
    const console1 = await RequestClient.connect(hub.urls.mqtt, 'console-t');
    const reply = await console1.request({ device: 'pi-03', order: 'exec_bash', cmd_str: 'hostname' });
    expect(reply).toMatchObject({ status: 'ok', result: 'ran hostname' });
    expect(second.commands).toHaveLength(1);
  });

  it('takes devices offline with reason hub-closing when the hub closes', async () => {
    const hub = await startTestHub();
    await scriptedDevice(hub, 'pi-05');
    const reasons: string[] = [];
    hub.on('offline', (device, reason) => reasons.push(`${device.id}:${reason}`));
    await hub.close();
    expect(reasons).toEqual(['pi-05:hub-closing']);
  });

  it('refuses hostile client ids with CONNACK "identifier rejected"', async () => {
    const hub = await startTestHub();
    for (const clientId of ['a/b', '+', '#', '$SYS', 'x'.repeat(129), 'sp ace']) {
      await expect(connectMqtt(hub.urls.mqtt, { clientId })).rejects.toMatchObject({ code: 2 });
    }
    // An empty id, which the broker would otherwise replace with a generated one.
    await expect(connectMqtt(hub.urls.mqtt, { clientId: '', clean: true })).rejects.toMatchObject({ code: 2 });
    // 128 characters is fine.
    await expect(connectMqtt(hub.urls.mqtt, { clientId: 'x'.repeat(128) })).resolves.toBeTruthy();
    expect(hub.devices()).toEqual([]);
  });

  it('closes a client that publishes on a status, command or another device\'s topic, and keeps serving', async () => {
    const hub = await startTestHub();
    await scriptedDevice(hub, 'pi-04');
    const seen = await watchStatuses(hub, 'rhizosphere/devices/pi-04/status');
    for (const [topic, payload] of [
      ['rhizosphere/devices/pi-04/status', '{"online":false}'],
      ['rhizosphere/devices/pi-04/command', '{"type":"command","id":"x","order":"exec_bash","cmd_str":"reboot","timeout_ms":1000}'],
      ['rhizosphere/devices/pi-04/response', '{"type":"response","id":"x","result":"forged"}'],
      ['rhizosphere/devices/pi-04/telemetry/temp', '99'],
      ['rhizosphere/clients/intruder/response', '{}'],
    ] as const) {
      const intruder = await connectMqtt(hub.urls.mqtt, { clientId: 'intruder' });
      const closed = new Promise<void>((r) => intruder.once('close', () => r()));
      intruder.publish(topic, payload, { qos: 1 });
      await closed;
    }
    expect(hub.device('pi-04')!.online).toBe(true);
    expect(seen.every((s) => s.status.online)).toBe(true);
    const console1 = await RequestClient.connect(hub.urls.mqtt, 'console-ok');
    expect(await console1.request({ device: 'pi-04', order: 'exec_bash', cmd_str: 'true' })).toMatchObject({ status: 'ok' });
  });
});

describe('command round trip', () => {
  it('forwards a Request with a hub-unique id and matches the Response back', async () => {
    const hub = await startTestHub();
    const device = await scriptedDevice(hub, 'pi-10', (c) => ({ result: c.cmd_str.toUpperCase(), error: 'warn', exit_code: 3, duration_ms: 5, truncated: false }));
    const client = await RequestClient.connect(hub.urls.mqtt, 'console-10');
    const reply = await client.request({ id: 'c-17', device: 'pi-10', order: 'exec_bash', cmd_str: 'uptime', timeout_ms: 10_000 });
    expect(reply).toEqual({ type: 'response', id: 'c-17', device: 'pi-10', status: 'ok', result: 'UPTIME', error: 'warn', exit_code: 3, duration_ms: 5, truncated: false });
    const sent = device.commands[0]!;
    expect(sent).toMatchObject({ type: 'command', order: 'exec_bash', cmd_str: 'uptime', timeout_ms: 10_000 });
    expect(sent.id).not.toBe('c-17');

    // Two clients using the same request id still get their own answers.
    const other = await RequestClient.connect(hub.urls.mqtt, 'console-11');
    const [a, b] = await Promise.all([
      client.request({ id: 'same', device: 'pi-10', order: 'exec_bash', cmd_str: 'a' }),
      other.request({ id: 'same', device: 'pi-10', order: 'exec_bash', cmd_str: 'b' }),
    ]);
    expect(a).toMatchObject({ result: 'A' });
    expect(b).toMatchObject({ result: 'B' });
    expect(new Set(device.commands.map((c) => c.id)).size).toBe(3);
  });

  it('answers UNKNOWN_DEVICE and DEVICE_OFFLINE at once', async () => {
    const hub = await startTestHub();
    const { client: deviceClient } = await scriptedDevice(hub, 'pi-20');
    await deviceClient.endAsync();
    await waitFor(() => hub.device('pi-20')?.online === false);
    const client = await RequestClient.connect(hub.urls.mqtt, 'console-20');
    const started = Date.now();
    expect(await client.request({ device: 'nobody', order: 'exec_bash', cmd_str: 'true' })).toMatchObject({ status: 'error', code: 'UNKNOWN_DEVICE', device: 'nobody' });
    expect(await client.request({ id: 'o1', device: 'pi-20', order: 'exec_bash', cmd_str: 'true' })).toMatchObject({ id: 'o1', status: 'error', code: 'DEVICE_OFFLINE', message: 'device pi-20 is not connected' });
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it('answers commands in flight with DEVICE_OFFLINE as soon as the device drops', async () => {
    const hub = await startTestHub();
    const { client: deviceClient } = await scriptedDevice(hub, 'pi-21', () => null);
    const client = await RequestClient.connect(hub.urls.mqtt, 'console-21');
    const replies = Promise.all([1, 2, 3].map(() => client.request({ device: 'pi-21', order: 'exec_bash', cmd_str: 'sleep 30', timeout_ms: 60_000 })));
    await waitFor(() => hub.inflight === 3);
    expect([...hub.connections.get('pi-21')!.clients.entries()]).toEqual([['console-21', 3]]);
    const dropped = Date.now();
    deviceClient.stream.destroy();
    for (const reply of await replies) expect(reply).toMatchObject({ status: 'error', code: 'DEVICE_OFFLINE' });
    expect(Date.now() - dropped).toBeLessThan(1000);
    expect(hub.inflight).toBe(0);
    expect(hub.connections.get('pi-21')!.clients.size).toBe(0);
  });

  it('answers TIMEOUT when a device never answers, and passes on a device-reported code', async () => {
    const hub = await startTestHub();
    await scriptedDevice(hub, 'pi-22', (c) => (c.cmd_str === 'silent' ? null : { code: 'BUSY', message: 'hypha queue is full (64 waiting)' }));
    const client = await RequestClient.connect(hub.urls.mqtt, 'console-22');
    const started = Date.now();
    const reply = await client.request({ device: 'pi-22', order: 'exec_bash', cmd_str: 'silent', timeout_ms: 1000 });
    expect(reply).toMatchObject({ status: 'error', code: 'TIMEOUT' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(1000);
    expect(Date.now() - started).toBeLessThan(5000);
    expect(await client.request({ device: 'pi-22', order: 'exec_bash', cmd_str: 'x' })).toMatchObject({ status: 'error', code: 'BUSY', message: 'hypha queue is full (64 waiting)' });
  });

  it('refuses with BUSY past the in-flight caps per device and per hub', async () => {
    const hub = await startTestHub({ maxInflightPerDevice: 2, maxInflightTotal: 3 });
    await scriptedDevice(hub, 'pi-30', () => null);
    await scriptedDevice(hub, 'pi-31', () => null);
    const client = await RequestClient.connect(hub.urls.mqtt, 'console-30');
    const slow = { order: 'exec_bash', cmd_str: 'sleep 9', timeout_ms: 60_000 };
    void client.request({ device: 'pi-30', ...slow }).catch(() => {});
    void client.request({ device: 'pi-30', ...slow }).catch(() => {});
    await waitFor(() => hub.inflight === 2);
    expect(await client.request({ device: 'pi-30', ...slow })).toMatchObject({ code: 'BUSY', message: expect.stringContaining('device pi-30') });
    void client.request({ device: 'pi-31', ...slow }).catch(() => {});
    await waitFor(() => hub.inflight === 3);
    expect(await client.request({ device: 'pi-31', ...slow })).toMatchObject({ code: 'BUSY', message: expect.stringContaining('the hub') });
  });

  it('answers every kind of bad request with a coded Reply and keeps serving', async () => {
    const hub = await startTestHub({ maxPayloadBytes: 4096 });
    await scriptedDevice(hub, 'pi-40');
    const client = await RequestClient.connect(hub.urls.mqtt, 'console-40');
    const good = { type: 'command', id: 'g', device: 'pi-40', order: 'exec_bash', cmd_str: 'true' };
    const cases: [unknown, string, string | null][] = [
      ['not json', '(body)', null],
      ['[1,2]', '(body)', null],
      ['null', '(body)', null],
      [{ ...good, id: undefined }, 'id', null],
      [{ ...good, id: 'x'.repeat(65) }, 'id', 'x'.repeat(65)], // read, so echoed, though invalid
      [{ ...good, id: 7 }, 'id', null],
      [{ ...good, type: 'response' }, 'type', 'g'],
      [{ ...good, device: undefined }, 'device', 'g'],
      [{ ...good, device: 'a/b' }, 'device', 'g'],
      [{ ...good, device: '+' }, 'device', 'g'],
      [{ ...good, device: '#' }, 'device', 'g'],
      [{ ...good, device: '$SYS' }, 'device', 'g'],
      [{ ...good, device: '' }, 'device', 'g'],
      [{ ...good, device: 'd'.repeat(129) }, 'device', 'g'],
      [{ ...good, order: 'rm_rf' }, 'order', 'g'],
      [{ ...good, cmd_str: '' }, 'cmd_str', 'g'],
      [{ ...good, cmd_str: ['ls'] }, 'cmd_str', 'g'],
      [{ ...good, timeout_ms: 999 }, 'timeout_ms', 'g'],
      [{ ...good, timeout_ms: 3_600_001 }, 'timeout_ms', 'g'],
      [{ ...good, timeout_ms: '5000' }, 'timeout_ms', 'g'],
    ];
    for (const [body, field, id] of cases) {
      const next = client.nextReply();
      await client.publishRaw(typeof body === 'string' ? body : JSON.stringify(body));
      const reply = await next;
      expect(reply, JSON.stringify(body)).toMatchObject({ type: 'response', status: 'error', code: 'BAD_REQUEST', id });
      const message = reply.status === 'error' ? reply.message : '';
      // The message names the offending field; a payload that is not a JSON object says "payload".
      expect(message.startsWith(field === '(body)' ? 'payload' : field), `"${message}" names ${field}`).toBe(true);
    }
    // Hostile device ids are echoed as they were sent (they could be read), never used as topics.
    const next = client.nextReply();
    await client.publishRaw(JSON.stringify({ ...good, device: 'a/b' }));
    expect(await next).toMatchObject({ device: 'a/b' });

    const tooBig = client.nextReply();
    await client.publishRaw(JSON.stringify({ ...good, cmd_str: 'x'.repeat(5000) }));
    expect(await tooBig).toMatchObject({ status: 'error', code: 'PAYLOAD_TOO_LARGE', id: null, device: null });

    const forbidden = client.nextReply();
    await client.publishRaw(JSON.stringify(good), 'rhizosphere/clients/someone-else/request');
    expect(await forbidden).toMatchObject({ status: 'error', code: 'FORBIDDEN' });

    expect(await client.request({ device: 'pi-40', order: 'exec_bash', cmd_str: 'echo fine' })).toMatchObject({ status: 'ok', result: 'ran echo fine' });
  });

  it('turns an invalid or oversized device response into a coded error, not a crash', async () => {
    const hub = await startTestHub({ maxResponseBytes: 2048 });
    await scriptedDevice(hub, 'pi-50', (c) =>
      c.cmd_str === 'big' ? { result: 'x'.repeat(4096) } : c.cmd_str === 'weird' ? { exit_code: 'zero' } : { result: 'fine' },
    );
    const client = await RequestClient.connect(hub.urls.mqtt, 'console-50');
    expect(await client.request({ device: 'pi-50', order: 'exec_bash', cmd_str: 'big' })).toMatchObject({ code: 'PAYLOAD_TOO_LARGE' });
    expect(await client.request({ device: 'pi-50', order: 'exec_bash', cmd_str: 'weird' })).toMatchObject({ code: 'INTERNAL', message: expect.stringContaining('exit_code') });
    expect(await client.request({ device: 'pi-50', order: 'exec_bash', cmd_str: 'ok' })).toMatchObject({ status: 'ok', result: 'fine' });
  });

  it('works the same over MQTT over WebSocket', async () => {
    const hub = await startTestHub();
    await scriptedDevice(hub, 'pi-ws', undefined, hub.urls.ws);
    expect(hub.device('pi-ws')).toMatchObject({ online: true, transport: 'mqtt-ws' });
    const client = await RequestClient.connect(hub.urls.ws, 'console-ws');
    expect(await client.request({ device: 'pi-ws', order: 'exec_bash', cmd_str: 'id' })).toMatchObject({ status: 'ok', result: 'ran id' });
  });

  it('exposes exec() in process, rejecting with coded HubErrors', async () => {
    const hub = await startTestHub();
    await scriptedDevice(hub, 'pi-60', (c) => ({ result: `${c.order}:${c.cmd_str}`, exit_code: 0 }));
    expect(await hub.exec('pi-60', 'uname')).toMatchObject({ result: 'exec_bash:uname', exit_code: 0, error: '' });
    expect(await hub.exec('pi-60', { order: 'exec_bash_ret_okng_only', cmd_str: 'x' })).toMatchObject({ result: 'exec_bash_ret_okng_only:x' });
    await expect(hub.exec('nobody', 'x')).rejects.toMatchObject({ name: 'HubError', code: 'UNKNOWN_DEVICE' });
    await expect(hub.exec('a/b', 'x')).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    await expect(hub.exec('pi-60', '')).rejects.toMatchObject({ code: 'BAD_REQUEST' });
  });
});

export type { MqttClient };
