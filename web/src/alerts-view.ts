/**
 * Alerts (`#/alerts`, docs/protocol.md "Alerts and webhooks"): what fires now, what resolved
 * lately, the rules (operators and admins add, hold and remove them; viewers read), and the
 * webhooks every alert is POSTed to (admins only: they carry a secret, shown masked). Fetched
 * again every 5 s while on screen. Summaries name devices and jobs: textContent only.
 */
import { callApi, type ApiProblem } from './api.js';
import { cell, codedError, dateTime, el, emptyRow, field, relativeTime, scrollingTable } from './format.js';
import type { HubClient } from './hub-client.js';
import { canRunCommands, isAdmin } from './roles.js';
import { links } from './router.js';
import type { AlertRuleView, AlertView, WebhookView } from './types.js';

const REFRESH_MS = 5000;
const RESOLVED_SHOWN = 50;
const FIRING_COLUMNS = ['Alert', 'Kind', 'Subject', 'Firing since', 'Rule', ''];
const RESOLVED_COLUMNS = ['Alert', 'Kind', 'Subject', 'Fired', 'Resolved', 'Why'];
const RULE_COLUMNS = ['Rule', 'Kind', 'Condition', 'Enabled', 'Firing', ''];
const WEBHOOK_COLUMNS = ['URL', 'Events', 'Secret', 'Pending', 'Last delivery', ''];
const METRICS = ['load1', 'load5', 'load15', 'mem_available_ratio', 'mem_available_bytes', 'disk_free_ratio', 'disk_free_bytes', 'temp_c', 'uptime_s'];
const KIND_LABEL: Record<string, string> = { device_offline: 'device offline', telemetry: 'telemetry', job: 'job' };

export class AlertsView {
  private root: HTMLElement | null = null;
  private generation = 0;
  private timer = 0;

  constructor(private readonly hub: HubClient) {}

