/**
 * Turns the broker's own events into presence: a connection is a device once it holds a
 * subscription to its own command topic (PROTOCOL.md "Device topics"), whether it
 * subscribed now or the subscription was restored from its persistent session.
 */
import type { EventEmitter } from 'node:events';
import type { Aedes, AedesPublishPacket, Client } from 'aedes';
import { newMemo, type DirectDelivery } from './direct-delivery.js';
import type { Logger } from './log.js';
import type { Principal } from './auth/roles.js';
import type { DeviceLink, OfflineReason, Presence } from './presence.js';
import { parsePayload, PresenceMessageSchema, type Command, type Transport } from './protocol/schemas.js';
import type { Topics } from './protocol/topics.js';

/** How long a device stays online after its connection closed while a new connection with the same id is being set up. */
const TAKEOVER_GRACE_MS = 5000;

class MqttLink implements DeviceLink {
  readonly transport: Transport;
  readonly remoteAddress: string | null;
  private readonly memo = newMemo();

  constructor(
    private readonly direct: DirectDelivery,
    private readonly client: Client,
    private readonly commandTopic: string,
    responseTopic: string,
    readonly credential: string | undefined,
  ) {
    this.transport = client.req ? 'mqtt-ws' : 'mqtt';
    // Its first command can then go straight to it, and its first Response straight to the hub (src/direct-delivery.ts).
    direct.prime(commandTopic, client, this.memo);
    direct.primeIncoming(responseTopic);
    const socket = client.req?.socket ?? (client.conn as { remoteAddress?: string });
    this.remoteAddress = socket.remoteAddress ?? null;
  }

  send(command: Command): void {
    const payload = Buffer.from(JSON.stringify(command));
    this.direct.publish({ cmd: 'publish', topic: this.commandTopic, payload, qos: 1, retain: false, dup: false } as AedesPublishPacket, this.client, this.memo);
  }

  close(): void {
    if (!this.client.closed) this.client.close();
  }
}

export interface MqttDevices {
  /** For the access hooks: a connection with this id passed authentication. */
  noteAuthenticated(client: Client): void;
  close(): void;
}

