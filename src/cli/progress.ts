/**
 * Progress on stderr for the CLI's long commands (`run`, `cp`): a redrawn bar on a terminal,
 * else a plain `rhizosphere: …` line when the text changed, at most every 2 s (and always for
 * the final state).
 */
export interface ProgressIo {
  err: (text: string) => void;
  errIsTty: boolean;
}

const LINE_EVERY_MS = 2000;
const BAR_WIDTH = 30;

export class ProgressLine {
  private drawn = false;
  private lastText = '';

  /** `lastLineAt`: when a plain line counts as last printed (now: the first waits 2 s; 0: it comes at once). */
  constructor(
    private readonly io: ProgressIo,
    private lastLineAt = 0,
  ) {}

  /** `fraction` of the work done (0 to 1) and what to say about it. */
  show(fraction: number, text: string, final = false): void {
    if (this.io.errIsTty) {
      const filled = Math.round(Math.min(1, Math.max(0, fraction)) * BAR_WIDTH);
      this.io.err(`\r[${'#'.repeat(filled)}${'-'.repeat(BAR_WIDTH - filled)}] ${text}\u001b[K`);
      this.drawn = true;
      return;
    }
    const now = Date.now();
    if (text === this.lastText || (!final && now - this.lastLineAt < LINE_EVERY_MS)) return;
    this.lastLineAt = now;
    this.lastText = text;
    this.io.err(`rhizosphere: ${text}\n`);
  }

  /** Ends the bar's line on a terminal. */
  end(): void {
    if (this.drawn) this.io.err('\n');
    this.drawn = false;
  }
}
