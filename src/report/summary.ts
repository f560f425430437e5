import type { DispatchReport } from '../domain/dispatch.js';
import type { StateCounts } from '../ledger/ledger.js';

/** The figures printed at the end of a run, and emitted by `--json`. */
export interface RunSummary {
  readonly runId: string;
  /** Input rows; the counts add up to it. */
  readonly total: number;
  readonly counts: StateCounts;
  /** Amount billed per currency (charged charges only), in minor units. */
  readonly chargedAmounts: Readonly<Record<string, number>>;
  readonly wallMs: number;
  /** Charges ended in this process per second of wall time. */
  readonly throughputPerSecond: number;
  /** Attempts sent in this process. */
  readonly attempts: number;
  readonly latencyMs: { readonly p50: number; readonly p95: number; readonly p99: number };
  /** How long the same attempts would have taken one after another. */
  readonly serialMs: number;
  readonly interrupted: boolean;
  /** Why the run stopped early, when the provider said it was misconfigured. */
  readonly stoppedBecause: string | undefined;
  readonly reportPath: string | undefined;
  /** Time spent validating and importing the input (0 when an existing run was resumed). */
  readonly importMs: number;
  /** Peak resident memory of the process, in bytes. */
  readonly peakRssBytes: number;
  /** How requests were paced (limit, deadline, breaker); absent when nothing was sent. */
  readonly dispatch?: DispatchReport | undefined;
  /** With a deadline: whether the run ended by it. */
  readonly deadlineMet?: boolean | undefined;
}

/** Nearest-rank percentile of `sorted` (ascending, as latencyPercentiles sorts it); 0 when empty. */
export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank] as number;
}

export function latencyPercentiles(latencies: Float64Array): RunSummary['latencyMs'] {
  const sorted = Float64Array.from(latencies).sort();
  return {
    p50: percentile(sorted, 50),
    p95: percentile(sorted, 95),
    p99: percentile(sorted, 99),
  };
}
