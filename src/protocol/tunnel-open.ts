/**
 * The `open` that starts a tunnel (docs/protocol.md "Kinds"), checked at both edges it crosses:
 * the hub checks a client's (with `device`, and no field another kind uses: refused by name),
 * hypha checks the hub's (with `actor`; unknown fields ignored, for newer hubs). One set of
 * field rules for both, with their defaults filled in.
 */
import { z } from 'zod';
import { idProblem } from './ids.js';
import { expect, validate, type Validation } from './schemas.js';
import { MAX_DATA_BYTES, TUNNEL_KINDS, type OpenControl } from './tunnel.js';

export const DEFAULT_COLS = 80;
export const DEFAULT_ROWS = 24;
export const DEFAULT_TERM = 'xterm-256color';
export const DEFAULT_FILE_MODE = 0o644;
/** The largest window an `open` may grant: more would let one tunnel hold gigabytes in flight. */
export const MAX_WINDOW_BYTES = 64 * 1024 * 1024;

const whole = (what: string, min: number, max: number) =>
  z
    .number({ error: expect(`must be ${what} from ${min} to ${max}`) })
    .int({ error: `must be ${what} from ${min} to ${max}` })
    .min(min, { error: `must be at least ${min}` })
    .max(max, { error: `must be at most ${max}` });

export const terminalSize = whole('a whole number', 1, 1000);
export const byteCount = whole('a whole number of bytes', 0, Number.MAX_SAFE_INTEGER);

const path = z
  .string({ error: expect('must be an absolute path') })
  .min(1, { error: 'must not be empty' })
  .max(4096, { error: 'must be at most 4096 characters' })
  .refine((p) => !p.includes('\u0000'), { error: 'must not contain NUL' })
  .refine((p) => p.startsWith('/'), { error: 'must be an absolute path' });

/** Each kind's own fields. */
const KIND_FIELDS = {
  shell: {
    cols: terminalSize.default(DEFAULT_COLS),
    rows: terminalSize.default(DEFAULT_ROWS),
    term: z
      .string({ error: expect('must be a string') })
      .regex(/^[A-Za-z0-9._+-]{1,64}$/, { error: 'must be 1 to 64 of A-Z a-z 0-9 . _ + -' })
      .default(DEFAULT_TERM),
  },
  file_put: {
    path,
    size: byteCount,
    sha256: z
      .string({ error: expect('must be a string') })
      .regex(/^[0-9a-fA-F]{64}$/, { error: 'must be 64 hex digits' })
      .transform((hex) => hex.toLowerCase()),
    mode: whole('permission bits', 0, 0o7777).default(DEFAULT_FILE_MODE),
  },
  file_get: { path },
  agent_upgrade: {
    size: byteCount,
    sha256: z
      .string({ error: expect('must be a string') })
      .regex(/^[0-9a-fA-F]{64}$/, { error: 'must be 64 hex digits' })
      .transform((hex) => hex.toLowerCase()),
    version: z.string({ error: expect('must be a string') }).regex(/^[A-Za-z0-9.+_-]{1,64}$/, { error: 'must be 1 to 64 of A-Z a-z 0-9 . + _ -' }),
  },
  tcp: {
    host: z
      .string({ error: expect('must be a host name or address') })
      .min(1, { error: 'must not be empty' })
      .max(253, { error: 'must be at most 253 characters' })
      .regex(/^[A-Za-z0-9.:_%[\]-]+$/, { error: 'must be a host name or an IP address' })
      .default('localhost'),
    port: whole('a port number', 1, 65535),
  },
} as const;

const base = {
  t: z.literal('open'),
  /** The receive window the opener grants: at least one full DATA frame. */
  window: whole('a number of bytes', MAX_DATA_BYTES, MAX_WINDOW_BYTES).optional(),
};
const device = z.string({ error: expect('must be a device id') }).superRefine((value, ctx) => {
  const problem = idProblem(value);
  if (problem) ctx.addIssue({ code: 'custom', message: problem });
});
const actor = z.string({ error: expect('must be a string') }).max(256, { error: 'must be at most 256 characters' }).optional();

const deviceSide = {
  shell: z.object({ ...base, actor, kind: z.literal('shell'), ...KIND_FIELDS.shell }),
  file_put: z.object({ ...base, actor, kind: z.literal('file_put'), ...KIND_FIELDS.file_put }),
  file_get: z.object({ ...base, actor, kind: z.literal('file_get'), ...KIND_FIELDS.file_get }),
  tcp: z.object({ ...base, actor, kind: z.literal('tcp'), ...KIND_FIELDS.tcp }),
  agent_upgrade: z.object({ ...base, actor, kind: z.literal('agent_upgrade'), ...KIND_FIELDS.agent_upgrade }),
};
const clientSide = {
  shell: z.strictObject({ ...base, device, kind: z.literal('shell'), ...KIND_FIELDS.shell }),
  file_put: z.strictObject({ ...base, device, kind: z.literal('file_put'), ...KIND_FIELDS.file_put }),
  file_get: z.strictObject({ ...base, device, kind: z.literal('file_get'), ...KIND_FIELDS.file_get }),
  tcp: z.strictObject({ ...base, device, kind: z.literal('tcp'), ...KIND_FIELDS.tcp }),
  agent_upgrade: z.strictObject({ ...base, device, kind: z.literal('agent_upgrade'), ...KIND_FIELDS.agent_upgrade }),
};

export type ShellOpenRequest = z.infer<typeof deviceSide.shell>;
export type FilePutOpenRequest = z.infer<typeof deviceSide.file_put>;
export type FileGetOpenRequest = z.infer<typeof deviceSide.file_get>;
export type TcpOpenRequest = z.infer<typeof deviceSide.tcp>;
export type AgentUpgradeOpenRequest = z.infer<typeof deviceSide.agent_upgrade>;
/** An `open` as a device receives it, defaults filled in. */
export type OpenRequest = ShellOpenRequest | FilePutOpenRequest | FileGetOpenRequest | TcpOpenRequest | AgentUpgradeOpenRequest;
/** An `open` as a client sends it to the hub, defaults filled in (the fields of its kind are set). */
export type ClientOpen = OpenControl & { device: string };

function kindProblem(control: unknown): Validation<never> | null {
  const kind = (control as { kind?: unknown }).kind;
  if (kind === undefined) return { ok: false, field: 'kind', message: 'kind is required' };
  if (!(TUNNEL_KINDS as readonly unknown[]).includes(kind)) return { ok: false, field: 'kind', message: `kind must be one of ${TUNNEL_KINDS.join(', ')}` };
  return null;
}

/** The hub's check of a client's `open`; the message names the field (`kind is required`, `path is not a field of a shell open`). */
export function validateClientOpen(control: unknown): Validation<ClientOpen> {
  const problem = kindProblem(control);
  if (problem) return problem;
  const kind = (control as { kind: keyof typeof clientSide }).kind;
  const schema = clientSide[kind];
  // zod reports unknown keys without a path: name the first one here.
  const extra = Object.keys(control as object).find((key) => !Object.hasOwn(schema.shape, key));
  if (extra !== undefined) return { ok: false, field: extra, message: `${extra} is not a field of a ${kind} open` };
  return validate(schema as unknown as z.ZodType<ClientOpen>, control);
}

/** hypha's check of the hub's `open`. */
export function parseOpen(control: unknown): Validation<OpenRequest> {
  const problem = kindProblem(control);
  if (problem) return problem;
  return validate(deviceSide[(control as { kind: keyof typeof deviceSide }).kind] as z.ZodType<OpenRequest>, control);
}
