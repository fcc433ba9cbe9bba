/** The real `rhizosphere` command: help, one-line errors with status 2, clean stop on signals. */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Topics } from '../src/protocol/topics.js';
import { cleanup, connectMqtt, freePort, HUB_BIN, spawnHub, tempDir, waitFor } from './helpers.js';

function runHub(args: string[], env: Record<string, string> = {}) {
  return spawnSync(process.execPath, [HUB_BIN, ...args], { encoding: 'utf8', timeout: 15_000, env: { ...process.env, ...env } });
}

describe('rhizosphere CLI', () => {
  it('documents every flag in --help', () => {
    const result = runHub(['--help']);
    expect(result.status).toBe(0);
    for (const flag of ['--host', '--mqtt-port', '--http-port', '--data-dir', '--topic-prefix', '--config', '--allow-anonymous', '--log-level', '--help', 'RHIZOSPHERE_MQTT_PORT']) {
      expect(result.stdout).toContain(flag);
    }
  });

  it('ends a bad start with one line naming the problem and status 2', async () => {
    const cases: [string[], Record<string, string>, RegExp][] = [
      [['--bogus'], {}, /^rhizosphere: Unknown option '--bogus'/],
      [['--mqtt-port', 'abc'], {}, /^rhizosphere: --mqtt-port: "abc" is not a whole number/],
      [['--mqtt-port', '-5'], {}, /^rhizosphere: Option '--mqtt-port' argument is ambiguous/],
      [['--http-port', '99999'], {}, /^rhizosphere: --http-port: 99999 must be 0 to 65535/],
      [['launch'], {}, /^rhizosphere: unknown command "launch"/],
      [['--config', '/nonexistent.json'], {}, /^rhizosphere: --config \/nonexistent\.json: cannot read it/],
      [[], { RHIZOSPHERE_LOG_LEVEL: 'loud' }, /^rhizosphere: RHIZOSPHERE_LOG_LEVEL: "loud" must be one of/],
    ];
    for (const [args, env, pattern] of cases) {
      const result = runHub(args, env);
      expect(result.status, args.join(' ')).toBe(2);
      expect(result.stderr.trim().split('\n')).toHaveLength(1);
      expect(result.stderr).toMatch(pattern);
    }
  });

  it('says which flag to change when a port is in use', async () => {
    const blocker = createServer();
    await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
    cleanup(() => new Promise((r) => blocker.close(r)));
    const taken = (blocker.address() as { port: number }).port;
    const dataDir = tempDir();

    const mqtt = runHub(['--mqtt-port', String(taken), '--http-port', '0', '--data-dir', dataDir]);
    expect(mqtt.status).toBe(2);
    expect(mqtt.stderr.trim()).toBe(`rhizosphere: --mqtt-port ${taken}: port ${taken} is already in use on 127.0.0.1; choose another with --mqtt-port N`);

    const http = runHub(['--mqtt-port', '0', '--http-port', String(taken), '--data-dir', dataDir]);
    expect(http.status).toBe(2);
    expect(http.stderr).toMatch(new RegExp(`^rhizosphere: --http-port ${taken}: port ${taken} is already in use`));
    // A start that failed did not use up the first start: no admin was made whose password nobody saw.
    expect(runHub(['user', 'list', '--json', '--data-dir', dataDir]).stdout.trim()).toBe('{"users":[]}');
  });

  it('starts, serves /healthz, and stops cleanly within 5 s on SIGTERM and SIGINT', async () => {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      const dataDir = join(tempDir(), 'state');
      const httpPort = await freePort();
      const hub = await spawnHub(['--mqtt-port', '0', '--http-port', String(httpPort), '--data-dir', dataDir, '--log-level', 'info']);
      await waitFor(async () => (await fetch(`http://127.0.0.1:${httpPort}/healthz`).catch(() => null))?.ok, { what: 'healthz' });
      expect(existsSync(dataDir)).toBe(true);
      const sent = Date.now();
      hub.child.kill(signal);
      const { code } = await hub.exited;
      expect(code).toBe(0);
      expect(Date.now() - sent).toBeLessThan(5000);
      // Not a terminal: JSON log lines, and on this first start the admin's one-time password.
      const output = hub.output();
      expect(output).toMatch(/first start: created user "admin" with password\n\n {4}[A-Za-z0-9_-]{20}\n/);
      const lines = output.split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as { msg: string });
      expect(lines.map((l) => l.msg)).toEqual(expect.arrayContaining(['hub listening', 'stopping', 'hub closed']));
    }
  });

  it('on SIGTERM answers the commands in flight, records its devices offline and leaves their connections closed', async () => {
    const topics = new Topics('rhizosphere');
    const [mqttPort, httpPort] = [await freePort(), await freePort()];
    const hub = await spawnHub(['--mqtt-port', String(mqttPort), '--http-port', String(httpPort), '--data-dir', join(tempDir(), 'state'), '--allow-anonymous', '--log-level', 'info']);
    await waitFor(async () => (await fetch(`http://127.0.0.1:${httpPort}/healthz`).catch(() => null))?.ok, { what: 'healthz' });
    const url = `mqtt://127.0.0.1:${mqttPort}`;
    // A device that takes the command and never answers it.
    const device = await connectMqtt(url, { clientId: 'slow-1' });
    await device.subscribeAsync(topics.deviceCommand('slow-1'), { qos: 1 });
    const commands: string[] = [];
    device.on('message', (_topic, payload) => commands.push(payload.toString()));
    const deviceClosed = new Promise<void>((resolve) => device.once('close', () => resolve()));
    const tool = await connectMqtt(url, { clientId: 'tool-1' });
    await tool.subscribeAsync(topics.clientResponse('tool-1'), { qos: 1 });
    const reply = new Promise<Record<string, unknown>>((resolve) => tool.once('message', (_topic, payload) => resolve(JSON.parse(payload.toString()) as Record<string, unknown>)));
    await tool.publishAsync(topics.clientRequest('tool-1'), JSON.stringify({ id: 'r1', device: 'slow-1', order: 'exec_bash', cmd_str: 'sleep 60' }), { qos: 1 });
    await waitFor(() => commands.length === 1, { what: 'the command at the device' });

    const sent = Date.now();
    hub.child.kill('SIGTERM');
    expect(await reply).toMatchObject({ id: 'r1', status: 'error', code: 'INTERNAL' });
    await deviceClosed;
    const { code } = await hub.exited;
    expect(code).toBe(0);
    expect(Date.now() - sent).toBeLessThan(5000);
    const lines = hub.output().split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as { msg: string; device?: string; reason?: string });
    expect(lines).toEqual(expect.arrayContaining([expect.objectContaining({ msg: 'device offline', device: 'slow-1', reason: 'hub-closing' })]));
  });
});
