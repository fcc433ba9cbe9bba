/**
 * In a cluster, the QoS 1 queue of a persistent session (a device's commands waiting for their
 * PUBACK) is kept in memory on the node the client is connected to, and written to Redis when
 * the client disconnects, where the node it reconnects to finds it.
 *
 * aedes-persistence-redis keeps every queued message in Redis from the start: about eight
 * Redis commands per delivery (the packet, its count, the client's list on enqueue; the
 * message id on delivery; a read, a list removal, a decrement and deletes on the PUBACK),
 * most of a cluster node's CPU per command round trip. A connected client acknowledges its
 * messages within milliseconds, so those writes bought nothing but safety against the node
 * dying, when its devices reconnect elsewhere and the hub has answered their commands in
 * flight `DEVICE_OFFLINE` anyway.
 *
 * What a client that is connected here was sent and had not acknowledged when it disconnects
 * is written to its Redis queue then; a reconnect to this node waits for that write. A node
 * that dies loses those unacknowledged messages (as with any broker that keeps sessions in
 * memory).
 */
import { Readable } from 'node:stream';
import type { Aedes, Client } from 'aedes';
import type { Logger } from '../log.js';

interface QueuedPacket {
  brokerId?: string;
  brokerCounter?: number;
  messageId?: number;
  cmd?: string;
  [field: string]: unknown;
}

interface Sub {
  clientId: string;
  [field: string]: unknown;
}

type Callback = ((error: Error | null, result?: unknown) => void) | undefined;

/** The queue methods of Aedes' persistence (each returns a promise when called without a callback). */
interface QueuePersistence {
  outgoingEnqueue(sub: Sub, packet: QueuedPacket, cb?: Callback): Promise<void> | undefined;
  outgoingEnqueueCombi(subs: Sub[], packet: QueuedPacket, cb?: Callback): Promise<void> | undefined;
  outgoingUpdate(client: Client, packet: QueuedPacket, cb?: Callback): Promise<unknown> | undefined;
  outgoingClearMessageId(client: Client, packet: QueuedPacket, cb?: Callback): Promise<unknown> | undefined;
  outgoingStream(client: Client): AsyncIterable<QueuedPacket> & NodeJS.ReadableStream;
}

const sameMessage = (a: QueuedPacket, b: QueuedPacket) => a.brokerId === b.brokerId && a.brokerCounter === b.brokerCounter;

/**
 * Answers like the persistence: through the callback when there is one (with what it passes),
 * else as a promise (of what the promise form resolves with: outgoingUpdate's with nothing).
 */
function answer<T>(cb: Callback, callbackValue: unknown, promised: T): Promise<T> | undefined {
  if (cb) {
    process.nextTick(cb, null, callbackValue);
    return undefined;
  }
  return Promise.resolve(promised);
}

export function keepSessionQueuesLocal(broker: Aedes, log: Logger): void {
  const persistence = (broker as unknown as { persistence: QueuePersistence }).persistence;
  const clients = (broker as unknown as { clients: Record<string, Client | undefined> }).clients;
  const original = {
    enqueueCombi: persistence.outgoingEnqueueCombi.bind(persistence),
    update: persistence.outgoingUpdate.bind(persistence),
    clear: persistence.outgoingClearMessageId.bind(persistence),
    stream: persistence.outgoingStream.bind(persistence),
  };
  /** Queues of persistent-session clients connected here (per connection: a takeover starts its own). */
  const queues = new Map<Client, QueuedPacket[]>();
  /** Queues being written to Redis after a disconnect, by client id. */
  const flushing = new Map<string, Promise<void>>();

  const here = (clientId: string): QueuedPacket[] | undefined => {
    const client = clients[clientId];
    if (!client || client.closed || client.clean) return undefined;
    let queue = queues.get(client);
    if (!queue) queues.set(client, (queue = []));
    return queue;
  };

  persistence.outgoingEnqueueCombi = (subs, packet, cb) => {
    const elsewhere: Sub[] = [];
    for (const sub of subs ?? []) {
      const queue = here(sub.clientId);
      if (queue) queue.push({ ...packet, messageId: undefined });
      else elsewhere.push(sub);
    }
    if (elsewhere.length > 0) return original.enqueueCombi(elsewhere, packet, cb);
    return answer(cb, undefined, undefined);
  };
  persistence.outgoingEnqueue = (sub, packet, cb) => persistence.outgoingEnqueueCombi([sub], packet, cb);

  persistence.outgoingUpdate = (client, packet, cb) => {
    const queue = queues.get(client);
    const index = queue ? queue.findIndex((queued) => (packet.cmd === 'pubrel' ? queued.messageId === packet.messageId : sameMessage(queued, packet))) : -1;
    if (index < 0) return original.update(client, packet, cb);
    queue![index] = packet.cmd === 'pubrel' ? { ...packet } : { ...queue![index], messageId: packet.messageId };
    return answer(cb, client, undefined);
  };

  persistence.outgoingClearMessageId = (client, packet, cb) => {
    const queue = queues.get(client);
    const index = queue ? queue.findIndex((queued) => queued.messageId === packet.messageId) : -1;
    if (index < 0) return original.clear(client, packet, cb);
    const [cleared] = queue!.splice(index, 1);
    return answer(cb, cleared, cleared);
  };

  // A reconnect to this node reads its queue once the last disconnect's write is done.
  persistence.outgoingStream = (client) => {
    const pending = flushing.get(client.id);
    if (!pending) return original.stream(client);
    async function* afterFlush(): AsyncGenerator<QueuedPacket> {
      await pending;
      for await (const packet of original.stream(client)) yield packet as QueuedPacket;
    }
    return Readable.from(afterFlush()) as unknown as ReturnType<QueuePersistence['outgoingStream']>;
  };

  broker.on('clientDisconnect', (client: Client) => {
    const queue = queues.get(client);
    if (!queue) return;
    queues.delete(client);
    if (queue.length === 0) return;
    const previous = flushing.get(client.id) ?? Promise.resolve();
    const write = previous
      .then(async () => {
        for (const packet of queue) await original.enqueueCombi([{ clientId: client.id }], packet);
      })
      .catch((error: Error) => log.warn({ clientId: client.id, queued: queue.length, err: error.message }, 'cluster: a disconnected session\'s queue was not written to Redis'))
      .finally(() => {
        if (flushing.get(client.id) === write) flushing.delete(client.id);
      });
    flushing.set(client.id, write);
  });
}
