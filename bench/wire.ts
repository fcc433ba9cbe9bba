/**
 * A lean MQTT 3.1.1 connection on mqtt-packet over a raw TCP socket or a WebSocket: tens of
 * thousands of them fit in a few processes, where one MQTT.js client per device would not.
 * Only what the bench needs: CONNECT (with a will), SUBSCRIBE, QoS 0/1 PUBLISH (retained or
 * not), PUBACK, PINGREQ.
 */
import { connect as tcpConnect, type Socket } from 'node:net';
import mqttPacket from 'mqtt-packet';
import type { IConnackPacket, IPublishPacket, ISubackPacket, Packet } from 'mqtt-packet';
import { WebSocket } from 'ws';

export const TOPIC_PREFIX = 'rhizosphere';

export const topics = {
  command: (id: string) => `${TOPIC_PREFIX}/devices/${id}/command`,
  response: (id: string) => `${TOPIC_PREFIX}/devices/${id}/response`,
  presence: (id: string) => `${TOPIC_PREFIX}/devices/${id}/presence`,
  allResponses: `${TOPIC_PREFIX}/devices/+/response`,
  clientRequest: (id: string) => `${TOPIC_PREFIX}/clients/${id}/request`,
  clientResponse: (id: string) => `${TOPIC_PREFIX}/clients/${id}/response`,
  allJobStatuses: `${TOPIC_PREFIX}/jobs/+/status`,
};

export interface ConnectOptions {
  /** mqtt://HOST:PORT or ws://HOST:PORT/PATH */
  url: string;
  clientId: string;
  username?: string | undefined;
  password?: string | undefined;
  clean?: boolean;
  keepalive?: number;
  localAddress?: string | undefined;
  /** The will the broker publishes when the connection ends without a DISCONNECT. */
  will?: { topic: string; payload: string; qos: 0 | 1; retain: boolean } | undefined;
}

export interface ConnHandlers {
  /** CONNACK arrived (returnCode 0 = accepted). */
  onConnack?(code: number): void;
  onSuback?(granted: number[]): void;
  onPublish?(topic: string, payload: Buffer): void;
  /** The transport closed or failed; `error` is set when it never opened or failed. */
  onClose?(error: NodeJS.ErrnoException | undefined): void;
}

/** The two transports behind one small surface. */
interface Link {
  write(data: Buffer): void;
  close(): void;
}

function openTcp(url: URL, localAddress: string | undefined, onOpen: () => void, onData: (d: Buffer) => void, onClose: (e?: NodeJS.ErrnoException) => void): Link {
  const socket: Socket = tcpConnect({ host: url.hostname, port: Number(url.port || 1883), localAddress, noDelay: true });
  let failed: NodeJS.ErrnoException | undefined;
  socket.on('connect', onOpen);
  socket.on('data', onData);
  socket.on('error', (e: NodeJS.ErrnoException) => (failed = e));
  socket.on('close', () => onClose(failed));
  return { write: (d) => void socket.write(d), close: () => socket.destroy() };
}

function openWs(url: URL, localAddress: string | undefined, onOpen: () => void, onData: (d: Buffer) => void, onClose: (e?: NodeJS.ErrnoException) => void): Link {
  const ws = new WebSocket(url, 'mqtt', { localAddress, perMessageDeflate: false });
  ws.binaryType = 'nodebuffer';
  let failed: NodeJS.ErrnoException | undefined;
  ws.on('open', onOpen);
  ws.on('message', (d: Buffer) => onData(d));
  ws.on('error', (e: NodeJS.ErrnoException) => (failed = e));
  ws.on('close', () => onClose(failed));
  return {
    write: (d) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(d);
    },
    close: () => ws.terminate(),
  };
}

export class MqttConn {
  private link: Link | null = null;
  private readonly parser = mqttPacket.parser({ protocolVersion: 4 });
  private nextId = 1;
  open = false;
  lastWrite = 0;

  constructor(
    private readonly options: ConnectOptions,
    private readonly handlers: ConnHandlers,
  ) {
    this.parser.on('packet', (p: Packet) => this.onPacket(p));
    this.parser.on('error', () => this.close());
  }

