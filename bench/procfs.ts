/** What the bench reads about a process and the machine: RSS and CPU time from /proc. */
import { readFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';

/** sysconf(_SC_CLK_TCK) on Linux: /proc reports CPU times in these ticks. */
export const CLK_TCK = 100;

export interface ProcSample {
  rssKiB: number;
  /** utime + stime, in seconds. */
  cpuSeconds: number;
}

function readProc(pid: number, file: string): string {
  try {
    return readFileSync(`/proc/${pid}/${file}`, 'utf8');
  } catch {
    throw new Error(`process ${pid} is gone (cannot read /proc/${pid}/${file})`);
  }
}

export function sampleProcess(pid: number): ProcSample {
  const status = readProc(pid, 'status');
  const rss = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
  const stat = readProc(pid, 'stat');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const utime = Number(fields[11]);
  const stime = Number(fields[12]);
  return { rssKiB: rss ? Number(rss[1]) : NaN, cpuSeconds: (utime + stime) / CLK_TCK };
}

export interface Machine {
  cpu: string;
  cores: number;
  ramGiB: number;
  node: string;
  date: string;
}

export function machine(): Machine {
  const list = cpus();
  return { cpu: list[0]?.model.trim() ?? 'unknown', cores: list.length, ramGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10, node: process.version, date: new Date().toISOString() };
}

export function machineLine(m: Machine): string {
  return `machine: ${m.cpu}, ${m.cores} cores, ${m.ramGiB} GiB RAM, node ${m.node}, ${m.date}`;
}

/**
 * TCP connections the kernel dropped because a listen queue was full (TcpExt ListenOverflows,
 * whole network namespace). Each costs its client a SYN retransmit, 1 s or more.
 */
export function listenOverflows(): number {
  const lines = readFileSync('/proc/net/netstat', 'utf8').split('\n');
  for (let i = 0; i + 1 < lines.length; i += 2) {
    if (!lines[i]!.startsWith('TcpExt:')) continue;
    const names = lines[i]!.split(/\s+/);
    const values = lines[i + 1]!.split(/\s+/);
    const at = names.indexOf('ListenOverflows');
    return at < 0 ? NaN : Number(values[at]);
  }
  return NaN;
}
