/**
 * Which nodes of the cluster are alive. Each node adds itself to one sorted set, scored with
 * Redis' own clock (no skew between machines), every `intervalMs`; a node missing for
 * `lapseMs` is removed by whichever node notices first. The script runs atomically, so exactly
 * one node learns that it removed a given node: that one announces the dead node's devices
 * offline, once.
 */
import { EventEmitter } from 'node:events';
import type { Redis } from 'ioredis';
import type { Logger } from '../log.js';

const BEAT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = now - tonumber(ARGV[2])
local known = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[1])
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. cutoff)
for _, id in ipairs(lapsed) do redis.call('ZREM', KEYS[1], id) end
return { redis.call('ZRANGEBYSCORE', KEYS[1], cutoff, '+inf'), lapsed, known and 1 or 0 }
`;

export const NODES_KEY = 'rhizosphere:nodes';

export interface MembershipTiming {
  /** How often a node says it is alive. */
  intervalMs: number;
  /** Silence after which a node counts as dead. */
  lapseMs: number;
}

export const DEFAULT_TIMING: MembershipTiming = { intervalMs: 1000, lapseMs: 3500 };

export interface MembershipEvents {
  /** The live nodes after a heartbeat (this one included). */
  live: [nodes: ReadonlySet<string>];
  /** This node removed `node`, whose heartbeat lapsed: announce its devices offline. */
  lapsed: [node: string];
  /** This node had been taken for dead (a stall longer than lapseMs): re-announce what it holds. */
  rejoined: [];
}

export class Membership extends EventEmitter<MembershipEvents> {
  private live: ReadonlySet<string> = new Set();
  private timer: NodeJS.Timeout | null = null;
  private beats = 0;
  private beating = false;

  constructor(
    private readonly redis: Redis,
    readonly nodeId: string,
    private readonly log: Logger,
    private readonly timing: MembershipTiming = DEFAULT_TIMING,
  ) {
    super();
  }

  /** The first heartbeat; resolves with the other nodes alive now. */
  async join(): Promise<string[]> {
    await this.beat();
    this.timer = setInterval(() => void this.beat().catch(() => {}), this.timing.intervalMs);
    this.timer.unref();
    return [...this.live].filter((node) => node !== this.nodeId);
  }

  get nodes(): ReadonlySet<string> {
    return this.live;
  }

  isLive(node: string): boolean {
    return this.live.has(node);
  }

  /** Stops the heartbeats (the others find this node gone after lapseMs). */
  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Leaves at once (a clean stop): the others need not wait for the lapse. */
  async leave(): Promise<void> {
    this.stop();
    await this.redis.zrem(NODES_KEY, this.nodeId).catch(() => {});
  }

  private async beat(): Promise<void> {
    if (this.beating) return;
    this.beating = true;
    try {
      const [live, lapsed, known] = (await this.redis.eval(BEAT, 1, NODES_KEY, this.nodeId, String(this.timing.lapseMs))) as [string[], string[], number];
      this.live = new Set(live);
      if (this.beats++ > 0 && known === 0) {
        this.log.warn({ node: this.nodeId }, 'cluster: this node was taken for dead (no heartbeat in time); announcing its devices again');
        this.emit('rejoined');
      }
      for (const node of lapsed) {
        this.log.warn({ node }, 'cluster: a node stopped answering; its devices are offline');
        this.emit('lapsed', node);
      }
      this.emit('live', this.live);
    } catch (error) {
      this.log.debug({ err: (error as Error).message }, 'cluster: heartbeat failed');
      if (this.beats === 0) throw error;
    } finally {
      this.beating = false;
    }
  }
}
