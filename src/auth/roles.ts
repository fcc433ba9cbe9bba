/** Who may do what (the access-control issue): viewers look, operators run commands, admins manage. */
export const ROLES = ['admin', 'operator', 'viewer'] as const;
export type Role = (typeof ROLES)[number];

export function isRole(value: unknown): value is Role {
  return typeof value === 'string' && (ROLES as readonly string[]).includes(value);
}

/** An authenticated connection or request. */
export type Principal =
  /** `tokenHash`: the token it authenticated with, so a rotation can find the connections it ends. */
  | { kind: 'device'; id: string; tokenHash?: string }
  /** `session`: the hash of the browser session a console connection belongs to (logout ends it). */
  | { kind: 'user'; name: string; role: Role; session?: string }
  | { kind: 'token'; name: string; role: Role }
  | { kind: 'anonymous'; role: 'operator' };

export function canRunCommands(principal: Principal): boolean {
  return principal.kind !== 'device' && (principal.role === 'operator' || principal.role === 'admin');
}

export function isAdmin(principal: Principal): boolean {
  return principal.kind !== 'device' && principal.kind !== 'anonymous' && principal.role === 'admin';
}

/** How the audit trail names a principal. */
export function actorOf(principal: Principal): { actor: string; kind: Principal['kind'] } {
  switch (principal.kind) {
    case 'device':
      return { actor: principal.id, kind: 'device' };
    case 'user':
    case 'token':
      return { actor: principal.name, kind: principal.kind };
    default:
      return { actor: 'anonymous', kind: 'anonymous' };
  }
}
