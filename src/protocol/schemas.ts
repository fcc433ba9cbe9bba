/**
 * Payload schemas of the wire contract (PROTOCOL.md "Payloads", "Orders", "Status").
 * Untrusted input is checked here, once, at the edge; everything past it is typed.
 */
import { z } from 'zod';
import type { ErrorCode } from '../errors.js';
import { idProblem } from './ids.js';

export const ORDERS = ['exec_bash', 'exec_bash_ret_okng_only', 'exec_bash_no_return'] as const;
export type Order = (typeof ORDERS)[number];

export const TIMEOUT_MS_MIN = 1000;
export const TIMEOUT_MS_MAX = 3_600_000;
export const TIMEOUT_MS_DEFAULT = 60_000;
export const REQUEST_ID_MAX_LENGTH = 64;

/** A zod error callback: "is required" when the field is absent, else the given text. */
export const expect = (text: string) => (issue: { input?: unknown }) => (issue.input === undefined ? 'is required' : text);

const deviceId = z.string({ error: expect('must be a string') }).superRefine((value, ctx) => {
  const problem = idProblem(value);
  if (problem) ctx.addIssue({ code: 'custom', message: problem });
});

const order = z.enum(ORDERS, { error: expect(`must be one of ${ORDERS.join(', ')}`) });
const cmdStr = z.string({ error: expect('must be a string') }).min(1, { error: 'must not be empty' });
const timeoutMs = z
  .number({ error: expect('must be a number of milliseconds') })
  .int({ error: 'must be a whole number of milliseconds' })
  .min(TIMEOUT_MS_MIN, { error: `must be at least ${TIMEOUT_MS_MIN}` })
  .max(TIMEOUT_MS_MAX, { error: `must be at most ${TIMEOUT_MS_MAX}` });

/** Request, client → hub on `P/clients/{clientId}/request`. */
export const RequestSchema = z.object({
  type: z.literal('command', { error: expect('must be "command"') }).optional(),
  id: z
    .string({ error: expect('must be a string') })
    .min(1, { error: 'must not be empty' })
    .max(REQUEST_ID_MAX_LENGTH, { error: `must be at most ${REQUEST_ID_MAX_LENGTH} characters` }),
  device: deviceId,
  order,
  cmd_str: cmdStr,
  timeout_ms: timeoutMs.optional(),
});
export type Request = z.infer<typeof RequestSchema>;

/** Body of `POST /api/devices/{id}/commands`. */
export const RestCommandSchema = z.object({
  id: z
    .string({ error: expect('must be a string') })
    .min(1, { error: 'must not be empty' })
    .max(REQUEST_ID_MAX_LENGTH, { error: `must be at most ${REQUEST_ID_MAX_LENGTH} characters` })
    .optional(),
  order,
  cmd_str: cmdStr,
  timeout_ms: timeoutMs.optional(),
});
export type RestCommand = z.infer<typeof RestCommandSchema>;

/** Command, hub → device on `P/devices/{id}/command`. */
export const CommandSchema = z.object({
  type: z.literal('command', { error: expect('must be "command"') }),
  id: z.string().min(1).max(256),
  order,
  cmd_str: cmdStr,
  timeout_ms: timeoutMs,
});
export type Command = z.infer<typeof CommandSchema>;

/**
 * Device-side failure codes a device may put in a Response (an extension documented in
 * docs/protocol.md): the hub turns such a Response into an error Reply with that code.
 */
export const DEVICE_ERROR_CODES = ['TIMEOUT', 'BUSY', 'BAD_REQUEST', 'INTERNAL', 'PAYLOAD_TOO_LARGE'] as const satisfies readonly ErrorCode[];

/** Response, device → hub on `P/devices/{id}/response`. Lenient: only `id` is required. */
export const ResponseSchema = z.object({
  type: z.literal('response').optional(),
  id: z.string({ error: expect('must be a string') }).min(1).max(256),
  result: z.string().nullable().optional(),
  error: z.string().nullable().optional(),
  exit_code: z.number().int().nullable().optional(),
  duration_ms: z.number().nonnegative().nullable().optional(),
  truncated: z.boolean().optional(),
  code: z.enum(DEVICE_ERROR_CODES).optional(),
  message: z.string().optional(),
});
export type Response = z.infer<typeof ResponseSchema>;

