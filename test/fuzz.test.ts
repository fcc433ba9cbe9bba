/**
 * Fuzz: a few thousand random and malformed MQTT packets, Requests and HTTP requests thrown at
 * one hub, which must still answer correctly after each batch: /healthz, a command round trip
 * to a scripted device and to a real hypha agent, over MQTT and REST, a new client connecting,
 * no device dropped, no connection or command left behind, no uncaught exception.
 *
 * Seeded and replayable. The seed is in the test name and in every failure message:
 *
 *   FUZZ_SEED=1234 npx vitest run test/fuzz.test.ts     # replay a run
 *   FUZZ_SCALE=10 npx vitest run test/fuzz.test.ts      # ten times the cases and time budget
 *
 * Every case draws from a generator of its own, seeded from the run's seed, its part and its
 * number, so a case is the same whatever ran before it or beside it; a failure names the case
 * and shows its bytes.
 *
 * Fuzzed commands only ever reach the scripted device, which answers from memory: no random
 * command line is ever run by bash. The hypha agent only runs the checks' own commands.
 */
import { Agent, request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { gzipSync } from 'node:zlib';
import type { MqttClient } from 'mqtt';
import mqttPacket from 'mqtt-packet';
import { expect, it } from 'vitest';
import type { Hub } from '../src/index.js';
import type { Command, Reply } from '../src/protocol/schemas.js';
import { cleanup, connectMqtt, RequestClient, startAgents, startTestHub, waitFor } from './helpers.js';

// ---------------------------------------------------------------------------------------------
// Seed, sizes, budgets

const SEED = readSeed();
const SCALE = readScale();
const REPLAY = `FUZZ_SEED=${SEED}${SCALE !== 1 ? ` FUZZ_SCALE=${SCALE}` : ''} npx vitest run test/fuzz.test.ts`;

/** Cases per part, and the time each part may take before it stops starting new cases. */
const COUNT = { raw: Math.round(1500 * SCALE), requests: Math.round(1500 * SCALE), rest: Math.round(1000 * SCALE) };
const BUDGET_MS = { raw: 5000 * SCALE, requests: 5000 * SCALE, rest: 4000 * SCALE };

const P = 'rhizosphere';
/** The scripted device every fuzzed command goes to. */
const DEVICE = 'fuzz-dev';
/** A real hypha agent: only the health checks send it commands. No generator below produces its id. */
const AGENT = 'fuzz-hypha';
const CLIENTS = ['fuzz-c0', 'fuzz-c1', 'fuzz-c2', 'fuzz-c3'];
const CODES = ['BAD_REQUEST', 'UNKNOWN_DEVICE', 'DEVICE_OFFLINE', 'TIMEOUT', 'FORBIDDEN', 'PAYLOAD_TOO_LARGE', 'BUSY', 'INTERNAL'];
const ORDERS = ['exec_bash', 'exec_bash_ret_okng_only', 'exec_bash_no_return'];
const ID_RULE = /^[A-Za-z0-9._:-]{1,128}$/;

function readSeed(): number {
  const raw = process.env.FUZZ_SEED;
  if (raw === undefined || raw === '') return (Math.random() * 2 ** 32) >>> 0;
  const seed = Number(raw);
  if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32) throw new Error(`FUZZ_SEED must be a whole number from 0 to 4294967295, not ${JSON.stringify(raw)}`);
  return seed;
}

function readScale(): number {
  const raw = process.env.FUZZ_SCALE;
  if (raw === undefined || raw === '') return 1;
  const scale = Number(raw);
  if (!(scale > 0 && scale <= 1000)) throw new Error(`FUZZ_SCALE must be a number above 0, not ${JSON.stringify(raw)}`);
  return scale;
}

// ---------------------------------------------------------------------------------------------
// Seeded randomness

/** mulberry32: small, fast, and the same on every platform. */
class Rng {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** 0 to n - 1. */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  between(low: number, high: number): number {
    return low + this.int(high - low + 1);
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  /** Picks from [weight, value] pairs. */
  weighted<T>(table: readonly (readonly [number, T])[]): T {
    let roll = this.next() * table.reduce((sum, [weight]) => sum + weight, 0);
    for (const [weight, value] of table) {
      roll -= weight;
      if (roll < 0) return value;
    }
    return table[table.length - 1]![1];
  }

  bytes(n: number): Buffer {
    const out = Buffer.alloc(n);
    for (let i = 0; i < n; i++) out[i] = this.int(256);
    return out;
  }

