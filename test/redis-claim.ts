/**
 * Cluster tests need Redis (REDIS_URL, default redis://127.0.0.1:6379), shared with other runs:
 * each test file claims an empty logical database (15 down to 1, never 0), flushes only that
 * one, and releases it when done.
 */
import { Redis } from 'ioredis';

export const REDIS_BASE_URL = (process.env.REDIS_URL ?? 'redis://127.0.0.1:6379').replace(/\/\d*$/, '');
const CLAIM_KEY = 'rhizosphere-test:claim';

export interface ClaimedDatabase {
  db: number;
  url: string;
  redis: Redis;
  /** Empties the claimed database (and keeps the claim). */
  fresh(): Promise<void>;
  /** Empties it and lets it go. */
  release(): Promise<void>;
}

/** An empty database of the test Redis, claimed for this run; null when Redis is unreachable or full. */
export async function claimDatabase(): Promise<ClaimedDatabase | null> {
  for (let db = 15; db >= 1; db--) {
    const redis = new Redis(`${REDIS_BASE_URL}/${db}`, { lazyConnect: true, connectTimeout: 2000, maxRetriesPerRequest: 0, retryStrategy: () => null });
    redis.on('error', () => {});
    try {
      await redis.connect();
      if ((await redis.dbsize()) === 0 && (await redis.set(CLAIM_KEY, String(process.pid), 'EX', 1800, 'NX')) === 'OK') {
        return {
          db,
          url: `${REDIS_BASE_URL}/${db}`,
          redis,
          async fresh() {
            await redis.flushdb();
            await redis.set(CLAIM_KEY, String(process.pid), 'EX', 1800);
          },
          async release() {
            await redis.flushdb();
            redis.disconnect();
          },
        };
      }
    } catch {
      redis.disconnect();
      return null;
    }
    redis.disconnect();
  }
  return null;
}
