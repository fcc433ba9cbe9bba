/**
 * The MQTT ports listen from the beginning of a start (src/listen.ts ConnectionGate): a device
 * that connects while the hub opens its database and builds its device table waits for its
 * CONNACK instead of being refused.
 */
import { connect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { ConnectionGate } from '../src/listen.js';
import { openStores } from '../src/store/stores.js';
import { Topics } from '../src/protocol/topics.js';
import { cleanup, connectMqtt, freePort, spawnHub, tempDir, waitFor } from './helpers.js';

const dial = (port: number) =>
  new Promise<Socket>((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => resolve(socket));
    socket.once('error', reject);
  });

/** A server on a free port whose connections go through a gate, as the hub's MQTT ports do. */
async function gatedServer(): Promise<{ gate: ConnectionGate; port: number }> {
  const gate = new ConnectionGate();
  const server = createServer(gate.accept);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  cleanup(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { gate, port: (server.address() as { port: number }).port };
}

describe('connections during the start', () => {
  it('are held unread, survive a peer that resets, and are served in order once the hub opens', async () => {
    const { gate, port } = await gatedServer();
    const [a, b, c] = [await dial(port), await dial(port), await dial(port)];
    a.write('early bytes');
    // One peer gives up while held: a reset, which must not be an uncaught error.
    b.resetAndDestroy();
    await new Promise((r) => setTimeout(r, 100));
    const served: string[] = [];
    gate.open((socket) => {
      served.push(`${socket.remotePort}`);
      socket.on('data', (chunk) => socket.end(`got: ${chunk.toString()}`));
    });
    expect(served).toEqual([`${a.localPort}`, `${c.localPort}`]);
    // Nothing of what came while held was lost.
    const answer = await new Promise<string>((resolve) => a.once('data', (d) => resolve(d.toString())));
    expect(answer).toBe('got: early bytes');
    // Later connections go straight to the server.
    const d = await dial(port);
    await waitFor(() => served.length === 3, { what: 'the later connection served' });
    for (const s of [a, c, d]) s.destroy();
  });

  it('ends what it holds when the start fails, and refuses what comes after', async () => {
    const { gate, port } = await gatedServer();
    const held = await dial(port);
    const ended = new Promise<void>((resolve) => held.once('close', () => resolve()));
    await new Promise((r) => setTimeout(r, 50));
    gate.drop();
    await ended;
    const late = await dial(port);
    await new Promise<void>((resolve) => late.once('close', () => resolve()));
  });

  it('lets a device connect to the real hub while the hub still waits for its database', async () => {
    const dataDir = join(tempDir(), 'state');
    openStores(dataDir).close();
    // Another process holds the database: the hub's start waits for it (busy timeout 5 s).
    const lock = new Database(join(dataDir, 'rhizosphere.db'));
    lock.exec('BEGIN EXCLUSIVE');
    const [mqttPort, httpPort] = [await freePort(), await freePort()];
    const hub = spawnHub(['--mqtt-port', String(mqttPort), '--http-port', String(httpPort), '--data-dir', dataDir, '--allow-anonymous', '--log-level', 'info']);
    // The MQTT port answers while the start is held up (the hub waits up to 5 s for the lock,
    // from the moment it opens the database; node itself may take seconds to get there under load).
    const first = await waitFor(() => dial(mqttPort).catch(() => undefined), { timeoutMs: 30_000, intervalMs: 10, what: 'the MQTT port, during the start' });
    first.destroy();
    const device = connectMqtt(`mqtt://127.0.0.1:${mqttPort}`, { clientId: 'early-1', connectTimeout: 30_000 });
    await new Promise((r) => setTimeout(r, 300));
    expect(hub.output()).not.toMatch(/hub listening/);
    lock.exec('COMMIT');
    lock.close();
    // Held, not refused: the device is served once the hub is ready.
    await (await device).subscribeAsync(new Topics('rhizosphere').deviceCommand('early-1'), { qos: 1 });
    await waitFor(() => /"device":"early-1"[^\n]*"msg":"device online"/.test(hub.output()), { timeoutMs: 30_000, what: 'early-1 online' });
  }, 60_000);
});