  start(): void {
    const url = new URL(this.options.url);
    const open = url.protocol === 'ws:' ? openWs : openTcp;
    this.link = open(
      url,
      this.options.localAddress,
      () => {
        this.open = true;
        const { clientId, username, password, clean = false, keepalive = 60, will } = this.options;
        this.send({
          cmd: 'connect',
          protocolId: 'MQTT',
          protocolVersion: 4,
          clientId,
          clean,
          keepalive,
          username,
          password: password === undefined ? undefined : Buffer.from(password),
          ...(will && { will: { topic: will.topic, payload: Buffer.from(will.payload), qos: will.qos, retain: will.retain } }),
        });
      },
      (d) => this.parser.parse(d),
      (error) => {
        this.open = false;
        this.handlers.onClose?.(error);
      },
    );
  }

  subscribe(topic: string, qos: 0 | 1 = 1): void {
    this.send({ cmd: 'subscribe', messageId: this.messageId(), subscriptions: [{ topic, qos }] });
  }

  publish(topic: string, payload: string | Buffer, qos: 0 | 1 = 1, retain = false): void {
    this.send({ cmd: 'publish', topic, payload, qos, retain, dup: false, messageId: qos > 0 ? this.messageId() : undefined } as IPublishPacket);
  }

  ping(): void {
    this.send({ cmd: 'pingreq' });
  }

  close(): void {
    this.link?.close();
  }

  private send(packet: Packet): void {
    this.lastWrite = Date.now();
    this.link?.write(mqttPacket.generate(packet));
  }

  private messageId(): number {
    const id = this.nextId;
    this.nextId = id >= 65535 ? 1 : id + 1;
    return id;
  }

  private onPacket(packet: Packet): void {
    switch (packet.cmd) {
      case 'connack':
        this.handlers.onConnack?.((packet as IConnackPacket).returnCode ?? 0);
        break;
      case 'suback':
        this.handlers.onSuback?.((packet as ISubackPacket).granted as number[]);
        break;
      case 'publish': {
        const p = packet as IPublishPacket;
        if (p.qos === 1 && p.messageId !== undefined) this.send({ cmd: 'puback', messageId: p.messageId });
        this.handlers.onPublish?.(p.topic, Buffer.isBuffer(p.payload) ? p.payload : Buffer.from(p.payload));
        break;
      }
      default:
        // PUBACK and PINGRESP need nothing.
        break;
    }
  }
}

/**
 * Resolves on CONNACK 0 and SUBACK of every filter; rejects on refusal or close. The
 * connection pings by itself when it has sent nothing for half its keepalive: a client that
 * only listens (a long fan-out) would otherwise be dropped by the broker.
 */
export function connectAndSubscribe(options: ConnectOptions, filters: string[], onPublish: (topic: string, payload: Buffer) => void, onLost?: () => void): Promise<MqttConn> {
  const halfKeepaliveMs = ((options.keepalive ?? 60) * 1000) / 2;
  const pinger = setInterval(() => conn.open && Date.now() - conn.lastWrite > halfKeepaliveMs && conn.ping(), 1000);
  pinger.unref();
  let conn: MqttConn;
  return new Promise((resolve, reject) => {
    let settled = false;
    let awaiting = filters.length;
    conn = new MqttConn(options, {
      onConnack: (code) => {
        if (code !== 0) {
          settled = true;
          conn.close();
          reject(new Error(`${options.clientId}: CONNACK return code ${code}`));
          return;
        }
        for (const f of filters) conn.subscribe(f);
        if (filters.length === 0) {
          settled = true;
          resolve(conn);
        }
      },
      onSuback: (granted) => {
        if (settled) return;
        if (granted.some((g) => g >= 0x80)) {
          settled = true;
          reject(new Error(`${options.clientId}: subscription refused`));
        } else if (--awaiting === 0) {
          settled = true;
          resolve(conn);
        }
      },
      onPublish,
      onClose: (error) => {
        clearInterval(pinger);
        if (!settled) reject(new Error(`${options.clientId}: connection closed${error ? `: ${error.message}` : ''}`));
        else onLost?.();
        settled = true;
      },
    });
    conn.start();
  });
}
