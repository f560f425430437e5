import type { Clock } from '../domain/clock.js';
import type { AttemptResult } from '../domain/outcome.js';
import { DEFAULT_MARGIN, type Plan, planConcurrency } from './deadline-planner.js';
import type {
  LimitController,
  LimitOutcome,
  LimitSnapshot,
  LimitTicket,
} from './limit-controller.js';

export type { LimitSnapshot };

/** Most requests a deadline sends before the first answer tells the latency. */
export const FIRST_ROUND_TRIP = 8;

/** How many requests an engine keeps in flight: fixed, or found by the limit controller. */
export type ConcurrencyMode =
  | { readonly kind: 'fixed'; readonly concurrency: number }
  | { readonly kind: 'auto'; readonly controller: LimitController };

export interface DispatchLimitOptions {
  readonly mode: ConcurrencyMode;
  readonly clock: Clock;
  /** The deadline, with `wallClock` (epoch ms) to tell the time left. */
  readonly deadline?: { readonly at: number; readonly wallClock: () => number } | undefined;
  /** Most requests in flight a deadline may ask for (`--max-concurrency`). */
  readonly maxConcurrency: number;
  /** Fewest requests in flight (`--min-concurrency`). Default 1. */
  readonly minConcurrency?: number | undefined;
  readonly rate?: number | undefined;
  /** Latency assumed before any answer, in ms. */
  readonly assumedLatencyMs: number;
  /** How often the plan is made again, in ms. Default 1 s. */
  readonly replanMs?: number | undefined;
}

/** The deadline's standing, for progress, `status` and the summary. */
export interface DeadlineStatus {
  /** The deadline, epoch ms. */
  readonly at: number;
  /** Whether the work left can end in time within the limits. */
  readonly feasible: boolean;
  /** Requests in flight the deadline needs now. */
  readonly need: number;
  /** When the work left is expected to end at the planned concurrency (epoch ms). */
  readonly expectedEndAt: number;
  /** When it would end at the most the limits allow (epoch ms). */
  readonly fastestEndAt: number;
  /** What binds when it is not feasible. */
  readonly bound: Plan['bound'] | 'provider-capacity' | undefined;
}

/** What the work looks like now: the engine tells it before each plan. */
export interface WorkLeft {
  /** Charges not yet ended (pending, retrying, in flight). */
  readonly remaining: number;
  /** Attempts per ended charge so far (1 before any ended). */
  readonly attemptsPerCharge: number;
}

/**
 * The number of requests an engine may have in flight now: the fixed `--concurrency`, or the
 * limit controller's (`auto`); with a deadline, the fewest that end the work in time (the
 * planner's, made again every `replanMs` from the latency seen and the work left), never more
 * than the controller found the provider takes. So: `auto` alone finds the provider's capacity,
 * a deadline alone runs at its need (up to `--max-concurrency`), and both run at the need up to
 * the provider's capacity, saying so when that is too little.
 */
export class DispatchLimit {
  readonly #options: DispatchLimitOptions;
  #latencyMs: number | undefined;
  #plan: Plan | undefined;
  #plannedAt = Number.NEGATIVE_INFINITY;
  #deadline: DeadlineStatus | undefined;
  /** When the plan means to end (epoch ms): the deadline less the run's margin. */
  #target: number | undefined;

  #deadlineOption: DispatchLimitOptions['deadline'];

  constructor(options: DispatchLimitOptions) {
    this.#options = options;
    this.#deadlineOption = options.deadline;
  }

