/**
 * Tunnels through a real hub (docs/protocol.md "Remote access: tunnels"), with access control
 * on: an MQTT.js client plays the console and a second one, with a device's credentials,
 * plays the device's agent (a small scripted peer: answers `opened`, echoes keystrokes,
 * acknowledges uploads, answers `close` with `closed`).
 */
import { createHash, randomBytes } from 'node:crypto';
import type { MqttClient } from 'mqtt';
import { describe, expect, it } from 'vitest';
import type { Hub, HubOptions } from '../src/index.js';
import {
  FrameWriter,
  MAX_DATA_BYTES,
  ReceiveWindow,
  SendWindow,
  decodeFrame,
  encodeData,
  type Control,
  type Frame,
} from '../src/protocol/tunnel.js';
import { connectMqtt, RequestClient, startTestHub, waitFor } from './helpers.js';

const P = 'rhizosphere';

interface Setup {
  hub: Hub;
  operator: string;
  viewer: string;
  deviceToken: string;
}

async function secureHub(options: HubOptions = {}): Promise<Setup> {
  const hub = await startTestHub({ allowAnonymous: false, ...options });
  return {
    hub,
    operator: hub.stores.tokens.add('ops', 'operator'),
    viewer: hub.stores.tokens.add('dash', 'viewer'),
    deviceToken: hub.stores.devices.add('pi-t'),
  };
}

const controlOf = (frame: Frame | undefined): Control | undefined => (frame?.type === 'control' ? frame.control : undefined);
const textOf = (frames: Frame[]) => Buffer.concat(frames.flatMap((f) => (f.type === 'data' ? [Buffer.from(f.data)] : []))).toString();

/** The console's side: frames out on `…/tunnels/{t}/in`, numbered per tunnel; frames in collected per tunnel. */
class TunnelConsole {
  readonly frames = new Map<string, Frame[]>();
  private readonly writers = new Map<string, FrameWriter>();

  constructor(readonly client: MqttClient, readonly clientId: string) {
    client.on('message', (topic, payload) => {
      const match = new RegExp(`^${P}/clients/${clientId}/tunnels/([^/]+)/out$`).exec(topic);
      if (!match) return;
      const list = this.frames.get(match[1]!) ?? [];
      list.push(decodeFrame(payload));
      this.frames.set(match[1]!, list);
    });
  }

  static async connect(hub: Hub, clientId: string, username: string, password: string): Promise<TunnelConsole> {
    const client = await connectMqtt(hub.urls.mqtt, { clientId, username, password });
    await client.subscribeAsync(`${P}/clients/${clientId}/tunnels/+/out`, { qos: 1 });
    return new TunnelConsole(client, clientId);
  }

  private writer(tunnel: string): FrameWriter {
    let writer = this.writers.get(tunnel);
    if (!writer) this.writers.set(tunnel, (writer = new FrameWriter()));
    return writer;
  }

  /** An `open` starts the tunnel's numbering again. */
  async send(tunnel: string, body: Control | Uint8Array | string, topicOwner = this.clientId): Promise<void> {
    if (typeof body === 'object' && 't' in body && body.t === 'open') this.writers.delete(tunnel);
    const writer = this.writer(tunnel);
    const payload = typeof body === 'string' ? writer.data(Buffer.from(body)) : body instanceof Uint8Array ? writer.data(body) : writer.control(body);
    await this.raw(tunnel, payload, topicOwner);
  }

  async raw(tunnel: string, payload: Uint8Array, topicOwner = this.clientId): Promise<void> {
    await this.client.publishAsync(`${P}/clients/${topicOwner}/tunnels/${tunnel}/in`, Buffer.from(payload), { qos: 1 });
  }

  received(tunnel: string): Frame[] {
    return this.frames.get(tunnel) ?? [];
  }

  /** Waits for a CONTROL frame `t` on the tunnel. */
  control(tunnel: string, t: string, timeoutMs = 5000): Promise<Control> {
    return waitFor(() => this.received(tunnel).map(controlOf).find((c) => c?.t === t), { timeoutMs, what: `${t} on ${tunnel}` });
  }

  async error(tunnel: string, timeoutMs = 5000) {
    return (await this.control(tunnel, 'error', timeoutMs)) as Control & { t: 'error' };
  }
}

interface DeviceTunnel {
  id: string;
  open: Control & { t: 'open' };
  frames: Frame[];
  writer: FrameWriter;
  window: ReceiveWindow;
}

