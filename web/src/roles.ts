/**
 * What the logged-in person may do, as the console shows it. The hub enforces the same
 * rules on its side (a viewer's Request is answered FORBIDDEN): these only shape the page.
 */
import type { Session } from './types.js';

/** Viewers look; operators and admins also run commands. Anonymous access counts as an operator. */
export function canRunCommands(session: Session | null): boolean {
  return session?.role !== 'viewer';
}

export function isAdmin(session: Session | null): boolean {
  return session?.role === 'admin';
}

/** Terminals, file transfers and recordings: operators and admins, like commands. */
export function canUseTunnels(session: Session | null): boolean {
  return canRunCommands(session);
}
