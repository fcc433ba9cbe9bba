/**
 * The agent as a whole: its command line, its backoff, and how it treats what arrives on
 * its command topic. Commands are published straight into a bare Aedes broker here, since
 * the hub (rightly) lets no client publish on a device's command topic.
 */
import { spawnSync } from 'node:child_process';
import { createServer } from 'node:net';
import { Aedes } from 'aedes';
import { describe, expect, it } from 'vitest';
import { backoffDelay, startAgent } from '../src/hypha/agent.js';
import type { Response } from '../src/protocol/schemas.js';
import { cleanup, freePort, HYPHA_BIN, spawnHypha, startTestHub, waitFor, connectMqtt } from './helpers.js';

function runHypha(args: string[], env: Record<string, string> = {}) {
  return spawnSync(process.execPath, [HYPHA_BIN, ...args], { encoding: 'utf8', timeout: 15_000, env: { ...process.env, ...env } });
}

async function bareBroker(port = 0, options: Parameters<typeof Aedes.createBroker>[0] = {}) {
  const broker = await Aedes.createBroker(options);
  const server = createServer((socket) => broker.handle(socket));
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  cleanup(() => new Promise<void>((r) => broker.close(() => server.close(() => r()))));
  return { broker, port: (server.address() as { port: number }).port };
}

describe('hypha command line', () => {
  it('documents every flag and its variable in --help', () => {
    const result = runHypha(['--help']);
    expect(result.status).toBe(0);
    for (const word of ['--url', '--id', '--token', '--topic-prefix', '--keepalive', '--max-concurrent', '--max-queue', '--output-cap', '--ca', '--log-level', 'HYPHA_URL', 'HYPHA_TOKEN']) {
      expect(result.stdout).toContain(word);
    }
  });

  it('ends a bad start with one line and status 2', () => {
    const cases: [string[], Record<string, string>][] = [
      [[], {}],
      [['--url', 'http://hub:80'], {}],
      [['--url', 'mqtt://127.0.0.1:1', '--id', 'a/b'], {}],
      [['--url', 'mqtt://127.0.0.1:1', '--id', ''], {}],
      [['--url', 'mqtt://127.0.0.1:1', '--keepalive', '-3'], {}],
      [['--url', 'mqtt://127.0.0.1:1', '--max-concurrent', 'many'], {}],
      [['--url', 'mqtt://127.0.0.1:1', '--bogus'], {}],
      [['--id', 'pi'], { HYPHA_URL: 'ftp://x' }],
    ];
    for (const [args, env] of cases) {
      const result = runHypha(args, { HYPHA_URL: '', ...env });
      expect(result.status, args.join(' ')).toBe(2);
      const lines = result.stderr.trim().split('\n');
      expect(lines, result.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(/^hypha: /);
    }
  });

  it('stops on SIGTERM with a clean DISCONNECT: offline once, reason disconnect, exit 0', async () => {
    const hub = await startTestHub();
    const agent = spawnHypha(hub.urls.mqtt, 'pi-term');
    await waitFor(() => hub.device('pi-term')?.online, { what: 'online' });
    const watcher = await connectMqtt(hub.urls.mqtt, { clientId: 'watch-term' });
    const statuses: boolean[] = [];
    watcher.on('message', (_t, payload) => statuses.push((JSON.parse(payload.toString()) as { online: boolean }).online));
    await watcher.subscribeAsync('rhizosphere/devices/pi-term/status', { qos: 1 });
    await waitFor(() => statuses.length === 1);
    const reasons: string[] = [];
    hub.on('offline', (_d, reason) => reasons.push(reason));

    agent.child.kill('SIGTERM');
    expect(await agent.exited).toBe(0);
    await waitFor(() => hub.device('pi-term')?.online === false);
    await new Promise((r) => setTimeout(r, 200));
    expect(reasons).toEqual(['disconnect']);
    expect(statuses).toEqual([true, false]);
    expect(agent.output()).toMatch(/stopped/);
  });
});

describe('hypha backoff', () => {
  it('--simulate N runs N real agents in one process, PREFIX-000 …, all commanded by a job, all stopped by SIGTERM', async () => {
    const hub = await startTestHub();
    const fleet = spawnHypha(hub.urls.mqtt, 'sim', ['--simulate', '5', '--log-level', 'warn']);
    const ids = ['sim-000', 'sim-001', 'sim-002', 'sim-003', 'sim-004'];
    await waitFor(() => ids.every((id) => hub.device(id)?.online), { timeoutMs: 15_000, what: 'five simulated devices online' });
    const created = hub.jobs.create({ target: { devices: ids }, order: 'exec_bash', cmd_str: 'echo ran' }, { actor: 'test', actorKind: 'token' });
    await waitFor(() => hub.jobs.get(created.id)?.state === 'done', { what: 'the job done' });
    expect(hub.jobs.get(created.id)!.targets.map((t) => [t.device, t.state, t.result])).toEqual(ids.map((id) => [id, 'succeeded', 'ran']));
    fleet.child.kill('SIGTERM');
    expect(await fleet.exited).toBe(0);
    await waitFor(() => ids.every((id) => hub.device(id)?.online === false), { what: 'all offline' });

    expect(runHypha(['--url', 'mqtt://127.0.0.1:1', '--simulate', '3'], { HYPHA_ID: '' }).stderr).toMatch(/^hypha: --simulate needs --id PREFIX/);
    const tokened = runHypha(['--url', 'mqtt://127.0.0.1:1', '--id', 'sim', '--simulate', '3', '--token', 'x']);
    expect([tokened.status, tokened.stderr]).toEqual([2, expect.stringContaining('a token belongs to one device')]);
    expect(runHypha(['--url', 'mqtt://127.0.0.1:1', '--id', 'sim', '--simulate', '0']).status).toBe(2);
  });

  it('draws each delay uniformly below min(cap, base * 2^attempt)', () => {
    expect(backoffDelay(0, 500, 30_000, () => 0)).toBe(0);
    expect(backoffDelay(0, 500, 30_000, () => 0.999999)).toBe(499);
    expect(backoffDelay(3, 500, 30_000, () => 0.5)).toBe(2000);
    expect(backoffDelay(10, 500, 30_000, () => 0.999999)).toBe(29_999);
    expect(backoffDelay(1000, 500, 30_000, () => 0.5)).toBe(15_000);
    const draws = Array.from({ length: 2000 }, () => backoffDelay(4, 500, 30_000));
    expect(Math.min(...draws)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...draws)).toBeLessThan(8000);
    // Full jitter spreads a fleet over the whole window, not around its end.
    expect(draws.filter((d) => d < 4000).length).toBeGreaterThan(800);
  });

  it('retries with growing delays while the hub is down, and connects once it is up', async () => {
    const port = await freePort();
    const agent = await startAgent({ url: `mqtt://127.0.0.1:${port}`, id: 'pi-back', logLevel: 'error', backoffBaseMs: 40, backoffCapMs: 320, random: () => 0.999 });
    cleanup(() => agent.stop());
    const delays: number[] = [];
    agent.on('retry', ({ delayMs }) => delays.push(delayMs));
    await waitFor(() => delays.length >= 5, { what: 'five retries' });
    expect(delays.slice(0, 5)).toEqual([39, 79, 159, 319, 319]);

    await bareBroker(port);
    await agent.firstConnect;
    expect(agent.connected).toBe(true);
  });
});

