/**
 * Requests from clients of the external broker (PROTOCOL.md "Client request / reply"): a
 * Request on `P/clients/{cid}/request` gets its Reply on `P/clients/{cid}/response`; an MQTT 5
 * Request with a Response Topic gets it there instead, with the same Correlation Data. The
 * broker's ACL decides who may publish on `P/clients/{cid}/request` (the hub cannot see the
 * publisher on an external broker): docs/external-broker.md says how each broker is set up.
 */
import type { IPublishPacket } from 'mqtt';
import { errorReply, type Dispatcher, type Origin } from '../dispatcher.js';
import type { Logger } from '../log.js';
import { idProblem } from '../protocol/ids.js';
import { RequestSchema, parsePayload, type Reply } from '../protocol/schemas.js';
import type { Topics } from '../protocol/topics.js';
import type { Uplink } from './uplink.js';

export interface ExternalRequestsOptions {
  uplink: Uplink;
  topics: Topics;
  dispatcher: Dispatcher;
  maxPayloadBytes: number;
  log: Logger;
}

/** Longest Response Topic the hub publishes a Reply on. */
const RESPONSE_TOPIC_MAX = 1024;

/**
 * Why the hub will not publish a Reply on this Response Topic, or null. The hub may publish
 * anywhere, so the topic is confined: no wildcards and no `$` topics, and nothing under the
 * prefix but the requester's own `P/clients/{cid}/…` (never a device's command topic, say).
 */
export function responseTopicProblem(topic: string, clientId: string, topics: Topics): string | null {
  if (topic.length === 0) return 'is empty';
  if (Buffer.byteLength(topic) > RESPONSE_TOPIC_MAX) return `is longer than ${RESPONSE_TOPIC_MAX} bytes`;
  if (/[+#\u0000]/.test(topic)) return 'must not contain +, # or NUL';
  if (topic.startsWith('$')) return 'must not start with $';
  const own = `${topics.prefix}/clients/${clientId}/`;
  if ((topic === topics.prefix || topic.startsWith(`${topics.prefix}/`)) && !topic.startsWith(own)) {
    return `must be outside ${topics.prefix}/ or under the requester's own ${own}`;
  }
  return null;
}

export function bridgeExternalRequests({ uplink, topics, dispatcher, maxPayloadBytes, log }: ExternalRequestsOptions): { onRequest(clientId: string, packet: IPublishPacket): void } {
  const send = (topic: string, body: Reply, correlationData?: Buffer) => {
    const properties = correlationData !== undefined && uplink.protocolVersion === 5 ? { correlationData } : undefined;
    uplink.publish(topic, JSON.stringify(body), { qos: 1, ...(properties ? { properties } : {}) });
  };

  return {
    onRequest(clientId, packet) {
      // The topic's client id is where the Reply goes; one that is not an id has no such place.
      const problem = idProblem(clientId);
      if (problem) {
        log.warn({ code: 'BAD_REQUEST', clientId: clientId.slice(0, 200) }, `request on a topic whose client id ${problem}: dropped`);
        return;
      }
      const responseTopic = packet.properties?.responseTopic;
      const correlationData = packet.properties?.correlationData;
      let replyTopic = topics.clientResponse(clientId);
      if (responseTopic !== undefined) {
        const why = responseTopicProblem(responseTopic, clientId, topics);
        if (why) {
          log.warn({ code: 'FORBIDDEN', clientId, responseTopic: responseTopic.slice(0, 200) }, `response topic refused: ${why}`);
          send(replyTopic, errorReply(null, null, 'FORBIDDEN', `response topic ${why}`), correlationData);
          return;
        }
        replyTopic = responseTopic;
      }
      const reply = (body: Reply) => send(replyTopic, body, correlationData);
      const payload = packet.payload as Buffer;
      if (payload.length > maxPayloadBytes) {
        reply(errorReply(null, null, 'PAYLOAD_TOO_LARGE', `request has ${payload.length} bytes (limit ${maxPayloadBytes})`));
        return;
      }
      const parsed = parsePayload(RequestSchema, payload);
      if (!parsed.ok) {
        const raw = (parsed.raw ?? {}) as { id?: unknown; device?: unknown };
        reply(errorReply(typeof raw.id === 'string' ? raw.id : null, typeof raw.device === 'string' ? raw.device : null, 'BAD_REQUEST', parsed.message));
        return;
      }
      // Known by its client id alone: the broker authenticated it and let it publish here.
      const origin: Origin = { clientId, via: 'mqtt', actor: clientId, actorKind: 'broker-client', remote: null };
      void dispatcher.request(parsed.value, origin).then(reply);
    },
  };
}
