/**
 * Backpressure and fairness: an MQTT connection that stops reading (a frozen console tab, a
 * device on a dead link whose TCP window is full) cannot stall the broker for everybody else,
 * and what the hub buffers for it stays bounded: past the limit it is disconnected.
 */
import { connect as tcpConnect, type Socket } from 'node:net';
import mqttPacket from 'mqtt-packet';
import { describe, expect, it } from 'vitest';
import type { Hub } from '../src/index.js';
import { capturedLog, cleanup, connectMqtt, startAgents, startTestHub, waitFor } from './helpers.js';

/** A raw MQTT client that subscribes to `filter` and then stops reading from its socket. */
async function frozenSubscriber(hub: Hub, clientId: string, filter: string): Promise<Socket> {
  const socket = tcpConnect(hub.ports.mqtt!, '127.0.0.1');
  cleanup(() => socket.destroy());
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  const parser = mqttPacket.parser({ protocolVersion: 4 });
  const suback = new Promise<void>((resolve) => parser.on('packet', (packet) => packet.cmd === 'suback' && resolve()));
  socket.on('data', (chunk) => parser.parse(chunk));
  socket.write(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId, clean: true, keepalive: 0 }));
  socket.write(mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: filter, qos: 0 }] }));
  await suback;
  socket.pause();
  return socket;
}

const rssMiB = () => process.memoryUsage().rss / 2 ** 20;

describe('backpressure', () => {
  it('a subscriber that stops reading is cut off at its buffer limit; commands to others keep flowing', async () => {
    const { logger, lines } = capturedLog();
    const hub = await startTestHub({ logger, maxClientBufferBytes: 2 * 1024 * 1024, maxPublishRate: 0 });
    await startAgents(hub, ['pi-01']);
    const frozen = await frozenSubscriber(hub, 'frozen-console', 'rhizosphere/devices/+/telemetry/#');
    // The frozen client reads nothing, so it cannot see its own end: the hub's log tells.
    const cutOff = () => lines.find((l) => l.code === 'BUSY' && l.clientId === 'frozen-console');

    // A chatty device: 64 KiB telemetry messages as fast as the hub takes them, until the frozen
    // subscriber is cut off. The kernel buffers tens of MiB for a loopback socket (tcp_rmem)
    // before the hub's own buffer for it starts to grow.
    const chatty = await connectMqtt(hub.urls.mqtt, { clientId: 'chatty' });
    const blob = Buffer.alloc(64 * 1024, 120);
    const before = rssMiB();
    let sent = 0;
    let stop = false;
    const pump = (async () => {
      while (!stop && !cutOff() && sent < 6000) {
        await chatty.publishAsync('rhizosphere/devices/chatty/telemetry/blob', blob, { qos: 1 });
        sent++;
      }
    })();

    // Meanwhile commands to a real agent answer promptly, every one of them.
    const latencies: number[] = [];
    for (let i = 0; i < 20; i++) {
      const started = performance.now();
      const reply = await hub.exec('pi-01', `echo ${i}`);
      latencies.push(performance.now() - started);
      expect(reply.result).toBe(String(i));
    }
    const line = await waitFor(cutOff, { timeoutMs: 20_000, what: 'the frozen subscriber cut off' });
    stop = true;
    await pump;
    expect(String(line.msg)).toContain('reads too slowly');
    expect(line.buffered).toBeGreaterThan(2 * 1024 * 1024);
    expect(Math.max(...latencies)).toBeLessThan(2000);
    // Reading again, it finds its connection closed.
    const closed = new Promise<void>((resolve) => frozen.once('close', () => resolve()));
    frozen.resume();
    await closed;
    // What was buffered for it is released: memory does not keep what the frozen client never read.
    expect(rssMiB() - before).toBeLessThan(200);
    expect(hub.device('pi-01')?.online).toBe(true);
  });

  it('delivers a burst of thousands of messages, most of them to nobody, without overflowing the stack', async () => {
    // A fan-out to 10000+ devices looks like this to the broker: many commands in delivery at
    // once, and behind them thousands of responses that no MQTT client subscribes to.
    const hub = await startTestHub();
    const subscriber = await connectMqtt(hub.urls.mqtt, { clientId: 'watcher' });
    await subscriber.subscribeAsync('rhizosphere/handlers/burst/#', { qos: 0 });
    let done = 0;
    const publish = (topic: string) =>
      hub.broker.publish({ cmd: 'publish', topic, payload: Buffer.from('x'), qos: 0, retain: false, dup: false }, () => void done++);
    for (let i = 0; i < 200; i++) publish('rhizosphere/handlers/burst/seen');
    for (let i = 0; i < 30_000; i++) publish('rhizosphere/handlers/nobody/listens');
    await waitFor(() => done === 30_200, { what: 'every publish completed' });
    expect(hub.broker.closed).toBe(false);
  });
});
