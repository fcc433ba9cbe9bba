/**
 * One device: its state, a command form (order, bash command, Enter or Send), the results
 * of this session's commands and the history of commands sent from this browser.
 * Device output is untrusted: it is only ever set as textContent, never parsed as HTML.
 * Viewers see everything but the form is disabled: the hub would refuse their commands.
 * Operators and admins also have the remote-access tabs (Terminal, Files, Recordings) and a
 * link to the device's own web page through the hub; a device's terminals stay open while
 * the console shows other devices and views. Everyone has the Health tab (health-view.ts).
 */
import { copyButton } from './clipboard.js';
import { FilesPanel } from './files-panel.js';
import { DeviceHealthPanel } from './health-view.js';
import { DeviceStatePanel } from './state-view.js';
import { clockTime, duration, el, relativeTime } from './format.js';
import { loadHistory, remember, type HistoryEntry } from './history.js';
import type { HubClient } from './hub-client.js';
import { RecordingsList } from './recordings-view.js';
import { canRunCommands, canUseTunnels } from './roles.js';
import { DEVICE_TABS, links, type DeviceTab } from './router.js';
import { TerminalsPanel } from './terminal-view.js';
import { ORDERS, type Device, type Order, type Reply } from './types.js';

const TAB_TITLES: Record<DeviceTab, string> = { commands: 'Commands', terminal: 'Terminal', files: 'Files', recordings: 'Recordings', health: 'Health', state: 'State' };
/** What viewers have: no remote access. */
const VIEWER_TABS: readonly DeviceTab[] = ['commands', 'health', 'state'];

/** A device's remote-access tools, made on the first visit and kept for the page's life. */
interface RemoteTools {
  terminals: TerminalsPanel;
  files: FilesPanel;
  recordings: RecordingsList;
}

interface Run {
  cmd: string;
  order: Order;
  startedAt: number;
  reply: Reply | null;
}

const DEFAULT_TIMEOUT_MS = 60_000;

export class DeviceView {
  /** undefined until the first show(), so that show(null) renders the placeholder. */
  private deviceId: string | null | undefined = undefined;
  private readonly runs = new Map<string, Run[]>();
  private history: HistoryEntry[] = [];
  /** Position while walking the history with the arrow keys; -1 = not walking. */
  private recall = -1;
  private draft = '';
  private tab: DeviceTab = 'commands';
  private readonly tools = new Map<string, RemoteTools>();
  private readonly healthPanels = new Map<string, DeviceHealthPanel>();
  private readonly statePanels = new Map<string, DeviceStatePanel>();

  constructor(
    private readonly root: HTMLElement,
    private readonly hub: HubClient,
  ) {}

  show(id: string | null, tab: DeviceTab = 'commands'): void {
    // Viewers have the commands and the health charts only.
    const next = this.tabs().includes(tab) ? tab : 'commands';
    if (id !== this.deviceId) {
      for (const panel of this.healthPanels.values()) panel.hidden();
      for (const panel of this.statePanels.values()) panel.hidden();
      this.deviceId = id;
      this.history = id ? loadHistory(id) : [];
      this.recall = -1;
      this.tab = next;
      this.render();
    } else if (next !== this.tab) {
      this.tab = next;
      this.showTab();
    }
  }

  /** Devices changed: `ids`, or any of them when null. */
  devicesChanged(ids: ReadonlySet<string> | null): void {
    if (this.deviceId && (ids === null || ids.has(this.deviceId))) this.renderState();
  }

  private get device(): Device | undefined {
    return this.deviceId ? this.hub.devices.get(this.deviceId) : undefined;
  }

