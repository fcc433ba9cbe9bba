/**
 * The `cluster` target: N hub processes on one Redis logical database and one data dir. The
 * bench claims an empty database of the machine's Redis (15 down to 1, never 0), flushes it
 * before and after, and only reads the Redis process (its CPU time) and INFO.
 */
import { execFileSync } from 'node:child_process';
import { Redis } from 'ioredis';
import type { ManagedChild, Supervisor } from './processes.js';
import { startHub, type RunningTarget, type TransportName } from './targets.js';

const CLAIM_KEY = 'rhizosphere-bench:claim';
/** The claim outlives a bench that died without its cleanup, but not for ever. */
const CLAIM_TTL_S = 6 * 3600;

/** REDIS_URL without a database: redis://127.0.0.1:6379 by default. */
export function redisBaseUrl(): string {
  return (process.env.REDIS_URL ?? 'redis://127.0.0.1:6379').replace(/\/\d*$/, '');
}

export interface RedisClaim {
  db: number;
  /** The URL with the database, for --cluster. */
  url: string;
  redis: Redis;
}

/** Claims held now, for the cleanup on Ctrl-C and exit. */
const held = new Set<RedisClaim>();

function connect(url: string): Redis {
  const redis = new Redis(url, { lazyConnect: true, connectTimeout: 3000, maxRetriesPerRequest: 1, retryStrategy: () => null });
  redis.on('error', () => {});
  return redis;
}

/**
 * An empty database, marked with a key that expires (as test/cluster.test.ts does, so that a
 * test run and a bench do not take the same one), flushed and marked again.
 */
export async function claimRedisDb(): Promise<RedisClaim> {
  const base = redisBaseUrl();
  for (let db = 15; db >= 1; db--) {
    const url = `${base}/${db}`;
    const redis = connect(url);
    // connect() rejects with "Connection is closed."; the socket's own error says why.
    let cause: NodeJS.ErrnoException | undefined;
    redis.on('error', (error: NodeJS.ErrnoException) => (cause ??= error));
    try {
      await redis.connect();
    } catch (error) {
      redis.disconnect();
      const e = cause ?? (error as NodeJS.ErrnoException);
      throw new Error(`no Redis at ${base} (${e.code ?? e.message}); set REDIS_URL`);
    }
    if ((await redis.dbsize()) === 0 && (await redis.set(CLAIM_KEY, String(process.pid), 'EX', CLAIM_TTL_S, 'NX')) === 'OK') {
      await redis.flushdb();
      await redis.set(CLAIM_KEY, String(process.pid), 'EX', CLAIM_TTL_S);
      const claim = { db, url, redis };
      held.add(claim);
      return claim;
    }
    redis.disconnect();
  }
  throw new Error(`no empty database 1-15 in the Redis at ${base}`);
}

/** FLUSHDB of the claimed database (the hubs must be stopped first), then disconnect. */
export async function releaseRedisDb(claim: RedisClaim): Promise<void> {
  if (!held.delete(claim)) return;
  try {
    if (claim.db !== 0) await claim.redis.flushdb();
  } finally {
    claim.redis.disconnect();
  }
}

/**
 * For Ctrl-C and process exit, when nothing asynchronous runs any more: redis-cli does the
 * flush, half a second after the nodes were SIGKILLed so that none of them writes after it.
 */
export function releaseAllSync(): void {
  if (held.size > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 500);
  for (const claim of held) {
    if (claim.db !== 0) {
      try {
        execFileSync('redis-cli', ['-u', claim.url, 'FLUSHDB'], { stdio: 'ignore', timeout: 5000 });
      } catch {
        console.error(`bench: could not flush ${claim.url}; run redis-cli -u ${claim.url} FLUSHDB`);
      }
    }
    claim.redis.disconnect();
  }
  held.clear();
}

/** used_memory of the whole Redis instance, in bytes (INFO memory). */
export async function redisUsedMemory(claim: RedisClaim): Promise<number> {
  const info = await claim.redis.info('memory');
  return Number(/^used_memory:(\d+)/m.exec(info)?.[1] ?? NaN);
}

/** The machine's redis-server process, to read its CPU time; null when there is none to see. */
export function redisPid(): number | null {
  try {
    const pids = execFileSync('pgrep', ['-x', 'redis-server'], { encoding: 'utf8' }).trim().split('\n').map(Number);
    return pids.length === 1 && pids[0]! > 0 ? pids[0]! : null;
  } catch {
    return null;
  }
}

/**
 * N nodes, one after another, each once its /healthz answers: the first one starts alone (only
 * a node that starts alone resumes unfinished jobs), the others join it. Each node has its own
 * data dir: the first one's holds the registered fleet, the others start empty and take the
 * devices and the token from the cluster's replication (each is waited for until its /healthz
 * counts `fleet` devices). `started` hands each process over for the cleanup as soon as it is
 * spawned.
 */
export async function startCluster(
  sup: Supervisor,
  dataDir: string,
  transport: TransportName,
  claim: RedisClaim,
  nodes: number,
  fleet: number,
  spawned: (child: ManagedChild) => void,
): Promise<RunningTarget[]> {
  const out: RunningTarget[] = [];
  for (let k = 1; k <= nodes; k++) {
    const dir = k === 1 ? dataDir : sup.tempDir(`rhizo-bench-node-${k}-`);
    const node = await startHub(sup, dir, transport, undefined, { name: `node-${k}`, extraArgs: ['--cluster', claim.url, '--node-id', `node-${k}`], spawned });
    while (((await healthCounts(node.httpUrl!))?.devices ?? 0) < fleet) {
      if (!node.child.running) throw new Error(`node-${k} exited:\n${node.child.tail()}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    out.push(node);
  }
  return out;
}

/** The /healthz counts of a node. */
export async function healthCounts(httpUrl: string): Promise<{ devices: number; online: number } | null> {
  try {
    const response = await fetch(`${httpUrl}/healthz`, { signal: AbortSignal.timeout(5000) });
    const body = (await response.json()) as { devices: number; online: number };
    return { devices: body.devices, online: body.online };
  } catch {
    return null;
  }
}
