/**
 * The cluster-wide connections table. Every node publishes the retained Status of the devices
 * it holds, with its `node` (docs/protocol.md "Status"); through the shared emitter every
 * other node sees it and keeps the device as a remote entry whose link sends Commands to the
 * holding node (`P/cluster/nodes/{node}/commands/{device}`), which hands each to the device
 * over its own link: the command's QoS 1 delivery and session queue stay on that node.
 *
 * Rules, so that no order of arrival makes a device flap:
 * - a node's own link is authoritative for that node; a status that contradicts it is
 *   answered by publishing the node's own status again (the retained copy converges);
 * - an offline status from node N ends only an entry that N holds;
 * - a node whose heartbeat lapsed holds nothing: its entries go offline everywhere, and the
 *   node that removed it publishes their offline statuses once.
 */
import type { Aedes, AedesPublishPacket } from 'aedes';
import type { Dispatcher } from '../dispatcher.js';
import type { Logger } from '../log.js';
import type { DeviceLink, NodeStatus, Presence, RemoteHold } from '../presence.js';
import type { Command, Response, Transport } from '../protocol/schemas.js';
import type { Topics } from '../protocol/topics.js';
import type { Membership } from './membership.js';
import { responseRouter } from './response-routes.js';

const TRANSPORTS: readonly Transport[] = ['mqtt', 'mqtt-ws', 'legacy-ws'];
/** How long a "this client connected on node N" notice counts as a takeover in progress. */
const MOVE_NOTICE_MS = 10_000;
/** A device's status is republished at most this often when other nodes contradict it. */
const REPAIR_GAP_MS = 500;

/** A device held by another node: commands go to that node, which hands them to the device. */
class RemoteLink implements DeviceLink {
  readonly remoteAddress = null;

  constructor(
    readonly node: string,
    readonly transport: Transport,
    private readonly sendCommand: (command: Command) => void,
    /** As the holding node's status gave it. */
    readonly agent?: string,
  ) {}

  send(command: Command): void {
    this.sendCommand(command);
  }

  /** The holding node closes its own connection (Aedes closes a client id that connects elsewhere). */
  close(): void {}
}

type Handler = (packet: AedesPublishPacket, done: () => void) => void;

export interface RemoteDevicesOptions {
  broker: Aedes;
  topics: Topics;
  presence: Presence;
  dispatcher: Dispatcher;
  membership: Membership;
  log: Logger;
}

export interface RemoteDevices {
  /** For the node holding `device`: sends a Response to the node whose command it answers; false when it is this node's own. */
  routeResponse(device: string, payload: Buffer | string): boolean;
  /** For presence: whether another node has just taken over a device whose local link ended. */
  handover(id: string): RemoteHold | undefined;
  /** Reads the retained statuses already in Redis (at start, before this node announces anything). */
  load(): Promise<void>;
  /** A clean stop: announces this node's devices offline and leaves the cluster. */
  leave(): Promise<void>;
  close(): void;
}

function parseStatus(payload: Buffer | string): NodeStatus | null {
  if (payload.length === 0) return null;
  try {
    const value = JSON.parse(payload.toString()) as Partial<NodeStatus>;
    if (typeof value !== 'object' || value === null || typeof value.online !== 'boolean') return null;
    return value as NodeStatus;
  } catch {
    return null;
  }
}

