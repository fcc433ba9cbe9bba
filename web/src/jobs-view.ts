/**
 * Fleet jobs (`#/jobs`, `#/jobs/ID`): one command sent to many devices (docs/protocol.md,
 * "Fleet jobs"). The list shows the recent jobs from `GET /api/jobs`, kept current by the
 * retained `P/jobs/+/status` messages; operators and admins also get the form that starts
 * a job. A job's page shows its progress live from `P/jobs/{id}/status`, a Cancel button for
 * operators and admins, and its targets from `GET /api/jobs/{id}`, fetched again when the
 * counts change (at most once a second) and when the job ends. Device output, ids and
 * command lines are untrusted: textContent only.
 */
import { callApi, type ApiProblem } from './api.js';
import { cell, codedError, dateTime, el, emptyRow, field, scrollingTable } from './format.js';
import type { HubClient } from './hub-client.js';
import { canRunCommands } from './roles.js';
import { links } from './router.js';
import { ORDERS, TARGET_STATES, type CreatedJob, type JobCounts, type JobDetail, type JobStaging, type JobStatus, type JobSummary, type JobTarget, type Order, type ScheduleView } from './types.js';

const LIST_LIMIT = 50;
const LIST_COLUMNS = ['Job', 'State', 'Command', 'Progress', 'Created', 'By'];
const SCHEDULE_COLUMNS = ['Schedule', 'When', 'Command', 'Next', 'Last job', 'Runs', ''];
const TARGET_COLUMNS = ['Device', 'State', 'Exit', 'Output'];
/** Targets drawn at most: a job on a whole fleet is summed up by its counts. */
const MAX_TARGET_ROWS = 1000;
/** The targets are fetched again at most this often while the counts change. */
const TARGETS_REFRESH_MS = 1000;
const DEFAULT_CONCURRENCY = 50;
const DEFAULT_TIMEOUT_S = 60;

const STATE_LABEL: Record<string, string> = {
  succeeded: 'succeeded',
  failed: 'failed',
  timed_out: 'timed out',
  canceled: 'canceled',
  sent: 'sent',
  queued: 'queued',
};

export class JobsView {
  private root: HTMLElement | null = null;
  /** Stops watching the job statuses the current page shows. */
  private unwatch: (() => void) | null = null;
  /** Bumped each time the view changes, so answers for an earlier page are dropped. */
  private generation = 0;
  /** Said once on the page of a job just started (unknown device ids). */
  private notice: { job: string; text: string } | null = null;
  /** Fetches the schedules of the list page again (after the form made one). */
  private reloadSchedules: () => void = () => {};

  constructor(private readonly hub: HubClient) {}

  show(root: HTMLElement, job: string | null): void {
    this.hide();
    this.root = root;
    const generation = ++this.generation;
    if (job === null) this.showList(root, generation);
    else this.showJob(root, job, generation);
  }

  hide(): void {
    this.generation++;
    this.unwatch?.();
    this.unwatch = null;
    this.root = null;
  }

  private current(generation: number): boolean {
    return generation === this.generation && this.root !== null;
  }

  // The list and the form.