  /** Mostly short, now and then long. */
  size(max: number): number {
    return this.chance(0.8) ? this.int(Math.min(max, 40) + 1) : this.int(max + 1);
  }
}

/** The generator of case `index` of `part`: independent of every other case. */
function caseRng(part: number, index: number): Rng {
  let h = 0x811c9dc5 ^ SEED;
  for (const v of [part, index]) {
    h = Math.imul(h ^ v, 0x01000193);
    h ^= h >>> 13;
    h = Math.imul(h, 0x5bd1e995);
    h ^= h >>> 15;
  }
  return new Rng(h >>> 0);
}

function randomChar(r: Rng): string {
  return r.weighted([
    [60, () => String.fromCharCode(r.between(0x20, 0x7e))],
    [6, () => String.fromCharCode(r.int(0x20))],
    [8, () => r.pick(['"', '\\', '/', '{', '}', '[', ']', ':', ',', '#', '+', '$', '%', '\u007f'])],
    [8, () => String.fromCharCode(r.between(0xa0, 0x24f))],
    [5, () => String.fromCharCode(r.between(0x4e00, 0x9fff))],
    [5, () => String.fromCodePoint(r.between(0x1f300, 0x1faff))],
    [3, () => r.pick(['\u200b', '\u200e', '\u202e', '\ufeff', '\u2028', '\u2029', '\ufffd', '\uffff'])],
    [2, () => String.fromCharCode(r.between(0xd800, 0xdfff))], // a lone surrogate
  ] as const)();
}

function randomText(r: Rng, max = 60): string {
  let out = '';
  for (let n = r.size(max); n > 0; n--) out += randomChar(r);
  return out;
}

/** Ids the hub must refuse wherever an id goes (client id, device id, path segment). */
const INVALID_IDS = [
  '', ' ', '#', '+', '/', '//', 'a/b', '+/#', '$SYS', '$SYS/broker', '$share/g/x', '../..', '.%2F.', '%2F', 'a b', 'a\nb', 'a\rb', 'tab\t',
  '\u0000', 'nul\u0000x', 'é', 'naïve', '😀', '\ud800', '\u202eevil', '\ufeffbom', 'x'.repeat(129), 'd'.repeat(1000), 'a,b', 'a;b', '"q"', "o'q", '<b>',
  `${P}/devices/${DEVICE}/command`, 'a*b', '(x)', '~', '!', '@', 'a=b', '?', '&',
];
/**
 * Valid ids that are unusual: single characters, the longest, names of Object.prototype members.
 * Part 1 connects with the first list (and may make devices of them); parts 2 and 3 name the
 * second as devices, so that no Request of theirs reaches a device part 1 made.
 */
const ODD_CLIENT_IDS = ['-', '.', '..', '0', 'x'.repeat(128), '__proto__', 'constructor', 'toString', 'NaN', 'null'];
const ODD_DEVICE_IDS = [':', '_', '..x', 'y'.repeat(128), 'hasOwnProperty', 'valueOf', '__defineGetter__', 'isPrototypeOf', 'undefined', 'Infinity'];

function hostileString(r: Rng): string {
  return r.weighted([
    [5, () => r.pick(INVALID_IDS)],
    [2, () => r.pick(ODD_DEVICE_IDS)],
    [3, () => randomText(r, 200)],
    [1, () => r.pick(['${jndi:ldap://x/a}', "'; DROP TABLE devices; --", '%s%s%n', '{{7*7}}', '<script>alert(1)</script>', '\\u0000', 'true', '{}', '[]'])],
  ] as const)();
}

/** A random JSON value of random shape. */
function randomJson(r: Rng, depth = 0): unknown {
  const kind = r.int(depth >= 3 ? 5 : 8);
  switch (kind) {
    case 0:
      return null;
    case 1:
      return r.chance(0.5);
    case 2:
      return r.pick([0, -1, 1, 7, 999, 1000, 1000.5, 3_600_000, 3_600_001, 2 ** 31, 2 ** 53, -(2 ** 53), 1e308, -1e308, 5e-324, r.next() * 1e6, r.int(1e9)]);
    case 3:
      return randomText(r, 80);
    case 4:
      return hostileString(r);
    case 5: {
      const out: unknown[] = [];
      for (let n = r.size(8); n > 0; n--) out.push(randomJson(r, depth + 1));
      return out;
    }
    default: {
      const out: Record<string, unknown> = {};
      for (let n = r.size(8); n > 0; n--) {
        const key = r.chance(0.5) ? r.pick(['id', 'device', 'order', 'cmd_str', 'timeout_ms', 'type', '__proto__', 'constructor', 'status', 'code']) : randomText(r, 20);
        out[key] = randomJson(r, depth + 1);
      }
      return out;
    }
  }
}

/** A JSON text with a field `__proto__` (JSON.stringify cannot write one from an object literal). */
function withProtoKey(json: string, r: Rng): string {
  return json.replace(/^\{/, `{"__proto__":${JSON.stringify(randomJson(r, 2)) ?? 'null'},`).replace(',}', '}');
}

// ---------------------------------------------------------------------------------------------
// Request payloads (part 2, and REST bodies in part 3)

interface Payload {
  kind: string;
  bytes: Buffer;
}

function validRequest(r: Rng, id: string, device: string): Record<string, unknown> {
  const body: Record<string, unknown> = { type: 'command', id, device, order: r.pick(ORDERS), cmd_str: r.chance(0.7) ? `echo ${randomText(r, 30) || 'x'}` : randomText(r, 200) || 'y' };
  if (r.chance(0.5)) body.timeout_ms = r.pick([1000, 5000, 60_000, 3_600_000, r.between(1000, 3_600_000)]);
  if (r.chance(0.3)) delete body.type;
  if (r.chance(0.1)) body[randomText(r, 10) || 'extra'] = randomJson(r, 1);
  return body;
}

const FIELD_EDGES: Record<string, readonly unknown[]> = {
  type: ['command', 'response', 'Command', '', null, 1, ['command']],
  id: ['', 'x'.repeat(64), 'x'.repeat(65), '😀'.repeat(32), '😀'.repeat(33), 'é'.repeat(64), '\u0000', 7, 0, null, true, ['a'], {}],
  device: [DEVICE, DEVICE.toUpperCase(), `${DEVICE} `, ` ${DEVICE}`, `${DEVICE}/command`, 'ghost-1', 'g'.repeat(128), 'g'.repeat(129), null, 5, [DEVICE], { id: DEVICE }],
  order: [...ORDERS, 'EXEC_BASH', 'exec_bash ', 'rm_rf', '', 'exec', null, 0, ['exec_bash']],
  cmd_str: ['', ' ', 'x', '\u0000', '\n', 'echo "$(id)"', null, 5, false, ['ls'], { cmd: 'ls' }],
  timeout_ms: [999, 1000, 1000.5, 3_600_000, 3_600_001, 0, -1, -1000, 1e308, 2 ** 53, '5000', '1e4', null, true, [5000], { ms: 5000 }],
};

function mutate(r: Rng, body: Record<string, unknown>): Record<string, unknown> {
  const field = r.chance(0.9) ? r.pick(Object.keys(FIELD_EDGES)) : randomText(r, 12);
  const edges = FIELD_EDGES[field];
  const op = r.int(10);
  if (op < 2) delete body[field];
  else if (op < 6 && edges) body[field] = r.pick(edges);
  else if (op < 8) body[field] = randomJson(r, 1);
  else body[field] = hostileString(r);
  return body;
}

/** A Request-like payload of a random kind with the id `id`: most at most `limit` bytes, some around it or beyond. */
function requestPayload(r: Rng, id: string, limit: number, withDevice = true): Payload {
  const device = (): string => (r.chance(0.85) ? DEVICE : r.chance(0.5) ? `ghost-${r.int(1000)}` : hostileString(r));
  const base = (): Record<string, unknown> => {
    const body = validRequest(r, id, device());
    if (!withDevice) delete body.device;
    return body;
  };
  const json = (value: unknown): Buffer => Buffer.from(JSON.stringify(value) ?? 'null');
  const kind = r.weighted([
    [12, 'valid'],
    [38, 'mutated'],
    [10, 'random-object'],
    [6, 'random-json'],
    [8, 'random-bytes'],
    [10, 'broken-json'],
    [6, 'sized'],
    [3, 'deep'],
    [4, 'hostile-ids'],
    [3, 'proto-keys'],
  ] as const);
  switch (kind) {
    case 'valid':
      return { kind, bytes: json(base()) };
    case 'mutated': {
      let body = base();
      for (let n = r.between(1, 3); n > 0; n--) body = mutate(r, body);
      return { kind, bytes: json(body) };
    }
    case 'random-object': {
      const body = randomJson(r, 2) as Record<string, unknown> | null;
      const object = body !== null && typeof body === 'object' && !Array.isArray(body) ? body : {};
      if (r.chance(0.6)) object.id = r.chance(0.8) ? id : randomJson(r, 2);
      return { kind, bytes: json(object) };
    }
    case 'random-json':
      return { kind, bytes: json(randomJson(r)) };
    case 'random-bytes': {
      const bytes = r.bytes(r.size(2048));
      if (bytes.length > 0 && r.chance(0.3)) bytes[0] = 0x7b; // '{'
      return { kind, bytes };
    }
    case 'broken-json': {
      const text = JSON.stringify(base());
      const cut = r.int(text.length);
      const broken = r.pick([
        () => text.slice(0, cut),
        () => text + randomText(r, 5),
        () => `\ufeff${text}`,
        () => text.replace(/"/g, "'"),
        () => text.replace(/}$/, ',}'),
        () => `/* c */${text}`,
        () => text.replace(/"cmd_str":"/, '"cmd_str":"\u0001\n'),
        () => text.replace(/:\d+/, ':NaN'),
        () => `${text}${text}`,
        () => `[${text}]`,
        () => `"${text.replace(/"/g, '\\"')}"`,
        () => text.replace(/"id":"[^"]*"/, `"id":"${id}","id":"${id}-dup"`),
        () => text.replace(/"device"/, '"dev\\u0069ce"'),
        () => text.slice(0, cut) + text.slice(cut + 1),
      ])();
      if (r.chance(0.2)) {
        // Invalid UTF-8 inside the text.
        const bytes = Buffer.from(broken);
        bytes[r.int(bytes.length || 1)] = r.pick([0xc3, 0xff, 0xfe, 0x80, 0xed]);
        return { kind, bytes };
      }
      return { kind, bytes: Buffer.from(broken) };
    }
    case 'sized': {
      // Around the size limit, with padding of 1, 2, 3, 4 or 6 bytes (escaped) per character.
      const target = r.pick([limit - 1, limit, limit + 1, limit - r.int(4096), limit + 1 + r.int(4096), 2 * limit, Math.floor(limit / 2)]);
      const body = base();
      const field = r.chance(0.7) ? 'cmd_str' : 'padding';
      body[field] = '';
      const overhead = Buffer.byteLength(JSON.stringify(body));
      const unit = r.pick(['x', 'é', '€', '😀', '\u0001']);
      const unitBytes = Buffer.byteLength(JSON.stringify(unit)) - 2;
      const room = Math.max(0, target - overhead);
      body[field] = unit.repeat(Math.floor(room / unitBytes)) + 'x'.repeat(room % unitBytes);
      return { kind, bytes: json(body) };
    }
    case 'deep': {
      const depth = r.between(10, Math.min(100_000, Math.floor(limit / 2) - 200));
      const nest = '['.repeat(depth) + ']'.repeat(depth);
      const body = JSON.stringify(base());
      return { kind, bytes: Buffer.from(r.chance(0.5) ? body.replace(/}$/, `,"deep":${nest}}`) : nest) };
    }
    case 'hostile-ids': {
      const body = base();
      if (r.chance(0.6)) body.device = hostileString(r);
      else body.id = hostileString(r);
      return { kind, bytes: json(body) };
    }
    case 'proto-keys':
      return { kind, bytes: Buffer.from(withProtoKey(JSON.stringify(base()), r)) };
  }
}

/** Length in Unicode code points: what "64 characters" counts (a lone surrogate is one). */
const codePoints = (text: string): number => [...text].length;

/** Why `raw` is not a valid Request (docs/protocol.md "Request"), or null. */
function requestProblem(raw: Record<string, unknown>, rest: boolean): string | null {
  const { type, id, device, order, cmd_str, timeout_ms } = raw;
  if (!rest && type !== undefined && type !== 'command') return 'type';
  const idOk = typeof id === 'string' && id.length >= 1 && codePoints(id) <= 64;
  if (rest ? id !== undefined && !idOk : !idOk) return 'id';
  if (!rest && !(typeof device === 'string' && ID_RULE.test(device))) return 'device';
  if (typeof order !== 'string' || !ORDERS.includes(order)) return 'order';
  if (typeof cmd_str !== 'string' || cmd_str.length === 0) return 'cmd_str';
  if (timeout_ms !== undefined && !(typeof timeout_ms === 'number' && Number.isInteger(timeout_ms) && timeout_ms >= 1000 && timeout_ms <= 3_600_000)) return 'timeout_ms';
  return null;
}

/** What the scripted device answers to a command line. */
const answerOf = (cmdStr: string): string => `ran:${cmdStr}`;

// ---------------------------------------------------------------------------------------------
// Raw MQTT cases (part 1)

interface RawCase {
  index: number;
  kind: string;
  /** The client id its CONNECT carries (or would carry), for the history of that id. */
  clientId: string;
  chunks: Buffer[];
  /** Milliseconds between chunks (0: all at once). */
  gapMs: number;
  /** How our side ends: destroy at once, TCP reset, half-close then wait, or wait for the server. */
  end: 'destroy' | 'reset' | 'end' | 'wait';
  waitMs: number;
  /** A CONNACK return code the hub must send (checked cases only). */
  expectConnack?: number;
  /** A full exchange that must complete: the broker stays responsive during the storm. */
  probe?: boolean;
  /** With `end: 'destroy'`: how long to wait after the last write before dropping the connection. */
  holdMs?: number;
  /** A second connection played `afterMs` after this one starts (same id: a takeover race). */
  companion?: { afterMs: number; case: RawCase };
}

function gen(packet: Record<string, unknown>, protocolVersion = 4): Buffer | null {
  try {
    return mqttPacket.generate(packet as unknown as mqttPacket.Packet, { protocolVersion });
  } catch {
    return null;
  }
}

/** A packet the test writes on purpose: mqtt-packet must be able to write it. */
function must(packet: Record<string, unknown>, protocolVersion = 4): Buffer {
  const out = gen(packet, protocolVersion);
  if (!out) throw new Error(`mqtt-packet cannot write ${JSON.stringify(packet).slice(0, 200)}`);
  return out;
}

/** Offset and length of the remaining-length field of a packet. */
function lengthField(packet: Buffer): { at: number; size: number } {
  let size = 1;
  while (size < 4 && size < packet.length && (packet[size]! & 0x80) !== 0) size++;
  return { at: 1, size };
}

function rawClientId(r: Rng): string {
  return r.weighted([
    [6, () => `raw-${r.int(2 ** 31).toString(36)}`],
    [2, () => r.pick(ODD_CLIENT_IDS)],
    [2, () => r.pick(INVALID_IDS)],
    [1, () => randomText(r, 150)],
  ] as const)();
}

function rawTopic(r: Rng, own: string): string {
  const other = r.pick(CLIENTS);
  return r.weighted([
    [3, () => r.pick(['#', '+', '+/+', 'a/#/b', '#/a', 'a+/b', 'a/b#', '$SYS', '$SYS/#', '$SYS/broker/clients/total', '', '/', '//', 'a//b', '\u0000', 'a\u0000b', '$share/g/t'])],
    [6, () => r.pick([
      `${P}/#`, `${P}/devices/+/status`, `${P}/devices/${DEVICE}/status`, `${P}/devices/${DEVICE}/command`, `${P}/devices/${DEVICE}/response`,
      `${P}/devices/${DEVICE}/telemetry/t`, `${P}/devices/${AGENT}/status`, `${P}/devices/${own}/command`, `${P}/devices/${own}/response`,
      `${P}/devices/${own}/status`, `${P}/devices/${own}/telemetry/a/b`, `${P}/clients/${own}/request`, `${P}/clients/${own}/response`,
      `${P}/clients/${other}/request`, `${P}/clients/${other}/response`, `${P}/clients/+/request`, `${P}/clients/${own}/request/x`,
      `${P}/devices//command`, `${P}/devices/a/b/command`, `${P}/clients//request`, `${P}/devices/${own}`, `${P}/devices/${own}/`,
    ])],
    [2, () => `${P}/${randomText(r, 40)}`],
    [2, () => randomText(r, 80)],
    [1, () => r.pick(['a/', 'x']).repeat(r.between(1000, 30_000))],
  ] as const)();
}

function rawPayload(r: Rng, own: string): Buffer {
  return r.weighted([
    [3, () => r.bytes(r.size(512))],
    [3, () => Buffer.from(JSON.stringify(randomJson(r)) ?? 'null')],
    [3, () => requestPayload(r, `raw-${r.int(1e6)}`, 4096).bytes],
    [2, () => Buffer.from(JSON.stringify({ type: 'response', id: `${r.int(2 ** 32).toString(16)}-${r.int(100)}`, result: randomText(r, 30), exit_code: randomJson(r, 2) }))],
    [1, () => Buffer.from(JSON.stringify({ online: false, since: new Date(0).toISOString(), transport: 'mqtt', from: own }))],
    [1, () => Buffer.alloc(r.pick([0, 1, 70_000]), 'x')],
  ] as const)();
}

function subscribeFilter(r: Rng, own: string): string {
  return r.weighted([
    [5, () => rawTopic(r, own)],
    [2, () => r.pick(['#', '+', '+/#', '$SYS/#', '', '#/', '++', 'a/+b', `${P}/devices/${own}/command`, `${P}/devices/${DEVICE}/command`, `${P}/clients/+/response`, `$share/g/${P}/#`, '$share//#', '$share/g'])],
  ] as const)();
}

/** One random packet of a session that has (or pretends to have) connected as `own`. */
function sessionPacket(r: Rng, own: string, version: number): Buffer {
  const messageId = r.pick([0, 1, r.between(1, 65535), 65535, 65536, -1]);
  const packet = r.weighted([
    [8, () => ({ cmd: 'publish', topic: rawTopic(r, own), payload: rawPayload(r, own), qos: r.pick([0, 0, 1, 1, 2]), retain: r.chance(0.2), dup: r.chance(0.1), messageId })],
    [4, () => ({ cmd: 'subscribe', messageId, subscriptions: Array.from({ length: r.between(1, 4) }, () => ({ topic: subscribeFilter(r, own), qos: r.pick([0, 1, 2]) })) })],
    [2, () => ({ cmd: 'unsubscribe', messageId, unsubscriptions: Array.from({ length: r.between(1, 3) }, () => subscribeFilter(r, own)) })],
    [2, () => ({ cmd: 'pingreq' })],
    [2, () => ({ cmd: r.pick(['puback', 'pubrec', 'pubrel', 'pubcomp']), messageId })],
    [1, () => ({ cmd: 'disconnect' })],
    [2, () => ({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: r.chance(0.5) ? own : rawClientId(r), clean: true, keepalive: 30 })],
    [1, () => ({ cmd: r.pick(['connack', 'suback', 'unsuback', 'pingresp']), returnCode: 0, messageId: 1, granted: [0], sessionPresent: false })],
  ] as const)();
  const out = gen(packet, version);
  if (out) return out;
  // Packets mqtt-packet will not write (bad topic, bad messageId...): random bytes with that packet's header.
  return Buffer.concat([Buffer.from([r.int(256)]), r.bytes(r.size(64))]);
}

function connectPacket(r: Rng, clientId: string, hostile: boolean): Buffer {
  const version = hostile ? r.pick([3, 4, 4, 5]) : 4;
  const packet: Record<string, unknown> = {
    cmd: 'connect',
    protocolId: version === 3 ? 'MQIsdp' : 'MQTT',
    protocolVersion: version,
    clientId,
    clean: hostile ? r.chance(0.7) : r.chance(0.9),
    keepalive: r.pick([0, 1, 2, 30, 60, 65535]),
  };
  if (hostile && r.chance(0.3)) {
    packet.username = r.chance(0.5) ? hostileString(r) : DEVICE;
    packet.password = r.bytes(r.size(64));
  }
  if (r.chance(hostile ? 0.35 : 0.1)) {
    packet.will = { topic: rawTopic(r, clientId), payload: rawPayload(r, clientId), qos: r.pick([0, 1, 2]), retain: r.chance(0.5) };
  }
  if (version === 5 && r.chance(0.5)) packet.properties = { sessionExpiryInterval: r.int(1000), receiveMaximum: r.between(1, 100), maximumPacketSize: r.between(1, 1000) };
  // mqtt-packet will not write some of these (an empty will topic, say): then a plain CONNECT.
  let out = gen(packet, version) ?? gen({ ...packet, will: undefined }, version) ?? must({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'raw-fallback', clean: true, keepalive: 30 });
  if (hostile && r.chance(0.15)) {
    // A protocol name or level the broker does not speak (mqtt-packet writes only 3, 4 and 5).
    out = Buffer.from(out);
    const { size } = lengthField(out);
    const levelAt = 1 + size + 2 + (version === 3 ? 6 : 4);
    if (r.chance(0.5)) out[levelAt] = r.pick([0, 1, 2, 6, 7, 127, 131, 132, 255]);
    else out[1 + size + 2] = r.int(256); // first letter of the protocol name
  }
  return out;
}

function corrupt(r: Rng, bytes: Buffer): Buffer {
  const out = Buffer.from(bytes);
  for (let n = r.between(1, 4); n > 0 && out.length > 0; n--) out[r.int(out.length)] = r.int(256);
  return out;
}

/** Rewrites the remaining-length field: too short, too long, huge, or an invalid 5-byte varint. */
function badLength(r: Rng, packet: Buffer): Buffer {
  const { at, size } = lengthField(packet);
  const field = r.pick([
    Buffer.from([0xff, 0xff, 0xff, 0x7f]), // 268,435,455: the largest MQTT allows
    Buffer.from([0xff, 0xff, 0xff, 0xff, 0x7f]), // five bytes: malformed
    Buffer.from([0x80, 0x80, 0x80, 0x80, 0x01]),
    Buffer.from([0x00]),
    Buffer.from([r.int(128)]),
    Buffer.from([0x80 | r.int(128), r.int(128)]),
    Buffer.from([0x80, 0x00]), // a non-minimal encoding of 0
  ]);
  return Buffer.concat([packet.subarray(0, at), field, packet.subarray(at + size)]);
}

function rawCase(index: number): RawCase {
  const r = caseRng(1, index);
  const base = { index, clientId: '', gapMs: 0, end: r.weighted([[3, 'destroy'], [1, 'reset'], [1, 'end'], [5, 'wait']] as const), waitMs: r.between(10, 80) };
  if (index % 100 === 99) {
    const id = `probe-raw-${index}`;
    return {
      ...base,
      clientId: id,
      kind: 'probe',
      probe: true,
      end: 'wait',
      waitMs: 3000,
      chunks: [
        must({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: id, clean: true, keepalive: 30 }),
        must({ cmd: 'subscribe', messageId: 7, subscriptions: [{ topic: `${P}/devices/${DEVICE}/status`, qos: 1 }] }),
        must({ cmd: 'pingreq' }),
      ],
    };
  }
  const own = rawClientId(r);
  base.clientId = own;
  const connect = () => connectPacket(r, own, false);
  const session = (n: number) => Array.from({ length: n }, () => sessionPacket(r, own, 4));
  const kind = r.weighted([
    [10, 'random-bytes'],
    [6, 'connect-refused'],
    [8, 'connect-hostile'],
    [24, 'session'],
    [6, 'before-connect'],
    [6, 'second-connect'],
    [8, 'truncated'],
    [8, 'corrupted'],
    [8, 'bad-length'],
    [6, 'split'],
    [4, 'mqtt5'],
    [4, 'reserved-types'],
    [2, 'slow-huge'],
    [4, 'takeover'],
  ] as const);
  switch (kind) {
    case 'random-bytes': {
      const bytes = r.bytes(r.between(1, 600));
      if (r.chance(0.5)) bytes[0] = r.pick([0x10, 0x30, 0x82, 0xc0, 0xe0, 0x00, 0xf0]);
      return { ...base, kind, chunks: [bytes] };
    }
    case 'connect-refused': {
      // An id the hub must refuse with CONNACK 2 (identifier rejected).
      const id = r.pick(INVALID_IDS.filter((s) => Buffer.byteLength(s) < 65_000));
      const packet = must({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: id, clean: true, keepalive: 30 });
      return { ...base, clientId: id, kind, chunks: [packet], end: 'wait', waitMs: 3000, expectConnack: 2 };
    }
    case 'connect-hostile':
      return { ...base, kind, chunks: [connectPacket(r, own, true), ...session(r.int(3))] };
    case 'session':
      return { ...base, kind, chunks: [connect(), ...session(r.between(1, 8))] };
    case 'before-connect':
      return { ...base, kind, chunks: [...session(r.between(1, 3)), connect()] };
    case 'second-connect':
      return { ...base, kind, chunks: [connect(), ...session(r.int(2)), connectPacket(r, r.chance(0.5) ? own : rawClientId(r), r.chance(0.5)), ...session(r.int(2))] };
    case 'truncated': {
      const all = Buffer.concat([connect(), ...session(r.between(1, 4))]);
      return { ...base, kind, chunks: [all.subarray(0, r.int(all.length))], end: r.pick(['destroy', 'reset', 'wait'] as const) };
    }
    case 'corrupted':
      return { ...base, kind, chunks: [corrupt(r, Buffer.concat([connect(), ...session(r.between(1, 4))]))] };
    case 'bad-length': {
      const packets = [connect(), ...session(r.between(1, 3))];
      const victim = r.int(packets.length);
      packets[victim] = badLength(r, packets[victim]!);
      return { ...base, kind, chunks: [Buffer.concat(packets)] };
    }
    case 'split': {
      // A valid session written a few bytes at a time, maybe cut off in the middle.
      const all = Buffer.concat([connect(), ...session(r.between(1, 4))]);
      const chunks: Buffer[] = [];
      for (let at = 0; at < all.length; ) {
        const n = r.between(1, 16);
        chunks.push(all.subarray(at, at + n));
        at += n;
      }
      return { ...base, kind, gapMs: 1, chunks: chunks.slice(0, r.chance(0.3) ? r.int(chunks.length) : chunks.length).slice(0, 200) };
    }
    case 'mqtt5': {
      const packet = gen({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clientId: own, clean: true, keepalive: 30, properties: { sessionExpiryInterval: 10 } }, 5) ?? connect();
      const more = Array.from({ length: r.int(3) }, () => gen({ cmd: 'publish', topic: rawTopic(r, own), payload: rawPayload(r, own), qos: 1, messageId: 1, properties: { payloadFormatIndicator: true } }, 5) ?? Buffer.alloc(0));
      return { ...base, kind, chunks: [packet, ...more] };
    }
    case 'reserved-types': {
      // Type 0 and 15 (AUTH, MQTT 5 only), and flags a 3.1.1 packet may not carry.
      const header = r.pick([0x00, 0x0f, 0xf0, 0xff, 0x31 | 0x06, 0x82 & 0xf0, 0xc1, 0xe1, 0x2f]);
      const body = r.bytes(r.int(20));
      return { ...base, kind, chunks: [connect(), Buffer.concat([Buffer.from([header, body.length]), body])] };
    }
    case 'takeover': {
      // A device from a small pool of ids, and a second connection with its id that sends
      // CONNECT and drops within a few milliseconds: a reconnect racing a dying connection.
      const id = `raw-dev-${r.int(4)}`;
      const device = [
        must({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: id, clean: r.chance(0.5), keepalive: 30 }),
        must({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: `${P}/devices/${id}/command`, qos: 1 }] }),
      ];
      const intruder: RawCase = {
        ...base,
        clientId: id,
        kind: 'takeover-intruder',
        chunks: [must({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: id, clean: r.chance(0.5), keepalive: 30 })],
        end: r.pick(['destroy', 'reset'] as const),
        holdMs: r.int(4),
      };
      return { ...base, clientId: id, kind, chunks: device, end: 'wait', waitMs: r.between(20, 60), companion: { afterMs: r.between(5, 15), case: intruder } };
    }
    case 'slow-huge': {
      // Announces a 256 MiB PUBLISH, sends a little of it, then goes.
      const header = Buffer.from([0x30, 0xff, 0xff, 0xff, 0x7f, 0x00, 0x01, 0x74]);
      return { ...base, kind, chunks: [connect(), header, r.bytes(r.between(1, 4096))], gapMs: 2, end: r.pick(['destroy', 'wait'] as const) };
    }
  }
}

