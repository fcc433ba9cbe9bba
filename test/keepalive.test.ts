/**
 * A device that goes silent without closing its connection (a dead NAT mapping, a
 * pulled cable) is only noticed by the keepalive: the broker's timeout must turn it offline.
 */
import { connect } from 'node:net';
import mqttPacket from 'mqtt-packet';
import { expect, it } from 'vitest';
import type { OfflineReason } from '../src/index.js';
import { cleanup, RequestClient, startTestHub, waitFor } from './helpers.js';

it('turns a silent device offline at its keepalive timeout and answers its commands DEVICE_OFFLINE', async () => {
  const hub = await startTestHub();
  const socket = connect(hub.ports.mqtt, '127.0.0.1');
  cleanup(() => socket.destroy());
  await new Promise<void>((r) => socket.once('connect', () => r()));
  const send = (packet: object) => socket.write(mqttPacket.generate(packet as mqttPacket.Packet));
  // keepalive 1 s: the broker allows 1.5 s of silence.
  send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'pi-silent', clean: true, keepalive: 1 });
  send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'rhizosphere/devices/pi-silent/command', qos: 1 }] });
  await waitFor(() => hub.device('pi-silent')?.online, { what: 'online' });

  const reasons: OfflineReason[] = [];
  hub.on('offline', (_device, reason) => reasons.push(reason));
  const client = await RequestClient.connect(hub.urls.mqtt, 'console-ka');
  const pending = client.request({ device: 'pi-silent', order: 'exec_bash', cmd_str: 'sleep 60', timeout_ms: 60_000 });
  const silentSince = Date.now();
  // Never answer, never ping.
  expect(await pending).toMatchObject({ status: 'error', code: 'DEVICE_OFFLINE' });
  expect(Date.now() - silentSince).toBeLessThan(3000);
  expect(reasons).toEqual(['keepalive-timeout']);
  expect(hub.device('pi-silent')!.online).toBe(false);
});
