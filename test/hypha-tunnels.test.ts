/**
 * hypha's side of tunnels, against a bare Aedes broker: an MQTT.js client plays the hub,
 * publishing frames on `P/devices/{id}/tunnels/{tunnel}/in` with the shared codec and reading
 * the agent's answers on `…/out` (docs/protocol.md "Remote access: tunnels").
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer as createHttpServer } from 'node:http';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { Aedes, type AedesOptions } from 'aedes';
import type { MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type Agent, type AgentOptions } from '../src/hypha/agent.js';
import type { Response } from '../src/protocol/schemas.js';
import {
  DEFAULT_WINDOW_BYTES,
  FrameSequence,
  FrameWriter,
  MAX_DATA_BYTES,
  SendWindow,
  decodeFrame,
  encodeData,
  type Control,
} from '../src/protocol/tunnel.js';
import { spawnSync } from 'node:child_process';
import { cleanup, connectMqtt, freePort, HYPHA_BIN, isGone, spawnHypha, tempDir, waitFor } from './helpers.js';

const P = 'rhizosphere';

/**
 * Shells start in the agent user's home and read its login files. Tests end many shells while
 * they start, which would interrupt whatever those files run (tool shims taking a lock, say):
 * give this file's agents a home of their own with a plain login file.
 */
const realHome = process.env.HOME;
const realShell = process.env.SHELL;
beforeAll(() => {
  const home = mkdtempSync(join(tmpdir(), 'rhizo-home-'));
  writeFileSync(join(home, '.bash_profile'), 'PS1="$ "\n');
  process.env.HOME = home;
  process.env.SHELL = '/bin/bash';
});
afterAll(() => {
  const home = process.env.HOME!;
  process.env.HOME = realHome;
  process.env.SHELL = realShell;
  rmSync(home, { recursive: true, force: true });
});

async function bareBroker(options: Partial<AedesOptions> = {}) {
  const broker = await Aedes.createBroker(options);
  const server = createServer((socket) => broker.handle(socket));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanup(() => new Promise<void>((r) => broker.close(() => server.close(() => r()))));
  return { broker, url: `mqtt://127.0.0.1:${(server.address() as { port: number }).port}` };
}

/** One tunnel as the hub sees it: what the device sent, and ways to send it frames. */
class PeerTunnel {
  readonly controls: Control[] = [];
  readonly errors: string[] = [];
  output = Buffer.alloc(0);
  /** DATA bytes received and not yet acknowledged, at its highest: must stay within the window granted. */
  maxOutstanding = 0;
  private readonly writer = new FrameWriter();
  private readonly sequence = new FrameSequence();
  private readonly sendWindow = new SendWindow();
  private received = 0;
  private acked = 0;
  /** Acks: 'auto' as the protocol asks, 'manual' leaves them to the test. */
  ackMode: 'auto' | 'manual' = 'auto';
  ackDelayMs = 0;

  constructor(
    private readonly peer: TunnelPeer,
    readonly id: string,
    readonly window = DEFAULT_WINDOW_BYTES,
  ) {}

  get text(): string {
    return this.output.toString('utf8');
  }

  receive(payload: Buffer): void {
    const frame = decodeFrame(payload);
    const gap = this.sequence.check(frame.seq);
    if (gap) this.errors.push(gap);
    if (frame.type === 'data') {
      this.output = Buffer.concat([this.output, frame.data]);
      this.received += frame.data.byteLength;
      this.maxOutstanding = Math.max(this.maxOutstanding, this.received - this.acked);
      if (this.ackMode === 'auto' && this.received - this.acked >= this.window / 2) this.ack(this.received);
      return;
    }
    const control = frame.control;
    if (control.t === 'ack') this.sendWindow.ack(control.bytes);
    this.controls.push(control);
  }

  /** Acknowledges `total` bytes (after ackDelayMs). */
  ack(total: number): void {
    const send = () => {
      if (total <= this.acked) return;
      this.acked = total;
      this.control({ t: 'ack', bytes: total });
    };
    if (this.ackDelayMs > 0) setTimeout(send, this.ackDelayMs);
    else send();
  }

  control(control: Control | Record<string, unknown>): void {
    this.raw(Buffer.from(this.writer.control(control as Control)));
  }

