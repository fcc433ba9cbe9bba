/**
 * Secrets and their hashes. Device and API tokens are random (256 bits), so one fast
 * SHA-256 suffices and keeps a reconnect storm of 20000 devices cheap; people's passwords
 * are not random, so they get scrypt.
 */
import { createHash, randomBytes, scryptSync, timingSafeEqual } from 'node:crypto';

/**
 * 256 random bits behind a fixed prefix: a token never starts with '-' (which a command line
 * would take for a flag), and secret scanners can recognise a leaked one.
 */
export function newToken(): string {
  return `rz_${randomBytes(32).toString('base64url')}`;
}

export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

export function tokenMatches(token: string, hash: string | null | undefined): boolean {
  if (!hash) return false;
  const a = Buffer.from(hashToken(token), 'hex');
  const b = Buffer.from(hash, 'hex');
  return a.length === b.length && timingSafeEqual(a, b);
}

const SCRYPT = { N: 16384, r: 8, p: 1, keylen: 32 };

export function hashPassword(password: string): string {
  const salt = randomBytes(16);
  const key = scryptSync(password, salt, SCRYPT.keylen, { N: SCRYPT.N, r: SCRYPT.r, p: SCRYPT.p });
  return `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${salt.toString('base64url')}$${key.toString('base64url')}`;
}

/**
 * A well-formed hash to check a password against when the user name is unknown: the check
 * costs what a real one costs (timing tells nothing), and no password leads anywhere (the
 * caller has no user to return).
 */
export const UNKNOWN_USER_PASSWORD_HASH = `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${Buffer.alloc(16).toString('base64url')}$${Buffer.alloc(SCRYPT.keylen).toString('base64url')}`;

export function passwordMatches(password: string, stored: string): boolean {
  const [scheme, n, r, p, salt, key] = stored.split('$');
  if (scheme !== 'scrypt' || !n || !r || !p || !salt || !key) return false;
  const expected = Buffer.from(key, 'base64url');
  const actual = scryptSync(password, Buffer.from(salt, 'base64url'), expected.length, { N: Number(n), r: Number(r), p: Number(p) });
  return timingSafeEqual(actual, expected);
}

/** A password for the first admin: readable, ~120 bits. */
export function newPassword(): string {
  return randomBytes(15).toString('base64url');
}