  private showList(root: HTMLElement, generation: number): void {
    const page = el('section', 'admin-page jobs');
    page.setAttribute('aria-label', 'jobs');
    const header = el('header', 'admin-header');
    header.append(el('h2', '', 'Jobs'), el('p', 'admin-lead', 'A job sends one command to many devices, a few at a time, and keeps the outcome on each.'));
    const messages = el('div', 'admin-messages');
    const summary = el('p', 'admin-summary jobs-summary', 'loading…');
    const body = el('tbody');
    page.append(header);
    if (canRunCommands(this.hub.session)) page.append(this.jobForm(messages, generation));
    else page.append(el('p', 'read-only-note', 'Viewers watch jobs: operators and admins start and cancel them.'));
    const scheduleBody = el('tbody');
    page.append(messages, summary, scrollingTable('jobs-table', LIST_COLUMNS, body), el('h3', 'schedules-title', 'Schedules'), scrollingTable('schedules-table', SCHEDULE_COLUMNS, scheduleBody));
    root.replaceChildren(page);
    const mayAct = canRunCommands(this.hub.session);
    const loadSchedules = async () => {
      const result = await callApi<ScheduleView[]>('GET', '/api/schedules');
      if (!this.current(generation)) return;
      if (!result.ok) return messages.replaceChildren(codedError('problem', result.code, result.message));
      const schedules = result.value;
      if (schedules.length === 0) return scheduleBody.replaceChildren(emptyRow('No schedules.', SCHEDULE_COLUMNS.length));
      scheduleBody.replaceChildren(...schedules.map((schedule) => scheduleRow(schedule, mayAct, (action) => act(schedule.id, action))));
    };
    const act = (id: string, action: 'enable' | 'disable' | 'remove') => {
      const call = action === 'remove' ? callApi('DELETE', `/api/schedules/${encodeURIComponent(id)}`) : callApi('PATCH', `/api/schedules/${encodeURIComponent(id)}`, { enabled: action === 'enable' });
      void call.then((result) => {
        if (!this.current(generation)) return;
        if (!result.ok) return messages.replaceChildren(codedError('problem', result.code, result.message));
        void loadSchedules();
      });
    };
    this.reloadSchedules = () => void loadSchedules();
    void loadSchedules();

    const rows = new Map<string, { row: HTMLTableRowElement; job: JobSummary }>();
    let reloadTimer = 0;
    let loaded = false;
    const load = async () => {
      const result = await callApi<JobSummary[]>('GET', `/api/jobs?limit=${LIST_LIMIT}`);
      if (!this.current(generation)) return;
      if (!result.ok) {
        summary.textContent = '';
        messages.replaceChildren(codedError('problem', result.code, result.message));
        return;
      }
      loaded = true;
      rows.clear();
      const jobs = result.value;
      summary.textContent = jobs.length === 0 ? '' : `${jobs.length === 1 ? '1 job' : `${jobs.length} jobs`}, newest first`;
      if (jobs.length === 0) return body.replaceChildren(emptyRow('No jobs yet.', LIST_COLUMNS.length));
      for (const job of jobs) rows.set(job.id, { row: jobRow(job), job });
      body.replaceChildren(...[...rows.values()].map((r) => r.row));
    };
    const watch = this.hub.watchJobs(null, (status) => {
      const known = rows.get(status.id);
      if (known) {
        known.job = { ...known.job, state: status.state, counts: status.counts };
        const row = jobRow(known.job);
        known.row.replaceWith(row);
        known.row = row;
      } else if (loaded && status.state === 'running' && !reloadTimer) {
        // A job started since the list was fetched: fetch it again, once for a burst.
        reloadTimer = window.setTimeout(() => {
          reloadTimer = 0;
          if (this.current(generation)) void load();
        }, 300);
      }
    });
    this.unwatch = () => {
      watch();
      window.clearTimeout(reloadTimer);
    };
    void load();
  }