  /** DATA without regard to the device's window. */
  data(bytes: Buffer | string): void {
    this.raw(Buffer.from(this.writer.data(Buffer.from(bytes))));
  }

  raw(payload: Buffer): void {
    this.peer.client.publish(`${P}/devices/${this.peer.deviceId}/tunnels/${this.id}/in`, payload, { qos: 1 });
  }

  /** Keystrokes. */
  type(text: string): void {
    this.data(text);
  }

  /** Sends a whole upload within the device's window, as a hub must. */
  async stream(bytes: Buffer, chunk = MAX_DATA_BYTES): Promise<void> {
    for (let offset = 0; offset < bytes.byteLength; offset += chunk) {
      const part = bytes.subarray(offset, offset + chunk);
      while (this.sendWindow.available < part.byteLength) await this.sendWindow.ready();
      this.sendWindow.consume(part.byteLength);
      this.data(part);
    }
  }

  async next<T extends Control['t']>(t: T, timeoutMs = 10_000): Promise<Extract<Control, { t: T }>> {
    return (await waitFor(() => this.controls.find((c) => c.t === t), { timeoutMs, what: `${t} on tunnel ${this.id} (got ${JSON.stringify(this.controls)})` })) as Extract<Control, { t: T }>;
  }

  /** The tunnel's last frame: `closed` or `error`. */
  async end(timeoutMs = 10_000): Promise<Control> {
    return waitFor(() => this.controls.find((c) => c.t === 'closed' || c.t === 'error'), { timeoutMs, what: `the end of tunnel ${this.id} (got ${JSON.stringify(this.controls)})` });
  }

  async error(timeoutMs = 10_000): Promise<{ code: string; message: string }> {
    const end = await this.end(timeoutMs);
    expect(end, JSON.stringify(this.controls)).toMatchObject({ t: 'error' });
    return end as { code: string; message: string };
  }

  async waitForOutput(pattern: RegExp, timeoutMs = 10_000): Promise<void> {
    await waitFor(() => pattern.test(this.text), { timeoutMs, what: `${pattern} in the output of ${this.id} (got ${JSON.stringify(this.text.slice(-300))})` });
  }
}

/** Plays the hub: one MQTT client that opens tunnels to one device. */
class TunnelPeer {
  private readonly tunnels = new Map<string, PeerTunnel>();
  private counter = 0;

  private constructor(
    readonly client: MqttClient,
    readonly deviceId: string,
  ) {
    client.on('message', (topic, payload) => {
      const [, , , kind, tunnel, direction] = topic.split('/');
      if (kind === 'tunnels' && direction === 'out') this.tunnel(tunnel!).receive(payload);
    });
  }

  static async connect(url: string, deviceId: string): Promise<TunnelPeer> {
    const client = await connectMqtt(url, { clientId: `hub-${deviceId}` });
    await client.subscribeAsync(`${P}/devices/${deviceId}/tunnels/+/out`, { qos: 1 });
    return new TunnelPeer(client, deviceId);
  }

  /** The tunnel with this id, as far as frames from the device go. */
  tunnel(id: string, window?: number): PeerTunnel {
    let tunnel = this.tunnels.get(id);
    if (!tunnel) this.tunnels.set(id, (tunnel = new PeerTunnel(this, id, window)));
    return tunnel;
  }

  /** A new tunnel id (16 hex digits, as the hub makes them) and its `open`. */
  open(fields: Record<string, unknown>): PeerTunnel {
    const id = (++this.counter).toString(16).padStart(16, '0');
    const tunnel = this.tunnel(id, typeof fields.window === 'number' ? fields.window : undefined);
    tunnel.control({ t: 'open', ...fields });
    return tunnel;
  }
}

/** The filters a client has subscribed to, as the broker sees them. */
/** The agent's command and tunnel subscriptions (its presence and desired-state subscriptions, made on every connect, left out). */
function subscriptionsOf(broker: Aedes, clientId: string): string[] {
  const clients = (broker as unknown as { clients: Record<string, { subscriptions: Record<string, unknown> } | undefined> }).clients;
  return Object.keys(clients[clientId]?.subscriptions ?? {}).filter((topic) => !topic.endsWith('/presence') && !topic.endsWith('/state/delta'));
}

