/**
 * Hub configuration: one schema, four layers. Flags win over environment
 * (`RHIZOSPHERE_*`), environment over the `--config` JSON file, the file over defaults.
 * Every problem is reported as one line that names the flag, variable or key.
 */
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { z } from 'zod';
import { brokerListProblem, brokerUrls } from './external/broker-urls.js';
import { idProblem } from './protocol/ids.js';
import { DEFAULT_MAX_STATE_BYTES } from './protocol/state.js';
import { DEFAULT_TOPIC_PREFIX, topicPrefixProblem } from './protocol/topics.js';

const port = z
  .number({ error: () => 'must be a port number' })
  .int({ error: 'must be a whole number' })
  .min(0, { error: 'must be 0 to 65535' })
  .max(65535, { error: 'must be 0 to 65535' });
/** A file path; '' means not set. */
const filePath = z.string({ error: () => 'must be a file path' });
/** Publishes a second, 0 for no limit. */
const publishRate = z.number({ error: () => 'must be a number' }).int({ error: 'must be a whole number' }).min(0, { error: 'must be 0 (no limit) or more' });
const positiveInt = (min: number) =>
  z.number({ error: () => 'must be a number' }).int({ error: 'must be a whole number' }).min(min, { error: `must be at least ${min}` });

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;

