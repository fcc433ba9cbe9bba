/**
 * The MQTT face of the command round trip (PROTOCOL.md "Client request / reply"): any
 * client publishes a Request on `P/clients/{its id}/request` and gets the Reply on
 * `P/clients/{its id}/response`. Every Request gets exactly one Reply, even a malformed one.
 */
import type { Aedes, AedesPublishPacket, Client } from 'aedes';
import { actorOf, canRunCommands, type Principal } from '../src/auth/roles.js';
import { newMemo, type DirectDelivery, type SoleMemo } from '../src/direct-delivery.js';
import { errorReply, type Dispatcher } from '../src/dispatcher.js';
import type { Logger } from '../src/log.js';
import { RequestSchema, parsePayload, type Reply } from '../src/protocol/schemas.js';
import type { Topics } from '../src/protocol/topics.js';

export interface MqttRequestBridgeOptions {
  broker: Aedes;
  topics: Topics;
  dispatcher: Dispatcher;
  maxPayloadBytes: number;
  log: Logger;
  principalOf: (client: Client) => Principal | undefined;
  remoteOf: (client: Client) => string | null;
  direct: DirectDelivery;
}

export function bridgeMqttRequests({ broker, topics, dispatcher, maxPayloadBytes, log, principalOf, remoteOf, direct }: MqttRequestBridgeOptions): { close(): void } {
  const memos = new WeakMap<Client, SoleMemo>();
  const reply = (clientId: string, body: Reply) => {
    const payload = Buffer.from(JSON.stringify(body));
    const packet = { cmd: 'publish', topic: topics.clientResponse(clientId), payload, qos: 1, retain: false, dup: false } as AedesPublishPacket;
    // The connection with that id now (it may have reconnected since it asked).
    const client = (broker as unknown as { clients: Record<string, Client | undefined> }).clients[clientId];
    let memo = client && memos.get(client);
    if (client && !memo) memos.set(client, (memo = newMemo()));
    direct.publish(packet, client, memo ?? newMemo());
  };

  const onPublish = (packet: AedesPublishPacket, client: Client | null) => {
    if (!client) return;
    const target = topics.parseClientTopic(packet.topic);
    if (!target || target.kind !== 'request') return;

    if (target.id !== client.id) {
      log.warn({ code: 'FORBIDDEN', clientId: client.id, topic: packet.topic }, 'request on another client\'s topic');
      reply(client.id, errorReply(null, null, 'FORBIDDEN', `publish requests on ${topics.clientRequest(client.id)}: replies go to the publisher's own client id`));
      return;
    }
    const payload = packet.payload;
    const size = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
    if (size > maxPayloadBytes) {
      reply(client.id, errorReply(null, null, 'PAYLOAD_TOO_LARGE', `request has ${size} bytes (limit ${maxPayloadBytes})`));
      return;
    }
    const parsed = parsePayload(RequestSchema, payload);
    if (!parsed.ok) {
      const raw = (parsed.raw ?? {}) as { id?: unknown; device?: unknown };
      const id = typeof raw.id === 'string' ? raw.id : null;
      const device = typeof raw.device === 'string' ? raw.device : null;
      log.debug({ clientId: client.id, problem: parsed.message }, 'bad request');
      reply(client.id, errorReply(id, device, 'BAD_REQUEST', parsed.message));
      return;
    }
    const clientId = client.id;
    const principal = principalOf(client);
    const { actor, kind } = principal ? actorOf(principal) : { actor: clientId, kind: 'unknown' };
    const remote = remoteOf(client);
    const origin = { clientId, via: 'mqtt' as const, actor, actorKind: kind, remote };
    if (!principal || !canRunCommands(principal)) {
      reply(clientId, dispatcher.refuse(parsed.value, origin, 'FORBIDDEN', `${actor} may not run commands (role ${principal && 'role' in principal ? principal.role : 'none'})`));
      return;
    }
    void dispatcher.request(parsed.value, origin).then((answer) => reply(clientId, answer));
  };

  broker.on('publish', onPublish);
  return {
    close() {
      broker.off('publish', onPublish);
    },
  };
}
