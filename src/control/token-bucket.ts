import type { Clock } from '../domain/clock.js';
import { describeValue } from '../domain/errors.js';

export interface TokenBucketOptions {
  /** Tokens added per second. Must be > 0. */
  readonly ratePerSecond: number;
  /** Most tokens the bucket holds, i.e. the largest burst. Default: max(1, ratePerSecond). */
  readonly burst?: number;
  /** Time source; the bucket never reads a clock itself. */
  readonly clock: Clock;
}

/**
 * A token bucket refilled continuously at `ratePerSecond`, starting full. Lazy: it does no work
 * between calls, so an idle bucket costs nothing.
 */
export class TokenBucket {
  readonly ratePerSecond: number;
  readonly burst: number;
  readonly #clock: Clock;
  readonly #msPerToken: number;
  #tokens: number;
  #refilledAt: number;

  constructor(options: TokenBucketOptions) {
    const { ratePerSecond, clock } = options;
    if (!(Number.isFinite(ratePerSecond) && ratePerSecond > 0)) {
      throw new RangeError(
        `Expected \`ratePerSecond\` to be a finite number > 0, got ${describeValue(ratePerSecond)}`,
      );
    }
    const burst = options.burst ?? Math.max(1, ratePerSecond);
    if (!(Number.isFinite(burst) && burst >= 1)) {
      throw new RangeError(
        `Expected \`burst\` to be a finite number >= 1, got ${describeValue(burst)}`,
      );
    }
    this.ratePerSecond = ratePerSecond;
    this.burst = burst;
    this.#clock = clock;
    this.#msPerToken = 1_000 / ratePerSecond;
    this.#tokens = burst;
    this.#refilledAt = clock.now();
  }

  /** Takes `count` tokens when they are all there; otherwise takes nothing. */
  tryTake(count = 1): boolean {
    this.#refill();
    if (this.#tokens + 1e-9 < count) return false;
    this.#tokens -= count;
    return true;
  }

  /** Milliseconds until `count` tokens will be available (0 when they are now). */
  msUntilAvailable(count = 1): number {
    this.#refill();
    const missing = count - this.#tokens;
    return missing <= 1e-9 ? 0 : missing * this.#msPerToken;
  }

  /** Tokens available now (fractional). */
  available(): number {
    this.#refill();
    return this.#tokens;
  }

  #refill(): void {
    const now = this.#clock.now();
    const elapsed = now - this.#refilledAt;
    if (elapsed <= 0) return;
    this.#tokens = Math.min(this.burst, this.#tokens + elapsed / this.#msPerToken);
    this.#refilledAt = now;
  }
}