function describeRaw(c: RawCase): string {
  const all = Buffer.concat(c.chunks);
  const hex = all.subarray(0, 512).toString('hex');
  const end = `end ${c.end}${c.holdMs !== undefined ? ` after ${c.holdMs} ms` : c.end === 'wait' || c.end === 'end' ? ` after ${c.waitMs} ms` : ''}`;
  const companion = c.companion ? `; ${c.companion.afterMs} ms after it starts, ${describeRaw(c.companion.case)}` : '';
  return `raw case #${c.index} (${c.kind}, ${c.chunks.length} chunk(s), ${all.length} bytes, ${end}): ${hex}${all.length > 512 ? '…' : ''}${companion}`;
}

interface RawOutcome {
  connack?: number;
  closedByServer: boolean;
  pingresp: boolean;
  suback: boolean;
  error?: string;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Plays one raw case over a new TCP connection. Never waits more than the case allows. */
function playRaw(port: number, c: RawCase): Promise<RawOutcome> {
  return new Promise((resolve) => {
    const outcome: RawOutcome = { closedByServer: false, pingresp: false, suback: false };
    const socket = connect(port, '127.0.0.1');
    socket.setNoDelay(true);
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(hardStop);
      if (c.end === 'reset' && !socket.destroyed) socket.resetAndDestroy();
      else socket.destroy();
      resolve(outcome);
    };
    // Whatever happens, this socket is gone after this.
    const hardStop = setTimeout(finish, c.waitMs + (c.holdMs ?? 0) + c.chunks.length * (c.gapMs + 5) + 2000);
    const parser = mqttPacket.parser({ protocolVersion: 4 });
    parser.on('packet', (packet) => {
      if (packet.cmd === 'connack') outcome.connack = (packet as mqttPacket.IConnackPacket).returnCode ?? (packet as mqttPacket.IConnackPacket).reasonCode;
      if (packet.cmd === 'pingresp') outcome.pingresp = true;
      if (packet.cmd === 'suback') outcome.suback = true;
      if (c.probe && outcome.connack === 0 && outcome.pingresp && outcome.suback) finish();
      if (c.expectConnack !== undefined && outcome.connack !== undefined) finish();
    });
    parser.on('error', () => {});
    socket.on('data', (data) => parser.parse(data));
    socket.on('error', (error: NodeJS.ErrnoException) => (outcome.error = error.code ?? error.message));
    socket.on('close', () => {
      if (!done) outcome.closedByServer = true;
      finish();
    });
    socket.on('connect', async () => {
      for (const chunk of c.chunks) {
        if (done || socket.destroyed) return;
        socket.write(chunk);
        if (c.gapMs > 0) await sleep(c.gapMs);
      }
      if (done) return;
      if (c.end === 'destroy' || c.end === 'reset') {
        if (c.holdMs) await sleep(c.holdMs);
        return finish();
      }
      if (c.end === 'end') socket.end();
      setTimeout(finish, c.waitMs);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// REST cases (part 3)

interface RestCase {
  index: number;
  kind: string;
  method: string;
  path: string;
  headers: Record<string, string>;
  body: Buffer | null;
  /** Send the body without Content-Length (chunked). */
  chunked: boolean;
  /** Bytes for a raw TCP connection instead of an HTTP client. */
  raw?: Buffer;
  /** For plain command POSTs: what the hub must answer. */
  expect?: { status: number[]; code?: string; result?: string };
}

/** Percent-encodes the UTF-8 bytes of `text` (unlike encodeURIComponent, also a lone surrogate, as U+FFFD). */
function pct(text: string): string {
  let out = '';
  for (const byte of Buffer.from(text, 'utf8')) out += /[A-Za-z0-9._~-]/.test(String.fromCharCode(byte)) ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  return out;
}

function pathId(r: Rng): string {
  return r.weighted([
    [5, () => DEVICE],
    [1, () => DEVICE.replace('-', '%2D')],
    [2, () => `ghost-${r.int(1000)}`],
    [3, () => pct(r.pick(INVALID_IDS))],
    [2, () => r.pick(['..', '.', '...', '%2e%2e', '%2E%2E%2F', '%2F', '%252F', '%', '%zz', '%00', '%C0%AE', '%FF', '%E2%80%AE', '$SYS', '+', ';', ',', "'", '"', '!', '*', '@', '~'])],
    [1, () => pct(randomText(r, 40))],
    [1, () => 'x'.repeat(r.pick([128, 129, 4000, 20_000, 70_000]))],
    [1, () => r.pick(ODD_DEVICE_IDS)],
  ] as const)();
}

function restPath(r: Rng): string {
  const id = () => pathId(r);
  let path = r.weighted([
    [3, () => `/api/devices/${id()}/commands`],
    [2, () => `/api/devices/${id()}`],
    [1, () => r.pick(['/api/devices', '/api/devices/', '/api/hub', '/api', '/api/', '/healthz', '/healthz/', '/HEALTHZ', '/API/DEVICES', '//api//devices', '/api/./devices', '/api/devices/../hub'])],
    [1, () => `/api/devices/${id()}/commands/${r.pick(['x', '..', '', '%2F', 'commands'])}`],
    [1, () => r.pick(['/api/../healthz', '/api/..%2F..%2Fpackage.json', '/api/%2e%2e/%2e%2e/package.json', '/assets/../package.json', '/api/devices/..%2F..%2F..%2Fpackage.json', '/healthz/../api/devices', '/healthz%00', '/api%00/devices', '/api/devices%2F', '/api\\devices'])],
    [2, () => `/${r.pick(['api', 'healthz'])}/${Array.from({ length: r.between(1, 6) }, () => r.pick(['api', 'devices', 'commands', 'hub', 'healthz', '..', '.', '', '%2e', id(), pct(randomText(r, 10))])).join('/')}`],
  ] as const)();
  if (r.chance(0.2)) path += '/';
  if (r.chance(0.25)) {
    path += r.pick([
      '?x=1',
      '?__proto__[polluted]=1',
      '?constructor[prototype][polluted]=1',
      '?a[b][c][d][e][f]=1',
      '?%zz',
      '?id=1&id=2',
      `?${'a=1&'.repeat(2000)}`,
      '#fragment',
      '?',
      `?q=${pct(randomText(r, 30))}`,
    ]);
  }
  return path;
}

function restHeaders(r: Rng): Record<string, string> {
  const headers: Record<string, string> = {};
  const contentType = r.weighted([
    [20, null],
    [40, 'application/json'],
    [6, 'application/json; charset=utf-8'],
    [3, 'application/json; charset=latin1'],
    [3, 'application/json; charset=utf-16le'],
    [3, 'application/json; charset=bogus'],
    [4, 'text/plain'],
    [3, 'application/x-www-form-urlencoded'],
    [3, 'multipart/form-data; boundary=xyz'],
    [2, '*/*'],
    [2, ''],
    [2, 'application/json; charset="utf-8"; x=y'],
    [2, ';;;'],
  ] as const);
  if (contentType !== null) headers['content-type'] = contentType;
  if (r.chance(0.08)) headers['content-encoding'] = r.pick(['gzip', 'deflate', 'br', 'identity', 'bogus', 'gzip, gzip']);
  if (r.chance(0.2)) headers.accept = r.pick(['*/*', 'text/html', 'application/json', 'image/png', '', 'x;;;']);
  if (r.chance(0.05)) headers['x-long'] = 'a'.repeat(r.pick([1000, 8000, 20_000, 70_000]));
  if (r.chance(0.1)) headers.connection = 'close';
  if (r.chance(0.03)) headers.expect = r.pick(['100-continue', 'bogus']);
  if (r.chance(0.03)) {
    headers.connection = 'upgrade';
    headers.upgrade = r.pick(['websocket', 'h2c', 'bogus']);
  }
  if (r.chance(0.03)) headers.host = r.pick(['', 'evil.example', 'a'.repeat(300), '[::1]:1', 'x:y:z']);
  if (r.chance(0.05)) headers['x-forwarded-for'] = r.pick(['1.2.3.4', "'; --", 'a'.repeat(500)]);
  if (r.chance(0.05)) headers.range = r.pick(['bytes=0-1', 'bytes=-1', 'bytes=999999999-', 'lines=1-2']);
  return headers;
}

function restBody(r: Rng, limit: number): Buffer | null {
  return r.weighted<() => Buffer | null>([
    [60, () => requestPayload(r, `rest-${r.int(1e6)}`, limit, false).bytes],
    [10, () => Buffer.from(JSON.stringify(validRequest(r, `rest-${r.int(1e6)}`, DEVICE)))],
    [8, () => Buffer.alloc(0)],
    [6, () => r.bytes(r.size(1024))],
    [4, () => Buffer.from('order=exec_bash&cmd_str=id')],
    [4, () => Buffer.from(JSON.stringify(randomJson(r)) ?? '')],
    [8, () => null],
  ])();
}

const RAW_HTTP: readonly ((r: Rng) => string | Buffer)[] = [
  () => 'GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n',
  () => `POST /api/devices/${DEVICE}/commands HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n`,
  () => `POST /api/devices/${DEVICE}/commands HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n`,
  () => 'GET /healthz HTTP/9.9\r\n\r\n',
  () => 'GET /healthz\r\n\r\n',
  () => 'GET  /healthz  HTTP/1.1\r\n\r\n',
  () => 'GET /healthz HTTP/1.1\r\nno-colon-here\r\n\r\n',
  () => 'GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\u0000b\r\n\r\n',
  () => 'GET /he\u0000althz HTTP/1.1\r\nHost: x\r\n\r\n',
  () => 'GET /healthz HTTP/1.1\nHost: x\n\n',
  () => `GET /api/${'a'.repeat(100_000)} HTTP/1.1\r\nHost: x\r\n\r\n`,
  () => `GET /healthz HTTP/1.1\r\nHost: x\r\n${'X-A: b\r\n'.repeat(3000)}\r\n`,
  () => 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /api/devices HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n',
  () => 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n',
  () => 'CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: x\r\n\r\n',
  () => 'TRACE /healthz HTTP/1.1\r\nHost: x\r\n\r\n',
  () => `POST /api/devices/${DEVICE}/commands HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}`,
  () => `POST /api/devices/${DEVICE}/commands HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}`,
  () => `POST /api/devices/${DEVICE}/commands HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n{}`,
  () => 'GET /healthz HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n',
  (r) => r.bytes(r.between(1, 400)),
  (r) => `${r.pick(['GET', 'POST', 'FUZZ', 'get', ''])} ${restPath(r)} HTTP/1.1\r\nHost: x\r\n${randomText(r, 40).replace(/[\r\n]/g, '')}: ${randomText(r, 40).replace(/[\r\n]/g, '')}\r\n\r\n`,
];

function restCase(index: number, limit: number): RestCase {
  const r = caseRng(3, index);
  if (r.chance(0.05)) {
    const raw = r.pick(RAW_HTTP)(r);
    return { index, kind: 'raw-http', method: '', path: '', headers: {}, body: null, chunked: false, raw: typeof raw === 'string' ? Buffer.from(raw, 'latin1') : raw };
  }
  const method = r.weighted([
    [30, 'GET'],
    [35, 'POST'],
    [5, 'PUT'],
    [5, 'DELETE'],
    [5, 'PATCH'],
    [5, 'HEAD'],
    [5, 'OPTIONS'],
    [2, 'PROPFIND'],
    [2, 'SEARCH'],
    [2, 'FUZZ'],
    [2, 'get'],
  ] as const);
  const plain = method === 'POST' && r.chance(0.5);
  const path = plain ? `/api/devices/${r.chance(0.85) ? DEVICE : `ghost-${r.int(100)}`}/commands` : restPath(r);
  const headers = plain ? (r.chance(0.5) ? { 'content-type': 'application/json' } : {}) : restHeaders(r);
  let body = method === 'GET' || method === 'HEAD' ? (r.chance(0.1) ? restBody(r, limit) : null) : restBody(r, limit);
  if (body && headers['content-encoding'] && r.chance(0.5)) body = gzipSync(body);
  const chunked = body !== null && r.chance(0.3);
  const c: RestCase = { index, kind: plain ? 'command' : 'random', method, path, headers, body, chunked };
  if (plain) c.expect = predictRest(path, body ?? Buffer.alloc(0), limit);
  return c;
}

/** What a plain POST /api/devices/{id}/commands must get (docs/protocol.md "HTTP"). */
function predictRest(path: string, body: Buffer, limit: number): RestCase['expect'] {
  const device = decodeURIComponent(path.split('/')[3]!);
  if (body.length > limit) return { status: [413], code: 'PAYLOAD_TOO_LARGE' };
  if (body.subarray(0, 3).equals(Buffer.from([0xef, 0xbb, 0xbf]))) return undefined; // a BOM: the body parser may strip it
  let raw: unknown;
  try {
    raw = JSON.parse(body.toString('utf8'));
  } catch {
    return { status: [400], code: 'BAD_REQUEST' }; // not JSON, or no body at all
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) return { status: [400], code: 'BAD_REQUEST' };
  const object = raw as Record<string, unknown>;
  if (requestProblem(object, true)) return { status: [400], code: 'BAD_REQUEST' };
  if (device !== DEVICE) return { status: [404], code: 'UNKNOWN_DEVICE' };
  return { status: [200, 429], result: answerOf(object.cmd_str as string) };
}

function describeRest(c: RestCase): string {
  if (c.raw) return `REST case #${c.index} (raw bytes): ${JSON.stringify(c.raw.subarray(0, 300).toString('latin1'))}${c.raw.length > 300 ? '…' : ''}`;
  const body = c.body ? `${c.body.length} bytes ${JSON.stringify(c.body.subarray(0, 200).toString('latin1'))}${c.body.length > 200 ? '…' : ''}` : 'no body';
  const headers = JSON.stringify(Object.fromEntries(Object.entries(c.headers).map(([k, v]) => [k, v.length > 80 ? `${v.slice(0, 80)}… (${v.length})` : v])));
  const path = c.path.length > 300 ? `${c.path.slice(0, 300)}… (${c.path.length} chars)` : c.path;
  return `REST case #${c.index} (${c.kind}): ${c.method} ${path} headers ${headers}${c.chunked ? ' chunked' : ''}, ${body}`;
}

interface HttpAnswer {
  status?: number;
  contentType?: string;
  body: Buffer;
  error?: string;
  /** The HTTP client refused to send it (an invalid path or header): not the hub's doing. */
  unsent?: boolean;
}

function sendRest(port: number, c: RestCase, agent: Agent, retry = true): Promise<HttpAnswer> {
  return new Promise((resolve) => {
    let req: ReturnType<typeof httpRequest>;
    const headers: Record<string, string> = { ...c.headers };
    // Node writes the body of a GET, DELETE or OPTIONS unframed unless told to chunk it.
    if (c.body) {
      if (c.chunked) headers['transfer-encoding'] = 'chunked';
      else headers['content-length'] = String(c.body.length);
    }
    try {
      req = httpRequest({ host: '127.0.0.1', port, method: c.method, path: c.path, headers, agent, signal: AbortSignal.timeout(5000) }, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size <= 1 << 20) chunks.push(chunk);
        });
        res.on('end', () => resolve({ status: res.statusCode, contentType: res.headers['content-type'], body: Buffer.concat(chunks) }));
        res.on('error', (error) => resolve({ status: res.statusCode, body: Buffer.concat(chunks), error: error.message }));
      });
    } catch (error) {
      resolve({ body: Buffer.alloc(0), unsent: true, error: (error as Error).message });
      return;
    }
    req.on('error', (error: NodeJS.ErrnoException) => {
      // A kept-alive socket the server closed just as it was reused: try once more on a new one.
      if (retry && req.reusedSocket && error.code === 'ECONNRESET') return void sendRest(port, c, agent, false).then(resolve);
      resolve({ body: Buffer.alloc(0), error: `${error.name}: ${error.code ?? error.message}` });
    });
    if (c.body && c.body.length > 0) {
      if (c.chunked && c.body.length > 1) {
        const cut = Math.floor(c.body.length / 2);
        req.write(c.body.subarray(0, cut));
        req.write(c.body.subarray(cut));
      } else {
        req.write(c.body);
      }
    }
    req.end();
  });
}

function sendRawHttp(port: number, bytes: Buffer): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    let received = '';
    const finish = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(received);
    };
    const timer = setTimeout(finish, 500);
    socket.on('error', () => {});
    socket.on('data', (data) => (received += data.toString('latin1')));
    socket.on('close', finish);
    socket.on('connect', () => socket.write(bytes));
  });
}

