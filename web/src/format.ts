/** Small formatting helpers; everything the console shows goes through textContent. */

export function relativeTime(iso: string | null, now = Date.now()): string {
  if (!iso) return 'never';
  const seconds = Math.round((now - Date.parse(iso)) / 1000);
  if (!Number.isFinite(seconds)) return 'unknown';
  if (seconds < 5) return 'just now';
  if (seconds < 60) return `${seconds} s ago`;
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 48) return `${hours} h ago`;
  return `${Math.round(hours / 24)} days ago`;
}

export function clockTime(iso: string | null): string {
  if (!iso) return '';
  return new Date(iso).toLocaleString();
}

/** Local date and time, to the second, in a fixed width for tables: 2026-11-24 10:00:05. */
export function dateTime(iso: string): string {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return iso;
  const two = (n: number) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())} ${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}`;
}

export function duration(ms: number | null): string {
  if (ms === null) return '';
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
}

/** Creates an element with a class and text; never parses HTML. */
export function el<K extends keyof HTMLElementTagNameMap>(tag: K, className = '', text?: string): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** An error as the hub codes it: the code (BAD_REQUEST, FORBIDDEN, …), then its message. */
export function codedError(className: string, code: string, message: string): HTMLElement {
  const box = el('div', className);
  box.setAttribute('role', 'alert');
  box.append(el('strong', 'error-code', code), document.createTextNode(` ${message}`));
  return box;
}

/** A table cell holding text or nodes. */
export function cell(className: string, ...content: (Node | string)[]): HTMLTableCellElement {
  const td = el('td', className);
  td.append(...content);
  return td;
}

/** An input with its visible label around it. */
export function field(text: string, input: HTMLInputElement): HTMLLabelElement {
  const label = el('label', 'field', text);
  label.append(input);
  return label;
}

/** A table with a header row, in a box that scrolls sideways on narrow screens. */
export function scrollingTable(className: string, columns: string[], body: HTMLTableSectionElement): HTMLElement {
  const head = el('tr');
  for (const title of columns) head.append(el('th', '', title));
  const thead = el('thead');
  thead.append(head);
  const table = el('table', `admin-table ${className}`);
  table.append(thead, body);
  const scroller = el('div', 'table-scroll');
  scroller.append(table);
  return scroller;
}

/** The one row of a table with nothing to show, saying why. */
export function emptyRow(text: string, columns: number): HTMLTableRowElement {
  const td = el('td', 'table-empty', text);
  td.colSpan = columns;
  const row = el('tr');
  row.append(td);
  return row;
}
