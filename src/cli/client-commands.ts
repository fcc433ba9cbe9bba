/**
 * `rhizosphere exec|devices|run|shell|cp|forward …`: the client SDK (src/client) from the
 * command line. Exit status: exec → the command's own exit status; devices → 0; run → 0 when
 * every target succeeded, else 1; shell → the remote shell's; cp → 0 once the copy is verified. A coded problem (DEVICE_OFFLINE, FORBIDDEN, TIMEOUT, …) prints
 * `rhizosphere: CODE: message` and exits 1; bad usage exits 2 (one line on stderr).
 */
import { parseArgs } from 'node:util';
import { ClientError, connect, httpUrlFromMqttUrl, type ConnectOptions, type DeviceSelector, type HubClient, type JobCounts, type JobStatus, type JobView, type Order } from '../client/index.js';
import { TIMEOUT_MS_MAX, TIMEOUT_MS_MIN } from '../protocol/schemas.js';
import { parseArgsProblem } from './args.js';
import { ProgressLine } from './progress.js';
import { cpCommand, forwardCommand, parseForward, RemoteUsageError, shellCommand } from './remote-access.js';

export const CLIENT_COMMANDS = ['exec', 'devices', 'run', 'agent', 'shell', 'cp', 'forward'] as const;

export class ClientUsageError extends Error {}

export const CLIENT_USAGE = `Client commands (talk to a running hub; credentials: --token-name N --token SECRET of an API
token, or env RHIZOSPHERE_TOKEN_NAME and RHIZOSPHERE_TOKEN; --url also from env RHIZOSPHERE_URL):
  rhizosphere exec --url URL DEVICE -- CMD...  run CMD on DEVICE: its stdout and stderr, its exit status
        [--order exec|okng|no-return] [--timeout SECONDS]
  rhizosphere devices --url URL [--tag T...] [--online] [--json]
                                             devices, their status and tags (a table, or one JSON object)
  rhizosphere run --url URL [--http-url URL] (--tag T... | --device D... | --online | --all) -- CMD...
        [--concurrency N] [--timeout SECONDS] [--deadline SECONDS] [--order …]
                                             a fleet job: progress on stderr, a summary table on stdout;
                                             exit 0 when every target succeeded, else 1
  rhizosphere agent upgrade --url URL [--http-url URL] (--tag T... | --device D... | --online | --all)
        [--concurrency N] [--timeout SECONDS] [--deadline SECONDS]
                                             a job that sends the hub's agent build (GET /agent/hypha.js)
                                             to each device, which swaps it in and restarts; a target
                                             succeeds once the device is back as the new version
  rhizosphere shell --url URL DEVICE         an interactive shell on DEVICE in this terminal (Ctrl-C goes
                                             to the device; the shell's exit status is this one's)
  rhizosphere cp --url URL LOCAL DEVICE:/PATH   upload a file (PATH ending in / keeps the name)
  rhizosphere cp --url URL DEVICE:/PATH LOCAL   download a file; both checked by SHA-256, the target
                                             replaced only when complete
  rhizosphere forward --url URL DEVICE LOCALPORT:HOST:PORT... [--bind ADDR]
                                             carry connections to LOCALPORT (on 127.0.0.1, or ADDR) to
                                             HOST:PORT as DEVICE sees it (LOCALPORT:PORT: localhost;
                                             LOCALPORT 0: any free port, printed); until Ctrl-C
  URL: mqtt://HUB:1883, mqtts://HUB:8883, ws://HUB:8080/mqtt or wss://HUB:8080/mqtt. run needs REST:
  --http-url http(s)://HUB:8080, derived from a ws:// or wss:// URL. A hub error exits 1 with
  "rhizosphere: CODE: message"; a usage error exits 2.`;

const ORDER_ALIASES: Record<string, Order> = {
  exec: 'exec_bash',
  exec_bash: 'exec_bash',
  okng: 'exec_bash_ret_okng_only',
  exec_bash_ret_okng_only: 'exec_bash_ret_okng_only',
  'no-return': 'exec_bash_no_return',
  exec_bash_no_return: 'exec_bash_no_return',
};

export interface ClientIo {
  out: (text: string) => void;
  err: (text: string) => void;
  /** Whether stderr is a terminal (progress bar) or not (plain periodic lines). */
  errIsTty: boolean;
}

