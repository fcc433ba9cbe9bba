/**
 * The SDK's one error class. `code` is a code of the wire contract's catalogue
 * (docs/protocol.md "Error codes"), or `NOT_CONNECTED` when the SDK itself could not reach
 * the hub (connection refused, closed, or `close()` called with requests outstanding).
 */
import { isErrorCode, type ErrorCode } from '../errors.js';

export type ClientErrorCode = ErrorCode | 'NOT_CONNECTED';

export class ClientError extends Error {
  readonly code: ClientErrorCode;
  /** The device the failed call was about, when there was one. */
  readonly device: string | null;

  constructor(code: ClientErrorCode, message: string, options: { device?: string | null; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ClientError';
    this.code = code;
    this.device = options.device ?? null;
  }
}

/** A code read off the wire: a catalogue code, else INTERNAL (the hub never sends another). */
export function codeOf(value: unknown): ErrorCode {
  return isErrorCode(value) ? value : 'INTERNAL';
}