// ---------------------------------------------------------------------------------------------
// The world: hub, devices, clients, watchers

/** Runs `run` on items 0..count-1, `width` at a time, starting none after `deadline`. Returns how many ran. */
async function pool(count: number, width: number, deadline: number, run: (index: number) => Promise<void>): Promise<number> {
  let next = 0;
  const worker = async () => {
    while (next < count && Date.now() < deadline) await run(next++);
  };
  await Promise.all(Array.from({ length: width }, worker));
  return next;
}

/** A device made of a bare MQTT.js client that answers every command at once, from memory. */
async function scriptedDevice(hub: Hub, id: string, problems: string[]): Promise<MqttClient> {
  const client = await connectMqtt(hub.urls.mqtt, {
    clientId: id,
    clean: false,
    will: { topic: `${P}/devices/${id}/status`, payload: Buffer.from('{"online":false}'), qos: 1, retain: true },
  });
  client.on('error', (error) => problems.push(`device ${id}: ${error.message}`));
  client.on('message', (topic, payload) => {
    if (topic !== `${P}/devices/${id}/command`) return;
    let command: Command;
    try {
      command = JSON.parse(payload.toString()) as Command;
    } catch {
      problems.push(`device ${id} got a command that is not JSON: ${payload.subarray(0, 200).toString()}`);
      return;
    }
    const response = { type: 'response', id: command.id, result: answerOf(command.cmd_str), error: '', exit_code: 0, duration_ms: 0, truncated: false };
    client.publish(`${P}/devices/${id}/response`, JSON.stringify(response), { qos: 1 });
  });
  await client.subscribeAsync(`${P}/devices/${id}/command`, { qos: 1 });
  await waitFor(() => hub.device(id)?.online, { what: `${id} online` });
  return client;
}

