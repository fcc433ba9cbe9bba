/**
 * A device's desired and reported state (docs/protocol.md "Desired state"), the State tab of
 * its page: every key with its desired and reported value and whether it is still in the delta,
 * the versions, and the device's last error. Operators and admins set a key (the value as JSON,
 * else as text) or remove one; viewers read. Values are untrusted: textContent only.
 */
import { callApi } from './api.js';
import { codedError, el } from './format.js';
import { Refresher } from './refresh.js';

/** While shown, the tab reads the state again this often (a device applies a change within seconds). */
const REFRESH_MS = 3000;

type Json = string | number | boolean | null | Json[] | { [key: string]: Json };

interface StateDoc {
  version: number;
  state: Record<string, Json>;
  updatedAt: string | null;
  updatedBy?: string | null;
  error?: { message: string; version: number | null; at: string } | null;
}

interface StateView {
  device: string;
  desired: StateDoc;
  reported: StateDoc;
  delta: { version: number; state: Record<string, Json> };
}

const show = (value: Json | undefined) => (value === undefined ? '—' : JSON.stringify(value));

/** `42`, `true`, `{"a":1}` as JSON; anything else as the text it is. */
function valueOf(text: string): Json {
  try {
    return JSON.parse(text) as Json;
  } catch {
    return text;
  }
}

export class DeviceStatePanel {
  readonly root: HTMLElement;
  private readonly summary: HTMLElement;
  private readonly body: HTMLTableSectionElement;
  private readonly messages: HTMLElement;
  private readonly refresher: Refresher;

  constructor(
    private readonly device: string,
    private readonly mayChange: boolean,
  ) {
    this.root = el('section', 'device-state');
    this.refresher = new Refresher(this.root, REFRESH_MS, () => this.load());
    this.root.setAttribute('aria-label', 'desired state');
    this.summary = el('p', 'admin-summary state-summary', 'loading…');
    this.messages = el('div', 'admin-messages');
    const table = el('table', 'state-table');
    const head = el('thead');
    const row = el('tr');
    for (const title of ['Key', 'Desired', 'Reported', 'In step', '']) row.append(el('th', '', title));
    head.append(row);
    this.body = el('tbody');
    table.append(head, this.body);
    this.root.append(this.summary, this.messages);
    if (mayChange) this.root.append(this.form());
    this.root.append(table);
  }

  shown(): void {
    this.refresher.start();
  }

  hidden(): void {
    this.refresher.stop();
  }

  private form(): HTMLFormElement {
    const form = el('form', 'admin-form state-form');
    form.setAttribute('aria-label', 'set desired state');
    const key = el('input', 'state-key');
    key.placeholder = 'fw';
    key.required = true;
    const value = el('input', 'state-value');
    value.placeholder = '"2.1", 30, true, {"a":1} or text';
    const set = el('button', 'send state-set', 'Set desired');
    set.type = 'submit';
    const keyLabel = el('label', 'field', 'Key');
    keyLabel.append(key);
    const valueLabel = el('label', 'field', 'Value');
    valueLabel.append(value);
    form.append(keyLabel, valueLabel, set);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      void this.change({ [key.value.trim()]: valueOf(value.value) }).then((ok) => {
        if (ok) value.value = '';
      });
    });
    return form;
  }

  /** PATCH the desired document; true when the hub took it. */
  private async change(patch: Record<string, Json>): Promise<boolean> {
    const result = await callApi<StateView>('PATCH', `/api/devices/${encodeURIComponent(this.device)}/state/desired`, patch);
    if (!result.ok) {
      this.messages.replaceChildren(codedError('problem', result.code, result.message));
      return false;
    }
    this.messages.replaceChildren();
    this.draw(result.value);
    return true;
  }

  private async load(): Promise<void> {
    const current = this.refresher.begin();
    const result = await callApi<StateView>('GET', `/api/devices/${encodeURIComponent(this.device)}/state`);
    if (!current()) return;
    if (!result.ok) {
      this.summary.textContent = '';
      this.messages.replaceChildren(codedError('problem', result.code, result.message));
      return;
    }
    this.draw(result.value);
  }

  private draw(view: StateView): void {
    const { desired, reported, delta } = view;
    const pending = Object.keys(delta.state);
    this.summary.textContent = `desired version ${desired.version}${desired.updatedBy ? ` (by ${desired.updatedBy})` : ''} · reported version ${reported.version} · ${
      pending.length === 0 ? 'in step: the device reported every desired value' : `not applied yet: ${pending.sort().join(', ')}`
    }`;
    this.root.dataset.inStep = String(pending.length === 0);
    if (reported.error) this.messages.replaceChildren(el('p', 'problem', `the device could not apply desired version ${reported.error.version ?? '?'}: ${reported.error.message}`));
    const keys = [...new Set([...Object.keys(desired.state), ...Object.keys(reported.state)])].sort();
    if (keys.length === 0) {
      const row = el('tr');
      const cell = el('td', 'table-empty', 'No desired or reported state yet.');
      cell.colSpan = 5;
      row.append(cell);
      this.body.replaceChildren(row);
      return;
    }
    this.body.replaceChildren(
      ...keys.map((key) => {
        const row = el('tr');
        row.dataset.key = key;
        const inStep = !Object.hasOwn(delta.state, key);
        row.dataset.inStep = String(inStep);
        const actions = el('td', 'state-actions');
        if (this.mayChange && Object.hasOwn(desired.state, key)) {
          const remove = el('button', 'row-button state-remove', 'Remove');
          remove.type = 'button';
          remove.addEventListener('click', () => void this.change({ [key]: null }));
          actions.append(remove);
        }
        row.append(el('td', 'state-key-cell', key), el('td', 'state-desired', show(desired.state[key])), el('td', 'state-reported', show(reported.state[key])), el('td', 'state-in-step', inStep ? 'yes' : 'not yet'), actions);
        return row;
      }),
    );
  }
}
