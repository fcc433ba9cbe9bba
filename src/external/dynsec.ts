/**
 * `--broker-dynsec`: keeps a Mosquitto 2's dynamic-security plugin in step with the hub's
 * registry (docs/broker-dynsec.md), so the broker itself lets in only registered devices and
 * API tokens and confines each to the topics src/auth/acl.ts gives it. The registry stays
 * the source of truth:
 *
 * - at start: the broker must answer on its control topic (else the start ends with one line
 *   naming the flag); the database is marked as kept in step (src/store/broker-outbox.ts);
 *   the hub's own user gets the rights it needs, clients without credentials are kept out of
 *   the hub's topics;
 * - the outbox is drained: every credential change written by a store method (the CLI in
 *   another process included) is sent in order, and its row deleted once the broker answered;
 *   without an answer it stays, and is sent again after a reconnect;
 * - then reconciled: broker clients the hub manages whose device or token is gone are
 *   deleted, their roles repaired where they differ (another topic prefix, say); registered
 *   devices without a broker client are told once (their tokens' plaintext is unknown).
 */
import {
  ANONYMOUS_GROUP,
  ANONYMOUS_PRIORITY,
  ANONYMOUS_ROLE,
  DEVICE_ROLE_PREFIX,
  DEVICE_TEXTNAME,
  HUB_ROLE,
  TOKEN_ROLE_PREFIX,
  TOKEN_TEXTNAME,
  anonymousAcls,
  deviceAcls,
  deviceRoleName,
  hubAcls,
  isAlreadySo,
  removalCommands,
  roleRepairCommands,
  tokenAcls,
  tokenRoleName,
  type DynsecAcl,
  type DynsecCommand,
} from '../auth/dynsec-roles.js';
import { StartError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Topics } from '../protocol/topics.js';
import { BrokerOutbox, deviceSubject, tokenSubject, type OutboxRow } from '../store/broker-outbox.js';
import type { Stores } from '../store/stores.js';
import { CONTROL_TOPIC, DynsecControl, DynsecUnanswered, type DynsecAnswer } from './dynsec-control.js';
import type { Uplink, UplinkCredentials } from './uplink.js';

export interface DynsecSyncOptions extends UplinkCredentials {
  url: string;
  /** The control connection's own client id (not the uplink's). */
  clientId: string;
  /** The hub's user name on the broker (--broker-username). */
  username: string;
  stores: Stores;
  topics: Topics;
  log: Logger;
  /** The hub's uplink: when the broker reconnects the hub's user (a new role), the start waits for it too. */
  uplink?: Uplink;
  /** How often the outbox is looked at for rows written by another process (default 100 ms). */
  pollMs?: number;
  /** How long the broker has to answer the first command at start (default 5 s). */
  probeTimeoutMs?: number;
}

export interface ReconcileReport {
  /** Broker clients the hub manages. */
  managed: number;
  /** Clients (and roles) deleted because their device or token is gone. */
  removed: string[];
  /** Roles whose ACLs were put right. */
  repaired: string[];
  /** Registered, active devices without a broker client. */
  devicesWithoutClient: string[];
  tokensWithoutClient: string[];
}

export interface DynsecSync {
  /** Settles once the start-up drain and the reconciliation are done (rejects never: failures are logged). */
  readonly reconciled: Promise<ReconcileReport | null>;
  /** Sends what waits in the outbox now (the poll does it anyway). */
  drain(): Promise<void>;
  close(): Promise<void>;
}

/** Rows read at once, and commands sent in one control message (the plugin saves its file once per message). */
const ROWS_PER_READ = 200;
const COMMANDS_PER_MESSAGE = 400;
const LIST_PAGE = 1000;
/** In a warning: how many ids are named before "and N more". */
const IDS_NAMED = 100;

/** Log codes (docs/broker-dynsec.md "Log codes"). */
const FAILED = 'DYNSEC_COMMAND_FAILED';
const UNANSWERED = 'DYNSEC_UNANSWERED';

/** The hub at start without --broker-dynsec: a database marked before stops queueing (and drops the plaintext it held). */
export function releaseDynsecOutbox(stores: Stores, log: Logger): void {
  const outbox = new BrokerOutbox(stores.db);
  if (!outbox.synced) return;
  const dropped = outbox.unmark();
  log.warn(
    { dropped },
    dropped > 0
      ? `--broker-dynsec is off: ${dropped} broker changes that were never sent are dropped; devices added or rotated meanwhile need a new token (rhizosphere device rotate ID) once it is on again`
      : '--broker-dynsec is off: credential changes are no longer queued for the broker',
  );
}

