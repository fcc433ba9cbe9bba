/**
 * Simulated devices: real MQTT connections that speak the device side of the wire contract
 * and answer every command at once with result "ok", exit code 0.
 *
 * Two uses:
 *  - a worker of the bench (spawned with `--worker`, driven by IPC messages);
 *  - a command line for people: keeps COUNT devices connected and answering until Ctrl-C.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { backoffDelay, DEFAULT_BACKOFF_BASE_MS, DEFAULT_BACKOFF_CAP_MS } from '../src/hypha/agent.js';
import { newPresenceNonce, offlinePayload } from '../src/hypha/presence.js';
import type { PresenceMessage } from '../src/protocol/schemas.js';
import { wallMs } from './processes.js';
import { MqttConn, topics } from './wire.js';

export interface SimDeviceSpec {
  id: string;
  token?: string | undefined;
}

export interface ConnectPlan {
  url: string;
  devices: SimDeviceSpec[];
  localAddress?: string | undefined;
  /** Connects started per second; 0 = as fast as the window allows. */
  rate: number;
  /** Handshakes (TCP + CONNECT + SUBSCRIBE) in progress at most at once. */
  window: number;
  /** A handshake not finished by then counts as failed. */
  handshakeTimeoutMs: number;
  /**
   * Reconnect a device whose connection drops or whose connect fails, with the agent's
   * full-jitter backoff (the CLI does; the bench counts drops instead, until a storm).
   */
  reconnect: boolean;
  /**
   * Announce each device as hypha does on an external broker (docs/protocol.md "Presence
   * messages"): a retained will `{"online":false,nonce}` on `P/devices/{id}/presence` in the
   * CONNECT, and after CONNACK, behind the command subscription, a retained birth with the
   * same nonce, new on every connect. The embedded hub sees connections itself and drops both.
   */
  presence?: boolean | undefined;
}

export interface ConnectStats {
  ok: number;
  /** CONNACK with a non-zero return code, by code. */
  connackFailures: Record<string, number>;
  /** TCP connection refused (nobody listening, or the backlog overflowed). */
  refused: number;
  /** Other transport errors and handshake timeouts, by error code. */
  errors: Record<string, number>;
  ms: number;
  /** Handshake times of the devices that came up, from TCP connect to SUBACK: p50, p99, max (ms). */
  handshakeMs: [number, number, number];
}

export interface WorkerStats {
  answered: number;
  /** Connections that dropped after they were up. */
  lost: number;
  up: number;
}

/** A reconnect storm as one simulator process saw it. */
export interface StormStats {
  /** Devices that were up when the storm was armed. */
  devices: number;
  /** For each of them that is back (CONNACK and SUBACK again): ms from the storm's t0, unsorted. */
  backMs: number[];
  /** Outcomes of the reconnect attempts during the storm, as in ConnectStats. */
  connackFailures: Record<string, number>;
  refused: number;
  errors: Record<string, number>;
  /** When the first and the last of those errors happened, ms from t0 (to tell the old hub's stop from the new one's start). */
  errorsMs: [number, number] | null;
  attempts: number;
}

export type ToWorker =
  | { type: 'connect'; plan: ConnectPlan }
  | { type: 'stats' }
  /** From now on reconnect, and watch every device that is up until it is back; t0 is a wall-clock time in ms (performance.timeOrigin + now). */
  | { type: 'storm'; t0: number }
  | { type: 'stop' };
export type FromWorker =
  | { type: 'ready' }
  | { type: 'connected'; stats: ConnectStats }
  | { type: 'stats'; stats: WorkerStats }
  | { type: 'storm-armed'; devices: number }
  /** Every watched device is back. */
  | { type: 'storm-back'; stats: StormStats }
  | { type: 'error'; message: string };

type Outcome = { kind: 'up' } | { kind: 'connack' | 'refused' | 'error'; code: string };

const PING_CHECK_MS = 15_000;
/** Keepalive is 60 s; a ping after 40 s of silence keeps well inside the broker's 90 s. */
const PING_AFTER_MS = 40_000;

/** The birth of a simulated device: what the hub reads on an external broker to list it online. */
function birthOf(nonce: string, transport: 'mqtt' | 'mqtt-ws'): string {
  const birth: PresenceMessage = { online: true, nonce, transport, agent: 'bench-sim/1' };
  return JSON.stringify(birth);
}

