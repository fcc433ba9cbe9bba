/**
 * `--cluster` with nodes as on several machines: each hub process has its own --data-dir (its
 * own SQLite file); devices, users, API tokens and browser sessions reach the others through
 * Redis. Real hub processes, the real admin CLI, real hypha agents. Needs Redis like
 * test/cluster.test.ts (a claimed empty database).
 */
import { spawn } from 'node:child_process';
import type { MqttClient } from 'mqtt';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { cleanup, connectMqtt, freePort, HUB_BIN, spawnHub, spawnHypha, tempDir, waitFor } from './helpers.js';
import { claimDatabase } from './redis-claim.js';

const claimed = await claimDatabase();
if (!claimed) console.warn('cluster-machines tests skipped: no Redis, or no empty database 1-15 in it');

/** `rhizosphere NOUN VERB … --data-dir DIR --json`: its one JSON line. */
function cli(dataDir: string, args: string[], stdin?: string): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [HUB_BIN, ...args, '--data-dir', dataDir, '--json'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let [out, err] = ['', ''];
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    child.stdin.end(stdin ?? '');
    child.once('exit', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').at(-1)!) as Record<string, unknown>) : reject(new Error(`rhizosphere ${args.join(' ')}: exit ${code}: ${err}`))));
  });
}

/** Whether an MQTT connection with these credentials is accepted; the refusal's message otherwise. */
async function mqttRefusal(url: string, clientId: string, username: string, password: string): Promise<string | null> {
  try {
    const client = await connectMqtt(url, { clientId, username, password, reconnectPeriod: 0 });
    await client.endAsync(true);
    return null;
  } catch (error) {
    return (error as Error).message || 'refused';
  }
}

