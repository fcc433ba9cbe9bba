/**
 * `rhizosphere device|user|token|audit …`: administration acting on the hub's --data-dir.
 * They write the database directly (the running hub notices within half a second and drops
 * connections whose credentials went away). With --json, the only stdout line is one JSON
 * object (PROTOCOL.md "Command line").
 */
import { userInfo } from 'node:os';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { resolveConfig } from '../config.js';
import { BrokerOutbox } from '../store/broker-outbox.js';
import { openStores, type Stores } from '../store/stores.js';
import { parseArgsProblem } from './args.js';

export const ADMIN_COMMANDS = ['device', 'user', 'token', 'audit'] as const;

export class AdminUsageError extends Error {}

export const ADMIN_USAGE = `Administration (acts on --data-dir; add --json for one JSON object on stdout):
  rhizosphere device add ID [--tag T]...     register a device; prints its token once
  rhizosphere device list                    every device, its state and tags
  rhizosphere device tag ID [--tag T]...     replace the tags an admin assigned (none: clear)
  rhizosphere device remove ID               unregister it; its connection is dropped
  rhizosphere device rotate ID               a new token; the old one stops working at once
  rhizosphere device accept ID | reject ID   decide on a device waiting for enrolment
  rhizosphere user add NAME --role R         admin, operator or viewer; the password is asked
                                             for, or read from stdin with --password-stdin
  rhizosphere user list | remove NAME | passwd NAME [--password-stdin]
  rhizosphere token add NAME --role R        an API token for scripts and tools; printed once
  rhizosphere token list | remove NAME
  rhizosphere audit [--device D] [--since TIME] [--limit N]
                                             commands, logins and changes, newest first`;

interface Flags {
  json: boolean;
  tag: string[];
  role?: string;
  passwordStdin: boolean;
  device?: string;
  since?: string;
  limit?: string;
}

export async function runAdmin(argv: string[], env: NodeJS.ProcessEnv, out: (line: string) => void): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        'data-dir': { type: 'string' },
        config: { type: 'string' },
        json: { type: 'boolean' },
        tag: { type: 'string', multiple: true },
        role: { type: 'string' },
        'password-stdin': { type: 'boolean' },
        device: { type: 'string' },
        since: { type: 'string' },
        limit: { type: 'string' },
      },
    });
  } catch (error) {
    throw new AdminUsageError(`${parseArgsProblem(error)} (see rhizosphere --help)`);
  }
  const [noun, verb, name, ...extra] = parsed.positionals;
  if (extra.length > 0) throw new AdminUsageError(`unexpected argument "${extra[0]}"`);
  const v = parsed.values;
  const flags: Flags = { json: v.json === true, tag: v.tag ?? [], role: v.role, passwordStdin: v['password-stdin'] === true, device: v.device, since: v.since, limit: v.limit };

  const configEnv = { ...env };
  const file = v.config ?? configEnv.RHIZOSPHERE_CONFIG;
  delete configEnv.RHIZOSPHERE_CONFIG;
  const config = resolveConfig({ env: configEnv, file: file || undefined, flags: { dataDir: v['data-dir'] } });
  const stores = openStores(config.dataDir);
  try {
    const actor = { actor: `cli:${safeUser()}`, actorKind: 'cli', remote: null };
    const record = (action: string, device: string | null, detail?: unknown) =>
      stores.audit.record({ at: Date.now(), ...actor, action, device, outcome: 'ok', detail });
    const print = (json: unknown, text: string) => out(flags.json ? JSON.stringify(json) : text);
    await dispatch(noun, verb, name, flags, stores, record, print);
  } finally {
    stores.close();
  }
}

type Record = (action: string, device: string | null, detail?: unknown) => void;
type Print = (json: unknown, text: string) => void;

