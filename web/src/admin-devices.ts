/**
 * The admin's device panel (`#/admin/devices`): register a device and hand out its token,
 * rotate a token, remove a device. A token is shown once, right after it is issued: the hub
 * keeps only its hash, and the panel forgets it when the admin leaves.
 */
import { callApi, type ApiProblem, type ApiResult } from './api.js';
import { copyButton } from './clipboard.js';
import { cell, codedError, el, emptyRow, field, relativeTime, scrollingTable } from './format.js';
import type { HubClient } from './hub-client.js';
import { links } from './router.js';
import type { Device, HubInfo, IssuedToken } from './types.js';

/** Rows drawn at most: a fleet of 20000 is narrowed with the filter, not scrolled. */
const MAX_ROWS = 500;
/** What hypha should dial when the hub does not say which MQTT port it listens on. */
const DEFAULT_MQTT_PORT = 1883;
const COLUMNS = ['Device', 'State', 'Transport', 'Address', 'Seen', ''];

type RowAction = 'rotate' | 'remove';

interface Secret {
  issued: IssuedToken;
  rotated: boolean;
}

export class DevicesAdmin {
  private secret: Secret | null = null;
  private problem: ApiProblem | null = null;
  private notice = '';
  /** The row whose rotate or remove waits for a second click. */
  private confirming: { id: string; action: RowAction } | null = null;
  private working = false;
  private visible = false;
  /** Rows by device id, reused so a status change does not replace the button under the pointer. */
  private readonly rows = new Map<string, { row: HTMLTableRowElement; signature: string }>();
  private shownIds = '';
  /** Every device sorted by id, re-sorted only when the set of ids changes (not on each status). */
  private sorted: Device[] = [];
  private sortedVersion = -1;

  private readonly page = el('section', 'admin-page devices-admin');
  private readonly idInput = el('input', 'new-device-id');
  private readonly tagsInput = el('input', 'new-device-tags');
  private readonly addButton = el('button', 'send', 'Add device');
  private readonly messages = el('div', 'admin-messages');
  private readonly secretBox = el('section', 'secret');
  private readonly filterInput = el('input', 'admin-filter');
  private readonly summary = el('span', 'admin-summary');
  private readonly body = el('tbody');
  /** Devices that asked to join with the hub's enrolment key and wait for a decision. */
  private readonly pendingBox = el('section', 'pending-devices');
  private pendingTimer = 0;

  constructor(private readonly hub: HubClient) {
    this.page.setAttribute('aria-label', 'device administration');
    this.secretBox.setAttribute('aria-label', 'one-time token');
    this.pendingBox.setAttribute('aria-label', 'devices waiting to join');
    this.page.append(this.header(), this.addForm(), this.messages, this.secretBox, this.pendingBox, this.tableTools(), this.table());
    this.body.addEventListener('click', (event) => this.onRowClick(event));
  }

  show(root: HTMLElement): void {
    this.visible = true;
    root.replaceChildren(this.page);
    this.renderMessages();
    this.renderSecret();
    this.renderTable();
    void this.loadPending();
    // Devices ask to join at any time; nothing announces it, so look again now and then.
    this.pendingTimer = window.setInterval(() => void this.loadPending(), 5000);
  }

  /** Leaving the panel forgets the token on display: it is shown once. */
  hide(): void {
    window.clearInterval(this.pendingTimer);
    this.visible = false;
    this.secret = null;
    this.problem = null;
    this.notice = '';
    this.confirming = null;
  }

  devicesChanged(): void {
    if (this.visible) this.renderTable();
  }

  private header(): HTMLElement {
    const header = el('header', 'admin-header');
    header.append(
      el('h2', '', 'Devices'),
      el('p', 'admin-lead', 'Register a device to give it a token, rotate a token that may have leaked, or remove a device. Devices without a valid token cannot connect.'),
    );
    return header;
  }

