/**
 * What presence remembers of each device between restarts (transport, address, connected-at,
 * last-seen), kept in the database. Writes are batched (one transaction at most every
 * second): a reconnect storm of thousands of devices costs one write, not thousands.
 */
import type { Logger } from './log.js';
import type { DeviceStore, SeenRecord } from './store/devices.js';

export type DeviceRecord = SeenRecord;
/** A device in the database as presence first learns of it: what was seen, and its tags. */
export type KnownDevice = SeenRecord & { tags: string[] };

const SAVE_DELAY_MS = 1000;

export class DeviceRegistry {
  private readonly pending = new Map<string, DeviceRecord>();
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly store: DeviceStore,
    private readonly log: Logger,
  ) {}

  /** Every device in the database, registered or merely seen. */
  all(): KnownDevice[] {
    return this.store.list();
  }

  /** The tags selectors match for one device, if the database holds it. */
  lookup(id: string): { tags: string[] } | undefined {
    const device = this.store.get(id);
    return device ? { tags: device.tags } : undefined;
  }

  put(record: DeviceRecord): void {
    this.pending.set(record.id, { ...record });
    if (this.timer) return;
    this.timer = setTimeout(() => this.flush(), SAVE_DELAY_MS);
    this.timer.unref();
  }

  /**
   * A removed device: what was seen of it is not written, or the write would bring its row
   * back (as a device without a token, which a cluster would replicate).
   */
  drop(id: string): void {
    this.pending.delete(id);
  }

  /** Writes pending changes now (also called on close). */
  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.pending.size === 0) return;
    const batch = [...this.pending.values()];
    this.pending.clear();
    try {
      this.store.recordSeen(batch);
    } catch (error) {
      this.log.error({ err: error }, 'cannot save what the hub saw of devices');
    }
  }
}
