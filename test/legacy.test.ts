/**
 * The legacy bridge: devices running the original hypha agent (wc.py) at `/device`, and the
 * original console at `/client/{id}`. The device here is a faithful port of wc.py, quirks and
 * all, running real commands with /bin/sh; MQTT clients see its answers next to a real hypha's.
 */
import { spawn } from 'node:child_process';
import { createServer, type IncomingMessage } from 'node:http';
import type { Socket } from 'node:net';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { attachLegacyBridge } from '../bridge/legacy.js';
import { asciiShellWord, LEGACY_DEVICE_MESSAGE_MAX_BYTES, shQuote, unwrapAnswer, wrapCommand } from '../bridge/legacy-device.js';
import { Dispatcher } from '../src/dispatcher.js';
import type { Hub } from '../src/index.js';
import { Presence, type OfflineReason } from '../src/presence.js';
import type { Reply } from '../src/protocol/schemas.js';
import { DeviceRegistry } from '../src/registry.js';
import { Authenticator } from '../src/auth/authenticator.js';
import { openStores } from '../src/store/stores.js';
import { capturedLog, cleanup, connectMqtt, RequestClient, spawnHypha, startTestHub, tempDir, waitFor } from './helpers.js';

const wsUrl = (hub: Hub, path: string) => hub.urls.http.replace(/^http/, 'ws') + path;

/** Python 2's `str.strip()`: ASCII whitespace off both ends. */
const pyStrip = (text: string) => text.replace(/^[ \t\n\r\v\f]+|[ \t\n\r\v\f]+$/g, '');

interface Closed {
  code: number;
  reason: string;
}

