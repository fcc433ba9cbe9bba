/**
 * The cluster's message bus: each node's broker delivers a message to its own subscribers at
 * once, and sends it over Redis only to the nodes that subscribe to its topic, once each.
 *
 * mqemitter-redis (what Aedes offers) publishes every message to Redis under its own topic
 * and has each node SUBSCRIBE to its filters there, so a message comes back even to the node
 * that sent it, and a Request, a device's Response or a Reply to a local client made the trip
 * to Redis and back (five Redis publishes and three decodes per command round trip over three
 * nodes, where two are needed: the command to the node holding the device, the Response back).
 *
 * Routes: every node keeps the filters its broker subscribes to (clients and its own
 * listeners alike, counted) in a Redis set, and announces each change on one channel; every
 * node keeps the others' filters in memory (exact topics in a map, wildcard filters in a
 * trie). A node's route changes and its messages leave on one Redis connection and reach each
 * node on one: a node that learns of a device's subscription through a status message has
 * learnt the route first. A route is only ever added early, never missing: a node that sees
 * a stale route sends a message nobody there wants (and Redis drops it).
 *
 * A node that starts again with its id first clears the routes of its earlier run, everywhere.
 * After Redis restarts (its sets are gone), each node writes and announces all of its routes
 * again.
 */
import { EventEmitter } from 'node:events';
import { createRequire } from 'node:module';
import type { Redis } from 'ioredis';
import { hasWildcard } from '../protocol/topics.js';

const require = createRequire(import.meta.url);

type Notify = (packet: BusPacket, done: () => void) => void;
interface LocalEmitter {
  on(topic: string, notify: Notify, done?: () => void): unknown;
  removeListener(topic: string, notify: Notify, done?: () => void): unknown;
  emit(packet: BusPacket, done?: (error?: Error) => void): unknown;
  close(done: () => void): unknown;
  _matcher: { match(topic: string): unknown[] };
  closed: boolean;
}
interface Trie {
  add(filter: string, value: string): void;
  remove(filter: string, value?: string): void;
  match(topic: string): string[];
}
const MQEmitter = require('mqemitter') as (options: Record<string, unknown>) => LocalEmitter;
const { QlobberDedup } = require('qlobber') as { QlobberDedup: new (options: Record<string, unknown>) => { add(f: string, v: string): void; remove(f: string, v?: string): void; match(t: string): Set<string> } };

/** A PUBLISH as Aedes hands it to the emitter. */
export interface BusPacket {
  topic: string;
  payload: Buffer | string;
  [field: string]: unknown;
}

/** A route change as announced: `reset` drops all of the node's routes first (it started again). */
interface RouteNotice {
  node: string;
  add?: string[];
  remove?: string[];
  reset?: true;
}

/** A frame on a node's channel: 4 bytes of header length, the header (the packet but its payload) as JSON, the payload. */
export function encodePacket(packet: BusPacket): Buffer {
  const { payload, ...rest } = packet;
  const header = Buffer.from(JSON.stringify(rest));
  const body = typeof payload === 'string' ? Buffer.from(payload) : payload;
  const frame = Buffer.allocUnsafe(4 + header.length + body.length);
  frame.writeUInt32BE(header.length, 0);
  header.copy(frame, 4);
  body.copy(frame, 4 + header.length);
  return frame;
}

const reviveBuffers = (_key: string, value: unknown) => {
  const candidate = value as { type?: unknown; data?: unknown } | null;
  return candidate && candidate.type === 'Buffer' && Array.isArray(candidate.data) ? Buffer.from(candidate.data as number[]) : value;
};

export function decodePacket(frame: Buffer): BusPacket {
  const length = frame.readUInt32BE(0);
  const header = JSON.parse(frame.toString('utf8', 4, 4 + length), reviveBuffers) as Omit<BusPacket, 'payload'>;
  return { ...header, payload: frame.subarray(4 + length) } as BusPacket;
}

export interface RouteEmitterOptions {
  nodeId: string;
  /** Keys and channels start with it (Redis pub/sub ignores the database number). */
  prefix: string;
  /** Commands and PUBLISH: route changes and messages, in order. */
  pub: Redis;
  /** SUBSCRIBE only. */
  sub: Redis;
}

