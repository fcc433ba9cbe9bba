/**
 * `--cluster`: three hubs on one Redis and one data directory act as one hub. Needs Redis
 * (REDIS_URL, default redis://127.0.0.1:6379); each run claims an empty logical database
 * (15 down to 1, never 0), flushes it before each test and when done.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer as createWebServer } from 'node:http';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import mqtt from 'mqtt';
import WebSocket from 'ws';
import { connect } from '../src/client/index.js';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import type { Hub } from '../src/index.js';
import type { DeviceInfo } from '../src/presence.js';
import { openPage } from './browser.js';
import { claimDatabase, REDIS_BASE_URL } from './redis-claim.js';
import { cleanup, connectMqtt, freePort, RequestClient, spawnHub, spawnHypha, startTestHub, tempDir, waitFor } from './helpers.js';

const claimed = await claimDatabase();
if (!claimed) console.warn(`cluster tests skipped: no Redis at ${REDIS_BASE_URL} (set REDIS_URL), or no empty database 1-15 in it`);
const CLUSTER_URL = claimed?.url ?? '';

async function freshDatabase(): Promise<void> {
  await claimed?.fresh();
}

/** A TCP load balancer in front of the nodes: round robin, skipping a node that refuses. */
async function loadBalancer(backends: () => number[]): Promise<{ port: number; server: Server }> {
  let next = 0;
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.pause();
    const ports = backends();
    const tryFrom = (attempt: number) => {
      if (attempt >= ports.length) return client.destroy();
      const port = ports[next++ % ports.length]!;
      const upstream = createConnection({ port, host: '127.0.0.1', noDelay: true });
      upstream.once('error', () => tryFrom(attempt + 1));
      upstream.once('connect', () => {
        upstream.removeAllListeners('error');
        sockets.add(upstream);
        upstream.on('close', () => sockets.delete(upstream));
        client.pipe(upstream).pipe(client);
        upstream.on('error', () => client.destroy());
        client.on('error', () => upstream.destroy());
        client.on('close', () => upstream.destroy());
        upstream.on('close', () => client.destroy());
        client.resume();
      });
    };
    tryFrom(0);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanup(
    () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  );
  const address = server.address();
  return { port: typeof address === 'object' && address ? address.port : 0, server };
}

async function restDevices(httpUrl: string): Promise<DeviceInfo[]> {
  const res = await fetch(`${httpUrl}/api/devices`);
  return (await res.json()) as DeviceInfo[];
}

const percentile = (values: number[], p: number) => [...values].sort((a, b) => a - b)[Math.min(values.length - 1, Math.floor(values.length * p))]!;