export async function startDynsecSync(options: DynsecSyncOptions): Promise<DynsecSync> {
  const { url, username, stores, topics, log } = options;
  const control = await DynsecControl.open({ url, clientId: options.clientId, username, password: options.password, ca: options.ca, cert: options.cert, key: options.key, log });
  try {
    await probe(control, options);
  } catch (error) {
    await control.close();
    throw error;
  }
  const outbox = new BrokerOutbox(stores.db);
  outbox.mark(topics.prefix, username);
  // Delivered plaintext is overwritten, not just unlinked from the tree, when its row goes.
  stores.db.pragma('secure_delete = ON');
  try {
    await ensureHubRights(control, options);
    await keepAnonymousOut(control, topics, log);
  } catch (error) {
    await control.close();
    if (error instanceof DynsecUnanswered) throw new StartError(`--broker-dynsec: ${url} stopped answering on ${CONTROL_TOPIC} while the hub set up its roles (${error.message})`, { cause: error });
    throw error;
  }

  let closed = false;
  let busy: Promise<void> | null = null;
  /** Delivered plaintext may still sit in the write-ahead log until it is checkpointed and truncated. */
  let scrubPending = false;
  const scrub = () => {
    const timeout = stores.db.pragma('busy_timeout', { simple: true }) as number;
    // Never wait on another process here (the event loop would wait too): try again at the next poll.
    stores.db.pragma('busy_timeout = 0');
    try {
      const [result] = stores.db.pragma('wal_checkpoint(TRUNCATE)') as { busy: number }[];
      scrubPending = result?.busy !== 0;
    } catch (error) {
      log.debug({ err: error }, 'write-ahead log not truncated yet');
    } finally {
      stores.db.pragma(`busy_timeout = ${timeout}`);
    }
  };
  /** Since when batches go unanswered (warned once per stretch). */
  let unansweredSince: number | null = null;

  const sendRows = async (rows: OutboxRow[]): Promise<boolean> => {
    const commands: DynsecCommand[] = [];
    const owners: { row: OutboxRow; command: DynsecCommand }[] = [];
    for (const row of rows) {
      for (const command of row.commands) {
        if (command.username === username) {
          // Never the hub's own user (the stores refuse such names; this is the last guard).
          log.error({ code: FAILED, subject: row.subject, command: command.command }, 'a broker change for the hub\'s own user name was not sent');
          continue;
        }
        commands.push(command);
        owners.push({ row, command });
      }
    }
    let answers: DynsecAnswer[];
    try {
      answers = await control.send(commands);
    } catch (error) {
      if (!(error instanceof DynsecUnanswered)) throw error;
      if (unansweredSince === null) {
        unansweredSince = Date.now();
        log.warn({ code: UNANSWERED, broker: url, waiting: outbox.count(), reason: error.message }, 'the broker did not answer credential changes; they are sent again once it does');
      }
      return false;
    }
    if (unansweredSince !== null) log.info({ broker: url, afterMs: Date.now() - unansweredSince }, 'the broker answers credential changes again');
    unansweredSince = null;
    answers.forEach((answer, i) => {
      const { row, command } = owners[i]!;
      if (answer.error !== undefined && !isAlreadySo(command.command, answer.error)) {
        log.error({ code: FAILED, subject: row.subject, command: command.command, dynsecError: answer.error }, `the broker refused ${command.command} for ${row.subject}: ${answer.error}`);
      }
    });
    for (const row of rows) {
      if (row.notice) log.warn({ subject: row.subject }, row.notice);
      else log.debug({ subject: row.subject, commands: row.commands.map((c) => c.command) }, 'broker credentials updated');
    }
    outbox.delete(rows.map((row) => row.seq));
    if (rows.some((row) => row.commands.some((command) => command.password !== undefined))) scrubPending = true;
    return true;
  };

  const drainNow = async (): Promise<void> => {
    while (!closed && control.connected) {
      const rows = outbox.pending(ROWS_PER_READ);
      if (rows.length === 0) return;
      // Notices need no broker; commands go in messages of at most COMMANDS_PER_MESSAGE.
      const batch: OutboxRow[] = [];
      let size = 0;
      for (const row of rows) {
        if (batch.length > 0 && size + row.commands.length > COMMANDS_PER_MESSAGE) break;
        batch.push(row);
        size += row.commands.length;
      }
      if (!(await sendRows(batch))) return;
      if (batch.length > 1) log.info({ changes: batch.length, left: outbox.count() }, 'broker credentials updated');
      if (scrubPending && outbox.pending(1).length === 0) scrub();
    }
  };

  const drain = (): Promise<void> => {
    busy ??= drainNow()
      .catch((error: unknown) => log.error({ code: FAILED, err: error }, 'cannot send credential changes to the broker'))
      .finally(() => {
        busy = null;
      });
    return busy;
  };

  const timer = setInterval(() => {
    if (busy || closed || !control.connected) return;
    try {
      if (outbox.pending(1).length > 0) void drain();
      else if (scrubPending) scrub();
    } catch (error) {
      log.error({ err: error }, 'cannot read the broker outbox');
    }
  }, options.pollMs ?? 100);
  timer.unref();
  control.on('up', () => void drain());

  const reconciled = (async () => {
    await drain();
    if (closed) return null;
    try {
      const report = await reconcile(control, outbox, options);
      await drain();
      return report;
    } catch (error) {
      if (!closed) log.error({ code: error instanceof DynsecUnanswered ? UNANSWERED : FAILED, err: error }, 'could not reconcile the broker\'s clients with the registry (done again at the next start)');
      return null;
    }
  })();

  log.info({ broker: url, waiting: outbox.count() }, 'keeping the broker\'s dynamic security in step with the registry');
  return {
    reconciled,
    drain,
    async close() {
      closed = true;
      clearInterval(timer);
      await busy;
      await control.close();
    },
  };
}