  private render(): void {
    const id = this.deviceId;
    if (!id) {
      this.root.replaceChildren(el('div', 'placeholder', 'Pick a device on the left to run commands on it.'));
      return;
    }
    const header = el('header', 'device-header');
    header.append(el('h2', 'device-title', id), el('span', 'state-pill'), el('span', 'device-facts'));
    const banner = el('div', 'offline-banner');
    banner.setAttribute('role', 'status');

    const form = el('form', 'command-form');
    const order = el('select', 'order');
    order.setAttribute('aria-label', 'order');
    for (const option of ORDERS) {
      const node = el('option', '', option.label);
      node.value = option.value;
      node.title = option.help;
      order.append(node);
    }
    const input = el('input', 'command-input');
    input.type = 'text';
    input.placeholder = 'bash command, e.g. uname -a — Enter to send, ↑ for history';
    input.autocomplete = 'off';
    input.spellcheck = false;
    input.setAttribute('aria-label', 'command');
    const send = el('button', 'send', 'Send');
    send.type = 'submit';
    form.append(order, input, send);
    // The hub is the judge: whatever reaches it is sent, and a refusal shows as a result.
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      void this.submit(order.value as Order, input);
    });
    input.addEventListener('keydown', (event) => this.walkHistory(event, input, order));
    const readOnly = !canRunCommands(this.hub.session);
    if (readOnly) this.disableForm(form, [order, input, send]);

    const results = el('section', 'results');
    results.setAttribute('aria-label', 'results');
    const history = el('section', 'history');
    const commands = el('div', 'device-tab commands-panel');
    commands.dataset.tab = 'commands';
    commands.append(form, ...(readOnly ? [this.readOnlyNote()] : []), results, history);
    if (canUseTunnels(this.hub.session)) {
      const tools = this.toolsOf(id);
      header.append(webPageLink(id));
      this.root.replaceChildren(
        header,
        banner,
        this.tabBar(id),
        commands,
        tabPanel('terminal', tools.terminals.root),
        tabPanel('files', tools.files.root),
        tabPanel('recordings', tools.recordings.root),
        tabPanel('health', this.healthOf(id).root),
        tabPanel('state', this.stateOf(id).root),
      );
    } else {
      this.root.replaceChildren(header, banner, this.tabBar(id), commands, tabPanel('health', this.healthOf(id).root), tabPanel('state', this.stateOf(id).root));
    }
    this.renderState();
    this.renderResults();
    this.renderHistory();
    this.showTab();
  }

  private toolsOf(id: string): RemoteTools {
    let tools = this.tools.get(id);
    if (!tools) {
      tools = { terminals: new TerminalsPanel(this.hub, id), files: new FilesPanel(this.hub, id), recordings: new RecordingsList() };
      this.tools.set(id, tools);
    }
    return tools;
  }

  private stateOf(id: string): DeviceStatePanel {
    let panel = this.statePanels.get(id);
    if (!panel) {
      panel = new DeviceStatePanel(id, canRunCommands(this.hub.session));
      this.statePanels.set(id, panel);
    }
    return panel;
  }

  private healthOf(id: string): DeviceHealthPanel {
    let panel = this.healthPanels.get(id);
    if (!panel) {
      panel = new DeviceHealthPanel(id);
      this.healthPanels.set(id, panel);
    }
    return panel;
  }

  /** The tabs this session has. */
  private tabs(): readonly DeviceTab[] {
    return canUseTunnels(this.hub.session) ? DEVICE_TABS : VIEWER_TABS;
  }

  private tabBar(id: string): HTMLElement {
    const bar = el('nav', 'device-tabs');
    bar.setAttribute('aria-label', 'device tabs');
    for (const tab of this.tabs()) {
      const link = el('a', 'device-tab-link', TAB_TITLES[tab]);
      link.href = links.device(id, tab);
      link.dataset.tab = tab;
      bar.append(link);
    }
    return bar;
  }

  /** Shows the current tab's panel; a tab's tools learn they are on screen. */
  private showTab(): void {
    const id = this.deviceId;
    if (!id) return;
    for (const panel of this.root.querySelectorAll<HTMLElement>('.device-tab')) panel.hidden = panel.dataset.tab !== this.tab;
    for (const link of this.root.querySelectorAll<HTMLAnchorElement>('.device-tab-link')) {
      if (link.dataset.tab === this.tab) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    this.root.dataset.tab = this.tab;
    const tools = this.tools.get(id);
    if (this.tab === 'health') this.healthOf(id).shown();
    else this.healthPanels.get(id)?.hidden();
    if (this.tab === 'state') this.stateOf(id).shown();
    else this.statePanels.get(id)?.hidden();
    if (this.tab === 'commands') {
      const input = this.root.querySelector<HTMLInputElement>('.command-input');
      if (input && !input.disabled) input.focus();
    } else if (this.tab === 'terminal') tools?.terminals.shown();
    else if (this.tab === 'recordings') void tools?.recordings.load(id);
  }

  private disableForm(form: HTMLFormElement, controls: (HTMLInputElement | HTMLSelectElement | HTMLButtonElement)[]): void {
    form.classList.add('read-only');
    for (const control of controls) control.disabled = true;
    const input = controls.find((c): c is HTMLInputElement => c instanceof HTMLInputElement);
    if (input) input.placeholder = 'viewers cannot run commands';
  }

  private readOnlyNote(): HTMLElement {
    const note = el('p', 'read-only-note', `Viewers cannot run commands. You are logged in as ${this.hub.session?.name ?? 'a viewer'} (viewer); an admin can give you the operator role.`);
    note.setAttribute('role', 'note');
    return note;
  }

  private renderState(): void {
    const device = this.device;
    const pill = this.root.querySelector('.state-pill');
    const facts = this.root.querySelector('.device-facts');
    const banner = this.root.querySelector<HTMLElement>('.offline-banner');
    if (!pill || !facts || !banner) return;
    const online = device?.online === true;
    pill.textContent = online ? 'online' : 'offline';
    pill.className = `state-pill ${online ? 'online' : 'offline'}`;
    facts.textContent = device
      ? [device.transport, device.remoteAddress, device.agent, online ? `since ${clockTime(device.connectedAt)}` : `last seen ${clockTime(device.lastSeen)}`].filter(Boolean).join(' · ')
      : 'unknown device';
    banner.hidden = online;
    banner.textContent = online
      ? ''
      : `${this.deviceId} is offline${device?.lastSeen ? ` (last seen ${relativeTime(device.lastSeen)})` : ''}: commands are refused with DEVICE_OFFLINE until it reconnects.`;
  }

  private async submit(order: Order, input: HTMLInputElement): Promise<void> {
    const cmd = input.value.trim();
    const id = this.deviceId;
    if (!cmd || !id) return;
    input.value = '';
    this.recall = -1;
    this.history = remember(id, { cmd, order, at: new Date().toISOString() });
    this.renderHistory();
    const run: Run = { cmd, order, startedAt: Date.now(), reply: null };
    const list = this.runs.get(id) ?? [];
    list.push(run);
    this.runs.set(id, list.slice(-50));
    this.renderResults();
    run.reply = await this.hub.run(id, order, cmd, DEFAULT_TIMEOUT_MS);
    if (this.deviceId === id) this.renderResults();
  }

  private walkHistory(event: KeyboardEvent, input: HTMLInputElement, order: HTMLSelectElement): void {
    if (event.key !== 'ArrowUp' && event.key !== 'ArrowDown') return;
    if (this.history.length === 0) return;
    event.preventDefault();
    if (this.recall === -1) this.draft = input.value;
    const next = event.key === 'ArrowUp' ? (this.recall === -1 ? this.history.length - 1 : Math.max(0, this.recall - 1)) : this.recall + 1;
    if (this.recall === -1 && event.key === 'ArrowDown') return;
    if (next >= this.history.length) {
      this.recall = -1;
      input.value = this.draft;
      return;
    }
    this.recall = next;
    const entry = this.history[next]!;
    input.value = entry.cmd;
    order.value = entry.order;
  }

  private renderResults(): void {
    const section = this.root.querySelector('.results');
    if (!section || !this.deviceId) return;
    const runs = this.runs.get(this.deviceId) ?? [];
    if (runs.length === 0) {
      section.replaceChildren(el('div', 'results-empty', 'Results of the commands you send appear here.'));
      return;
    }
    section.replaceChildren(...runs.map((run) => this.resultCard(run)));
    section.lastElementChild?.scrollIntoView({ block: 'end' });
  }

  private resultCard(run: Run): HTMLElement {
    const card = el('article', 'result');
    const head = el('div', 'result-head');
    head.append(el('code', 'result-cmd', `$ ${run.cmd}`), el('span', 'result-order', run.order), el('time', 'result-time', new Date(run.startedAt).toLocaleTimeString()));
    card.append(head);
    const reply = run.reply;
    if (!reply) {
      card.classList.add('pending');
      card.append(el('div', 'result-status running', 'running…'));
      return card;
    }
    if (reply.status === 'error') {
      card.classList.add('failed');
      const status = el('div', 'result-status error');
      status.append(el('strong', 'error-code', reply.code), document.createTextNode(` ${reply.message}`));
      card.append(status);
      return card;
    }
    if (run.order === 'exec_bash_ret_okng_only') {
      card.append(el('div', `result-status okng ${reply.result === 'ok' ? 'ok' : 'ng'}`, reply.result ?? ''));
    } else if (run.order === 'exec_bash_no_return') {
      card.append(el('div', 'result-status started', 'started (not waited for)'));
    } else {
      if (reply.result) card.append(this.output('stdout', reply.result));
      if (reply.error) card.append(this.output('stderr', reply.error));
      if (!reply.result && !reply.error) card.append(el('div', 'result-status quiet', '(no output)'));
    }
    const foot = el('div', 'result-foot');
    if (reply.exit_code !== null) foot.append(el('span', `exit-code${reply.exit_code === 0 ? '' : ' nonzero'}`, `exit ${reply.exit_code}`));
    if (reply.duration_ms !== null) foot.append(el('span', 'duration', duration(reply.duration_ms)));
    if (reply.truncated) foot.append(el('span', 'truncated', 'output truncated'));
    card.append(foot);
    return card;
  }

  private output(kind: 'stdout' | 'stderr', text: string): HTMLElement {
    const box = el('div', `output ${kind}`);
    const pre = el('pre', '', text);
    box.append(el('span', 'output-label', kind), copyButton('copy', `copy ${kind}`, () => text, pre), pre);
    return box;
  }

  private renderHistory(): void {
    const section = this.root.querySelector('.history');
    if (!section) return;
    const title = el('h3', '', 'History (this browser)');
    const list = el('ol', 'history-list');
    for (const entry of [...this.history].reverse().slice(0, 20)) {
      const item = el('li');
      const button = el('button', 'history-item', entry.cmd);
      button.type = 'button';
      button.title = `${entry.order} · ${clockTime(entry.at)}`;
      button.addEventListener('click', () => {
        const input = this.root.querySelector<HTMLInputElement>('.command-input');
        const order = this.root.querySelector<HTMLSelectElement>('.order');
        if (input && order) {
          input.value = entry.cmd;
          order.value = entry.order;
          input.focus();
        }
      });
      item.append(button);
      list.append(item);
    }
    section.replaceChildren(title, this.history.length ? list : el('p', 'history-empty', 'No commands sent to this device yet.'));
  }
}

