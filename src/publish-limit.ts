/**
 * How fast one MQTT connection may publish, and what happens past it: the client is slowed,
 * never cut off with its messages lost.
 *
 * Aedes reads a connection's next bytes only once every packet it parsed from the last ones
 * has been handled. So a publish held back here (its authorizePublish answer delayed) stops
 * the broker reading that socket: the client's TCP window fills and its writes wait, as EMQX's
 * limiter pauses a connection. A QoS 1 client also waits for its PUBACKs, which come only once
 * the publish is let through. Held publishes go through in the order they came, one token each.
 *
 * Only a client whose held backlog would take more than FLOOD_SECONDS to let through is closed
 * (a client that keeps writing while it is not read cannot get there: the socket stops it).
 */

/** A backlog longer than this, at the connection's rate, is a flood: the connection is closed. */
export const FLOOD_SECONDS = 10;

export type Admission = 'now' | 'held' | 'flood';

/**
 * A token bucket (`rate` a second on average, bursts of twice that) with a queue of held
 * publishes behind it.
 */
export class PublishLimit {
  private tokens: number;
  private last = performance.now();
  private readonly held: (() => void)[] = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly rate: number,
    /** Asked before each held publish goes through: a closed connection's are dropped. */
    private readonly alive: () => boolean,
  ) {
    this.tokens = rate * 2;
  }

  /** Publishes waiting for a token. */
  get backlog(): number {
    return this.held.length;
  }

  /** `pass` is called now, or later in arrival order ('held'), or never ('flood': close the connection). */
  admit(pass: () => void): Admission {
    if (this.held.length === 0 && this.take()) {
      pass();
      return 'now';
    }
    if (this.held.length >= this.rate * FLOOD_SECONDS) return 'flood';
    this.held.push(pass);
    this.schedule();
    return 'held';
  }

  private refill(): void {
    const now = performance.now();
    this.tokens = Math.min(this.rate * 2, this.tokens + ((now - this.last) / 1000) * this.rate);
    this.last = now;
  }

  private take(): boolean {
    this.refill();
    if (this.tokens < 1) return false;
    this.tokens -= 1;
    return true;
  }

  private schedule(): void {
    if (this.timer) return;
    // The time until the next token, at least a millisecond (timers are no finer).
    const wait = Math.max(1, Math.ceil(((1 - this.tokens) / this.rate) * 1000));
    this.timer = setTimeout(() => this.release(), wait);
  }

  private release(): void {
    this.timer = undefined;
    if (!this.alive()) {
      this.held.length = 0;
      return;
    }
    while (this.held.length > 0 && this.take()) this.held.shift()!();
    if (this.held.length > 0) this.schedule();
  }
}