  private jobForm(messages: HTMLElement, generation: number): HTMLFormElement {
    const form = el('form', 'admin-form job-form');
    form.setAttribute('aria-label', 'start a job');
    const devices = input('job-devices', 'pi-01, pi-02');
    const tags = input('job-tags', 'kitchen, floor-1');
    const online = el('input', 'job-online');
    online.type = 'checkbox';
    const onlineLabel = el('label', 'field checkbox-field', 'Online only');
    onlineLabel.append(online);
    const order = el('select', 'job-order');
    order.setAttribute('aria-label', 'order');
    for (const o of ORDERS) {
      const option = el('option', '', o.label);
      option.value = o.value;
      option.title = o.help;
      order.append(option);
    }
    const orderLabel = el('label', 'field', 'Order');
    orderLabel.append(order);
    const command = input('job-command', 'uptime');
    command.required = true;
    const concurrency = number('job-concurrency', DEFAULT_CONCURRENCY, 1, 10_000);
    const timeout = number('job-timeout', DEFAULT_TIMEOUT_S, 1, 3600);
    const start = el('button', 'send job-start', 'Start job');
    start.type = 'submit';
    const targetRow = el('div', 'job-form-row');
    targetRow.append(field('Devices', devices), field('Tags (all of them)', tags), onlineLabel);
    const commandRow = el('div', 'job-form-row');
    commandRow.append(orderLabel, field('Command', command), field('Concurrency', concurrency), field('Timeout (s)', timeout), start);
    // A staged rollout (docs/protocol.md "Rollouts"): every field optional, empty means none.
    const canary = optionalNumber('job-canary', 'none', 1, 100_000);
    const rate = optionalNumber('job-rate', 'no limit', 1, 1_000_000);
    const rampFactor = optionalNumber('job-ramp-factor', '×2', 1.1, 10);
    rampFactor.step = '0.1';
    const rampEvery = optionalNumber('job-ramp-every', '20', 1, 1_000_000);
    const maxRate = optionalNumber('job-max-rate', 'none', 1, 1_000_000);
    const abortAbove = optionalNumber('job-abort-above', 'never', 0, 100);
    const abortAfter = optionalNumber('job-abort-after', '10', 1, 1_000_000);
    const stagingRow = el('details', 'job-form-row job-staging');
    const summary = el('summary', '', 'Staged rollout');
    stagingRow.append(
      summary,
      field('Canary devices', canary),
      field('Sends a minute', rate),
      field('Ramp factor', rampFactor),
      field('after successes', rampEvery),
      field('Max a minute', maxRate),
      field('Abort above % failed', abortAbove),
      field('after finished', abortAfter),
    );
    // When: now (empty), at a time, or on a cron expression (a schedule, docs/protocol.md "Schedules").
    const startAt = el('input', 'job-at');
    startAt.type = 'datetime-local';
    const cron = input('job-cron', '0 3 * * *');
    const tz = input('job-tz', Intl.DateTimeFormat().resolvedOptions().timeZone);
    const windowStart = input('job-window-start', '02:00');
    const windowEnd = input('job-window-end', '04:00');
    const whenRow = el('details', 'job-form-row job-when');
    whenRow.append(
      el('summary', '', 'Schedule and window'),
      field('Start at', startAt),
      field('or repeat (cron)', cron),
      field('Time zone', tz),
      field('Only from', windowStart),
      field('until', windowEnd),
    );
    form.append(targetRow, commandRow, stagingRow, whenRow);
    const staging = (): JobStaging => {
      const out: JobStaging = {};
      const value = (node: HTMLInputElement) => (node.value.trim() === '' ? undefined : Number(node.value));
      if (value(canary) !== undefined) out.canary = { count: value(canary)! };
      if (value(rate) !== undefined) {
        out.rollout = { start_per_minute: value(rate)! };
        if (value(maxRate) !== undefined) out.rollout.max_per_minute = value(maxRate)!;
        if (value(rampFactor) !== undefined) out.rollout.increase = { factor: value(rampFactor)!, every_succeeded: value(rampEvery) ?? 20 };
      }
      if (value(abortAbove) !== undefined) out.abort = [{ when: 'any', above_percent: value(abortAbove)!, min_finished: value(abortAfter) ?? 10 }];
      return out;
    };
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const list = (text: string) => text.split(/[\s,]+/).filter(Boolean);
      const target: { devices?: string[]; tags?: string[]; online?: boolean } = {};
      if (list(devices.value).length > 0) target.devices = list(devices.value);
      if (list(tags.value).length > 0) target.tags = list(tags.value);
      if (online.checked) target.online = true;
      const zone = tz.value.trim() || undefined;
      const window = windowStart.value.trim() && windowEnd.value.trim() ? { window: { start: windowStart.value.trim(), end: windowEnd.value.trim(), ...(zone ? { tz: zone } : {}) } } : {};
      const body = {
        target,
        order: order.value as Order,
        cmd_str: command.value,
        timeout_ms: Math.round(Number(timeout.value || DEFAULT_TIMEOUT_S) * 1000),
        concurrency: Number(concurrency.value || DEFAULT_CONCURRENCY),
        ...staging(),
        ...window,
      };
      start.disabled = true;
      if (startAt.value || cron.value.trim()) {
        // A local date and time from the picker, as the browser's own zone says it.
        const when = cron.value.trim() ? { cron: cron.value.trim(), ...(zone ? { tz: zone } : {}) } : { at: new Date(startAt.value).toISOString() };
        void callApi<ScheduleView>('POST', '/api/schedules', { job: body, ...when }).then((result) => {
          start.disabled = false;
          if (!this.current(generation)) return;
          if (!result.ok) return messages.replaceChildren(codedError('problem', result.code, result.message));
          const notice = el('p', 'notice', `Scheduled: next run ${result.value.next_at ? dateTime(result.value.next_at) : 'never'}.`);
          notice.setAttribute('role', 'status');
          messages.replaceChildren(notice);
          this.reloadSchedules();
        });
        return;
      }
      void callApi<CreatedJob>('POST', '/api/jobs', body).then((result) => {
        start.disabled = false;
        if (!this.current(generation)) return;
        if (!result.ok) return messages.replaceChildren(codedError('problem', result.code, result.message));
        const { id, targets, unknown = [] } = result.value;
        const parts = [`Started on ${targets === 1 ? '1 device' : `${targets} devices`}.`];
        if (unknown.length > 0) parts.push(`Not known to the hub yet, waiting as offline targets: ${unknown.join(', ')}.`);
        this.notice = { job: id, text: parts.join(' ') };
        location.hash = links.job(id);
      });
    });
    return form;
  }

  // One job.

  private showJob(root: HTMLElement, id: string, generation: number): void {
    const page = el('section', 'admin-page job');
    page.setAttribute('aria-label', `job ${id}`);
    page.dataset.job = id;
    const back = el('a', 'jobs-back', '← All jobs');
    back.href = links.jobs;
    const title = el('h2', 'job-title', `Job ${id}`);
    const statePill = el('span', 'job-state', '…');
    const heading = el('div', 'job-heading');
    heading.append(title, statePill);
    const facts = el('p', 'admin-lead job-facts');
    const commandLine = el('code', 'job-command-line');
    const bar = el('div', 'job-progress');
    bar.setAttribute('role', 'img');
    const legend = el('ul', 'job-legend');
    const cancel = el('button', 'row-button danger job-cancel', 'Cancel job');
    cancel.type = 'button';
    cancel.hidden = true;
    const pause = el('button', 'row-button job-pause', 'Pause');
    pause.type = 'button';
    pause.hidden = true;
    const resume = el('button', 'row-button job-resume', 'Resume');
    resume.type = 'button';
    resume.hidden = true;
    const controls = el('div', 'job-controls');
    controls.append(legend, pause, resume, cancel);
    const reason = el('p', 'problem job-reason');
    reason.setAttribute('role', 'status');
    reason.hidden = true;
    const messages = el('div', 'admin-messages');
    const targetsNote = el('p', 'admin-summary job-targets-summary');
    const body = el('tbody');
    page.append(back, heading, facts, commandLine, bar, controls, reason, messages, targetsNote, scrollingTable('job-targets', TARGET_COLUMNS, body));
    root.replaceChildren(page);
    if (this.notice?.job === id) {
      const notice = el('p', 'notice', this.notice.text);
      notice.setAttribute('role', 'status');
      messages.replaceChildren(notice);
    }
    this.notice = null;

    const mayAct = canRunCommands(this.hub.session);
    let status: JobStatus | null = null;
    let lastFetch = 0;
    let refreshTimer = 0;
    let fetching = false;
    let again = false;
    let query = 0;

    const showStatus = (next: JobStatus) => {
      // Statuses from MQTT and from REST interleave: never go back to fewer finished targets.
      if (status && finished(next.counts) < finished(status.counts) && next.state === status.state) return;
      status = next;
      statePill.textContent = next.state;
      statePill.className = `job-state state-${next.state}`;
      page.dataset.state = next.state;
      drawProgress(bar, legend, next.counts);
      const live = next.state === 'running' || next.state === 'paused';
      cancel.hidden = !mayAct || !live;
      pause.hidden = !mayAct || next.state !== 'running';
      resume.hidden = !mayAct || next.state !== 'paused';
      reason.hidden = !next.reason;
      reason.textContent = next.reason ? `Aborted: ${next.reason}` : '';
    };
    const fetchTargets = async () => {
      if (fetching) {
        again = true;
        return;
      }
      fetching = true;
      lastFetch = Date.now();
      const mine = ++query;
      const result = await callApi<JobDetail>('GET', `/api/jobs/${encodeURIComponent(id)}`);
      fetching = false;
      if (!this.current(generation) || mine !== query) return;
      if (!result.ok) {
        showProblem(messages, result);
        if (status === null) statePill.textContent = 'unknown';
      } else {
        const job = result.value;
        facts.textContent = `${job.order} · started ${dateTime(job.created_at)} by ${job.actor} · ${job.targets.length === 1 ? '1 target' : `${job.targets.length} targets`} · ${job.concurrency} at a time · timeout ${Math.round(job.timeout_ms / 1000)} s${job.finished_at ? ` · ended ${dateTime(job.finished_at)}` : ''}`;
        commandLine.textContent = job.cmd_str;
        commandLine.title = job.cmd_str;
        const staged = stagingText(job.staging, job.rate_per_minute);
        if (staged) facts.textContent += ` · ${staged}`;
        showStatus({ id: job.id, state: job.state, counts: job.counts, ...(job.reason ? { reason: job.reason } : {}) });
        drawTargets(body, targetsNote, job.targets);
      }
      if (again) {
        again = false;
        schedule();
      }
    };
    /** At most one fetch a second while counts change; the last change is always fetched. */
    const schedule = () => {
      if (refreshTimer) return;
      const wait = Math.max(0, lastFetch + TARGETS_REFRESH_MS - Date.now());
      refreshTimer = window.setTimeout(() => {
        refreshTimer = 0;
        if (this.current(generation)) void fetchTargets();
      }, wait);
    };

    for (const [button, action] of [
      [pause, 'pause'],
      [resume, 'resume'],
    ] as const) {
      button.addEventListener('click', () => {
        button.disabled = true;
        void callApi<JobSummary>('POST', `/api/jobs/${encodeURIComponent(id)}/${action}`).then((result) => {
          button.disabled = false;
          if (!this.current(generation)) return;
          if (!result.ok) return showProblem(messages, result);
          messages.replaceChildren();
          showStatus({ id, state: result.value.state, counts: result.value.counts });
          schedule();
        });
      });
    }

    cancel.addEventListener('click', () => {
      cancel.disabled = true;
      void callApi<JobSummary>('POST', `/api/jobs/${encodeURIComponent(id)}/cancel`).then((result) => {
        cancel.disabled = false;
        if (!this.current(generation)) return;
        if (!result.ok) return showProblem(messages, result);
        messages.replaceChildren();
        showStatus({ id, state: result.value.state, counts: result.value.counts });
        schedule();
      });
    });

    const watch = this.hub.watchJobs(id, (next) => {
      const before = status;
      showStatus(next);
      if (status !== next) return;
      const ended = before?.state === 'running' && next.state !== 'running';
      const changed = !before || before.state !== next.state || TARGET_STATES.some((s) => before.counts[s] !== next.counts[s]);
      if (ended) {
        // The final outcome at once, not a second later.
        window.clearTimeout(refreshTimer);
        refreshTimer = 0;
        void fetchTargets();
      } else if (changed) schedule();
    });
    this.unwatch = () => {
      watch();
      window.clearTimeout(refreshTimer);
    };
    void fetchTargets();
  }
}

