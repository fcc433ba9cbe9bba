/**
 * Runs commands on devices: gives each a hub-unique id, sends it over the device's link,
 * matches the Response back and settles every command exactly once — with the device's
 * answer, or TIMEOUT, or DEVICE_OFFLINE the moment the device drops (not at timeout).
 */
import { randomBytes } from 'node:crypto';
import { ERROR_CODES, type ErrorCode } from './errors.js';
import type { Logger } from './log.js';
import type { Presence } from './presence.js';
import {
  ResponseSchema,
  TIMEOUT_MS_DEFAULT,
  parsePayload,
  type Command,
  type ErrorReply,
  type Order,
  type Reply,
  type Response,
} from './protocol/schemas.js';

export interface DispatchLimits {
  maxInflightPerDevice: number;
  maxInflightTotal: number;
  maxResponseBytes: number;
}

/** A command as callers hand it to the hub (already validated at their edge). */
export interface CommandRequest {
  /** The caller's id for this command, echoed in the Reply. */
  id?: string | null;
  device: string;
  order: Order;
  cmd_str: string;
  timeout_ms?: number;
}

/** Who asked: a client id (MQTT, REST, legacy console) for the connections table, and who and from where for the audit. */
export interface Origin {
  clientId: string;
  via: 'mqtt' | 'rest' | 'api' | 'legacy';
  /** The authenticated name (user, token, device) or "anonymous"; the client id when not given. */
  actor?: string;
  actorKind?: string;
  remote?: string | null;
}

/** Called once per command with its final Reply, for the audit trail. */
export type SettledHook = (request: CommandRequest, origin: Origin, reply: Reply, durationMs: number) => void;

interface Pending {
  hubId: string;
  request: CommandRequest;
  origin: Origin;
  startedAt: number;
  timer: NodeJS.Timeout;
  settle: (reply: Reply) => void;
}

/** Time a device gets beyond timeout_ms to report its own TIMEOUT before the hub gives up on it. */
const DEVICE_GRACE_MS = 2000;

export function errorReply(id: string | null, device: string | null, code: ErrorCode, message: string): ErrorReply {
  return { type: 'response', id, device, status: 'error', code, message };
}

export class Dispatcher {
  private readonly pending = new Map<string, Pending>();
  private readonly perDevice = new Map<string, Set<string>>();
  private readonly bootId = randomBytes(4).toString('hex');
  private sequence = 0;
  private closed = false;

  constructor(
    private readonly presence: Presence,
    private readonly limits: DispatchLimits,
    private readonly log: Logger,
    private readonly onSettled?: SettledHook,
    /** Registered devices that presence has not seen yet (never connected) are offline, not unknown. */
    private readonly isRegistered: (device: string) => boolean = () => false,
    /**
     * Starts every command id (in a cluster: `{node}~`, so the node holding the device knows
     * where to send the Response: src/cluster/response-routes.ts).
     */
    private readonly idPrefix = '',
  ) {
    presence.on('offline', (device) => this.failDevice(device.id, 'DEVICE_OFFLINE', `device ${device.id} disconnected before it answered`));
  }

  get inflight(): number {
    return this.pending.size;
  }

  /** Sends a command and resolves with its Reply; never rejects. Every command, answered or refused, reaches the settled hook. */
  request(request: CommandRequest, origin: Origin): Promise<Reply> {
    const started = Date.now();
    return this.dispatch(request, origin).then((reply) => this.settled(request, origin, reply, started));
  }

  /** Refuses a command before it is sent (FORBIDDEN, say), with the same accounting as any other. */
  refuse(request: CommandRequest, origin: Origin, code: ErrorCode, message: string): Reply {
    return this.settled(request, origin, errorReply(request.id ?? null, request.device, code, message), Date.now());
  }

  private settled(request: CommandRequest, origin: Origin, reply: Reply, started: number): Reply {
    try {
      this.onSettled?.(request, origin, reply, Date.now() - started);
    } catch (error) {
      this.log.error({ err: error }, 'cannot record a command in the audit trail');
    }
    return reply;
  }

  private dispatch(request: CommandRequest, origin: Origin): Promise<Reply> {
    const { device } = request;
    const callerId = request.id ?? null;
    const refuse = (code: ErrorCode, message: string) => Promise.resolve(errorReply(callerId, device, code, message));

    if (this.closed) return refuse('INTERNAL', 'the hub is shutting down');
    const entry = this.presence.get(device);
    if (!entry) {
      if (this.isRegistered(device)) return refuse('DEVICE_OFFLINE', `device ${device} is registered but has not connected yet`);
      return refuse('UNKNOWN_DEVICE', `no device ${device} has connected to this hub`);
    }
    if (!entry.online || !entry.link) return refuse('DEVICE_OFFLINE', `device ${device} is not connected`);
    const unavailable = entry.link.unavailable?.();
    if (unavailable) return refuse('BROKER_UNAVAILABLE', unavailable);
    if (this.pending.size >= this.limits.maxInflightTotal) {
      return refuse('BUSY', `the hub has ${this.pending.size} commands in flight (limit ${this.limits.maxInflightTotal})`);
    }
    const forDevice = this.perDevice.get(device);
    if (forDevice && forDevice.size >= this.limits.maxInflightPerDevice) {
      return refuse('BUSY', `device ${device} has ${forDevice.size} commands in flight (limit ${this.limits.maxInflightPerDevice})`);
    }

    const hubId = `${this.idPrefix}${this.bootId}-${(++this.sequence).toString(36)}`;
    const timeoutMs = request.timeout_ms ?? TIMEOUT_MS_DEFAULT;
    const command: Command = { type: 'command', id: hubId, order: request.order, cmd_str: request.cmd_str, timeout_ms: timeoutMs };
    const link = entry.link;

    return new Promise<Reply>((resolve) => {
      const timer = setTimeout(
        () => this.settle(hubId, errorReply(callerId, device, 'TIMEOUT', `device ${device} did not answer within ${timeoutMs} ms`)),
        timeoutMs + DEVICE_GRACE_MS,
      );
      const pending: Pending = { hubId, request, origin, startedAt: Date.now(), timer, settle: resolve };
      this.pending.set(hubId, pending);
      let ids = this.perDevice.get(device);
      if (!ids) this.perDevice.set(device, (ids = new Set()));
      ids.add(hubId);
      this.presence.trackClient(device, origin.clientId, 1);
      this.log.debug({ device, command: hubId, order: request.order, client: origin.clientId, via: origin.via }, 'command sent');
      try {
        link.send(command);
      } catch (error) {
        this.log.error({ err: error, device }, 'cannot send a command to the device');
        this.settle(hubId, errorReply(callerId, device, 'INTERNAL', `cannot send to device ${device}`));
      }
    });
  }

