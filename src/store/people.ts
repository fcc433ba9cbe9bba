/** People (console users) and API tokens for scripts and tools, with their roles. */
import { HubError } from '../errors.js';
import { idProblem } from '../protocol/ids.js';
import { hashPassword, hashToken, newToken, passwordMatches, tokenMatches, UNKNOWN_USER_PASSWORD_HASH } from '../auth/secrets.js';
import { isRole, type Role } from '../auth/roles.js';
import { BrokerOutbox } from './broker-outbox.js';
import type { Db } from './db.js';

export interface User {
  name: string;
  role: Role;
  createdAt: number;
}

export interface ApiToken {
  name: string;
  role: Role;
  createdAt: number;
}

function checkName(kind: string, name: string): void {
  const problem = idProblem(name);
  if (problem) throw new HubError('BAD_REQUEST', `${kind} name ${problem}`);
}

function checkRole(role: string): asserts role is Role {
  if (!isRole(role)) throw new HubError('BAD_REQUEST', `role must be admin, operator or viewer (got ${JSON.stringify(role)})`);
}

export const PASSWORD_MIN_LENGTH = 8;

export class UserStore {
  constructor(private readonly db: Db) {}

  count(): number {
    return (this.db.prepare('SELECT count(*) AS n FROM users').get() as { n: number }).n;
  }

  list(): User[] {
    return this.db.prepare<[], { name: string; role: Role; created_at: number }>('SELECT name, role, created_at FROM users ORDER BY name').all()
      .map((r) => ({ name: r.name, role: r.role, createdAt: r.created_at }));
  }

  get(name: string): User | undefined {
    const r = this.db.prepare<[string], { name: string; role: Role; created_at: number }>('SELECT name, role, created_at FROM users WHERE name = ?').get(name);
    return r ? { name: r.name, role: r.role, createdAt: r.created_at } : undefined;
  }

  add(name: string, role: string, password: string): void {
    checkName('user', name);
    checkRole(role);
    if (password.length < PASSWORD_MIN_LENGTH) throw new HubError('BAD_REQUEST', `password must be at least ${PASSWORD_MIN_LENGTH} characters`);
    if (this.get(name)) throw new HubError('BAD_REQUEST', `user ${name} exists already`);
    this.db.prepare('INSERT INTO users (name, role, password_hash, created_at) VALUES (?, ?, ?, ?)').run(name, role, hashPassword(password), Date.now());
  }

  setPassword(name: string, password: string): void {
    if (password.length < PASSWORD_MIN_LENGTH) throw new HubError('BAD_REQUEST', `password must be at least ${PASSWORD_MIN_LENGTH} characters`);
    const result = this.db.prepare('UPDATE users SET password_hash = ? WHERE name = ?').run(hashPassword(password), name);
    if (result.changes === 0) throw new HubError('BAD_REQUEST', `no user ${name}`);
    // A new password ends every session of the old one.
    this.db.prepare('DELETE FROM sessions WHERE user = ?').run(name);
  }

  remove(name: string): void {
    const result = this.db.prepare('DELETE FROM users WHERE name = ?').run(name);
    if (result.changes === 0) throw new HubError('BAD_REQUEST', `no user ${name}`);
  }

  /** The user, if the password is right. Runs scrypt even for an unknown name, so timing tells nothing. */
  verify(name: string, password: string): User | undefined {
    const row = this.db.prepare<[string], { password_hash: string }>('SELECT password_hash FROM users WHERE name = ?').get(name);
    const ok = passwordMatches(password, row?.password_hash ?? UNKNOWN_USER_PASSWORD_HASH);
    return ok && row ? this.get(name) : undefined;
  }
}

export class TokenStore {
  /** Credential changes for a broker's dynamic-security plugin, while the database is kept in step with one. */
  private readonly outbox;

  constructor(private readonly db: Db) {
    this.outbox = new BrokerOutbox(db);
  }

  list(): ApiToken[] {
    return this.db.prepare<[], { name: string; role: Role; created_at: number }>('SELECT name, role, created_at FROM tokens ORDER BY name').all()
      .map((r) => ({ name: r.name, role: r.role, createdAt: r.created_at }));
  }

