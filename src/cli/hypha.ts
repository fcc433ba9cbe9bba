/**
 * `hypha --url URL [flags]`: the device agent. Every flag can also come from an
 * environment variable (flag over environment over default), which suits systemd units.
 * A bad flag or value ends the start with one line on stderr and exit status 2.
 */
import { mkdirSync, realpathSync, statSync } from 'node:fs';
import { join, resolve as resolvePath } from 'node:path';
import { parseArgs } from 'node:util';
import { parseArgsProblem } from './args.js';
import { startAgent, urlProblem, type Agent, type AgentOptions } from '../hypha/agent.js';
import { resolveDeviceId, type ChosenIdSource } from '../hypha/identity.js';
import { createLogger, isLogLevel, LOG_LEVELS, type Logger, type LogLevel } from '../hypha/log.js';
import { DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_QUEUE, DEFAULT_OUTPUT_CAP, Runner } from '../hypha/runner.js';
import { Gate } from '../hypha/gate.js';
import { DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_TUNNELS } from '../hypha/tunnels/index.js';
import { MAX_DEVICE_TAGS, tagProblem } from '../protocol/tags.js';
import { DEFAULT_HEALTH_INTERVAL_S } from '../protocol/health.js';
import { DEFAULT_TOPIC_PREFIX, topicPrefixProblem } from '../protocol/topics.js';
import { loadOrCreateToken, readTokenFile } from '../hypha/token-file.js';
import { loadPemFiles } from '../pem.js';
import { AGENT_VERSION } from '../hypha/presence.js';
import { DEFAULT_COMMIT_WINDOW_MS, SelfUpgrade } from '../hypha/self-upgrade.js';
import { STANDALONE_AGENT } from '../package-root.js';

const EXIT_USAGE = 2;
const EXIT_FORCED = 1;
const FORCE_EXIT_AFTER_MS = 5000;

type FlagName =
  | 'url'
  | 'mqtt-version'
  | 'id'
  | 'token'
  | 'token-file'
  | 'enroll-key'
  | 'tag'
  | 'topic-prefix'
  | 'keepalive'
  | 'max-concurrent'
  | 'max-queue'
  | 'output-cap'
  | 'ca'
  | 'cert'
  | 'key'
  | 'file-root'
  | 'max-file-bytes'
  | 'max-tunnels'
  | 'upgrade-window'
  | 'simulate'
  | 'state-command'
  | 'health-interval'
  | 'log-level';

/** Flags that may be given more than once; their environment variable holds a comma-separated list. */
const REPEATABLE: ReadonlySet<FlagName> = new Set(['tag', 'url']);

interface FlagSpec {
  env: string;
  value: string;
  help: string;
  default?: string;
}

