/**
 * hypha's presence on an external broker: a retained birth and will with a new nonce per
 * connection, healed when a stale will or an old birth shows up; MQTT 5 where the broker
 * speaks it and 3.1.1 where it does not (the embedded Aedes); several --url values in turn.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { startAgent } from '../src/hypha/agent.js';
import { startMosquitto } from './brokers.js';
import { cleanup, connectMqtt, freePort, spawnHypha, startTestHub, waitFor } from './helpers.js';

interface PresenceMessage {
  online: boolean;
  nonce: string;
  transport?: string;
  agent?: string;
}

/** Every presence message of one device, retained ones included, in order. */
async function watchPresence(url: string, id: string) {
  const seen: { message: PresenceMessage; retained: boolean }[] = [];
  const watcher = await connectMqtt(url, { clientId: `watch-${id}-${randomBytes(3).toString('hex')}` });
  watcher.on('message', (_topic, payload, packet) => {
    if (payload.length > 0) seen.push({ message: JSON.parse(payload.toString()) as PresenceMessage, retained: packet.retain });
  });
  await watcher.subscribeAsync(`rhizosphere/devices/${id}/presence`, { qos: 1 });
  const last = () => seen.at(-1)?.message;
  /** The last message when it is a birth. */
  const birth = () => (last()?.online ? last() : undefined);
  return { seen, watcher, last, birth };
}

