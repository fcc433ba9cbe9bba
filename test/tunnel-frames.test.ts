/** Tunnel frames, their topics and who may use them: the pure parts of docs/protocol.md "Remote access: tunnels". */
import { describe, expect, it } from 'vitest';
import { mayPublish, maySubscribe } from '../src/auth/acl.js';
import type { Principal } from '../src/auth/roles.js';
import { Topics } from '../src/protocol/topics.js';
import {
  FrameError,
  FrameSequence,
  FrameWriter,
  MAX_DATA_BYTES,
  ReceiveWindow,
  SendWindow,
  decodeFrame,
  encodeControl,
  encodeData,
} from '../src/protocol/tunnel.js';

const topics = new Topics('rhizosphere');
const device: Principal = { kind: 'device', id: 'pi-01' };
const viewer: Principal = { kind: 'token', name: 'dash', role: 'viewer' };
const operator: Principal = { kind: 'user', name: 'olga', role: 'operator' };
const anonymous: Principal = { kind: 'anonymous', role: 'operator' };

describe('frames', () => {
  it('round-trip DATA and CONTROL with their sequence numbers', () => {
    const data = decodeFrame(encodeData(7, new Uint8Array([1, 2, 255])));
    expect(data).toEqual({ type: 'data', seq: 7, data: new Uint8Array([1, 2, 255]) });
    const control = decodeFrame(encodeControl(0xfffffffe, { t: 'resize', cols: 120, rows: 40 }));
    expect(control).toEqual({ type: 'control', seq: 0xfffffffe, control: { t: 'resize', cols: 120, rows: 40 } });
  });
  it('lay out the header as documented', () => {
    const bytes = encodeData(258, new Uint8Array([9]));
    expect([...bytes]).toEqual([0, 0, 0, 1, 2, 9]);
    expect(encodeControl(0, { t: 'eof' })[0]).toBe(1);
  });
  it('refuse what is not a frame, with a code', () => {
    const refuse = (payload: Uint8Array) => {
      try {
        decodeFrame(payload);
      } catch (error) {
        return [(error as FrameError).code, (error as FrameError).message];
      }
      return null;
    };
    expect(refuse(new Uint8Array([0, 0, 0]))?.[0]).toBe('BAD_REQUEST');
    expect(refuse(new Uint8Array([7, 0, 0, 0, 0]))?.[1]).toMatch(/unknown tunnel frame type 7/);
    expect(refuse(new Uint8Array([1, 0, 0, 0, 0, 0x7b]))?.[1]).toMatch(/not UTF-8 JSON/);
    expect(refuse(new Uint8Array([1, 0, 0, 0, 0, ...new TextEncoder().encode('[1]')]))?.[1]).toMatch(/string "t"/);
    expect(refuse(new Uint8Array([1, 0, 0, 0, 0, 0xff, 0xfe]))?.[0]).toBe('BAD_REQUEST');
    const big = new Uint8Array(5 + MAX_DATA_BYTES + 1);
    expect(refuse(big)?.[0]).toBe('PAYLOAD_TOO_LARGE');
    expect(() => encodeData(0, new Uint8Array(MAX_DATA_BYTES + 1))).toThrow(FrameError);
  });
  it('number the frames of a topic and notice a gap', () => {
    const writer = new FrameWriter();
    const sequence = new FrameSequence();
    expect(sequence.check(decodeFrame(writer.data(new Uint8Array(1))).seq)).toBeNull();
    expect(sequence.check(decodeFrame(writer.control({ t: 'eof' })).seq)).toBeNull();
    writer.data(new Uint8Array(1)); // lost
    expect(sequence.check(decodeFrame(writer.data(new Uint8Array(1))).seq)).toMatch(/frame 3 arrived where 2 was expected/);
  });
});

describe('flow control', () => {
  it('holds a sender at the window until an ack frees it', async () => {
    const send = new SendWindow(100);
    send.consume(100);
    expect(send.available).toBe(0);
    let woken = false;
    const waiting = send.ready().then(() => (woken = true));
    await Promise.resolve();
    expect(woken).toBe(false);
    expect(send.ack(60)).toBe(true);
    await waiting;
    expect(send.available).toBe(60);
    expect(send.ack(500)).toBe(false); // more than was ever sent
  });
  it('acks once half a window is consumed, and knows an overrun', () => {
    const receive = new ReceiveWindow(100);
    expect(receive.consume(49)).toBeNull();
    expect(receive.consume(1)).toEqual({ t: 'ack', bytes: 50 });
    expect(receive.overrun(150)).toBe(false);
    expect(receive.overrun(151)).toBe(true);
  });
});

