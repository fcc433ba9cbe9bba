/**
 * External brokers for the tests of `--broker` mode: a Mosquitto 2 (optionally with its
 * dynamic-security plugin) and a cluster of nats-server processes with MQTT on, each
 * started here on free ports with its own config and data directory, and ended by its own
 * pid. Never the machine's own Mosquitto (1883) or NATS (4222).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { connect as tcpConnect } from 'node:net';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { cleanup, freePort, tempDir } from './helpers.js';

export const MOSQUITTO_BIN = process.env.MOSQUITTO_BIN ?? '/usr/sbin/mosquitto';
export const MOSQUITTO_CTRL_BIN = process.env.MOSQUITTO_CTRL_BIN ?? '/usr/bin/mosquitto_ctrl';
export const DYNSEC_PLUGIN = process.env.MOSQUITTO_DYNSEC_PLUGIN ?? '/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so';
export const NATS_BIN = process.env.NATS_SERVER_BIN ?? '/usr/sbin/nats-server';

/** Fails the test with what to install, instead of passing without the broker. */
function need(path: string, what: string): void {
  if (!existsSync(path)) throw new Error(`${path} is missing: install ${what} (Debian package) to run the external-broker tests`);
}

/** Resolves once something accepts TCP connections on the port. */
export async function waitForPort(port: number, { timeoutMs = 10_000, process: child }: { timeoutMs?: number; process?: ChildProcess } = {}): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child && child.exitCode !== null) throw new Error(`the broker exited with status ${child.exitCode} before it listened on ${port}`);
    const open = await new Promise<boolean>((resolve) => {
      const socket = tcpConnect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    if (Date.now() > deadline) throw new Error(`nothing listened on 127.0.0.1:${port} within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Resolves once the broker at the URL answers an MQTT CONNECT. NATS listens for MQTT before
 * its JetStream streams exist and holds the first CONNACK until they do (seconds in a cluster).
 */
export async function waitForMqtt(url: string, { timeoutMs = 60_000 } = {}): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const client = mqtt.connect(url, { clientId: `probe-${process.pid}-${Date.now()}`, reconnectPeriod: 0, connectTimeout: 15_000, protocolVersion: 4 });
    const up = await new Promise<boolean>((resolve) => {
      client.once('connect', () => resolve(true));
      client.once('error', () => resolve(false));
      client.once('close', () => resolve(false));
    });
    await client.endAsync(true);
    if (up) return;
    if (Date.now() > deadline) throw new Error(`${url} did not answer an MQTT CONNECT within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Kills a process and waits for it to be gone. */
async function kill(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
  await gone;
  clearTimeout(timer);
}

export interface MosquittoOptions {
  /** Start with the dynamic-security plugin, its admin client being `admin` with this password. */
  dynsecAdminPassword?: string;
  /** Also listen for MQTT over WebSocket. */
  websockets?: boolean;
  /** allow_anonymous (default true without dynsec, false with it). */
  allowAnonymous?: boolean;
  /** More lines for mosquitto.conf (global section, before the listeners). */
  extra?: string[];
}

export interface MosquittoInstance {
  port: number;
  wsPort?: number;
  url: string;
  dir: string;
  /** The dynamic-security file, when the plugin is on. */
  dynsecFile?: string;
  readonly pid: number | undefined;
  /** Ends the process (SIGKILL: no clean shutdown, as a crash). */
  kill(): Promise<void>;
  /** Ends it cleanly. */
  stop(): Promise<void>;
  /** Starts it again on the same ports and files. */
  start(): Promise<void>;
  /** What it logged. */
  log(): string;
}

export async function startMosquitto(options: MosquittoOptions = {}): Promise<MosquittoInstance> {
  need(MOSQUITTO_BIN, 'mosquitto');
  const dir = tempDir('rhizo-mosquitto-');
  const port = await freePort();
  const wsPort = options.websockets ? await freePort() : undefined;
  const logFile = join(dir, 'mosquitto.log');
  // Run as root, Mosquitto drops to the user `mosquitto`, which may not read this directory.
  const lines = [`user ${userInfo().username}`, 'per_listener_settings false', 'persistence false', `log_dest file ${logFile}`, 'log_type all', 'connection_messages true', 'log_timestamp_format %H:%M:%S', ...(options.extra ?? [])];
  let dynsecFile: string | undefined;
  if (options.dynsecAdminPassword !== undefined) {
    need(DYNSEC_PLUGIN, 'mosquitto');
    need(MOSQUITTO_CTRL_BIN, 'mosquitto-clients');
    dynsecFile = join(dir, 'dynamic-security.json');
    const init = spawnSync(MOSQUITTO_CTRL_BIN, ['dynsec', 'init', dynsecFile, 'admin', options.dynsecAdminPassword], { encoding: 'utf8' });
    if (init.status !== 0) throw new Error(`mosquitto_ctrl dynsec init failed: ${init.stderr || init.stdout}`);
    lines.push(`plugin ${DYNSEC_PLUGIN}`, `plugin_opt_config_file ${dynsecFile}`);
  }
  lines.push(`allow_anonymous ${options.allowAnonymous ?? dynsecFile === undefined}`);
  lines.push(`listener ${port} 127.0.0.1`);
  if (wsPort !== undefined) lines.push(`listener ${wsPort} 127.0.0.1`, 'protocol websockets');
  const configFile = join(dir, 'mosquitto.conf');
  writeFileSync(configFile, `${lines.join('\n')}\n`);

  let child: ChildProcess | undefined;
  const launch = async () => {
    child = spawn(MOSQUITTO_BIN, ['-c', configFile], { stdio: 'ignore' });
    await waitForPort(port, { process: child });
    if (wsPort !== undefined) await waitForPort(wsPort, { process: child });
  };
  await launch();
  const instance: MosquittoInstance = {
    port,
    wsPort,
    url: `mqtt://127.0.0.1:${port}`,
    dir,
    dynsecFile,
    get pid() {
      return child?.pid;
    },
    kill: async () => child && kill(child, 'SIGKILL'),
    stop: async () => child && kill(child),
    start: launch,
    log: () => spawnSync('cat', [logFile], { encoding: 'utf8' }).stdout,
  };
  cleanup(() => instance.kill());
  return instance;
}

export interface NatsNode {
  name: string;
  /** Client port (NATS protocol). */
  natsPort: number;
  mqttPort: number;
  clusterPort: number;
  url: string;
  readonly running: boolean;
  kill(): Promise<void>;
  start(): Promise<void>;
}

export interface NatsCluster {
  nodes: NatsNode[];
  /** The MQTT URLs of every node, for hypha's --url. */
  urls: string[];
}

/**
 * A cluster of nats-server processes, JetStream and MQTT on. NATS speaks MQTT 3.1.1 on top of
 * JetStream; with three nodes its MQTT streams are replicated, so a session survives a node.
 */
export async function startNatsCluster(size = 3, { ackWait }: { ackWait?: string } = {}): Promise<NatsCluster> {
  need(NATS_BIN, 'nats-server');
  const dir = tempDir('rhizo-nats-');
  const ports = await Promise.all(Array.from({ length: size }, async () => ({ nats: await freePort(), mqtt: await freePort(), cluster: await freePort() })));
  const nodes: NatsNode[] = ports.map((p, i) => {
    const name = `n${i + 1}`;
    const routes = ports.filter((_, j) => j !== i).map((other) => `"nats://127.0.0.1:${other.cluster}"`);
    const configFile = join(dir, `${name}.conf`);
    writeFileSync(
      configFile,
      [
        `listen: 127.0.0.1:${p.nats}`,
        `server_name: ${name}`,
        `jetstream { store_dir: "${join(dir, name, 'js')}" }`,
        // ack_wait: how long a QoS 1 message waits for its PUBACK before NATS sends it again
        // (default 30 s), also to a device that came back through another node.
        // stream_replicas: NATS sizes its MQTT streams by the nodes it sees when the first MQTT
        // client connects, which may be two of three: a two-replica stream stops with one node.
        `mqtt { listen: 127.0.0.1:${p.mqtt}${ackWait ? `, ack_wait: "${ackWait}"` : ''}${size > 1 ? `, stream_replicas: ${size}` : ''} }`,
        ...(size > 1 ? [`cluster { name: c1, listen: 127.0.0.1:${p.cluster}, routes: [${routes.join(', ')}] }`] : []),
        `log_file: "${join(dir, `${name}.log`)}"`,
        '',
      ].join('\n'),
    );
    let child: ChildProcess | undefined;
    const node: NatsNode = {
      name,
      natsPort: p.nats,
      mqttPort: p.mqtt,
      clusterPort: p.cluster,
      url: `mqtt://127.0.0.1:${p.mqtt}`,
      get running() {
        return child !== undefined && child.exitCode === null && child.signalCode === null;
      },
      kill: async () => child && kill(child, 'SIGKILL'),
      start: async () => {
        child = spawn(NATS_BIN, ['-c', configFile], { stdio: 'ignore' });
        await waitForPort(p.nats, { process: child });
      },
    };
    cleanup(() => node.kill());
    return node;
  });
  await Promise.all(nodes.map((node) => node.start()));
  // MQTT listens once JetStream is up, which in a cluster waits for a meta leader.
  try {
    await Promise.all(nodes.map((node) => waitForPort(node.mqttPort, { timeoutMs: 30_000 })));
    await Promise.all(nodes.map((node) => waitForMqtt(node.url)));
  } catch (error) {
    const logs = nodes.map((node) => `${node.name}: ${spawnSync('tail', ['-n', '5', join(dir, `${node.name}.log`)], { encoding: 'utf8' }).stdout}`);
    throw new Error(`${(error as Error).message}\n${logs.join('\n')}`);
  }
  return { nodes, urls: nodes.map((node) => node.url) };
}

/**
 * The node that leads a JetStream stream (NATS's MQTT keeps `$MQTT_msgs`, `$MQTT_sess` and
 * `$MQTT_rmsgs`), asked over the NATS protocol of `node`: `$JS.API.STREAM.INFO.<stream>`.
 */
export function jetStreamLeader(node: NatsNode, stream: string, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tcpConnect(node.natsPort, '127.0.0.1');
    let received = '';
    const done = (error: Error | null, leader?: string) => {
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(leader!);
    };
    const timer = setTimeout(() => done(new Error(`no answer from ${node.name} about ${stream} within ${timeoutMs} ms: ${received.slice(0, 200)}`)), timeoutMs);
    socket.on('error', (error) => done(error));
    socket.on('data', (chunk) => {
      received += chunk.toString();
      const head = /MSG _INBOX\.leader 1 (\d+)\r\n/.exec(received);
      if (!head) return;
      const body = received.slice(head.index + head[0].length, head.index + head[0].length + Number(head[1]));
      if (Buffer.byteLength(body) < Number(head[1])) return;
      const info = JSON.parse(body) as { cluster?: { leader?: string }; error?: { description?: string } };
      if (info.cluster?.leader) done(null, info.cluster.leader);
      else done(new Error(`${stream}: ${info.error?.description ?? 'no leader'}`));
    });
    socket.write(`CONNECT {"verbose":false}\r\nSUB _INBOX.leader 1\r\nPUB $JS.API.STREAM.INFO.${stream} _INBOX.leader 0\r\n\r\n`);
  });
}