describe('hypha presence on an external broker', () => {
  it('a real hypha process announces itself with MQTT 5, runs real bash for curl, and is seen offline through its will when it goes silent', async () => {
    const mosquitto = await startMosquitto();
    const hub = await startTestHub({ broker: mosquitto.url });
    const presence = await watchPresence(mosquitto.url, 'pi-real');
    const agent = spawnHypha(mosquitto.url, 'pi-real', ['--keepalive', '2']);
    await waitFor(() => hub.device('pi-real')?.online, { timeoutMs: 15_000, what: 'pi-real online' });
    const birth = await waitFor(() => presence.birth(), { what: 'birth' });
    expect(birth).toMatchObject({ online: true, transport: 'mqtt' });
    expect(birth.nonce).toMatch(/^[A-Za-z0-9_-]{8,64}$/);
    expect(agent.output()).toMatch(/ connected .*mqtt=5/);

    const reply = await fetch(`${hub.urls.http}/api/devices/pi-real/commands`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ order: 'exec_bash', cmd_str: 'echo $((6 * 7))' }),
    });
    expect(await reply.json()).toMatchObject({ status: 'ok', result: '42', exit_code: 0 });

    // Silent death (power cut, network gone: no FIN reaches the broker; SIGSTOP stands in for
    // it): the broker publishes the retained will, with this connection's nonce, once 1.5 x
    // keepalive passed without a packet.
    const stoppedAt = Date.now();
    agent.child.kill('SIGSTOP');
    await waitFor(() => hub.device('pi-real')?.online === false, { timeoutMs: 10_000, what: 'pi-real offline' });
    const seenAfter = Date.now() - stoppedAt;
    console.log(`hypha on Mosquitto, keepalive 2 s: a silent device is seen offline after ${seenAfter} ms`);
    expect(seenAfter).toBeGreaterThanOrEqual(2000);
    expect(presence.last()).toEqual({ online: false, nonce: birth.nonce });
    agent.child.kill('SIGKILL');

    // Back with a new nonce.
    spawnHypha(mosquitto.url, 'pi-real', ['--keepalive', '2']);
    await waitFor(() => hub.device('pi-real')?.online, { timeoutMs: 15_000, what: 'pi-real online again' });
    const second = await waitFor(() => presence.birth(), { what: 'second birth' });
    expect(second.nonce).not.toBe(birth.nonce);
  });

  it('heals a stale will and an old birth published over its presence, and warns of a second agent under its id', async () => {
    const mosquitto = await startMosquitto();
    const hub = await startTestHub({ broker: mosquitto.url });
    const warnings: string[] = [];
    const quiet = () => {};
    const logger = { level: 'info' as const, debug: quiet, info: quiet, error: quiet, warn: (message: string) => void warnings.push(message) };
    const agent = await startAgent({ url: mosquitto.url, id: 'pi-heal', logger, backoffBaseMs: 50 });
    cleanup(() => agent.stop());
    await agent.firstConnect;
    await waitFor(() => hub.device('pi-heal')?.online, { what: 'pi-heal online' });
    const presence = await watchPresence(mosquitto.url, 'pi-heal');
    const birth = await waitFor(() => presence.birth(), { what: 'retained birth' });

    // An older connection's will, late (as from another node of a broker cluster): hypha publishes its birth again.
    const raw = await connectMqtt(mosquitto.url, { clientId: 'raw' });
    await raw.publishAsync('rhizosphere/devices/pi-heal/presence', JSON.stringify({ online: false, nonce: 'oldnonce1234' }), { qos: 1, retain: true });
    await waitFor(() => presence.last()?.online === true && presence.last()?.nonce === birth.nonce && presence.seen.length >= 3, { what: 'birth republished' });
    expect(hub.device('pi-heal')?.online).toBe(true);

    // A birth of its own earlier connection, sent again late: the same.
    (agent as unknown as { client: { stream: { destroy(): void } } }).client.stream.destroy();
    const rebirth = await waitFor(() => { const b = presence.birth(); return b && b.nonce !== birth.nonce ? b : undefined; }, { what: 'birth of the new connection' });
    const count = presence.seen.length;
    await raw.publishAsync('rhizosphere/devices/pi-heal/presence', JSON.stringify({ online: true, nonce: birth.nonce }), { qos: 1, retain: true });
    await waitFor(() => presence.seen.length >= count + 2 && presence.last()?.nonce === rebirth.nonce, { what: 'birth republished over its own old birth' });

    // A birth with a nonce it never used: another agent under its id. A warning, no ping-pong.
    const before = presence.seen.length;
    await raw.publishAsync('rhizosphere/devices/pi-heal/presence', JSON.stringify({ online: true, nonce: 'someoneelse1' }), { qos: 1, retain: true });
    await waitFor(() => warnings.some((w) => w.includes('another connection announced itself as pi-heal')), { what: 'duplicate warning' });
    await new Promise((r) => setTimeout(r, 300));
    expect(presence.seen.length).toBe(before + 1);
    expect(hub.device('pi-heal')?.online).toBe(true);
  });

  it('speaks MQTT 5 to Mosquitto and falls back to 3.1.1 with the embedded broker, which refuses MQTT 5', async () => {
    const mosquitto = await startMosquitto();
    const v5 = await startAgent({ url: mosquitto.url, id: 'pi-v5', logLevel: 'error' });
    cleanup(() => v5.stop());
    await v5.firstConnect;
    expect(v5.protocolVersion).toBe(5);

    const embedded = await startTestHub();
    const auto = await startAgent({ url: embedded.urls.mqtt, id: 'pi-auto', logLevel: 'error' });
    cleanup(() => auto.stop());
    await waitFor(() => embedded.device('pi-auto')?.online, { what: 'pi-auto online on the embedded broker' });
    expect(auto.protocolVersion).toBe(4);

    // Forced MQTT 5 against the embedded broker is refused every time, with the reason.
    const forced = await startAgent({ url: embedded.urls.mqtt, id: 'pi-force', mqttVersion: 5, logLevel: 'error', backoffBaseMs: 20, backoffCapMs: 50 });
    cleanup(() => forced.stop());
    const retries: string[] = [];
    forced.on('retry', ({ reason }) => retries.push(reason));
    await waitFor(() => retries.length >= 2, { what: 'two refused attempts' });
    expect(retries[0]).toMatch(/protocol version/i);
    expect(forced.connected).toBe(false);
    expect(embedded.device('pi-force')?.online ?? false).toBe(false);
  });

  it('tries its --url values in turn: a dead first broker, then the live one', async () => {
    const mosquitto = await startMosquitto();
    const hub = await startTestHub({ broker: mosquitto.url });
    const dead = `mqtt://127.0.0.1:${await freePort()}`;
    const agent = spawnHypha(dead, 'pi-multi', ['--url', mosquitto.url, '--keepalive', '2']);
    await waitFor(() => hub.device('pi-multi')?.online, { timeoutMs: 15_000, what: 'pi-multi online through the second URL' });
    expect(agent.output()).toContain(String(mosquitto.port));
  });
});
