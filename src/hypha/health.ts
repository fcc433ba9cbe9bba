/**
 * hypha's health reports (docs/protocol.md "Health telemetry"): load, memory, the root file
 * system, the hottest thermal zone, uptime and the agent's version, read from the kernel every
 * `--health-interval` seconds and published on `P/devices/{id}/telemetry/health`.
 * Node built-ins only (the standalone agent runs on Node.js 18 with nothing else): a metric
 * the system does not offer (no thermal zone, no `fs.statfs` before Node 18.15) is left out.
 */
import { promises as fs } from 'node:fs';
import { cpus, freemem, loadavg, totalmem, uptime } from 'node:os';
import { join } from 'node:path';
import type { HealthReport } from '../protocol/health.js';

/** Readings outside this range come from a zone without a real sensor (some report 0 or -273). */
const PLAUSIBLE_TEMP_C: readonly [number, number] = [-40, 150];

export interface HealthSources {
  /** Where /proc and /sys are (a scratch directory in tests). */
  root?: string;
  /** The file system whose space is reported. */
  diskPath?: string;
  version: string;
}

/** One report of this machine, now. */
export async function readHealth({ root = '/', diskPath = '/', version }: HealthSources): Promise<HealthReport> {
  const [load1, load5, load15] = loadavg() as [number, number, number];
  const report: HealthReport = { load1: round2(load1), load5: round2(load5), load15: round2(load15), cpus: Math.max(1, cpus().length) };
  const memory = await readMemory(root);
  report.mem_total_bytes = memory.total;
  report.mem_available_bytes = Math.min(memory.available, memory.total);
  const disk = await readDisk(diskPath);
  if (disk) {
    report.disk_total_bytes = disk.total;
    report.disk_free_bytes = Math.min(disk.free, disk.total);
  }
  const temp = await readTemperature(root);
  if (temp !== undefined) report.temp_c = temp;
  report.uptime_s = Math.round(uptime());
  report.version = version;
  return report;
}

/**
 * MemAvailable from /proc/meminfo (what new programs can get without swapping): Node 18's
 * os.freemem() is MemFree, which counts the page cache as used and so reads as nearly full.
 */
async function readMemory(root: string): Promise<{ total: number; available: number }> {
  try {
    const text = await fs.readFile(join(root, 'proc', 'meminfo'), 'utf8');
    const kib = (name: string) => {
      const match = new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(text);
      return match ? Number(match[1]) * 1024 : undefined;
    };
    const total = kib('MemTotal');
    const available = kib('MemAvailable');
    if (total !== undefined && available !== undefined) return { total, available };
  } catch {
    // not Linux, or no /proc: Node's own figures
  }
  return { total: totalmem(), available: freemem() };
}

async function readDisk(path: string): Promise<{ total: number; free: number } | undefined> {
  // fs.statfs came with Node 18.15.
  const statfs = (fs as { statfs?: (path: string) => Promise<{ bsize: number; blocks: number; bavail: number }> }).statfs;
  if (!statfs) return undefined;
  try {
    const stats = await statfs(path);
    return { total: stats.blocks * stats.bsize, free: stats.bavail * stats.bsize };
  } catch {
    return undefined;
  }
}

/** The hottest thermal zone in °C, or undefined when the board has none (most VMs). */
export async function readTemperature(root = '/'): Promise<number | undefined> {
  const dir = join(root, 'sys', 'class', 'thermal');
  let zones: string[];
  try {
    zones = (await fs.readdir(dir)).filter((name) => name.startsWith('thermal_zone'));
  } catch {
    return undefined;
  }
  let hottest: number | undefined;
  for (const zone of zones) {
    try {
      const milli = Number((await fs.readFile(join(dir, zone, 'temp'), 'utf8')).trim());
      const celsius = milli / 1000;
      if (!Number.isFinite(celsius) || celsius < PLAUSIBLE_TEMP_C[0] || celsius > PLAUSIBLE_TEMP_C[1]) continue;
      if (hottest === undefined || celsius > hottest) hottest = celsius;
    } catch {
      // a zone that cannot be read (EIO on some boards while the sensor is off)
    }
  }
  return hottest === undefined ? undefined : Math.round(hottest * 10) / 10;
}

function round2(value: number): number {
  return Math.round(value * 100) / 100;
}

export interface HealthReporterOptions extends HealthSources {
  intervalMs: number;
  /** Publishes one report; returns false when it was not sent (no connection). */
  publish: (payload: string) => boolean;
  onError?: (error: unknown) => void;
}

/**
 * Reports every `intervalMs` once started (the first at start), only while connected: a report
 * is about now, so none is queued across a drop to arrive late.
 */
export class HealthReporter {
  private timer: NodeJS.Timeout | undefined;
  private reading = false;

  constructor(private readonly options: HealthReporterOptions) {}

  get running(): boolean {
    return this.timer !== undefined;
  }

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.report(), this.options.intervalMs);
    this.timer.unref();
    void this.report();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Reads and publishes one report (skipped while the previous one is still being read). */
  async report(): Promise<void> {
    if (this.reading) return;
    this.reading = true;
    try {
      const report = await readHealth(this.options);
      if (this.timer !== undefined) this.options.publish(JSON.stringify(report));
    } catch (error) {
      this.options.onError?.(error);
    } finally {
      this.reading = false;
    }
  }
}
