/**
 * `rhizosphere exec|devices|run|shell|cp|forward …`: the client SDK (src/client) from the
 * command line. Exit status: exec → the command's own exit status; devices → 0; run → 0 when
 * every target succeeded, else 1; shell → the remote shell's; cp → 0 once the copy is verified. A coded problem (DEVICE_OFFLINE, FORBIDDEN, TIMEOUT, …) prints
 * `rhizosphere: CODE: message` and exits 1; bad usage exits 2 (one line on stderr).
 */
import { createReadStream, statSync } from 'node:fs';
import { basename } from 'node:path';
import { Readable } from 'node:stream';
import { parseArgs } from 'node:util';
import { ClientError, connect, httpUrlFromMqttUrl, type ConnectOptions, type DeviceSelector, type HubClient, type JobCounts, type JobSpec, type JobStaging, type JobStatus, type JobView, type Order, type ScheduleSpec } from '../client/index.js';
import { TIMEOUT_MS_MAX, TIMEOUT_MS_MIN } from '../protocol/schemas.js';
import { ALERT_USAGE, alertCommand, AlertUsageError } from './alert-commands.js';
import { parseArgsProblem } from './args.js';
import { ProgressLine } from './progress.js';
import { cpCommand, forwardCommand, parseForward, RemoteUsageError, shellCommand } from './remote-access.js';
import { parseAssignments, stateGetCommand, stateSetCommand, StateUsageError } from './state-commands.js';

