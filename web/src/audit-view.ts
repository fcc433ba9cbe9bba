/**
 * The audit trail (`#/admin/audit`): who did what, from where, on which device and how it
 * ended, newest first, from `GET /api/audit`. Command lines and actor names are untrusted
 * text like device output: textContent only. A long command line is cut in its cell and
 * shown whole in the cell's title.
 */
import { callApi, type ApiProblem } from './api.js';
import { cell, codedError, dateTime, duration, el, emptyRow, field, scrollingTable } from './format.js';
import { links } from './router.js';
import type { AuditEntry } from './types.js';

const DEFAULT_LIMIT = 200;
/** The hub returns at most this many entries per query. */
const MAX_LIMIT = 10_000;
const COLUMNS = ['Time', 'Actor', 'From', 'Action', 'Device', 'Order', 'Command', 'Outcome', 'Exit', 'Duration'];

export class AuditView {
  private readonly page = el('section', 'admin-page audit');
  private readonly deviceInput = el('input', 'audit-device');
  private readonly sinceInput = el('input', 'audit-since');
  private readonly limitInput = el('input', 'audit-limit');
  private readonly refreshButton = el('button', 'send', 'Refresh');
  private readonly messages = el('div', 'admin-messages');
  private readonly summary = el('p', 'admin-summary audit-summary');
  private readonly body = el('tbody');
  /** Bumped per query, so a slow answer to an older query never overwrites a newer one. */
  private query = 0;

  constructor() {
    this.page.setAttribute('aria-label', 'audit trail');
    const header = el('header', 'admin-header');
    header.append(el('h2', '', 'Audit trail'), el('p', 'admin-lead', 'Every command, login and change to devices, users and tokens, newest first.'));
    this.page.append(header, this.filters(), this.messages, this.summary, this.table());
  }

  /** Shows the trail; `device` (from the URL) replaces the device filter. */
  show(root: HTMLElement, device: string | null): void {
    root.replaceChildren(this.page);
    if (device !== null) this.deviceInput.value = device;
    void this.load();
  }

  private filters(): HTMLFormElement {
    const form = el('form', 'admin-form audit-filters');
    form.setAttribute('aria-label', 'audit filters');
    this.deviceInput.type = 'search';
    this.deviceInput.placeholder = 'any device';
    this.deviceInput.autocomplete = 'off';
    this.deviceInput.spellcheck = false;
    this.sinceInput.type = 'datetime-local';
    this.sinceInput.step = '1';
    this.limitInput.type = 'number';
    this.limitInput.min = '1';
    this.limitInput.max = String(MAX_LIMIT);
    this.limitInput.value = String(DEFAULT_LIMIT);
    this.refreshButton.type = 'submit';
    form.append(field('Device', this.deviceInput), field('Since', this.sinceInput), field('Limit', this.limitInput), this.refreshButton);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      void this.load();
    });
    // A filter applies as soon as it is set; Refresh fetches again with the same filters.
    form.addEventListener('change', () => void this.load());
    return form;
  }

  private table(): HTMLElement {
    return scrollingTable('audit-table', COLUMNS, this.body);
  }

  /** The query string of the filters, or the reason they cannot be sent. */
  private params(): URLSearchParams | ApiProblem {
    const params = new URLSearchParams();
    const device = this.deviceInput.value.trim();
    if (device) params.set('device', device);
    if (this.sinceInput.value) {
      // datetime-local is the browser's local time without a zone; the hub wants an instant.
      const since = new Date(this.sinceInput.value);
      if (Number.isNaN(since.getTime())) return { code: 'BAD_REQUEST', message: 'since is not a valid date and time' };
      params.set('since', since.toISOString());
    }
    const limit = Number(this.limitInput.value || DEFAULT_LIMIT);
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_LIMIT) return { code: 'BAD_REQUEST', message: `limit must be a whole number from 1 to ${MAX_LIMIT}` };
    params.set('limit', String(limit));
    return params;
  }

  private async load(): Promise<void> {
    const query = ++this.query;
    const params = this.params();
    if (!(params instanceof URLSearchParams)) return this.showProblem(params);
    this.refreshButton.disabled = true;
    this.summary.textContent = 'loading…';
    const result = await callApi<AuditEntry[]>('GET', `/api/audit?${params.toString()}`);
    if (query !== this.query) return;
    this.refreshButton.disabled = false;
    if (!result.ok) return this.showProblem(result);
    this.messages.replaceChildren();
    this.render(result.value, Number(params.get('limit')));
  }

  private showProblem(problem: ApiProblem): void {
    this.refreshButton.disabled = false;
    this.summary.textContent = '';
    this.messages.replaceChildren(codedError('problem', problem.code, problem.message));
  }

  private render(entries: AuditEntry[], limit: number): void {
    const count = entries.length === 1 ? '1 entry' : `${entries.length} entries`;
    const more = entries.length >= limit ? ' (the limit: older entries are not shown)' : '';
    // The same clock as the Time column, so "fetched at" compares at a glance.
    const fetchedAt = dateTime(new Date().toISOString()).slice(11);
    this.summary.textContent = `${count}, newest first${more} · fetched at ${fetchedAt}`;
    if (entries.length === 0) {
      this.body.replaceChildren(emptyRow('No entries match these filters.', COLUMNS.length));
      return;
    }
    this.body.replaceChildren(...entries.map((entry) => auditRow(entry)));
  }
}