interface World {
  hub: Hub;
  clients: RequestClient[];
  /** Everything that went wrong outside an assertion: uncaught errors, offline events, forged statuses. */
  incidents: string[];
  /** Raw cases on the wire right now, for the report of an incident. */
  inFlight: Map<number, string>;
  /** What happened to each id, with times: the raw cases played with it, its online and offline events. */
  history: Map<string, string[]>;
  started: number;
  checks: number;
}

type BrokerClient = { closed: boolean; connected: boolean; conn: { destroyed?: boolean } };

/** The clients the broker holds other than ours. */
function otherClients(hub: Hub): [string, BrokerClient][] {
  const ours = new Set([DEVICE, AGENT, 'fuzz-watch', ...CLIENTS]);
  const clients = (hub.broker as unknown as { clients: Record<string, BrokerClient> }).clients;
  return Object.entries(clients).filter(([id]) => !ours.has(id));
}

function describeClients(clients: [string, BrokerClient][]): string {
  const list = clients.slice(0, 10).map(([id, c]) => `${JSON.stringify(id.slice(0, 40))} (closed ${c.closed}, connected ${c.connected}, socket destroyed ${c.conn.destroyed})`);
  return `the broker still holds ${clients.length} other client(s): ${list.join('; ')}`;
}

function note(world: World, id: string, event: string): void {
  let list = world.history.get(id);
  if (!list) world.history.set(id, (list = []));
  list.push(`+${Date.now() - world.started} ms ${event}`);
  if (list.length > 400) list.splice(0, 100);
}