export function watchRemoteDevices({ broker, topics, presence, dispatcher, membership, log }: RemoteDevicesOptions): RemoteDevices {
  const self = membership.nodeId;
  /** Nodes seen lapsed or leaving: their late statuses are stale. */
  const departed = new Set<string>();
  /**
   * Online statuses from a node while it counted as departed, latest per device. A node that was
   * only stalled re-announces its devices as soon as it sees itself taken for dead, which can be
   * before this node sees its next heartbeat: they are applied then, not lost.
   */
  const deferred = new Map<string, Map<string, NodeStatus>>();
  const defer = (node: string, id: string, status: NodeStatus) => {
    let statuses = deferred.get(node);
    if (!statuses) deferred.set(node, (statuses = new Map()));
    statuses.set(id, status);
  };
  /** Nodes seen alive at least once: only those can be found gone by a heartbeat. */
  const everLive = new Set<string>();
  /** The latest online claim of another node per device (with when it arrived), even while this node holds it. */
  const claims = new Map<string, { hold: RemoteHold; at: number }>();
  /** "Client X connected on node N" (Aedes' own notice), for takeovers faster than the status. */
  const moves = new Map<string, { node: string; at: number }>();
  const repaired = new Map<string, number>();
  const repairTimers = new Map<string, NodeJS.Timeout>();

  const publish = (topic: string, payload: Buffer | string) => broker.publish({ cmd: 'publish', topic, payload, qos: 1, retain: false, dup: false }, () => {});
  const sendTo = (id: string, node: string) => (command: Command) => publish(topics.nodeCommand(node, id), JSON.stringify(command));

  const holdOf = (id: string, node: string, status: NodeStatus): RemoteHold => {
    const transport = status.transport && TRANSPORTS.includes(status.transport) ? status.transport : 'mqtt';
    const since = Date.parse(status.since);
    const agent = typeof status.agent === 'string' && status.agent.length <= 64 ? status.agent : undefined;
    return { node, link: new RemoteLink(node, transport, sendTo(id, node), agent), since: Number.isNaN(since) ? Date.now() : since };
  };

  /** This node holds the device and a stale status said otherwise: publish ours again (at most every REPAIR_GAP_MS). */
  const repair = (id: string) => {
    if (repairTimers.has(id)) return;
    const wait = (repaired.get(id) ?? 0) + REPAIR_GAP_MS - Date.now();
    const run = () => {
      repairTimers.delete(id);
      if (!presence.holdsLocally(id)) return;
      repaired.set(id, Date.now());
      presence.announce(id);
    };
    if (wait <= 0) return run();
    const timer = setTimeout(run, wait);
    timer.unref();
    repairTimers.set(id, timer);
  };

  const applyStatus = (id: string, status: NodeStatus) => {
    const node = status.node;
    if (node === self) return;
    if (presence.holdsLocally(id)) {
      // Another node's online claim is a takeover in progress (this node's link is about to
      // be closed by Aedes): remembered for the handover, not contradicted.
      if (status.online && node !== undefined && !departed.has(node)) claims.set(id, { hold: holdOf(id, node, status), at: Date.now() });
      else repair(id);
      return;
    }
    // A status without a node (a will, a hub of an older version) says nothing about who holds the device.
    if (node === undefined) return;
    if (status.online) {
      if (departed.has(node)) return defer(node, id, status);
      const hold = holdOf(id, node, status);
      claims.set(id, { hold, at: Date.now() });
      presence.attachRemote(id, hold);
    } else {
      deferred.get(node)?.delete(id);
      if (claims.get(id)?.hold.node === node) claims.delete(id);
      presence.detachRemote(id, node, 'disconnect');
    }
  };

  const onStatus: Handler = (packet, done) => {
    const parsed = topics.parseDeviceTopic(packet.topic);
    const status = parsed?.kind === 'status' ? parseStatus(packet.payload) : null;
    if (parsed && status) applyStatus(parsed.id, status);
    done();
  };

  const routeResponse = responseRouter(broker, topics, self);
  const routedPrefix = topics.nodeResponses(self).slice(0, -1);

  // Responses of devices held elsewhere to commands sent from here, routed here by their node.
  // A device held here reaches the dispatcher through the broker's own 'publish' event.
  const onRoutedResponse: Handler = (packet, done) => {
    const device = packet.topic.startsWith(routedPrefix) ? packet.topic.slice(routedPrefix.length) : '';
    if (device) dispatcher.handleResponse(device, packet.payload);
    done();
  };

  // A command another node sends a device held here: over the device's own link (straight to
  // its connection, src/direct-delivery.ts). A device that has moved on meanwhile gets it on
  // its command topic, wherever it is now.
  const commandsPrefix = topics.nodeCommands(self).slice(0, -1);
  const onNodeCommand: Handler = (packet, done) => {
    done();
    const id = packet.topic.startsWith(commandsPrefix) ? packet.topic.slice(commandsPrefix.length) : '';
    if (!id) return;
    const entry = presence.get(id);
    if (!entry?.link || !presence.holdsLocally(id)) return publish(topics.deviceCommand(id), packet.payload);
    let command: Command;
    try {
      command = JSON.parse(packet.payload.toString()) as Command;
    } catch {
      return;
    }
    if (entry.transport === 'legacy-ws') void relayToLegacy(id, command);
    else entry.link.send(command);
  };

  // A command from another node for a device held here over the legacy WebSocket, which
  // subscribes to nothing: run it here and send its Response to that node. Subscribed per
  // such device while it is here (a subscription to every device's command topic would have
  // every node decode every command of the fleet).
  const onCommand: Handler = (packet, done) => {
    done();
    const parsed = topics.parseDeviceTopic(packet.topic);
    if (parsed?.kind !== 'command' || (packet as { brokerId?: string }).brokerId === broker.id) return;
    const entry = presence.get(parsed.id);
    if (!entry?.link || entry.transport !== 'legacy-ws' || !presence.holdsLocally(parsed.id)) return;
    let command: Command;
    try {
      command = JSON.parse(packet.payload.toString()) as Command;
    } catch {
      return;
    }
    void relayToLegacy(parsed.id, command);
  };

  const relayToLegacy = async (device: string, command: Command) => {
    const reply = await dispatcher.request(
      { device, order: command.order, cmd_str: command.cmd_str, timeout_ms: command.timeout_ms },
      { clientId: 'cluster', via: 'api', actor: 'cluster', actorKind: 'node' },
    );
    const response: Response =
      reply.status === 'ok'
        ? { type: 'response', id: command.id, result: reply.result, error: reply.error, exit_code: reply.exit_code, duration_ms: reply.duration_ms, truncated: reply.truncated }
        : ({ type: 'response', id: command.id, code: reply.code, message: reply.message } as Response);
    routeResponse(device, Buffer.from(JSON.stringify(response)));
  };
  const legacyHere = new Set<string>();
  const followLegacy = (device: { id: string }) => {
    const here = presence.holdsLocally(device.id) && presence.get(device.id)?.transport === 'legacy-ws';
    if (here === legacyHere.has(device.id)) return;
    if (here) {
      legacyHere.add(device.id);
      broker.subscribe(topics.deviceCommand(device.id), onCommand, () => {});
    } else {
      legacyHere.delete(device.id);
      if (!broker.closed) broker.unsubscribe(topics.deviceCommand(device.id), onCommand, () => {});
    }
  };

  // Aedes announces every new connection on `$SYS/{broker}/new/clients`; the same id on another
  // node is a takeover in progress when this node's own connection then ends.
  const onNewClient: Handler = (packet, done) => {
    const node = packet.topic.split('/')[1];
    if (node && node !== broker.id) moves.set(packet.payload.toString(), { node, at: Date.now() });
    done();
  };

  // Only notices newer than this node's own connect count: older ones are about earlier connections.
  const handover = (id: string): RemoteHold | undefined => {
    const connectedAt = presence.get(id)?.connectedAt ?? 0;
    const claim = claims.get(id);
    if (claim && claim.at >= connectedAt && !departed.has(claim.hold.node)) return claim.hold;
    const move = moves.get(id);
    if (!move || move.at < connectedAt || Date.now() - move.at > MOVE_NOTICE_MS || departed.has(move.node)) return undefined;
    const transport = presence.get(id)?.transport ?? 'mqtt';
    return { node: move.node, link: new RemoteLink(move.node, transport, sendTo(id, move.node)), since: move.at };
  };

  /** Entries held by nodes that are no longer alive go offline; `announce` publishes that once. */
  const dropNode = (node: string, announce: boolean) => {
    departed.add(node);
    deferred.delete(node);
    everLive.delete(node);
    for (const [id, claim] of claims) if (claim.hold.node === node) claims.delete(id);
    for (const entry of presence.table.values()) {
      if (entry.node !== node || !entry.online) continue;
      if (presence.detachRemote(entry.id, node, 'disconnect') && announce) presence.announce(entry.id);
    }
  };

  const onLive = (live: ReadonlySet<string>) => {
    for (const node of live) {
      everLive.add(node);
      if (!departed.delete(node)) continue;
      const statuses = deferred.get(node);
      deferred.delete(node);
      for (const [id, status] of statuses ?? []) applyStatus(id, status);
    }
    // A node not seen alive yet (it started after this node's last heartbeat) is not gone.
    const gone = new Set<string>();
    for (const node of everLive) if (!live.has(node)) gone.add(node);
    for (const node of gone) dropNode(node, false);
    const now = Date.now();
    for (const [id, move] of moves) if (now - move.at > MOVE_NOTICE_MS) moves.delete(id);
    for (const [id, at] of repaired) if (now - at > REPAIR_GAP_MS) repaired.delete(id);
  };
  const onLapsed = (node: string) => dropNode(node, true);
  const onRejoined = () => {
    for (const entry of presence.table.values()) if (presence.holdsLocally(entry.id)) presence.announce(entry.id);
  };

  const subscriptions: [topic: string, handler: Handler][] = [
    [topics.allDeviceStatuses, onStatus],
    [topics.nodeResponses(self), onRoutedResponse],
    [topics.nodeCommands(self), onNodeCommand],
    ['$SYS/+/new/clients', onNewClient],
  ];
  for (const [topic, handler] of subscriptions) broker.subscribe(topic, handler, () => {});
  membership.on('live', onLive);
  membership.on('lapsed', onLapsed);
  membership.on('rejoined', onRejoined);
  presence.on('online', followLegacy);
  presence.on('offline', followLegacy);

  return {
    routeResponse,
    handover,
    async load() {
      const persistence = (broker as unknown as { persistence: unknown }).persistence as { createRetainedStream(pattern: string): AsyncIterable<AedesPublishPacket> };
      for await (const packet of persistence.createRetainedStream(topics.allDeviceStatuses)) {
        const parsed = topics.parseDeviceTopic(packet.topic);
        const status = parsed?.kind === 'status' ? parseStatus(packet.payload) : null;
        if (!parsed || !status?.online || status.node === undefined || status.node === self) continue;
        if (membership.isLive(status.node)) applyStatus(parsed.id, status);
      }
    },
    async leave() {
      await membership.leave();
      for (const entry of presence.table.values()) {
        if (presence.holdsLocally(entry.id)) presence.announceOffline(entry.id);
      }
    },
    close() {
      for (const timer of repairTimers.values()) clearTimeout(timer);
      repairTimers.clear();
      membership.off('live', onLive);
      membership.off('lapsed', onLapsed);
      membership.off('rejoined', onRejoined);
      presence.off('online', followLegacy);
      presence.off('offline', followLegacy);
      if (broker.closed) return;
      for (const [topic, handler] of subscriptions) broker.unsubscribe(topic, handler, () => {});
      for (const id of legacyHere) broker.unsubscribe(topics.deviceCommand(id), onCommand, () => {});
    },
  };
}
