/**
 * The legacy console endpoint, WebSocket `/client/{deviceId}` (PROTOCOL.md "Legacy
 * protocols"): the original console sends `{"order","cmd_str"}` (an `id` is optional) and
 * gets the Reply as JSON, the same Reply an MQTT or REST client gets. Any number of consoles
 * may talk to one device.
 */
import type { IncomingMessage } from 'node:http';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import { actorOf, canRunCommands, type Principal } from '../src/auth/roles.js';
import { errorReply, type Dispatcher, type Origin } from '../src/dispatcher.js';
import type { UpgradeHandler } from '../src/http.js';
import type { Logger } from '../src/log.js';
import { idProblem } from '../src/protocol/ids.js';
import { RestCommandSchema, validate, type Reply } from '../src/protocol/schemas.js';
import { closeReason, messageText } from './legacy-device.js';

export const LEGACY_CONSOLE_PREFIX = '/client/';

export interface LegacyConsoleDeps {
  dispatcher: Dispatcher;
  log: Logger;
  maxPayloadBytes: number;
  watch: (ws: WebSocket) => void;
  /** Who opened the socket (API token or session), or null. */
  authenticate: (req: IncomingMessage) => Principal | null;
}

/** The device id in `/client/{deviceId}`, or why it cannot be used. */
export function deviceFromPath(url: string | undefined): { id: string } | { problem: string } {
  const pathname = new URL(url ?? '/', 'http://hub').pathname;
  let id: string;
  try {
    id = decodeURIComponent(pathname.slice(LEGACY_CONSOLE_PREFIX.length));
  } catch {
    return { problem: 'device id is not valid percent-encoding' };
  }
  const problem = idProblem(id);
  return problem ? { problem: `device id ${problem}` } : { id };
}

/** The Reply to one console message: BAD_REQUEST for what cannot be read, else the command's Reply. */
export function answerConsoleMessage(text: string, device: string, dispatcher: Dispatcher, origin: Origin, mayRun: boolean): Promise<Reply> {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return Promise.resolve(errorReply(null, device, 'BAD_REQUEST', 'message is not valid JSON'));
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    return Promise.resolve(errorReply(null, device, 'BAD_REQUEST', 'message must be a JSON object'));
  }
  const checked = validate(RestCommandSchema, body);
  if (!checked.ok) {
    const rawId = (body as { id?: unknown }).id;
    return Promise.resolve(errorReply(typeof rawId === 'string' ? rawId : null, device, 'BAD_REQUEST', checked.message));
  }
  const command = { ...checked.value, device };
  if (!mayRun) return Promise.resolve(dispatcher.refuse(command, origin, 'FORBIDDEN', `${origin.actor ?? origin.clientId} may not run commands`));
  return dispatcher.request(command, origin);
}

export interface LegacyConsoleEndpoint {
  handler: UpgradeHandler;
  close(): void;
}

export function legacyConsoleEndpoint({ dispatcher, log, maxPayloadBytes, watch, authenticate }: LegacyConsoleDeps): LegacyConsoleEndpoint {
  // Larger messages close the socket with 1009, from ws itself.
  const wss = new WebSocketServer({ noServer: true, maxPayload: maxPayloadBytes });

  const serve = (ws: WebSocket, req: IncomingMessage) => {
    const remoteAddress = req.socket.remoteAddress ?? 'unknown';
    ws.on('error', (error: Error & { code?: string }) => {
      const code = error.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH' ? 'PAYLOAD_TOO_LARGE' : 'BAD_REQUEST';
      log.warn({ remoteAddress, code, err: error.message }, 'legacy console connection error');
    });
    const target = deviceFromPath(req.url);
    if ('problem' in target) {
      log.info({ remoteAddress, reason: target.problem }, 'legacy console refused');
      ws.close(1008, closeReason(target.problem));
      return;
    }
    const principal = authenticate(req);
    if (!principal) {
      log.warn({ code: 'FORBIDDEN', remoteAddress }, 'legacy console refused: no credentials');
      ws.close(1008, closeReason('authentication required: send Authorization: Bearer TOKEN or a session cookie'));
      return;
    }
    watch(ws);
    const { actor, kind } = actorOf(principal);
    const origin: Origin = { clientId: `legacy@${remoteAddress}`, via: 'legacy', actor, actorKind: kind, remote: remoteAddress };
    ws.on('message', (data: RawData, isBinary: boolean) => {
      const text = isBinary ? '' : messageText(data);
      void answerConsoleMessage(text, target.id, dispatcher, origin, canRunCommands(principal)).then((reply) => {
        if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(reply));
      });
    });
  };

  return {
    handler(req, socket, head) {
      socket.setNoDelay(true);
      wss.handleUpgrade(req, socket, head, (ws) => serve(ws, req));
    },
    close() {
      for (const ws of wss.clients) ws.terminate();
      wss.close();
    },
  };
}