const FLAGS: Record<FlagName, FlagSpec> = {
  url: {
    env: 'HYPHA_URL',
    value: 'URL',
    help: 'the hub or broker: mqtt://HOST:1883, mqtts://HOST:8883, ws://HOST:8080/mqtt or wss://HOST/mqtt (required; repeat it, or a comma-separated env var, for brokers of one cluster, tried in turn)',
  },
  'mqtt-version': { env: 'HYPHA_MQTT_VERSION', value: 'V', help: 'auto (MQTT 5, else 3.1.1 where the broker refuses 5), 5 or 3.1.1', default: 'auto' },
  id: { env: 'HYPHA_ID', value: 'ID', help: 'device id, 1-128 of A-Z a-z 0-9 . _ : -', default: 'Raspberry Pi serial, else /etc/machine-id, else hostname' },
  token: { env: 'HYPHA_TOKEN', value: 'TOKEN', help: 'device token (sent as MQTT password, the id as username); prefer the env var, flags show in ps' },
  'token-file': { env: 'HYPHA_TOKEN_FILE', value: 'FILE', help: 'read the token from FILE; with --enroll-key, made and kept there on first start' },
  'enroll-key': { env: 'HYPHA_ENROLL_KEY', value: 'KEY', help: "the hub's enrolment key: ask to join; an admin accepts the device (needs --token-file)" },
  tag: { env: 'HYPHA_TAGS', value: 'TAG', help: 'a tag the device declares for selectors (repeat the flag; the env var takes a comma-separated list)', default: 'none' },
  'topic-prefix': { env: 'HYPHA_TOPIC_PREFIX', value: 'P', help: 'topic prefix shared with the hub', default: DEFAULT_TOPIC_PREFIX },
  keepalive: { env: 'HYPHA_KEEPALIVE', value: 'SECONDS', help: 'MQTT keepalive, 0 to 65535', default: '30' },
  'max-concurrent': { env: 'HYPHA_MAX_CONCURRENT', value: 'N', help: 'commands running at once', default: String(DEFAULT_MAX_CONCURRENT) },
  'max-queue': { env: 'HYPHA_MAX_QUEUE', value: 'N', help: 'commands waiting at most; past that the hub hears BUSY', default: String(DEFAULT_MAX_QUEUE) },
  'output-cap': { env: 'HYPHA_OUTPUT_CAP', value: 'BYTES', help: 'stdout and stderr kept per command, each', default: String(DEFAULT_OUTPUT_CAP) },
  ca: { env: 'HYPHA_CA', value: 'FILE', help: 'PEM file of the CA that signed the hub certificate (mqtts://, wss://)', default: 'system CAs' },
  cert: { env: 'HYPHA_CERT', value: 'FILE', help: 'PEM client certificate for mutual TLS; its CN must be the device id (with --key)' },
  key: { env: 'HYPHA_KEY', value: 'FILE', help: 'PEM private key of --cert (not encrypted)' },
  'file-root': { env: 'HYPHA_FILE_ROOT', value: 'DIR', help: 'file tunnels may only read and write inside DIR (symbolic links followed)', default: 'any path this user may use' },
  'max-file-bytes': { env: 'HYPHA_MAX_FILE_BYTES', value: 'BYTES', help: 'largest file a file tunnel moves; past that PAYLOAD_TOO_LARGE', default: String(DEFAULT_MAX_FILE_BYTES) },
  'max-tunnels': { env: 'HYPHA_MAX_TUNNELS', value: 'N', help: 'tunnels open at once; past that BUSY', default: String(DEFAULT_MAX_TUNNELS) },
  simulate: {
    env: 'HYPHA_SIMULATE',
    value: 'N',
    help: 'run N agents in this one process, with ids ID-000, ID-001, … (--id is their prefix): a fleet to try a hub with; anonymous, or --enroll-key with --token-file DIR',
  },
  'upgrade-window': {
    env: 'HYPHA_UPGRADE_WINDOW',
    value: 'SECONDS',
    help: 'after an agent upgrade, how long the new agent has to connect before the previous one is restored',
    default: String(DEFAULT_COMMIT_WINDOW_MS / 1000),
  },
  'state-command': {
    env: 'HYPHA_STATE_COMMAND',
    value: 'CMD',
    help: 'applies desired state: run with bash for each delta (JSON on stdin and in HYPHA_STATE_DELTA); prints a JSON object of the values applied, which is reported',
    default: 'none: desired state is ignored',
  },
  'health-interval': {
    env: 'HYPHA_HEALTH_INTERVAL',
    value: 'SECONDS',
    help: 'seconds between health reports (load, memory, disk, temperature, uptime, version) on telemetry/health; 0 = none',
    default: String(DEFAULT_HEALTH_INTERVAL_S),
  },
  'log-level': { env: 'HYPHA_LOG_LEVEL', value: 'LEVEL', help: `${LOG_LEVELS.join(', ')}`, default: 'info' },
};

const FLAG_NAMES = Object.keys(FLAGS) as FlagName[];

class UsageError extends Error {}