interface Setup {
  agent: Agent;
  peer: TunnelPeer;
  url: string;
  broker: Aedes;
  /** Runs a command through the agent's command topic and returns its Response. */
  command: (cmd: string) => Promise<Response>;
}

async function setup(id: string, options: Partial<AgentOptions> = {}, brokerOptions: Partial<AedesOptions> = {}): Promise<Setup> {
  const { broker, url } = await bareBroker(brokerOptions);
  const peer = await TunnelPeer.connect(url, id);
  const agent = await startAgent({ url, id, logLevel: (process.env.TEST_HYPHA_LOG as 'debug') ?? 'error', ...options });
  cleanup(() => agent.stop());
  await agent.firstConnect;
  // The agent subscribes right after CONNACK; frames published before that would be lost.
  const tunnelsExpected = options.tunnels !== false && brokerOptions.authorizeSubscribe === undefined;
  await waitFor(() => {
    const subs = subscriptionsOf(broker, id);
    return subs.includes(`${P}/devices/${id}/command`) && (!tunnelsExpected || subs.includes(`${P}/devices/${id}/tunnels/+/in`));
  }, { what: 'the agent subscriptions' });
  let sequence = 0;
  const responses: Response[] = [];
  peer.client.on('message', (topic, payload) => {
    if (topic === `${P}/devices/${id}/response`) responses.push(JSON.parse(payload.toString()) as Response);
  });
  await peer.client.subscribeAsync(`${P}/devices/${id}/response`, { qos: 1 });
  const command = async (cmd: string) => {
    const cmdId = `c-${++sequence}`;
    await peer.client.publishAsync(`${P}/devices/${id}/command`, JSON.stringify({ type: 'command', id: cmdId, order: 'exec_bash', cmd_str: cmd, timeout_ms: 5000 }), { qos: 1 });
    return waitFor(() => responses.find((r) => r.id === cmdId), { what: `the response to ${cmdId}` });
  };
  return { agent, peer, url, broker, command };
}

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');
const partFiles = (dir: string) => readdirSync(dir).filter((name) => name.endsWith('.part'));

describe('shell tunnels', () => {
  it('runs a login shell: output, resize, Ctrl-C, and exit with its code', async () => {
    const { peer } = await setup('pi-shell');
    const shell = peer.open({ kind: 'shell', cols: 100, rows: 30 });
    expect(await shell.next('opened')).toEqual({ t: 'opened' });

    shell.type('echo $((6*7)) "$PWD" "$TERM" $(tput lines)\r');
    await shell.waitForOutput(/\b42 \S+ xterm-256color 30\b/);
    expect(shell.text).toContain(`42 ${process.env.HOME} xterm-256color 30`);

    shell.control({ t: 'resize', cols: 123, rows: 40 });
    shell.type('echo cols=$(tput cols)\r');
    await shell.waitForOutput(/cols=123/);

    shell.type('sleep 100\r');
    await new Promise((r) => setTimeout(r, 300));
    shell.type('\x03');
    shell.type('echo after-$((1+1))\r');
    await shell.waitForOutput(/after-2/, 5000);

    shell.type('exit 3\r');
    expect(await shell.next('exit')).toEqual({ t: 'exit', code: 3, signal: null });
    expect(await shell.end()).toMatchObject({ t: 'closed' });
    const kinds = shell.controls.map((c) => c.t);
    expect(kinds.indexOf('exit')).toBe(kinds.length - 2);
    expect(shell.errors).toEqual([]);
  });

  it('keeps two shells apart', async () => {
    const { peer } = await setup('pi-two');
    const [a, b] = [peer.open({ kind: 'shell' }), peer.open({ kind: 'shell' })];
    await Promise.all([a.next('opened'), b.next('opened')]);
    a.type('echo one-$((0+1))\r');
    b.type('echo two-$((1+1))\r');
    await Promise.all([a.waitForOutput(/one-1/), b.waitForOutput(/two-2/)]);
    expect(a.text).not.toMatch(/two-2/);
    expect(b.text).not.toMatch(/one-1/);
    a.control({ t: 'close' });
    expect(await a.end()).toMatchObject({ t: 'closed' });
    b.type('echo still-$((2+1))\r');
    await b.waitForOutput(/still-3/);
  });

  it('never sends more output than the window, and all of it arrives', async () => {
    const { peer } = await setup('pi-flow');
    const window = 65_536;
    const shell = peer.open({ kind: 'shell', window });
    await shell.next('opened');
    shell.ackDelayMs = 10;
    // 3,000,000 zero bytes in base64: 4,000,000 characters (+ line breaks), then a marker.
    shell.type('head -c 3000000 /dev/zero | base64 -w 0; echo; echo END-$((40+2))\r');
    await shell.waitForOutput(/END-42/, 60_000);
    expect(shell.maxOutstanding).toBeLessThanOrEqual(window);
    expect((shell.text.match(/A/g) ?? []).length).toBeGreaterThanOrEqual(4_000_000);
    expect(shell.errors).toEqual([]);
  }, 90_000);

  it('says UNSUPPORTED when node-pty cannot be loaded', async () => {
    const { peer, command } = await setup('pi-nopty', { loadPty: () => Promise.reject(new Error('Cannot find module node-pty')) });
    const shell = peer.open({ kind: 'shell' });
    expect(await shell.error()).toEqual({ t: 'error', code: 'UNSUPPORTED', message: 'shell tunnels need node-pty on the device' });
    expect(await command('echo ok')).toMatchObject({ result: 'ok' });
  });
});

