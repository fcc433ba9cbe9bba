/**
 * The hub on an external Mosquitto (`--broker`): presence from births and wills, commands
 * and Replies through the broker (PROTOCOL.md topics and MQTT 5 response topics), REST, the
 * broker going away and coming back, and the start errors.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { describe, expect, it } from 'vitest';
import { startHub } from '../src/index.js';
import { startMosquitto } from './brokers.js';
import { connectMqtt, freePort, startTestHub, tempDir, waitFor } from './helpers.js';

const nonce = () => randomBytes(12).toString('base64url');

/** A device following docs/protocol.md: birth and will with a nonce, answers every command with its cmd_str. */
async function scriptedDevice(url: string, id: string, { keepalive = 30 } = {}) {
  const n = nonce();
  const presence = `rhizosphere/devices/${id}/presence`;
  const client = await connectMqtt(url, {
    clientId: id,
    clean: false,
    keepalive,
    will: { topic: presence, payload: Buffer.from(JSON.stringify({ online: false, nonce: n })), qos: 1, retain: true },
  });
  client.on('message', (topic, payload) => {
    if (topic !== `rhizosphere/devices/${id}/command`) return;
    const command = JSON.parse(payload.toString()) as { id: string; cmd_str: string };
    client.publish(`rhizosphere/devices/${id}/response`, JSON.stringify({ type: 'response', id: command.id, result: `ran ${command.cmd_str}`, error: '', exit_code: 0, duration_ms: 1 }), { qos: 1 });
  });
  await client.subscribeAsync(`rhizosphere/devices/${id}/command`, { qos: 1 });
  await client.publishAsync(presence, JSON.stringify({ online: true, nonce: n, transport: 'mqtt', agent: 'script/1' }), { qos: 1, retain: true });
  return { client, nonce: n };
}

function replyOn(client: MqttClient, topic: string): Promise<{ body: Record<string, unknown>; correlation?: Buffer }> {
  return new Promise((resolve) => {
    client.on('message', (t, payload, packet) => {
      if (t === topic) resolve({ body: JSON.parse(payload.toString()) as Record<string, unknown>, correlation: packet.properties?.correlationData });
    });
  });
}