function jobRow(job: JobSummary): HTMLTableRowElement {
  const row = el('tr');
  row.dataset.id = job.id;
  row.dataset.state = job.state;
  const link = el('a', 'job-link', job.id);
  link.href = links.job(job.id);
  const command = el('code', 'command-text', job.cmd_str);
  command.title = job.cmd_str;
  const bar = el('div', 'job-progress small');
  const progress = cell('cell-progress', bar, el('span', 'job-counts', countsText(job.counts)));
  drawProgress(bar, null, job.counts);
  row.append(
    cell('cell-job', link),
    cell(`cell-state state-${job.state}`, job.state),
    cell('cell-command', command),
    progress,
    cell('cell-time', dateTime(job.created_at)),
    cell('cell-actor', job.actor),
  );
  return row;
}

function scheduleRow(schedule: ScheduleView, mayAct: boolean, act: (action: 'enable' | 'disable' | 'remove') => void): HTMLTableRowElement {
  const row = el('tr');
  row.dataset.id = schedule.id;
  row.dataset.enabled = String(schedule.enabled);
  const when = schedule.cron ? `${schedule.cron}${schedule.tz ? ` (${schedule.tz})` : ''}` : `once, ${schedule.at ? dateTime(schedule.at) : '—'}`;
  const command = el('code', 'command-text', 'cmd_str' in schedule.job ? schedule.job.cmd_str : schedule.job.order);
  const last = schedule.last_job ? el('a', 'job-link', schedule.last_job) : el('span', '', '—');
  if (last instanceof HTMLAnchorElement) last.href = links.job(schedule.last_job!);
  const actions = el('span', 'schedule-actions');
  if (mayAct) {
    const toggle = el('button', 'row-button schedule-toggle', schedule.enabled ? 'Disable' : 'Enable');
    toggle.type = 'button';
    toggle.addEventListener('click', () => act(schedule.enabled ? 'disable' : 'enable'));
    const remove = el('button', 'row-button danger schedule-remove', 'Remove');
    remove.type = 'button';
    remove.addEventListener('click', () => act('remove'));
    actions.append(toggle, remove);
  }
  row.append(
    cell('cell-schedule', schedule.name ?? schedule.id),
    cell('cell-when', when),
    cell('cell-command', command),
    cell('cell-time', schedule.enabled ? (schedule.next_at ? dateTime(schedule.next_at) : 'done') : 'disabled'),
    cell('cell-job', last),
    cell('cell-runs', String(schedule.runs)),
    cell('cell-actions', actions),
  );
  if (schedule.last_error) row.title = schedule.last_error;
  return row;
}

