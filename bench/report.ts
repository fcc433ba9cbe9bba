/** The bench's figures as a markdown table and as JSON. */
import type { Machine } from './procfs.js';
import type { TargetName } from './targets.js';

export type Figures = Record<string, number | null>;

/** One hub process of the cluster target. */
export interface NodeFigures {
  node: string;
  /** Devices connected to it by the simulators. */
  devices: number;
  rss_before_mib: number | null;
  rss_after_mib: number | null;
  rss_per_device_kib: number | null;
  /** Its GET /healthz counts once every device was up: the whole fleet, wherever held. */
  listed_devices: number | null;
  listed_online: number | null;
}

export interface TargetResult {
  figures: Figures;
  /** The cluster target: the same figures per hub process. */
  nodes?: NodeFigures[];
  /** Set when a phase failed: the figures after it are missing. */
  error?: string;
}

interface Row {
  key: string;
  label: string;
  digits: number;
  /** Counts of failures: their ratio means nothing. */
  noRatio?: boolean;
  /** Left out of the table when no target has it (the storm's rows without --storm). */
  optional?: boolean;
}

/** The reconnect storm (--storm, hub only): no ratios, shown only when it ran. */
function stormRows(devices: number): Row[] {
  const rows: [string, string, number][] = [
    ['storm_hub_exit_s', 'storm: hub stopped after SIGTERM (s)', 2],
    ['storm_hub_back_s', 'storm: hub accepts connections again (s)', 2],
    ['storm_back_50_s', 'storm: 50% of devices back (s)', 2],
    ['storm_back_90_s', 'storm: 90% of devices back (s)', 2],
    ['storm_back_99_s', 'storm: 99% of devices back (s)', 2],
    ['storm_back_100_s', `storm: all ${devices} devices back (s)`, 2],
    ['storm_hub_online_s', 'storm: hub lists them all online (s)', 2],
    ['storm_connack_refusals', 'storm: CONNACK refusals', 0],
    ['storm_refused', 'storm: connections refused (hub not listening)', 0],
    ['storm_errors', 'storm: other connect errors / timeouts', 0],
    ['storm_listen_overflows', 'storm: listen queue overflows (machine-wide)', 0],
    ['storm_attempts_per_device', 'storm: connect attempts per device', 2],
    ['storm_load_back_s', 'storm: load client connected again (s)', 2],
    ['storm_cmd_sent', 'storm: commands sent', 0],
    ['storm_cmd_ok', 'storm: commands answered ok', 0],
    ['storm_cmd_offline', 'storm: commands answered DEVICE_OFFLINE', 0],
    ['storm_cmd_other', 'storm: commands answered with another error', 0],
    ['storm_cmd_unanswered', 'storm: commands never answered (lost with the hub)', 0],
    ['storm_cmd_unsent', 'storm: commands not sent (load client reconnecting)', 0],
    ['storm_cmd_p50_ms', 'storm: command p50 during the storm (ms)', 1],
    ['storm_cmd_p99_ms', 'storm: command p99 during the storm (ms)', 1],
  ];
  return rows.map(([key, label, digits]) => ({ key, label, digits, noRatio: true, optional: true }));
}

