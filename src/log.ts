/**
 * The hub's logger: pino, readable lines on a terminal, JSON lines otherwise
 * (for journald, files and log shippers).
 */
import { createRequire } from 'node:module';
import { pino, type Logger, type LevelWithSilent } from 'pino';
import type PinoPretty from 'pino-pretty';

export type { Logger };

export interface LoggerOptions {
  level?: LevelWithSilent;
  /** Human-readable output; defaults to whether stdout is a terminal. */
  pretty?: boolean;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const level = options.level ?? 'info';
  const readable = options.pretty ?? Boolean(process.stdout.isTTY);
  if (!readable) return pino({ level, base: { name: 'rhizosphere' } });
  // sync: a hub that exits right after logging (a bad flag, SIGTERM) must not lose the line
  // Loaded only for a terminal: a service's start does without it.
  const pretty = createRequire(import.meta.url)('pino-pretty') as typeof PinoPretty;
  const stream = pretty({ sync: true, colorize: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname,name' });
  return pino({ level }, stream);
}
