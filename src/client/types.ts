/**
 * What the SDK hands out: the wire contract's payloads (docs/protocol.md) in the SDK's shape.
 * Type-only imports, so nothing of the hub is bundled.
 */
import type { IClientOptions } from 'mqtt';
import type { ClientError } from './errors.js';
import type { JobStatus } from '../protocol/jobs.js';
import type { Order, Transport } from '../protocol/schemas.js';
import type { StateCondition } from '../jobs/state-condition.js';

export type { Order, Transport };
export type { StateCondition, StateComparison, StateOperand } from '../jobs/state-condition.js';
/** A device's desired and reported state and their delta (docs/protocol.md "Desired state"). */
export type { StateView as DeviceState, StateDoc, JsonValue, DeltaMessage } from '../protocol/state.js';

export interface ConnectOptions {
  /** An API token's secret: the MQTT password, and `Authorization: Bearer` for REST. */
  token?: string;
  /** The API token's name: the MQTT user name. Required with `token`. */
  tokenName?: string;
  /** The MQTT client id; default `sdk-` and a random suffix. Replies are addressed to it. */
  clientId?: string;
  /** The hub's topic prefix (`--topic-prefix`); default `rhizosphere`. */
  topicPrefix?: string;
  /** Base URL of the hub's HTTP port for REST (jobs). Derived from a ws:// or wss:// URL when not given. */
  httpUrl?: string;
  /** CA certificate(s) for mqtts:// and wss:// (Node only; passed through to MQTT.js). */
  ca?: string | Uint8Array | Array<string | Uint8Array>;
  /** Give up connecting after this long; default 10000 ms. */
  connectTimeoutMs?: number;
  /** Reconnect this long after a lost connection; 0 turns reconnection off. Default 1000 ms. */
  reconnectPeriodMs?: number;
  /** The quiet time that ends the burst of retained statuses (see `devices()`); default 200 ms. */
  settleMs?: number;
  /**
   * QoS of the subscription to `P/devices/+/status`; default 1. The statuses are retained and
   * resent in full on every connect, so 0 spares a PUBACK for each of thousands of them.
   */
  statusQos?: 0 | 1;
  /**
   * false: connect() resolves at once, and the connection comes up (and is retried every
   * `reconnectPeriodMs`, which must not be 0) in the background; the 'connect' event tells when.
   * Default true: connect() waits for the first connection and rejects if it fails.
   */
  waitForConnection?: boolean;
  /**
   * Called when the hub refuses a connection attempt (CONNACK 4 or 5) after the first connect
   * (with `waitForConnection: false`, the first attempt too), e.g. because a short-lived token
   * expired: resolve with fresh credentials to reconnect with them after `reconnectPeriodMs`,
   * or null to stay disconnected (an 'error' event follows). Without it, a refusal ends reconnection.
   */
  renewCredentials?: () => Promise<Credentials | null>;
  /**
   * Further MQTT.js client options, e.g. `{ keepalive: 30, timerVariant: 'worker' }` (a browser tab
   * in the background throttles ordinary timers, not Web Worker ones). They override the SDK's
   * defaults, but not the client id, protocol version, clean session or credentials.
   */
  mqttOptions?: Partial<IClientOptions>;
}

/** An API token (or another credential the hub accepts): MQTT user name and password. */
export interface Credentials {
  tokenName: string;
  token: string;
}

export interface ExecOptions {
  /** Default `exec_bash`. */
  order?: Order;
  /** The command's limit on the device, 1000–3600000 ms; the hub's default is 60000. */
  timeoutMs?: number;
}

export interface ExecResult {
  device: string;
  /** stdout (`exec_bash`), `"ok"`/`"ng"` (`exec_bash_ret_okng_only`), null (`exec_bash_no_return`). */
  result: string | null;
  /** stderr. */
  error: string;
  /** The exit status; null when not waited for. */
  exitCode: number | null;
  durationMs: number | null;
  truncated: boolean;
}

/** A device as its retained status tells it (`P/devices/{id}/status`). */
export interface DeviceStatus {
  id: string;
  online: boolean;
  /** Online: when this connection was made. Offline: when the device was last seen. */
  since: string;
  transport: Transport | null;
  /** The tags selectors match: assigned by an admin or declared by the device. */
  tags: string[];
  /** The agent and version the device last announced, e.g. "hypha/0.1.0"; null when it never said. */
  agent: string | null;
}

/** Which devices a job targets, or `devices()` lists: the hub's own selector type (docs/protocol.md "Fleet jobs"). */
export type { Selector as DeviceSelector } from '../jobs/selector.js';
import type { Selector as DeviceSelector } from '../jobs/selector.js';

export interface SetDesiredOptions {
  /** true: `patch` is the whole new desired document (PUT); default false: merged in, null removes a key (PATCH). */
  replace?: boolean;
}

// Type-only: the wire shapes are shared with the hub, none of its code comes along.
export type { JobCounts, JobOrder, JobStaging, JobState, JobStatus, JobSummary, JobTarget, JobView, TargetState } from '../protocol/jobs.js';
import type { DeployParams, JobStaging } from '../protocol/jobs.js';

