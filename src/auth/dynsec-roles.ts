/**
 * The rules of src/auth/acl.ts as Mosquitto 2's dynamic-security plugin holds them
 * (docs/broker-dynsec.md), and the plugin's commands that give a device or an API token its
 * broker credentials or take them away. Pure functions of the topics and the names, so each
 * rule can be checked against acl.ts in a unit test.
 *
 * Mosquitto 2.0's dynsec ACLs take no `%c`/`%u` substitution (a topic `a/%c` matches the
 * literal level `%c` only; measured on 2.0.11), so every device and every token has a role
 * of its own, named after it.
 */
import type { Topics } from '../protocol/topics.js';
import type { Role } from './roles.js';

export type DynsecAclType = 'publishClientSend' | 'publishClientReceive' | 'subscribeLiteral' | 'subscribePattern' | 'unsubscribeLiteral' | 'unsubscribePattern';

export interface DynsecAcl {
  acltype: DynsecAclType;
  topic: string;
  allow: boolean;
  priority?: number;
}

/** One command of the plugin's control API (`$CONTROL/dynamic-security/v1`). */
export type DynsecCommand = { command: string } & Record<string, unknown>;

/** The textname of the broker clients the hub manages: how reconciling tells them from the broker admin's own. */
export const DEVICE_TEXTNAME = 'rhizosphere device';
export const TOKEN_TEXTNAME = 'rhizosphere token';
export const DEVICE_ROLE_PREFIX = 'rhizosphere-device-';
export const TOKEN_ROLE_PREFIX = 'rhizosphere-token-';
/** The hub's own rights: it publishes Commands, Replies (MQTT 5: on any allowed Response Topic) and statuses. */
export const HUB_ROLE = 'rhizosphere-hub';
/** Given to the anonymous group: clients without credentials never reach the hub's topics. */
export const ANONYMOUS_ROLE = 'rhizosphere-anonymous';
export const ANONYMOUS_GROUP = 'rhizosphere-anonymous';
/** Above any priority a broker admin is likely to use, so the denials win over the group's other roles. */
export const ANONYMOUS_PRIORITY = 1000;

export const deviceRoleName = (id: string): string => `${DEVICE_ROLE_PREFIX}${id}`;
export const tokenRoleName = (name: string): string => `${TOKEN_ROLE_PREFIX}${name}`;

const allow = (acltype: DynsecAclType, topic: string): DynsecAcl => ({ acltype, topic, allow: true });

/** Reading a filter: subscribing to it, receiving what it matches, and unsubscribing again. */
function reads(filter: string, kind: 'literal' | 'pattern'): DynsecAcl[] {
  return [
    allow(kind === 'literal' ? 'subscribeLiteral' : 'subscribePattern', filter),
    allow('publishClientReceive', filter),
    allow(kind === 'literal' ? 'unsubscribeLiteral' : 'unsubscribePattern', filter),
  ];
}

/**
 * Device `id`, as `mayPublish`/`maySubscribe` have it: publish its own response, presence,
 * telemetry, state reports and tunnels' out frames; subscribe to exactly its command topic, its
 * tunnels' in frames (the one filter), its presence and its state delta. subscribeLiteral is the
 * exact string compare acl.ts makes.
 */
export function deviceAcls(topics: Topics, id: string): DynsecAcl[] {
  return [
    allow('publishClientSend', topics.deviceResponse(id)),
    allow('publishClientSend', topics.devicePresence(id)),
    // `#` also matches the parent level: P/devices/{id}/telemetry itself, as acl.ts allows.
    allow('publishClientSend', topics.deviceTelemetry(id, '#')),
    allow('publishClientSend', topics.deviceTunnel(id, '+', 'out')),
    allow('publishClientSend', topics.deviceStateReported(id)),
    ...reads(topics.deviceCommand(id), 'literal'),
    ...reads(topics.deviceTunnelsIn(id), 'literal'),
    ...reads(topics.devicePresence(id), 'literal'),
    ...reads(topics.deviceStateDelta(id), 'literal'),
  ];
}

/**
 * API token `name` with `role`. On the broker a token's own client topics are
 * `P/clients/{token name}/…` (with no `%c`, the broker cannot tie them to the client id; the
 * token's connections may use any client id). Viewers read only: the hub cannot see who
 * published a Request on an external broker, so a viewer may not publish one.
 */
