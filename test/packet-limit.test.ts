/** The packet size guard, byte by byte, and against the real broker. */
import { connect } from 'node:net';
import mqttPacket from 'mqtt-packet';
import { describe, expect, it } from 'vitest';
import { PacketSizeGuard } from '../src/packet-limit.js';
import { cleanup, RequestClient, startTestHub, waitFor } from './helpers.js';

const publish = (bytes: number) => mqttPacket.generate({ cmd: 'publish', topic: 't', payload: Buffer.alloc(bytes), qos: 0, retain: false, dup: false });

describe('PacketSizeGuard', () => {
  it('passes packets up to the limit, in any chunking', () => {
    const stream = Buffer.concat([publish(10), publish(1000), publish(200), mqttPacket.generate({ cmd: 'pingreq' })]);
    for (const size of [1, 2, 3, 7, 64, stream.length]) {
      const guard = new PacketSizeGuard(1100);
      for (let i = 0; i < stream.length; i += size) expect(guard.feed(stream.subarray(i, i + size))).toBeNull();
    }
  });
  it('stops at the header of a packet over the limit, before its body', () => {
    const guard = new PacketSizeGuard(1000);
    expect(guard.feed(publish(10))).toBeNull();
    const big = publish(5000);
    expect(guard.feed(big.subarray(0, 4))).toBe(5000 + 3);
  });
  it('refuses a length field of five bytes', () => {
    expect(new PacketSizeGuard(1 << 30).feed(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01]))).not.toBeNull();
  });
});

describe('the hub with a packet limit', () => {
  it('closes a connection that declares a huge packet, and keeps serving the others', async () => {
    const hub = await startTestHub({ maxPayloadBytes: 4096 });
    const socket = connect(hub.ports.mqtt, '127.0.0.1');
    cleanup(() => socket.destroy());
    await new Promise<void>((r) => socket.once('connect', () => r()));
    socket.write(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'big', clean: true, keepalive: 30 }));
    // A PUBLISH that claims 200 MB: only its header is ever sent.
    socket.write(Buffer.from([0x30, 0x80, 0x80, 0x80, 0x64]));
    const closed = await new Promise<boolean>((r) => {
      socket.once('close', () => r(true));
      setTimeout(() => r(false), 3000);
    });
    expect(closed).toBe(true);
    const client = await RequestClient.connect(hub.urls.mqtt, 'still-fine');
    const reply = await client.request({ device: 'nobody', order: 'exec_bash', cmd_str: 'true' });
    expect(reply).toMatchObject({ code: 'UNKNOWN_DEVICE' });
    await waitFor(() => true);
  });
});
