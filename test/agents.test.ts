/**
 * The whole round trip with real hypha agents running real bash: client → hub → agent →
 * hub → client, over both transports.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { startAgent } from '../src/hypha/agent.js';
import type { Hub } from '../src/index.js';
import { cleanup, freePort, isGone, RequestClient, spawnHub, startAgents, startTestHub, tempDir, waitFor } from './helpers.js';

function readIfExists(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return '';
  }
}

describe.each([
  ['tcp', (hub: Hub) => hub.urls.mqtt, 'mqtt'],
  ['ws', (hub: Hub) => hub.urls.ws, 'mqtt-ws'],
] as const)('orders with a real agent over %s', (_name, urlOf, transport) => {
  it('runs exec_bash with stdout, stderr and exit code', async () => {
    const hub = await startTestHub();
    await startAgents(hub, ['pi-a'], urlOf(hub));
    expect(hub.device('pi-a')!.transport).toBe(transport);
    const client = await RequestClient.connect(hub.urls.mqtt, 'console-a');
    const reply = await client.request({ id: 'c-1', device: 'pi-a', order: 'exec_bash', cmd_str: 'echo "out put"; echo oops >&2; printf "\\n\\n"; exit 3' });
    expect(reply).toMatchObject({ id: 'c-1', device: 'pi-a', status: 'ok', result: 'out put', error: 'oops', exit_code: 3, truncated: false });
    expect(reply.status === 'ok' && typeof reply.duration_ms).toBe('number');
    expect(await client.request({ device: 'pi-a', order: 'exec_bash', cmd_str: 'uname -s' })).toMatchObject({ result: 'Linux', exit_code: 0 });
  });

  it('answers ok/ng and returns at once for exec_bash_no_return', async () => {
    const hub = await startTestHub();
    await startAgents(hub, ['pi-b'], urlOf(hub));
    const client = await RequestClient.connect(hub.urls.mqtt, 'console-b');
    expect(await client.request({ device: 'pi-b', order: 'exec_bash_ret_okng_only', cmd_str: 'true' })).toMatchObject({ status: 'ok', result: 'ok' });
    expect(await client.request({ device: 'pi-b', order: 'exec_bash_ret_okng_only', cmd_str: 'false' })).toMatchObject({ status: 'ok', result: 'ng' });
    const marker = join(tempDir(), 'done');
    const started = Date.now();
    const reply = await client.request({ device: 'pi-b', order: 'exec_bash_no_return', cmd_str: `sleep 1; echo x > ${marker}` });
    expect(reply).toMatchObject({ status: 'ok', result: null });
    expect(Date.now() - started).toBeLessThan(900);
    // It ran on after the answer.
    await waitFor(() => readIfExists(marker).trim() === 'x', { what: 'the no-return command to finish' });
  });

  it('caps output at 1 MiB per stream and says so', async () => {
    const hub = await startTestHub();
    await startAgents(hub, ['pi-c'], urlOf(hub));
    const client = await RequestClient.connect(hub.urls.mqtt, 'console-c');
    const reply = await client.request({ device: 'pi-c', order: 'exec_bash', cmd_str: "head -c 3000000 /dev/zero | tr '\\0' a; head -c 1500000 /dev/zero | tr '\\0' b >&2" });
    expect(reply).toMatchObject({ status: 'ok', exit_code: 0, truncated: true });
    if (reply.status !== 'ok') throw new Error('unreachable');
    expect(reply.result).toHaveLength(1024 * 1024);
    expect(reply.error).toHaveLength(1024 * 1024);
  });

  it('kills a command that runs past timeout_ms with its children and answers TIMEOUT', async () => {
    const hub = await startTestHub();
    await startAgents(hub, ['pi-d'], urlOf(hub));
    const client = await RequestClient.connect(hub.urls.mqtt, 'console-d');
    const pids = join(tempDir(), 'pids');
    const started = Date.now();
    const reply = await client.request({
      device: 'pi-d',
      order: 'exec_bash',
      cmd_str: `sleep 300 & echo $! >> ${pids}; (sleep 300 & echo $! >> ${pids}; wait) & echo $$ >> ${pids}; wait`,
      timeout_ms: 1000,
    });
    expect(reply).toMatchObject({ status: 'error', code: 'TIMEOUT' });
    expect(Date.now() - started).toBeLessThan(3500);
    const list = readFileSync(pids, 'utf8').trim().split('\n').map(Number);
    expect(list).toHaveLength(3);
    await waitFor(() => list.every(isGone), { timeoutMs: 3000, what: 'the command and its children to be gone' });
  });
});

describe('agents and the hub', () => {
  it('answers DEVICE_OFFLINE at once when the agent is killed mid-command, and shows it offline within 2 s', async () => {
    const hub = await startTestHub();
    const [agent] = await startAgents(hub, ['pi-k']);
    const client = await RequestClient.connect(hub.urls.mqtt, 'console-k');
    const statuses: boolean[] = [];
    client.client.on('message', (topic, payload) => {
      if (topic === 'rhizosphere/devices/pi-k/status') statuses.push((JSON.parse(payload.toString()) as { online: boolean }).online);
    });
    await client.client.subscribeAsync('rhizosphere/devices/pi-k/status', { qos: 1 });
    await waitFor(() => statuses.includes(true));

    const pending = client.request({ device: 'pi-k', order: 'exec_bash', cmd_str: 'sleep 30', timeout_ms: 60_000 });
    await waitFor(() => hub.inflight === 1);
    await new Promise((r) => setTimeout(r, 200)); // the command is running on the agent
    const killed = Date.now();
    agent!.child.kill('SIGKILL');
    expect(await pending).toMatchObject({ status: 'error', code: 'DEVICE_OFFLINE' });
    await waitFor(() => statuses.at(-1) === false, { timeoutMs: 2000, what: 'the offline status' });
    expect(Date.now() - killed).toBeLessThan(2000);
    expect(hub.device('pi-k')!.online).toBe(false);
  });

  it('matches many concurrent commands on 50 agents to the right callers', async () => {
    const hub = await startTestHub();
    const ids = Array.from({ length: 50 }, (_, i) => `node-${String(i).padStart(2, '0')}`);
    // Real agents (real MQTT connections, real bash) in this process, to keep 50 of them light.
    const agents = await Promise.all(ids.map((id) => startAgent({ url: hub.urls.mqtt, id, logLevel: 'error', maxConcurrent: 4 })));
    cleanup(() => Promise.all(agents.map((a) => a.stop())));
    await waitFor(() => ids.every((id) => hub.device(id)?.online), { timeoutMs: 15_000, what: '50 agents online' });

    const clients = await Promise.all([1, 2, 3].map((n) => RequestClient.connect(hub.urls.mqtt, `console-${n}`)));
    const jobs = ids.flatMap((id, i) =>
      [0, 1, 2, 3, 4, 5].map((k) => {
        const client = clients[(i + k) % clients.length]!;
        return client
          .request({ id: `${id}-${k}`, device: id, order: 'exec_bash', cmd_str: `echo "$(hostname >/dev/null; echo ${id}) ${k}"` })
          .then((reply) => ({ reply, expected: `${id} ${k}`, id: `${id}-${k}`, device: id }));
      }),
    );
    const results = await Promise.all(jobs);
    expect(results).toHaveLength(300);
    for (const { reply, expected, id, device } of results) {
      expect(reply).toMatchObject({ status: 'ok', id, device, result: expected, exit_code: 0 });
    }
    expect(hub.inflight).toBe(0);
  });

  // mosquitto_sub needs -i: without it, it sends an empty client id, which the contract refuses.
  it('lets a plain third-party MQTT client (mosquitto_sub) see the retained statuses', async () => {
    const hub = await startTestHub();
    await startAgents(hub, ['pi-x', 'pi-y']);
    const sub = spawn('mosquitto_sub', ['-h', '127.0.0.1', '-p', String(hub.ports.mqtt), '-i', 'status-watcher', '-t', 'rhizosphere/devices/+/status', '-v', '-C', '2', '-W', '10'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    sub.stdout.on('data', (c: Buffer) => (out += c.toString()));
    const code = await new Promise<number | null>((resolve, reject) => {
      sub.once('error', (error) => reject(new Error(`mosquitto_sub could not run (install mosquitto-clients): ${error.message}`)));
      sub.once('exit', resolve);
    });
    expect(code).toBe(0);
    const lines = out.trim().split('\n').sort();
    expect(lines).toHaveLength(2);
    // `agent` from hypha's birth (docs/protocol.md "Status").
    expect(lines[0]).toMatch(/^rhizosphere\/devices\/pi-x\/status \{"online":true,"since":"[^"]+","transport":"mqtt","tags":\[\],"agent":"hypha\/[^"]+"\}$/);
    expect(lines[1]).toMatch(/^rhizosphere\/devices\/pi-y\/status \{"online":true/);
  });

  it('brings agents back by themselves after a hub restart', async () => {
    const [mqttPort, httpPort] = [await freePort(), await freePort()];
    const dataDir = tempDir();
    const args = ['--mqtt-port', String(mqttPort), '--http-port', String(httpPort), '--data-dir', dataDir, '--log-level', 'warn', '--allow-anonymous'];
    const online = async () => {
      const res = await fetch(`http://127.0.0.1:${httpPort}/api/devices/pi-r`).catch(() => null);
      return res?.ok ? ((await res.json()) as { online: boolean }).online : false;
    };
    const first = spawnHub(args);
    await waitFor(async () => (await fetch(`http://127.0.0.1:${httpPort}/healthz`).catch(() => null))?.ok, { what: 'hub up' });
    const { spawnHypha } = await import('./helpers.js');
    const agent = spawnHypha(`mqtt://127.0.0.1:${mqttPort}`, 'pi-r', ['--log-level', 'info']);
    await waitFor(online, { what: 'agent online' });

    first.child.kill('SIGTERM');
    expect((await first.exited).code).toBe(0);
    const second = spawnHub(args);
    cleanup(() => second.child.kill('SIGKILL'));
    await waitFor(async () => (await fetch(`http://127.0.0.1:${httpPort}/healthz`).catch(() => null))?.ok, { what: 'hub up again' });
    await waitFor(online, { timeoutMs: 15_000, what: 'agent back online' });

    const res = await fetch(`http://127.0.0.1:${httpPort}/api/devices/pi-r/commands`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ order: 'exec_bash', cmd_str: 'echo back' }),
    });
    expect(await res.json()).toMatchObject({ status: 'ok', result: 'back' });
    expect(agent.output()).toMatch(/retry/i);
  });
});
