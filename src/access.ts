/**
 * The broker's topic policy: who may connect with which id, and who may publish where
 * (PROTOCOL.md "Names", "Device topics", "Client request / reply"). MQTT 3.1.1 has no way
 * to refuse one PUBLISH, so Aedes answers a refused publish by closing that connection;
 * every refusal is logged with its code so the operator can see why.
 */
import type { AedesOptions, AuthenticateError, Client } from 'aedes';
import type { Logger } from './log.js';
import { idProblem } from './protocol/ids.js';
import type { Topics } from './protocol/topics.js';

type Hooks = Required<Pick<AedesOptions, 'preConnect' | 'authenticate' | 'authorizePublish' | 'authorizeSubscribe'>>;

export interface AccessOptions {
  topics: Topics;
  log: Logger;
  /** Told of each connection that passed authentication, before the broker registers it (takeover detection). */
  onAuthenticated?: (client: Client) => void;
}

const IDENTIFIER_REJECTED = 2;

function refusal(message: string, returnCode: number): AuthenticateError {
  return Object.assign(new Error(message), { returnCode }) as AuthenticateError;
}

export function createAccessHooks({ topics, log, onAuthenticated }: AccessOptions): Hooks {
  // Aedes replaces an empty client id with a generated one before `authenticate` runs;
  // the id the client really sent is kept here so an empty one can be refused.
  const sentIds = new WeakMap<Client, string>();

  return {
    preConnect(client, packet, callback) {
      sentIds.set(client, packet.clientId ?? '');
      callback(null, true);
    },

    authenticate(client, _username, _password, callback) {
      const sent = sentIds.get(client) ?? client.id;
      const problem = idProblem(sent);
      if (problem) {
        log.warn({ code: 'BAD_REQUEST', clientId: sent.slice(0, 200) }, `connection refused: client id ${problem}`);
        callback(refusal(`client id ${problem}`, IDENTIFIER_REJECTED), false);
        return;
      }
      onAuthenticated?.(client);
      callback(null, true);
    },

    authorizePublish(client, packet, callback) {
      if (!client) return callback(null);
      const device = topics.parseDeviceTopic(packet.topic);
      if (device) {
        if (device.kind === 'status') {
          // A will arrives here while its connection closes. The hub publishes the status
          // itself from the broker's disconnect event, so a will from a connection that a
          // reconnect replaced can never mark the device offline.
          if (client.closed) return callback(new Error('status is published by the hub'));
          return deny(client, packet.topic, 'the status topic is published by the hub alone', callback);
        }
        if (device.kind === 'command') {
          return deny(client, packet.topic, 'commands reach devices through the hub (publish a Request on your clients/{id}/request topic)', callback);
        }
        if (device.id !== client.id) {
          return deny(client, packet.topic, `only device ${device.id} may publish its ${device.kind}`, callback);
        }
        if (device.kind === 'response') packet.retain = false;
        return callback(null);
      }
      const own = topics.parseClientTopic(packet.topic);
      if (own) {
        if (own.kind === 'response') {
          return deny(client, packet.topic, 'replies are published by the hub alone', callback);
        }
        // A retained request would be stored and replayed to every later subscriber.
        packet.retain = false;
      }
      callback(null);
    },

    authorizeSubscribe(_client, subscription, callback) {
      // Until access control exists every connection is anonymous and may read every topic.
      callback(null, subscription);
    },
  };

  function deny(client: Client, topic: string, why: string, callback: (error?: Error | null) => void): void {
    log.warn({ code: 'FORBIDDEN', clientId: client.id, topic }, `publish refused, connection closed: ${why}`);
    callback(new Error(why));
  }
}
