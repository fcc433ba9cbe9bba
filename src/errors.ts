/**
 * The catalogue of error codes (PROTOCOL.md "Payloads"): the same codes travel in MQTT
 * Replies, REST answers and HubError.code, so a script can branch on them.
 */
export const ERROR_CODES = {
  BAD_REQUEST: { http: 400, summary: 'not JSON, or a field missing or invalid (the message names the field)' },
  UNKNOWN_DEVICE: { http: 404, summary: 'no device with that id has ever connected to this hub' },
  DEVICE_OFFLINE: { http: 409, summary: 'the device is not connected, or dropped while the command was in flight' },
  TIMEOUT: { http: 504, summary: 'the command ran past timeout_ms and was killed with its process group, or the device never answered' },
  FORBIDDEN: { http: 403, summary: 'the caller may not do this (for example, publish on another client\'s request topic)' },
  PAYLOAD_TOO_LARGE: { http: 413, summary: 'the request (or the device\'s response) is larger than the configured limit' },
  BUSY: { http: 429, summary: 'too many commands in flight for the device or for the hub, or the device\'s queue is full' },
  INTERNAL: { http: 500, summary: 'an unexpected failure inside the hub or on the device (for example, bash could not be started)' },
  UNKNOWN_TUNNEL: { http: 404, summary: 'a tunnel frame names a tunnel that is not open (never opened, or already closed)' },
  UNSUPPORTED: { http: 501, summary: 'the device does not offer this kind of tunnel (an older agent, no PTY support, or switched off there)' },
  NOT_FOUND: { http: 404, summary: 'the file or directory named on the device does not exist' },
  PATH_OUTSIDE_ROOT: { http: 403, summary: 'a file path resolves outside the directory the device allows file transfer in (hypha --file-root)' },
  CHECKSUM_MISMATCH: { http: 422, summary: 'the bytes received do not have the SHA-256 or the size announced; nothing was written in place of the target' },
  CONNECT_FAILED: { http: 502, summary: 'the device could not open the TCP connection a port forward asked for' },
  BROKER_UNAVAILABLE: { http: 503, summary: 'the hub runs on an external broker (--broker) and has no connection to it now; it reconnects by itself' },
  IO_ERROR: { http: 500, summary: 'reading or writing a file on the device (or beside the target on the client) failed; the message says how' },
  UPGRADE_FAILED: { http: 502, summary: 'an agent upgrade did not take: the new agent failed its check on the device, or did not come back in time (the device keeps or restores its previous agent)' },
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

export const ERROR_CODE_LIST = Object.keys(ERROR_CODES) as ErrorCode[];

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.hasOwn(ERROR_CODES, value);
}

export function httpStatusOf(code: ErrorCode): number {
  return ERROR_CODES[code].http;
}

/** The one error class of the hub: a stable `code` from the catalogue, a message for people. */
export class HubError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'HubError';
    this.code = code;
  }
}

/** The hub failed to start (a port in use, say); `message` is the one line the CLI prints. */
export class StartError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StartError';
  }
}
