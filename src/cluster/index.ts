/**
 * `--cluster redis://…`: several hub processes act as one hub (README "Cluster"). What the
 * composition root wires in: broker options (Redis emitter and persistence), a start step
 * once presence and the dispatcher exist, a handover check for presence, and the stop steps.
 */
import { hostname } from 'node:os';
import type { Aedes } from 'aedes';
import type { Dispatcher } from '../dispatcher.js';
import type { Logger } from '../log.js';
import type { Presence, RemoteHold } from '../presence.js';
import type { Topics } from '../protocol/topics.js';
import { DEFAULT_TIMING, Membership, type MembershipTiming } from './membership.js';
import { connectClusterRedis, displayUrl, probeRedis, type ClusterEmitter } from './redis.js';
import { watchRemoteDevices, type RemoteDevices } from './remote-devices.js';

export { DEFAULT_TIMING, type MembershipTiming } from './membership.js';

/** Redis could not be used at start: `message` is the reason, the hub names --cluster. */
export class ClusterUnreachable extends Error {
  constructor(readonly url: string, reason: string) {
    super(`--cluster ${displayUrl(url)}: cannot reach Redis (${reason})`);
    this.name = 'ClusterUnreachable';
  }
}

/** `HOSTNAME-PID`, reduced to the characters an id may have. */
export function defaultNodeId(): string {
  const host = hostname().replace(/[^A-Za-z0-9._:-]/g, '-').slice(0, 100) || 'node';
  return `${host}-${process.pid}`;
}

export interface ClusterParts {
  broker: Aedes;
  topics: Topics;
  presence: Presence;
  dispatcher: Dispatcher;
}

export interface ClusterNode {
  readonly nodeId: string;
  /** Spread into `Aedes.createBroker` options. */
  readonly brokerOptions: { id: string; mq: ClusterEmitter; persistence: unknown };
  /**
   * Joins (first heartbeat), watches the other nodes' devices and reads the statuses already
   * retained. Resolves with whether this node is the only one alive (it then resumes the
   * fleet jobs an earlier run left unfinished).
   */
  start(parts: ClusterParts): Promise<{ alone: boolean }>;
  /** For presence: whether another node just took over a device whose local link ended. */
  handover(id: string): RemoteHold | undefined;
  /** A clean stop, before the broker closes: this node's devices are announced offline and the node leaves. */
  leave(): Promise<void>;
  /** After the broker closed: the Redis connections. */
  close(): void;
}

export async function openCluster(url: string, nodeId: string, log: Logger, timing: MembershipTiming = DEFAULT_TIMING): Promise<ClusterNode> {
  try {
    await probeRedis(url);
  } catch (error) {
    throw new ClusterUnreachable(url, (error as Error).message);
  }
  const redis = connectClusterRedis(url, log);
  const membership = new Membership(redis.commands, nodeId, log, timing);
  let remote: RemoteDevices | null = null;
  return {
    nodeId,
    brokerOptions: { id: nodeId, ...redis.brokerOptions },
    async start(parts) {
      const others = await membership.join();
      remote = watchRemoteDevices({ ...parts, membership, log });
      await remote.load();
      log.info({ node: nodeId, redis: displayUrl(url), others }, 'cluster: joined');
      return { alone: others.length === 0 };
    },
    handover: (id) => remote?.handover(id),
    async leave() {
      if (remote) await remote.leave();
      else await membership.leave();
    },
    close() {
      membership.stop();
      remote?.close();
      redis.close();
    },
  };
}