  /** Issues a token and returns its secret: shown once, stored only as a hash. */
  add(name: string, role: string): string {
    checkName('token', name);
    checkRole(role);
    if (this.db.prepare('SELECT 1 FROM tokens WHERE name = ?').get(name)) throw new HubError('BAD_REQUEST', `token ${name} exists already`);
    const secret = newToken();
    this.db.transaction(() => {
      this.db.prepare('INSERT INTO tokens (name, role, secret_hash, created_at) VALUES (?, ?, ?, ?)').run(name, role, hashToken(secret), Date.now());
      this.outbox.tokenCredentials(name, role, secret);
    })();
    return secret;
  }

  remove(name: string): void {
    this.db.transaction(() => {
      const result = this.db.prepare('DELETE FROM tokens WHERE name = ?').run(name);
      if (result.changes === 0) throw new HubError('BAD_REQUEST', `no token ${name}`);
      this.outbox.tokenRemoved(name);
    })();
  }

  /** MQTT: username = token name, password = secret. */
  verify(name: string, secret: string): ApiToken | undefined {
    const row = this.db.prepare<[string], { name: string; role: Role; created_at: number; secret_hash: string }>('SELECT * FROM tokens WHERE name = ?').get(name);
    return row && tokenMatches(secret, row.secret_hash) ? { name: row.name, role: row.role, createdAt: row.created_at } : undefined;
  }

  /** REST: `Authorization: Bearer <secret>`. */
  bySecret(secret: string): ApiToken | undefined {
    const row = this.db.prepare<[string], { name: string; role: Role; created_at: number }>('SELECT name, role, created_at FROM tokens WHERE secret_hash = ?').get(hashToken(secret));
    return row ? { name: row.name, role: row.role, createdAt: row.created_at } : undefined;
  }

  /** The role of token `name`: a broker's ACL hook is told the user name, not the secret. */
  role(name: string): Role | undefined {
    return this.db.prepare<[string], { role: Role }>('SELECT role FROM tokens WHERE name = ?').get(name)?.role;
  }

  /** name → role, for noticing removals made by another process. */
  roleMap(): Map<string, Role> {
    return new Map(this.list().map((t) => [t.name, t.role]));
  }
}

export const SESSION_TTL_MS = 12 * 3600 * 1000;

/** Browser sessions: the cookie holds a random id; the database holds its hash. */
export class SessionStore {
  constructor(private readonly db: Db) {}

  create(user: string, ttlMs = SESSION_TTL_MS): string {
    const id = newToken();
    const now = Date.now();
    this.db.prepare('DELETE FROM sessions WHERE expires_at < ?').run(now);
    // Their log for cluster replication too: a session older than any session's lifetime is moot.
    this.db.prepare(`DELETE FROM local_changes WHERE tbl = 'sessions' AND at < ?`).run(now - SESSION_TTL_MS);
    this.db.prepare('INSERT INTO sessions (id_hash, user, created_at, expires_at) VALUES (?, ?, ?, ?)').run(hashToken(id), user, now, now + ttlMs);
    return id;
  }

  user(id: string): { name: string; role: Role } | undefined {
    return this.db
      .prepare<[string, number], { name: string; role: Role }>(
        'SELECT u.name AS name, u.role AS role FROM sessions s JOIN users u ON u.name = s.user WHERE s.id_hash = ? AND s.expires_at > ?',
      )
      .get(hashToken(id), Date.now());
  }

  /** The user of a live session, by the session's hash (what a console token refers to). */
  byHash(idHash: string): { name: string; role: Role } | undefined {
    return this.db
      .prepare<[string, number], { name: string; role: Role }>(
        'SELECT u.name AS name, u.role AS role FROM sessions s JOIN users u ON u.name = s.user WHERE s.id_hash = ? AND s.expires_at > ?',
      )
      .get(idHash, Date.now());
  }

  /** Whether a session (by hash) still exists: a logout or a new password ends it. */
  exists(idHash: string): boolean {
    return this.db.prepare<[string], { one: number }>('SELECT 1 AS one FROM sessions WHERE id_hash = ?').get(idHash) !== undefined;
  }

  end(id: string): void {
    this.db.prepare('DELETE FROM sessions WHERE id_hash = ?').run(hashToken(id));
  }
}
