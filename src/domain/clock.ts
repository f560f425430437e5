/**
 * Time as the policies see it. `control/` and `domain/` never read a clock themselves: they are
 * handed one, so tests drive them with a fake clock instead of sleeping.
 */
export interface Clock {
  /** Monotonic milliseconds; only differences between two readings mean anything. */
  now(): number;
}

// The one place that reads the real monotonic clock; everything else receives a Clock.
export const systemClock: Clock = { now: () => performance.now() };