  /** A Response payload arrived from `device` (any transport). */
  handleResponse(device: string, payload: Buffer | string): void {
    const size = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
    if (size > this.limits.maxResponseBytes) {
      const id = peekId(payload);
      this.log.warn({ device, bytes: size, code: 'PAYLOAD_TOO_LARGE' }, 'device response over the size limit');
      const pending = id ? this.ownPending(id, device) : undefined;
      if (pending) {
        this.settleWith(pending, 'PAYLOAD_TOO_LARGE', `the response of device ${device} has ${size} bytes (limit ${this.limits.maxResponseBytes})`);
      }
      return;
    }
    const parsed = parsePayload(ResponseSchema, payload);
    if (!parsed.ok) {
      const raw = parsed.raw as { id?: unknown } | undefined;
      const id = typeof raw?.id === 'string' ? raw.id : null;
      this.log.warn({ device, code: 'BAD_REQUEST', problem: parsed.message }, 'invalid response from device');
      const pending = id ? this.ownPending(id, device) : undefined;
      if (pending) this.settleWith(pending, 'INTERNAL', `device ${device} sent an invalid response: ${parsed.message}`);
      return;
    }
    this.deliver(device, parsed.value);
  }

  /** A Response already parsed by a transport (the legacy bridge). */
  deliver(device: string, response: Response): void {
    const pending = this.ownPending(response.id, device);
    if (!pending) {
      this.log.debug({ device, command: response.id }, 'response for no command in flight (late, or answered already)');
      return;
    }
    const { request } = pending;
    const callerId = request.id ?? null;
    if (response.code) {
      this.settle(pending.hubId, errorReply(callerId, device, response.code, response.message ?? ERROR_CODES[response.code].summary));
      return;
    }
    this.settle(pending.hubId, {
      type: 'response',
      id: callerId,
      device,
      status: 'ok',
      result: response.result ?? null,
      error: response.error ?? '',
      exit_code: response.exit_code ?? null,
      duration_ms: response.duration_ms ?? null,
      truncated: response.truncated ?? false,
    });
  }

  /** Answers every command in flight to `device` at once. */
  failDevice(device: string, code: ErrorCode, message: string): void {
    const ids = this.perDevice.get(device);
    if (!ids) return;
    for (const hubId of [...ids]) {
      const pending = this.pending.get(hubId);
      if (pending) this.settleWith(pending, code, message);
    }
  }

  /** Answers everything in flight (the hub is closing) and refuses new commands. */
  close(): void {
    this.closed = true;
    for (const pending of [...this.pending.values()]) this.settleWith(pending, 'INTERNAL', 'the hub is shutting down');
  }

  private ownPending(hubId: string, device: string): Pending | undefined {
    const pending = this.pending.get(hubId);
    // A device answers only its own commands.
    return pending && pending.request.device === device ? pending : undefined;
  }

  private settleWith(pending: Pending, code: ErrorCode, message: string): void {
    this.settle(pending.hubId, errorReply(pending.request.id ?? null, pending.request.device, code, message));
  }

  private settle(hubId: string, reply: Reply): void {
    const pending = this.pending.get(hubId);
    if (!pending) return;
    this.pending.delete(hubId);
    clearTimeout(pending.timer);
    const device = pending.request.device;
    const ids = this.perDevice.get(device);
    if (ids) {
      ids.delete(hubId);
      if (ids.size === 0) this.perDevice.delete(device);
    }
    this.presence.trackClient(device, pending.origin.clientId, -1);
    this.log.debug(
      { device, command: hubId, status: reply.status, code: reply.status === 'error' ? reply.code : undefined, ms: Date.now() - pending.startedAt },
      'command settled',
    );
    pending.settle(reply);
  }
}

/** The `id` of an oversized JSON response, read from its head without parsing the whole. */
/** The `id` of a JSON Response, read off its first bytes without parsing it all. */
export function peekId(payload: Buffer | string): string | null {
  const head = (typeof payload === 'string' ? payload.slice(0, 512) : payload.subarray(0, 512).toString('utf8'));
  const match = /"id"\s*:\s*"([^"\\]{1,256})"/.exec(head);
  return match?.[1] ?? null;
}