/** What each setting means: the source of `--help` and of the README's table. */
export const SETTINGS = {
  host: { flag: 'host', type: 'string', help: 'address to listen on; 0.0.0.0 opens the hub to the network', default: '127.0.0.1' },
  mqttPort: { flag: 'mqtt-port', type: 'number', help: 'MQTT over TCP port (0 = any free port)', default: 1883 },
  httpPort: { flag: 'http-port', type: 'number', help: 'HTTP port: REST API, /healthz, MQTT over WebSocket at /mqtt', default: 8080 },
  dataDir: { flag: 'data-dir', type: 'string', help: 'where the hub keeps its state (created if missing)', default: './data' },
  topicPrefix: { flag: 'topic-prefix', type: 'string', help: 'first topic level(s) of every topic', default: DEFAULT_TOPIC_PREFIX },
  allowAnonymous: { flag: 'allow-anonymous', type: 'boolean', help: 'let clients in without credentials (for development and tests)', default: false },
  logLevel: { flag: 'log-level', type: 'string', help: `one of ${LOG_LEVELS.join(', ')}`, default: 'info' },
  maxPayloadBytes: { flag: 'max-payload-bytes', type: 'number', help: 'largest Request a client may send', default: 256 * 1024 },
  maxResponseBytes: { flag: 'max-response-bytes', type: 'number', help: 'largest Response a device may send (output caps are 1 MiB per stream)', default: 8 * 1024 * 1024 },
  maxInflightPerDevice: { flag: 'max-inflight-per-device', type: 'number', help: 'commands in flight to one device before BUSY', default: 32 },
  maxInflightTotal: { flag: 'max-inflight-total', type: 'number', help: 'commands in flight across the hub before BUSY', default: 10000 },
  tlsCert: { flag: 'tls-cert', type: 'string', placeholder: 'FILE', help: 'PEM certificate (chain) of the hub; with --tls-key: MQTT over TLS on --mqtts-port, HTTPS/WSS on --http-port', default: '' },
  tlsKey: { flag: 'tls-key', type: 'string', placeholder: 'FILE', help: 'PEM private key of --tls-cert (not encrypted)', default: '' },
  tlsCa: { flag: 'tls-ca', type: 'string', placeholder: 'FILE', help: 'PEM file of the CA that signs device certificates: a device with one is known by its CN (mutual TLS)', default: '' },
  mqttsPort: { flag: 'mqtts-port', type: 'number', help: 'MQTT over TLS port, used with --tls-cert (0 = any free port)', default: 8883 },
  requireClientCert: { flag: 'require-client-cert', type: 'boolean', help: 'on --mqtts-port, accept only devices with a certificate signed by --tls-ca', default: false },
  enrollKey: { flag: 'enroll-key', type: 'string', help: 'a shared key with which unknown devices may ask to join; they wait as pending until an admin accepts them', default: '' },
  maxClientBufferBytes: {
    flag: 'max-client-buffer-bytes',
    type: 'number',
    help: 'unsent bytes the hub keeps for one MQTT connection; a connection that reads slower is closed, so it never holds up the others',
    default: 16 * 1024 * 1024,
  },
  maxPublishRate: { flag: 'max-publish-rate', type: 'number', help: 'publishes a second one device connection may keep up (bursts of twice that); past it the device is slowed (its socket is not read); 0 = no limit', default: 1000 },
  maxClientPublishRate: { flag: 'max-client-publish-rate', type: 'number', help: 'the same for every other MQTT connection (API tokens, consoles, anonymous clients); 0 = no limit', default: 10000 },
  maxFileBytes: { flag: 'max-file-bytes', type: 'number', help: 'largest file a tunnel may carry to or from a device (file_put, file_get)', default: 1024 * 1024 * 1024 },
  maxTunnelsPerDevice: { flag: 'max-tunnels-per-device', type: 'number', help: 'tunnels open to one device before BUSY', default: 16 },
  tunnelIdleMs: { flag: 'tunnel-idle-ms', type: 'number', help: 'a shell tunnel with no data either way for this long is closed with TIMEOUT', default: 30 * 60 * 1000 },
  maxStateBytes: { flag: 'max-state-bytes', type: 'number', help: 'largest desired or reported state document of one device, in bytes of JSON (and largest state report)', default: DEFAULT_MAX_STATE_BYTES },
  readyMaxLagMs: { flag: 'ready-max-lag-ms', type: 'number', help: 'event-loop delay (p99 over the last seconds, in ms) above which GET /readyz answers 503', default: 1000 },
  healthMaxRows: {
    flag: 'health-max-rows',
    type: 'number',
    help: 'rows of health history kept, all devices together (one per device and minute, about 62 bytes each on disk; a week of one device is 10080); past it the oldest minutes go; 0 = no history',
    default: 10_000_000,
  },
  allowedOrigins: { flag: 'allowed-origins', type: 'string', help: 'other web origins whose pages may open WebSockets to the hub, comma-separated (the hub\'s own always may)', default: '' },
  cluster: { flag: 'cluster', type: 'string', placeholder: 'URL', help: 'redis://HOST:PORT[/DB]: run as one node of a cluster of hubs sharing this Redis (empty = standalone)', default: '' },
  nodeId: { flag: 'node-id', type: 'string', placeholder: 'ID', help: 'this node\'s name in a cluster (default: HOSTNAME-PID)', default: '' },
  broker: {
    flag: 'broker',
    type: 'string',
    placeholder: 'URL',
    help: 'mqtt[s]://HOST:PORT or ws[s]://HOST:PORT/PATH: devices and tools connect to this broker (Mosquitto, EMQX, NATS, …), which the hub joins as a client; no MQTT port of the hub\'s own; several URLs, comma-separated, are nodes of one broker cluster, tried in turn (empty = the embedded broker)',
    default: '',
  },
  brokerUsername: { flag: 'broker-username', type: 'string', placeholder: 'NAME', help: 'the user name the hub logs in to --broker with', default: '' },
  brokerPasswordFile: { flag: 'broker-password-file', type: 'string', placeholder: 'FILE', help: 'a file holding the password for --broker-username (its first line)', default: '' },
  brokerCa: { flag: 'broker-ca', type: 'string', placeholder: 'FILE', help: 'PEM file of the CA that signed the broker\'s certificate (mqtts://, wss://; default: the system CAs)', default: '' },
  brokerCert: { flag: 'broker-cert', type: 'string', placeholder: 'FILE', help: 'PEM client certificate the hub presents to --broker (with --broker-key)', default: '' },
  brokerKey: { flag: 'broker-key', type: 'string', placeholder: 'FILE', help: 'PEM private key of --broker-cert (not encrypted)', default: '' },
  brokerClientId: { flag: 'broker-client-id', type: 'string', placeholder: 'ID', help: 'the hub\'s MQTT client id on --broker; each hub on one broker needs its own (default: rhizosphere-hub-NODE)', default: '' },
  brokerShareGroup: {
    flag: 'broker-share-group',
    type: 'string',
    placeholder: 'NAME',
    help: 'shared-subscription group ($share/NAME/…) in which the hubs on one broker split the Requests; empty: every hub takes every Request (brokers without shared subscriptions)',
    default: 'rhizosphere',
  },
  brokerDynsec: {
    flag: 'broker-dynsec',
    type: 'boolean',
    help: 'keep the dynamic-security plugin of a Mosquitto 2 --broker in step with the registry: the broker admits only registered devices and API tokens, each to its own topics (docs/broker-dynsec.md)',
    default: false,
  },
  brokerHookSecretFile: {
    flag: 'broker-hook-secret-file',
    type: 'string',
    placeholder: 'FILE',
    help: 'a file whose first line (16+ characters) a --broker with an HTTP auth hook (EMQX 5, mosquitto-go-auth) presents: the hub then answers its connect and ACL checks at /broker/ (docs/broker-hooks.md)',
    default: '',
  },
  agentFile: {
    flag: 'agent-file',
    type: 'string',
    placeholder: 'FILE',
    help: 'the standalone agent the hub serves at /agent/hypha.js and sends with `agent upgrade` (default: the one npm run build makes, dist/agent/hypha.js)',
    default: '',
  },
  installUrl: {
    flag: 'install-url',
    type: 'string',
    placeholder: 'URL',
    help: 'the broker URL(s), comma-separated, that /install.sh gives devices (default: this hub\'s MQTT port, or --broker, on the host name the script was fetched from)',
    default: '',
  },
} as const;

