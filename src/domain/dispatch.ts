/**
 * How an engine paced its requests, as progress, `status` and the summary show it: plain data,
 * filled by the engines from their limit, planner and breaker.
 */
export interface DispatchReport {
  /** `fixed`: `--concurrency N`; `auto`: the limit controller's. */
  readonly mode: 'fixed' | 'auto';
  /** Requests allowed in flight now (at the end: the last limit). */
  readonly limit: number;
  /** Most requests in flight at once. */
  readonly maxInFlight: number;
  /** With `auto`: the provider's capacity as last estimated (refusals or queueing). */
  readonly capacity?: number | undefined;
  /** With `auto`: the no-load latency measured, in ms. */
  readonly baselineMs?: number | undefined;
  /** Attempts throttled (429, or 503 with Retry-After). */
  readonly throttled: number;
  readonly deadline?: DeadlineReport | undefined;
  readonly breaker?: BreakerReport | undefined;
}

export interface DeadlineReport {
  /** The deadline, epoch ms. */
  readonly at: number;
  /** Whether the work left can end in time within the limits. */
  readonly feasible: boolean;
  /** Requests in flight the deadline needs. */
  readonly need: number;
  /** When the work left is expected to end (epoch ms). */
  readonly expectedEndAt: number;
  /** What binds when it is not feasible: max-concurrency, rate, deadline-passed, provider-capacity. */
  readonly bound?: string | undefined;
}

export interface BreakerReport {
  readonly state: 'closed' | 'open' | 'half-open';
  /** Times it opened. */
  readonly opened: number;
  /** Probes sent while half-open. */
  readonly probes: number;
  /** Attempts whose failure came while the provider was down: they used up no attempt. */
  readonly excused: number;
}

/** A breaker's report from its state (the engine's breaker, or the queue's) and the attempts it excused. */
export function breakerReport(
  breaker: Pick<BreakerReport, 'state' | 'opened' | 'probes'>,
  excused: number,
): BreakerReport {
  return { state: breaker.state, opened: breaker.opened, probes: breaker.probes, excused };
}

/** A deadline's report from the planner's standing (its other fields are the engine's own). */
export function deadlineReport(deadline: DeadlineReport): DeadlineReport {
  return {
    at: deadline.at,
    feasible: deadline.feasible,
    need: deadline.need,
    expectedEndAt: deadline.expectedEndAt,
    bound: deadline.bound,
  };
}
