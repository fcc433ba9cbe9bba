/** GET /metrics (Prometheus text) and GET /readyz, against real hubs, agents and MQTT clients. */
import { describe, expect, it } from 'vitest';
import type { Hub } from '../src/index.js';
import { Readiness } from '../src/readiness.js';
import { connectMqtt, metricValue as value, parseMetrics as parse, type Sample, startAgents, startTestHub, waitFor } from './helpers.js';

async function scrape(hub: Hub, headers: Record<string, string> = {}): Promise<Sample[]> {
  const res = await fetch(`${hub.urls.http}/metrics`, { headers });
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  return parse(await res.text());
}

describe('GET /metrics', () => {
  it('counts devices by transport, commands by outcome, and reads in-flight commands at scrape time', async () => {
    const hub = await startTestHub();
    let samples = await scrape(hub);
    expect(value(samples, 'rhizosphere_devices_connected', { transport: 'mqtt' })).toBe(0);
    expect(samples.some((s) => s.name === 'rhizosphere_devices_connected' && s.labels.transport === 'legacy-ws')).toBe(true);

    const [agent] = await startAgents(hub, ['metrics-pi']);
    samples = await scrape(hub);
    expect(value(samples, 'rhizosphere_devices_connected', { transport: 'mqtt' })).toBe(1);
    expect(value(samples, 'rhizosphere_devices_connected', { transport: 'mqtt-ws' })).toBe(0);
    expect(value(samples, 'rhizosphere_device_connects_total', { transport: 'mqtt' })).toBe(1);
    expect(value(samples, 'rhizosphere_mqtt_connections')).toBeGreaterThanOrEqual(1);

    await hub.exec('metrics-pi', 'echo one');
    await hub.exec('metrics-pi', { order: 'exec_bash_ret_okng_only', cmd_str: 'true' });
    // The third fails: the agent kills it at its timeout and answers TIMEOUT.
    const slow = hub.exec('metrics-pi', { cmd_str: 'sleep 5', timeout_ms: 1000 }).catch((error: { code?: string }) => error.code);
    await waitFor(() => hub.inflight === 1);
    expect(value(await scrape(hub), 'rhizosphere_commands_inflight')).toBe(1);
    expect(await slow).toBe('TIMEOUT');

    samples = await scrape(hub);
    expect(value(samples, 'rhizosphere_commands_inflight')).toBe(0);
    expect(value(samples, 'rhizosphere_commands_total', { order: 'exec_bash', outcome: 'ok' })).toBe(1);
    expect(value(samples, 'rhizosphere_commands_total', { order: 'exec_bash_ret_okng_only', outcome: 'ok' })).toBe(1);
    expect(value(samples, 'rhizosphere_commands_total', { order: 'exec_bash', outcome: 'TIMEOUT' })).toBe(1);
    expect(value(samples, 'rhizosphere_command_duration_seconds_count')).toBe(3);
    expect(value(samples, 'rhizosphere_command_duration_seconds_sum', { order: 'exec_bash' })).toBeGreaterThanOrEqual(1);
    expect(value(samples, 'rhizosphere_command_duration_seconds_bucket', { order: 'exec_bash', le: '60' })).toBe(2);
    expect(value(samples, 'rhizosphere_command_duration_seconds_bucket', { order: 'exec_bash', le: '0.001' })).toBe(0);
    // Three commands delivered to the agent, three Responses from it.
    expect(value(samples, 'rhizosphere_mqtt_messages_total', { direction: 'out' })).toBeGreaterThanOrEqual(3);
    expect(value(samples, 'rhizosphere_mqtt_messages_total', { direction: 'in' })).toBeGreaterThanOrEqual(3);
    expect(value(samples, 'rhizosphere_jobs_running')).toBe(0);
    // The process metrics, with the prefix.
    for (const name of ['rhizosphere_process_resident_memory_bytes', 'rhizosphere_process_open_fds', 'rhizosphere_nodejs_eventloop_lag_p99_seconds']) {
      expect(value(samples, name), name).toBeGreaterThan(0);
    }
    // Not the lists of every handle of the process (one per connection: slow to scrape at scale).
    expect(samples.some((s) => s.name.startsWith('rhizosphere_nodejs_active_handles') || s.name.startsWith('rhizosphere_nodejs_active_resources'))).toBe(false);
    // Never a device id as a label.
    expect(samples.some((s) => Object.values(s.labels).includes('metrics-pi'))).toBe(false);

    agent!.child.kill('SIGKILL');
    await waitFor(() => hub.device('metrics-pi')?.online === false);
    samples = await scrape(hub);
    expect(value(samples, 'rhizosphere_devices_connected')).toBe(0);
    expect(value(samples, 'rhizosphere_device_disconnects_total')).toBe(1);
  });

  it('counts PUBLISH packets in from clients and out once per subscriber, with their payload bytes', async () => {
    const hub = await startTestHub();
    const subscribers = [await connectMqtt(hub.urls.mqtt, { clientId: 'sub-a' }), await connectMqtt(hub.urls.mqtt, { clientId: 'sub-b' })];
    let received = 0;
    for (const subscriber of subscribers) {
      subscriber.on('message', () => received++);
      await subscriber.subscribeAsync('plant/moisture', { qos: 1 });
    }
    const publisher = await connectMqtt(hub.urls.mqtt, { clientId: 'pub' });
    const before = await scrape(hub);
    await publisher.publishAsync('plant/moisture', 'dry!!', { qos: 1 });
    await waitFor(() => received === 2);
    const after = await scrape(hub);
    const delta = (name: string, direction: string) => value(after, name, { direction }) - value(before, name, { direction });
    expect(delta('rhizosphere_mqtt_messages_total', 'in')).toBe(1);
    expect(delta('rhizosphere_mqtt_payload_bytes_total', 'in')).toBe(5);
    expect(delta('rhizosphere_mqtt_messages_total', 'out')).toBe(2);
    expect(delta('rhizosphere_mqtt_payload_bytes_total', 'out')).toBe(10);
    expect(value(after, 'rhizosphere_mqtt_connections')).toBe(3);
  });

  it('needs an API token, like the REST API, unless the hub allows anonymous access', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    const refused = await fetch(`${hub.urls.http}/metrics`);
    expect(refused.status).toBe(401);
    expect(refused.headers.get('www-authenticate')).toMatch(/^Bearer/);
    expect(await refused.json()).toMatchObject({ status: 'error', code: 'FORBIDDEN' });
    expect((await fetch(`${hub.urls.http}/metrics`, { headers: { authorization: 'Bearer not-a-token' } })).status).toBe(401);

    const secret = hub.stores.tokens.add('prometheus', 'viewer');
    const samples = await scrape(hub, { authorization: `Bearer ${secret}` });
    expect(value(samples, 'rhizosphere_devices_connected')).toBe(0);
    // Probes stay open.
    expect((await fetch(`${hub.urls.http}/healthz`)).status).toBe(200);
    expect((await fetch(`${hub.urls.http}/readyz`)).status).toBe(200);
  });
});

