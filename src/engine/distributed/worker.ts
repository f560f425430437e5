import { hostname } from 'node:os';
import { DelayedError, type Job, Queue, RateLimitError, UnrecoverableError, Worker } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Random } from '../../control/backoff.js';
import {
  BREAKER_DEFAULTS,
  type BreakerTicket,
  breakerOutcome,
  resolveBreakerPolicy,
} from '../../control/circuit-breaker.js';
import { limitOutcome } from '../../control/dispatch-limit.js';
import { MisconfigurationWatch } from '../../control/misconfiguration-watch.js';
import { decideRetry, gateAttempt, type RetryPolicy } from '../../control/retry-policy.js';
import { ThrottleGovernor } from '../../control/throttle.js';
import { systemClock } from '../../domain/clock.js';
import { formatDuration } from '../../domain/duration.js';
import { BulkbillError } from '../../domain/errors.js';
import { idempotencyKey } from '../../domain/idempotency-key.js';
import type { AttemptResult, TerminalChargeState } from '../../domain/outcome.js';
import type { RunSample } from '../../domain/samples.js';
import { type AttemptNote, attemptOutcome, type ChargeOutcome } from '../../ledger/ledger.js';
import { RedisLedger } from '../../ledger/redis-ledger.js';
import type { AttemptEvent } from '../../observe/attempts.js';
import { RunSamplers } from '../../observe/sampler.js';
import { LatencyLog } from '../latency-log.js';
import { bindCredentials } from '../local-engine.js';
import { endpointMismatch } from '../run-choice.js';
import type { ChargeSender } from '../scheduler.js';
import { closeRedis } from './connection.js';
import {
  type ChargeJobData,
  DEFAULT_PREFIX,
  DEFAULT_QUEUE,
  ledgerPrefix,
  type QueuePlace,
} from './jobs.js';
import { PacingDecider } from './pacing-decider.js';
import { type BreakerVerdict, QueueBreaker, type QueueBreakerSnapshot } from './queue-breaker.js';
import { type PacingState, QueuePacing } from './queue-pacing.js';
import { QueuePause } from './queue-pause.js';
import { QueueRate } from './queue-settings.js';

/** Its `redis` connection should wait for Redis to come back: connectRedis(url, 'patient'). */
export interface BillingWorkerOptions extends QueuePlace {
  /** The endpoint as printed and bound to runs (printableEndpoint). */
  readonly endpoint: string;
  /** Sends attempts: a ProviderClient on the endpoint, with its headers and timeout. */
  readonly sender: ChargeSender;
  /**
   * The fingerprint of the sender's credentials with a run's salt (ProviderClient.credentials):
   * a run is bound to the first and refused by a worker with others. Default: not checked.
   */
  readonly credentials?: ((seen: string) => string) | undefined;
  readonly policy: RetryPolicy;
  /** Jobs this worker runs at once. */
  readonly concurrency: number;
  /**
   * Requests per second across every worker of the queue: a setting of the queue, kept in Redis,
   * that every worker obeys (one without a rate too); the stricter of two rates holds, and 0
   * clears it. Default: the queue's rate, if it has one.
   */
  readonly rate?: number | undefined;
  /** Jobs in flight across every worker of the queue; set on the queue and kept there (0 removes it). */
  readonly globalConcurrency?: number | undefined;
  /**
   * How long a job's lock lasts without renewal: a worker that dies (kill -9) has its jobs taken
   * over by another worker between one and two of these later. Default 30 s (BullMQ's).
   */
  readonly lockDurationMs?: number | undefined;
  /**
   * How long the queue's circuit breaker (shared by every worker of the queue) waits for a
   * provider that is down before this worker stops, its charges left pending; 0: no breaker.
   * Default 30 min.
   */
  readonly outageWaitMs?: number | undefined;
  /** The sender's request timeout: a probe holds its place this long and 5 s. Default 30 s. */
  readonly requestTimeoutMs?: number | undefined;
  /** Ends the worker once the queue holds no job (waiting, delayed or active). Default false. */
  readonly exitWhenIdle?: boolean | undefined;
  /** Keep every attempt's latency for latencies() (a run's summary); a long-lived worker does not. */
  readonly keepLatencies?: boolean | undefined;
  /** Names the worker in `status` (default host:pid). */
  readonly name?: string | undefined;
  /**
   * How long close() waits, with no job in flight, for BullMQ's blocking connection to end
   * before dropping it (one a Redis fault parked in "reconnecting" never ends). Default 5 s.
   */
  readonly closeStuckMs?: number | undefined;
  readonly random?: Random | undefined;
  /** Told of what a person running the worker wants to know. */
  readonly onLog?: ((level: 'info' | 'warn' | 'error', message: string) => void) | undefined;
  /** Told of every attempt once its charge's next step is recorded (metrics, the log). */
  readonly onAttempt?: ((runId: string, event: AttemptEvent) => void) | undefined;
  /** Keep one sample a second per run in the ledger, for the dashboard's charts. Default true. */
  readonly samples?: boolean | undefined;
}

