/**
 * `npm run bench`: the hub against bare Aedes and bare Mosquitto, as a cluster, and on an
 * external Mosquitto or NATS cluster, with the same simulated devices and the same load, each
 * system under test in its own process(es). Prints a markdown table and writes the same
 * figures as JSON. See bench/README.md.
 */
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { claimRedisDb, healthCounts, redisPid, redisUsedMemory, releaseAllSync, releaseRedisDb, startCluster, type RedisClaim } from './cluster.js';
import type { FanOutSpec, FromLoad, RoundTripSpec, StormLoadSpec, ToLoad } from './load-client.js';
import { phase, sleep, Supervisor, wallMs, type ManagedChild } from './processes.js';
import { listenOverflows, machine, machineLine, sampleProcess } from './procfs.js';
import { deviceIds, registerDevices } from './register.js';
import { ratiosOf, table, type Figures, type NodeFigures, type Report, type TargetResult } from './report.js';
import type { ConnectPlan, ConnectStats, FromWorker, SimDeviceSpec, StormStats, ToWorker, WorkerStats } from './sim-devices.js';
import { startNats } from './nats.js';
import { DEFAULT_TARGETS, EXTERNAL_TARGETS, ROOT, startAedes, startHub, startMosquitto, TARGET_NAMES, type RunningTarget, type TargetName, type TransportName } from './targets.js';

const USAGE = `Usage: npm run bench -- [flags]

  --devices N           simulated devices (default 1000)
  --inflight K          command round trips in flight (default 100)
  --roundtrips R        round trips to measure after the warm-up (default 20000)
  --duration S          measure round trips for S seconds instead of a count
  --warmup W            round trips before measuring (default 1000)
  --transport T         tcp or ws (MQTT over WebSocket) for devices and load (default tcp)
  --targets LIST        any of hub,aedes,mosquitto,cluster,external-mosquitto,external-nats
                        (default hub,aedes,mosquitto); external-*: the hub joined to its own
                        Mosquitto or 3-node NATS cluster with --broker, devices and load
                        client on that broker
  --nodes N             cluster: hub processes sharing one Redis database (default 3;
                        Redis at REDIS_URL, default redis://127.0.0.1:6379)
  --out FILE            JSON results (default bench/results/latest.json)
  --connect-rate R      connects started per second over all devices (default 0: no limit)
  --connect-window W    handshakes in progress at once per simulator process (default 100)
  --per-process N       devices per simulator process at most (default 9000)
  --load-connections C  MQTT connections of the load client (default 1)
  --storm               hub only, after the other phases: restart the hub under all devices
                        and measure how they come back (off by default)
  --storm-rate R        commands per second sent during the storm (default 200)
  --help                this text`;

const DEVICE_PREFIX = 'bench-';
const DEVICE_TAG = 'bench';
/** The hub caps a job's concurrency (jobs/runner.ts CONCURRENCY_MAX). */
const JOB_CONCURRENCY_MAX = 10_000;
/** Round trips go to at most this many devices, round-robin. */
const ROUND_TRIP_DEVICES = 1000;
/** Let the process settle (allocations, GC) before reading its RSS. */
const SETTLE_MS = 1000;
/**
 * RSS is also read at rest: V8 gives the garbage of a start or of a burst of connects back to
 * the system only when its memory reducer runs, 8 s or more after a full collection (bare
 * Aedes, 5000 devices: 24.9 KiB per device for 21 s, then 8.6; the hub at 19000 devices: 13
 * to 24 s after the collection it makes once idle). The lowest RSS over these windows is what
 * the process holds at rest; the same for every target.
 */
const RSS_REST_BEFORE_MS = 20_000;
const RSS_REST_AFTER_MS = 45_000;
/** How long the target's CPU is read with every device connected and no traffic. */
const REST_MS = 5000;
/** external-nats: nats-server processes in the cluster. */
const NATS_NODES = 3;

interface Options {
  devices: number;
  inflight: number;
  roundtrips: number;
  durationS: number;
  warmup: number;
  transport: TransportName;
  targets: TargetName[];
  out: string;
  connectRate: number;
  connectWindow: number;
  perProcess: number;
  loadConnections: number;
  storm: boolean;
  stormRate: number;
  nodes: number;
}

function fail(message: string): never {
  console.error(`bench: ${message}`);
  process.exit(2);
}

function wholeNumber(flag: string, value: string | undefined, fallback: number, min = 0): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < min) fail(`--${flag} ${value}: must be a whole number of at least ${min}`);
  return n;
}

