/**
 * The one-line installer, config/install.sh, as a device gets it: fetched from a real hub's
 * GET /install.sh and run with /bin/sh (dash on Debian). Always with --prefix, so it never
 * touches this machine's /etc, /opt, /var or systemd. The installed agent is then started the
 * way its systemd unit would start it (the unit's ExecStart, the settings file as its
 * environment) and answers a command through the hub's REST API.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { appendFileSync, chmodSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { Hub } from '../src/index.js';
import { cleanup, ROOT, startTestHub, tempDir, waitFor } from './helpers.js';

const BUILT_AGENT = join(ROOT, 'dist', 'agent', 'hypha.js');
const KEY = 'enrol-key-0123456789';
/** The PATH systemd gives a service. */
const SYSTEMD_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

interface Installer {
  script: string;
  /** TMPDIR of the script's runs: empty after each one when it cleans up after itself. */
  tmp: string;
}

/** GET /install.sh from the hub, saved as a file. */
async function fetchInstaller(hub: Hub): Promise<Installer> {
  const res = await fetch(`${hub.urls.http}/install.sh`);
  expect(res.status).toBe(200);
  const dir = tempDir('rhizo-installer-');
  const script = join(dir, 'install.sh');
  writeFileSync(script, await res.text());
  const tmp = join(dir, 'tmp');
  mkdirSync(tmp);
  return { script, tmp };
}

/**
 * Runs the script with /bin/sh, asynchronously: the hub it downloads from lives in this
 * process. The environment is built from nothing (no proxy variables, no HOME).
 */
function runInstaller(installer: Installer, args: string[], path = process.env.PATH ?? SYSTEMD_PATH): Promise<Run> {
  const child = spawn('/bin/sh', [installer.script, ...args], { env: { PATH: path, TMPDIR: installer.tmp }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  return new Promise((resolveRun) =>
    child.once('close', (status) => {
      clearTimeout(timer);
      resolveRun({ status, stdout, stderr });
    }),
  );
}

/** What an install under `prefix` writes. */
function layout(prefix: string) {
  return {
    agent: join(prefix, 'opt', 'hypha', 'hypha.js'),
    stateDir: join(prefix, 'var', 'lib', 'hypha'),
    tokenFile: join(prefix, 'var', 'lib', 'hypha', 'token'),
    settings: join(prefix, 'etc', 'default', 'hypha'),
    unit: join(prefix, 'etc', 'systemd', 'system', 'hypha.service'),
  };
}

const modeOf = (file: string) => statSync(file).mode & 0o777;

/** A unit file's `Key=value` lines (the last one of a key wins, as in systemd). */
function unitKeys(file: string): Record<string, string> {
  const keys: Record<string, string> = {};
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const match = /^([A-Za-z]+)=(.*)$/.exec(line);
    if (match) keys[match[1]!] = match[2]!;
  }
  return keys;
}

/** An EnvironmentFile as systemd reads it: comments and blank lines skipped, quotes taken off. */
function environmentFile(file: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const raw of readFileSync(file, 'utf8').split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';') || !line.includes('=')) continue;
    const name = line.slice(0, line.indexOf('='));
    const value = line.slice(line.indexOf('=') + 1);
    env[name] = /^(["']).*\1$/.test(value) ? value.slice(1, -1) : value;
  }
  return env;
}

