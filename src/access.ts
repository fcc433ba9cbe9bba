/**
 * The broker's door and its rules: who may connect (ids, credentials) and who may publish
 * and subscribe where (src/auth/acl.ts), and how fast (src/publish-limit.ts). MQTT 3.1.1 has
 * no way to refuse one PUBLISH, so Aedes answers a refused publish by closing that connection;
 * a refused SUBSCRIBE gets return code 0x80. Every refusal is logged with its code so the
 * operator can see why.
 */
import type { AedesOptions, AuthenticateError, Client } from 'aedes';
import { mayPublish, maySubscribe } from './auth/acl.js';
import type { Authenticator } from './auth/authenticator.js';
import type { Principal } from './auth/roles.js';
import { EveryMinute } from './every-minute.js';
import type { Logger } from './log.js';
import { FLOOD_SECONDS, PublishLimit } from './publish-limit.js';
import { idProblem } from './protocol/ids.js';
import type { Topics } from './protocol/topics.js';

type Hooks = Required<Pick<AedesOptions, 'preConnect' | 'authenticate' | 'authorizePublish' | 'authorizeSubscribe'>>;

export interface AccessOptions {
  topics: Topics;
  log: Logger;
  auth: Authenticator;
  /** The device id vouched for by a verified client certificate, if the connection has one. */
  certificateIdOf?: (client: Client) => string | undefined;
  /** Told of each connection that passed authentication, before the broker registers it (takeover detection). */
  onAuthenticated?: (client: Client) => void;
  /** Publishes a second a device connection may keep up (bursts of twice that); past it, it is slowed. 0 = no limit. */
  maxPublishRate?: number;
  /** The same for every other connection (API tokens, consoles, anonymous clients): their requests fan out to many devices. */
  maxClientPublishRate?: number;
}

export interface Access {
  hooks: Hooks;
  /** Who a connection authenticated as. */
  principalOf(client: Client): Principal | undefined;
  /** Where it connected from, read at CONNECT (a client may be gone by the time its last publish is handled). */
  remoteOf(client: Client): string | null;
}

const IDENTIFIER_REJECTED = 2;

function refusal(message: string, returnCode: number): AuthenticateError {
  return Object.assign(new Error(message), { returnCode }) as AuthenticateError;
}

function remoteOf(client: Client): string | undefined {
  return client.req?.socket.remoteAddress ?? (client.conn as { remoteAddress?: string }).remoteAddress;
}

export function createAccess({ topics, log, auth, certificateIdOf, onAuthenticated, maxPublishRate = 0, maxClientPublishRate = 0 }: AccessOptions): Access {
  // Aedes replaces an empty client id with a generated one before `authenticate` runs;
  // the id the client really sent is kept here so an empty one can be refused.
  const sentIds = new WeakMap<Client, string>();
  const principals = new WeakMap<Client, Principal>();
  const limits = new WeakMap<Client, PublishLimit | null>();
  const remotes = new WeakMap<Client, string>();
  const slowed = new EveryMinute();

  /** The connection's limit, made at its first publish; null when its kind has none. */
  const limitOf = (client: Client): PublishLimit | null => {
    let limit = limits.get(client);
    if (limit === undefined) {
      const rate = principals.get(client)?.kind === 'device' ? maxPublishRate : maxClientPublishRate;
      limit = rate > 0 ? new PublishLimit(rate, () => !client.closed) : null;
      limits.set(client, limit);
    }
    return limit;
  };

  const hooks: Hooks = {
    preConnect(client, packet, callback) {
      sentIds.set(client, packet.clientId ?? '');
      callback(null, true);
    },

    authenticate(client, username, password, callback) {
      const sent = sentIds.get(client) ?? client.id;
      const problem = idProblem(sent);
      if (problem) {
        log.warn({ code: 'BAD_REQUEST', clientId: sent.slice(0, 200), remote: remoteOf(client) }, `connection refused: client id ${problem}`);
        callback(refusal(`client id ${problem}`, IDENTIFIER_REJECTED), false);
        return;
      }
      const result = auth.mqtt(sent, username, password, certificateIdOf?.(client));
      if (!result.ok) {
        log.warn({ code: 'FORBIDDEN', clientId: sent, username, remote: remoteOf(client) }, `connection refused: ${result.reason}`);
        callback(refusal(result.reason, result.returnCode), false);
        return;
      }
      principals.set(client, result.principal);
      const remote = remoteOf(client);
      if (remote) remotes.set(client, remote);
      onAuthenticated?.(client);
      callback(null, true);
    },

    authorizePublish(client, packet, callback) {
      if (!client) return callback(null);
      const device = topics.parseDeviceTopic(packet.topic);
      // A will arrives here while its connection closes. The hub publishes the status itself
      // from the broker's disconnect event, so a will from a connection that a reconnect
      // replaced can never mark the device offline.
      if (client.closed && device?.kind === 'status') return callback(new Error('status is published by the hub'));
      const principal = principals.get(client);
      const verdict = principal ? mayPublish(principal, client.id, packet.topic, topics) : { ok: false as const, why: 'not authenticated' };
      if (!verdict.ok) {
        log.warn({ code: 'FORBIDDEN', clientId: client.id, topic: packet.topic }, `publish refused, connection closed: ${verdict.why}`);
        return callback(new Error(verdict.why));
      }
      // Requests, Responses and tunnel frames are never stored: a retained one would be replayed to every later subscriber.
      const own = topics.parseClientTopic(packet.topic);
      if (device?.kind === 'response' || device?.kind === 'tunnel' || own?.kind === 'request' || own?.kind === 'tunnel') packet.retain = false;
      // A state report is a patch of the reported document, not a document: never replayed either.
      if (device?.kind === 'state' && device.state === 'reported') packet.retain = false;
      const limit = limitOf(client);
      // A will is published as its connection closes: nothing left to slow.
      if (!limit || client.closed) return callback(null);
      const admission = limit.admit(() => callback(null));
      if (admission === 'held') {
        const times = slowed.count();
        if (times > 0) log.warn({ code: 'BUSY', clientId: client.id, rate: limit.rate, times }, `publishes slowed: a connection went past ${limit.rate} publishes a second (connections slowed since the last such line: ${times})`);
      } else if (admission === 'flood') {
        log.warn({ code: 'BUSY', clientId: client.id, rate: limit.rate, backlog: limit.backlog }, `connection closed: ${limit.backlog} publishes held, more than ${FLOOD_SECONDS} s at ${limit.rate} a second`);
        callback(new Error('publish rate exceeded'));
      }
    },

    authorizeSubscribe(client, subscription, callback) {
      const principal = principals.get(client);
      const verdict = principal ? maySubscribe(principal, client.id, subscription.topic, topics) : { ok: false as const, why: 'not authenticated' };
      if (!verdict.ok) {
        log.warn({ code: 'FORBIDDEN', clientId: client.id, topic: subscription.topic }, `subscription refused: ${verdict.why}`);
        // null: the SUBACK says 0x80 for this filter, and the connection stays up.
        return callback(null, null);
      }
      callback(null, subscription);
    },
  };

  return { hooks, principalOf: (client) => principals.get(client), remoteOf: (client) => remotes.get(client) ?? remoteOf(client) ?? null };
}