export const CLIENT_COMMANDS = ['exec', 'devices', 'run', 'deploy', 'agent', 'job', 'schedule', 'alert', 'state', 'shell', 'cp', 'forward'] as const;

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
        staged: [--rate N] (sends a minute) [--ramp FACTORxSUCCESSES] (e.g. 2x20: double the
        rate after each 20 successes) [--max-rate N] [--canary K] (K first, the rest only if
        all K succeed) [--abort-above PERCENT --abort-after N] (abort when more than PERCENT
        of at least N finished targets failed or timed out) [--window HH:MM-HH:MM[@TZ]] (sends
        only inside these times of day, in TZ, default the hub's)
  rhizosphere deploy --url URL [--http-url URL] (targets, as run) --file FILE --install CMD
        [--rollback CMD] [--dir DIR] [run's flags]
                                             FILE uploaded once to the hub, copied to DIR on each
                                             device (default /var/tmp/rhizosphere; a tarball is
                                             unpacked there), CMD run in DIR; where it fails, the
                                             rollback command; exit 0 when every install succeeded
  rhizosphere job pause|resume|cancel --url URL [--http-url URL] JOB
  rhizosphere schedule add --url URL (--at TIME | --cron EXPR [--tz TZ]) [--name N] (targets, as
        run) [run's flags] -- CMD         a job created at TIME (ISO 8601) or each time EXPR fires
  rhizosphere schedule list|remove|enable|disable --url URL [ID]
${ALERT_USAGE}
  rhizosphere agent upgrade --url URL [--http-url URL] (--tag T... | --device D... | --online | --all)
        [--concurrency N] [--timeout SECONDS] [--deadline SECONDS]
                                             a job that sends the hub's agent build (GET /agent/hypha.js)
                                             to each device, which swaps it in and restarts; a target
                                             succeeds once the device is back as the new version
  rhizosphere state get --url URL [--http-url URL] DEVICE [--json]
                                             DEVICE's desired and reported state and their delta
  rhizosphere state set --url URL [--http-url URL] (DEVICE | --tag T... | --device D... | --all) key=value... [--replace] [--json]
                                             change its desired state (value: JSON, else a string;
                                             key=null removes a key; --replace: these keys only)
  (run and agent upgrade also take --state COND: devices whose state compares so, e.g.
   --state 'state.reported.fw != state.desired.fw')
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
  state: { type: 'string' },
  replace: { type: 'boolean' },
  rate: { type: 'string' },
  ramp: { type: 'string' },
  'max-rate': { type: 'string' },
  canary: { type: 'string' },
  'abort-above': { type: 'string' },
  'abort-after': { type: 'string' },
  window: { type: 'string' },
  file: { type: 'string' },
  install: { type: 'string' },
  rollback: { type: 'string' },
  dir: { type: 'string' },
  at: { type: 'string' },
  cron: { type: 'string' },
  tz: { type: 'string' },
  name: { type: 'string' },
  kind: { type: 'string' },
  minutes: { type: 'string' },
  metric: { type: 'string' },
  above: { type: 'string' },
  below: { type: 'string' },
  states: { type: 'string' },
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
    const target: { tags?: string[]; devices?: string[]; online?: boolean; state?: string } = {};
    if (v.all) target.tags = [];
    if (v.tag) target.tags = v.tag;
    if (v.device) target.devices = v.device;
    if (v.online) target.online = true;
    // Desired state: e.g. --state 'state.delta.fw != null' (the hub checks the condition).
    if (v.state !== undefined) target.state = v.state;
    if (Object.keys(target).length === 0) throw new ClientUsageError(`${what}: say which devices: --tag T, --device D, --online, --state COND or --all`);
    if (v['http-url'] === undefined && httpUrlFromMqttUrl(url) === null) throw new ClientUsageError(`${what}: --http-url is required with an mqtt:// or mqtts:// --url (jobs are created over REST)`);
    if (v['http-url'] !== undefined && !/^https?:\/\//.test(v['http-url'])) throw new ClientUsageError(`--http-url ${v['http-url']}: must start with http:// or https://`);
    const concurrency = v.concurrency === undefined ? undefined : whole('--concurrency', v.concurrency, 1, 10_000);
    const deadlineMs = v.deadline === undefined ? undefined : seconds('--deadline', v.deadline, 1000, 604_800_000);
    return { target, timeout_ms: timeoutMs, concurrency, deadline_ms: deadlineMs, ...staging() };
  };
  /** --rate, --ramp, --max-rate, --canary, --abort-above, --abort-after: a staged rollout (the hub checks the ranges). */
  const staging = (): JobStaging => {
    const out: JobStaging = {};
    if (v.ramp !== undefined || v['max-rate'] !== undefined) {
      if (v.rate === undefined) throw new ClientUsageError('--ramp and --max-rate need --rate N (sends a minute at the start)');
    }
    if (v.rate !== undefined) {
      out.rollout = { start_per_minute: whole('--rate', v.rate, 1, 1_000_000) };
      if (v['max-rate'] !== undefined) out.rollout.max_per_minute = whole('--max-rate', v['max-rate'], 1, 1_000_000);
      if (v.ramp !== undefined) {
        const ramp = /^(\d+(?:\.\d+)?)x(\d+)$/.exec(v.ramp);
        if (!ramp) throw new ClientUsageError(`--ramp: "${v.ramp}" must be FACTORxSUCCESSES, e.g. 2x20`);
        out.rollout.increase = { factor: Number(ramp[1]), every_succeeded: Number(ramp[2]) };
      }
    }
    if (v.canary !== undefined) out.canary = { count: whole('--canary', v.canary, 1, 100_000) };
    if ((v['abort-above'] === undefined) !== (v['abort-after'] === undefined)) throw new ClientUsageError('--abort-above PERCENT and --abort-after N go together');
    if (v['abort-above'] !== undefined) {
      const percent = Number(v['abort-above']);
      if (!/^\d+(\.\d+)?$/.test(v['abort-above']) || percent > 100) throw new ClientUsageError(`--abort-above: "${v['abort-above']}" must be a percentage from 0 to 100`);
      out.abort = [{ when: 'any', above_percent: percent, min_finished: whole('--abort-after', v['abort-after']!, 1, 1_000_000) }];
    }
    if (v.window !== undefined) {
      const window = /^(\d\d:\d\d)-(\d\d:\d\d)(?:@(.+))?$/.exec(v.window);
      if (!window) throw new ClientUsageError(`--window: "${v.window}" must be HH:MM-HH:MM, optionally @TIMEZONE (02:00-04:00@Europe/Berlin)`);
      out.window = { start: window[1]!, end: window[2]!, ...(window[3] ? { tz: window[3] } : {}) };
    }
    return out;
  };
  if (command === 'run') {
    if (positionals.length > 0 && dashdash >= 0) throw new ClientUsageError(`run: unexpected argument "${positionals[0]}" before --`);
    const words = dashdash >= 0 ? after : positionals;
    if (words.length === 0) throw new ClientUsageError('run: the command is missing: rhizosphere run --url URL --tag T -- CMD...');
    const settings = jobSettings('run');
    return withHub(url, connectOptions, (hub) => runCommand(hub, { ...settings, order, cmd_str: words.join(' ') }, io));
  }
  if (command === 'deploy') {
    if (positionals.length > 0 || after.length > 0) throw new ClientUsageError(`deploy: unexpected argument "${positionals[0] ?? after[0]}"`);
    if (!v.file) throw new ClientUsageError('deploy: --file FILE is required (the package to send)');
    if (!v.install) throw new ClientUsageError('deploy: --install CMD is required (run on each device, in the directory the package is in)');
    if (v.order !== undefined) throw new ClientUsageError('deploy: --order is not a flag of a deployment');
    const file = v.file;
    let size: number;
    try {
      size = statSync(file).size;
    } catch (error) {
      throw new ClientUsageError(`deploy: --file ${file}: ${(error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (error as Error).message}`);
    }
    const settings = jobSettings('deploy');
    const install = v.install;
    return withHub(url, connectOptions, async (hub) => {
      io.err(`rhizosphere: uploading ${basename(file)} (${size} bytes) to the hub\n`);
      const artifact = await hub.artifacts.upload(basename(file), Readable.toWeb(createReadStream(file)) as ReadableStream<Uint8Array>);
      io.err(`rhizosphere: artifact ${artifact.sha256}\n`);
      return runCommand(hub, { ...settings, order: 'deploy', cmd_str: undefined, artifact: artifact.sha256, install, ...(v.rollback ? { rollback: v.rollback } : {}), ...(v.dir ? { dir: v.dir } : {}) }, io);
    });
  }
  if (command === 'schedule') {
    const [action, ...rest] = positionals;
    if (v['http-url'] === undefined && httpUrlFromMqttUrl(url) === null) throw new ClientUsageError('schedule: --http-url is required with an mqtt:// or mqtts:// --url (schedules are REST)');
    if (action === 'add') {
      if (rest.length > 0) throw new ClientUsageError(`schedule add: unexpected argument "${rest[0]}" before --`);
      if (after.length === 0) throw new ClientUsageError('schedule add: the command is missing: rhizosphere schedule add --url URL --cron EXPR --tag T -- CMD...');
      if ((v.at === undefined) === (v.cron === undefined)) throw new ClientUsageError('schedule add: give --at TIME or --cron EXPR');
      const settings = jobSettings('schedule add');
      const job = Object.fromEntries(Object.entries({ ...settings, order: order ?? 'exec_bash', cmd_str: after.join(' ') }).filter(([, value]) => value !== undefined)) as unknown as JobSpec;
      const spec: ScheduleSpec = { job, ...(v.at ? { at: v.at } : {}), ...(v.cron ? { cron: v.cron } : {}), ...(v.tz ? { tz: v.tz } : {}), ...(v.name ? { name: v.name } : {}) };
      return withHub(url, connectOptions, async (hub) => {
        const created = await hub.schedules.create(spec);
        io.out(`${created.id} next ${created.next_at ?? 'never'}\n`);
        return 0;
      });
    }
    if (action === 'list' && rest.length === 0) {
      return withHub(url, connectOptions, async (hub) => {
        const rows = (await hub.schedules.list()).map((s) => [s.id, s.name ?? '-', s.cron ? `cron ${s.cron}${s.tz ? ` ${s.tz}` : ''}` : `at ${s.at}`, s.enabled ? 'yes' : 'no', s.next_at ?? '-', s.last_job ?? '-', String(s.runs)]);
        io.out(table(['ID', 'NAME', 'WHEN', 'ENABLED', 'NEXT', 'LAST JOB', 'RUNS'], rows));
        return 0;
      });
    }
    if ((action === 'remove' || action === 'enable' || action === 'disable') && rest.length === 1) {
      const id = rest[0]!;
      return withHub(url, connectOptions, async (hub) => {
        if (action === 'remove') await hub.schedules.remove(id);
        else await hub.schedules.update(id, { enabled: action === 'enable' });
        io.out(`${id} ${action === 'remove' ? 'removed' : `${action}d`}\n`);
        return 0;
      });
    }
    throw new ClientUsageError('schedule: rhizosphere schedule add|list|remove|enable|disable --url URL …');
  }
  if (command === 'alert') {
    if (after.length > 0) throw new ClientUsageError(`alert: unexpected argument "${after[0]}" after --`);
    if (v['http-url'] === undefined && httpUrlFromMqttUrl(url) === null) throw new ClientUsageError('alert: --http-url is required with an mqtt:// or mqtts:// --url (alerts are REST)');
    let run;
    try {
      run = alertCommand(positionals, v);
    } catch (error) {
      if (error instanceof AlertUsageError) throw new ClientUsageError(error.message);
      throw error;
    }
    return withHub(url, connectOptions, (hub) => run(hub, io));
  }
  if (command === 'job') {
    const [action, id, ...rest] = positionals;
    if (!(action === 'pause' || action === 'resume' || action === 'cancel') || !id || rest.length > 0 || after.length > 0) {
      throw new ClientUsageError('job: rhizosphere job pause|resume|cancel --url URL JOB');
    }
    if (v['http-url'] === undefined && httpUrlFromMqttUrl(url) === null) throw new ClientUsageError('job: --http-url is required with an mqtt:// or mqtts:// --url (jobs are REST)');
    return withHub(url, connectOptions, async (hub) => {
      const job = await hub.jobs[action](id);
      io.out(`${job.id} ${job.state}${job.reason ? `: ${job.reason}` : ''}\n`);
      return 0;
    });
  }
  if (command === 'agent') {
    if (positionals[0] !== 'upgrade' || positionals.length > 1 || after.length > 0) {
      throw new ClientUsageError('agent: rhizosphere agent upgrade --url URL (--tag T... | --device D... | --online | --all)');
    }
    if (v.order !== undefined) throw new ClientUsageError('agent upgrade: --order is not a flag of an upgrade');
    const settings = jobSettings('agent upgrade');
    return withHub(url, connectOptions, (hub) => runCommand(hub, { ...settings, order: 'agent_upgrade', cmd_str: undefined }, io));
  }
  if (command === 'state' && positionals[0] === 'set' && (v.tag || v.device || v.all || v.online || v.state)) {
    // Many devices at once: every word after `set` is an assignment.
    const target: { tags?: string[]; devices?: string[]; online?: boolean; state?: string } = {};
    if (v.all) target.tags = [];
    if (v.tag) target.tags = v.tag;
    if (v.device) target.devices = v.device;
    if (v.online) target.online = true;
    if (v.state !== undefined) target.state = v.state;
    if (v['http-url'] === undefined && httpUrlFromMqttUrl(url) === null) throw new ClientUsageError('state: --http-url is required with an mqtt:// or mqtts:// --url (state is read and set over REST)');
    let patch;
    try {
      patch = parseAssignments(positionals.slice(1));
    } catch (error) {
      if (error instanceof StateUsageError) throw new ClientUsageError(error.message);
      throw error;
    }
    return withHub(url, connectOptions, async (hub) => {
      const done = await hub.setDesiredMany(target, patch, { replace: v.replace === true });
      io.out(`desired state changed on ${done.devices} device${done.devices === 1 ? '' : 's'}\n`);
      if (done.unknown) io.err(`rhizosphere: not known to the hub, left out: ${done.unknown.join(', ')}\n`);
      return 0;
    });
  }
  if (command === 'state') {
    const [action, device, ...words] = positionals;
    if ((action !== 'get' && action !== 'set') || !device) throw new ClientUsageError('state: rhizosphere state get DEVICE, or rhizosphere state set DEVICE key=value ...');
    if (after.length > 0) throw new ClientUsageError(`state: unexpected argument "${after[0]}" after --`);
    if (v['http-url'] === undefined && httpUrlFromMqttUrl(url) === null) throw new ClientUsageError('state: --http-url is required with an mqtt:// or mqtts:// --url (state is read and set over REST)');
    try {
      if (action === 'get') {
        if (words.length > 0) throw new StateUsageError(`state get: unexpected argument "${words[0]}"`);
        return await withHub(url, connectOptions, (hub) => stateGetCommand(hub, device, v.json === true, io));
      }
      const patch = parseAssignments(words);
      return await withHub(url, connectOptions, (hub) => stateSetCommand(hub, device, patch, v.replace === true, v.json === true, io));
    } catch (error) {
      if (error instanceof StateUsageError) throw new ClientUsageError(error.message);
      throw error;
    }
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
  target: { tags?: string[]; devices?: string[]; online?: boolean; state?: string };
  order: Order | 'agent_upgrade' | 'deploy' | undefined;
  cmd_str: string | undefined;
  artifact?: string;
  install?: string;
  rollback?: string;
  dir?: string;
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
  if (job.state === 'aborted') io.err(`rhizosphere: job ${job.id} aborted: ${job.reason ?? 'no reason given'}\n`);
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
