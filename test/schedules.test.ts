/**
 * When jobs run (docs/protocol.md "Schedules"): maintenance windows and schedules (a time, or a
 * cron expression), judged by a clock the test moves (HubOptions.clock), with real hypha agents
 * running the jobs, through REST and the real CLI; kept across a restart; bad input refused.
 */
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import type { Hub } from '../src/index.js';
import { cronProblem, nextCronRun, windowWait } from '../src/jobs/schedule.js';
import { cleanup, HYPHA_BIN, startAgents, startTestHub, tempDir, waitFor, runCli as cli } from './helpers.js';

/** A clock the test moves: real time plus an offset. */
function movableClock(startsAt: number) {
  let offset = startsAt - Date.now();
  return {
    now: () => Date.now() + offset,
    moveTo: (at: number) => {
      offset = at - Date.now();
    },
    moveBy: (ms: number) => {
      offset += ms;
    },
  };
}

async function api(hub: Hub, method: string, path: string, body?: unknown) {
  const res = await fetch(`${hub.urls.http}${path}`, { method, headers: { 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as any };
}


/** Today (UTC) at hh:mm:ss. */
const utc = (time: string) => Date.parse(`${new Date().toISOString().slice(0, 10)}T${time}Z`);

describe('window and cron rules', () => {
  it('opens a window at its start, crosses midnight, and follows its time zone', () => {
    const nightly = { start: '02:00', end: '04:00', tz: 'UTC' };
    expect(windowWait(nightly, utc('02:30:00'))).toBe(0);
    expect(windowWait(nightly, utc('01:59:30'))).toBe(30_000);
    expect(windowWait(nightly, utc('04:00:00'))).toBe(22 * 3_600_000);
    const late = { start: '22:00', end: '04:00', tz: 'UTC' };
    expect(windowWait(late, utc('23:00:00'))).toBe(0);
    expect(windowWait(late, utc('03:59:00'))).toBe(0);
    expect(windowWait(late, utc('12:00:00'))).toBe(10 * 3_600_000);
    // 02:00 in Tokyo (UTC+9, no daylight saving) is 17:00 UTC.
    expect(windowWait({ start: '02:00', end: '04:00', tz: 'Asia/Tokyo' }, utc('17:30:00'))).toBe(0);
    expect(windowWait({ start: '02:00', end: '04:00', tz: 'Asia/Tokyo' }, utc('02:30:00'))).toBeGreaterThan(0);
  });

  it('reads cron expressions with croner, in a time zone', () => {
    expect(new Date(nextCronRun('0 3 * * *', 'UTC', utc('02:59:00'))!).toISOString()).toMatch(/T03:00:00\.000Z$/);
    expect(new Date(nextCronRun('0 3 * * *', 'Asia/Tokyo', utc('12:00:00'))!).toISOString()).toMatch(/T18:00:00\.000Z$/);
    expect(cronProblem('*/5 * * * *')).toBeNull();
    expect(cronProblem('61 * * * *')).toMatch(/^is not a cron expression/);
    expect(cronProblem('every day')).toMatch(/^is not a cron expression/);
  });
});

describe('schedules on a real hub', () => {
  it('holds a job until its window opens, by the hub\'s clock', async () => {
    const clock = movableClock(utc('01:59:00'));
    const hub = await startTestHub({ clock: clock.now });
    await startAgents(hub, ['win-1', 'win-2']);
    const created = await api(hub, 'POST', '/api/jobs', { target: { devices: ['win-1', 'win-2'] }, order: 'exec_bash', cmd_str: 'echo in the window', window: { start: '02:00', end: '04:00', tz: 'UTC' } });
    expect(created.status).toBe(201);
    const id = created.body.id as string;
    const waiting = await api(hub, 'GET', `/api/jobs/${id}`);
    expect(waiting.body).toMatchObject({ state: 'running', counts: { queued: 2 }, staging: { window: { start: '02:00', end: '04:00', tz: 'UTC' } } });
    expect(Date.parse(waiting.body.window_opens_at) - utc('02:00:00')).toBeLessThan(2000);
    await new Promise((r) => setTimeout(r, 1500));
    expect(hub.jobs.get(id)!.counts.queued).toBe(2);

    clock.moveTo(utc('02:00:05'));
    const job = await waitFor(() => (hub.jobs.get(id)!.state === 'done' ? hub.jobs.get(id) : undefined), { what: 'the job done once the window opened' });
    expect(job.counts.succeeded).toBe(2);
  });

  it('holds each target until the window opens in its own time zone, as its birth announced it', async () => {
    // 02:30 UTC is 11:30 in Tokyo: inside a 02:00–04:00 window for the UTC device, outside for the other.
    const clock = movableClock(utc('02:30:00'));
    const hub = await startTestHub({ clock: clock.now });
    for (const [id, tz] of [
      ['here', 'UTC'],
      ['tokyo', 'Asia/Tokyo'],
    ] as const) {
      const child = spawn(process.execPath, [HYPHA_BIN, '--url', hub.urls.mqtt, '--id', id], { stdio: 'ignore', env: { ...process.env, TZ: tz } });
      cleanup(() => child.kill('SIGKILL'));
    }
    await waitFor(() => hub.connections.get('here')?.tz === 'UTC' && hub.connections.get('tokyo')?.tz === 'Asia/Tokyo', { timeoutMs: 15_000, what: 'both devices announced their time zones' });
    const created = await api(hub, 'POST', '/api/jobs', { target: { devices: ['here', 'tokyo'] }, order: 'exec_bash', cmd_str: 'echo done', window: { start: '02:00', end: '04:00', tz: 'device' } });
    const id = created.body.id as string;
    await waitFor(() => hub.jobs.get(id)!.targets.find((t) => t.device === 'here')?.state === 'succeeded', { what: 'the UTC device done' });
    await new Promise((r) => setTimeout(r, 1500));
    expect(hub.jobs.get(id)!.targets.find((t) => t.device === 'tokyo')?.state).toBe('queued');
    // 17:30 UTC is 02:30 in Tokyo.
    clock.moveTo(utc('17:30:00'));
    await waitFor(() => hub.jobs.get(id)!.state === 'done', { what: 'the Tokyo device done in its own window' });
    expect(hub.jobs.get(id)!.counts.succeeded).toBe(2);
  });

  it('creates jobs on a cron expression and at a time, keeps them across a restart, and through the CLI', async () => {
    const dataDir = tempDir('rhizo-schedules-');
    const clock = movableClock(utc('09:58:30'));
    let hub = await startTestHub({ clock: clock.now, dataDir });
    await startAgents(hub, ['cron-1']);

    const every = await api(hub, 'POST', '/api/schedules', { name: 'hourly check', cron: '0 * * * *', tz: 'UTC', job: { target: { devices: ['cron-1'] }, order: 'exec_bash', cmd_str: 'echo tick' } });
    expect(every.status).toBe(201);
    expect(every.body).toMatchObject({ name: 'hourly check', enabled: true, runs: 0, next_at: new Date(utc('10:00:00')).toISOString() });
    const once = await api(hub, 'POST', '/api/schedules', { at: new Date(utc('09:59:00')).toISOString(), job: { target: { devices: ['cron-1'] }, order: 'exec_bash', cmd_str: 'echo once' } });
    expect(once.body.next_at).toBe(new Date(utc('09:59:00')).toISOString());

    clock.moveTo(utc('09:59:01'));
    const ranOnce = await waitFor(async () => ((await api(hub, 'GET', `/api/schedules/${once.body.id}`)).body.runs === 1 ? (await api(hub, 'GET', `/api/schedules/${once.body.id}`)).body : undefined), { what: 'the at schedule run' });
    expect(ranOnce).toMatchObject({ next_at: null, last_error: null });
    await waitFor(() => hub.jobs.get(ranOnce.last_job)?.state === 'done', { what: 'its job done' });
    expect(hub.jobs.get(ranOnce.last_job)!.targets[0]).toMatchObject({ device: 'cron-1', state: 'succeeded', result: 'once' });
    expect((await api(hub, 'GET', `/api/schedules/${every.body.id}`)).body.runs).toBe(0);

    // A restart keeps them; the cron one fires at 10:00 by the clock.
    await hub.close();
    hub = await startTestHub({ clock: clock.now, dataDir });
    await startAgents(hub, ['cron-1']);
    expect((await api(hub, 'GET', '/api/schedules')).body.map((s: { id: string }) => s.id).sort()).toEqual([every.body.id, once.body.id].sort());
    clock.moveTo(utc('10:00:02'));
    const ticked = await waitFor(async () => {
      const view = (await api(hub, 'GET', `/api/schedules/${every.body.id}`)).body;
      return view.runs === 1 ? view : undefined;
    }, { what: 'the cron schedule run' });
    expect(ticked.next_at).toBe(new Date(utc('11:00:00')).toISOString());
    await waitFor(() => hub.jobs.get(ticked.last_job)?.state === 'done', { what: 'the cron job done' });
    expect(hub.jobs.get(ticked.last_job)!.actor).toBe('anonymous');
    expect(hub.stores.audit.query({ action: 'schedule.run' }).filter((e) => (e.detail as { schedule: string }).schedule === every.body.id)).toHaveLength(1);

    // Changed, held, removed.
    const held = await api(hub, 'PATCH', `/api/schedules/${every.body.id}`, { enabled: false });
    expect(held.body).toMatchObject({ enabled: false, next_at: null });
    clock.moveTo(utc('11:00:05'));
    await new Promise((r) => setTimeout(r, 1500));
    expect((await api(hub, 'GET', `/api/schedules/${every.body.id}`)).body.runs).toBe(1);
    expect((await api(hub, 'PATCH', `/api/schedules/${every.body.id}`, { cron: '30 4 * * 1', enabled: true })).body).toMatchObject({ cron: '30 4 * * 1', enabled: true });

    // The CLI, with the hub's real clock for its own runs.
    const url = hub.urls.ws;
    const added = await cli(['schedule', 'add', '--url', url, '--cron', '0 3 * * *', '--tz', 'Europe/Berlin', '--name', 'nightly', '--tag', 'kitchen', '--window', '02:00-05:00@Europe/Berlin', '--', 'apt-get', 'update']);
    expect(added.stderr).toBe('');
    expect(added.status).toBe(0);
    const addedId = added.stdout.split(' ')[0]!;
    expect((await api(hub, 'GET', `/api/schedules/${addedId}`)).body.job).toEqual({ target: { tags: ['kitchen'] }, order: 'exec_bash', cmd_str: 'apt-get update', window: { start: '02:00', end: '05:00', tz: 'Europe/Berlin' } });
    const listed = await cli(['schedule', 'list', '--url', url]);
    expect(listed.stdout).toMatch(new RegExp(`${addedId}\\s+nightly\\s+cron 0 3 \\* \\* \\* Europe/Berlin\\s+yes`));
    expect((await cli(['schedule', 'disable', '--url', url, addedId])).stdout).toBe(`${addedId} disabled\n`);
    expect((await cli(['schedule', 'remove', '--url', url, addedId])).stdout).toBe(`${addedId} removed\n`);
    const gone = await cli(['schedule', 'remove', '--url', url, addedId]);
    expect(gone.status).toBe(1);
    expect(gone.stderr).toContain(`BAD_REQUEST: no schedule ${addedId}`);
  }, 60_000);

  it('refuses bad schedules and windows with BAD_REQUEST naming the field', async () => {
    const hub = await startTestHub();
    const job = { target: { tags: [] }, order: 'exec_bash', cmd_str: 'true' };
    const cases: [string, Record<string, unknown>, string][] = [
      ['/api/schedules', { cron: '61 * * * *', job }, 'cron is not a cron expression'],
      ['/api/schedules', { cron: 'every day', job }, 'cron is not a cron expression'],
      ['/api/schedules', { cron: '0 3 * * *', at: '2030-01-01T00:00:00Z', job }, 'give either at (once) or cron (again and again), not both'],
      ['/api/schedules', { job }, 'give either at (once) or cron'],
      ['/api/schedules', { at: 'tomorrow', job }, 'at must be a time like'],
      ['/api/schedules', { at: '2030-01-01T00:00:00Z', tz: 'UTC', job }, 'tz is for cron'],
      ['/api/schedules', { cron: '0 3 * * *', tz: 'Mars/Olympus', job }, 'tz is not a time zone'],
      ['/api/schedules', { cron: '0 3 * * *' }, 'job is required'],
      ['/api/schedules', { cron: '0 3 * * *', job: { ...job, cmd_str: undefined } }, 'job.cmd_str is required'],
      ['/api/schedules', { cron: '0 3 * * *', job, every: 5 }, 'has an unknown key (allowed: name, job, at, cron, tz, enabled)'],
      ['/api/jobs', { ...job, window: { start: '25:00', end: '04:00' } }, 'window.start must be a time of day HH:MM'],
      ['/api/jobs', { ...job, window: { start: '02:00', end: '02:00' } }, 'window.end must not start and end at the same time'],
      ['/api/jobs', { ...job, window: { start: '02:00', end: '04:00', tz: 'Nowhere/Land' } }, 'window.tz is not a time zone'],
    ];
    for (const [path, body, message] of cases) {
      const answer = await api(hub, 'POST', path, body);
      expect([JSON.stringify(body), answer.status, answer.body.code]).toEqual([JSON.stringify(body), 400, 'BAD_REQUEST']);
      expect(answer.body.message).toContain(message);
    }
    expect((await api(hub, 'GET', '/api/schedules/s-nope')).status).toBe(404);
    expect((await api(hub, 'PATCH', '/api/schedules/s-nope', { enabled: false })).status).toBe(404);
  });
});
