/**
 * Test helpers: real hubs on ephemeral ports, real MQTT.js clients, real hypha processes.
 * Everything a test opens is registered with `cleanup` and closed after it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Writable } from 'node:stream';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { pino } from 'pino';
import { afterEach } from 'vitest';
import { startHub, type Hub, type HubOptions } from '../src/index.js';
import type { Reply } from '../src/protocol/schemas.js';

export const ROOT = resolve(import.meta.dirname, '..');
export const HYPHA_BIN = join(ROOT, 'bin', 'hypha.js');
export const HUB_BIN = join(ROOT, 'bin', 'rhizosphere.js');

type Closer = () => unknown;
const closers: Closer[] = [];

/** Registers something to close after the current test (last registered, first closed). */
export function cleanup(closer: Closer): void {
  closers.push(closer);
}

afterEach(async () => {
  while (closers.length > 0) {
    const close = closers.pop()!;
    try {
      await close();
    } catch {
      // already closed
    }
  }
});

export function tempDir(prefix = 'rhizo-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  cleanup(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

export async function startTestHub(options: HubOptions = {}): Promise<Hub> {
  const hub = await startHub({
    host: '127.0.0.1',
    mqttPort: 0,
    httpPort: 0,
    dataDir: tempDir('rhizo-hub-'),
    logLevel: (process.env.TEST_LOG_LEVEL as HubOptions['logLevel']) ?? 'silent',
    allowAnonymous: true,
    ...options,
  });
  cleanup(() => hub.close());
  return hub;
}

/** A free TCP port on 127.0.0.1 (for tests that restart a hub on the same port). */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

export async function connectMqtt(url: string, options: IClientOptions = {}): Promise<MqttClient> {
  const client = await mqtt.connectAsync(url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5000, ...options });
  cleanup(() => client.endAsync(true));
  return client;
}

export async function waitFor<T>(probe: () => T | Promise<T>, { timeoutMs = 10_000, intervalMs = 25, what = 'condition' } = {}): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** An MQTT client that sends Requests on its own topic and collects Replies by id. */
export class RequestClient {
  private readonly waiting = new Map<string, (reply: Reply) => void>();
  readonly replies: Reply[] = [];
  private sequence = 0;

  private constructor(readonly client: MqttClient, readonly clientId: string, private readonly prefix: string) {
    client.on('message', (topic, payload) => {
      if (topic !== `${prefix}/clients/${clientId}/response`) return;
      const reply = JSON.parse(payload.toString()) as Reply;
      this.replies.push(reply);
      const resolveReply = reply.id !== null ? this.waiting.get(reply.id) : undefined;
      if (resolveReply) {
        this.waiting.delete(reply.id!);
        resolveReply(reply);
      }
    });
  }

  static async connect(url: string, clientId: string, prefix = 'rhizosphere', options: IClientOptions = {}): Promise<RequestClient> {
    const client = await connectMqtt(url, { ...options, clientId });
    await client.subscribeAsync(`${prefix}/clients/${clientId}/response`, { qos: 1 });
    return new RequestClient(client, clientId, prefix);
  }

  /** Publishes raw bytes on this client's request topic. */
  async publishRaw(payload: string | Buffer, topic = `${this.prefix}/clients/${this.clientId}/request`): Promise<void> {
    await this.client.publishAsync(topic, payload, { qos: 1 });
  }

  /** Waits for the next Reply that satisfies `match`. */
  nextReply(match: (reply: Reply) => boolean = () => true, timeoutMs = 10_000): Promise<Reply> {
    const seen = this.replies.length;
    return waitFor(() => this.replies.slice(seen).find(match), { timeoutMs, what: 'a reply' });
  }

  request(body: Record<string, unknown>, timeoutMs = 70_000): Promise<Reply> {
    const id = (body.id as string | undefined) ?? `r-${++this.sequence}`;
    const full = { type: 'command', id, ...body };
    return new Promise<Reply>((resolveReply, reject) => {
      const timer = setTimeout(() => reject(new Error(`no reply to ${id} within ${timeoutMs} ms`)), timeoutMs);
      this.waiting.set(id, (reply) => {
        clearTimeout(timer);
        resolveReply(reply);
      });
      this.client.publish(`${this.prefix}/clients/${this.clientId}/request`, JSON.stringify(full), { qos: 1 });
    });
  }
}

export interface HyphaProcess {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

/** Starts a real hypha agent process. */
export function spawnHypha(url: string, id: string, extra: string[] = []): HyphaProcess {
  const child = spawn(process.execPath, [HYPHA_BIN, '--url', url, '--id', id, ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
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

/** Starts agents and waits until the hub has every one of them online. */
export async function startAgents(hub: Hub, ids: string[], url = hub.urls.mqtt, extra: string[] = []): Promise<HyphaProcess[]> {
  const agents = ids.map((id) => spawnHypha(url, id, extra));
  await waitFor(() => ids.every((id) => hub.device(id)?.online), { timeoutMs: 15_000, what: `agents ${ids.join(', ')} online` });
  return agents;
}

/**
 * Dead: kill(pid, 0) fails with ESRCH. Where PID 1 does not reap orphans (some containers),
 * a killed grandchild lingers as a zombie, which runs nothing and holds nothing: dead too.
 */
export function isGone(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}

/**
 * The real `rhizosphere` CLI as a process of its own, its output collected. Never spawnSync it
 * while a hub runs in the test's process: that hub would stop answering until the CLI ends.
 */
export function runCli(args: string[], env: Record<string, string> = {}): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [HUB_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  cleanup(() => child.kill('SIGKILL'));
  return new Promise((resolve) => child.on('close', (status) => resolve({ status, stdout, stderr })));
}

/** Starts the hub as a process and waits until it answers /healthz. */
export function spawnHub(args: string[]) {
  const child = spawn(process.execPath, [HUB_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr.on('data', (c: Buffer) => (output += c.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.once('exit', (code, signal) => r({ code, signal })));
  cleanup(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  return { child, exited, output: () => output };
}

/**
 * The QoS the broker granted for one filter: 0, 1, 2, or 128 when it refused. MQTT.js rejects
 * a refused subscription with an error that carries the SUBACK; both ways end here.
 */
export function grantedQos(client: MqttClient, filter: string, qos: 0 | 1 = 1): Promise<number> {
  return client.subscribeAsync(filter, { qos }).then(
    (granted) => granted[0]?.qos ?? -1,
    (error: { packet?: { granted?: (number | { qos: number })[] } }) => {
      const first = error.packet?.granted?.[0];
      if (first === undefined) throw error;
      return typeof first === 'number' ? first : first.qos;
    },
  );
}

/** A logger that keeps the hub's log lines (parsed) for a test to look at. */
export function capturedLog() {
  const lines: { msg: string; [field: string]: unknown }[] = [];
  const logger = pino({ level: 'debug' }, new Writable({ write: (chunk, _encoding, done) => (lines.push(JSON.parse(chunk.toString())), done()) }));
  return { logger, lines };
}

type Labels = Record<string, string>;
export interface Sample {
  name: string;
  labels: Labels;
  value: number;
}

/** The samples of a Prometheus text exposition (comments skipped). */
export function parseMetrics(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!match) continue;
    const labels: Labels = {};
    for (const [, key, value] of (match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[key!] = value!;
    samples.push({ name: match[1]!, labels, value: Number(match[3]) });
  }
  return samples;
}

/** The sum of the samples named `name` whose labels include `labels`. */
export function metricValue(samples: Sample[], name: string, labels: Labels = {}): number {
  return samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((sum, s) => sum + s.value, 0);
}