function opened(ws: WebSocket): Promise<void> {
  return new Promise((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
}

function closedOf(ws: WebSocket): Promise<Closed> {
  return new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
}

function track(ws: WebSocket): WebSocket {
  ws.on('error', () => {});
  cleanup(() => ws.terminate());
  return ws;
}

interface AgentOptions {
  /** The id in the x-custome-id header (wc.py: --device_id, else the Pi's serial); null sends no header. */
  headerId: string | null;
  /** The id in the register message (wc.py: always the Pi's serial); null sends no register message. */
  registerId?: string | null;
  /** communicate(timeout=60) */
  giveUpMs?: number;
}

/**
 * A port of the original agent, wc.py: connects with `x-custome-id` and `Authorization: Bearer
 * 0000`, sends its register message, then handles one message at a time. Only `exec_bash` is
 * run, with `/bin/sh -c`; stdout and stderr are `.strip()`ped; after 60 s it stops waiting,
 * kills nothing and answers nothing; whatever throws is swallowed and nothing is answered.
 */
class LegacyAgent {
  /** Every cmd_str received, in order. */
  readonly received: string[] = [];
  /** Messages that arrived while a command was running (the bridge should send one at a time). */
  receivedWhileBusy = 0;
  readonly answers: { result: string; error: string }[] = [];
  private busy = false;
  private chain: Promise<void> = Promise.resolve();
  readonly closed: Promise<Closed>;

  private constructor(readonly ws: WebSocket, private readonly giveUpMs: number) {
    this.closed = closedOf(ws);
    ws.on('message', (data) => {
      if (this.busy) this.receivedWhileBusy += 1;
      const text = data.toString();
      this.chain = this.chain.then(() => this.handle(text));
    });
  }

  static async connect(hub: Hub, { headerId, registerId = 'serial-00000000deadbeef', giveUpMs = 60_000 }: AgentOptions): Promise<LegacyAgent> {
    const headers: Record<string, string> = { Authorization: 'Bearer 0000' };
    if (headerId !== null) headers['x-custome-id'] = headerId;
    const ws = track(new WebSocket(wsUrl(hub, '/device'), { headers }));
    const agent = new LegacyAgent(ws, giveUpMs);
    await opened(ws);
    if (registerId !== null) ws.send(JSON.stringify({ command: 'register', id: registerId }));
    return agent;
  }

  private async handle(recvStr: string): Promise<void> {
    this.busy = true;
    try {
      const ms = JSON.parse(recvStr) as { order: string; cmd_str: string };
      if (ms.order !== 'exec_bash') return;
      this.received.push(ms.cmd_str);
      // Python 2: `"exec {}".format(ms["cmd_str"])` raises on any non-ASCII character.
      if (!/^[\x00-\x7f]*$/.test(ms.cmd_str)) throw new Error('UnicodeEncodeError');
      const { stdout, stderr } = await this.communicate(ms.cmd_str);
      // Python 2's json.dumps raises on output that is not UTF-8.
      const utf8 = new TextDecoder('utf-8', { fatal: true });
      const answer = { result: pyStrip(utf8.decode(stdout)), error: pyStrip(utf8.decode(stderr)) };
      this.answers.push(answer);
      this.ws.send(JSON.stringify({ order: 'response', ...answer }));
    } catch {
      // wc.py: `except: ... pass`
    } finally {
      this.busy = false;
    }
  }

  /** `Popen(cmd_str, shell=True).communicate(timeout=60)`: waits for both pipes to close; on timeout raises and kills nothing. */
  private communicate(cmdStr: string): Promise<{ stdout: Buffer; stderr: Buffer }> {
    return new Promise((resolve, reject) => {
      const child = spawn('/bin/sh', ['-c', cmdStr], { stdio: ['ignore', 'pipe', 'pipe'] });
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
      child.stderr.on('data', (chunk: Buffer) => err.push(chunk));
      const timer = setTimeout(() => reject(new Error('TimeoutExpired')), this.giveUpMs);
      child.once('close', () => {
        clearTimeout(timer);
        resolve({ stdout: Buffer.concat(out), stderr: Buffer.concat(err) });
      });
    });
  }
}

/** A bare WebSocket at /device that the test drives message by message. */
async function rawDevice(hub: Hub, id: string | null) {
  const headers: Record<string, string> = id === null ? {} : { 'x-custome-id': id };
  const ws = track(new WebSocket(wsUrl(hub, '/device'), { headers }));
  const messages: { order: string; cmd_str: string }[] = [];
  ws.on('message', (data) => messages.push(JSON.parse(data.toString())));
  const closed = closedOf(ws);
  await opened(ws);
  return { ws, messages, closed };
}

/** The original console: one WebSocket per device, Replies in order. */
async function legacyConsole(hub: Hub, path: string) {
  const ws = track(new WebSocket(wsUrl(hub, path)));
  const replies: Reply[] = [];
  ws.on('message', (data) => replies.push(JSON.parse(data.toString()) as Reply));
  const closed = closedOf(ws);
  await opened(ws);
  const ask = async (message: string | object) => {
    const seen = replies.length;
    ws.send(typeof message === 'string' ? message : JSON.stringify(message));
    return waitFor(() => replies[seen], { what: 'a console reply' });
  };
  return { ws, ask, closed };
}

async function watchStatus(hub: Hub, id: string) {
  const watcher = await connectMqtt(hub.urls.mqtt, { clientId: `watch-${id}` });
  const seen: { online: boolean; transport: string }[] = [];
  watcher.on('message', (_topic, payload) => seen.push(JSON.parse(payload.toString())));
  await watcher.subscribeAsync(`rhizosphere/devices/${id}/status`, { qos: 1 });
  return seen;
}

/** What an MQTT client can compare between two devices: everything but timing, the request id and the device id. */
function comparable(reply: Reply) {
  const { duration_ms: _duration, device: _device, id: _id, ...rest } = reply as Reply & { duration_ms?: number };
  return rest;
}

describe('quoting and wrapping', () => {
  const nasty = [
    '',
    "it's",
    "''",
    "'\\''",
    '"double" and \\"escaped\\"',
    '$(echo injected) `echo injected` ${HOME} $HOME',
    'two\nlines\n',
    '!! !$ !-1 history',
    '%s %d %% \\n \\0 \\\\',
    '-n leading dash',
    'tab\there; semi; && || | > < & * ? [a] ~',
  ];

  it('shQuote survives sh and bash unchanged', async () => {
    for (const shell of ['/bin/sh', 'bash']) {
      for (const text of nasty) {
        const out = await run(shell, `printf '%s' ${shQuote(text)}`);
        expect(out, `${shell}: ${JSON.stringify(text)}`).toBe(text);
      }
    }
  });

  it('asciiShellWord gives pure ASCII that sh turns back into any text', async () => {
    const unicode = ['héllo wörld', '日本語 \'quoted\' $(x) `y` %s \\', 'bell\u0007 escape\u001b[0m cr\r', 'emoji 🌱'];
    for (const text of [...nasty.filter((t) => !t.endsWith('\n')), ...unicode]) {
      const word = asciiShellWord(text);
      expect(word).toMatch(/^[\x20-\x7e\t\n]*$/);
      expect(await run('/bin/sh', `printf '%s' ${word}`), JSON.stringify(text)).toBe(text);
    }
  });

  it('reads the markers back and drops output that came after them', () => {
    const nonce = '0123456789abcdef';
    const answer = unwrapAnswer(
      `__rhizosphere_begin:${nonce}\n  out  \n\n__rhizosphere_end:${nonce}\nlate`,
      `__rhizosphere_begin:${nonce}\nerr\n__rhizosphere_exit:${nonce}:3\nlate`,
    );
    expect(answer).toEqual({ nonce, status: 3, stdout: '  out  \n', stderr: 'err' });
    expect(unwrapAnswer('plain', 'no marker here')).toBeNull();
    expect(wrapCommand({ order: 'exec_bash', cmd_str: 'echo é' }, nonce, 1500)).toMatch(/^[\x20-\x7e]*$/);
  });
});

function run(shell: string, script: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(shell, ['-c', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.once('error', reject);
    child.once('close', () => resolve(out));
  });
}

describe('legacy devices', () => {
  it('lists a legacy device with its transport and retained status; the header id wins over the register id', async () => {
    const hub = await startTestHub();
    const agent = await LegacyAgent.connect(hub, { headerId: 'pi-legacy', registerId: 'serial-1234' });
    await waitFor(() => hub.device('pi-legacy')?.online, { what: 'pi-legacy online' });
    expect(hub.devices()).toEqual([expect.objectContaining({ id: 'pi-legacy', online: true, transport: 'legacy-ws', remoteAddress: '127.0.0.1' })]);
    expect(hub.device('serial-1234')).toBeUndefined();
    const seen = await watchStatus(hub, 'pi-legacy');
    await waitFor(() => seen.length > 0, { what: 'the retained status' });
    expect(seen[0]).toMatchObject({ online: true, transport: 'legacy-ws' });

    const listed = (await (await fetch(`${hub.urls.http}/api/devices/pi-legacy`)).json()) as Record<string, unknown>;
    expect(listed).toMatchObject({ transport: 'legacy-ws', online: true });
    expect(agent.received).toEqual([]);
  });

  it('answers all three orders exactly as a hypha device over MQTT does', async () => {
    const hub = await startTestHub();
    spawnHypha(hub.urls.mqtt, 'twin-mqtt');
    const agent = await LegacyAgent.connect(hub, { headerId: 'twin-legacy' });
    await waitFor(() => hub.device('twin-mqtt')?.online && hub.device('twin-legacy')?.online, { timeoutMs: 15_000, what: 'both twins online' });
    const client = await RequestClient.connect(hub.urls.mqtt, 'operator');

    const cases: Record<string, unknown>[] = [
      { order: 'exec_bash', cmd_str: "printf '  leading and trailing spaces  \\n\\n'; echo ' warn ' >&2; exit 3" },
      { order: 'exec_bash', cmd_str: 'echo "it\'s \\"quoted\\""; echo \'$(echo no) `echo no` !x %s %d \\n\'\nprintf "line1\\nline2\\n\\n"' },
      { order: 'exec_bash', cmd_str: 'echo héllo 日本 >&2; printf "tab\\there"' },
      { order: 'exec_bash', cmd_str: 'true' },
      { order: 'exec_bash', cmd_str: 'echo before; kill -9 $$' },
      { order: 'exec_bash', cmd_str: 'echo $BASH_VERSION | cut -c1 | grep -q . && [[ 1 == 1 ]] && echo bash' },
      { order: 'exec_bash', cmd_str: 'sleep 5', timeout_ms: 1000 },
      { order: 'exec_bash_ret_okng_only', cmd_str: 'echo hidden; true' },
      { order: 'exec_bash_ret_okng_only', cmd_str: 'echo hidden >&2; exit 4' },
      { order: 'exec_bash_no_return', cmd_str: 'sleep 2; echo never seen' },
    ];
    // One case at a time: on the legacy device, time spent queued behind earlier commands counts against timeout_ms.
    const fromMqtt: Reply[] = [];
    const fromLegacy: Reply[] = [];
    for (const body of cases) {
      const [mqttReply, legacyReply] = await Promise.all(['twin-mqtt', 'twin-legacy'].map((device) => client.request({ ...body, device })));
      expect(comparable(legacyReply!), JSON.stringify(body)).toEqual(comparable(mqttReply!));
      fromMqtt.push(mqttReply!);
      fromLegacy.push(legacyReply!);
    }
    expect(fromLegacy[0]).toMatchObject({ status: 'ok', result: '  leading and trailing spaces  ', error: ' warn ', exit_code: 3 });
    expect(fromLegacy[4]).toMatchObject({ result: 'before', exit_code: 137 });
    expect(fromLegacy[5]).toMatchObject({ result: 'bash' });
    expect(fromLegacy[6]).toMatchObject({ status: 'error', code: 'TIMEOUT', message: 'killed after 1000 ms' });
    expect(fromLegacy[8]).toMatchObject({ result: 'ng', exit_code: 4, error: '' });
    expect(fromLegacy[9]).toMatchObject({ status: 'ok', result: null, exit_code: null });
    expect((fromLegacy[9] as { duration_ms: number }).duration_ms).toBeLessThan(1000);
    // One command at a time, never two on the wire.
    expect(agent.received).toHaveLength(cases.length);
    expect(agent.receivedWhileBusy).toBe(0);
  });

  it('answers several commands sent at once each to its own caller, in order', async () => {
    const hub = await startTestHub();
    const agent = await LegacyAgent.connect(hub, { headerId: 'pi-busy' });
    await waitFor(() => hub.device('pi-busy')?.online);
    const [alice, bob] = await Promise.all([RequestClient.connect(hub.urls.mqtt, 'alice'), RequestClient.connect(hub.urls.mqtt, 'bob')]);
    const arrivals: string[] = [];
    const ask = (client: RequestClient, tag: string) =>
      client.request({ id: tag, device: 'pi-busy', order: 'exec_bash', cmd_str: `echo ${tag}` }).then((reply) => {
        arrivals.push(tag);
        return reply;
      });
    const tags = ['a1', 'a2', 'a3', 'a4'].flatMap((a, i) => [a, `b${i + 1}`]);
    const replies = await Promise.all(tags.map((tag) => ask(tag.startsWith('a') ? alice : bob, tag)));
    for (const [index, tag] of tags.entries()) expect(replies[index]).toMatchObject({ id: tag, status: 'ok', result: tag, exit_code: 0 });
    expect(alice.replies.map((r) => r.id)).toEqual(['a1', 'a2', 'a3', 'a4']);
    expect(bob.replies.map((r) => r.id)).toEqual(['b1', 'b2', 'b3', 'b4']);
    // The device ran them in the order the replies came back.
    expect(agent.received.map((cmd) => /echo ([ab]\d)/.exec(cmd)![1])).toEqual(arrivals);
    expect(agent.receivedWhileBusy).toBe(0);
  });

  it('gives up on a command past its time, never mistakes its late answer for the next one, and expires queued commands unsent', async () => {
    const hub = await startTestHub();
    const agent = await LegacyAgent.connect(hub, { headerId: 'pi-slow' });
    await waitFor(() => hub.device('pi-slow')?.online);
    const client = await RequestClient.connect(hub.urls.mqtt, 'operator');

    // A background process holds the pipes for 4 s: the agent answers only then, after the bridge gave up at 1 + 2 s.
    const started = Date.now();
    const stuck = client.request({ device: 'pi-slow', order: 'exec_bash', cmd_str: 'sleep 4 & echo stuck', timeout_ms: 1000 });
    const queued = client.request({ device: 'pi-slow', order: 'exec_bash', cmd_str: 'echo queued', timeout_ms: 1000 });
    const next = client.request({ device: 'pi-slow', order: 'exec_bash', cmd_str: 'echo next' });

    expect(await stuck).toMatchObject({ status: 'error', code: 'TIMEOUT', message: 'device pi-slow did not answer within 1000 ms' });
    expect(await queued).toMatchObject({ status: 'error', code: 'TIMEOUT', message: expect.stringMatching(/^not started/) });
    expect(Date.now() - started).toBeLessThan(3800);
    expect(await next).toMatchObject({ status: 'ok', result: 'next', exit_code: 0 });
    expect(agent.answers.map((a) => a.result)).toEqual([expect.stringContaining('stuck'), expect.stringContaining('next')]);
    expect(agent.received).toHaveLength(2); // "echo queued" never reached the device
  });

  it('survives garbage, answers out of turn and a device that never answers', async () => {
    const { logger, lines } = capturedLog();
    const hub = await startTestHub({ logger });
    const device = await rawDevice(hub, 'pi-raw');
    await waitFor(() => hub.device('pi-raw')?.online);
    const client = await RequestClient.connect(hub.urls.mqtt, 'operator');

    for (const junk of ['not json', '[1,2]', '42', '{"hello":1}', '{"order":"response","result":7}']) device.ws.send(junk);
    device.ws.send(Buffer.from([0xff, 0x00]), { binary: true });
    device.ws.send(JSON.stringify({ order: 'response', result: 'out of turn', error: '' }));
    await waitFor(() => lines.filter((l) => l.code === 'BAD_REQUEST').length >= 7, { what: 'seven warnings' });
    expect(lines.filter((l) => l.code === 'BAD_REQUEST').every((l) => l.level === 40)).toBe(true);
    expect(hub.device('pi-raw')?.online).toBe(true);

    // An answer without markers goes to the command on the wire, without an exit status.
    const plain = client.request({ device: 'pi-raw', order: 'exec_bash', cmd_str: 'uname' });
    await waitFor(() => device.messages.length === 1);
    expect(device.messages[0]).toMatchObject({ order: 'exec_bash', cmd_str: expect.stringContaining("bash -c 'uname'") });
    device.ws.send(JSON.stringify({ order: 'response', result: 'Linux', error: '' }));
    expect(await plain).toMatchObject({ status: 'ok', result: 'Linux', error: '', exit_code: null });

    // Silence: the bridge gives up at timeout + 2 s and moves on.
    const ignored = client.request({ device: 'pi-raw', order: 'exec_bash', cmd_str: 'ignored', timeout_ms: 1000 });
    const answered = client.request({ device: 'pi-raw', order: 'exec_bash', cmd_str: 'answered' });
    expect(await ignored).toMatchObject({ status: 'error', code: 'TIMEOUT' });
    await waitFor(() => device.messages.length === 3);
    const nonce = /__rhizosphere_exit:([0-9a-f]+)/.exec(device.messages[2]!.cmd_str)![1];
    device.ws.send(JSON.stringify({ order: 'response', result: `__rhizosphere_begin:${nonce}\nyes\n__rhizosphere_end:${nonce}`, error: `__rhizosphere_exit:${nonce}:0` }));
    expect(await answered).toMatchObject({ status: 'ok', result: 'yes', exit_code: 0 });

    // A message over the limit: ws closes the socket with 1009; the hub carries on.
    device.ws.send(Buffer.alloc(LEGACY_DEVICE_MESSAGE_MAX_BYTES + 1, 0x20));
    expect((await device.closed).code).toBe(1009);
    await waitFor(() => hub.device('pi-raw')?.online === false, { what: 'pi-raw offline' });
    expect((await fetch(`${hub.urls.http}/healthz`)).status).toBe(200);
  });

  it('takes the id from the register message when the header is missing, and refuses a device with neither', async () => {
    const hub = await startTestHub();
    await LegacyAgent.connect(hub, { headerId: null, registerId: 'from-register' });
    await waitFor(() => hub.device('from-register')?.online, { what: 'from-register online' });
    expect(hub.device('from-register')).toMatchObject({ transport: 'legacy-ws' });

    const anonymous = await rawDevice(hub, null);
    anonymous.ws.send(JSON.stringify({ command: 'register' }));
    expect(await anonymous.closed).toEqual({ code: 1008, reason: expect.stringContaining('x-custome-id header missing') });

    const hostileRegister = await rawDevice(hub, null);
    hostileRegister.ws.send(JSON.stringify({ command: 'register', id: 'a/b' }));
    expect(await hostileRegister.closed).toEqual({ code: 1008, reason: 'register id may contain only A-Z a-z 0-9 . _ : -' });
  });

  it('refuses hostile ids with 1008 and a reason', async () => {
    const hub = await startTestHub();
    const hostile: [string, string][] = [
      ['a/b', 'x-custome-id may contain only A-Z a-z 0-9 . _ : -'],
      ['+', 'x-custome-id may contain only A-Z a-z 0-9 . _ : -'],
      ['#', 'x-custome-id may contain only A-Z a-z 0-9 . _ : -'],
      ['$SYS', 'x-custome-id may contain only A-Z a-z 0-9 . _ : -'],
      ['', 'x-custome-id must not be empty'],
      ['x'.repeat(129), 'x-custome-id must be at most 128 characters (got 129)'],
    ];
    const outcomes = await Promise.all(hostile.map(async ([id]) => (await rawDevice(hub, id)).closed));
    expect(outcomes).toEqual(hostile.map(([, reason]) => ({ code: 1008, reason })));
    expect(hub.devices()).toEqual([]);
  });

  it('answers DEVICE_OFFLINE at once when a legacy device drops mid-command, and publishes it offline', async () => {
    const hub = await startTestHub();
    const agent = await LegacyAgent.connect(hub, { headerId: 'pi-drop' });
    await waitFor(() => hub.device('pi-drop')?.online);
    const seen = await watchStatus(hub, 'pi-drop');
    const client = await RequestClient.connect(hub.urls.mqtt, 'operator');
    const pending = client.request({ device: 'pi-drop', order: 'exec_bash', cmd_str: 'sleep 2' });
    await waitFor(() => agent.received.length === 1);
    const dropped = Date.now();
    agent.ws.terminate();
    expect(await pending).toMatchObject({ status: 'error', code: 'DEVICE_OFFLINE' });
    expect(Date.now() - dropped).toBeLessThan(1000);
    await waitFor(() => seen.some((s) => !s.online), { what: 'the offline status' });
    expect(seen.at(-1)).toMatchObject({ online: false, transport: 'legacy-ws' });
    expect(await client.request({ device: 'pi-drop', order: 'exec_bash', cmd_str: 'true' })).toMatchObject({ code: 'DEVICE_OFFLINE' });
  });

  it('keeps the device online through a takeover by a newer legacy socket, then by an MQTT connection', async () => {
    const hub = await startTestHub();
    const offline: string[] = [];
    hub.on('offline', (device) => offline.push(device.id));
    const first = await LegacyAgent.connect(hub, { headerId: 'pi-take' });
    await waitFor(() => hub.device('pi-take')?.online);
    const client = await RequestClient.connect(hub.urls.mqtt, 'operator');
    const onTheWire = client.request({ device: 'pi-take', order: 'exec_bash', cmd_str: 'sleep 1; echo first' });
    const waiting = client.request({ device: 'pi-take', order: 'exec_bash', cmd_str: 'echo handed over' });
    await waitFor(() => first.received.length === 1);

    const second = await LegacyAgent.connect(hub, { headerId: 'pi-take' });
    expect((await first.closed).code).toBe(1000);
    // The first socket's command can no longer be answered; the waiting one moves to the new socket.
    expect(await onTheWire).toMatchObject({ status: 'error', code: 'INTERNAL', message: expect.stringContaining('replaced') });
    expect(await waiting).toMatchObject({ status: 'ok', result: 'handed over' });
    expect(second.received).toHaveLength(1);
    expect(hub.device('pi-take')).toMatchObject({ online: true, transport: 'legacy-ws' });

    const mqttDevice = await connectMqtt(hub.urls.mqtt, { clientId: 'pi-take', clean: false });
    await mqttDevice.subscribeAsync('rhizosphere/devices/pi-take/command', { qos: 1 });
    expect((await second.closed).code).toBe(1000);
    await waitFor(() => hub.device('pi-take')?.transport === 'mqtt', { what: 'the MQTT takeover' });
    expect(hub.device('pi-take')?.online).toBe(true);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(offline).toEqual([]);
  });
});

describe('legacy console', () => {
  it('runs commands and answers with Replies; bad messages get BAD_REQUEST and the socket stays open', async () => {
    const hub = await startTestHub();
    await LegacyAgent.connect(hub, { headerId: 'pi-console' });
    await waitFor(() => hub.device('pi-console')?.online);
    const operator = await legacyConsole(hub, '/client/pi-console');

    expect(await operator.ask({ order: 'exec_bash', cmd_str: 'echo hello; echo oops >&2' })).toMatchObject({
      type: 'response', id: null, device: 'pi-console', status: 'ok', result: 'hello', error: 'oops', exit_code: 0, truncated: false,
    });
    expect(await operator.ask({ id: 'c-1', order: 'exec_bash_ret_okng_only', cmd_str: 'false' })).toMatchObject({ id: 'c-1', result: 'ng', exit_code: 1 });
    expect(await operator.ask('{"order": "exec_bash", "cmd_str": "unterminated')).toEqual({
      type: 'response', id: null, device: 'pi-console', status: 'error', code: 'BAD_REQUEST', message: 'message is not valid JSON',
    });
    expect(await operator.ask({ id: 'c-2', order: 'exec_python', cmd_str: 'x' })).toMatchObject({ id: 'c-2', code: 'BAD_REQUEST', message: expect.stringContaining('order must be one of') });
    expect(await operator.ask({ order: 'exec_bash', cmd_str: 'echo still open' })).toMatchObject({ status: 'ok', result: 'still open' });
    expect(operator.ws.readyState).toBe(WebSocket.OPEN);

    // A second console for the same device works side by side.
    const other = await legacyConsole(hub, '/client/pi-console');
    expect(await other.ask({ order: 'exec_bash', cmd_str: 'echo two' })).toMatchObject({ result: 'two' });
    expect(hub.connections.get('pi-console')?.clients.size).toBe(0);
  });

  it('answers UNKNOWN_DEVICE for an unknown device and refuses hostile ids with 1008', async () => {
    const hub = await startTestHub();
    const unknown = await legacyConsole(hub, '/client/nobody');
    expect(await unknown.ask({ order: 'exec_bash', cmd_str: 'true' })).toMatchObject({ device: 'nobody', code: 'UNKNOWN_DEVICE' });
    for (const path of ['/client/a/b', '/client/%2B', '/client/%23', '/client/$SYS', '/client/', `/client/${'x'.repeat(129)}`, '/client/%E0%A4%A']) {
      const refused = await legacyConsole(hub, path);
      expect(await refused.closed, path).toMatchObject({ code: 1008, reason: expect.stringMatching(/^device id /) });
    }
  });
});

describe('legacy bridge timings', () => {
  /** The bridge on its own HTTP server, with short timings. */
  async function bridgeRig() {
    const log = pino({ level: 'silent' });
    const stores = openStores(tempDir());
    cleanup(() => stores.close());
    const auth = new Authenticator(stores.devices, stores.tokens, stores.sessions, { allowAnonymous: true });
    const presence = new Presence(new DeviceRegistry(stores.devices, log), () => {}, log);
    const dispatcher = new Dispatcher(presence, { maxInflightPerDevice: 32, maxInflightTotal: 100, maxResponseBytes: 1 << 20 }, log);
    const server = createServer();
    const routes = new Map<string, (req: IncomingMessage, socket: Socket, head: Buffer) => void>();
    server.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => {
      const path = new URL(req.url ?? '/', 'http://rig').pathname;
      const route = [...routes].find(([prefix]) => (prefix.endsWith('/') ? path.startsWith(prefix) : path === prefix));
      if (route) route[1](req, socket, head);
      else socket.destroy();
    });
    const bridge = attachLegacyBridge({
      http: { addUpgrade: (path, handler) => void routes.set(path, handler) },
      presence,
      dispatcher,
      log,
      maxPayloadBytes: 4096,
      auth,
      timings: { pingIntervalMs: 100, registerWaitMs: 300 },
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    cleanup(() => new Promise((resolve) => server.close(resolve)));
    cleanup(() => server.closeAllConnections());
    cleanup(() => bridge.close());
    const address = server.address();
    const url = `ws://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
    return { presence, url };
  }

  it('closes with 1008 a device that sends neither the header nor a register message in time', async () => {
    const { url } = await bridgeRig();
    const ws = track(new WebSocket(`${url}/device`));
    const started = Date.now();
    expect(await closedOf(ws)).toEqual({ code: 1008, reason: 'x-custome-id header missing' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
  });

  it('terminates a device that stops answering pings, and keeps one that answers', async () => {
    const { presence, url } = await bridgeRig();
    const reasons: OfflineReason[] = [];
    presence.on('offline', (_device, reason) => reasons.push(reason));
    const silent = track(new WebSocket(`${url}/device`, { headers: { 'x-custome-id': 'silent' }, autoPong: false }));
    const lively = track(new WebSocket(`${url}/device`, { headers: { 'x-custome-id': 'lively' } }));
    await Promise.all([opened(silent), opened(lively)]);
    await waitFor(() => presence.get('silent')?.online && presence.get('lively')?.online);
    const closed = closedOf(silent);
    const started = Date.now();
    expect((await closed).code).toBe(1006);
    expect(Date.now() - started).toBeLessThan(1000);
    await waitFor(() => reasons.length > 0, { what: 'the offline event' });
    expect(reasons).toEqual(['keepalive-timeout']);
    expect(presence.get('silent')?.online).toBe(false);
    await new Promise((resolve) => setTimeout(resolve, 400));
    expect(presence.get('lively')?.online).toBe(true);
  });
});