function finished(counts: JobCounts): number {
  return counts.succeeded + counts.failed + counts.timed_out + counts.canceled;
}

function total(counts: JobCounts): number {
  return TARGET_STATES.reduce((sum, state) => sum + (counts[state] ?? 0), 0);
}

function countsText(counts: JobCounts): string {
  const all = total(counts);
  const parts = [`${finished(counts)}/${all}`];
  for (const state of TARGET_STATES) if (counts[state]) parts.push(`${counts[state]} ${STATE_LABEL[state]}`);
  return parts.join(' · ');
}

/** The segments of the bar, one per target state, as wide as their share of the targets. */
function drawProgress(bar: HTMLElement, legend: HTMLElement | null, counts: JobCounts): void {
  const all = total(counts);
  bar.dataset.total = String(all);
  bar.dataset.finished = String(finished(counts));
  bar.setAttribute('aria-label', countsText(counts));
  bar.title = countsText(counts);
  const segments = TARGET_STATES.map((state) => {
    const n = counts[state] ?? 0;
    const segment = el('span', `segment seg-${state}`);
    segment.dataset.count = String(n);
    segment.style.width = all > 0 ? `${(n / all) * 100}%` : '0';
    return segment;
  });
  bar.replaceChildren(...segments);
  if (!legend) return;
  legend.replaceChildren(
    ...TARGET_STATES.map((state) => {
      const item = el('li', `legend-item count-${state}`);
      item.dataset.count = String(counts[state] ?? 0);
      item.append(el('span', `swatch seg-${state}`), el('span', 'legend-label', STATE_LABEL[state]), el('strong', 'legend-count', String(counts[state] ?? 0)));
      return item;
    }),
  );
}

