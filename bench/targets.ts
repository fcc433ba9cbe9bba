/**
 * The systems under test, each started as its own process (or processes) so that RSS and CPU
 * time can be read from /proc: the rhizosphere hub, bare Aedes, bare Mosquitto, several hub
 * processes as one cluster (cluster.ts), and the hub on an external Mosquitto or NATS cluster
 * (nats.ts) it joins with --broker.
 */
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { freePort, sleep, waitForPort, type ManagedChild, type Supervisor } from './processes.js';

export type TargetName = 'hub' | 'aedes' | 'mosquitto' | 'cluster' | 'external-mosquitto' | 'external-nats';
export const TARGET_NAMES: readonly TargetName[] = ['hub', 'aedes', 'mosquitto', 'cluster', 'external-mosquitto', 'external-nats'];
/** The hub joined to a broker of its own with --broker: devices and the load client connect to that broker. */
export const EXTERNAL_TARGETS: readonly TargetName[] = ['external-mosquitto', 'external-nats'];
/** Without --targets: the cluster needs a Redis, so it runs only when asked for. */
export const DEFAULT_TARGETS: readonly TargetName[] = ['hub', 'aedes', 'mosquitto'];
export type TransportName = 'tcp' | 'ws';

export interface RunningTarget {
  name: TargetName;
  child: ManagedChild;
  /** Where devices and the load client connect, for the chosen transport. */
  url: string;
  /** REST base (hub only). */
  httpUrl?: string;
  /** A broker's plain MQTT URL (mqtt://), whatever the transport: where a hub joins it. */
  mqttUrl?: string;
  /** The hub's ports, to restart it on the same ones. */
  ports?: HubPorts;
  /** performance.now() when the port of `url` first accepted a connection. */
  acceptingAt: number;
}

export interface HubPorts {
  mqtt: number;
  http: number;
}

/** The project root: dist/bench/targets.js → ../.. */
export const ROOT = resolve(import.meta.dirname, '..', '..');
const MOSQUITTO = '/usr/sbin/mosquitto';

export interface HubOptions {
  /** The child's name in logs and errors (default "hub"). */
  name?: string;
  /** More flags, e.g. --cluster URL --node-id ID. */
  extraArgs?: string[];
  /** Called with the process as soon as it is spawned, before it is ready (for the cleanup). */
  spawned?: (child: ManagedChild) => void;
  /** Join this external broker (--broker URL): the hub has no MQTT port of its own, and `url` is this one. */
  broker?: string;
}

/** Node flags for a target's process from the environment (`--cpu-prof --cpu-prof-dir=DIR`, say): profiling without a change to the bench. */
const nodeArgs = (variable: 'BENCH_HUB_NODE_ARGS' | 'BENCH_AEDES_NODE_ARGS'): string[] => process.env[variable]?.split(' ').filter(Boolean) ?? [];

/**
 * The hub with access control on; its data dir must already hold the devices and the token.
 * Given `ports`, it listens on those (a restart), else on free ones.
 */
export async function startHub(sup: Supervisor, dataDir: string, transport: TransportName, ports?: HubPorts, options: HubOptions = {}): Promise<RunningTarget> {
  const broker = options.broker;
  const [mqttPort, httpPort] = ports ? [ports.mqtt, ports.http] : [broker ? 0 : await freePort(), await freePort()];
  const name = options.name ?? 'hub';
  const child = sup.spawn(name, process.execPath, [
    ...nodeArgs('BENCH_HUB_NODE_ARGS'),
    join(ROOT, 'bin', 'rhizosphere.js'),
    '--host', '127.0.0.1',
    ...(broker ? ['--broker', broker] : ['--mqtt-port', String(mqttPort)]),
    '--http-port', String(httpPort),
    '--data-dir', dataDir,
    '--log-level', 'warn',
    ...(options.extraArgs ?? []),
  ]);
  options.spawned?.(child);
  const httpUrl = `http://127.0.0.1:${httpPort}`;
  // The devices' port first: in a restart, that is when the hub is back for them.
  const [first, second] = broker ? [httpPort, httpPort] : transport === 'ws' ? [httpPort, mqttPort] : [mqttPort, httpPort];
  await waitForPort(child, first);
  const acceptingAt = performance.now();
  await waitForPort(child, second);
  // On an external broker the hub opens its HTTP port only once it has joined that broker.
  while ((await fetch(`${httpUrl}/healthz`).then((r) => r.status, () => 0)) !== 200) {
    if (!child.running) throw new Error(`${name} exited:\n${child.tail()}`);
    await sleep(50);
  }
  const url = broker ?? (transport === 'ws' ? `ws://127.0.0.1:${httpPort}/mqtt` : `mqtt://127.0.0.1:${mqttPort}`);
  return { name: 'hub', child, url, httpUrl, ports: { mqtt: mqttPort, http: httpPort }, acceptingAt };
}

export async function startAedes(sup: Supervisor, transport: TransportName): Promise<RunningTarget> {
  const port = await freePort();
  const wsPort = transport === 'ws' ? await freePort() : 0;
  const args = ['--port', String(port), ...(wsPort ? ['--ws-port', String(wsPort)] : [])];
  const child = sup.fork('aedes', join(ROOT, 'dist', 'bench', 'bare-aedes.js'), args, { execArgv: nodeArgs('BENCH_AEDES_NODE_ARGS') });
  await waitForPort(child, wsPort || port);
  return { name: 'aedes', child, url: wsPort ? `ws://127.0.0.1:${wsPort}/mqtt` : `mqtt://127.0.0.1:${port}`, acceptingAt: performance.now() };
}

/**
 * Mosquitto with the limits that would otherwise make it drop or throttle what Aedes passes:
 * no cap on queued or in-flight QoS 1 messages per client (the defaults, 1000 and 20, drop
 * responses in a fan-out to thousands of devices), and no cap on connections.
 */
export function mosquittoConfig(port: number, wsPort: number): string {
  const common = ['max_connections -1'];
  return [
    'per_listener_settings false',
    'allow_anonymous true',
    'persistence false',
    'set_tcp_nodelay true',
    'max_queued_messages 0',
    'max_inflight_messages 0',
    'log_dest stderr',
    'log_type error',
    'log_type warning',
    `listener ${port} 127.0.0.1`,
    ...common,
    ...(wsPort ? [`listener ${wsPort} 127.0.0.1`, 'protocol websockets', ...common] : []),
    '',
  ].join('\n');
}

export async function startMosquitto(sup: Supervisor, dir: string, transport: TransportName): Promise<RunningTarget> {
  const port = await freePort();
  const wsPort = transport === 'ws' ? await freePort() : 0;
  const conf = join(dir, 'mosquitto.conf');
  writeFileSync(conf, mosquittoConfig(port, wsPort));
  const child = sup.spawn('mosquitto', MOSQUITTO, ['-c', conf]);
  await waitForPort(child, wsPort || port);
  const mqttUrl = `mqtt://127.0.0.1:${port}`;
  return { name: 'mosquitto', child, url: wsPort ? `ws://127.0.0.1:${wsPort}/mqtt` : mqttUrl, mqttUrl, acceptingAt: performance.now() };
}
