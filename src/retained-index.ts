/**
 * Retained messages found by topic, not by scanning. On every SUBSCRIBE the broker asks its
 * persistence for the retained messages matching each filter, and the in-memory persistence
 * answers by testing every retained topic. The hub keeps one retained Status per device, and
 * every device subscribes to its own command topic when it connects: 10000 devices connecting
 * cost 10000 scans of 10000 statuses, which capped connects at about 200 a second. A filter
 * without wildcards (a device's command topic, one device's status) names at most one
 * retained message: this index answers it with one lookup; filters with `+` or `#` (a console
 * following every status) still go to the persistence's own scan.
 */
import { Readable } from 'node:stream';
import memory, { type AedesPersistence } from 'aedes-persistence';
import { hasWildcard } from './protocol/topics.js';

/** A retained PUBLISH as the persistence keeps it (the library types it as any MQTT packet). */
type Packet = { topic: string; payload: Buffer | string };

/** The broker's default in-memory persistence, indexed: for a hub that is not part of a cluster. */
export function indexedMemoryPersistence(): AedesPersistence {
  // A CommonJS module whose types declare an ES default export: at run time the import is the function.
  const create = memory as unknown as () => AedesPersistence;
  return indexRetained(create());
}

/** Wraps a single-process persistence (it must see every retained message stored). */
export function indexRetained<P extends AedesPersistence>(persistence: P): P {
  const byTopic = new Map<string, Packet>();
  const storeRetained = persistence.storeRetained.bind(persistence);
  const scan = persistence.createRetainedStreamCombi.bind(persistence);

  // Aedes calls it without a callback and waits on the promise it returns; keep both forms.
  persistence.storeRetained = ((packet: Packet, callback?: (error?: Error | null) => void) => {
    if (packet.payload.length === 0) byTopic.delete(packet.topic);
    else byTopic.set(packet.topic, { ...packet });
    return (storeRetained as unknown as (p: Packet, cb?: typeof callback) => unknown)(packet, callback);
  }) as unknown as P['storeRetained'];

  persistence.createRetainedStreamCombi = (filters) => {
    const wild = filters.filter(hasWildcard);
    if (wild.length === filters.length) return scan(filters);
    const exact: Packet[] = [];
    for (const filter of filters) {
      const packet = hasWildcard(filter) ? undefined : byTopic.get(filter);
      if (packet) exact.push(packet);
    }
    if (wild.length === 0) return Readable.from(exact);
    return Readable.from(concat(exact, scan(wild)));
  };
  return persistence;
}

async function* concat(first: Packet[], rest: Readable): AsyncGenerator<Packet> {
  yield* first;
  for await (const packet of rest) yield packet as Packet;
}
