/**
 * The hub's own commands and Replies, delivered straight to the one connection that waits for
 * them. A command on `P/devices/X/command` is for device X, a Reply on `P/clients/Y/response`
 * for client Y; almost always nobody else subscribes to those topics. Sent through the broker,
 * each still pays for the broker's whole publish path: a packet copy, the retained-message
 * step, a topic match in the emitter, a second match against the persistent sessions, and the
 * 'publish' event to every listener of the hub, before the one write it needs.
 *
 * So the hub asks once whether the connection is the topic's only subscriber (live or
 * persistent, client or handler), keeps the answer until any subscription anywhere changes,
 * and meanwhile hands the packet to the connection's own delivery (QoS, message id, session
 * queue and the authorizeForward count all as the broker does). When anybody else subscribes
 * (a `#` in MQTT Explorer, a handler, an admin's mosquitto_sub), everything goes through the
 * broker again, so what third-party tools see is unchanged.
 *
 * In a cluster the bus (src/cluster/route-emitter.ts) also knows whether another node
 * subscribes: a topic followed elsewhere goes through the broker, and so over Redis.
 */
import type { Aedes, AedesPublishPacket, Client } from 'aedes';

/** What the hub last learned about one topic and connection. */
export interface SoleMemo {
  /** The subscription generation the answer was found in; -1: never asked. */
  generation: number;
  sole: boolean;
  /** A lookup is under way. */
  asking: boolean;
}

export const newMemo = (): SoleMemo => ({ generation: -1, sole: false, asking: false });

export interface DirectDelivery {
  /**
   * Publishes one of the hub's own packets on `packet.topic`: straight to `client` when it
   * holds that exact subscription and nobody else matches the topic, else through the broker.
   */
  publish(packet: AedesPublishPacket, client: Client | undefined, memo: SoleMemo): void;
  /** How many packets went each way (for the tests and the bench). */
  readonly counts: { direct: number; broker: number };
}

interface Emitter {
  /** The cluster's bus: whether another node subscribes to the topic, and a hook for changes of that. */
  remoteSubscribed?(topic: string): boolean;
  onRemoteChange?: () => void;
  on(topic: string, notify: unknown, done?: () => void): unknown;
  removeListener(topic: string, notify: unknown, done?: () => void): unknown;
  removeAllListeners?(topic: string, done?: () => void): unknown;
  _matcher?: { match(topic: string): unknown[] };
}

type SubscriptionPersistence = {
  subscriptionsByTopic(topic: string): Promise<{ clientId: string }[]>;
} & Record<'addSubscriptions' | 'removeSubscriptions' | 'cleanSubscriptions', (...args: unknown[]) => unknown>;

const noop = () => {};

export function directDelivery(broker: Aedes, enabled = true): DirectDelivery {
  const counts = { direct: 0, broker: 0 };
  const viaBroker = (packet: AedesPublishPacket) => {
    counts.broker++;
    broker.publish(packet, noop);
  };
  const internals = broker as unknown as { mq?: Emitter; persistence: SubscriptionPersistence };
  const mq = internals.mq;
  const matcher = mq?._matcher;
  if (!enabled || !mq || !matcher) return { counts, publish: viaBroker };

  // Every subscription change, in the emitter (live clients, handlers) or in the persistent
  // sessions (offline clients), starts a new generation: every answer is asked again.
  let generation = 0;
  const bump = () => {
    generation++;
  };
  for (const method of ['on', 'removeListener', 'removeAllListeners'] as const) {
    const original = mq[method] as ((...args: unknown[]) => unknown) | undefined;
    if (!original) continue;
    (mq as unknown as Record<string, unknown>)[method] = function (this: unknown, ...args: unknown[]) {
      bump();
      return original.apply(this, args);
    };
  }
  const persistence = internals.persistence;
  if (mq.remoteSubscribed) mq.onRemoteChange = bump;
  const remote = (topic: string) => mq.remoteSubscribed?.(topic) ?? false;
  for (const method of ['addSubscriptions', 'removeSubscriptions', 'cleanSubscriptions'] as const) {
    const original = persistence[method];
    persistence[method] = function (this: unknown, ...args: unknown[]) {
      bump();
      const result = original.apply(this, args);
      // Asked again once the change has landed too (the memory persistence applies it at once; another may not).
      if (result && typeof (result as Promise<unknown>).finally === 'function') void (result as Promise<unknown>).finally(bump).catch(noop);
      return result;
    };
  }

  /** Finds out, in the background, whether `client` alone subscribes to `topic`. */
  const ask = (topic: string, client: Client, memo: SoleMemo) => {
    memo.asking = true;
    const asked = generation;
    const live = matcher.match(topic).length === 1 && !remote(topic);
    void persistence.subscriptionsByTopic(topic).then(
      (stored) => {
        memo.asking = false;
        if (generation !== asked) return;
        memo.generation = asked;
        memo.sole = live && stored.every((s) => s.clientId === client.id);
      },
      () => {
        memo.asking = false;
      },
    );
  };

  return {
    counts,
    publish(packet, client, memo) {
      const own = client && !client.closed && (client as unknown as { subscriptions?: Record<string, unknown> }).subscriptions?.[packet.topic];
      if (!client || !own) return viaBroker(packet);
      if (memo.generation === generation && memo.sole) {
        counts.direct++;
        client.publish(packet, noop);
        return;
      }
      if (memo.generation !== generation && !memo.asking) ask(packet.topic, client, memo);
      viaBroker(packet);
    },
  };
}
