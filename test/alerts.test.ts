/**
 * Alerts and webhooks (docs/protocol.md "Alerts and webhooks") on a real hub, with a clock the
 * test moves (HubOptions.clock) instead of waiting minutes: a real hypha agent killed fires an
 * offline alert, kept across a restart, resolved when the agent comes back; telemetry rules
 * fire from real health reports (hypha --health-interval 1, and reports a MQTT.js device
 * publishes) and resolve; an aborted job fires a job alert, resolved by hand. Every change is
 * POSTed to a webhook receiver the test runs on port 0, whose signatures it checks; a receiver
 * that fails first is retried, across a restart too, each attempt audited. Bad input is refused
 * with coded errors over REST and the real CLI.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import type { Hub } from '../src/index.js';
import type { AlertView, WebhookPayload } from '../src/protocol/alerts.js';
import { backoffMs, signature, WEBHOOK_MAX_ATTEMPTS } from '../src/alerts/webhooks.js';
import { cleanup, connectMqtt, spawnHypha, startTestHub, tempDir, waitFor, runCli as cli } from './helpers.js';

const MINUTE = 60_000;
const SECRET = 'a-webhook-secret-of-some-length';

/** A clock the test moves: real time plus an offset. */
function movableClock() {
  let offset = 0;
  return {
    now: () => Date.now() + offset,
    moveBy: (ms: number) => {
      offset += ms;
    },
  };
}