/** The story of one id: from a little before it last came online to the end. */
function historyOf(world: World, id: string): string {
  const list = world.history.get(id) ?? ['nothing'];
  const lastOnline = list.findLastIndex((line) => / online \(/.test(line));
  const from = Math.max(0, Math.min(lastOnline >= 0 ? lastOnline - 6 : list.length - 20, list.length - 20));
  return `history of ${JSON.stringify(id)} (times from the start of the test):\n    ${list.slice(from, from + 30).join('\n    ')}`;
}

function where(part: string): string {
  return `${part} — seed ${SEED}; replay with: ${REPLAY}`;
}

/** The hub still answers correctly: health, devices, round trips over MQTT and REST, new clients, nothing left over. */
async function assertHealthy(world: World, after: string): Promise<void> {
  const { hub } = world;
  const at = where(`after ${after}`);
  world.checks++;
  expect(world.incidents, `incidents ${at}`).toEqual([]);

  const health = await fetch(`${hub.urls.http}/healthz`, { signal: AbortSignal.timeout(5000) });
  expect(health.status, `/healthz ${at}`).toBe(200);
  const healthBody = (await health.json()) as { ok: boolean; online: number; devices: number };
  expect(healthBody, `/healthz ${at}`).toMatchObject({ ok: true, online: expect.any(Number), devices: expect.any(Number), inflight: expect.any(Number) });
  expect(healthBody.online, `/healthz online count ${at}`).toBeGreaterThanOrEqual(2);

  for (const id of [DEVICE, AGENT]) {
    expect(hub.device(id), `${id} ${at}`).toMatchObject({ online: true });
    expect(hub.status(id), `${id} status ${at}`).toMatchObject({ online: true });
  }

  // A new client connects and runs a command on each device over MQTT.
  const nonce = `n${world.checks}x${SEED.toString(36)}`;
  const probe = await RequestClient.connect(hub.urls.mqtt, `fuzz-probe-${world.checks}`);
  expect(await probe.request({ device: DEVICE, order: 'exec_bash', cmd_str: `echo ${nonce}` }, 10_000), `MQTT round trip to ${DEVICE} ${at}`).toMatchObject({
    type: 'response',
    status: 'ok',
    device: DEVICE,
    result: answerOf(`echo ${nonce}`),
    exit_code: 0,
  });
  expect(await probe.request({ device: AGENT, order: 'exec_bash', cmd_str: `echo ${nonce} $((6 * 7))` }, 10_000), `MQTT round trip to ${AGENT} ${at}`).toMatchObject({
    status: 'ok',
    device: AGENT,
    result: `${nonce} 42`,
    error: '',
    exit_code: 0,
  });
  // A new subscriber gets the retained status of the device: online.
  const statuses: unknown[] = [];
  probe.client.on('message', (topic, payload) => {
    if (topic === `${P}/devices/${DEVICE}/status`) statuses.push(JSON.parse(payload.toString()));
  });
  await probe.client.subscribeAsync(`${P}/devices/${DEVICE}/status`, { qos: 1 });
  await waitFor(() => statuses.length > 0, { timeoutMs: 5000, what: `the retained status of ${DEVICE} ${at}` });
  expect(statuses[0], `retained status of ${DEVICE} ${at}`).toMatchObject({ online: true, transport: 'mqtt' });
  await probe.client.endAsync();

  // And over REST.
  const rest = await fetch(`${hub.urls.http}/api/devices/${AGENT}/commands`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ id: nonce, order: 'exec_bash_ret_okng_only', cmd_str: 'test 42 -eq $((6 * 7))' }),
    signal: AbortSignal.timeout(10_000),
  });
  expect({ status: rest.status, body: await rest.json() }, `REST round trip to ${AGENT} ${at}`).toMatchObject({ status: 200, body: { id: nonce, status: 'ok', result: 'ok', exit_code: 0 } });

  // The long-lived clients are still connected, and nothing is left in flight.
  for (const client of world.clients) expect(client.client.connected, `${client.clientId} still connected ${at}`).toBe(true);
  await waitFor(() => hub.inflight === 0, { timeoutMs: 5000, what: `no command in flight ${at} (${hub.inflight} left)` });
  expect(world.incidents, `incidents ${at}`).toEqual([]);
}

