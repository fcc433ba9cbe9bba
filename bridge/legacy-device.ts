/**
 * The legacy device endpoint, WebSocket `/device` (PROTOCOL.md "Legacy protocols"): devices
 * running the original hypha agent (wc.py) join the hub unchanged and answer all three
 * orders as clients see them from any MQTT device.
 *
 * The original agent knows one order, `exec_bash`; it runs `cmd_str` with /bin/sh (dash on
 * Debian), `.strip()`s stdout and stderr, sends no exit status and no command id, runs one
 * command at a time, and after 60 s stops waiting and answers nothing. So the bridge sends one
 * command at a time and wraps each in a small sh script that runs the real command with bash
 * under `timeout`, and frames its output with markers carrying a random per-command nonce and
 * the exit status. The markers make the answer exact (whitespace the agent strips survives,
 * the exit status comes back) and tell a late answer of an abandoned command from the answer
 * of the current one.
 */
import { randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import type { Dispatcher } from '../src/dispatcher.js';
import type { UpgradeHandler } from '../src/http.js';
import { DEFAULT_OUTPUT_CAP, trimTrailingNewlines } from '../src/hypha/runner.js';
import type { AuthResult } from '../src/auth/authenticator.js';
import type { Logger } from '../src/log.js';
import type { DeviceLink, OfflineReason, Presence } from '../src/presence.js';
import { idProblem } from '../src/protocol/ids.js';
import type { Command, Response } from '../src/protocol/schemas.js';

/**
 * Longest time a command may run on an original agent. The agent stops waiting for a command
 * after 60 s and then never answers; 55 s leaves room for the 1 s kill grace and the trip back.
 */
export const LEGACY_DEVICE_LIMIT_MS = 55_000;
/** A command with less time than this left when its turn comes is answered TIMEOUT unsent: `timeout` could not give it a fair run. */
export const LEGACY_MIN_REMAINING_MS = 1000;
/** Time the device gets beyond the command's limit to deliver its answer before the bridge gives up on it. */
export const LEGACY_ANSWER_GRACE_MS = 2000;
/** How long a device without the x-custome-id header has to send its register message. */
export const LEGACY_REGISTER_WAIT_MS = 10_000;
/**
 * Largest message a legacy device may send. The original agent does not cap output, and JSON
 * escaping can make it up to six times larger; the bridge caps each stream at 1 MiB itself.
 */
export const LEGACY_DEVICE_MESSAGE_MAX_BYTES = 16 * 1024 * 1024;
/** Between SIGTERM and SIGKILL of a timed-out command, as hypha does. */
const KILL_GRACE_SECONDS = 1;
/** Nonces of abandoned commands remembered to recognise their late answers. */
const ABANDONED_MEMORY = 256;
/** Ids shown in logs are cut to this length: a device's register message is untrusted. */
const LOGGED_ID_MAX = 140;

const MARK = '__rhizosphere';
const EXIT_MARKER = new RegExp(`(^|\\n)${MARK}_exit:([0-9a-f]{1,64}):(\\d{1,3})(?=\\n|$)`, 'g');

/** POSIX single quoting: the text comes out of sh, dash or bash unchanged, whatever it holds. */
export function shQuote(text: string): string {
  return `'${text.replaceAll("'", `'\\''`)}'`;
}

/**
 * `text` as one sh word made only of printable ASCII. The original agent runs on Python 2,
 * where `"exec {}".format(cmd_str)` throws on any other character, and then it answers
 * nothing. Text with such characters is rebuilt on the device by printf from octal escapes
 * (a command substitution, which drops trailing newlines: they mean nothing to bash -c).
 */
export function asciiShellWord(text: string): string {
  if (/^[\x20-\x7e\t\n]*$/.test(text)) return shQuote(text);
  let format = '';
  for (const byte of Buffer.from(text, 'utf8')) {
    const plain = byte >= 0x20 && byte < 0x7f && byte !== 0x5c && byte !== 0x25 && byte !== 0x27; // not \ % '
    format += plain ? String.fromCharCode(byte) : `\\${byte.toString(8).padStart(3, '0')}`;
  }
  return `"$(printf '${format}')"`;
}

export function newNonce(): string {
  return randomBytes(8).toString('hex');
}

const beginGuard = (nonce: string) => `${MARK}_begin:${nonce}`;
const endGuard = (nonce: string) => `${MARK}_end:${nonce}`;
const exitLine = (nonce: string) => `printf '\\n${MARK}_exit:${nonce}:%d\\n' "$s" >&2`;

/**
 * The `cmd_str` that the original agent runs with /bin/sh for `command`. The real command runs
 * with bash, without stdin, killed with its process group by `timeout` after `limitMs` (exit
 * status 124, or 137 when SIGKILL was needed). stderr's last line carries the nonce and the
 * exit status. For exec_bash, a guard line opens stdout and stderr and one closes stdout, so
 * the agent's `.strip()` only ever removes the bridge's own newlines.
 */
export function wrapCommand(command: Pick<Command, 'order' | 'cmd_str'>, nonce: string, limitMs: number): string {
  const bash = `bash -c ${asciiShellWord(command.cmd_str)} </dev/null`;
  const limited = `timeout -k ${KILL_GRACE_SECONDS} ${(limitMs / 1000).toFixed(3)} ${bash}`;
  switch (command.order) {
    case 'exec_bash':
      return [
        `printf '${beginGuard(nonce)}\\n'`,
        `printf '${beginGuard(nonce)}\\n' >&2`,
        // dash reports a child killed by a signal ("Killed") on the stderr it has while waiting,
        // and hypha's output has no such line. So dash waits with its stderr on /dev/null, while
        // the command, exec'd in a subshell, writes to the real stderr (kept on fd 3).
        `{ ( exec 2>&3 3>&-; exec ${limited} ); s=$?; } 3>&2 2>/dev/null`,
        `printf '\\n${endGuard(nonce)}\\n'`,
        exitLine(nonce),
      ].join('; ');
    case 'exec_bash_ret_okng_only':
      return `${limited} >/dev/null 2>&1; s=$?; ${exitLine(nonce)}`;
    case 'exec_bash_no_return':
      // nohup: the command must survive a hangup of the agent's terminal; `$?` of `&` is 0.
      return `nohup ${bash} >/dev/null 2>&1 & s=$?; ${exitLine(nonce)}`;
  }
}

/** What a marked answer carries: whose it is, the exit status, and the command's own output. */
export interface UnwrappedAnswer {
  nonce: string;
  status: number;
  stdout: string;
  stderr: string;
}

/** Reads the markers of an answer to `wrapCommand`; null when it carries none. */
export function unwrapAnswer(result: string, error: string): UnwrappedAnswer | null {
  let last: RegExpExecArray | null = null;
  for (const match of error.matchAll(EXIT_MARKER)) last = match;
  if (!last) return null;
  const nonce = last[2]!;
  const status = Number(last[3]);
  // Anything after the marker came from a background process after the command ended: dropped, as hypha drops late output.
  const stderr = withoutPrefix(error.slice(0, last.index), `${beginGuard(nonce)}\n`);
  let stdout = withoutPrefix(result, `${beginGuard(nonce)}\n`);
  const end = stdout.lastIndexOf(`\n${endGuard(nonce)}`);
  if (end >= 0) stdout = stdout.slice(0, end);
  return { nonce, status, stdout, stderr };
}

function withoutPrefix(text: string, prefix: string): string {
  return text.startsWith(prefix) ? text.slice(prefix.length) : text;
}

/** Keeps the first `capBytes` of the text's UTF-8, as hypha caps a stream; a character cut in two becomes U+FFFD. */
export function capOutput(text: string, capBytes = DEFAULT_OUTPUT_CAP): { text: string; truncated: boolean } {
  if (Buffer.byteLength(text, 'utf8') <= capBytes) return { text, truncated: false };
  const kept = Buffer.from(text, 'utf8').subarray(0, capBytes);
  return { text: new TextDecoder('utf-8', { ignoreBOM: true }).decode(kept), truncated: true };
}

export type DeviceMessage =
  | { kind: 'register'; id: unknown }
  | { kind: 'answer'; result: string; error: string }
  | { kind: 'invalid'; problem: string };

/** Sorts a message from a legacy device: `{"command":"register","id"}` or `{"order":"response","result","error"}`. */
export function readDeviceMessage(text: string): DeviceMessage {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return { kind: 'invalid', problem: 'message is not valid JSON' };
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) return { kind: 'invalid', problem: 'message must be a JSON object' };
  const fields = body as Record<string, unknown>;
  if (fields.command === 'register') return { kind: 'register', id: fields.id };
  if (fields.order !== 'response') return { kind: 'invalid', problem: 'message is neither a register nor a response message' };
  for (const field of ['result', 'error'] as const) {
    const value = fields[field];
    if (value !== undefined && value !== null && typeof value !== 'string') return { kind: 'invalid', problem: `${field} must be a string` };
  }
  return { kind: 'answer', result: (fields.result as string | null | undefined) ?? '', error: (fields.error as string | null | undefined) ?? '' };
}

/** A WebSocket close reason may hold at most 123 bytes. */
export function closeReason(text: string): string {
  let reason = text;
  while (Buffer.byteLength(reason) > 123) reason = reason.slice(0, -1);
  return reason;
}

/** The original agent sends `Authorization: Bearer {token}`: the device token. Never logged. */
function bearerToken(req: IncomingMessage): string | null {
  const header = req.headers.authorization;
  return header?.startsWith('Bearer ') ? header.slice('Bearer '.length) : null;
}

function logged(id: unknown): string {
  return String(id).slice(0, LOGGED_ID_MAX);
}

interface Queued {
  command: Command;
  /** performance.now() when the hub handed it over: time in the queue counts against timeout_ms. */
  enqueuedAt: number;
}

interface OnTheWire {
  command: Command;
  nonce: string;
  sentAt: number;
  limitMs: number;
  /** The command's time was cut to LEGACY_DEVICE_LIMIT_MS. */
  capped: boolean;
  giveUp: NodeJS.Timeout;
}

export interface LegacyDeviceDeps {
  presence: Presence;
  dispatcher: Dispatcher;
  log: Logger;
  registerWaitMs: number;
  /** Checks the id and the Bearer token (src/auth/authenticator.ts). */
  authenticate: (id: string, bearer: string | null) => AuthResult;
}

/** One legacy device connection: its id handshake, its command queue, its answers. */
export class LegacyDeviceLink implements DeviceLink {
  readonly transport = 'legacy-ws' as const;
  readonly remoteAddress: string | null;
  /** Known from the header or the register message; null until then. */
  private id: string | null = null;
  private state: 'identifying' | 'attached' | 'ended' = 'identifying';
  private readonly queue: Queued[] = [];
  private current: OnTheWire | null = null;
  private readonly abandoned = new Set<string>();
  private registerTimer: NodeJS.Timeout | undefined;
  private endCause: OfflineReason = 'disconnect';
  /** Kept out of reach: links are visible through `hub.connections`. */
  readonly #token: string | null;
  /** The hash of the token it authenticated with (a rotation ends the connection). */
  credential: string | undefined;

  constructor(
    private readonly ws: WebSocket,
    req: IncomingMessage,
    private readonly deps: LegacyDeviceDeps,
  ) {
    this.remoteAddress = req.socket.remoteAddress ?? null;
    this.#token = bearerToken(req);
    ws.on('message', (data, isBinary) => this.onMessage(data, isBinary));
    ws.on('pong', () => this.touch());
    ws.on('error', (error) => this.onSocketError(error));
    ws.once('close', () => this.end());
    this.identify(req.headers['x-custome-id']);
  }

  /** Called by the liveness check just before it terminates a socket that stopped answering pings. */
  noteUnresponsive(): void {
    this.endCause = 'keepalive-timeout';
    this.deps.log.info({ device: this.id, remoteAddress: this.remoteAddress }, 'legacy device stopped answering pings');
  }

  send(command: Command): void {
    this.queue.push({ command, enqueuedAt: performance.now() });
    this.sendNext();
  }

  /** Presence closes a link when another connection with the same id takes over. */
  close(reason: string): void {
    if (this.state === 'ended') return;
    const successor = this.id === null ? null : this.deps.presence.get(this.id)?.link;
    if (successor && successor !== this) {
      this.handOver(successor);
      // Replaced: whatever this socket still says belongs to no command, and presence has moved on.
      this.state = 'ended';
    }
    this.ws.close(1000, closeReason(reason));
  }

  /** Ends the socket at once (the hub is closing). */
  terminate(): void {
    this.ws.terminate();
  }

  private identify(header: string | string[] | undefined): void {
    if (header === undefined) {
      // The original agent always sends the header; without it, wait for the register message.
      this.registerTimer = setTimeout(() => this.refuse('x-custome-id header missing'), this.deps.registerWaitMs);
      return;
    }
    const id = Array.isArray(header) ? header.join(', ') : header;
    const problem = idProblem(id);
    if (problem) this.refuse(`x-custome-id ${problem}`);
    else this.attach(id);
  }

  private attach(id: string): void {
    const verdict = this.deps.authenticate(id, this.#token);
    if (!verdict.ok) {
      this.deps.log.warn({ code: 'FORBIDDEN', device: id, remoteAddress: this.remoteAddress }, `legacy device refused: ${verdict.reason}`);
      return this.refuse(`not authorized: ${verdict.reason}`);
    }
    clearTimeout(this.registerTimer);
    if (verdict.principal.kind === 'device') this.credential = verdict.principal.tokenHash;
    this.id = id;
    this.state = 'attached';
    this.deps.presence.attach(id, this);
  }

  private refuse(reason: string): void {
    if (this.state !== 'identifying') return;
    clearTimeout(this.registerTimer);
    this.state = 'ended';
    this.deps.log.info({ remoteAddress: this.remoteAddress, reason }, 'legacy device refused');
    this.ws.close(1008, closeReason(reason));
  }

  private touch(): void {
    if (this.state === 'attached' && this.id !== null) this.deps.presence.touch(this.id, this);
  }

  private onMessage(data: RawData, isBinary: boolean): void {
    if (this.state === 'ended') return;
    this.touch();
    const text = isBinary ? undefined : messageText(data);
    const message: DeviceMessage = text === undefined ? { kind: 'invalid', problem: 'message is binary' } : readDeviceMessage(text);
    switch (message.kind) {
      case 'register':
        return this.onRegister(message.id);
      case 'answer':
        return this.onAnswer(message.result, message.error);
      case 'invalid':
        return this.warn(message.problem);
    }
  }

  private onRegister(claimed: unknown): void {
    if (this.state === 'attached') {
      // wc.py registers with the Pi's serial even when --device_id chose the header id: the header wins.
      if (claimed !== this.id) this.deps.log.debug({ device: this.id, registered: logged(claimed) }, 'legacy device registered another id than its header; the header id is kept');
      return;
    }
    if (claimed === undefined) return this.refuse('x-custome-id header missing and the register message has no id');
    const problem = idProblem(claimed);
    if (problem) this.refuse(`register id ${problem}`);
    else this.attach(claimed as string);
  }

  private onAnswer(result: string, error: string): void {
    const unwrapped = unwrapAnswer(result, error);
    const current = this.current;
    if (unwrapped && current?.nonce === unwrapped.nonce) return this.answerCurrent(current, markedResponse(current, unwrapped));
    if (unwrapped && this.abandoned.delete(unwrapped.nonce)) {
      this.deps.log.debug({ device: this.id }, 'late answer of a command the bridge gave up on; dropped');
      return;
    }
    if (unwrapped) return this.warn('answer for a command that is not in flight');
    if (!current) return this.warn('answer while no command is in flight');
    // No markers: an agent that did not run the wrapper as expected. Plain in-order matching.
    this.answerCurrent(current, unmarkedResponse(current, result, error));
  }

  private answerCurrent(current: OnTheWire, response: Response): void {
    clearTimeout(current.giveUp);
    this.current = null;
    this.deliver(response);
    this.sendNext();
  }

  /** Sends the next queued command unless one is on the wire: the original agent runs one at a time. */
  private sendNext(): void {
    while (!this.current && this.state === 'attached' && this.queue.length > 0) {
      const { command, enqueuedAt } = this.queue.shift()!;
      const remainingMs = command.timeout_ms - Math.floor(performance.now() - enqueuedAt);
      if (remainingMs < LEGACY_MIN_REMAINING_MS) {
        this.deliver(failure(command, 'TIMEOUT', `not started: timeout_ms ${command.timeout_ms} passed while waiting for the device's earlier commands`));
        continue;
      }
      if (command.cmd_str.includes('\0')) {
        this.deliver(failure(command, 'INTERNAL', 'could not start bash: cmd_str contains a NUL character'));
        continue;
      }
      this.sendNow(command, remainingMs);
    }
  }

  private sendNow(command: Command, remainingMs: number): void {
    const limitMs = Math.min(remainingMs, LEGACY_DEVICE_LIMIT_MS);
    const nonce = newNonce();
    const giveUp = setTimeout(() => this.abandonCurrent(), limitMs + LEGACY_ANSWER_GRACE_MS);
    this.current = { command, nonce, sentAt: performance.now(), limitMs, capped: limitMs < remainingMs, giveUp };
    this.ws.send(JSON.stringify({ order: 'exec_bash', cmd_str: wrapCommand(command, nonce, limitMs) }));
  }

  private abandonCurrent(): void {
    const current = this.current;
    if (!current) return;
    this.current = null;
    this.abandoned.add(current.nonce);
    if (this.abandoned.size > ABANDONED_MEMORY) this.abandoned.delete(this.abandoned.values().next().value!);
    this.deps.log.info({ device: this.id, command: current.command.id }, 'legacy device did not answer in time; sending its next command');
    // Worded like the dispatcher's own give-up, which shares this deadline unless the limit was capped.
    const why = current.capped ? ` (the original hypha agent allows at most ${LEGACY_DEVICE_LIMIT_MS} ms)` : '';
    this.deliver(failure(current.command, 'TIMEOUT', `device ${this.id} did not answer within ${current.command.timeout_ms} ms${why}`));
    this.sendNext();
  }

  /** A newer connection took the id: the unsent commands go to it; the one on the wire can no longer be answered. */
  private handOver(successor: DeviceLink): void {
    const current = this.current;
    if (current) {
      clearTimeout(current.giveUp);
      this.current = null;
      this.deliver(failure(current.command, 'INTERNAL', `the connection of device ${this.id} was replaced by a newer one while the command was on it; whether it ran is unknown`));
    }
    for (const { command, enqueuedAt } of this.queue.splice(0)) {
      if (successor instanceof LegacyDeviceLink) successor.adopt(command, enqueuedAt);
      else successor.send(command);
    }
  }

  private adopt(command: Command, enqueuedAt: number): void {
    this.queue.push({ command, enqueuedAt });
    this.sendNext();
  }

  private deliver(response: Response): void {
    if (this.id !== null) this.deps.dispatcher.deliver(this.id, response);
  }

  private warn(problem: string): void {
    this.deps.log.warn({ device: this.id, remoteAddress: this.remoteAddress, code: 'BAD_REQUEST', problem }, 'unusable message from a legacy device');
  }

  private onSocketError(error: Error & { code?: string }): void {
    const tooLarge = error.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH';
    // ws closes the socket by itself after an error (1009 for an oversized message).
    this.deps.log.warn({ device: this.id, remoteAddress: this.remoteAddress, code: tooLarge ? 'PAYLOAD_TOO_LARGE' : 'BAD_REQUEST', err: error.message }, 'legacy device connection error');
    if (!tooLarge) this.endCause = 'error';
  }

  /** The socket is gone. Commands in flight are answered DEVICE_OFFLINE by the dispatcher when presence reports the device offline. */
  private end(): void {
    clearTimeout(this.registerTimer);
    if (this.current) clearTimeout(this.current.giveUp);
    this.current = null;
    this.queue.length = 0;
    const wasAttached = this.state === 'attached';
    this.state = 'ended';
    if (wasAttached && this.id !== null) this.deps.presence.detach(this.id, this, this.endCause);
  }
}