  /**
   * The deadline changed (a run on the queue gained, lost or moved one): the plan is made anew,
   * its margin taken from the time left now. The latency seen so far is kept.
   */
  retarget(deadline: DispatchLimitOptions['deadline']): void {
    if (deadline?.at === this.#deadlineOption?.at) return;
    this.#deadlineOption = deadline;
    this.#target = undefined;
    this.#plan = undefined;
    this.#deadline = undefined;
    this.#plannedAt = Number.NEGATIVE_INFINITY;
  }

  /** The limit controller, for `auto`. */
  get controller(): LimitController | undefined {
    return this.#options.mode.kind === 'auto' ? this.#options.mode.controller : undefined;
  }

  /** Requests allowed in flight now. */
  limit(): number {
    const { mode } = this.#options;
    const base = mode.kind === 'fixed' ? mode.concurrency : mode.controller.limit;
    const plan = this.#plan;
    if (plan === undefined) return base;
    const min = this.#options.minConcurrency ?? 1;
    // Until an answer tells the latency, the plan is on the assumed one: one round trip at a
    // few requests measures it, rather than a wave the real latency may not need.
    const planned =
      this.#latencyMs === undefined
        ? Math.min(plan.concurrency, FIRST_ROUND_TRIP)
        : plan.concurrency;
    const need = Math.max(min, planned);
    // Fixed: the deadline replaces it (the fewest that end in time). Auto: up to what the
    // provider was found to take.
    return mode.kind === 'fixed' ? need : Math.min(base, need);
  }

  /** A request is sent: hand what this returns to `complete`. */
  start(): unknown {
    return this.controller?.start();
  }

  /** The request begun by `start` ended: `latencyMs` when it was answered. */
  complete(ticket: unknown, outcome: LimitOutcome, latencyMs: number | undefined): void {
    const controller = this.controller;
    if (controller !== undefined) {
      controller.complete(ticket as Parameters<LimitController['complete']>[0], outcome);
    }
    this.#latencySeen(outcome, latencyMs);
  }

  #latencySeen(outcome: LimitOutcome, latencyMs: number | undefined): void {
    if (outcome === 'answered' && latencyMs !== undefined) {
      // The first latency seen: plan again at once, not on the assumed one for another second.
      if (this.#latencyMs === undefined) this.#plannedAt = Number.NEGATIVE_INFINITY;
      this.#latencyMs =
        this.#latencyMs === undefined ? latencyMs : this.#latencyMs * 0.9 + latencyMs * 0.1;
    }
  }

  /**
   * A request another process sent and saw end (the distributed decider's replay of its
   * workers' attempts): as `complete`, with the ticket and latency that process measured.
   */
  observe(ticket: LimitTicket, outcome: LimitOutcome, latencyMs: number): void {
    this.controller?.observe(ticket, outcome, latencyMs);
    this.#latencySeen(outcome, latencyMs);
  }

  /** Whether a plan is due: with a deadline, `replanMs` after the last (or after the first answer). */
  planDue(): boolean {
    if (this.#deadlineOption === undefined) return false;
    return this.#options.clock.now() - this.#plannedAt >= (this.#options.replanMs ?? 1_000);
  }

  /** Plans again when one is due (or `force`). */
  replan(work: WorkLeft, force = false): void {
    const { clock } = this.#options;
    const deadline = this.#deadlineOption;
    if (deadline === undefined || !(force || this.planDue())) return;
    this.#plannedAt = clock.now();
    const wallNow = deadline.wallClock();
    const latencyMs = this.#latencyMs ?? this.#options.assumedLatencyMs;
    // The margin is of the whole run, fixed at its start: the work is planned to end 10% of the
    // time before the deadline, and one round trip sooner (the last charges' answers). A margin
    // of the time left instead would shrink as the run goes and leave the last charges none.
    this.#target ??= deadline.at - (deadline.at - wallNow) * (1 - 1 / DEFAULT_MARGIN);
    const plan = planConcurrency({
      remaining: work.remaining,
      latencyMs,
      timeLeftMs: this.#target - wallNow - latencyMs,
      maxConcurrency: this.#options.maxConcurrency,
      rate: this.#options.rate,
      attemptsPerCharge: work.attemptsPerCharge,
      margin: 1,
    });
    this.#plan = plan;
    let { feasible } = plan;
    let bound: DeadlineStatus['bound'] = plan.bound;
    // Past the plan's own target (the margin used up) but still in time for the deadline itself
    // at the most allowed: on track, the last charges going as fast as allowed.
    if (!feasible && wallNow + plan.fastestMs + latencyMs <= deadline.at) {
      feasible = true;
      bound = undefined;
    }
    let expectedMs = plan.expectedMs;
    const controller = this.controller;
    const capacity = controller?.snapshot().capacity;
    // The provider takes fewer than the deadline needs: it binds, whatever the flags allow.
    if (feasible && capacity !== undefined && plan.concurrency > capacity) {
      feasible = false;
      bound = 'provider-capacity';
      expectedMs = (plan.expectedMs * plan.concurrency) / Math.max(1, capacity);
    }
    this.#deadline = {
      at: deadline.at,
      feasible,
      need: plan.concurrency,
      expectedEndAt: wallNow + expectedMs,
      fastestEndAt: wallNow + plan.fastestMs,
      bound,
    };
  }

  /** The deadline's standing, once planned; undefined without a deadline. */
  deadline(): DeadlineStatus | undefined {
    return this.#deadline;
  }

  /** The controller's figures, for `auto`. */
  controllerSnapshot(): LimitSnapshot | undefined {
    return this.controller?.snapshot();
  }
}

/**
 * How the limit controller reads an attempt's end: a throttle, a 503 or a timeout after sending
 * is a refusal (load); another answer is an answer; a connection that failed before sending, a
 * 500 or 502, and anything the breaker excused (an outage is not a capacity) say nothing. Nor
 * does an answer to a request an earlier attempt may already have made (`mayReplay`: one sent
 * unanswered, or a crash's): the provider may have replayed its stored answer in a millisecond,
 * and one window of those made a no-load latency 300 times too low.
 */
export function limitOutcome(
  result: AttemptResult,
  excused: boolean,
  mayReplay = false,
): LimitOutcome {
  if (excused) return 'ignored';
  if (result.kind !== 'retry') return mayReplay ? 'ignored' : 'answered';
  if (result.throttled || result.status === 503) return 'refused';
  if (result.status === undefined) return result.ambiguous ? 'refused' : 'ignored';
  if (result.conflict === true) return 'ignored';
  return result.status >= 500 || mayReplay ? 'ignored' : 'answered';
}
