import type { TerminalChargeState } from './outcome.js';

/**
 * What an attempt left its charge in: its terminal state, or for an attempt the charge outlived
 * `retry` or `throttled` (429, or 503 with Retry-After), or `pending` (the run stopped).
 */
export type AttemptOutcome = TerminalChargeState | 'retry' | 'throttled' | 'pending';

/**
 * What one billing process saw in one second of a run: the dashboard's charts sum the samples of
 * every process. `hist` counts the second's attempt latencies per LATENCY_BUCKETS_MS bucket.
 */
export interface RunSample {
  /** Epoch ms of the second's start (a whole second). */
  readonly at: number;
  /** Which process: `host:pid`. */
  readonly source: string;
  /** Charges this process ended in the second. */
  readonly ended: number;
  /** Attempts answered or timed out in the second. */
  readonly attempts: number;
  /** Attempts whose charge is retried. */
  readonly retries: number;
  /** 429 and 503 answers. */
  readonly refusals: number;
  /** Requests in flight, and allowed in flight, at the second's end. */
  readonly inFlight: number;
  readonly limit: number;
  /** The circuit breaker's state at the second's end, when there is one. */
  readonly breaker: 'closed' | 'open' | 'half-open' | undefined;
  /** Attempt latencies per bucket of LATENCY_BUCKETS_MS, then one for longer ones. */
  readonly hist: readonly number[];
}

/**
 * Latency buckets' upper bounds, in ms: 100 ms apart from 0.4 s to 2 s, where billing APIs answer
 * (the Prometheus histogram's too, in seconds; a sample's quantiles are interpolated in them).
 */
export const LATENCY_BUCKETS_MS: readonly number[] = [
  5, 10, 25, 50, 75, 100, 150, 200, 250, 300, 350, 400, 500, 600, 700, 800, 900, 1_000, 1_100,
  1_200, 1_300, 1_400, 1_500, 1_600, 1_700, 1_800, 1_900, 2_000, 2_250, 2_500, 3_000, 4_000, 5_000,
  7_500, 10_000, 20_000, 30_000, 60_000,
];
