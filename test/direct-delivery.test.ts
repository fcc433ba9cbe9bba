/**
 * The hub's commands and Replies go straight to their one subscriber (src/direct-delivery.ts),
 * and through the broker again as soon as anybody else subscribes: third-party tools, live or
 * with a persistent session, see what they saw before. Real hub, real hypha, MQTT.js clients.
 */
import { describe, expect, it } from 'vitest';
import type { Hub } from '../src/index.js';
import { connectMqtt, metricValue, parseMetrics, RequestClient, startAgents, startTestHub, waitFor } from './helpers.js';

async function hubPublishes(hub: Hub, metric = 'rhizosphere_mqtt_hub_publishes_total'): Promise<{ direct: number; broker: number }> {
  const samples = parseMetrics(await (await fetch(`${hub.urls.http}/metrics`)).text());
  const path = (p: string) => metricValue(samples, metric, { path: p });
  return { direct: path('direct'), broker: path('broker') };
}
/** Requests and Responses: straight to the hub while nobody else subscribes to their topics. */
const clientPublishes = (hub: Hub) => hubPublishes(hub, 'rhizosphere_mqtt_client_publishes_total');

/** A hub, one real agent, and `run(n, tag)`: n commands in a row from an MQTT.js client, each checked. */
async function hubWithAgent(device: string, toolId: string) {
  const hub = await startTestHub();
  await startAgents(hub, [device]);
  const tool = await RequestClient.connect(hub.urls.mqtt, toolId);
  const run = async (n: number, tag: string) => {
    for (let i = 0; i < n; i++) {
      expect(await tool.request({ id: `${tag}-${i}`, device, order: 'exec_bash', cmd_str: `echo ${tag}-${i}` })).toMatchObject({ status: 'ok', result: `${tag}-${i}` });
    }
  };
  return { hub, run };
}

/** A third-party tool's MQTT client on `filters`: what it sees, as "topic id". */
async function thirdPartyWatcher(hub: Hub, clientId: string, filters: string[]) {
  const watcher = await connectMqtt(hub.urls.mqtt, { clientId });
  const seen: string[] = [];
  watcher.on('message', (topic, payload) => seen.push(`${topic} ${(JSON.parse(payload.toString()) as { id: string }).id}`));
  await watcher.subscribeAsync(filters, { qos: 1 });
  return { watcher, seen };
}

/**
 * A persistent session subscribed to `filter` that goes away while `meanwhile` runs, then
 * comes back: `queued` fills with what the broker kept for it (`pick` of each JSON message).
 */
async function queuedWhileAway(hub: Hub, clientId: string, filter: string, meanwhile: () => Promise<void>, pick: (message: Record<string, unknown>) => string) {
  const away = await connectMqtt(hub.urls.mqtt, { clientId, clean: false });
  await away.subscribeAsync(filter, { qos: 1 });
  await away.endAsync();
  await meanwhile();
  const back = await connectMqtt(hub.urls.mqtt, { clientId, clean: false });
  const queued: string[] = [];
  back.on('message', (_topic, payload) => queued.push(pick(JSON.parse(payload.toString()) as Record<string, unknown>)));
  return { back, queued };
}