/**
 * Nothing of the fuzz is left once it is over: no raw connection the broker still serves, no
 * device online but ours (a raw client that became a device goes offline with its connection;
 * a takeover may hold one online 5 s). Checked at the end only, so that all three parts run.
 * Returns a note on closed clients the broker still lists (they hold no socket).
 */
async function assertNoLeftovers(world: World): Promise<string> {
  const { hub } = world;
  const at = where('all three parts');
  const live = () => otherClients(hub).filter(([, c]) => !c.closed);
  await waitFor(() => live().length === 0, { timeoutMs: 5000, what: `the raw connections to be gone ${at}` }).catch((error: Error) => {
    throw new Error(`${error.message}: ${describeClients(live())}\n  ${live().slice(0, 3).map(([id]) => historyOf(world, id)).join('\n  ')}`);
  });
  const strays = () => hub.devices().filter((d) => d.online && d.id !== DEVICE && d.id !== AGENT);
  await waitFor(() => strays().length === 0, { timeoutMs: 8000, what: `only ${DEVICE} and ${AGENT} online ${at}` }).catch((error: Error) => {
    const clients = (hub.broker as unknown as { clients: Record<string, BrokerClient> }).clients;
    const list = strays().map((d) => `${JSON.stringify(d.id)} online since ${d.connectedAt} (the broker lists ${clients[d.id] ? `a client with that id, closed: ${clients[d.id]!.closed}` : 'no client with that id'})`);
    throw new Error(
      `${error.message}; online without a connection: ${list.join(', ')}\n  ${strays().slice(0, 3).map((d) => historyOf(world, d.id)).join('\n  ')}`,
    );
  });
  const zombies = otherClients(hub);
  return zombies.length > 0 ? `the broker still lists ${zombies.length} closed client(s) (${zombies.slice(0, 5).map(([id]) => JSON.stringify(id)).join(', ')})` : 'no client left';
}

// ---------------------------------------------------------------------------------------------
// The parts

async function fuzzRawMqtt(world: World): Promise<string> {
  const { hub } = world;
  const started = Date.now();
  const failures: string[] = [];
  const kinds = new Map<string, number>();
  const ran = await pool(COUNT.raw, 24, started + BUDGET_MS.raw, async (index) => {
    const c = rawCase(index);
    kinds.set(c.kind, (kinds.get(c.kind) ?? 0) + 1);
    world.inFlight.set(index, describeRaw(c));
    note(world, c.clientId, `case #${index} (${c.kind}) starts`);
    const companion = c.companion;
    const [outcome] = await Promise.all([
      playRaw(hub.ports.mqtt, c),
      companion ? sleep(companion.afterMs).then(() => playRaw(hub.ports.mqtt, companion.case)) : undefined,
    ]);
    note(world, c.clientId, `case #${index} ends: ${JSON.stringify(outcome)}`);
    if (companion) note(world, companion.case.clientId, `case #${index}: its second connection (CONNECT, dropped ${companion.case.holdMs} ms later) started ${companion.afterMs} ms after the first`);
    world.inFlight.delete(index);
    if (c.probe && !(outcome.connack === 0 && outcome.suback && outcome.pingresp)) {
      failures.push(`the broker did not complete CONNECT/SUBSCRIBE/PINGREQ within 3 s during the storm (${JSON.stringify(outcome)}): ${describeRaw(c)}`);
    }
    if (c.expectConnack !== undefined && outcome.connack !== c.expectConnack) {
      failures.push(`expected CONNACK ${c.expectConnack}, got ${outcome.connack ?? 'none'} (${JSON.stringify(outcome)}): ${describeRaw(c)}`);
    }
  });
  const ms = Date.now() - started;
  expect(failures.slice(0, 10), where(`raw MQTT: ${failures.length} of ${ran} cases failed`)).toEqual([]);
  expect(ran, where('raw MQTT: cases run within the time budget')).toBeGreaterThanOrEqual(Math.min(COUNT.raw, 300));
  return `raw MQTT ${ran} cases in ${ms} ms (${[...kinds].map(([k, n]) => `${k} ${n}`).join(', ')})`;
}

interface Sent {
  index: number;
  client: number;
  payload: Buffer;
  kind: string;
  qos: 0 | 1;
  retain: boolean;
  /** [id, device] the Reply must carry. */
  key: string;
  idReadable: boolean;
  /** Why a Reply does not fit this publish, or null when it does. */
  misfit: (reply: Reply) => string | null;
}

function expectationOf(payload: Buffer, limit: number, hub: Hub): Pick<Sent, 'key' | 'idReadable' | 'misfit'> {
  const code = (wanted: string) => (reply: Reply) => (reply.status === 'error' && reply.code === wanted ? null : `expected ${wanted}`);
  if (payload.length > limit) return { key: JSON.stringify([null, null]), idReadable: false, misfit: code('PAYLOAD_TOO_LARGE') };
  let raw: unknown;
  try {
    raw = JSON.parse(payload.toString('utf8'));
  } catch {
    return { key: JSON.stringify([null, null]), idReadable: false, misfit: code('BAD_REQUEST') };
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) return { key: JSON.stringify([null, null]), idReadable: false, misfit: code('BAD_REQUEST') };
  const object = raw as Record<string, unknown>;
  const id = typeof object.id === 'string' ? object.id : null;
  const device = typeof object.device === 'string' ? object.device : null;
  const key = JSON.stringify([id, device]);
  const idReadable = id !== null && codePoints(id) <= 64;
  if (requestProblem(object, false)) return { key, idReadable, misfit: code('BAD_REQUEST') };
  if (device !== DEVICE) {
    // A valid id no device ever used; or one a raw client of part 1 used as a device, offline since.
    return { key, idReadable, misfit: (reply) => code(hub.device(device!) ? 'DEVICE_OFFLINE' : 'UNKNOWN_DEVICE')(reply) };
  }
  const result = answerOf(object.cmd_str as string);
  return {
    key,
    idReadable,
    misfit: (reply) =>
      reply.status === 'ok'
        ? reply.result === result
          ? null
          : `expected the device's answer ${JSON.stringify(result.slice(0, 80))}`
        : reply.code === 'BUSY'
          ? null
          : `expected ok or BUSY`,
  };
}

function describeSent(s: Sent): string {
  const text = s.payload.subarray(0, 300).toString('utf8');
  return `publish #${s.index} (${s.kind}) by ${CLIENTS[s.client]} qos ${s.qos}${s.retain ? ' retained' : ''}, ${s.payload.length} bytes: ${JSON.stringify(text)}${s.payload.length > 300 ? '…' : ''}`;
}

function describeReply(reply: Reply): string {
  const text = JSON.stringify(reply);
  return text.length > 400 ? `${text.slice(0, 400)}…` : text;
}

