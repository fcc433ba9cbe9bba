/**
 * The connections table (the seed's `connections`): device id → its live link and the
 * clients talking to it. Presence is its one writer; everyone else reads it. Entries are
 * made from the transports' own connect and disconnect events, never from what a device
 * claims about itself, and every change is published as the retained status
 * (PROTOCOL.md "Status").
 */
import { EventEmitter } from 'node:events';
import type { Logger } from './log.js';
import type { Command, Status, Transport } from './protocol/schemas.js';
import type { DeviceRegistry, KnownDevice } from './registry.js';

/** One live connection of a device, whatever carries it (MQTT, MQTT over WebSocket, legacy WebSocket). */
export interface DeviceLink {
  readonly transport: Transport;
  readonly remoteAddress: string | null;
  /** Delivers a Command to the device. */
  send(command: Command): void;
  /** Drops the connection, e.g. when the same id connects through another link. */
  close(reason: string): void;
  /** The hash of the token this connection authenticated with, if it used one: a rotation ends it. */
  readonly credential?: string;
  /** Why nothing can be sent over this link now (its broker is unreachable), or null. Links that are always usable leave it out. */
  unavailable?(): string | null;
  /** Whether the device serves tunnels over this link; left out where the transport finds out itself. */
  readonly tunnels?: boolean;
  /** The agent and version the device announced when this link came up (an external broker's birth). */
  readonly agent?: string;
  /** The time zone the birth announced. */
  readonly tz?: string;
}

export interface DeviceEntry {
  readonly id: string;
  readonly online: boolean;
  readonly transport: Transport | null;
  readonly remoteAddress: string | null;
  /** Epoch ms of the current (or last) connect. */
  readonly connectedAt: number | null;
  /** Epoch ms of the last packet from the device. */
  readonly lastSeen: number | null;
  /** The live link while online. */
  readonly link: DeviceLink | null;
  /** Client ids with commands in flight to this device. */
  readonly clients: ReadonlyMap<string, number>;
  /** Assigned and declared tags together (what selectors match). */
  readonly tags: readonly string[];
  /** In a cluster: the node that holds the device (or held it last); undefined when standalone. */
  readonly node?: string;
  /** The agent and version of the device's last birth, e.g. "hypha/0.1.0"; null when it never said. */
  readonly agent: string | null;
  /** The time zone its birth announced (IANA name), for job windows in the device's time; null when unknown. */
  readonly tz: string | null;
}

/** A device as the REST API and events show it (PROTOCOL.md `GET /api/devices`). */
export interface DeviceInfo {
  id: string;
  online: boolean;
  transport: Transport | null;
  connectedAt: string | null;
  lastSeen: string | null;
  remoteAddress: string | null;
  /** An addition to the v1 fields. */
  tags: string[];
  /** An addition to the v1 fields: the agent and version of its last birth, or null. */
  agent: string | null;
  /** In a cluster only: the node that holds the device (or held it last). */
  node?: string;
}

/** The retained Status plus, in a cluster, the node that holds (or last held) the device (docs/protocol.md "Status"). */
export type NodeStatus = Status & { node?: string };

/** Another node of the cluster holds the device: its link there, and since when. */
export interface RemoteHold {
  node: string;
  link: DeviceLink;
  /** Epoch ms of the connect, as the holder reported it. */
  since: number;
}

export interface PresenceOptions {
  /** This node's id in a cluster; undefined when standalone. */
  nodeId?: string;
  /**
   * Asked when a local link ends: whether another node now holds the device (it reconnected
   * there). Then the entry moves to that node without an offline flap.
   */
  handover?: (id: string) => RemoteHold | undefined;
}

export type OfflineReason = 'disconnect' | 'keepalive-timeout' | 'error' | 'replaced' | 'hub-closing' | 'removed';

export interface PresenceEvents {
  online: [device: DeviceInfo];
  offline: [device: DeviceInfo, reason: OfflineReason];
}