/**
 * The device's side, scripted: a stand-in for hypha's tunnel agent. `answer: false` leaves
 * every open unanswered; `tunnels: false` does not subscribe to the tunnel topics at all.
 */
class ScriptedDevice {
  readonly tunnels = new Map<string, DeviceTunnel>();

  constructor(readonly client: MqttClient, readonly id: string, private readonly answer: boolean) {
    client.on('message', (topic, payload) => {
      if (topic === `${P}/devices/${id}/command`) {
        const command = JSON.parse(payload.toString()) as { id: string; cmd_str: string };
        client.publish(`${P}/devices/${id}/response`, JSON.stringify({ type: 'response', id: command.id, result: command.cmd_str, error: '', exit_code: 0, duration_ms: 1, truncated: false }), { qos: 1 });
        return;
      }
      const match = new RegExp(`^${P}/devices/${id}/tunnels/([0-9a-f]+)/in$`).exec(topic);
      if (match) this.onFrame(match[1]!, decodeFrame(payload));
    });
  }

  static async connect(hub: Hub, id: string, token: string, { tunnels = true, answer = true } = {}): Promise<ScriptedDevice> {
    const client = await connectMqtt(hub.urls.mqtt, { clientId: id, username: id, password: token });
    await client.subscribeAsync(`${P}/devices/${id}/command`, { qos: 1 });
    if (tunnels) await client.subscribeAsync(`${P}/devices/${id}/tunnels/+/in`, { qos: 1 });
    await waitFor(() => hub.device(id)?.online, { what: `${id} online` });
    return new ScriptedDevice(client, id, answer);
  }

  send(tunnel: DeviceTunnel, body: Control | Uint8Array): void {
    const payload = body instanceof Uint8Array ? tunnel.writer.data(body) : tunnel.writer.control(body);
    this.client.publish(`${P}/devices/${this.id}/tunnels/${tunnel.id}/out`, Buffer.from(payload), { qos: 1 });
  }

  /** The only tunnel, or the one whose open matches. */
  tunnel(match: (t: DeviceTunnel) => boolean = () => true): Promise<DeviceTunnel> {
    return waitFor(() => [...this.tunnels.values()].find(match), { what: 'a tunnel on the device' });
  }

  control(tunnel: DeviceTunnel, t: string): Promise<Control> {
    return waitFor(() => tunnel.frames.map(controlOf).find((c) => c?.t === t), { what: `${t} on the device` });
  }

