/**
 * The Redis side of a cluster: the message bus (src/cluster/route-emitter.ts: a message goes to
 * the nodes that subscribe to it), Aedes' Redis persistence (retained messages, sessions and
 * their queues, wills), plus one connection for the hub's own bookkeeping (node heartbeats,
 * replication) and one for the blocking read of the replication stream. The persistence is
 * CommonJS without types, hence `createRequire` and the small interface below.
 */
import { createRequire } from 'node:module';
import type { Redis, RedisOptions } from 'ioredis';
import type { Logger } from '../log.js';
import { coalesceWrites } from '../outbound.js';
import { RouteEmitter } from './route-emitter.js';

const require = createRequire(import.meta.url);

type PersistenceFactory = (options: Record<string, unknown>) => unknown;

// Both loaded when a cluster starts, not with every hub: a standalone hub starts sooner
// without them, and in a restart under a fleet every moment it does not listen is refusals.
const aedesPersistenceRedis = (options: Record<string, unknown>): unknown => (require('aedes-persistence-redis') as PersistenceFactory)(options);
function openRedis(url: string, options: RedisOptions): Redis {
  const { Redis: Client } = require('ioredis') as typeof import('ioredis');
  return new Client(url, options);
}

/** The URL without its password, for logs and error lines. */
export function displayUrl(url: string): string {
  const parsed = new URL(url);
  if (parsed.password) parsed.password = '***';
  return parsed.toString();
}

/** The logical database the URL names (`/5`), 0 when none. */
export function databaseOf(url: string): number {
  const db = new URL(url).pathname.slice(1);
  return db === '' ? 0 : Number(db);
}

/**
 * One PING with no retries: rejects with a short reason (ECONNREFUSED, a timeout, NOAUTH …)
 * when Redis cannot be used, so a start fails at once instead of waiting for reconnects.
 */
export async function probeRedis(url: string, timeoutMs = 3000): Promise<void> {
  const client = openRedis(url, { lazyConnect: true, connectTimeout: timeoutMs, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
  // connect() rejects with "Connection is closed."; the socket's own error says why.
  let cause: NodeJS.ErrnoException | undefined;
  client.on('error', (error: NodeJS.ErrnoException) => (cause ??= error));
  try {
    await client.connect();
    await client.ping();
  } catch (error) {
    const e = cause ?? (error as NodeJS.ErrnoException);
    throw new Error(e.code ?? e.message);
  } finally {
    client.disconnect();
  }
}

export interface ClusterRedis {
  /** For `Aedes.createBroker`. */
  brokerOptions: { mq: RouteEmitter; persistence: unknown };
  /** The hub's own connection: heartbeats, replication pushes. */
  commands: Redis;
  /** Blocks on the stream of replicated changes (src/cluster/replication.ts). */
  reader: Redis;
  /** Closes what the broker does not close itself (it closes the emitter). */
  close(): void;
}

/**
 * The connections a node uses. ioredis reconnects by itself when Redis goes away; errors are
 * logged at most once per connection until it is back, not on every retry.
 */
export function connectClusterRedis(url: string, nodeId: string, log: Logger): ClusterRedis {
  const open = (role: string, extra: RedisOptions = {}) => {
    const client = openRedis(url, { connectionName: `rhizosphere-${role}`, ...extra });
    let down = false;
    client.on('error', (error: NodeJS.ErrnoException) => {
      if (down) return;
      down = true;
      log.error({ redis: displayUrl(url), connection: role, err: error.code ?? error.message }, 'cluster: Redis connection lost; retrying');
    });
    client.on('ready', () => {
      if (!down) return;
      down = false;
      log.info({ redis: displayUrl(url), connection: role }, 'cluster: Redis connection back');
    });
    return client;
  };
  const subConn = open('sub');
  const pubConn = open('pub', { enableAutoPipelining: true });
  // The bus's messages of one event-loop turn leave in one write (auto-pipelining batches only
  // within one tick; under load each message is its own tick): a node's Redis writes were a
  // quarter of its CPU.
  pubConn.on('connect', () => coalesceWrites(pubConn.stream));
  // Sessions' QoS 1 queues cost several commands per delivery (enqueue, update, clear): those
  // issued in one event-loop turn go out in one write. Redis CPU per 10000 round trips over
  // three nodes: 1.21-1.42 s without, 0.63-0.76 s with; the hubs' own CPU is the same within noise.
  const store = open('persistence', { enableAutoPipelining: true });
  const commands = open('commands');
  const reader = open('replication');
  // Redis pub/sub ignores the database number: the prefix keeps clusters on different
  // databases of one Redis apart.
  const mq = new RouteEmitter({ nodeId, prefix: `rhizosphere:${databaseOf(url)}:`, pub: pubConn, sub: subConn });
  // Each failure is also an error of one of the connections above, logged there once per outage.
  mq.state.on('error', (error) => log.debug({ err: error.message }, 'cluster: message bus error'));
  handleFloatingCommands(store, ['lrem', 'rpush']);
  const persistence = aedesPersistenceRedis({ conn: store });
  return {
    brokerOptions: { mq, persistence },
    commands,
    reader,
    close() {
      store.disconnect();
      commands.disconnect();
      reader.disconnect();
      subConn.disconnect();
      pubConn.disconnect();
    },
  };
}

/**
 * aedes-persistence-redis sends some commands without waiting for them (removing a will or a
 * delivered packet from its list): when the connection closes under them, their rejections
 * would be unhandled and end the process. Each such promise gets a handler; callers that do
 * wait still see the error.
 */
function handleFloatingCommands(client: Redis, names: ('lrem' | 'rpush')[]): void {
  for (const name of names) {
    const original = client[name].bind(client) as (...args: unknown[]) => Promise<unknown>;
    (client as unknown as Record<string, unknown>)[name] = (...args: unknown[]) => {
      const sent = original(...args);
      sent.catch(() => {});
      return sent;
    };
  }
}