async function fuzzRequests(world: World): Promise<string> {
  const { hub, clients } = world;
  const limit = hub.config.maxPayloadBytes;
  const started = Date.now();
  const seen = clients.map((c) => c.replies.length);
  const sent: Sent[][] = clients.map(() => []);
  const failures: string[] = [];
  // Four publishes at a time per client, in sequence per worker.
  const perClient = Math.ceil(COUNT.requests / clients.length);
  await Promise.all(
    clients.map((client, ci) =>
      pool(perClient, 4, started + BUDGET_MS.requests, async (k) => {
        const index = k * clients.length + ci;
        if (index >= COUNT.requests) return;
        const r = caseRng(2, index);
        const payload = requestPayload(r, `m${index}-${r.int(1e6).toString(36)}`, limit);
        const qos = r.chance(0.8) ? 1 : 0;
        const retain = r.chance(0.1);
        const s: Sent = { index, client: ci, payload: payload.bytes, kind: payload.kind, qos, retain, ...expectationOf(payload.bytes, limit, hub) };
        sent[ci]!.push(s);
        try {
          await client.client.publishAsync(`${P}/clients/${client.clientId}/request`, payload.bytes, { qos, retain });
        } catch (error) {
          failures.push(`publish failed (${(error as Error).message}): ${describeSent(s)}`);
        }
      }),
    ),
  );
  const publishMs = Date.now() - started;
  const total = sent.reduce((n, list) => n + list.length, 0);
  const readable = sent.reduce((n, list) => n + list.filter((s) => s.idReadable).length, 0);

  // Every publish gets its Reply; then a moment more, to catch any second Reply.
  await waitFor(() => clients.every((c, ci) => c.replies.length - seen[ci]! >= sent[ci]!.length), { timeoutMs: 15_000, what: 'all replies' }).catch(() => {});
  await sleep(300);

  let replies = 0;
  let ok = 0;
  const codes = new Map<string, number>();
  clients.forEach((client, ci) => {
    const got = client.replies.slice(seen[ci]!);
    replies += got.length;
    const open = [...sent[ci]!];
    for (const reply of got) {
      if (reply.type !== 'response' || (reply.status !== 'ok' && reply.status !== 'error')) {
        failures.push(`a Reply with a bad type or status: ${describeReply(reply)}`);
        continue;
      }
      if (reply.status === 'error') {
        codes.set(reply.code, (codes.get(reply.code) ?? 0) + 1);
        if (!CODES.includes(reply.code)) failures.push(`a Reply with an unknown code: ${describeReply(reply)}`);
        if (typeof reply.message !== 'string' || reply.message.length === 0) failures.push(`a Reply without a message: ${describeReply(reply)}`);
      } else {
        ok++;
      }
      const key = JSON.stringify([reply.id, reply.device]);
      const candidates = open.filter((s) => s.key === key);
      const match = candidates.find((s) => s.misfit(reply) === null);
      if (match) {
        open.splice(open.indexOf(match), 1);
      } else if (candidates.length > 0) {
        failures.push(`wrong Reply (${candidates[0]!.misfit(reply)}): ${describeReply(reply)} to ${describeSent(candidates[0]!)}`);
        open.splice(open.indexOf(candidates[0]!), 1);
      } else {
        failures.push(`a Reply to no publish (a second Reply?): ${describeReply(reply)}`);
      }
    }
    for (const s of open) failures.push(`no Reply${s.idReadable ? ` (id readable, ${JSON.stringify(JSON.parse(s.key)[0])})` : ''}: ${describeSent(s)}`);
  });
  const ms = Date.now() - started;
  expect(failures.slice(0, 10), where(`request topics: ${failures.length} problems in ${total} publishes`)).toEqual([]);
  expect(replies, where('request topics: one Reply per publish')).toBe(total);
  expect(total, where('request topics: publishes within the time budget')).toBeGreaterThanOrEqual(Math.min(COUNT.requests, 300));
  return (
    `request topics ${total} publishes (${readable} with a readable id of at most 64 characters, all answered) → ${replies} Replies ` +
    `(ok ${ok}, ${[...codes].map(([c, n]) => `${c} ${n}`).join(', ')}) in ${ms} ms (publishing ${publishMs} ms)`
  );
}

async function fuzzRest(world: World): Promise<string> {
  const { hub } = world;
  const limit = hub.config.maxPayloadBytes;
  const started = Date.now();
  const agent = new Agent({ keepAlive: true, maxSockets: 16 });
  cleanup(() => agent.destroy());
  const failures: string[] = [];
  const statuses = new Map<string, number>();
  let unsent = 0;
  const ran = await pool(COUNT.rest, 16, started + BUDGET_MS.rest, async (index) => {
    const c = restCase(index, limit);
    if (c.raw) {
      const answer = await sendRawHttp(hub.ports.http, c.raw);
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(answer)?.[1];
      statuses.set(`raw ${status ?? 'none'}`, (statuses.get(`raw ${status ?? 'none'}`) ?? 0) + 1);
      if (status && Number(status) >= 500) failures.push(`answered ${status}: ${describeRest(c)}`);
      return;
    }
    const answer = await sendRest(hub.ports.http, c, agent);
    if (answer.unsent) {
      unsent++;
      return;
    }
    if (answer.status === undefined) {
      failures.push(`no answer (${answer.error}): ${describeRest(c)}`);
      return;
    }
    statuses.set(String(answer.status), (statuses.get(String(answer.status)) ?? 0) + 1);
    const text = answer.body.toString('utf8');
    if (answer.status >= 500) failures.push(`answered ${answer.status} ${text.slice(0, 200)}: ${describeRest(c)}`);
    if (answer.error) failures.push(`the answer broke off (${answer.error}): ${describeRest(c)}`);
    if (text.includes('"devDependencies"')) failures.push(`served package.json: ${describeRest(c)}`);
    let json: { code?: unknown; status?: unknown; result?: unknown } | undefined;
    if (answer.contentType?.includes('json') && c.method !== 'HEAD') {
      try {
        json = JSON.parse(text) as typeof json;
      } catch {
        failures.push(`a JSON answer that is not JSON (${answer.status} ${text.slice(0, 100)}): ${describeRest(c)}`);
      }
      if (answer.status >= 400 && !CODES.includes(json?.code as string)) failures.push(`an error answer without a known code (${answer.status} ${text.slice(0, 200)}): ${describeRest(c)}`);
    }
    if (c.expect) {
      const { status, code, result } = c.expect;
      const good =
        status.includes(answer.status) &&
        (answer.status === 200 ? json?.status === 'ok' && json.result === result : answer.status === 429 ? json?.code === 'BUSY' : json?.code === code);
      if (!good) failures.push(`expected ${status.join(' or ')} ${code ?? 'ok'}, got ${answer.status} ${text.slice(0, 200)}: ${describeRest(c)}`);
    }
  });
  const ms = Date.now() - started;
  expect(failures.slice(0, 10), where(`REST: ${failures.length} problems in ${ran} requests`)).toEqual([]);
  expect(ran, where('REST: requests within the time budget')).toBeGreaterThanOrEqual(Math.min(COUNT.rest, 200));
  const histogram = [...statuses].sort(([a], [b]) => a.localeCompare(b)).map(([s, n]) => `${s}: ${n}`).join(', ');
  return `REST ${ran} requests in ${ms} ms (${histogram}${unsent ? `; ${unsent} refused by the HTTP client itself` : ''})`;
}

// ---------------------------------------------------------------------------------------------

it(
  `keeps answering correctly through a few thousand random packets, Requests and HTTP requests (seed ${SEED})`,
  async () => {
    expect(INVALID_IDS.filter((id) => ID_RULE.test(id)), 'ids meant to be invalid').toEqual([]);
    expect([...ODD_CLIENT_IDS, ...ODD_DEVICE_IDS].filter((id) => !ID_RULE.test(id)), 'ids meant to be valid').toEqual([]);
    expect(ODD_CLIENT_IDS.filter((id) => ODD_DEVICE_IDS.includes(id)), 'ids of part 1 and of parts 2 and 3').toEqual([]);
    const hub = await startTestHub();
    const world: World = { hub, clients: [], incidents: [], inFlight: new Map(), history: new Map(), started: Date.now(), checks: 0 };
    const inFlightNow = () => [...world.inFlight.values()].slice(0, 24).join('\n    ') || 'no raw case';

    const onCrash = (error: unknown) => {
      world.incidents.push(`uncaught: ${error instanceof Error ? error.stack : String(error)}\n  raw cases in flight:\n    ${inFlightNow()}`);
    };
    process.on('uncaughtException', onCrash);
    process.on('unhandledRejection', onCrash);
    cleanup(() => {
      process.off('uncaughtException', onCrash);
      process.off('unhandledRejection', onCrash);
    });
    hub.on('online', (device) => note(world, device.id, `online (${device.transport})`));
    hub.on('offline', (device, reason) => note(world, device.id, `offline (${reason})`));
    hub.on('offline', (device, reason) => {
      if (device.id === DEVICE || device.id === AGENT) world.incidents.push(`${device.id} went offline (${reason}); raw cases in flight:\n    ${inFlightNow()}`);
    });

    const deviceProblems: string[] = [];
    await scriptedDevice(hub, DEVICE, deviceProblems);
    await startAgents(hub, [AGENT]);
    // A third party watching the status of both devices must never see them offline.
    const watcher = await connectMqtt(hub.urls.mqtt, { clientId: 'fuzz-watch' });
    watcher.on('error', (error) => world.incidents.push(`watcher: ${error.message}`));
    watcher.on('message', (topic, payload) => {
      let status: { online?: unknown };
      try {
        status = JSON.parse(payload.toString()) as typeof status;
      } catch {
        status = {};
      }
      if (status.online !== true) world.incidents.push(`${topic} carried ${payload.subarray(0, 200).toString()}; raw cases in flight:\n    ${inFlightNow()}`);
    });
    await watcher.subscribeAsync([`${P}/devices/${DEVICE}/status`, `${P}/devices/${AGENT}/status`], { qos: 1 });
    for (const id of CLIENTS) {
      const client = await RequestClient.connect(hub.urls.mqtt, id);
      client.client.on('error', (error) => world.incidents.push(`${id}: ${error.message}`));
      world.clients.push(client);
    }
    const deviceCheck = () => expect(deviceProblems, where('the scripted device')).toEqual([]);
    await assertHealthy(world, 'setup');

    const summary: string[] = [];
    summary.push(await fuzzRawMqtt(world));
    deviceCheck();
    await assertHealthy(world, 'part 1, raw MQTT bytes');

    summary.push(await fuzzRequests(world));
    deviceCheck();
    await assertHealthy(world, 'part 2, request topics');

    summary.push(await fuzzRest(world));
    deviceCheck();
    await assertHealthy(world, 'part 3, REST');
    summary.push(await assertNoLeftovers(world));

    console.log(`fuzz seed ${SEED}${SCALE !== 1 ? ` scale ${SCALE}` : ''}:\n  ${summary.join('\n  ')}`);
  },
  // A ceiling only: each part stops starting cases at its budget, and a run takes about 10 s.
  60_000 + BUDGET_MS.raw + BUDGET_MS.requests + BUDGET_MS.rest,
);
