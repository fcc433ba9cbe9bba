/**
 * Presence on an external broker, which tells the hub nothing of connections: each device
 * publishes a retained birth on `P/devices/{id}/presence` when it connects and leaves a
 * retained will there, both with a nonce new on every connect (docs/protocol.md "Presence
 * messages"). A birth makes the device online over an ExternalLink; a will (or clean
 * offline) counts only when its nonce is the current birth's, so an older connection's will,
 * published late, never marks a reconnected device offline.
 */
import type { IClientPublishOptions } from 'mqtt';
import type { Logger } from '../log.js';
import type { DeviceLink, Presence } from '../presence.js';
import { PresenceMessageSchema, parsePayload, type Command, type Transport } from '../protocol/schemas.js';
import type { Topics } from '../protocol/topics.js';
import type { Uplink } from './uplink.js';

/**
 * How long past its timeout a command may wait in the broker for a device that is away:
 * past that the broker drops it (MQTT 5 Message Expiry), since the hub has answered TIMEOUT.
 */
const EXPIRY_GRACE_S = 5;

/** A device reached through the external broker: a command is a publish on its command topic. */
export class ExternalLink implements DeviceLink {
  readonly remoteAddress = null;
  private readonly commandTopic: string;

  constructor(
    private readonly uplink: Uplink,
    topics: Topics,
    readonly id: string,
    readonly nonce: string,
    readonly transport: Transport,
    /** The agent and version from the birth, e.g. "hypha/0.1.0". */
    readonly agent: string | undefined,
    /** The birth offered tunnels. */
    readonly tunnels: boolean,
    /** The birth's time zone. */
    readonly tz?: string,
  ) {
    this.commandTopic = topics.deviceCommand(id);
  }

  send(command: Command): void {
    const options: IClientPublishOptions = { qos: 1 };
    // MQTT 5: a command the device could no longer answer in time is not delivered later.
    if (this.uplink.protocolVersion === 5) options.properties = { messageExpiryInterval: Math.ceil(command.timeout_ms / 1000) + EXPIRY_GRACE_S };
    this.uplink.publish(this.commandTopic, JSON.stringify(command), options);
  }

  unavailable(): string | null {
    const reason = this.uplink.unavailableReason;
    return reason === null ? null : `the hub has no connection to the broker (${reason}); it reconnects by itself`;
  }

  /** The broker owns the connection; the hub cannot close it (a broker's ACL sync ends a removed device's). */
  close(): void {}
}

export interface ExternalDevicesOptions {
  uplink: Uplink;
  topics: Topics;
  presence: Presence;
  log: Logger;
  /** Whether a device the registry does not know may still appear (as under --allow-anonymous). */
  admitUnknown: boolean;
  isRegistered: (id: string) => boolean;
}

export interface ExternalDevices {
  /** A message on `P/devices/{id}/presence`. */
  onPresence(id: string, payload: Buffer): void;
  /** Any other message from a device (a Response, telemetry, a tunnel frame): it is alive. */
  touch(id: string): void;
  /**
   * The broker forgot the hub's session (it restarted, say): the devices it held may be gone.
   * Each one not re-announced (its retained birth, or a new one) within `graceMs` goes offline.
   */
  sessionLost(graceMs: number): void;
  close(): void;
}

export function watchExternalDevices({ uplink, topics, presence, log, admitUnknown, isRegistered }: ExternalDevicesOptions): ExternalDevices {
  const links = new Map<string, ExternalLink>();
  /** Unknown ids already warned about (once each, not on every birth). */
  const warnedUnknown = new Set<string>();
  let recheck: { timer: NodeJS.Timeout; confirmed: Set<string> } | null = null;

  const online = (id: string, nonce: string, transport: Transport, agent: string | undefined, tunnels: boolean, tz: string | undefined) => {
    recheck?.confirmed.add(id);
    const current = links.get(id);
    if (current?.nonce === nonce) return presence.touch(id, current);
    if (!admitUnknown && !isRegistered(id)) {
      if (!warnedUnknown.has(id)) log.warn({ code: 'UNKNOWN_DEVICE', device: id }, `device ${id} announced itself but is not registered: add it (rhizosphere device add ${id}) or run with --allow-anonymous`);
      warnedUnknown.add(id);
      return;
    }
    const link = new ExternalLink(uplink, topics, id, nonce, transport, agent, tunnels, tz);
    links.set(id, link);
    // A link already there is replaced without an offline flap (a reconnect: a takeover).
    presence.attach(id, link);
  };

  const offline = (id: string, nonce: string) => {
    const current = links.get(id);
    if (!current) return;
    if (current.nonce !== nonce) {
      log.debug({ device: id, nonce }, 'will of an older connection: the device has reconnected since, so it stays online');
      return;
    }
    links.delete(id);
    presence.detach(id, current, 'disconnect');
  };

  const onOffline = (device: { id: string }) => {
    // Presence let the device go by other means (removed, say): forget its link too.
    const link = links.get(device.id);
    if (link && presence.get(device.id)?.link !== link) links.delete(device.id);
  };
  presence.on('offline', onOffline);

  return {
    onPresence(id, payload) {
      // An empty retained message clears the topic (a removed device): nothing to learn.
      if (payload.length === 0) return;
      const parsed = parsePayload(PresenceMessageSchema, payload);
      if (!parsed.ok) {
        log.warn({ code: 'BAD_REQUEST', device: id, problem: parsed.message }, 'malformed presence message ignored');
        return;
      }
      const { online: isOnline, nonce, transport, agent, tunnels, tz } = parsed.value;
      if (isOnline) online(id, nonce, transport ?? 'mqtt', agent, tunnels ?? false, tz);
      else offline(id, nonce);
    },
    touch(id) {
      const link = links.get(id);
      if (link) presence.touch(id, link);
    },
    sessionLost(graceMs) {
      if (recheck) clearTimeout(recheck.timer);
      const confirmed = new Set<string>();
      const timer = setTimeout(() => {
        recheck = null;
        for (const [id, link] of [...links]) {
          if (confirmed.has(id)) continue;
          links.delete(id);
          presence.detach(id, link, 'disconnect');
        }
      }, graceMs);
      timer.unref();
      recheck = { timer, confirmed };
    },
    close() {
      if (recheck) clearTimeout(recheck.timer);
      presence.off('offline', onOffline);
    },
  };
}
