/**
 * The `open` frame as hypha receives it from the hub (docs/protocol.md "Remote access:
 * tunnels", "Kinds"): untrusted, so checked here once; each kind's handler gets typed fields.
 */
import { z } from 'zod';
import { expect, validate, type Validation } from '../../protocol/schemas.js';
import { TUNNEL_KINDS } from '../../protocol/tunnel.js';

export const DEFAULT_COLS = 80;
export const DEFAULT_ROWS = 24;
export const DEFAULT_TERM = 'xterm-256color';
export const DEFAULT_FILE_MODE = 0o644;
/** The largest window an `open` may grant: more would let one tunnel hold gigabytes in flight. */
export const MAX_WINDOW_BYTES = 64 * 1024 * 1024;

const whole = (min: number, max: number, what = 'a whole number') =>
  z
    .number({ error: expect(`must be ${what} from ${min} to ${max}`) })
    .int({ error: `must be ${what} from ${min} to ${max}` })
    .min(min, { error: `must be at least ${min}` })
    .max(max, { error: `must be at most ${max}` });

export const terminalSize = whole(1, 1000);

const path = z
  .string({ error: expect('must be a string') })
  .min(1, { error: 'must not be empty' })
  .max(4096, { error: 'must be at most 4096 characters' })
  .refine((value) => !value.includes('\u0000'), { error: 'must not contain NUL' })
  .refine((value) => value.startsWith('/'), { error: 'must be an absolute path' });

const common = {
  t: z.literal('open'),
  window: whole(1, MAX_WINDOW_BYTES).optional(),
  actor: z.string({ error: expect('must be a string') }).max(256, { error: 'must be at most 256 characters' }).optional(),
};

const ShellOpen = z.object({
  ...common,
  kind: z.literal('shell'),
  cols: terminalSize.default(DEFAULT_COLS),
  rows: terminalSize.default(DEFAULT_ROWS),
  term: z
    .string({ error: expect('must be a string') })
    .regex(/^[A-Za-z0-9._+-]{1,64}$/, { error: 'must be 1 to 64 of A-Z a-z 0-9 . _ + -' })
    .default(DEFAULT_TERM),
});

const FilePutOpen = z.object({
  ...common,
  kind: z.literal('file_put'),
  path,
  size: whole(0, Number.MAX_SAFE_INTEGER, 'a byte count'),
  sha256: z.string({ error: expect('must be a string') }).regex(/^[0-9a-fA-F]{64}$/, { error: 'must be 64 hex digits' }).transform((hex) => hex.toLowerCase()),
  mode: whole(0, 0o7777, 'permission bits').default(DEFAULT_FILE_MODE),
});

const FileGetOpen = z.object({ ...common, kind: z.literal('file_get'), path });

const TcpOpen = z.object({
  ...common,
  kind: z.literal('tcp'),
  host: z
    .string({ error: expect('must be a string') })
    .min(1, { error: 'must not be empty' })
    .max(253, { error: 'must be at most 253 characters' })
    .default('localhost'),
  port: whole(1, 65535, 'a port'),
});

const OpenSchema = z.discriminatedUnion('kind', [ShellOpen, FilePutOpen, FileGetOpen, TcpOpen]);

export type OpenRequest = z.infer<typeof OpenSchema>;
export type ShellOpenRequest = z.infer<typeof ShellOpen>;
export type FilePutOpenRequest = z.infer<typeof FilePutOpen>;
export type FileGetOpenRequest = z.infer<typeof FileGetOpen>;
export type TcpOpenRequest = z.infer<typeof TcpOpen>;

/** Checks an `open`; the failure's message names the field ("kind is required", "cols must be at most 1000"). */
export function parseOpen(control: unknown): Validation<OpenRequest> {
  const kind = (control as { kind?: unknown }).kind;
  // zod's discriminated union says the same thing for a missing and a wrong kind; say which.
  if (kind === undefined) return { ok: false, field: 'kind', message: 'kind is required' };
  if (!(TUNNEL_KINDS as readonly unknown[]).includes(kind)) return { ok: false, field: 'kind', message: `kind must be one of ${TUNNEL_KINDS.join(', ')}` };
  return validate(OpenSchema, control);
}

/** `resize`: the new terminal size, or what is wrong with it. */
export function parseResize(control: unknown): Validation<{ cols: number; rows: number }> {
  return validate(z.object({ cols: terminalSize, rows: terminalSize }), control);
}

/** `ack`: the cumulative byte count, or what is wrong with it. */
export function parseAck(control: unknown): Validation<{ bytes: number }> {
  return validate(z.object({ bytes: whole(0, Number.MAX_SAFE_INTEGER, 'a byte count') }), control);
}