function responseFor(commandPayload: Buffer): string | null {
  let id: unknown;
  try {
    id = (JSON.parse(commandPayload.toString('utf8')) as { id?: unknown }).id;
  } catch {
    return null;
  }
  return JSON.stringify({ type: 'response', id, result: 'ok', error: '', exit_code: 0, duration_ms: 0, truncated: false });
}

export class DeviceFleet {
  private readonly conns = new Map<string, MqttConn>();
  private readonly up = new Set<string>();
  /** Failed connects in a row per device (absent = 0), reset on CONNACK as the agent does. */
  private readonly attempts = new Map<string, number>();
  answered = 0;
  lost = 0;
  private pinger: NodeJS.Timeout | null = null;
  private stopped = false;
  private reconnect = false;
  private storm: (StormStats & { t0: number; pending: Set<string>; onBack: (s: StormStats) => void }) | null = null;

  /** Connects every device of the plan; resolves when each one is up or has failed. */
  connect(plan: ConnectPlan): Promise<ConnectStats> {
    const stats: ConnectStats = { ok: 0, connackFailures: {}, refused: 0, errors: {}, ms: 0, handshakeMs: [NaN, NaN, NaN] };
    const handshakes: number[] = [];
    const started = performance.now();
    let next = 0;
    let pending = 0;
    let finished = 0;
    this.reconnect ||= plan.reconnect;
    this.startPinger();
    return new Promise((resolve) => {
      const settle = () => {
        finished++;
        pending--;
        if (finished === plan.devices.length) {
          stats.ms = performance.now() - started;
          const sorted = Float64Array.from(handshakes).sort();
          const at = (q: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]! : NaN);
          stats.handshakeMs = [at(0.5), at(0.99), at(1)];
          resolve(stats);
        } else pump();
      };
      let pumpScheduled = false;
      const pump = () => {
        while (pending < plan.window && next < plan.devices.length) {
          if (plan.rate > 0 && next >= ((performance.now() - started) / 1000) * plan.rate + 1) {
            if (!pumpScheduled) {
              pumpScheduled = true;
              setTimeout(() => ((pumpScheduled = false), pump()), 5);
            }
            return;
          }
          pending++;
          const began = performance.now();
          this.connectOne(plan, plan.devices[next++]!, (outcome) => {
            if (outcome.kind === 'up') {
              stats.ok++;
              handshakes.push(performance.now() - began);
            } else if (outcome.kind === 'connack') stats.connackFailures[outcome.code] = (stats.connackFailures[outcome.code] ?? 0) + 1;
            else if (outcome.kind === 'refused') stats.refused++;
            else stats.errors[outcome.code] = (stats.errors[outcome.code] ?? 0) + 1;
            settle();
          });
        }
      };
      if (plan.devices.length === 0) resolve(stats);
      else pump();
    });
  }

  stats(): WorkerStats {
    return { answered: this.answered, lost: this.lost, up: this.up.size };
  }

  /**
   * Arms a storm: from now on every device reconnects, and onBack gets the figures once each
   * device that is up now has come back. Returns how many devices are watched.
   */
  watchStorm(t0: number, onBack: (s: StormStats) => void): number {
    this.reconnect = true;
    const pending = new Set(this.up);
    this.storm = { t0, pending, onBack, devices: pending.size, backMs: [], connackFailures: {}, refused: 0, errors: {}, errorsMs: null, attempts: 0 };
    return pending.size;
  }

  stop(): void {
    this.stopped = true;
    if (this.pinger) clearInterval(this.pinger);
    for (const conn of this.conns.values()) conn.close();
  }

  private connectOne(plan: ConnectPlan, device: SimDeviceSpec, done: (o: Outcome) => void): void {
    let handshaking = true;
    const finish = (o: Outcome) => {
      if (!handshaking) return;
      handshaking = false;
      clearTimeout(timer);
      done(o);
    };
    const nonce = plan.presence ? newPresenceNonce() : '';
    const will = plan.presence ? { topic: topics.presence(device.id), payload: offlinePayload(nonce), qos: 1 as const, retain: true } : undefined;
    const conn = new MqttConn(
      { url: plan.url, clientId: device.id, username: device.token === undefined ? undefined : device.id, password: device.token, clean: false, keepalive: 60, localAddress: plan.localAddress, will },
      {
        onConnack: (code) => {
          if (code === 0) {
            this.attempts.delete(device.id);
            conn.subscribe(topics.command(device.id), 1);
            // After the subscription on the same connection: once the birth is read, commands arrive.
            if (plan.presence) conn.publish(topics.presence(device.id), birthOf(nonce, plan.url.startsWith('ws') ? 'mqtt-ws' : 'mqtt'), 1, true);
          } else {
            finish({ kind: 'connack', code: String(code) });
            conn.close();
          }
        },
        onSuback: (granted) => {
          if (granted[0] === 1 || granted[0] === 0) {
            this.up.add(device.id);
            finish({ kind: 'up' });
          } else {
            finish({ kind: 'error', code: 'SUBACK_REFUSED' });
            conn.close();
          }
        },
        onPublish: (_topic, payload) => {
          const response = responseFor(payload);
          if (response === null) return;
          this.answered++;
          conn.publish(topics.response(device.id), response, 1);
        },
        onClose: (error) => {
          const wasUp = this.up.delete(device.id);
          if (this.conns.get(device.id) === conn) this.conns.delete(device.id);
          if (handshaking) {
            const code = error?.code ?? 'CLOSED';
            finish(code === 'ECONNREFUSED' ? { kind: 'refused', code } : { kind: 'error', code });
          }
          if (this.stopped) return;
          if (wasUp) this.lost++;
          if (this.reconnect) this.retryLater(plan, device);
        },
      },
    );
    const timer = setTimeout(() => {
      finish({ kind: 'error', code: 'HANDSHAKE_TIMEOUT' });
      conn.close();
    }, plan.handshakeTimeoutMs);
    this.conns.set(device.id, conn);
    conn.start();
  }

  /** The agent's policy: uniformly random in [0, min(cap, base·2^attempt)), attempt counting failures since the last CONNACK. */
  private retryLater(plan: ConnectPlan, device: SimDeviceSpec): void {
    const attempt = this.attempts.get(device.id) ?? 0;
    this.attempts.set(device.id, attempt + 1);
    const delay = backoffDelay(attempt, DEFAULT_BACKOFF_BASE_MS, DEFAULT_BACKOFF_CAP_MS);
    setTimeout(() => this.stopped || this.connectOne(plan, device, (o) => this.onReconnect(device.id, o)), delay).unref();
  }

  private onReconnect(id: string, o: Outcome): void {
    const storm = this.storm;
    if (!storm) return;
    storm.attempts++;
    if (o.kind === 'up') {
      if (!storm.pending.delete(id)) return;
      storm.backMs.push(wallMs() - storm.t0);
      if (storm.pending.size === 0) {
        this.storm = null;
        storm.onBack({ devices: storm.devices, backMs: storm.backMs, connackFailures: storm.connackFailures, refused: storm.refused, errors: storm.errors, errorsMs: storm.errorsMs, attempts: storm.attempts });
      }
    } else if (o.kind === 'connack') storm.connackFailures[o.code] = (storm.connackFailures[o.code] ?? 0) + 1;
    else if (o.kind === 'refused') storm.refused++;
    else {
      storm.errors[o.code] = (storm.errors[o.code] ?? 0) + 1;
      const at = wallMs() - storm.t0;
      storm.errorsMs = [storm.errorsMs?.[0] ?? at, at];
    }
  }

  private startPinger(): void {
    if (this.pinger) return;
    this.pinger = setInterval(() => {
      const quietSince = Date.now() - PING_AFTER_MS;
      for (const conn of this.conns.values()) if (conn.open && conn.lastWrite < quietSince) conn.ping();
    }, PING_CHECK_MS);
    this.pinger.unref();
  }
}