export type SettingKey = keyof typeof SETTINGS;

/**
 * The client commands' variables (rhizosphere exec, run, deploy, …: which hub, which token) and
 * RHIZOSPHERE_CONFIG: not hub settings, but no typo either, so a shell that exports them for
 * the client commands can still start a hub or run an admin command.
 */
const CLIENT_ENV: ReadonlySet<string> = new Set(['RHIZOSPHERE_URL', 'RHIZOSPHERE_TOKEN_NAME', 'RHIZOSPHERE_TOKEN', 'RHIZOSPHERE_CONFIG']);

/**
 * One server-side handler (docs/handlers.md): a config-file-only key, no flag or variable.
 * `module` starting with `.` or `/` is a file, relative to the config file (in-process: to
 * the working directory); anything else is a package name.
 */
export const HandlerSpecSchema = z.strictObject(
  {
    name: z.string({ error: () => 'must be a string' }).superRefine((value, ctx) => {
      const problem = idProblem(value);
      if (problem) ctx.addIssue({ code: 'custom', message: problem });
    }),
    module: z.string({ error: () => 'must be a string (a file path or a package name)' }).min(1, { error: 'must not be empty' }),
    options: z.unknown().optional(),
  },
  { error: () => 'must be an object like {"name": "inventory", "module": "./handlers/inventory.js", "options": {}}' },
);
export type HandlerSpec = z.infer<typeof HandlerSpecSchema>;

const handlerList = z.array(HandlerSpecSchema, { error: () => 'must be an array of {"name", "module", "options"}' }).superRefine((specs, ctx) => {
  const seen = new Set<string>();
  specs.forEach((spec, i) => {
    if (seen.has(spec.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `names handler "${spec.name}" twice` });
    seen.add(spec.name);
  });
});

