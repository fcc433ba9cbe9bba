/**
 * `--cluster redis://…`: several hub processes, on one machine or many, act as one hub (README
 * "Cluster"). Each node has its own --data-dir; devices, users, API tokens, browser sessions and
 * devices' desired and reported state are replicated through Redis (replication.ts), the audit
 * trail, jobs and handler storage stay per node. What the composition root wires in: broker options (Redis emitter and persistence),
 * a start step once presence and the dispatcher exist (replication joins first), a handover
 * check for presence, the first-admin claim, and the stop steps.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { Aedes } from 'aedes';
import type { Authenticator } from '../auth/authenticator.js';
import type { Dispatcher } from '../dispatcher.js';
import type { Logger } from '../log.js';
import type { Presence, RemoteHold } from '../presence.js';
import type { Topics } from '../protocol/topics.js';
import type { Db } from '../store/db.js';
import { DEFAULT_TIMING, Membership, type MembershipTiming } from './membership.js';
import { connectClusterRedis, displayUrl, probeRedis } from './redis.js';
import type { RouteEmitter } from './route-emitter.js';
import { watchRemoteDevices, type RemoteDevices } from './remote-devices.js';
import { Replication, type ReplicaChange } from './replication.js';

/** The secret console tokens are signed with, the same on every node (set by the first node). */
const CONSOLE_SECRET_KEY = 'rhizosphere:console-secret';
/** Taken by the node that creates the first admin, so two empty nodes starting at once do not both. */
const FIRST_ADMIN_KEY = 'rhizosphere:first-admin';

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
  /** This node's database, whose credentials are replicated. */
  db: Db;
  auth: Authenticator;
  /** Rows changed by another node were applied here (the credential watch's `check`, and devices' state deltas). */
  credentialsApplied: (changed: readonly ReplicaChange[]) => void;
}

export interface ClusterOptions {
  /**
   * On an external broker (`--broker`) the broker carries every message and every hub sees
   * every device's presence there: the cluster shares credentials, the console secret and
   * membership only, not the broker's messages, sessions or device table.
   */
  externalBroker?: boolean;
}

export interface ClusterNode {
  readonly nodeId: string;
  /** Spread into `Aedes.createBroker` options. */
  readonly brokerOptions: { id: string; mq: RouteEmitter; persistence: unknown };
  /**
   * Joins (first heartbeat), watches the other nodes' devices and reads the statuses already
   * retained. Resolves with whether this node is the only one alive (it then resumes the
   * fleet jobs an earlier run left unfinished).
   */
  start(parts: ClusterParts): Promise<{ alone: boolean }>;
  /**
   * With no user in the cluster (after the join): whether this node may create the first
   * admin (only one node gets a yes).
   */
  claimFirstAdmin(): Promise<boolean>;
  /** For presence: whether another node just took over a device whose local link ended. */
  handover(id: string): RemoteHold | undefined;
  /** For the node holding `device`: sends a Response to the node whose command it answers; false when it is this node's own. */
  routeResponse(device: string, payload: Buffer | string): boolean;
  /** A clean stop, before the broker closes: this node's devices are announced offline and the node leaves. */
  leave(): Promise<void>;
  /** After the broker closed: the Redis connections. */
  close(): void;
}

export async function openCluster(url: string, nodeId: string, log: Logger, timing: MembershipTiming = DEFAULT_TIMING, options: ClusterOptions = {}): Promise<ClusterNode> {
  try {
    await probeRedis(url);
  } catch (error) {
    throw new ClusterUnreachable(url, (error as Error).message);
  }
  const redis = connectClusterRedis(url, nodeId, log);
  // On the bus before the broker subscribes anything: its routes are announced as they come.
  await redis.brokerOptions.mq.start();
  const membership = new Membership(redis.commands, nodeId, log, timing);
  let remote: RemoteDevices | null = null;
  let replication: Replication | null = null;
  return {
    nodeId,
    brokerOptions: { id: nodeId, ...redis.brokerOptions },
    async start(parts) {
      // Credentials first: this node serves nothing before it has the cluster's.
      replication = new Replication({ db: parts.db, redis: redis.commands, reader: redis.reader, nodeId, log, onApplied: parts.credentialsApplied });
      await replication.join();
      await redis.commands.set(CONSOLE_SECRET_KEY, randomBytes(32).toString('base64url'), 'NX');
      const secret = await redis.commands.get(CONSOLE_SECRET_KEY);
      if (secret && secret.length >= 32) parts.auth.useClusterSecret(Buffer.from(secret));
      else log.error({ key: CONSOLE_SECRET_KEY }, 'cluster: no usable console secret in Redis; console tokens are valid only on the node that issued them');
      const others = await membership.join();
      if (!options.externalBroker) {
        remote = watchRemoteDevices({ ...parts, membership, log });
        await remote.load();
      }
      log.info({ node: nodeId, redis: displayUrl(url), others }, 'cluster: joined');
      return { alone: others.length === 0 };
    },
    handover: (id) => remote?.handover(id),
    routeResponse: (device, payload) => remote?.routeResponse(device, payload) ?? false,
    async claimFirstAdmin() {
      return (await redis.commands.set(FIRST_ADMIN_KEY, nodeId, 'EX', 60, 'NX')) === 'OK';
    },
    async leave() {
      // The last local changes (made in the last quarter second) reach the others.
      await replication?.push().catch((error: Error) => log.warn({ err: error.message }, 'cluster: last local changes not pushed (pushed at the next start)'));
      if (remote) await remote.leave();
      else await membership.leave();
    },
    close() {
      void replication?.close();
      membership.stop();
      remote?.close();
      redis.close();
    },
  };
}
