import type { Random } from '../control/backoff.js';
import {
  type BreakerSnapshot,
  type BreakerTicket,
  breakerOutcome,
  type CircuitBreaker,
} from '../control/circuit-breaker.js';
import {
  type DeadlineStatus,
  type DispatchLimit,
  type LimitSnapshot,
  limitOutcome,
} from '../control/dispatch-limit.js';
import { MisconfigurationWatch } from '../control/misconfiguration-watch.js';
import { decideRetry, gateAttempt, type RetryPolicy } from '../control/retry-policy.js';
import { ThrottleGovernor } from '../control/throttle.js';
import { TokenBucket } from '../control/token-bucket.js';
import type { Clock } from '../domain/clock.js';
import { breakerReport, type DispatchReport, deadlineReport } from '../domain/dispatch.js';
import { idempotencyKey } from '../domain/idempotency-key.js';
import type { AttemptResult, TerminalChargeState } from '../domain/outcome.js';
import {
  type AttemptNote,
  type AttemptStart,
  attemptOutcome,
  type ChargeOutcome,
  type Ledger,
  type PendingCharge,
} from '../ledger/ledger.js';
import type { AttemptEvent } from '../observe/attempts.js';
import type { ChargeRequest } from '../provider/index.js';
import { LatencyLog } from './latency-log.js';
import { RetryQueue } from './retry-queue.js';

/** What the scheduler needs from a provider client. */
export interface ChargeSender {
  attempt(charge: ChargeRequest): Promise<AttemptResult>;
  /** Whether attempts read a row's other columns; absent: they may. */
  readonly readsMetadata?: boolean;
}