export class RouteEmitter {
  /** Aedes and the cluster's logging listen for 'error' here. */
  readonly state = new EventEmitter();
  private readonly local: LocalEmitter;
  /** This node's filters, counted (several clients may share one). */
  private readonly mine = new Map<string, number>();
  private pending: { add: Set<string>; remove: Set<string> } = { add: new Set(), remove: new Set() };
  private flushQueued = false;
  /** Other nodes' exact topics → the nodes. */
  private readonly exact = new Map<string, Set<string>>();
  /** Other nodes' wildcard filters. */
  private readonly wild = new QlobberDedup({ separator: '/', wildcard_one: '+', wildcard_some: '#', match_empty_levels: true });
  private readonly wildByNode = new Map<string, Set<string>>();
  private readonly exactByNode = new Map<string, Set<string>>();
  /** Told when another node's routes change, with the filters (undefined: all of that node's; direct delivery asks again). */
  onRemoteChange: (filters: string[] | undefined) => void = () => {};
  private readonly routesChannel: string;
  private readonly ownChannel: string;
  private readonly nodesKey: string;
  private started = false;
  closed = false;

  constructor(private readonly options: RouteEmitterOptions) {
    this.local = MQEmitter({ matchEmptyLevels: true });
    this.routesChannel = `${options.prefix}routes`;
    this.ownChannel = this.channelOf(options.nodeId);
    this.nodesKey = `${options.prefix}route-nodes`;
    options.sub.on('messageBuffer', (channel: Buffer, message: Buffer) => this.received(channel.toString(), message));
    options.pub.on('error', (error: Error) => this.state.emit('error', error));
    options.sub.on('error', (error: Error) => this.state.emit('error', error));
    // Redis came back: its sets may be gone (no persistence), so this node's routes are written again.
    let ready = false;
    options.pub.on('ready', () => {
      if (ready && this.started) void this.announceAll().catch((error: Error) => this.state.emit('error', error));
      ready = true;
    });
  }

  /** The local matcher: direct delivery asks it who subscribes here. */
  get _matcher(): { match(topic: string): unknown[] } {
    return this.local._matcher;
  }

  /**
   * Joins the bus: clears this node id's routes of an earlier run, listens, loads every other
   * node's routes, and announces this node's own (those added before the start included).
   */
  async start(): Promise<void> {
    const { sub, pub, nodeId } = this.options;
    await sub.subscribe(this.routesChannel, this.ownChannel);
    await this.announceAll();
    const nodes = await pub.smembers(this.nodesKey);
    for (const node of nodes) {
      if (node === nodeId) continue;
      const filters = await pub.smembers(this.routesKey(node));
      // A union with what announcements brought meanwhile: a route may come early, never go missing.
      this.applyNotice({ node, add: filters });
    }
    this.started = true;
  }

  /** Whether another node subscribes to `topic`. */
  remoteSubscribed(topic: string): boolean {
    return this.exact.has(topic) || this.wild.match(topic).size > 0;
  }

  on(topic: string, notify: Notify, done?: () => void): this {
    this.local.on(topic, notify, done);
    const count = this.mine.get(topic) ?? 0;
    this.mine.set(topic, count + 1);
    if (count === 0) this.change(topic, 'add');
    return this;
  }

  removeListener(topic: string, notify: Notify, done?: () => void): this {
    this.local.removeListener(topic, notify, done);
    const count = this.mine.get(topic) ?? 0;
    if (count <= 1) {
      this.mine.delete(topic);
      if (count === 1) this.change(topic, 'remove');
    } else this.mine.set(topic, count - 1);
    return this;
  }

  emit(packet: BusPacket, done?: (error?: Error) => void): this {
    const callback = done ?? ((error?: Error) => error && this.state.emit('error', error));
    if (this.closed) {
      callback(new Error('the cluster bus is closed'));
      return this;
    }
    const nodes = this.nodesFor(packet.topic);
    if (nodes.length === 0) {
      this.local.emit(packet, callback);
      return this;
    }
    // Route changes leave before any message that follows them.
    this.flush();
    const frame = encodePacket(packet);
    let waiting = nodes.length + 1;
    let failure: Error | undefined;
    const settle = (error?: Error) => {
      failure ??= error;
      if (--waiting === 0) callback(failure);
    };
    for (const node of nodes) this.options.pub.publish(this.channelOf(node), frame).then(() => settle(), settle);
    this.local.emit(packet, () => settle());
    return this;
  }

  close(done: () => void): void {
    if (this.closed) return done();
    this.closed = true;
    this.local.close(done);
  }

