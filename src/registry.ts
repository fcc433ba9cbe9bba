/**
 * Devices the hub has seen, kept in `<data-dir>/devices.json` so that the device list,
 * UNKNOWN_DEVICE versus DEVICE_OFFLINE and the retained offline statuses survive a restart.
 * Writes are batched (one atomic rename at most every second): a reconnect storm of
 * thousands of devices costs one write, not thousands.
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from './log.js';
import { isValidId } from './protocol/ids.js';
import type { Transport } from './protocol/schemas.js';

export interface DeviceRecord {
  id: string;
  transport: Transport | null;
  remoteAddress: string | null;
  /** Epoch ms of the last connect, null if never. */
  connectedAt: number | null;
  /** Epoch ms of the last packet seen from the device. */
  lastSeen: number | null;
}

const SAVE_DELAY_MS = 1000;

export class DeviceRegistry {
  private readonly records = new Map<string, DeviceRecord>();
  private readonly file: string;
  private timer: NodeJS.Timeout | null = null;

  constructor(dataDir: string, private readonly log: Logger) {
    mkdirSync(dataDir, { recursive: true });
    this.file = join(dataDir, 'devices.json');
    this.load();
  }

  private load(): void {
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw error;
    }
    let list: unknown;
    try {
      list = JSON.parse(text);
    } catch {
      // A damaged file must not stop the hub: devices re-register as they reconnect.
      this.log.warn({ file: this.file }, 'device registry is not valid JSON; starting with an empty one');
      return;
    }
    if (!Array.isArray(list)) return;
    for (const item of list as Partial<DeviceRecord>[]) {
      if (!item || !isValidId(item.id)) continue;
      this.records.set(item.id, {
        id: item.id,
        transport: item.transport ?? null,
        remoteAddress: item.remoteAddress ?? null,
        connectedAt: typeof item.connectedAt === 'number' ? item.connectedAt : null,
        lastSeen: typeof item.lastSeen === 'number' ? item.lastSeen : null,
      });
    }
  }

  all(): IterableIterator<DeviceRecord> {
    return this.records.values();
  }

  get(id: string): DeviceRecord | undefined {
    return this.records.get(id);
  }

  put(record: DeviceRecord): void {
    this.records.set(record.id, { ...record });
    this.scheduleSave();
  }

  private scheduleSave(): void {
    if (this.timer) return;
    this.timer = setTimeout(() => this.flush(), SAVE_DELAY_MS);
    this.timer.unref();
  }

  /** Writes pending changes now (also called on close). */
  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const tmp = `${this.file}.tmp`;
    try {
      writeFileSync(tmp, JSON.stringify([...this.records.values()]));
      renameSync(tmp, this.file);
    } catch (error) {
      this.log.error({ err: error, file: this.file }, 'cannot save the device registry');
    }
  }
}