  show(root: HTMLElement): void {
    this.hide();
    this.root = root;
    const generation = ++this.generation;
    const mayAct = canRunCommands(this.hub.session);
    const admin = isAdmin(this.hub.session);

    const page = el('section', 'admin-page alerts');
    page.setAttribute('aria-label', 'alerts');
    const header = el('header', 'admin-header');
    header.append(el('h2', '', 'Alerts'), el('p', 'admin-lead', 'A rule watches devices, their health or jobs; an alert fires once per device or job while its condition holds, and resolves when it ends.'));
    const messages = el('div', 'admin-messages');
    const firingSummary = el('p', 'admin-summary alerts-firing-summary', 'loading…');
    const firingBody = el('tbody');
    const resolvedBody = el('tbody');
    const ruleBody = el('tbody');
    page.append(header, messages, el('h3', 'alerts-title', 'Firing'), firingSummary, scrollingTable('alerts-firing', FIRING_COLUMNS, firingBody));
    page.append(el('h3', 'alerts-title', 'Recently resolved'), scrollingTable('alerts-resolved', RESOLVED_COLUMNS, resolvedBody));
    page.append(el('h3', 'alerts-title', 'Rules'));
    if (mayAct) page.append(this.ruleForm(messages, generation, () => void load()));
    else page.append(el('p', 'read-only-note', 'Viewers see alerts and rules: operators and admins change the rules.'));
    page.append(scrollingTable('alert-rules', RULE_COLUMNS, ruleBody));
    const webhookBody = el('tbody');
    if (admin) {
      page.append(el('h3', 'alerts-title', 'Webhooks'), this.webhookForm(messages, generation, () => void loadWebhooks()), scrollingTable('webhooks-table', WEBHOOK_COLUMNS, webhookBody));
    }
    root.replaceChildren(page);

    const problem = (result: ApiProblem) => messages.replaceChildren(codedError('problem', result.code, result.message));
    const act = (call: Promise<{ ok: boolean } & Partial<ApiProblem>>, then: () => void) =>
      void call.then((result) => {
        if (!this.current(generation)) return;
        if (!result.ok) return problem(result as ApiProblem);
        messages.replaceChildren();
        then();
      });

    const load = async () => {
      const [firing, resolved, rules] = await Promise.all([
        callApi<AlertView[]>('GET', '/api/alerts?state=firing&limit=1000'),
        callApi<AlertView[]>('GET', `/api/alerts?state=resolved&limit=${RESOLVED_SHOWN}`),
        callApi<AlertRuleView[]>('GET', '/api/alerts/rules'),
      ]);
      if (!this.current(generation)) return;
      for (const result of [firing, resolved, rules]) if (!result.ok) return problem(result);
      if (!firing.ok || !resolved.ok || !rules.ok) return;
      firingSummary.textContent = firing.value.length === 0 ? 'Nothing is firing.' : `${firing.value.length === 1 ? '1 alert' : `${firing.value.length} alerts`} firing`;
      page.dataset.firing = String(firing.value.length);
      const resolve = (alert: AlertView) => act(callApi('POST', `/api/alerts/${encodeURIComponent(alert.id)}/resolve`), () => void load());
      firingBody.replaceChildren(...(firing.value.length === 0 ? [emptyRow('No alert is firing.', FIRING_COLUMNS.length)] : firing.value.map((alert) => firingRow(alert, mayAct, resolve))));
      resolvedBody.replaceChildren(...(resolved.value.length === 0 ? [emptyRow('Nothing resolved yet.', RESOLVED_COLUMNS.length)] : resolved.value.map(resolvedRow)));
      const change = (rule: AlertRuleView, action: 'toggle' | 'remove') =>
        act(
          action === 'remove' ? callApi('DELETE', `/api/alerts/rules/${encodeURIComponent(rule.id)}`) : callApi('PATCH', `/api/alerts/rules/${encodeURIComponent(rule.id)}`, { enabled: !rule.enabled }),
          () => void load(),
        );
      ruleBody.replaceChildren(...(rules.value.length === 0 ? [emptyRow('No rules yet.', RULE_COLUMNS.length)] : rules.value.map((rule) => ruleRow(rule, mayAct, change))));
    };
    const loadWebhooks = async () => {
      if (!admin) return;
      const result = await callApi<WebhookView[]>('GET', '/api/webhooks');
      if (!this.current(generation)) return;
      if (!result.ok) return problem(result);
      const remove = (hook: WebhookView) => act(callApi('DELETE', `/api/webhooks/${encodeURIComponent(hook.id)}`), () => void loadWebhooks());
      webhookBody.replaceChildren(...(result.value.length === 0 ? [emptyRow('No webhooks: alerts are only shown here.', WEBHOOK_COLUMNS.length)] : result.value.map((hook) => webhookRow(hook, remove))));
    };
    const refresh = () => {
      if (!this.current(generation)) return;
      void load();
      void loadWebhooks();
    };
    this.timer = window.setInterval(refresh, REFRESH_MS);
    refresh();
  }

  hide(): void {
    this.generation++;
    window.clearInterval(this.timer);
    this.timer = 0;
    this.root = null;
  }

  private current(generation: number): boolean {
    return generation === this.generation && this.root !== null;
  }