/** A text frame's content (ws hands it over as bytes). */
export function messageText(data: RawData): string {
  if (Array.isArray(data)) return Buffer.concat(data).toString('utf8');
  return Buffer.from(data as ArrayBuffer).toString('utf8');
}

function failure(command: Command, code: 'TIMEOUT' | 'INTERNAL', message: string): Response {
  return { type: 'response', id: command.id, code, message };
}

/** The Response an MQTT device running hypha would have sent for the same command. */
function markedResponse(current: OnTheWire, answer: UnwrappedAnswer): Response {
  const { command, limitMs, capped } = current;
  const durationMs = Math.round(performance.now() - current.sentAt);
  // `timeout` exits 124 (137 if SIGKILL was needed); a command exiting so by itself, before the limit, keeps its status.
  const timedOut = command.order !== 'exec_bash_no_return' && (answer.status === 124 || answer.status === 137) && durationMs >= limitMs;
  if (timedOut) {
    const why = capped ? ` (the original hypha agent allows at most ${LEGACY_DEVICE_LIMIT_MS} ms)` : '';
    return { type: 'response', id: command.id, code: 'TIMEOUT', message: `killed after ${limitMs} ms${why}` };
  }
  const base = { type: 'response' as const, id: command.id, duration_ms: durationMs };
  switch (command.order) {
    case 'exec_bash': {
      const stdout = capOutput(answer.stdout);
      const stderr = capOutput(answer.stderr);
      return {
        ...base,
        result: trimTrailingNewlines(stdout.text),
        error: trimTrailingNewlines(stderr.text),
        exit_code: answer.status,
        truncated: stdout.truncated || stderr.truncated,
      };
    }
    case 'exec_bash_ret_okng_only':
      return { ...base, result: answer.status === 0 ? 'ok' : 'ng', error: '', exit_code: answer.status, truncated: false };
    case 'exec_bash_no_return':
      return { ...base, result: null, error: '', exit_code: null, truncated: false };
  }
}