describe('file tunnels', () => {
  it('puts and gets a 10 MiB file with matching SHA-256; the target appears only at the end', async () => {
    const dir = tempDir();
    const { peer } = await setup('pi-files', { fileRoot: dir });
    const content = randomBytes(10 * 1024 * 1024);
    const target = join(dir, 'blob.bin');
    const started = performance.now();

    const put = peer.open({ kind: 'file_put', path: target, size: content.byteLength, sha256: sha256(content), mode: 0o600 });
    await put.next('opened');
    await put.stream(content.subarray(0, content.byteLength - 1));
    await waitFor(() => partFiles(dir).length === 1, { what: 'the temporary file' });
    expect(existsSync(target)).toBe(false);
    await put.stream(content.subarray(content.byteLength - 1));
    put.control({ t: 'eof' });
    expect(await put.next('done')).toEqual({ t: 'done', size: content.byteLength, sha256: sha256(content) });
    expect(await put.end()).toMatchObject({ t: 'closed' });
    const putMs = performance.now() - started;
    expect(sha256(readFileSync(target))).toBe(sha256(content));
    expect(partFiles(dir)).toEqual([]);

    const getStarted = performance.now();
    const get = peer.open({ kind: 'file_get', path: target });
    expect(await get.next('opened')).toEqual({ t: 'opened', size: content.byteLength, mode: 0o600 });
    expect(await get.next('done', 30_000)).toEqual({ t: 'done', size: content.byteLength, sha256: sha256(content) });
    expect(await get.end()).toMatchObject({ t: 'closed' });
    expect(sha256(get.output)).toBe(sha256(content));
    expect(get.maxOutstanding).toBeLessThanOrEqual(DEFAULT_WINDOW_BYTES);
    expect(get.errors).toEqual([]);
    console.log(`10 MiB put ${Math.round(putMs)} ms, get ${Math.round(performance.now() - getStarted)} ms`);
  }, 60_000);

  it('leaves the target untouched and no temporary file on a wrong SHA-256, too many bytes, or an early close', async () => {
    const dir = tempDir();
    const { peer } = await setup('pi-bad-put');
    const target = join(dir, 'config.txt');
    writeFileSync(target, 'original');
    const content = Buffer.from('replacement contents');

    const wrong = peer.open({ kind: 'file_put', path: target, size: content.byteLength, sha256: sha256(Buffer.from('other')) });
    await wrong.next('opened');
    await wrong.stream(content);
    wrong.control({ t: 'eof' });
    expect(await wrong.error()).toMatchObject({ code: 'CHECKSUM_MISMATCH', message: expect.stringMatching(/SHA-256/) });

    const short = peer.open({ kind: 'file_put', path: target, size: 3, sha256: sha256(Buffer.from('abc')) });
    await short.next('opened');
    await short.stream(content);
    expect(await short.error()).toMatchObject({ code: 'CHECKSUM_MISMATCH' });

    const half = peer.open({ kind: 'file_put', path: target, size: content.byteLength * 2, sha256: sha256(Buffer.concat([content, content])) });
    await half.next('opened');
    await half.stream(content);
    await waitFor(() => partFiles(dir).length === 1, { what: 'the temporary file' });
    half.control({ t: 'close' });
    expect(await half.end()).toMatchObject({ t: 'closed' });

    await waitFor(() => partFiles(dir).length === 0, { what: 'no temporary file' });
    expect(readFileSync(target, 'utf8')).toBe('original');
  });

  it('deletes an unfinished upload and ends shells when hypha stops', async () => {
    const dir = tempDir();
    const { peer, agent } = await setup('pi-stop');
    const put = peer.open({ kind: 'file_put', path: join(dir, 'x'), size: 100, sha256: '0'.repeat(64) });
    await put.next('opened');
    put.data('half');
    await waitFor(() => partFiles(dir).length === 1, { what: 'the temporary file' });
    const shell = peer.open({ kind: 'shell' });
    await shell.next('opened');
    shell.type('echo pid=$$\r');
    await shell.waitForOutput(/pid=\d+/);
    const pid = Number(/pid=(\d+)/.exec(shell.text)![1]);

    await agent.stop();
    expect(partFiles(dir)).toEqual([]);
    expect(existsSync(join(dir, 'x'))).toBe(false);
    expect(await put.error()).toMatchObject({ code: 'INTERNAL', message: 'hypha is shutting down' });
    expect(await shell.error()).toMatchObject({ code: 'INTERNAL' });
    await waitFor(() => {
      try {
        process.kill(pid, 0);
        return false;
      } catch {
        return true;
      }
    }, { what: 'the shell gone' });
  });

  it('refuses paths outside --file-root, missing files, relative paths and files over --max-file-bytes', async () => {
    const root = tempDir();
    const outside = tempDir();
    writeFileSync(join(outside, 'secret'), 'secret');
    mkdirSync(join(root, 'sub'));
    writeFileSync(join(root, 'sub', 'big'), Buffer.alloc(2000));
    symlinkSync(outside, join(root, 'out-link'));
    symlinkSync(join(outside, 'secret'), join(root, 'secret-link'));
    const { peer, command } = await setup('pi-root', { fileRoot: root, maxFileBytes: 1000 });
    const hash = sha256(Buffer.from('x'));
    const refused = async (fields: Record<string, unknown>) => (await peer.open(fields).error()) as { code: string; message: string };

    expect(await refused({ kind: 'file_get', path: `${root}/../${outside.split('/').pop()}/secret` })).toMatchObject({ code: 'PATH_OUTSIDE_ROOT' });
    expect(await refused({ kind: 'file_get', path: join(root, 'secret-link') })).toMatchObject({ code: 'PATH_OUTSIDE_ROOT' });
    expect(await refused({ kind: 'file_get', path: join(root, 'out-link', 'secret') })).toMatchObject({ code: 'PATH_OUTSIDE_ROOT' });
    expect(await refused({ kind: 'file_put', path: join(root, 'out-link', 'new'), size: 1, sha256: hash })).toMatchObject({ code: 'PATH_OUTSIDE_ROOT' });
    expect(await refused({ kind: 'file_put', path: `${root}/sub/../../evil`, size: 1, sha256: hash })).toMatchObject({ code: 'PATH_OUTSIDE_ROOT' });
    expect(await refused({ kind: 'file_get', path: root })).toMatchObject({ code: 'PATH_OUTSIDE_ROOT' });
    expect(await refused({ kind: 'file_get', path: join(root, 'missing') })).toMatchObject({ code: 'NOT_FOUND' });
    expect(await refused({ kind: 'file_put', path: join(root, 'no-dir', 'f'), size: 1, sha256: hash })).toMatchObject({ code: 'NOT_FOUND' });
    expect(await refused({ kind: 'file_get', path: join(root, 'sub') })).toMatchObject({ code: 'BAD_REQUEST', message: expect.stringMatching(/is a directory/) });
    expect(await refused({ kind: 'file_get', path: 'sub/big' })).toMatchObject({ code: 'BAD_REQUEST', message: 'open: path must be an absolute path' });
    expect(await refused({ kind: 'file_put', path: 'relative', size: 1, sha256: hash })).toMatchObject({ code: 'BAD_REQUEST', message: expect.stringMatching(/^open: path/) });
    expect(await refused({ kind: 'file_get', path: `${root}/a\u0000b` })).toMatchObject({ code: 'BAD_REQUEST', message: expect.stringMatching(/NUL/) });
    expect(await refused({ kind: 'file_get', path: join(root, 'sub', 'big') })).toMatchObject({ code: 'PAYLOAD_TOO_LARGE' });
    expect(await refused({ kind: 'file_put', path: join(root, 'f'), size: 1001, sha256: hash })).toMatchObject({ code: 'PAYLOAD_TOO_LARGE' });
    expect(await refused({ kind: 'file_put', path: join(root, 'f'), size: 1, sha256: 'abc' })).toMatchObject({ code: 'BAD_REQUEST', message: 'open: sha256 must be 64 hex digits' });
    expect(readdirSync(outside)).toEqual(['secret']);
    expect(partFiles(root)).toEqual([]);

    // Inside the root, through a directory symlink that stays inside, works.
    symlinkSync(join(root, 'sub'), join(root, 'in-link'));
    const ok = peer.open({ kind: 'file_put', path: join(root, 'in-link', 'small'), size: 1, sha256: hash });
    await ok.next('opened');
    ok.data('x');
    ok.control({ t: 'eof' });
    expect(await ok.next('done')).toMatchObject({ size: 1, sha256: hash });
    expect(readFileSync(join(root, 'sub', 'small'), 'utf8')).toBe('x');
    expect(await command('echo alive')).toMatchObject({ result: 'alive' });
  });
});