/** Timers, injectable so tests drive the scheduler with a fake clock. */
export interface Timers {
  setTimeout(run: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  /** Runs `run` once the I/O callbacks of this event-loop turn are done (setImmediate). */
  defer(run: () => void): void;
}

export const systemTimers: Timers = {
  setTimeout: (run, ms) => setTimeout(run, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
  defer: (run) => setImmediate(run),
};

export interface SchedulerOptions {
  readonly runId: string;
  readonly ledger: Ledger;
  readonly sender: ChargeSender;
  readonly policy: RetryPolicy;
  /** Most attempts in flight at once, when no `limit` is given. */
  readonly concurrency: number;
  /** The requests in flight allowed now: `--concurrency auto` and `--deadline`. Default: `concurrency`. */
  readonly limit?: DispatchLimit | undefined;
  /** Holds dispatch while the provider is down. Default: none. */
  readonly breaker?: CircuitBreaker | undefined;
  /** Attempts per second at most (smooth token bucket); unlimited when absent. */
  readonly rate?: number | undefined;
  readonly clock: Clock;
  readonly timers: Timers;
  /** Calendar time (epoch ms), for attempt times kept in the ledger and the key retention. */
  readonly wallClock: () => number;
  readonly random: Random;
  /** Stops dispatching when aborted; attempts in flight still finish and are recorded. */
  readonly signal?: AbortSignal | undefined;
  /** Charges pending when it starts: what a deadline plans for. */
  readonly pendingAtStart?: number | undefined;
  /** Pending charges read from the ledger at a time. Default 2000. */
  readonly pageSize?: number;
  /** Told of every attempt once its charge's next step is decided (metrics, samples, the log). */
  readonly onAttempt?: ((event: AttemptEvent) => void) | undefined;
}

/** Live figures of a run in progress. */
export interface SchedulerSnapshot {
  /** Charges that reached a terminal state in this process, by state. */
  readonly ended: Readonly<Record<Exclude<TerminalChargeState, 'invalid'>, number>>;
  readonly inFlight: number;
  /** Charges waiting for a retry (they hold no concurrency slot). */
  readonly retrying: number;
  /** Attempts sent in this process. */
  readonly attempts: number;
  /** Milliseconds of dispatch pause left from a provider's Retry-After. */
  readonly pausedMs: number;
  /** Requests allowed in flight now. */
  readonly limit: number;
  /** Most requests in flight at once so far. */
  readonly maxInFlight: number;
  /** The limit controller's figures, with `--concurrency auto`. */
  readonly controller: LimitSnapshot | undefined;
  /** The deadline's standing, with `--deadline`. */
  readonly deadline: DeadlineStatus | undefined;
  /** The circuit breaker's state, when there is one. */
  readonly breaker: BreakerSnapshot | undefined;
  /** Attempts throttled (429, or 503 with Retry-After) in this process. */
  readonly throttled: number;
  /** Attempts the breaker excused (their failure came while the provider was down). */
  readonly excused: number;
}

/** How the scheduler finished. */
export interface SchedulerResult {
  /** Why the run stopped early: a misconfiguration the provider reported. */
  readonly fatal: string | undefined;
  /** The run was interrupted by the signal. */
  readonly interrupted: boolean;
  /** Latency of every attempt that got an answer or timed out, in ms. */
  readonly latencies: Float64Array;
  /** Sum of every attempt's latency: how long one-after-another calls would have taken. */
  readonly serialMs: number;
}

// The same request object on every attempt of a charge: only its attempt number changes.
interface AttemptRequest extends ChargeRequest {
  attempt: number;
}

interface Charge {
  readonly pending: PendingCharge;
  readonly request: AttemptRequest;
  /** Attempts counted in this round, in every process (the ledger's count less its budget start). */
  attempts: number;
  ambiguous: boolean;
  /** Throttled and 409 answers in a row, in this process. */
  waits: number;
  firstAttemptAt: number | undefined;
  dueAt: number;
  /** The breaker excused its latest attempt: it counts against nothing. */
  excused: boolean;
  /** The breaker's ticket for the attempt being sent, when there is a breaker. */
  breakerTicket: BreakerTicket | undefined;
  /** Calendar time its latest request left (epoch ms), for the charge's history. */
  sentAt: number;
}

interface HeldDecline {
  readonly charge: Charge;
  readonly result: AttemptResult;
  readonly latencyMs: number;
}

/**
 * The local engine's dispatch loop: pulls pending charges from the ledger in input order,
 * keeps at most `concurrency` attempts in flight and at most `rate` per second, retries with
 * backoff without holding a slot, obeys the throttle governor (a run-wide pause for Retry-After
 * or growing throttles without one, then dispatch spread out at a learned rate), records each
 * attempt before its request leaves and every outcome after, and stops at once on a
 * misconfiguration.
 */
export class Scheduler {
  readonly #options: SchedulerOptions;
  readonly #bucket: TokenBucket | undefined;
  readonly #retries = new RetryQueue<Charge>();
  #fresh: PendingCharge[] = [];
  #freshIndex = 0;
  #afterSeq = 0;
  #exhausted = false;
  #loading = false;
  #inFlight = 0;
  /** The run-wide pause and the dispatch rate learned from throttles. */
  readonly #governor: ThrottleGovernor;
  #wakeTimer: unknown;
  #wakeAt = Number.POSITIVE_INFINITY;
  #stopping = false;
  #fatal: string | undefined;
  #interrupted = false;
  #attempts = 0;
  #throttled = 0;
  #excused = 0;
  #maxInFlight = 0;
  /** Charges holding a slot whose start is about to be recorded, then sent. */
  #starting: Charge[] = [];
  readonly #latencies = new LatencyLog();
  readonly #ended = { charged: 0, declined: 0, failed: 0, unknown: 0 };
  /** Declines held back while the first answers might all be the same 400/422. */
  #heldDeclines: HeldDecline[] = [];
  readonly #watch = new MisconfigurationWatch();
  #resolve!: (result: SchedulerResult) => void;
  #reject!: (error: unknown) => void;
  #settled = false;

  constructor(options: SchedulerOptions) {
    this.#options = options;
    this.#governor = new ThrottleGovernor({ clock: options.clock, random: options.random });
    this.#bucket =
      options.rate === undefined
        ? undefined
        : new TokenBucket({
            ratePerSecond: options.rate,
            // A burst of one: the provider sees a smooth stream, never a spike.
            burst: 1,
            clock: options.clock,
          });
  }

  /** Runs until every pending charge has ended, the signal aborts, or the provider refuses the run. */
  run(): Promise<SchedulerResult> {
    return new Promise<SchedulerResult>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
      const { signal } = this.#options;
      if (signal?.aborted) this.#interrupt();
      signal?.addEventListener('abort', () => this.#interrupt(), { once: true });
      this.#pump();
    });
  }

  snapshot(): SchedulerSnapshot {
    return {
      ended: { ...this.#ended },
      inFlight: this.#inFlight,
      retrying: this.#retries.size,
      attempts: this.#attempts,
      pausedMs: Math.max(0, this.#governor.pausedUntil() - this.#options.clock.now()),
      limit: this.#limitNow(),
      maxInFlight: this.#maxInFlight,
      controller: this.#options.limit?.controllerSnapshot(),
      deadline: this.#options.limit?.deadline(),
      breaker: this.#options.breaker?.snapshot(),
      throttled: this.#throttled,
      excused: this.#excused,
    };
  }

  /** How this scheduler paces its requests, for progress and the summary. */
  dispatchReport(): DispatchReport {
    const snapshot = this.snapshot();
    const { controller, deadline, breaker } = snapshot;
    return {
      mode: controller === undefined ? 'fixed' : 'auto',
      limit: snapshot.limit,
      maxInFlight: snapshot.maxInFlight,
      ...(controller === undefined
        ? {}
        : { capacity: controller.capacity, baselineMs: controller.baselineMs }),
      throttled: snapshot.throttled,
      ...(deadline === undefined ? {} : { deadline: deadlineReport(deadline) }),
      ...(breaker === undefined ? {} : { breaker: breakerReport(breaker, snapshot.excused) }),
    };
  }

  /** Requests allowed in flight now. */
  #limitNow(): number {
    return this.#options.limit?.limit() ?? this.#options.concurrency;
  }

  #interrupt(): void {
    if (this.#stopping) return;
    this.#interrupted = true;
    this.#stopping = true;
    this.#pump();
  }

  #pump(): void {
    if (this.#settled) return;
    const { clock, breaker } = this.#options;
    this.#replan();
    while (!this.#stopping && this.#inFlight < this.#limitNow()) {
      const now = clock.now();
      // The provider is down: nothing goes but the breaker's probes.
      if (breaker !== undefined) {
        const openUntil = breaker.readyAt();
        if (now < openUntil) {
          if (Number.isFinite(openUntil)) this.#wake(openUntil);
          break;
        }
      }
      // A throttle's pause, and after any pause the learned rate: dispatch resumes spread out.
      const readyAt = this.#governor.readyAt();
      if (now < readyAt) {
        this.#wake(readyAt);
        break;
      }
      const due = this.#retries.peek();
      const fromRetries = due !== undefined && due.dueAt <= now;
      if (!fromRetries && this.#freshIndex >= this.#fresh.length) {
        if (!this.#exhausted) this.#load();
        if (due !== undefined) this.#wake(due.dueAt);
        break;
      }
      if (this.#bucket && !this.#bucket.tryTake()) {
        this.#wake(now + this.#bucket.msUntilAvailable());
        break;
      }
      const charge = fromRetries ? (this.#retries.pop() as Charge) : this.#takeFresh();
      const refused = gateAttempt(this.#options.policy, charge, this.#options.wallClock());
      if (refused) {
        this.#end(charge, refused.state, undefined, undefined, refused.reason);
        continue;
      }
      this.#governor.tryDispatch();
      // readyAt() said it may go: the ticket is there.
      charge.breakerTicket = breaker?.tryDispatch();
      this.#begin(charge);
    }
    if (!this.#exhausted && this.#fresh.length - this.#freshIndex < this.#pageSize() / 2) {
      this.#load();
    }
    this.#finishIfDone();
  }

  #pageSize(): number {
    return this.#options.pageSize ?? 2_000;
  }

  #takeFresh(): Charge {
    const pending = this.#fresh[this.#freshIndex++] as PendingCharge;
    return {
      pending,
      request: {
        userId: pending.userId,
        amount: pending.amount,
        currency: pending.currency,
        idempotencyKey: idempotencyKey(this.#options.runId, pending.userId),
        metadata: pending.metadata,
        attempt: pending.attempts + 1,
      },
      attempts: pending.attempts - pending.budgetFrom,
      ambiguous: pending.ambiguous,
      waits: pending.waits ?? 0,
      firstAttemptAt: pending.firstAttemptAt,
      dueAt: 0,
      excused: false,
      breakerTicket: undefined,
      sentAt: 0,
    };
  }

  #load(): void {
    if (this.#loading || this.#exhausted) return;
    this.#loading = true;
    const pageSize = this.#pageSize();
    const options = { metadata: this.#options.sender.readsMetadata !== false };
    this.#options.ledger
      .pendingCharges(this.#options.runId, this.#afterSeq, pageSize, options)
      .then(
        (page) => {
          this.#loading = false;
          this.#fresh = this.#fresh.slice(this.#freshIndex).concat(page);
          this.#freshIndex = 0;
          const last = page.at(-1);
          if (last) this.#afterSeq = last.seq;
          if (page.length < pageSize) this.#exhausted = true;
          this.#pump();
        },
        (error: unknown) => this.#fail(error),
      );
  }

  #wake(at: number): void {
    if (at >= this.#wakeAt) return;
    const { timers, clock } = this.#options;
    if (this.#wakeTimer !== undefined) timers.clearTimeout(this.#wakeTimer);
    this.#wakeAt = at;
    this.#wakeTimer = timers.setTimeout(
      () => {
        this.#wakeTimer = undefined;
        this.#wakeAt = Number.POSITIVE_INFINITY;
        this.#pump();
      },
      Math.max(0, at - clock.now()),
    );
  }

  /**
   * Takes a slot for the charge; its start is recorded in the ledger with the others of this
   * event-loop turn (one commit), and only then is its request sent.
   */
  #begin(charge: Charge): void {
    this.#inFlight++;
    this.#starting.push(charge);
    if (this.#starting.length === 1) this.#options.timers.defer(() => this.#startAll());
  }

  #startAll(): void {
    const charges = this.#starting;
    this.#starting = [];
    if (charges.length === 0 || this.#settled) return;
    const { ledger, runId, wallClock } = this.#options;
    const at = wallClock();
    const starts: AttemptStart[] = charges.map((charge) => {
      charge.firstAttemptAt ??= at;
      const attempts = charge.pending.budgetFrom + charge.attempts + 1;
      charge.request.attempt = attempts;
      return {
        userId: charge.request.userId,
        attempts,
        ambiguous: charge.ambiguous,
        at,
      };
    });
    ledger.startAttempts(runId, starts).then(
      (recorded) => {
        charges.forEach((charge, index) => {
          if (recorded[index]) this.#send(charge);
          // Not pending in the ledger any more: settled by someone else; nothing to send.
          else {
            this.#inFlight--;
            if (charge.breakerTicket) this.#options.breaker?.release(charge.breakerTicket);
          }
        });
        this.#pump();
      },
      // Not recorded, not sent: the run stops with the ledger's error, the charges stay pending.
      (error: unknown) => this.#fail(error),
    );
  }

  #send(charge: Charge): void {
    const { clock, sender, limit } = this.#options;
    this.#attempts++;
    const ticket = limit?.start();
    this.#maxInFlight = Math.max(this.#maxInFlight, this.#inFlight);
    const started = clock.now();
    charge.sentAt = this.#options.wallClock();
    const mayReplay = charge.ambiguous;
    sender
      .attempt(charge.request)
      .then((result) => {
        const latencyMs = clock.now() - started;
        const excused = this.#breakerSays(charge, result);
        limit?.complete(ticket, limitOutcome(result, excused, mayReplay), latencyMs);
        this.#settle(charge, result, started, latencyMs, excused);
      })
      // A client that rejects, or a ledger that cannot record, ends the run with that error.
      .catch((error: unknown) => this.#fail(error));
  }

  /** Tells the breaker how an attempt ended; whether it excused it (the provider was down). */
  #breakerSays(charge: Charge, result: AttemptResult): boolean {
    const { breaker } = this.#options;
    const ticket = charge.breakerTicket;
    if (breaker === undefined || ticket === undefined) return false;
    const excused = breaker.record(
      ticket,
      breakerOutcome(result),
      result.kind === 'retry' ? result.retryAfterMs : undefined,
    );
    if (excused) {
      this.#excused++;
      // Down for too long: stop, the charges stay pending for a later resume.
      const stop = breaker.stopReason();
      if (stop !== undefined) this.#stop(stop);
    }
    return excused;
  }

  /** Plans the deadline again from the work left (at most once a second). */
  #replan(): void {
    const { limit } = this.#options;
    const total = this.#options.pendingAtStart;
    // Asked on every pump: nothing is counted unless a plan is due (a deadline, once a second).
    if (limit === undefined || total === undefined || !limit.planDue()) return;
    const ended = Object.values(this.#ended).reduce((sum, count) => sum + count, 0);
    const remaining = Math.max(0, total - ended);
    // Attempts whose answers came, per charge ended: those in flight have not told anything yet.
    const answered = this.#attempts - this.#inFlight;
    const attemptsPerCharge = ended === 0 ? 1 : Math.max(1, answered / ended);
    limit.replan({ remaining, attemptsPerCharge });
  }

  #settle(
    charge: Charge,
    result: AttemptResult,
    sentAt: number,
    latencyMs: number,
    excused = false,
  ): void {
    this.#inFlight--;
    charge.excused = excused;
    this.#latencies.add(latencyMs);
    const throttled = result.kind === 'retry' && result.throttled;
    // With `auto`, a refusal is the limit controller's to answer (it cut the limit; the charge
    // waits out its Retry-After): the run-wide pause and rate are for refusals that go on at the
    // lowest limit. A pause a second for every capacity probe would cost half the throughput.
    const controller = this.#options.limit?.controller;
    if (!(throttled && controller !== undefined && controller.limit > controller.min)) {
      this.#governor.observe(result, sentAt);
    }
    if (throttled) {
      this.#throttled++;
      // A provider that has let nothing through for long: stop, the charges stay pending.
      const stop = this.#governor.stopReason();
      if (stop !== undefined) this.#stop(stop);
    }
    const verdict = this.#watch.observe(result);
    switch (verdict.action) {
      case 'hold':
        this.#heldDeclines.push({ charge, result, latencyMs });
        break;
      case 'stop':
        // The held charges and this one stay pending, their attempts not counted.
        for (const held of this.#heldDeclines)
          this.#putBack(held.charge, held.result, held.latencyMs, true);
        this.#heldDeclines = [];
        this.#putBack(charge, result, latencyMs, true);
        this.#stop(verdict.reason);
        break;
      case 'pend':
        this.#putBack(charge, result, latencyMs);
        break;
      case 'release':
        this.#releaseDeclines();
        this.#decide(charge, result, latencyMs);
        break;
      case 'decide':
        this.#decide(charge, result, latencyMs);
        break;
    }
    this.#pump();
  }

  /** Decides the declines the misconfiguration watch held back, now that it is over. */
  #releaseDeclines(): void {
    const held = this.#heldDeclines;
    this.#heldDeclines = [];
    for (const { charge, result, latencyMs } of held) this.#decide(charge, result, latencyMs);
  }

  #decide(charge: Charge, result: AttemptResult, latencyMs: number): void {
    const { policy, random, clock } = this.#options;
    const decision = decideRetry(policy, charge, result, random, charge.excused);
    charge.attempts = decision.attempts;
    charge.ambiguous = decision.ambiguous;
    charge.waits = decision.waits ?? 0;
    if (decision.action === 'stop') {
      this.#putBack(charge, result, latencyMs, true);
      this.#stop(decision.reason);
      return;
    }
    if (decision.action === 'retry') {
      const now = clock.now();
      // The ledger learns the attempt is over (and whether it counted) before the next starts.
      this.#putBack(charge, result, latencyMs);
      charge.dueAt = now + decision.delayMs;
      this.#retries.push(charge);
      return;
    }
    const reason =
      decision.reason ??
      (result.kind === 'charged' ? undefined : 'reason' in result ? result.reason : undefined);
    this.#end(charge, decision.state, result, latencyMs, reason);
  }

  /** Records a terminal outcome. */
  #end(
    charge: Charge,
    state: Exclude<TerminalChargeState, 'invalid'>,
    result: AttemptResult | undefined,
    latencyMs: number | undefined,
    reason: string | undefined,
  ): void {
    this.#ended[state]++;
    const outcome: ChargeOutcome = {
      userId: charge.request.userId,
      seq: charge.pending.seq,
      state,
      attempts: charge.pending.budgetFrom + charge.attempts,
      ambiguous: charge.ambiguous,
      httpStatus: result?.status,
      latencyMs,
      chargeId: result?.kind === 'charged' ? result.chargeId : undefined,
      error: reason,
      firstAttemptAt: charge.firstAttemptAt,
      // Ended by an answer: the attempt goes into the charge's history (unsent: none).
      ...(result === undefined ? {} : { attempt: this.#note(charge, false) }),
    };
    this.#options.ledger.record(this.#options.runId, outcome);
    this.#tell(outcome, latencyMs ?? 0, result === undefined);
  }

  /** The attempt just answered, for the charge's history. */
  #note(charge: Charge, throttled: boolean, stopped = false): AttemptNote {
    return {
      n: charge.request.attempt,
      at: charge.sentAt,
      throttled,
      ...(stopped ? { stopped: true as const } : {}),
    };
  }

  #tell(outcome: ChargeOutcome, latencyMs: number, unsent = false): void {
    this.#options.onAttempt?.({
      userId: outcome.userId,
      attempt: outcome.attempt?.n ?? outcome.attempts,
      latencyMs,
      status: outcome.httpStatus,
      outcome: attemptOutcome(outcome),
      reason: outcome.error,
      ...(unsent ? { unsent: true as const } : {}),
    });
  }

