/**
 * `rhizosphere [serve] [flags]`: runs the hub. Problems with flags, environment, the
 * config file or the ports end the start with one line naming the culprit and status 2.
 */
import { parseArgs } from 'node:util';
import { parseArgsProblem } from './args.js';
import { ADMIN_COMMANDS, ADMIN_USAGE, AdminUsageError, runAdmin } from './admin.js';
import { CLIENT_COMMANDS, CLIENT_USAGE, ClientError, ClientUsageError, runClientCommand } from './client-commands.js';
import { HubError } from '../errors.js';
import { ConfigError, envName, resolveConfig, SETTINGS, type SettingKey } from '../config.js';
import { startHub, StartError } from '../hub.js';
import { collectWhenIdle } from '../idle-collect.js';
import { createLogger } from '../log.js';

const EXIT_USAGE = 2;

function usage(): string {
  const rows = (Object.keys(SETTINGS) as SettingKey[]).map((key) => {
    const s = SETTINGS[key];
    const placeholder = 'placeholder' in s ? s.placeholder : s.type === 'number' ? 'N' : 'VALUE';
    const flag = s.type === 'boolean' ? `--${s.flag}` : `--${s.flag} ${placeholder}`;
    return `  ${flag.padEnd(30)} ${s.help}\n  ${''.padEnd(30)} env ${envName(key)}; default ${JSON.stringify(s.default)}`;
  });
  return [
    'rhizosphere — root server for fleets of devices: an MQTT hub that runs commands on them.',
    '',
    'Usage: rhizosphere [serve] [flags]',
    '',
    'Flags (each also from an environment variable and from the --config file, whose keys are',
    'the camelCase names: mqttPort, httpPort, dataDir, ...; flags win over environment, the',
    'environment over the file, the file over defaults):',
    ...rows,
    `  ${'--config FILE'.padEnd(30)} JSON file with settings; env RHIZOSPHERE_CONFIG`,
    `  ${'--help'.padEnd(30)} show this help`,
    '',
    ADMIN_USAGE,
    '',
    CLIENT_USAGE,
    '',
    'Devices run the agent: hypha --url mqtt://HUB:1883 --id ID --token TOKEN  (see hypha --help)',
    'Run a command:  curl -X POST http://127.0.0.1:8080/api/devices/ID/commands -H "authorization: Bearer TOKEN" \\',
    "                  -H 'content-type: application/json' -d '{\"order\":\"exec_bash\",\"cmd_str\":\"uname -a\"}'",
    '',
    'Exit status: 0 after a clean stop (SIGTERM, SIGINT), 2 for a bad flag, value or port in use.',
  ].join('\n');
}

function fail(message: string): never {
  process.stderr.write(`rhizosphere: ${message}\n`);
  process.exit(EXIT_USAGE);
}

