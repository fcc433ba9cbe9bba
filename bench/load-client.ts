/**
 * The bench's load client, a child process driven by IPC: command round trips with K in
 * flight, and the fan-out of one command to every device. Against the hub it speaks the client
 * side of the contract (Request → Reply, fleet jobs over REST), on the hub's MQTT port or on
 * the external broker the hub has joined; against a bare broker it does
 * the plain equivalent (command topic → response topic) with the same payload shapes.
 */
import { wallMs } from './processes.js';
import { connectAndSubscribe, topics, type MqttConn } from './wire.js';

export type Mode = 'hub' | 'bare';

export interface Credentials {
  username: string;
  password: string;
}

export interface RoundTripSpec {
  mode: Mode;
  url: string;
  credentials?: Credentials | undefined;
  /** Commands go to these devices round-robin. */
  devices: string[];
  inflight: number;
  connections: number;
  warmup: number;
  /** Measure this many round trips, or for durationMs when count is 0. */
  count: number;
  durationMs: number;
}

export interface RoundTripResult {
  count: number;
  seconds: number;
  rate: number;
  p50: number;
  p99: number;
  max: number;
  /** Replies that were not "ok", by code. */
  errors: Record<string, number>;
}

export interface FanOutSpec {
  mode: Mode;
  url: string;
  httpUrl?: string | undefined;
  /** MQTT credentials; for the hub also the API token of the REST call, unless apiToken is set. */
  credentials?: Credentials | undefined;
  /** The REST API token (hub only), when the MQTT connection goes to an external broker without credentials. */
  apiToken?: string | undefined;
  devices: string[];
  /** Answers to wait for: the devices that are connected (a bare broker drops the rest). */
  expected: number;
  /** The job's concurrency (hub only). */
  concurrency: number;
  /** Tag every benchmark device carries (hub only). */
  tag: string;
}

export interface FanOutResult {
  seconds: number;
  succeeded: number;
  failed: number;
}

/** Commands at a fixed rate through a hub restart (hub only). */
export interface StormLoadSpec {
  url: string;
  credentials?: Credentials | undefined;
  /** Commands go to these devices round-robin, whether they are back or not. */
  devices: string[];
  /** Requests per second. */
  rate: number;
  /** The storm's start, wall-clock ms (performance.timeOrigin + now). */
  t0: number;
}

export interface StormLoadResult {
  sent: number;
  /** Requests due while the load connection itself was down, so not sent. */
  unsent: number;
  ok: number;
  /** DEVICE_OFFLINE Replies: the device was not back yet. */
  offline: number;
  /** Other error Replies, by code. */
  errors: Record<string, number>;
  /** Sent, never answered: lost with the hub that stopped, or still open after the drain. */
  unanswered: number;
  /** Latency of the "ok" Replies (ms). */
  p50: number;
  p99: number;
  reconnects: number;
  /** When the load connection was last up again, in s from t0 (NaN if it never dropped). */
  backS: number;
}

export type ToLoad = { type: 'roundtrips'; spec: RoundTripSpec } | { type: 'fanout'; spec: FanOutSpec } | { type: 'storm-start'; spec: StormLoadSpec } | { type: 'storm-stop' };
export type FromLoad =
  | { type: 'mark' }
  | { type: 'roundtrips'; result: RoundTripResult }
  | { type: 'fanout'; result: FanOutResult }
  /** Connected; the requests have started. */
  | { type: 'storm-started' }
  | { type: 'storm'; result: StormLoadResult }
  | { type: 'error'; message: string };

const COMMAND = { order: 'exec_bash', cmd_str: 'true', timeout_ms: 30_000 };
const STALL_MS = 15_000;
const FANOUT_STALL_MS = 60_000;
/** The load client stands for an operator's program: it retries its own connection at once and often, not with a device's backoff. */
const STORM_RETRY_MS = 250;
/** After the storm, how long answers to the last requests may take. */
const STORM_DRAIN_MS = 5000;
const STORM_TICK_MS = 10;

function send(message: FromLoad): void {
  process.send?.(message);
}

