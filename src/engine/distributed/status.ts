import { Queue } from 'bullmq';
import type { DispatchReport } from '../../domain/dispatch.js';
import { BulkbillError, ErrorCode } from '../../domain/errors.js';
import { endedOf, type RunRecord, type StateCounts } from '../../ledger/ledger.js';
import { RedisLedger } from '../../ledger/redis-ledger.js';
import { etaMsOf, type ProgressEvent } from '../../observe/progress.js';
import { DEFAULT_PREFIX, DEFAULT_QUEUE, ledgerPrefix, type QueuePlace } from './jobs.js';
import { QueueBreaker, type QueueBreakerSnapshot } from './queue-breaker.js';
import { type PacingState, QueuePacing } from './queue-pacing.js';

/** A live worker of the queue, as Redis sees its connection. */
export interface LiveWorker {
  /** host:pid unless the worker was named otherwise. */
  readonly name: string;
  /** Its address as Redis sees it. */
  readonly address: string;
  /** Seconds since it connected. */
  readonly ageSeconds: number;
}

/** Where a run on the distributed engine stands. */
export interface DistributedStatus {
  readonly run: RunRecord;
  readonly counts: StateCounts;
  readonly chargedAmounts: Readonly<Record<string, number>>;
  /** Charges ended per second over the sample (undefined for a finished run). */
  readonly perSecond: number | undefined;
  /** Estimated time to the end at that pace, in ms. */
  readonly etaMs: number | undefined;
  /** Jobs in the queue by state (every run of the queue). */
  readonly queue: Readonly<Record<'waiting' | 'active' | 'delayed', number>>;
  readonly workers: readonly LiveWorker[];
  /** Why a worker stopped billing the run, when one did. */
  readonly stoppedBecause: string | undefined;
  /** The queue's circuit breaker, as its workers share it (every run of the queue). */
  readonly breaker: QueueBreakerSnapshot;
  /** The queue's pacing (`--concurrency auto`, a deadline) as its decider last set it; undefined: none. */
  readonly pacing: PacingState | undefined;
  /** Whether this run is one the queue is paced for. */
  readonly runPaced: boolean;
}

/**
 * Reads a run's status from the Redis ledger and the queue. The ledger and queue handles are
 * opened once and reused by every read until close().
 */
export class DistributedStatusReader {
  readonly ledger: RedisLedger;
  readonly #queue: Queue;
  readonly #breaker: QueueBreaker;
  readonly #pacing: QueuePacing;

  constructor(source: QueuePlace) {
    const prefix = source.prefix ?? DEFAULT_PREFIX;
    // Read only: its lease and policy are the workers' business.
    this.#breaker = new QueueBreaker({
      redis: source.redis,
      prefix,
      queue: source.queue,
      probeLeaseMs: 1,
    });
    this.#pacing = new QueuePacing({ redis: source.redis, prefix, queue: source.queue });
    this.ledger = new RedisLedger({ redis: source.redis, prefix: ledgerPrefix(prefix) });
    this.#queue = new Queue(source.queue ?? DEFAULT_QUEUE, { connection: source.redis, prefix });
    this.#queue.on('error', () => {});
  }

  /** The run, or a usage error naming it. */
  async run(runId: string): Promise<RunRecord> {
    const run = await this.ledger.findRun(runId);
    if (!run) throw new BulkbillError(ErrorCode.Usage, `--run-id: no run ${runId} in this Redis`);
    return run;
  }

  /**
   * The run's status. With `sampleMs`, counts are read twice that far apart to measure the pace
   * (only while the run is unfinished).
   */
  async read(runId: string, sampleMs = 0): Promise<DistributedStatus> {
    let run = await this.run(runId);
    let counts = await this.ledger.counts(runId);
    let perSecond: number | undefined;
    if (sampleMs > 0 && counts.pending > 0) {
      const first = endedOf(counts);
      const started = performance.now();
      await new Promise((resolve) => setTimeout(resolve, sampleMs));
      counts = await this.ledger.counts(runId);
      run = await this.run(runId);
      // A pace is only news while the run goes on.
      if (counts.pending > 0) {
        perSecond = ((endedOf(counts) - first) * 1_000) / (performance.now() - started);
      }
    }
    const [jobCounts, workers, stoppedBecause, chargedAmounts, breaker, pacing, pacedRuns] =
      await Promise.all([
        this.#queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized'),
        this.workers(),
        this.ledger.stopNote(runId),
        this.ledger.totals(runId, 'charged'),
        this.#breaker.snapshot(),
        this.#pacing.state(),
        this.#pacing.runs(),
      ]);
    return {
      run,
      counts,
      chargedAmounts,
      perSecond,
      etaMs: perSecond === undefined ? undefined : etaMsOf(counts.pending, perSecond),
      queue: {
        waiting: (jobCounts.waiting ?? 0) + (jobCounts.prioritized ?? 0),
        active: jobCounts.active ?? 0,
        delayed: jobCounts.delayed ?? 0,
      },
      workers,
      stoppedBecause,
      breaker,
      pacing,
      runPaced: pacedRuns.has(runId),
    };
  }

  /** The queue's live workers, one entry per worker (not per connection). */
  async workers(): Promise<LiveWorker[]> {
    const clients = (await this.#queue.getWorkers()) as Array<Record<string, string>>;
    const byName = new Map<string, LiveWorker>();
    for (const client of clients) {
      const raw = client.rawname ?? '';
      const marker = raw.indexOf(':w:');
      const name = marker >= 0 ? raw.slice(marker + 3) : '(unnamed)';
      const ageSeconds = Number(client.age ?? 0);
      const known = byName.get(name);
      if (!known || known.ageSeconds < ageSeconds) {
        byName.set(name, { name, address: client.addr ?? '', ageSeconds });
      }
    }
    return [...byName.values()].sort((a, b) => a.name.localeCompare(b.name));
  }

  async close(): Promise<void> {
    await this.#queue.close().catch(() => {});
    await this.ledger.close();
  }
}

/**
 * The progress of a run on the distributed engine, from the ledger's counts (every worker's
 * work): what `run --redis` and `status --wait` draw.
 */
export function progressOf(sample: {
  readonly run: RunRecord;
  readonly counts: StateCounts;
  readonly perSecond: number;
  readonly inFlight: number;
  readonly retrying: number;
  readonly elapsedMs: number;
  readonly dispatch?: DispatchReport | undefined;
}): ProgressEvent {
  const { run, counts, perSecond } = sample;
  return {
    runId: run.runId,
    total: run.total,
    done: endedOf(counts),
    charged: counts.charged,
    declined: counts.declined,
    failed: counts.failed,
    unknown: counts.unknown,
    invalid: counts.invalid,
    inFlight: sample.inFlight,
    retrying: sample.retrying,
    perSecond,
    etaMs: etaMsOf(counts.pending, perSecond),
    elapsedMs: sample.elapsedMs,
    pausedMs: 0,
    ...(sample.dispatch === undefined ? {} : { dispatch: sample.dispatch }),
  };
}

/** A pause between two polls that an event (a signal, a worker ending) can cut short. */
export class PollPause {
  #wake: (() => void) | undefined;

  /** Resolves after `ms`, or at the next wake(), whichever comes first. */
  sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.wake(), ms);
      this.#wake = () => {
        clearTimeout(timer);
        this.#wake = undefined;
        resolve();
      };
    });
  }

  /** Ends the pause in progress, if any. */
  wake(): void {
    this.#wake?.();
  }
}
