import { randomUUID } from 'node:crypto';
import { DispatchLimit } from '../../control/dispatch-limit.js';
import { LimitController } from '../../control/limit-controller.js';
import type { Clock } from '../../domain/clock.js';
import { deadlineReport } from '../../domain/dispatch.js';
import { endedOf, type StateCounts } from '../../ledger/ledger.js';
import type { RedisLedger } from '../../ledger/redis-ledger.js';
import type { PacingState, QueuePacing, RunPacing } from './queue-pacing.js';

export interface PacingDeciderOptions {
  readonly pacing: QueuePacing;
  /** Tells each paced run's charges left. */
  readonly ledger: Pick<RedisLedger, 'counts'>;
  /** The queue's request rate now (per second), for the deadline's plan. */
  readonly rate: () => number | undefined;
  /** Jobs on the queue (waiting, delayed, active), every run's: the work ahead of a deadline. */
  readonly queued: () => Promise<number>;
  /** The worker's name, shown in `status`. */
  readonly name: string;
  /** Epoch ms: the workers' attempts carry when they were sent on their clocks. Default Date.now. */
  readonly wallClock?: (() => number) | undefined;
  /** How long the lease lasts unrenewed: a dead decider is replaced within about this. Default 3 s. */
  readonly leaseMs?: number | undefined;
  /** A worker silent this long has its requests in flight dropped (it was killed). Default 5 s. */
  readonly deadAfterMs?: number | undefined;
  /** How often the paced runs and their charges left are read again. Default 1 s. */
  readonly runsEveryMs?: number | undefined;
  readonly onLog?: ((level: 'info' | 'warn', message: string) => void) | undefined;
}

/** A worker silent this long (it says it lives five times a second) is dead. */
const DEAD_AFTER_MS = 5_000;
/** Most jobs per request in flight the global concurrency allows for (a job spends some of its time in the ledger). */
const MOST_JOBS_PER_REQUEST = 3;

/** The one setting of the queue that the runs paced on it make together. */
interface Combined {
  readonly auto: boolean;
  readonly min: number;
  readonly max: number;
  readonly deadlineAt: number | undefined;
  readonly assumedLatencyMs: number;
}

/**
 * How several runs paced on one queue combine: `auto` if any asked for it; the strictest of
 * their least and most in flight; the earliest deadline, planned for every job on the queue
 * (the jobs ahead of a run's are billed before them).
 */
export function combinePacing(runs: readonly RunPacing[]): Combined | undefined {
  if (runs.length === 0) return undefined;
  const max = Math.min(...runs.map((run) => run.max));
  const min = Math.min(max, Math.max(...runs.map((run) => run.min)));
  const deadlines = runs.flatMap((run) => (run.deadlineAt === undefined ? [] : [run.deadlineAt]));
  return {
    auto: runs.some((run) => run.auto),
    min,
    max,
    deadlineAt: deadlines.length === 0 ? undefined : Math.min(...deadlines),
    assumedLatencyMs: Math.max(...runs.map((run) => run.assumedLatencyMs)),
  };
}

/**
 * The queue's decider: run by every worker of a paced queue, acting in the one that holds the
 * lease. Each tick it renews the lease, replays the attempts every worker told (sent at, in
 * flight then across the queue, latency, outcome) into the same limit and planner the local
 * engine uses, and sets the queue's global concurrency (BullMQ's, obeyed by every worker) to
 * the result. A decider that dies leaves its lease to expire; the next worker to take it starts
 * from the limit and capacity its predecessor published, not from a cold start.
 */
export class PacingDecider {
  readonly #options: PacingDeciderOptions;
  readonly #token = randomUUID();
  readonly #clock: Clock;
  #leading = false;
  /** Closed: a round begun before the close takes no lease. */
  #closed = false;
  #limit: DispatchLimit | undefined;
  #combined: Combined | undefined;
  #runsReadAt = Number.NEGATIVE_INFINITY;
  #remaining = 0;
  /** Attempts replayed, and charges of the paced runs ended, since this decider began. */
  #observed = 0;
  #endedAtStart: number | undefined;
  #ended = 0;
  #published: number | undefined;
  /** The queue's rate the limit was built with. */
  #rate: number | undefined;
  /** Jobs active per request in flight, smoothed: the global concurrency that lets `limit` requests go. */
  #jobsPerRequest = 1;

