/**
 * The token a device keeps on disk. With enrolment, the device makes its own token on first
 * start, keeps it here (readable by its owner only), and presents it with the enrolment key;
 * once an admin accepts the device, that token is its credential.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';

export function readTokenFile(file: string): string | null {
  try {
    const token = readFileSync(file, 'utf8').trim();
    return token.length > 0 ? token : null;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new Error(`cannot read the token file ${file} (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
  }
}

/** The token in `file`, made and saved first if there is none. */
export function loadOrCreateToken(file: string): { token: string; created: boolean } {
  const existing = readTokenFile(file);
  if (existing) return { token: existing, created: false };
  const token = `rz_${randomBytes(32).toString('base64url')}`;
  try {
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    writeFileSync(file, `${token}\n`, { mode: 0o600, flag: 'wx' });
  } catch (error) {
    throw new Error(`cannot write the token file ${file} (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
  }
  return { token, created: true };
}