  private ruleForm(messages: HTMLElement, generation: number, reload: () => void): HTMLFormElement {
    const form = el('form', 'admin-form job-form alert-rule-form');
    form.setAttribute('aria-label', 'add an alert rule');
    const kind = select('rule-kind', [
      ['device_offline', 'a device is offline'],
      ['telemetry', 'a health metric'],
      ['job', 'a job went wrong'],
    ]);
    const name = text('rule-name', 'kitchen offline');
    const tags = text('rule-tags', 'kitchen, floor-1');
    const minutes = numberInput('rule-minutes', '5');
    const metric = select('rule-metric', METRICS.map((m) => [m, m]));
    const op = select('rule-op', [
      ['above', 'above'],
      ['below', 'below'],
    ]);
    const value = numberInput('rule-value', '70');
    value.step = 'any';
    const states = el('span', 'rule-states');
    const boxes = (['aborted', 'failed', 'timed_out'] as const).map((state) => {
      const box = el('input', `rule-state rule-state-${state}`);
      box.type = 'checkbox';
      box.checked = true;
      box.value = state;
      const label = el('label', 'field checkbox-field', state.replace('_', ' '));
      label.append(box);
      states.append(label);
      return box;
    });
    const add = el('button', 'send rule-add', 'Add rule');
    add.type = 'submit';
    const labelled = (label: string, node: HTMLElement) => {
      const wrap = el('label', 'field', label);
      wrap.append(node);
      return wrap;
    };
    const row = el('div', 'job-form-row');
    const deviceFields = [labelled('Tags (all of them)', tags)];
    const timeFields = [labelled('Minutes', minutes)];
    const metricFields = [labelled('Metric', metric), labelled('is', op), labelled('Value', value)];
    row.append(labelled('When', kind), field('Name', name), ...metricFields, ...timeFields, ...deviceFields, states, add);
    form.append(row);
    const showFields = () => {
      const k = kind.value;
      for (const node of metricFields) node.hidden = k !== 'telemetry';
      for (const node of [...timeFields, ...deviceFields]) node.hidden = k === 'job';
      states.hidden = k !== 'job';
    };
    kind.addEventListener('change', showFields);
    showFields();
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const body: Record<string, unknown> = { kind: kind.value };
      if (name.value.trim()) body.name = name.value.trim();
      const tagList = tags.value.split(/[\s,]+/).filter(Boolean);
      if (kind.value !== 'job') {
        if (tagList.length > 0) body.tags = tagList;
        if (minutes.value !== '') body.minutes = Number(minutes.value);
      }
      if (kind.value === 'telemetry') {
        body.metric = metric.value;
        body.op = op.value;
        if (value.value !== '') body.value = Number(value.value);
      }
      if (kind.value === 'job') body.states = boxes.filter((box) => box.checked).map((box) => box.value);
      add.disabled = true;
      void callApi<AlertRuleView>('POST', '/api/alerts/rules', body).then((result) => {
        add.disabled = false;
        if (!this.current(generation)) return;
        if (!result.ok) return messages.replaceChildren(codedError('problem', result.code, result.message));
        const notice = el('p', 'notice', `Rule added: ${result.value.name ?? result.value.id}.`);
        notice.setAttribute('role', 'status');
        messages.replaceChildren(notice);
        reload();
      });
    });
    return form;
  }

  private webhookForm(messages: HTMLElement, generation: number, reload: () => void): HTMLFormElement {
    const form = el('form', 'admin-form webhook-form');
    form.setAttribute('aria-label', 'add a webhook');
    const url = text('webhook-url', 'https://example.net/hooks/rhizosphere');
    url.type = 'url';
    const secret = text('webhook-secret', 'at least 16 characters');
    secret.type = 'password';
    secret.autocomplete = 'new-password';
    const add = el('button', 'send webhook-add', 'Add webhook');
    add.type = 'submit';
    form.append(field('URL', url), field('Secret (signs each body; not shown again)', secret), add);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      add.disabled = true;
      void callApi<WebhookView>('POST', '/api/webhooks', { url: url.value.trim(), secret: secret.value }).then((result) => {
        add.disabled = false;
        if (!this.current(generation)) return;
        if (!result.ok) return messages.replaceChildren(codedError('problem', result.code, result.message));
        secret.value = '';
        url.value = '';
        const notice = el('p', 'notice', `Webhook added: ${result.value.url}.`);
        notice.setAttribute('role', 'status');
        messages.replaceChildren(notice);
        reload();
      });
    });
    return form;
  }
}

function subjectCell(alert: AlertView): HTMLTableCellElement {
  const link = el('a', alert.job ? 'job-link' : 'device-link', alert.subject);
  link.href = alert.job ? links.job(alert.job) : links.device(alert.subject, alert.kind === 'telemetry' ? 'health' : 'commands');
  return cell('cell-subject', link);
}

function firingRow(alert: AlertView, mayAct: boolean, resolve: (alert: AlertView) => void): HTMLTableRowElement {
  const row = el('tr');
  row.dataset.id = alert.id;
  row.dataset.kind = alert.kind;
  row.dataset.subject = alert.subject;
  const actions = el('span', 'row-actions');
  if (mayAct && alert.kind === 'job') {
    const button = el('button', 'row-button alert-resolve', 'Resolve');
    button.type = 'button';
    button.addEventListener('click', () => {
      button.disabled = true;
      resolve(alert);
    });
    actions.append(button);
  }
  const since = el('span', '', relativeTime(alert.fired_at));
  since.title = dateTime(alert.fired_at);
  row.append(
    cell('cell-summary', el('span', 'alert-summary', alert.summary)),
    cell('cell-kind', KIND_LABEL[alert.kind] ?? alert.kind),
    subjectCell(alert),
    cell('cell-time', since),
    cell('cell-rule', alert.rule_name ?? alert.rule),
    cell('cell-actions', actions),
  );
  return row;
}