  private onFrame(id: string, frame: Frame): void {
    const control = controlOf(frame);
    if (control?.t === 'open') {
      const tunnel: DeviceTunnel = { id, open: control, frames: [frame], writer: new FrameWriter(), window: new ReceiveWindow(control.window) };
      this.tunnels.set(id, tunnel);
      if (!this.answer) return;
      if (control.kind === 'file_get') this.send(tunnel, { t: 'opened', size: 5, mode: 0o644 });
      else this.send(tunnel, { t: 'opened' });
      return;
    }
    const tunnel = this.tunnels.get(id);
    if (!tunnel) return;
    tunnel.frames.push(frame);
    if (frame.type === 'data') {
      // A shell echoes; an upload is consumed and acknowledged.
      if (tunnel.open.kind === 'shell') this.send(tunnel, frame.data);
      const ack = tunnel.window.consume(frame.data.byteLength);
      if (ack) this.send(tunnel, ack);
    } else if (frame.control.t === 'eof' && tunnel.open.kind === 'file_put') {
      const bytes = Buffer.concat(tunnel.frames.flatMap((f) => (f.type === 'data' ? [Buffer.from(f.data)] : [])));
      this.send(tunnel, { t: 'done', size: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') });
      this.send(tunnel, { t: 'closed' });
    } else if (frame.control.t === 'close') {
      this.send(tunnel, { t: 'closed', reason: 'asked' });
    }
  }
}

async function api(hub: Hub, path: string, token: string) {
  const res = await fetch(`${hub.urls.http}${path}`, { headers: { authorization: `Bearer ${token}` } });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // a recording is JSON lines, not one document
  }
  return { status: res.status, type: res.headers.get('content-type'), text, body };
}

const shellOpen = { t: 'open', device: 'pi-t', kind: 'shell', cols: 100, rows: 30 } as const;

describe('a shell tunnel', () => {
  it('opens, relays both ways with its own numbering, records the session and closes', async () => {
    const { hub, operator, viewer, deviceToken } = await secureHub();
    const device = await ScriptedDevice.connect(hub, 'pi-t', deviceToken);
    const ops = await TunnelConsole.connect(hub, 'ops-1', 'ops', operator);

    await ops.send('term-1', shellOpen);
    const tunnel = await device.tunnel();
    expect(tunnel.id).toMatch(/^[0-9a-f]{16}$/);
    expect(tunnel.frames[0]!.seq).toBe(0);
    expect(tunnel.open).toEqual({ t: 'open', kind: 'shell', cols: 100, rows: 30, term: 'xterm-256color', actor: 'ops' });
    await ops.control('term-1', 'opened');

    await ops.send('term-1', 'ls\r');
    await waitFor(() => textOf(ops.received('term-1')) === 'ls\r', { what: 'the echo' });
    // Output with a UTF-8 sequence split across two frames.
    const hello = Buffer.from('héllo\r\n');
    device.send(tunnel, hello.subarray(0, 2));
    device.send(tunnel, hello.subarray(2));
    await ops.send('term-1', { t: 'resize', cols: 120, rows: 40 });
    await device.control(tunnel, 'resize');
    device.send(tunnel, { t: 'exit', code: 0, signal: null });
    await ops.send('term-1', { t: 'close' });
    await ops.control('term-1', 'closed');
    expect(await ops.control('term-1', 'exit')).toEqual({ t: 'exit', code: 0, signal: null });

    // Renumbered: the client sees 0, 1, 2, … on its topic whatever the device wrote.
    expect(ops.received('term-1').map((f) => f.seq)).toEqual(ops.received('term-1').map((_f, i) => i));
    expect(tunnel.frames.map((f) => f.seq)).toEqual(tunnel.frames.map((_f, i) => i));
    expect(tunnel.frames.map((f) => (f.type === 'data' ? 'DATA' : f.control.t))).toEqual(['open', 'DATA', 'resize', 'close']);

    // The audit trail and the recording.
    const entries = await waitFor(() => {
      const found = hub.stores.audit.query({ device: 'pi-t' }).filter((e) => e.action.startsWith('tunnel.'));
      return found.length === 2 ? found : null;
    });
    expect(entries.map((e) => e.action)).toEqual(['tunnel.close', 'tunnel.open']);
    expect(entries[0]).toMatchObject({ actor: 'ops', actorKind: 'token', outcome: 'ok', detail: { tunnel: tunnel.id, kind: 'shell', bytesIn: 3, bytesOut: 3 + hello.length, outcome: 'ok', recording: tunnel.id } });
    expect(entries[0]!.remote).toMatch(/127\.0\.0\.1/);

    const list = await api(hub, '/api/recordings?device=pi-t', operator);
    expect(list.status).toBe(200);
    expect(list.body).toEqual([{ tunnel: tunnel.id, device: 'pi-t', actor: 'ops', startedAt: expect.any(String), endedAt: expect.any(String), bytes: expect.any(Number) }]);
    expect((await api(hub, '/api/recordings?device=other', operator)).body).toEqual([]);

    const cast = await api(hub, `/api/recordings/${tunnel.id}`, operator);
    expect(cast.status).toBe(200);
    expect(cast.type).toBe('application/x-asciicast');
    const [header, ...events] = cast.text.trim().split('\n').map((line) => JSON.parse(line) as unknown);
    expect(header).toMatchObject({ version: 2, width: 100, height: 30, env: { TERM: 'xterm-256color' }, title: 'pi-t by ops' });
    expect(typeof (header as { timestamp: unknown }).timestamp).toBe('number');
    const typed = events as [number, string, string][];
    expect(typed.every(([at, code, text]) => typeof at === 'number' && ['o', 'i', 'r'].includes(code) && typeof text === 'string')).toBe(true);
    expect(typed.filter(([, code]) => code === 'i').map(([, , text]) => text).join('')).toBe('ls\r');
    expect(typed.filter(([, code]) => code === 'o').map(([, , text]) => text).join('')).toBe('ls\rhéllo\r\n');
    expect(typed.filter(([, code]) => code === 'r')).toEqual([[expect.any(Number), 'r', '120x40']]);
    expect((list.body as { bytes: number }[])[0]!.bytes).toBe(Buffer.byteLength(cast.text));

    expect(await api(hub, `/api/recordings/${tunnel.id}`, viewer)).toMatchObject({ status: 403, body: { code: 'FORBIDDEN' } });
    expect(await api(hub, '/api/recordings', viewer)).toMatchObject({ status: 403, body: { code: 'FORBIDDEN' } });
    expect(await api(hub, '/api/recordings/..%2F..%2Fhub.db', operator)).toMatchObject({ status: 400, body: { code: 'BAD_REQUEST' } });
    expect(await api(hub, '/api/recordings/0123456789abcdef', operator)).toMatchObject({ status: 404, body: { code: 'NOT_FOUND' } });

    // The hub keeps serving commands.
    const requests = await RequestClient.connect(hub.urls.mqtt, 'ops-2', P, { username: 'ops', password: operator });
    expect(await requests.request({ device: 'pi-t', order: 'exec_bash', cmd_str: 'still here' })).toMatchObject({ status: 'ok', result: 'still here' });
  });

  it('ends an idle shell with TIMEOUT, and a device that never answers the open too', async () => {
    const { hub, operator, deviceToken } = await secureHub({ tunnelIdleMs: 300, tunnelOpenTimeoutMs: 300 });
    const device = await ScriptedDevice.connect(hub, 'pi-t', deviceToken);
    const ops = await TunnelConsole.connect(hub, 'ops-1', 'ops', operator);
    await ops.send('idle', shellOpen);
    const tunnel = await device.tunnel();
    await ops.control('idle', 'opened');
    const started = Date.now();
    expect(await ops.error('idle')).toMatchObject({ code: 'TIMEOUT' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    await device.control(tunnel, 'close');

    const mute = await secureHub({ tunnelOpenTimeoutMs: 300 });
    const silent = await ScriptedDevice.connect(mute.hub, 'pi-t', mute.deviceToken, { answer: false });
    const waiting = await TunnelConsole.connect(mute.hub, 'ops-1', 'ops', mute.operator);
    await waiting.send('never', shellOpen);
    const unanswered = await silent.tunnel();
    expect(await waiting.error('never')).toMatchObject({ code: 'TIMEOUT', message: expect.stringContaining('did not answer') });
    await silent.control(unanswered, 'close');
    await waitFor(() => mute.hub.stores.audit.query({ action: 'tunnel.refused' }).find((e) => e.outcome === 'TIMEOUT'), { what: 'the refusal audited' });
  });
});

describe('refusals', () => {
  it('answers every bad frame with a coded error on the sender\'s own topic and keeps the connection', async () => {
    const { hub, operator, viewer, deviceToken } = await secureHub({ maxFileBytes: 1000 });
    hub.stores.devices.add('pi-never');
    const device = await ScriptedDevice.connect(hub, 'pi-t', deviceToken);
    const ops = await TunnelConsole.connect(hub, 'ops-1', 'ops', operator);
    const dash = await TunnelConsole.connect(hub, 'dash-1', 'dash', viewer);

    await dash.send('v', shellOpen);
    expect(await dash.error('v')).toMatchObject({ code: 'FORBIDDEN', message: expect.stringContaining('dash may not open tunnels') });
    await dash.send('v', 'data too');
    await waitFor(() => dash.received('v').length === 2);
    expect(dash.client.connected).toBe(true);

    // Another client's topic: answered on the publisher's own, never acted on.
    await dash.send('x', shellOpen, 'ops-1');
    expect(await dash.error('x')).toMatchObject({ code: 'FORBIDDEN', message: expect.stringContaining(`${P}/clients/dash-1/tunnels/x/in`) });
    expect(ops.received('x')).toEqual([]);

    // Agent upgrades carry the hub's own build: no client may open one, operator or not.
    await ops.send('up', { t: 'open', device: 'pi-t', kind: 'agent_upgrade', size: 10, sha256: 'a'.repeat(64), version: '9.9.9' });
    expect(await ops.error('up')).toMatchObject({ code: 'FORBIDDEN', message: expect.stringContaining('opened by the hub only') });

    const cases: [string, Control | Uint8Array | string, string, RegExp][] = [
      ['nope', 'stray bytes', 'UNKNOWN_TUNNEL', /nope is not open/],
      ['bad-cols', { ...shellOpen, cols: 0 }, 'BAD_REQUEST', /^cols /],
      ['bad-kind', { t: 'open', device: 'pi-t', kind: 'vnc' } as unknown as Control, 'BAD_REQUEST', /^kind must be one of/],
      ['no-path', { t: 'open', device: 'pi-t', kind: 'file_put', size: 1, sha256: 'a'.repeat(64) } as Control, 'BAD_REQUEST', /^path is required/],
      ['rel-path', { t: 'open', device: 'pi-t', kind: 'file_get', path: 'etc/x' } as Control, 'BAD_REQUEST', /^path must be an absolute path/],
      ['bad-port', { t: 'open', device: 'pi-t', kind: 'tcp', port: 70000 } as Control, 'BAD_REQUEST', /^port /],
      ['extra', { ...shellOpen, path: '/tmp' } as Control, 'BAD_REQUEST', /^path is not a field of a shell open/],
      ['who', { ...shellOpen, device: 'ghost' }, 'UNKNOWN_DEVICE', /ghost/],
      ['off', { ...shellOpen, device: 'pi-never' }, 'DEVICE_OFFLINE', /pi-never/],
      ['big', { t: 'open', device: 'pi-t', kind: 'file_put', path: '/tmp/f', size: 1001, sha256: 'a'.repeat(64) } as Control, 'PAYLOAD_TOO_LARGE', /limit 1000/],
      ['a'.repeat(65), shellOpen, 'BAD_REQUEST', /tunnel id must be at most 64/],
    ];
    for (const [tunnel, body, code, message] of cases) {
      await ops.send(tunnel, body);
      expect(await ops.error(tunnel), tunnel).toMatchObject({ code, message: expect.stringMatching(message) });
    }
    // Not a frame at all.
    await ops.raw('short', new Uint8Array([1, 0]));
    expect(await ops.error('short')).toMatchObject({ code: 'BAD_REQUEST' });
    expect(device.tunnels.size).toBe(0);
    expect(ops.client.connected).toBe(true);
    const refused = hub.stores.audit.query({ action: 'tunnel.refused' });
    expect(refused.map((e) => e.outcome)).toEqual(expect.arrayContaining(['FORBIDDEN', 'BAD_REQUEST', 'UNKNOWN_DEVICE', 'DEVICE_OFFLINE', 'PAYLOAD_TOO_LARGE']));
  });

  it('refuses a device without the tunnel subscription (UNSUPPORTED) and past the per-device limit (BUSY)', async () => {
    const { hub, operator, deviceToken } = await secureHub({ maxTunnelsPerDevice: 2 });
    const oldAgent = hub.stores.devices.add('pi-old');
    await ScriptedDevice.connect(hub, 'pi-old', oldAgent, { tunnels: false });
    const device = await ScriptedDevice.connect(hub, 'pi-t', deviceToken);
    const ops = await TunnelConsole.connect(hub, 'ops-1', 'ops', operator);

    await ops.send('old', { ...shellOpen, device: 'pi-old' });
    expect(await ops.error('old')).toMatchObject({ code: 'UNSUPPORTED' });

    await ops.send('one', shellOpen);
    await ops.send('two', shellOpen);
    await ops.control('two', 'opened');
    await ops.send('three', shellOpen);
    expect(await ops.error('three')).toMatchObject({ code: 'BUSY', message: expect.stringContaining('limit 2') });
    // One ends: room for another.
    await ops.send('one', { t: 'close' });
    await ops.control('one', 'closed');
    await ops.send('three', shellOpen);
    await ops.control('three', 'opened');
    expect(device.tunnels.size).toBe(3);
  });

  it('ends a tunnel on a DATA frame over 64 KiB, a gap in the numbering, or an upload past its size', async () => {
    const { hub, operator, deviceToken } = await secureHub();
    const device = await ScriptedDevice.connect(hub, 'pi-t', deviceToken);
    const ops = await TunnelConsole.connect(hub, 'ops-1', 'ops', operator);

    await ops.send('big', shellOpen);
    await ops.control('big', 'opened');
    const oversized = new Uint8Array(5 + MAX_DATA_BYTES + 1);
    oversized.set([0, 0, 0, 0, 1]);
    await ops.raw('big', oversized);
    expect(await ops.error('big')).toMatchObject({ code: 'PAYLOAD_TOO_LARGE' });
    const first = await device.tunnel((t) => t.frames.length > 0);
    expect(await device.control(first, 'error')).toMatchObject({ code: 'PAYLOAD_TOO_LARGE' });
    // The tunnel is gone: later frames are for no tunnel.
    await ops.raw('big', encodeData(2, Buffer.from('late')));
    await waitFor(() => ops.received('big').filter((f) => controlOf(f)?.t === 'error').length === 2);
    expect(controlOf(ops.received('big').at(-1))).toMatchObject({ code: 'UNKNOWN_TUNNEL' });

    await ops.send('gap', shellOpen);
    await ops.control('gap', 'opened');
    await ops.raw('gap', encodeData(5, Buffer.from('x')));
    expect(await ops.error('gap')).toMatchObject({ code: 'BAD_REQUEST', message: expect.stringContaining('frame 5 arrived where 1 was expected') });

    const sha = createHash('sha256').update('abc').digest('hex');
    await ops.send('put', { t: 'open', device: 'pi-t', kind: 'file_put', path: '/tmp/x', size: 3, sha256: sha });
    await ops.control('put', 'opened');
    await ops.send('put', 'abcd');
    expect(await ops.error('put')).toMatchObject({ code: 'PAYLOAD_TOO_LARGE', message: expect.stringContaining('3 bytes') });
    expect(ops.client.connected).toBe(true);
  });
});

describe('files', () => {
  it('relays a file_put with flow control and audits its size and SHA-256', async () => {
    const { hub, operator, deviceToken } = await secureHub();
    const device = await ScriptedDevice.connect(hub, 'pi-t', deviceToken);
    const ops = await TunnelConsole.connect(hub, 'ops-1', 'ops', operator);
    const file = randomBytes(10 * 1024 * 1024);
    const sha256 = createHash('sha256').update(file).digest('hex');

    await ops.send('put', { t: 'open', device: 'pi-t', kind: 'file_put', path: '/srv/blob', size: file.length, sha256 });
    await ops.control('put', 'opened');
    const window = new SendWindow();
    let acked = 0;
    const onAck = () => {
      for (const frame of ops.received('put').slice(acked)) {
        const control = controlOf(frame);
        if (control?.t === 'ack') window.ack(control.bytes);
      }
      acked = ops.received('put').length;
    };
    ops.client.on('message', onAck);
    for (let offset = 0; offset < file.length; offset += MAX_DATA_BYTES) {
      const chunk = file.subarray(offset, offset + MAX_DATA_BYTES);
      while (window.available < chunk.length) await window.ready();
      window.consume(chunk.length);
      await ops.send('put', chunk);
    }
    await ops.send('put', { t: 'eof' });
    expect(await ops.control('put', 'done', 30_000)).toEqual({ t: 'done', size: file.length, sha256 });
    await ops.control('put', 'closed');
    ops.client.off('message', onAck);

    const close = await waitFor(() => hub.stores.audit.query({ action: 'tunnel.close' })[0]);
    expect(close).toMatchObject({ outcome: 'ok', detail: { kind: 'file_put', path: '/srv/blob', size: file.length, sha256, bytesIn: file.length, bytesOut: 0, recording: null } });
    // 160 DATA frames and more reached the device in order, numbered by the hub.
    const tunnel = await device.tunnel();
    expect(tunnel.frames.map((f) => f.seq)).toEqual(tunnel.frames.map((_f, i) => i));
    expect(device.tunnels.size).toBe(1);
  });

  it('refuses a file_get whose file is over --max-file-bytes', async () => {
    const { hub, operator, deviceToken } = await secureHub({ maxFileBytes: 4 });
    const device = await ScriptedDevice.connect(hub, 'pi-t', deviceToken);
    const ops = await TunnelConsole.connect(hub, 'ops-1', 'ops', operator);
    await ops.send('get', { t: 'open', device: 'pi-t', kind: 'file_get', path: '/etc/hostname' });
    expect(await ops.error('get')).toMatchObject({ code: 'PAYLOAD_TOO_LARGE', message: expect.stringContaining('5 bytes (limit 4)') });
    expect(await device.control(await device.tunnel(), 'error')).toMatchObject({ code: 'PAYLOAD_TOO_LARGE' });
  });
});

describe('connections that end', () => {
  it('closes the tunnels of a client that disconnects, and ends those of a device that drops with DEVICE_OFFLINE', async () => {
    const { hub, operator, deviceToken } = await secureHub();
    const device = await ScriptedDevice.connect(hub, 'pi-t', deviceToken);
    const leaving = await TunnelConsole.connect(hub, 'ops-1', 'ops', operator);
    await leaving.send('t', shellOpen);
    await leaving.control('t', 'opened');
    const tunnel = await device.tunnel();
    await leaving.client.endAsync(true);
    await device.control(tunnel, 'close');
    await waitFor(() => hub.stores.audit.query({ action: 'tunnel.close' }).find((e) => e.outcome === 'disconnected'), { what: 'the close audited' });

    const staying = await TunnelConsole.connect(hub, 'ops-2', 'ops', operator);
    await staying.send('t', shellOpen);
    await staying.control('t', 'opened');
    await device.client.endAsync(true);
    expect(await staying.error('t')).toMatchObject({ code: 'DEVICE_OFFLINE' });
    expect(staying.client.connected).toBe(true);
  });
});