/** How a worker ended. */
export interface WorkerEnd {
  /** `closed`: close() was called; `idle`: exitWhenIdle and nothing left; `stopped`: a run was refused. */
  readonly reason: 'closed' | 'idle' | 'stopped';
  /** Why, for `stopped`. */
  readonly stoppedBecause: string | undefined;
}

/** Live figures of one worker. */
export interface WorkerSnapshot {
  readonly inFlight: number;
  readonly attempts: number;
  /** Charges this worker ended, by state. */
  readonly ended: Readonly<Record<Exclude<TerminalChargeState, 'invalid'>, number>>;
  /** Jobs waiting for a retry this worker scheduled, in delayed. */
  readonly retries: number;
  /** Most of this worker's attempts in flight at once. */
  readonly maxInFlight: number;
  /** This worker's attempts throttled (429, or 503 with Retry-After). */
  readonly throttled: number;
  /** This worker's attempts the queue's breaker excused (the provider was down). */
  readonly excused: number;
}

// How soon a worker follows a rate another worker made stricter.
const RATE_REFRESH_MS = 2_000;
// A decline held back while the watch decides. A crashed worker's held jobs come back after this.
const HOLD_MS = 60_000;
// While another worker's probe is out, how often the others look whether it answered.
const PROBE_POLL_MS = 250;
// How often a worker looks whether its queue is paced, and the decider's round.
const PACED_READ_MS = 1_000;
const PACE_TICK_MS = 200;
// A job whose worker died this many times (a charge that crashes workers) ends `unknown` rather
// than being retried again. BullMQ's own limit is set far above, so it never drops a job unrecorded.
const MAX_STALLS = 10;

/**
 * A BullMQ worker that bills the charges of any run on its queue: the same idempotency key on
 * every attempt, every retry and after every stall; retries through BullMQ attempts with the
 * retry policy's full-jitter backoff; a provider's Retry-After pauses the whole queue without
 * using up attempts; outcomes are written to the Redis ledger before a job completes, and
 * finished jobs are removed so Redis holds one compact record per user.
 */
export class BillingWorker {
  readonly #options: BillingWorkerOptions;
  readonly #ledger: RedisLedger;
  readonly #ledgerRedis: Redis;
  readonly #queue: Queue<ChargeJobData>;
  readonly #worker: Worker<ChargeJobData>;
  readonly #rate: QueueRate;
  #rateTimer: NodeJS.Timeout | undefined;
  /** This worker's pause and learned rate; the queue's pause is shared through #pause. */
  readonly #governor: ThrottleGovernor;
  readonly #pause: QueuePause;
  /** The queue's circuit breaker, shared in Redis; undefined: none (outageWaitMs 0). */
  readonly #breaker: QueueBreaker | undefined;
  readonly #random: Random;
  /** The queue's pacing (`--concurrency auto`, deadlines), and its decider when this worker leads. */
  readonly #pacing: QueuePacing;
  readonly #decider: PacingDecider;
  #paced = false;
  /** Jobs this worker holds (taken from the queue, not yet given back or finished). */
  #holding = 0;
  readonly #name: string;
  /** The queue's pacing as its decider last said (read with #paced). */
  #pacingState: PacingState | undefined;
  /** The samplers of the runs this worker bills (one per run), and their timer. */
  #samplers: RunSamplers | undefined;
  /** Samples on their way to Redis: close() waits for them before the connection goes. */
  readonly #sampleWrites = new Set<Promise<void>>();
  #sampleTimer: NodeJS.Timeout | undefined;
  /** The queue's breaker as last read, for the samples. */
  #breakerState: 'closed' | 'open' | 'half-open' | undefined;
  #pacedReadAt = Number.NEGATIVE_INFINITY;
  #pacingTimer: NodeJS.Timeout | undefined;
  #pacingBusy = false;
  /** Runs whose endpoint was checked: run id → refusal, or undefined when it bills ours. */
  readonly #runs = new Map<string, Promise<string | undefined>>();
  readonly #touched = new Set<string>();
  #inFlight = 0;
  #maxInFlight = 0;
  #attempts = 0;
  #retries = 0;
  #throttled = 0;
  #excused = 0;
  readonly #ended = { charged: 0, declined: 0, failed: 0, unknown: 0 };
  readonly #latencies: LatencyLog;
  #stoppedBecause: string | undefined;
  #closing: Promise<void> | undefined;
  #end: WorkerEnd | undefined;
  readonly #done: Promise<WorkerEnd>;
  #resolveDone!: (end: WorkerEnd) => void;
  #idleTimer: NodeJS.Timeout | undefined;
  #quietCheck = false;
  #lastError: string | undefined;
  #lastErrorAt = 0;
  // The misconfiguration watch, over this worker's answers, and the declines it holds back.
  readonly #watch = new MisconfigurationWatch();
  #held: Array<{ job: Job<ChargeJobData>; outcome: ChargeOutcome }> = [];
  /** The credentials fingerprint this worker bills each run with (checked at every start). */
  readonly #fingerprints = new Map<string, string>();