  private addForm(): HTMLFormElement {
    const form = el('form', 'admin-form add-device');
    form.setAttribute('aria-label', 'add a device');
    this.idInput.placeholder = 'pi-kitchen-01';
    this.idInput.required = true;
    this.idInput.autocomplete = 'off';
    this.idInput.spellcheck = false;
    this.tagsInput.placeholder = 'kitchen, floor-1 (optional)';
    this.tagsInput.autocomplete = 'off';
    this.tagsInput.spellcheck = false;
    this.addButton.type = 'submit';
    form.append(field('Device id', this.idInput), field('Tags', this.tagsInput), this.addButton);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      void this.add();
    });
    return form;
  }

  private tableTools(): HTMLElement {
    const tools = el('div', 'admin-tools');
    this.filterInput.type = 'search';
    this.filterInput.placeholder = 'Filter by id';
    this.filterInput.setAttribute('aria-label', 'filter devices by id');
    this.filterInput.addEventListener('input', () => this.renderTable());
    tools.append(this.filterInput, this.summary);
    return tools;
  }

  private table(): HTMLElement {
    return scrollingTable('devices-table', COLUMNS, this.body);
  }

  private async add(): Promise<void> {
    const id = this.idInput.value.trim();
    const tags = this.tagsInput.value.split(/[\s,]+/).filter(Boolean);
    const result = await this.act(() => callApi<IssuedToken>('POST', '/api/devices', { id, tags }));
    if (!result?.ok) return;
    this.idInput.value = '';
    this.tagsInput.value = '';
    this.secret = { issued: result.value, rotated: false };
    this.renderSecret();
  }

  private async rotate(id: string): Promise<void> {
    const result = await this.act(() => callApi<IssuedToken>('POST', `/api/devices/${encodeURIComponent(id)}/rotate`));
    if (!result?.ok) return;
    this.secret = { issued: result.value, rotated: true };
    this.renderSecret();
  }

  private async remove(id: string): Promise<void> {
    const result = await this.act(() => callApi<unknown>('DELETE', `/api/devices/${encodeURIComponent(id)}`));
    if (!result?.ok) return;
    if (this.secret?.issued.id === id) this.secret = null;
    this.notice = `Removed ${id}: its agent was disconnected and its token no longer works.`;
    this.renderSecret();
    this.renderMessages();
  }

  private async loadPending(): Promise<void> {
    const result = await callApi<{ id: string; askedAt: string }[]>('GET', '/api/enrolments');
    if (!this.visible || !result.ok) return;
    const list = result.value;
    if (list.length === 0) {
      this.pendingBox.replaceChildren();
      this.pendingBox.hidden = true;
      return;
    }
    this.pendingBox.hidden = false;
    const items = list.map(({ id, askedAt }) => {
      const item = el('li', 'pending-device');
      item.dataset.id = id;
      const accept = el('button', 'send accept', 'Accept');
      const reject = el('button', 'danger reject', 'Reject');
      accept.type = reject.type = 'button';
      accept.addEventListener('click', () => void this.decide(id, 'accept'));
      reject.addEventListener('click', () => void this.decide(id, 'reject'));
      item.append(el('code', 'pending-id', id), el('span', 'pending-since', `asked ${new Date(askedAt).toLocaleString()}`), accept, reject);
      return item;
    });
    const listNode = el('ul', 'pending-list');
    listNode.append(...items);
    this.pendingBox.replaceChildren(el('h3', '', `Waiting to join (${list.length})`), listNode);
  }

  private async decide(id: string, decision: 'accept' | 'reject'): Promise<void> {
    const result = await this.act(() => callApi<unknown>('POST', `/api/devices/${encodeURIComponent(id)}/${decision}`));
    if (!result?.ok) return;
    this.notice = decision === 'accept' ? `Accepted ${id}: it is let in at its next try.` : `Rejected ${id}.`;
    this.renderMessages();
    await this.loadPending();
  }

  /** Runs one API call at a time (null while another runs) and shows its error, or clears the last one. */
  private async act<T>(call: () => Promise<ApiResult<T>>): Promise<ApiResult<T> | null> {
    if (this.working) return null;
    this.working = true;
    this.addButton.disabled = true;
    this.notice = '';
    const result = await call();
    this.working = false;
    this.addButton.disabled = false;
    this.confirming = null;
    this.problem = result.ok ? null : { code: result.code, message: result.message };
    this.renderMessages();
    this.renderTable();
    return result;
  }

  private onRowClick(event: MouseEvent): void {
    const button = (event.target as HTMLElement).closest<HTMLButtonElement>('button[data-action]');
    const id = button?.closest<HTMLElement>('tr[data-id]')?.dataset.id;
    if (!button || !id) return;
    const action = button.dataset.action;
    if (action === 'rotate' || action === 'remove') this.confirming = { id, action };
    else if (action === 'cancel') this.confirming = null;
    else if (action === 'confirm-rotate') void this.rotate(id);
    else if (action === 'confirm-remove') void this.remove(id);
    this.renderTable();
  }

  private renderMessages(): void {
    const nodes: HTMLElement[] = [];
    if (this.problem) nodes.push(codedError('problem', this.problem.code, this.problem.message));
    if (this.notice) {
      const notice = el('p', 'notice', this.notice);
      notice.setAttribute('role', 'status');
      nodes.push(notice);
    }
    this.messages.replaceChildren(...nodes);
  }

  private renderSecret(): void {
    const secret = this.secret;
    this.secretBox.hidden = secret === null;
    if (!secret) return this.secretBox.replaceChildren();
    const { id, token } = secret.issued;
    const command = hyphaCommand(id, token, deviceUrls(this.hub.info));
    const done = el('button', 'secret-done', 'Done');
    done.type = 'button';
    done.addEventListener('click', () => {
      this.secret = null;
      this.renderSecret();
    });
    this.secretBox.replaceChildren(
      el('h3', '', secret.rotated ? `New token for ${id}` : `Device ${id} added`),
      el('p', 'secret-warning', 'Copy the token now: it is shown only this once. The hub keeps only a hash of it.'),
      secretLine('token', 'copy the token', token),
      el('p', '', 'Start hypha on the device with:'),
      secretLine('hypha-command', 'copy the command line', command),
      el('p', 'secret-tip', 'For hypha run as a service, put HYPHA_TOKEN=… in /etc/default/hypha instead: a command line shows in ps.'),
      ...(secret.rotated ? [el('p', 'secret-tip', 'The old token stopped working: the agent that used it was disconnected.')] : []),
      done,
    );
  }

  private renderTable(): void {
    const needle = this.filterInput.value.trim().toLowerCase();
    const all = this.sortedDevices();
    const matching = needle ? all.filter((d) => d.id.toLowerCase().includes(needle)) : all;
    const shown = matching.slice(0, MAX_ROWS);
    this.renderSummary(all.length, matching.length, shown.length);
    if (shown.length === 0) {
      this.rows.clear();
      this.shownIds = '';
      this.body.replaceChildren(emptyRow(all.length === 0 ? 'No devices yet: add the first one above.' : 'No device matches the filter.', COLUMNS.length));
      return;
    }
    const now = Date.now();
    for (const device of shown) this.updateRow(device, now);
    const ids = shown.map((d) => d.id).join('\n');
    if (ids !== this.shownIds) {
      this.shownIds = ids;
      this.body.replaceChildren(...shown.map((d) => this.rows.get(d.id)!.row));
      const keep = new Set(shown.map((d) => d.id));
      for (const id of this.rows.keys()) if (!keep.has(id)) this.rows.delete(id);
    }
  }

  private sortedDevices(): Device[] {
    if (this.sortedVersion !== this.hub.idsVersion) {
      this.sorted = [...this.hub.devices.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      this.sortedVersion = this.hub.idsVersion;
    }
    return this.sorted;
  }

  private renderSummary(total: number, matching: number, shown: number): void {
    const online = this.hub.onlineCount;
    const parts = [`${total} devices · ${online} online`];
    if (matching !== total) parts.push(`${matching} match`);
    if (shown < matching) parts.push(`first ${shown} shown: filter to narrow`);
    this.summary.textContent = parts.join(' · ');
  }

  /** Redraws a row only when what it shows changed. */
  private updateRow(device: Device, now: number): void {
    const seen = device.online ? `online since ${relativeTime(device.connectedAt, now)}` : `last seen ${relativeTime(device.lastSeen, now)}`;
    const confirming = this.confirming?.id === device.id ? this.confirming.action : '';
    const signature = [device.online, device.transport, device.remoteAddress, seen, confirming, this.working].join('|');
    const known = this.rows.get(device.id);
    if (known?.signature === signature) return;
    const row = known?.row ?? el('tr');
    row.dataset.id = device.id;
    row.className = device.online ? 'online' : 'offline';
    const link = el('a', 'device-link', device.id);
    link.href = links.device(device.id);
    const state = el('span', 'state');
    state.append(el('span', 'dot'), document.createTextNode(device.online ? 'online' : 'offline'));
    row.replaceChildren(
      cell('cell-device', link),
      cell('cell-state', state),
      cell('cell-transport', device.transport ?? '—'),
      cell('cell-address', device.remoteAddress ?? '—'),
      cell('cell-seen', seen),
      cell('cell-actions', this.actions(device.id, confirming)),
    );
    this.rows.set(device.id, { row, signature });
  }

  /** The row's buttons, or the question that a second click answers. */
  private actions(id: string, confirming: RowAction | ''): HTMLElement {
    const box = el('div', 'row-actions');
    if (confirming === 'remove') {
      box.append(el('span', 'confirm-text', `Remove ${id}? Its agent is disconnected and its token stops working.`), button('Remove', 'confirm-remove', 'danger', this.working), button('Cancel', 'cancel', 'quiet'));
    } else if (confirming === 'rotate') {
      box.append(el('span', 'confirm-text', `New token for ${id}? Its agent is disconnected until restarted with it.`), button('Rotate', 'confirm-rotate', 'danger', this.working), button('Cancel', 'cancel', 'quiet'));
    } else {
      const audit = el('a', 'audit-link', 'Audit');
      audit.href = links.audit(id);
      audit.title = `the audit trail of ${id}`;
      box.append(audit, button('Rotate token', 'rotate', 'quiet'), button('Remove', 'remove', 'quiet danger-text'));
    }
    return box;
  }
}