function auditRow(entry: AuditEntry): HTMLTableRowElement {
  const row = el('tr');
  row.dataset.seq = String(entry.seq);
  row.dataset.action = entry.action;
  const time = el('time', '', dateTime(entry.at));
  time.dateTime = entry.at;
  time.title = entry.at;
  const actor = el('span', 'actor-name', entry.actor);
  const kind = el('span', 'actor-kind', entry.actorKind);
  row.append(
    cell('cell-time', time),
    cell('cell-actor', actor, ' ', kind),
    titled(cell('cell-remote', shortAddress(entry.remote)), entry.remote ?? ''),
    actionCell(entry),
    cell('cell-device', entry.device ? deviceLink(entry.device) : ''),
    cell('cell-order', entry.order ?? ''),
    commandCell(entry.cmdStr),
    titled(cell(`cell-outcome ${outcomeClass(entry.outcome)}`, entry.outcome), detailText(entry.detail)),
    cell(`cell-exit${entry.exitCode !== null && entry.exitCode !== 0 ? ' nonzero' : ''}`, entry.exitCode === null ? '' : String(entry.exitCode)),
    cell('cell-duration', duration(entry.durationMs)),
  );
  return row;
}

/** ok is green, an error code (FORBIDDEN, TIMEOUT, …) red, what a change did (added, removed, …) plain. */
function outcomeClass(outcome: string): string {
  if (outcome === 'ok') return 'outcome-ok';
  return /^[A-Z][A-Z_]+$/.test(outcome) ? 'outcome-error' : 'outcome-other';
}

/** A tunnel.close of a recorded shell links to the recording's player. */
function actionCell(entry: AuditEntry): HTMLTableCellElement {
  const td = cell('cell-action', entry.action);
  const recording = (entry.detail as { recording?: unknown } | null | undefined)?.recording;
  if (entry.action === 'tunnel.close' && typeof recording === 'string' && recording) {
    const link = el('a', 'audit-recording', 'replay');
    link.href = links.recording(recording);
    link.title = `replay the terminal session ${recording}`;
    td.append(' ', link);
  }
  return td;
}

function commandCell(cmd: string | null): HTMLTableCellElement {
  const td = el('td', 'cell-command');
  if (cmd === null) return td;
  const code = el('code', 'command-text', cmd);
  code.title = cmd;
  td.append(code);
  return td;
}

function deviceLink(id: string): HTMLAnchorElement {
  const link = el('a', '', id);
  link.href = links.audit(id);
  link.title = `only ${id}`;
  return link;
}

/** IPv4 clients of a dual-stack socket show as ::ffff:10.0.0.5; the plain address reads better. */
function shortAddress(remote: string | null): string {
  if (!remote) return '';
  return remote.startsWith('::ffff:') ? remote.slice(7) : remote;
}

function detailText(detail: unknown): string {
  if (detail === undefined || detail === null) return '';
  const message = (detail as { message?: unknown }).message;
  return typeof message === 'string' ? message : JSON.stringify(detail);
}


function titled<T extends HTMLElement>(node: T, title: string): T {
  if (title) node.title = title;
  return node;
}