interface MutableEntry {
  id: string;
  online: boolean;
  transport: Transport | null;
  remoteAddress: string | null;
  connectedAt: number | null;
  lastSeen: number | null;
  link: DeviceLink | null;
  clients: Map<string, number>;
  tags: string[];
  node?: string;
  agent: string | null;
  tz: string | null;
  /**
   * The database held the device when presence learned of it: what is seen of it then only
   * updates its row, and a row removed meanwhile (by an admin, another node) stays removed.
   */
  stored: boolean;
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

export function toDeviceInfo(entry: DeviceEntry): DeviceInfo {
  return {
    id: entry.id,
    online: entry.online,
    transport: entry.transport,
    connectedAt: iso(entry.connectedAt),
    lastSeen: iso(entry.lastSeen),
    remoteAddress: entry.remoteAddress,
    tags: [...entry.tags],
    agent: entry.agent,
    ...(entry.node !== undefined ? { node: entry.node } : {}),
  };
}

const sameTags = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((tag, i) => tag === b[i]);

function blankEntry(id: string, tags: string[], stored: boolean): MutableEntry {
  return { id, online: false, transport: null, remoteAddress: null, connectedAt: null, lastSeen: null, link: null, clients: new Map(), tags, stored, agent: null, tz: null };
}

export class Presence extends EventEmitter<PresenceEvents> {
  private readonly entries = new Map<string, MutableEntry>();
  private closing = false;
  /** How many entries are online. */
  private online = 0;

  constructor(
    private readonly registry: DeviceRegistry,
    private readonly publishStatus: (id: string, status: Status | null) => void,
    private readonly log: Logger,
    private readonly options: PresenceOptions = {},
  ) {
    super();
    for (const record of registry.all()) this.entries.set(record.id, this.fromRecord(record));
  }

  /** A device registered while the hub runs (an admin command): known, offline until it connects. */
  know(id: string, tags: string[] = []): void {
    if (this.entries.has(id)) return;
    const entry = blankEntry(id, tags, true);
    this.entries.set(id, entry);
    this.publishStatus(id, this.statusOf(entry));
  }

  /** A device removed by an admin: its connection is dropped and it leaves the table and the retained statuses. */
  forget(id: string): void {
    const entry = this.entries.get(id);
    if (!entry) return;
    const link = entry.link;
    if (link) {
      this.detach(id, link, 'removed');
      link.close('the device was removed');
    }
    this.setOnline(entry, false);
    this.entries.delete(id);
    this.registry.drop(id);
    this.publishStatus(id, null);
    this.log.info({ device: id }, 'device removed');
  }

  /**
   * The device's tags changed (an admin's or the device's own): the retained status carries
   * them, so it is published again.
   */
  setTags(id: string, tags: string[]): void {
    const entry = this.entries.get(id);
    // A device not in the table yet gets its tags from the database when it comes.
    if (!entry || sameTags(entry.tags, tags)) return;
    entry.tags = [...tags];
    if (!this.closing) this.publishStatus(id, this.statusOf(entry));
  }

  private fromRecord(record: KnownDevice): MutableEntry {
    return {
      ...blankEntry(record.id, record.tags, true),
      transport: record.transport,
      remoteAddress: record.remoteAddress,
      connectedAt: record.connectedAt,
      lastSeen: record.lastSeen,
      agent: record.agent ?? null,
    };
  }

  /** The connections table, read-only. */
  get table(): ReadonlyMap<string, DeviceEntry> {
    return this.entries;
  }

  get(id: string): DeviceEntry | undefined {
    return this.entries.get(id);
  }

  /** Kept as entries go on and off line: /healthz asks often, and counting 19000 entries each time showed in profiles. */
  onlineCount(): number {
    return this.online;
  }

  private setOnline(entry: MutableEntry, online: boolean): void {
    if (entry.online !== online) this.online += online ? 1 : -1;
    entry.online = online;
  }

  /** Publishes the retained offline status of every known device (at start: the broker's retained store is new). */
  publishKnownStatuses(): void {
    for (const entry of this.entries.values()) {
      if (!entry.online) this.publishStatus(entry.id, this.statusOf(entry));
    }
  }

