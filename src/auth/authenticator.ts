/**
 * Turns credentials into a Principal, for every way in: MQTT (TCP, TLS, WebSocket), the
 * legacy device socket, and HTTP (API token, browser session). One place, so each door
 * applies the same rules.
 */
import type { DeviceStore } from '../store/devices.js';
import type { SessionStore, TokenStore } from '../store/people.js';
import { createHmac, timingSafeEqual } from 'node:crypto';
import { hashToken, newToken } from './secrets.js';
import type { Principal, Role } from './roles.js';

/** MQTT username under which the web console presents its short-lived token ('@' never occurs in an id). */
export const CONSOLE_USERNAME = '@console';
export const CONSOLE_TOKEN_TTL_MS = 60 * 60 * 1000;

export type AuthResult =
  | { ok: true; principal: Principal }
  /** returnCode: MQTT CONNACK 4 (bad user name or password) or 5 (not authorized). */
  | { ok: false; returnCode: 4 | 5; reason: string };

export interface AuthenticatorOptions {
  allowAnonymous: boolean;
  /** With a key, an unknown device presenting `KEY.TOKEN` is recorded as pending, with that token. */
  enrollKey?: string;
}

export class Authenticator {
  /** Console MQTT tokens live in memory: they are short-lived and re-issued by /api/session. */
  private readonly consoleTokens = new Map<string, { name: string; role: Role; session: string | undefined; expiresAt: number }>();
  /**
   * In a cluster, the secret all nodes share: console tokens are signed with it instead, so the
   * console's WebSocket may land on any node. Such a token holds while its browser session
   * (replicated) does and the user keeps the role: logout, removal or a new password end it everywhere.
   */
  private clusterSecret: Buffer | null = null;

  constructor(
    private readonly devices: DeviceStore,
    private readonly tokens: TokenStore,
    private readonly sessions: SessionStore,
    private readonly options: AuthenticatorOptions,
  ) {}

  /** Signs console tokens from now on (cluster mode). */
  useClusterSecret(secret: Buffer): void {
    this.clusterSecret = secret;
  }

  get allowAnonymous(): boolean {
    return this.options.allowAnonymous;
  }

  /** MQTT CONNECT. `certificateId` is the device id from a verified client certificate (mutual TLS). */
  mqtt(clientId: string, username: string | undefined, password: Buffer | undefined, certificateId?: string): AuthResult {
    if (certificateId !== undefined) {
      if (clientId !== certificateId) return { ok: false, returnCode: 5, reason: `client id must be the certificate's device id ${certificateId}` };
      return this.device(certificateId);
    }
    const secret = password?.toString('utf8') ?? '';
    if (!username) {
      return this.options.allowAnonymous
        ? { ok: true, principal: { kind: 'anonymous', role: 'operator' } }
        : { ok: false, returnCode: 5, reason: 'credentials required (anonymous access is off)' };
    }
    if (username === CONSOLE_USERNAME) return this.consoleToken(secret);
    if (username === clientId) {
      const enrolling = this.enrolmentToken(secret);
      if (enrolling !== null) return this.enrol(clientId, enrolling);
      const check = this.devices.checkToken(clientId, secret);
      if (check === 'ok') return { ok: true, principal: { kind: 'device', id: clientId, tokenHash: hashToken(secret) } };
      if (check === 'pending') return { ok: false, returnCode: 5, reason: `device ${clientId} is waiting for an admin to accept it` };
      if (check === 'wrong') return { ok: false, returnCode: 4, reason: `wrong token for device ${clientId}` };
      if (check === 'no-token' && this.options.allowAnonymous) return { ok: true, principal: { kind: 'anonymous', role: 'operator' } };
    }
    const token = this.tokens.verify(username, secret);
    if (token) return { ok: true, principal: { kind: 'token', name: token.name, role: token.role } };
    return { ok: false, returnCode: 4, reason: `unknown user name ${username} or wrong password` };
  }

  /** The device's own token when `secret` is `ENROLL_KEY.TOKEN`, else null. */
  private enrolmentToken(secret: string): string | null {
    const key = this.options.enrollKey;
    if (!key || !secret.startsWith(`${key}.`)) return null;
    const token = secret.slice(key.length + 1);
    return token.length >= 16 ? token : null;
  }

  /**
   * Enrolment: an unknown device becomes pending with the token it chose; once an admin
   * accepts it, the same credential lets it in. A known device must still match its token.
   */
  private enrol(id: string, token: string): AuthResult {
    const check = this.devices.checkToken(id, token);
    if (check === 'ok') return { ok: true, principal: { kind: 'device', id, tokenHash: hashToken(token) } };
    if (check === 'unknown') {
      this.devices.addPending(id, hashToken(token));
      return { ok: false, returnCode: 5, reason: `device ${id} asked to join and waits for an admin to accept it` };
    }
    if (check === 'pending') return { ok: false, returnCode: 5, reason: `device ${id} is waiting for an admin to accept it` };
    return { ok: false, returnCode: 4, reason: `wrong token for device ${id}` };
  }

