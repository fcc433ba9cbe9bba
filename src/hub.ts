/**
 * The composition root: `startHub()` wires broker, presence, dispatcher, bridges and HTTP,
 * starts them in order and `close()` stops them in reverse. No module-global state, so a
 * process (a test, say) may run several hubs.
 */
import { EventEmitter } from 'node:events';
import { createServer as createTcpServer } from 'node:net';
import { join } from 'node:path';
import { Aedes, type Client } from 'aedes';
import { indexedMemoryPersistence } from './retained-index.js';
import { ConnectionGate, listen, stopListening, withinBudget } from './listen.js';
import { leaveConnectionsToExit, skipPerClientTeardown } from './broker-shutdown.js';
import { mqttConnectionHandler } from './mqtt-connections.js';
import { attachLegacyBridge } from '../bridge/legacy.js';
import { bridgeMqttRequests } from '../bridge/mqtt-requests.js';
import { directDelivery } from './direct-delivery.js';
import { keepSessionQueuesLocal } from './cluster/session-queues.js';
import { restRouter, type HubInfo } from '../bridge/rest.js';
import { createAccess } from './access.js';
import { ClusterUnreachable, defaultNodeId, openCluster, type ClusterNode } from './cluster/index.js';
import { commandIdPrefix } from './cluster/response-routes.js';
import { Authenticator } from './auth/authenticator.js';
import { configFromOptions, splitList, type HubConfig } from './config.js';
import { Dispatcher, type CommandRequest, type Origin, type SettledHook } from './dispatcher.js';
import { HubError, StartError } from './errors.js';
import { EveryMinute } from './every-minute.js';
import { JobRunner } from './jobs/runner.js';
import { HandlerHost, HandlerStartError } from './handlers/loader.js';
import { jobsRouter } from '../bridge/jobs-rest.js';
import { recordingsRouter } from '../bridge/recordings-rest.js';
import { deviceHttpRouter } from '../bridge/device-http.js';
import { brokerHooksRouter, loadHookSecret } from '../bridge/broker-hooks.js';
import { agentRouter, AgentDistribution, DEFAULT_AGENT_FILE } from './agent-distribution.js';
import { AgentUpgrader } from './agent-upgrade.js';
import { Scheduler } from './jobs/scheduler.js';
import { ArtifactStore } from './jobs/artifacts.js';
import { Deployer } from './deploy.js';
import { artifactsRouter } from '../bridge/artifacts-rest.js';
import { schedulesRouter } from '../bridge/schedules-rest.js';
import { AlertService } from './alerts/service.js';
import { alertsRouter } from '../bridge/alerts-rest.js';
import { consoleContentSecurityPolicy, mountConsole } from './console.js';
import { createHttpFront, mqttOverWebSocket } from './http.js';
import { PACKAGE_VERSION } from './package-root.js';
import { createLogger, type Logger } from './log.js';
import { declaredTagsListener } from './device-tags.js';
import { HealthTelemetry } from './health.js';
import { HealthStore } from './store/health.js';
import { healthRouter } from '../bridge/health-rest.js';
import { DeviceStateService } from './device-state.js';
import { stateRouter } from '../bridge/state-rest.js';
import { HubMetrics } from './metrics.js';
import { watchMqttDevices } from './mqtt-devices.js';
import { brokerPort, brokerUrls } from './external/broker-urls.js';
import { startExternalBroker, type ExternalBroker } from './external/index.js';
import type { Uplink } from './external/uplink.js';
import { loadBrokerCredentials } from './external/credentials.js';
import { releaseDynsecOutbox, startDynsecSync } from './external/dynsec.js';
import { Presence, toDeviceInfo, type DeviceEntry, type DeviceInfo, type OfflineReason } from './presence.js';
import { idProblem } from './protocol/ids.js';
import { ORDERS, validate, type CommandResult, type Order, type Reply, type Status } from './protocol/schemas.js';
import { resolveSelector, SelectorSchema } from './jobs/selector.js';
import { Topics } from './protocol/topics.js';
import { startTunnelRelay } from './tunnels/relay.js';
import { Readiness } from './readiness.js';
import { DeviceRegistry } from './registry.js';
import { watchCredentials } from './revocation.js';
import { ensureFirstAdmin, openStores, type Stores } from './store/stores.js';
import { certificateIdOf, createHubHttpsServer, createMqttsServer, loadTls, warnAboutValidity, type TlsMaterial } from './tls.js';
import { requirePrincipal, sessionRouter } from './web-auth.js';

/** Start failures are StartErrors (src/errors.ts); the CLI prints their one-line message. */
export { StartError };

