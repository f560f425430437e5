import { describeValue } from '../domain/errors.js';

/** A source of uniform numbers in [0, 1), such as Math.random; tests pass a fixed one. */
export type Random = () => number;

/** The shape of a retry policy's delays (a RetryPolicy is one). */
export interface BackoffOptions {
  /** Ceiling of the first retry's delay, in ms. Must be a finite number >= 0. */
  readonly baseDelayMs: number;
  /** Largest ceiling any retry's delay can have, in ms. Must be a finite number >= baseDelayMs. */
  readonly maxDelayMs: number;
}

/** Checks backoff options once; the message names the field and the value received. */
export function checkBackoffOptions(options: BackoffOptions): void {
  const { baseDelayMs, maxDelayMs } = options;
  if (!(Number.isFinite(baseDelayMs) && baseDelayMs >= 0)) {
    throw new RangeError(
      `Expected \`baseDelayMs\` to be a finite number >= 0, got ${describeValue(baseDelayMs)}`,
    );
  }
  if (!(Number.isFinite(maxDelayMs) && maxDelayMs >= baseDelayMs)) {
    throw new RangeError(
      `Expected \`maxDelayMs\` to be a finite number >= baseDelayMs (${baseDelayMs}), got ${describeValue(maxDelayMs)}`,
    );
  }
}

/**
 * Exponential backoff with full jitter: a delay drawn uniformly from
 * [0, min(maxDelayMs, baseDelayMs × 2^(attempt − 1))), where `attempt` is the number of the attempt that
 * just failed (1 for the first). Full jitter spreads the retries of many charges that failed
 * together, so they do not come back as one wave.
 */
export function backoffDelayMs(attempt: number, options: BackoffOptions, random: Random): number {
  if (!(Number.isSafeInteger(attempt) && attempt >= 1)) {
    throw new RangeError(
      `Expected \`attempt\` to be an integer >= 1, got ${describeValue(attempt)}`,
    );
  }
  // 2 ** 1100 is Infinity, which min() turns into the cap: no overflow to guard against.
  const ceiling = Math.min(options.maxDelayMs, options.baseDelayMs * 2 ** (attempt - 1));
  return random() * ceiling;
}
