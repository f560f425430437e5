import type { DeadlineReport, DispatchReport } from '../../domain/dispatch.js';
import type { ChargeState } from '../../domain/outcome.js';

/**
 * The dashboard's JSON API, as its server answers and its page reads it. Every route needs the
 * token when the server has one: `Authorization: Bearer <token>`, the `bulkbill_token` cookie
 * (set by the server when the page is opened with `?token=`), or `?token=` itself.
 *
 *   GET /                                   the page (assets under /assets/)
 *   GET /api/runs                           RunList
 *   GET /api/runs/:runId                    RunView
 *   GET /api/runs/:runId/series?after=N     SeriesPage (points after cursor N; omit for all)
 *   GET /api/runs/:runId/problems?state=&q=&limit=   ProblemPage
 *   GET /api/runs/:runId/users/:userId      UserView, or 404 with ApiError
 *   GET /api/runs/:runId/events             Server-Sent Events: `update` events, data LiveUpdate
 *   GET /metrics                            Prometheus text
 *
 * Ids in paths are encodeURIComponent'ed. Errors answer `{ error: string }` with a 4xx/5xx.
 */

export interface ApiError {
  readonly error: string;
}

/** One run in the list of runs. */
export interface RunListItem {
  readonly runId: string;
  /** ISO 8601. */
  readonly createdAt: string;
  /** ISO 8601, once finished. */
  readonly finishedAt: string | undefined;
  readonly total: number;
  readonly inputPath: string;
}

export interface RunList {
  readonly runs: readonly RunListItem[];
  /** The run the server was started for (`run --dashboard`, `dashboard --run-id`), if any. */
  readonly current: string | undefined;
}

/** Where a run stands now. */
export interface RunView {
  readonly runId: string;
  readonly inputPath: string;
  /** The billing endpoint (never holds a secret). */
  readonly endpoint: string;
  readonly createdAt: string;
  readonly finishedAt: string | undefined;
  readonly total: number;
  /** Rows per state; they add up to total. */
  readonly counts: Readonly<Record<ChargeState, number>>;
  /** Rows in a terminal state (everything but pending). */
  readonly done: number;
  /** Amount charged per currency, in minor units (cents). */
  readonly chargedAmounts: Readonly<Record<string, number>>;
  /** Charges ended per second over the last few seconds; 0 when idle. */
  readonly perSecond: number;
  /** Time to the end at that pace, in ms; undefined without a pace or when finished. */
  readonly etaMs: number | undefined;
  /** From the first sample (or creation) to the last sample or now, in ms. */
  readonly elapsedMs: number;
  /** Some process is billing it now (a sample came in the last few seconds). */
  readonly live: boolean;
  /** How it is paced, as its latest process said (limit, deadline, breaker), when known. */
  readonly dispatch: DispatchReport | undefined;
  /** The deadline and whether it will be met, when the run has one. */
  readonly deadline: DeadlineReport | undefined;
  /** Epoch ms of this view. */
  readonly at: number;
}

/** One point of the charts: one second of the run (every process summed). */
export interface SeriesPoint {
  /** Epoch ms of the second's start. */
  readonly at: number;
  /** Charges ended per second. */
  readonly chargesPerSecond: number;
  /** Attempts answered (or timed out) per second. */
  readonly attemptsPerSecond: number;
  /** Latency of the second's attempts, ms; null when there were none. */
  readonly p50Ms: number | null;
  readonly p95Ms: number | null;
  /** Requests in flight at the second's end. */
  readonly inFlight: number;
  /** Requests allowed in flight (the concurrency limit). */
  readonly limit: number;
  /** Attempts that will be retried, per second. */
  readonly retriesPerSecond: number;
  /** 429 and 503 answers per second. */
  readonly refusalsPerSecond: number;
  /** The circuit breaker: 0 closed, 0.5 half-open (probing), 1 open; null without a breaker. */
  readonly breaker: number | null;
}

export interface SeriesPage {
  readonly points: readonly SeriesPoint[];
  /** Pass as `after` for the points after these. */
  readonly cursor: number;
}

/** A charge that did not end well (or one that matched a search). */
export interface Problem {
  readonly userId: string;
  readonly line: number;
  readonly state: ChargeState;
  readonly amount: number;
  readonly currency: string;
  readonly attempts: number;
  readonly httpStatus: number | undefined;
  readonly error: string | undefined;
}

/** `state`: failed, unknown, declined, invalid, pending or all problems (default); `q`: text in the user id or reason. */
export interface ProblemPage {
  readonly problems: readonly Problem[];
  /** Problems matching the filter in all (the page holds the latest `limit`, default 100). */
  readonly matching: number;
}

/** One attempt of a charge, as the ledger kept it. */
export interface AttemptView {
  /** 1-based attempt number (throttled attempts repeat the number: they do not count). */
  readonly attempt: number;
  /** Epoch ms the request left. */
  readonly at: number;
  readonly httpStatus: number | undefined;
  readonly latencyMs: number | undefined;
  /** charged, declined, retry, throttled, failed, unknown, pending */
  readonly outcome: string;
  readonly reason: string | undefined;
}

/** What happened to user X. */
export interface UserView {
  readonly runId: string;
  readonly userId: string;
  readonly line: number;
  readonly state: ChargeState;
  readonly amount: number;
  readonly currency: string;
  readonly attempts: number;
  readonly ambiguous: boolean;
  readonly httpStatus: number | undefined;
  readonly latencyMs: number | undefined;
  readonly chargeId: string | undefined;
  readonly error: string | undefined;
  /** Every attempt kept, oldest first (the Redis ledger keeps the latest 20). */
  readonly history: readonly AttemptView[];
}

/** One Server-Sent Event `update`: the run now, and the chart points since the last update. */
export interface LiveUpdate {
  readonly run: RunView;
  readonly points: readonly SeriesPoint[];
  readonly cursor: number;
}