function parseFlags(argv: string[]) {
  const options: Record<string, { type: 'string' | 'boolean' }> = { config: { type: 'string' }, help: { type: 'boolean' } };
  for (const setting of Object.values(SETTINGS)) options[setting.flag] = { type: setting.type === 'boolean' ? 'boolean' : 'string' };
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: true, strict: true });
  } catch (error) {
    fail(`${parseArgsProblem(error)} (see rhizosphere --help)`);
  }
  const [command, ...extra] = parsed.positionals;
  if (command !== undefined && command !== 'serve') fail(`unknown command "${command}" (see rhizosphere --help)`);
  if (extra.length > 0) fail(`unexpected argument "${extra[0]}"`);

  const flags: Partial<Record<SettingKey, unknown>> = {};
  for (const key of Object.keys(SETTINGS) as SettingKey[]) {
    const setting = SETTINGS[key];
    const value = parsed.values[setting.flag];
    if (value === undefined) continue;
    if (setting.type === 'number') {
      if (typeof value !== 'string' || !/^\d+$/.test(value)) fail(`--${setting.flag}: ${JSON.stringify(value)} is not a whole number`);
      flags[key] = Number(value);
    } else {
      flags[key] = value;
    }
  }
  return { flags, help: parsed.values.help === true, config: parsed.values.config as string | undefined };
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if ((ADMIN_COMMANDS as readonly string[]).includes(argv[0] ?? '')) return admin(argv);
  if ((CLIENT_COMMANDS as readonly string[]).includes(argv[0] ?? '')) return client(argv);
  const { flags, help, config: configFile } = parseFlags(argv);
  if (help) {
    process.stdout.write(`${usage()}\n`);
    return;
  }
  let config;
  try {
    const env = { ...process.env };
    const file = configFile ?? env.RHIZOSPHERE_CONFIG;
    delete env.RHIZOSPHERE_CONFIG;
    config = resolveConfig({ flags, env, file: file || undefined });
  } catch (error) {
    if (error instanceof ConfigError) fail(error.message);
    throw error;
  }

  const log = createLogger({ level: config.logLevel });
  if (config.allowAnonymous) {
    log.warn('anonymous access is on (--allow-anonymous): anyone who can reach the hub may connect and run commands on every device');
  }
  let hub;
  try {
    hub = await startHub({ ...config, logger: log });
  } catch (error) {
    if (error instanceof StartError || error instanceof ConfigError) fail(error.message);
    throw error;
  }

  if (hub.initialAdminPassword) {
    process.stdout.write(
      `\nrhizosphere: first start: created user "admin" with password\n\n    ${hub.initialAdminPassword}\n\n` +
        `Log in at ${hub.urls.http}/ — this password is shown only this once (change it: rhizosphere user passwd admin).\n\n`,
    );
  }

  const MiB = 2 ** 20;
  const collector = collectWhenIdle({
    onCollected: (freed, heapUsed, pauseMs) =>
      log.debug({ freedMiB: Math.round(freed / MiB), heapMiB: Math.round(heapUsed / MiB), pauseMs: Math.round(pauseMs) }, 'idle: garbage collected'),
  });

  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    collector.stop();
    log.info({ signal }, 'stopping');
    // The hub closes within its own budget; this is the backstop for the 5 s promise.
    setTimeout(() => {
      log.error('clean stop took longer than 5 s; exiting');
      process.exit(1);
    }, 5000).unref();
    void hub.close({ processExits: true }).then(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

/** `rhizosphere device|user|token|audit …`: exit 0 done, 1 refused (a coded problem), 2 usage. */
async function admin(argv: string[]): Promise<void> {
  try {
    await runAdmin(argv, process.env, (line) => process.stdout.write(`${line}\n`));
  } catch (error) {
    if (error instanceof AdminUsageError || error instanceof ConfigError) fail(error.message);
    if (error instanceof HubError) {
      process.stderr.write(`rhizosphere: ${error.code}: ${error.message}\n`);
      process.exit(1);
    }
    throw error;
  }
}

/** `rhizosphere exec|devices|run …`: the command's status (exec), 0/1 (run), 1 for a coded problem, 2 usage. */
async function client(argv: string[]): Promise<void> {
  let status: number;
  try {
    status = await runClientCommand(argv, process.env, {
      out: (text) => process.stdout.write(text),
      err: (text) => process.stderr.write(text),
      errIsTty: process.stderr.isTTY === true,
    });
  } catch (error) {
    if (error instanceof ClientUsageError) fail(error.message);
    if (error instanceof ClientError) {
      process.stderr.write(`rhizosphere: ${error.code}: ${error.message}\n`);
      status = 1;
    } else {
      throw error;
    }
  }
  // Let stdout and stderr drain (they may be pipes), then leave even if something lingers.
  process.exitCode = status;
  setTimeout(() => process.exit(status), 1000).unref();
}

main().catch((error: unknown) => {
  process.stderr.write(`rhizosphere: ${(error as Error)?.stack ?? String(error)}\n`);
  process.exit(1);
});