export function watchMqttDevices(
  broker: Aedes,
  topics: Topics,
  presence: Presence,
  log: Logger,
  on: {
    response: (device: string, payload: Buffer | string) => void;
    declaredTags: (device: string, payload: Buffer | string) => void;
    /** A health report on `P/devices/{id}/telemetry/health` (docs/protocol.md "Health telemetry"). */
    health?: (device: string, payload: Buffer | string) => void;
    /** A report on `P/devices/{id}/state/reported` (docs/protocol.md "Desired state"). */
    reportedState?: (device: string, payload: Buffer | string) => void;
  },
  principalOf: (client: Client) => Principal | undefined,
  direct: DirectDelivery,
): MqttDevices {
  const links = new WeakMap<Client, MqttLink>();
  /** Authenticated connections not yet registered by the broker, by id. */
  const authenticating = new Map<string, Client>();
  /** Devices whose connection closed because a new one with the same id is taking over. */
  const takeovers = new Map<string, { link: MqttLink; successor: Client; timer: NodeJS.Timeout }>();
  const endReasons = new WeakMap<Client, OfflineReason>();

  /**
   * A connection is a device when it authenticated with a device credential, or (anonymous
   * access only) when it subscribes to its own command topic. Either way it counts as online
   * once it holds that subscription (now, or restored from its persistent session): before
   * that, a command sent to it would reach nobody.
   */
  const isDevice = (client: Client): boolean => {
    const kind = principalOf(client)?.kind;
    return (kind === 'device' || kind === 'anonymous') && holdsCommandSubscription(client);
  };

  const holdsCommandSubscription = (client: Client): boolean => {
    // `subscriptions` is filled for restored and new subscriptions alike (not in Aedes' typings).
    const subscriptions = (client as unknown as { subscriptions?: Record<string, unknown> }).subscriptions;
    return Boolean(subscriptions?.[topics.deviceCommand(client.id)]);
  };

  const goOnline = (client: Client): void => {
    if (links.has(client) || client.closed) return;
    const principal = principalOf(client);
    const link = new MqttLink(direct, client, topics.deviceCommand(client.id), topics.deviceResponse(client.id), principal?.kind === 'device' ? principal.tokenHash : undefined);
    links.set(client, link);
    const pending = takeovers.get(client.id);
    if (pending) {
      clearTimeout(pending.timer);
      takeovers.delete(client.id);
    }
    presence.attach(client.id, link);
    const early = earlyAgents.get(client);
    if (early !== undefined) presence.setAgent(client.id, link, early.agent, early.tz);
    // A safety net under 'clientDisconnect': when a second connection with the same id dies in
    // the middle of taking over, Aedes unregisters the wrong client and never reports the
    // first one's end. The socket's own close always comes; presence ignores a link it has
    // already let go of, and a takeover in progress keeps the device online on purpose.
    client.conn.once('close', () => {
      if (takeovers.get(client.id)?.link === link) return;
      presence.detach(client.id, link, endReasons.get(client) ?? 'disconnect');
    });
  };

  const onClient = (client: Client) => {
    if (authenticating.get(client.id) === client) authenticating.delete(client.id);
    if (isDevice(client)) goOnline(client);
  };

  const onSubscribe = (subscriptions: { topic: string }[], client: Client) => {
    const own = topics.deviceCommand(client.id);
    if (subscriptions.some((s) => s.topic === own) && isDevice(client)) goOnline(client);
  };

  const onDisconnect = (client: Client) => {
    const link = links.get(client);
    if (!link) {
      // A connection that was taking over a device's id died before it became the device:
      // the takeover is off, and the device it replaced is gone.
      const pending = takeovers.get(client.id);
      if (pending && pending.successor === client) {
        clearTimeout(pending.timer);
        takeovers.delete(client.id);
        presence.detach(client.id, pending.link, 'disconnect');
      }
      return;
    }
    const successor = authenticating.get(client.id);
    if (successor && successor !== client && !successor.closed) {
      // A takeover: the successor is registered right after this close. Stay online
      // until it subscribes (usually at once, from its persistent session).
      const timer = setTimeout(() => {
        takeovers.delete(client.id);
        presence.detach(client.id, link, 'replaced');
      }, TAKEOVER_GRACE_MS);
      timer.unref();
      takeovers.set(client.id, { link, successor, timer });
      return;
    }
    presence.detach(client.id, link, endReasons.get(client) ?? 'disconnect');
  };

  const onKeepaliveTimeout = (client: Client) => {
    endReasons.set(client, 'keepalive-timeout');
    log.info({ device: client.id }, 'keepalive timeout');
  };
  const onClientError = (client: Client, error: Error) => {
    if (!endReasons.has(client)) endReasons.set(client, 'error');
    log.debug({ clientId: client.id, err: error.message }, 'client connection error');
  };
  /** Agents announced before their connection counted as a device (the birth overtook the SUBSCRIBE's handling). */
  const earlyAgents = new WeakMap<Client, { agent: string; tz: string | undefined }>();
  const onBirth = (client: Client, payload: Buffer | string) => {
    if (payload.length === 0) return;
    const parsed = parsePayload(PresenceMessageSchema, payload);
    if (!parsed.ok) {
      log.debug({ device: client.id, problem: parsed.message }, 'malformed presence message ignored');
      return;
    }
    const agent = parsed.value.online ? parsed.value.agent : undefined;
    if (agent === undefined) return;
    const tz = parsed.value.tz;
    const link = links.get(client);
    if (link) presence.setAgent(client.id, link, agent, tz);
    else earlyAgents.set(client, { agent, tz });
  };
  const onActivity = (_packet: unknown, client: Client | null) => {
    if (!client) return;
    const link = links.get(client);
    if (link) presence.touch(client.id, link);
  };
  const onPublish = (packet: AedesPublishPacket, client: Client | null) => {
    if (!client) return;
    onActivity(packet, client);
    const topic = topics.parseDeviceTopic(packet.topic);
    // The access hooks let only device X publish on X's response, telemetry and state/reported topics.
    if (topic?.id !== client.id) return;
    if (topic.kind === 'response') on.response(topic.id, packet.payload);
    else if (topic.kind === 'presence') onBirth(client, packet.payload);
    else if (topic.kind === 'telemetry' && packet.topic === topics.deviceTags(client.id)) on.declaredTags(topic.id, packet.payload);
    else if (topic.kind === 'telemetry' && packet.topic === topics.deviceHealth(client.id)) on.health?.(topic.id, packet.payload);
    else if (topic.kind === 'state' && topic.state === 'reported') on.reportedState?.(topic.id, packet.payload);
  };

  // One table, so that close() removes exactly what was added.
  const listeners: [event: string, listener: (...args: any[]) => void][] = [
    ['client', onClient],
    ['subscribe', onSubscribe],
    ['clientDisconnect', onDisconnect],
    ['keepaliveTimeout', onKeepaliveTimeout],
    ['clientError', onClientError],
    ['ping', onActivity],
    ['publish', onPublish],
    ['ack', onActivity],
  ];
  const events = broker as unknown as EventEmitter;
  for (const [event, listener] of listeners) events.on(event, listener);

  return {
    noteAuthenticated(client) {
      authenticating.set(client.id, client);
    },
    close() {
      for (const { timer } of takeovers.values()) clearTimeout(timer);
      takeovers.clear();
      for (const [event, listener] of listeners) events.off(event, listener);
    },
  };
}