  private constructor(options: BillingWorkerOptions) {
    this.#options = options;
    this.#random = options.random ?? Math.random;
    this.#latencies = new LatencyLog({ keep: options.keepLatencies === true });
    const prefix = options.prefix ?? DEFAULT_PREFIX;
    const queueName = options.queue ?? DEFAULT_QUEUE;
    // The ledger's own connection pipelines what concurrent jobs ask in one event-loop turn
    // (ioredis auto-pipelining); BullMQ's connections do not, which BullMQ does not support.
    this.#ledgerRedis = options.redis.duplicate({ enableAutoPipelining: true });
    this.#ledgerRedis.on('error', () => {});
    this.#ledger = new RedisLedger({
      redis: this.#ledgerRedis,
      prefix: ledgerPrefix(prefix),
      // Every outcome is flushed before its job completes; the batch gathers concurrent ones.
      flushIntervalMs: 5,
    });
    this.#queue = new Queue<ChargeJobData>(queueName, { connection: options.redis, prefix });
    this.#queue.on('error', () => {});
    this.#rate = new QueueRate(options.redis, prefix, queueName);
    this.#governor = new ThrottleGovernor({ clock: systemClock, random: this.#random });
    this.#pause = new QueuePause({
      redis: options.redis,
      prefix,
      queue: queueName,
      random: this.#random,
      clock: systemClock,
    });
    const outageWaitMs = options.outageWaitMs ?? BREAKER_DEFAULTS.giveUpMs;
    this.#breaker =
      outageWaitMs === 0
        ? undefined
        : new QueueBreaker({
            // Its own calls ride the ledger's pipelined connection: one more round trip per attempt.
            redis: this.#ledgerRedis,
            prefix,
            queue: queueName,
            policy: resolveBreakerPolicy({ giveUpMs: outageWaitMs }),
            probeLeaseMs: (options.requestTimeoutMs ?? 30_000) + 5_000,
            random: this.#random,
          });
    this.#pacing = new QueuePacing({ redis: this.#ledgerRedis, prefix, queue: queueName });
    this.#name = options.name ?? `${hostname()}:${process.pid}`;
    this.#decider = new PacingDecider({
      pacing: this.#pacing,
      ledger: this.#ledger,
      rate: () => this.#rate.rate,
      queued: () => this.#pacing.queuedJobs(),
      name: this.#name,
      onLog: (level, message) => this.#log(level, message),
    });
    const lockDuration = options.lockDurationMs ?? 30_000;
    this.#worker = new Worker<ChargeJobData>(queueName, (job, token) => this.#process(job, token), {
      connection: options.redis,
      prefix,
      autorun: false,
      concurrency: options.concurrency,
      // The queue's rate, changed in place as the queue's setting changes (BullMQ reads it per job).
      limiter: this.#rate.limiter,
      lockDuration,
      stalledInterval: lockDuration,
      maxStalledCount: 1_000_000,
      name: options.name ?? `${hostname()}:${process.pid}`,
      // Retries go back to delayed through #giveBack; this only paces an unexpected error's.
      settings: { backoffStrategy: () => 1_000 },
    });
    this.#worker.on('error', (error) => this.#logConnectionError(error));
    this.#done = new Promise((resolve) => {
      this.#resolveDone = resolve;
    });
  }

  /** The queue's rate this worker keeps, per second (undefined: none). */
  get rate(): number | undefined {
    return this.#rate.rate;
  }

  /** Starts a worker: joins the queue's rate, sets its global concurrency when asked, then takes jobs. */
  static async start(options: BillingWorkerOptions): Promise<BillingWorker> {
    const worker = new BillingWorker(options);
    await worker.#begin();
    return worker;
  }

  async #begin(): Promise<void> {
    const { globalConcurrency, exitWhenIdle } = this.#options;
    const agreement = await this.#rate.join(this.#options.rate);
    if (agreement.warning) this.#log('warn', agreement.warning);
    this.#rateTimer = setInterval(() => {
      this.#rate.refresh().then(
        (changed) => {
          if (changed) {
            const rate = this.#rate.rate;
            this.#log(
              'warn',
              rate === undefined
                ? "the queue's rate was cleared: no rate limit"
                : `the queue's rate is now ${rate}/s (set by another worker): this worker keeps it`,
            );
          }
        },
        () => {},
      );
    }, RATE_REFRESH_MS);
    this.#rateTimer.unref();
    if (globalConcurrency === 0) await this.#queue.removeGlobalConcurrency();
    else if (globalConcurrency !== undefined) {
      await this.#queue.setGlobalConcurrency(globalConcurrency);
    }
    // Paced or not, known before the first job: its attempt is told to the decider.
    await this.#paceTick();
    this.#pacingTimer = setInterval(() => void this.#paceTick(), PACE_TICK_MS);
    this.#pacingTimer.unref();
    void this.#worker.run().catch((error: unknown) => {
      this.#log('error', `worker: ${(error as Error).message}`);
    });
    this.#idleTimer = setInterval(() => void this.#whenQuiet(), 500);
    if (exitWhenIdle) this.#worker.on('drained', () => void this.#whenQuiet());
  }

  /** Resolves when the worker has ended and every job it ran is settled. */
  get done(): Promise<WorkerEnd> {
    return this.#done;
  }

  snapshot(): WorkerSnapshot {
    return {
      inFlight: this.#inFlight,
      attempts: this.#attempts,
      ended: { ...this.#ended },
      retries: this.#retries,
      maxInFlight: this.#maxInFlight,
      throttled: this.#throttled,
      excused: this.#excused,
    };
  }

  /** The queue's breaker as Redis holds it now; undefined without one (or Redis away). */
  async breakerSnapshot(): Promise<QueueBreakerSnapshot | undefined> {
    return this.#breaker?.snapshot().catch(() => undefined);
  }

  /** Latency of every attempt this worker sent, in ms, and their sum. */
  latencies(): { latencies: Float64Array; serialMs: number } {
    return { latencies: this.#latencies.latencies.slice(), serialMs: this.#latencies.serialMs };
  }

  /** Takes no more jobs, finishes those in flight, gives back held ones; resolves when done. */
  close(): Promise<WorkerEnd> {
    this.#beginClose('closed');
    return this.#done;
  }

  #beginClose(reason: WorkerEnd['reason']): void {
    if (this.#closing) return;
    this.#end = { reason, stoppedBecause: this.#stoppedBecause };
    if (this.#idleTimer) clearInterval(this.#idleTimer);
    if (this.#rateTimer) clearInterval(this.#rateTimer);
    if (this.#pacingTimer) clearInterval(this.#pacingTimer);
    this.#closing = (async () => {
      try {
        // Another worker takes the decision over at its next round, not once the lease expires.
        await this.#decider.close();
        await this.#closeQueueWorker();
        await this.#giveBackHeld();
        for (const runId of this.#touched) await this.#ledger.finishIfComplete(runId);
        await this.#decider.endFinished();
        // The last second's samples, written before the ledger's connection goes.
        if (this.#sampleTimer) clearInterval(this.#sampleTimer);
        this.#samplers?.stop();
        await Promise.all(this.#sampleWrites);
      } catch (error) {
        this.#log('error', `closing: ${(error as Error).message}`);
      } finally {
        await this.#ledger.close().catch(() => {});
        await closeRedis(this.#ledgerRedis);
        await this.#queue.close().catch(() => {});
        this.#resolveDone(this.#end as WorkerEnd);
      }
    })();
  }

  /**
   * BullMQ's Worker.close(), bounded: it waits for the blocking connection to end, and one that
   * a Redis restart or a partition left parked in "reconnecting" never does (bullmq#4656,
   * #4585), so a worker would never exit. Once none of this worker's jobs is in flight and the
   * close has waited `closeStuckMs`, the blocking connection is dropped at once; the jobs are
   * in the ledger, and any lock left expires as a dead worker's would.
   */
  async #closeQueueWorker(): Promise<void> {
    const closed = this.#worker.close().then(
      () => true,
      () => true,
    );
    const stuckMs = this.#options.closeStuckMs ?? CLOSE_STUCK_MS;
    const started = performance.now();
    for (;;) {
      const poll = Math.min(CLOSE_POLL_MS, stuckMs);
      const done = await Promise.race([closed, sleepUnref(poll).then(() => false)]);
      if (done) return;
      if (this.#inFlight === 0 && performance.now() - started >= stuckMs) break;
    }
    this.#log(
      'warn',
      `closing: the queue's blocking Redis connection did not end within ${stuckMs / 1_000} s with no job in flight; dropping it`,
    );
    forceCloseBlocking(this.#worker);
    await Promise.race([closed, sleepUnref(stuckMs)]);
  }

  /**
   * When the queue has nothing for this worker to do: declines held by the watch are recorded
   * (fewer than 20 answers came, all alike: they are declines, as the local engine rules at the
   * end of a run); and with exitWhenIdle, once nothing at all is left, the worker ends.
   */
  async #whenQuiet(): Promise<void> {
    if (this.#closing || this.#quietCheck || this.#inFlight > 0) return;
    this.#quietCheck = true;
    try {
      const counts = await this.#queue.getJobCounts(
        'active',
        'waiting',
        'delayed',
        'prioritized',
        'waiting-children',
      );
      const busy = (counts.active ?? 0) + (counts.waiting ?? 0) + (counts.prioritized ?? 0);
      if (this.#inFlight > 0 || busy > 0) return;
      if (this.#held.length > 0 && this.#watch.end()) {
        await this.#release();
        return;
      }
      const left = Object.values(counts).reduce((sum, count) => sum + count, 0);
      if (this.#options.exitWhenIdle && left === 0 && this.#held.length === 0) {
        this.#beginClose('idle');
      }
    } catch {
      // Redis is away: try again at the next tick.
    } finally {
      this.#quietCheck = false;
    }
  }

  #log(level: 'info' | 'warn' | 'error', message: string): void {
    this.#options.onLog?.(level, message);
  }

  /** While Redis is away every reconnection fails alike: say so once every 10 s, not 10 times a second. */
  #logConnectionError(error: Error): void {
    const now = performance.now();
    if (error.message === this.#lastError && now - this.#lastErrorAt < 10_000) return;
    this.#lastError = error.message;
    this.#lastErrorAt = now;
    this.#log('error', `worker: ${error.message} (the worker carries on once Redis answers)`);
  }

  /** The refusal of a run this worker must not bill, or undefined when it may. */
  #refusal(runId: string): Promise<string | undefined> {
    let checked = this.#runs.get(runId);
    if (checked === undefined) {
      checked = (async () => {
        const run = await this.#ledger.findRun(runId);
        if (run === undefined) return undefined;
        const bound = await this.#ledger.bindEndpoint(runId, this.#options.endpoint);
        if (bound !== this.#options.endpoint) {
          return endpointMismatch({ ...run, endpoint: bound }, this.#options.endpoint).message;
        }
        const fingerprintOf = this.#options.credentials;
        if (fingerprintOf === undefined) return undefined;
        try {
          this.#fingerprints.set(runId, await bindCredentials(this.#ledger, runId, fingerprintOf));
        } catch (error) {
          if (error instanceof BulkbillError && error.code === 'BULKBILL_USAGE')
            return error.message;
          throw error;
        }
        return undefined;
      })();
      this.#runs.set(runId, checked);
      checked.catch(() => this.#runs.delete(runId));
    }
    return checked;
  }

  /** Whether the queue is paced (read every second), and the decider's round while it is. */
  async #paceTick(): Promise<void> {
    if (this.#pacingBusy || this.#closing) return;
    this.#pacingBusy = true;
    try {
      const now = Date.now();
      if (now - this.#pacedReadAt >= PACED_READ_MS) {
        this.#paced = await this.#pacing.paced();
        this.#pacingState = this.#paced ? await this.#pacing.state() : undefined;
        this.#pacedReadAt = now;
      }
      if (this.#paced) await this.#pacing.heartbeat(this.#name, this.#holding);
      if (this.#paced || this.#decider.leading) await this.#decider.tick();
    } catch {
      // Redis is away: the next round tries again; the queue keeps the limit last set.
    } finally {
      this.#pacingBusy = false;
    }
  }

  async #process(job: Job<ChargeJobData>, token: string | undefined): Promise<string> {
    this.#holding++;
    try {
      return await this.#bill(job, token);
    } catch (error) {
      // Redis (the ledger) failed, not the provider: the job waits and comes back, using up no
      // attempt of BullMQ's (which would remove it once they ran out, leaving the charge pending).
      if (error instanceof BulkbillError && error.code === 'BULKBILL_IO') {
        this.#log('warn', `job ${job.id}: ${error.message}; tried again in 1 s`);
        return this.#giveBack(job, token, 1_000);
      }
      throw error;
    } finally {
      this.#holding--;
    }
  }

  async #bill(job: Job<ChargeJobData>, token: string | undefined): Promise<string> {
    const data = job.data;
    const refusal = await this.#refusal(data.r);
    if (refusal !== undefined) {
      // This worker is misconfigured, not the run: it stops, the run waits for the right workers.
      await this.#stop(data.r, refusal, { noteOnRun: false });
      return this.#giveBack(job, token);
    }
    if (this.#stoppedBecause !== undefined) return this.#giveBack(job, token);
    const current = await this.#ledger.chargeState(data.r, data.u);
    if (current === undefined) {
      throw new UnrecoverableError(`run ${data.r} has no user ${data.u} in the ledger`);
    }
    // Only a pending charge is attempted: failed and unknown ones wait for --retry-failed.
    if (current.state !== 'pending') return `already ${current.state}`;
    this.#touched.add(data.r);
    // What the ledger holds governs, whichever worker wrote it: an attempt left open by a worker
    // that died (or stalled) may have reached the provider.
    const before = {
      attempts: current.attempts - current.budgetFrom,
      ambiguous: current.ambiguous || data.x,
    };
    const blank = {
      userId: data.u,
      httpStatus: undefined,
      latencyMs: undefined,
      chargeId: undefined,
    } as const;
    if (job.stalledCounter >= MAX_STALLS) {
      await this.#settle(data.r, {
        ...blank,
        state: 'unknown',
        attempts: current.attempts,
        ambiguous: true,
        error: `its worker died ${job.stalledCounter} times while billing it`,
      });
      throw new UnrecoverableError('unknown: stalled too often');
    }
    // The queue's pause and this worker's learned rate, before anything is recorded or sent.
    for (;;) {
      const now = systemClock.now();
      const held = this.#governor.pausedUntil() - now;
      if (held > 0) {
        // Waited out in Redis with the other workers (the job back to waiting), not in a slot.
        await this.#pause.extend(held);
        throw new RateLimitError();
      }
      if (this.#governor.tryDispatch()) break;
      await new Promise((resolve) => setTimeout(resolve, this.#governor.readyAt() - now));
    }
    // The queue's breaker: while the provider is down, every worker holds its jobs back (the
    // queue's pause) and only one probe goes.
    let ticket: BreakerTicket | undefined;
    if (this.#breaker !== undefined) {
      const said = await this.#breaker.dispatch();
      if (!said.go) {
        // A probe out may answer any moment: look again soon rather than for its whole lease.
        await this.#pause.extend(
          said.probeOut ? Math.min(said.waitMs, PROBE_POLL_MS) : said.waitMs,
        );
        throw new RateLimitError();
      }
      ticket = said.ticket;
    }
    // A probe taken and then not sent goes back, so another worker may probe at once.
    const unsent = async () => {
      if (ticket !== undefined) await this.#breaker?.release(ticket).catch(() => {});
    };
    const refused = gateAttempt(
      this.#options.policy,
      { ...before, firstAttemptAt: current.firstAttemptAt },
      Date.now(),
    );
    if (refused) {
      await unsent();
      await this.#settle(data.r, {
        ...blank,
        state: refused.state,
        attempts: current.attempts,
        ambiguous: before.ambiguous,
        error: refused.reason,
      });
      throw new UnrecoverableError(`${refused.state}: ${refused.reason}`);
    }
    const attempt = current.budgetFrom + before.attempts + 1;
    let recorded: boolean | undefined;
    const paced = this.#paced;
    try {
      [recorded] = await this.#ledger.startAttempts(
        data.r,
        [
          {
            userId: data.u,
            attempts: attempt,
            ambiguous: before.ambiguous,
            at: Date.now(),
          },
        ],
        { credentials: this.#fingerprints.get(data.r) ?? '' },
      );
    } catch (error) {
      await unsent();
      if (!(error instanceof BulkbillError) || error.code !== 'BULKBILL_USAGE') throw error;
      // Another worker bound the run to its credentials first: this one must not bill it.
      await this.#stop(data.r, error.message, { noteOnRun: false });
      return this.#giveBack(job, token);
    }
    if (!recorded) {
      await unsent();
      return 'settled by another worker';
    }
    // On a paced queue, the requests in flight across the queue as this one goes: the load the
    // decider reads it was sent at.
    const levelAtSend = paced
      ? await this.#pacing.sent(this.#name).catch(() => undefined)
      : undefined;
    const sentAt = Date.now();
    this.#inFlight++;
    this.#maxInFlight = Math.max(this.#maxInFlight, this.#inFlight);
    this.#attempts++;
    const started = systemClock.now();
    let result: AttemptResult;
    try {
      result = await this.#options.sender.attempt({
        userId: data.u,
        amount: data.a,
        currency: data.c,
        idempotencyKey: idempotencyKey(data.r, data.u),
        metadata: data.m,
        attempt,
      });
    } finally {
      this.#inFlight--;
    }
    const latencyMs = systemClock.now() - started;
    this.#latencies.add(latencyMs);
    const throttled = result.kind === 'retry' && result.throttled;
    const note: AttemptNote = { n: attempt, at: sentAt, throttled };
    // With `auto`, a refusal is the queue's limit controller's to answer (it cuts the queue's
    // limit; the charge waits out its Retry-After), as on the local engine: the queue's pause and
    // the learned rate are for refusals that go on at the lowest limit.
    const pacedAuto = this.#pacingState;
    const controlled =
      throttled && paced && pacedAuto?.mode === 'auto' && pacedAuto.limit > pacedAuto.min;
    if (!controlled) this.#governor.observe(result, started);
    if (throttled) this.#throttled++;
    if (!throttled && result.status !== undefined) void this.#pause.answered(started);
    const breaker = await this.#breakerSays(ticket, result);
    if (paced && levelAtSend !== undefined) {
      void this.#pacing
        .record(
          this.#name,
          {
            sentAt,
            latencyMs,
            inFlight: levelAtSend,
            outcome: limitOutcome(result, breaker.excused, before.ambiguous),
          },
          pacedAuto?.mode === 'auto' ? pacedAuto.min : undefined,
        )
        .catch(() => {});
    }
    const stop = throttled ? this.#governor.stopReason() : undefined;
    const putBack = async (
      attempts: number,
      ambiguous: boolean,
      noted: 'noted' | 'stopped' | 'unnoted' = 'noted',
    ) => {
      // The attempt is over and the charge stays pending: the ledger says whether it counted.
      await this.#settle(data.r, {
        userId: data.u,
        state: 'pending',
        attempts: current.budgetFrom + attempts,
        ambiguous,
        httpStatus: result.status,
        latencyMs,
        chargeId: undefined,
        error: result.kind === 'charged' ? undefined : result.reason,
        ...(noted === 'unnoted'
          ? {}
          : { attempt: noted === 'stopped' ? { ...note, stopped: true as const } : note }),
      });
    };
    const verdict = this.#watch.observe(result);
    if (verdict.action === 'pend') {
      await putBack(before.attempts, before.ambiguous);
      return this.#giveBack(job, token);
    }
    if (verdict.action === 'stop') {
      // This charge and the held ones stay pending: held jobs go back when the worker closes.
      await putBack(before.attempts, before.ambiguous, 'stopped');
      await this.#stop(data.r, verdict.reason);
      return this.#giveBack(job, token);
    }
    const decision = decideRetry(
      this.#options.policy,
      { ...before, waits: data.w ?? 0 },
      result,
      this.#random,
      breaker.excused,
    );
    if (breaker.stop !== undefined && decision.action === 'retry') {
      // Down for --outage-wait: this charge and the others stay pending for a later resume.
      await putBack(decision.attempts, decision.ambiguous, 'stopped');
      await this.#stop(data.r, breaker.stop);
      return this.#giveBack(job, token);
    }
    const outcome: ChargeOutcome = {
      userId: data.u,
      state: decision.action === 'finish' ? decision.state : 'pending',
      attempts: current.budgetFrom + decision.attempts,
      ambiguous: decision.ambiguous,
      httpStatus: result.status,
      latencyMs,
      chargeId: result.kind === 'charged' ? result.chargeId : undefined,
      error:
        decision.action === 'finish' && decision.reason !== undefined
          ? decision.reason
          : result.kind === 'charged'
            ? undefined
            : result.reason,
      attempt: note,
    };
    if (verdict.action === 'hold') {
      // The attempt goes into the history with the decline, once the watch lets it be recorded.
      await putBack(before.attempts, before.ambiguous, 'unnoted');
      return this.#hold(job, token, outcome);
    }
    if (verdict.action === 'release') await this.#release();
    switch (decision.action) {
      case 'stop':
        await putBack(before.attempts, before.ambiguous, 'stopped');
        await this.#stop(data.r, decision.reason);
        return this.#giveBack(job, token);
      case 'retry': {
        await putBack(decision.attempts, decision.ambiguous);
        const waits = decision.waits ?? 0;
        if (decision.ambiguous !== data.x || waits !== (data.w ?? 0)) {
          await job.updateData({ ...data, x: decision.ambiguous, w: waits });
        }
        if (stop !== undefined) {
          await this.#stop(data.r, stop, { noteOnRun: false });
          return this.#giveBack(job, token);
        }
        if (decision.throttled && !controlled) {
          // The provider asked everyone to slow down: the whole queue waits (a shorter pause
          // never cuts a longer one), no attempt is used.
          const { pauseMs } = await this.#pause.throttled({
            retryAfterMs: result.kind === 'retry' ? result.retryAfterMs : undefined,
            sentAt: started,
          });
          if (pauseMs > 0) {
            this.#governor.pauseUntil(systemClock.now() + pauseMs);
            // Back to waiting; BullMQ holds this worker for the limiter key's PTTL: the pause.
            throw new RateLimitError();
          }
          // A lone episode pauses nobody (the learned rate slows dispatch): retry after the backoff.
        }
        this.#retries++;
        return this.#giveBack(job, token, decision.delayMs);
      }
      case 'finish':
        await this.#settle(data.r, outcome);
        if (decision.state === 'charged') return 'charged';
        // Declined, failed and unknown end the job at once: BullMQ must not retry them.
        throw new UnrecoverableError(`${decision.state}: ${outcome.error ?? ''}`);
    }
  }

  /** Tells the queue's breaker how an attempt ended: whether it excused it, and why to stop. */
  async #breakerSays(
    ticket: BreakerTicket | undefined,
    result: AttemptResult,
  ): Promise<Pick<BreakerVerdict, 'excused' | 'stop'>> {
    if (ticket === undefined || this.#breaker === undefined) {
      return { excused: false, stop: undefined };
    }
    try {
      const said = await this.#breaker.record(
        ticket,
        breakerOutcome(result),
        result.kind === 'retry' ? result.retryAfterMs : undefined,
      );
      if (said.excused) this.#excused++;
      // Said by the worker whose answer moved it: once per opening, in that worker's log.
      if (said.change?.to === 'open') {
        this.#log(
          'warn',
          `the provider is failing (${result.kind === 'retry' ? result.reason : 'an answer'}): the queue's circuit breaker opened; every worker holds its jobs for ${formatDuration(said.change.openMs)}, then one probe`,
        );
      } else if (said.change?.to === 'closed') {
        this.#log('info', "the provider answers again: the queue's circuit breaker closed");
      }
      return said;
    } catch {
      // Redis is away: the attempt counts as any other would (the ledger's calls say the rest).
      return { excused: false, stop: undefined };
    }
  }

  /** Writes a terminal outcome to the ledger, durably, before its job is let go. */
  async #settle(runId: string, outcome: ChargeOutcome): Promise<void> {
    this.#ledger.record(runId, outcome);
    await this.#ledger.flush();
    if (outcome.state !== 'pending' && outcome.state !== 'invalid') this.#ended[outcome.state]++;
    if (outcome.attempt !== undefined) this.#tell(runId, outcome);
    // Ended without a request (an expired key, a job that stalled too often): a charge ended.
    else if (outcome.state !== 'pending') this.#tell(runId, outcome, true);
  }

  /** Tells the run's sampler and the worker's watchers of an attempt just recorded. */
  #tell(runId: string, outcome: ChargeOutcome, unsent = false): void {
    const event: AttemptEvent = {
      userId: outcome.userId,
      attempt: outcome.attempt?.n ?? outcome.attempts,
      latencyMs: outcome.latencyMs ?? 0,
      status: outcome.httpStatus,
      outcome: attemptOutcome(outcome),
      reason: outcome.error,
      ...(unsent ? { unsent: true as const } : {}),
    };
    this.#sample(runId, event);
    this.#options.onAttempt?.(runId, event);
  }

  /** Writes a sample, kept in #sampleWrites until Redis has it (a lost one is only a chart's gap). */
  #keepSample(runId: string, sample: RunSample): void {
    const write = this.#ledger.noteSample(runId, sample).catch(() => {});
    this.#sampleWrites.add(write);
    void write.finally(() => this.#sampleWrites.delete(write));
  }

  /** Samples the run's attempt: the samplers and their timer start with the first one. */
  #sample(runId: string, event: AttemptEvent): void {
    if (this.#options.samples === false) return;
    if (this.#samplers === undefined) {
      const samplers = new RunSamplers({
        source: this.#name,
        now: Date.now,
        gauges: () => ({
          inFlight: this.#inFlight,
          limit: (this.#paced ? this.#pacingState?.limit : undefined) ?? this.#options.concurrency,
          breaker: this.#breakerState,
        }),
        sink: (id, sample) => this.#keepSample(id, sample),
      });
      this.#samplers = samplers;
      let ticks = 0;
      this.#sampleTimer = setInterval(() => {
        samplers.tick();
        // The queue's breaker as every worker moves it, read once a second.
        if (ticks++ % 4 === 0 && this.#breaker !== undefined) {
          this.#breaker
            .snapshot()
            .then((snapshot) => {
              this.#breakerState = snapshot.state;
            })
            .catch(() => {});
        }
      }, 250);
      this.#sampleTimer.unref();
    }
    this.#samplers.attempt(runId, event);
  }

  /**
   * Puts a job back in delayed for `delayMs` (none: at once), for this or another worker: BullMQ
   * counts no attempt of it, the ledger holds the charge's.
   */
  async #giveBack(job: Job<ChargeJobData>, token: string | undefined, delayMs = 0): Promise<never> {
    await job.moveToDelayed(Date.now() + Math.max(0, Math.round(delayMs)), token);
    throw new DelayedError();
  }

  async #stop(runId: string, reason: string, options = { noteOnRun: true }): Promise<void> {
    if (this.#stoppedBecause === undefined) {
      this.#stoppedBecause = reason;
      this.#log('error', `run ${runId}: stopping: ${reason}`);
      if (options.noteOnRun) await this.#ledger.noteStop(runId, reason).catch(() => {});
      this.#beginClose('stopped');
    }
  }

  /** Holds a decline back (in delayed, no slot kept) while the first answers might all be alike. */
  async #hold(
    job: Job<ChargeJobData>,
    token: string | undefined,
    outcome: ChargeOutcome,
  ): Promise<never> {
    this.#held.push({ job, outcome });
    await job.moveToDelayed(Date.now() + HOLD_MS, token);
    throw new DelayedError();
  }

  /** The watch is over, the run is sound: held declines are recorded and their jobs removed. */
  async #release(): Promise<void> {
    const held = this.#held;
    this.#held = [];
    for (const { job, outcome } of held) {
      await this.#settle(job.data.r, outcome);
      await job.remove().catch(() => {});
    }
  }

  /** Held declines go back to waiting: the run stopped or this worker closes. */
  async #giveBackHeld(): Promise<void> {
    const held = this.#held;
    this.#held = [];
    for (const { job } of held) await job.promote().catch(() => {});
  }
}

/** How long a close may wait with no job in flight before its blocking connection is dropped. */
const CLOSE_STUCK_MS = 5_000;
const CLOSE_POLL_MS = 250;

function sleepUnref(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/**
 * Drops a BullMQ worker's blocking connection at once (RedisConnection.close(true) disconnects
 * its ioredis client, clearing any reconnection). BullMQ has no public call for it: reached
 * through its backend, and a no-op if a later BullMQ names these otherwise.
 */
function forceCloseBlocking(worker: Worker<ChargeJobData>): void {
  const backend = (worker as unknown as { backend?: unknown }).backend as
    | { blockingConnection?: { close?: (force: boolean) => Promise<void> } }
    | undefined;
  const close = backend?.blockingConnection?.close;
  if (typeof close !== 'function') return;
  void close.call(backend?.blockingConnection, true).catch(() => {});
}