export const ConfigSchema = z.strictObject({
  host: z.string({ error: () => 'must be a string' }).min(1, { error: 'must not be empty' }),
  mqttPort: port,
  httpPort: port,
  dataDir: z.string({ error: () => 'must be a string' }).min(1, { error: 'must not be empty' }),
  topicPrefix: z.string({ error: () => 'must be a string' }).superRefine((value, ctx) => {
    const problem = topicPrefixProblem(value);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  }),
  allowAnonymous: z.boolean({ error: () => 'must be true or false' }),
  logLevel: z.enum(LOG_LEVELS, { error: () => `must be one of ${LOG_LEVELS.join(', ')}` }),
  maxPayloadBytes: positiveInt(1024),
  maxResponseBytes: positiveInt(1024),
  maxInflightPerDevice: positiveInt(1),
  maxInflightTotal: positiveInt(1),
  tlsCert: filePath,
  tlsKey: filePath,
  tlsCa: filePath,
  mqttsPort: port,
  requireClientCert: z.boolean({ error: () => 'must be true or false' }),
  enrollKey: z.string({ error: () => 'must be a string' }).refine((key) => key === '' || (key.length >= 16 && !key.includes('.')), {
    error: 'must be at least 16 characters, without "."',
  }),
  maxClientBufferBytes: positiveInt(64 * 1024),
  maxPublishRate: publishRate,
  maxClientPublishRate: publishRate,
  maxFileBytes: positiveInt(1),
  maxTunnelsPerDevice: positiveInt(1),
  tunnelIdleMs: positiveInt(100),
  maxStateBytes: positiveInt(256),
  readyMaxLagMs: positiveInt(10),
  healthMaxRows: z.number({ error: () => 'must be a number' }).int({ error: 'must be a whole number' }).min(0, { error: 'must be 0 (no history) or more' }),
  allowedOrigins: z.string({ error: () => 'must be a comma-separated list of origins' }).superRefine((value, ctx) => {
    for (const origin of splitList(value)) {
      if (!/^https?:\/\/[^/\s]+$/.test(origin)) ctx.addIssue({ code: 'custom', message: `has ${JSON.stringify(origin)}, which is not an origin like https://ops.example.com` });
    }
  }),
  cluster: z.string({ error: () => 'must be a redis:// URL' }).superRefine((value, ctx) => {
    const problem = value === '' ? null : redisUrlProblem(value);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  }),
  nodeId: z.string({ error: () => 'must be a string' }).superRefine((value, ctx) => {
    const problem = value === '' ? null : idProblem(value);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  }),
  broker: z.string({ error: () => 'must be a URL' }).superRefine((value, ctx) => {
    const problem = value === '' ? null : brokerListProblem(value);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  }),
  brokerUsername: z.string({ error: () => 'must be a string' }),
  brokerPasswordFile: filePath,
  brokerCa: filePath,
  brokerCert: filePath,
  brokerKey: filePath,
  brokerClientId: z.string({ error: () => 'must be a string' }).superRefine((value, ctx) => {
    const problem = value === '' ? null : idProblem(value);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  }),
  brokerShareGroup: z.string({ error: () => 'must be a string' }).refine((value) => value === '' || /^[A-Za-z0-9_.:-]{1,64}$/.test(value), {
    error: 'must be 1 to 64 of A-Z a-z 0-9 _ . : - (or empty)',
  }),
  brokerDynsec: z.boolean({ error: () => 'must be true or false' }),
  brokerHookSecretFile: filePath,
  agentFile: filePath,
  installUrl: z.string({ error: () => 'must be a URL' }).superRefine((value, ctx) => {
    const problem = value === '' ? null : brokerListProblem(value);
    if (problem) ctx.addIssue({ code: 'custom', message: problem });
  }),
  handlers: handlerList,
});

/** `mqtt://`, `mqtts://`, `ws://` or `wss://` with a host; null when usable. */
/** `redis://[user:password@]host:port[/db]` or `rediss://…`; null when usable. */
export function redisUrlProblem(value: string): string | null {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return 'must be a URL like redis://127.0.0.1:6379';
  }
  if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') return 'must start with redis:// or rediss://';
  if (!url.hostname) return 'must name a host, like redis://127.0.0.1:6379';
  if (!/^(\/\d{0,2})?$/.test(url.pathname)) return 'may end with /DB only (a database number, like /0)';
  return null;
}

export function splitList(value: string): string[] {
  return value.split(',').map((item) => item.trim()).filter(Boolean);
}

export type HubConfig = z.infer<typeof ConfigSchema>;

export const DEFAULTS: HubConfig = {
  ...(Object.fromEntries(Object.entries(SETTINGS).map(([key, setting]) => [key, setting.default])) as Omit<HubConfig, 'handlers'>),
  handlers: [],
};

/** Keys the config file (and startHub) may hold besides the SETTINGS: structured, so no flag or variable. */
const FILE_ONLY_KEYS = ['handlers'] as const;

/** A configuration problem: `message` is the one line the CLI prints. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export function envName(key: SettingKey): string {
  return `RHIZOSPHERE_${key.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`;
}

/** Where a value came from, for error messages. */
type Source = { kind: 'flag' | 'env' | 'file' | 'default'; file?: string };