// Health telemetry (docs/protocol.md "Health telemetry"): the REST shapes, type-only like the jobs'.
export type { FleetHealth, FleetHealthEntry, FleetRanking, HealthReport, HealthSample, HealthSeries, HealthSeriesName } from '../protocol/health.js';
import type { HealthSeriesName } from '../protocol/health.js';

/** A point in time for the health queries: a Date, epoch milliseconds, or what the hub takes (ISO, or `90m`, `24h`, `7d` back from now). */
export type HealthTime = Date | number | string;

/** `deviceHealth()`: the range (default the last 24 hours) and the series (default all; `samples` always). */
export interface HealthQuery {
  since?: HealthTime;
  until?: HealthTime;
  metrics?: HealthSeriesName[];
}

/** `fleetHealth()`: the range of the online series (default the last 24 hours) and devices per ranking (default 10, at most 100). */
export interface FleetHealthQuery {
  since?: HealthTime;
  until?: HealthTime;
  limit?: number;
}

/**
 * Body of `POST /api/jobs`: a command (`order` defaults to exec_bash, with `cmd_str`), or
 * `order: 'agent_upgrade'` without `cmd_str` (the hub sends its agent build to each target).
 */
export type JobSpec = CommandJobSpec | AgentUpgradeJobSpec | DeployJobSpec;

export interface CommandJobSpec extends JobStaging {
  target: DeviceSelector;
  order?: Order;
  cmd_str: string;
  timeout_ms?: number;
  concurrency?: number;
  deadline_ms?: number;
}

export interface AgentUpgradeJobSpec extends JobStaging {
  target: DeviceSelector;
  order: 'agent_upgrade';
  timeout_ms?: number;
  concurrency?: number;
  deadline_ms?: number;
}

// Type-only, shared with the hub like the jobs'.
export type { ArtifactView } from '../protocol/schedules-artifacts.js';

/** A deploy job: the hub sends an artifact to each target, runs `install` there, `rollback` where it fails. */
export interface DeployJobSpec extends JobStaging, DeployParams {
  target: DeviceSelector;
  order: 'deploy';
  timeout_ms?: number;
  concurrency?: number;
  deadline_ms?: number;
}

/** Body of `POST /api/schedules`: a job to create at `at`, or each time `cron` fires (in `tz`). */
export interface ScheduleSpec {
  name?: string;
  job: JobSpec;
  at?: string;
  cron?: string;
  tz?: string;
  enabled?: boolean;
}

import type { ScheduleView as ScheduleWire } from '../protocol/schedules-artifacts.js';
/** A schedule as `GET /api/schedules` lists it, its job typed as the JobSpec it was given. */
export type ScheduleView = ScheduleWire<JobSpec>;

export type { AlertKind, AlertMetric, AlertRuleView, AlertState, AlertView, JobAlertState, WebhookEvent, WebhookPayload, WebhookView } from '../protocol/alerts.js';
import type { AlertKind, AlertMetric, AlertState, JobAlertState, WebhookEvent } from '../protocol/alerts.js';

/**
 * Body of `POST /api/alerts/rules` (docs/protocol.md "Alerts and webhooks"): `device_offline`
 * takes `minutes` and `tags`; `telemetry` `metric`, `op`, `value`, `minutes` and `tags`; `job`
 * `states`.
 */
export interface AlertRuleSpec {
  name?: string;
  kind: AlertKind;
  enabled?: boolean;
  tags?: string[];
  minutes?: number;
  metric?: AlertMetric;
  op?: 'above' | 'below';
  value?: number;
  states?: JobAlertState[];
}

/** Body of `POST /api/webhooks` (admins): where to POST, the secret that signs each body (16+ characters), which events. */
export interface WebhookSpec {
  url: string;
  secret: string;
  events?: WebhookEvent[];
}

/** `GET /api/alerts?state=&limit=`. */
export interface AlertQuery {
  state?: AlertState;
  limit?: number;
}

export interface CreatedJob {
  id: string;
  targets: number;
  /** Ids in `target.devices` the hub did not know yet (present only when there are some): targeted all the same, they wait as offline targets. */
  unknown?: string[];
}

export interface HubClientEvents {
  [event: string]: (...args: any[]) => void;
  /** A device came online (a live status change, not the retained burst at connect). */
  online: (id: string, status: DeviceStatus) => void;
  /** A device went offline. */
  offline: (id: string, status: DeviceStatus) => void;
  /**
   * Every status message, the retained burst included; `status` is null when the device was
   * removed. The status is the SDK's own frozen snapshot (no copy is made per message).
   */
  status: (id: string, status: Readonly<DeviceStatus> | null) => void;
  /** The first connection came up (only with `waitForConnection: false`: otherwise connect() resolves then). */
  connect: () => void;
  /** The MQTT connection was lost or came back. */
  disconnect: () => void;
  reconnect: () => void;
  /** A problem no call could report: the hub refused the connection for good, or (with `waitForConnection: false`) a subscription. */
  error: (error: ClientError) => void;
}

/** True when a job has ended for good: not running, nothing queued or in flight. */
export function isJobFinished(status: JobStatus): boolean {
  return status.state !== 'running' && status.counts.queued === 0 && status.counts.sent === 0;
}
