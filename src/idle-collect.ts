/**
 * Gives the memory of a burst back to the system once the hub is idle.
 *
 * Every MQTT connect leaves garbage in V8's old generation (the handshake's packets, buffers
 * and closures), about as much as the connection itself keeps. After thousands of devices
 * connect at once (a start, a reconnect storm) the hub goes quiet, and then V8 may not collect
 * for a long time: its memory reducer starts only after a full collection, which a quiet
 * process may never need. The hub held the garbage of 5000 devices' connects (60 of its 132
 * MiB of heap; RSS 216 MiB, 141 once collected) through 35 s of quiet; at 19000 devices V8
 * collected by itself that time.
 *
 * So, every `intervalMs`, when the event loop was busy less than `idleUtilization` of that
 * time and the heap has grown by half and `minGrowthBytes` since the last collection here, the
 * hub collects once; that full collection also lets V8's memory reducer return the freed
 * pages. By half: a burst leaves more (5000 connects: 83%), and a hub that is only ever a
 * little busy, whose heap V8 lets grow to about twice what it keeps before collecting it
 * concurrently, is rarely paused by this (0.3 s at 19000 devices).
 *
 * Only the CLI runs it: a process embedding the hub as a library owns its own heap.
 */
import { performance, type EventLoopUtilization } from 'node:perf_hooks';
import { getHeapStatistics, setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

export interface IdleCollectOptions {
  /** How often the hub looks (default 2 s): the idle window is this long. */
  intervalMs?: number;
  /** Busier than this share of the window (0 to 1, default 0.1) is not idle. */
  idleUtilization?: number;
  /** Growth of the heap since the last collection that is worth one (default 16 MiB), on top of half of it. */
  minGrowthBytes?: number;
  /** Told after each collection: bytes freed, the heap left, the pause in ms. */
  onCollected?: (freed: number, heapUsed: number, pauseMs: number) => void;
  /** For tests: what the hub reads and does. */
  heapUsed?: () => number;
  utilization?: () => number;
  collect?: () => void;
}

export interface IdleCollector {
  stop(): void;
}

const MiB = 2 ** 20;

/** V8's full collection, without putting `gc` on the hub's global object. */
function fullCollection(): () => void {
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
}

/** The event loop's busy share since the previous call. */
function utilizationSinceLast(): () => number {
  let last: EventLoopUtilization = performance.eventLoopUtilization();
  return () => {
    const now = performance.eventLoopUtilization();
    const delta = performance.eventLoopUtilization(now, last);
    last = now;
    return delta.utilization;
  };
}

export function collectWhenIdle(options: IdleCollectOptions = {}): IdleCollector {
  const {
    intervalMs = 2000,
    idleUtilization = 0.1,
    minGrowthBytes = 16 * MiB,
    onCollected = () => {},
    heapUsed = () => getHeapStatistics().used_heap_size,
    utilization = utilizationSinceLast(),
    collect = fullCollection(),
  } = options;
  // What was left after the last collection here; none yet: the start's garbage counts.
  let settled = 0;
  const timer = setInterval(() => {
    const busy = utilization();
    const used = heapUsed();
    if (busy >= idleUtilization || used < settled * 1.5 + minGrowthBytes) return;
    const started = performance.now();
    collect();
    settled = heapUsed();
    onCollected(used - settled, settled, performance.now() - started);
  }, intervalMs);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}