/** The switch --no-tunnels as an environment variable: 1, true or yes turn tunnels off. */
const NO_TUNNELS_ENV = 'HYPHA_NO_TUNNELS';

function isTrue(value: string | undefined): boolean {
  return value !== undefined && /^(1|true|yes)$/i.test(value.trim());
}

function usage(): string {
  const rows = FLAG_NAMES.map((name) => {
    const spec = FLAGS[name];
    const more = `env ${spec.env}${spec.default !== undefined ? `; default ${spec.default}` : ''}`;
    return `  ${`--${name} ${spec.value}`.padEnd(28)} ${spec.help}\n  ${''.padEnd(28)} ${more}`;
  });
  return [
    'hypha — the rhizosphere device agent: connects out to the hub over MQTT, runs the',
    'commands it receives with bash, and serves the tunnels the hub relays (terminals,',
    'file transfers, TCP forwards).',
    '',
    'Usage: hypha --url URL [--id ID] [--token TOKEN] [flags]',
    '',
    'Flags (each also from its environment variable; a flag wins over the environment):',
    ...rows,
    `  ${'--no-tunnels'.padEnd(28)} offer no tunnels (shells, file transfers, TCP forwards) to the hub`,
    `  ${''.padEnd(28)} env ${NO_TUNNELS_ENV}=1`,
    `  ${'--help'.padEnd(28)} show this help`,
    `  ${'--version'.padEnd(28)} print the agent's version (${AGENT_VERSION}) and exit`,
    '',
    'Logs go to stdout, one line per event. SIGTERM or SIGINT stops hypha: running commands',
    'are killed, their answers sent, open tunnels ended (shells killed, unfinished uploads',
    'deleted), and the connection closed cleanly.',
    '',
    `Exit status: 0 after a clean stop, 2 for a bad flag or value, ${EXIT_FORCED} when a stop took over ${FORCE_EXIT_AFTER_MS / 1000} s.`,
  ].join('\n');
}

interface Setting {
  value: string;
  /** How to name the setting in an error message: the flag or the env var it came from. */
  origin: string;
  source: ChosenIdSource;
}

/** Each flag's value, else its environment variable's (an empty variable counts as unset). */
function readSettings(argv: string[], env: NodeJS.ProcessEnv): { settings: Partial<Record<FlagName, Setting>>; help: boolean; version: boolean; tunnels: boolean } {
  const options = Object.fromEntries([
    ...FLAG_NAMES.map((name) => [name, { type: 'string', multiple: REPEATABLE.has(name) }]),
    ['help', { type: 'boolean' }],
    ['version', { type: 'boolean' }],
    ['no-tunnels', { type: 'boolean' }],
  ]) as Record<string, { type: 'string' | 'boolean'; multiple?: boolean }>;
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, strict: true, allowPositionals: false });
  } catch (err) {
    throw new UsageError(`${parseArgsProblem(err)} (see hypha --help)`);
  }
  const settings: Partial<Record<FlagName, Setting>> = {};
  for (const name of FLAG_NAMES) {
    const given = parsed.values[name];
    const flagValue = Array.isArray(given) ? given.join(',') : given;
    const envValue = env[FLAGS[name].env];
    if (typeof flagValue === 'string') settings[name] = { value: flagValue, origin: `--${name}`, source: 'flag' };
    else if (envValue) settings[name] = { value: envValue, origin: FLAGS[name].env, source: 'env' };
  }
  const noTunnels = parsed.values['no-tunnels'] === true || isTrue(env[NO_TUNNELS_ENV]);
  return { settings, help: parsed.values.help === true, version: parsed.values.version === true, tunnels: !noTunnels };
}

