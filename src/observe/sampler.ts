import { LATENCY_BUCKETS_MS, type RunSample } from '../domain/samples.js';
import { type AttemptEvent, endedCharge, isRefusal } from './attempts.js';

/** What a sample reads of the process at a second's end. */
export interface SampleGauges {
  readonly inFlight: number;
  readonly limit: number;
  readonly breaker: RunSample['breaker'];
}

export interface RunSamplerOptions {
  /** `host:pid`. */
  readonly source: string;
  /** Calendar time, epoch ms. */
  readonly now: () => number;
  readonly gauges: () => SampleGauges;
  /** Where each finished second goes (the ledger's noteSample, usually). */
  readonly sink: (sample: RunSample) => void;
}

/** The bucket of LATENCY_BUCKETS_MS a latency falls in (the last one past them all). */
export function latencyBucket(latencyMs: number): number {
  let low = 0;
  let high = LATENCY_BUCKETS_MS.length;
  // The first bound not below the latency: bounds are upper bounds, as Prometheus's `le`.
  while (low < high) {
    const mid = (low + high) >> 1;
    if ((LATENCY_BUCKETS_MS[mid] ?? Number.POSITIVE_INFINITY) < latencyMs) low = mid + 1;
    else high = mid;
  }
  return low;
}

/**
 * The latency at quantile `q` of a histogram over LATENCY_BUCKETS_MS, interpolated within its
 * bucket (as Prometheus's histogram_quantile does); null when it counts nothing.
 */
export function histogramQuantile(hist: readonly number[], q: number): number | null {
  const total = hist.reduce((sum, n) => sum + n, 0);
  if (total === 0) return null;
  const rank = q * total;
  let seen = 0;
  for (let i = 0; i < hist.length; i++) {
    const n = hist[i] ?? 0;
    if (n > 0 && seen + n >= rank) {
      const low = i === 0 ? 0 : (LATENCY_BUCKETS_MS[i - 1] ?? 0);
      // Past the last bound there is nothing to interpolate to: its bound is the answer.
      const high = LATENCY_BUCKETS_MS[i] ?? low;
      return low + ((high - low) * (rank - seen)) / n;
    }
    seen += n;
  }
  return LATENCY_BUCKETS_MS[LATENCY_BUCKETS_MS.length - 1] ?? null;
}

/**
 * Folds a process's attempts into one sample per calendar second, for the dashboard's charts: a
 * second is handed to the sink once it is over (tick), and the second in progress on stop().
 * Reads no clock of its own but `now`, and sets no timer: the caller ticks it.
 */
export class RunSampler {
  readonly #options: RunSamplerOptions;
  #second: number;
  #ended = 0;
  #attempts = 0;
  #retries = 0;
  #refusals = 0;
  #hist: number[] = new Array<number>(LATENCY_BUCKETS_MS.length + 1).fill(0);

  constructor(options: RunSamplerOptions) {
    this.#options = options;
    this.#second = secondOf(options.now());
  }

  attempt(event: AttemptEvent): void {
    this.tick();
    if (event.unsent) {
      if (endedCharge(event)) this.#ended++;
      return;
    }
    this.#attempts++;
    if (endedCharge(event)) this.#ended++;
    if (event.outcome === 'retry' || event.outcome === 'throttled') this.#retries++;
    if (isRefusal(event.status)) this.#refusals++;
    const bucket = latencyBucket(event.latencyMs);
    this.#hist[bucket] = (this.#hist[bucket] ?? 0) + 1;
  }

  /** Hands over the seconds that are over; a second with nothing in it is still a sample. */
  tick(): void {
    const second = secondOf(this.#options.now());
    if (second <= this.#second) return;
    this.#emit();
    // Seconds skipped whole (a stalled event loop) are left out, not drawn as zeros.
    this.#second = second;
  }

  /** Hands over the second in progress. */
  stop(): void {
    this.#emit();
    this.#second = secondOf(this.#options.now());
  }

  #emit(): void {
    const gauges = this.#options.gauges();
    this.#options.sink({
      at: this.#second,
      source: this.#options.source,
      ended: this.#ended,
      attempts: this.#attempts,
      retries: this.#retries,
      refusals: this.#refusals,
      inFlight: gauges.inFlight,
      limit: gauges.limit,
      breaker: gauges.breaker,
      hist: this.#hist,
    });
    this.#ended = 0;
    this.#attempts = 0;
    this.#retries = 0;
    this.#refusals = 0;
    this.#hist = new Array<number>(LATENCY_BUCKETS_MS.length + 1).fill(0);
  }
}

function secondOf(ms: number): number {
  return Math.floor(ms / 1_000) * 1_000;
}

export interface RunSamplersOptions {
  /** `host:pid`, or the worker's name. */
  readonly source: string;
  readonly now: () => number;
  /** The process's gauges (in flight, the limit, the breaker), shared by its runs' samples. */
  readonly gauges: () => SampleGauges;
  readonly sink: (runId: string, sample: RunSample) => void;
  /** A run's sampler stops this long after its last attempt, when nothing is in flight. Default 5 s. */
  readonly idleMs?: number;
}

/**
 * One RunSampler per run a long-lived process (a worker) bills. A run it has had nothing of for
 * `idleMs`, with nothing in flight, stops being sampled (its last second handed over): an idle
 * worker would otherwise draw a finished run as live forever. Its next attempt starts it again.
 */
export class RunSamplers {
  readonly #options: RunSamplersOptions;
  readonly #runs = new Map<string, { sampler: RunSampler; lastAt: number }>();

  constructor(options: RunSamplersOptions) {
    this.#options = options;
  }

  attempt(runId: string, event: AttemptEvent): void {
    let run = this.#runs.get(runId);
    if (run === undefined) {
      const { source, now, gauges, sink } = this.#options;
      const sampler = new RunSampler({
        source,
        now,
        gauges,
        sink: (sample) => sink(runId, sample),
      });
      run = { sampler, lastAt: now() };
      this.#runs.set(runId, run);
    }
    run.lastAt = this.#options.now();
    run.sampler.attempt(event);
  }

  /** Hands over the seconds that are over, and stops the runs gone idle. */
  tick(): void {
    const now = this.#options.now();
    const idle = this.#options.gauges().inFlight === 0;
    for (const [runId, run] of this.#runs) {
      run.sampler.tick();
      if (idle && now - run.lastAt > (this.#options.idleMs ?? 5_000)) {
        run.sampler.stop();
        this.#runs.delete(runId);
      }
    }
  }

  /** Hands over every run's second in progress, and forgets them. */
  stop(): void {
    for (const run of this.#runs.values()) run.sampler.stop();
    this.#runs.clear();
  }

  /** The runs sampled now. */
  get runs(): readonly string[] {
    return [...this.#runs.keys()];
  }
}