  /** A link for `id` is up. A link already there is replaced (a takeover) without an offline flap. */
  attach(id: string, link: DeviceLink): void {
    const now = Date.now();
    let entry = this.entries.get(id);
    if (!entry) {
      // First seen now (anonymous access, or registered a moment ago, before the credential watch noticed).
      const stored = this.registry.lookup(id);
      entry = blankEntry(id, stored?.tags ?? [], stored !== undefined);
      this.entries.set(id, entry);
    }
    const previous = entry.link;
    entry.link = link;
    entry.node = this.options.nodeId;
    this.setOnline(entry, true);
    entry.transport = link.transport;
    entry.remoteAddress = link.remoteAddress;
    entry.connectedAt = now;
    entry.lastSeen = now;
    // On the embedded broker the birth comes just after (setAgent); until then it is not known
    // which agent this connection runs (an upgrade may have just changed it).
    entry.agent = link.agent ?? null;
    if (link.tz !== undefined) entry.tz = link.tz;
    if (previous && previous !== link) {
      this.log.info({ device: id, transport: link.transport }, 'device reconnected; the older connection is replaced');
      previous.close('replaced by a newer connection with the same id');
    } else {
      this.log.info({ device: id, transport: link.transport, remoteAddress: link.remoteAddress }, 'device online');
    }
    this.persist(entry);
    this.publishStatus(id, this.statusOf(entry));
    this.emit('online', toDeviceInfo(entry));
  }

  /** A link for `id` went down. Ignored unless it is the device's current link (a replaced link's end changes nothing). */
  detach(id: string, link: DeviceLink, cause: OfflineReason): void {
    const entry = this.entries.get(id);
    if (!entry || entry.link !== link) return;
    const successor = this.closing ? undefined : this.options.handover?.(id);
    if (successor && !this.isRemote(entry)) {
      // The device reconnected through another node of the cluster: it never was offline.
      this.holdRemotely(entry, successor);
      this.log.info({ device: id, node: successor.node }, 'device moved to another node');
      return;
    }
    const reason = this.closing ? 'hub-closing' : cause;
    const now = Date.now();
    entry.link = null;
    this.setOnline(entry, false);
    entry.lastSeen = now;
    entry.connectedAt = entry.connectedAt ?? now;
    this.log.info({ device: id, reason }, 'device offline');
    this.persist(entry);
    if (!this.closing) this.publishStatus(id, this.statusOf(entry));
    this.emit('offline', toDeviceInfo(entry), reason);
  }

  /** Whether another node of the cluster holds (or last held) the device. */
  private isRemote(entry: MutableEntry): boolean {
    return entry.node !== undefined && entry.node !== this.options.nodeId;
  }

  /** Whether this node holds the device over a link of its own. */
  holdsLocally(id: string): boolean {
    const entry = this.entries.get(id);
    return Boolean(entry?.link && !this.isRemote(entry));
  }

  /**
   * Another node of the cluster holds the device (its status said so). Nothing is published
   * or written: the holder does both. Ignored while this node holds the device itself (a
   * takeover in progress: this node's own link ending decides). False when ignored.
   */
  attachRemote(id: string, hold: RemoteHold): boolean {
    let entry = this.entries.get(id);
    if (!entry) {
      const stored = this.registry.lookup(id);
      entry = blankEntry(id, stored?.tags ?? [], stored !== undefined);
      this.entries.set(id, entry);
    }
    if (entry.link && !this.isRemote(entry)) return false;
    if (entry.online && entry.node === hold.node && entry.link?.transport === hold.link.transport) {
      if (hold.link.agent !== undefined) entry.agent = hold.link.agent;
      return true;
    }
    this.holdRemotely(entry, hold);
    this.log.debug({ device: id, node: hold.node }, 'device online on another node');
    this.emit('online', toDeviceInfo(entry));
    return true;
  }

