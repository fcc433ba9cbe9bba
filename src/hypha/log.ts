/**
 * hypha's log: one plain line per event on stdout, e.g.
 *   2026-11-24T10:00:00.000Z INFO  connected url=mqtt://127.0.0.1:1883 id=pi-01
 * A device's operator reads these in journalctl or a serial console, so they stay
 * human-first (no JSON) and carry their own timestamp (not every host adds one).
 */

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export type LogFields = Record<string, unknown>;

export interface Logger {
  readonly level: LogLevel;
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
}

export interface LoggerOptions {
  level?: LogLevel;
  /** Where finished lines go (one call per line, newline included); stdout by default. */
  write?: (line: string) => void;
  /** The clock, replaceable so tests can pin the timestamp. */
  now?: () => Date;
}

export function isLogLevel(value: unknown): value is LogLevel {
  return typeof value === 'string' && (LOG_LEVELS as readonly string[]).includes(value);
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const level = options.level ?? 'info';
  const threshold = LOG_LEVELS.indexOf(level);
  const write = options.write ?? ((line: string) => void process.stdout.write(line));
  const now = options.now ?? (() => new Date());

  const at = (lineLevel: LogLevel) => (message: string, fields?: LogFields) => {
    if (LOG_LEVELS.indexOf(lineLevel) < threshold) return;
    write(formatLine(now(), lineLevel, message, fields));
  };
  return { level, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

export function formatLine(time: Date, level: LogLevel, message: string, fields?: LogFields): string {
  const parts = [time.toISOString(), level.toUpperCase().padEnd(5), oneLine(message)];
  for (const [key, value] of Object.entries(fields ?? {})) {
    if (value === undefined) continue;
    parts.push(`${key}=${formatValue(value)}`);
  }
  return `${parts.join(' ')}\n`;
}

/** Bare when the value reads unambiguously, JSON-quoted when it has spaces, quotes or `=`. */
function formatValue(value: unknown): string {
  const text = value instanceof Error ? value.message : typeof value === 'string' ? value : JSON.stringify(value) ?? String(value);
  return text === '' || /[\s"=\\]/.test(text) || /[\u0000-\u001f]/.test(text) ? JSON.stringify(text) : text;
}

/** A message with a newline in it would break the one-line-per-event promise. */
function oneLine(message: string): string {
  return message.replace(/\r?\n/g, '\\n');
}