describe('direct delivery of commands and Replies', () => {
  it('skips the broker while nobody else listens, and goes through it for every other subscriber, live or offline', async () => {
    const { hub, run } = await hubWithAgent('pi-direct', 'tool-direct');

    // The first command and Reply go through the broker while the hub asks; the rest go straight.
    await run(6, 'alone');
    const alone = await hubPublishes(hub);
    expect(alone.direct).toBeGreaterThanOrEqual(8);

    // A third-party tool following every command and Reply: everything through the broker, seen by it.
    const { watcher, seen } = await thirdPartyWatcher(hub, 'explorer', ['rhizosphere/devices/+/command', 'rhizosphere/clients/+/response']);
    await run(3, 'watched');
    await waitFor(() => seen.length >= 6, { what: 'the watcher to see 3 commands and 3 Replies' });
    expect(seen.filter((s) => s.startsWith('rhizosphere/devices/pi-direct/command')).length).toBe(3);
    expect(seen.filter((s) => s.startsWith('rhizosphere/clients/tool-direct/response watched-')).length).toBe(3);
    const watched = await hubPublishes(hub);
    expect(watched.direct).toBe(alone.direct);

    // It leaves: straight again.
    await watcher.unsubscribeAsync(['rhizosphere/devices/+/command', 'rhizosphere/clients/+/response']);
    await run(4, 'again');
    expect((await hubPublishes(hub)).direct).toBeGreaterThan(watched.direct);
    expect(seen).toHaveLength(6);

    // A persistent session subscribed to the commands, offline: its queue still gets them.
    const { queued } = await queuedWhileAway(hub, 'archiver', 'rhizosphere/devices/pi-direct/command', () => run(2, 'queued'), (m) => m.cmd_str as string);
    await waitFor(() => queued.length >= 2, { what: 'the queued commands' });
    expect(queued).toEqual(['echo queued-0', 'echo queued-1']);
  });

  it('hands Requests and Responses straight to the hub while nobody subscribes to them, and to every subscriber when somebody does', async () => {
    const { hub, run } = await hubWithAgent('pi-in', 'tool-in');
    // The device's Response topic was looked up as it came online: its first Response goes
    // straight; the client's first Request goes through the broker while the hub asks.
    await run(1, 'first');
    expect(await clientPublishes(hub)).toEqual({ direct: 1, broker: 1 });
    await run(5, 'alone');
    const alone = await clientPublishes(hub);
    expect(alone).toEqual({ direct: 11, broker: 1 });

    // Node-RED, say, following every Request and Response: it gets each one, and the hub still answers.
    const { watcher, seen } = await thirdPartyWatcher(hub, 'node-red', ['rhizosphere/clients/+/request', 'rhizosphere/devices/+/response']);
    await run(3, 'watched');
    await waitFor(() => seen.length >= 6, { what: 'the watcher to see 3 Requests and 3 Responses' });
    expect(seen.filter((s) => s.startsWith('rhizosphere/clients/tool-in/request watched-'))).toHaveLength(3);
    expect(seen.filter((s) => s.startsWith('rhizosphere/devices/pi-in/response '))).toHaveLength(3);
    const watched = await clientPublishes(hub);
    expect(watched.direct).toBe(alone.direct);
    expect(watched.broker).toBeGreaterThanOrEqual(alone.broker + 6);

    // A persistent session that follows the Responses, offline: it still gets them queued.
    await watcher.endAsync();
    const { back, queued } = await queuedWhileAway(hub, 'resp-archiver', 'rhizosphere/devices/pi-in/response', () => run(2, 'queued'), (m) => m.result as string);
    await waitFor(() => queued.length >= 2, { what: 'the queued Responses' });
    expect(queued).toEqual(['queued-0', 'queued-1']);
    await back.endAsync();
    // It comes back with a clean session, which drops its subscription: nobody left, straight again.
    const fresh = await connectMqtt(hub.urls.mqtt, { clientId: 'resp-archiver', clean: true });
    await run(1, 'settle');
    const before = await clientPublishes(hub);
    await run(4, 'again');
    expect((await clientPublishes(hub)).direct).toBe(before.direct + 8);
    await fresh.endAsync();
  });

  it('loses nothing when direct and brokered messages to one device leave in the same turn', async () => {
    const hub = await startTestHub({ maxInflightPerDevice: 64 });
    const device = await connectMqtt(hub.urls.mqtt, { clientId: 'pi-order', clean: false });
    const frames: string[] = [];
    device.on('message', (topic, payload) => {
      if (topic.endsWith('/command')) {
        const command = JSON.parse(payload.toString()) as { id: string; cmd_str: string };
        void device.publishAsync('rhizosphere/devices/pi-order/response', JSON.stringify({ type: 'response', id: command.id, result: command.cmd_str, error: '', exit_code: 0 }), { qos: 1 });
      } else frames.push(payload.toString());
    });
    await device.subscribeAsync(['rhizosphere/devices/pi-order/command', 'rhizosphere/devices/pi-order/tunnels/+/in'], { qos: 1 });
    await waitFor(() => hub.device('pi-order')?.online);
    await hub.exec('pi-order', 'warm-up');
    await waitFor(async () => (await hub.exec('pi-order', 'warm-up')) && (await hubPublishes(hub)).direct > 0, { what: 'the direct path in use' });

    // Commands go straight to the device, tunnel frames through the broker: 50 of each, interleaved in one turn.
    const replies: Promise<unknown>[] = [];
    for (let i = 0; i < 50; i++) {
      hub.broker.publish({ cmd: 'publish', topic: 'rhizosphere/devices/pi-order/tunnels/t1/in', payload: Buffer.from(`frame-${i}`), qos: 1, retain: false, dup: false }, () => {});
      replies.push(hub.exec('pi-order', `cmd-${i}`));
    }
    const results = (await Promise.all(replies)) as { result: string }[];
    expect(results.map((r) => r.result)).toEqual(Array.from({ length: 50 }, (_, i) => `cmd-${i}`));
    await waitFor(() => frames.length >= 50, { what: '50 tunnel frames' });
    expect(frames).toEqual(Array.from({ length: 50 }, (_, i) => `frame-${i}`));
  });
});
