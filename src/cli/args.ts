/** Shared by the command-line tools. */

/**
 * The first line of a `node:util` parseArgs error, which may run on for two more lines
 * ("Did you forget…", "To specify an option argument starting with a dash…"): the tools
 * promise one line per problem.
 */
export function parseArgsProblem(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.split('\n')[0]!.replace(/\. To specify.*$/, '').replace(/\.$/, '');
}