function parseOptions(): Options {
  const flags = ['devices', 'inflight', 'roundtrips', 'duration', 'warmup', 'transport', 'targets', 'out', 'connect-rate', 'connect-window', 'per-process', 'load-connections', 'storm-rate', 'nodes'];
  let values: Record<string, string | boolean | undefined> = {};
  try {
    ({ values } = parseArgs({ options: { ...Object.fromEntries(flags.map((f) => [f, { type: 'string' as const }])), help: { type: 'boolean' }, storm: { type: 'boolean' } } }));
  } catch (error) {
    fail(`${(error as Error).message} (see --help)`);
  }
  const v = values as Record<string, string | undefined> & { help?: boolean; storm?: boolean };
  if (v.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const transport = (v.transport ?? 'tcp') as TransportName;
  if (transport !== 'tcp' && transport !== 'ws') fail(`--transport ${transport}: must be tcp or ws`);
  const targets = (v.targets ?? DEFAULT_TARGETS.join(',')).split(',').map((t) => t.trim()).filter(Boolean) as TargetName[];
  for (const t of targets) if (!TARGET_NAMES.includes(t)) fail(`--targets: unknown target "${t}" (${TARGET_NAMES.join(', ')})`);
  if (targets.length === 0) fail('--targets: name at least one');
  const devices = wholeNumber('devices', v.devices, 1000, 1);
  const inflight = wholeNumber('inflight', v.inflight, 100, 1);
  return {
    devices,
    inflight,
    roundtrips: v.duration !== undefined ? 0 : wholeNumber('roundtrips', v.roundtrips, 20_000, 1),
    durationS: wholeNumber('duration', v.duration, 0, 1),
    warmup: wholeNumber('warmup', v.warmup, 1000),
    transport,
    targets: [...new Set(targets)],
    out: resolve(v.out ?? join(ROOT, 'bench', 'results', 'latest.json')),
    connectRate: wholeNumber('connect-rate', v['connect-rate'], 0),
    connectWindow: wholeNumber('connect-window', v['connect-window'], 100, 1),
    perProcess: wholeNumber('per-process', v['per-process'], 9000, 1),
    loadConnections: Math.min(wholeNumber('load-connections', v['load-connections'], 1, 1), inflight),
    storm: v.storm === true,
    stormRate: wholeNumber('storm-rate', v['storm-rate'], 200, 1),
    nodes: wholeNumber('nodes', v.nodes, 3, 1),
  };
}

const log = (target: string, message: string) => console.error(`[${target}] ${message}`);

/** The next IPC message of the given type from a child; its 'error' message or its exit rejects. */
function nextMessage<T extends { type: string }>(child: ManagedChild, type: T['type']): Promise<T> {
  return new Promise((resolvePromise, reject) => {
    const onMessage = (m: { type: string; message?: string }) => {
      if (m.type === type) done(() => resolvePromise(m as T));
      else if (m.type === 'error') done(() => reject(new Error(`${child.name}: ${m.message}`)));
    };
    const onExit = () => done(() => reject(new Error(`${child.name} exited (status ${child.exitCode}):\n${child.tail()}`)));
    const done = (settle: () => void) => {
      child.proc.off('message', onMessage);
      child.proc.off('exit', onExit);
      settle();
    };
    child.proc.on('message', onMessage);
    child.proc.on('exit', onExit);
  });
}

function sendTo<M>(child: ManagedChild, message: M): void {
  child.proc.send(message as object);
}

interface Session {
  sup: Supervisor;
  options: Options;
  ids: string[];
}

/**
 * Splits the devices over simulator processes, each on its own source address and connecting
 * to one node (`node`, an index), as many processes per node: the devices spread evenly.
 */
function startSimulators(sup: Supervisor, devices: SimDeviceSpec[], perProcess: number, nodes: number): { child: ManagedChild; devices: SimDeviceSpec[]; localAddress: string; node: number }[] {
  const processes = Math.ceil(Math.ceil(devices.length / perProcess) / nodes) * nodes;
  const share = Math.ceil(devices.length / processes);
  return Array.from({ length: processes }, (_, i) => ({
    child: sup.fork(`sim-devices-${i}`, join(ROOT, 'dist', 'bench', 'sim-devices.js'), ['--worker']),
    devices: devices.slice(i * share, (i + 1) * share),
    localAddress: `127.0.0.${2 + i}`,
    node: i % nodes,
  }));
}

/** Three decimals are more than the measurement holds. */
function rounded(figures: Figures): Figures {
  return Object.fromEntries(Object.entries(figures).map(([k, v]) => [k, v === null ? null : Math.round(v * 1000) / 1000]));
}

function sum(values: Record<string, number> | readonly number[]): number {
  return Object.values(values).reduce((a, b) => a + b, 0);
}

/** Each process's lowest RSS (KiB) sampled every half second over `windowMs`. */
async function restingRssKiB(pids: number[], windowMs: number): Promise<number[]> {
  const lowest = pids.map(() => Infinity);
  for (const end = Date.now() + windowMs; Date.now() < end; await sleep(500)) {
    pids.forEach((pid, i) => (lowest[i] = Math.min(lowest[i]!, sampleProcess(pid).rssKiB)));
  }
  return lowest;
}

async function waitOnline(target: RunningTarget, secret: string, expected: number): Promise<void> {
  for (;;) {
    const response = await fetch(`${target.httpUrl}/api/devices`, { headers: { authorization: `Bearer ${secret}` } });
    const list = (await response.json()) as { online: boolean }[];
    if (list.filter((d) => d.online).length >= expected) return;
    if (!target.child.running) throw new Error(`hub exited:\n${target.child.tail()}`);
    await sleep(250);
  }
}

/** The value below which a fraction q of the sorted values lie. */
function quantileOf(sorted: Float64Array, q: number): number {
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

/** The hub's own count of online devices; null while it does not answer. */
async function onlineCount(httpUrl: string): Promise<number | null> {
  try {
    const response = await fetch(`${httpUrl}/healthz`, { signal: AbortSignal.timeout(2000) });
    return ((await response.json()) as { online: number }).online;
  } catch {
    return null;
  }
}

interface StormSetup {
  sup: Supervisor;
  options: Options;
  ids: string[];
  dir: string;
  target: RunningTarget;
  sims: { child: ManagedChild }[];
  load: ManagedChild;
  credentials: { username: string; password: string };
}

/**
 * Restarts the hub under every connected device (SIGTERM, wait for the exit, start again on
 * the same ports and data dir) while the devices reconnect with the agent's backoff and the
 * load client keeps sending commands at a fixed rate. All times count from the restart order.
 * Returns the new hub; `replaced` hands it over for the cleanup as soon as it exists.
 */
async function runStorm(setup: StormSetup, figures: Figures, replaced: (next: RunningTarget) => void): Promise<RunningTarget> {
  const { sup, options, ids, dir, target, sims, load } = setup;
  const name = 'hub';
  const t0 = wallMs();
  const started = performance.now();
  const since = () => (performance.now() - started) / 1000;

  // From here on the devices reconnect by themselves, each watched until it is back.
  const armed = await phase(name, 'storm: arm devices', 10_000, () =>
    Promise.all(sims.map((s) => {
      const reply = nextMessage<Extract<FromWorker, { type: 'storm-armed' }>>(s.child, 'storm-armed');
      sendTo<ToWorker>(s.child, { type: 'storm', t0 });
      return reply.then((r) => r.devices);
    })),
  );
  const watched = armed.reduce((a, b) => a + b, 0);
  const empty: StormStats = { devices: 0, backMs: [], connackFailures: {}, refused: 0, errors: {}, errorsMs: null, attempts: 0 };
  const allBack = Promise.all(sims.map((s, i) => (armed[i]! > 0 ? nextMessage<Extract<FromWorker, { type: 'storm-back' }>>(s.child, 'storm-back').then((m) => m.stats) : Promise.resolve(empty))));
  allBack.catch(() => {}); // awaited in its phase below; a rejection before that is not unhandled

  const loadSpec: StormLoadSpec = { url: target.url, credentials: setup.credentials, devices: ids, rate: options.stormRate, t0 };
  await phase(name, 'storm: start commands', 10_000, () => {
    const reply = nextMessage(load, 'storm-started');
    sendTo<ToLoad>(load, { type: 'storm-start', spec: loadSpec });
    return reply;
  });

  log(name, `storm: restarting the hub under ${watched} devices, ${options.stormRate} commands/s`);
  const overflowsBefore = listenOverflows();
  await phase(name, 'storm: stop the hub', 30_000, () => sup.stop(target.child, 20_000));
  figures.storm_hub_exit_s = since();
  if (target.child.exitCode !== 0) log(name, `storm: the hub exited with status ${target.child.exitCode}`);
  const next = await phase(name, 'storm: start the hub again', 60_000, () => startHub(sup, dir, options.transport, target.ports));
  replaced(next);
  figures.storm_hub_back_s = (next.acceptingAt - started) / 1000;
  log(name, `storm: hub stopped after ${figures.storm_hub_exit_s.toFixed(2)} s, accepting again after ${figures.storm_hub_back_s.toFixed(2)} s`);

  // The hub's own view, polled; progress in the log meanwhile.
  let polling = true;
  const hubOnline = (async () => {
    let lastLog = performance.now();
    while (polling) {
      const online = await onlineCount(next.httpUrl!);
      if (online !== null && online >= watched) return since();
      if (performance.now() - lastLog >= 5000) {
        lastLog = performance.now();
        log(name, `storm: ${online ?? '?'}/${watched} online after ${since().toFixed(0)} s`);
      }
      await sleep(250);
    }
    return NaN;
  })();
  try {
    const back = await phase(name, 'storm: devices back', 120_000 + ids.length * 20, () => allBack);
    const sorted = Float64Array.from(back.flatMap((b) => b.backMs)).sort();
    figures.storm_back_50_s = quantileOf(sorted, 0.5) / 1000;
    figures.storm_back_90_s = quantileOf(sorted, 0.9) / 1000;
    figures.storm_back_99_s = quantileOf(sorted, 0.99) / 1000;
    figures.storm_back_100_s = quantileOf(sorted, 1) / 1000;
    figures.storm_connack_refusals = back.reduce((a, b) => a + sum(b.connackFailures), 0);
    figures.storm_refused = back.reduce((a, b) => a + b.refused, 0);
    figures.storm_errors = back.reduce((a, b) => a + sum(b.errors), 0);
    figures.storm_listen_overflows = listenOverflows() - overflowsBefore;
    figures.storm_attempts_per_device = back.reduce((a, b) => a + b.attempts, 0) / Math.max(1, watched);
    const failures = back.filter((b) => sum(b.connackFailures) + sum(b.errors) > 0).map((b) => ({ connack: b.connackFailures, errors: b.errors, errorsS: b.errorsMs?.map((ms) => Math.round(ms / 100) / 10) }));
    log(name, `storm: all ${watched} back after ${figures.storm_back_100_s.toFixed(2)} s; ${figures.storm_refused} refused while the hub was down` + (failures.length ? `; failures ${JSON.stringify(failures)}` : ''));
    figures.storm_hub_online_s = await phase(name, 'storm: hub lists the devices online', 60_000, () => hubOnline);
  } finally {
    polling = false;
  }

  const cmds = await phase(name, 'storm: commands', 30_000, async () => {
    const reply = nextMessage<Extract<FromLoad, { type: 'storm' }>>(load, 'storm');
    sendTo<ToLoad>(load, { type: 'storm-stop' });
    return (await reply).result;
  });
  figures.storm_load_back_s = cmds.backS;
  figures.storm_cmd_sent = cmds.sent;
  figures.storm_cmd_ok = cmds.ok;
  figures.storm_cmd_offline = cmds.offline;
  figures.storm_cmd_other = sum(cmds.errors);
  figures.storm_cmd_unanswered = cmds.unanswered;
  figures.storm_cmd_unsent = cmds.unsent;
  figures.storm_cmd_p50_ms = cmds.p50;
  figures.storm_cmd_p99_ms = cmds.p99;
  log(name, `storm: commands ${cmds.ok} ok, ${cmds.offline} offline, ${cmds.unanswered} unanswered, ${cmds.unsent} unsent` + (figures.storm_cmd_other ? `, errors ${JSON.stringify(cmds.errors)}` : '') + `; p99 ${cmds.p99.toFixed(1)} ms`);
  return next;
}

/** Round-trip devices taken in turn from each simulator's share, so that they spread over the nodes. */
function interleave(lists: string[][], max: number): string[] {
  const out: string[] = [];
  for (let i = 0; out.length < max && lists.some((l) => i < l.length); i++) {
    for (const l of lists) if (i < l.length && out.length < max) out.push(l[i]!);
  }
  return out;
}

/**
 * Seconds the hub's garbage collector has run so far, from its /metrics (prom-client's GC
 * histogram, all kinds); NaN when it cannot be read.
 */
async function gcSeconds(httpUrl: string, secret: string): Promise<number> {
  try {
    const response = await fetch(`${httpUrl}/metrics`, { headers: { authorization: `Bearer ${secret}` }, signal: AbortSignal.timeout(10_000) });
    const text = await response.text();
    let total = 0;
    for (const m of text.matchAll(/^rhizosphere_nodejs_gc_duration_seconds_sum\{[^}]*\} (\S+)$/gm)) total += Number(m[1]);
    return total;
  } catch {
    return NaN;
  }
}

const cpuOf = (pids: number[]) => pids.reduce((a, p) => a + sampleProcess(p).cpuSeconds, 0);

/** Waits until every node's /healthz counts `expected` devices online: each node sees the whole fleet. */
async function waitClusterOnline(nodes: RunningTarget[], expected: number): Promise<void> {
  let lastLog = performance.now();
  for (;;) {
    const counts = await Promise.all(nodes.map((n) => healthCounts(n.httpUrl!)));
    if (counts.every((c) => c !== null && c.online >= expected)) return;
    for (const n of nodes) if (!n.child.running) throw new Error(`${n.child.name} exited:\n${n.child.tail()}`);
    if (performance.now() - lastLog >= 10_000) {
      lastLog = performance.now();
      log('cluster', `online per node: ${counts.map((c) => c?.online ?? '?').join(' / ')} of ${expected}`);
    }
    await sleep(500);
  }
}

/** What the failure report of a cluster says about each node and Redis. */
async function clusterDiagnosis(brokers: ManagedChild[], claim: RedisClaim | undefined): Promise<string> {
  const lines = brokers.map((b) => {
    if (!b.running) return `${b.name}: exited with status ${b.exitCode}`;
    let fds = NaN;
    try {
      fds = readdirSync(`/proc/${b.pid}/fd`).length;
    } catch {}
    return `${b.name}: running, ${fds} open files, RSS ${(sampleProcess(b.pid).rssKiB / 1024).toFixed(0)} MiB`;
  });
  if (claim) lines.push(`redis db ${claim.db}: used_memory ${((await redisUsedMemory(claim).catch(() => NaN)) / 2 ** 20).toFixed(1)} MiB, ${await claim.redis.dbsize().catch(() => '?')} keys`);
  return lines.join('\n');
}

async function runTarget(session: Session, name: TargetName): Promise<TargetResult> {
  const { sup, options, ids } = session;
  const n = ids.length;
  const cluster = name === 'cluster';
  /** The hub joined to its own broker with --broker: devices and the load client connect there. */
  const external = EXTERNAL_TARGETS.includes(name);
  const hubLike = name === 'hub' || cluster || external;
  const figures: Figures = {};
  let nodeFigures: NodeFigures[] | undefined;
  const dir = sup.tempDir(`rhizo-bench-${name}-`);
  const children: ManagedChild[] = [];
  /** The target's own processes (one, or the cluster's nodes, or the hub on an external broker). */
  const brokers: ManagedChild[] = [];
  /** external-*: the broker's processes (Mosquitto, or the nats-server nodes), read apart from the hub's. */
  const extBrokers: ManagedChild[] = [];
  let claim: RedisClaim | undefined;
  let lapses = 0;
  try {
    let tokens = new Map<string, string>();
    let operator: { name: string; secret: string } | undefined;
    if (hubLike) {
      log(name, `registering ${n} devices`);
      const reg = await phase(name, 'register devices', 60_000 + n, async () => registerDevices(dir, ids, DEVICE_TAG));
      tokens = reg.tokens;
      operator = reg.operator;
    }
    let nodes: RunningTarget[];
    /** Where simulator process i connects: deviceUrls[i mod length]. */
    let deviceUrls: string[];
    if (external) {
      // The broker first (stopped last, after the hub), then the hub joined to it.
      let brokerUrl: string;
      if (name === 'external-nats') {
        if (options.transport !== 'tcp') throw new Error(`${name}: NATS 2.9 has no MQTT over WebSocket; run it with --transport tcp`);
        const nats = await phase(name, 'start broker', 90_000, () => startNats(sup, dir, NATS_NODES, (child) => (children.push(child), extBrokers.push(child))));
        deviceUrls = nats.urls;
        brokerUrl = nats.urls[0]!;
        log(name, `NATS cluster of ${NATS_NODES} nodes, MQTT at ${nats.urls.join(', ')}`);
      } else {
        const mosquitto = await phase(name, 'start broker', 30_000, () => startMosquitto(sup, dir, options.transport));
        children.push(mosquitto.child);
        extBrokers.push(mosquitto.child);
        deviceUrls = [mosquitto.url];
        brokerUrl = mosquitto.mqttUrl!;
      }
      const hub = await phase(name, 'start', 30_000, () => startHub(sup, dir, options.transport, undefined, { broker: brokerUrl, spawned: (child) => (children.push(child), brokers.push(child)) }));
      nodes = [hub];
    } else if (cluster) {
      claim = await phase(name, 'claim a Redis database', 15_000, claimRedisDb);
      log(name, `Redis database ${claim.url}; starting ${options.nodes} nodes one after another`);
      const spawned = (child: ManagedChild) => {
        children.push(child);
        brokers.push(child);
        // The nodes' cluster warnings as they happen; a lapse is logged by the node that removed the other.
        child.lineListeners.push((line) => {
          if (!line.includes('"msg":"cluster:')) return;
          if (line.includes('stopped answering')) lapses++;
          log(name, `${child.name}: ${line}`);
        });
      };
      nodes = await phase(name, 'start nodes', 30_000 * options.nodes, () => startCluster(sup, dir, options.transport, claim!, options.nodes, options.devices, spawned));
      deviceUrls = nodes.map((t) => t.url);
    } else {
      const started = await phase(name, 'start', 30_000, () =>
        name === 'hub' ? startHub(sup, dir, options.transport) : name === 'aedes' ? startAedes(sup, options.transport) : startMosquitto(sup, dir, options.transport),
      );
      children.push(started.child);
      brokers.push(started.child);
      nodes = [started];
      deviceUrls = [started.url];
    }
    let target = nodes[0]!;
    const pids = nodes.map((t) => t.child.pid);
    const extPids = extBrokers.map((b) => b.pid);
    const redis = cluster ? redisPid() : null;
    if (cluster && redis === null) log(name, 'no single redis-server process to read (pgrep -x redis-server): the Redis CPU rows stay empty');
    const [before, extBefore] = await phase(name, 'RSS before devices', 10_000, async () => (await sleep(SETTLE_MS), [pids.map(sampleProcess), extPids.map(sampleProcess)] as const));
    figures.rss_before_mib = before.reduce((a, s) => a + s.rssKiB, 0) / 1024;
    if (external) figures.ext_rss_before_mib = extBefore.reduce((a, s) => a + s.rssKiB, 0) / 1024;
    const [restBefore, extRestBefore] = await phase(name, 'RSS at rest before devices', RSS_REST_BEFORE_MS + 10_000, () => Promise.all([restingRssKiB(pids, RSS_REST_BEFORE_MS), restingRssKiB(extPids, RSS_REST_BEFORE_MS)]));
    figures.rss_rest_before_mib = sum(restBefore) / 1024;
    const redisMemBefore = claim ? await redisUsedMemory(claim) : NaN;

    // Connect the devices: each simulator process to one node (of the hub cluster, or of the
    // NATS cluster). On an external broker they connect without credentials (it admits anyone)
    // and announce themselves with a birth and a will, which is how the hub learns of them.
    const sims = startSimulators(sup, ids.map((id) => ({ id, token: external ? undefined : tokens.get(id) })), options.perProcess, deviceUrls.length);
    children.push(...sims.map((s) => s.child));
    log(name, `connecting ${n} devices over ${options.transport} from ${sims.length} process(es) to ${deviceUrls.join(', ')}`);
    await phase(name, 'start device simulators', 30_000, () => Promise.all(sims.map((s) => nextMessage(s.child, 'ready'))));
    const overflowsBefore = listenOverflows();
    const connected = await phase(name, 'connect devices', 60_000 + n * (cluster ? 20 : 10), async () => {
      const started = performance.now();
      const replies = sims.map((s) => nextMessage<Extract<FromWorker, { type: 'connected' }>>(s.child, 'connected'));
      for (const s of sims) {
        const plan: ConnectPlan = { url: deviceUrls[s.node]!, devices: s.devices, localAddress: s.localAddress, rate: options.connectRate / sims.length, window: options.connectWindow, handshakeTimeoutMs: 30_000, reconnect: false, presence: external };
        sendTo<ToWorker>(s.child, { type: 'connect', plan });
      }
      const stats: ConnectStats[] = (await Promise.all(replies)).map((r) => r.stats);
      return { stats, seconds: (performance.now() - started) / 1000 };
    });
    const ok = connected.stats.reduce((a, s) => a + s.ok, 0);
    figures.connect_s = connected.seconds;
    figures.connect_rate = ok / connected.seconds;
    figures.connack_failures = connected.stats.reduce((a, s) => a + sum(s.connackFailures), 0);
    figures.refused = connected.stats.reduce((a, s) => a + s.refused, 0);
    figures.connect_errors = connected.stats.reduce((a, s) => a + sum(s.errors), 0);
    figures.handshake_p50_ms = Math.max(...connected.stats.map((s) => s.handshakeMs[0]));
    figures.handshake_max_ms = Math.max(...connected.stats.map((s) => s.handshakeMs[2]));
    figures.listen_overflows = listenOverflows() - overflowsBefore;
    log(name, `${ok}/${n} up in ${connected.seconds.toFixed(2)} s` + (ok < n ? `; failures ${JSON.stringify(connected.stats.map((s) => ({ connack: s.connackFailures, refused: s.refused, errors: s.errors })))}` : ''));
    if (ok === 0) throw new Error(`${name}: no device could connect`);
    if (name === 'hub' || external) await phase(name, 'devices online', 60_000 + n * 5, () => waitOnline(target, operator!.secret, ok));
    if (cluster) await phase(name, 'devices online on every node', 60_000 + n * 5, () => waitClusterOnline(nodes, ok));
    const [after, extAfter] = await phase(name, 'RSS with devices', 10_000, async () => (await sleep(SETTLE_MS), [pids.map(sampleProcess), extPids.map(sampleProcess)] as const));
    figures.rss_after_mib = after.reduce((a, s) => a + s.rssKiB, 0) / 1024;
    figures.rss_per_device_kib = after.reduce((a, s, i) => a + s.rssKiB - before[i]!.rssKiB, 0) / ok;
    if (external) {
      figures.ext_rss_after_mib = extAfter.reduce((a, s) => a + s.rssKiB, 0) / 1024;
      figures.ext_rss_per_device_kib = extAfter.reduce((a, s, i) => a + s.rssKiB - extBefore[i]!.rssKiB, 0) / ok;
    }
    const [restAfter, extRestAfter] = await phase(name, 'RSS at rest with devices', RSS_REST_AFTER_MS + 10_000, () => Promise.all([restingRssKiB(pids, RSS_REST_AFTER_MS), restingRssKiB(extPids, RSS_REST_AFTER_MS)]));
    figures.rss_rest_after_mib = sum(restAfter) / 1024;
    figures.rss_rest_per_device_kib = (sum(restAfter) - sum(restBefore)) / ok;
    if (external) figures.ext_rss_rest_per_device_kib = (sum(extRestAfter) - sum(extRestBefore)) / ok;
    if (cluster) {
      const listed = await Promise.all(nodes.map((t) => healthCounts(t.httpUrl!)));
      figures.listed_devices_min = Math.min(...listed.map((c) => c?.devices ?? NaN));
      figures.listed_online_min = Math.min(...listed.map((c) => c?.online ?? NaN));
      figures.redis_memory_mib = ((await redisUsedMemory(claim!)) - redisMemBefore) / 2 ** 20;
      nodeFigures = nodes.map((t, k) => {
        const held = connected.stats.reduce((a, s, i) => a + (sims[i]!.node === k ? s.ok : 0), 0);
        const mib = (kib: number) => Math.round((kib / 1024) * 10) / 10;
        return {
          node: t.child.name,
          devices: held,
          rss_before_mib: mib(before[k]!.rssKiB),
          rss_after_mib: mib(after[k]!.rssKiB),
          rss_per_device_kib: held ? Math.round(((after[k]!.rssKiB - before[k]!.rssKiB) / held) * 10) / 10 : null,
          listed_devices: listed[k]?.devices ?? null,
          listed_online: listed[k]?.online ?? null,
        };
      });
      log(name, `per node: ${nodeFigures.map((f) => `${f.node} ${f.devices} devices, RSS ${f.rss_before_mib} → ${f.rss_after_mib} MiB, lists ${f.listed_online}/${f.listed_devices} online`).join('; ')}`);
    }

    // CPU the target spends on connected devices doing nothing (keepalives, timers, GC, heartbeats).
    const rest = await phase(name, 'CPU at rest', 10_000, async () => {
      const [t0, r0, e0] = [cpuOf(pids), redis === null ? NaN : cpuOf([redis]), cpuOf(extPids)];
      await sleep(REST_MS);
      return { cpu: cpuOf(pids) - t0, redisCpu: redis === null ? NaN : cpuOf([redis]) - r0, extCpu: cpuOf(extPids) - e0 };
    });
    figures.rest_cpu_pct = (rest.cpu / (REST_MS / 1000)) * 100;
    if (external) figures.ext_rest_cpu_pct = (rest.extCpu / (REST_MS / 1000)) * 100;
    if (cluster) figures.rest_redis_cpu_pct = (rest.redisCpu / (REST_MS / 1000)) * 100;

    // Round trips with K in flight, from a load client on the first node.
    const load = sup.fork(`load-client`, join(ROOT, 'dist', 'bench', 'load-client.js'));
    children.push(load);
    // On an external broker the load client logs in to the broker (anonymous), not to the hub.
    const credentials = operator && !external ? { username: operator.name, password: operator.secret } : undefined;
    const mode = hubLike ? 'hub' : 'bare';
    const loadUrl = external ? deviceUrls[0]! : target.url;
    // Round trips spread over the nodes the devices are on (hub cluster, NATS cluster).
    const spread = cluster || (sims.length > 1 && deviceUrls.length > 1);
    const rtDevices = spread ? interleave(sims.map((s) => s.devices.map((d) => d.id)), Math.min(ok, ROUND_TRIP_DEVICES)) : ids.slice(0, Math.min(ok, ROUND_TRIP_DEVICES));
    if (spread) {
      const onFirst = new Set(sims.filter((s) => s.node === 0).flatMap((s) => s.devices.map((d) => d.id)));
      // Round robin over the list: each device gets the same share of the round trips.
      figures.rt_crossed_pct = (rtDevices.filter((d) => !onFirst.has(d)).length / rtDevices.length) * 100;
    }
    const rtSpec: RoundTripSpec = {
      mode,
      url: loadUrl,
      credentials,
      devices: rtDevices,
      inflight: options.inflight,
      connections: options.loadConnections,
      warmup: options.warmup,
      count: options.roundtrips,
      durationMs: options.durationS * 1000,
    };
    log(name, options.roundtrips ? `${options.roundtrips} round trips, ${options.inflight} in flight` : `round trips for ${options.durationS} s, ${options.inflight} in flight`);
    const rtLimit = 120_000 + (options.roundtrips ? options.roundtrips * 10 : options.durationS * 1000) + options.warmup * 10;
    const gcNow = async () => (hubLike ? (await Promise.all(nodes.map((t) => gcSeconds(t.httpUrl!, operator!.secret)))).reduce((a, b) => a + b, 0) : NaN);
    const gcBefore = await gcNow();
    const rt = await phase(name, 'round trips', rtLimit, async () => {
      // CPU seconds of the target's processes, the load client, the device simulators and Redis.
      const cpuNow = () => [cpuOf(pids), cpuOf([load.pid]), cpuOf(sims.map((s) => s.child.pid)), redis === null ? NaN : cpuOf([redis]), cpuOf(extPids)];
      let atMark: number[] = [];
      const mark = nextMessage(load, 'mark').then(() => (atMark = cpuNow()));
      // The load client's error rejects `result` too, which this phase reports: not unhandled here.
      mark.catch(() => {});
      const result = nextMessage<Extract<FromLoad, { type: 'roundtrips' }>>(load, 'roundtrips');
      sendTo<ToLoad>(load, { type: 'roundtrips', spec: rtSpec });
      const { result: r } = await result;
      const atEnd = cpuNow();
      await mark;
      const used = atEnd.map((c, i) => c - atMark[i]!);
      return { ...r, cpu: used[0]!, loadCpu: used[1]!, simCpu: used[2]!, redisCpu: used[3]!, extCpu: used[4]! };
    });
    figures.rt_rate = rt.rate;
    figures.rt_p50_ms = rt.p50;
    figures.rt_p99_ms = rt.p99;
    figures.rt_max_ms = rt.max;
    figures.rt_cpu_s_per_10k = (rt.cpu / rt.count) * 10_000;
    figures.rt_load_cpu_s_per_10k = (rt.loadCpu / rt.count) * 10_000;
    figures.rt_sim_cpu_s_per_10k = (rt.simCpu / rt.count) * 10_000;
    if (cluster) figures.rt_redis_cpu_s_per_10k = (rt.redisCpu / rt.count) * 10_000;
    if (external) figures.rt_ext_cpu_s_per_10k = (rt.extCpu / rt.count) * 10_000;
    // Read outside the measuring window: the warm-up's GC is in it, so it counts in the divisor too.
    if (hubLike) figures.rt_gc_s_per_10k = (((await gcNow()) - gcBefore) / (rt.count + options.warmup)) * 10_000;
    figures.rt_errors = sum(rt.errors);
    log(name, `${rt.rate.toFixed(0)} round trips/s, p50 ${rt.p50.toFixed(2)} ms, p99 ${rt.p99.toFixed(2)} ms` + (figures.rt_errors ? `, errors ${JSON.stringify(rt.errors)}` : ''));

    // Fan-out: one command to every device (a job on the first node, for a cluster).
    const fanSpec: FanOutSpec = { mode, url: loadUrl, httpUrl: target.httpUrl, credentials, apiToken: operator?.secret, devices: ids, expected: ok, concurrency: Math.min(ok, JOB_CONCURRENCY_MAX), tag: DEVICE_TAG };
    log(name, `fan-out to ${ok} devices`);
    const gcBeforeFan = await gcNow();
    const fan = await phase(name, 'fan-out', 60_000 + n * 20, async () => {
      const cpuBefore = cpuOf(pids);
      const redisBefore = redis === null ? NaN : cpuOf([redis]);
      const extCpuBefore = cpuOf(extPids);
      const result = nextMessage<Extract<FromLoad, { type: 'fanout' }>>(load, 'fanout');
      sendTo<ToLoad>(load, { type: 'fanout', spec: fanSpec });
      const { result: r } = await result;
      return { ...r, cpu: cpuOf(pids) - cpuBefore, redisCpu: redis === null ? NaN : cpuOf([redis]) - redisBefore, extCpu: cpuOf(extPids) - extCpuBefore };
    });
    figures.fanout_s = fan.seconds;
    figures.fanout_succeeded = fan.succeeded;
    figures.fanout_cpu_s = fan.cpu;
    if (cluster) figures.fanout_redis_cpu_s = fan.redisCpu;
    if (external) figures.fanout_ext_cpu_s = fan.extCpu;
    if (hubLike) figures.fanout_gc_s = (await gcNow()) - gcBeforeFan;
    log(name, `fan-out: ${fan.succeeded}/${ok} answered in ${fan.seconds.toFixed(2)} s`);

    const stats = await phase(name, 'device stats', 10_000, () =>
      Promise.all(sims.map((s) => {
        const reply = nextMessage<Extract<FromWorker, { type: 'stats' }>>(s.child, 'stats');
        sendTo<ToWorker>(s.child, { type: 'stats' });
        return reply.then((r): WorkerStats => r.stats);
      })),
    );
    figures.dropped = stats.reduce((a, s) => a + s.lost, 0);

    if (options.storm && external) log(name, 'no reconnect storm: it restarts the embedded hub under its devices; here the devices are on the broker (rows —)');
    if (options.storm && name === 'hub') {
      target = await runStorm({ sup, options, ids, dir, target, sims, load, credentials: credentials! }, figures, (next) => (children[0] = next.child));
    }
    if (cluster) figures.node_lapses = lapses;
    return { figures: rounded(figures), ...(nodeFigures && { nodes: nodeFigures }) };
  } catch (error) {
    const message = (error as Error).message;
    log(name, `FAILED: ${message}`);
    for (const b of cluster || external ? [...extBrokers, ...brokers] : children.slice(0, 1)) {
      const tail = b.tail();
      if (tail) log(name, `${b.name}'s last output:\n${tail}`);
    }
    if (cluster) {
      figures.node_lapses = lapses;
      log(name, `at the failure:\n${await clusterDiagnosis(brokers, claim)}`);
    }
    return { figures: rounded(figures), ...(nodeFigures && { nodes: nodeFigures }), error: message };
  } finally {
    // Devices first, so that the broker does not spend the stop on thousands of disconnects.
    for (const child of children.reverse()) await sup.stop(child);
    // Only once no node writes any more.
    if (claim) await releaseRedisDb(claim).catch((error: Error) => log(name, `could not flush ${claim!.url}: ${error.message}`));
    sup.removeTempDir(dir);
  }
}

async function main(): Promise<void> {
  const options = parseOptions();
  const sup = new Supervisor();
  const cleanExit = (code: number) => {
    sup.killAllSync();
    releaseAllSync();
    process.exit(code);
  };
  process.on('SIGINT', () => (console.error('bench: interrupted; stopping everything'), cleanExit(130)));
  process.on('SIGTERM', () => cleanExit(143));
  process.on('exit', () => {
    sup.killAllSync();
    releaseAllSync();
  });

  const m = machine();
  console.log(machineLine(m));
  const session: Session = { sup, options, ids: deviceIds(options.devices, DEVICE_PREFIX) };
  const results: Report['results'] = {};
  for (const name of options.targets) results[name] = await runTarget(session, name);
  await sup.stopAll();

  const text = table(results, options.devices, options.inflight);
  const { out, ...parameters } = options;
  const report: Report = { machine: m, parameters, results, ratios: ratiosOf(results, options.devices, options.inflight), table: text };
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`\n${text}\n`);
  const failed = Object.entries(results).filter(([, r]) => r.error);
  for (const [name, r] of failed) console.log(`${name} failed: ${r.error}`);
  console.log(`results: ${out}`);
  if (failed.length > 0) process.exitCode = 1;
}

main().catch((error: Error) => {
  console.error(`bench: ${error.stack ?? error.message}`);
  process.exit(1);
});
