/**
 * Past the process's file limit: connections beyond it are closed at once, the hub keeps
 * serving the ones it holds, and accepts again once descriptors are free. The hub runs as a
 * process under `prlimit --nofile`, as it would under a systemd LimitNOFILE.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cleanup, connectMqtt, freePort, HUB_BIN, RequestClient, tempDir, waitFor } from './helpers.js';

const PRLIMIT = '/usr/bin/prlimit';
const FILE_LIMIT = 200;

/** Opens a TCP connection; resolves with the socket, and whether the hub closed it within `ms`. */
function probe(port: number, ms: number): Promise<{ socket: Socket; closedAtOnce: boolean }> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    cleanup(() => socket.destroy());
    socket.on('error', () => undefined);
    socket.once('connect', () => {
      const timer = setTimeout(() => resolve({ socket, closedAtOnce: false }), ms);
      socket.once('close', () => {
        clearTimeout(timer);
        resolve({ socket, closedAtOnce: true });
      });
    });
  });
}

describe('file limit', () => {
  it.skipIf(!existsSync(PRLIMIT))('closes connections past the file limit at once and keeps serving the others', async () => {
    const [mqttPort, httpPort] = [await freePort(), await freePort()];
    const args = [`--nofile=${FILE_LIMIT}:${FILE_LIMIT}`, process.execPath, HUB_BIN, '--allow-anonymous', '--max-publish-rate', '0'];
    const child = spawn(PRLIMIT, [...args, '--mqtt-port', String(mqttPort), '--http-port', String(httpPort), '--data-dir', join(tempDir(), 'data'), '--log-level', 'warn'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    child.stdout.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr.on('data', (c: Buffer) => (output += c.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    cleanup(async () => {
      if (child.exitCode === null) {
        child.kill('SIGKILL');
        await exited;
      }
    });
    await waitFor(async () => (await fetch(`http://127.0.0.1:${httpPort}/healthz`).catch(() => null))?.ok, { what: 'hub up' });

    // Twenty devices that answer, and a client, connected before the flood.
    const url = `mqtt://127.0.0.1:${mqttPort}`;
    for (let i = 0; i < 20; i++) {
      const id = `pi-${i}`;
      const device = await connectMqtt(url, { clientId: id, clean: false, reconnectPeriod: 0 });
      device.on('message', (_topic, payload) => {
        const command = JSON.parse(payload.toString()) as { id: string; cmd_str: string };
        device.publish(`rhizosphere/devices/${id}/response`, JSON.stringify({ type: 'response', id: command.id, result: command.cmd_str, error: '', exit_code: 0 }), { qos: 1 });
      });
      await device.subscribeAsync(`rhizosphere/devices/${id}/command`, { qos: 1 });
    }
    const client = await RequestClient.connect(url, 'ops');

    // The flood: far more connections than the hub may open files.
    const flood = await Promise.all(Array.from({ length: FILE_LIMIT + 100 }, () => probe(mqttPort, 1000)));
    const closedAtOnce = flood.filter((f) => f.closedAtOnce).length;
    expect(closedAtOnce).toBeGreaterThan(100);
    expect(flood.length - closedAtOnce).toBeGreaterThan(0);

    // At the limit, the devices and the client it holds keep working.
    const replies = await Promise.all(Array.from({ length: 40 }, (_, i) => client.request({ device: `pi-${i % 20}`, order: 'exec_bash', cmd_str: `n${i}` })));
    expect(replies.map((r) => (r.status === 'ok' ? r.result : r.code))).toEqual(Array.from({ length: 40 }, (_, i) => `n${i}`));

    // Descriptors freed, new connections are accepted again.
    for (const { socket } of flood) socket.destroy();
    await waitFor(async () => (await fetch(`http://127.0.0.1:${httpPort}/healthz`).catch(() => null))?.ok, { what: 'healthz after the flood' });
    const late = await connectMqtt(url, { clientId: 'late', reconnectPeriod: 0 });
    expect(late.connected).toBe(true);
    expect(child.exitCode).toBe(null);
    expect(output).not.toMatch(/EMFILE|uncaught|Error:/i);
  });
});
