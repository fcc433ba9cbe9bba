/**
 * Terminal recordings in asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/), as
 * the hub writes them for shell tunnels: a header line `{"version":2,"width","height",…}`, then
 * one `[seconds, code, text]` per line: `o` output, `i` input, `r` resize ("COLSxROWS"),
 * `m` markers. The player replays them into a sink (an xterm.js terminal in the console) with
 * the recorded timing, at 1×, 2× or 4×, with idle gaps longer than IDLE_LIMIT_S cut down to it.
 * No DOM here: the console's recordings view draws it, the tests drive it with fake timers.
 */

export interface CastHeader {
  version: 2;
  width: number;
  height: number;
  timestamp?: number;
  title?: string;
  env?: Record<string, string>;
}

export interface CastEvent {
  /** Seconds since the start of the recording. */
  time: number;
  code: string;
  data: string;
}

export interface Cast {
  header: CastHeader;
  events: CastEvent[];
}

/** What a recording is played into. */
export interface CastSink {
  /** Back to a blank terminal of the recording's first size (before playing from the start). */
  reset(cols: number, rows: number): void;
  output(text: string): void;
  resize(cols: number, rows: number): void;
}

/** Idle gaps longer than this (seconds) are shortened to it while "skip idle" is on. */
export const IDLE_LIMIT_S = 2;
export const SPEEDS = [1, 2, 4] as const;

export class CastError extends Error {}

/** Parses a recording; throws a CastError naming the line that is not asciicast v2. */
export function parseCast(text: string): Cast {
  const lines = text.split('\n');
  let header: CastHeader | null = null;
  const events: CastEvent[] = [];
  lines.forEach((line, index) => {
    if (line.trim() === '') return;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch {
      throw new CastError(`line ${index + 1} is not JSON`);
    }
    if (!header) {
      const h = value as Partial<CastHeader> | null;
      if (!h || typeof h !== 'object' || Array.isArray(h) || h.version !== 2) throw new CastError('not an asciicast v2 recording (the first line must be a header with "version": 2)');
      if (!isSize(h.width) || !isSize(h.height)) throw new CastError('the header has no valid width and height');
      header = h as CastHeader;
      return;
    }
    if (!Array.isArray(value) || typeof value[0] !== 'number' || !Number.isFinite(value[0]) || typeof value[1] !== 'string' || typeof value[2] !== 'string') {
      throw new CastError(`line ${index + 1} is not an event [seconds, code, text]`);
    }
    events.push({ time: Math.max(0, value[0]), code: value[1], data: value[2] });
  });
  if (!header) throw new CastError('the recording is empty');
  return { header, events };
}

/** "COLSxROWS" of an `r` event, or null. */
export function parseSize(text: string): { cols: number; rows: number } | null {
  const match = /^(\d{1,4})x(\d{1,4})$/.exec(text.trim());
  if (!match) return null;
  const cols = Number(match[1]);
  const rows = Number(match[2]);
  return isSize(cols) && isSize(rows) ? { cols, rows } : null;
}

/**
 * When each event plays, in seconds from the start: the recorded times, or with `idleLimit`
 * every gap between two events (and before the first) longer than it cut down to it.
 */
export function playTimes(events: readonly CastEvent[], idleLimit: number | null): number[] {
  const times: number[] = [];
  let previousRecorded = 0;
  let previousPlayed = 0;
  for (const event of events) {
    const gap = Math.max(0, event.time - previousRecorded);
    previousPlayed += idleLimit === null ? gap : Math.min(gap, idleLimit);
    previousRecorded = Math.max(previousRecorded, event.time);
    times.push(previousPlayed);
  }
  return times;
}

export type PlayerState = 'paused' | 'playing' | 'ended';

/**
 * Plays a recording into a sink. The position is in played seconds (after idle gaps were
 * cut); `onChange` is called whenever the state or the position moves.
 */
export class CastPlayer {
  state: PlayerState = 'paused';
  speed = 1;
  private times: number[];
  /** The next event to play. */
  private next = 0;
  /** Played seconds at `since`, the wall-clock ms when playing last (re)started. */
  private base = 0;
  private since = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private skipping: boolean;
  private readonly onChange: () => void;

  constructor(
    readonly cast: Cast,
    private readonly sink: CastSink,
    options: { skipIdle?: boolean; onChange?: () => void } = {},
  ) {
    this.skipping = options.skipIdle ?? true;
    this.onChange = options.onChange ?? (() => {});
    this.times = playTimes(cast.events, this.skipping ? IDLE_LIMIT_S : null);
    sink.reset(cast.header.width, cast.header.height);
  }

  /** How long the whole recording plays, in seconds (at 1×). */
  get duration(): number {
    return this.times[this.times.length - 1] ?? 0;
  }

  /** Where playback is, in seconds (at 1×). */
  get position(): number {
    if (this.state !== 'playing') return this.base;
    return Math.min(this.duration, this.base + ((Date.now() - this.since) / 1000) * this.speed);
  }

  get skipIdle(): boolean {
    return this.skipping;
  }

  play(): void {
    if (this.state === 'playing') return;
    if (this.state === 'ended') {
      this.next = 0;
      this.base = 0;
      this.sink.reset(this.cast.header.width, this.cast.header.height);
    }
    this.state = 'playing';
    this.since = Date.now();
    this.tick();
  }

  pause(): void {
    if (this.state !== 'playing') return;
    this.base = this.position;
    this.state = 'paused';
    this.clearTimer();
    this.onChange();
  }

  toggle(): void {
    if (this.state === 'playing') this.pause();
    else this.play();
  }

  setSpeed(speed: number): void {
    if (!(speed > 0)) return;
    const playing = this.state === 'playing';
    if (playing) this.pause();
    this.speed = speed;
    if (playing) this.play();
    else this.onChange();
  }

  /** Turns cutting idle gaps on or off; playback goes on from the same event. */
  setSkipIdle(skip: boolean): void {
    if (skip === this.skipping) return;
    const playing = this.state === 'playing';
    if (playing) this.pause();
    this.skipping = skip;
    this.times = playTimes(this.cast.events, skip ? IDLE_LIMIT_S : null);
    this.base = this.next > 0 ? this.times[this.next - 1]! : 0;
    if (playing) this.play();
    else this.onChange();
  }

  /** Stops for good (the view is going away). */
  stop(): void {
    this.clearTimer();
    if (this.state === 'playing') this.state = 'paused';
  }

  /** Plays every event that is due, then sleeps until the next one. */
  private tick(): void {
    this.timer = null;
    const now = this.position;
    while (this.next < this.times.length && this.times[this.next]! <= now) {
      this.apply(this.cast.events[this.next]!);
      this.next++;
    }
    if (this.next >= this.times.length) {
      this.base = this.duration;
      this.state = 'ended';
      this.onChange();
      return;
    }
    const wait = ((this.times[this.next]! - now) / this.speed) * 1000;
    this.timer = setTimeout(() => this.tick(), Math.max(0, wait));
    this.onChange();
  }

  private apply(event: CastEvent): void {
    if (event.code === 'o') this.sink.output(event.data);
    else if (event.code === 'r') {
      const size = parseSize(event.data);
      if (size) this.sink.resize(size.cols, size.rows);
    }
    // 'i' (what was typed) shows as the terminal's echo in 'o'; 'm' markers have no picture.
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}

function isSize(value: unknown): value is number {
  return typeof value === 'number' && Number.isInteger(value) && value >= 1 && value <= 1000;
}
