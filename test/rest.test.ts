/** The REST face: device list, one device, commands with every status code, /healthz. */
import { describe, expect, it } from 'vitest';
import type { Hub } from '../src/index.js';
import type { Command } from '../src/protocol/schemas.js';
import { connectMqtt, startTestHub, waitFor } from './helpers.js';

async function echoDevice(hub: Hub, id: string, silent = false) {
  const client = await connectMqtt(hub.urls.mqtt, { clientId: id, clean: false });
  client.on('message', (_topic, payload) => {
    const command = JSON.parse(payload.toString()) as Command;
    if (silent) return;
    const body = { type: 'response', id: command.id, result: `echo:${command.cmd_str}`, error: '', exit_code: 0, duration_ms: 1, truncated: false };
    client.publish(`rhizosphere/devices/${id}/response`, JSON.stringify(body), { qos: 1 });
  });
  await client.subscribeAsync(`rhizosphere/devices/${id}/command`, { qos: 1 });
  await waitFor(() => hub.device(id)?.online);
  return client;
}

async function post(hub: Hub, path: string, body: string | object, headers: Record<string, string> = { 'content-type': 'application/json' }) {
  const res = await fetch(`${hub.urls.http}${path}`, { method: 'POST', headers, body: typeof body === 'string' ? body : JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

describe('REST API', () => {
  it('lists devices and answers /healthz', async () => {
    const hub = await startTestHub();
    await echoDevice(hub, 'pi-01');
    const health = await fetch(`${hub.urls.http}/healthz`);
    expect(health.status).toBe(200);
    expect(await health.json()).toMatchObject({ ok: true, devices: 1, online: 1 });

    const list = (await (await fetch(`${hub.urls.http}/api/devices`)).json()) as unknown[];
    expect(list).toEqual([
      { id: 'pi-01', online: true, transport: 'mqtt', connectedAt: expect.any(String), lastSeen: expect.any(String), remoteAddress: '127.0.0.1', tags: [], agent: null },
    ]);
    const one = await fetch(`${hub.urls.http}/api/devices/pi-01`);
    expect(await one.json()).toMatchObject({ id: 'pi-01', online: true });

    const missing = await fetch(`${hub.urls.http}/api/devices/nobody`);
    expect(missing.status).toBe(404);
    expect(await missing.json()).toMatchObject({ status: 'error', code: 'UNKNOWN_DEVICE' });
    const hostile = await fetch(`${hub.urls.http}/api/devices/${encodeURIComponent('$SYS')}`);
    expect(hostile.status).toBe(400);
    expect(await hostile.json()).toMatchObject({ code: 'BAD_REQUEST' });
    const nowhere = await fetch(`${hub.urls.http}/api/nothing-here`);
    expect(nowhere.status).toBe(404);
    expect(await nowhere.json()).toMatchObject({ status: 'error', code: 'BAD_REQUEST' });
  });

  it('runs a command and maps every outcome to its HTTP status', async () => {
    const hub = await startTestHub({ maxPayloadBytes: 2048 });
    await echoDevice(hub, 'pi-02');
    const ok = await post(hub, '/api/devices/pi-02/commands', { order: 'exec_bash', cmd_str: 'uname -a' });
    expect(ok).toEqual({
      status: 200,
      body: { type: 'response', id: null, device: 'pi-02', status: 'ok', result: 'echo:uname -a', error: '', exit_code: 0, duration_ms: 1, truncated: false },
    });
    expect((await post(hub, '/api/devices/pi-02/commands', { id: 'mine', order: 'exec_bash', cmd_str: 'x' })).body).toMatchObject({ id: 'mine' });

    const bad = await post(hub, '/api/devices/pi-02/commands', { order: 'nope', cmd_str: 'x' });
    expect(bad).toMatchObject({ status: 400, body: { code: 'BAD_REQUEST', message: expect.stringMatching(/^order/) } });
    expect(await post(hub, '/api/devices/pi-02/commands', '{oops')).toMatchObject({ status: 400, body: { device: 'pi-02', code: 'BAD_REQUEST', message: 'body is not valid JSON' } });
    expect(await post(hub, '/api/devices/pi-02/commands', { id: 12, order: 'exec_bash', cmd_str: 'x' })).toMatchObject({ status: 400, body: { message: 'id must be a string' } });
    expect(await post(hub, '/api/devices/pi-02/commands', '[1]')).toMatchObject({ status: 400, body: { code: 'BAD_REQUEST' } });
    expect(await post(hub, '/api/devices/pi-02/commands', { cmd_str: 'x' })).toMatchObject({ status: 400, body: { message: 'order is required' } });
    expect(await post(hub, '/api/devices/pi-02/commands', { order: 'exec_bash', cmd_str: 'x', timeout_ms: 10 })).toMatchObject({ status: 400, body: { message: expect.stringMatching(/^timeout_ms/) } });
    expect(await post(hub, `/api/devices/${encodeURIComponent('a/b')}/commands`, { order: 'exec_bash', cmd_str: 'x' })).toMatchObject({ status: 400, body: { code: 'BAD_REQUEST' } });
    expect(await post(hub, '/api/devices/pi-02/commands', { order: 'exec_bash', cmd_str: 'x'.repeat(4000) })).toMatchObject({ status: 413, body: { device: 'pi-02', code: 'PAYLOAD_TOO_LARGE' } });
    expect(await post(hub, '/api/devices/ghost/commands', { order: 'exec_bash', cmd_str: 'x' })).toMatchObject({ status: 404, body: { code: 'UNKNOWN_DEVICE' } });

    const silent = await echoDevice(hub, 'pi-03', true);
    const timedOut = await post(hub, '/api/devices/pi-03/commands', { order: 'exec_bash', cmd_str: 'x', timeout_ms: 1000 });
    expect(timedOut).toMatchObject({ status: 504, body: { code: 'TIMEOUT' } });
    await silent.endAsync();
    await waitFor(() => hub.device('pi-03')?.online === false);
    expect(await post(hub, '/api/devices/pi-03/commands', { order: 'exec_bash', cmd_str: 'x' })).toMatchObject({ status: 409, body: { code: 'DEVICE_OFFLINE' } });

    // Still serving after all of that.
    expect((await post(hub, '/api/devices/pi-02/commands', { order: 'exec_bash', cmd_str: 'still' })).body).toMatchObject({ status: 'ok', result: 'echo:still' });
  });

  it('serves the console, its scripts, the MQTT.js bundle and /api/hub', async () => {
    const hub = await startTestHub({ topicPrefix: 'acme/fleet' });
    const page = await fetch(`${hub.urls.http}/`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toMatch(/text\/html/);
    expect(await page.text()).toContain('/assets/main.js');
    const script = await fetch(`${hub.urls.http}/assets/main.js`);
    expect(script.status).toBe(200);
    expect(script.headers.get('content-type')).toMatch(/javascript/);
    const bundle = await fetch(`${hub.urls.http}/vendor/mqtt.esm.js`);
    expect(bundle.status).toBe(200);
    expect(bundle.headers.get('content-type')).toMatch(/javascript/);
    expect((await bundle.text()).length).toBeGreaterThan(100_000);
    expect(await (await fetch(`${hub.urls.http}/api/hub`)).json()).toEqual({ topicPrefix: 'acme/fleet', version: expect.stringMatching(/^\d+\.\d+\.\d+/), mqttPort: hub.ports.mqtt, mqttsPort: null });
    expect((await fetch(`${hub.urls.http}/assets/../package.json`)).status).toBe(404);
  });

  it('answers BUSY as 429', async () => {
    const hub = await startTestHub({ maxInflightPerDevice: 1 });
    await echoDevice(hub, 'pi-04', true);
    const first = post(hub, '/api/devices/pi-04/commands', { order: 'exec_bash', cmd_str: 'x', timeout_ms: 1000 });
    await waitFor(() => hub.inflight === 1);
    expect(await post(hub, '/api/devices/pi-04/commands', { order: 'exec_bash', cmd_str: 'y' })).toMatchObject({ status: 429, body: { code: 'BUSY' } });
    expect((await first).status).toBe(504);
  });
});
