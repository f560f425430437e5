import { parseDuration } from '../domain/duration.js';
import { describeValue, UsageError } from '../domain/errors.js';

/**
 * `--deadline`: the smallest concurrency that finishes the work left in time, by Little's law
 * (requests in flight = requests per second × seconds per request), with a margin; and whether
 * the deadline can be met at all within `--max-concurrency` and `--rate`. Pure: the engines call
 * it again as the run goes on, with the work left, the latency they observe and the time left,
 * so the plan follows a provider that slows down or a run that retries more than expected.
 */
export interface PlanInput {
  /** Charges not yet ended. */
  readonly remaining: number;
  /** Observed (or, before any answer, expected) latency of one attempt, in ms. */
  readonly latencyMs: number;
  /** Time until the deadline, in ms (0 or less: it has passed). */
  readonly timeLeftMs: number;
  /** Most requests in flight allowed (`--max-concurrency`, or `--concurrency`'s ceiling). */
  readonly maxConcurrency: number;
  /** Requests per second allowed (`--rate`); undefined: unlimited. */
  readonly rate?: number | undefined;
  /** Attempts one charge takes on average (retries): 1 before any is observed. Default 1. */
  readonly attemptsPerCharge?: number | undefined;
  /** Finish this much ahead: the work is planned for timeLeft ÷ margin. Default 1.1. */
  readonly margin?: number | undefined;
}

export interface Plan {
  /** Requests to keep in flight: the fewest that finish in time (with the margin). */
  readonly concurrency: number;
  /** Whether the deadline can be met within the limits (with the margin). */
  readonly feasible: boolean;
  /** Attempts per second the deadline needs, with the margin. */
  readonly neededPerSecond: number;
  /** How long the work left takes at `concurrency`, in ms. */
  readonly expectedMs: number;
  /** How long it takes at the most the limits allow, in ms: the best the run can do. */
  readonly fastestMs: number;
  /** What binds when the deadline cannot be met: the concurrency ceiling or the rate. */
  readonly bound?: 'max-concurrency' | 'rate' | 'deadline-passed' | 'too-soon';
}

export const DEFAULT_MARGIN = 1.1;

/** The fewest requests in flight that end `remaining` charges before the deadline. */
export function planConcurrency(input: PlanInput): Plan {
  const { remaining, latencyMs, timeLeftMs, maxConcurrency } = input;
  const attempts = remaining * Math.max(1, input.attemptsPerCharge ?? 1);
  const margin = input.margin ?? DEFAULT_MARGIN;
  for (const [name, value, ok] of [
    ['remaining', remaining, Number.isSafeInteger(remaining) && remaining >= 0],
    ['latencyMs', latencyMs, Number.isFinite(latencyMs) && latencyMs > 0],
    ['maxConcurrency', maxConcurrency, Number.isSafeInteger(maxConcurrency) && maxConcurrency >= 1],
    ['margin', margin, Number.isFinite(margin) && margin >= 1],
  ] as const) {
    if (!ok) throw new RangeError(`Expected a valid \`${name}\`, got ${describeValue(value)}`);
  }
  // The most attempts per second the limits allow: the concurrency ceiling over the latency,
  // or the rate, whichever is lower.
  const byConcurrency = (maxConcurrency * 1_000) / latencyMs;
  const ceiling = input.rate === undefined ? byConcurrency : Math.min(byConcurrency, input.rate);
  const fastestMs = attempts === 0 ? 0 : (attempts / ceiling) * 1_000;
  if (attempts === 0) {
    return { concurrency: 1, feasible: true, neededPerSecond: 0, expectedMs: 0, fastestMs: 0 };
  }
  if (timeLeftMs <= 0) {
    return {
      concurrency: maxConcurrency,
      feasible: false,
      neededPerSecond: Number.POSITIVE_INFINITY,
      expectedMs: fastestMs,
      fastestMs,
      bound: 'deadline-passed',
    };
  }
  // No concurrency ends a charge sooner than one request takes: a deadline that close cannot be
  // met, however few the charges.
  if (latencyMs * margin > timeLeftMs) {
    return {
      concurrency: maxConcurrency,
      feasible: false,
      neededPerSecond: Number.POSITIVE_INFINITY,
      expectedMs: fastestMs,
      fastestMs,
      bound: 'too-soon',
    };
  }
  const neededPerSecond = (attempts * margin * 1_000) / timeLeftMs;
  if (neededPerSecond > ceiling) {
    // Not in time: say so, and run at the most allowed.
    const bound =
      input.rate !== undefined && input.rate < byConcurrency ? 'rate' : 'max-concurrency';
    const concurrency =
      bound === 'rate'
        ? Math.min(maxConcurrency, Math.max(1, Math.ceil((ceiling * latencyMs) / 1_000)))
        : maxConcurrency;
    return {
      concurrency,
      feasible: false,
      neededPerSecond,
      expectedMs: fastestMs,
      fastestMs,
      bound,
    };
  }
  const concurrency = Math.min(
    maxConcurrency,
    Math.max(1, Math.ceil((neededPerSecond * latencyMs) / 1_000)),
  );
  const perSecond = Math.min(ceiling, (concurrency * 1_000) / latencyMs);
  return {
    concurrency,
    feasible: true,
    neededPerSecond,
    expectedMs: (attempts / perSecond) * 1_000,
    fastestMs,
  };
}

/**
 * Reads `--deadline`: a duration from now (`45m`, `2h`) or a time with its date and offset
 * (`2026-12-02T09:00:00+01:00`, `2026-12-02T08:00Z`). Returns epoch ms. A time without a
 * date or an offset is refused: which 09:00, in which zone, is the question a billing deadline
 * must not leave open.
 */
export function parseDeadline(text: string, nowMs: number, name = '--deadline'): number {
  const trimmed = text.trim();
  if (/^\d/.test(trimmed) && /[a-z]$/i.test(trimmed) && !trimmed.includes('T')) {
    return nowMs + parseDuration(trimmed, name);
  }
  const iso = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})$/i;
  const at = iso.test(trimmed) ? Date.parse(trimmed) : Number.NaN;
  if (!Number.isFinite(at)) {
    throw new UsageError(
      `${name}: expected a duration such as 45m or 2h, or a time with its date and offset such as 2026-12-02T09:00:00+01:00, got ${JSON.stringify(text)}`,
    );
  }
  return at;
}
