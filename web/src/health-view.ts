/**
 * Health telemetry in the console (docs/protocol.md "Health telemetry"): a device's Health tab
 * (load, memory, disk and temperature over the last hour, 6 hours, day or week, one point a
 * minute, from `GET /api/devices/{id}/health`) and the fleet's page `#/health` (devices online
 * over time and the worst devices now, each linking to its own Health tab, from
 * `GET /api/health/fleet`). Charts are uPlot, served by the hub (/vendor/uPlot.esm.js) and drawn
 * on canvas; both pages fetch again every 30 s while they are on screen. Device ids and values
 * are untrusted: textContent only.
 */
import uPlot from 'uplot';
import type { FleetHealth, FleetHealthEntry, FleetRanking, HealthSeries, HealthSeriesName } from 'rhizosphere/client';
import { callApi } from './api.js';
import { cell, codedError, el, emptyRow, relativeTime, scrollingTable } from './format.js';
import { links } from './router.js';
import { Refresher } from './refresh.js';

const REFRESH_MS = 30_000;
const CHART_HEIGHT = 190;

/** The ranges offered, as the hub takes them (`since=-6h`). */
const RANGES = [
  { value: '1h', label: 'last hour' },
  { value: '6h', label: 'last 6 hours' },
  { value: '24h', label: 'last 24 hours' },
  { value: '7d', label: 'last 7 days' },
] as const;
const DEFAULT_RANGE = '6h';

type Format = (value: number) => string;

interface LineSpec {
  name: HealthSeriesName | 'online' | 'known';
  label: string;
  stroke: string;
  dash?: number[];
  fill?: string;
}

