/**
 * Several hubs on one external broker: a shared subscription splits the Requests between
 * them, any hub commands any device, the registry is shared through the cluster's Redis
 * replication (`--cluster` beside `--broker`), and when one hub is killed the others go on
 * with Requests, REST and jobs. Needs Redis (REDIS_URL, default redis://127.0.0.1:6379).
 */
import { describe, expect, it } from 'vitest';
import { startMosquitto } from './brokers.js';
import { claimDatabase, REDIS_BASE_URL } from './redis-claim.js';
import { freePort, RequestClient, spawnHub, spawnHypha, startTestHub, tempDir, waitFor } from './helpers.js';

const claimed = await claimDatabase();
if (!claimed) console.warn(`external-hubs tests skipped: no Redis at ${REDIS_BASE_URL} (set REDIS_URL), or no empty database 1-15 in it`);

async function post(base: string, path: string, body: unknown) {
  const res = await fetch(`${base}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, body: (await res.json()) as Record<string, unknown> };
}

describe.skipIf(!claimed)('several hubs on one Mosquitto', () => {
  it('split the Requests, share the registry, and go on without a hub that was killed', async () => {
    await claimed!.fresh();
    const mosquitto = await startMosquitto();
    const httpPort = await freePort();
    const hubA = spawnHub([
      '--broker', mosquitto.url, '--cluster', claimed!.url, '--node-id', 'hub-a', '--data-dir', tempDir(),
      '--host', '127.0.0.1', '--http-port', String(httpPort), '--allow-anonymous', '--log-level', 'warn',
    ]);
    const httpA = `http://127.0.0.1:${httpPort}`;
    await waitFor(() => fetch(`${httpA}/healthz`).then((r) => r.ok, () => false), { timeoutMs: 20_000, what: 'hub-a up' }).catch((error: Error) => {
      throw new Error(`${error.message}\n${hubA.output()}`);
    });
    const hubB = await startTestHub({ broker: mosquitto.url, cluster: claimed!.url, nodeId: 'hub-b' });

    const ids = ['multi-1', 'multi-2', 'multi-3'];
    for (const id of ids) spawnHypha(mosquitto.url, id, ['--keepalive', '2']);
    await waitFor(() => ids.every((id) => hubB.device(id)?.online), { timeoutMs: 15_000, what: 'agents online on hub-b' });
    await waitFor(async () => ((await (await fetch(`${httpA}/healthz`)).json()) as { online: number }).online === 3, { what: 'agents online on hub-a' });

    // A device registered on one hub is known to the other (replicated through Redis).
    hubB.stores.devices.add('registered-on-b');
    await waitFor(async () => (await fetch(`${httpA}/api/devices/registered-on-b`)).status === 200, { timeoutMs: 10_000, what: 'registration replicated to hub-a' });

    // Requests from a third-party client, split between the hubs by the shared subscription.
    const tool = await RequestClient.connect(mosquitto.url, 'tool-multi');
    const replies = await Promise.all(Array.from({ length: 30 }, (_, i) => tool.request({ device: ids[i % 3]!, order: 'exec_bash', cmd_str: `echo n${i}` })));
    expect(replies.every((r) => r.status === 'ok')).toBe(true);
    expect(replies.map((r) => (r.status === 'ok' ? r.result : r.status))).toEqual(Array.from({ length: 30 }, (_, i) => `n${i}`));
    hubB.stores.audit.flush();
    const onB = hubB.stores.audit.query({ action: 'command', limit: 100 }).filter((e) => (e.detail as { clientId?: string })?.clientId === 'tool-multi').length;
    console.log(`two hubs on one Mosquitto: hub-b answered ${onB} of 30 Requests, hub-a the rest`);
    expect(onB).toBeGreaterThan(0);
    expect(onB).toBeLessThan(30);

    // Any hub commands any device over REST.
    expect((await post(httpA, '/api/devices/multi-2/commands', { order: 'exec_bash', cmd_str: 'echo from-a' })).body).toMatchObject({ status: 'ok', result: 'from-a' });

    // hub-a dies without a word: Requests go on through hub-b alone.
    // A Request the broker hands to hub-a before it sees the socket close is lost with it
    // (MQTT does not move a dead member's share to another); Requests from then on go to hub-b.
    hubA.child.kill('SIGKILL');
    await hubA.exited;
    const killedAt = Date.now();
    const dropped = (line: string) => line.includes('rhizosphere-hub-hub-a') && /closed its connection|Socket error on client/.test(line);
    await waitFor(() => mosquitto.log().split('\n').some(dropped), { timeoutMs: 10_000, what: 'Mosquitto to drop hub-a' }).catch((error: Error) => {
      throw new Error(`${error.message}\n${mosquitto.log().split('\n').filter((l) => !/PING/.test(l)).slice(-40).join('\n')}`);
    });
    console.log(`two hubs on one Mosquitto: the broker dropped hub-a ${Date.now() - killedAt} ms after the kill`);
    const after = await Promise.all(Array.from({ length: 10 }, (_, i) => tool.request({ device: ids[i % 3]!, order: 'exec_bash', cmd_str: `echo after${i}` }, 5_000)));
    console.log(`two hubs on one Mosquitto: 10 Requests after hub-a was killed answered in ${Date.now() - killedAt} ms`);
    expect(after.map((r) => r.status)).toEqual(Array(10).fill('ok'));

    // And a job from the hub that is left.
    const job = await post(hubB.urls.http, '/api/jobs', { target: { devices: ids }, order: 'exec_bash', cmd_str: 'true' });
    expect(job.status).toBe(201);
    const done = await waitFor(() => { const j = hubB.jobs.get(job.body.id as string); return j && j.state !== 'running' ? j : undefined; }, { what: 'job done' });
    expect(done.counts).toMatchObject({ succeeded: 3 });
  }, 90_000);
});
