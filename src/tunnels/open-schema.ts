/**
 * The `open` a client sends as the first frame of a tunnel (docs/protocol.md "Kinds"). One
 * schema per kind, so a field another kind uses is refused by name instead of ignored. Size
 * limits that depend on the configuration (`--max-file-bytes`) are checked by the relay, in
 * their place in the order of checks.
 */
import { z } from 'zod';
import { idProblem } from '../protocol/ids.js';
import { expect, validate, type Validation } from '../protocol/schemas.js';
import { MAX_DATA_BYTES, TUNNEL_KINDS, type OpenControl } from '../protocol/tunnel.js';

const whole = (what: string, min: number, max: number) =>
  z
    .number({ error: expect(`must be ${what}`) })
    .int({ error: 'must be a whole number' })
    .min(min, { error: `must be ${min} to ${max}` })
    .max(max, { error: `must be ${min} to ${max}` });

const device = z.string({ error: expect('must be a device id') }).superRefine((value, ctx) => {
  const problem = idProblem(value);
  if (problem) ctx.addIssue({ code: 'custom', message: problem });
});
const path = z
  .string({ error: expect('must be an absolute path') })
  .min(1, { error: 'must not be empty' })
  .max(4096, { error: 'must be at most 4096 characters' })
  .refine((p) => p.startsWith('/'), { error: 'must be an absolute path (start with /)' })
  .refine((p) => !p.includes('\u0000'), { error: 'must not contain NUL' });
/** The receive window the opener grants: at least one full DATA frame, at most 64 MiB. */
const window = whole('a number of bytes', MAX_DATA_BYTES, 64 * 1024 * 1024).optional();

const common = { t: z.literal('open'), device, window };

const shell = z.strictObject({
  ...common,
  kind: z.literal('shell'),
  cols: whole('a number of columns', 1, 1000).optional(),
  rows: whole('a number of rows', 1, 1000).optional(),
  term: z
    .string({ error: expect('must be a string') })
    .regex(/^[A-Za-z0-9._+-]{1,64}$/, { error: 'must be 1 to 64 of A-Z a-z 0-9 . _ + -' })
    .optional(),
});
const filePut = z.strictObject({
  ...common,
  kind: z.literal('file_put'),
  path,
  size: whole('a number of bytes', 0, Number.MAX_SAFE_INTEGER),
  sha256: z.string({ error: expect('must be a string') }).regex(/^[0-9a-f]{64}$/i, { error: 'must be 64 hex digits' }),
  mode: whole('permission bits', 0, 0o7777).optional(),
});
const fileGet = z.strictObject({ ...common, kind: z.literal('file_get'), path });
const tcp = z.strictObject({
  ...common,
  kind: z.literal('tcp'),
  host: z
    .string({ error: expect('must be a host name or address') })
    .min(1, { error: 'must not be empty' })
    .max(253, { error: 'must be at most 253 characters' })
    .regex(/^[A-Za-z0-9.:_%[\]-]+$/, { error: 'must be a host name or an IP address' })
    .optional(),
  port: whole('a port number', 1, 65535),
});

const SCHEMAS = { shell, file_put: filePut, file_get: fileGet, tcp } as const;

/** A valid client `open`: the device named, the kind's fields filled in with their defaults. */
export type ClientOpen = OpenControl & { device: string };

/** Validates a client's `open`; the message names the field (`kind must be …`, `size is required`). */
export function validateOpen(control: unknown): Validation<ClientOpen> {
  const kind = (control as { kind?: unknown }).kind;
  if (typeof kind !== 'string' || !(TUNNEL_KINDS as readonly string[]).includes(kind)) {
    return { ok: false, field: 'kind', message: `kind ${kind === undefined ? 'is required' : `must be one of ${TUNNEL_KINDS.join(', ')}`}` };
  }
  const schema = SCHEMAS[kind as keyof typeof SCHEMAS];
  // zod reports unknown keys without a path: name the first one here.
  const extra = Object.keys(control as object).find((key) => !Object.hasOwn(schema.shape, key));
  if (extra !== undefined) return { ok: false, field: extra, message: `${extra} is not a field of a ${kind} open` };
  const checked = validate(schema as unknown as z.ZodType<ClientOpen>, control);
  if (!checked.ok) return checked;
  const open = checked.value;
  if (open.kind === 'shell') return { ok: true, value: { ...open, cols: open.cols ?? 80, rows: open.rows ?? 24, term: open.term ?? 'xterm-256color' } };
  if (open.kind === 'file_put') return { ok: true, value: { ...open, sha256: open.sha256!.toLowerCase(), mode: open.mode ?? 0o644 } };
  if (open.kind === 'tcp') return { ok: true, value: { ...open, host: open.host ?? 'localhost' } };
  return { ok: true, value: open };
}