function wholeNumber(setting: Setting | undefined, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (setting === undefined) return undefined;
  const number = /^\d+$/.test(setting.value) ? Number(setting.value) : Number.NaN;
  if (!Number.isSafeInteger(number) || number < min || number > max) {
    const range = max === Number.MAX_SAFE_INTEGER ? `of at least ${min}` : `from ${min} to ${max}`;
    throw new UsageError(`${setting.origin}: ${JSON.stringify(setting.value)} must be a whole number ${range}`);
  }
  return number;
}

function checked(setting: Setting | undefined, problemOf: (value: string) => string | null): string | undefined {
  if (setting === undefined) return undefined;
  const problem = problemOf(setting.value);
  if (problem) throw new UsageError(`${setting.origin}: ${problem}`);
  return setting.value;
}

/**
 * The TLS files, read and parsed now so that a missing file, one that is not PEM, or a key
 * that does not belong to its certificate ends the start with one line naming the flag,
 * rather than as a failed handshake at every retry.
 */
function tlsFiles(settings: Partial<Record<FlagName, Setting>>): Pick<AgentOptions, 'caFile' | 'certFile' | 'keyFile'> {
  const { ca, cert, key } = settings;
  if (cert && !key) throw new UsageError(`${cert.origin}: needs --key as well (the private key of the certificate)`);
  if (key && !cert) throw new UsageError(`${key.origin}: needs --cert as well (the certificate of the key)`);
  const loaded = loadPemFiles(
    { ca: ca?.value, cert: cert?.value, key: key?.value },
    { ca: ca?.origin ?? '--ca', cert: cert?.origin ?? '--cert', key: key?.origin ?? '--key' },
  );
  if ('problem' in loaded) throw new UsageError(loaded.problem);
  return { caFile: ca?.value, certFile: cert?.value, keyFile: key?.value };
}

function logLevelOf(setting: Setting | undefined): LogLevel {
  const level = checked(setting, (value) => (isLogLevel(value) ? null : `${JSON.stringify(value)} must be one of ${LOG_LEVELS.join(', ')}`));
  return (level as LogLevel | undefined) ?? 'info';
}

