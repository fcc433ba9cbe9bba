import { createRequire } from 'node:module';

/**
 * A cap on the size of MQTT packets. The broker's parser buffers a packet until all of it has
 * arrived, so a client that declares a 200 MB packet would make the hub hold 200 MB. This
 * reads only the fixed headers as bytes go by (type byte, then the remaining length, a
 * varint of up to 4 bytes) and stops a connection the moment it declares too much.
 */
export class PacketSizeGuard {
  private state: 'type' | 'length' | 'body' = 'type';
  private length = 0;
  private multiplier = 1;
  private lengthBytes = 0;
  private left = 0;

  constructor(private readonly maxBytes: number) {}

  /** Follows `chunk`; returns the declared size of an oversized packet, or null while all is well. */
  feed(chunk: Uint8Array): number | null {
    let i = 0;
    while (i < chunk.length) {
      if (this.state === 'body') {
        const step = Math.min(this.left, chunk.length - i);
        this.left -= step;
        i += step;
        if (this.left === 0) this.state = 'type';
        continue;
      }
      const byte = chunk[i++]!;
      if (this.state === 'type') {
        this.state = 'length';
        this.length = 0;
        this.multiplier = 1;
        this.lengthBytes = 0;
        continue;
      }
      this.length += (byte & 0x7f) * this.multiplier;
      this.multiplier *= 128;
      this.lengthBytes++;
      if (byte & 0x80) {
        // A fifth length byte is malformed; the parser rejects it, but stop counting here.
        if (this.lengthBytes >= 4) return this.length;
        continue;
      }
      if (this.length > this.maxBytes) return this.length;
      this.left = this.length;
      this.state = this.left === 0 ? 'type' : 'body';
    }
    return null;
  }
}

/** What limitPacketSize needs of an Aedes client (its parser is not in Aedes' typings). */
interface ParsingClient {
  _parser: MqttParser;
  close(): void;
}

/** mqtt-packet's parser, as far as it is slimmed here. */
interface MqttParser {
  parse(chunk: Uint8Array): unknown;
  _resetState(): void;
  _list: unknown;
  settings: { cmd?: string; protocolVersion?: number; bridgeMode?: boolean };
}

/**
 * The parser's byte queue without a stream around it. mqtt-packet keeps its unparsed bytes in
 * a BufferListStream, a full Duplex (two stream states, listeners) of which it uses only the
 * list methods; the plain BufferList of the same package has them all. Taken from the copy
 * mqtt-packet itself loads.
 */
const requireFromParser = createRequire(createRequire(import.meta.url).resolve('mqtt-packet'));
const { BufferList } = requireFromParser('bl') as { BufferList: new () => unknown };

/**
 * Per-connection memory the parser need not keep, a few hundred bytes of each of tens of
 * thousands of connections: the stream around its byte queue, and the whole CONNECT packet
 * (credentials, will) it keeps as its settings where it reads only the protocol version and
 * bridge mode.
 */
function slimParser(parser: MqttParser): () => void {
  const reset = parser._resetState.bind(parser);
  parser._resetState = () => {
    reset();
    parser._list = new BufferList();
  };
  parser._list = new BufferList();
  return () => {
    const settings = parser.settings;
    if (settings.cmd === 'connect') parser.settings = { protocolVersion: settings.protocolVersion, bridgeMode: settings.bridgeMode };
  };
}

/**
 * Puts the guard in front of a client's parser. Every byte the broker reads goes through
 * `_parser.parse`, so this sees the stream exactly as the broker does, whatever carries it
 * (TCP, TLS, WebSocket).
 */
export function limitPacketSize(client: unknown, maxBytes: number, onRefused: (declared: number) => void): void {
  const target = client as ParsingClient;
  const parser = target._parser;
  const parse = parser.parse.bind(parser);
  const afterParse = slimParser(parser);
  const guard = new PacketSizeGuard(maxBytes);
  let refused = false;
  parser.parse = (chunk: Uint8Array) => {
    if (refused) return 0;
    const declared = guard.feed(chunk);
    if (declared === null) {
      const left = parse(chunk);
      afterParse();
      return left;
    }
    refused = true;
    onRefused(declared);
    target.close();
    return 0;
  };
}