describe('tcp tunnels', () => {
  it('fetches a page from a local HTTP server, with half-close both ways', async () => {
    const server = createHttpServer((req, res) => res.end(`hello from ${req.url}`));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanup(() => new Promise<void>((r) => server.close(() => r())));
    const port = (server.address() as { port: number }).port;
    const { peer } = await setup('pi-tcp');

    const tcp = peer.open({ kind: 'tcp', host: '127.0.0.1', port });
    expect(await tcp.next('opened')).toEqual({ t: 'opened' });
    tcp.data('GET /page HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n');
    tcp.control({ t: 'eof' });
    await tcp.waitForOutput(/hello from \/page/);
    await tcp.next('eof');
    expect(await tcp.end()).toMatchObject({ t: 'closed' });
    expect(tcp.text).toMatch(/^HTTP\/1.1 200 OK/);
  });

  it('answers CONNECT_FAILED for a closed port', async () => {
    const { peer } = await setup('pi-tcp-closed');
    const port = await freePort();
    const tcp = peer.open({ kind: 'tcp', host: '127.0.0.1', port });
    expect(await tcp.error()).toMatchObject({ code: 'CONNECT_FAILED', message: expect.stringMatching(/ECONNREFUSED/) });
  });
});

describe('tunnel protocol', () => {
  it('refuses bad frames by code, one tunnel at a time, and keeps serving commands', async () => {
    const { peer, command } = await setup('pi-proto', { maxTunnels: 3 });

    const stray = peer.tunnel('00000000000000aa');
    stray.control({ t: 'ack', bytes: 0 });
    expect(await stray.error()).toMatchObject({ code: 'UNKNOWN_TUNNEL' });

    const noKind = peer.open({ cols: 80 });
    expect(await noKind.error()).toMatchObject({ code: 'BAD_REQUEST', message: 'open: kind is required' });
    const badCols = peer.open({ kind: 'shell', cols: 5000 });
    expect(await badCols.error()).toMatchObject({ code: 'BAD_REQUEST', message: 'open: cols must be at most 1000' });
    const badPort = peer.open({ kind: 'tcp', port: 'http' });
    expect(await badPort.error()).toMatchObject({ code: 'BAD_REQUEST', message: expect.stringMatching(/^open: port must be/) });

    const gap = peer.open({ kind: 'shell' });
    await gap.next('opened');
    gap.raw(Buffer.from(encodeData(7, Buffer.from('ls\r'))));
    expect(await gap.error()).toMatchObject({ code: 'BAD_REQUEST', message: expect.stringMatching(/frame 7 arrived where 1 was expected/) });

    const big = peer.open({ kind: 'shell' });
    await big.next('opened');
    const oversized = Buffer.alloc(5 + MAX_DATA_BYTES + 1);
    oversized.writeUInt32BE(1, 1);
    big.raw(oversized);
    expect(await big.error()).toMatchObject({ code: 'PAYLOAD_TOO_LARGE' });

    // A shell that reads no input stops acknowledging it; a peer that sends on regardless overruns.
    const flood = peer.open({ kind: 'shell' });
    await flood.next('opened');
    flood.type('stty -icanon; sleep 100\r');
    await new Promise((r) => setTimeout(r, 300));
    for (let i = 0; i < 8; i++) flood.data(Buffer.alloc(MAX_DATA_BYTES, 0x20));
    expect(await flood.error()).toMatchObject({ code: 'PAYLOAD_TOO_LARGE', message: expect.stringMatching(/window/) });

    const twice = peer.open({ kind: 'shell' });
    await twice.next('opened');
    twice.control({ t: 'open', kind: 'shell' });
    expect(await twice.error()).toMatchObject({ code: 'BAD_REQUEST', message: expect.stringMatching(/already open/) });

    const garbage = peer.open({ kind: 'shell' });
    await garbage.next('opened');
    garbage.raw(Buffer.from([1, 0, 0, 0, 1, 0x7b]));
    expect(await garbage.error()).toMatchObject({ code: 'BAD_REQUEST' });

    // The limit: three open, the fourth is BUSY; one closes, and there is room again.
    const shells = [peer.open({ kind: 'shell' }), peer.open({ kind: 'shell' }), peer.open({ kind: 'shell' })];
    await Promise.all(shells.map((s) => s.next('opened')));
    expect(await peer.open({ kind: 'shell' }).error()).toMatchObject({ code: 'BUSY' });
    shells[0]!.control({ t: 'close' });
    await shells[0]!.end();
    await peer.open({ kind: 'shell' }).next('opened');

    // A closed tunnel's id is unknown from then on.
    shells[0]!.type('echo hi\r');
    expect(await waitFor(() => shells[0]!.controls.find((c) => c.t === 'error'))).toMatchObject({ code: 'UNKNOWN_TUNNEL' });

    for (const tunnel of [stray, noKind, gap, big, flood, shells[0]!]) expect(tunnel.errors).toEqual([]);
    expect(await command('echo $((6*7))')).toMatchObject({ result: '42', exit_code: 0 });
  });

  it('runs without tunnels when the hub refuses the subscription, and with --no-tunnels subscribes to none', async () => {
    const lines: string[] = [];
    const logger = { level: 'warn' as const, debug() {}, info() {}, warn: (m: string) => lines.push(m), error: (m: string) => lines.push(m) };
    const refuse = {
      authorizeSubscribe: (_client: unknown, sub: { topic: string; qos: number }, done: (err: Error | null, sub: unknown) => void) =>
        done(null, sub.topic.endsWith('/tunnels/+/in') ? null : sub),
    } as Partial<AedesOptions>;
    const { command } = await setup('pi-old-hub', { logger }, refuse);
    expect(await command('echo fine')).toMatchObject({ result: 'fine' });
    await waitFor(() => lines.some((l) => /refused the tunnel subscription/.test(l)));
    expect(lines.filter((l) => /subscribe failed/.test(l))).toEqual([]);

    const off = await setup('pi-off', { tunnels: false });
    expect(subscriptionsOf(off.broker, 'pi-off')).toEqual([`${P}/devices/pi-off/command`]);

    // Restarted with tunnels off on a session that has the filter: the agent drops it.
    const { url, broker } = off;
    const on = await startAgent({ url, id: 'pi-switch', logLevel: 'error' });
    await waitFor(() => subscriptionsOf(broker, 'pi-switch').length === 2, { what: 'both filters' });
    await on.stop();
    const without = await startAgent({ url, id: 'pi-switch', logLevel: 'error', tunnels: false });
    cleanup(() => without.stop());
    await waitFor(() => subscriptionsOf(broker, 'pi-switch').join() === `${P}/devices/pi-switch/command`, { what: 'the tunnel filter gone' });
  });

  it('ends its tunnels silently when the connection drops, and answers them UNKNOWN_TUNNEL after reconnecting', async () => {
    const { peer, broker, agent, command } = await setup('pi-drop', { backoffBaseMs: 50, backoffCapMs: 100 });
    const shell = peer.open({ kind: 'shell' });
    await shell.next('opened');
    shell.type('echo pid=$$\r');
    await shell.waitForOutput(/pid=\d+/);
    const pid = Number(/pid=(\d+)/.exec(shell.text)![1]);
    let reconnected = false;
    agent.once('connect', () => (reconnected = true));

    (broker as unknown as { clients: Record<string, { conn: { destroy(): void } }> }).clients['pi-drop']!.conn.destroy();
    await waitFor(() => isGone(pid), { what: 'the shell gone' });
    await waitFor(() => reconnected && subscriptionsOf(broker, 'pi-drop').length === 2, { what: 'the agent back' });
    expect(shell.controls.filter((c) => c.t !== 'opened' && c.t !== 'ack')).toEqual([]);
    shell.type('echo again\r');
    expect(await shell.error()).toMatchObject({ code: 'UNKNOWN_TUNNEL' });
    expect(await command('echo back')).toMatchObject({ result: 'back' });
  });
});