/** Turns the settings into agent options, or throws a UsageError naming the first bad one. */
function agentOptions(settings: Partial<Record<FlagName, Setting>>, tunnels: boolean, log: Logger): AgentOptions {
  const urls = urlList(settings.url);
  if (urls.length === 0) throw new UsageError(`--url is required (or ${FLAGS.url.env}); see hypha --help`);
  const explicitId = settings.id;
  let identity;
  try {
    identity = resolveDeviceId(explicitId?.value, explicitId?.source);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const options: AgentOptions = {
    urls,
    mqttVersion: mqttVersionOf(settings['mqtt-version']),
    id: identity.id,
    token: credential(settings, log),
    topicPrefix: checked(settings['topic-prefix'], (value) => {
      const problem = topicPrefixProblem(value);
      return problem ? `${JSON.stringify(value)} ${problem}` : null;
    }),
    keepalive: wholeNumber(settings.keepalive, 0, 65535),
    maxConcurrent: wholeNumber(settings['max-concurrent'], 1),
    maxQueue: wholeNumber(settings['max-queue'], 0),
    outputCap: wholeNumber(settings['output-cap'], 0),
    tags: tagList(settings.tag),
    stateCommand: checked(settings['state-command'], (value) => (value.trim() === '' ? 'must not be empty' : null)),
    tunnels,
    fileRoot: fileRoot(settings['file-root']),
    maxFileBytes: wholeNumber(settings['max-file-bytes'], 0),
    maxTunnels: wholeNumber(settings['max-tunnels'], 1),
    healthIntervalS: wholeNumber(settings['health-interval'], 0, 86_400) ?? DEFAULT_HEALTH_INTERVAL_S,
    ...tlsFiles(settings),
    logger: log,
  };
  log.info('device id', { id: identity.id, from: identity.source === 'env' ? FLAGS.id.env : identity.source });
  return options;
}

function urlList(setting: Setting | undefined): string[] {
  if (setting === undefined) return [];
  const urls = setting.value.split(',').map((url) => url.trim()).filter(Boolean);
  for (const url of urls) {
    const problem = urlProblem(url);
    if (problem) throw new UsageError(`${setting.origin}: ${problem}`);
  }
  return urls;
}

function mqttVersionOf(setting: Setting | undefined): AgentOptions['mqttVersion'] {
  if (setting === undefined) return 'auto';
  const version = ({ auto: 'auto', '5': 5, '5.0': 5, '3.1.1': 4, '4': 4 } as const)[setting.value.trim() as 'auto'];
  if (version === undefined) throw new UsageError(`${setting.origin}: ${JSON.stringify(setting.value)} must be auto, 5 or 3.1.1`);
  return version;
}

/** --file-root must name an existing directory now, not fail every file tunnel later. */
function fileRoot(setting: Setting | undefined): string | undefined {
  if (setting === undefined) return undefined;
  let info;
  try {
    info = statSync(setting.value);
  } catch (err) {
    throw new UsageError(`${setting.origin}: ${(err as Error).message}`);
  }
  if (!info.isDirectory()) throw new UsageError(`${setting.origin}: ${setting.value} is not a directory`);
  return resolvePath(setting.value);
}

/** The declared tags: none unless given, so a restart without --tag withdraws earlier ones. */
function tagList(setting: Setting | undefined): string[] {
  if (setting === undefined) return [];
  const tags = [...new Set(setting.value.split(',').map((tag) => tag.trim()).filter(Boolean))];
  for (const tag of tags) {
    const problem = tagProblem(tag);
    if (problem) throw new UsageError(`${setting.origin}: ${problem}`);
  }
  if (tags.length > MAX_DEVICE_TAGS) throw new UsageError(`${setting.origin}: at most ${MAX_DEVICE_TAGS} tags (${tags.length} given)`);
  return tags;
}

/**
 * The MQTT password: the token (from --token or --token-file), or with enrolment
 * `KEY.TOKEN`, the token made and kept in the token file on first start.
 */
function credential(settings: Partial<Record<FlagName, Setting>>, log: Logger): string | undefined {
  const file = settings['token-file'];
  const key = settings['enroll-key'];
  if (key && !file && !settings.token) {
    throw new UsageError(`${key.origin}: needs --token-file FILE, where the device keeps the token it makes for itself`);
  }
  let token = settings.token?.value;
  try {
    if (token === undefined && file && key) {
      const kept = loadOrCreateToken(file.value);
      if (kept.created) log.info('made a device token for enrolment', { file: file.value });
      token = kept.token;
    } else if (token === undefined && file) {
      token = readTokenFile(file.value) ?? undefined;
      if (token === undefined) throw new Error(`the token file ${file.value} is missing or empty`);
    }
  } catch (err) {
    throw new UsageError(`${file!.origin}: ${(err as Error).message}`);
  }
  return key && token !== undefined ? `${key.value}.${token}` : token;
}

const SIMULATE_MAX = 5000;
/** Shells the simulated fleet runs at once (commands, and state commands). */
const SIMULATE_SHELLS = 4;

/**
 * `--simulate N`: N real agents (each its own MQTT connection, running real bash) in this one
 * process, for trying a hub with a fleet on one machine. They share every other setting; a token
 * belongs to one device, so they join an anonymous hub, or enrol each with a token file of its
 * own in the --token-file directory.
 */
async function simulate(count: number, settings: Partial<Record<FlagName, Setting>>, tunnels: boolean, log: Logger): Promise<void> {
  const prefix = settings.id;
  if (!prefix) throw new UsageError('--simulate needs --id PREFIX: the devices are PREFIX-000, PREFIX-001, …');
  if (settings.token) throw new UsageError(`${settings.token.origin}: a token belongs to one device; simulated devices join an anonymous hub, or use --enroll-key with --token-file DIR`);
  const tokenDir = settings['token-file'];
  if (tokenDir && !settings['enroll-key']) throw new UsageError(`${tokenDir.origin}: with --simulate it is the directory of the devices' own tokens, made with --enroll-key`);
  if (tokenDir) mkdirSync(tokenDir.value, { recursive: true, mode: 0o700 });
  const width = Math.max(3, String(count - 1).length);
  const agents: Agent[] = [];
  // One machine's CPU for the whole fleet: commands and state commands take turns, a few at a
  // time, or hundreds of shells started at once starve this process's keepalives.
  const shared = agentOptions({ ...settings, id: { ...prefix, value: `${prefix.value}-0` } }, tunnels, log);
  const runner = new Runner({ maxConcurrent: SIMULATE_SHELLS, maxQueue: count * (shared.maxQueue ?? DEFAULT_MAX_QUEUE), outputCap: shared.outputCap });
  const stateGate = new Gate(SIMULATE_SHELLS);
  for (let i = 0; i < count; i++) {
    const id = `${prefix.value}-${String(i).padStart(width, '0')}`;
    const own: Partial<Record<FlagName, Setting>> = { ...settings, id: { ...prefix, value: id }, ...(tokenDir ? { 'token-file': { ...tokenDir, value: join(tokenDir.value, id) } } : {}) };
    agents.push(await startAgent({ ...agentOptions(own, tunnels, log), runner, stateGate }));
  }
  log.info('simulating a fleet', { devices: count, first: agents[0]!.id, last: agents.at(-1)!.id });
  const stop = () => {
    setTimeout(() => process.exit(EXIT_FORCED), FORCE_EXIT_AFTER_MS).unref();
    void Promise.all(agents.map((agent) => agent.stop())).then(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

function stopOnSignals(agent: Agent, log: Logger): void {
  const stop = (signal: NodeJS.Signals) => {
    log.info('signal received, stopping', { signal });
    setTimeout(() => {
      log.error('stop took too long, exiting anyway', { after_ms: FORCE_EXIT_AFTER_MS });
      process.exit(EXIT_FORCED);
    }, FORCE_EXIT_AFTER_MS).unref();
    void agent.stop().then(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

async function main(): Promise<void> {
  const { settings, help, version, tunnels } = readSettings(process.argv.slice(2), process.env);
  if (help) {
    process.stdout.write(`${usage()}\n`);
    return;
  }
  if (version) {
    process.stdout.write(`${AGENT_VERSION}\n`);
    return;
  }
  const log = createLogger({ level: logLevelOf(settings['log-level']) });
  let agent: Agent | undefined;
  const selfUpgrade = new SelfUpgrade({
    agentFile: STANDALONE_AGENT && process.argv[1] ? realpathSync(process.argv[1]) : undefined,
    version: AGENT_VERSION,
    supervised: Boolean(process.env.INVOCATION_ID) || isTrue(process.env.HYPHA_SUPERVISED),
    commitWindowMs: (wholeNumber(settings['upgrade-window'], 1, 86_400) ?? DEFAULT_COMMIT_WINDOW_MS / 1000) * 1000,
    log,
    exitForRestart: () => {
      if (!agent) return process.exit(0);
      void agent.stop().finally(() => process.exit(0));
    },
  });
  // First of all: a new agent that never committed gives way to the previous one (its supervisor starts that).
  if (selfUpgrade.startCheck()) process.exit(0);
  const count = wholeNumber(settings.simulate, 1, SIMULATE_MAX);
  if (count !== undefined) return simulate(count, settings, tunnels, log);
  const options = { ...agentOptions(settings, tunnels, log), selfUpgrade };
  try {
    agent = await startAgent(options);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  stopOnSignals(agent, log);
}

main().catch((err: unknown) => {
  if (err instanceof UsageError) {
    process.stderr.write(`hypha: ${err.message}\n`);
    process.exit(EXIT_USAGE);
  }
  process.stderr.write(`hypha: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