/** One answer that must not be an error (other than "already so"). */
function check(answer: DynsecAnswer | undefined, command: DynsecCommand, log: Logger): DynsecAnswer | undefined {
  if (answer?.error !== undefined && !isAlreadySo(command.command, answer.error)) {
    log.error({ code: FAILED, command: command.command, dynsecError: answer.error }, `the broker refused ${command.command}: ${answer.error}`);
  }
  return answer;
}

async function probe(control: DynsecControl, { url, username, log, probeTimeoutMs = 5000 }: DynsecSyncOptions): Promise<void> {
  let answers: DynsecAnswer[];
  try {
    answers = await control.send([{ command: 'listClients', count: 1 }], probeTimeoutMs);
  } catch (error) {
    if (!(error instanceof DynsecUnanswered)) throw error;
    throw new StartError(
      `--broker-dynsec: ${url} did not answer on ${CONTROL_TOPIC} within ${probeTimeoutMs} ms: load Mosquitto's dynamic-security plugin and give --broker-username ${username} its admin role (docs/broker-dynsec.md)`,
    );
  }
  const error = answers[0]?.error;
  if (error !== undefined) throw new StartError(`--broker-dynsec: ${url} answered listClients with "${error}"`);
  log.debug({ broker: url }, 'the broker answers on the dynamic-security control topic');
}

/** Sends commands that may end in the broker dropping this connection (a role of the hub's user changes). */
async function sendAcrossKick(control: DynsecControl, commands: DynsecCommand[]): Promise<DynsecAnswer[] | null> {
  try {
    return await control.send(commands, 3000);
  } catch (error) {
    if (!(error instanceof DynsecUnanswered)) throw error;
    await control.waitUp(10_000);
    return null;
  }
}

/**
 * The hub publishes Commands, Replies, statuses and presence clears: the plugin's initial
 * admin role has none of that. The hub gives its own user the role HUB_ROLE; the broker then
 * drops every connection of that user (the uplink and this one), which reconnect by themselves.
 */
