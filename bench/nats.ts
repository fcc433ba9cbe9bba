/**
 * A cluster of nats-server processes with JetStream and MQTT on, for the `external-nats`
 * target: each node on free ports, with its own config file and JetStream store dir under the
 * target's temp dir, ended by its own pid like every child of the bench. Modelled on
 * test/brokers.ts `startNatsCluster`. NATS 2.9 speaks MQTT 3.1.1 only, keeps MQTT sessions,
 * retained messages and QoS 1 state in JetStream streams (replicated over three nodes), needs
 * a `server_name` per node for that, and holds the first CONNACK until those streams exist.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, sleep, waitForPort, type ManagedChild, type Supervisor } from './processes.js';
import { connectAndSubscribe } from './wire.js';

export const NATS_SERVER = process.env.NATS_SERVER_BIN ?? '/usr/sbin/nats-server';

export interface NatsNodePorts {
  nats: number;
  mqtt: number;
  cluster: number;
}

/** One node's config: client port, MQTT, JetStream in its own dir, routes to the others. */
export function natsNodeConfig(name: string, ports: NatsNodePorts, routes: number[], storeDir: string): string {
  return [
    `listen: 127.0.0.1:${ports.nats}`,
    `server_name: ${name}`,
    `jetstream { store_dir: "${storeDir}" }`,
    // Replicated on every node: NATS otherwise sizes its MQTT streams by the nodes it sees at
    // the first MQTT connect, maybe two of three, and a two-replica stream stops with one node.
    `mqtt { listen: 127.0.0.1:${ports.mqtt}${routes.length > 0 ? `, stream_replicas: ${routes.length + 1}` : ''} }`,
    ...(routes.length > 0 ? [`cluster { name: bench, listen: 127.0.0.1:${ports.cluster}, routes: [${routes.map((p) => `"nats://127.0.0.1:${p}"`).join(', ')}] }`] : []),
    // Warnings and errors only, on stderr (the child's tail in a failure report).
    'debug: false',
    'trace: false',
    '',
  ].join('\n');
}

export interface RunningNats {
  children: ManagedChild[];
  /** Each node's MQTT URL (mqtt://), in node order. */
  urls: string[];
}

/**
 * Waits until the broker answers a CONNECT with CONNACK 0: NATS listens for MQTT before its
 * JetStream streams are up and holds the CONNACK until then (about 10 s for a new cluster).
 */
async function waitForConnack(url: string, children: ManagedChild[], attemptMs = 15_000): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    const probe = connectAndSubscribe({ url, clientId: `bench-probe-${process.pid}-${attempt}`, clean: true, keepalive: 60 }, [], () => {});
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), attemptMs)));
    const outcome = await Promise.race([probe.then((conn) => (conn.close(), 'up' as const), () => 'failed' as const), timedOut]);
    clearTimeout(timer);
    if (outcome === 'up') return;
    // A probe still waiting is closed when it does connect.
    if (outcome === 'timeout') void probe.then((conn) => conn.close(), () => {});
    for (const child of children) if (!child.running) throw new Error(`${child.name} exited with status ${child.exitCode}:\n${child.tail()}`);
    await sleep(250);
  }
}

/** `size` clustered nodes (n1, n2, …); resolves once every node's MQTT answers a CONNECT. */
export async function startNats(sup: Supervisor, dir: string, size = 3, spawned?: (child: ManagedChild) => void): Promise<RunningNats> {
  const ports: NatsNodePorts[] = [];
  for (let i = 0; i < size; i++) ports.push({ nats: await freePort(), mqtt: await freePort(), cluster: await freePort() });
  const children = ports.map((p, i) => {
    const name = `n${i + 1}`;
    const storeDir = join(dir, name, 'js');
    mkdirSync(storeDir, { recursive: true });
    const conf = join(dir, `${name}.conf`);
    const routes = size > 1 ? ports.filter((_, j) => j !== i).map((other) => other.cluster) : [];
    writeFileSync(conf, natsNodeConfig(name, p, routes, storeDir));
    const child = sup.spawn(`nats-${name}`, NATS_SERVER, ['-c', conf]);
    spawned?.(child);
    return child;
  });
  await Promise.all(children.map((child, i) => waitForPort(child, ports[i]!.nats)));
  // MQTT listens once JetStream is up, which in a cluster waits for a meta leader.
  await Promise.all(children.map((child, i) => waitForPort(child, ports[i]!.mqtt)));
  const urls = ports.map((p) => `mqtt://127.0.0.1:${p.mqtt}`);
  await Promise.all(urls.map((url) => waitForConnack(url, children)));
  return { children, urls };
}
