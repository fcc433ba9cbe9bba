/**
 * Every MQTT connection, whatever carries it (TCP, TLS, WebSocket), enters the broker here,
 * behind the same two guards: what is written to it is coalesced and bounded (outbound.ts),
 * and a packet declaring more than the size limit closes it before it is buffered
 * (packet-limit.ts).
 */
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import type { Aedes, Client } from 'aedes';
import type { Logger } from './log.js';
import { governWrites } from './outbound.js';
import { limitPacketSize } from './packet-limit.js';

export interface ConnectionLimits {
  /** Largest MQTT packet accepted, in bytes. */
  maxPacketBytes: number;
  /** Unsent bytes a connection may have before it is closed as too slow. */
  maxBufferedBytes: number;
}

/** The function each listener hands its new connections to. */
export function mqttConnectionHandler(broker: Aedes, { maxPacketBytes, maxBufferedBytes }: ConnectionLimits, log: Logger) {
  return (stream: Duplex, req?: IncomingMessage): void => {
    let client: Client | undefined;
    governWrites(stream, {
      maxBufferedBytes,
      onTooSlow: (buffered) =>
        log.warn(
          { code: 'BUSY', clientId: client?.id, buffered, limit: maxBufferedBytes },
          'connection closed: the client reads too slowly (its unsent data passed --max-client-buffer-bytes)',
        ),
    });
    const accepted = broker.handle(stream, req);
    client = accepted;
    limitPacketSize(accepted, maxPacketBytes, (declared) =>
      log.warn({ code: 'PAYLOAD_TOO_LARGE', clientId: accepted.id, declared, limit: maxPacketBytes }, 'connection closed: MQTT packet over the size limit'),
    );
  };
}
