/**
 * What a panel that reloads itself shares: it loads when shown and then every `intervalMs`
 * while its root is on screen (the console may show another view meanwhile), and a load that
 * a newer one or hiding overtook is dropped when it comes back.
 */
export class Refresher {
  private timer = 0;
  private generation = 0;

  constructor(
    private readonly root: HTMLElement,
    private readonly intervalMs: number,
    private readonly load: () => Promise<void>,
  ) {}

  /** On screen: load now and every intervalMs. */
  start(): void {
    window.clearInterval(this.timer);
    this.timer = window.setInterval(() => {
      if (this.root.isConnected && this.root.offsetParent !== null) void this.load();
    }, this.intervalMs);
    void this.load();
  }

  stop(): void {
    window.clearInterval(this.timer);
    this.timer = 0;
    this.generation++;
  }

  /** Called as a load starts: the function it returns tells, once the answer is in, whether it still counts. */
  begin(): () => boolean {
    const mine = ++this.generation;
    return () => mine === this.generation;
  }
}