/** The line an operator pastes on the device. Ids and tokens are plain ASCII (A-Z a-z 0-9 . _ : - and base64url): no quoting needed. */
export function hyphaCommand(id: string, token: string, urls: string[]): string {
  return `hypha ${urls.map((url) => `--url ${url}`).join(' ')} --id ${id} --token ${token}`;
}

/**
 * Where a device connects: the external broker's nodes (--broker), else the hub's own MQTT
 * port. A loopback host is the hub's own view: devices reach that machine by the name the
 * browser used.
 */
export function deviceUrls(info: HubInfo): string[] {
  if (!info.broker) return [`mqtt://${location.hostname}:${info.mqttPort ?? DEFAULT_MQTT_PORT}`];
  return info.broker.urls.map((raw) => {
    const url = new URL(raw);
    if (['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname)) url.hostname = location.hostname;
    return url.toString().replace(/\/$/, '');
  });
}


function secretLine(className: string, title: string, text: string): HTMLElement {
  const line = el('div', 'secret-line');
  const code = el('code', className, text);
  line.append(code, copyButton('copy', title, () => text, code));
  return line;
}


function button(text: string, action: string, className: string, disabled = false): HTMLButtonElement {
  const node = el('button', `row-button ${className}`, text);
  node.type = 'button';
  node.dataset.action = action;
  node.disabled = disabled;
  return node;
}