describe('hypha command intake', () => {
  it('ends a connection whose command subscription the broker refuses and connects again, backing off further each time, until it is granted', async () => {
    // As a NATS node refuses a SUBSCRIBE whose JetStream consumer it could not create in time.
    let refuse = true;
    const { broker, port } = await bareBroker(0, {
      authorizeSubscribe: (_client, subscription, callback) => callback(null, refuse && subscription.topic.endsWith('/command') ? null : subscription),
    });
    const agent = await startAgent({ url: `mqtt://127.0.0.1:${port}`, id: 'pi-refused', logLevel: 'error', backoffBaseMs: 50, backoffCapMs: 400 });
    cleanup(() => agent.stop());
    const retries: { attempt: number; reason: string }[] = [];
    agent.on('retry', ({ attempt, reason }) => retries.push({ attempt, reason }));
    await waitFor(() => retries.length >= 3, { what: 'three refused connections' });
    expect(retries[0]!.reason).toBe('the broker refused the subscription to rhizosphere/devices/pi-refused/command');
    // The backoff grows across refusals instead of starting over at each CONNACK.
    expect(retries.slice(0, 3).map((retry) => retry.attempt)).toEqual([1, 2, 3]);

    refuse = false;
    const answers: Response[] = [];
    broker.subscribe('rhizosphere/devices/pi-refused/response', (packet, done) => {
      answers.push(JSON.parse(packet.payload.toString()) as Response);
      done();
    }, () => {});
    let n = 0;
    const answer = await waitFor(
      async () => {
        const command = { type: 'command', id: `c-${n++}`, order: 'exec_bash', cmd_str: 'echo granted', timeout_ms: 5000 };
        broker.publish({ cmd: 'publish', topic: 'rhizosphere/devices/pi-refused/command', payload: Buffer.from(JSON.stringify(command)), qos: 1, retain: false, dup: false }, () => {});
        await new Promise((r) => setTimeout(r, 200));
        return answers.find((reply) => reply.result === 'granted');
      },
      { timeoutMs: 10_000, what: 'an answer once the subscription is granted' },
    );
    expect(answer).toMatchObject({ exit_code: 0 });
    expect(agent.connected).toBe(true);
  });

  it('answers an invalid command BAD_REQUEST by its id, drops duplicates, and keeps working', async () => {
    const { broker, port } = await bareBroker();
    const agent = await startAgent({ url: `mqtt://127.0.0.1:${port}`, id: 'pi-in', logLevel: 'error' });
    cleanup(() => agent.stop());
    await agent.firstConnect;
    const responses: Response[] = [];
    broker.subscribe('rhizosphere/devices/pi-in/response', (packet, done) => {
      responses.push(JSON.parse(packet.payload.toString()) as Response);
      done();
    }, () => {});
    await waitFor(() => Object.keys((broker as unknown as { clients: Record<string, unknown> }).clients).includes('pi-in'));
    await new Promise((r) => setTimeout(r, 100)); // the agent's subscription
    const publish = (body: unknown) =>
      broker.publish({ cmd: 'publish', topic: 'rhizosphere/devices/pi-in/command', payload: Buffer.from(typeof body === 'string' ? body : JSON.stringify(body)), qos: 1, retain: false, dup: false }, () => {});

    publish('not json at all');
    publish({ type: 'command', id: 'bad-1', order: 'format_disk', cmd_str: 'x', timeout_ms: 1000 });
    const good = { type: 'command', id: 'ok-1', order: 'exec_bash', cmd_str: 'echo $((6*7))', timeout_ms: 5000 };
    publish(good);
    publish(good); // a QoS 1 redelivery must not run twice
    await waitFor(() => responses.length >= 2, { what: 'two responses' });
    await new Promise((r) => setTimeout(r, 300));
    expect(responses).toHaveLength(2);
    expect(responses.find((r) => r.id === 'bad-1')).toMatchObject({ code: 'BAD_REQUEST', message: expect.stringMatching(/^order/) });
    expect(responses.find((r) => r.id === 'ok-1')).toMatchObject({ result: '42', exit_code: 0 });
  });
});
