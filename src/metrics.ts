/**
 * Prometheus metrics of one hub (README "Metrics"). The hot paths (every MQTT packet, every
 * command) only add to numbers; gauges (devices connected, commands in flight, connections,
 * jobs) are read from their owners when Prometheus scrapes. Labels are low-cardinality
 * (transport, reason, order, outcome, direction): never a device or client id.
 */
import type { Aedes, AedesPublishPacket, Client, PublishPacket } from 'aedes';
import type { Request, Response } from 'express';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { CommandRequest, Origin } from './dispatcher.js';
import { isErrorCode } from './errors.js';
import type { Logger } from './log.js';
import type { DeviceEntry, OfflineReason, Presence } from './presence.js';
import { ORDERS, type Reply, type Transport } from './protocol/schemas.js';

export const METRIC_PREFIX = 'rhizosphere_';

const TRANSPORTS: readonly Transport[] = ['mqtt', 'mqtt-ws', 'legacy-ws'];

/** 1 ms to 60 s: a quick `exec_bash` answers in milliseconds, the default timeout is 60 s. */
const COMMAND_BUCKETS_SECONDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

let processRegistry: Registry | undefined;

/**
 * Memory, CPU, open file descriptors, event-loop lag, GC: they belong to the process, not to
 * a hub, so they are collected once per process and shown by every hub in it. prom-client's
 * collectors (an event-loop monitor, a GC observer) cannot be stopped: one set per hub would
 * pile up in a process that starts many hubs (the tests). The registry is still not the
 * global one, so an application embedding the hub keeps its own.
 */
function processMetrics(): Registry {
  if (!processRegistry) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry, prefix: METRIC_PREFIX });
    // These list every handle and resource of the process on each scrape (each connection is
    // one): at 19000 devices a scrape took about 100 ms, most of it here. The hub's own gauges
    // count its connections; process_open_fds stays (the file limit is what runs out).
    for (const name of ['nodejs_active_handles', 'nodejs_active_handles_total', 'nodejs_active_resources', 'nodejs_active_resources_total']) {
      processRegistry.removeSingleMetric(`${METRIC_PREFIX}${name}`);
    }
  }
  return processRegistry;
}

/** What the scrape-time gauges read; filled in by `watch` once the hub's parts exist. */
export interface MetricSources {
  presence: Presence;
  broker: Aedes;
  /** Commands in flight (the dispatcher's `inflight`). */
  inflight: () => number;
  /** Fleet jobs running (the job runner's `running`). */
  jobsRunning: () => number;
  /** The hub's own commands and Replies so far, by the way they went (src/direct-delivery.ts). */
  hubPublishes?: { direct: number; broker: number; incomingDirect: number; incomingBroker: number };
}

const payloadBytes = (payload: Buffer | string) => (typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length);

export class HubMetrics {
  /** Hub metrics only; `exposed` adds the process metrics. */
  readonly registry = new Registry();
  private readonly exposed: Registry;
  private sources: MetricSources | null = null;
  private readonly detach: (() => void)[] = [];

  /** Per-packet tallies: plain numbers on the hot path, copied into the counters at scrape time. */
  private readonly mqtt = { messagesIn: 0, messagesOut: 0, bytesIn: 0, bytesOut: 0 };

  private readonly connects: Counter<'transport'>;
  private readonly disconnects: Counter<'reason'>;
  private readonly commands: Counter<'order' | 'outcome'>;
  private readonly commandSeconds: Histogram<'order'>;