describe('tunnel topics', () => {
  it('parse on both sides', () => {
    expect(topics.parseDeviceTopic('rhizosphere/devices/pi-01/tunnels/0a1b/in')).toEqual({ id: 'pi-01', kind: 'tunnel', tunnel: '0a1b', direction: 'in' });
    expect(topics.parseDeviceTopic('rhizosphere/devices/pi-01/tunnels/0a1b/sideways')).toBeNull();
    expect(topics.parseClientTopic('rhizosphere/clients/web-1/tunnels/t1/out')).toEqual({ id: 'web-1', kind: 'tunnel', tunnel: 't1', direction: 'out' });
    expect(topics.parseClientTopic('rhizosphere/clients/web-1/tunnels/a/b/in')).toBeNull();
  });
  it('let a device read its own tunnels and write their out topic only', () => {
    expect(maySubscribe(device, 'pi-01', 'rhizosphere/devices/pi-01/tunnels/+/in', topics).ok).toBe(true);
    expect(maySubscribe(device, 'pi-01', 'rhizosphere/devices/pi-02/tunnels/+/in', topics).ok).toBe(false);
    expect(maySubscribe(device, 'pi-01', 'rhizosphere/devices/pi-01/tunnels/#', topics).ok).toBe(false);
    expect(mayPublish(device, 'pi-01', 'rhizosphere/devices/pi-01/tunnels/ab/out', topics).ok).toBe(true);
    expect(mayPublish(device, 'pi-01', 'rhizosphere/devices/pi-01/tunnels/ab/in', topics).ok).toBe(false);
    expect(mayPublish(device, 'pi-01', 'rhizosphere/devices/pi-02/tunnels/ab/out', topics).ok).toBe(false);
  });
  it('let clients write their own in topic (the hub judges the role) and read their own out topic', () => {
    for (const who of [viewer, operator]) {
      expect(mayPublish(who, 'c1', 'rhizosphere/clients/c1/tunnels/t/in', topics).ok).toBe(true);
      expect(mayPublish(who, 'c1', 'rhizosphere/clients/c1/tunnels/t/out', topics).ok).toBe(false);
      expect(mayPublish(who, 'c1', 'rhizosphere/devices/pi-01/tunnels/t/in', topics).ok).toBe(false);
      expect(maySubscribe(who, 'c1', 'rhizosphere/clients/c1/tunnels/+/out', topics).ok).toBe(true);
      expect(maySubscribe(who, 'c1', 'rhizosphere/clients/c2/tunnels/+/out', topics).ok).toBe(false);
      expect(maySubscribe(who, 'c1', 'rhizosphere/devices/+/tunnels/+/out', topics).ok).toBe(false);
    }
  });
  it('keep the hub\'s side of a tunnel closed to anonymous clients', () => {
    expect(mayPublish(anonymous, 'c1', 'rhizosphere/devices/pi-01/tunnels/t/in', topics).ok).toBe(false);
    expect(mayPublish(anonymous, 'c1', 'rhizosphere/clients/c1/tunnels/t/out', topics).ok).toBe(false);
    expect(mayPublish(anonymous, 'c1', 'rhizosphere/clients/c1/tunnels/t/in', topics).ok).toBe(true);
    expect(mayPublish(anonymous, 'pi-01', 'rhizosphere/devices/pi-01/tunnels/t/out', topics).ok).toBe(true);
  });
  it('keep the routes of a cluster\'s Responses to its hubs', () => {
    const topic = topics.nodeResponse('node-a', 'pi-01');
    expect(topic).toBe('rhizosphere/cluster/nodes/node-a/responses/pi-01');
    for (const who of [anonymous, operator, viewer, device]) expect(mayPublish(who, 'pi-01', topic, topics).ok).toBe(false);
    for (const who of [operator, viewer, device]) expect(maySubscribe(who, 'c1', topics.nodeResponses('node-a'), topics).ok).toBe(false);
  });
});