  constructor(options: PacingDeciderOptions) {
    this.#options = options;
    const wall = options.wallClock ?? Date.now;
    this.#clock = { now: wall };
  }

  /** Whether this worker decides for the queue now. */
  get leading(): boolean {
    return this.#leading;
  }

  /** The limit it set last; undefined when it does not decide. */
  get published(): number | undefined {
    return this.#leading ? this.#published : undefined;
  }

  /** One round: lease, runs, attempts, plan, limit. Errors (Redis away) are the caller's to ignore. */
  async tick(): Promise<void> {
    const { pacing } = this.#options;
    if (this.#closed) return;
    if (!(await pacing.lease(this.#token, this.#options.leaseMs ?? 3_000, this.#clock.now()))) {
      if (this.#leading)
        this.#options.onLog?.('info', "no longer deciding the queue's concurrency");
      this.#reset();
      return;
    }
    const now = this.#clock.now();
    if (!this.#leading) {
      this.#leading = true;
      this.#options.onLog?.('info', "deciding the queue's concurrency for its paced runs");
    }
    if (now - this.#runsReadAt >= (this.#options.runsEveryMs ?? 1_000)) {
      this.#runsReadAt = now;
      if (!(await this.#readRuns())) {
        // No paced run is left: the last one's end put the queue's own concurrency back.
        this.#reset();
        return;
      }
    }
    const limit = this.#limit;
    const combined = this.#combined;
    if (limit === undefined || combined === undefined) return;
    const attempts = await pacing.drain(20_000);
    for (const attempt of attempts) {
      limit.observe(
        { startedAt: attempt.sentAt, inFlight: attempt.inFlight },
        attempt.outcome,
        attempt.latencyMs,
      );
    }
    this.#observed += attempts.length;
    const attemptsPerCharge = this.#ended === 0 ? 1 : Math.max(1, this.#observed / this.#ended);
    limit.replan({ remaining: this.#remaining, attemptsPerCharge });
    const next = limit.limit();
    const load = await pacing.load(this.#options.deadAfterMs ?? DEAD_AFTER_MS);
    // The live workers' jobs per request: a killed worker's jobs (active until their locks end)
    // are not allowed for, so the queue runs below its limit for that while, and never past it
    // once they go back to waiting.
    if (load.requests > 0) {
      const seen = Math.min(MOST_JOBS_PER_REQUEST, Math.max(1, load.held / load.requests));
      // Up slowly, down fast: a wave of jobs taken at once holds them all before their requests
      // for a moment, and read as a ratio it would open slots past the limit.
      const weight = seen > this.#jobsPerRequest ? 0.05 : 0.5;
      this.#jobsPerRequest = this.#jobsPerRequest * (1 - weight) + seen * weight;
    }
    const jobs = Math.max(1, Math.ceil(next * this.#jobsPerRequest));
    const snapshot = limit.controllerSnapshot();
    const deadline = limit.deadline();
    const state: PacingState = {
      mode: combined.auto ? 'auto' : 'fixed',
      limit: next,
      min: combined.min,
      capacity: snapshot?.capacity,
      baselineMs: snapshot?.baselineMs,
      deadline: deadline === undefined ? undefined : deadlineReport(deadline),
      decider: this.#options.name,
      decidedAt: now,
    };
    if (await pacing.publish(this.#token, jobs, state)) {
      if (this.#published !== undefined && next !== this.#published) {
        // Told at a change of size only: a log line per limit step would be one per round trip.
        if (next >= this.#published * 2 || next <= this.#published / 2) {
          this.#options.onLog?.('info', `the queue's concurrency is now ${next}`);
        }
      }
      this.#published = next;
    }
  }

  /**
   * Ends the pacing of every paced run with no charge pending, leading or not: a worker that
   * exits when idle may be the last to see its run end, and a run's pacing left behind would
   * hold the queue's next run at its limit until another worker came. Any decider would do the
   * same at its next round. Errors (Redis away) are the caller's.
   */
  async endFinished(): Promise<void> {
    await this.#settleRuns();
  }

  /**
   * The paced runs with a charge pending, with their counts; the pacing of every other one
   * goes (the last one's end puts the queue's own global concurrency back).
   */
  async #settleRuns(): Promise<{ run: RunPacing; counts: StateCounts }[]> {
    const { pacing, ledger } = this.#options;
    const active: { run: RunPacing; counts: StateCounts }[] = [];
    for (const [runId, run] of await pacing.runs()) {
      const counts = await ledger.counts(runId);
      if (counts.pending === 0) await pacing.setRun(runId, undefined);
      else active.push({ run, counts });
    }
    return active;
  }

  /** Lets the lease go (the worker closes): another worker decides within a tick. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#reset();
    // Let go whether or not it led: a round still running may have just taken the lease.
    await this.#options.pacing.releaseLease(this.#token).catch(() => {});
  }

  #reset(): void {
    this.#leading = false;
    this.#limit = undefined;
    this.#combined = undefined;
    this.#runsReadAt = Number.NEGATIVE_INFINITY;
    this.#endedAtStart = undefined;
    this.#observed = 0;
    this.#ended = 0;
    this.#published = undefined;
    this.#jobsPerRequest = 1;
  }

  /** Reads the paced runs: ends those with no charge left; false when none is left. */
  async #readRuns(): Promise<boolean> {
    const active = await this.#settleRuns();
    let pending = 0;
    let ended = 0;
    for (const { counts } of active) {
      pending += counts.pending;
      ended += endedOf(counts);
    }
    const combined = combinePacing(active.map(({ run }) => run));
    if (combined === undefined) {
      this.#limit = undefined;
      this.#combined = undefined;
      return false;
    }
    this.#endedAtStart ??= ended;
    this.#ended = Math.max(0, ended - this.#endedAtStart);
    this.#remaining = Math.max(pending, await this.#options.queued());
    const before = this.#combined;
    if (
      this.#limit === undefined ||
      before === undefined ||
      before.auto !== combined.auto ||
      before.min !== combined.min ||
      before.max !== combined.max ||
      this.#options.rate() !== this.#rate
    ) {
      this.#rate = this.#options.rate();
      this.#limit = await this.#build(combined);
    }
    this.#combined = combined;
    this.#limit.retarget(
      combined.deadlineAt === undefined
        ? undefined
        : { at: combined.deadlineAt, wallClock: this.#clock.now },
    );
    return true;
  }

  /** The limit for the runs' setting, from where the last decider (this one, or a dead one) left it. */
  async #build(combined: Combined): Promise<DispatchLimit> {
    const last = this.#limit?.controllerSnapshot();
    const published = last === undefined ? await this.#options.pacing.state() : undefined;
    const initial = last?.limit ?? (published?.mode === 'auto' ? published.limit : undefined);
    const capacity =
      last?.capacity ?? (published?.mode === 'auto' ? published.capacity : undefined);
    return new DispatchLimit({
      mode: combined.auto
        ? {
            kind: 'auto',
            controller: new LimitController({
              clock: this.#clock,
              min: combined.min,
              max: combined.max,
              // A queue's cold start begins where the queue began, at the least: the decider
              // hears of refusals a round late (its round, the replay), and from 10 against a
              // capacity of 100 the doubling to 160 doubled the refusals (1.4% to 2.1–3.1%).
              initial: initial === undefined ? combined.min : Math.min(combined.max, initial),
              initialCapacity: capacity,
            }),
          }
        : { kind: 'fixed', concurrency: combined.max },
      clock: this.#clock,
      deadline:
        combined.deadlineAt === undefined
          ? undefined
          : { at: combined.deadlineAt, wallClock: this.#clock.now },
      maxConcurrency: combined.max,
      minConcurrency: combined.min,
      rate: this.#rate,
      assumedLatencyMs: combined.assumedLatencyMs,
    });
  }
}
