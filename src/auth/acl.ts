/**
 * Who may publish and subscribe where (docs/protocol.md "Access control"). Pure functions
 * of the principal, its client id and the topic, so every rule has a unit test.
 */
import type { Topics } from '../protocol/topics.js';
import type { Principal } from './roles.js';

export type Verdict = { ok: true } | { ok: false; why: string };
const ALLOW: Verdict = { ok: true };
const deny = (why: string): Verdict => ({ ok: false, why });

/** True when every topic `filter` can match is also matched by `pattern` (both MQTT filters). */
export function filterCovers(pattern: string, filter: string): boolean {
  const p = pattern.split('/');
  const f = filter.split('/');
  for (let i = 0; i < p.length; i++) {
    const level = p[i]!;
    if (level === '#') return true;
    const other = f[i];
    if (other === undefined) return false;
    if (other === '#') return false;
    if (level === '+') continue;
    if (other === '+' || other !== level) return false;
  }
  return f.length === p.length;
}

/** True when `filter` can match some topic under `prefix/`. */
export function mayMatchUnder(filter: string, prefix: string): boolean {
  const f = filter.split('/');
  const p = prefix.split('/');
  for (let i = 0; i < p.length; i++) {
    const level = f[i];
    if (level === undefined) return false;
    if (level === '#') return true;
    if (level !== '+' && level !== p[i]) return false;
  }
  return f.length > p.length;
}

/** What everyone who is not a device may read: statuses, telemetry, devices' state deltas and reports, job progress, what server-side handlers publish, and its own replies. */
function readablePatterns(topics: Topics, clientId: string): string[] {
  const P = topics.prefix;
  return [`${P}/devices/+/status`, `${P}/devices/+/presence`, `${P}/devices/+/telemetry/#`, `${P}/devices/+/state/#`, `${P}/jobs/+/status`, `${P}/handlers/#`, topics.clientResponse(clientId), topics.clientTunnelsOut(clientId)];
}

export function maySubscribe(principal: Principal, clientId: string, filter: string, topics: Topics): Verdict {
  switch (principal.kind) {
    case 'device':
      // Its own presence too: an agent that finds a stale will there (an older connection's) publishes its birth again.
      if (filter === topics.deviceCommand(principal.id) || filter === topics.deviceTunnelsIn(principal.id) || filter === topics.devicePresence(principal.id)) return ALLOW;
      // Its own state delta (docs/protocol.md "Desired state"), and no other device's.
      if (filter === topics.deviceStateDelta(principal.id)) return ALLOW;
      return deny(`device ${principal.id} may subscribe only to ${topics.deviceCommand(principal.id)}, ${topics.deviceTunnelsIn(principal.id)}, ${topics.devicePresence(principal.id)} and ${topics.deviceStateDelta(principal.id)}`);
    case 'anonymous':
      return ALLOW;
    default: {
      if (principal.role === 'admin') return ALLOW;
      if (readablePatterns(topics, clientId).some((pattern) => filterCovers(pattern, filter))) return ALLOW;
      if (principal.role === 'operator' && !mayMatchUnder(filter, topics.prefix)) return ALLOW;
      return deny(`a${principal.role === 'operator' ? 'n' : ''} ${principal.role} may read statuses, telemetry, device state, job status, handler topics and its own replies only`);
    }
  }
}

export function mayPublish(principal: Principal, clientId: string, topic: string, topics: Topics): Verdict {
  const device = topics.parseDeviceTopic(topic);
  const client = topics.parseClientTopic(topic);
  switch (principal.kind) {
    case 'device':
      if (device && device.id === principal.id && (device.kind === 'response' || device.kind === 'telemetry' || device.kind === 'presence')) return ALLOW;
      if (device && device.id === principal.id && device.kind === 'tunnel' && device.direction === 'out') return ALLOW;
      // Its own state report; another device's is a forged report.
      if (device && device.id === principal.id && device.kind === 'state' && device.state === 'reported') return ALLOW;
      return deny(`device ${principal.id} may publish only on its own response, presence, telemetry, state/reported and tunnels/{tunnel}/out topics`);
    case 'anonymous':
      // Development mode: any topic but those the hub owns or another device's.
      if (device?.kind === 'status') return deny('the status topic is published by the hub alone');
      if (device?.kind === 'state' && device.state === 'delta') return deny('the state delta is published by the hub alone (set desired state over REST: PATCH /api/devices/{id}/state/desired)');
      if (device?.kind === 'command') return deny('commands reach devices through the hub (publish a Request on your clients/{id}/request topic)');
      if (device?.kind === 'tunnel' && device.direction === 'in') return deny('tunnel frames reach devices through the hub (publish on your clients/{id}/tunnels/{tunnel}/in topic)');
      if (device && device.id !== clientId) return deny(`only device ${device.id} may publish its ${device.kind}`);
      if (client?.kind === 'response') return deny('replies are published by the hub alone');
      if (topic.startsWith(`${topics.prefix}/cluster/`)) return deny('the cluster\'s own topics are published by its hubs alone');
      if (client?.kind === 'tunnel' && client.direction === 'out') return deny('a client\'s tunnel frames are published by the hub alone');
      return ALLOW;
    default:
      // A Request on another client's topic is answered FORBIDDEN by the request bridge, and a
      // tunnel frame (another client's, or a viewer's) by the tunnel relay.
      if (client?.kind === 'request') return ALLOW;
      if (client?.kind === 'tunnel' && client.direction === 'in') return ALLOW;
      if (principal.role !== 'viewer' && !topic.startsWith(`${topics.prefix}/`)) return ALLOW;
      return deny(`a ${principal.kind} may publish only Requests on ${topics.clientRequest(clientId)} and tunnel frames on ${topics.clientTunnel(clientId, '{tunnel}', 'in')}`);
  }
}
