/**
 * The hub's own commands and Replies, delivered straight to the one connection that waits for
 * them. A command on `P/devices/X/command` is for device X, a Reply on `P/clients/Y/response`
 * for client Y; almost always nobody else subscribes to those topics. Sent through the broker,
 * each still pays for the broker's whole publish path: a packet copy, the retained-message
 * step, a topic match in the emitter, a second match against the persistent sessions, and the
 * 'publish' event to every listener of the hub, before the one write it needs.
 *
 * So the hub asks once whether the connection is the topic's only subscriber (live or
 * persistent, client or handler), keeps the answer until a subscription that may match the
 * topic changes, and meanwhile hands the packet to the connection's own delivery (QoS, message id, session
 * queue and the authorizeForward count all as the broker does). When anybody else subscribes
 * (a `#` in MQTT Explorer, a handler, an admin's mosquitto_sub), everything goes through the
 * broker again, so what third-party tools see is unchanged.
 *
 * In a cluster the bus (src/cluster/route-emitter.ts) also knows whether another node
 * subscribes: a topic followed elsewhere goes through the broker, and so over Redis.
 *
 * The other way, a client's Request and a device's Response are read by the hub alone (its
 * 'publish' listeners): when nobody subscribes to their topic, the broker's publish path has
 * nobody to deliver them to, and they go to those listeners at once (`takeIncoming`).
 */
import type { Aedes, AedesPublishPacket, Client } from 'aedes';
import { filterCovers } from './auth/acl.js';
import { hasWildcard } from './protocol/topics.js';

/** What the hub last learned about one topic and connection. */
export interface SoleMemo {
  /** undefined: not known (never asked, or a subscription that may match the topic changed since). */
  sole: boolean | undefined;
  /** A lookup is under way. */
  asking: boolean;
  /** Bumped by every change that may concern the topic: a lookup started before it is not kept. */
  version: number;
}

export const newMemo = (): SoleMemo => ({ sole: undefined, asking: false, version: 0 });

export interface DirectDelivery {
  /**
   * Publishes one of the hub's own packets on `packet.topic`: straight to `client` when it
   * holds that exact subscription and nobody else matches the topic, else through the broker.
   */
  publish(packet: AedesPublishPacket, client: Client | undefined, memo: SoleMemo): void;
  /** Finds out now, in the background, what `publish` will need for `topic` (a device that just came online). */
  prime(topic: string, client: Client, memo: SoleMemo): void;
  /** Likewise for a topic the hub alone reads (a device's Responses, as it comes online): its first publish can skip the broker too. */
  primeIncoming(topic: string): void;
  /**
   * From now on a client's publish on a topic `readByHub` names (Requests, Responses) skips the
   * broker's publish path (packet copy, retained step, session and emitter matches) while
   * nobody subscribes to that topic: the hub's 'publish' listeners get it straight away.
   */
  takeIncoming(readByHub: (topic: string) => boolean): void;
  /** How many packets went each way (for the tests and the bench): the hub's own, and clients' it alone reads. */
  readonly counts: { direct: number; broker: number; incomingDirect: number; incomingBroker: number };
}

interface Emitter {
  /** The cluster's bus: whether another node subscribes to the topic, and a hook for changes of its routes (undefined: all may have changed). */
  remoteSubscribed?(topic: string): boolean;
  onRemoteChange?: (filters: string[] | undefined) => void;
  on(topic: string, notify: unknown, done?: () => void): unknown;
  removeListener(topic: string, notify: unknown, done?: () => void): unknown;
  removeAllListeners?(topic: string, done?: () => void): unknown;
  _matcher?: { match(topic: string): unknown[] };
}

type SubscriptionPersistence = {
  subscriptionsByTopic(topic: string): Promise<{ clientId: string }[]>;
  subscriptionsByClient(client: { id: string }): Promise<{ topic: string }[] | null>;
  cleanSubscriptions(client: { id: string }): Promise<unknown>;
} & Record<'addSubscriptions' | 'removeSubscriptions', (...args: unknown[]) => unknown>;

