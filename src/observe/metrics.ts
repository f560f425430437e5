import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { ChargeState } from '../domain/outcome.js';
import { LATENCY_BUCKETS_MS } from '../domain/samples.js';
import { type AttemptEvent, endedCharge, isRefusal } from './attempts.js';
import type { ProgressEvent } from './progress.js';

/** The breaker's state as a number a graph can draw: 0 closed, 1 half-open, 2 open. */
const BREAKER_LEVEL = { closed: 0, 'half-open': 1, open: 2 } as const;

/**
 * A billing process's Prometheus metrics (prom-client): `bulkbill_` names, base units (seconds),
 * `_total` counters, and no per-user label. A registry of its own, not prom-client's global one,
 * so that two runs in one process (tests, the library) never share counters.
 */
export class BillingMetrics {
  readonly registry = new Registry();
  readonly #attempts: Counter<'outcome'>;
  readonly #byStatus: Counter<'status'>;
  readonly #refusals: Counter<'status'>;
  readonly #retries: Counter;
  readonly #ended: Counter<'state'>;
  readonly #duration: Histogram;
  readonly #inFlight: Gauge;
  readonly #limit: Gauge;
  readonly #charges: Gauge<'run_id' | 'state'>;
  readonly #eta: Gauge;
  readonly #deadline: Gauge;
  readonly #deadlineFeasible: Gauge;
  readonly #breaker: Gauge;

  constructor(options: { readonly defaultMetrics?: boolean } = {}) {
    const registers = [this.registry];
    if (options.defaultMetrics !== false) {
      collectDefaultMetrics({ register: this.registry, prefix: 'bulkbill_' });
    }
    this.#attempts = new Counter({
      name: 'bulkbill_attempts_total',
      help: 'Requests sent to the billing API that ended (answered or timed out), by what they left the charge in: charged, declined, failed, unknown, retry, throttled, pending.',
      labelNames: ['outcome'],
      registers,
    });
    this.#byStatus = new Counter({
      name: 'bulkbill_attempts_by_status_total',
      help: "Requests that ended, by the answer's HTTP status (`none`: no answer, a timeout or a connection error).",
      labelNames: ['status'],
      registers,
    });
    this.#refusals = new Counter({
      name: 'bulkbill_refusals_total',
      help: 'Answers refusing for load: 429 and 503.',
      labelNames: ['status'],
      registers,
    });
    this.#retries = new Counter({
      name: 'bulkbill_retries_total',
      help: 'Attempts after which the charge is tried again (throttled ones included).',
      registers,
    });
    this.#ended = new Counter({
      name: 'bulkbill_charges_ended_total',
      help: 'Charges this process ended, by state (with a request or without one).',
      labelNames: ['state'],
      registers,
    });
    this.#duration = new Histogram({
      name: 'bulkbill_request_duration_seconds',
      help: 'Time from sending a request to its answer (or timeout), in seconds.',
      buckets: LATENCY_BUCKETS_MS.map((ms) => ms / 1_000),
      registers,
    });
    this.#inFlight = new Gauge({
      name: 'bulkbill_in_flight_requests',
      help: 'Requests in flight now.',
      registers,
    });
    this.#limit = new Gauge({
      name: 'bulkbill_concurrency_limit',
      help: 'Requests allowed in flight now (fixed, auto or from the deadline).',
      registers,
    });
    this.#charges = new Gauge({
      name: 'bulkbill_charges',
      help: "The run's input rows by state, as the ledger counts them (every process).",
      labelNames: ['run_id', 'state'],
      registers,
    });
    this.#eta = new Gauge({
      name: 'bulkbill_eta_seconds',
      help: 'Time left to the end of the run at the current pace (absent without a pace).',
      registers,
    });
    this.#deadline = new Gauge({
      name: 'bulkbill_deadline_timestamp_seconds',
      help: "The run's deadline, Unix time (absent without one).",
      registers,
    });
    this.#deadlineFeasible = new Gauge({
      name: 'bulkbill_deadline_feasible',
      help: '1 when the work left can end before the deadline, 0 when it cannot (absent without one).',
      registers,
    });
    this.#breaker = new Gauge({
      name: 'bulkbill_breaker_state',
      help: 'The circuit breaker: 0 closed, 1 half-open (probing), 2 open (absent without one).',
      registers,
    });
    for (const outcome of ['charged', 'declined', 'failed', 'unknown', 'retry', 'throttled'])
      this.#attempts.inc({ outcome }, 0);
    for (const state of ['charged', 'declined', 'failed', 'unknown']) this.#ended.inc({ state }, 0);
  }

  attempt(event: AttemptEvent): void {
    if (event.unsent) {
      if (endedCharge(event)) this.#ended.inc({ state: event.outcome });
      return;
    }
    this.#attempts.inc({ outcome: event.outcome });
    this.#byStatus.inc({ status: event.status === undefined ? 'none' : String(event.status) });
    if (isRefusal(event.status)) this.#refusals.inc({ status: String(event.status) });
    if (event.outcome === 'retry' || event.outcome === 'throttled') this.#retries.inc();
    if (endedCharge(event)) this.#ended.inc({ state: event.outcome });
    this.#duration.observe(event.latencyMs / 1_000);
  }

  /** In flight, the limit and the breaker, as the process reads them now. */
  dispatch(inFlight: number, limit: number, breaker?: 'closed' | 'open' | 'half-open'): void {
    this.#inFlight.set(inFlight);
    this.#limit.set(limit);
    if (breaker !== undefined) this.#breaker.set(BREAKER_LEVEL[breaker]);
  }

  /** The run's rows per state, as the ledger counts them. */
  counts(runId: string, counts: Readonly<Record<ChargeState, number>>): void {
    for (const [state, n] of Object.entries(counts)) this.#charges.set({ run_id: runId, state }, n);
  }

  progress(event: ProgressEvent): void {
    this.dispatch(event.inFlight, event.dispatch?.limit ?? 0, event.dispatch?.breaker?.state);
    this.counts(event.runId, {
      pending: event.total - event.done,
      charged: event.charged,
      declined: event.declined,
      failed: event.failed,
      unknown: event.unknown,
      invalid: event.invalid,
    });
    if (event.etaMs === undefined) this.#eta.reset();
    else this.#eta.set(event.etaMs / 1_000);
    const deadline = event.dispatch?.deadline;
    if (deadline !== undefined) {
      this.#deadline.set(deadline.at / 1_000);
      this.#deadlineFeasible.set(deadline.feasible ? 1 : 0);
    }
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