  /** A device known by other means (certificate): it must be registered and accepted. */
  private device(id: string): AuthResult {
    const known = this.devices.get(id);
    if (!known) return { ok: false, returnCode: 5, reason: `no device ${id} is registered` };
    if (known.state === 'pending') return { ok: false, returnCode: 5, reason: `device ${id} is waiting for an admin to accept it` };
    return { ok: true, principal: { kind: 'device', id } };
  }

  /** The original hypha: `x-custome-id` and `Authorization: Bearer {token}`. */
  legacyDevice(id: string, bearer: string | null): AuthResult {
    if (bearer !== null) {
      const check = this.devices.checkToken(id, bearer);
      if (check === 'ok') return { ok: true, principal: { kind: 'device', id, tokenHash: hashToken(bearer) } };
      if (check === 'pending') return { ok: false, returnCode: 5, reason: `device ${id} is waiting for an admin to accept it` };
      if (check === 'wrong') return { ok: false, returnCode: 4, reason: `wrong token for device ${id}` };
    }
    // The original agent always sends "Bearer 0000": in development mode that is no credential.
    if (this.options.allowAnonymous && this.devices.checkToken(id, bearer ?? '') !== 'wrong') {
      return { ok: true, principal: { kind: 'anonymous', role: 'operator' } };
    }
    return { ok: false, returnCode: 4, reason: bearer === null ? 'a device token is required (Authorization: Bearer TOKEN)' : `wrong or unknown token for device ${id}` };
  }

  /** HTTP: an API token as `Authorization: Bearer`, or a browser session cookie. */
  http(bearer: string | null, sessionId: string | null): Principal | null {
    if (bearer) {
      const token = this.tokens.bySecret(bearer);
      return token ? { kind: 'token', name: token.name, role: token.role } : null;
    }
    if (sessionId) {
      const user = this.sessions.user(sessionId);
      if (user) return { kind: 'user', name: user.name, role: user.role, session: hashToken(sessionId) };
    }
    return this.options.allowAnonymous ? { kind: 'anonymous', role: 'operator' } : null;
  }

  /** A token the console presents as its MQTT password (username `@console`). */
  issueConsoleToken(user: { name: string; role: Role; session?: string }): { username: string; password: string; expiresAt: number } {
    const now = Date.now();
    for (const [token, entry] of this.consoleTokens) if (entry.expiresAt < now) this.consoleTokens.delete(token);
    const expiresAt = now + CONSOLE_TOKEN_TTL_MS;
    if (this.clusterSecret && user.session) {
      const payload = Buffer.from(JSON.stringify({ n: user.name, r: user.role, s: user.session, e: expiresAt })).toString('base64url');
      return { username: CONSOLE_USERNAME, password: `${SIGNED_PREFIX}${payload}.${this.sign(payload)}`, expiresAt };
    }
    const password = newToken();
    this.consoleTokens.set(password, { name: user.name, role: user.role, session: user.session, expiresAt });
    return { username: CONSOLE_USERNAME, password, expiresAt };
  }

  /** Ends the console tokens of a user (removal, new password). */
  revokeConsoleTokens(name: string): void {
    for (const [token, entry] of this.consoleTokens) if (entry.name === name) this.consoleTokens.delete(token);
  }

  /** Ends the console tokens of one browser session (logout). */
  revokeSessionTokens(session: string): void {
    for (const [token, entry] of this.consoleTokens) if (entry.session === session) this.consoleTokens.delete(token);
  }

  private sign(payload: string): string {
    return createHmac('sha256', this.clusterSecret!).update(payload).digest('base64url');
  }

  private consoleToken(secret: string): AuthResult {
    if (this.clusterSecret && secret.startsWith(SIGNED_PREFIX)) return this.signedConsoleToken(secret.slice(SIGNED_PREFIX.length));
    const entry = this.consoleTokens.get(secret);
    if (!entry || entry.expiresAt < Date.now()) return { ok: false, returnCode: 4, reason: 'console token unknown or expired (log in again)' };
    return { ok: true, principal: { kind: 'user', name: entry.name, role: entry.role, session: entry.session } };
  }

  private signedConsoleToken(token: string): AuthResult {
    const refused: AuthResult = { ok: false, returnCode: 4, reason: 'console token unknown or expired (log in again)' };
    const [payload = '', mac = ''] = token.split('.');
    const [given, expected] = [Buffer.from(mac), Buffer.from(this.sign(payload))];
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return refused;
    let claims: { n?: unknown; r?: unknown; s?: unknown; e?: unknown };
    try {
      claims = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as typeof claims;
    } catch {
      return refused;
    }
    if (typeof claims.e !== 'number' || claims.e < Date.now() || typeof claims.s !== 'string') return refused;
    // The session still exists (no logout, no new password) and its user still has that role.
    const user = this.sessions.byHash(claims.s);
    if (!user || user.name !== claims.n || user.role !== claims.r) return refused;
    return { ok: true, principal: { kind: 'user', name: user.name, role: user.role, session: claims.s } };
  }
}

/** Marks a signed console token ('.' never occurs in a random one). */
const SIGNED_PREFIX = 'rzc.';