/** Worker mode: one `connect`, then `stats` on demand, until `stop` or the parent goes away. */
function runWorker(): void {
  const fleet = new DeviceFleet();
  const send = (m: FromWorker) => process.send?.(m);
  process.on('message', (m: ToWorker) => {
    if (m.type === 'connect') {
      fleet.connect(m.plan).then(
        (stats) => send({ type: 'connected', stats }),
        (error: Error) => send({ type: 'error', message: error.message }),
      );
    } else if (m.type === 'stats') send({ type: 'stats', stats: fleet.stats() });
    else if (m.type === 'storm') {
      const devices = fleet.watchStorm(m.t0, (stats) => send({ type: 'storm-back', stats }));
      send({ type: 'storm-armed', devices });
    } else {
      fleet.stop();
      process.exit(0);
    }
  });
  process.on('disconnect', () => process.exit(0));
  send({ type: 'ready' });
}

const USAGE = `Usage: node dist/bench/sim-devices.js --url URL [--count N] [--id-prefix P] [--tokens FILE.json] [flags]

Keeps simulated devices connected to a hub or a broker; each answers every command at once
with result "ok" and exit code 0. Stops on Ctrl-C.

  --url URL            mqtt://HOST:PORT, or ws://HOST:PORT/mqtt (MQTT over WebSocket)
  --count N            how many devices (default: every id in --tokens, else 100)
  --id-prefix P        device ids are P0, P1, ... (default "sim-")
  --tokens FILE.json   {"id": "token", ...} as written by bench/register.js; without it the
                       devices connect without credentials (a broker or --allow-anonymous)
  --local-address A    source address of the connections (e.g. 127.0.0.2)
  --rate R             connects started per second (default 0: as fast as --window allows)
  --window W           handshakes in progress at most at once (default 200)
  --presence           publish a retained birth and leave a retained will on
                       P/devices/{id}/presence, as hypha does: a hub on an external broker
                       (--broker) lists a device online only from its birth
  --help               this text

One process holds at most about as many devices as it may open files (ulimit -n).`;