async function api(hub: Hub, method: string, path: string, body?: unknown, token?: string) {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(`${hub.urls.http}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as any };
}


interface Received {
  headers: IncomingHttpHeaders;
  raw: string;
  payload: WebhookPayload;
  answered: number;
}

/** What a receiver does with `X-Rhizosphere-Signature`: the HMAC-SHA256 of the raw body, compared in constant time. */
function signatureValid(secret: string, raw: string, header: string | string[] | undefined): boolean {
  if (typeof header !== 'string' || !header.startsWith('sha256=')) return false;
  const expected = Buffer.from(createHmac('sha256', secret).update(raw).digest('hex'));
  const given = Buffer.from(header.slice('sha256='.length));
  return given.length === expected.length && timingSafeEqual(given, expected);
}

/** A webhook receiver on 127.0.0.1, port 0: keeps every request, answers `status(n)` to the n-th. */
async function startReceiver(status: (n: number) => number = () => 200) {
  const received: Received[] = [];
  const receiver = { received, status, url: '' };
  const server = createServer((req, res) => {
    let raw = '';
    req.setEncoding('utf8');
    req.on('data', (chunk: string) => (raw += chunk));
    req.on('end', () => {
      const answered = receiver.status(received.length + 1);
      received.push({ headers: req.headers, raw, payload: JSON.parse(raw) as WebhookPayload, answered });
      res.statusCode = answered;
      res.end(answered < 300 ? 'thanks' : 'not now');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanup(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  receiver.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks/rhizosphere`;
  return receiver;
}

const delivered = (receiver: { received: Received[] }, event: string, subject: string) =>
  receiver.received.filter((r) => r.answered < 300 && r.payload.event === event && r.payload.alert.subject === subject);

/** A device of our own (MQTT.js): registered with tags, a device once it holds its command subscription. */
async function startDevice(hub: Hub, id: string, tags: string[] = [], token = hub.stores.devices.get(id) ? undefined : hub.stores.devices.add(id, tags)) {
  const device = await connectMqtt(hub.urls.mqtt, { clientId: id, username: id, password: token ?? deviceTokens.get(id)! });
  if (token) deviceTokens.set(id, token);
  await device.subscribeAsync(`rhizosphere/devices/${id}/command`, { qos: 1 });
  await waitFor(() => hub.device(id)?.online, { what: `${id} online` });
  return device;
}
const deviceTokens = new Map<string, string>();

async function firingOf(hub: Hub, subject: string): Promise<AlertView | undefined> {
  return ((await api(hub, 'GET', '/api/alerts?state=firing')).body as AlertView[]).find((a) => a.subject === subject);
}

describe('alerts and webhooks', () => {
  it('fires when a real agent stays offline past the rule, keeps it across a restart, resolves when it is back; each change signed to the webhook', async () => {
    const dataDir = tempDir('rhizo-alerts-');
    const clock = movableClock();
    let hub = await startTestHub({ clock: clock.now, dataDir });
    const admin = hub.stores.tokens.add('root', 'admin');
    const tokens = { 'lab-1': hub.stores.devices.add('lab-1', ['lab']), 'other-1': hub.stores.devices.add('other-1', []) };
    const receiver = await startReceiver();
    const webhook = await api(hub, 'POST', '/api/webhooks', { url: receiver.url, secret: SECRET }, admin);
    expect(webhook.status).toBe(201);
    expect(webhook.body).toMatchObject({ url: receiver.url, events: ['alert.firing', 'alert.resolved'], secret: '********', pending: 0, last_delivery: null });
    const rule = await api(hub, 'POST', '/api/alerts/rules', { name: 'lab offline', kind: 'device_offline', minutes: 5, tags: ['lab'] });
    expect(rule.status).toBe(201);
    expect(rule.body).toMatchObject({ name: 'lab offline', kind: 'device_offline', minutes: 5, tags: ['lab'], enabled: true, firing: 0 });

    const agents = Object.fromEntries(Object.entries(tokens).map(([id, token]) => [id, spawnHypha(hub.urls.mqtt, id, ['--token', token])]));
    await waitFor(() => hub.device('lab-1')?.online && hub.device('other-1')?.online, { timeoutMs: 15_000, what: 'both agents online' });
    for (const agent of Object.values(agents)) agent.child.kill('SIGKILL');
    await waitFor(() => !hub.device('lab-1')!.online && !hub.device('other-1')!.online, { what: 'both agents offline' });

    // Offline for seconds only: nothing fires, whatever the ticks.
    await new Promise((r) => setTimeout(r, 2500));
    expect((await api(hub, 'GET', '/api/alerts?state=firing')).body).toEqual([]);

    // Six minutes later by the hub's clock: lab-1 fires (other-1 lacks the tag).
    clock.moveBy(6 * MINUTE);
    const firing = await waitFor(() => firingOf(hub, 'lab-1'), { what: 'the offline alert firing' });
    expect(firing).toMatchObject({ rule: rule.body.id, rule_name: 'lab offline', kind: 'device_offline', device: 'lab-1', job: null, state: 'firing', summary: 'lab-1 offline for more than 5 min', resolved_at: null });
    expect(firing.detail).toMatchObject({ minutes: 5, tags: ['lab'] });
    expect(Date.parse(firing.detail.last_seen as string)).toBeLessThanOrEqual(Date.now());
    const fired = await waitFor(() => delivered(receiver, 'alert.firing', 'lab-1')[0], { what: 'the firing webhook' });
    expect(fired.headers['content-type']).toBe('application/json');
    expect(fired.headers['x-rhizosphere-event']).toBe('alert.firing');
    expect(fired.headers['x-rhizosphere-delivery']).toBe(fired.payload.delivery);
    expect(fired.headers['x-rhizosphere-signature']).toBe(signature(SECRET, fired.raw));
    expect(signatureValid(SECRET, fired.raw, fired.headers['x-rhizosphere-signature'])).toBe(true);
    expect(signatureValid('another-secret-entirely', fired.raw, fired.headers['x-rhizosphere-signature'])).toBe(false);
    expect(fired.payload).toMatchObject({ event: 'alert.firing', alert: { id: firing.id, subject: 'lab-1', state: 'firing' } });
    expect((await api(hub, 'GET', '/api/alerts/rules')).body[0]).toMatchObject({ id: rule.body.id, firing: 1 });
    expect(await firingOf(hub, 'other-1')).toBeUndefined();

    // A restart keeps it firing and does not fire it again.
    await hub.close();
    hub = await startTestHub({ clock: clock.now, dataDir });
    expect((await firingOf(hub, 'lab-1'))?.id).toBe(firing.id);
    await new Promise((r) => setTimeout(r, 2500));
    expect(receiver.received.filter((r) => r.payload.event === 'alert.firing')).toHaveLength(1);
    expect((await api(hub, 'GET', '/api/alerts?state=firing')).body).toHaveLength(1);

    // The agent back: resolved, and a second webhook.
    spawnHypha(hub.urls.mqtt, 'lab-1', ['--token', tokens['lab-1']]);
    const back = await waitFor(() => delivered(receiver, 'alert.resolved', 'lab-1')[0], { timeoutMs: 15_000, what: 'the resolved webhook' });
    expect(signatureValid(SECRET, back.raw, back.headers['x-rhizosphere-signature'])).toBe(true);
    expect(back.headers['x-rhizosphere-delivery']).not.toBe(fired.headers['x-rhizosphere-delivery']);
    expect(back.payload.alert).toMatchObject({ id: firing.id, state: 'resolved', resolved_by: 'hub', resolution: 'lab-1 is online again' });
    const resolved = (await api(hub, 'GET', `/api/alerts/${firing.id}`)).body as AlertView;
    expect(resolved).toMatchObject({ state: 'resolved', resolution: 'lab-1 is online again' });
    expect((await api(hub, 'GET', '/api/alerts?state=firing')).body).toEqual([]);
    expect((await api(hub, 'GET', '/api/alerts?state=resolved')).body.map((a: AlertView) => a.id)).toEqual([firing.id]);

    // Audited: the firing, the resolution, each delivery; the webhook's last delivery shown.
    const deliveries = hub.stores.audit.query({ action: 'webhook.delivery' });
    expect(deliveries.map((e) => [e.outcome, (e.detail as { status: number }).status, (e.detail as { event: string }).event])).toEqual([
      ['delivered', 200, 'alert.resolved'],
      ['delivered', 200, 'alert.firing'],
    ]);
    expect(hub.stores.audit.query({ action: 'alert.resolve' })[0]).toMatchObject({ actor: 'hub', device: 'lab-1', outcome: 'resolved' });
    const hooks = await api(hub, 'GET', '/api/webhooks', undefined, admin);
    expect(hooks.body[0]).toMatchObject({ id: webhook.body.id, secret: '********', pending: 0, last_delivery: { outcome: 'delivered', status: 200, error: null } });
    expect(JSON.stringify(hooks.body)).not.toContain(SECRET);
  }, 60_000);

  it('fires telemetry rules from real health reports and resolves them on a report on the other side', async () => {
    const clock = movableClock();
    const hub = await startTestHub({ clock: clock.now });
    const admin = hub.stores.tokens.add('root', 'admin');
    const receiver = await startReceiver();
    await api(hub, 'POST', '/api/webhooks', { url: receiver.url, secret: SECRET, events: ['alert.firing'] }, admin);

    // A device of our own (MQTT.js) reports its temperature.
    const hot = await api(hub, 'POST', '/api/alerts/rules', { kind: 'telemetry', metric: 'temp_c', op: 'above', value: 70, minutes: 5, tags: ['boiler'] });
    expect(hot.status).toBe(201);
    const device = await startDevice(hub, 'th-1', ['boiler']);
    const report = (values: Record<string, number>) => device.publishAsync('rhizosphere/devices/th-1/telemetry/health', JSON.stringify(values), { qos: 0 });
    await report({ temp_c: 75.5 });
    await waitFor(() => hub.health.latest('th-1')?.temp_c === 75.5, { what: 'the first report' });
    await new Promise((r) => setTimeout(r, 2500));
    expect(await firingOf(hub, 'th-1')).toBeUndefined();
    // Held for five minutes (no report since: the condition holds until one says otherwise).
    clock.moveBy(5 * MINUTE + 1000);
    const alert = await waitFor(() => firingOf(hub, 'th-1'), { what: 'the telemetry alert' });
    expect(alert).toMatchObject({ kind: 'telemetry', device: 'th-1', summary: 'th-1 temp_c 75.5 above 70 for 5 min' });
    expect(alert.detail).toMatchObject({ metric: 'temp_c', op: 'above', threshold: 70, observed: 75.5, minutes: 5 });
    await waitFor(() => delivered(receiver, 'alert.firing', 'th-1')[0], { what: 'its webhook' });
    // A report without the metric changes nothing; one below the threshold resolves it.
    await report({ uptime_s: 100 });
    await waitFor(() => hub.health.latest('th-1')?.uptime_s === 100, { what: 'the report without temp_c' });
    expect((await firingOf(hub, 'th-1'))?.id).toBe(alert.id);
    await report({ temp_c: 60 });
    const cooled = await waitFor(async () => {
      const view = (await api(hub, 'GET', `/api/alerts/${alert.id}`)).body as AlertView;
      return view.state === 'resolved' ? view : undefined;
    }, { what: 'the telemetry alert resolved' });
    expect(cooled).toMatchObject({ resolved_by: 'hub', resolution: 'th-1 temp_c 60 is no longer above 70' });
    // This webhook wants firing alerts only.
    await new Promise((r) => setTimeout(r, 1500));
    expect(receiver.received.map((r) => r.payload.event)).toEqual(['alert.firing']);

    // A real hypha reporting every second: memory available, a ratio of its reports.
    const memory = await api(hub, 'POST', '/api/alerts/rules', { kind: 'telemetry', metric: 'mem_available_ratio', op: 'below', value: 1, minutes: 1, tags: ['pi'] });
    spawnHypha(hub.urls.mqtt, 'hy-1', ['--token', hub.stores.devices.add('hy-1', ['pi']), '--health-interval', '1']);
    await waitFor(() => hub.health.latest('hy-1'), { timeoutMs: 15_000, what: 'a report from hypha' });
    clock.moveBy(2 * MINUTE);
    const low = await waitFor(() => firingOf(hub, 'hy-1'), { what: 'the alert from hypha\'s reports' });
    expect(low).toMatchObject({ rule: memory.body.id, kind: 'telemetry' });
    expect(low.detail.observed).toBeGreaterThan(0);
    expect(low.detail.observed).toBeLessThan(1);
    await waitFor(() => delivered(receiver, 'alert.firing', 'hy-1')[0], { what: 'its webhook' });
    // The rule changed so that the reports fall on the other side: the next report resolves it.
    expect((await api(hub, 'PATCH', `/api/alerts/rules/${memory.body.id}`, { value: 0 })).body).toMatchObject({ value: 0, metric: 'mem_available_ratio', minutes: 1 });
    const ok = await waitFor(async () => {
      const view = (await api(hub, 'GET', `/api/alerts/${low.id}`)).body as AlertView;
      return view.state === 'resolved' ? view : undefined;
    }, { what: 'the hypha alert resolved by its next report' });
    expect(ok.resolution).toMatch(/^hy-1 mem_available_ratio 0\.\d+ is no longer below 0$/);
  }, 60_000);

  it('fires a job alert when a job of real agents aborts; an operator resolves it', async () => {
    const hub = await startTestHub();
    const receiver = await startReceiver();
    await api(hub, 'POST', '/api/webhooks', { url: receiver.url, secret: SECRET }, hub.stores.tokens.add('root', 'admin'));
    const rule = await api(hub, 'POST', '/api/alerts/rules', { name: 'jobs gone wrong', kind: 'job' });
    expect(rule.body).toMatchObject({ kind: 'job', states: ['aborted', 'failed', 'timed_out'] });
    const timeouts = await api(hub, 'POST', '/api/alerts/rules', { kind: 'job', states: ['timed_out'] });
    const devices = ['job-1', 'job-2', 'job-3', 'job-4'];
    const { startAgents } = await import('./helpers.js');
    await startAgents(hub, devices);
    const created = await api(hub, 'POST', '/api/jobs', {
      target: { devices },
      order: 'exec_bash',
      cmd_str: 'echo broken >&2; exit 3',
      concurrency: 1,
      abort: [{ when: 'failed', above_percent: 50, min_finished: 2 }],
    });
    expect(created.status).toBe(201);
    const jobId = created.body.id as string;
    const alert = await waitFor(() => firingOf(hub, jobId), { what: 'the job alert' });
    const reason = '2 of 2 finished targets failed (100.0%, above 50% with at least 2 finished)';
    expect(alert).toMatchObject({ rule: rule.body.id, kind: 'job', job: jobId, device: null, summary: `job ${jobId} aborted: ${reason}` });
    expect(alert.detail).toMatchObject({ job: jobId, state: 'aborted', reason, counts: { failed: 2, canceled: 2 }, cmd_str: 'echo broken >&2; exit 3' });
    const fired = await waitFor(() => delivered(receiver, 'alert.firing', jobId)[0], { what: 'its webhook' });
    expect(signatureValid(SECRET, fired.raw, fired.headers['x-rhizosphere-signature'])).toBe(true);
    // Only once, and not for the rule that wants timed-out targets.
    await new Promise((r) => setTimeout(r, 2500));
    const all = (await api(hub, 'GET', '/api/alerts')).body as AlertView[];
    expect(all.filter((a) => a.subject === jobId).map((a) => a.rule)).toEqual([rule.body.id]);
    expect(all.some((a) => a.rule === timeouts.body.id)).toBe(false);

    // It stays firing until someone resolves it.
    const resolved = await api(hub, 'POST', `/api/alerts/${alert.id}/resolve`);
    expect(resolved.status).toBe(200);
    expect(resolved.body).toMatchObject({ state: 'resolved', resolved_by: 'anonymous', resolution: 'resolved by anonymous' });
    expect((await api(hub, 'POST', `/api/alerts/${alert.id}/resolve`)).body.state).toBe('resolved');
    await waitFor(() => delivered(receiver, 'alert.resolved', jobId)[0], { what: 'the resolved webhook' });
    expect(hub.stores.audit.query({ action: 'alert.resolve' })[0]).toMatchObject({ actor: 'anonymous', outcome: 'resolved' });
    expect((await api(hub, 'POST', '/api/alerts/al-nope/resolve')).status).toBe(404);
  }, 60_000);

  it('retries a webhook that fails, with backoff, across a restart too, auditing each attempt', async () => {
    expect([1, 2, 3, 4, 5, 11, 12].map(backoffMs)).toEqual([1000, 2000, 4000, 8000, 16000, 600000, 600000]);
    expect(WEBHOOK_MAX_ATTEMPTS).toBe(12);
    const dataDir = tempDir('rhizo-alerts-retry-');
    let hub = await startTestHub({ dataDir });
    const admin = hub.stores.tokens.add('root', 'admin');
    // 500 to the first request, then 200.
    const receiver = await startReceiver((n) => (n === 1 ? 500 : 200));
    await api(hub, 'POST', '/api/webhooks', { url: receiver.url, secret: SECRET }, admin);
    const rule = await api(hub, 'POST', '/api/alerts/rules', { kind: 'device_offline', minutes: 0 });
    const device = await startDevice(hub, 'flaky-1');
    await device.endAsync(true);

    const ok = await waitFor(() => delivered(receiver, 'alert.firing', 'flaky-1')[0], { what: 'the delivery after a retry' });
    const [first, second] = receiver.received;
    expect([first!.answered, second!.answered]).toEqual([500, 200]);
    expect(second).toBe(ok);
    // The same delivery, byte for byte.
    expect(second!.headers['x-rhizosphere-delivery']).toBe(first!.headers['x-rhizosphere-delivery']);
    expect(second!.raw).toBe(first!.raw);
    expect(signatureValid(SECRET, second!.raw, second!.headers['x-rhizosphere-signature'])).toBe(true);
    // The hub audits an attempt once the receiver's answer is in, in its next audit batch (100 ms).
    const attempts = await waitFor(() => {
      const entries = hub.stores.audit.query({ action: 'webhook.delivery' }).reverse();
      return entries.length >= 2 ? entries : null;
    }, { what: 'both attempts audited' });
    expect(attempts.map((e) => [e.outcome, (e.detail as { attempt: number }).attempt, (e.detail as { status: number }).status])).toEqual([
      ['failed', 1, 500],
      ['delivered', 2, 200],
    ]);
    expect(attempts[0]!.detail).toMatchObject({ error: 'HTTP 500', url: receiver.url, event: 'alert.firing', delivery: first!.payload.delivery });

    // The receiver down (503) when the alert resolves; the hub restarts before it is back.
    receiver.status = () => 503;
    const again = await startDevice(hub, 'flaky-1');
    await waitFor(() => receiver.received.find((r) => r.payload.event === 'alert.resolved'), { what: 'a first attempt of the resolution' });
    const pendingId = receiver.received.find((r) => r.payload.event === 'alert.resolved')!.payload.delivery;
    // Held, so that the device dropping with the hub fires nothing more.
    expect((await api(hub, 'PATCH', `/api/alerts/rules/${rule.body.id}`, { enabled: false })).body.enabled).toBe(false);
    await hub.close();
    void again;
    receiver.status = () => 200;
    hub = await startTestHub({ dataDir });
    const late = await waitFor(() => delivered(receiver, 'alert.resolved', 'flaky-1')[0], { what: 'the resolution delivered after the restart' });
    expect(late.payload.delivery).toBe(pendingId);
    expect(late.headers['x-rhizosphere-delivery']).toBe(pendingId);
    const after = await waitFor(() => {
      const entries = hub.stores.audit.query({ action: 'webhook.delivery' }).filter((e) => (e.detail as { delivery: string }).delivery === pendingId);
      return entries[0]?.outcome === 'delivered' ? entries : null;
    }, { what: 'the late delivery audited' });
    expect(after[0]).toMatchObject({ outcome: 'delivered', detail: expect.objectContaining({ status: 200 }) });
    expect(after.slice(1).every((e) => e.outcome === 'failed' && (e.detail as { status: number }).status === 503)).toBe(true);
    expect((after[0]!.detail as { attempt: number }).attempt).toBe(after.length);
  }, 60_000);

  it('refuses bad rules and webhooks with coded errors, over REST and the CLI; roles decide who changes what', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    const tokens = { admin: hub.stores.tokens.add('root', 'admin'), operator: hub.stores.tokens.add('op', 'operator'), viewer: hub.stores.tokens.add('look', 'viewer') };
    const rules: [Record<string, unknown>, string][] = [
      [{ kind: 'disk_full', minutes: 5 }, 'kind must be one of device_offline, telemetry, job'],
      [{ minutes: 5 }, 'kind is required'],
      [{ kind: 'device_offline', minutes: -1 }, 'minutes must be at least 0'],
      [{ kind: 'device_offline', minutes: 'soon' }, 'minutes must be a number of minutes'],
      [{ kind: 'device_offline' }, 'minutes is required for device_offline rules'],
      [{ kind: 'device_offline', minutes: 5, tags: ['bad tag'] }, 'tags.0 tag "bad tag" must be 1 to 64 of'],
      [{ kind: 'telemetry', metric: 'fan_speed', op: 'above', value: 1, minutes: 1 }, 'metric must be one of load1'],
      [{ kind: 'telemetry', metric: 'temp_c', op: 'over', value: 1, minutes: 1 }, 'op must be "above" or "below"'],
      [{ kind: 'telemetry', metric: 'temp_c', op: 'above', minutes: 1 }, 'value is required for telemetry rules'],
      [{ kind: 'telemetry', metric: 'disk_free_ratio', op: 'below', value: 10, minutes: 1 }, 'value must be from 0 to 1 for disk_free_ratio'],
      [{ kind: 'job', minutes: 5 }, 'minutes is not a field of job rules'],
      [{ kind: 'job', states: ['exploded'] }, 'states.0 must be one of aborted, failed, timed_out'],
      [{ kind: 'job', when: 'always' }, 'has an unknown key'],
    ];
    for (const [body, message] of rules) {
      const answer = await api(hub, 'POST', '/api/alerts/rules', body, tokens.operator);
      expect([JSON.stringify(body), answer.status, answer.body.code]).toEqual([JSON.stringify(body), 400, 'BAD_REQUEST']);
      expect(answer.body.message).toContain(message);
    }
    const webhooks: [Record<string, unknown>, string][] = [
      [{ url: 'ftp://example.net/hook', secret: SECRET }, 'url must be an http:// or https:// URL, not ftp:'],
      [{ url: 'javascript:alert(1)', secret: SECRET }, 'url must be an http:// or https:// URL, not javascript:'],
      [{ url: 'file:///etc/passwd', secret: SECRET }, 'url must be an http:// or https:// URL, not file:'],
      [{ url: 'not a url', secret: SECRET }, 'url must be an absolute http:// or https:// URL'],
      [{ url: 'https://user:pw@example.net/hook', secret: SECRET }, 'url must not carry a user name or password'],
      [{ url: 'https://example.net/hook', secret: 'short' }, 'secret must be at least 16 characters'],
      [{ url: 'https://example.net/hook' }, 'secret is required'],
      [{ url: 'https://example.net/hook', secret: SECRET, events: ['alert.exploded'] }, 'events.0 must be one of alert.firing, alert.resolved'],
    ];
    for (const [body, message] of webhooks) {
      const answer = await api(hub, 'POST', '/api/webhooks', body, tokens.admin);
      expect([JSON.stringify(body), answer.status, answer.body.code]).toEqual([JSON.stringify(body), 400, 'BAD_REQUEST']);
      expect(answer.body.message).toContain(message);
    }
    expect(hub.stores.audit.query({ action: 'alert.rule.create' }).filter((e) => e.outcome === 'BAD_REQUEST')).toHaveLength(rules.length);

    // Who may do what.
    const rule = { kind: 'device_offline', minutes: 5 };
    const viewerRule = await api(hub, 'POST', '/api/alerts/rules', rule, tokens.viewer);
    expect([viewerRule.status, viewerRule.body.code]).toEqual([403, 'FORBIDDEN']);
    expect(viewerRule.body.message).toContain('look may not change alerts (role viewer');
    const made = await api(hub, 'POST', '/api/alerts/rules', rule, tokens.operator);
    expect(made.status).toBe(201);
    expect((await api(hub, 'GET', '/api/alerts/rules', undefined, tokens.viewer)).body.map((r: { id: string }) => r.id)).toEqual([made.body.id]);
    expect((await api(hub, 'GET', '/api/alerts', undefined, tokens.viewer)).status).toBe(200);
    expect((await api(hub, 'PATCH', `/api/alerts/rules/${made.body.id}`, { enabled: false }, tokens.viewer)).status).toBe(403);
    expect((await api(hub, 'DELETE', `/api/alerts/rules/${made.body.id}`, undefined, tokens.viewer)).status).toBe(403);
    for (const who of ['operator', 'viewer'] as const) {
      const post = await api(hub, 'POST', '/api/webhooks', { url: 'https://example.net/hook', secret: SECRET }, tokens[who]);
      expect([who, post.status, post.body.code]).toEqual([who, 403, 'FORBIDDEN']);
      expect((await api(hub, 'GET', '/api/webhooks', undefined, tokens[who])).status).toBe(403);
    }
    expect((await api(hub, 'GET', '/api/alerts')).status).toBe(401);
    const hook = await api(hub, 'POST', '/api/webhooks', { url: 'https://example.net/hook', secret: SECRET, events: ['alert.resolved'] }, tokens.admin);
    expect(hook.body).toMatchObject({ url: 'https://example.net/hook', events: ['alert.resolved'], secret: '********' });
    expect(JSON.stringify(hub.stores.audit.query({ action: 'webhook.create' }))).not.toContain(SECRET);
    expect((await api(hub, 'DELETE', `/api/webhooks/${hook.body.id}`, undefined, tokens.admin)).body).toEqual({ ok: true, id: hook.body.id });
    expect((await api(hub, 'DELETE', `/api/webhooks/${hook.body.id}`, undefined, tokens.admin)).status).toBe(404);

    // Changes: checked as a whole; the kind stays; unknown ids are 404.
    const patched = await api(hub, 'PATCH', `/api/alerts/rules/${made.body.id}`, { minutes: -3 }, tokens.operator);
    expect([patched.status, patched.body.message]).toEqual([400, 'minutes must be at least 0']);
    expect((await api(hub, 'PATCH', `/api/alerts/rules/${made.body.id}`, { kind: 'job' }, tokens.operator)).body.message).toBe('kind cannot be changed: remove the rule and add another');
    expect((await api(hub, 'PATCH', `/api/alerts/rules/${made.body.id}`, { minutes: 10, tags: ['lab'] }, tokens.operator)).body).toMatchObject({ minutes: 10, tags: ['lab'], kind: 'device_offline' });
    expect((await api(hub, 'PATCH', '/api/alerts/rules/ar-nope', { minutes: 1 }, tokens.operator)).status).toBe(404);
    expect((await api(hub, 'GET', '/api/alerts?state=burning', undefined, tokens.viewer)).body).toMatchObject({ code: 'BAD_REQUEST', message: 'state must be one of firing, resolved' });
    expect((await api(hub, 'GET', '/api/alerts/al-nope', undefined, tokens.viewer)).status).toBe(404);

    // The CLI: the same refusals, and the rules.
    const url = hub.urls.ws;
    const as = (who: 'operator' | 'viewer') => ['--token-name', who === 'operator' ? 'op' : 'look', '--token', tokens[who]];
    const unknownKind = await cli(['alert', 'rule', 'add', '--url', url, ...as('operator'), '--kind', 'disk_full', '--minutes', '5']);
    expect([unknownKind.status, unknownKind.stderr]).toEqual([1, 'rhizosphere: BAD_REQUEST: kind must be one of device_offline, telemetry, job\n']);
    const negative = await cli(['alert', 'rule', 'add', '--url', url, ...as('operator'), '--kind', 'device_offline', '--minutes=-5']);
    expect([negative.status, negative.stderr]).toEqual([1, 'rhizosphere: BAD_REQUEST: minutes must be at least 0\n']);
    const byViewer = await cli(['alert', 'rule', 'add', '--url', url, ...as('viewer'), '--kind', 'job']);
    expect(byViewer.status).toBe(1);
    expect(byViewer.stderr).toMatch(/^rhizosphere: FORBIDDEN: look may not change alerts/);
    const both = await cli(['alert', 'rule', 'add', '--url', url, ...as('operator'), '--kind', 'telemetry', '--metric', 'temp_c', '--above', '1', '--below', '2']);
    expect(both.status).toBe(2);
    const added = await cli(['alert', 'rule', 'add', '--url', url, ...as('operator'), '--kind', 'telemetry', '--metric', 'temp_c', '--above', '70', '--minutes', '5', '--tag', 'boiler', '--name', 'hot boilers']);
    expect(added.stderr).toBe('');
    const addedId = added.stdout.split(' ')[0]!;
    expect(added.stdout).toBe(`${addedId} temp_c above 70 for 5 min [boiler]\n`);
    const job = await cli(['alert', 'rule', 'add', '--url', url, ...as('operator'), '--kind', 'job', '--states', 'aborted,timed_out']);
    expect(job.stdout).toMatch(/ job aborted, timed_out\n$/);
    const listed = await cli(['alert', 'rule', 'list', '--url', url, ...as('viewer')]);
    expect(listed.status).toBe(0);
    expect(listed.stdout).toMatch(new RegExp(`${addedId}\\s+hot boilers\\s+telemetry\\s+temp_c above 70 for 5 min \\[boiler\\]\\s+yes\\s+0`));
    const alerts = await cli(['alert', 'list', '--url', url, ...as('viewer'), '--state', 'firing']);
    expect([alerts.status, alerts.stdout]).toEqual([0, 'ID  STATE  KIND  SUBJECT  FIRED  RESOLVED  SUMMARY\n']);
    expect((await cli(['alert', 'list', '--url', url, ...as('viewer'), '--state', 'burning'])).status).toBe(2);
    expect((await cli(['alert', 'rule', 'remove', '--url', url, ...as('operator'), addedId])).stdout).toBe(`${addedId} removed\n`);
    const gone = await cli(['alert', 'rule', 'remove', '--url', url, ...as('operator'), addedId]);
    expect([gone.status, gone.stderr]).toEqual([1, `rhizosphere: BAD_REQUEST: no alert rule ${addedId}\n`]);
  }, 60_000);
});
