/**
 * The hub gives the garbage of a burst back once idle (src/idle-collect.ts): the rule with its
 * readings given, V8's real full collection, and the real CLI doing it after its start.
 */
import { describe, expect, it } from 'vitest';
import { collectWhenIdle } from '../src/idle-collect.js';
import { freePort, spawnHub, tempDir, waitFor } from './helpers.js';
import { join } from 'node:path';

const MiB = 2 ** 20;

/** A collector on a 10 ms beat whose readings the test sets. */
function scripted(start: { heap: number; busy: number }) {
  const state = { ...start, collections: 0, told: [] as number[][] };
  const collector = collectWhenIdle({
    intervalMs: 10,
    minGrowthBytes: 16 * MiB,
    heapUsed: () => state.heap,
    utilization: () => state.busy,
    collect: () => {
      state.collections++;
      state.heap = 40 * MiB;
    },
    onCollected: (freed, heapUsed) => state.told.push([freed, heapUsed]),
  });
  return { state, collector };
}

const beats = (n: number) => new Promise((resolve) => setTimeout(resolve, n * 10 + 5));

describe('collecting when idle', () => {
  it('collects once the loop is idle and the heap has grown, and then only after it grows again', async () => {
    const { state, collector } = scripted({ heap: 120 * MiB, busy: 0.5 });
    try {
      await beats(5);
      expect(state.collections).toBe(0); // busy: never in the middle of a burst
      state.busy = 0.02;
      await waitFor(() => state.collections === 1, { what: 'a collection' });
      expect(state.told[0]).toEqual([80 * MiB, 40 * MiB]);
      // 40 MiB left: the next needs 40 * 1.5 + 16 = 76 MiB.
      state.heap = 75 * MiB;
      await beats(5);
      expect(state.collections).toBe(1);
      state.heap = 77 * MiB;
      await waitFor(() => state.collections === 2, { what: 'a second collection' });
    } finally {
      collector.stop();
    }
  });

  it('stops looking when stopped', async () => {
    const { state, collector } = scripted({ heap: 120 * MiB, busy: 0 });
    collector.stop();
    await beats(5);
    expect(state.collections).toBe(0);
  });

  it('frees garbage with V8 itself', async () => {
    let kept: unknown[] | null = Array.from({ length: 300_000 }, (_, i) => ({ i, text: `garbage ${i}` }));
    expect(kept.length).toBe(300_000);
    kept = null;
    const freed: number[] = [];
    const collector = collectWhenIdle({ intervalMs: 10, minGrowthBytes: 0, utilization: () => 0, onCollected: (bytes) => freed.push(bytes) });
    try {
      await waitFor(() => freed.length > 0, { what: 'a collection' });
      expect(freed[0]).toBeGreaterThan(10 * MiB);
    } finally {
      collector.stop();
    }
  });

  it('runs in the CLI: the start is collected once the hub is idle', async () => {
    const httpPort = await freePort();
    const hub = await spawnHub(['--mqtt-port', '0', '--http-port', String(httpPort), '--data-dir', join(tempDir(), 'state'), '--log-level', 'debug']);
    await waitFor(() => hub.output().includes('"msg":"idle: garbage collected"'), { what: 'the idle collection in the log', timeoutMs: 15_000 });
    const line = hub.output().split('\n').find((l) => l.includes('"msg":"idle: garbage collected"'))!;
    expect(JSON.parse(line)).toMatchObject({ freedMiB: expect.any(Number), heapMiB: expect.any(Number), pauseMs: expect.any(Number) });
    hub.child.kill('SIGTERM');
    expect((await hub.exited).code).toBe(0);
  });
});