function resolvedRow(alert: AlertView): HTMLTableRowElement {
  const row = el('tr');
  row.dataset.id = alert.id;
  row.dataset.kind = alert.kind;
  row.dataset.subject = alert.subject;
  row.append(
    cell('cell-summary', el('span', 'alert-summary', alert.summary)),
    cell('cell-kind', KIND_LABEL[alert.kind] ?? alert.kind),
    subjectCell(alert),
    cell('cell-time', dateTime(alert.fired_at)),
    cell('cell-time', alert.resolved_at ? dateTime(alert.resolved_at) : ''),
    cell('cell-resolution', alert.resolution ?? ''),
  );
  return row;
}

function condition(rule: AlertRuleView): string {
  const tags = rule.tags && rule.tags.length > 0 ? ` · tags ${rule.tags.join(', ')}` : '';
  if (rule.kind === 'device_offline') return `offline more than ${rule.minutes} min${tags}`;
  if (rule.kind === 'telemetry') return `${rule.metric} ${rule.op} ${rule.value}${rule.minutes ? ` for ${rule.minutes} min` : ''}${tags}`;
  return `ends ${(rule.states ?? []).map((s) => s.replace('_', ' ')).join(', ')}`;
}

function ruleRow(rule: AlertRuleView, mayAct: boolean, change: (rule: AlertRuleView, action: 'toggle' | 'remove') => void): HTMLTableRowElement {
  const row = el('tr');
  row.dataset.id = rule.id;
  row.dataset.kind = rule.kind;
  row.dataset.enabled = String(rule.enabled);
  const actions = el('span', 'row-actions');
  if (mayAct) {
    const toggle = el('button', 'row-button rule-toggle', rule.enabled ? 'Disable' : 'Enable');
    toggle.type = 'button';
    toggle.addEventListener('click', () => change(rule, 'toggle'));
    const remove = el('button', 'row-button danger-text rule-remove', 'Remove');
    remove.type = 'button';
    remove.addEventListener('click', () => change(rule, 'remove'));
    actions.append(toggle, remove);
  }
  row.append(
    cell('cell-rule', rule.name ?? rule.id),
    cell('cell-kind', KIND_LABEL[rule.kind] ?? rule.kind),
    cell('cell-condition', condition(rule)),
    cell('cell-enabled', rule.enabled ? 'yes' : 'no'),
    cell(`cell-firing${rule.firing > 0 ? ' firing' : ''}`, String(rule.firing)),
    cell('cell-actions', actions),
  );
  return row;
}

function webhookRow(hook: WebhookView, remove: (hook: WebhookView) => void): HTMLTableRowElement {
  const row = el('tr');
  row.dataset.id = hook.id;
  const last = hook.last_delivery;
  const lastText = last ? `${last.outcome}${last.status !== null ? ` (HTTP ${last.status})` : last.error ? ` (${last.error})` : ''} ${relativeTime(last.at)}` : 'never';
  const button = el('button', 'row-button danger-text webhook-remove', 'Remove');
  button.type = 'button';
  button.addEventListener('click', () => remove(hook));
  row.append(
    cell('cell-url', el('code', '', hook.url)),
    cell('cell-events', hook.events.join(', ')),
    cell('cell-secret', el('code', '', hook.secret)),
    cell('cell-pending', String(hook.pending)),
    cell(`cell-last${last?.outcome === 'failed' ? ' failed' : ''}`, lastText),
    cell('cell-actions', button),
  );
  return row;
}

function text(className: string, placeholder: string): HTMLInputElement {
  const node = el('input', className);
  node.type = 'text';
  node.placeholder = placeholder;
  node.autocomplete = 'off';
  node.spellcheck = false;
  return node;
}

function numberInput(className: string, placeholder: string): HTMLInputElement {
  const node = el('input', className);
  node.type = 'number';
  node.placeholder = placeholder;
  return node;
}

function select(className: string, options: string[][]): HTMLSelectElement {
  const node = el('select', className);
  for (const [value, label] of options) {
    const option = el('option', '', label);
    option.value = value!;
    node.append(option);
  }
  return node;
}