  constructor() {
    const registers = [this.registry];
    const metrics = this;
    new Gauge({
      name: `${METRIC_PREFIX}devices_connected`,
      help: 'Devices online, by transport (counted from the connections table at scrape time)',
      labelNames: ['transport'],
      registers,
      collect() {
        const online = metrics.onlineByTransport();
        for (const transport of TRANSPORTS) this.set({ transport }, online[transport]);
      },
    });
    new Gauge({
      name: `${METRIC_PREFIX}devices_known`,
      help: 'Devices in the connections table, online or not',
      registers,
      collect() {
        this.set(metrics.sources?.presence.table.size ?? 0);
      },
    });
    this.connects = new Counter({ name: `${METRIC_PREFIX}device_connects_total`, help: 'Devices that came online, by transport', labelNames: ['transport'], registers });
    this.disconnects = new Counter({ name: `${METRIC_PREFIX}device_disconnects_total`, help: 'Devices that went offline, by reason', labelNames: ['reason'], registers });
    this.commands = new Counter({
      name: `${METRIC_PREFIX}commands_total`,
      help: 'Commands settled, by order and outcome (ok, or the error code)',
      labelNames: ['order', 'outcome'],
      registers,
    });
    this.commandSeconds = new Histogram({
      name: `${METRIC_PREFIX}command_duration_seconds`,
      help: 'Time from a command reaching the hub to its Reply, by order',
      labelNames: ['order'],
      buckets: COMMAND_BUCKETS_SECONDS,
      registers,
    });
    new Gauge({
      name: `${METRIC_PREFIX}commands_inflight`,
      help: 'Commands sent and not yet answered',
      registers,
      collect() {
        this.set(metrics.sources?.inflight() ?? 0);
      },
    });
    new Counter({
      name: `${METRIC_PREFIX}mqtt_messages_total`,
      help: 'MQTT PUBLISH packets: in = accepted from clients; out = delivered to subscribers (one per subscriber)',
      labelNames: ['direction'],
      registers,
      collect() {
        this.reset();
        this.inc({ direction: 'in' }, metrics.mqtt.messagesIn);
        this.inc({ direction: 'out' }, metrics.mqtt.messagesOut);
      },
    });
    // Which way packets went (src/direct-delivery.ts): straight, or through the broker's publish path.
    const pathCounter = (name: string, help: string, read: (counts: NonNullable<MetricSources['hubPublishes']>) => { direct: number; broker: number }) =>
      new Counter({
        name: `${METRIC_PREFIX}${name}`,
        help,
        labelNames: ['path'],
        registers,
        collect() {
          this.reset();
          const counts = metrics.sources?.hubPublishes;
          const { direct, broker } = counts ? read(counts) : { direct: 0, broker: 0 };
          this.inc({ path: 'direct' }, direct);
          this.inc({ path: 'broker' }, broker);
        },
      });
    pathCounter(
      'mqtt_hub_publishes_total',
      'Commands and Replies the hub published: path direct = straight to their only subscriber, broker = through the broker (somebody else subscribes too)',
      (c) => ({ direct: c.direct, broker: c.broker }),
    );
    pathCounter(
      'mqtt_client_publishes_total',
      'Requests and Responses the hub alone reads: path direct = straight to the hub (nobody subscribes to their topic), broker = through the broker (somebody does)',
      (c) => ({ direct: c.incomingDirect, broker: c.incomingBroker }),
    );
    new Counter({
      name: `${METRIC_PREFIX}mqtt_payload_bytes_total`,
      help: 'Payload bytes of the PUBLISH packets counted in mqtt_messages_total',
      labelNames: ['direction'],
      registers,
      collect() {
        this.reset();
        this.inc({ direction: 'in' }, metrics.mqtt.bytesIn);
        this.inc({ direction: 'out' }, metrics.mqtt.bytesOut);
      },
    });
    new Gauge({
      name: `${METRIC_PREFIX}mqtt_connections`,
      help: 'Connected MQTT clients: devices, consoles, tools (over TCP, TLS and WebSocket)',
      registers,
      collect() {
        this.set(metrics.sources?.broker.connectedClients ?? 0);
      },
    });
    new Gauge({
      name: `${METRIC_PREFIX}jobs_running`,
      help: 'Fleet jobs running',
      registers,
      collect() {
        this.set(metrics.sources?.jobsRunning() ?? 0);
      },
    });
    this.exposed = Registry.merge([processMetrics(), this.registry]);
  }

  /**
   * The broker's `authorizeForward` hook: Aedes calls it once per PUBLISH it is about to write
   * to a subscriber (live, retained or queued), so this counts deliveries, not publishes.
   */
  readonly forwarded = (_client: Client, packet: AedesPublishPacket): AedesPublishPacket => {
    this.mqtt.messagesOut++;
    this.mqtt.bytesOut += payloadBytes(packet.payload);
    return packet;
  };

  /** The dispatcher's settled hook: once per command, answered or refused. */
  readonly commandSettled = (request: CommandRequest, _origin: Origin, reply: Reply, durationMs: number): void => {
    // Refused requests may carry anything: keep the label set closed.
    const order = ORDERS.includes(request.order) ? request.order : 'other';
    const outcome = reply.status === 'ok' ? 'ok' : isErrorCode(reply.code) ? reply.code : 'other';
    this.commands.inc({ order, outcome });
    this.commandSeconds.observe({ order }, durationMs / 1000);
  };

  /** Starts counting the broker's packets and presence changes, and reading the gauges' sources. */
  watch(sources: MetricSources): void {
    this.sources = sources;
    const { presence, broker } = sources;
    const published = (packet: PublishPacket, client: Client | null) => {
      // Without a client it is the hub's own publish (statuses, commands, $SYS), counted on delivery.
      if (!client) return;
      this.mqtt.messagesIn++;
      this.mqtt.bytesIn += payloadBytes(packet.payload);
    };
    const online = (device: { transport: Transport | null }) => this.connects.inc({ transport: device.transport ?? 'unknown' });
    const offline = (_device: unknown, reason: OfflineReason) => this.disconnects.inc({ reason });
    broker.on('publish', published);
    presence.on('online', online);
    presence.on('offline', offline);
    this.detach.push(
      () => broker.off('publish', published),
      () => presence.off('online', online),
      () => presence.off('offline', offline),
    );
  }

  close(): void {
    for (const undo of this.detach.splice(0)) undo();
  }

  get contentType(): string {
    return this.exposed.contentType;
  }

  /** The exposition text: hub metrics and the process's. */
  text(): Promise<string> {
    return this.exposed.metrics();
  }

  /** `GET /metrics`, behind the REST API's authentication. */
  handler(log: Logger) {
    return async (_req: Request, res: Response) => {
      try {
        const body = await this.text();
        res.setHeader('content-type', this.contentType);
        res.send(body);
      } catch (error) {
        log.error({ err: error }, 'cannot collect metrics');
        res.status(500).json({ status: 'error', code: 'INTERNAL', message: 'cannot collect metrics' });
      }
    };
  }

  private onlineByTransport(): Record<Transport, number> {
    const counts: Record<Transport, number> = { mqtt: 0, 'mqtt-ws': 0, 'legacy-ws': 0 };
    const table: ReadonlyMap<string, DeviceEntry> | undefined = this.sources?.presence.table;
    if (table) for (const entry of table.values()) if (entry.online && entry.transport) counts[entry.transport]++;
    return counts;
  }
}