export interface HubOptions extends Partial<HubConfig> {
  /** A logger to use instead of one made from `logLevel`. */
  logger?: Logger;
  /** How long a device has to answer a tunnel's open (default 10 s; shorter in tests). */
  tunnelOpenTimeoutMs?: number;
  /** The clock job windows, schedules and alerts go by (default Date.now; tests move it). */
  clock?: () => number;
}

export interface HubEvents {
  online: [device: DeviceInfo];
  offline: [device: DeviceInfo, reason: OfflineReason];
}

/** What `exec()` takes: a bash command line, or the order and timeout too. */
export type ExecCommand = string | { order?: Order; cmd_str: string; timeout_ms?: number };

const CLOSE_BUDGET_MS = 4000;

export interface CloseOptions {
  /**
   * The process exits right after (the CLI on SIGTERM and SIGINT). A standalone hub then
   * records its devices offline and leaves their connections to the kernel, which closes them
   * all at exit, instead of closing 19000 of them one by one (src/broker-shutdown.ts).
   */
  processExits?: boolean;
}

/** One part's step in `close()`. */
type TeardownStep = (options: CloseOptions) => void | Promise<void>;
/** On an external broker: how long after joining the retained births are taken to have come in. */
const BIRTHS_SETTLE_MS = 2000;
/** Aedes's CONNACK return code (and error code) for an MQTT 5 CONNECT. */
const UNACCEPTABLE_PROTOCOL_VERSION = 1;

/** `GET /api/hub`'s view of the external broker: the console shows it in its top bar. */
function brokerInfo(urls: readonly string[], uplink: Uplink): NonNullable<HubInfo['broker']> {
  const bare = (url: string) => url.replace(/\/$/, '');
  return {
    urls: urls.map(bare),
    get url() {
      return bare(uplink.url);
    },
    get connected() {
      return uplink.connected;
    },
    get reason() {
      return uplink.unavailableReason;
    },
    get mqtt() {
      return uplink.connected ? (uplink.protocolVersion === 5 ? '5' : '3.1.1') : null;
    },
  };
}

/** The live ports; `mqtts` only when TLS is on. On an external broker (`--broker`), `mqtt` is the broker's port. */
export interface HubPorts {
  mqtt: number;
  mqtts?: number;
  http: number;
}

/** Where to reach the hub; `mqtts` only when TLS is on, and then `ws` and `http` are `wss://` and `https://`. */
export interface HubUrls {
  mqtt: string;
  mqtts?: string;
  ws: string;
  http: string;
}

export class Hub extends EventEmitter<HubEvents> {
  /** The live ports (useful when 0 was asked for). */
  readonly ports: HubPorts;
  /** On the first start (empty database): the password of the admin user created then, to show once. */
  initialAdminPassword: string | null = null;
  /**
   * Health telemetry (docs/protocol.md "Health telemetry"): each device's latest report
   * (`latest(id)`, `latestAll()`, the 'report' event), its history (`series(id, …)`) and the
   * fleet's (`fleet(…)`). Set by startHub.
   */
  health!: HealthTelemetry;
  /** Schedules (docs/protocol.md "Schedules"): jobs created at a time or on a cron expression. Set by startHub. */
  schedules!: Scheduler;
  /** Alerts and webhooks (docs/protocol.md "Alerts and webhooks"): rules, the alerts they fire, deliveries. Set by startHub. */
  alerts!: AlertService;

  constructor(
    readonly config: HubConfig,
    readonly log: Logger,
    readonly topics: Topics,
    readonly broker: Aedes,
    private readonly presence: Presence,
    private readonly dispatcher: Dispatcher,
    /** The hub's database: devices, users, tokens, sessions, audit, jobs. */
    readonly stores: Stores,
    /** Fleet jobs: one command to many devices (PROTOCOL.md "Fleet jobs"). */
    readonly jobs: JobRunner,
    /** The server-side handlers the config names (docs/handlers.md): `list()`, `stop(name)`. */
    readonly handlers: HandlerHost,
    ports: HubPorts,
    /** Teardown steps, in the order they run. */
    private readonly teardown: TeardownStep[],
    /** On an external broker (`--broker`): the hub's connection to it; null with the embedded broker. */
    readonly external: ExternalBroker | null = null,
    /** Desired and reported state of devices (docs/protocol.md "Desired state"): `get(id)`, `setDesired(id, patch, options)`. */
    readonly state: DeviceStateService,
  ) {
    super();
    this.ports = ports;
    presence.on('online', (device) => this.emit('online', device));
    presence.on('offline', (device, reason) => this.emit('offline', device, reason));
  }