function describe(key: string, source: Source): string {
  const setting = SETTINGS[key as SettingKey];
  switch (source.kind) {
    case 'flag':
      return setting ? `--${setting.flag}` : `--${key}`;
    case 'env':
      return setting ? envName(key as SettingKey) : key;
    case 'file':
      return `"${key}" in ${source.file}`;
    default:
      return key;
  }
}

function parseScalar(key: SettingKey, raw: string, where: string): unknown {
  const type = SETTINGS[key].type;
  if (type === 'number') {
    if (!/^-?\d+$/.test(raw.trim())) throw new ConfigError(`${where}: ${JSON.stringify(raw)} is not a whole number`);
    return Number(raw);
  }
  if (type === 'boolean') {
    if (/^(1|true|yes|on)$/i.test(raw)) return true;
    if (/^(0|false|no|off)$/i.test(raw)) return false;
    throw new ConfigError(`${where}: ${JSON.stringify(raw)} is not true or false`);
  }
  return raw;
}

function closestKey(unknown: string): string | undefined {
  const folded = unknown.replace(/[-_]/g, '').toLowerCase();
  return Object.keys(SETTINGS).find((key) => key.toLowerCase() === folded);
}

export function readConfigFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConfigError(`--config ${file}: cannot read it (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new ConfigError(`--config ${file}: not valid JSON (${(error as Error).message})`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new ConfigError(`--config ${file}: must hold a JSON object`);
  }
  return parsed as Record<string, unknown>;
}

export interface ConfigLayers {
  /** Values from flags, already typed by the flag parser. */
  flags?: Partial<Record<SettingKey, unknown>>;
  env?: NodeJS.ProcessEnv;
  /** The `--config` file's path, if any. */
  file?: string;
}

/** Resolves flags over environment over file over defaults, and validates the result. */
export function resolveConfig(layers: ConfigLayers = {}): HubConfig {
  const merged: Record<string, unknown> = { ...DEFAULTS };
  const sources: Record<string, Source> = {};

  if (layers.file) {
    const fromFile = readConfigFile(layers.file);
    for (const [key, value] of Object.entries(fromFile)) {
      if (!Object.hasOwn(SETTINGS, key) && !(FILE_ONLY_KEYS as readonly string[]).includes(key)) {
        const hint = closestKey(key);
        throw new ConfigError(`--config ${layers.file}: unknown key "${key}"${hint ? ` (did you mean "${hint}"?)` : ''}`);
      }
      merged[key] = key === 'handlers' ? relativeToFile(value, layers.file) : value;
      sources[key] = { kind: 'file', file: layers.file };
    }
  }

  const env = layers.env ?? {};
  for (const key of Object.keys(SETTINGS) as SettingKey[]) {
    const raw = env[envName(key)];
    if (raw === undefined || raw === '') continue;
    merged[key] = parseScalar(key, raw, envName(key));
    sources[key] = { kind: 'env' };
  }
  for (const name of Object.keys(env)) {
    if (name.startsWith('RHIZOSPHERE_') && !CLIENT_ENV.has(name) && !(Object.keys(SETTINGS) as SettingKey[]).some((key) => envName(key) === name)) {
      throw new ConfigError(`${name}: unknown environment variable (see rhizosphere --help)`);
    }
  }

  for (const [key, value] of Object.entries(layers.flags ?? {})) {
    if (value === undefined) continue;
    merged[key] = value;
    sources[key] = { kind: 'flag' };
  }

  const parsed = ConfigSchema.safeParse(merged);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const key = String(issue.path[0] ?? '');
    if (key === 'handlers') {
      const source = sources.handlers;
      const at = issue.path.slice(1).map((part) => (typeof part === 'number' ? `[${part}]` : `.${String(part)}`)).join('');
      const value = issue.path.reduce<unknown>((node, part) => (node !== null && typeof node === 'object' ? (node as Record<PropertyKey, unknown>)[part as PropertyKey] : undefined), merged);
      const where = source?.kind === 'file' ? `"handlers${at}" in ${source.file}` : `handlers${at}`;
      if (issue.code === 'unrecognized_keys') throw new ConfigError(`${where}: unknown key "${issue.keys.join('", "')}" (a handler has name, module and options)`);
      throw new ConfigError(`${where}: ${value === undefined ? 'missing;' : `${JSON.stringify(value)}`} ${issue.message}`);
    }
    if (issue.code === 'unrecognized_keys') {
      throw new ConfigError(`unknown setting "${issue.keys.join('", "')}"`);
    }
    const where = describe(key, sources[key] ?? { kind: 'default' });
    throw new ConfigError(`${where}: ${JSON.stringify(merged[key])} ${issue.message}`);
  }
  const tls = tlsSettingsProblem(parsed.data) ?? brokerSettingsProblem(parsed.data);
  if (tls) throw new ConfigError(`${describe(tls.key, sources[tls.key] ?? { kind: 'flag' })}: ${tls.problem}`);
  return parsed.data;
}

/** A handler's `module` naming a file (`./x.js`, `../x.js`) is relative to the config file; absolute paths and package names stay. */
function relativeToFile(value: unknown, file: string): unknown {
  if (!Array.isArray(value)) return value;
  return value.map((spec: unknown) => {
    if (spec === null || typeof spec !== 'object') return spec;
    const { module } = spec as { module?: unknown };
    if (typeof module !== 'string' || !module.startsWith('.') || isAbsolute(module)) return spec;
    return { ...spec, module: resolve(dirname(resolve(file)), module) };
  });
}

/**
 * TLS settings only make sense together. (Whether the files can be read and hold PEM is
 * checked when the hub starts: see src/tls.ts.)
 */
function tlsSettingsProblem(config: HubConfig): { key: SettingKey; problem: string } | null {
  if (config.tlsCert && !config.tlsKey) return { key: 'tlsCert', problem: 'needs --tls-key as well (the private key of the certificate)' };
  if (config.tlsKey && !config.tlsCert) return { key: 'tlsKey', problem: 'needs --tls-cert as well (the certificate of the key)' };
  if (config.requireClientCert && !config.tlsCa) return { key: 'requireClientCert', problem: 'needs --tls-ca, the CA whose certificates devices must present' };
  if (config.tlsCa && !config.tlsCert) return { key: 'tlsCa', problem: 'needs --tls-cert and --tls-key: client certificates are asked for only over TLS' };
  return null;
}

/** The --broker-* settings mean nothing without --broker, and some go in pairs. */
function brokerSettingsProblem(config: HubConfig): { key: SettingKey; problem: string } | null {
  const dependents = ['brokerUsername', 'brokerPasswordFile', 'brokerCa', 'brokerCert', 'brokerKey', 'brokerClientId'] as const;
  if (config.brokerDynsec && (!config.broker || !config.brokerUsername)) {
    return { key: 'brokerDynsec', problem: 'needs --broker and --broker-username (a user that may administer the broker\'s dynamic-security plugin)' };
  }
  if (config.brokerDynsec && brokerUrls(config.broker).length > 1) {
    return { key: 'brokerDynsec', problem: 'works with one Mosquitto: give --broker a single URL' };
  }
  if (config.brokerHookSecretFile && (!config.broker || !config.brokerUsername)) {
    return { key: 'brokerHookSecretFile', problem: 'needs --broker and --broker-username (the hub\'s own user on the broker, which the hooks let do anything)' };
  }
  if (!config.broker) {
    const set = dependents.find((key) => config[key] !== '');
    return set ? { key: set, problem: 'needs --broker (the external broker to join)' } : null;
  }
  if (config.brokerPasswordFile && !config.brokerUsername) return { key: 'brokerPasswordFile', problem: 'needs --broker-username as well' };
  if (config.brokerCert && !config.brokerKey) return { key: 'brokerCert', problem: 'needs --broker-key as well (the private key of the certificate)' };
  if (config.brokerKey && !config.brokerCert) return { key: 'brokerKey', problem: 'needs --broker-cert as well (the certificate of the key)' };
  return null;
}

/** Applies defaults and validation to options given in-process (startHub). */
export function configFromOptions(options: Partial<HubConfig>): HubConfig {
  return resolveConfig({ flags: options as Partial<Record<SettingKey, unknown>> });
}
