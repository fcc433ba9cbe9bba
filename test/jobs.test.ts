/**
 * Fleet jobs end to end: real MQTT.js clients play the devices, each answering after a delay
 * the test controls, and the jobs go through the hub's REST API and its runner.
 */
import type { MqttClient } from 'mqtt';
import { describe, expect, it } from 'vitest';
import type { Hub } from '../src/index.js';
import { RESTART_ERROR, type JobView } from '../src/jobs/runner.js';
import type { Command } from '../src/protocol/schemas.js';
import { cleanup, connectMqtt, startTestHub, tempDir, waitFor } from './helpers.js';

/** What a device does with a command: answer (after `delayMs`) or stay silent (null). */
type Script = (command: Command) => { delayMs?: number; body: Record<string, unknown> } | null;

const ok: Script = (c) => ({ delayMs: 20, body: { result: `ran ${c.cmd_str}`, error: '', exit_code: 0 } });

/** Shared by a fleet of devices: how many commands are outstanding now, and the most ever seen. */
class Meter {
  outstanding = 0;
  max = 0;
  received = 0;
  up() {
    this.outstanding++;
    this.received++;
    this.max = Math.max(this.max, this.outstanding);
  }
  down() {
    this.outstanding--;
  }
}

interface FakeDevice {
  id: string;
  client: MqttClient;
  commands: Command[];
}

/** Starts scripted devices in-process and waits until the hub has them all online. */
async function startDevices(hub: Hub, ids: string[], script: Script = ok, meter = new Meter(), tokens: Record<string, string> = {}): Promise<FakeDevice[]> {
  const devices = await Promise.all(
    ids.map(async (id) => {
      const token = tokens[id];
      const client = await connectMqtt(hub.urls.mqtt, { clientId: id, clean: false, ...(token ? { username: id, password: token } : {}) });
      const commands: Command[] = [];
      const timers = new Set<NodeJS.Timeout>();
      cleanup(() => timers.forEach((timer) => clearTimeout(timer)));
      client.on('message', (topic, payload) => {
        if (topic !== `rhizosphere/devices/${id}/command`) return;
        const command = JSON.parse(payload.toString()) as Command;
        commands.push(command);
        meter.up();
        const answer = script(command);
        if (!answer) return;
        const timer = setTimeout(() => {
          timers.delete(timer);
          meter.down();
          if (!client.connected) return;
          client.publish(`rhizosphere/devices/${id}/response`, JSON.stringify({ type: 'response', id: command.id, ...answer.body }), { qos: 1 });
        }, answer.delayMs ?? 0);
        timers.add(timer);
      });
      await client.subscribeAsync(`rhizosphere/devices/${id}/command`, { qos: 1 });
      return { id, client, commands };
    }),
  );
  await waitFor(() => ids.every((id) => hub.device(id)?.online), { what: `${ids.length} devices online` });
  return devices;
}

