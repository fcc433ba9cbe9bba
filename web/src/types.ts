/** The shapes the console reads from the hub (docs/protocol.md). */

export type Order = 'exec_bash' | 'exec_bash_ret_okng_only' | 'exec_bash_no_return';
export const ORDERS: { value: Order; label: string; help: string }[] = [
  { value: 'exec_bash', label: 'exec_bash', help: 'run and show stdout, stderr and the exit code' },
  { value: 'exec_bash_ret_okng_only', label: 'exec_bash_ret_okng_only', help: 'run and show only ok (exit 0) or ng' },
  { value: 'exec_bash_no_return', label: 'exec_bash_no_return', help: 'start it and do not wait' },
];

export interface Device {
  id: string;
  online: boolean;
  transport: string | null;
  connectedAt: string | null;
  lastSeen: string | null;
  remoteAddress: string | null;
  tags: string[];
  /** The agent and version it last announced ("hypha/0.1.0"), or null. */
  agent: string | null;
}

export interface OkReply {
  type: 'response';
  id: string | null;
  device: string | null;
  status: 'ok';
  result: string | null;
  error: string;
  exit_code: number | null;
  duration_ms: number | null;
  truncated: boolean;
}

export interface ErrorReply {
  type: 'response';
  id: string | null;
  device: string | null;
  status: 'error';
  code: string;
  message: string;
}

export type Reply = OkReply | ErrorReply;

export interface HubInfo {
  topicPrefix: string;
  version: string;
  /** The hub's MQTT port, for the hypha command line; the console assumes 1883 when the hub does not say. */
  mqttPort?: number;
  /** On an external broker (--broker): where devices connect, and whether the hub reaches it now. */
  /** `url` is the node the hub is on now; `urls` every node it may join (--broker). */
  broker?: { url: string; urls: string[]; connected: boolean; reason: string | null; mqtt: '5' | '3.1.1' | null };
}

export type Role = 'admin' | 'operator' | 'viewer';

export interface Session {
  name: string;
  role: Role;
  /** MQTT credentials for the console's connection; null with anonymous access. */
  mqtt: { username: string; password: string; expiresAt: number } | null;
}

/** `POST /api/devices` and `POST /api/devices/{id}/rotate`: the token, shown once. */
export interface IssuedToken {
  id: string;
  token: string;
}

/** One entry of `GET /api/audit`. */
export interface AuditEntry {
  seq: number;
  /** ISO time. */
  at: string;
  actor: string;
  /** user, token, device, anonymous, hub, … */
  actorKind: string;
  remote: string | null;
  /** command, login, device.add, device.rotate, device.remove, … */
  action: string;
  device: string | null;
  order: string | null;
  cmdStr: string | null;
  /** ok, an error code, or what a change did. */
  outcome: string;
  exitCode: number | null;
  durationMs: number | null;
  detail?: unknown;
}

/** Fleet jobs (docs/protocol.md, "Fleet jobs"): the wire shapes, as the client SDK types them. */
export type { CreatedJob, JobCounts, JobStaging, JobState, JobStatus, JobSummary, JobTarget, JobView as JobDetail, ScheduleView, TargetState } from 'rhizosphere/client';
import type { TargetState } from 'rhizosphere/client';

/** Alerts and webhooks (docs/protocol.md, "Alerts and webhooks"). */
export type { AlertRuleView, AlertView, WebhookView } from 'rhizosphere/client';

/** Every target state, in the order the console shows them (outcomes first). */
export const TARGET_STATES: readonly TargetState[] = ['succeeded', 'failed', 'timed_out', 'canceled', 'sent', 'queued'];
