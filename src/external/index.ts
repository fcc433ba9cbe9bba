/**
 * The hub on an external broker (`--broker`): devices and third-party tools connect to a
 * broker the user runs, and the hub joins it as one privileged client (src/external/uplink.ts).
 * What the hub reads there: births and wills (presence), Responses, declared tags, state
 * reports, Requests and devices' tunnel frames. What it publishes there: Commands, Replies, the
 * retained statuses of devices and jobs and state deltas, and tunnel frames to devices. The hub's embedded broker
 * stays, without an MQTT listener of its own: it carries the console's and the SDK's
 * WebSocket at /mqtt and the hub's own parts, exactly as in the embedded mode.
 */
import type { Aedes, AedesPublishPacket } from 'aedes';
import type { IPublishPacket } from 'mqtt';
import type { Dispatcher } from '../dispatcher.js';
import type { Logger } from '../log.js';
import type { Presence } from '../presence.js';
import type { Topics } from '../protocol/topics.js';
import { watchExternalDevices } from './devices.js';
import { bridgeExternalRequests } from './requests.js';
import { Uplink, type BrokerAbilities, type UplinkCredentials } from './uplink.js';

export { ExternalLink } from './devices.js';
export { Uplink } from './uplink.js';

export interface ExternalBrokerOptions extends UplinkCredentials {
  /** The broker's URL, or its nodes' (brokerUrls). */
  urls: readonly string[];
  clientId: string;
  /** Shared-subscription group for Requests (several hubs split them); '' subscribes plainly. */
  shareGroup: string;
  /** One of several hubs on this broker (`--cluster`): its session ends with its connection. */
  severalHubs: boolean;
  /** The hub's embedded broker: tunnel frames cross between it and the external one. */
  local: Aedes;
  topics: Topics;
  presence: Presence;
  dispatcher: Dispatcher;
  log: Logger;
  maxPayloadBytes: number;
  admitUnknown: boolean;
  isRegistered: (id: string) => boolean;
  onResponse: (device: string, payload: Buffer) => void;
  onDeclaredTags: (device: string, payload: Buffer) => void;
  /** A health report on `P/devices/{id}/telemetry/health` (docs/protocol.md "Health telemetry"). */
  onHealth?: (device: string, payload: Buffer) => void;
  /** A report on `P/devices/{id}/state/reported` (docs/protocol.md "Desired state"). */
  onReportedState?: (device: string, payload: Buffer) => void;
}

export interface ExternalBroker {
  uplink: Uplink;
  /** Publishes a retained message (a status) on the external broker; an empty payload clears it. */
  publishRetained(topic: string, payload: Buffer): void;
  close(): Promise<void>;
}

/**
 * After the broker lost the hub's session, how long retained births have to come back before
 * devices not re-announced go offline. A broker node's failover loses it too (NATS, while its
 * streams elect new leaders), and the devices that were on the lost node then take seconds to
 * announce themselves through another: at 3 s, a loaded NATS cluster turned devices that were
 * moving (4.9 s) offline, failing their commands in flight DEVICE_OFFLINE.
 */
const SESSION_LOST_GRACE_MS = 10_000;

/**
 * Where the hub reads Requests: in a shared-subscription group where the broker has them
 * (several hubs then split the Requests), else plainly.
 */
function requestFilterOf(topics: Topics, shareGroup: string) {
  return (broker: BrokerAbilities) => (shareGroup && broker.sharedSubscriptions ? `$share/${shareGroup}/${topics.allClientRequests}` : topics.allClientRequests);
}

export async function startExternalBroker(options: ExternalBrokerOptions): Promise<ExternalBroker> {
  const { topics, local, log } = options;
  const requestFilter = requestFilterOf(topics, options.shareGroup);
  // Messages that come while the uplink is being opened (retained births right after the
  // first SUBACK) wait here until the parts that read them exist.
  type Route = (topic: string, payload: Buffer, packet: IPublishPacket) => void;
  const early: Parameters<Route>[] = [];
  let route: Route = (...message) => void early.push(message);
  const uplink = await Uplink.open({
    urls: options.urls,
    clientId: options.clientId,
    username: options.username,
    password: options.password,
    ca: options.ca,
    cert: options.cert,
    key: options.key,
    persistentSession: !options.severalHubs,
    log,
    subscriptions: (broker) => [
      { filter: topics.allDevicePresences, qos: 1 },
      { filter: topics.allDeviceResponses, qos: 1 },
      { filter: topics.allDeclaredTags, qos: 1 },
      // QoS 0 like the reports themselves: one a minute from every device, none worth a PUBACK.
      ...(options.onHealth ? [{ filter: topics.allDeviceHealth, qos: 0 as const }] : []),
      { filter: topics.allStateReports, qos: 1 },
      { filter: topics.allDeviceTunnelsOut, qos: 1 },
      { filter: requestFilter(broker), qos: 1 },
    ],
    onMessage: (topic, payload, packet) => route(topic, payload, packet),
  });

  const devices = watchExternalDevices({ uplink, topics, presence: options.presence, log, admitUnknown: options.admitUnknown, isRegistered: options.isRegistered });
  const requests = bridgeExternalRequests({ uplink, topics, dispatcher: options.dispatcher, maxPayloadBytes: options.maxPayloadBytes, log });

  route = (topic, payload, packet) => {
    const device = topics.parseDeviceTopic(topic);
    if (device) {
      if (device.kind === 'presence') return devices.onPresence(device.id, payload);
      devices.touch(device.id);
      if (device.kind === 'response') return options.onResponse(device.id, payload);
      if (device.kind === 'telemetry' && topic === topics.deviceTags(device.id)) return options.onDeclaredTags(device.id, payload);
      if (device.kind === 'telemetry' && topic === topics.deviceHealth(device.id)) return options.onHealth?.(device.id, payload);
      if (device.kind === 'state' && device.state === 'reported') return options.onReportedState?.(device.id, payload);
      // Into the embedded broker, where the tunnel relay reads devices' frames.
      if (device.kind === 'tunnel' && device.direction === 'out') return local.publish({ cmd: 'publish', topic, payload, qos: 1, retain: false, dup: false }, () => {});
      return;
    }
    const client = topics.parseClientTopic(topic);
    if (client?.kind === 'request') return requests.onRequest(client.id, packet);
    log.debug({ topic }, 'message from the broker on no topic the hub reads: dropped');
  };
  for (const message of early.splice(0)) route(...message);

  // Tunnel frames the relay publishes towards devices go out to the external broker.
  const framesToDevices = `${topics.prefix}/devices/+/tunnels/+/in`;
  const forwardFrame = (packet: AedesPublishPacket, done: () => void) => {
    done();
    uplink.publish(packet.topic, packet.payload as Buffer, { qos: 1 });
  };
  await new Promise<void>((resolve) => local.subscribe(framesToDevices, forwardFrame, () => resolve()));

  uplink.on('up', ({ sessionPresent }) => {
    if (!sessionPresent) devices.sessionLost(SESSION_LOST_GRACE_MS);
  });

  return {
    uplink,
    publishRetained(topic, payload) {
      uplink.publish(topic, payload, { qos: 1, retain: true });
    },
    async close() {
      devices.close();
      if (!local.closed) local.unsubscribe(framesToDevices, forwardFrame, () => {});
      await uplink.close();
    },
  };
}
