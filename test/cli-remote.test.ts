/**
 * `rhizosphere shell|cp|forward`: the real commands against a real hub and a real hypha, as an
 * operator would use them; everything they do is in the audit trail.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { connect } from '../src/client/index.js';
import { HUB_BIN, cleanup, startAgents, startTestHub, tempDir, waitFor } from './helpers.js';

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], env: Record<string, string>, input?: string): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [HUB_BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    if (input !== undefined) child.stdin.end(input);
    else child.stdin.end();
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.once('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

const sha256 = (bytes: Buffer) => createHash('sha256').update(bytes).digest('hex');

describe('rhizosphere shell, cp and forward', () => {
  it('a shell, a 10 MiB file both ways, a forward to the device\'s web server, all audited; bad input refused', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    const token = hub.stores.devices.add('pi-01');
    const root = tempDir('rhizo-files-');
    // The agent's shells start in a throwaway home: no real login files run.
    const home = process.env.HOME;
    process.env.HOME = tempDir('rhizo-home-');
    try {
      await startAgents(hub, ['pi-01'], hub.urls.mqtt, ['--token', token, '--file-root', root]);
    } finally {
      process.env.HOME = home;
    }
    const env = { RHIZOSPHERE_URL: hub.urls.mqtt, RHIZOSPHERE_TOKEN_NAME: 'ops', RHIZOSPHERE_TOKEN: hub.stores.tokens.add('ops', 'operator') };

    // shell: a pipe for input (no terminal): the command runs, exit ends it with its status.
    const shell = await cli(['shell', 'pi-01'], env, 'echo $((6*7))\nexit 3\n');
    expect(shell.stdout).toContain('42');
    expect(shell.status).toBe(3);

    // cp: 10 MiB of random bytes up and back down, checked by SHA-256 at each end.
    const local = tempDir('rhizo-local-');
    const original = randomBytes(10 * 1024 * 1024);
    writeFileSync(join(local, 'blob.bin'), original);
    const up = await cli(['cp', join(local, 'blob.bin'), `pi-01:${root}/`], env);
    expect(up.stderr).toContain(sha256(original));
    expect(up.status).toBe(0);
    expect(sha256(readFileSync(join(root, 'blob.bin')))).toBe(sha256(original));
    const down = await cli(['cp', `pi-01:${root}/blob.bin`, join(local, 'back.bin')], env);
    expect(down.status).toBe(0);
    expect(sha256(readFileSync(join(local, 'back.bin')))).toBe(sha256(original));

    // Failures say what failed and leave nothing behind.
    const outside = await cli(['cp', join(local, 'blob.bin'), 'pi-01:/etc/rhizo-escape'], env);
    expect(outside.status).toBe(1);
    expect(outside.stderr).toMatch(/^rhizosphere: PATH_OUTSIDE_ROOT: /);
    const escape = await cli(['cp', `pi-01:${root}/../../etc/passwd`, join(local, 'passwd')], env);
    expect(escape.stderr).toMatch(/^rhizosphere: PATH_OUTSIDE_ROOT: /);
    const missing = await cli(['cp', `pi-01:${root}/nothing`, join(local, 'nothing')], env);
    expect(missing.stderr).toMatch(/^rhizosphere: NOT_FOUND: /);
    expect(readdirSync(local).sort()).toEqual(['back.bin', 'blob.bin']);
    const usage = await cli(['cp', join(local, 'blob.bin'), join(local, 'other')], env);
    expect(usage.status).toBe(2);

    // A viewer may do none of it.
    const viewerEnv = { ...env, RHIZOSPHERE_TOKEN_NAME: 'dash', RHIZOSPHERE_TOKEN: hub.stores.tokens.add('dash', 'viewer') };
    const viewer = await cli(['cp', join(local, 'blob.bin'), `pi-01:${root}/v.bin`], viewerEnv);
    expect(viewer.stderr).toMatch(/^rhizosphere: FORBIDDEN: /);
    expect(existsSync(join(root, 'v.bin'))).toBe(false);

    // forward: the device's own web server (here: on this machine) through a local port.
    const web = createServer((req, res) => res.end(`hello from the device: ${req.url}`));
    await new Promise<void>((resolve) => web.listen(0, '127.0.0.1', resolve));
    const webPort = (web.address() as { port: number }).port;
    const forward: ChildProcess = spawn(process.execPath, [HUB_BIN, 'forward', 'pi-01', `0:127.0.0.1:${webPort}`, `0:${webPort}`], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    cleanup(() => {
      forward.kill('SIGKILL');
      web.close();
    });
    let printed = '';
    forward.stdout!.on('data', (c: Buffer) => (printed += c.toString()));
    const ports = await waitFor(() => {
      const found = [...printed.matchAll(/forwarding 127\.0\.0\.1:(\d+) -> pi-01/g)].map((m) => Number(m[1]));
      return found.length === 2 ? found : null;
    });
    const pages = await Promise.all([...ports, ports[0]!].map((port, i) => fetch(`http://127.0.0.1:${port}/page-${i}`).then((r) => r.text())));
    expect(pages).toEqual(['hello from the device: /page-0', 'hello from the device: /page-1', 'hello from the device: /page-2']);
    forward.kill('SIGINT');
    await new Promise((resolve) => forward.once('close', resolve));

    const audit = hub.stores.audit.query({ device: 'pi-01', limit: 100 });
    const actions = audit.map((entry) => `${entry.action}:${(entry.detail as { kind?: string } | null)?.kind ?? ''}:${entry.actor}`);
    expect(actions).toEqual(expect.arrayContaining(['tunnel.open:shell:ops', 'tunnel.close:shell:ops', 'tunnel.open:file_put:ops', 'tunnel.open:file_get:ops', 'tunnel.open:tcp:ops']));
    expect(actions.some((a) => a.startsWith('tunnel.refused') && a.endsWith(':dash'))).toBe(true);
  }, 90_000);
});

describe('uploading a Blob from the SDK', () => {
  it('hashes it slice by slice, sends it, and the device has the same bytes', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    const token = hub.stores.devices.add('pi-blob');
    const root = tempDir('rhizo-files-');
    await startAgents(hub, ['pi-blob'], hub.urls.mqtt, ['--token', token, '--file-root', root]);
    const sdk = await connect(hub.urls.mqtt, { tokenName: 'ops', token: hub.stores.tokens.add('ops', 'operator'), reconnectPeriodMs: 0 });
    cleanup(() => sdk.close());
    // Three and a half slices of the SDK's 1 MiB reads, so the last one is short.
    const bytes = randomBytes(3.5 * 1024 * 1024);
    const seen: number[] = [];
    const result = await sdk.device('pi-blob').upload(`${root}/blob.bin`, new Blob([bytes]), { onProgress: (done) => seen.push(done) });
    expect(result).toEqual({ size: bytes.length, sha256: sha256(bytes) });
    expect(sha256(readFileSync(join(root, 'blob.bin')))).toBe(sha256(bytes));
    expect(seen.at(-1)).toBe(bytes.length);
  }, 30_000);
});

describe('rhizosphere shell in a terminal', () => {
  it('puts the local terminal in raw mode: keystrokes, Ctrl-C and the window size reach the device', async () => {
    const pty = await import('node-pty');
    const hub = await startTestHub({ allowAnonymous: false });
    const token = hub.stores.devices.add('pi-tty');
    const home = process.env.HOME;
    process.env.HOME = tempDir('rhizo-home-');
    try {
      await startAgents(hub, ['pi-tty'], hub.urls.mqtt, ['--token', token]);
    } finally {
      process.env.HOME = home;
    }
    const env = { ...process.env, RHIZOSPHERE_URL: hub.urls.mqtt, RHIZOSPHERE_TOKEN_NAME: 'ops', RHIZOSPHERE_TOKEN: hub.stores.tokens.add('ops', 'operator'), TERM: 'xterm-256color' } as Record<string, string>;
    // The operator's own terminal, as a pseudo-terminal this test reads and types into.
    const local = pty.spawn(process.execPath, [HUB_BIN, 'shell', 'pi-tty'], { cols: 100, rows: 30, env });
    cleanup(() => local.kill('SIGKILL'));
    let screen = '';
    local.onData((data) => (screen += data));
    const exited = new Promise<number>((resolve) => local.onExit(({ exitCode }) => resolve(exitCode)));
    const type = (text: string) => local.write(text);

    type('echo $((6*7))-$(tput cols)\r');
    await waitFor(() => screen.includes('42-100'), { what: '42-100 on the screen', timeoutMs: 15_000 });
    local.resize(57, 20);
    await new Promise((resolve) => setTimeout(resolve, 300));
    type('echo cols=$(tput cols)\r');
    await waitFor(() => screen.includes('cols=57'), { what: 'cols=57 on the screen' });
    // Ctrl-C reaches the device's foreground process, not this one.
    type('sleep 30; echo NOT-$((2+2))\r');
    await new Promise((resolve) => setTimeout(resolve, 500));
    type('\u0003');
    type('echo after-$((1+1))\r');
    await waitFor(() => screen.includes('after-2'), { what: 'the shell after Ctrl-C' });
    expect(screen).not.toContain('NOT-4');
    type('exit 4\r');
    expect(await exited).toBe(4);
  }, 60_000);
});