/** An answer without markers is passed on as it came, without an exit status. */
function unmarkedResponse(current: OnTheWire, result: string, error: string): Response {
  const stdout = capOutput(result);
  const stderr = capOutput(error);
  return {
    type: 'response',
    id: current.command.id,
    result: stdout.text,
    error: stderr.text,
    exit_code: null,
    duration_ms: Math.round(performance.now() - current.sentAt),
    truncated: stdout.truncated || stderr.truncated,
  };
}

export interface LegacyDeviceEndpoint {
  handler: UpgradeHandler;
  close(): void;
}

/** WebSocket `/device`: every connection becomes a LegacyDeviceLink. */
export function legacyDeviceEndpoint(
  deps: LegacyDeviceDeps & { watch: (ws: WebSocket, onUnresponsive: () => void) => void; maxMessageBytes: number },
): LegacyDeviceEndpoint {
  const wss = new WebSocketServer({ noServer: true, maxPayload: deps.maxMessageBytes });
  const links = new Set<LegacyDeviceLink>();
  return {
    handler(req, socket, head) {
      // Each command is a round trip: Nagle plus delayed ACK would add tens of ms to every one.
      socket.setNoDelay(true);
      wss.handleUpgrade(req, socket, head, (ws) => {
        const link = new LegacyDeviceLink(ws, req, deps);
        links.add(link);
        ws.once('close', () => links.delete(link));
        deps.watch(ws, () => link.noteUnresponsive());
      });
    },
    close() {
      for (const link of links) link.terminate();
      wss.close();
    },
  };
}
