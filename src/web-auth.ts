/**
 * Who is making an HTTP request or WebSocket upgrade: an API token (`Authorization: Bearer`),
 * a browser session (the `rhizosphere_session` cookie), or, only with --allow-anonymous,
 * nobody in particular. Also the login, logout and session routes of the console.
 */
import type { IncomingMessage } from 'node:http';
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import type { Authenticator } from './auth/authenticator.js';
import type { Principal } from './auth/roles.js';
import type { Logger } from './log.js';
import type { Stores } from './store/stores.js';
import { SESSION_TTL_MS } from './store/people.js';
import { hashToken } from './auth/secrets.js';

export const SESSION_COOKIE = 'rhizosphere_session';

export function parseCookies(header: string | undefined): Map<string, string> {
  const cookies = new Map<string, string>();
  for (const part of (header ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq <= 0) continue;
    const name = part.slice(0, eq).trim();
    try {
      cookies.set(name, decodeURIComponent(part.slice(eq + 1).trim()));
    } catch {
      // a malformed cookie is no cookie
    }
  }
  return cookies;
}

export function bearerOf(req: IncomingMessage): string | null {
  const header = req.headers.authorization;
  return header?.startsWith('Bearer ') ? header.slice(7).trim() || null : null;
}

export function principalOfRequest(req: IncomingMessage, auth: Authenticator): Principal | null {
  return auth.http(bearerOf(req), parseCookies(req.headers.cookie).get(SESSION_COOKIE) ?? null);
}

/** Sets `res.locals.principal`; answers 401 when there is none. */
export function requirePrincipal(auth: Authenticator) {
  return (req: Request, res: Response, next: NextFunction) => {
    const principal = principalOfRequest(req, auth);
    if (!principal) {
      res.setHeader('www-authenticate', 'Bearer realm="rhizosphere"');
      res.status(401).json({ status: 'error', code: 'FORBIDDEN', message: 'authentication required: log in, or send Authorization: Bearer TOKEN' });
      return;
    }
    res.locals.principal = principal;
    next();
  };
}

/** A fixed window per address: enough to make guessing passwords slow, cheap to keep. */
class RateLimit {
  private readonly windows = new Map<string, { start: number; count: number }>();
  constructor(
    private readonly limit: number,
    private readonly windowMs: number,
  ) {}

  /** Seconds to wait, or 0 when allowed. */
  take(key: string): number {
    const now = Date.now();
    if (this.windows.size > 10_000) for (const [k, w] of this.windows) if (now - w.start > this.windowMs) this.windows.delete(k);
    const window = this.windows.get(key);
    if (!window || now - window.start > this.windowMs) {
      this.windows.set(key, { start: now, count: 1 });
      return 0;
    }
    window.count++;
    return window.count > this.limit ? Math.ceil((window.start + this.windowMs - now) / 1000) : 0;
  }
}

export const LOGIN_ATTEMPTS_PER_MINUTE = 10;

export interface SessionRouteOptions {
  auth: Authenticator;
  stores: Stores;
  log: Logger;
  /** Secure cookies when the hub serves HTTPS. */
  secure: boolean;
  /** Drops the MQTT connections a browser session opened (its console, in any tab). */
  endSessionConnections: (sessionHash: string) => void;
}

export function sessionRouter({ auth, stores, log, secure, endSessionConnections }: SessionRouteOptions): Router {
  const router = express.Router();
  const limiter = new RateLimit(LOGIN_ATTEMPTS_PER_MINUTE, 60_000);
  const cookie = (value: string, maxAgeMs: number) =>
    `${SESSION_COOKIE}=${encodeURIComponent(value)}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${Math.floor(maxAgeMs / 1000)}${secure ? '; Secure' : ''}`;

  router.post('/login', express.json({ limit: 4096, type: () => true }), (req, res) => {
    const remote = req.socket.remoteAddress ?? 'unknown';
    const wait = limiter.take(remote);
    if (wait > 0) {
      res.setHeader('retry-after', String(wait));
      res.status(429).json({ status: 'error', code: 'BUSY', message: `too many login attempts from ${remote}; try again in ${wait} s` });
      return;
    }
    const { name, password } = (req.body ?? {}) as { name?: unknown; password?: unknown };
    if (typeof name !== 'string' || typeof password !== 'string') {
      res.status(400).json({ status: 'error', code: 'BAD_REQUEST', message: 'name and password are required' });
      return;
    }
    const user = stores.users.verify(name, password);
    stores.audit.record({ at: Date.now(), actor: name.slice(0, 128), actorKind: 'user', remote, action: 'login', outcome: user ? 'ok' : 'FORBIDDEN' });
    if (!user) {
      log.warn({ code: 'FORBIDDEN', user: name.slice(0, 128), remote }, 'login refused');
      res.status(401).json({ status: 'error', code: 'FORBIDDEN', message: 'wrong name or password' });
      return;
    }
    const session = stores.sessions.create(user.name);
    res.setHeader('set-cookie', cookie(session, SESSION_TTL_MS));
    res.json({ name: user.name, role: user.role });
  });

  router.post('/logout', (req, res) => {
    const session = parseCookies(req.headers.cookie).get(SESSION_COOKIE);
    if (session) {
      stores.sessions.end(session);
      // That session's consoles, in every tab, lose their MQTT connection and cannot reconnect.
      auth.revokeSessionTokens(hashToken(session));
      endSessionConnections(hashToken(session));
    }
    res.setHeader('set-cookie', cookie('', 0));
    res.json({ ok: true });
  });

  /** Who the console is, and the MQTT credentials it connects with (a short-lived token). */
  router.get('/session', requirePrincipal(auth), (_req, res) => {
    const principal = res.locals.principal as Principal;
    if (principal.kind === 'user') {
      res.json({ name: principal.name, role: principal.role, mqtt: auth.issueConsoleToken(principal) });
    } else if (principal.kind === 'anonymous') {
      res.json({ name: 'anonymous', role: principal.role, mqtt: null });
    } else {
      res.status(403).json({ status: 'error', code: 'FORBIDDEN', message: 'the console needs a user session, not an API token' });
    }
  });

  return router;
}
