/**
 * TLS: MQTT over TLS, HTTPS and WSS on the HTTP port, mutual TLS where a device is known by
 * its certificate's CN, and the one-line refusals of bad TLS settings. The certificates are
 * made at test time with openssl, in a temporary directory removed afterwards.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type IClientOptions } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, resolveConfig, type Hub, type HubOptions } from '../src/index.js';
import { capturedLog, cleanup, connectMqtt, HUB_BIN, HYPHA_BIN, RequestClient, spawnHypha, startTestHub, tempDir, waitFor, type HyphaProcess } from './helpers.js';

interface KeyPair {
  cert: string;
  key: string;
}

interface TestPki {
  dir: string;
  ca: string;
  server: KeyPair;
  /** Signed by the trusted CA, CN=pi-tls. */
  piTls: KeyPair;
  /** Signed by the trusted CA, CN=pi-other. */
  piOther: KeyPair;
  /** CN=pi-tls, but signed by a second CA the hub does not trust. */
  untrusted: KeyPair;
  notPem: string;
}

const OPENSSL_CONFIG = `
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
[client_ext]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
`;

function openssl(dir: string, args: string[]): void {
  const result = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
  if (result.status !== 0) throw new Error(`openssl ${args.join(' ')} failed: ${result.stderr}`);
}

/** A self-signed CA: `NAME.pem` and `NAME.key` in `dir`. */
function makeCa(dir: string, name: string): KeyPair {
  openssl(dir, ['req', '-x509', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.pem`, '-days', '2', '-subj', `/CN=${name}`, '-config', 'openssl.cnf', '-extensions', 'ca_ext']);
  return { cert: join(dir, `${name}.pem`), key: join(dir, `${name}.key`) };
}

/** A certificate for `cn` signed by `ca`, with the extensions of `section` in openssl.cnf. */
function makeLeaf(dir: string, name: string, cn: string, ca: KeyPair, section: 'server_ext' | 'client_ext'): KeyPair {
  openssl(dir, ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`, '-config', 'openssl.cnf']);
  openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', ca.cert, '-CAkey', ca.key, '-set_serial', String(Date.now() + Math.floor(Math.random() * 1000)), '-days', '2', '-out', `${name}.pem`, '-extfile', 'openssl.cnf', '-extensions', section]);
  return { cert: join(dir, `${name}.pem`), key: join(dir, `${name}.key`) };
}

function makePki(): TestPki {
  const dir = mkdtempSync(join(tmpdir(), 'rhizo-pki-'));
  writeFileSync(join(dir, 'openssl.cnf'), OPENSSL_CONFIG);
  const ca = makeCa(dir, 'test-ca');
  const otherCa = makeCa(dir, 'other-ca');
  const notPem = join(dir, 'not-pem.txt');
  writeFileSync(notPem, 'this is not a certificate\n');
  return {
    dir,
    ca: ca.cert,
    server: makeLeaf(dir, 'server', 'localhost', ca, 'server_ext'),
    piTls: makeLeaf(dir, 'pi-tls', 'pi-tls', ca, 'client_ext'),
    piOther: makeLeaf(dir, 'pi-other', 'pi-other', ca, 'client_ext'),
    untrusted: makeLeaf(dir, 'untrusted', 'pi-tls', otherCa, 'client_ext'),
    notPem,
  };
}

let pki: TestPki;
beforeAll(() => {
  pki = makePki();
});
afterAll(() => rmSync(pki.dir, { recursive: true, force: true }));

function startTlsHub(options: HubOptions = {}): Promise<Hub> {
  return startTestHub({ tlsCert: pki.server.cert, tlsKey: pki.server.key, mqttsPort: 0, allowAnonymous: false, ...options });
}