const names = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}-${String(i).padStart(3, '0')}`);

async function api(hub: Hub, method: string, path: string, body?: unknown, token?: string) {
  const res = await fetch(`${hub.urls.http}${path}`, {
    method,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), 'content-type': 'application/json' },
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as any };
}

async function createJob(hub: Hub, body: Record<string, unknown>): Promise<string> {
  const res = await api(hub, 'POST', '/api/jobs', { order: 'exec_bash', cmd_str: 'uptime', ...body });
  expect(res.status, JSON.stringify(res.body)).toBe(201);
  return res.body.id as string;
}

function untilFinished(hub: Hub, id: string, timeoutMs = 15_000): Promise<JobView> {
  return waitFor(
    () => {
      const job = hub.jobs.get(id);
      return job && job.state !== 'running' && job.counts.sent === 0 && job.counts.queued === 0 ? job : undefined;
    },
    { timeoutMs, what: `job ${id} finished` },
  );
}

const total = (counts: Record<string, number>) => Object.values(counts).reduce((a, b) => a + b, 0);
const stateOf = (job: JobView, device: string) => job.targets.find((t) => t.device === device)?.state;

describe('fleet jobs', () => {
  it('runs one command on 200 devices, never more than `concurrency` at once', async () => {
    const hub = await startTestHub();
    const meter = new Meter();
    const ids = names('fleet', 200);
    await startDevices(hub, ids, (c) => ({ delayMs: 15 + Math.floor(Math.random() * 20), body: { result: `ran ${c.cmd_str}`, error: '', exit_code: 0 } }), meter);

    const started = Date.now();
    const id = await createJob(hub, { target: { devices: ids }, concurrency: 20 });
    const job = await untilFinished(hub, id);
    const ms = Date.now() - started;
    console.log(`200-device job, concurrency 20, 15-35 ms per command: ${ms} ms`);

    expect(job.state).toBe('done');
    expect(job.counts).toEqual({ queued: 0, sent: 0, succeeded: 200, failed: 0, timed_out: 0, canceled: 0 });
    expect(meter.received).toBe(200);
    expect(meter.max).toBeLessThanOrEqual(20);
    expect(meter.max).toBeGreaterThanOrEqual(10);
    expect(job.targets[0]).toEqual({ device: 'fleet-000', state: 'succeeded', result: 'ran uptime', error: null, exit_code: 0 });

    // Over REST, and each command audited under the job's creator.
    const rest = await api(hub, 'GET', `/api/jobs/${id}`);
    expect(rest.status).toBe(200);
    expect(rest.body).toMatchObject({ id, state: 'done', counts: { succeeded: 200 } });
    expect(rest.body.targets).toHaveLength(200);
    const list = await api(hub, 'GET', '/api/jobs');
    expect(list.body[0]).toMatchObject({ id, state: 'done' });
    expect(list.body[0].targets).toBeUndefined();
    hub.stores.audit.flush();
    const commands = hub.stores.audit.query({ action: 'command', limit: 1000 });
    expect(commands.filter((e) => (e.detail as { clientId?: string })?.clientId === `job:${id}`)).toHaveLength(200);
    expect(hub.stores.audit.query({ action: 'job.create' })[0]).toMatchObject({ actor: 'anonymous', outcome: 'ok' });
  });

  it('retries targets refused with BUSY instead of failing them', async () => {
    const hub = await startTestHub({ maxInflightTotal: 4 });
    const meter = new Meter();
    const ids = names('busy', 12);
    await startDevices(hub, ids, (c) => ({ delayMs: 100, body: { result: c.cmd_str, error: '', exit_code: 0 } }), meter);
    const job = await untilFinished(hub, await createJob(hub, { target: { devices: ids }, concurrency: 12 }));
    expect(job.counts).toMatchObject({ succeeded: 12, failed: 0 });
    expect(meter.max).toBeLessThanOrEqual(4);
  });

  it('records non-zero exits as failed and silence as timed_out', async () => {
    const hub = await startTestHub();
    await startDevices(hub, ['good'], ok);
    await startDevices(hub, ['bad'], () => ({ body: { result: '', error: 'boom', exit_code: 3 } }));
    await startDevices(hub, ['mute'], () => null);
    const id = await createJob(hub, { target: { devices: ['good', 'bad', 'mute'] }, timeout_ms: 1000 });
    const job = await untilFinished(hub, id);
    expect(job.state).toBe('done');
    expect(job.counts).toMatchObject({ succeeded: 1, failed: 1, timed_out: 1 });
    expect(job.targets.find((t) => t.device === 'bad')).toEqual({ device: 'bad', state: 'failed', result: '', error: 'boom', exit_code: 3 });
    expect(job.targets.find((t) => t.device === 'mute')).toMatchObject({ state: 'timed_out', error: expect.stringMatching(/^TIMEOUT/) });
  });

  it('selects devices by tags and by online state', async () => {
    const hub = await startTestHub();
    const tokens: Record<string, string> = {};
    tokens['k-1'] = hub.stores.devices.add('k-1', ['kitchen', 'pi4']);
    tokens['k-2'] = hub.stores.devices.add('k-2', ['kitchen']);
    tokens['k-3'] = hub.stores.devices.add('k-3', ['kitchen', 'pi4']); // stays offline
    tokens['g-1'] = hub.stores.devices.add('g-1', ['garage', 'pi4']);
    await startDevices(hub, ['k-1', 'k-2', 'g-1'], ok, new Meter(), tokens);

    const both = await untilFinished(hub, await createJob(hub, { target: { tags: ['kitchen', 'pi4'], online: true } }));
    expect(both.targets.map((t) => t.device)).toEqual(['k-1']);
    const kitchen = await untilFinished(hub, await createJob(hub, { target: { tags: ['kitchen'], online: true } }));
    expect(kitchen.targets.map((t) => t.device)).toEqual(['k-1', 'k-2']);
    const offline = hub.jobs.get(await createJob(hub, { target: { online: false }, deadline_ms: 1000 }))!;
    expect(offline.targets.map((t) => t.device)).toEqual(['k-3']);
    const listed = await api(hub, 'POST', '/api/jobs', { order: 'exec_bash', cmd_str: 'x', target: { devices: ['g-1', 'k-2', 'nobody'], tags: ['pi4'] } });
    expect(listed.status).toBe(201);
    expect(listed.body).toMatchObject({ targets: 1, unknown: ['nobody'] });
    expect(hub.jobs.get(listed.body.id)!.targets.map((t) => t.device)).toEqual(['g-1']);

    // An empty selection is a job done at once.
    const none = await api(hub, 'POST', '/api/jobs', { order: 'exec_bash', cmd_str: 'x', target: { tags: ['attic'] } });
    expect(none.status).toBe(201);
    expect(hub.jobs.get(none.body.id)).toMatchObject({ state: 'done', targets: [] });
  });

  it('sends to devices that come online before the deadline; the others time out', async () => {
    const hub = await startTestHub();
    const tokens = Object.fromEntries(['late-1', 'late-2', 'never'].map((id) => [id, hub.stores.devices.add(id)]));
    await startDevices(hub, ['now-1', 'now-2']);
    const started = Date.now();
    const id = await createJob(hub, { target: { devices: ['now-1', 'now-2', 'late-1', 'late-2', 'never'] }, deadline_ms: 2000 });
    await waitFor(() => hub.jobs.get(id)!.counts.succeeded === 2, { what: 'online ones done' });
    expect(hub.jobs.get(id)!.counts.queued).toBe(3);
    await startDevices(hub, ['late-1', 'late-2'], ok, new Meter(), tokens);
    await waitFor(() => hub.jobs.get(id)!.counts.succeeded === 4, { what: 'late ones done' });
    expect(hub.jobs.get(id)!.state).toBe('running');
    const job = await untilFinished(hub, id);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1900);
    expect(job.state).toBe('done');
    expect(job.counts).toMatchObject({ succeeded: 4, timed_out: 1 });
    expect(job.targets.find((t) => t.device === 'never')).toMatchObject({ state: 'timed_out', error: expect.stringContaining('deadline') });
  });

  it('targets every named device, also ones the hub has never seen: they wait offline and catch up if they connect before the deadline', async () => {
    // Anonymous access: devices need not be registered to connect.
    const hub = await startTestHub();
    await startDevices(hub, ['seen-1']);
    const created = await api(hub, 'POST', '/api/jobs', { order: 'exec_bash', cmd_str: 'uptime', target: { devices: ['seen-1', 'fresh-1', 'fresh-2'] }, deadline_ms: 3000 });
    expect(created).toMatchObject({ status: 201, body: { targets: 3, unknown: ['fresh-1', 'fresh-2'] } });
    const id = created.body.id as string;
    await waitFor(() => hub.jobs.get(id)!.counts.succeeded === 1, { what: 'the known device done' });
    expect(hub.jobs.get(id)!.targets.map((t) => [t.device, t.state])).toEqual([['seen-1', 'succeeded'], ['fresh-1', 'queued'], ['fresh-2', 'queued']]);
    // fresh-1 connects for the first time, before the deadline; fresh-2 never does.
    await startDevices(hub, ['fresh-1']);
    const job = await untilFinished(hub, id);
    expect(job.targets.map((t) => [t.device, t.state])).toEqual([['seen-1', 'succeeded'], ['fresh-1', 'succeeded'], ['fresh-2', 'timed_out']]);

    // Other keys still apply: a device never seen has no tags and is offline.
    const tagged = await api(hub, 'POST', '/api/jobs', { order: 'exec_bash', cmd_str: 'x', target: { devices: ['ghost'], tags: ['kitchen'] } });
    expect(tagged.body).toMatchObject({ targets: 0, unknown: ['ghost'] });
    const online = await api(hub, 'POST', '/api/jobs', { order: 'exec_bash', cmd_str: 'x', target: { devices: ['ghost'], online: true } });
    expect(online.body).toMatchObject({ targets: 0, unknown: ['ghost'] });
  });

  it('cancels what has not been sent; what was sent finishes and is recorded', async () => {
    const hub = await startTestHub();
    const ids = names('c', 10);
    await startDevices(hub, ids, (c) => ({ delayMs: 400, body: { result: c.cmd_str, error: '', exit_code: 0 } }));
    const id = await createJob(hub, { target: { devices: ids }, concurrency: 3 });
    await waitFor(() => hub.jobs.get(id)!.counts.sent === 3, { what: 'three sent' });
    const viewer = hub.stores.tokens.add('watcher', 'viewer');
    expect((await api(hub, 'POST', `/api/jobs/${id}/cancel`, undefined, viewer)).status).toBe(403);
    const canceled = await api(hub, 'POST', `/api/jobs/${id}/cancel`);
    expect(canceled.status).toBe(200);
    expect(canceled.body).toMatchObject({ id, state: 'canceled', counts: { sent: 3, canceled: 7, queued: 0 } });
    const job = await untilFinished(hub, id);
    expect(job.state).toBe('canceled');
    expect(job.counts).toEqual({ queued: 0, sent: 0, succeeded: 3, failed: 0, timed_out: 0, canceled: 7 });
    expect(total(job.counts)).toBe(10);
    expect((await api(hub, 'POST', '/api/jobs/nope/cancel')).body).toMatchObject({ code: 'BAD_REQUEST', message: 'no job nope' });
    hub.stores.audit.flush();
    expect(hub.stores.audit.query({ action: 'job.cancel' })).toHaveLength(1);
  });

  it('publishes the retained job status; a late subscriber sees the final counts', async () => {
    const hub = await startTestHub();
    const ids = names('r', 30);
    await startDevices(hub, ids);
    const early = await connectMqtt(hub.urls.mqtt, { clientId: 'early-watcher' });
    const seen: { state: string; counts: Record<string, number> }[] = [];
    early.on('message', (_t, payload) => seen.push(JSON.parse(payload.toString())));
    await early.subscribeAsync('rhizosphere/jobs/+/status', { qos: 1 });
    const id = await createJob(hub, { target: { devices: ids }, concurrency: 5 });
    await untilFinished(hub, id);
    await waitFor(() => seen.some((s) => s.state === 'done'), { what: 'final status' });
    expect(seen[0]).toMatchObject({ state: 'running' });
    // Throttled: far fewer statuses than the 60 target changes.
    expect(seen.length).toBeLessThan(30);

    const late = await connectMqtt(hub.urls.mqtt, { clientId: 'late-watcher' });
    const retained: { topic: string; body: any; retain: boolean }[] = [];
    late.on('message', (topic, payload, packet) => retained.push({ topic, body: JSON.parse(payload.toString()), retain: packet.retain }));
    await late.subscribeAsync(`rhizosphere/jobs/${id}/status`, { qos: 1 });
    const status = await waitFor(() => retained[0]);
    expect(status).toEqual({
      topic: `rhizosphere/jobs/${id}/status`,
      retain: true,
      body: { id, state: 'done', counts: { queued: 0, sent: 0, succeeded: 30, failed: 0, timed_out: 0, canceled: 0 } },
    });
  });

  it('resumes a running job after a restart; commands in flight then are failed', async () => {
    const dataDir = tempDir('rhizo-jobs-');
    const first = await startTestHub({ dataDir });
    const tokens = { late: first.stores.devices.add('late') };
    await startDevices(first, ['quick-1', 'quick-2']);
    await startDevices(first, ['stuck'], () => null);
    const id = await createJob(first, { target: { devices: ['quick-1', 'quick-2', 'stuck', 'late'] }, timeout_ms: 60_000 });
    await waitFor(() => {
      const job = first.jobs.get(id)!;
      return job.counts.succeeded === 2 && stateOf(job, 'stuck') === 'sent';
    });
    await first.close();

    const second = await startTestHub({ dataDir });
    const resumed = second.jobs.get(id)!;
    expect(resumed.state).toBe('running');
    expect(resumed.targets.find((t) => t.device === 'stuck')).toMatchObject({ state: 'failed', error: RESTART_ERROR });
    expect(stateOf(resumed, 'late')).toBe('queued');
    await startDevices(second, ['late'], ok, new Meter(), tokens);
    const job = await untilFinished(second, id);
    expect(job.state).toBe('done');
    expect(job.counts).toMatchObject({ succeeded: 3, failed: 1 });
    expect(job.targets.find((t) => t.device === 'quick-1')).toMatchObject({ state: 'succeeded', result: 'ran uptime' });
  });

  it('lets operators create jobs, not viewers, and names the bad field', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    const viewer = hub.stores.tokens.add('look', 'viewer');
    const ops = hub.stores.tokens.add('ops', 'operator');
    const body = { target: { online: true }, order: 'exec_bash', cmd_str: 'uptime' };
    expect((await api(hub, 'POST', '/api/jobs', body)).status).toBe(401);
    const refused = await api(hub, 'POST', '/api/jobs', body, viewer);
    expect(refused).toMatchObject({ status: 403, body: { status: 'error', code: 'FORBIDDEN' } });
    const created = await api(hub, 'POST', '/api/jobs', body, ops);
    expect(created.status).toBe(201);
    expect(created.body.id).toMatch(/^[a-z0-9]+-[0-9a-f]{10}$/);
    expect((await api(hub, 'GET', `/api/jobs/${created.body.id}`, undefined, viewer)).body).toMatchObject({ id: created.body.id, state: 'done' });
    expect((await api(hub, 'GET', '/api/jobs/unknown-job', undefined, viewer))).toMatchObject({ status: 404, body: { code: 'BAD_REQUEST', message: 'no job unknown-job' } });

    const bad = async (patch: Record<string, unknown>, field: string) => {
      const res = await api(hub, 'POST', '/api/jobs', { ...body, ...patch }, ops);
      expect(res.status, JSON.stringify(res.body)).toBe(400);
      expect(res.body).toMatchObject({ status: 'error', code: 'BAD_REQUEST' });
      expect(res.body.message).toMatch(new RegExp(`^${field.replace('.', '\\.')} `));
    };
    await bad({ target: undefined }, 'target');
    await bad({ target: {} }, 'target');
    await bad({ target: { devices: 'pi-01' } }, 'target.devices');
    await bad({ target: { devices: ['ok', 'no/slash'] } }, 'target.devices.1');
    await bad({ target: { tags: ['has space'] } }, 'target.tags.0');
    await bad({ target: { online: 'yes' } }, 'target.online');
    await bad({ target: { room: 'x' } }, 'target');
    await bad({ order: 'reboot' }, 'order');
    await bad({ cmd_str: '' }, 'cmd_str');
    await bad({ timeout_ms: 5 }, 'timeout_ms');
    await bad({ concurrency: 0 }, 'concurrency');
    await bad({ concurrency: 10_001 }, 'concurrency');
    await bad({ deadline_ms: 1.5 }, 'deadline_ms');
    const notJson = await api(hub, 'POST', '/api/jobs', '{nope', ops);
    expect(notJson).toMatchObject({ status: 400, body: { code: 'BAD_REQUEST' } });
    await bad({ target: { devices: Array.from({ length: 100_001 }, (_, i) => `d${i}`) } }, 'target.devices');
  });
});