/** Starts the installed agent as systemd would: the unit's ExecStart, its EnvironmentFile as the environment. */
function startAsUnit(prefix: string): { child: ChildProcess; output: () => string; exited: Promise<number | null> } {
  const { unit, settings } = layout(prefix);
  const keys = unitKeys(unit);
  expect(keys.EnvironmentFile).toBe(settings);
  const [command, ...args] = keys.ExecStart!.split(/\s+/);
  const child = spawn(command!, args, { env: { PATH: SYSTEMD_PATH, ...environmentFile(settings) }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<number | null>((resolveExit) => child.once('exit', (code) => resolveExit(code)));
  cleanup(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  return { child, output: () => output, exited };
}

async function api(hub: Hub, admin: string, method: string, path: string, body?: unknown): Promise<unknown> {
  const res = await fetch(`${hub.urls.http}/api${path}`, {
    method,
    headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return res.json();
}

function execBash(hub: Hub, admin: string, id: string, cmd: string): Promise<unknown> {
  return api(hub, admin, 'POST', `/devices/${id}/commands`, { order: 'exec_bash', cmd_str: cmd });
}

/** A directory whose `node` is this Node.js: the script's default, `command -v node`, finds it. */
function pathWithNode(): { dir: string; path: string } {
  const dir = tempDir('rhizo-bin-');
  symlinkSync(process.execPath, join(dir, 'node'));
  return { dir, path: `${dir}:${process.env.PATH ?? SYSTEMD_PATH}` };
}

describe('install.sh', () => {
  it('is served with the hub filled in, enrols a device that an admin accepts, and keeps its token on a second run', async () => {
    const hub = await startTestHub({ allowAnonymous: false, enrollKey: KEY });
    const admin = hub.stores.tokens.add('root', 'admin');
    const installer = await fetchInstaller(hub);
    const script = readFileSync(installer.script, 'utf8');
    expect(script).toMatch(/^#!\/bin\/sh\n/);
    expect(script).toContain(`\nHUB='${hub.urls.http}'\n`);
    expect(script).toContain(`\nDEFAULT_URL='${hub.urls.mqtt}'\n`);

    const prefix = tempDir('rhizo-prefix-');
    const node = pathWithNode();
    const run = await runInstaller(installer, ['--enroll-key', KEY, '--prefix', prefix], node.path);
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    expect(readdirSync(installer.tmp)).toEqual([]);

    const files = layout(prefix);
    expect(readFileSync(files.agent).equals(readFileSync(BUILT_AGENT))).toBe(true);
    expect(modeOf(files.stateDir)).toBe(0o700);
    expect(modeOf(files.settings)).toBe(0o600);
    expect(modeOf(files.unit)).toBe(0o644);
    expect(readdirSync(files.stateDir)).toEqual([]); // hypha makes the token on its first start
    expect(environmentFile(files.settings)).toEqual({ HYPHA_URL: hub.urls.mqtt, HYPHA_TOKEN_FILE: files.tokenFile, HYPHA_ENROLL_KEY: KEY });
    const unit = unitKeys(files.unit);
    expect(unit).toMatchObject({
      ExecStart: `${join(node.dir, 'node')} ${files.agent}`,
      EnvironmentFile: files.settings,
      Restart: 'always',
      KillMode: 'control-group',
      WantedBy: 'multi-user.target',
    });
    // Without --id, hypha picks this machine's id; the summary names it for the admin.
    const id = /rhizosphere device accept (\S+)/.exec(run.stdout)?.[1];
    expect(id).toBeDefined();
    expect(run.stdout).toMatch(/hypha \S+ installed, not started \(--prefix\)/);

    const agent = startAsUnit(prefix);
    await waitFor(async () => ((await api(hub, admin, 'GET', '/enrolments')) as { id: string }[]).some((e) => e.id === id), { what: `${id} pending` });
    const token = readFileSync(files.tokenFile, 'utf8');
    expect(token).toMatch(/^rz_[A-Za-z0-9_-]{43}\n$/);
    expect(modeOf(files.tokenFile)).toBe(0o600);
    expect(await api(hub, admin, 'POST', `/devices/${id}/accept`)).toEqual({ ok: true });
    await waitFor(() => hub.device(id!)?.online, { timeoutMs: 20_000, what: `${id} online after acceptance` });
    expect(await execBash(hub, admin, id!, 'echo joined')).toMatchObject({ status: 'ok', result: 'joined' });
    expect(agent.output()).toContain(`device id id=${id} `);

    // The same one-liner again: the agent file replaced in place, the device's token kept.
    const again = await runInstaller(installer, ['--enroll-key', KEY, '--prefix', prefix], node.path);
    expect(again.status).toBe(0);
    expect(again.stdout).toMatch(/reinstalled: /);
    expect(readFileSync(files.tokenFile, 'utf8')).toBe(token);
    expect(environmentFile(files.settings)).toEqual({ HYPHA_URL: hub.urls.mqtt, HYPHA_TOKEN_FILE: files.tokenFile, HYPHA_ENROLL_KEY: KEY });
    expect(readdirSync(join(prefix, 'opt', 'hypha')).sort()).toEqual(['hypha.js', 'package.json']);
  });

  it('installs a device added by hand, and a second run upgrades the agent and keeps its id, token and own settings', async () => {
    const served = join(tempDir(), 'hypha.js');
    copyFileSync(BUILT_AGENT, served);
    const hub = await startTestHub({ allowAnonymous: false, agentFile: served });
    const admin = hub.stores.tokens.add('root', 'admin');
    const deviceToken = hub.stores.devices.add('pi-01');
    const installer = await fetchInstaller(hub);
    const prefix = tempDir('rhizo-prefix-');
    const files = layout(prefix);

    const run = await runInstaller(installer, ['--id', 'pi-01', '--token', deviceToken, '--node', process.execPath, '--prefix', prefix]);
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    expect(readFileSync(files.tokenFile, 'utf8')).toBe(`${deviceToken}\n`);
    expect(modeOf(files.tokenFile)).toBe(0o600);
    expect(modeOf(files.settings)).toBe(0o600);
    expect(environmentFile(files.settings)).toEqual({ HYPHA_URL: hub.urls.mqtt, HYPHA_ID: 'pi-01', HYPHA_TOKEN_FILE: files.tokenFile });
    expect(readFileSync(files.settings, 'utf8')).not.toContain(deviceToken);
    expect(unitKeys(files.unit).ExecStart).toBe(`${process.execPath} ${files.agent}`);
    expect(run.stdout).not.toContain('device accept');

    let agent = startAsUnit(prefix);
    await waitFor(() => hub.device('pi-01')?.online, { timeoutMs: 15_000, what: 'pi-01 online' });
    expect(await execBash(hub, admin, 'pi-01', 'echo hello from pi-01')).toMatchObject({ status: 'ok', result: 'hello from pi-01' });
    agent.child.kill('SIGTERM');
    expect(await agent.exited).toBe(0);

    // An admin's own setting, and a new build served by the hub (re-read when the file changes).
    appendFileSync(files.settings, 'HYPHA_MAX_CONCURRENT=2\n');
    const tokenBefore = statSync(files.tokenFile);
    const newBuild = Buffer.from(`${readFileSync(BUILT_AGENT, 'utf8').replace(/^\/\/ hypha [^:]+:/m, '// hypha 9.9.9-test:')}\n// rebuilt for the test\n`);
    writeFileSync(served, newBuild);
    // An unfinished `agent upgrade` to the same version whose window has passed: left there, it
    // would have the next start restore hypha.js.prev over the agent just installed.
    writeFileSync(`${files.agent}.upgrade.json`, JSON.stringify({ from: '0.0.1', to: '9.9.9-test', commitBy: 0 }));
    expect((await fetch(`${hub.urls.http}/agent/hypha.js`)).headers.get('x-hypha-version')).toBe('9.9.9-test');

    const upgrade = await runInstaller(installer, ['--node', process.execPath, '--prefix', prefix]);
    expect(upgrade.stderr).toBe('');
    expect(upgrade.status).toBe(0);
    expect(upgrade.stdout).toMatch(/hypha 9\.9\.9-test upgraded from \d+\.\d+\.\d+\S*, not started \(--prefix\)/);
    expect(readFileSync(files.agent).equals(newBuild)).toBe(true);
    expect(existsSync(`${files.agent}.upgrade.json`)).toBe(false);
    expect(readFileSync(files.tokenFile, 'utf8')).toBe(`${deviceToken}\n`);
    expect(statSync(files.tokenFile).ino).toBe(tokenBefore.ino); // not even rewritten
    expect(environmentFile(files.settings)).toEqual({ HYPHA_URL: hub.urls.mqtt, HYPHA_ID: 'pi-01', HYPHA_TOKEN_FILE: files.tokenFile, HYPHA_MAX_CONCURRENT: '2' });
    expect(readdirSync(installer.tmp)).toEqual([]);

    agent = startAsUnit(prefix);
    await waitFor(() => hub.device('pi-01')?.online, { timeoutMs: 15_000, what: 'pi-01 online after the upgrade' });
    expect(await execBash(hub, admin, 'pi-01', 'echo still pi-01')).toMatchObject({ status: 'ok', result: 'still pi-01' });
  });

  it('refuses bad options with status 2 before doing anything', async () => {
    const hub = await startTestHub();
    const installer = await fetchInstaller(hub);
    const prefix = tempDir('rhizo-prefix-');
    const cases: [string[], RegExp][] = [
      [['--id', 'a/b', '--token', 'rz_x'], /--id "a\/b" is not a device id: 1 to 128 of/],
      [['--id', 'x'.repeat(129), '--token', 'rz_x'], /is not a device id/],
      [['--enroll-key'], /--enroll-key needs a value/],
      [['--id', '--token', 'rz_x'], /--id needs a value/],
      [['--token', 'rz_x'], /--token needs --id/],
      [['--frobnicate'], /unknown option: --frobnicate/],
      [[], /--enroll-key KEY .* or --id ID --token TOKEN/],
      [['--enroll-key', KEY, '--token', 'rz_x'], /not both/],
      [['--id', 'pi-1', '--token', "rz_x'; reboot"], /--token: only letters, digits/],
      [['--id', 'pi-1', '--token', 'rz_x', '--url', 'http://hub:8080'], /--url: "http:\/\/hub:8080" must be mqtt:\/\//],
    ];
    for (const [args, message] of cases) {
      const run = await runInstaller(installer, [...args, '--prefix', prefix]);
      expect({ args, status: run.status }).toEqual({ args, status: 2 });
      expect(run.stderr).toMatch(message);
      expect(run.stdout).toBe('');
    }
    expect(readdirSync(prefix)).toEqual([]);
    expect(readdirSync(installer.tmp)).toEqual([]);
  });

  it('refuses a Node.js older than 18, or none, naming the package to install', async () => {
    const hub = await startTestHub();
    const installer = await fetchInstaller(hub);
    const prefix = tempDir('rhizo-prefix-');
    const fakeNode = join(tempDir(), 'node');
    writeFileSync(fakeNode, '#!/bin/sh\ncase "$1" in -v|--version) echo v16.20.0 ;; -p) echo 16.20.0 ;; *) echo "fake node: $*" >&2; exit 1 ;; esac\n');
    chmodSync(fakeNode, 0o755);

    const old = await runInstaller(installer, ['--enroll-key', KEY, '--node', fakeNode, '--prefix', prefix]);
    expect(old.status).toBe(1);
    expect(old.stderr).toContain(`${fakeNode} is Node.js v16.20.0, too old`);
    expect(old.stderr).toContain('hypha needs Node.js 18 or later');
    expect(old.stderr).toMatch(/Debian 12, Raspberry Pi OS bookworm and later: apt-get install nodejs/);
    expect(old.stderr).toMatch(/bullseye ships Node\.js 12\): NodeSource/);
    expect(old.stderr).toMatch(/apk add nodejs/);
    expect(old.stderr).toMatch(/dnf install nodejs/);

    // No node on PATH at all: a PATH with nothing on it (sh itself is named by its path).
    const none = await runInstaller(installer, ['--id', 'pi-1', '--token', 'rz_x', '--prefix', prefix], tempDir('rhizo-empty-path-'));
    expect(none.status).toBe(1);
    expect(none.stderr).toContain('Node.js is not installed (no node on PATH)');
    expect(none.stderr).toContain('apt-get install nodejs');

    const missing = await runInstaller(installer, ['--id', 'pi-1', '--token', 'rz_x', '--node', join(prefix, 'no-such-node'), '--prefix', prefix]);
    expect(missing.status).toBe(1);
    expect(missing.stderr).toContain(`no Node.js at ${join(prefix, 'no-such-node')}`);
    expect(readdirSync(prefix)).toEqual([]);
  });

  it('refuses an agent whose SHA-256 does not match, or that does not run, and installs nothing', async () => {
    const hub = await startTestHub();
    const installer = await fetchInstaller(hub);
    // A hub look-alike, given with --hub, that serves whatever agent and checksum the test says.
    const served = { agent: readFileSync(BUILT_AGENT), sha256: `${'0'.repeat(64)}  hypha.js\n` };
    const lookalike = createServer((req, res) => {
      if (req.url === '/agent/hypha.js') res.end(served.agent);
      else if (req.url === '/agent/hypha.js.sha256') res.end(served.sha256);
      else res.writeHead(404).end();
    });
    await new Promise<void>((r) => lookalike.listen(0, '127.0.0.1', r));
    cleanup(() => new Promise((r) => lookalike.close(r)));
    const hubArgs = ['--hub', `http://127.0.0.1:${(lookalike.address() as { port: number }).port}`, '--id', 'pi-1', '--token', 'rz_x', '--node', process.execPath];
    const prefix = tempDir('rhizo-prefix-');

    const tampered = await runInstaller(installer, [...hubArgs, '--prefix', prefix]);
    expect(tampered.status).toBe(1);
    expect(tampered.stderr).toMatch(/SHA-256 mismatch: http:\/\/127\.0\.0\.1:\d+\/agent\/hypha\.js is [0-9a-f]{64}, hypha\.js\.sha256 says 0{64}; nothing was installed/);
    expect(readdirSync(prefix)).toEqual([]);

    served.agent = Buffer.from('#!/usr/bin/env node\n// hypha 0.0.0-broken: test\nthrow new Error("not for this Node.js");\n');
    served.sha256 = `${createHash('sha256').update(served.agent).digest('hex')}  hypha.js\n`;
    const broken = await runInstaller(installer, [...hubArgs, '--prefix', prefix]);
    expect(broken.status).toBe(1);
    expect(broken.stderr).toContain(`the downloaded agent does not run on Node.js ${process.version} (${process.execPath})`);
    expect(broken.stderr).toContain('not for this Node.js');
    expect(readdirSync(prefix)).toEqual([]);
    expect(readdirSync(installer.tmp)).toEqual([]);
  });
});