interface HttpsAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** An HTTPS request that trusts the test CA (global fetch cannot be given a CA). */
function https(url: string, { method = 'GET', headers = {}, body }: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<HttpsAnswer> {
  return new Promise((resolve, reject) => {
    const req = httpsRequest(url, { method, headers, ca: readFileSync(pki.ca) }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** A client's TLS options: trust the test CA, and present `pair` if given. */
function tlsOptions(pair?: KeyPair): IClientOptions {
  return { ca: readFileSync(pki.ca), ...(pair ? { cert: readFileSync(pair.cert), key: readFileSync(pair.key) } : {}) };
}

/**
 * A real hypha agent, ready for commands: online at the hub, and its command subscription
 * acknowledged (a device known by its credential is online from CONNECT on, and a command
 * sent before its first SUBSCRIBE would not reach it).
 */
async function startReadyHypha(hub: Hub, url: string, id: string, extra: string[]): Promise<HyphaProcess> {
  const agent = spawnHypha(url, id, [...extra, '--log-level', 'debug']);
  await waitFor(() => hub.device(id)?.online && /DEBUG +subscribed/.test(agent.output()), { timeoutMs: 15_000, what: `${id} online and subscribed` }).catch((error: Error) => {
    throw new Error(`${error.message}; hypha said:\n${agent.output()}`);
  });
  return agent;
}

/**
 * How one MQTT connection attempt ends: 'connected', or the error that ended it. Handshake
 * failures under TLS 1.3 may surface as an alert, a reset or a bare close, so all count.
 */
function connectOutcome(url: string, options: IClientOptions): Promise<string> {
  return new Promise((resolve) => {
    const client = mqtt.connect(url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5000, ...options });
    cleanup(() => client.endAsync(true));
    client.once('connect', () => resolve('connected'));
    client.once('error', (error) => resolve(error.message));
    client.once('close', () => resolve('closed'));
  });
}

describe('MQTT over TLS with a device token', () => {
  it('runs a command end to end on a real hypha connected over mqtts://', async () => {
    const hub = await startTlsHub();
    expect(hub.ports.mqtts).toBeGreaterThan(0);
    expect(hub.urls.mqtts).toBe(`mqtts://127.0.0.1:${hub.ports.mqtts}`);
    const token = hub.stores.devices.add('pi-tls');
    await startReadyHypha(hub, hub.urls.mqtts!, 'pi-tls', [`--token=${token}`, '--ca', pki.ca]);
    expect(hub.device('pi-tls')).toMatchObject({ transport: 'mqtt', remoteAddress: '127.0.0.1' });

    const opsToken = hub.stores.tokens.add('ops', 'operator');
    const ops = await RequestClient.connect(hub.urls.mqtts!, 'ops-1', 'rhizosphere', { username: 'ops', password: opsToken, ...tlsOptions() });
    const reply = await ops.request({ device: 'pi-tls', order: 'exec_bash', cmd_str: 'echo over-tls' });
    expect(reply).toMatchObject({ status: 'ok', result: 'over-tls', exit_code: 0 });
  });

  it('keeps the plain MQTT port and says which URLs it serves', async () => {
    const { logger, lines } = capturedLog();
    const hub = await startTlsHub({ logger });
    expect(hub.urls).toEqual({
      mqtt: `mqtt://127.0.0.1:${hub.ports.mqtt}`,
      mqtts: `mqtts://127.0.0.1:${hub.ports.mqtts}`,
      ws: `wss://127.0.0.1:${hub.ports.http}/mqtt`,
      http: `https://127.0.0.1:${hub.ports.http}`,
    });
    expect(lines.find((line) => line.msg === 'hub listening')).toMatchObject({ mqtts: hub.urls.mqtts, ws: hub.urls.ws, http: hub.urls.http });
    const opsToken = hub.stores.tokens.add('ops', 'operator');
    await connectMqtt(hub.urls.mqtt, { clientId: 'plain', username: 'ops', password: opsToken });

    const plain = await startTestHub();
    expect(plain.ports.mqtts).toBeUndefined();
    expect(plain.urls.mqtts).toBeUndefined();
    expect(plain.urls.http).toMatch(/^http:\/\//);
  });
});

describe('HTTPS and WSS on the HTTP port', () => {
  it('serves /healthz over HTTPS and MQTT over wss:// to a real hypha', async () => {
    const hub = await startTlsHub();
    const health = await https(`${hub.urls.http}/healthz`);
    expect(health.status).toBe(200);
    expect(JSON.parse(health.body)).toMatchObject({ ok: true });

    const token = hub.stores.devices.add('pi-wss');
    await startReadyHypha(hub, hub.urls.ws, 'pi-wss', [`--token=${token}`, '--ca', pki.ca]);
    expect(hub.device('pi-wss')?.transport).toBe('mqtt-ws');

    const apiToken = hub.stores.tokens.add('ops', 'operator');
    const answer = await https(`${hub.urls.http}/api/devices/pi-wss/commands`, {
      method: 'POST',
      headers: { authorization: `Bearer ${apiToken}`, 'content-type': 'application/json' },
      body: JSON.stringify({ order: 'exec_bash', cmd_str: 'echo over-wss' }),
    });
    expect(answer.status).toBe(200);
    expect(JSON.parse(answer.body)).toMatchObject({ status: 'ok', device: 'pi-wss', result: 'over-wss' });
  });

  it('sets the session cookie Secure', async () => {
    const hub = await startTlsHub();
    hub.stores.users.add('alice', 'operator', 'password1');
    const login = await https(`${hub.urls.http}/api/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'alice', password: 'password1' }),
    });
    expect(login.status).toBe(200);
    const cookie = String(login.headers['set-cookie']);
    expect(cookie).toMatch(/^rhizosphere_session=[^;]+;/);
    expect(cookie).toMatch(/; Secure(;|$)/);
  });
});

describe('hypha and the hub certificate', () => {
  it('without --ca refuses the hub certificate, says why, and keeps retrying', async () => {
    const hub = await startTlsHub();
    const token = hub.stores.devices.add('pi-tls');
    const agent = spawnHypha(hub.urls.mqtts!, 'pi-tls', [`--token=${token}`]);
    await waitFor(() => (agent.output().match(/WARN +retrying/g) ?? []).length >= 2, { timeoutMs: 15_000, what: 'two retries' }).catch((error: Error) => {
      throw new Error(`${error.message}; hypha said:\n${agent.output()}`);
    });
    expect(agent.output()).toMatch(/retrying .*reason=.*certificate.*--ca/);
    expect(hub.device('pi-tls')?.online).not.toBe(true);
    expect(agent.child.exitCode).toBeNull();
  });
});

describe('mutual TLS (--tls-ca, --require-client-cert)', () => {
  async function startMutualHub() {
    const { logger, lines } = capturedLog();
    const hub = await startTlsHub({ tlsCa: pki.ca, requireClientCert: true, logger });
    hub.stores.devices.add('pi-tls');
    return { hub, lines };
  }

  it('knows a real hypha by its certificate, with no token', async () => {
    const { hub } = await startMutualHub();
    await startReadyHypha(hub, hub.urls.mqtts!, 'pi-tls', ['--ca', pki.ca, '--cert', pki.piTls.cert, '--key', pki.piTls.key]);
    expect(await hub.exec('pi-tls', 'echo by-certificate')).toMatchObject({ result: 'by-certificate', exit_code: 0 });
  });

  it('refuses a client id other than the certificate CN', async () => {
    const { hub, lines } = await startMutualHub();
    hub.stores.devices.add('pi-other');
    const agent = spawnHypha(hub.urls.mqtts!, 'pi-other', ['--ca', pki.ca, '--cert', pki.piTls.cert, '--key', pki.piTls.key]);
    await waitFor(() => /retrying .*Not authorized/.test(agent.output()), { timeoutMs: 15_000, what: 'a refused CONNACK' });
    expect(lines.some((line) => line.msg === "connection refused: client id must be the certificate's device id pi-tls")).toBe(true);
    expect(hub.device('pi-other')?.online).not.toBe(true);
  });

  it('fails the handshake of a certificate from another CA, and of none', async () => {
    const { hub, lines } = await startMutualHub();
    const token = hub.stores.devices.add('pi-token');
    expect(await connectOutcome(hub.urls.mqtts!, { clientId: 'pi-tls', ...tlsOptions(pki.untrusted) })).not.toBe('connected');
    // A token does not replace the certificate on the MQTTS port.
    expect(await connectOutcome(hub.urls.mqtts!, { clientId: 'pi-token', username: 'pi-token', password: token, ...tlsOptions() })).not.toBe('connected');
    await waitFor(() => lines.filter((line) => line.msg === 'TLS handshake refused').length >= 2, { what: 'two refused handshakes logged' });
    expect(lines.filter((line) => line.msg === 'TLS handshake refused').map((line) => line.reason)).toEqual(
      expect.arrayContaining(['UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE']),
    );
    expect(hub.device('pi-tls')?.online).not.toBe(true);
  });

  it('tells a real hypha without --cert why it cannot get in', async () => {
    const { hub } = await startMutualHub();
    const agent = spawnHypha(hub.urls.mqtts!, 'pi-tls', ['--ca', pki.ca]);
    await waitFor(() => /retrying .*requires a client certificate/.test(agent.output()), { timeoutMs: 15_000, what: 'the reason in the log' });
    const untrusted = spawnHypha(hub.urls.mqtts!, 'pi-tls', ['--ca', pki.ca, '--cert', pki.untrusted.cert, '--key', pki.untrusted.key]);
    await waitFor(() => /retrying .*not signed by its CA/.test(untrusted.output()), { timeoutMs: 15_000, what: 'the reason in the log' });
    expect(hub.device('pi-tls')?.online).not.toBe(true);
  });

  it('refuses at CONNACK a certificate whose device is not registered', async () => {
    const { hub, lines } = await startMutualHub();
    expect(await connectOutcome(hub.urls.mqtts!, { clientId: 'pi-other', ...tlsOptions(pki.piOther) })).toMatch(/Not authorized/);
    expect(lines.some((line) => line.msg === 'connection refused: no device pi-other is registered')).toBe(true);
  });
});

describe('optional client certificates (--tls-ca alone)', () => {
  it('identifies a device by its certificate when it has one, and by its token otherwise', async () => {
    const hub = await startTlsHub({ tlsCa: pki.ca });
    hub.stores.devices.add('pi-tls');
    const token = hub.stores.devices.add('pi-token');

    // No user name or password: only the certificate can make this connection a device.
    const byCertificate = await connectMqtt(hub.urls.mqtts!, { clientId: 'pi-tls', ...tlsOptions(pki.piTls) });
    await byCertificate.subscribeAsync('rhizosphere/devices/pi-tls/command', { qos: 1 });
    await waitFor(() => hub.device('pi-tls')?.online, { what: 'pi-tls online by certificate' });

    const byToken = await connectMqtt(hub.urls.mqtts!, { clientId: 'pi-token', username: 'pi-token', password: token, ...tlsOptions() });
    await byToken.subscribeAsync('rhizosphere/devices/pi-token/command', { qos: 1 });
    await waitFor(() => hub.device('pi-token')?.online, { what: 'pi-token online by token' });

    // A certificate from an untrusted CA is not used, so it proves nothing.
    expect(await connectOutcome(hub.urls.mqtts!, { clientId: 'pi-tls', ...tlsOptions(pki.untrusted) })).toMatch(/Not authorized/);
  });

  it('identifies a device by its certificate over wss:// too', async () => {
    const hub = await startTlsHub({ tlsCa: pki.ca, requireClientCert: true });
    hub.stores.devices.add('pi-tls');
    const device = await connectMqtt(hub.urls.ws, { clientId: 'pi-tls', ...tlsOptions(pki.piTls) });
    await device.subscribeAsync('rhizosphere/devices/pi-tls/command', { qos: 1 });
    await waitFor(() => hub.device('pi-tls')?.online, { what: 'pi-tls online over wss' });
    // The HTTPS port asks for a certificate but does not require one: the console logs in with a password.
    expect((await https(`${hub.urls.http}/healthz`)).status).toBe(200);
  });
});

function runHub(args: string[]) {
  return spawnSync(process.execPath, [HUB_BIN, '--mqtt-port', '0', '--http-port', '0', ...args], { encoding: 'utf8', timeout: 15_000 });
}

function runHypha(args: string[]) {
  return spawnSync(process.execPath, [HYPHA_BIN, '--url', 'mqtts://127.0.0.1:1', '--id', 'pi-tls', ...args], { encoding: 'utf8', timeout: 15_000 });
}

function expectOneLineExit2(result: ReturnType<typeof spawnSync>, pattern: RegExp, label: string): void {
  expect(result.status, label).toBe(2);
  const stderr = String(result.stderr).trim();
  expect(stderr.split('\n'), label).toHaveLength(1);
  expect(stderr, label).toMatch(pattern);
}

describe('bad TLS settings', () => {
  it('end rhizosphere with one line naming the flag and status 2', () => {
    const dataDir = tempDir();
    const { server } = pki;
    const cases: [string[], RegExp][] = [
      [['--tls-cert', server.cert], /^rhizosphere: --tls-cert: needs --tls-key as well/],
      [['--tls-key', server.key], /^rhizosphere: --tls-key: needs --tls-cert as well/],
      [['--tls-cert', '/nonexistent/hub.pem', '--tls-key', server.key], /^rhizosphere: --tls-cert: cannot read \/nonexistent\/hub\.pem \(ENOENT\)$/],
      [['--tls-cert', pki.notPem, '--tls-key', server.key], /^rhizosphere: --tls-cert: .*not-pem\.txt holds no PEM certificate/],
      [['--tls-cert', server.cert, '--tls-key', pki.notPem], /^rhizosphere: --tls-key: .*not-pem\.txt holds no PEM private key/],
      [['--tls-cert', server.cert, '--tls-key', pki.piTls.key], /^rhizosphere: --tls-key: .*pi-tls\.key is not the private key of the certificate in .*server\.pem$/],
      [['--tls-cert', server.cert, '--tls-key', server.key, '--tls-ca', pki.notPem], /^rhizosphere: --tls-ca: .*not-pem\.txt holds no PEM certificate/],
      [['--tls-cert', server.cert, '--tls-key', server.key, '--require-client-cert'], /^rhizosphere: --require-client-cert: needs --tls-ca/],
    ];
    for (const [args, pattern] of cases) expectOneLineExit2(runHub([...args, '--data-dir', dataDir]), pattern, args.join(' '));
  });

  it('name the variable a setting came from, and reject startHub with a ConfigError', async () => {
    expect(() => resolveConfig({ env: { RHIZOSPHERE_TLS_CERT: pki.server.cert } })).toThrow(/^RHIZOSPHERE_TLS_CERT: needs --tls-key as well/);
    expect(() => resolveConfig({ env: { RHIZOSPHERE_REQUIRE_CLIENT_CERT: 'yes' } })).toThrow(/^RHIZOSPHERE_REQUIRE_CLIENT_CERT: needs --tls-ca/);
    const started = startTlsHub({ tlsCa: pki.notPem });
    await expect(started).rejects.toThrow(ConfigError);
    await expect(started).rejects.toThrow(/^--tls-ca: .*not-pem\.txt holds no PEM certificate/);
  });

  it('names --mqtts-port when that port is in use', async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    cleanup(() => new Promise((resolve) => blocker.close(resolve)));
    const taken = (blocker.address() as { port: number }).port;
    const result = runHub(['--tls-cert', pki.server.cert, '--tls-key', pki.server.key, '--mqtts-port', String(taken), '--data-dir', tempDir()]);
    expect(result.status).toBe(2);
    expect(result.stderr.trim()).toBe(`rhizosphere: --mqtts-port ${taken}: port ${taken} is already in use on 127.0.0.1; choose another with --mqtts-port N`);
  });

  it('end hypha with one line naming the flag and status 2', () => {
    const cases: [string[], RegExp][] = [
      [['--cert', pki.piTls.cert], /^hypha: --cert: needs --key as well/],
      [['--key', pki.piTls.key], /^hypha: --key: needs --cert as well/],
      [['--cert', pki.notPem, '--key', pki.piTls.key], /^hypha: --cert: .*not-pem\.txt holds no PEM certificate/],
      [['--cert', pki.piTls.cert, '--key', '/nonexistent/pi.key'], /^hypha: --key: cannot read \/nonexistent\/pi\.key \(ENOENT\)$/],
      [['--ca', pki.notPem], /^hypha: --ca: .*not-pem\.txt holds no PEM certificate/],
    ];
    for (const [args, pattern] of cases) expectOneLineExit2(runHypha(args), pattern, args.join(' '));
  });

  it('shows the TLS flags in --help', () => {
    const hub = spawnSync(process.execPath, [HUB_BIN, '--help'], { encoding: 'utf8' });
    for (const flag of ['--tls-cert', '--tls-key', '--tls-ca', '--mqtts-port', '--require-client-cert', 'RHIZOSPHERE_TLS_CERT']) expect(hub.stdout).toContain(flag);
    const hypha = spawnSync(process.execPath, [HYPHA_BIN, '--help'], { encoding: 'utf8' });
    for (const flag of ['--ca', '--cert', '--key', 'HYPHA_CERT', 'HYPHA_KEY']) expect(hypha.stdout).toContain(flag);
  });
});
