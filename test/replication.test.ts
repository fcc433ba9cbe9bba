/**
 * Credential replication between nodes with their own databases (src/cluster/replication.ts),
 * in process: two databases, one claimed Redis database, no hub.
 */
import { Redis } from 'ioredis';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { parseEntry } from '../src/cluster/replica-rows.js';
import { CHANGES_STREAM, hashKey, parseNotice, Replication } from '../src/cluster/replication.js';
import { openStores, type Stores } from '../src/store/stores.js';
import { capturedLog, cleanup, tempDir, waitFor } from './helpers.js';
import { claimDatabase } from './redis-claim.js';

const claimed = await claimDatabase();

describe('replicated rows from Redis', () => {
  it('are checked column by column; anything else is refused with a reason', () => {
    const row = { id: 'pi-1', token_hash: 'a'.repeat(64), state: 'active', tags: '["x"]', declared_tags: '[]', created_at: 1 };
    expect(parseEntry('devices', 'pi-1', JSON.stringify({ row: { ...row, extra: 1 }, node: 'n', at: 5 }))).toEqual({ entry: { row }, at: 5 });
    expect(parseEntry('devices', 'pi-1', JSON.stringify({ deleted: true, node: 'n', at: 7 }))).toEqual({ entry: { deleted: true }, at: 7 });
    for (const bad of ['{', '42', 'null', JSON.stringify({ row: { ...row, state: 'evil' } }), JSON.stringify({ row: { ...row, tags: '[1]' } }), JSON.stringify({ row: { ...row, token_hash: 'short' } }), JSON.stringify({ row: { ...row, id: 'pi-2' } }), JSON.stringify({ row: { ...row, id: 'a/b' } })]) {
      expect(parseEntry('devices', 'pi-1', bad)).toHaveProperty('problem');
    }
    expect(parseNotice(['t', 'devices', 'k', 'pi-1', 'n', 'node-a'])).toEqual({ table: 'devices', key: 'pi-1', node: 'node-a' });
    expect(parseNotice(['t', 'audit', 'k', 'x', 'n', 'node-a'])).toBeNull();
    expect(parseNotice(['t', 'devices'])).toBeNull();
    expect(parseNotice('nonsense')).toBeNull();
  });
});

describe('the log of local changes (migration 6)', () => {
  it('records credential writes by key, not connection columns nor rows applied from the cluster', () => {
    const stores = openStores(tempDir());
    cleanup(() => stores.close());
    const logged = () => stores.db.prepare('SELECT tbl, key FROM local_changes ORDER BY seq').all();
    stores.devices.add('pi-1');
    stores.devices.recordSeen([{ id: 'pi-1', transport: 'mqtt', remoteAddress: '10.0.0.1', connectedAt: 1, lastSeen: 2 }]);
    stores.users.add('ann', 'viewer', 'password-1');
    stores.devices.setTags('pi-1', ['x']);
    expect(logged()).toEqual([{ tbl: 'users', key: 'ann' }, { tbl: 'devices', key: 'pi-1' }]);
    stores.db.exec('DELETE FROM local_changes');
    stores.db.transaction(() => {
      stores.db.exec('UPDATE replication_state SET applying = 1');
      stores.db.exec(`INSERT INTO tokens (name, role, secret_hash, created_at) VALUES ('t', 'admin', '${'b'.repeat(64)}', 1)`);
      stores.db.exec('UPDATE replication_state SET applying = 0');
    })();
    expect(logged()).toEqual([]);
    stores.tokens.remove('t');
    expect(logged()).toEqual([{ tbl: 'tokens', key: 't' }]);
  });

  it('a last-seen record of a device removed meanwhile does not bring its row back', () => {
    const stores = openStores(tempDir());
    cleanup(() => stores.close());
    stores.devices.add('pi-1');
    stores.devices.remove('pi-1');
    const seen = { transport: 'mqtt' as const, remoteAddress: '10.0.0.1', connectedAt: 1, lastSeen: 2 };
    stores.devices.recordSeen([{ id: 'pi-1', ...seen, stored: true }, { id: 'anon-1', ...seen }]);
    expect(stores.devices.list().map((d) => d.id)).toEqual(['anon-1']);
  });
});