function drawTargets(body: HTMLTableSectionElement, note: HTMLElement, targets: JobTarget[]): void {
  const shown = targets.slice(0, MAX_TARGET_ROWS);
  note.textContent = targets.length > shown.length ? `the first ${shown.length} of ${targets.length} targets` : '';
  if (shown.length === 0) return body.replaceChildren(emptyRow('This job targets no device.', TARGET_COLUMNS.length));
  body.replaceChildren(...shown.map(targetRow));
}

function targetRow(target: JobTarget): HTMLTableRowElement {
  const row = el('tr');
  row.dataset.device = target.device;
  row.dataset.state = target.state;
  const device = el('a', 'device-link', target.device);
  device.href = links.device(target.device);
  const full = [target.result ?? '', target.error ?? ''].filter((text) => text !== '').join('\n');
  const firstLine = full.split('\n', 1)[0] ?? '';
  const output = el('span', 'target-output', firstLine);
  if (full) output.title = full;
  const exit = target.exit_code === null ? '' : String(target.exit_code);
  row.append(
    cell('cell-device', device),
    cell(`cell-state state-${target.state}`, STATE_LABEL[target.state] ?? target.state),
    cell(`cell-exit${target.exit_code !== null && target.exit_code !== 0 ? ' nonzero' : ''}`, exit),
    cell('cell-output', output),
  );
  return row;
}