describe.skipIf(!claimed)('cluster', () => {
  beforeEach(freshDatabase);
  afterAll(async () => {
    await claimed?.release();
  });

  const inProcessNode = (dataDir: string, nodeId: string) => startTestHub({ dataDir, cluster: CLUSTER_URL, nodeId });

  async function processNode(dataDir: string, nodeId: string) {
    const [mqttPort, httpPort] = [await freePort(), await freePort()];
    const hub = spawnHub([
      '--cluster', CLUSTER_URL, '--node-id', nodeId, '--data-dir', dataDir, '--host', '127.0.0.1',
      '--mqtt-port', String(mqttPort), '--http-port', String(httpPort), '--allow-anonymous', '--log-level', 'warn',
    ]);
    const http = `http://127.0.0.1:${httpPort}`;
    await waitFor(() => fetch(`${http}/healthz`).then((r) => r.ok, () => false), { timeoutMs: 40_000, what: `${nodeId} up` }).catch((error: Error) => {
      throw new Error(`${error.message}\n${hub.output()}`);
    });
    return { ...hub, mqttPort, http, mqtt: `mqtt://127.0.0.1:${mqttPort}` };
  }

  it('three nodes are one hub: every node sees every device, requests and jobs cross nodes, a dead node\'s devices go offline', async () => {
    const dataDir = tempDir('rhizo-cluster-');
    const a = await inProcessNode(dataDir, 'node-a');
    const b = await inProcessNode(dataDir, 'node-b');
    const c = await processNode(dataDir, 'node-c');
    let cAlive = true;
    const lb = await loadBalancer(() => [a.ports.mqtt, b.ports.mqtt, ...(cAlive ? [c.mqttPort] : [])]);
    const lbUrl = `mqtt://127.0.0.1:${lb.port}`;

    // Through the balancer one by one, so each node gets one; c-direct has only node C.
    const onAll = (id: string) => waitFor(async () => a.device(id)?.online && b.device(id)?.online && (await restDevices(c.http)).find((d) => d.id === id)?.online, { timeoutMs: 20_000, what: `${id} online everywhere` });
    const agents = new Map<string, ReturnType<typeof spawnHypha>>();
    for (const id of ['lb-0', 'lb-1', 'lb-2']) {
      agents.set(id, spawnHypha(lbUrl, id));
      await onAll(id);
    }
    agents.set('c-direct', spawnHypha(c.mqtt, 'c-direct'));
    await onAll('c-direct');
    const ids = ['lb-0', 'lb-1', 'lb-2', 'c-direct'];

    // Every node lists every device, with the same holding node.
    const fromC = await restDevices(c.http);
    const nodeOf = (id: string) => a.device(id)!.node;
    for (const id of ids) {
      expect(b.device(id)!.node).toBe(nodeOf(id));
      expect(fromC.find((d) => d.id === id)!.node).toBe(nodeOf(id));
    }
    expect(new Set(ids.map(nodeOf))).toEqual(new Set(['node-a', 'node-b', 'node-c']));
    expect(nodeOf('c-direct')).toBe('node-c');
    const onC = ids.filter((id) => nodeOf(id) === 'node-c');

    // A Request through node A runs on a device held by node C; the Reply comes back.
    const client = await RequestClient.connect(a.urls.mqtt, 'ops-1');
    const reply = await client.request({ device: 'c-direct', order: 'exec_bash', cmd_str: 'echo from-$HOSTNAME-side' });
    expect(reply).toMatchObject({ status: 'ok', device: 'c-direct', exit_code: 0 });
    expect((reply as { result: string }).result).toMatch(/^from-.*-side$/);
    // The round trip as the hub sees it (an MQTT.js client adds its own delays on top).
    const latencies: number[] = [];
    for (let i = 0; i < 20; i++) {
      const started = performance.now();
      await a.exec('c-direct', 'true');
      latencies.push(performance.now() - started);
    }
    console.log(`cluster: command from node A to a device on node C: p50 ${percentile(latencies, 0.5).toFixed(1)} ms, max ${Math.max(...latencies).toFixed(1)} ms (20 round trips)`);
    // And the other way: through the process node C to devices on A and B (REST).
    for (const id of ids.filter((d) => nodeOf(d) !== 'node-c')) {
      const res = await fetch(`${c.http}/api/devices/${id}/commands`, { method: 'POST', body: JSON.stringify({ order: 'exec_bash', cmd_str: `echo ${id}` }) });
      expect(await res.json()).toMatchObject({ status: 'ok', result: id });
    }

    // REST on node B lists the whole fleet.
    const fromB = await restDevices(b.urls.http);
    for (const id of ids) expect(fromB.find((d) => d.id === id)).toMatchObject({ online: true, node: nodeOf(id) });

    // A job created on node A over every device succeeds on all of them.
    const job = a.jobs.create({ target: { tags: [] }, order: 'exec_bash', cmd_str: 'echo job' }, { actor: 'test', actorKind: 'api' });
    expect(job.targets).toBe(ids.length);
    const done = await waitFor(() => (a.jobs.get(job.id)?.state === 'done' ? a.jobs.get(job.id) : undefined), { timeoutMs: 30_000, what: 'the job done' });
    expect(done.counts.succeeded).toBe(ids.length);
    expect(done.targets.map((t) => t.result)).toEqual(ids.map(() => 'job'));

    // SIGKILL node C while a command to c-direct is in flight from node A.
    const inFlight = client.request({ device: 'c-direct', order: 'exec_bash', cmd_str: 'sleep 30', timeout_ms: 60_000 });
    await waitFor(() => a.inflight === 1, { what: 'the command in flight' });
    const offlineOn = (hub: Hub) => new Promise<number>((resolve) => {
      const listener = (device: DeviceInfo) => {
        if (device.id !== 'c-direct') return;
        hub.off('offline', listener);
        resolve(Date.now());
      };
      hub.on('offline', listener);
    });
    const [offA, offB] = [offlineOn(a), offlineOn(b)];
    const movedAt = new Map<string, number>();
    a.on('online', (device) => {
      if (device.node !== 'node-c' && onC.includes(device.id) && !movedAt.has(device.id)) movedAt.set(device.id, Date.now());
    });
    const killedAt = Date.now();
    cAlive = false;
    c.child.kill('SIGKILL');
    await c.exited;
    const answered = await inFlight;
    const answeredAt = Date.now();
    expect(answered).toMatchObject({ status: 'error', code: 'DEVICE_OFFLINE', device: 'c-direct' });
    const [tA, tB] = [(await offA) - killedAt, (await offB) - killedAt];
    console.log(`cluster: node C killed; c-direct offline on node A after ${tA} ms, on node B after ${tB} ms; the command in flight answered DEVICE_OFFLINE after ${answeredAt - killedAt} ms`);
    expect(Math.max(tA, tB)).toBeLessThan(10_000);
    expect(a.device('c-direct')).toMatchObject({ online: false, node: 'node-c' });
    expect(await client.request({ device: 'c-direct', order: 'exec_bash', cmd_str: 'true' })).toMatchObject({ status: 'error', code: 'DEVICE_OFFLINE' });

    // The agents that came through the balancer reconnect by themselves, to a surviving node.
    for (const id of onC.filter((d) => d !== 'c-direct')) {
      const moved = await waitFor(() => {
        const [onA, onB] = [a.device(id), b.device(id)];
        return onA?.online && onB?.online && onA.node !== 'node-c' && onA.node === onB.node ? onA : undefined;
      }, { timeoutMs: 20_000, what: `${id} back on a surviving node` });
      console.log(`cluster: ${id} reconnected through the balancer to ${moved.node}, online there as seen from node A ${movedAt.get(id)! - killedAt} ms after the kill`);
      expect(await client.request({ device: id, order: 'exec_bash', cmd_str: 'echo back' })).toMatchObject({ status: 'ok', result: 'back' });
    }
  }, 120_000);

  it('the console on any node shows the whole fleet and runs commands on devices held by other nodes', async () => {
    const dataDir = tempDir('rhizo-cluster-');
    const a = await inProcessNode(dataDir, 'node-a');
    const b = await inProcessNode(dataDir, 'node-b');
    spawnHypha(a.urls.mqtt, 'on-a');
    spawnHypha(b.urls.mqtt, 'on-b');
    await waitFor(() => ['on-a', 'on-b'].every((id) => a.device(id)?.online && b.device(id)?.online), { timeoutMs: 20_000, what: 'both agents online on both nodes' });

    // The console of node B (anonymous access: no login page).
    const page = await openPage();
    await page.goto(`${b.urls.http}/`);
    await page.waitForSelector('.connection[data-state="connected"]');
    await expect.poll(() => page.locator('.device-row.online').count(), { timeout: 10_000 }).toBe(2);
    await page.click('.device-row[data-id="on-a"]');
    await page.fill('.command-input', 'echo held by $((20+1))');
    await page.press('.command-input', 'Enter');
    const card = page.locator('.result').last();
    await card.locator('.result-foot, .result-status.error').first().waitFor();
    expect(await card.locator('.output.stdout pre').textContent()).toBe('held by 21');
  }, 60_000);

  it('a tunnel from a client on one node reaches a device held by another: a shell, a file both ways, a TCP connection; the client\'s node audits and records', async () => {
    const dataDir = tempDir('rhizo-cluster-');
    const a = await inProcessNode(dataDir, 'node-a');
    const b = await inProcessNode(dataDir, 'node-b');
    const root = tempDir('rhizo-files-');
    const home = process.env.HOME;
    process.env.HOME = tempDir('rhizo-home-');
    try {
      spawnHypha(a.urls.mqtt, 'far-away', ['--file-root', root]);
    } finally {
      process.env.HOME = home;
    }
    await waitFor(() => a.device('far-away')?.online && b.device('far-away')?.online, { timeoutMs: 20_000, what: 'the agent online on both nodes' });
    const web = createWebServer((req, res) => res.end(`device page ${req.url}`));
    await new Promise<void>((resolve) => web.listen(0, '127.0.0.1', resolve));
    cleanup(() => web.close());

    const client = await connect(b.urls.mqtt, { reconnectPeriodMs: 0 });
    cleanup(() => client.close());
    const device = client.device('far-away');
    const shell = await device.shell({ cols: 90, rows: 20 });
    let screen = '';
    shell.on('data', (bytes) => (screen += new TextDecoder().decode(bytes)));
    await shell.write('echo $((6*7))-$(tput cols)\nexit 5\n');
    const end = await shell.ended;
    expect(screen).toContain('42-90');
    expect(end.exit?.code).toBe(5);

    const bytes = randomBytes(2 * 1024 * 1024 + 17);
    const put = await device.upload(`${root}/crossed.bin`, bytes);
    const got = await device.download(`${root}/crossed.bin`);
    expect(got.sha256).toBe(put.sha256);
    expect(Buffer.compare(Buffer.from(got.bytes!), bytes)).toBe(0);

    const tcp = await device.connectTcp((web.address() as { port: number }).port, '127.0.0.1');
    let page = '';
    tcp.on('data', (chunk) => (page += new TextDecoder().decode(chunk)));
    await tcp.write('GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n');
    // Both halves closed (ours with eof, the server's after its answer) end the tunnel.
    await tcp.eof();
    await tcp.ended;
    expect(page).toMatch(/device page \/x$/);

    // The tunnels lived on node B: its relay audited them and recorded the shell.
    const closes = b.stores.audit.query({ device: 'far-away', action: 'tunnel.close', limit: 10 });
    expect(closes.map((entry) => (entry.detail as { kind: string }).kind).sort()).toEqual(['file_get', 'file_put', 'shell', 'tcp']);
    const recording = (closes.find((entry) => (entry.detail as { kind: string }).kind === 'shell')!.detail as { recording: string }).recording;
    expect(readFileSync(join(dataDir, 'recordings', `${recording}.cast`), 'utf8')).toContain('42-90');
  }, 60_000);

  it('a device on the original agent held by one node runs the commands another node sends it', async () => {
    const dataDir = tempDir('rhizo-cluster-');
    const a = await inProcessNode(dataDir, 'node-a');
    const b = await inProcessNode(dataDir, 'node-b');
    // The original agent's protocol: one command at a time, {"order":"response","result","error"} back.
    const ws = new WebSocket(`${a.urls.ws.replace(/\/mqtt$/, '')}/device`, { headers: { 'x-custome-id': 'old-pi', Authorization: 'Bearer 0000' } });
    ws.on('error', () => {});
    cleanup(() => ws.terminate());
    ws.on('message', (data) => {
      const { cmd_str: cmd } = JSON.parse(data.toString()) as { cmd_str: string };
      execFile('/bin/sh', ['-c', cmd], (_error, stdout, stderr) => ws.send(JSON.stringify({ order: 'response', result: stdout.trim(), error: stderr.trim() })));
    });
    await waitFor(() => b.device('old-pi')?.online, { timeoutMs: 20_000, what: 'the legacy device online on node B' });
    const client = await RequestClient.connect(b.urls.mqtt, 'ops-legacy');
    const replies = await Promise.all([1, 2, 3].map((n) => client.request({ device: 'old-pi', order: 'exec_bash', cmd_str: `echo legacy-$((${n}*7))` })));
    expect(replies.map((reply) => (reply as { result: string }).result)).toEqual(['legacy-7', 'legacy-14', 'legacy-21']);
    expect(await client.request({ device: 'old-pi', order: 'exec_bash_ret_okng_only', cmd_str: 'false' })).toMatchObject({ status: 'ok', result: 'ng' });
  }, 60_000);

  it('a node that only stalled comes back with its devices online on every node', async () => {
    const dataDir = tempDir('rhizo-cluster-');
    const a = await inProcessNode(dataDir, 'node-a');
    const c = await processNode(dataDir, 'node-c');
    spawnHypha(c.mqtt, 'stalls');
    await waitFor(() => a.device('stalls')?.online && a.device('stalls')?.node === 'node-c', { timeoutMs: 20_000, what: 'stalls online on node-c, seen from node-a' });

    // Frozen past the heartbeat lapse: node A takes it for dead and its device offline.
    c.child.kill('SIGSTOP');
    await waitFor(() => a.device('stalls')?.online === false, { timeoutMs: 10_000, what: 'stalls offline while node-c is frozen' });
    // Thawed: it re-announces its devices, maybe before node A sees its next heartbeat.
    c.child.kill('SIGCONT');
    await waitFor(() => a.device('stalls')?.online && a.device('stalls')?.node === 'node-c', { timeoutMs: 10_000, what: 'stalls online again on node-c, seen from node-a' });
    // And it stays so.
    await new Promise((resolve) => setTimeout(resolve, 2500));
    expect(a.device('stalls')).toMatchObject({ online: true, node: 'node-c' });
  }, 60_000);

  it('a device that reconnects through another node moves there without going offline anywhere', async () => {
    const dataDir = tempDir('rhizo-cluster-');
    const a = await inProcessNode(dataDir, 'node-a');
    const b = await inProcessNode(dataDir, 'node-b');
    const watcher = await inProcessNode(dataDir, 'node-w');
    const offline: string[] = [];
    for (const hub of [a, b, watcher]) hub.on('offline', (device) => offline.push(`${hub.config.nodeId}:${device.id}`));

    const first = await connectMqtt(a.urls.mqtt, { clientId: 'flip', clean: false });
    await first.subscribeAsync('rhizosphere/devices/flip/command', { qos: 1 });
    await waitFor(() => watcher.device('flip')?.node === 'node-a' && b.device('flip')?.online, { what: 'flip online on node-a everywhere' });

    const second = await connectMqtt(b.urls.mqtt, { clientId: 'flip', clean: false });
    await second.subscribeAsync('rhizosphere/devices/flip/command', { qos: 1 });
    await waitFor(() => [a, b, watcher].every((hub) => hub.device('flip')?.node === 'node-b' && hub.device('flip')?.online), { what: 'flip on node-b everywhere' });
    await new Promise((r) => setTimeout(r, 1500));
    expect(offline).toEqual([]);
    expect([a, b, watcher].map((hub) => hub.device('flip')?.online)).toEqual([true, true, true]);
    expect(a.status('flip')).toMatchObject({ online: true, node: 'node-b' });

    // A command from node A reaches the device's new connection on node B.
    second.on('message', (topic, payload) => {
      const command = JSON.parse(payload.toString()) as { id: string };
      void second.publishAsync('rhizosphere/devices/flip/response', JSON.stringify({ type: 'response', id: command.id, result: 'moved', error: '', exit_code: 0, duration_ms: 1, truncated: false }), { qos: 1 });
    });
    expect(await a.exec('flip', 'anything')).toMatchObject({ result: 'moved' });
  }, 60_000);

  it('a session\'s QoS 1 queue stays on its node while it is connected, and reaches Redis and the next node when it drops', async () => {
    const dataDir = tempDir('rhizo-cluster-');
    const a = await inProcessNode(dataDir, 'node-a');
    const b = await inProcessNode(dataDir, 'node-b');
    const redis = new Redis(CLUSTER_URL);
    cleanup(() => redis.quit());

    // A device that answers, on node A: commands from node B come and go without touching its Redis queue.
    const answering = await connectMqtt(a.urls.mqtt, { clientId: 'q-answers', clean: false });
    answering.on('message', (_topic, payload) => {
      const command = JSON.parse(payload.toString()) as { id: string };
      void answering.publishAsync('rhizosphere/devices/q-answers/response', JSON.stringify({ type: 'response', id: command.id, result: 'ok', error: '', exit_code: 0 }), { qos: 1 });
    });
    await answering.subscribeAsync('rhizosphere/devices/q-answers/command', { qos: 1 });
    await waitFor(() => b.device('q-answers')?.online, { what: 'q-answers online on node B' });
    const pushes = async () => Number((await redis.info('commandstats')).match(/cmdstat_rpush:calls=(\d+)/)?.[1] ?? 0);
    const before = await pushes();
    for (let i = 0; i < 20; i++) expect(await b.exec('q-answers', `n${i}`)).toMatchObject({ result: 'ok' });
    expect(await pushes()).toBe(before);
    expect(await redis.llen('outgoing:q-answers')).toBe(0);

    // A device that receives a command and drops before its PUBACK: the command is written to its
    // Redis queue then, and its next connection, on node B, gets it.
    const silent = await connectMqtt(a.urls.mqtt, { clientId: 'q-drops', clean: false });
    // MQTT.js sends the PUBACK once handleMessage calls back: this one never does.
    silent.handleMessage = () => {};
    const received = new Promise<string>((r) => silent.on('message', (_topic, payload) => r(JSON.parse(payload.toString()).cmd_str as string)));
    await silent.subscribeAsync('rhizosphere/devices/q-drops/command', { qos: 1 });
    await waitFor(() => b.device('q-drops')?.online, { what: 'q-drops online on node B' });
    const reply = b.exec('q-drops', 'echo kept').catch((error: Error) => error.message);
    expect(await received).toBe('echo kept');
    expect(await redis.llen('outgoing:q-drops')).toBe(0);
    silent.stream.destroy();
    expect(await reply).toMatch(/disconnected before it answered/);
    await waitFor(async () => (await redis.llen('outgoing:q-drops')) === 1, { what: 'the unacknowledged command in Redis' });

    const again = mqtt.connect(b.urls.mqtt, { clientId: 'q-drops', clean: false, protocolVersion: 4, reconnectPeriod: 0 });
    cleanup(() => again.endAsync(true));
    const redelivered = await new Promise<string>((r) => again.on('message', (_topic, payload) => r(JSON.parse(payload.toString()).cmd_str as string)));
    expect(redelivered).toBe('echo kept');
    await waitFor(async () => (await redis.llen('outgoing:q-drops')) === 0, { what: 'the queue emptied by the PUBACK' });
  }, 60_000);
});

describe('cluster start', () => {
  it('a Redis that cannot be reached ends the start with one line naming --cluster, exit 2', async () => {
    const port = await freePort();
    const hub = spawnHub(['--cluster', `redis://127.0.0.1:${port}`, '--data-dir', tempDir(), '--mqtt-port', '0', '--http-port', '0']);
    expect(await hub.exited).toMatchObject({ code: 2 });
    expect(hub.output()).toContain(`--cluster redis://127.0.0.1:${port}`);
    expect(hub.output()).toContain('cannot reach Redis (ECONNREFUSED)');
  }, 20_000);

  it('a --cluster value that is not a redis:// URL is refused', async () => {
    const hub = spawnHub(['--cluster', 'http://127.0.0.1:6379', '--data-dir', tempDir()]);
    expect(await hub.exited).toMatchObject({ code: 2 });
    expect(hub.output()).toContain('--cluster');
    expect(hub.output()).toContain('redis://');
  }, 20_000);
});