  /** Records that the charge's attempt is over and it stays pending (to retry, or for a later run). */
  #putBack(charge: Charge, result: AttemptResult, latencyMs: number, stopped = false): void {
    const outcome: ChargeOutcome = {
      userId: charge.request.userId,
      seq: charge.pending.seq,
      state: 'pending',
      attempts: charge.pending.budgetFrom + charge.attempts,
      ambiguous: charge.ambiguous,
      httpStatus: result.status,
      latencyMs,
      chargeId: undefined,
      error: 'reason' in result ? result.reason : undefined,
      firstAttemptAt: charge.firstAttemptAt,
      waits: charge.waits,
      attempt: this.#note(charge, result.kind === 'retry' && result.throttled, stopped),
    };
    this.#options.ledger.record(this.#options.runId, outcome);
    this.#tell(outcome, latencyMs);
  }

  #stop(reason: string): void {
    this.#fatal ??= reason;
    this.#stopping = true;
  }

  #finishIfDone(): void {
    if (this.#inFlight > 0 || this.#loading || this.#starting.length > 0) return;
    const drained =
      this.#exhausted && this.#freshIndex >= this.#fresh.length && this.#retries.size === 0;
    if (!this.#stopping && !drained) return;
    if (this.#fatal === undefined && this.#watch.end()) this.#releaseDeclines();
    if (this.#wakeTimer !== undefined) this.#options.timers.clearTimeout(this.#wakeTimer);
    this.#wakeTimer = undefined;
    this.#settled = true;
    this.#resolve({
      fatal: this.#fatal,
      interrupted: this.#interrupted && this.#fatal === undefined,
      latencies: this.#latencies.latencies,
      serialMs: this.#latencies.serialMs,
    });
  }

  #fail(error: unknown): void {
    if (this.#settled) return;
    this.#settled = true;
    if (this.#wakeTimer !== undefined) this.#options.timers.clearTimeout(this.#wakeTimer);
    this.#reject(error);
  }
}