interface ChartSpec {
  key: string;
  title: string;
  lines: LineSpec[];
  format: Format;
  /** The y scale starts at 0 (loads, bytes, devices). */
  fromZero?: boolean;
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = Math.abs(bytes);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${bytes < 0 ? '-' : ''}${value >= 100 || unit === 0 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`;
}

export function formatUptime(seconds: number): string {
  const days = Math.floor(seconds / 86_400);
  const hours = Math.floor((seconds % 86_400) / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  if (days > 0) return `${days} d ${hours} h`;
  if (hours > 0) return `${hours} h ${minutes} min`;
  return `${minutes} min`;
}

const percent = (fraction: number) => `${(fraction * 100).toFixed(fraction < 0.1 ? 1 : 0)} %`;
const load: Format = (value) => value.toFixed(2);
const celsius: Format = (value) => `${value.toFixed(1)} °C`;
const count: Format = (value) => String(Math.round(value));

const DEVICE_CHARTS: ChartSpec[] = [
  {
    key: 'load',
    title: 'Load',
    format: load,
    fromZero: true,
    lines: [
      { name: 'load1', label: '1 min', stroke: '#2f6b4f', fill: '#2f6b4f22' },
      { name: 'load5', label: '5 min', stroke: '#2f6f9f' },
      { name: 'load15', label: '15 min', stroke: '#b7791f' },
      { name: 'load1_max', label: '1 min, highest', stroke: '#2f6b4f', dash: [4, 4] },
    ],
  },
  {
    key: 'memory',
    title: 'Memory available',
    format: formatBytes,
    fromZero: true,
    lines: [
      { name: 'mem_available_bytes', label: 'available', stroke: '#2f6b4f', fill: '#2f6b4f22' },
      { name: 'mem_available_min_bytes', label: 'least', stroke: '#c0392b', dash: [4, 4] },
      { name: 'mem_total_bytes', label: 'total', stroke: '#66706b', dash: [2, 3] },
    ],
  },
  {
    key: 'disk',
    title: 'Disk free (/)',
    format: formatBytes,
    fromZero: true,
    lines: [
      { name: 'disk_free_bytes', label: 'free', stroke: '#2f6f9f', fill: '#2f6f9f22' },
      { name: 'disk_total_bytes', label: 'total', stroke: '#66706b', dash: [2, 3] },
    ],
  },
  {
    key: 'temperature',
    title: 'Temperature',
    format: celsius,
    lines: [
      { name: 'temp_c', label: 'mean', stroke: '#c0392b', fill: '#c0392b18' },
      { name: 'temp_max_c', label: 'hottest', stroke: '#b7791f', dash: [4, 4] },
    ],
  },
];

/** One uPlot chart in a card; its width follows the card's. */
class Chart {
  readonly root: HTMLElement;
  private plot: uPlot | null = null;
  private readonly observer: ResizeObserver;
  private readonly body: HTMLElement;

  constructor(private readonly spec: ChartSpec) {
    this.root = el('figure', 'health-chart');
    this.root.dataset.metric = spec.key;
    this.body = el('div', 'health-chart-body');
    this.root.append(el('figcaption', 'health-chart-title', spec.title), this.body);
    this.observer = new ResizeObserver(() => this.fit());
    this.observer.observe(this.body);
  }

  /**
   * Draws the columns (x in Unix seconds) over the range asked for (ISO times), so a device that
   * reported once shows one point at its time, not a range stretched around it. Lines whose
   * values are all null are left out.
   */
  draw(t: number[], columns: Partial<Record<string, (number | null)[]>>, range: { since: string; until: string }): void {
    const lines = this.spec.lines.filter((line) => columns[line.name]?.some((value) => value !== null));
    this.root.dataset.points = String(t.length);
    this.root.dataset.lines = String(lines.length);
    this.plot?.destroy();
    this.plot = null;
    this.body.replaceChildren();
    if (t.length === 0 || lines.length === 0) {
      this.body.append(el('p', 'health-chart-empty', 'no data in this range'));
      return;
    }
    const format = this.spec.format;
    const options: uPlot.Options = {
      width: this.width(),
      height: CHART_HEIGHT,
      scales: {
        x: { time: true, range: () => [Date.parse(range.since) / 1000, Date.parse(range.until) / 1000] },
        y: this.spec.fromZero ? { range: (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1] } : {},
      },
      series: [
        {},
        ...lines.map((line) => ({
          label: line.label,
          stroke: line.stroke,
          width: 1.5,
          ...(line.dash ? { dash: line.dash } : {}),
          ...(line.fill ? { fill: line.fill } : {}),
          spanGaps: false,
          value: (_u: uPlot, value: number | null) => (value === null ? '–' : format(value)),
        })),
      ],
      axes: [{ stroke: '#66706b', grid: { stroke: '#eef0ee' } }, { stroke: '#66706b', grid: { stroke: '#eef0ee' }, size: 70, values: (_u, values) => values.map((value) => (value === null ? '' : format(value))) }],
      legend: { live: true },
      cursor: { drag: { x: true, y: false } },
    };
    const data = [t, ...lines.map((line) => columns[line.name] ?? [])] as uPlot.AlignedData;
    this.plot = new uPlot(options, data, this.body);
  }

  private width(): number {
    return Math.max(280, Math.floor(this.body.clientWidth || this.root.clientWidth || 600));
  }

  private fit(): void {
    if (!this.plot) return;
    const width = this.width();
    if (Math.abs(width - this.plot.width) > 2) this.plot.setSize({ width, height: CHART_HEIGHT });
  }

  destroy(): void {
    this.observer.disconnect();
    this.plot?.destroy();
    this.plot = null;
  }
}

/** A device's Health tab: made once per device, loaded while on screen. */
export class DeviceHealthPanel {
  readonly root: HTMLElement;
  private readonly facts: HTMLElement;
  private readonly messages: HTMLElement;
  private readonly charts: Chart[];
  private readonly range: HTMLSelectElement;
  private readonly refresher: Refresher;

  constructor(private readonly device: string) {
    this.root = el('section', 'device-health');
    this.refresher = new Refresher(this.root, REFRESH_MS, () => this.load());
    this.root.setAttribute('aria-label', 'health');
    const bar = el('div', 'health-bar');
    this.range = el('select', 'health-range');
    this.range.setAttribute('aria-label', 'time range');
    for (const range of RANGES) {
      const option = el('option', '', range.label);
      option.value = range.value;
      option.selected = range.value === DEFAULT_RANGE;
      this.range.append(option);
    }
    this.range.addEventListener('change', () => void this.load());
    const refresh = el('button', 'health-refresh', 'Refresh');
    refresh.type = 'button';
    refresh.addEventListener('click', () => void this.load());
    this.facts = el('span', 'health-facts');
    bar.append(this.range, refresh, this.facts);
    this.messages = el('div', 'admin-messages');
    this.charts = DEVICE_CHARTS.map((spec) => new Chart(spec));
    const grid = el('div', 'health-charts');
    grid.append(...this.charts.map((chart) => chart.root));
    this.root.append(bar, this.messages, grid);
  }

  /** On screen: load now and every REFRESH_MS. */
  shown(): void {
    this.refresher.start();
  }

  hidden(): void {
    this.refresher.stop();
  }

  private async load(): Promise<void> {
    const current = this.refresher.begin();
    this.root.dataset.state = 'loading';
    const result = await callApi<HealthSeries>('GET', `/api/devices/${encodeURIComponent(this.device)}/health?since=-${this.range.value}`);
    if (!current()) return;
    if (!result.ok) {
      this.root.dataset.state = 'failed';
      this.messages.replaceChildren(codedError('problem', result.code, result.message));
      return;
    }
    const series = result.value;
    this.messages.replaceChildren();
    if (series.t.length === 0) this.messages.append(el('p', 'notice health-none', `No health reports from ${this.device} in this range: hypha reports every 60 s (--health-interval).`));
    for (const chart of this.charts) chart.draw(series.t, series.series, series);
    const latest = series.latest;
    this.facts.textContent = latest
      ? [
          latest.version ? `hypha ${latest.version}` : null,
          latest.cpus ? `${latest.cpus} CPU${latest.cpus === 1 ? '' : 's'}` : null,
          latest.uptime_s !== undefined ? `up ${formatUptime(latest.uptime_s)}` : null,
          latest.temp_c === undefined ? 'no temperature sensor' : null,
          `last report ${relativeTime(latest.at)}`,
        ]
          .filter(Boolean)
          .join(' · ')
      : '';
    this.root.dataset.points = String(series.t.length);
    this.root.dataset.state = 'loaded';
  }
}

const RANKINGS: { key: FleetRanking; title: string; column: string; value: (entry: FleetHealthEntry) => string; detail: (entry: FleetHealthEntry) => string }[] = [
  {
    key: 'load1',
    title: 'Highest load',
    column: 'load (1 min)',
    value: (entry) => load(entry.value),
    detail: ({ sample }) => [sample.load5 !== undefined ? `5 min ${load(sample.load5)}` : '', sample.cpus ? `${sample.cpus} CPUs` : ''].filter(Boolean).join(' · '),
  },
  {
    key: 'mem_available_ratio',
    title: 'Least memory available',
    column: 'available',
    value: (entry) => percent(entry.value),
    detail: ({ sample }) => (sample.mem_available_bytes !== undefined && sample.mem_total_bytes !== undefined ? `${formatBytes(sample.mem_available_bytes)} of ${formatBytes(sample.mem_total_bytes)}` : ''),
  },
  {
    key: 'disk_free_ratio',
    title: 'Least disk free',
    column: 'free',
    value: (entry) => percent(entry.value),
    detail: ({ sample }) => (sample.disk_free_bytes !== undefined && sample.disk_total_bytes !== undefined ? `${formatBytes(sample.disk_free_bytes)} of ${formatBytes(sample.disk_total_bytes)}` : ''),
  },
  { key: 'temp_c', title: 'Hottest', column: 'temperature', value: (entry) => celsius(entry.value), detail: ({ sample }) => (sample.version ? `hypha ${sample.version}` : '') },
];

const FLEET_CHART: ChartSpec = {
  key: 'online',
  title: 'Devices online',
  format: count,
  fromZero: true,
  lines: [
    { name: 'online', label: 'online', stroke: '#2e8b57', fill: '#2e8b5722' },
    { name: 'known', label: 'known', stroke: '#66706b', dash: [2, 3] },
  ],
};

/** `#/health`: the fleet's health. */
export class FleetHealthView {
  private root: HTMLElement | null = null;
  private chart: Chart | null = null;
  private refresher: Refresher | null = null;

  show(root: HTMLElement): void {
    this.hide();
    this.root = root;
    const page = el('section', 'admin-page health-fleet');
    page.setAttribute('aria-label', 'fleet health');
    const header = el('header', 'admin-header');
    header.append(
      el('h2', '', 'Fleet health'),
      el('p', 'admin-lead', 'Devices online over time (sampled by the hub each minute), and the worst devices now by their last health report. Pick a device to see its history.'),
    );
    const bar = el('div', 'health-bar');
    const range = el('select', 'health-range');
    range.setAttribute('aria-label', 'time range');
    for (const option of RANGES) {
      const node = el('option', '', option.label);
      node.value = option.value;
      node.selected = option.value === '24h';
      range.append(node);
    }
    const summary = el('span', 'health-facts fleet-summary', 'loading…');
    bar.append(range, summary);
    const messages = el('div', 'admin-messages');
    this.chart = new Chart(FLEET_CHART);
    const rankings = el('div', 'health-rankings');
    page.append(header, bar, messages, this.chart.root, rankings);
    root.replaceChildren(page);

    const load = async () => {
      const current = refresher.begin();
      const result = await callApi<FleetHealth>('GET', `/api/health/fleet?since=-${range.value}`);
      if (!current() || !this.chart) return;
      if (!result.ok) {
        messages.replaceChildren(codedError('problem', result.code, result.message));
        return;
      }
      messages.replaceChildren();
      const fleet = result.value;
      summary.textContent = `${fleet.now.online} online of ${fleet.now.known} · ${fleet.reporting} reporting health`;
      this.chart.draw(fleet.online.t, { online: fleet.online.online, known: fleet.online.known }, fleet);
      rankings.replaceChildren(...RANKINGS.map((ranking) => rankingTable(ranking, fleet.worst[ranking.key])));
      page.dataset.state = 'loaded';
    };
    const refresher = new Refresher(page, REFRESH_MS, load);
    this.refresher = refresher;
    range.addEventListener('change', () => void load());
    refresher.start();
  }

  hide(): void {
    this.refresher?.stop();
    this.refresher = null;
    this.chart?.destroy();
    this.chart = null;
    this.root = null;
  }
}

function rankingTable(ranking: (typeof RANKINGS)[number], entries: FleetHealthEntry[]): HTMLElement {
  const box = el('section', 'health-ranking');
  box.dataset.ranking = ranking.key;
  box.append(el('h3', '', ranking.title));
  const body = el('tbody');
  if (entries.length === 0) body.append(emptyRow('No device reports this.', 3));
  for (const entry of entries) {
    const row = el('tr');
    row.dataset.device = entry.device;
    const link = el('a', 'device-link', entry.device);
    link.href = links.device(entry.device, 'health');
    row.append(cell('cell-device', link), cell('cell-value', ranking.value(entry)), cell('cell-detail', ranking.detail(entry)));
    body.append(row);
  }
  box.append(scrollingTable('ranking-table', ['Device', ranking.column, ''], body));
  return box;
}
