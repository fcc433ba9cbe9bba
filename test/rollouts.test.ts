/**
 * Staged rollouts (docs/protocol.md "Rollouts"): the pacing and abort rules on their own, then
 * jobs over real hypha agents running real bash, through the REST API and the CLI: a rate that
 * ramps, an abort at its threshold, a canary that stops a broken change and one that lets a good
 * one through, pause and resume, and the bad input refused.
 */
import { describe, expect, it } from 'vitest';
import type { Hub } from '../src/index.js';
import type { JobView } from '../src/jobs/runner.js';
import { abortReason, Pacer, ratePerMinute } from '../src/jobs/rollout.js';
import { cleanup, startAgents, startTestHub, waitFor, runCli as cli } from './helpers.js';

const counts = (c: Partial<Record<'queued' | 'sent' | 'succeeded' | 'failed' | 'timed_out' | 'canceled', number>>) => ({
  queued: 0,
  sent: 0,
  succeeded: 0,
  failed: 0,
  timed_out: 0,
  canceled: 0,
  ...c,
});

async function api(hub: Hub, method: string, path: string, body?: unknown) {
  const res = await fetch(`${hub.urls.http}${path}`, { method, headers: { 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as any };
}

function finished(hub: Hub, id: string, timeoutMs = 30_000): Promise<JobView> {
  return waitFor(
    () => {
      const job = hub.jobs.get(id);
      return job && job.state !== 'running' && job.state !== 'paused' && job.counts.sent === 0 && job.counts.queued === 0 ? job : undefined;
    },
    { timeoutMs, what: `job ${id} finished` },
  );
}

const ids = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}-${String(i).padStart(2, '0')}`);

describe('rollout rules', () => {
  it('ramps the rate by its factor per so many successes, up to the maximum', () => {
    const rollout = { start_per_minute: 10, increase: { factor: 2, every_succeeded: 20 }, max_per_minute: 100 };
    expect([0, 19, 20, 39, 40, 60, 1000].map((s) => ratePerMinute(rollout, s))).toEqual([10, 10, 20, 20, 40, 80, 100]);
    expect(ratePerMinute({ start_per_minute: 7 }, 500)).toBe(7);
  });

  it('paces sends one slot apart, the first at once, a faster rate from the next slot', () => {
    const pacer = new Pacer();
    expect(pacer.wait(1000)).toBe(0);
    pacer.took(1000, 60);
    expect(pacer.wait(1000)).toBe(1000);
    expect(pacer.wait(2000)).toBe(0);
    pacer.took(2000, 120);
    expect(pacer.wait(2100)).toBe(400);
  });

  it('aborts on the first criterion met, only past its minimum of finished targets', () => {
    const criteria = [{ when: 'failed' as const, above_percent: 20, min_finished: 10 }];
    expect(abortReason(criteria, counts({ succeeded: 5, failed: 4 }))).toBeNull();
    expect(abortReason(criteria, counts({ succeeded: 8, failed: 2 }))).toBeNull();
    // 3 of 15 is 20%: not above it. Timed-out targets count as finished, not as failed here.
    expect(abortReason(criteria, counts({ succeeded: 7, failed: 3, timed_out: 5 }))).toBeNull();
    expect(abortReason(criteria, counts({ succeeded: 7, failed: 3 }))).toMatch(/^3 of 10 finished targets failed \(30\.0%/);
    expect(abortReason([{ when: 'any', above_percent: 0, min_finished: 1 }], counts({ timed_out: 1 }))).toMatch(/^1 of 1 finished targets failed or timed out/);
  });
});

describe('staged rollouts on real agents', () => {
  it('ramps: one send a second at first, faster with each pair of successes, capped', async () => {
    const hub = await startTestHub();
    const devices = ids('ramp', 10);
    await startAgents(hub, devices);
    const created = await api(hub, 'POST', '/api/jobs', {
      target: { devices },
      order: 'exec_bash',
      cmd_str: 'date +%s%3N',
      rollout: { start_per_minute: 60, increase: { factor: 2, every_succeeded: 2 }, max_per_minute: 480 },
    });
    expect(created.status).toBe(201);
    const id = created.body.id as string;
    const running = await api(hub, 'GET', `/api/jobs/${id}`);
    expect(running.body).toMatchObject({ staging: { rollout: { start_per_minute: 60 } }, rate_per_minute: 60 });
    const job = await finished(hub, id);
    expect(job.counts.succeeded).toBe(10);
    // When each command ran on its device, in order: the gaps shrink from about 1 s to about 125 ms.
    const ran = job.targets.map((t) => Number(t.result)).sort((a, b) => a - b);
    const gaps = ran.slice(1).map((t, i) => t - ran[i]!);
    console.log(`rollout ramp 60→480/min: gaps between sends ${gaps.join(', ')} ms`);
    expect(gaps[0]).toBeGreaterThanOrEqual(800);
    expect(Math.max(...gaps.slice(-3))).toBeLessThan(450);
    // All at once it would be ~0 s, at a flat 60/min 9 s.
    expect(ran.at(-1)! - ran[0]!).toBeLessThan(6000);
    expect(hub.jobs.get(id)).not.toHaveProperty('rate_per_minute');
  });

  it('aborts at its threshold: the rest canceled with the reason, in the status, the audit trail and the CLI', async () => {
    const hub = await startTestHub();
    const devices = ids('abort', 10);
    await startAgents(hub, devices);
    const statuses: unknown[] = [];
    const unsubscribe = await (async () => {
      const { connectMqtt } = await import('./helpers.js');
      const watcher = await connectMqtt(hub.urls.mqtt, { clientId: 'watcher' });
      watcher.on('message', (_topic, payload) => statuses.push(JSON.parse(payload.toString())));
      await watcher.subscribeAsync('rhizosphere/jobs/+/status', { qos: 1 });
      return () => watcher.end(true);
    })();
    cleanup(unsubscribe);

    // A broken change: every device fails it. One at a time, so the count is exact.
    const created = await api(hub, 'POST', '/api/jobs', {
      target: { devices },
      order: 'exec_bash',
      cmd_str: 'echo broken >&2; exit 3',
      concurrency: 1,
      abort: [{ when: 'failed', above_percent: 50, min_finished: 3 }],
    });
    const job = await finished(hub, created.body.id);
    expect(job.state).toBe('aborted');
    expect(job.counts).toEqual(counts({ failed: 3, canceled: 7 }));
    const reason = '3 of 3 finished targets failed (100.0%, above 50% with at least 3 finished)';
    expect(job.reason).toBe(reason);
    expect(job.targets.filter((t) => t.state === 'canceled').every((t) => t.error === `aborted: ${reason}`)).toBe(true);
    await waitFor(() => statuses.find((s) => (s as { state: string }).state === 'aborted'), { what: 'the aborted status' });
    expect(statuses.find((s) => (s as { state: string }).state === 'aborted')).toMatchObject({ id: created.body.id, reason });
    expect(hub.stores.audit.query({ action: 'job.abort' })[0]).toMatchObject({ outcome: 'aborted', detail: expect.objectContaining({ reason }) });

    // The same through the CLI: a canary of 2 stops it before the other 8 are touched.
    const run = await cli(['run', '--url', hub.urls.ws, ...devices.flatMap((d) => ['--device', d]), '--canary', '2', '--', 'exit 1']);
    expect(run.status).toBe(1);
    expect(run.stdout).toContain('10 devices: 2 failed, 8 canceled');
    expect(run.stderr).toMatch(/aborted: canary: 2 of 2 canary targets failed or timed out/);
  }, 60_000);

  it('lets a good change through its canary, then the rest; pauses and resumes', async () => {
    const hub = await startTestHub();
    const devices = ids('calm', 8);
    await startAgents(hub, devices);
    const created = await api(hub, 'POST', '/api/jobs', {
      target: { devices },
      order: 'exec_bash',
      cmd_str: 'sleep 0.3; echo fine',
      canary: { count: 3 },
      rollout: { start_per_minute: 120 },
    });
    const id = created.body.id as string;
    // The canary: three sent, nothing else until all three succeeded.
    await waitFor(() => hub.jobs.get(id)!.counts.succeeded + hub.jobs.get(id)!.counts.sent === 3, { what: 'the canary sent' });
    expect(hub.jobs.get(id)!.counts.queued).toBe(5);
    await waitFor(() => hub.jobs.get(id)!.counts.succeeded >= 4, { timeoutMs: 15_000, what: 'past the canary' });

    const paused = await api(hub, 'POST', `/api/jobs/${id}/pause`);
    expect(paused.body.state).toBe('paused');
    await waitFor(() => hub.jobs.get(id)!.counts.sent === 0, { what: 'in-flight done' });
    const during = hub.jobs.get(id)!.counts;
    await new Promise((r) => setTimeout(r, 1500));
    expect(hub.jobs.get(id)!.counts).toEqual(during);
    expect(during.queued).toBeGreaterThan(0);
    expect((await api(hub, 'POST', `/api/jobs/${id}/pause`)).body.state).toBe('paused');

    const resumed = await api(hub, 'POST', `/api/jobs/${id}/resume`);
    expect(resumed.body.state).toBe('running');
    const job = await finished(hub, id);
    expect(job).toMatchObject({ state: 'done', counts: counts({ succeeded: 8 }) });
    expect(hub.stores.audit.query({ action: 'job.pause' })).toHaveLength(2);
    expect((await api(hub, 'POST', `/api/jobs/${id}/resume`)).body.state).toBe('done');
  }, 60_000);

  it('refuses bad rollout settings with BAD_REQUEST naming the field', async () => {
    const hub = await startTestHub();
    const base = { target: { tags: [] }, order: 'exec_bash', cmd_str: 'true' };
    const cases: [Record<string, unknown>, string][] = [
      [{ rollout: { start_per_minute: -5 } }, 'rollout.start_per_minute must be at least 1'],
      [{ rollout: { start_per_minute: 1.5 } }, 'rollout.start_per_minute must be a whole number from 1 to 1000000'],
      [{ rollout: { start_per_minute: 10, max_per_minute: 5 } }, 'rollout.max_per_minute must be at least start_per_minute'],
      [{ rollout: { start_per_minute: 10, increase: { factor: 1, every_succeeded: 5 } } }, 'rollout.increase.factor must be at least 1.1'],
      [{ rollout: { start_per_minute: 10, speed: 3 } }, 'rollout'],
      [{ abort: [{ when: 'sometimes', above_percent: 10, min_finished: 1 }] }, 'abort.0.when must be failed, timed_out or any'],
      [{ abort: [{ when: 'any', above_percent: 120, min_finished: 1 }] }, 'abort.0.above_percent must be at most 100'],
      [{ abort: [] }, 'abort must have at least one criterion'],
      [{ canary: { count: 0 } }, 'canary.count must be at least 1'],
      [{ canary: 3 }, 'canary must be an object like {"count": 5}'],
    ];
    for (const [patch, message] of cases) {
      const answer = await api(hub, 'POST', '/api/jobs', { ...base, ...patch });
      expect([JSON.stringify(patch), answer.status, answer.body.code]).toEqual([JSON.stringify(patch), 400, 'BAD_REQUEST']);
      expect(answer.body.message).toContain(message);
    }
    expect((await api(hub, 'POST', '/api/jobs/nope/pause')).status).toBe(404);
  });
});