const noop = () => {};
/** The filters a persistence call changes: undefined when it does not say. */
function filtersOf(args: unknown[]): string[] | undefined {
  const subs = args[1];
  if (!Array.isArray(subs)) return undefined;
  return subs.map((sub) => (typeof sub === 'string' ? sub : String((sub as { topic?: unknown }).topic)));
}

export function directDelivery(broker: Aedes, enabled = true): DirectDelivery {
  const counts = { direct: 0, broker: 0, incomingDirect: 0, incomingBroker: 0 };
  const viaBroker = (packet: AedesPublishPacket) => {
    counts.broker++;
    broker.publish(packet, noop);
  };
  const internals = broker as unknown as { mq?: Emitter; persistence: SubscriptionPersistence };
  const mq = internals.mq;
  const matcher = mq?._matcher;
  if (!enabled || !mq || !matcher) return { counts, publish: viaBroker, prime: noop, primeIncoming: noop, takeIncoming: noop };
  const persistence = internals.persistence;

  /**
   * The answers kept, by topic (the latest connection's). A subscription change forgets only
   * the answers it may concern: an exact filter its own topic's, a filter with wildcards those
   * of the topics it matches; a change that does not say which filters (a session cleaned,
   * another node starting again) forgets all. A device that reconnects, or a console that
   * follows every status, leaves the other devices' answers alone.
   */
  const memos = new Map<string, SoleMemo>();
  /** The last levels of the topics answers are kept for (`command`, `response`). */
  const lastLevels = new Set<string>();
  const forget = (memo: SoleMemo) => {
    memo.sole = undefined;
    memo.version++;
  };
  const changed = (filters: readonly string[] | undefined) => {
    if (filters === undefined) {
      for (const memo of memos.values()) forget(memo);
      memos.clear();
      return;
    }
    for (const filter of filters) {
      if (!hasWildcard(filter)) {
        const memo = memos.get(filter);
        if (memo) {
          forget(memo);
          memos.delete(filter);
        }
        continue;
      }
      // Most wildcard filters end in a level no kept topic ends in (a device's tunnels/+/in, a
      // console's +/status): those cannot match any, and tens of thousands of devices
      // connecting must not each scan every answer.
      const last = filter.slice(filter.lastIndexOf('/') + 1);
      if (last !== '#' && last !== '+' && !lastLevels.has(last)) continue;
      for (const [topic, memo] of memos) {
        if (!filterCovers(filter, topic)) continue;
        forget(memo);
        memos.delete(topic);
      }
    }
  };
  for (const method of ['on', 'removeListener', 'removeAllListeners'] as const) {
    const original = mq[method] as ((...args: unknown[]) => unknown) | undefined;
    if (!original) continue;
    (mq as unknown as Record<string, unknown>)[method] = function (this: unknown, ...args: unknown[]) {
      const filters = [String(args[0])];
      changed(filters);
      // The emitter removes a listener on a later turn: answers found meanwhile are forgotten again once it has.
      if (method !== 'on') {
        const at = method === 'removeListener' ? 2 : 1;
        const done = args[at] as (() => void) | undefined;
        args[at] = () => {
          changed(filters);
          done?.();
        };
      }
      return original.apply(this, args);
    };
  }
  for (const method of ['addSubscriptions', 'removeSubscriptions'] as const) {
    const original = persistence[method];
    persistence[method] = function (this: unknown, ...args: unknown[]) {
      const filters = filtersOf(args);
      changed(filters);
      const result = original.apply(this, args);
      // Asked again once the change has landed too (the memory persistence applies it at once; another may not).
      if (result && typeof (result as Promise<unknown>).finally === 'function') void (result as Promise<unknown>).finally(() => changed(filters)).catch(noop);
      return result;
    };
  }
  // Every clean session's connect drops what an earlier session of its id subscribed to: those
  // filters, looked up first. Almost always there are none (a console, a script, a device with
  // a clean session), and then no answer is forgotten; forgetting all of them on every such
  // connect sent 19000 devices' first messages back through the broker.
  const clean = persistence.cleanSubscriptions;
  persistence.cleanSubscriptions = function (this: unknown, client: { id: string }) {
    return persistence.subscriptionsByClient(client).then((subs) => {
      const filters = (subs ?? []).map((sub) => sub.topic);
      if (filters.length > 0) changed(filters);
      return clean.call(this, client).finally(() => {
        if (filters.length > 0) changed(filters);
      });
    });
  };
  if (mq.remoteSubscribed) mq.onRemoteChange = changed;
  const remote = (topic: string) => mq.remoteSubscribed?.(topic) ?? false;

  /**
   * Direct packets are numbered on their own. A client drops a packet whose number is not above
   * the last it got from the same broker id (Aedes' dedupe), and a direct packet reaches the
   * client in fewer steps than a brokered one published just before it: under one id the
   * brokered one (a tunnel frame, a state delta) would be dropped, and its queue entry with it.
   */
  const directId = `${(broker as unknown as { id: string }).id}~direct`;
  // Numbers of an earlier run under the same id may still name packets queued in Redis (a cluster node's id is its --node-id).
  let directCounter = Date.now() * 1000;

  const holds = (client: Client, topic: string) => !client.closed && Boolean((client as unknown as { subscriptions?: Record<string, unknown> }).subscriptions?.[topic]);

  /** Finds out, in the background, whether `client` alone subscribes to `topic` (null: whether nobody does). */
  const ask = (topic: string, client: Client | null, memo: SoleMemo) => {
    memo.asking = true;
    // Kept from now on, so that a change while the persistence answers is seen (and asked again).
    const previous = memos.get(topic);
    if (previous && previous !== memo) forget(previous);
    memos.set(topic, memo);
    lastLevels.add(topic.slice(topic.lastIndexOf('/') + 1));
    const asked = memo.version;
    const live = matcher.match(topic).length === (client ? 1 : 0) && !remote(topic);
    void persistence.subscriptionsByTopic(topic).then(
      (stored) => {
        memo.asking = false;
        // Something changed meanwhile (often the subscription being asked about, landing in the persistence): ask again.
        if (memo.version !== asked) return !client || holds(client, topic) ? ask(topic, client, memo) : undefined;
        memo.sole = live && (client ? stored.every((s) => s.clientId === client.id) : stored.length === 0);
      },
      () => {
        memo.asking = false;
      },
    );
  };

  /** Whether nobody subscribes to `topic`, as last found out; asks when not known. */
  const unheard = (topic: string): boolean => {
    const memo = memos.get(topic);
    if (memo?.sole === true) return true;
    if (!memo) ask(topic, null, newMemo());
    else if (memo.sole === undefined && !memo.asking) ask(topic, null, memo);
    return false;
  };

  return {
    counts,
    takeIncoming(readByHub) {
      const publish = broker.publish;
      const internals = broker as unknown as { published: (packet: AedesPublishPacket, client: Client, done: (error?: Error) => void) => void };
      broker.publish = function (this: Aedes, packet: AedesPublishPacket, client: unknown, done?: unknown) {
        if (client && typeof client === 'object' && !packet.retain && readByHub(packet.topic)) {
          if (unheard(packet.topic)) {
            counts.incomingDirect++;
            // What the broker's last step does; the steps before it had nobody to deliver to.
            internals.published(packet, client as Client, typeof done === 'function' ? (done as (error?: Error) => void) : noop);
            broker.emit('publish', packet, client as Client);
            return;
          }
          counts.incomingBroker++;
        }
        return (publish as (...args: unknown[]) => void).call(this, packet, client, done);
      } as Aedes['publish'];
    },
    primeIncoming(topic) {
      unheard(topic);
    },
    prime(topic, client, memo) {
      if (memo.sole === undefined && !memo.asking && holds(client, topic)) ask(topic, client, memo);
    },
    publish(packet, client, memo) {
      if (!client || !holds(client, packet.topic)) return viaBroker(packet);
      if (memo.sole === true) {
        counts.direct++;
        Object.assign(packet, { brokerId: directId, brokerCounter: ++directCounter });
        client.publish(packet, noop);
        return;
      }
      if (memo.sole === undefined && !memo.asking) ask(packet.topic, client, memo);
      viaBroker(packet);
    },
  };
}
