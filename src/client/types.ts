/**
 * What the SDK hands out: the wire contract's payloads (docs/protocol.md) in the SDK's shape.
 * Type-only imports, so nothing of the hub is bundled.
 */
import type { JobStatus } from '../protocol/jobs.js';
import type { Order, Transport } from '../protocol/schemas.js';

export type { Order, Transport };

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
}

export interface DeviceSelector {
  /** Only these ids. */
  devices?: string[];
  /** Only devices that have every one of these tags (`[]`: no condition). */
  tags?: string[];
  /** Only online (true) or offline (false) devices. */
  online?: boolean;
}

// Type-only: the wire shapes are shared with the hub, none of its code comes along.
export type { JobCounts, JobState, JobStatus, JobSummary, JobTarget, JobView, TargetState } from '../protocol/jobs.js';

/** Body of `POST /api/jobs`. */
export interface JobSpec {
  target: DeviceSelector;
  order?: Order;
  cmd_str: string;
  timeout_ms?: number;
  concurrency?: number;
  deadline_ms?: number;
}

export interface CreatedJob {
  id: string;
  targets: number;
  /** Ids in `target.devices` the hub does not know (present only when there are some). */
  unknown?: string[];
}

export interface HubClientEvents {
  [event: string]: (...args: any[]) => void;
  /** A device came online (a live status change, not the retained burst at connect). */
  online: (id: string, status: DeviceStatus) => void;
  /** A device went offline. */
  offline: (id: string, status: DeviceStatus) => void;
  /** Every status message, the retained burst included; `status` is null when the device was removed. */
  status: (id: string, status: DeviceStatus | null) => void;
  /** The MQTT connection was lost or came back. */
  disconnect: () => void;
  reconnect: () => void;
}

/** True when a job has ended for good: not running, nothing queued or in flight. */
export function isJobFinished(status: JobStatus): boolean {
  return status.state !== 'running' && status.counts.queued === 0 && status.counts.sent === 0;
}