/** Keeps the event loop busy in 300 ms stretches, letting I/O and timers run in between, until stopped. */
function overload(): { stop: () => Promise<void> } {
  let running = true;
  const done = (async () => {
    while (running) {
      const until = Date.now() + 300;
      while (Date.now() < until) {
        // busy
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
  })();
  return {
    stop: () => {
      running = false;
      return done;
    },
  };
}

describe('GET /readyz', () => {
  it('answers 200 while serving, 503 with the reason while the event loop lags, and 200 again after', async () => {
    const hub = await startTestHub({ readyMaxLagMs: 100 });
    const ready = await fetch(`${hub.urls.http}/readyz`);
    expect(ready.status).toBe(200);
    expect(ready.headers.get('cache-control')).toBe('no-store');
    expect(await ready.json()).toMatchObject({ ready: true, lagMs: expect.any(Number) });

    const busy = overload();
    let answer: unknown;
    try {
      answer = await waitFor(
        async () => {
          const res = await fetch(`${hub.urls.http}/readyz`);
          return res.status === 503 ? res.json() : null;
        },
        { timeoutMs: 10_000, what: '503 from /readyz' },
      );
    } finally {
      await busy.stop();
    }
    expect(answer).toMatchObject({ ready: false, reason: 'event-loop-lag', maxLagMs: 100 });
    expect((answer as { lagMs: number }).lagMs).toBeGreaterThan(100);
    // /healthz keeps its contract: the hub serves.
    expect((await fetch(`${hub.urls.http}/healthz`)).status).toBe(200);

    // The window is a few seconds: once it has passed, ready again.
    await waitFor(async () => (await fetch(`${hub.urls.http}/readyz`)).status === 200, { timeoutMs: 15_000, intervalMs: 250, what: 'ready again' });
  }, 40_000);

  it('is not ready while starting, nor from the first step of closing on', async () => {
    let accepting = true;
    const readiness = new Readiness({ maxLagMs: 1000, accepting: () => accepting });
    expect(readiness.state()).toMatchObject({ ready: false, reason: 'starting' });
    readiness.serving();
    expect(readiness.state()).toMatchObject({ ready: true });
    accepting = false;
    expect(readiness.state()).toMatchObject({ ready: false, reason: 'broker-closed' });
    accepting = true;
    readiness.stop();
    readiness.serving();
    expect(readiness.state()).toMatchObject({ ready: false, reason: 'stopping' });

    // A hub that is closing answers 503 "stopping" (or no longer listens at all).
    const hub = await startTestHub();
    const url = `${hub.urls.http}/readyz`;
    const closing = hub.close();
    const res = await fetch(url).catch(() => null);
    if (res) expect({ status: res.status, body: await res.json() }).toMatchObject({ status: 503, body: { ready: false, reason: 'stopping' } });
    await closing;
  });
});