async function dispatch(noun: string | undefined, verb: string | undefined, name: string | undefined, flags: Flags, stores: Stores, record: Record, print: Print): Promise<void> {
  const need = (what: string): string => {
    if (!name) throw new AdminUsageError(`${noun} ${verb} needs ${what}`);
    return name;
  };
  const key = `${noun} ${verb ?? ''}`.trim();
  switch (key) {
    case 'device add': {
      const id = need('a device id');
      const token = stores.devices.add(id, flags.tag);
      record('device.add', id, { tags: flags.tag });
      return print({ id, token, tags: flags.tag }, `device ${id} registered. Its token (shown only now):\n${token}\nOn the device: hypha --url mqtt://HUB:1883 --id ${id} --token ${token}`);
    }
    case 'device tag': {
      const id = need('a device id');
      stores.devices.setTags(id, flags.tag);
      record('device.tags', id, { tags: flags.tag });
      const device = stores.devices.get(id)!;
      return print(
        { id, tags: device.tags, assignedTags: device.assignedTags, declaredTags: device.declaredTags },
        `device ${id} tags: ${device.tags.join(',') || '(none)'}${device.declaredTags.length > 0 ? ` (declared by the device: ${device.declaredTags.join(',')})` : ''}`,
      );
    }
    case 'device list': {
      const list = stores.devices.list();
      // Tags the device declared itself are marked with a *.
      const tagsOf = (d: (typeof list)[number]) => [...d.assignedTags, ...d.declaredTags.filter((t) => !d.assignedTags.includes(t)).map((t) => `${t}*`)].join(',');
      return print(
        {
          devices: list.map((d) => ({
            id: d.id,
            state: d.state,
            tags: d.tags,
            assignedTags: d.assignedTags,
            declaredTags: d.declaredTags,
            registered: d.hasToken,
            lastSeen: d.lastSeen === null ? null : new Date(d.lastSeen).toISOString(),
            agent: d.agent,
          })),
        },
        list.length === 0
          ? 'no devices'
          : list.map((d) => `${d.id.padEnd(24)} ${d.state.padEnd(8)} ${(d.hasToken ? 'token' : 'no token').padEnd(9)} ${(d.agent ?? '-').padEnd(16)} ${tagsOf(d)}`.trimEnd()).join('\n'),
      );
    }
    case 'device remove':
    case 'device rotate':
    case 'device accept':
    case 'device reject': {
      const id = need('a device id');
      if (verb === 'rotate') {
        const token = stores.devices.rotate(id);
        record('device.rotate', id);
        return print({ id, token }, `device ${id} has a new token (shown only now):\n${token}`);
      }
      if (verb === 'remove') stores.devices.remove(id);
      if (verb === 'accept') stores.devices.accept(id);
      // Its token is known only as a hash: a broker with dynamic security cannot be given it.
      if (verb === 'accept' && new BrokerOutbox(stores.db).synced) process.stderr.write(`note: the broker has no credentials for ${id} yet: rotate its token (rhizosphere device rotate ${id}) and give the device the new one\n`);
      if (verb === 'reject') stores.devices.reject(id);
      record(`device.${verb}`, id);
      const done = verb === 'remove' ? 'removed' : `${verb}ed`;
      return print({ id, [done]: true }, `device ${id} ${done}`);
    }
    case 'user add': {
      const user = need('a user name');
      if (!flags.role) throw new AdminUsageError('user add needs --role admin|operator|viewer');
      const password = await readPassword(flags.passwordStdin, `password for ${user}: `);
      stores.users.add(user, flags.role, password);
      record('user.add', null, { name: user, role: flags.role });
      return print({ name: user, role: flags.role }, `user ${user} (${flags.role}) added`);
    }
    case 'user passwd': {
      const user = need('a user name');
      const password = await readPassword(flags.passwordStdin, `new password for ${user}: `);
      stores.users.setPassword(user, password);
      record('user.passwd', null, { name: user });
      return print({ name: user, changed: true }, `password of ${user} changed; its sessions are ended`);
    }
    case 'user list': {
      const list = stores.users.list();
      return print({ users: list }, list.map((u) => `${u.name.padEnd(24)} ${u.role}`).join('\n') || 'no users');
    }
    case 'user remove': {
      const user = need('a user name');
      stores.users.remove(user);
      record('user.remove', null, { name: user });
      return print({ name: user, removed: true }, `user ${user} removed`);
    }
    case 'token add': {
      const token = need('a token name');
      if (!flags.role) throw new AdminUsageError('token add needs --role admin|operator|viewer');
      const secret = stores.tokens.add(token, flags.role);
      record('token.add', null, { name: token, role: flags.role });
      return print(
        { name: token, role: flags.role, token: secret },
        `token ${token} (${flags.role}) issued. Its secret (shown only now):\n${secret}\nREST: Authorization: Bearer ${secret}   MQTT: username ${token}, password ${secret}`,
      );
    }
    case 'token list': {
      const list = stores.tokens.list();
      return print({ tokens: list }, list.map((t) => `${t.name.padEnd(24)} ${t.role}`).join('\n') || 'no tokens');
    }
    case 'token remove': {
      const token = need('a token name');
      stores.tokens.remove(token);
      record('token.remove', null, { name: token });
      return print({ name: token, removed: true }, `token ${token} removed; its connections are dropped`);
    }
    default:
      if (noun === 'audit' && verb === undefined) return audit(flags, stores, print);
      throw new AdminUsageError(`unknown command "${key}" (see rhizosphere --help)`);
  }
}

function audit(flags: Flags, stores: Stores, print: Print): void {
  const since = flags.since === undefined ? undefined : Date.parse(flags.since);
  if (since !== undefined && Number.isNaN(since)) throw new AdminUsageError(`--since: ${JSON.stringify(flags.since)} is not a date (e.g. 2026-11-24T10:00:00Z)`);
  const limit = flags.limit === undefined ? 100 : Number(flags.limit);
  if (!Number.isInteger(limit) || limit < 1) throw new AdminUsageError(`--limit: ${JSON.stringify(flags.limit)} is not a positive whole number`);
  const entries = stores.audit.query({ device: flags.device, since, limit });
  print(
    { entries: entries.map((e) => ({ ...e, at: new Date(e.at).toISOString() })) },
    entries.length === 0
      ? 'no audit entries'
      : entries
          .map((e) =>
            [new Date(e.at).toISOString(), e.actor, e.remote ?? '-', e.action, e.device ?? '-', e.order ?? '', e.cmdStr ? JSON.stringify(e.cmdStr) : '', e.outcome, e.exitCode ?? '', e.durationMs === null || e.durationMs === undefined ? '' : `${e.durationMs}ms`]
              .filter((part) => part !== '')
              .join('  '),
          )
          .join('\n'),
  );
}

async function readPassword(fromStdin: boolean, prompt: string): Promise<string> {
  if (fromStdin) {
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
  }
  if (!process.stdin.isTTY) throw new AdminUsageError('no terminal to ask for the password on: pass --password-stdin and pipe it in');
  const rl = createInterface({ input: process.stdin, output: process.stderr, terminal: true });
  // Echo off: readline writes what is typed through _writeToOutput; show the prompt only.
  (rl as unknown as { _writeToOutput: (s: string) => void })._writeToOutput = (text: string) => {
    if (text.includes(prompt)) process.stderr.write(prompt);
  };
  const answer = await new Promise<string>((resolve) => rl.question(prompt, resolve));
  rl.close();
  process.stderr.write('\n');
  return answer;
}

function safeUser(): string {
  try {
    return userInfo().username;
  } catch {
    return 'unknown';
  }
}

