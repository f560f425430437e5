import type { AttemptOutcome } from '../domain/samples.js';

/**
 * One attempt as it ended, told by an engine to what watches the run (metrics, the dashboard's
 * samples, the log): no header, no body, nothing secret.
 */
export interface AttemptEvent {
  readonly userId: string;
  /** The attempt's number as sent. */
  readonly attempt: number;
  readonly latencyMs: number;
  /** The answer's HTTP status; undefined when none came (timeout, connection error). */
  readonly status: number | undefined;
  /** The state it left the charge in, or `retry`/`throttled` when the charge goes on. */
  readonly outcome: AttemptOutcome;
  /** What went wrong, for a charge that did not end charged. */
  readonly reason: string | undefined;
  /**
   * No request was sent: the charge ended without one (its idempotency key had expired, its job
   * stalled too often). It counts as a charge ended, not as an attempt.
   */
  readonly unsent?: true;
}

/** Whether the attempt ended its charge. */
export function endedCharge(event: AttemptEvent): boolean {
  return event.outcome !== 'retry' && event.outcome !== 'throttled' && event.outcome !== 'pending';
}

/** A refusal for load: 429, or 503. */
export function isRefusal(status: number | undefined): boolean {
  return status === 429 || status === 503;
}
