/**
 * Topic names of the wire contract (PROTOCOL.md "Device topics", "Client request / reply").
 * Every module builds and parses topics here, so the prefix is applied in one place.
 */
import { isValidId } from './ids.js';

/** The telemetry sub-topic on which a device declares its tags. */
export const DECLARED_TAGS_SUBTOPIC = 'tags';
/** The telemetry sub-topic of a device's health reports (docs/protocol.md "Health telemetry"; the schema is in health.ts). */
export const HEALTH_SUBTOPIC = 'health';

export const DEFAULT_TOPIC_PREFIX = 'rhizosphere';

export type DeviceTopicKind = 'command' | 'response' | 'status' | 'presence' | 'telemetry' | 'tunnel' | 'state';
/** A device's state topics (docs/protocol.md "Desired state"): `delta` hub → device, `reported` device → hub. */
export type StateTopicPart = 'delta' | 'reported';
export type ClientTopicKind = 'request' | 'response' | 'tunnel';
/** A tunnel's topics: `in` carries frames towards the device, `out` frames from it. */
export type TunnelDirection = 'in' | 'out';

export interface ParsedDeviceTopic {
  id: string;
  kind: DeviceTopicKind;
  /** kind 'tunnel' only: the tunnel id (unchecked: the caller refuses a bad one by name) and direction. */
  tunnel?: string;
  direction?: TunnelDirection;
  /** kind 'state' only: which of the two. */
  state?: StateTopicPart;
}

export interface ParsedClientTopic {
  id: string;
  kind: ClientTopicKind;
  tunnel?: string;
  direction?: TunnelDirection;
}

/** `{tunnel}/in|out` → its parts, or null. */
function parseTunnelTail(tail: string): { tunnel: string; direction: TunnelDirection } | null {
  const slash = tail.indexOf('/');
  if (slash <= 0) return null;
  const tunnel = tail.slice(0, slash);
  const direction = tail.slice(slash + 1);
  if (direction !== 'in' && direction !== 'out') return null;
  return { tunnel, direction };
}

