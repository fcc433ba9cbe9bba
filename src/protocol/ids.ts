/**
 * Device and client ids (PROTOCOL.md "Names"): 1 to 128 characters of
 * `A-Z a-z 0-9 . _ : -`. The rule keeps ids safe as a single MQTT topic level:
 * no `/`, no wildcards, no leading `$` (the broker's own `$SYS` space).
 */
export const ID_MAX_LENGTH = 128;
const ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;

export function isValidId(id: unknown): id is string {
  return typeof id === 'string' && ID_PATTERN.test(id);
}

/** Why an id is refused, in words fit for an error message; null when it is valid. */
export function idProblem(id: unknown): string | null {
  if (typeof id !== 'string') return 'must be a string';
  if (id.length === 0) return 'must not be empty';
  if (id.length > ID_MAX_LENGTH) return `must be at most ${ID_MAX_LENGTH} characters (got ${id.length})`;
  if (!ID_PATTERN.test(id)) return 'may contain only A-Z a-z 0-9 . _ : -';
  return null;
}