function tabPanel(tab: DeviceTab, content: HTMLElement): HTMLElement {
  const panel = el('div', `device-tab ${tab}-panel`);
  panel.dataset.tab = tab;
  panel.append(content);
  return panel;
}

/**
 * The device's own web page (a local HTTP service on `port`), which the hub proxies at
 * `/api/devices/ID/http/PORT/`, opened in a new tab.
 */
function webPageLink(id: string): HTMLElement {
  const form = el('form', 'web-page');
  const port = el('input', 'web-page-port');
  port.type = 'number';
  port.min = '1';
  port.max = '65535';
  port.value = '80';
  port.setAttribute('aria-label', 'port of the web page');
  const open = el('a', 'web-page-open', 'Open web page');
  open.target = '_blank';
  open.rel = 'noopener';
  const update = () => {
    const value = Number(port.value);
    const valid = Number.isInteger(value) && value >= 1 && value <= 65535;
    open.href = `/api/devices/${encodeURIComponent(id)}/http/${valid ? value : 80}/`;
    open.title = `the device's web page on port ${valid ? value : 80}, through the hub, in a new tab`;
  };
  update();
  port.addEventListener('input', update);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    window.open(open.href, '_blank', 'noopener');
  });
  const label = el('label', 'web-page-label', 'port');
  label.append(port);
  form.append(open, label);
  return form;
}
