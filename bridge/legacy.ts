/**
 * The legacy bridge: devices running the original hypha agent (`/device`) and the original
 * console (`/client/{deviceId}`) join the hub over plain WebSocket, unchanged
 * (PROTOCOL.md "Legacy protocols"). Both endpoints share the hub's HTTP port and a liveness
 * check by WebSocket ping.
 */
import type { WebSocket } from 'ws';
import type { Authenticator } from '../src/auth/authenticator.js';
import type { Dispatcher } from '../src/dispatcher.js';
import type { HttpFront } from '../src/http.js';
import type { Logger } from '../src/log.js';
import type { Presence } from '../src/presence.js';
import { principalOfRequest } from '../src/web-auth.js';
import { LEGACY_CONSOLE_PREFIX, legacyConsoleEndpoint } from './legacy-console.js';
import { LEGACY_DEVICE_MESSAGE_MAX_BYTES, LEGACY_REGISTER_WAIT_MS, legacyDeviceEndpoint } from './legacy-device.js';

export const LEGACY_PING_INTERVAL_MS = 30_000;
/** Pings in a row without a pong before a socket is terminated. */
const MISSED_PONGS_ALLOWED = 2;

export interface LegacyTimings {
  pingIntervalMs: number;
  registerWaitMs: number;
}

export interface LegacyBridgeOptions {
  http: Pick<HttpFront, 'addUpgrade'>;
  presence: Presence;
  dispatcher: Dispatcher;
  log: Logger;
  /** Largest console message; a device may send larger answers (LEGACY_DEVICE_MESSAGE_MAX_BYTES). */
  maxPayloadBytes: number;
  auth: Authenticator;
  /** Shorter timings for tests; the defaults are the documented ones. */
  timings?: Partial<LegacyTimings>;
}

/**
 * Pings every watched socket each interval and terminates one that left the last
 * MISSED_PONGS_ALLOWED pings unanswered, so a silently lost device (NAT timeout, a 3G dongle
 * losing signal) goes offline within two to three intervals. The original agent answers pings
 * only between commands, and spends at most 60 s on one: two intervals of 30 s cover that.
 */
class Heartbeat {
  private readonly missed = new Map<WebSocket, { count: number; onUnresponsive?: () => void }>();
  private readonly timer: NodeJS.Timeout;

  constructor(intervalMs: number) {
    this.timer = setInterval(() => this.beat(), intervalMs);
    this.timer.unref();
  }

  watch(ws: WebSocket, onUnresponsive?: () => void): void {
    const state = { count: 0, onUnresponsive };
    this.missed.set(ws, state);
    ws.on('pong', () => (state.count = 0));
    ws.once('close', () => this.missed.delete(ws));
  }

  private beat(): void {
    for (const [ws, state] of this.missed) {
      if (state.count >= MISSED_PONGS_ALLOWED) {
        state.onUnresponsive?.();
        this.missed.delete(ws);
        ws.terminate();
        continue;
      }
      state.count += 1;
      if (ws.readyState === ws.OPEN) ws.ping();
    }
  }

  stop(): void {
    clearInterval(this.timer);
    this.missed.clear();
  }
}

export function attachLegacyBridge({ http, presence, dispatcher, log, maxPayloadBytes, auth, timings = {} }: LegacyBridgeOptions): { close(): void } {
  const heartbeat = new Heartbeat(timings.pingIntervalMs ?? LEGACY_PING_INTERVAL_MS);
  const watch = (ws: WebSocket, onUnresponsive?: () => void) => heartbeat.watch(ws, onUnresponsive);
  const devices = legacyDeviceEndpoint({
    presence,
    dispatcher,
    log,
    registerWaitMs: timings.registerWaitMs ?? LEGACY_REGISTER_WAIT_MS,
    maxMessageBytes: Math.max(maxPayloadBytes, LEGACY_DEVICE_MESSAGE_MAX_BYTES),
    watch,
    authenticate: (id, bearer) => auth.legacyDevice(id, bearer),
  });
  const consoles = legacyConsoleEndpoint({ dispatcher, log, maxPayloadBytes, watch, authenticate: (req) => principalOfRequest(req, auth) });
  http.addUpgrade('/device', devices.handler);
  http.addUpgrade(LEGACY_CONSOLE_PREFIX, consoles.handler);

  let closed = false;
  return {
    close() {
      if (closed) return;
      closed = true;
      heartbeat.stop();
      devices.close();
      consoles.close();
    },
  };
}
