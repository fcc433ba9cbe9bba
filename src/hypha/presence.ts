/**
 * The device's own presence messages on `P/devices/{id}/presence` (docs/protocol.md "Presence
 * messages"): a retained birth after every connect and a retained will with the same nonce.
 * A hub on a broker it does not run sees no connect or disconnect events, only these; the
 * nonce, new on every connection, tells an old connection's late will from the current one.
 */
import { randomBytes } from 'node:crypto';
import { PACKAGE_VERSION } from '../package-root.js';
import type { PresenceMessage } from '../protocol/schemas.js';

export type PresenceTransport = 'mqtt' | 'mqtt-ws';

/** Goes into every birth, so a fleet's operator can tell which agents run which release. */
export const AGENT_VERSION = PACKAGE_VERSION;
export const AGENT_NAME = `hypha/${AGENT_VERSION}`;

/** 12 random bytes, base64url: 16 characters of A-Z a-z 0-9 _ - (PRESENCE_NONCE_PATTERN). */
export function newPresenceNonce(): string {
  return randomBytes(12).toString('base64url');
}

export function birthPayload(nonce: string, transport: PresenceTransport, tunnels: boolean): string {
  const birth: PresenceMessage = { online: true, nonce, transport, tunnels, agent: AGENT_NAME, ...deviceTimeZone() };
  return JSON.stringify(birth);
}

/** The device's time zone as the system says it (TZ, /etc/localtime), when it names one. */
function deviceTimeZone(): { tz?: string } {
  const tz = Intl.DateTimeFormat().resolvedOptions().timeZone;
  return tz && /^[A-Za-z0-9_+\-/]{1,64}$/.test(tz) ? { tz } : {};
}

/** The will, and what a clean stop publishes itself (a clean DISCONNECT suppresses the will). */
export function offlinePayload(nonce: string): string {
  const offline: PresenceMessage = { online: false, nonce };
  return JSON.stringify(offline);
}

/**
 * What the agent does about a presence message on its own topic:
 * - `ignore`: its own current birth or will, or nothing that needs an answer;
 * - `republish`: a stale message, published after this connection's birth, is now the
 *   retained value (an older connection's will published late, say by another node of a
 *   broker cluster, or a birth of an earlier connection sent again from its session), so the
 *   birth must go out again;
 * - `duplicate`: a live birth with a nonce this agent never used: another connection seems
 *   to use the same device id. Answering it with a birth would only ping-pong.
 */
export type PresenceVerdict = 'ignore' | 'republish' | 'duplicate';

export interface PresenceContext {
  /** The nonce of the current connection. */
  current: string;
  /** True when the broker delivered the message as retained (the value stored before this subscription). */
  retained: boolean;
  /** True for a nonce of an earlier connection of this agent. */
  isOwn: (nonce: string) => boolean;
}

export function judgePresence(message: PresenceMessage, context: PresenceContext): PresenceVerdict {
  if (message.nonce === context.current) return 'ignore';
  // A retained message predates this subscription (an earlier connection's birth or will):
  // the birth published right after the subscription replaces it.
  if (context.retained) return 'ignore';
  if (!message.online) return 'republish';
  return context.isOwn(message.nonce) ? 'republish' : 'duplicate';
}