export function rows(devices: number, inflight: number): Row[] {
  return [
    { key: 'connect_s', label: `connect ${devices} devices (s)`, digits: 2 },
    { key: 'connect_rate', label: 'connect rate (connects/s)', digits: 0 },
    { key: 'handshake_p50_ms', label: 'connect handshake p50 (ms, slowest simulator)', digits: 1 },
    { key: 'handshake_max_ms', label: 'connect handshake max (ms)', digits: 1 },
    { key: 'connack_failures', label: 'CONNACK failures', digits: 0, noRatio: true },
    { key: 'refused', label: 'connections refused', digits: 0, noRatio: true },
    { key: 'connect_errors', label: 'other connect errors / timeouts', digits: 0, noRatio: true },
    { key: 'listen_overflows', label: 'listen queue overflows while connecting (machine-wide)', digits: 0, noRatio: true },
    { key: 'listed_devices_min', label: 'devices listed by each node (fewest, /healthz devices)', digits: 0, noRatio: true, optional: true },
    { key: 'listed_online_min', label: 'devices listed online by each node (fewest)', digits: 0, noRatio: true, optional: true },
    { key: 'rss_before_mib', label: 'RSS before devices (MiB)', digits: 1 },
    { key: 'rss_after_mib', label: `RSS with ${devices} devices (MiB)`, digits: 1 },
    { key: 'rss_per_device_kib', label: 'RSS per device, 1 s after connecting (KiB)', digits: 1 },
    { key: 'rss_rest_before_mib', label: 'RSS at rest before devices (MiB)', digits: 1 },
    { key: 'rss_rest_after_mib', label: `RSS at rest with ${devices} devices (MiB)`, digits: 1 },
    { key: 'rss_rest_per_device_kib', label: 'RSS per device at rest (KiB)', digits: 1 },
    { key: 'ext_rss_before_mib', label: 'external broker: RSS before devices (MiB)', digits: 1, optional: true },
    { key: 'ext_rss_after_mib', label: `external broker: RSS with ${devices} devices (MiB)`, digits: 1, optional: true },
    { key: 'ext_rss_per_device_kib', label: 'external broker: RSS per device, 1 s after connecting (KiB)', digits: 1, optional: true },
    { key: 'ext_rss_rest_per_device_kib', label: 'external broker: RSS per device at rest (KiB)', digits: 1, optional: true },
    { key: 'rest_cpu_pct', label: `hub / bare broker CPU at rest with ${devices} devices (% of a core)`, digits: 0 },
    { key: 'ext_rest_cpu_pct', label: 'external broker CPU at rest (% of a core)', digits: 0, optional: true },
    { key: 'rest_redis_cpu_pct', label: 'Redis CPU at rest (% of a core)', digits: 0, optional: true },
    { key: 'rt_rate', label: `round trips/s (${inflight} in flight)`, digits: 0 },
    { key: 'rt_p50_ms', label: 'round trip p50 (ms)', digits: 2 },
    { key: 'rt_p99_ms', label: 'round trip p99 (ms)', digits: 2 },
    { key: 'rt_max_ms', label: 'round trip max (ms)', digits: 2 },
    { key: 'rt_cpu_s_per_10k', label: 'hub / bare broker CPU s per 10k round trips', digits: 2 },
    { key: 'rt_ext_cpu_s_per_10k', label: 'external broker CPU s per 10k round trips', digits: 2, optional: true },
    { key: 'rt_gc_s_per_10k', label: 'hub GC s per 10k round trips (in the hub CPU)', digits: 2, optional: true },
    { key: 'rt_load_cpu_s_per_10k', label: 'load client CPU s per 10k round trips', digits: 2 },
    { key: 'rt_sim_cpu_s_per_10k', label: 'device simulators CPU s per 10k round trips', digits: 2 },
    { key: 'rt_redis_cpu_s_per_10k', label: 'Redis CPU s per 10k round trips', digits: 2, optional: true },
    { key: 'rt_errors', label: 'round trips answered with an error', digits: 0, noRatio: true },
    { key: 'rt_crossed_pct', label: 'round trips to a device on another node (%)', digits: 1, noRatio: true, optional: true },
    { key: 'fanout_s', label: `fan-out to ${devices} devices (s)`, digits: 2 },
    { key: 'fanout_succeeded', label: 'fan-out: devices that answered', digits: 0, noRatio: true },
    { key: 'fanout_cpu_s', label: 'hub / bare broker CPU s during the fan-out', digits: 2 },
    { key: 'fanout_ext_cpu_s', label: 'external broker CPU s during the fan-out', digits: 2, optional: true },
    { key: 'fanout_gc_s', label: 'hub GC s during the fan-out', digits: 2, optional: true },
    { key: 'fanout_redis_cpu_s', label: 'Redis CPU s during the fan-out', digits: 2, optional: true },
    { key: 'redis_memory_mib', label: 'Redis memory growth with the devices (MiB)', digits: 1, optional: true },
    { key: 'dropped', label: 'device connections dropped', digits: 0, noRatio: true },
    { key: 'node_lapses', label: 'nodes taken for dead (heartbeat lapses)', digits: 0, noRatio: true, optional: true },
    ...stormRows(devices),
  ];
}

function format(value: number | null | undefined, digits: number): string {
  return value === null || value === undefined || Number.isNaN(value) ? '—' : value.toFixed(digits);
}

export function ratio(a: number | null | undefined, b: number | null | undefined): number | null {
  return a === null || a === undefined || b === null || b === undefined || b === 0 || Number.isNaN(a) || Number.isNaN(b) ? null : a / b;
}

/** Ratio columns: the hub against each bare broker, the cluster and the hub on an external broker against the embedded hub. */
const RATIO_PAIRS: readonly [TargetName, TargetName][] = [
  ['hub', 'aedes'],
  ['hub', 'mosquitto'],
  ['cluster', 'hub'],
  ['external-mosquitto', 'hub'],
  ['external-nats', 'hub'],
];

function ratioPairs(results: Partial<Record<TargetName, TargetResult>>): [TargetName, TargetName][] {
  return RATIO_PAIRS.filter(([a, b]) => results[a] && results[b]);
}

export function table(results: Partial<Record<TargetName, TargetResult>>, devices: number, inflight: number): string {
  const names = Object.keys(results) as TargetName[];
  const ratios = ratioPairs(results);
  const header = ['measure', ...names, ...ratios.map(([a, b]) => `${a} ÷ ${b}`)];
  const lines = [`| ${header.join(' | ')} |`, `|${header.map((_, i) => (i === 0 ? '---' : '---:')).join('|')}|`];
  for (const row of rows(devices, inflight)) {
    if (row.optional && names.every((n) => results[n]?.figures[row.key] === undefined)) continue;
    const cells = names.map((n) => format(results[n]?.figures[row.key], row.digits));
    const r = ratios.map(([a, b]) => (row.noRatio ? '' : format(ratio(results[a]?.figures[row.key], results[b]?.figures[row.key]), 2)));
    lines.push(`| ${[row.label, ...cells, ...r].join(' | ')} |`);
  }
  return lines.join('\n');
}

export interface Report {
  machine: Machine;
  parameters: Record<string, unknown>;
  results: Partial<Record<TargetName, TargetResult>>;
  ratios: Record<string, Record<string, number | null>>;
  table: string;
}

export function ratiosOf(results: Partial<Record<TargetName, TargetResult>>, devices: number, inflight: number): Report['ratios'] {
  const out: Report['ratios'] = {};
  for (const [a, b] of ratioPairs(results)) {
    out[`${a}/${b}`] = Object.fromEntries(rows(devices, inflight).filter((r) => !r.noRatio).map((r) => [r.key, ratio(results[a]?.figures[r.key], results[b]?.figures[r.key])]));
  }
  return out;
}
