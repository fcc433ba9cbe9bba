/** Counts events and lets them be told at most once a minute: count() is 0 until then, then the tally. */
export class EveryMinute {
  private pending = 0;
  private lastToldAt = -Infinity;

  count(now = Date.now()): number {
    this.pending += 1;
    if (now - this.lastToldAt < 60_000) return 0;
    const told = this.pending;
    this.pending = 0;
    this.lastToldAt = now;
    return told;
  }
}