function showProblem(messages: HTMLElement, problem: ApiProblem): void {
  messages.replaceChildren(codedError('problem', problem.code, problem.message));
}

function input(className: string, placeholder: string): HTMLInputElement {
  const node = el('input', className);
  node.type = 'text';
  node.placeholder = placeholder;
  node.autocomplete = 'off';
  node.spellcheck = false;
  return node;
}

/** The rollout, canary and abort criteria of a job, in words; empty when it has none. */
function stagingText(staging: JobStaging | undefined, ratePerMinute: number | undefined): string {
  if (!staging) return '';
  const parts: string[] = [];
  if (staging.canary) parts.push(`canary of ${staging.canary.count}`);
  const rollout = staging.rollout;
  if (rollout) {
    let text = `${rollout.start_per_minute}/min`;
    if (rollout.increase) text += `, ×${rollout.increase.factor} per ${rollout.increase.every_succeeded} succeeded`;
    if (rollout.max_per_minute) text += `, at most ${rollout.max_per_minute}/min`;
    if (ratePerMinute !== undefined) text += ` (now ${ratePerMinute}/min)`;
    parts.push(text);
  }
  for (const abort of staging.abort ?? []) parts.push(`abort above ${abort.above_percent}% ${abort.when === 'any' ? 'failed or timed out' : abort.when.replace('_', ' ')} of ${abort.min_finished}+ finished`);
  return parts.join(' · ');
}

function optionalNumber(className: string, placeholder: string, min: number, max: number): HTMLInputElement {
  const node = el('input', className);
  node.type = 'number';
  node.min = String(min);
  node.max = String(max);
  node.placeholder = placeholder;
  return node;
}

function number(className: string, value: number, min: number, max: number): HTMLInputElement {
  const node = el('input', className);
  node.type = 'number';
  node.min = String(min);
  node.max = String(max);
  node.value = String(value);
  return node;
}
