/** `rhizosphere exec|devices|run`: the real command against a real hub with API tokens and real agents. */
import { spawn } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { HUB_BIN, startAgents, startTestHub, waitFor } from './helpers.js';

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI as a process without blocking this one (the hub under test lives here). */
function cli(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [HUB_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    child.once('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

describe('rhizosphere client commands', () => {
  it('exec: the command\'s output on stdout and stderr, its exit status; coded errors exit 1; usage exits 2', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    const token = hub.stores.devices.add('pi-01');
    hub.stores.devices.add('pi-02');
    await startAgents(hub, ['pi-01'], hub.urls.mqtt, ['--token', token]);
    const env = { RHIZOSPHERE_TOKEN_NAME: 'ops', RHIZOSPHERE_TOKEN: hub.stores.tokens.add('ops', 'operator') };
    const url = hub.urls.mqtt;

    const [ok, failing, okng, offline, viewer] = await Promise.all([
      cli(['exec', '--url', url, 'pi-01', '--', 'echo', 'out;', 'echo', 'err', '>&2']),
      cli(['exec', '--url', hub.urls.ws, 'pi-01', '--', 'echo partial; exit 7'], env),
      cli(['exec', '--url', url, '--order', 'okng', '--timeout', '5', 'pi-01', '--', 'false'], env),
      cli(['exec', '--url', url, 'pi-02', '--', 'uptime'], env),
      cli(['exec', '--url', url, '--token-name', 'dash', '--token', hub.stores.tokens.add('dash', 'viewer'), 'pi-01', '--', 'uptime']),
    ]);
    // No credentials on a hub without anonymous access.
    expect(ok.status).toBe(1);
    expect(ok.stderr).toMatch(/^rhizosphere: FORBIDDEN: the hub refused the connection/);

    expect(failing).toEqual({ status: 7, stdout: 'partial\n', stderr: '' });
    expect(okng).toEqual({ status: 1, stdout: 'ng\n', stderr: '' });
    expect(offline.status).toBe(1);
    expect(offline.stdout).toBe('');
    expect(offline.stderr).toMatch(/^rhizosphere: DEVICE_OFFLINE: device pi-02 .*\n$/);
    expect(viewer.status).toBe(1);
    expect(viewer.stderr).toMatch(/^rhizosphere: FORBIDDEN: /);

    const streams = await cli(['exec', '--url', url, 'pi-01', '--', 'echo', 'out;', 'echo', 'err', '>&2;', 'exit', '0'], env);
    expect(streams).toEqual({ status: 0, stdout: 'out\n', stderr: 'err\n' });

    const usage: [string[], RegExp][] = [
      [['exec', 'pi-01', '--', 'uptime'], /^rhizosphere: exec: --url is required/],
      [['exec', '--url', url, 'pi-01'], /^rhizosphere: exec: the command is missing/],
      [['exec', '--url', url, '--', 'uptime'], /^rhizosphere: exec: DEVICE is required/],
      [['exec', '--url', url, '--order', 'fast', 'pi-01', '--', 'uptime'], /^rhizosphere: --order: "fast" must be one of/],
      [['exec', '--url', url, '--timeout', '0.5', 'pi-01', '--', 'uptime'], /^rhizosphere: --timeout: 0.5 must be 1 to 3600 seconds/],
      [['exec', '--url', 'http://x', 'pi-01', '--', 'uptime'], /^rhizosphere: --url http:\/\/x: must start with/],
      [['exec', '--url', url, '--bogus', 'pi-01', '--', 'uptime'], /^rhizosphere: Unknown option '--bogus'/],
      [['devices', '--url', url, 'extra'], /^rhizosphere: devices: unexpected argument "extra"/],
      [['run', '--url', url, '--tag', 'k', '--', 'true'], /^rhizosphere: run: --http-url is required/],
      [['run', '--url', hub.urls.ws, '--', 'true'], /^rhizosphere: run: say which devices/],
      [['run', '--url', hub.urls.ws, '--tag', 'k', '--concurrency', 'x', '--', 'true'], /^rhizosphere: --concurrency: "x" is not a whole number/],
    ];
    const results = await Promise.all(usage.map(([args]) => cli(args, env)));
    results.forEach((result, i) => {
      expect(result.status, usage[i]![0].join(' ')).toBe(2);
      expect(result.stderr.trim().split('\n')).toHaveLength(1);
      expect(result.stderr).toMatch(usage[i]![1]);
    });

    const help = await cli(['--help']);
    for (const word of ['rhizosphere exec', 'rhizosphere devices', 'rhizosphere run', 'RHIZOSPHERE_TOKEN']) expect(help.stdout).toContain(word);
  });

  it('devices: a table, or one JSON object, filtered by tags and online state', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    await startAgents(hub, ['dev-a'], hub.urls.mqtt, ['--token', hub.stores.devices.add('dev-a', ['kitchen']), '--tag', 'pi4']);
    const b = await startAgents(hub, ['dev-b'], hub.urls.ws, ['--token', hub.stores.devices.add('dev-b')]);
    b[0]!.child.kill('SIGKILL');
    await waitFor(() => hub.device('dev-b')?.online === false, { what: 'dev-b offline' });
    const env = { RHIZOSPHERE_TOKEN_NAME: 'dash', RHIZOSPHERE_TOKEN: hub.stores.tokens.add('dash', 'viewer') };

    await waitFor(() => hub.device('dev-a')?.tags.includes('pi4'), { what: 'dev-a declared its tag' });
    const [json, text, online, tagged] = await Promise.all([
      cli(['devices', '--url', hub.urls.mqtt, '--json'], env),
      cli(['devices', '--url', hub.urls.ws], env),
      cli(['devices', '--url', hub.urls.mqtt, '--online', '--json'], env),
      cli(['devices', '--url', hub.urls.mqtt, '--tag', 'kitchen', '--tag', 'pi4', '--json'], env),
    ]);
    expect(json.status).toBe(0);
    expect(json.stdout.trim().split('\n')).toHaveLength(1);
    const parsed = JSON.parse(json.stdout) as { devices: { id: string; online: boolean; transport: string; since: string }[] };
    expect(parsed.devices.map((d) => [d.id, d.online, d.transport])).toEqual([
      ['dev-a', true, 'mqtt'],
      ['dev-b', false, 'mqtt-ws'],
    ]);
    expect(text.status).toBe(0);
    const lines = text.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^ID\s+ONLINE\s+TRANSPORT\s+SINCE\s+TAGS$/);
    expect(lines[1]).toMatch(/^dev-a\s+yes\s+mqtt\s+\d{4}-\d\d-\d\dT\S+\s+kitchen,pi4$/);
    expect(lines[2]).toMatch(/^dev-b\s+no\s+mqtt-ws\s+\d{4}-\S+\s+-$/);
    expect((JSON.parse(online.stdout) as typeof parsed).devices.map((d) => d.id)).toEqual(['dev-a']);
    expect((JSON.parse(tagged.stdout) as typeof parsed).devices.map((d) => d.id)).toEqual(['dev-a']);
  });

  it('run --tag: progress on stderr, a summary table on stdout, exit 0 only when every target succeeded', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    for (const id of ['k-1', 'k-2']) await startAgents(hub, [id], hub.urls.mqtt, ['--token', hub.stores.devices.add(id, ['kitchen'])]);
    await startAgents(hub, ['s-1'], hub.urls.mqtt, ['--token', hub.stores.devices.add('s-1', ['shed'])]);
    const env = { RHIZOSPHERE_TOKEN_NAME: 'ops', RHIZOSPHERE_TOKEN: hub.stores.tokens.add('ops', 'operator') };

    const ok = await cli(['run', '--url', hub.urls.ws, '--tag', 'kitchen', '--', 'echo', 'updated', '$(hostname)'], env);
    expect(ok.status, ok.stderr).toBe(0);
    expect(ok.stderr).toMatch(/^rhizosphere: job \S+: 2 devices\n/);
    expect(ok.stderr).toContain('2/2 done: 2 ok, 0 failed');
    const rows = ok.stdout.trim().split('\n');
    expect(rows[0]).toMatch(/^DEVICE\s+STATE\s+EXIT\s+OUTPUT$/);
    expect(rows[1]).toMatch(/^k-1\s+succeeded\s+0\s+updated /);
    expect(rows[2]).toMatch(/^k-2\s+succeeded\s+0\s+updated /);
    expect(rows[3]).toBe('2 devices: 2 succeeded');

    // One fails: exit 1, and the table says which (its first line of output, else of stderr).
    const mixed = await cli(
      ['run', '--url', hub.urls.mqtt, '--http-url', hub.urls.http, '--device', 'k-1', '--device', 's-1', '--concurrency', '1', '--timeout', '5', '--', 'echo "no such file" >&2; exit 4'],
      env,
    );
    expect(mixed.status).toBe(1);
    expect(mixed.stdout).toMatch(/^k-1\s+failed\s+4\s+no such file$/m);
    expect(mixed.stdout).toMatch(/^s-1\s+failed\s+4\s+no such file$/m);
    expect(mixed.stdout.trim().split('\n').at(-1)).toBe('2 devices: 2 failed');

    const none = await cli(['run', '--url', hub.urls.ws, '--tag', 'garage', '--', 'true'], env);
    expect(none.status).toBe(0);
    expect(none.stdout).toBe('no devices matched\n');

    const viewer = await cli(['run', '--url', hub.urls.ws, '--tag', 'kitchen', '--', 'true'], { RHIZOSPHERE_TOKEN_NAME: 'dash', RHIZOSPHERE_TOKEN: hub.stores.tokens.add('dash', 'viewer') });
    expect(viewer.status).toBe(1);
    expect(viewer.stderr).toMatch(/^rhizosphere: FORBIDDEN: /);
  });
});
