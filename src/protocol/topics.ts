/**
 * Topic names of the wire contract (PROTOCOL.md "Device topics", "Client request / reply").
 * Every module builds and parses topics here, so the prefix is applied in one place.
 */
import { isValidId } from './ids.js';

/** The telemetry sub-topic on which a device declares its tags. */
export const DECLARED_TAGS_SUBTOPIC = 'tags';

export const DEFAULT_TOPIC_PREFIX = 'rhizosphere';

export type DeviceTopicKind = 'command' | 'response' | 'status' | 'telemetry';
export type ClientTopicKind = 'request' | 'response';

export interface ParsedDeviceTopic {
  id: string;
  kind: DeviceTopicKind;
}

export interface ParsedClientTopic {
  id: string;
  kind: ClientTopicKind;
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
  deviceTelemetry(id: string, sub = ''): string {
    return `${this.devicesPrefix}${id}/telemetry${sub ? `/${sub}` : ''}`;
  }
  /** Where a device declares its own tags (docs/protocol.md "Device tags"; the payload's schema is in tags.ts). */
  deviceTags(id: string): string {
    return this.deviceTelemetry(id, DECLARED_TAGS_SUBTOPIC);
  }
  clientRequest(id: string): string {
    return `${this.clientsPrefix}${id}/request`;
  }
  clientResponse(id: string): string {
    return `${this.clientsPrefix}${id}/response`;
  }
  /** Retained status of a fleet job. */
  jobStatus(id: string): string {
    return `${this.prefix}/jobs/${id}/status`;
  }

  /** Wildcard filters the hub itself subscribes to. */
  get allDeviceStatuses(): string {
    return `${this.devicesPrefix}+/status`;
  }
  get allDeviceResponses(): string {
    return `${this.devicesPrefix}+/response`;
  }
  get allClientRequests(): string {
    return `${this.clientsPrefix}+/request`;
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
    if (tail === 'command' || tail === 'response' || tail === 'status') return { id, kind: tail };
    if (tail === 'telemetry' || tail.startsWith('telemetry/')) return { id, kind: 'telemetry' };
    return null;
  }

  /** `P/clients/{id}/request|response`, or null. The id is returned even when invalid, so the caller can refuse it by name. */
  parseClientTopic(topic: string): ParsedClientTopic | null {
    if (!topic.startsWith(this.clientsPrefix)) return null;
    const rest = topic.slice(this.clientsPrefix.length);
    const slash = rest.lastIndexOf('/');
    if (slash < 0) return null;
    const kind = rest.slice(slash + 1);
    if (kind !== 'request' && kind !== 'response') return null;
    return { id: rest.slice(0, slash), kind };
  }
}