function quantile(sorted: Float64Array, q: number): number {
  return sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

function parseReply(payload: Buffer): { id?: unknown; status?: unknown; code?: unknown; device?: unknown } {
  try {
    return JSON.parse(payload.toString('utf8')) as { id?: unknown };
  } catch {
    return {};
  }
}

async function roundTrips(spec: RoundTripSpec): Promise<RoundTripResult> {
  const sentAt = new Map<string, number>();
  const latencies: number[] = [];
  const errors: Record<string, number> = {};
  const total = spec.count > 0 ? spec.warmup + spec.count : Infinity;
  let seq = 0;
  let received = 0;
  let measuring = false;
  let measured = 0;
  let t0 = 0;
  let lastReply = performance.now();

  return new Promise<RoundTripResult>((resolve, reject) => {
    const conns: MqttConn[] = [];
    let finished = false;
    const finish = (error?: Error) => {
      if (finished) return;
      finished = true;
      clearInterval(watchdog);
      for (const c of conns) c.close();
      if (error) return reject(error);
      const seconds = (performance.now() - t0) / 1000;
      const sorted = Float64Array.from(latencies).sort();
      resolve({ count: measured, seconds, rate: measured / seconds, p50: quantile(sorted, 0.5), p99: quantile(sorted, 0.99), max: sorted.length ? sorted[sorted.length - 1]! : NaN, errors });
    };
    const watchdog = setInterval(() => {
      if (performance.now() - lastReply > STALL_MS) finish(new Error(`no reply for ${STALL_MS / 1000} s with ${sentAt.size} in flight (${received} replies so far)`));
      if (measuring && spec.count === 0 && performance.now() - t0 >= spec.durationMs) finish();
    }, 100);

    const sendOne = (conn: MqttConn, clientId: string) => {
      if (finished || seq >= total) return;
      const id = `r${seq}`;
      const device = spec.devices[seq % spec.devices.length]!;
      seq++;
      sentAt.set(id, performance.now());
      if (spec.mode === 'hub') conn.publish(topics.clientRequest(clientId), JSON.stringify({ type: 'command', id, device, ...COMMAND }), 1);
      else conn.publish(topics.command(device), JSON.stringify({ type: 'command', id, ...COMMAND }), 1);
    };

    const onReply = (conn: MqttConn, clientId: string, payload: Buffer) => {
      const reply = parseReply(payload);
      const started = typeof reply.id === 'string' ? sentAt.get(reply.id) : undefined;
      if (started === undefined || finished) return;
      sentAt.delete(reply.id as string);
      const now = performance.now();
      lastReply = now;
      received++;
      if (measuring) {
        measured++;
        const ok = spec.mode === 'bare' || reply.status === 'ok';
        if (ok) latencies.push(now - started);
        else errors[String(reply.code)] = (errors[String(reply.code)] ?? 0) + 1;
        if (spec.count > 0 && measured >= spec.count) return finish();
      } else if (received >= spec.warmup) {
        measuring = true;
        t0 = now;
        send({ type: 'mark' });
      }
      sendOne(conn, clientId);
    };

    const open = async (index: number, share: number) => {
      const clientId = `bench-load-${process.pid}-${index}`;
      let conn: MqttConn | undefined;
      const filter = spec.mode === 'hub' ? topics.clientResponse(clientId) : topics.allResponses;
      conn = await connectAndSubscribe(
        { url: spec.url, clientId, clean: true, keepalive: 60, username: spec.credentials?.username, password: spec.credentials?.password },
        [filter],
        (_topic, payload) => onReply(conn!, clientId, payload),
        () => finish(new Error(`load connection ${clientId} dropped`)),
      );
      conns.push(conn);
      return { conn, clientId, share };
    };

    const shares = Array.from({ length: spec.connections }, (_, i) => Math.floor(spec.inflight / spec.connections) + (i < spec.inflight % spec.connections ? 1 : 0));
    Promise.all(shares.map((share, i) => open(i, share))).then(
      (opened) => {
        if (spec.warmup === 0) {
          measuring = true;
          t0 = performance.now();
          send({ type: 'mark' });
        }
        for (const { conn, clientId, share } of opened) for (let i = 0; i < share; i++) sendOne(conn, clientId);
      },
      (error: Error) => finish(error),
    );
  });
}

async function fanOutHub(spec: FanOutSpec): Promise<FanOutResult> {
  const statuses = new Map<string, { state: string; counts: { succeeded: number; failed: number; timed_out: number } }>();
  let waiting: { id: string; resolve: (r: FanOutResult) => void; reject: (e: Error) => void } | null = null;
  let t0 = 0;
  let lastChange = performance.now();
  const check = () => {
    const status = waiting && statuses.get(waiting.id);
    if (!waiting || !status || status.state === 'running') return;
    waiting.resolve({ seconds: (performance.now() - t0) / 1000, succeeded: status.counts.succeeded, failed: spec.expected - status.counts.succeeded });
  };
  const conn = await connectAndSubscribe(
    { url: spec.url, clientId: `bench-fanout-${process.pid}`, clean: true, keepalive: 60, username: spec.credentials?.username, password: spec.credentials?.password },
    [topics.allJobStatuses],
    (_topic, payload) => {
      const status = JSON.parse(payload.toString('utf8')) as { id: string; state: string; counts: { succeeded: number; failed: number; timed_out: number } };
      statuses.set(status.id, status);
      lastChange = performance.now();
      check();
    },
    () => waiting?.reject(new Error('the status connection dropped')),
  );
  // A job that stops making progress fails with its last counts rather than at the phase limit.
  const watchdog = setInterval(() => {
    if (waiting && performance.now() - lastChange > FANOUT_STALL_MS) waiting.reject(new Error(`job ${waiting.id}: no progress for ${FANOUT_STALL_MS / 1000} s; last status ${JSON.stringify(statuses.get(waiting.id) ?? null)}`));
  }, 1000);
  try {
    t0 = performance.now();
    const response = await fetch(`${spec.httpUrl}/api/jobs`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${spec.apiToken ?? spec.credentials?.password}` },
      body: JSON.stringify({ target: { tags: [spec.tag], online: true }, ...COMMAND, concurrency: spec.concurrency }),
    });
    const body = (await response.json()) as { id?: string; message?: string };
    if (response.status !== 201 || !body.id) throw new Error(`POST /api/jobs answered ${response.status}: ${JSON.stringify(body)}`);
    return await new Promise<FanOutResult>((resolve, reject) => {
      waiting = { id: body.id!, resolve, reject };
      lastChange = performance.now();
      check();
    });
  } finally {
    clearInterval(watchdog);
    conn.close();
  }
}

async function fanOutBare(spec: FanOutSpec): Promise<FanOutResult> {
  const pending = new Set(spec.devices.map((_, i) => `f${i}`));
  let answered = 0;
  let t0 = 0;
  let done: (r: FanOutResult) => void = () => {};
  const finished = new Promise<FanOutResult>((resolve) => (done = resolve));
  let lost: (e: Error) => void = () => {};
  const dropped = new Promise<never>((_, reject) => (lost = reject));
  const conn = await connectAndSubscribe(
    { url: spec.url, clientId: `bench-fanout-${process.pid}`, clean: true, keepalive: 60 },
    [topics.allResponses],
    (_topic, payload) => {
      const id = parseReply(payload).id;
      if (typeof id === 'string' && pending.delete(id) && ++answered === spec.expected) done({ seconds: (performance.now() - t0) / 1000, succeeded: answered, failed: 0 });
    },
    () => lost(new Error(`the fan-out connection dropped after ${answered} answers`)),
  );
  try {
    t0 = performance.now();
    spec.devices.forEach((device, i) => conn.publish(topics.command(device), JSON.stringify({ type: 'command', id: `f${i}`, ...COMMAND }), 1));
    return await Promise.race([finished, dropped]);
  } finally {
    conn.close();
  }
}

/** Sends `rate` requests a second until stopped, reconnecting whenever the hub drops the connection. */
function stormLoad(spec: StormLoadSpec): { started: Promise<void>; stop: () => Promise<StormLoadResult> } {
  const clientId = `bench-storm-${process.pid}`;
  const sentAt = new Map<string, number>();
  const latencies: number[] = [];
  const result: StormLoadResult = { sent: 0, unsent: 0, ok: 0, offline: 0, errors: {}, unanswered: 0, p50: NaN, p99: NaN, reconnects: 0, backS: NaN };
  let conn: MqttConn | null = null;
  let stopped = false;
  let due = 0;

  const onReply = (payload: Buffer) => {
    const reply = parseReply(payload);
    const started = typeof reply.id === 'string' ? sentAt.get(reply.id) : undefined;
    if (started === undefined) return;
    sentAt.delete(reply.id as string);
    if (reply.status === 'ok') {
      result.ok++;
      latencies.push(performance.now() - started);
    } else if (reply.code === 'DEVICE_OFFLINE') result.offline++;
    else result.errors[String(reply.code)] = (result.errors[String(reply.code)] ?? 0) + 1;
  };
  const connect = async (): Promise<void> => {
    while (!stopped) {
      try {
        const c: MqttConn = await connectAndSubscribe(
          { url: spec.url, clientId, clean: true, keepalive: 60, username: spec.credentials?.username, password: spec.credentials?.password },
          [topics.clientResponse(clientId)],
          (_topic, payload) => onReply(payload),
          () => {
            if (conn === c) conn = null;
            // A clean session: the answers to what was in flight will not come.
            result.unanswered += sentAt.size;
            sentAt.clear();
            if (stopped) return;
            result.reconnects++;
            void connect();
          },
        );
        if (stopped) c.close();
        else conn = c;
        if (result.reconnects > 0) result.backS = (wallMs() - spec.t0) / 1000;
        return;
      } catch {
        await new Promise((r) => setTimeout(r, STORM_RETRY_MS));
      }
    }
  };

  const started = connect();
  let t0 = 0;
  let ticker: NodeJS.Timeout | undefined;
  void started.then(() => {
    t0 = performance.now();
    // Catch up on the schedule every tick: a slow tick does not lower the rate.
    ticker = setInterval(() => {
      const target = Math.floor(((performance.now() - t0) / 1000) * spec.rate);
      for (; due < target; due++) {
        if (!conn?.open) {
          result.unsent++;
          continue;
        }
        const id = `s${due}`;
        sentAt.set(id, performance.now());
        conn.publish(topics.clientRequest(clientId), JSON.stringify({ type: 'command', id, device: spec.devices[due % spec.devices.length], ...COMMAND }), 1);
        result.sent++;
      }
    }, STORM_TICK_MS);
  });
  const stop = async (): Promise<StormLoadResult> => {
    clearInterval(ticker);
    const until = performance.now() + STORM_DRAIN_MS;
    while (sentAt.size > 0 && performance.now() < until) await new Promise((r) => setTimeout(r, 50));
    const sorted = Float64Array.from(latencies).sort();
    const out = { ...result, unanswered: result.unanswered + sentAt.size, p50: quantile(sorted, 0.5), p99: quantile(sorted, 0.99) };
    stopped = true;
    conn?.close();
    return out;
  };
  return { started, stop };
}

let storm: ReturnType<typeof stormLoad> | null = null;

function handle(m: ToLoad): Promise<void> {
  switch (m.type) {
    case 'roundtrips':
      return roundTrips(m.spec).then((result) => send({ type: 'roundtrips', result }));
    case 'fanout':
      return (m.spec.mode === 'hub' ? fanOutHub(m.spec) : fanOutBare(m.spec)).then((result) => send({ type: 'fanout', result }));
    case 'storm-start':
      storm = stormLoad(m.spec);
      return storm.started.then(() => send({ type: 'storm-started' }));
    case 'storm-stop': {
      const running = storm;
      storm = null;
      if (!running) return Promise.reject(new Error('no storm load running'));
      return running.stop().then((result) => send({ type: 'storm', result }));
    }
  }
}

process.on('message', (m: ToLoad) => {
  handle(m).catch((error: Error) => send({ type: 'error', message: error.message }));
});
process.on('disconnect', () => process.exit(0));
