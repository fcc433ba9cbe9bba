/**
 * How a hub notices credential changes made elsewhere (another process, another hub of a
 * cluster sharing the database): a change counter bumped by database triggers, polled twice a
 * second. Writes that are not credentials (the audit trail, jobs, last-seen times) cost
 * nothing; every credential change is seen.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it, vi } from 'vitest';
import { hashToken, newToken } from '../src/auth/secrets.js';
import { connectMqtt, startTestHub, waitFor } from './helpers.js';

describe('credential changes made by another process', () => {
  it('are picked up from the change counter, and other writes do not make the hub re-read credentials', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    const other = new Database(join(hub.config.dataDir, 'rhizosphere.db'));
    other.pragma('busy_timeout = 5000');
    const reads = vi.spyOn(hub.stores.devices, 'credentialMap');

    // A device row that only records what was seen (a new row is a change: let it be read).
    other.prepare(`INSERT INTO devices (id, created_at, last_seen) VALUES ('seen-only', 0, 0)`).run();
    await new Promise((resolve) => setTimeout(resolve, 1000));
    reads.mockClear();

    // Another hub's audit trail and last-seen times: not credentials.
    const audit = other.prepare(`INSERT INTO audit (at, actor, actor_kind, action, outcome) VALUES (?, 'node-2', 'token', 'command', 'ok')`);
    const seen = other.prepare(`UPDATE devices SET last_seen = ?, transport = 'mqtt' WHERE id = 'seen-only'`);
    for (let i = 0; i < 20; i++) {
      audit.run(Date.now());
      seen.run(Date.now());
      await new Promise((resolve) => setTimeout(resolve, 60));
    }
    await new Promise((resolve) => setTimeout(resolve, 700));
    expect(reads).not.toHaveBeenCalled();

    // A device registered by the other process: the hub knows it and lets it in.
    const token = newToken();
    other.prepare(`INSERT INTO devices (id, token_hash, state, created_at) VALUES ('pi-77', ?, 'active', ?)`).run(hashToken(token), Date.now());
    await waitFor(() => hub.device('pi-77'), { timeoutMs: 2000, what: 'pi-77 known' });
    expect(reads).toHaveBeenCalled();
    const device = await connectMqtt(hub.urls.mqtt, { clientId: 'pi-77', username: 'pi-77', password: token, clean: false, reconnectPeriod: 0 });
    await device.subscribeAsync('rhizosphere/devices/pi-77/command', { qos: 1 });
    await waitFor(() => hub.device('pi-77')?.online, { what: 'pi-77 online' });

    // Its tags changed there: the hub's table and the status follow.
    other.prepare(`UPDATE devices SET tags = '["kitchen"]' WHERE id = 'pi-77'`).run();
    await waitFor(() => hub.device('pi-77')?.tags.includes('kitchen'), { timeoutMs: 2000, what: 'the new tag' });

    // Removed there: its connection is dropped.
    const closed = new Promise<void>((resolve) => device.once('close', () => resolve()));
    other.prepare(`DELETE FROM devices WHERE id = 'pi-77'`).run();
    await closed;
    await waitFor(() => hub.device('pi-77') === undefined, { timeoutMs: 2000, what: 'pi-77 forgotten' });
    other.close();
  });
});