export function tokenAcls(topics: Topics, name: string, role: Role): DynsecAcl[] {
  const P = topics.prefix;
  const readable = [`${P}/devices/+/status`, `${P}/devices/+/presence`, `${P}/devices/+/telemetry/#`, `${P}/devices/+/state/#`, `${P}/jobs/+/status`, `${P}/handlers/#`, topics.clientResponse(name), topics.clientTunnelsOut(name)];
  const acls: DynsecAcl[] = role === 'admin' ? reads('#', 'pattern') : readable.flatMap((filter) => reads(filter, 'pattern'));
  if (role !== 'viewer') acls.push(allow('publishClientSend', topics.clientRequest(name)), allow('publishClientSend', topics.clientTunnel(name, '+', 'in')));
  return acls;
}

/** Everything but the plugin's own `$CONTROL` topics (which the hub's admin role already has). */
export function hubAcls(): DynsecAcl[] {
  return [allow('publishClientSend', '#'), ...reads('#', 'pattern')];
}

/** Nothing under the prefix, either way, for a client without credentials. */
export function anonymousAcls(topics: Topics): DynsecAcl[] {
  const all = `${topics.prefix}/#`;
  return (['publishClientSend', 'publishClientReceive', 'subscribePattern'] as const).map((acltype) => ({ acltype, topic: all, allow: false, priority: ANONYMOUS_PRIORITY }));
}

/**
 * Gives device `id` its broker client with `token` as password, replacing any it had (the
 * old one's connections are dropped by deleteClient). The same for `device add` and
 * `rotate`, and idempotent, so a batch may be sent again after a lost answer.
 */
export function deviceCredentialCommands(topics: Topics, id: string, token: string): DynsecCommand[] {
  const rolename = deviceRoleName(id);
  return [
    { command: 'deleteClient', username: id },
    { command: 'deleteRole', rolename },
    { command: 'createRole', rolename, textname: DEVICE_TEXTNAME, acls: deviceAcls(topics, id) },
    // clientid: the broker lets this user in only under its own device id.
    { command: 'createClient', username: id, password: token, clientid: id, textname: DEVICE_TEXTNAME, roles: [{ rolename }] },
  ];
}

export function tokenCredentialCommands(topics: Topics, name: string, role: Role, secret: string): DynsecCommand[] {
  const rolename = tokenRoleName(name);
  return [
    { command: 'deleteClient', username: name },
    { command: 'deleteRole', rolename },
    { command: 'createRole', rolename, textname: TOKEN_TEXTNAME, acls: tokenAcls(topics, name, role) },
    { command: 'createClient', username: name, password: secret, textname: TOKEN_TEXTNAME, roles: [{ rolename }] },
  ];
}

/** Removes a device's or a token's client (its connections end) and role. */
export function removalCommands(username: string, rolename: string): DynsecCommand[] {
  return [
    { command: 'deleteClient', username },
    { command: 'deleteRole', rolename },
  ];
}

/** The answers to these commands that mean "already so": the end state is the one asked for. */
export function isAlreadySo(command: string, error: string): boolean {
  return (
    (command === 'deleteClient' && error === 'Client not found') ||
    (command === 'deleteRole' && error === 'Role not found') ||
    (command === 'removeRoleACL' && error === 'ACL not found') ||
    (command === 'createRole' && error === 'Role already exists') ||
    (command === 'createGroup' && error === 'Group already exists') ||
    (command === 'addRoleACL' && error === 'ACL with this topic already exists')
  );
}

/** An ACL as one comparable string (priority 0 when absent, as the plugin reports it). */
export function aclKey(acl: { acltype: string; topic: string; allow: boolean; priority?: number }): string {
  return `${acl.acltype} ${acl.allow ? 'allow' : 'deny'} ${acl.priority ?? 0} ${acl.topic}`;
}

/** The commands that turn role `rolename`'s ACLs from `actual` into `expected` (none when equal). */
export function roleRepairCommands(rolename: string, actual: readonly DynsecAcl[], expected: readonly DynsecAcl[]): DynsecCommand[] {
  const have = new Map(actual.map((acl) => [aclKey(acl), acl]));
  const want = new Map(expected.map((acl) => [aclKey(acl), acl]));
  const commands: DynsecCommand[] = [];
  for (const [key, acl] of have) if (!want.has(key)) commands.push({ command: 'removeRoleACL', rolename, acltype: acl.acltype, topic: acl.topic });
  for (const [key, acl] of want) if (!have.has(key)) commands.push({ command: 'addRoleACL', rolename, ...acl });
  return commands;
}