async function ensureHubRights(control: DynsecControl, { username, log, uplink }: DynsecSyncOptions): Promise<void> {
  const create: DynsecCommand = { command: 'createRole', rolename: HUB_ROLE, textname: 'rhizosphere hub', acls: hubAcls() };
  const [created, role, client] = await control.send([create, { command: 'getRole', rolename: HUB_ROLE }, { command: 'getClient', username }]);
  check(created, create, log);
  const actual = ((role?.data?.role as { acls?: DynsecAcl[] } | undefined)?.acls ?? []);
  const repair = roleRepairCommands(HUB_ROLE, actual, hubAcls());
  if (client?.error !== undefined) {
    log.warn({ user: username }, `the hub's broker user ${username} is not a dynamic-security client: the broker's own configuration must let it publish and subscribe on the hub's topics`);
    return;
  }
  const roles = ((client?.data?.client as { roles?: { rolename: string }[] } | undefined)?.roles ?? []).map((r) => r.rolename);
  const commands = [...repair, ...(roles.includes(HUB_ROLE) ? [] : [{ command: 'addClientRole', username, rolename: HUB_ROLE }])];
  if (commands.length === 0) return;
  const answers = await sendAcrossKick(control, commands);
  answers?.forEach((answer, i) => check(answer, commands[i]!, log));
  if (!control.connected) await control.waitUp(10_000);
  // The uplink was dropped with this connection: the start goes on once it is back.
  if (uplink && !uplink.connected) {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 10_000);
      uplink.once('up', () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
  log.info({ user: username, role: HUB_ROLE }, `gave the hub's broker user the role ${HUB_ROLE} (the broker reconnected it once)`);
}

/** Clients without credentials (if the broker lets any in) reach nothing under the prefix; unlisted topics and subscriptions are denied. */
async function keepAnonymousOut(control: DynsecControl, topics: Topics, log: Logger): Promise<void> {
  const expected = anonymousAcls(topics);
  const create: DynsecCommand = { command: 'createRole', rolename: ANONYMOUS_ROLE, textname: 'rhizosphere: no credentials, no hub topics', acls: expected };
  const [created, role, group, defaults] = await control.send([create, { command: 'getRole', rolename: ANONYMOUS_ROLE }, { command: 'getAnonymousGroup' }, { command: 'getDefaultACLAccess' }]);
  check(created, create, log);
  const commands: DynsecCommand[] = [];
  if (created?.error !== undefined) commands.push(...roleRepairCommands(ANONYMOUS_ROLE, ((role?.data?.role as { acls?: DynsecAcl[] } | undefined)?.acls ?? []), expected));
  const groupname = ((group?.data?.group as { groupname?: string } | undefined)?.groupname ?? '');
  if (groupname === '') {
    commands.push(
      { command: 'createGroup', groupname: ANONYMOUS_GROUP, textname: 'clients without credentials' },
      { command: 'addGroupRole', groupname: ANONYMOUS_GROUP, rolename: ANONYMOUS_ROLE, priority: ANONYMOUS_PRIORITY },
      { command: 'setAnonymousGroup', groupname: ANONYMOUS_GROUP },
    );
  } else {
    const [found] = await control.send([{ command: 'getGroup', groupname }]);
    const roles = ((found?.data?.group as { roles?: { rolename: string }[] } | undefined)?.roles ?? []).map((r) => r.rolename);
    if (!roles.includes(ANONYMOUS_ROLE)) commands.push({ command: 'addGroupRole', groupname, rolename: ANONYMOUS_ROLE, priority: ANONYMOUS_PRIORITY });
  }
  const access = ((defaults?.data?.acls as { acltype: string; allow: boolean }[] | undefined) ?? []);
  const open = access.filter((a) => (a.acltype === 'publishClientSend' || a.acltype === 'subscribe') && a.allow).map((a) => a.acltype);
  if (open.length > 0) {
    commands.push({ command: 'setDefaultACLAccess', acls: open.map((acltype) => ({ acltype, allow: false })) });
    log.info({ denied: open }, 'the broker\'s default ACL access allowed what no role grants; now denied');
  }
  const answers = await control.send(commands);
  answers.forEach((answer, i) => check(answer, commands[i]!, log));
}

interface BrokerClient {
  username: string;
  textname?: string;
  roles?: { rolename: string }[];
}

interface BrokerRole {
  rolename: string;
  acls?: DynsecAcl[];
}

/** Every client or role, a page at a time. */
async function listAll<T>(control: DynsecControl, command: 'listClients' | 'listRoles', key: 'clients' | 'roles'): Promise<T[]> {
  const all: T[] = [];
  for (let offset = 0; ; offset += LIST_PAGE) {
    const [answer] = await control.send([{ command, verbose: true, count: LIST_PAGE, offset }], 30_000);
    if (answer?.error !== undefined) throw new Error(`${command}: ${answer.error}`);
    const page = (answer?.data?.[key] ?? []) as T[];
    all.push(...page);
    const total = Number(answer?.data?.totalCount ?? 0);
    if (page.length === 0 || all.length >= total) return all;
  }
}

async function reconcile(control: DynsecControl, outbox: BrokerOutbox, { stores, topics, log, username }: DynsecSyncOptions): Promise<ReconcileReport> {
  const clients = await listAll<BrokerClient>(control, 'listClients', 'clients');
  const roles = new Map((await listAll<BrokerRole>(control, 'listRoles', 'roles')).map((r) => [r.rolename, r]));
  const report: ReconcileReport = { managed: 0, removed: [], repaired: [], devicesWithoutClient: [], tokensWithoutClient: [] };

  // Read and queued in one transaction: a change the CLI commits meanwhile is either seen
  // here or queued after these rows, so its commands win.
  stores.db.transaction(() => {
    const pending = outbox.pendingSubjects();
    const devices = new Set([...stores.devices.credentialMap()].filter(([, d]) => d.state === 'active' && d.tokenHash !== null).map(([id]) => id));
    const tokens = stores.tokens.roleMap();
    const onBroker = new Set<string>();
    const ownRoles = new Set<string>();

    const keep = (subject: string, user: string, rolename: string, expected: DynsecAcl[], client: BrokerClient, textname: string) => {
      ownRoles.add(rolename);
      const role = roles.get(rolename);
      const commands: DynsecCommand[] = role ? roleRepairCommands(rolename, role.acls ?? [], expected) : [{ command: 'createRole', rolename, textname, acls: expected }];
      if (!(client.roles ?? []).some((r) => r.rolename === rolename)) commands.push({ command: 'addClientRole', username: user, rolename });
      if (commands.length === 0) return;
      outbox.queueCommands(subject, commands);
      report.repaired.push(rolename);
    };

    for (const client of clients) {
      const user = client.username;
      if (user === username) continue;
      const kind = client.textname === DEVICE_TEXTNAME ? 'device' : client.textname === TOKEN_TEXTNAME ? 'token' : null;
      if (!kind) continue;
      report.managed += 1;
      onBroker.add(`${kind}:${user}`);
      const subject = kind === 'device' ? deviceSubject(user) : tokenSubject(user);
      if (pending.has(subject)) continue;
      const rolename = kind === 'device' ? deviceRoleName(user) : tokenRoleName(user);
      const role = tokens.get(user);
      if (kind === 'device' ? !devices.has(user) : role === undefined) {
        ownRoles.add(rolename);
        outbox.queueCommands(subject, removalCommands(user, rolename));
        report.removed.push(subject);
      } else if (kind === 'device') keep(subject, user, rolename, deviceAcls(topics, user), client, DEVICE_TEXTNAME);
      else keep(subject, user, rolename, tokenAcls(topics, user, role!), client, TOKEN_TEXTNAME);
    }
    // Roles of the hub's naming left without their client (a createClient that failed, say).
    for (const rolename of roles.keys()) {
      if (ownRoles.has(rolename)) continue;
      const subject = rolename.startsWith(DEVICE_ROLE_PREFIX) ? deviceSubject(rolename.slice(DEVICE_ROLE_PREFIX.length)) : rolename.startsWith(TOKEN_ROLE_PREFIX) ? tokenSubject(rolename.slice(TOKEN_ROLE_PREFIX.length)) : null;
      if (!subject || pending.has(subject)) continue;
      outbox.queueCommands(subject, [{ command: 'deleteRole', rolename }]);
      report.removed.push(`role:${rolename}`);
    }
    for (const id of devices) if (!onBroker.has(deviceSubject(id)) && !pending.has(deviceSubject(id))) report.devicesWithoutClient.push(id);
    for (const name of tokens.keys()) if (!onBroker.has(tokenSubject(name)) && !pending.has(tokenSubject(name)) && name !== username) report.tokensWithoutClient.push(name);
  })();

  const named = (ids: string[]) => ({ count: ids.length, ids: ids.slice(0, IDS_NAMED), ...(ids.length > IDS_NAMED ? { more: ids.length - IDS_NAMED } : {}) });
  if (report.devicesWithoutClient.length > 0) {
    log.warn(
      { code: 'UNKNOWN_DEVICE', ...named(report.devicesWithoutClient) },
      `${report.devicesWithoutClient.length} registered devices have no client on the broker and cannot connect: rotate its token to give it broker credentials (rhizosphere device rotate ID)`,
    );
  }
  if (report.tokensWithoutClient.length > 0) {
    log.warn({ ...named(report.tokensWithoutClient) }, `${report.tokensWithoutClient.length} API tokens have no client on the broker: remove and add each again to give it broker credentials (REST still takes them)`);
  }
  log.info({ managed: report.managed, removed: report.removed.length, repaired: report.repaired.length }, 'broker clients reconciled with the registry');
  return report;
}