describe('hypha command line for tunnels', () => {
  it('documents the tunnel flags and refuses a --file-root that is not a directory', () => {
    const help = spawnSync(process.execPath, [HYPHA_BIN, '--help'], { encoding: 'utf8' });
    for (const word of ['--file-root', '--max-file-bytes', '--max-tunnels', '--no-tunnels', 'HYPHA_FILE_ROOT', 'HYPHA_MAX_FILE_BYTES', 'HYPHA_NO_TUNNELS']) expect(help.stdout).toContain(word);
    for (const args of [['--file-root', '/nonexistent-dir'], ['--file-root', HYPHA_BIN], ['--max-file-bytes', 'lots'], ['--max-tunnels', '0']]) {
      const result = spawnSync(process.execPath, [HYPHA_BIN, '--url', 'mqtt://127.0.0.1:1', '--id', 'pi', ...args], { encoding: 'utf8', timeout: 15_000 });
      expect(result.status, args.join(' ')).toBe(2);
      expect(result.stderr).toMatch(new RegExp(`^hypha: ${args[0]}: `));
    }
  });

  it('serves tunnels from the hypha process within --file-root and --max-file-bytes; --no-tunnels offers none', async () => {
    const { broker, url } = await bareBroker();
    const root = tempDir();
    writeFileSync(join(root, 'greeting'), 'hello');
    const peer = await TunnelPeer.connect(url, 'pi-cli');
    spawnHypha(url, 'pi-cli', ['--file-root', root, '--max-file-bytes', '10']);
    spawnHypha(url, 'pi-cli-off', ['--no-tunnels']);
    await waitFor(() => subscriptionsOf(broker, 'pi-cli').length === 2 && subscriptionsOf(broker, 'pi-cli-off').length === 1, { what: 'both agents subscribed', timeoutMs: 15_000 });

    const get = peer.open({ kind: 'file_get', path: join(root, 'greeting') });
    expect(await get.next('done')).toEqual({ t: 'done', size: 5, sha256: sha256(Buffer.from('hello')) });
    expect(get.text).toBe('hello');
    expect(await peer.open({ kind: 'file_get', path: '/etc/passwd' }).error()).toMatchObject({ code: 'PATH_OUTSIDE_ROOT' });
    expect(await peer.open({ kind: 'file_put', path: join(root, 'big'), size: 11, sha256: '0'.repeat(64) }).error()).toMatchObject({ code: 'PAYLOAD_TOO_LARGE' });
    await new Promise((r) => setTimeout(r, 200));
    expect(subscriptionsOf(broker, 'pi-cli-off')).toEqual([`${P}/devices/pi-cli-off/command`]);
  });
});