  get urls(): HubUrls {
    const host = this.config.host.includes(':') ? `[${this.config.host}]` : this.config.host;
    const reachable = host === '0.0.0.0' ? '127.0.0.1' : host === '[::]' ? '[::1]' : host;
    const secure = this.ports.mqtts !== undefined;
    return {
      // On an external broker, devices connect there.
      mqtt: brokerUrls(this.config.broker)[0] ?? `mqtt://${reachable}:${this.ports.mqtt}`,
      ...(secure ? { mqtts: `mqtts://${reachable}:${this.ports.mqtts}` } : {}),
      ws: `${secure ? 'wss' : 'ws'}://${reachable}:${this.ports.http}/mqtt`,
      http: `${secure ? 'https' : 'http'}://${reachable}:${this.ports.http}`,
    };
  }

  /** The connections table: every known device, online or not, with its live link. Read-only. */
  get connections(): ReadonlyMap<string, DeviceEntry> {
    return this.presence.table;
  }

  devices(): DeviceInfo[] {
    return this.presence.list();
  }

  device(id: string): DeviceInfo | undefined {
    const entry = this.presence.get(id);
    return entry ? toDeviceInfo(entry) : undefined;
  }

  status(id: string): Status | undefined {
    const entry = this.presence.get(id);
    return entry ? this.presence.statusOf(entry) : undefined;
  }

  get inflight(): number {
    return this.dispatcher.inflight;
  }

  /** Sends a command and resolves with the Reply, success or error; never rejects. */
  request(request: CommandRequest, origin: Origin = { clientId: 'hub', via: 'api' }): Promise<Reply> {
    return this.dispatcher.request(request, origin);
  }

  /**
   * Runs a command on a device and resolves with what it produced; rejects with a HubError
   * whose `code` is the protocol's (DEVICE_OFFLINE, TIMEOUT, BUSY, …).
   */
  async exec(deviceId: string, command: ExecCommand, origin: Origin = { clientId: 'hub', via: 'api' }): Promise<CommandResult> {
    const { order = 'exec_bash', cmd_str, timeout_ms } = typeof command === 'string' ? { cmd_str: command } : command;
    const problem = idProblem(deviceId);
    if (problem) throw new HubError('BAD_REQUEST', `device ${problem}`);
    if (!ORDERS.includes(order)) throw new HubError('BAD_REQUEST', `order must be one of ${ORDERS.join(', ')}`);
    if (typeof cmd_str !== 'string' || cmd_str.length === 0) throw new HubError('BAD_REQUEST', 'cmd_str must be a non-empty string');
    const reply = await this.dispatcher.request({ device: deviceId, order, cmd_str, timeout_ms }, origin);
    if (reply.status === 'error') throw new HubError(reply.code, reply.message);
    const { result, error, exit_code, duration_ms, truncated } = reply;
    return { result, error, exit_code, duration_ms, truncated };
  }

  private closing: Promise<void> | null = null;

  /** Stops listening, answers commands in flight, disconnects everyone and saves state. */
  close(options: CloseOptions = {}): Promise<void> {
    this.closing ??= (async () => {
      for (const step of this.teardown) {
        try {
          await step(options);
        } catch (error) {
          this.log.warn({ err: error }, 'error while closing');
        }
      }
      this.log.info('hub closed');
    })();
    return this.closing;
  }
}

/** Runs each hook in turn; the dispatcher logs a hook that throws as an audit failure. */
function allOf(...hooks: SettledHook[]): SettledHook {
  return (request, origin, reply, durationMs) => {
    for (const hook of hooks) hook(request, origin, reply, durationMs);
  };
}

/** Every command, answered or refused, into the audit trail. */
function auditCommands(stores: Stores): SettledHook {
  return (request, origin, reply, durationMs) =>
    stores.audit.record({
      at: Date.now(),
      actor: origin.actor ?? origin.clientId,
      actorKind: origin.actorKind ?? origin.via,
      remote: origin.remote ?? null,
      action: 'command',
      device: request.device,
      order: request.order,
      cmdStr: request.cmd_str,
      outcome: reply.status === 'ok' ? 'ok' : reply.code,
      exitCode: reply.status === 'ok' ? reply.exit_code : null,
      durationMs,
      detail: { via: origin.via, clientId: origin.clientId },
    });
}



/** For the start line: whether devices may, or must, prove their id with a certificate. */
function clientCertificateMode(tls: TlsMaterial | null): 'required' | 'optional' | undefined {
  if (!tls?.ca) return undefined;
  return tls.requireClientCert ? 'required' : 'optional';
}


/** Connects to the cluster's Redis; one clear line (StartError) when it cannot be reached. */
async function startClusterNode(config: HubConfig, log: Logger): Promise<ClusterNode> {
  try {
    return await openCluster(config.cluster, config.nodeId || defaultNodeId(), log, undefined, { externalBroker: config.broker !== '' });
  } catch (error) {
    if (error instanceof ClusterUnreachable) throw new StartError(error.message, { cause: error });
    throw error;
  }
}

