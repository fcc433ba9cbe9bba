/**
 * `--broker-hook-secret-file`: the hub answers a broker's HTTP authentication and ACL checks
 * (docs/broker-hooks.md). A real hub runs on a Mosquitto started here (`--broker`); the
 * checks are sent over real HTTP as EMQX 5 renders them (its default headers, every
 * placeholder a JSON string) and as mosquitto-go-auth's HTTP backend posts them (JSON or a
 * form). No EMQX and no go-auth run here: these are the request formats of their sources,
 * sent by hand.
 */
import { spawn, spawnSync } from 'node:child_process';
import { request } from 'node:http';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { hashToken } from '../src/auth/secrets.js';
import { startHub, type Hub } from '../src/index.js';
import { startMosquitto } from './brokers.js';
import { connectMqtt, HUB_BIN, startTestHub, tempDir } from './helpers.js';

const P = 'rhizosphere';
const SECRET = 'hook-secret-3f9a0c7d51e2b846';
const HUB_USER = 'rz-hub';
const HUB_PASSWORD = 'hub-password-on-the-broker';

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Record<string, unknown>;
}

/** One HTTP POST with exactly these headers (fetch would refuse `connection` and `keep-alive`). */
function post(url: string, body: string | Buffer, headers: Record<string, string>, method = 'POST'): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(url, { method, headers: { 'content-length': String(Buffer.byteLength(body)), ...headers } }, (res) => {
      let text = '';
      res.on('data', (chunk: Buffer) => (text += chunk.toString()));
      res.on('end', () => {
        try {
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: JSON.parse(text) as Record<string, unknown> });
        } catch {
          reject(new Error(`${res.statusCode}: not JSON: ${text.slice(0, 200)}`));
        }
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** EMQX 5's default headers for a POST (emqx_auth_http_utils:default_headers/0) and the `headers` of docs/broker-hooks.md. */
const EMQX_HEADERS = {
  'content-type': 'application/json',
  accept: 'application/json',
  'cache-control': 'no-cache',
  connection: 'keep-alive',
  'keep-alive': 'timeout=30, max=1000',
  authorization: `Bearer ${SECRET}`,
};

async function hookedHub(options: Parameters<typeof startTestHub>[0] = {}) {
  const mosquitto = await startMosquitto();
  const dir = tempDir();
  writeFileSync(join(dir, 'hook-secret'), `${SECRET}\n`);
  writeFileSync(join(dir, 'broker-password'), `${HUB_PASSWORD}\n`);
  const hub = await startTestHub({
    broker: mosquitto.url,
    brokerUsername: HUB_USER,
    brokerPasswordFile: join(dir, 'broker-password'),
    brokerHookSecretFile: join(dir, 'hook-secret'),
    allowAnonymous: false,
    ...options,
  });
  return { hub, mosquitto, ...emqxOf(hub) };
}

function emqxOf(hub: Hub) {
  const base = `${hub.urls.http}/broker`;
  return {
    base,
    /** The authenticator's body template: username, password, clientid, peerhost. */
    async auth(username: string, password: string, clientid: string) {
      const answer = await post(`${base}/auth`, JSON.stringify({ username, password, clientid, peerhost: '127.0.0.1' }), EMQX_HEADERS);
      expect(answer.status).toBe(200);
      // EMQX reads a body whose content type starts with application/json (emqx_authz_utils:parse_http_resp_body/2).
      expect(answer.headers['content-type']).toMatch(/^application\/json/);
      expect(Object.keys(answer.body).sort()).toEqual(['is_superuser', 'result']);
      return answer.body as { result: string; is_superuser: boolean };
    },
    /** The authorizer's body template; `qos` and `retain` as EMQX renders them, strings. */
    async acl(username: string, clientid: string, action: 'publish' | 'subscribe', topic: string, { qos = '1', retain = 'false' } = {}) {
      const answer = await post(`${base}/acl`, JSON.stringify({ username, clientid, topic, action, qos, retain }), EMQX_HEADERS);
      expect(answer.status).toBe(200);
      expect(answer.headers['content-type']).toMatch(/^application\/json/);
      expect(Object.keys(answer.body)).toEqual(['result']);
      return answer.body.result as string;
    },
  };
}

/** The admin CLI in its own process, as an operator runs it while the hub runs. */
function cli(dataDir: string, args: string[]): Promise<Record<string, unknown>> {
  const child = spawn(process.execPath, [HUB_BIN, ...args, '--data-dir', dataDir, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve, reject) =>
    child.on('exit', (status) => (status === 0 ? resolve(JSON.parse(stdout) as Record<string, unknown>) : reject(new Error(`rhizosphere ${args.join(' ')}: ${status}: ${stderr}`)))),
  );
}

describe('broker hooks: EMQX 5 HTTP authentication', () => {
  it('lets a device in with its id as user name and client id and its token, and in no other way', async () => {
    const { hub, auth } = await hookedHub();
    const token = hub.stores.devices.add('pi-01');
    const other = hub.stores.devices.add('pi-02');

    expect(await auth('pi-01', token, 'pi-01')).toEqual({ result: 'allow', is_superuser: false });
    expect(await auth('pi-01', `${token}x`, 'pi-01')).toEqual({ result: 'deny', is_superuser: false });
    // Its own token under another client id, another device's token, no credentials at all.
    expect((await auth('pi-01', token, 'pi-01-b')).result).toBe('deny');
    expect((await auth('pi-01', other, 'pi-01')).result).toBe('deny');
    expect((await auth('pi-02', token, 'pi-02')).result).toBe('deny');
    expect((await auth('', '', 'pi-01')).result).toBe('deny');
  });

  it('lets API tokens in by name and secret under any client id, and the hub\'s own user in as superuser', async () => {
    const { hub, auth, acl } = await hookedHub();
    const ops = hub.stores.tokens.add('ops', 'operator');

    expect(await auth('ops', ops, 'ops-laptop')).toEqual({ result: 'allow', is_superuser: false });
    expect((await auth('ops', `${ops}x`, 'ops-laptop')).result).toBe('deny');
    expect(await auth(HUB_USER, HUB_PASSWORD, 'rhizosphere-hub-n1')).toEqual({ result: 'allow', is_superuser: true });
    expect(await auth(HUB_USER, 'not-the-password', 'rhizosphere-hub-n1')).toEqual({ result: 'deny', is_superuser: false });
    // The hub may do anything (EMQX skips authorization for a superuser; asked anyway, the hook allows).
    expect(await acl(HUB_USER, 'rhizosphere-hub-n1', 'publish', `${P}/devices/pi-01/command`)).toBe('allow');
    expect(await acl(HUB_USER, 'rhizosphere-hub-n1', 'subscribe', '$share/rhizosphere/rhizosphere/clients/+/request')).toBe('allow');
    expect(await acl(HUB_USER, 'rhizosphere-hub-n1', 'subscribe', '#')).toBe('allow');
    // An API token is no superuser, even an admin's.
    const root = hub.stores.tokens.add('root', 'admin');
    expect(await auth('root', root, 'root-1')).toEqual({ result: 'allow', is_superuser: false });
  });

  it('refuses pending, unknown and hostile ids with a deny, never an error, and keeps serving', async () => {
    const { hub, auth, acl } = await hookedHub();
    const token = hub.stores.devices.add('pi-01');
    const waiting = 'rz_a-pending-token-of-enough-length';
    hub.stores.devices.addPending('pi-new', hashToken(waiting));

    expect((await auth('pi-new', waiting, 'pi-new')).result).toBe('deny');
    expect(await acl('pi-new', 'pi-new', 'subscribe', `${P}/devices/pi-new/command`)).toBe('deny');
    expect((await auth('ghost', token, 'ghost')).result).toBe('deny');
    expect(await acl('ghost', 'ghost', 'publish', `${P}/devices/ghost/response`)).toBe('deny');
    for (const id of ['a/b', '+', '#', '$SYS', '$SYS/broker', '', 'x'.repeat(129), 'pi-01/#', 'pi 01', 'pi-01\u0000']) {
      expect((await auth(id, token, id)).result, `auth ${JSON.stringify(id)}`).toBe('deny');
      expect((await auth('pi-01', token, id)).result, `auth pi-01 as client ${JSON.stringify(id)}`).toBe('deny');
      expect(await acl(id, id, 'publish', `${P}/devices/${id}/response`), `acl ${JSON.stringify(id)}`).toBe('deny');
      expect(await acl('pi-01', id, 'subscribe', `${P}/devices/pi-01/command`), `acl pi-01 as client ${JSON.stringify(id)}`).toBe('deny');
    }
    // A console token lets a browser into the hub's own /mqtt (checked there); on the broker it is nothing.
    const login = await fetch(`${hub.urls.http}/api/login`, { method: 'POST', body: JSON.stringify({ name: 'admin', password: hub.initialAdminPassword }) });
    const cookie = login.headers.get('set-cookie')!.split(';')[0]!;
    const { mqtt: consoleLogin } = (await (await fetch(`${hub.urls.http}/api/session`, { headers: { cookie } })).json()) as { mqtt: { username: string; password: string } };
    const browser = await connectMqtt(hub.urls.ws, { clientId: 'console-1', username: consoleLogin.username, password: consoleLogin.password });
    expect(browser.connected).toBe(true);
    expect((await auth(consoleLogin.username, consoleLogin.password, 'console-1')).result).toBe('deny');
    expect(await acl(consoleLogin.username, 'console-1', 'subscribe', '#')).toBe('deny');
    // Still serving, and still right.
    expect(await auth('pi-01', token, 'pi-01')).toEqual({ result: 'allow', is_superuser: false });
  });

  it('takes an unknown device with the enrolment key as pending, and lets it in once an admin accepts it', async () => {
    const enrollKey = 'enrol-key-0123456789';
    const { hub, auth } = await hookedHub({ enrollKey });
    const chosen = 'rz_the-token-this-device-chose-1234';

    expect((await auth('pi-new', `${enrollKey}.${chosen}`, 'pi-new')).result).toBe('deny');
    expect(hub.stores.devices.get('pi-new')?.state).toBe('pending');
    expect((await auth('pi-new', chosen, 'pi-new')).result).toBe('deny');
    hub.stores.devices.accept('pi-new');
    expect((await auth('pi-new', `${enrollKey}.${chosen}`, 'pi-new')).result).toBe('allow');
    expect((await auth('pi-new', chosen, 'pi-new')).result).toBe('allow');
  });

  it('refuses the old token of a device rotated in another process at once, and a removed device altogether', async () => {
    const { hub, auth, acl } = await hookedHub();
    const dataDir = hub.config.dataDir;
    const first = hub.stores.devices.add('pi-01');
    expect((await auth('pi-01', first, 'pi-01')).result).toBe('allow');

    const rotated = (await cli(dataDir, ['device', 'rotate', 'pi-01'])).token as string;
    // No wait: the next check reads the registry as the CLI left it.
    expect((await auth('pi-01', first, 'pi-01')).result).toBe('deny');
    expect((await auth('pi-01', rotated, 'pi-01')).result).toBe('allow');
    expect(await acl('pi-01', 'pi-01', 'publish', `${P}/devices/pi-01/response`)).toBe('allow');

    expect(await cli(dataDir, ['device', 'remove', 'pi-01'])).toMatchObject({ removed: true });
    expect((await auth('pi-01', rotated, 'pi-01')).result).toBe('deny');
    expect(await acl('pi-01', 'pi-01', 'publish', `${P}/devices/pi-01/response`)).toBe('deny');
    expect(await acl('pi-01', 'pi-01', 'subscribe', `${P}/devices/pi-01/command`)).toBe('deny');

    // A removed API token, the same.
    const ops = hub.stores.tokens.add('ops', 'operator');
    expect(await acl('ops', 'ops-1', 'publish', `${P}/clients/ops-1/request`)).toBe('allow');
    await cli(dataDir, ['token', 'remove', 'ops']);
    expect((await auth('ops', ops, 'ops-1')).result).toBe('deny');
    expect(await acl('ops', 'ops-1', 'publish', `${P}/clients/ops-1/request`)).toBe('deny');
  });
});

describe('broker hooks: EMQX 5 HTTP authorization', () => {
  it('lets a device use its own topics and none of another device\'s, as the embedded broker does', async () => {
    const { hub, acl } = await hookedHub();
    hub.stores.devices.add('pi-01');
    hub.stores.devices.add('pi-02');
    const own = `${P}/devices/pi-01`;
    const other = `${P}/devices/pi-02`;

    for (const topic of [`${own}/response`, `${own}/telemetry`, `${own}/telemetry/temp`, `${own}/tunnels/t1/out`]) {
      expect(await acl('pi-01', 'pi-01', 'publish', topic), topic).toBe('allow');
    }
    // Its retained birth and will on its own presence topic.
    expect(await acl('pi-01', 'pi-01', 'publish', `${own}/presence`, { retain: 'true' })).toBe('allow');
    for (const filter of [`${own}/command`, `${own}/presence`, `${own}/tunnels/+/in`]) {
      expect(await acl('pi-01', 'pi-01', 'subscribe', filter), filter).toBe('allow');
    }

    // Another device's: a forged Response, a forged birth or will, telemetry, tunnel frames.
    for (const topic of [`${other}/response`, `${other}/presence`, `${other}/telemetry/temp`, `${other}/tunnels/t1/out`]) {
      expect(await acl('pi-01', 'pi-01', 'publish', topic, { retain: topic.endsWith('presence') ? 'true' : 'false' }), topic).toBe('deny');
    }
    for (const filter of [`${other}/command`, `${other}/presence`, `${other}/tunnels/+/in`, `${P}/devices/+/command`, `${P}/#`, '#']) {
      expect(await acl('pi-01', 'pi-01', 'subscribe', filter), filter).toBe('deny');
    }
    // What the hub alone publishes: commands (its own too), statuses, Replies; and a Request.
    for (const topic of [`${own}/command`, `${own}/status`, `${other}/command`, `${P}/clients/pi-01/response`, `${P}/clients/pi-01/request`, `${own}/tunnels/t1/in`]) {
      expect(await acl('pi-01', 'pi-01', 'publish', topic), topic).toBe('deny');
    }
    // The device's user name under another client id is no device (nor a token).
    expect(await acl('pi-01', 'pi-02', 'subscribe', `${other}/command`)).toBe('deny');
    expect(await acl('pi-01', 'pi-02', 'publish', `${own}/response`)).toBe('deny');
  });

  it('confines API tokens to their own client id\'s topics and to what their role may do', async () => {
    const { hub, acl } = await hookedHub();
    hub.stores.tokens.add('ops', 'operator');
    hub.stores.tokens.add('eyes', 'viewer');
    hub.stores.tokens.add('root', 'admin');
    const mine = `${P}/clients/ops-1`;

    expect(await acl('ops', 'ops-1', 'publish', `${mine}/request`)).toBe('allow');
    expect(await acl('ops', 'ops-1', 'publish', `${mine}/tunnels/t1/in`)).toBe('allow');
    for (const filter of [`${mine}/response`, `${mine}/tunnels/+/out`, `${P}/devices/+/status`, `${P}/devices/pi-01/telemetry/#`, `${P}/jobs/+/status`]) {
      expect(await acl('ops', 'ops-1', 'subscribe', filter), filter).toBe('allow');
    }
    // On an external broker the hub cannot see who published a Request: another client id's is refused here.
    expect(await acl('ops', 'ops-1', 'publish', `${P}/clients/ops-2/request`)).toBe('deny');
    expect(await acl('ops', 'ops-1', 'publish', `${P}/clients/ops-2/tunnels/t1/in`)).toBe('deny');
    expect(await acl('ops', 'ops-1', 'subscribe', `${P}/clients/ops-2/response`)).toBe('deny');
    // Requests are never retained (the embedded broker clears the flag; a broker can only refuse).
    expect(await acl('ops', 'ops-1', 'publish', `${mine}/request`, { retain: 'true' })).toBe('deny');
    // Devices' topics, the hub's.
    for (const topic of [`${P}/devices/pi-01/command`, `${P}/devices/pi-01/status`, `${P}/devices/pi-01/presence`, `${mine}/response`, `${P}/cluster/nodes/n1/x`]) {
      expect(await acl('ops', 'ops-1', 'publish', topic), topic).toBe('deny');
    }
    expect(await acl('ops', 'ops-1', 'subscribe', `${P}/devices/pi-01/command`)).toBe('deny');
    // Outside the prefix, an operator's own business.
    expect(await acl('ops', 'ops-1', 'publish', 'lab/bench-3/power')).toBe('allow');

    // A viewer looks: no Requests, no tunnels, nothing published under the prefix.
    expect(await acl('eyes', 'eyes-1', 'subscribe', `${P}/devices/+/status`)).toBe('allow');
    expect(await acl('eyes', 'eyes-1', 'publish', `${P}/clients/eyes-1/request`)).toBe('deny');
    expect(await acl('eyes', 'eyes-1', 'publish', `${P}/clients/eyes-1/tunnels/t1/in`)).toBe('deny');
    expect(await acl('eyes', 'eyes-1', 'publish', 'lab/bench-3/power')).toBe('deny');

    // An admin reads everything, but publishes only what an operator may.
    expect(await acl('root', 'root-1', 'subscribe', '#')).toBe('allow');
    expect(await acl('root', 'root-1', 'subscribe', `${P}/devices/pi-01/command`)).toBe('allow');
    expect(await acl('root', 'root-1', 'publish', `${P}/devices/pi-01/command`)).toBe('deny');
    // A publish topic with a wildcard is no topic.
    expect(await acl('root', 'root-1', 'publish', 'lab/+/power')).toBe('deny');
  });
});

describe('broker hooks: the calls themselves', () => {
  it('answers 401 with a coded error to a call without the secret, and decides nothing', async () => {
    const { hub, base } = await hookedHub();
    const token = hub.stores.devices.add('pi-01');
    const body = JSON.stringify({ username: 'pi-01', password: token, clientid: 'pi-01' });
    const { authorization: _, ...noSecret } = EMQX_HEADERS;

    for (const headers of [noSecret, { ...noSecret, authorization: 'Bearer not-the-secret-at-all' }, { ...noSecret, authorization: `Basic ${Buffer.from(`x:${SECRET}`).toString('base64')}` }, { ...noSecret, authorization: SECRET }]) {
      const answer = await post(`${base}/auth`, body, headers);
      expect(answer.status).toBe(401);
      expect(answer.headers['www-authenticate']).toMatch(/^Bearer /);
      expect(answer.body).toEqual({ status: 'error', code: 'FORBIDDEN', message: expect.stringContaining('--broker-hook-secret-file') });
    }
    // The query-string secret is mosquitto-go-auth's alone (it cannot send headers).
    expect((await post(`${base}/auth?secret=${SECRET}`, body, noSecret)).status).toBe(401);
    expect((await post(`${base}/acl?secret=${SECRET}`, body, noSecret)).status).toBe(401);
    expect((await post(`${base}/go-auth/user?secret=not-it`, body, { 'content-type': 'application/json' })).status).toBe(401);
    expect((await post(`${base}/go-auth/user?secret=${SECRET}`, body, { 'content-type': 'application/json' })).status).toBe(200);
    // With the secret, the same body is answered.
    expect((await post(`${base}/auth`, body, EMQX_HEADERS)).body).toEqual({ result: 'allow', is_superuser: false });
  });

  it('answers 400 to malformed JSON and wrong types, 413 to a huge body, and keeps serving', async () => {
    const { hub, base, auth } = await hookedHub();
    const token = hub.stores.devices.add('pi-01');
    const send = (path: string, body: string | Buffer) => post(`${base}${path}`, body, EMQX_HEADERS);
    const bad = async (path: string, body: unknown, message: RegExp) => {
      const answer = await send(path, typeof body === 'string' ? body : JSON.stringify(body));
      expect(answer.status, JSON.stringify(body).slice(0, 80)).toBe(400);
      expect(answer.body).toEqual({ status: 'error', code: 'BAD_REQUEST', message: expect.stringMatching(message) });
    };

    await bad('/auth', '{"username": "pi-01", ', /not valid JSON/);
    await bad('/auth', 'null', /not valid JSON/);
    await bad('/auth', '', /username is required/);
    await bad('/auth', '[1, 2]', /must be object|\(body\)/);
    await bad('/auth', { username: 5, password: token, clientid: 'pi-01' }, /^username must be a string$/);
    await bad('/auth', { username: 'pi-01', password: token }, /^clientid is required$/);
    await bad('/auth', { username: 'pi-01', password: ['x'], clientid: 'pi-01' }, /^password must be a string$/);
    await bad('/acl', { username: 'pi-01', clientid: 'pi-01', topic: `${P}/devices/pi-01/response`, action: 'delete' }, /^action must be "publish" or "subscribe"$/);
    await bad('/acl', { username: 'pi-01', clientid: 'pi-01', topic: `${P}/devices/pi-01/response`, action: 'publish', qos: '7' }, /^qos must be 0, 1 or 2$/);
    await bad('/acl', { username: 'pi-01', clientid: 'pi-01', topic: `${P}/devices/pi-01/response`, action: 'publish', retain: 'maybe' }, /^retain must be true or false$/);
    await bad('/acl', { username: 'pi-01', clientid: 'pi-01', action: 'publish' }, /^topic is required$/);

    const huge = await send('/auth', JSON.stringify({ username: 'pi-01', password: 'x'.repeat(1024 * 1024), clientid: 'pi-01' }));
    expect(huge.status).toBe(413);
    expect(huge.body).toMatchObject({ status: 'error', code: 'PAYLOAD_TOO_LARGE' });
    const unknown = await post(`${base}/authenticate`, '{}', EMQX_HEADERS);
    expect(unknown.status).toBe(404);
    expect(unknown.body).toMatchObject({ status: 'error', code: 'BAD_REQUEST' });

    // Numbers and booleans where a template renders them unquoted are taken too.
    const typed = await send('/acl', JSON.stringify({ username: 'pi-01', clientid: 'pi-01', topic: `${P}/devices/pi-01/response`, action: 'publish', qos: 1, retain: false }));
    expect(typed.body).toEqual({ result: 'allow' });
    expect(await auth('pi-01', token, 'pi-01')).toEqual({ result: 'allow', is_superuser: false });
  });

  it('speaks mosquitto-go-auth\'s HTTP backend: JSON or form bodies, acc 1 to 4, answered by the status', async () => {
    const { hub, base } = await hookedHub();
    const token = hub.stores.devices.add('pi-01');
    const own = `${P}/devices/pi-01`;
    const json = (path: string, body: Record<string, unknown>) => post(`${base}/go-auth/${path}?secret=${SECRET}`, JSON.stringify(body), { 'content-type': 'application/json', 'user-agent': 'mosquitto-2.0' });
    const form = (path: string, body: Record<string, string>) => post(`${base}/go-auth/${path}?secret=${SECRET}`, new URLSearchParams(body).toString(), { 'content-type': 'application/x-www-form-urlencoded' });
    const aclStatus = async (acc: number, topic: string, user = 'pi-01') => (await json('acl', { username: user, clientid: user, topic, acc })).status;

    expect(await json('user', { username: 'pi-01', password: token, clientid: 'pi-01' })).toMatchObject({ status: 200, body: { ok: true } });
    expect(await json('user', { username: 'pi-01', password: 'wrong', clientid: 'pi-01' })).toMatchObject({ status: 403, body: { ok: false, error: expect.stringContaining('wrong token') } });
    expect((await form('user', { username: 'pi-01', password: token, clientid: 'pi-01' })).status).toBe(200);
    expect((await form('user', { username: 'pi-01', password: token, clientid: 'a/b' })).status).toBe(403);
    expect((await json('user', { username: HUB_USER, password: HUB_PASSWORD, clientid: 'hub' })).status).toBe(200);
    // Superuser: the hub's own user only (go-auth sends the user name alone).
    expect((await json('superuser', { username: HUB_USER })).status).toBe(200);
    expect((await json('superuser', { username: 'pi-01' })).status).toBe(403);
    expect((await form('superuser', { username: 'pi-01' })).status).toBe(403);

    // 2 write, 4 subscribe, 1 read (a message about to be delivered), 3 both.
    expect(await aclStatus(2, `${own}/response`)).toBe(200);
    expect(await aclStatus(2, `${P}/devices/pi-02/presence`)).toBe(403);
    expect(await aclStatus(4, `${own}/command`)).toBe(200);
    expect(await aclStatus(4, `${own}/tunnels/+/in`)).toBe(200);
    expect(await aclStatus(4, '#')).toBe(403);
    expect(await aclStatus(1, `${own}/command`)).toBe(200);
    expect(await aclStatus(1, `${own}/tunnels/t1/in`)).toBe(200);
    expect(await aclStatus(1, `${P}/devices/pi-02/command`)).toBe(403);
    expect(await aclStatus(3, `${own}/presence`)).toBe(200);
    expect(await aclStatus(3, `${own}/command`)).toBe(403);
    expect(await aclStatus(1, `${P}/devices/pi-02/command`, 'ghost')).toBe(403);
    // A form carries acc as a string.
    expect((await form('acl', { username: 'pi-01', clientid: 'pi-01', topic: `${own}/response`, acc: '2' })).status).toBe(200);
    expect((await form('acl', { username: 'pi-01', clientid: 'pi-01', topic: `${P}/devices/pi-02/response`, acc: '2' })).status).toBe(403);
    expect(await json('acl', { username: 'pi-01', clientid: 'pi-01', topic: `${own}/response`, acc: 5 })).toMatchObject({ status: 400, body: { code: 'BAD_REQUEST', message: expect.stringMatching(/^acc must be 1/) } });
  });

  it('is not served without the flag', async () => {
    const mosquitto = await startMosquitto();
    const hub = await startTestHub({ broker: mosquitto.url, allowAnonymous: false });
    const answer = await fetch(`${hub.urls.http}/broker/auth`, { method: 'POST', headers: { authorization: `Bearer ${SECRET}`, 'content-type': 'application/json' }, body: '{}' });
    expect(answer.status).toBe(404);
  });

  it('ends the start with one line naming --broker-hook-secret-file', async () => {
    const dir = tempDir();
    const file = (name: string, text: string) => (writeFileSync(join(dir, name), text), join(dir, name));
    const short = file('short', 'tooshort\nsecond line is not the secret\n');
    const good = file('good', `${SECRET}\n`);
    const start = (options: Parameters<typeof startHub>[0]) => startHub({ httpPort: 0, dataDir: tempDir(), logLevel: 'silent', ...options });

    await expect(start({ broker: 'mqtt://127.0.0.1:1', brokerUsername: HUB_USER, brokerHookSecretFile: short })).rejects.toThrow(
      `--broker-hook-secret-file: the secret (the first line of ${short}) has 8 characters; it needs at least 16`,
    );
    await expect(start({ broker: 'mqtt://127.0.0.1:1', brokerUsername: HUB_USER, brokerHookSecretFile: join(dir, 'missing') })).rejects.toThrow(/^--broker-hook-secret-file: cannot read .*missing \(ENOENT\)$/);
    await expect(start({ broker: 'mqtt://127.0.0.1:1', brokerHookSecretFile: good })).rejects.toThrow(/^--broker-hook-secret-file: needs --broker and --broker-username/);
    await expect(start({ brokerHookSecretFile: good })).rejects.toThrow(/^--broker-hook-secret-file: needs --broker and --broker-username/);

    const run = spawnSync(process.execPath, [HUB_BIN, '--broker', 'mqtt://127.0.0.1:1', '--broker-username', HUB_USER, '--broker-hook-secret-file', short, '--http-port', '0', '--data-dir', tempDir()], { encoding: 'utf8', timeout: 20_000 });
    expect(run.status).toBe(2);
    expect(run.stderr.trim()).toBe(`rhizosphere: --broker-hook-secret-file: the secret (the first line of ${short}) has 8 characters; it needs at least 16`);
    const env = spawnSync(process.execPath, [HUB_BIN, '--http-port', '0', '--data-dir', tempDir()], { encoding: 'utf8', timeout: 20_000, env: { ...process.env, RHIZOSPHERE_BROKER_HOOK_SECRET_FILE: good } });
    expect(env.status).toBe(2);
    expect(env.stderr.trim()).toMatch(/^rhizosphere: RHIZOSPHERE_BROKER_HOOK_SECRET_FILE: needs --broker and --broker-username/);
  });
});
