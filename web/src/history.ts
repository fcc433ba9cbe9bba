/** Commands sent to each device from this browser, kept in localStorage. */
import type { Order } from './types.js';

export interface HistoryEntry {
  cmd: string;
  order: Order;
  at: string;
}

const KEEP = 100;
const key = (device: string) => `rhizosphere.history.${device}`;

export function loadHistory(device: string): HistoryEntry[] {
  try {
    const parsed = JSON.parse(localStorage.getItem(key(device)) ?? '[]') as unknown;
    return Array.isArray(parsed) ? (parsed as HistoryEntry[]).filter((e) => typeof e?.cmd === 'string') : [];
  } catch {
    return [];
  }
}

export function remember(device: string, entry: HistoryEntry): HistoryEntry[] {
  const list = loadHistory(device).filter((e) => !(e.cmd === entry.cmd && e.order === entry.order));
  list.push(entry);
  const kept = list.slice(-KEEP);
  try {
    localStorage.setItem(key(device), JSON.stringify(kept));
  } catch {
    // storage full or disabled: the history just does not persist
  }
  return kept;
}