/** A topic prefix: one or more non-empty levels, no wildcards, no leading `$`. */
export function topicPrefixProblem(prefix: string): string | null {
  if (prefix.length === 0) return 'must not be empty';
  if (prefix.startsWith('$')) return 'must not start with $';
  if (/[+#\u0000]/.test(prefix)) return 'must not contain +, # or NUL';
  if (prefix.split('/').some((level) => level.length === 0)) return 'must not have empty levels (no leading, trailing or double /)';
  return null;
}

export class Topics {
  readonly prefix: string;
  private readonly devicesPrefix: string;
  private readonly clientsPrefix: string;

  constructor(prefix: string = DEFAULT_TOPIC_PREFIX) {
    const problem = topicPrefixProblem(prefix);
    if (problem) throw new Error(`topic prefix ${JSON.stringify(prefix)} ${problem}`);
    this.prefix = prefix;
    this.devicesPrefix = `${prefix}/devices/`;
    this.clientsPrefix = `${prefix}/clients/`;
  }

  deviceCommand(id: string): string {
    return `${this.devicesPrefix}${id}/command`;
  }
  deviceResponse(id: string): string {
    return `${this.devicesPrefix}${id}/response`;
  }
  deviceStatus(id: string): string {
    return `${this.devicesPrefix}${id}/status`;
  }
  /**
   * The device's own birth and will (docs/protocol.md "Presence messages"): retained, with a
   * nonce per connection. A hub on an external broker derives presence from them.
   */
  devicePresence(id: string): string {
    return `${this.devicesPrefix}${id}/presence`;
  }
  deviceTelemetry(id: string, sub = ''): string {
    return `${this.devicesPrefix}${id}/telemetry${sub ? `/${sub}` : ''}`;
  }
  /** Where a device declares its own tags (docs/protocol.md "Device tags"; the payload's schema is in tags.ts). */
  deviceTags(id: string): string {
    return this.deviceTelemetry(id, DECLARED_TAGS_SUBTOPIC);
  }
  /** Where a device publishes its health reports. */
  deviceHealth(id: string): string {
    return this.deviceTelemetry(id, HEALTH_SUBTOPIC);
  }
  clientRequest(id: string): string {
    return `${this.clientsPrefix}${id}/request`;
  }
  clientResponse(id: string): string {
    return `${this.clientsPrefix}${id}/response`;
  }
  /** A tunnel's frames on the device's side (docs/protocol.md "Remote access: tunnels"). */
  deviceTunnel(id: string, tunnel: string, direction: TunnelDirection): string {
    return `${this.devicesPrefix}${id}/tunnels/${tunnel}/${direction}`;
  }
  /** What a device subscribes to for the frames of all its tunnels. */
  deviceTunnelsIn(id: string): string {
    return `${this.devicesPrefix}${id}/tunnels/+/in`;
  }
  /** A tunnel's frames on the client's side. */
  clientTunnel(id: string, tunnel: string, direction: TunnelDirection): string {
    return `${this.clientsPrefix}${id}/tunnels/${tunnel}/${direction}`;
  }
  /** What a client subscribes to for the frames of all its tunnels. */
  clientTunnelsOut(id: string): string {
    return `${this.clientsPrefix}${id}/tunnels/+/out`;
  }
  /**
   * In a cluster: where the node holding a device sends the Responses to commands another node
   * sent (`{node}` is that node's id). Under the prefix, so only the hub publishes there.
   */
  nodeResponse(node: string, device: string): string {
    return `${this.prefix}/cluster/nodes/${node}/responses/${device}`;
  }
  /** What a node subscribes to for the Responses routed to it. */
  nodeResponses(node: string): string {
    return `${this.prefix}/cluster/nodes/${node}/responses/+`;
  }
  /** In a cluster: where a node sends a command for a device that node `{node}` holds, which hands it to the device. */
  nodeCommand(node: string, device: string): string {
    return `${this.prefix}/cluster/nodes/${node}/commands/${device}`;
  }
  /** What a node subscribes to for the commands other nodes send its devices. */
  nodeCommands(node: string): string {
    return `${this.prefix}/cluster/nodes/${node}/commands/+`;
  }
  /** Retained, hub → device: what of its desired state the device has not reported yet (docs/protocol.md "Desired state"). */
  deviceStateDelta(id: string): string {
    return `${this.devicesPrefix}${id}/state/delta`;
  }
  /** Device → hub: the state the device reports (merged into its reported document). */
  deviceStateReported(id: string): string {
    return `${this.devicesPrefix}${id}/state/reported`;
  }
  /** Retained status of a fleet job. */
  jobStatus(id: string): string {
    return `${this.prefix}/jobs/${id}/status`;
  }

  /** Wildcard filters the hub itself subscribes to. */
  get allDeviceStatuses(): string {
    return `${this.devicesPrefix}+/status`;
  }
  get allClientRequests(): string {
    return `${this.clientsPrefix}+/request`;
  }
  get allDevicePresences(): string {
    return `${this.devicesPrefix}+/presence`;
  }
  get allDeviceResponses(): string {
    return `${this.devicesPrefix}+/response`;
  }
  get allDeclaredTags(): string {
    return `${this.devicesPrefix}+/telemetry/${DECLARED_TAGS_SUBTOPIC}`;
  }
  get allDeviceHealth(): string {
    return `${this.devicesPrefix}+/telemetry/${HEALTH_SUBTOPIC}`;
  }
  get allStateReports(): string {
    return `${this.devicesPrefix}+/state/reported`;
  }
  get allDeviceTunnelsOut(): string {
    return `${this.devicesPrefix}+/tunnels/+/out`;
  }

  /** `P/devices/{id}/{kind}[/...]`, or null for any other topic (or an invalid id). */
  parseDeviceTopic(topic: string): ParsedDeviceTopic | null {
    if (!topic.startsWith(this.devicesPrefix)) return null;
    const rest = topic.slice(this.devicesPrefix.length);
    const slash = rest.indexOf('/');
    if (slash <= 0) return null;
    const id = rest.slice(0, slash);
    const tail = rest.slice(slash + 1);
    if (!isValidId(id)) return null;
    if (tail === 'command' || tail === 'response' || tail === 'status' || tail === 'presence') return { id, kind: tail };
    if (tail === 'telemetry' || tail.startsWith('telemetry/')) return { id, kind: 'telemetry' };
    if (tail === 'state/delta' || tail === 'state/reported') return { id, kind: 'state', state: tail === 'state/delta' ? 'delta' : 'reported' };
    if (tail.startsWith('tunnels/')) {
      const parsed = parseTunnelTail(tail.slice('tunnels/'.length));
      return parsed ? { id, kind: 'tunnel', ...parsed } : null;
    }
    return null;
  }

  /** `P/clients/{id}/request|response` or `P/clients/{id}/tunnels/{tunnel}/in|out`, or null. The ids are returned even when invalid, so the caller can refuse them by name. */
  parseClientTopic(topic: string): ParsedClientTopic | null {
    if (!topic.startsWith(this.clientsPrefix)) return null;
    const rest = topic.slice(this.clientsPrefix.length);
    const tunnels = rest.indexOf('/tunnels/');
    if (tunnels > 0) {
      const parsed = parseTunnelTail(rest.slice(tunnels + '/tunnels/'.length));
      if (parsed) return { id: rest.slice(0, tunnels), kind: 'tunnel', ...parsed };
    }
    const slash = rest.lastIndexOf('/');
    if (slash < 0) return null;
    const kind = rest.slice(slash + 1);
    if (kind !== 'request' && kind !== 'response') return null;
    return { id: rest.slice(0, slash), kind };
  }
}

/** Whether an MQTT filter has a wildcard level (`+` or `#`), i.e. may match more than one topic. */
export const hasWildcard = (filter: string): boolean => filter.includes('+') || filter.includes('#');