describe('hub on an external Mosquitto', () => {
  it('takes presence from births and wills, and runs commands from MQTT 3.1.1, MQTT 5 and REST through the broker', async () => {
    const mosquitto = await startMosquitto();
    const hub = await startTestHub({ broker: mosquitto.url });
    expect(hub.urls.mqtt).toBe(mosquitto.url);
    expect(hub.external?.uplink.protocolVersion).toBe(5);

    const device = await scriptedDevice(mosquitto.url, 'pi-01');
    await waitFor(() => hub.device('pi-01')?.online, { what: 'pi-01 online' });

    // The retained status is on the external broker for third-party tools.
    const watcher = await connectMqtt(mosquitto.url, { clientId: 'watcher' });
    const status = new Promise<Record<string, unknown>>((resolve) => watcher.on('message', (t, p) => t.endsWith('/status') && p.length > 0 && resolve(JSON.parse(p.toString()) as Record<string, unknown>)));
    await watcher.subscribeAsync('rhizosphere/devices/pi-01/status', { qos: 1 });
    expect(await status).toMatchObject({ online: true, transport: 'mqtt' });

    // MQTT 3.1.1, PROTOCOL.md topics.
    const tool = await connectMqtt(mosquitto.url, { clientId: 'tool-1' });
    await tool.subscribeAsync('rhizosphere/clients/tool-1/response', { qos: 1 });
    const reply = replyOn(tool, 'rhizosphere/clients/tool-1/response');
    await tool.publishAsync('rhizosphere/clients/tool-1/request', JSON.stringify({ id: 'c-1', device: 'pi-01', order: 'exec_bash', cmd_str: 'uptime' }), { qos: 1 });
    expect((await reply).body).toMatchObject({ id: 'c-1', device: 'pi-01', status: 'ok', result: 'ran uptime' });

    // MQTT 5: the Reply goes to the Response Topic with the same Correlation Data.
    const v5 = await connectMqtt(mosquitto.url, { clientId: 'tool-5', protocolVersion: 5 });
    await v5.subscribeAsync('replies/tool-5', { qos: 1 });
    const v5reply = replyOn(v5, 'replies/tool-5');
    await v5.publishAsync('rhizosphere/clients/tool-5/request', JSON.stringify({ id: 'c-5', device: 'pi-01', order: 'exec_bash_ret_okng_only', cmd_str: 'true' }), {
      qos: 1,
      properties: { responseTopic: 'replies/tool-5', correlationData: Buffer.from('corr-42') },
    });
    const got = await v5reply;
    expect(got.body).toMatchObject({ id: 'c-5', status: 'ok', result: 'ran true' });
    expect(got.correlation?.toString()).toBe('corr-42');

    // REST, through the same broker.
    const rest = await fetch(`${hub.urls.http}/api/devices/pi-01/commands`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ order: 'exec_bash', cmd_str: 'hostname' }) });
    expect(rest.status).toBe(200);
    expect(await rest.json()).toMatchObject({ status: 'ok', result: 'ran hostname' });

    // A clean offline with the current nonce.
    await device.client.publishAsync('rhizosphere/devices/pi-01/presence', JSON.stringify({ online: false, nonce: device.nonce }), { qos: 1, retain: true });
    await waitFor(() => hub.device('pi-01')?.online === false, { what: 'pi-01 offline' });
    const offline = await fetch(`${hub.urls.http}/api/devices/pi-01/commands`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ order: 'exec_bash', cmd_str: 'x' }) });
    expect(offline.status).toBe(409);
  });

  it('answers mosquitto_pub -V mqttv5 with a response topic', async () => {
    const mosquitto = await startMosquitto();
    const hub = await startTestHub({ broker: mosquitto.url });
    await scriptedDevice(mosquitto.url, 'pi-cli');
    await waitFor(() => hub.device('pi-cli')?.online, { what: 'pi-cli online' });

    // -d prints the SUBACK (line-buffered by stdbuf: a pipe would hold it back), so the request
    // is sent only once the reply can be received.
    const sub = spawn('stdbuf', ['-oL', 'mosquitto_sub', '-d', '-p', String(mosquitto.port), '-h', '127.0.0.1', '-V', 'mqttv5', '-t', 'cli/replies', '-C', '1', '-F', 'reply:%p|%D']);
    let out = '';
    sub.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    await waitFor(() => out.includes('SUBACK'), { what: 'mosquitto_sub subscribed' });
    const pub = spawn('mosquitto_pub', [
      '-p', String(mosquitto.port), '-h', '127.0.0.1', '-V', 'mqttv5', '-i', 'cli-tool', '-q', '1',
      '-t', 'rhizosphere/clients/cli-tool/request',
      '-D', 'publish', 'response-topic', 'cli/replies',
      '-D', 'publish', 'correlation-data', 'abc123',
      '-m', JSON.stringify({ id: 'm-1', device: 'pi-cli', order: 'exec_bash', cmd_str: 'date' }),
    ]);
    expect(await new Promise((resolve) => pub.on('exit', resolve))).toBe(0);
    await new Promise((resolve) => sub.on('exit', resolve));
    const line = out.split('\n').find((l) => l.startsWith('reply:')) ?? '';
    const [payload, correlation] = line.slice('reply:'.length).split('|');
    expect(JSON.parse(payload!)).toMatchObject({ id: 'm-1', device: 'pi-cli', status: 'ok', result: 'ran date' });
    // %D is the correlation data as the broker forwarded it.
    expect(correlation).toBe('abc123');
  });

  it('keeps a reconnected device online when an older connection\'s will comes late, and sees a dead device through its will', async () => {
    const mosquitto = await startMosquitto();
    const hub = await startTestHub({ broker: mosquitto.url });
    const first = await scriptedDevice(mosquitto.url, 'pi-02');
    await waitFor(() => hub.device('pi-02')?.online, { what: 'pi-02 online' });
    const offlines: string[] = [];
    hub.on('offline', (d) => offlines.push(d.id));

    // A takeover: the same id connects again with a new nonce (the broker closes the first).
    const second = await scriptedDevice(mosquitto.url, 'pi-02', { keepalive: 2 });
    expect(second.nonce).not.toBe(first.nonce);
    // The first connection's will, late (as a broker cluster may deliver it).
    await second.client.publishAsync('rhizosphere/devices/pi-02/presence', JSON.stringify({ online: false, nonce: first.nonce }), { qos: 1, retain: true });
    await new Promise((r) => setTimeout(r, 300));
    expect(hub.device('pi-02')?.online).toBe(true);
    expect(offlines).toEqual([]);

    // The device dies without a word: the broker notices at 1.5 x keepalive and publishes its will.
    const killedAt = Date.now();
    second.client.stream.destroy();
    (second.client as unknown as { options: { reconnectPeriod: number } }).options.reconnectPeriod = 0;
    await waitFor(() => hub.device('pi-02')?.online === false, { timeoutMs: 15_000, what: 'pi-02 offline' });
    const seenAfter = Date.now() - killedAt;
    console.log(`external mosquitto: a socket closed under the device is seen offline after ${seenAfter} ms`);
    expect(offlines).toEqual(['pi-02']);
  });

  it('says BROKER_UNAVAILABLE and not ready while the broker is down, and recovers by itself', async () => {
    const mosquitto = await startMosquitto();
    const hub = await startTestHub({ broker: mosquitto.url });
    await scriptedDevice(mosquitto.url, 'pi-03');
    await waitFor(() => hub.device('pi-03')?.online, { what: 'pi-03 online' });
    expect((await fetch(`${hub.urls.http}/readyz`)).status).toBe(200);

    await mosquitto.kill();
    await waitFor(async () => ((await (await fetch(`${hub.urls.http}/readyz`)).json()) as { reason?: string }).reason === 'broker-unavailable', { what: 'readyz broker-unavailable' });
    const refused = await fetch(`${hub.urls.http}/api/devices/pi-03/commands`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ order: 'exec_bash', cmd_str: 'x' }) });
    expect(refused.status).toBe(503);
    expect(await refused.json()).toMatchObject({ code: 'BROKER_UNAVAILABLE' });
    const info = (await (await fetch(`${hub.urls.http}/api/hub`)).json()) as { broker?: { connected: boolean } };
    expect(info.broker).toMatchObject({ connected: false });
    // A job does not fail its targets on BROKER_UNAVAILABLE: it tries them again until the broker is back.
    const created = await fetch(`${hub.urls.http}/api/jobs`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ target: { devices: ['pi-03'] }, order: 'exec_bash', cmd_str: 'job' }) });
    expect(created.status).toBe(201);
    const jobId = ((await created.json()) as { id: string }).id;
    await new Promise((r) => setTimeout(r, 1500));
    expect(hub.jobs.get(jobId)).toMatchObject({ state: 'running', counts: { queued: 1, failed: 0 } });

    // Back (without persistence: the broker forgot every session and retained message).
    await mosquitto.start();
    await waitFor(async () => (await fetch(`${hub.urls.http}/readyz`)).status === 200, { timeoutMs: 15_000, what: 'ready again' });
    // The device's connection died with the broker; it is offline until it announces itself again.
    await waitFor(() => hub.device('pi-03')?.online === false, { timeoutMs: 20_000, what: 'pi-03 offline after the broker restart (10 s for births to come back)' });
    await scriptedDevice(mosquitto.url, 'pi-03');
    await waitFor(() => hub.device('pi-03')?.online, { what: 'pi-03 online again' });
    const again = await fetch(`${hub.urls.http}/api/devices/pi-03/commands`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ order: 'exec_bash', cmd_str: 'again' }) });
    expect(await again.json()).toMatchObject({ status: 'ok', result: 'ran again' });
    const job = await waitFor(() => { const j = hub.jobs.get(jobId); return j && j.state !== 'running' ? j : undefined; }, { what: 'the job done' });
    // Sent once the broker was back; this broker forgot the device's session meanwhile, so it may
    // have been sent before the device announced itself again (DEVICE_OFFLINE), never refused as unavailable.
    expect(job.targets[0]!.error ?? '', JSON.stringify(job)).not.toMatch(/BROKER_UNAVAILABLE/);
  });

  it('ignores bad presence messages and unregistered devices, refuses response topics it must not publish on, and keeps serving', async () => {
    const mosquitto = await startMosquitto();
    const dataDir = tempDir();
    const hub = await startTestHub({ broker: mosquitto.url, allowAnonymous: false, dataDir });
    hub.stores.devices.add('pi-ok');
    await waitFor(() => hub.device('pi-ok'), { what: 'pi-ok in the table' });
    const raw = await connectMqtt(mosquitto.url, { clientId: 'raw' });
    for (const payload of ['not json', '[]', '{"online":"yes","nonce":"abcdefgh12"}', '{"online":true,"nonce":"short"}', '{"online":true}', JSON.stringify({ online: true, nonce: 'x'.repeat(65) })]) {
      await raw.publishAsync('rhizosphere/devices/pi-ok/presence', payload, { qos: 1 });
    }
    // A device the registry does not know stays out (no --allow-anonymous).
    await raw.publishAsync('rhizosphere/devices/stranger/presence', JSON.stringify({ online: true, nonce: nonce() }), { qos: 1 });
    await new Promise((r) => setTimeout(r, 300));
    expect(hub.device('pi-ok')?.online).toBe(false);
    expect(hub.device('stranger')).toBeUndefined();

    await scriptedDevice(mosquitto.url, 'pi-ok');
    await waitFor(() => hub.device('pi-ok')?.online, { what: 'pi-ok online' });

    // A response topic into the hub's namespace (a device's command topic) is refused.
    const v5 = await connectMqtt(mosquitto.url, { clientId: 'sneaky', protocolVersion: 5 });
    const commands: string[] = [];
    await raw.subscribeAsync('rhizosphere/devices/pi-ok/command', { qos: 1 });
    raw.on('message', (t, p) => t.endsWith('/command') && commands.push(p.toString()));
    await v5.subscribeAsync('rhizosphere/clients/sneaky/response', { qos: 1 });
    const refusal = replyOn(v5, 'rhizosphere/clients/sneaky/response');
    await v5.publishAsync('rhizosphere/clients/sneaky/request', JSON.stringify({ id: 's-1', device: 'pi-ok', order: 'exec_bash', cmd_str: 'x' }), {
      qos: 1,
      properties: { responseTopic: 'rhizosphere/devices/pi-ok/command', correlationData: Buffer.from('c') },
    });
    expect((await refusal).body).toMatchObject({ status: 'error', code: 'FORBIDDEN' });
    expect(commands).toEqual([]);

    // Malformed requests get BAD_REQUEST; one on a wildcard-like client id is dropped; the hub serves on.
    await v5.publishAsync('rhizosphere/clients/sneaky/request', '{"id":"b-1","device":"a/b"}', { qos: 1 });
    const bad = replyOn(v5, 'rhizosphere/clients/sneaky/response');
    expect((await bad).body).toMatchObject({ status: 'error', code: 'BAD_REQUEST' });
    await v5.publishAsync('rhizosphere/clients/$SYS/request', '{}', { qos: 1 });
    const ok = replyOn(v5, 'rhizosphere/clients/sneaky/response');
    await v5.publishAsync('rhizosphere/clients/sneaky/request', JSON.stringify({ id: 'g-1', device: 'pi-ok', order: 'exec_bash', cmd_str: 'fine' }), { qos: 1 });
    expect((await ok).body).toMatchObject({ id: 'g-1', status: 'ok' });
  });

  it('ends the start with one line naming the flag: broker unreachable, credentials refused, password file missing', async () => {
    const mosquitto = await startMosquitto({ dynsecAdminPassword: 'admin-pw' });
    await mosquitto.stop();
    const dead = startHub({ broker: mosquitto.url, httpPort: 0, dataDir: tempDir(), logLevel: 'silent' });
    await expect(dead).rejects.toThrow(/^--broker mqtt:\/\/127\.0\.0\.1:\d+: cannot connect \(ECONNREFUSED\)$/);

    await mosquitto.start();
    const dir = tempDir();
    writeFileSync(join(dir, 'pw'), 'wrong\n');
    const refused = startHub({ broker: mosquitto.url, brokerUsername: 'admin', brokerPasswordFile: join(dir, 'pw'), httpPort: 0, dataDir: tempDir(), logLevel: 'silent' });
    await expect(refused).rejects.toThrow(/^--broker-username\/--broker-password-file: .* refused the hub's credentials/);

    const missing = startHub({ broker: mosquitto.url, brokerUsername: 'admin', brokerPasswordFile: join(dir, 'nope'), httpPort: 0, dataDir: tempDir(), logLevel: 'silent' });
    await expect(missing).rejects.toThrow(/^--broker-password-file: cannot read .*nope \(ENOENT\)$/);

    // Several URLs: none reachable is one line naming each; credentials refused by the first that answers end the start there.
    const [downA, downB] = [`mqtt://127.0.0.1:${await freePort()}`, `mqtt://127.0.0.1:${await freePort()}`];
    const none = startHub({ broker: `${downA},${downB}`, httpPort: 0, dataDir: tempDir(), logLevel: 'silent' });
    await expect(none).rejects.toThrow(`--broker: none of its URLs could be reached: ${downA} (ECONNREFUSED), ${downB} (ECONNREFUSED)`);
    const refusedList = startHub({ broker: `${downA},${mosquitto.url}`, brokerUsername: 'admin', brokerPasswordFile: join(dir, 'pw'), httpPort: 0, dataDir: tempDir(), logLevel: 'silent' });
    await expect(refusedList).rejects.toThrow(/^--broker-username\/--broker-password-file: .* refused the hub's credentials/);
  });

  it('joins the first node of a --broker list that answers, and moves to another when its node goes', async () => {
    const [first, second] = [await startMosquitto(), await startMosquitto()];
    const down = `mqtt://127.0.0.1:${await freePort()}`;
    const hub = await startTestHub({ broker: `${down},${first.url},${second.url}` });
    expect(hub.external?.uplink.url).toBe(first.url);
    const info = (await (await fetch(`${hub.urls.http}/api/hub`)).json()) as { broker: { url: string; urls: string[] } };
    expect(info.broker).toMatchObject({ url: first.url, urls: [down, first.url, second.url] });

    await first.kill();
    await waitFor(() => hub.external?.uplink.connected && hub.external.uplink.url === second.url, { timeoutMs: 15_000, what: 'the hub on the second node' });
    // A device on that node is commanded through the hub.
    const device = await scriptedDevice(second.url, 'list-dev');
    await waitFor(() => hub.device('list-dev')?.online, { what: 'list-dev online' });
    const reply = await fetch(`${hub.urls.http}/api/devices/list-dev/commands`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ order: 'exec_bash', cmd_str: 'echo x' }) });
    expect(await reply.json()).toMatchObject({ status: 'ok', result: 'ran echo x' });
    device.client.end(true);
  });
});