async function runCli(): Promise<void> {
  const { values } = parseArgs({
    options: {
      url: { type: 'string' },
      count: { type: 'string' },
      'id-prefix': { type: 'string', default: 'sim-' },
      tokens: { type: 'string' },
      'local-address': { type: 'string' },
      rate: { type: 'string', default: '0' },
      window: { type: 'string', default: '200' },
      presence: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  if (!values.url) {
    console.error('sim-devices: --url is required (see --help)');
    process.exit(2);
  }
  const tokens: Record<string, string> = values.tokens ? (JSON.parse(readFileSync(values.tokens, 'utf8')) as Record<string, string>) : {};
  const prefix = values['id-prefix'];
  const count = values.count !== undefined ? Number(values.count) : values.tokens ? Object.keys(tokens).length : 100;
  if (!Number.isInteger(count) || count < 1) {
    console.error(`sim-devices: --count ${values.count} is not a positive whole number`);
    process.exit(2);
  }
  const ids = values.tokens && values.count === undefined ? Object.keys(tokens) : Array.from({ length: count }, (_, i) => `${prefix}${i}`);
  const missing = values.tokens ? ids.filter((id) => !(id in tokens)) : [];
  if (missing.length > 0) {
    console.error(`sim-devices: ${missing.length} device ids have no token in ${values.tokens} (first: ${missing[0]})`);
    process.exit(2);
  }
  const fleet = new DeviceFleet();
  const stop = () => {
    const s = fleet.stats();
    console.log(`stopping: ${s.up} up, ${s.answered} commands answered, ${s.lost} connections dropped`);
    fleet.stop();
    process.exit(0);
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const stats = await fleet.connect({
    url: values.url,
    devices: ids.map((id) => ({ id, token: tokens[id] })),
    localAddress: values['local-address'],
    rate: Number(values.rate),
    window: Number(values.window),
    handshakeTimeoutMs: 30_000,
    reconnect: true,
    presence: values.presence,
  });
  const failed = Object.values(stats.connackFailures).reduce((a, b) => a + b, 0);
  console.log(
    `${stats.ok}/${ids.length} devices up in ${(stats.ms / 1000).toFixed(2)} s` +
      (failed ? `, CONNACK failures ${JSON.stringify(stats.connackFailures)}` : '') +
      (stats.refused ? `, ${stats.refused} refused` : '') +
      (Object.keys(stats.errors).length ? `, errors ${JSON.stringify(stats.errors)}` : ''),
  );
  setInterval(() => {
    const s = fleet.stats();
    console.log(`${s.up} up, ${s.answered} commands answered, ${s.lost} connections dropped`);
  }, 10_000);
}

if (process.argv.includes('--worker')) runWorker();
else
  runCli().catch((error: Error) => {
    console.error(`sim-devices: ${error.message}`);
    process.exit(1);
  });
