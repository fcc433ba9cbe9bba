/**
 * `GET /readyz` (PROTOCOL.md "HTTP"): whether a load balancer should send this hub new
 * connections. Not ready while starting or stopping, when the broker does not accept
 * connections, or when the event loop is overloaded: the p99 of its delay over the last few
 * seconds above a threshold. /healthz stays "the process serves"; this says "it keeps up".
 */
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import type { Request, Response } from 'express';

export type NotReadyReason = 'starting' | 'stopping' | 'broker-closed' | 'broker-unavailable' | 'event-loop-lag';

export type ReadyState = { ready: true; lagMs: number } | { ready: false; reason: NotReadyReason; lagMs: number; maxLagMs?: number };

/** The delay monitor samples every 20 ms; the p99 of each second is kept for WINDOW_SLOTS seconds. */
const RESOLUTION_MS = 20;
const SLOT_MS = 1000;
const WINDOW_SLOTS = 5;

export interface ReadinessOptions {
  /** Event-loop delay p99 (ms) above which the hub is not ready. */
  maxLagMs: number;
  /** Whether the broker takes new connections (its listener up, the broker not closed). */
  accepting: () => boolean;
  /** On an external broker: whether the hub is connected to it. */
  brokerReachable?: () => boolean;
}

export class Readiness {
  private phase: 'starting' | 'serving' | 'stopping' = 'starting';
  private readonly delay: IntervalHistogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
  /** p99 (ns) of each of the last completed slots, newest last. */
  private readonly slots: number[] = [];
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly options: ReadinessOptions) {
    this.delay.enable();
    // A slot ends when this timer runs: after a stall it runs late, and its slot holds the stall.
    this.timer = setInterval(() => this.rotate(), SLOT_MS);
    this.timer.unref();
  }

  serving(): void {
    if (this.phase === 'starting') this.phase = 'serving';
  }

  /** Not ready from now on; the monitor stops. */
  stop(): void {
    this.phase = 'stopping';
    clearInterval(this.timer);
    this.delay.disable();
  }

  /** The worst per-second p99 of the window, the current second included, in ms beyond the sampling interval. */
  lagMs(): number {
    return Math.max(0, Math.round(Math.max(this.p99(), ...this.slots) / 1e6) - RESOLUTION_MS);
  }

  state(): ReadyState {
    const lagMs = this.phase === 'stopping' ? 0 : this.lagMs();
    if (this.phase !== 'serving') return { ready: false, reason: this.phase, lagMs };
    if (!this.options.accepting()) return { ready: false, reason: 'broker-closed', lagMs };
    if (this.options.brokerReachable && !this.options.brokerReachable()) return { ready: false, reason: 'broker-unavailable', lagMs };
    if (lagMs > this.options.maxLagMs) return { ready: false, reason: 'event-loop-lag', lagMs, maxLagMs: this.options.maxLagMs };
    return { ready: true, lagMs };
  }

  /** `GET /readyz`: no authentication (load balancers probe it), a tiny body. */
  readonly handler = (_req: Request, res: Response): void => {
    const state = this.state();
    res.setHeader('cache-control', 'no-store');
    res.status(state.ready ? 200 : 503).json(state);
  };

  /** The monitor records whole intervals between its samples (ns), so an idle loop shows the resolution. */
  private p99(): number {
    return this.delay.count > 0 ? this.delay.percentile(99) : 0;
  }

  private rotate(): void {
    this.slots.push(this.p99());
    if (this.slots.length > WINDOW_SLOTS) this.slots.shift();
    this.delay.reset();
  }
}
