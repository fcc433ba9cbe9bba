/**
 * `--broker-dynsec`: a real Mosquitto 2 with its dynamic-security plugin kept in step with the
 * hub's registry (docs/broker-dynsec.md). Devices and tokens are made by the real CLI in
 * another process; devices are MQTT.js clients and a real hypha; the broker itself refuses
 * what src/auth/acl.ts refuses.
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Aedes } from 'aedes';
import type { MqttClient } from 'mqtt';
import { describe, expect, it } from 'vitest';
import { hashToken } from '../src/auth/secrets.js';
import { startHub } from '../src/index.js';
import { DynsecControl } from '../src/external/dynsec-control.js';
import { BrokerOutbox } from '../src/store/broker-outbox.js';
import { openStores } from '../src/store/stores.js';
import { startMosquitto, type MosquittoInstance } from './brokers.js';
import { capturedLog, cleanup, connectMqtt, grantedQos, HUB_BIN, spawnHypha, startTestHub, tempDir, waitFor } from './helpers.js';

const P = 'rhizosphere';

/** The admin CLI in its own process, as an operator runs it while the hub runs. */
function cli(dataDir: string, args: string[]): Promise<{ status: number | null; stdout: string; stderr: string; json: Record<string, unknown> }> {
  const child = spawn(process.execPath, [HUB_BIN, ...args, '--data-dir', dataDir, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  return new Promise((resolve) =>
    child.on('exit', (status) => resolve({ status, stdout, stderr, json: status === 0 ? (JSON.parse(stdout) as Record<string, unknown>) : {} })),
  );
}

function readIfThere(file: string): string {
  try {
    return readFileSync(file, 'latin1');
  } catch {
    return '';
  }
}

function passwordFile(password: string): string {
  const file = join(tempDir(), 'broker-password');
  writeFileSync(file, `${password}\n`);
  return file;
}

async function dynsecHub(mosquitto: MosquittoInstance, dataDir = tempDir(), logger?: ReturnType<typeof capturedLog>['logger']) {
  return startTestHub({ broker: mosquitto.url, brokerUsername: 'admin', brokerPasswordFile: passwordFile('admin-pw'), brokerDynsec: true, allowAnonymous: false, dataDir, ...(logger ? { logger } : {}) });
}

/** Connects as device `id` once the broker takes the token; resolves with the client and how long that took. */
async function connectWhenAdmitted(url: string, id: string, token: string, timeoutMs = 10_000): Promise<{ client: MqttClient; waitedMs: number }> {
  const started = Date.now();
  let client: MqttClient | undefined;
  await waitFor(
    async () => {
      client = await connectMqtt(url, { clientId: id, username: id, password: token, clean: false }).catch(() => undefined);
      return client;
    },
    { timeoutMs, intervalMs: 10, what: `the broker to admit ${id}` },
  );
  return { client: client!, waitedMs: Date.now() - started };
}

/** A device on its MQTT.js client, as docs/protocol.md has it: birth and will with a nonce, an answer to every command. */
async function actAsDevice(client: MqttClient, id: string) {
  const nonce = randomBytes(12).toString('base64url');
  client.on('message', (topic, payload) => {
    if (topic !== `${P}/devices/${id}/command`) return;
    const command = JSON.parse(payload.toString()) as { id: string; cmd_str: string };
    client.publish(`${P}/devices/${id}/response`, JSON.stringify({ type: 'response', id: command.id, result: `ran ${command.cmd_str}`, error: '', exit_code: 0, duration_ms: 1 }), { qos: 1 });
  });
  expect(await grantedQos(client, `${P}/devices/${id}/command`)).toBe(1);
  await client.publishAsync(`${P}/devices/${id}/presence`, JSON.stringify({ online: true, nonce, transport: 'mqtt', agent: 'script/1' }), { qos: 1, retain: true });
}

function refusal(url: string, options: Parameters<typeof connectMqtt>[1]): Promise<number | string> {
  return connectMqtt(url, options).then(
    () => 'connected',
    (error: { code?: number }) => error.code ?? String(error),
  );
}

const closed = (client: MqttClient) => new Promise<number>((resolve) => client.once('close', () => resolve(Date.now())));

async function api(hub: { urls: { http: string } }, path: string, token: string, body?: unknown) {
  const res = await fetch(`${hub.urls.http}${path}`, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

describe('hub keeping Mosquitto\'s dynamic security in step', () => {
  it('admits devices and tokens made by the CLI, confines them to their topics, and ends them on rotate and remove', async () => {
    const mosquitto = await startMosquitto({ dynsecAdminPassword: 'admin-pw' });
    const dataDir = tempDir();
    const startedAt = Date.now();
    const hub = await dynsecHub(mosquitto, dataDir);
    console.log(`dynsec: first start on a fresh broker (the hub's user given its role, reconnected once): ${Date.now() - startedAt} ms`);
    // Nobody gets in without credentials.
    expect(await refusal(mosquitto.url, { clientId: 'stranger' })).toBe(5);

    // device add in another process → the device can connect.
    const addStarted = Date.now();
    const added = await cli(dataDir, ['device', 'add', 'pi-01']);
    const addExited = Date.now();
    expect(added.status).toBe(0);
    const token1 = added.json.token as string;
    const { client: pi01, waitedMs } = await connectWhenAdmitted(mosquitto.url, 'pi-01', token1);
    console.log(`dynsec: device add (CLI) to device admitted: ${Date.now() - addStarted} ms (CLI process ${addExited - addStarted} ms, then ${waitedMs} ms)`);
    // The broker client is tied to the device id: the token is no use under another id.
    expect(await refusal(mosquitto.url, { clientId: 'pi-01-other', username: 'pi-01', password: token1 })).toBe(5);
    expect(await refusal(mosquitto.url, { clientId: 'pi-01', username: 'pi-01', password: 'guess' })).toBe(5);

    await actAsDevice(pi01, 'pi-01');
    await waitFor(() => hub.device('pi-01')?.online, { what: 'pi-01 online' });

    // Only its own topics: other devices' command topics, wildcards and statuses are refused.
    for (const filter of [`${P}/devices/pi-02/command`, `${P}/devices/+/command`, `${P}/devices/pi-01/#`, `${P}/devices/+/status`, '#', `${P}/clients/+/request`]) {
      expect(await grantedQos(pi01, filter), filter).toBe(128);
    }
    expect(await grantedQos(pi01, `${P}/devices/pi-01/tunnels/+/in`)).toBe(1);
    expect(await grantedQos(pi01, `${P}/devices/pi-01/presence`)).toBe(1);

    // A real hypha with a token from the CLI.
    const added2 = await cli(dataDir, ['device', 'add', 'pi-02']);
    const token2 = added2.json.token as string;
    await connectWhenAdmitted(mosquitto.url, 'pi-02', token2).then(({ client }) => client.endAsync(true));
    const hypha = spawnHypha(mosquitto.url, 'pi-02', ['--token', token2]);
    await waitFor(() => hub.device('pi-02')?.online, { timeoutMs: 15_000, what: 'hypha pi-02 online' });

    // Commands through REST reach both, with an operator token from the CLI.
    const ops = (await cli(dataDir, ['token', 'add', 'ops', '--role', 'operator'])).json.token as string;
    expect(await api(hub, '/api/devices/pi-01/commands', ops, { order: 'exec_bash', cmd_str: 'uptime' })).toMatchObject({ status: 200, body: { status: 'ok', result: 'ran uptime' } });
    expect(await api(hub, '/api/devices/pi-02/commands', ops, { order: 'exec_bash', cmd_str: 'echo from hypha' })).toMatchObject({ status: 200, body: { status: 'ok', result: 'from hypha' } });

    // pi-01 forges pi-02's presence, response and telemetry: the broker drops them, a watcher sees nothing.
    const watcher = await connectMqtt(mosquitto.url, { clientId: 'watcher', username: 'admin', password: 'admin-pw' });
    const seen: string[] = [];
    watcher.on('message', (topic, payload) => payload.length > 0 && seen.push(topic));
    await watcher.subscribeAsync([`${P}/devices/pi-02/presence`, `${P}/devices/pi-02/response`, `${P}/devices/pi-02/telemetry/#`, `${P}/devices/pi-01/telemetry/#`, `${P}/devices/pi-01/command`], { qos: 1 });
    await new Promise((r) => setTimeout(r, 300));
    seen.length = 0;
    await pi01.publishAsync(`${P}/devices/pi-02/presence`, JSON.stringify({ online: false, nonce: 'forged-nonce-1' }), { qos: 1, retain: true });
    await pi01.publishAsync(`${P}/devices/pi-02/response`, JSON.stringify({ id: 'x', result: 'forged' }), { qos: 1 });
    await pi01.publishAsync(`${P}/devices/pi-02/telemetry/cpu`, '99', { qos: 1 });
    await pi01.publishAsync(`${P}/devices/pi-01/command`, JSON.stringify({ type: 'command', id: 'self', order: 'exec_bash', cmd_str: 'x' }), { qos: 1 });
    // Its own telemetry does get through (the watcher listens).
    await pi01.publishAsync(`${P}/devices/pi-01/telemetry/cpu`, '12', { qos: 1 });
    await waitFor(() => seen.includes(`${P}/devices/pi-01/telemetry/cpu`), { what: 'pi-01\'s own telemetry' });
    await new Promise((r) => setTimeout(r, 300));
    expect(seen).toEqual([`${P}/devices/pi-01/telemetry/cpu`]);
    expect(hub.device('pi-02')?.online).toBe(true);

    // mosquitto_pub with the operator token: a Request on clients/ops/request gets its Reply.
    const sub = spawn('stdbuf', ['-oL', 'mosquitto_sub', '-d', '-h', '127.0.0.1', '-p', String(mosquitto.port), '-i', 'ops-watch', '-u', 'ops', '-P', ops, '-t', `${P}/clients/ops/response`, '-C', '1', '-F', 'reply:%p']);
    let out = '';
    sub.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    await waitFor(() => out.includes('SUBACK'), { what: 'mosquitto_sub subscribed' });
    const pub = spawnSync('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(mosquitto.port), '-i', 'ops-cli', '-u', 'ops', '-P', ops, '-q', '1', '-t', `${P}/clients/ops/request`, '-m', JSON.stringify({ id: 'm-1', device: 'pi-02', order: 'exec_bash', cmd_str: 'echo via mosquitto_pub' })], { encoding: 'utf8' });
    expect(pub.status).toBe(0);
    await new Promise((resolve) => sub.on('exit', resolve));
    const line = out.split('\n').find((l) => l.startsWith('reply:')) ?? '';
    expect(JSON.parse(line.slice('reply:'.length))).toMatchObject({ id: 'm-1', device: 'pi-02', status: 'ok', result: 'via mosquitto_pub' });

    // A viewer reads statuses but may not ask for commands; an operator may not read everything.
    const viewerSecret = (await cli(dataDir, ['token', 'add', 'dash', '--role', 'viewer'])).json.token as string;
    const viewer = await waitFor(() => connectMqtt(mosquitto.url, { clientId: 'dash-1', username: 'dash', password: viewerSecret }).catch(() => undefined), { what: 'viewer admitted' });
    expect(await grantedQos(viewer, `${P}/devices/+/status`)).toBe(1);
    expect(await grantedQos(viewer, `${P}/clients/dash/response`)).toBe(1);
    expect(await grantedQos(viewer, `${P}/clients/ops/response`)).toBe(128);
    const viewerReplies: string[] = [];
    viewer.on('message', (topic) => topic.endsWith('/response') && viewerReplies.push(topic));
    await viewer.publishAsync(`${P}/clients/dash/request`, JSON.stringify({ id: 'v-1', device: 'pi-02', order: 'exec_bash', cmd_str: 'touch /tmp/x' }), { qos: 1 });
    const opsClient = await connectMqtt(mosquitto.url, { clientId: 'ops-mqttjs', username: 'ops', password: ops });
    expect(await grantedQos(opsClient, '#')).toBe(128);
    expect(await grantedQos(opsClient, `${P}/devices/+/telemetry/#`)).toBe(1);
    await new Promise((r) => setTimeout(r, 500));
    expect(viewerReplies).toEqual([]);

    // Through the hub's own REST API (in-process, no CLI start-up): from the commit to the device admitted.
    const adminToken = (await cli(dataDir, ['token', 'add', 'root', '--role', 'admin'])).json.token as string;
    const delays: number[] = [];
    for (let i = 0; i < 10; i++) {
      const startedRest = Date.now();
      const made = await api(hub, '/api/devices', adminToken, { id: `rest-${i}` });
      expect(made.status).toBe(201);
      const { client } = await connectWhenAdmitted(mosquitto.url, `rest-${i}`, made.body.token as string);
      delays.push(Date.now() - startedRest);
      await client.endAsync(true);
    }
    delays.sort((a, b) => a - b);
    console.log(`dynsec: POST /api/devices to device admitted, 10 devices: median ${delays[5]} ms, max ${delays[9]} ms`);

    // rotate: the old connection ends, the old token is refused, the new one admitted.
    const pi01Closed = closed(pi01);
    const rotateStarted = Date.now();
    const rotated = await cli(dataDir, ['device', 'rotate', 'pi-01']);
    const token1b = rotated.json.token as string;
    const rotateClosedAt = await pi01Closed;
    const { client: pi01b, waitedMs: rotateWaited } = await connectWhenAdmitted(mosquitto.url, 'pi-01', token1b);
    console.log(`dynsec: device rotate (CLI) to old connection closed: ${rotateClosedAt - rotateStarted} ms; to the new token admitted: ${Date.now() - rotateStarted} ms (${rotateWaited} ms after the CLI)`);
    expect(await refusal(mosquitto.url, { clientId: 'pi-01', username: 'pi-01', password: token1 })).toBe(5);

    // remove: the connection ends and the token is refused; the hypha is refused on its retries.
    const pi01bClosed = closed(pi01b);
    const removeStarted = Date.now();
    expect((await cli(dataDir, ['device', 'remove', 'pi-01'])).status).toBe(0);
    const removeClosedAt = await pi01bClosed;
    console.log(`dynsec: device remove (CLI) to connection closed: ${removeClosedAt - removeStarted} ms`);
    expect(await refusal(mosquitto.url, { clientId: 'pi-01', username: 'pi-01', password: token1b })).toBe(5);
    await cli(dataDir, ['device', 'remove', 'pi-02']);
    await waitFor(() => /retrying.*(Not authorized|not authorized)/is.test(hypha.output()), { timeoutMs: 15_000, what: 'hypha refused after removal' });

    // token remove: its connections end and it is refused.
    const opsClosed = closed(opsClient);
    await cli(dataDir, ['token', 'remove', 'ops']);
    await opsClosed;
    expect(await refusal(mosquitto.url, { clientId: 'ops-x', username: 'ops', password: ops })).toBe(5);

    // Every change was delivered: no plaintext waits in the database.
    await waitFor(() => new BrokerOutbox(hub.stores.db).count() === 0, { what: 'the outbox empty' });
    // Nor in the database's files: deleted rows are overwritten and the write-ahead log truncated.
    const inFiles = () => ['rhizosphere.db', 'rhizosphere.db-wal'].map((f) => readIfThere(join(dataDir, f))).join('');
    await waitFor(() => ![token1, token2, token1b, ops, viewerSecret].some((secret) => inFiles().includes(secret)), { what: 'no plaintext in the database files' });
  });

  it('drains what the CLI wrote while the hub was down, reconciles at start, and tells which devices need a new token', async () => {
    const mosquitto = await startMosquitto({ dynsecAdminPassword: 'admin-pw' });
    const dataDir = tempDir();
    const first = await dynsecHub(mosquitto, dataDir);
    const kept = (await cli(dataDir, ['device', 'add', 'kept'])).json.token as string;
    const gone = (await cli(dataDir, ['device', 'add', 'gone'])).json.token as string;
    await connectWhenAdmitted(mosquitto.url, 'kept', kept).then(({ client }) => client.endAsync(true));
    await connectWhenAdmitted(mosquitto.url, 'gone', gone).then(({ client }) => client.endAsync(true));
    await first.close();

    // While the hub is down: queued, sent at the next start.
    const late = (await cli(dataDir, ['device', 'add', 'late'])).json.token as string;
    expect(late).toMatch(/^rz_/);
    // A start without --broker-dynsec stops the queueing; what is changed meanwhile the broker never hears of.
    const plain = await startTestHub({ broker: mosquitto.url, brokerUsername: 'admin', brokerPasswordFile: passwordFile('admin-pw'), allowAnonymous: false, dataDir });
    await plain.close();
    await cli(dataDir, ['device', 'remove', 'gone']);
    const unknownToBroker = (await cli(dataDir, ['device', 'add', 'unsynced'])).json.token as string;

    const { logger, lines } = capturedLog();
    const hub = await dynsecHub(mosquitto, dataDir, logger);
    // 'late' was lost with the queue the plain start dropped: it is told, like 'unsynced'.
    await waitFor(() => lines.find((l) => l.msg.includes('registered devices have no client on the broker')), { what: 'the warning about devices without a broker client' });
    const warning = lines.find((l) => l.msg.includes('registered devices have no client on the broker'))!;
    expect(warning).toMatchObject({ level: 40, count: 2, ids: ['late', 'unsynced'] });
    expect(warning.msg).toContain('rotate its token to give it broker credentials');
    // The stale client of the removed device is deleted.
    await waitFor(async () => (await refusal(mosquitto.url, { clientId: 'gone', username: 'gone', password: gone })) === 5, { what: 'gone refused' });
    await connectWhenAdmitted(mosquitto.url, 'kept', kept).then(({ client }) => client.endAsync(true));
    expect(await refusal(mosquitto.url, { clientId: 'unsynced', username: 'unsynced', password: unknownToBroker })).toBe(5);
    const reconciled = lines.find((l) => l.msg === 'broker clients reconciled with the registry');
    expect(reconciled).toMatchObject({ managed: 2, removed: 1 });

    // Many at once (bulk enrolment): rows sent in messages of up to 400 commands.
    const bulkStarted = Date.now();
    const bulk = hub.stores.devices.addMany(Array.from({ length: 300 }, (_, i) => `bulk-${i}`));
    await waitFor(() => new BrokerOutbox(hub.stores.db).count() === 0, { timeoutMs: 60_000, what: 'the bulk delivered' });
    console.log(`dynsec: addMany of 300 devices to all on the broker: ${Date.now() - bulkStarted} ms`);
    await connectWhenAdmitted(mosquitto.url, 'bulk-299', bulk.get('bulk-299')!).then(({ client }) => client.endAsync(true));

    // A rotation gives it broker credentials.
    const rotated = (await cli(dataDir, ['device', 'rotate', 'unsynced'])).json.token as string;
    await connectWhenAdmitted(mosquitto.url, 'unsynced', rotated).then(({ client }) => client.endAsync(true));

    // Enrolment cannot reach the hub through the broker: an accepted device needs a rotation, and says so.
    hub.stores.devices.addPending('enrolled', hashToken('a-token-the-device-chose'));
    const accepted = await cli(dataDir, ['device', 'accept', 'enrolled']);
    expect(accepted.status).toBe(0);
    expect(accepted.stderr).toContain('rhizosphere device rotate enrolled');
    await waitFor(() => lines.find((l) => l.level === 40 && l.msg.includes('device enrolled was accepted, but the broker has no credentials')), { what: 'the hub\'s warning on accept' });

    // A name the broker already gives the hub, or a token, is refused while in step.
    const taken = await cli(dataDir, ['device', 'add', 'admin']);
    expect(taken.status).not.toBe(0);
    expect(taken.stderr).toContain('the hub\'s own user name on the broker');
    await cli(dataDir, ['token', 'add', 'shared', '--role', 'viewer']);
    expect((await cli(dataDir, ['device', 'add', 'shared'])).stderr).toContain('device ids and token names share the broker\'s user names');

    // Another administrator's answers (mosquitto_ctrl's) reach the hub too: ignored. A refusal is logged with its code.
    const ctrl = spawnSync('mosquitto_ctrl', ['-h', '127.0.0.1', '-p', String(mosquitto.port), '-u', 'admin', '-P', 'admin-pw', 'dynsec', 'getClient', 'kept'], { encoding: 'utf8' });
    expect(ctrl.stdout).toContain('Username: kept');
    await waitFor(() => lines.some((l) => l.level === 20 && String(l.msg).includes('did not send')), { what: 'the foreign answer ignored' });
    new BrokerOutbox(hub.stores.db).queueCommands('device:ghost', [{ command: 'addClientRole', username: 'ghost', rolename: 'nothing' }]);
    await waitFor(() => lines.find((l) => l.code === 'DYNSEC_COMMAND_FAILED' && l.dynsecError === 'Client not found'), { what: 'the refusal logged with its code' });
    const after = (await cli(dataDir, ['device', 'add', 'after'])).json.token as string;
    await connectWhenAdmitted(mosquitto.url, 'after', after).then(({ client }) => client.endAsync(true));
    await waitFor(() => new BrokerOutbox(hub.stores.db).count() === 0, { what: 'the outbox empty' });
    // Logs never carry a token.
    expect(JSON.stringify(lines)).not.toContain(rotated);
    expect(JSON.stringify(lines)).not.toContain(after);
  }, 120_000);

  it('ends the start with one line naming --broker-dynsec when the broker has no dynamic-security plugin', async () => {
    const mosquitto = await startMosquitto();
    const dataDir = tempDir();
    const start = startHub({ broker: mosquitto.url, brokerUsername: 'admin', brokerPasswordFile: passwordFile('whatever'), brokerDynsec: true, httpPort: 0, dataDir, logLevel: 'silent' });
    await expect(start).rejects.toThrow(/^--broker-dynsec: mqtt:\/\/127\.0\.0\.1:\d+ did not answer on \$CONTROL\/dynamic-security\/v1 within 5000 ms: load Mosquitto's dynamic-security plugin/);
    // The database is not marked: nothing is queued for a broker that cannot take it.
    const stores = openStores(dataDir);
    expect(new BrokerOutbox(stores.db).synced).toBe(false);
    stores.close();

    // The command line: the same one line and status 2; the flag needs --broker and --broker-username.
    const run = spawnSync(process.execPath, [HUB_BIN, '--broker', mosquitto.url, '--broker-username', 'admin', '--broker-password-file', passwordFile('x'), '--broker-dynsec', '--http-port', '0', '--data-dir', tempDir()], { encoding: 'utf8', timeout: 20_000 });
    expect(run.status).toBe(2);
    expect(run.stderr.trim().split('\n')).toHaveLength(1);
    expect(run.stderr).toMatch(/^rhizosphere: --broker-dynsec: /);
    const alone = spawnSync(process.execPath, [HUB_BIN, '--broker-dynsec', '--http-port', '0', '--data-dir', tempDir()], { encoding: 'utf8', timeout: 20_000 });
    expect(alone.status).toBe(2);
    expect(alone.stderr.trim()).toBe('rhizosphere: --broker-dynsec: needs --broker and --broker-username (a user that may administer the broker\'s dynamic-security plugin)');
  });
});

describe('the dynamic-security control connection', () => {
  // A real MQTT broker (Aedes) with a client in the plugin's place: Mosquitto itself never
  // lets a client publish on the plugin's answer topic, nor sends a malformed answer.
  it('matches its answers by correlation and ignores malformed ones and those for commands it did not send', async () => {
    const broker = await Aedes.createBroker();
    const server = createServer((socket) => broker.handle(socket));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    cleanup(() => new Promise<void>((resolve) => broker.close(() => server.close(() => resolve()))));
    const url = `mqtt://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const plugin = await connectMqtt(url, { clientId: 'plays-the-plugin' });
    await plugin.subscribeAsync('$CONTROL/dynamic-security/v1', { qos: 1 });
    plugin.on('message', (_topic, payload) => {
      const { commands } = JSON.parse(payload.toString()) as { commands: { command: string; correlationData: string }[] };
      const answer = (body: unknown) => plugin.publish('$CONTROL/dynamic-security/v1/response', typeof body === 'string' ? body : JSON.stringify(body));
      answer('not json {');
      answer({ responses: 7 });
      answer({ responses: [{ command: 'listClients', correlationData: 'another-admin:1' }, null, 'x'] });
      answer({ responses: commands.map((c, i) => (i === 0 ? { command: c.command, data: { totalCount: 0, clients: [] }, correlationData: c.correlationData } : { command: c.command, error: 'Client not found', correlationData: c.correlationData })) });
    });
    const { logger, lines } = capturedLog();
    const control = await DynsecControl.open({ url, clientId: 'hub-control', log: logger });
    cleanup(() => control.close());
    const answers = await control.send([{ command: 'listClients' }, { command: 'deleteClient', username: 'nobody' }]);
    expect(answers).toEqual([
      { command: 'listClients', data: { totalCount: 0, clients: [] } },
      { command: 'deleteClient', error: 'Client not found' },
    ]);
    const debug = lines.filter((l) => l.level === 20).map((l) => l.msg);
    expect(debug).toContain('dynamic-security answer that is not JSON: ignored');
    expect(debug).toContain('dynamic-security answer without a responses array: ignored');
    expect(debug.some((msg) => msg.includes('did not send'))).toBe(true);
    // Without an answer in time: a DynsecUnanswered, and the connection serves on.
    plugin.removeAllListeners('message');
    await expect(control.send([{ command: 'listRoles' }], 300)).rejects.toMatchObject({ name: 'DynsecUnanswered' });
    expect(control.connected).toBe(true);
  });
});