/**
 * Starts a hub: embedded broker, MQTT over TCP, HTTP (REST, /healthz, MQTT over WebSocket);
 * with a TLS certificate, MQTT over TLS too, and HTTPS instead of HTTP.
 */
export async function startHub(options: HubOptions = {}): Promise<Hub> {
  const { logger, tunnelOpenTimeoutMs, clock, ...settings } = options;
  const config = configFromOptions(settings);
  // Read before anything starts, so a bad certificate file leaves nothing to unwind.
  const tls = loadTls(config);
  const brokerCredentials = config.broker ? loadBrokerCredentials(config) : null;
  /** The nodes of --broker (none in the embedded mode). */
  const brokerNodes = brokerUrls(config.broker);
  const hookSecret = config.brokerHookSecretFile ? loadHookSecret(config.brokerHookSecretFile) : null;
  const log = logger ?? createLogger({ level: config.logLevel });
  if (tls) warnAboutValidity(tls, log);
  const topics = new Topics(config.topicPrefix);

  // Teardown steps in close order; each part adds its step as it starts, so a failed
  // start unwinds exactly what was started. Close order: listeners, connections,
  // commands in flight (answered while the broker can still carry the replies),
  // the broker (every client dropped), then state saved.
  const teardown: TeardownStep[] = [];
  const onClose = (step: TeardownStep) => teardown.unshift(step);

  try {
    // The MQTT ports listen first, before the database opens: what connects during the rest
    // of the start waits for it (src/listen.ts ConnectionGate) instead of being refused.
    const gate = new ConnectionGate();
    // TCP_NODELAY: with QoS 1 round trips, Nagle plus delayed ACK adds ~40-90 ms to every command.
    const tcp = createTcpServer({ noDelay: true }, gate.accept);
    // With TLS the plain MQTT port stays open too (devices on a private network may keep
    // using it); a firewall decides who reaches which.
    const mqtts = tls && !config.broker ? createMqttsServer(tls, gate.accept, log) : null;
    // For a start that fails: a hub that started stops listening first of all (below).
    onClose(() => {
      gate.drop();
      void stopListening(tcp);
      if (mqtts) void stopListening(mqtts);
    });
    // On an external broker the hub has no MQTT port: devices connect to the broker.
    const mqttPort = config.broker ? brokerPort(brokerNodes[0]!) : await listen(tcp, config.mqttPort, config.host, '--mqtt-port');
    const mqttsPort = mqtts ? await listen(mqtts, config.mqttsPort, config.host, '--mqtts-port') : undefined;
    const stores = openStores(config.dataDir);
    onClose(() => stores.close());
    const imported = stores.devices.importLegacyRegistry(config.dataDir);
    if (imported > 0) log.info({ devices: imported }, 'imported the devices of devices.json into the database');
    const auth = new Authenticator(stores.devices, stores.tokens, stores.sessions, { allowAnonymous: config.allowAnonymous, enrollKey: config.enrollKey || undefined });
    const registry = new DeviceRegistry(stores.devices, log);
    onClose(() => registry.flush());

    let noteAuthenticated: (client: Client) => void = () => {};
    const access = createAccess({ topics, log, auth, certificateIdOf, onAuthenticated: (client) => noteAuthenticated(client), maxPublishRate: config.maxPublishRate, maxClientPublishRate: config.maxClientPublishRate });
    const metrics = new HubMetrics();
    const cluster = config.cluster ? await startClusterNode(config, log) : null;
    if (cluster) onClose(() => cluster.close());
    // authorizeForward runs once per delivery to a subscriber: where outgoing messages are counted.
    const broker = await Aedes.createBroker({
      persistence: indexedMemoryPersistence(),
      ...access.hooks,
      authorizeForward: metrics.forwarded,
      // No cap on messages being delivered at once (0). With Aedes' default cap of 100, the
      // messages past it wait in a queue, and the queue is drained by recursion: thousands of
      // messages nobody subscribes to (device responses, during a fan-out to 10000 devices)
      // overflowed the stack. The inflow stays bounded anyway: the broker reads one packet at
      // a time from each connection, and outbound.ts bounds what waits for each reader.
      concurrency: 0,
      // In a cluster: Redis carries the messages and keeps retained messages and sessions
      // (on an external broker, that broker does, and the embedded one stays this hub's own).
      ...(config.broker ? {} : cluster?.brokerOptions),
    });
    // A standalone hub whose process exits right after its close leaves its connections to the
    // kernel (src/broker-shutdown.ts); a cluster node's end the long way (Redis keeps their state).
    const leavesConnectionsToExit = ({ processExits }: CloseOptions) => processExits === true && !cluster;
    // In a cluster: the QoS 1 queues of sessions connected here stay in memory until they disconnect.
    if (cluster && !config.broker) {
      keepSessionQueuesLocal(broker, log);
      // The broker's id is the node id, the same in every run: its packet numbers must not start
      // again at 0, or a new packet would take the Redis key of one queued for an offline device.
      (broker as unknown as { counter: number }).counter = Date.now() * 1000;
    }
    // The hub's commands and Replies straight to their one subscriber.
    const direct = directDelivery(broker);
    // And clients' Requests and devices' Responses straight to the hub's listeners while nobody
    // else subscribes to them (any topic would do: this keeps the answers to the hot ones).
    direct.takeIncoming((topic) => topic.endsWith('/response') || topic.endsWith('/request'));
    const refusedMqtt5 = new EveryMinute();
    broker.on('connectionError', (client, error) => {
      if ((error as Error & { errorCode?: number }).errorCode === UNACCEPTABLE_PROTOCOL_VERSION) {
        // hypha tries MQTT 5 first and falls back by itself: said once a minute, not per device.
        const refused = refusedMqtt5.count();
        if (refused > 0) log.info({ refused }, 'refused MQTT 5 connections: the embedded broker speaks MQTT 3.1.1 only (clients fall back or must be set to 3.1.1; for MQTT 5 run the hub on your own broker with --broker)');
        return;
      }
      log.debug({ clientId: client?.id, err: error.message }, 'connection error');
    });

    // On an external broker, retained statuses go there too (null until it is joined).
    let external: ExternalBroker | null = null;
    let mirrorStatuses = false;
    // Desired state (docs/protocol.md "Desired state"); made once presence exists.
    let deviceState: DeviceStateService | null = null;
    // A null status clears the retained message (a removed device), and there its presence too.
    const publishStatus = (id: string, status: Status | null) => {
      const payload = status ? Buffer.from(JSON.stringify(status)) : Buffer.alloc(0);
      broker.publish({ cmd: 'publish', topic: topics.deviceStatus(id), payload, qos: 1, retain: true, dup: false }, () => {});
      if (!status) deviceState?.forget(id);
      if (!external || !mirrorStatuses) return;
      external.publishRetained(topics.deviceStatus(id), payload);
      if (!status) external.publishRetained(topics.devicePresence(id), payload);
    };
    const presence = new Presence(registry, publishStatus, log, cluster ? { nodeId: cluster.nodeId, handover: (id) => cluster.handover(id) } : {});
    const dispatcher = new Dispatcher(
      presence,
      config,
      log,
      allOf(metrics.commandSettled, auditCommands(stores)),
      (id) => stores.devices.get(id) !== undefined,
      cluster ? commandIdPrefix(cluster.nodeId) : '',
    );
    const state = new DeviceStateService({
      store: stores.deviceState,
      audit: stores.audit,
      topics,
      log,
      maxStateBytes: config.maxStateBytes,
      isKnown: (id) => {
        const stored = stores.devices.get(id);
        return stored ? stored.state === 'active' : presence.get(id) !== undefined;
      },
      heldElsewhere: (id) => Boolean(presence.get(id)?.online) && !presence.holdsLocally(id),
      // Where devices read it: the embedded broker, and the external one when there is one.
      publishRetained: (topic, payload) => {
        broker.publish({ cmd: 'publish', topic, payload, qos: 1, retain: true, dup: false }, () => {});
        external?.publishRetained(topic, payload);
      },
    });
    deviceState = state;
    // Health reports in, a week of history at one row per device and minute, the fleet sampled
    // each minute; closed before the database (its last minutes written), after the broker.
    const health = new HealthTelemetry({ store: new HealthStore(stores.db), presence, log, maxRows: config.healthMaxRows });
    onClose(() => health.close());
    const mqttDevices = watchMqttDevices(
      broker,
      topics,
      presence,
      log,
      {
        // In a cluster, the Response to another node's command goes to that node alone.
        response: (device, payload) => {
          if (!cluster?.routeResponse(device, payload)) dispatcher.handleResponse(device, payload);
        },
        declaredTags: declaredTagsListener(stores.devices, presence, log),
        health: (device, payload) => void health.ingest(device, payload),
        reportedState: (device, payload) => state.report(device, payload) },
      access.principalOf,
      direct,
    );
    noteAuthenticated = mqttDevices.noteAuthenticated;
    if (config.broker && brokerCredentials) {
      const declaredTags = declaredTagsListener(stores.devices, presence, log);
      external = await startExternalBroker({
        urls: brokerNodes,
        clientId: config.brokerClientId || `rhizosphere-hub-${config.nodeId || defaultNodeId()}`,
        shareGroup: config.brokerShareGroup,
        severalHubs: config.cluster !== '',
        ...brokerCredentials,
        local: broker,
        topics,
        presence,
        dispatcher,
        log,
        maxPayloadBytes: config.maxPayloadBytes,
        admitUnknown: config.allowAnonymous,
        isRegistered: (id) => stores.devices.get(id)?.state === 'active',
        onResponse: (device, payload) => dispatcher.handleResponse(device, payload),
        onDeclaredTags: declaredTags,
        onHealth: (device, payload) => void health.ingest(device, payload),
        onReportedState: (device, payload) => state.report(device, payload),
      });
      const joined = external;
      onClose(() => joined.close());
    }
    // --broker-dynsec: the broker's dynamic security follows the registry (docs/broker-dynsec.md).
    if (config.brokerDynsec && external && brokerCredentials) {
      const dynsec = await startDynsecSync({
        // One Mosquitto (the config refuses a list with --broker-dynsec).
        url: brokerNodes[0]!,
        clientId: `${config.brokerClientId || `rhizosphere-hub-${config.nodeId || defaultNodeId()}`}-dynsec`,
        ...brokerCredentials,
        username: config.brokerUsername,
        stores,
        topics,
        log,
        uplink: external.uplink,
      });
      onClose(() => dynsec.close());
    } else releaseDynsecOutbox(stores, log);
    // Requests keep being answered while the broker closes (the dispatcher, closed first,
    // refuses them with a coded error): a client is never left waiting for a Reply.
    const requests = bridgeMqttRequests({ broker, topics, dispatcher, maxPayloadBytes: config.maxPayloadBytes, log, principalOf: access.principalOf, remoteOf: access.remoteOf, direct });
    onClose(() => requests.close());
    onClose(() => mqttDevices.close());
    onClose((how) =>
      withinBudget(
        new Promise<void>((resolve) => {
          presence.beginClose();
          if (leavesConnectionsToExit(how)) {
            // Devices recorded offline now; the kernel closes their connections at exit.
            presence.releaseAll();
            void leaveConnectionsToExit(broker).then(resolve);
            return;
          }
          if (!cluster) skipPerClientTeardown(broker);
          broker.close(() => resolve());
        }),
        CLOSE_BUDGET_MS,
      ),
    );
    const credentials = watchCredentials(stores, presence, broker, access.principalOf, auth, log);
    onClose(() => credentials.close());
    onClose(() => dispatcher.close());
    const recordingsDir = join(config.dataDir, 'recordings');
    // Registered after the broker's close, so it runs before it: tunnels end with their last frames delivered.
    const tunnels = startTunnelRelay({
      broker,
      topics,
      presence,
      log,
      audit: stores.audit,
      principalOf: access.principalOf,
      remoteOf: access.remoteOf,
      recordingsDir,
      limits: { maxFileBytes: config.maxFileBytes, maxTunnelsPerDevice: config.maxTunnelsPerDevice, idleMs: config.tunnelIdleMs, openTimeoutMs: tunnelOpenTimeoutMs },
    });
    onClose(() => tunnels.close());
    const clusterStart = cluster
      ? await cluster.start({ broker, topics, presence, dispatcher, db: stores.db, auth, credentialsApplied: (changed) => {
          credentials.check();
          state.replicated(changed);
        } })
      : null;
    // Before the broker closes (the first steps of close run last in this list).
    if (cluster) onClose(() => cluster.leave());
    // The retained statuses of the fleet: a standalone hub's broker starts with none; in a
    // cluster they live in Redis, published by the first node up, and a node joining others
    // adds nothing to them (50000 of them per joining node were half a GiB of start-up garbage).
    // The retained state deltas likewise (on an external broker, that broker keeps them too).
    // With the embedded broker, once it listens: in a restart under a fleet, a device's connect
    // waits in the listen queue meanwhile instead of being refused (each refusal doubles its
    // backoff); a device online by then has its own status already and is skipped.
    const publishRetainedAtStart = () => {
      if (clusterStart && !clusterStart.alone) return;
      presence.publishKnownStatuses();
      state.publishAll();
    };
    if (external) {
      publishRetainedAtStart();
      // On the external broker, the known offline statuses are published once the retained
      // births have come in: a device online there is not announced offline first.
      const joined = external;
      mirrorStatuses = true;
      const settle = setTimeout(() => {
        for (const entry of presence.table.values()) if (!entry.online) joined.publishRetained(topics.deviceStatus(entry.id), Buffer.from(JSON.stringify(presence.statusOf(entry))));
      }, BIRTHS_SETTLE_MS);
      settle.unref();
      onClose(() => clearTimeout(settle));
    }
    const agentDistribution = new AgentDistribution(config.agentFile || DEFAULT_AGENT_FILE);
    const artifacts = new ArtifactStore(config.dataDir, config.maxFileBytes);
    const jobs = new JobRunner({
      tasks: {
        agent_upgrade: new AgentUpgrader({ distribution: agentDistribution, relay: tunnels, presence, log }),
        deploy: new Deployer({ artifacts, relay: tunnels, dispatcher, presence, log }),
      },
      ...(clock ? { clock } : {}),
      stores,
      presence,
      dispatcher,
      topics,
      log,
      publish: (topic, payload) => {
        broker.publish({ cmd: 'publish', topic, payload: Buffer.from(payload), qos: 1, retain: true, dup: false }, () => {});
        external?.publishRetained(topic, Buffer.from(payload));
      },
    });
    onClose(() => jobs.close());
    // Alerts listen before the jobs resume (one that ends at once is not missed); closed before
    // the jobs and the database, their webhook attempts in flight cut short and kept pending.
    const alerts = new AlertService({ db: stores.db, audit: stores.audit, presence, health, jobs, log, ...(clock ? { clock } : {}) });
    onClose(() => alerts.close());
    // In a cluster only the first node up resumes the jobs left running: the others' are theirs.
    jobs.start({ resume: clusterStart?.alone ?? true });
    const schedules = new Scheduler({ db: stores.db, jobs, audit: stores.audit, log, ...(clock ? { clock } : {}) });
    onClose(() => schedules.close());
    schedules.start();
    alerts.start();
    metrics.watch({ presence, broker, inflight: () => dispatcher.inflight, jobsRunning: () => jobs.running, hubPublishes: direct.counts });
    onClose(() => metrics.close());

    // Filled in with the real ports once the listeners are up.
    const uplink = external?.uplink;
    const info: HubInfo = {
      topicPrefix: config.topicPrefix,
      version: PACKAGE_VERSION,
      mqttPort: null,
      mqttsPort: null,
      ...(uplink ? { broker: brokerInfo(brokerNodes, uplink) } : {}),
    };
    const http = createHttpFront(log, {
      allowedOrigins: splitList(config.allowedOrigins),
      contentSecurityPolicy: consoleContentSecurityPolicy(),
      server: tls ? createHubHttpsServer(tls, log) : undefined,
    });
    http.app.get('/healthz', (_req, res) => {
      res.json({ ok: true, devices: presence.table.size, online: presence.onlineCount(), inflight: dispatcher.inflight });
    });
    const readiness = new Readiness({
      maxLagMs: config.readyMaxLagMs,
      accepting: () => !broker.closed && (uplink ? true : tcp.listening),
      ...(uplink ? { brokerReachable: () => uplink.connected } : {}),
    });
    onClose(() => readiness.stop());
    http.app.get('/readyz', readiness.handler);
    // For operators' Prometheus: any principal the REST API accepts (anonymous only with --allow-anonymous).
    http.app.get('/metrics', requirePrincipal(auth), metrics.handler(log));
    // Under TLS the session cookie is Secure: a browser never sends it over plain HTTP.
    const endSessionConnections = (sessionHash: string) => {
      for (const client of Object.values((broker as unknown as { clients: Record<string, Client> }).clients)) {
        const principal = access.principalOf(client);
        if (principal?.kind === 'user' && principal.session === sessionHash) client.close();
      }
    };
    http.app.use('/api', sessionRouter({ auth, stores, log, endSessionConnections, secure: tls !== null }));
    http.app.use('/api', jobsRouter({ jobs, auth, stores, log }));
    http.app.use('/api', schedulesRouter({ schedules, auth, stores, log }));
    http.app.use('/api', alertsRouter({ alerts, auth, stores, log }));
    http.app.use('/api', artifactsRouter({ artifacts, auth, stores, log }));
    http.app.use('/api', recordingsRouter({ auth, stores, log, recordingsDir }));
    http.app.use('/api', deviceHttpRouter({ auth, relay: tunnels, log }));
    http.app.use('/api', healthRouter({ health, presence, auth, log }));
    // --broker-hook-secret-file: the broker asks here who may connect, publish and subscribe (docs/broker-hooks.md).
    if (hookSecret !== null) {
      const hubUser = { username: config.brokerUsername, password: brokerCredentials?.password };
      http.app.use('/broker', brokerHooksRouter({ secret: hookSecret, auth, devices: stores.devices, tokens: stores.tokens, topics, hubUser, log }));
    }
    const selectDevices = (target: unknown) => {
      const checked = validate(SelectorSchema, target);
      if (!checked.ok) throw new HubError('BAD_REQUEST', `target.${checked.message}`);
      return resolveSelector(checked.value, { stored: stores.devices.list(), live: presence.table, state: () => stores.deviceState.all() });
    };
    http.app.use('/api', stateRouter({ state, auth, stores, log, maxStateBytes: config.maxStateBytes, select: selectDevices }));
    http.app.use(
      '/api',
      restRouter({
        presence,
        dispatcher,
        maxPayloadBytes: config.maxPayloadBytes,
        log,
        info,
        auth,
        stores,
        onCredentialsChanged: () => credentials.check(),
      }),
    );
    // Handler routes: /handlers/{name}/, behind the REST API's authentication; filled in when they start.
    const handlers = new HandlerHost({ log, broker, db: stores.db, auth });
    http.app.use('/handlers', handlers.router);
    mountConsole(http.app);
    http.app.use(
      agentRouter(agentDistribution, {
        mqttUrl: config.installUrl,
        mqttPort: () => info.mqttPort,
        mqttsPort: () => info.mqttsPort,
        brokerUrls: external ? brokerNodes : [],
      }),
    );
    const maxPacketBytes = Math.max(config.maxPayloadBytes, config.maxResponseBytes) + 64 * 1024;
    const handle = mqttConnectionHandler(broker, { maxPacketBytes, maxBufferedBytes: config.maxClientBufferBytes }, log);
    const ws = mqttOverWebSocket(handle, maxPacketBytes);
    http.addUpgrade('/mqtt', ws.handler);
    const legacy = attachLegacyBridge({ http, presence, dispatcher, log, maxPayloadBytes: config.maxPayloadBytes, auth });
    onClose(() => legacy.close());
    onClose(() => {
      ws.close();
      http.closeConnections();
    });

    const closed: Promise<void>[] = [];
    // Last: the listeners' own close, which waits for their connections to end (not when the
    // process exits with them open: it closes them).
    teardown.push((how) => (leavesConnectionsToExit(how) ? undefined : withinBudget(Promise.all(closed).then(() => {}), 1000)));
    onClose(() => void closed.push(stopListening(tcp)));
    if (mqtts) onClose(() => void closed.push(stopListening(mqtts)));
    // Served from now on, the connections held since the start first.
    gate.open(handle);
    if (!external) publishRetainedAtStart();
    onClose(() => void closed.push(stopListening(http.server)));
    const httpPort = await listen(http.server, config.httpPort, config.host, '--http-port');

    const ports: HubPorts = { mqtt: mqttPort, ...(mqttsPort !== undefined ? { mqtts: mqttsPort } : {}), http: httpPort };
    info.mqttPort = external ? null : mqttPort;
    info.mqttsPort = mqttsPort ?? null;
    // Jobs stop first of all (no new sends; commands in flight keep their unknown outcome),
    // before any connection closes and answers them with DEVICE_OFFLINE; closing twice is harmless.
    onClose(() => jobs.close());
    // And before them, the schedules: none may create a job on a runner that is closing.
    onClose(() => schedules.close());
    // And the alerts: devices dropping as the hub closes are not offline devices.
    onClose(() => alerts.close());
    const hub = new Hub(config, log, topics, broker, presence, dispatcher, stores, jobs, handlers, ports, teardown, external, state);
    hub.health = health;
    hub.schedules = schedules;
    hub.alerts = alerts;
    // Handlers start last, with the whole hub to use, and stop first (before jobs and connections).
    onClose(() => handlers.stopAll());
    try {
      await handlers.startAll(config.handlers, hub);
    } catch (error) {
      if (error instanceof HandlerStartError) throw new StartError(error.message, { cause: error.cause });
      throw error;
    }
    // Only now that the hub is up: a start that fails (a port in use) must not use up the
    // first start, whose admin password would then be shown to no one.
    // In a cluster, after the join: a node joining others finds their users (their admin).
    const mayCreateAdmin = stores.users.count() === 0 && (!cluster || (await cluster.claimFirstAdmin()));
    hub.initialAdminPassword = mayCreateAdmin ? ensureFirstAdmin(stores, log) : null;
    // Ready only now; and not ready from the first step of close on.
    readiness.serving();
    onClose(() => readiness.stop());
    const urls = hub.urls;
    log.info(
      { mqtt: urls.mqtt, mqtts: urls.mqtts, ws: urls.ws, http: urls.http, clientCertificates: clientCertificateMode(tls), topicPrefix: config.topicPrefix, dataDir: config.dataDir, devices: presence.table.size },
      'hub listening',
    );
    if (config.host !== '127.0.0.1' && config.host !== 'localhost' && config.host !== '::1') {
      log.warn({ host: config.host }, 'the hub is reachable from the network');
    }
    return hub;
  } catch (error) {
    for (const step of teardown) await Promise.resolve().then(() => step({})).catch(() => {});
    throw error;
  }
}