describe.skipIf(!claimed)('replication through Redis', () => {
  beforeEach(() => claimed!.fresh());
  afterAll(() => claimed?.release());

  async function node(nodeId: string, stores: Stores = openStores(tempDir())) {
    const log = capturedLog();
    const redis = new Redis(claimed!.url);
    const reader = new Redis(claimed!.url);
    let applied = 0;
    const replication = new Replication({ db: stores.db, redis, reader, nodeId, log: log.logger, onApplied: () => applied++ });
    cleanup(() => {
      stores.close();
      redis.disconnect();
    });
    cleanup(() => replication.close());
    await replication.join();
    return { stores, replication, lines: log.lines, applied: () => applied };
  }

  it('carries additions, changes and removals both ways; the first node seeds the cluster', async () => {
    const seed = openStores(tempDir());
    const token = seed.devices.add('pi-1', ['kitchen']);
    seed.users.add('ann', 'admin', 'password-1');
    const a = await node('a', seed);
    const b = await node('b');
    // Joining found what A seeded.
    expect(b.stores.devices.checkToken('pi-1', token)).toBe('ok');
    expect(b.stores.users.verify('ann', 'password-1')?.role).toBe('admin');
    expect(b.stores.db.prepare('SELECT count(*) AS n FROM local_changes').get()).toEqual({ n: 0 });

    const session = a.stores.sessions.create('ann');
    await waitFor(() => b.stores.sessions.user(session), { what: 'the session on b' });
    const rotated = b.stores.devices.rotate('pi-1');
    await waitFor(() => a.stores.devices.checkToken('pi-1', rotated) === 'ok', { what: 'the rotation on a' });
    expect(a.applied()).toBeGreaterThan(0);
    a.stores.devices.remove('pi-1');
    a.stores.sessions.end(session);
    await waitFor(() => !b.stores.devices.get('pi-1') && !b.stores.sessions.user(session), { what: 'the removals on b' });
    // A third node never sees the removed device (a tombstone, not a missing row).
    const c = await node('c');
    expect(c.stores.devices.get('pi-1')).toBeUndefined();
    expect(c.stores.users.get('ann')).toBeDefined();
  });

  it('skips a malformed entry or notice with a log line, and applies the rest', async () => {
    const b = await node('b');
    await claimed!.redis.hset(hashKey('devices'), 'bad-1', '{"row":{"id":"bad-1","state":"evil"}}');
    await claimed!.redis.xadd(CHANGES_STREAM, '*', 't', 'devices', 'k', 'bad-1', 'n', 'x');
    await claimed!.redis.xadd(CHANGES_STREAM, '*', 'junk', 'yes');
    const a = await node('a');
    a.stores.devices.add('good-1');
    await waitFor(() => b.stores.devices.get('good-1'), { what: 'good-1 on b' });
    expect(b.stores.devices.get('bad-1')).toBeUndefined();
    const warnings = b.lines.filter((l) => l.level === 40).map((l) => l.msg);
    expect(warnings).toContain('replication: malformed entry in Redis skipped');
    expect(warnings).toContain('replication: malformed notice skipped');
  });

  it('a local change made while the node was away wins over what Redis holds', async () => {
    const dir = tempDir();
    const a = await node('a', openStores(dir));
    a.stores.devices.add('pi-2');
    await waitFor(async () => (await claimed!.redis.hget(hashKey('devices'), 'pi-2')) !== null, { what: 'pi-2 pushed' });
    await a.replication.close();
    a.stores.close();
    // Away: removed on A's data dir by an admin command.
    const offline = openStores(dir);
    offline.devices.remove('pi-2');
    offline.close();
    const back = await node('a', openStores(dir));
    expect(back.stores.devices.get('pi-2')).toBeUndefined();
    expect(JSON.parse((await claimed!.redis.hget(hashKey('devices'), 'pi-2'))!)).toMatchObject({ deleted: true });
  });
});