/** What a device's command produced, as the hub hands it to callers. */
export interface CommandResult {
  result: string | null;
  error: string;
  exit_code: number | null;
  duration_ms: number | null;
  truncated: boolean;
}

export interface OkReply extends CommandResult {
  type: 'response';
  id: string | null;
  device: string | null;
  status: 'ok';
}

export interface ErrorReply {
  type: 'response';
  id: string | null;
  device: string | null;
  status: 'error';
  code: ErrorCode;
  message: string;
}

export type Reply = OkReply | ErrorReply;

export type Transport = 'mqtt' | 'mqtt-ws' | 'legacy-ws';

export const PRESENCE_NONCE_PATTERN = /^[A-Za-z0-9_-]{8,64}$/;

/**
 * Birth and will, device → everyone on `P/devices/{id}/presence`, retained (docs/protocol.md
 * "Presence messages"). The nonce is new on every connect: a will with another nonce than the
 * current birth's is an older connection's, and changes nothing.
 */
export const PresenceMessageSchema = z.object({
  online: z.boolean({ error: expect('must be true or false') }),
  nonce: z.string({ error: expect('must be a string') }).regex(PRESENCE_NONCE_PATTERN, { error: 'must be 8 to 64 characters of A-Z a-z 0-9 _ -' }),
  transport: z.enum(['mqtt', 'mqtt-ws'], { error: expect('must be "mqtt" or "mqtt-ws"') }).optional(),
  /** Birth only: the device serves tunnels (it subscribes to `P/devices/{id}/tunnels/+/in`). */
  tunnels: z.boolean({ error: expect('must be true or false') }).optional(),
  /** The agent and its version, e.g. "hypha/0.1.0". */
  agent: z.string({ error: expect('must be a string') }).max(64, { error: 'must be at most 64 characters' }).optional(),
  /** Birth only: the device's time zone (an IANA name), for job windows in the device's time. */
  tz: z
    .string({ error: expect('must be a string') })
    .max(64, { error: 'must be at most 64 characters' })
    .regex(/^[A-Za-z0-9_+\-/]+$/, { error: 'must be a time zone name like Europe/Berlin' })
    .optional(),
});
export type PresenceMessage = z.infer<typeof PresenceMessageSchema>;

/** Retained on `P/devices/{id}/status`. `tags` is an addition to the v1 fields (docs/protocol.md). */
export interface Status {
  online: boolean;
  since: string;
  transport: Transport | null;
  tags: string[];
  /** An addition: the agent and version of the device's last birth ("hypha/0.1.0"), when it announced one. */
  agent?: string;
}

export type Validation<T> = { ok: true; value: T } | { ok: false; field: string; message: string };

/** Checks a value against a schema; on failure names the first offending field. */
export function validate<T>(schema: z.ZodType<T>, value: unknown): Validation<T> {
  const parsed = schema.safeParse(value);
  if (parsed.success) return { ok: true, value: parsed.data };
  const issue = parsed.error.issues[0];
  const field = issue && issue.path.length > 0 ? issue.path.join('.') : '(body)';
  let message = issue?.message ?? 'is invalid';
  if (issue?.code === 'invalid_type' && message.startsWith('Invalid input')) {
    // zod leaves `input` out of its issues, so look the field up to tell "missing" from "wrong type".
    message = valueAt(value, issue.path) === undefined ? 'is required' : `must be ${issue.expected}`;
  }
  return { ok: false, field, message: `${field} ${message}` };
}

function valueAt(value: unknown, path: readonly PropertyKey[]): unknown {
  let current = value;
  for (const key of path) {
    if (current === null || typeof current !== 'object') return undefined;
    current = (current as Record<PropertyKey, unknown>)[key];
  }
  return current;
}

/** Parses a JSON payload and validates it; a payload that is not a JSON object is BAD_REQUEST on "(body)". */
export function parsePayload<T>(schema: z.ZodType<T>, payload: Buffer | string): Validation<T> & { raw?: unknown } {
  let raw: unknown;
  try {
    raw = JSON.parse(typeof payload === 'string' ? payload : payload.toString('utf8'));
  } catch {
    return { ok: false, field: '(body)', message: 'payload is not valid JSON' };
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    return { ok: false, field: '(body)', message: 'payload must be a JSON object' };
  }
  return { ...validate(schema, raw), raw };
}
