/**
 * The device list, virtualised: only the rows in view (plus a margin) exist in the DOM, so
 * 20000 devices scroll and filter as smoothly as 20. Changes are applied once per frame.
 */
import { el, relativeTime } from './format.js';
import type { Device } from './types.js';

const ROW_HEIGHT = 44;
const OVERSCAN = 8;

export type ListFilter = { text: string; show: 'all' | 'online' | 'offline' };

/** What the list reads: the devices (mutable objects, updated in place) and counters kept by the hub link. */
export interface DeviceSource {
  readonly devices: ReadonlyMap<string, Device>;
  readonly onlineCount: number;
  readonly idsVersion: number;
}

/** A filter word matches a device whose id contains it, or one of whose tags does. */
function matchesTerm(device: Device, term: string): boolean {
  return device.id.toLowerCase().includes(term) || device.tags.some((tag) => tag.toLowerCase().includes(term));
}

export class DeviceList {
  /** Every device, sorted by id; rebuilt only when the set of ids changes. */
  private sorted: Device[] = [];
  private sortedVersion = -1;
  /** The sorted devices that pass the filter. */
  private rows: Device[] = [];
  private selected: string | null = null;
  private frame = 0;
  private refilter = true;
  private readonly spacer: HTMLDivElement;
  private readonly window: HTMLDivElement;
  private filter: ListFilter = { text: '', show: 'all' };

  constructor(
    private readonly scroller: HTMLElement,
    private readonly source: DeviceSource,
    private readonly onSelect: (id: string) => void,
    private readonly onCounts: (shown: number, online: number, total: number) => void,
  ) {
    this.spacer = el('div', 'list-spacer');
    this.window = el('div', 'list-window');
    this.window.setAttribute('role', 'listbox');
    this.spacer.append(this.window);
    scroller.append(this.spacer);
    scroller.addEventListener('scroll', () => this.schedule(false));
    new ResizeObserver(() => this.schedule(false)).observe(scroller);
    this.window.addEventListener('click', (event) => {
      const row = (event.target as HTMLElement).closest<HTMLElement>('[data-id]');
      if (row?.dataset.id) this.onSelect(row.dataset.id);
    });
  }

  setFilter(filter: ListFilter): void {
    this.filter = filter;
    this.schedule(true);
  }

  select(id: string | null): void {
    this.selected = id;
    this.schedule(false);
  }

  /**
   * Devices changed. A status change only repaints the rows in view, unless the list is
   * filtered by online state; new ids re-sort. Work is batched to the next frame.
   */
  refresh(): void {
    this.schedule(this.filter.show !== 'all' || this.filter.text.trim() !== '');
  }

  private schedule(refilter: boolean): void {
    this.refilter ||= refilter;
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.collect();
      this.paint();
    });
  }

  private collect(): void {
    if (this.sortedVersion !== this.source.idsVersion) {
      this.sorted = [...this.source.devices.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      this.sortedVersion = this.source.idsVersion;
      this.refilter = true;
    }
    if (this.refilter) {
      const terms = this.filter.text.trim().toLowerCase().split(/\s+/).filter(Boolean);
      const show = this.filter.show;
      this.rows =
        terms.length === 0 && show === 'all'
          ? this.sorted
          : this.sorted.filter((device) => (show === 'all' || (show === 'online') === device.online) && terms.every((term) => matchesTerm(device, term)));
      this.spacer.style.height = `${this.rows.length * ROW_HEIGHT}px`;
      this.refilter = false;
    }
    this.onCounts(this.rows.length, this.source.onlineCount, this.source.devices.size);
  }
  private paint(): void {
    const top = this.scroller.scrollTop;
    const height = this.scroller.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(this.rows.length, Math.ceil((top + height) / ROW_HEIGHT) + OVERSCAN);
    this.window.style.transform = `translateY(${first * ROW_HEIGHT}px)`;
    const now = Date.now();
    const nodes: HTMLElement[] = [];
    for (let i = first; i < last; i++) nodes.push(this.row(this.rows[i]!, now));
    this.window.replaceChildren(...nodes);
    if (this.rows.length === 0) {
      this.window.replaceChildren(el('div', 'list-empty', this.filter.text || this.filter.show !== 'all' ? 'No device matches the filter.' : 'No device has connected yet.'));
    }
  }

  private row(device: Device, now: number): HTMLElement {
    const row = el('div', `device-row${device.online ? ' online' : ''}${device.id === this.selected ? ' selected' : ''}`);
    row.dataset.id = device.id;
    row.setAttribute('role', 'option');
    row.setAttribute('aria-selected', String(device.id === this.selected));
    row.append(el('span', 'dot'), el('span', 'device-id', device.id));
    if (device.tags.length > 0) {
      const tags = el('span', 'device-tags');
      tags.append(...device.tags.map((tag) => el('span', 'tag', tag)));
      row.append(tags);
    }
    const meta = el('span', 'device-meta');
    meta.append(
      el('span', 'transport', device.transport ?? '—'),
      ...(device.agent ? [el('span', 'agent', device.agent)] : []),
      el('span', 'since', device.online ? `online since ${relativeTime(device.connectedAt, now)}` : `last seen ${relativeTime(device.lastSeen, now)}`),
    );
    row.append(meta);
    return row;
  }
}