const OPTIONS = {
  url: { type: 'string' },
  'http-url': { type: 'string' },
  'token-name': { type: 'string' },
  token: { type: 'string' },
  'topic-prefix': { type: 'string' },
  'client-id': { type: 'string' },
  order: { type: 'string' },
  timeout: { type: 'string' },
  deadline: { type: 'string' },
  concurrency: { type: 'string' },
  tag: { type: 'string', multiple: true },
  device: { type: 'string', multiple: true },
  online: { type: 'boolean' },
  all: { type: 'boolean' },
  json: { type: 'boolean' },
  bind: { type: 'string' },
} as const;

/** Runs one client command; resolves with the exit status. Throws ClientUsageError for bad usage, ClientError for a coded failure. */
export async function runClientCommand(argv: string[], env: NodeJS.ProcessEnv, io: ClientIo): Promise<number> {
  const dashdash = argv.indexOf('--');
  const before = dashdash >= 0 ? argv.slice(0, dashdash) : argv;
  const after = dashdash >= 0 ? argv.slice(dashdash + 1) : [];
  let parsed;
  try {
    parsed = parseArgs({ args: before, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (error) {
    throw new ClientUsageError(`${parseArgsProblem(error)} (see rhizosphere --help)`);
  }
  const v = parsed.values;
  const [command, ...positionals] = parsed.positionals;
  const url = v.url ?? env.RHIZOSPHERE_URL;
  if (!url) throw new ClientUsageError(`${command}: --url is required (mqtt://HUB:1883, ws://HUB:8080/mqtt, …)`);
  if (!/^(mqtts?|wss?):\/\//.test(url)) throw new ClientUsageError(`--url ${url}: must start with mqtt://, mqtts://, ws:// or wss://`);
  const tokenName = v['token-name'] ?? env.RHIZOSPHERE_TOKEN_NAME;
  const token = v.token ?? env.RHIZOSPHERE_TOKEN;
  if ((tokenName === undefined) !== (token === undefined)) throw new ClientUsageError('--token-name and --token go together (or RHIZOSPHERE_TOKEN_NAME and RHIZOSPHERE_TOKEN)');
  const order = v.order === undefined ? undefined : ORDER_ALIASES[v.order];
  if (v.order !== undefined && !order) throw new ClientUsageError(`--order: "${v.order}" must be one of exec, okng, no-return`);
  const timeoutMs = v.timeout === undefined ? undefined : seconds('--timeout', v.timeout, TIMEOUT_MS_MIN, TIMEOUT_MS_MAX);
  const connectOptions: ConnectOptions = {
    ...(tokenName !== undefined ? { tokenName, token } : {}),
    ...(v['topic-prefix'] !== undefined ? { topicPrefix: v['topic-prefix'] } : {}),
    ...(v['client-id'] !== undefined ? { clientId: v['client-id'] } : {}),
    ...(v['http-url'] !== undefined ? { httpUrl: v['http-url'] } : {}),
    connectTimeoutMs: 10_000,
    reconnectPeriodMs: 0,
  };

  if (command === 'exec') {
    const [device, ...rest] = positionals;
    const words = dashdash >= 0 ? (rest.length > 0 ? null : after) : rest;
    if (!device) throw new ClientUsageError('exec: DEVICE is required: rhizosphere exec --url URL DEVICE -- CMD...');
    if (words === null) throw new ClientUsageError(`exec: unexpected argument "${rest[0]}" before --`);
    if (words.length === 0) throw new ClientUsageError('exec: the command is missing: rhizosphere exec --url URL DEVICE -- CMD...');
    return withHub(url, connectOptions, (hub) => execCommand(hub, device, words.join(' '), { order, timeoutMs }, io));
  }
  if (command === 'devices') {
    if (positionals.length > 0 || after.length > 0) throw new ClientUsageError(`devices: unexpected argument "${positionals[0] ?? after[0]}"`);
    const selector = { ...(v.online ? { online: true } : {}), ...(v.tag ? { tags: v.tag } : {}) };
    return withHub(url, connectOptions, (hub) => devicesCommand(hub, selector, v.json === true, io));
  }
  /** The target and limits of a fleet job (run, agent upgrade). */
  const jobSettings = (what: string) => {
    const target: { tags?: string[]; devices?: string[]; online?: boolean } = {};
    if (v.all) target.tags = [];
    if (v.tag) target.tags = v.tag;
    if (v.device) target.devices = v.device;
    if (v.online) target.online = true;
    if (Object.keys(target).length === 0) throw new ClientUsageError(`${what}: say which devices: --tag T, --device D, --online or --all`);
    if (v['http-url'] === undefined && httpUrlFromMqttUrl(url) === null) throw new ClientUsageError(`${what}: --http-url is required with an mqtt:// or mqtts:// --url (jobs are created over REST)`);
    if (v['http-url'] !== undefined && !/^https?:\/\//.test(v['http-url'])) throw new ClientUsageError(`--http-url ${v['http-url']}: must start with http:// or https://`);
    const concurrency = v.concurrency === undefined ? undefined : whole('--concurrency', v.concurrency, 1, 10_000);
    const deadlineMs = v.deadline === undefined ? undefined : seconds('--deadline', v.deadline, 1000, 604_800_000);
    return { target, timeout_ms: timeoutMs, concurrency, deadline_ms: deadlineMs };
  };
  if (command === 'run') {
    if (positionals.length > 0 && dashdash >= 0) throw new ClientUsageError(`run: unexpected argument "${positionals[0]}" before --`);
    const words = dashdash >= 0 ? after : positionals;
    if (words.length === 0) throw new ClientUsageError('run: the command is missing: rhizosphere run --url URL --tag T -- CMD...');
    const settings = jobSettings('run');
    return withHub(url, connectOptions, (hub) => runCommand(hub, { ...settings, order, cmd_str: words.join(' ') }, io));
  }
  if (command === 'agent') {
    if (positionals[0] !== 'upgrade' || positionals.length > 1 || after.length > 0) {
      throw new ClientUsageError('agent: rhizosphere agent upgrade --url URL (--tag T... | --device D... | --online | --all)');
    }
    if (v.order !== undefined) throw new ClientUsageError('agent upgrade: --order is not a flag of an upgrade');
    const settings = jobSettings('agent upgrade');
    return withHub(url, connectOptions, (hub) => runCommand(hub, { ...settings, order: 'agent_upgrade', cmd_str: undefined }, io));
  }
  if (command === 'shell' || command === 'cp' || command === 'forward') {
    if (after.length > 0) throw new ClientUsageError(`${command}: unexpected argument "${after[0]}" after --`);
    try {
      if (command === 'shell') {
        if (positionals.length !== 1) throw new RemoteUsageError('shell: one DEVICE: rhizosphere shell --url URL DEVICE');
        return await withHub(url, connectOptions, (hub) => shellCommand(hub, positionals[0]!, io));
      }
      if (command === 'cp') {
        if (positionals.length !== 2) throw new RemoteUsageError('cp: rhizosphere cp --url URL LOCAL DEVICE:/PATH, or DEVICE:/PATH LOCAL');
        return await withHub(url, connectOptions, (hub) => cpCommand(hub, positionals[0]!, positionals[1]!, io));
      }
      const [device, ...specs] = positionals;
      if (!device || specs.length === 0) throw new RemoteUsageError('forward: rhizosphere forward --url URL DEVICE LOCALPORT:HOST:PORT...');
      const forwards = specs.map(parseForward);
      return await withHub(url, connectOptions, (hub) => forwardCommand(hub, device, forwards, v.bind ?? '127.0.0.1', io));
    } catch (error) {
      if (error instanceof RemoteUsageError) throw new ClientUsageError(error.message);
      throw error;
    }
  }
  throw new ClientUsageError(`unknown command "${command}" (see rhizosphere --help)`);
}

function seconds(flag: string, value: string, minMs: number, maxMs: number): number {
  const n = Number(value);
  if (!/^\d+(\.\d+)?$/.test(value) || !Number.isFinite(n)) throw new ClientUsageError(`${flag}: "${value}" is not a number of seconds`);
  const ms = Math.round(n * 1000);
  if (ms < minMs || ms > maxMs) throw new ClientUsageError(`${flag}: ${value} must be ${minMs / 1000} to ${maxMs / 1000} seconds`);
  return ms;
}

function whole(flag: string, value: string, min: number, max: number): number {
  if (!/^\d+$/.test(value)) throw new ClientUsageError(`${flag}: "${value}" is not a whole number`);
  const n = Number(value);
  if (n < min || n > max) throw new ClientUsageError(`${flag}: ${value} must be ${min} to ${max}`);
  return n;
}

async function withHub(url: string, options: ConnectOptions, body: (hub: HubClient) => Promise<number>): Promise<number> {
  const hub = await connect(url, options);
  try {
    return await body(hub);
  } finally {
    await hub.close();
  }
}

async function execCommand(hub: HubClient, device: string, cmd: string, options: { order?: Order; timeoutMs?: number }, io: ClientIo): Promise<number> {
  const reply = await hub.device(device).exec(cmd, { ...(options.order ? { order: options.order } : {}), ...(options.timeoutMs ? { timeoutMs: options.timeoutMs } : {}) });
  if (reply.result) io.out(`${reply.result}\n`);
  if (reply.error) io.err(`${reply.error}\n`);
  if (reply.truncated) io.err('rhizosphere: the output was cut at the device\'s output cap\n');
  return reply.exitCode ?? 0;
}

async function devicesCommand(hub: HubClient, selector: DeviceSelector, json: boolean, io: ClientIo): Promise<number> {
  const devices = await hub.devices(selector);
  if (json) {
    io.out(`${JSON.stringify({ devices })}\n`);
    return 0;
  }
  const rows = devices.map((d) => [d.id, d.online ? 'yes' : 'no', d.transport ?? '-', d.since || '-', d.tags.join(',') || '-']);
  io.out(table(['ID', 'ONLINE', 'TRANSPORT', 'SINCE', 'TAGS'], rows));
  return 0;
}

interface RunSpec {
  target: { tags?: string[]; devices?: string[]; online?: boolean };
  order: Order | 'agent_upgrade' | undefined;
  cmd_str: string | undefined;
  timeout_ms: number | undefined;
  concurrency: number | undefined;
  deadline_ms: number | undefined;
}

async function runCommand(hub: HubClient, spec: RunSpec, io: ClientIo): Promise<number> {
  const body = Object.fromEntries(Object.entries(spec).filter(([, value]) => value !== undefined)) as unknown as Parameters<HubClient['jobs']['create']>[0];
  const created = await hub.jobs.create(body);
  if (created.unknown && created.unknown.length > 0) io.err(`rhizosphere: not known to the hub yet, waiting as offline targets: ${created.unknown.join(', ')}\n`);
  io.err(`rhizosphere: job ${created.id}: ${created.targets} device${created.targets === 1 ? '' : 's'}\n`);

  // Ctrl-C cancels what has not been sent; the run then waits for what is in flight.
  let canceling = false;
  const onSigint = () => {
    if (canceling) process.exit(130);
    canceling = true;
    io.err('\nrhizosphere: canceling the job (Ctrl-C again to leave it running)\n');
    void hub.jobs.cancel(created.id).catch(() => undefined);
  };
  process.on('SIGINT', onSigint);
  const progress = new Progress(io, created.targets);
  let final: JobStatus;
  try {
    final = await hub.jobs.watch(created.id, (status) => progress.update(status));
  } finally {
    process.off('SIGINT', onSigint);
    progress.end();
  }
  const job: JobView = await hub.jobs.get(created.id);
  if (job.targets.length > 0) {
    const rows = job.targets.map((t) => [t.device, t.state, t.exit_code === null ? '-' : String(t.exit_code), firstLine(t.result || t.error || '')]);
    io.out(table(['DEVICE', 'STATE', 'EXIT', 'OUTPUT'], rows));
  }
  io.out(`${summaryLine(job.counts, job.targets.length)}\n`);
  void final;
  return job.counts.succeeded === job.targets.length ? 0 : 1;
}

function firstLine(text: string): string {
  const line = text.split('\n')[0] ?? '';
  return line.length > 80 ? `${line.slice(0, 79)}…` : line;
}

function summaryLine(counts: JobCounts, total: number): string {
  if (total === 0) return 'no devices matched';
  const parts = (['succeeded', 'failed', 'timed_out', 'canceled', 'queued', 'sent'] as const).filter((k) => counts[k] > 0).map((k) => `${counts[k]} ${k.replace('_', ' ')}`);
  return `${total} device${total === 1 ? '' : 's'}: ${parts.join(', ')}`;
}

/** A job's progress on stderr (src/cli/progress.ts). */
class Progress {
  private readonly line: ProgressLine;

  constructor(
    io: ClientIo,
    private readonly total: number,
  ) {
    this.line = new ProgressLine(io);
  }

  update(status: JobStatus): void {
    const c = status.counts;
    const done = c.succeeded + c.failed + c.timed_out + c.canceled;
    const text = `${done}/${this.total} done: ${c.succeeded} ok, ${c.failed} failed, ${c.timed_out} timed out, ${c.canceled} canceled; ${c.sent} running, ${c.queued} queued`;
    const finished = status.state !== 'running' && c.queued === 0 && c.sent === 0;
    this.line.show(this.total === 0 ? 1 : done / this.total, text, finished);
  }

  end(): void {
    this.line.end();
  }
}

function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(headers), ...rows.map(line)].map((l) => `${l}\n`).join('');
}

export { ClientError };
