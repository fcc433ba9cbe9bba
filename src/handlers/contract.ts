/**
 * The contract of server-side handlers (docs/handlers.md): modules the config names, each
 * started with a context object built for it alone, so everything it registers through the
 * context (listeners, subscriptions, routes, timers) is released when it stops.
 */
import type { Router } from 'express';
import type { ExecCommand } from '../hub.js';
import type { CreatedJob, JobSummary, JobView } from '../jobs/runner.js';
import type { Logger } from '../log.js';
import type { DeviceInfo, OfflineReason } from '../presence.js';
import type { CommandResult, Status } from '../protocol/schemas.js';
import type { StateView } from '../device-state.js';

/** A device's telemetry message (`P/devices/{id}/telemetry[/{sub}]`). */
export interface TelemetryMessage {
  device: string;
  /** What follows `telemetry/` in the topic (`temp`, `env/humidity`), '' for the bare topic. */
  subtopic: string;
  payload: Buffer;
  /** The payload parsed as JSON, or undefined when it is not JSON. */
  json: unknown;
}

export interface HandlerEvents {
  online: [device: DeviceInfo];
  offline: [device: DeviceInfo, reason: OfflineReason];
  /** The retained status the hub published for a device; null when the device was removed. */
  status: [device: string, status: Status | null];
  telemetry: [message: TelemetryMessage];
}

export type HandlerEventName = keyof HandlerEvents;

/** A read-only live view of the connections table. */
export interface DeviceView {
  get(id: string): DeviceInfo | undefined;
  /** Every known device, online or not. */
  list(): DeviceInfo[];
  online(): DeviceInfo[];
  status(id: string): Status | undefined;
}

/** Fleet jobs, created with the handler as the actor (`actor: NAME`, `actorKind: handler`). */
export interface HandlerJobs {
  /** Takes a JobSpec (PROTOCOL.md "Fleet jobs"); throws a HubError (BAD_REQUEST) for an invalid one. */
  create(spec: unknown): CreatedJob;
  get(id: string): JobView | undefined;
  cancel(id: string): JobSummary | undefined;
  list(limit?: number): JobSummary[];
}

/**
 * Desired and reported state of devices (docs/protocol.md "Desired state"). Changes are
 * audited with the handler as the actor (`actor: NAME`, `actorKind: handler`) and reach the
 * device as its delta, like those made over REST.
 */
export interface HandlerDeviceState {
  /** The device's desired and reported documents and their delta; throws a HubError (UNKNOWN_DEVICE, BAD_REQUEST). */
  get(deviceId: string): StateView;
  /**
   * Merges `patch` into the desired document (null removes a key), or with `replace` makes it
   * the whole document. Throws a HubError: BAD_REQUEST, UNKNOWN_DEVICE, PAYLOAD_TOO_LARGE.
   */
  setDesired(deviceId: string, patch: Record<string, unknown>, options?: { replace?: boolean }): StateView;
}

/** A small persistent key-value store of the handler's own, in the hub's database. Values are JSON. */
export interface HandlerStore {
  get<T = unknown>(key: string): T | undefined;
  /** Throws a HubError (PAYLOAD_TOO_LARGE) above 1 MiB of JSON, (BAD_REQUEST) for a value JSON cannot hold. */
  set(key: string, value: unknown): void;
  /** Whether there was such a key. */
  delete(key: string): boolean;
  keys(): string[];
}

export interface PublishOptions {
  qos?: 0 | 1;
  retain?: boolean;
}

/** A message on a subscribed topic; `topic` is relative to the hub's prefix, like the filter. */
export type MessageListener = (topic: string, payload: Buffer) => void | Promise<void>;

export interface HandlerContext<Options = unknown> {
  /** The handler's name from the config (also its route and its topic level). */
  readonly name: string;
  /** The `options` of its config entry (undefined when there are none). */
  readonly options: Options;
  /** A child of the hub's logger with `handler: NAME` on every line. */
  readonly log: Logger;
  readonly devices: DeviceView;
  /** Adds a listener until the handler stops; returns a function that removes it sooner. */
  on<E extends HandlerEventName>(event: E, listener: (...args: HandlerEvents[E]) => void | Promise<void>): () => void;
  /**
   * Runs a command on a device (audited with the handler as the actor) and resolves with what
   * it produced; rejects with a HubError whose `code` is the protocol's (DEVICE_OFFLINE, TIMEOUT, BUSY, …).
   */
  exec(deviceId: string, command: ExecCommand): Promise<CommandResult>;
  readonly jobs: HandlerJobs;
  /** Devices' desired and reported state. */
  readonly state: HandlerDeviceState;
  /**
   * Publishes on `P/handlers/NAME/TOPIC` (P: the hub's topic prefix); objects are sent as JSON.
   * A handler publishes under its own level only: the device and client topics belong to the hub.
   */
  publish(topic: string, payload: string | Buffer | object, options?: PublishOptions): Promise<void>;
  /** The absolute topic `publish(topic)` uses: what MQTT clients subscribe to. */
  topic(topic: string): string;
  /**
   * Subscribes to a filter relative to the hub's prefix (`devices/+/telemetry/#`,
   * `handlers/other/#`); returns a function that unsubscribes sooner.
   */
  subscribe(filter: string, listener: MessageListener): Promise<() => void>;
  /**
   * An express Router mounted at `/handlers/NAME/`, behind the REST API's authentication:
   * anyone authenticated may GET (viewers too), other methods need an operator or admin.
   * `res.locals.principal` is the caller. JSON bodies are parsed (up to 1 MiB).
   */
  readonly router: Router;
  readonly store: HandlerStore;
  /** Aborted when the handler stops: hand it to fetch(), loops, and so on. */
  readonly signal: AbortSignal;
  /** Like the globals, but cleared when the handler stops and with errors isolated. */
  setTimeout(callback: () => void | Promise<void>, ms: number): NodeJS.Timeout;
  setInterval(callback: () => void | Promise<void>, ms: number): NodeJS.Timeout;
}

/** What a handler's start may return: a function the hub calls when it stops. */
export type StopFunction = () => void | Promise<void>;

/** The object form: `start` runs at hub start, `stop` (optional) when it stops. */
export interface HandlerObject<Options = unknown> {
  /** For messages only; the config's `name` is the handler's name. */
  name?: string;
  start(ctx: HandlerContext<Options>): void | StopFunction | Promise<void | StopFunction>;
  stop?(): void | Promise<void>;
}

/** The function form: the start, which may return its stop. */
export type HandlerFunction<Options = unknown> = (ctx: HandlerContext<Options>) => void | StopFunction | Promise<void | StopFunction>;

export type Handler<Options = unknown> = HandlerObject<Options> | HandlerFunction<Options>;

/**
 * Types a handler; returns it unchanged, so a module may also export a plain object or
 * function (plain JavaScript, with a JSDoc type) without importing anything.
 *
 *     export default defineHandler<{ everySeconds: number }>({
 *       start(ctx) { ctx.setInterval(() => ctx.log.info('tick'), ctx.options.everySeconds * 1000); },
 *     });
 */
export function defineHandler<Options = unknown>(handler: Handler<Options>): Handler<Options> {
  return handler;
}

/** Whether a module's export is a handler (the loader's check). */
export function isHandler(value: unknown): value is Handler {
  if (typeof value === 'function') return true;
  return value !== null && typeof value === 'object' && typeof (value as { start?: unknown }).start === 'function';
}