describe.skipIf(!claimed)('cluster of nodes with their own data directories', () => {
  beforeEach(() => claimed!.fresh());
  afterAll(() => claimed?.release());

  async function node(nodeId: string, dataDir = tempDir(`rhizo-${nodeId}-`)) {
    const [mqttPort, httpPort] = [await freePort(), await freePort()];
    const hub = spawnHub([
      '--cluster', claimed!.url, '--node-id', nodeId, '--data-dir', dataDir, '--host', '127.0.0.1',
      '--mqtt-port', String(mqttPort), '--http-port', String(httpPort), '--log-level', 'warn',
    ]);
    const http = `http://127.0.0.1:${httpPort}`;
    await waitFor(() => fetch(`${http}/readyz`).then((r) => r.ok, () => false), { timeoutMs: 20_000, what: `${nodeId} ready` }).catch((error: Error) => {
      // What the node said (or that it said nothing) is the only clue to a start that hung.
      throw new Error(`${error.message}; its output: ${hub.output().slice(-2000) || '(none)'}`);
    });
    return { ...hub, nodeId, dataDir, http, mqtt: `mqtt://127.0.0.1:${mqttPort}`, ws: `ws://127.0.0.1:${httpPort}/mqtt` };
  }

  /** The first node of a cluster: starts on an empty data dir, so it creates the admin and shows its password once. */
  async function firstNode(nodeId: string) {
    const first = await node(nodeId);
    const password = await waitFor(() => /created user "admin" with password\s+(\S+)/.exec(first.output())?.[1], { what: 'the first admin password' });
    return { ...first, adminPassword: password };
  }

  const bearer = (secret: string) => ({ authorization: `Bearer ${secret}` });
  const restDevices = async (http: string, secret: string) => (await (await fetch(`${http}/api/devices`, { headers: bearer(secret) })).json()) as { id: string; online: boolean; node?: string }[];

  it('a device registered on one node\'s data dir serves commands through any node; rotated or removed on another\'s, it is dropped and refused everywhere', async () => {
    const a = await firstNode('node-a');
    const [b, c] = await Promise.all([node('node-b'), node('node-c')]);
    const ops = (await cli(a.dataDir, ['token', 'add', 'ops', '--role', 'operator'])).token as string;
    const device = (await cli(a.dataDir, ['device', 'add', 'pi-1', '--tag', 'kitchen'])).token as string;

    // The agent connects to node C with the token registered through node A's data dir; a command requested through node B runs on it.
    const agent = spawnHypha(c.mqtt, 'pi-1', ['--token', device]);
    await waitFor(async () => (await restDevices(b.http, ops).catch(() => [])).find((d) => d.id === 'pi-1' && d.online && d.node === 'node-c'), { timeoutMs: 15_000, what: 'pi-1 online on node C, seen from node B' });
    const res = await fetch(`${b.http}/api/devices/pi-1/commands`, { method: 'POST', headers: { ...bearer(ops), 'content-type': 'application/json' }, body: JSON.stringify({ order: 'exec_bash', cmd_str: 'echo ran-on-$((6*7))' }) });
    expect(await res.json()).toMatchObject({ status: 'ok', result: 'ran-on-42' });

    // Rotated on node B's data dir: the live connection on node C drops, the old token is refused on every node.
    let started = Date.now();
    const rotated = (await cli(b.dataDir, ['device', 'rotate', 'pi-1'])).token as string;
    await waitFor(async () => (await restDevices(a.http, ops)).find((d) => d.id === 'pi-1')?.online === false, { timeoutMs: 10_000, what: 'pi-1 dropped after the rotation' });
    const rotateMs = Date.now() - started;
    for (const hub of [a, b, c]) expect(await mqttRefusal(hub.mqtt, 'pi-1', 'pi-1', device), `old token on ${hub.nodeId}`).toMatch(/Bad username or password|refused/i);
    agent.child.kill('SIGKILL');
    await agent.exited;

    // With the new token on node C again; removed on node B's data dir: dropped, and refused everywhere.
    spawnHypha(c.mqtt, 'pi-1', ['--token', rotated]);
    await waitFor(async () => (await restDevices(a.http, ops)).find((d) => d.id === 'pi-1')?.online, { timeoutMs: 15_000, what: 'pi-1 back with the new token' });
    started = Date.now();
    await cli(b.dataDir, ['device', 'remove', 'pi-1']);
    await waitFor(async () => (await restDevices(c.http, ops)).every((d) => d.id !== 'pi-1'), { timeoutMs: 10_000, what: 'pi-1 gone from node C' });
    const removeMs = Date.now() - started;
    for (const hub of [a, b, c]) expect(await mqttRefusal(hub.mqtt, 'pi-1', 'pi-1', rotated), `removed device on ${hub.nodeId}`).not.toBeNull();
    // Past the one-second batch in which node C records what it last saw of the device: that
    // record must not bring the row back (tokenless) on any node.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    for (const hub of [a, b, c]) expect(((await cli(hub.dataDir, ['device', 'list'])).devices as { id: string }[]).map((d) => d.id), `devices on ${hub.nodeId}`).toEqual([]);
    console.log(`cluster-machines: rotation on node B's data dir dropped the agent on node C after ${rotateMs} ms; removal gone from node C's table after ${removeMs} ms (both from the admin command's start)`);
  }, 60_000);

  it('people: a user added on one node logs in on another; a session cookie and a console token work on every node until logout', async () => {
    const a = await firstNode('node-a');
    const [b, c] = await Promise.all([node('node-b'), node('node-c')]);
    await cli(a.dataDir, ['user', 'add', 'olga', '--role', 'operator', '--password-stdin'], 'olga-password-1\n');

    // Logs in on node C with the password set on node A.
    const login = (http: string) => fetch(`${http}/api/login`, { method: 'POST', body: JSON.stringify({ name: 'olga', password: 'olga-password-1' }) });
    await waitFor(async () => (await login(c.http)).ok, { timeoutMs: 5000, what: 'olga logs in on node C' });

    // A browser session from node A works on node B's REST API.
    const res = await login(a.http);
    expect(res.ok).toBe(true);
    const cookie = res.headers.get('set-cookie')!.split(';')[0]!;
    await waitFor(async () => (await fetch(`${b.http}/api/devices`, { headers: { cookie } })).ok, { timeoutMs: 5000, what: 'the session of node A accepted on node B' });

    // The console's MQTT token, issued by node A, lets the console's WebSocket in on node B.
    const session = (await (await fetch(`${a.http}/api/session`, { headers: { cookie } })).json()) as { mqtt: { username: string; password: string } };
    const consoleOnB: MqttClient = await connectMqtt(b.ws, { clientId: 'console-olga', username: session.mqtt.username, password: session.mqtt.password });
    const dropped = new Promise<number>((resolve) => consoleOnB.once('close', () => resolve(Date.now())));

    // Logout on node A: the console connection on node B ends, and the token is refused there.
    const loggedOut = Date.now();
    expect((await fetch(`${a.http}/api/logout`, { method: 'POST', headers: { cookie } })).ok).toBe(true);
    const droppedAfter = (await dropped) - loggedOut;
    expect(await mqttRefusal(b.ws, 'console-olga-2', session.mqtt.username, session.mqtt.password)).not.toBeNull();
    expect((await fetch(`${b.http}/api/devices`, { headers: { cookie } })).status).toBe(401);
    console.log(`cluster-machines: logout on node A ended the console connection on node B after ${droppedAfter} ms`);
  }, 60_000);

  it('changes made on a data dir while its node is down reach the cluster when it starts, removals included', async () => {
    const dirA = tempDir('rhizo-node-a-');
    let a = await node('node-a', dirA);
    const b = await node('node-b');
    await cli(dirA, ['device', 'add', 'doomed']);
    const onB = async () => ((await cli(b.dataDir, ['device', 'list'])).devices as { id: string }[]).map((d) => d.id);
    await waitFor(async () => (await onB()).includes('doomed'), { timeoutMs: 5000, what: 'doomed on node B' });

    a.child.kill('SIGTERM');
    await a.exited;
    await cli(dirA, ['device', 'add', 'late-1']);
    await cli(dirA, ['device', 'remove', 'doomed']);
    // Not before node A is back: nothing else reads its data dir.
    await new Promise((resolve) => setTimeout(resolve, 600));
    expect(await onB()).toEqual(['doomed']);

    a = await node('node-a', dirA);
    await waitFor(async () => (await onB()).join() === 'late-1', { timeoutMs: 5000, what: 'late-1 added and doomed removed on node B' });
    // And stays removed on node A too (not resurrected from the cluster).
    await new Promise((resolve) => setTimeout(resolve, 600));
    expect(((await cli(dirA, ['device', 'list'])).devices as { id: string }[]).map((d) => d.id)).toEqual(['late-1']);
    expect(await onB()).toEqual(['late-1']);
  }, 60_000);

  it('a node joining with an empty data dir creates no admin of its own and accepts the cluster\'s', async () => {
    const a = await firstNode('node-a');
    const d = await node('node-d');
    const res = await fetch(`${d.http}/api/login`, { method: 'POST', body: JSON.stringify({ name: 'admin', password: a.adminPassword }) });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({ name: 'admin', role: 'admin' });
    expect(d.output()).not.toContain('first start');
    expect(((await cli(d.dataDir, ['user', 'list'])).users as { name: string }[]).map((u) => u.name)).toEqual(['admin']);
  }, 30_000);
});
