/**
 * At most `limit` things at once, the rest in order: simulated devices (hypha --simulate) share
 * one machine's CPU, so their commands and state commands take turns instead of starting
 * hundreds of shells in the same moment, which starves the process that keeps their
 * connections alive.
 */
export class Gate {
  private active = 0;
  private readonly waiting: (() => void)[] = [];

  constructor(readonly limit: number) {}

  async run<T>(work: () => Promise<T>): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.active++;
    try {
      return await work();
    } finally {
      this.active--;
      this.waiting.shift()?.();
    }
  }
}