  /** The node holding the device let it go (or died): offline here too. False unless `node` held it. */
  detachRemote(id: string, node: string, reason: OfflineReason): boolean {
    const entry = this.entries.get(id);
    if (!entry || !entry.online || entry.node !== node || !this.isRemote(entry)) return false;
    const now = Date.now();
    entry.link = null;
    this.setOnline(entry, false);
    entry.lastSeen = now;
    this.log.debug({ device: id, node, reason }, 'device offline on another node');
    this.emit('offline', toDeviceInfo(entry), reason);
    return true;
  }

  private holdRemotely(entry: MutableEntry, hold: RemoteHold): void {
    entry.link = hold.link;
    entry.node = hold.node;
    this.setOnline(entry, true);
    entry.transport = hold.link.transport;
    entry.remoteAddress = null;
    entry.connectedAt = hold.since;
    entry.lastSeen = Date.now();
    if (hold.link.agent !== undefined) entry.agent = hold.link.agent;
  }

  /** A clean stop of a cluster node: its devices are announced offline before the broker goes (they reconnect elsewhere). */
  announceOffline(id: string): void {
    const entry = this.entries.get(id);
    if (entry && !this.closing) this.publishStatus(id, { ...this.statusOf(entry), online: false, since: new Date().toISOString() });
  }

  /** Publishes an entry's status as it is now (in a cluster: for a node that died, by the node that noticed). */
  announce(id: string): void {
    const entry = this.entries.get(id);
    if (entry && !this.closing) this.publishStatus(id, this.statusOf(entry));
  }

  /**
   * The device announced its agent and version (its birth on the embedded broker): kept,
   * written, and in its status. Ignored unless `link` is the device's current one.
   */
  setAgent(id: string, link: DeviceLink, agent: string, tz?: string): void {
    const entry = this.entries.get(id);
    if (!entry || entry.link !== link) return;
    if (tz !== undefined) entry.tz = tz;
    if (entry.agent === agent) return;
    entry.agent = agent;
    this.persist(entry);
    if (!this.closing) this.publishStatus(id, this.statusOf(entry));
  }

  /** Called for every packet from a device: keeps last-seen current without touching the disk each time. */
  touch(id: string, link: DeviceLink): void {
    const entry = this.entries.get(id);
    if (entry && entry.link === link) entry.lastSeen = Date.now();
  }

  /** Keeps the "clients talking to it" side of the table: +1 when a command is sent, -1 when answered. */
  trackClient(id: string, clientId: string, delta: 1 | -1): void {
    const entry = this.entries.get(id);
    if (!entry) return;
    const count = (entry.clients.get(clientId) ?? 0) + delta;
    if (count > 0) entry.clients.set(clientId, count);
    else entry.clients.delete(clientId);
  }

  statusOf(entry: DeviceEntry): NodeStatus {
    const since = entry.online ? entry.connectedAt : entry.lastSeen;
    const status: NodeStatus = { online: entry.online, since: iso(since) ?? new Date(0).toISOString(), transport: entry.transport, tags: [...entry.tags] };
    if (entry.agent !== null) status.agent = entry.agent;
    // In a cluster a device not yet seen anywhere is announced by this node.
    const node = entry.node ?? this.options.nodeId;
    if (node !== undefined) status.node = node;
    return status;
  }

  list(): DeviceInfo[] {
    return [...this.entries.values()].map(toDeviceInfo);
  }

  /** Stops publishing statuses: the broker is going away, and so are the links. */
  beginClose(): void {
    this.closing = true;
  }

  /** The process is exiting with the connections still open (the kernel closes them): every device held here goes offline now. */
  releaseAll(): void {
    for (const entry of [...this.entries.values()]) {
      if (entry.link && !this.isRemote(entry)) this.detach(entry.id, entry.link, 'hub-closing');
    }
  }

  private persist(entry: MutableEntry): void {
    this.registry.put({
      id: entry.id,
      transport: entry.transport,
      remoteAddress: entry.remoteAddress,
      connectedAt: entry.connectedAt,
      lastSeen: entry.lastSeen,
      agent: entry.agent,
      stored: entry.stored,
    });
  }
}