  private nodesFor(topic: string): string[] {
    const exact = this.exact.get(topic);
    const wild = this.wild.match(topic);
    if (!exact) return wild.size === 0 ? [] : [...wild];
    if (wild.size === 0) return [...exact];
    return [...new Set([...exact, ...wild])];
  }

  private channelOf(node: string): string {
    return `${this.options.prefix}node:${node}`;
  }

  private routesKey(node: string): string {
    return `${this.options.prefix}routes:${node}`;
  }

  private change(filter: string, kind: 'add' | 'remove'): void {
    const other = kind === 'add' ? this.pending.remove : this.pending.add;
    other.delete(filter);
    this.pending[kind].add(filter);
    if (!this.started || this.flushQueued) return;
    this.flushQueued = true;
    // Changes made in one event-loop turn (a device's subscriptions, a storm of connects) go out together.
    setImmediate(() => this.flush());
  }

  /** Writes and announces the pending route changes (queued on `pub` before anything sent after). */
  private flush(): void {
    this.flushQueued = false;
    if (!this.started) return;
    const { add, remove } = this.pending;
    if (add.size === 0 && remove.size === 0) return;
    this.pending = { add: new Set(), remove: new Set() };
    const { pub, nodeId } = this.options;
    const notice: RouteNotice = { node: nodeId };
    const fail = (error: Error) => this.state.emit('error', error);
    if (add.size > 0) {
      notice.add = [...add];
      pub.sadd(this.routesKey(nodeId), ...notice.add).catch(fail);
    }
    if (remove.size > 0) {
      notice.remove = [...remove];
      pub.srem(this.routesKey(nodeId), ...notice.remove).catch(fail);
    }
    pub.publish(this.routesChannel, JSON.stringify(notice)).catch(fail);
  }

  /** All of this node's routes, written anew and announced with `reset` (at the start, and after Redis came back). */
  private async announceAll(): Promise<void> {
    const { pub, nodeId } = this.options;
    const key = this.routesKey(nodeId);
    const filters = [...this.mine.keys()];
    this.pending = { add: new Set(), remove: new Set() };
    const batch = pub.multi().del(key).sadd(this.nodesKey, nodeId);
    if (filters.length > 0) batch.sadd(key, ...filters);
    batch.publish(this.routesChannel, JSON.stringify({ node: nodeId, reset: true, add: filters } satisfies RouteNotice));
    await batch.exec();
  }

  private received(channel: string, message: Buffer): void {
    if (channel === this.ownChannel) {
      let packet: BusPacket;
      try {
        packet = decodePacket(message);
      } catch (error) {
        this.state.emit('error', new Error(`cluster bus: a message that cannot be read (${(error as Error).message})`));
        return;
      }
      this.local.emit(packet);
      return;
    }
    if (channel !== this.routesChannel) return;
    let notice: RouteNotice;
    try {
      notice = JSON.parse(message.toString()) as RouteNotice;
    } catch {
      return;
    }
    if (typeof notice.node !== 'string' || notice.node === this.options.nodeId) return;
    this.applyNotice(notice);
    this.onRemoteChange(notice.reset ? undefined : [...(notice.add ?? []), ...(notice.remove ?? [])]);
  }

  private applyNotice({ node, add, remove, reset }: RouteNotice): void {
    let exact = this.exactByNode.get(node);
    let wild = this.wildByNode.get(node);
    if (!exact) this.exactByNode.set(node, (exact = new Set()));
    if (!wild) this.wildByNode.set(node, (wild = new Set()));
    if (reset) {
      for (const filter of exact) this.dropExact(filter, node);
      for (const filter of wild) this.wild.remove(filter, node);
      exact.clear();
      wild.clear();
    }
    for (const filter of remove ?? []) {
      if (hasWildcard(filter)) {
        if (wild.delete(filter)) this.wild.remove(filter, node);
      } else if (exact.delete(filter)) this.dropExact(filter, node);
    }
    for (const filter of add ?? []) {
      if (typeof filter !== 'string') continue;
      if (hasWildcard(filter)) {
        if (!wild.has(filter)) {
          wild.add(filter);
          this.wild.add(filter, node);
        }
      } else if (!exact.has(filter)) {
        exact.add(filter);
        let nodes = this.exact.get(filter);
        if (!nodes) this.exact.set(filter, (nodes = new Set()));
        nodes.add(node);
      }
    }
  }

  private dropExact(filter: string, node: string): void {
    const nodes = this.exact.get(filter);
    if (!nodes) return;
    nodes.delete(node);
    if (nodes.size === 0) this.exact.delete(filter);
  }
}
