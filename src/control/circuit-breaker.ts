import type { Clock } from '../domain/clock.js';
import { formatDuration } from '../domain/duration.js';
import { describeValue } from '../domain/errors.js';
import type { AttemptResult } from '../domain/outcome.js';
import type { Random } from './backoff.js';

/**
 * Stops dispatch while the provider is down, for one engine (a scheduler, or the queue's shared
 * state in Redis). Pure and clock-injected: the engine asks it before each dispatch and tells it
 * every attempt's end.
 *
 * - **Closed**: every attempt goes. It opens when, of the last `window` attempts that ended
 *   within `windowMs`, at least `minSamples` did and at least `failureRatio` of them failed
 *   (`minSamples` grows to a tenth of the attempts in flight, the window to twice that):
 *   a 5xx that is not a throttle, a reset, a timeout, no answer. 429s are the throttle
 *   governor's; an answer of any other status says the provider is up.
 * - **Open**: nothing goes, for `openMs` (doubling on each reopening, up to `maxOpenMs`, with
 *   jitter), or for the provider's Retry-After when it asked for longer (up to `maxOpenMs` too).
 * - **Half-open**: `probes` attempts go at once; the first probe's answer that is not a failure
 *   closes the breaker (its window starts empty); a failed probe reopens it for twice as long.
 *
 * Each dispatch takes a ticket that says when it was sent (the breaker's epoch, one per
 * opening). Only answers to attempts sent since the latest opening move the breaker: an answer
 * to an attempt sent before it is stale news. A stale success (a request the provider took
 * before it went down, answered late) neither closes an open breaker nor stands for a probe;
 * a stale failure is excused and left out of the window.
 *
 * Attempts the breaker holds back are never sent, so they use nothing; attempts whose failure
 * came while it was open or half-open, or which opened it, are `excused`: the provider was down,
 * and the engines count them against no charge's attempts (the outage's cost is the open time).
 * After `giveUpMs` open with no recovery the engine stops, the charges left pending.
 */
export interface BreakerPolicy {
  readonly window: number;
  readonly windowMs: number;
  readonly minSamples: number;
  readonly failureRatio: number;
  readonly openMs: number;
  readonly maxOpenMs: number;
  readonly probes: number;
  readonly giveUpMs: number;
}

/** Every breaker default, in one place. */
export const BREAKER_DEFAULTS = {
  /** The last 20 attempts: at 5 in flight and 1.6 s, the last 6 s; at 1,000 in flight, 30 ms. */
  window: 20,
  /** Attempts that ended longer ago than 30 s say nothing of the provider now. */
  windowMs: 30_000,
  /** At least 10 of them, so a couple of unlucky 503s open nothing. */
  minSamples: 10,
  /** Half or more failed: a provider that fails half its requests is down for us. */
  failureRatio: 0.5,
  /** First open time, 2 s; it doubles with each failed probe. */
  openMs: 2_000,
  /** Longest open time (and the longest Retry-After it follows): 60 s between probes at worst. */
  maxOpenMs: 60_000,
  /** Attempts sent half-open. One: the provider sees the probe, not a wave. */
  probes: 1,
  /** After 30 min with the provider down the run stops; its charges stay pending. */
  giveUpMs: 30 * 60_000,
} as const satisfies BreakerPolicy;

/** The least samples to open on grow to this share of the attempts in flight. */
const WAVE_SHARE = 0.1;

export type BreakerState = 'closed' | 'open' | 'half-open';

/** The right to send one attempt: when it was sent, and whether as a probe. */
export interface BreakerTicket {
  /** The breaker's openings before this attempt was sent. */
  readonly epoch: number;
  readonly probe: boolean;
}

/** What the breaker knows now: for progress, `status` and the summary. */
export interface BreakerSnapshot {
  readonly state: BreakerState;
  /** When an open breaker lets its probes go (clock ms); undefined unless open. */
  readonly openUntil: number | undefined;
  /** Times it opened. */
  readonly opened: number;
  /** Probes sent. */
  readonly probes: number;
  /** Since when the provider has been down (clock ms), while it is. */
  readonly downSince: number | undefined;
}

/** How an attempt ended, as the breaker reads it. */
export type BreakerOutcome = 'success' | 'failure' | 'neutral';

/** Reads an attempt's result: failures are 5xx (not throttles), resets, timeouts. */
export function breakerOutcome(result: AttemptResult): BreakerOutcome {
  if (result.kind !== 'retry') return 'success';
  if (result.throttled || result.conflict === true) return 'success';
  if (result.status === undefined) return 'failure';
  return result.status >= 500 ? 'failure' : 'success';
}

export function resolveBreakerPolicy(options: Partial<BreakerPolicy> = {}): BreakerPolicy {
  const policy: BreakerPolicy = {
    ...BREAKER_DEFAULTS,
    ...Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined)),
  };
  for (const name of ['window', 'minSamples', 'probes'] as const) {
    if (!(Number.isSafeInteger(policy[name]) && policy[name] >= 1)) {
      throw new RangeError(
        `Expected \`${name}\` to be a whole number >= 1, got ${describeValue(policy[name])}`,
      );
    }
  }
  if (policy.minSamples > policy.window) {
    throw new RangeError(
      `Expected \`minSamples\` (${policy.minSamples}) to be <= \`window\` (${policy.window})`,
    );
  }
  if (!(policy.failureRatio > 0 && policy.failureRatio <= 1)) {
    throw new RangeError(
      `Expected \`failureRatio\` to be > 0 and <= 1, got ${describeValue(policy.failureRatio)}`,
    );
  }
  for (const name of ['windowMs', 'openMs', 'maxOpenMs', 'giveUpMs'] as const) {
    if (!(Number.isFinite(policy[name]) && policy[name] > 0)) {
      throw new RangeError(
        `Expected \`${name}\` to be a finite number > 0, got ${describeValue(policy[name])}`,
      );
    }
  }
  if (policy.maxOpenMs < policy.openMs) {
    throw new RangeError(
      `Expected \`maxOpenMs\` (${policy.maxOpenMs}) to be >= \`openMs\` (${policy.openMs})`,
    );
  }
  return policy;
}

export interface CircuitBreakerOptions {
  readonly clock: Clock;
  readonly random: Random;
  readonly policy?: BreakerPolicy | undefined;
}

export class CircuitBreaker {
  readonly policy: BreakerPolicy;
  readonly #clock: Clock;
  readonly #random: Random;
  #state: BreakerState = 'closed';
  /** The window's outcomes (true: failed) and when they ended, oldest first, as a ring. */
  readonly #failed: boolean[] = [];
  readonly #at: number[] = [];
  #openUntil = Number.NEGATIVE_INFINITY;
  /** Opens in a row without a probe getting through: how long the next open lasts. */
  #reopens = 0;
  #probesOut = 0;
  #opened = 0;
  #probesSent = 0;
  #downSince: number | undefined;
  /** Attempts dispatched and not yet recorded or released: what is in flight. */
  #outstanding = 0;

  constructor(options: CircuitBreakerOptions) {
    this.policy = options.policy ?? resolveBreakerPolicy();
    this.#clock = options.clock;
    this.#random = options.random;
  }

  get state(): BreakerState {
    this.#tick();
    return this.#state;
  }

  /**
   * The earliest instant the next dispatch may go: -Infinity when closed or when a probe may go
   * half-open, the open time's end when open, +Infinity while the probes are out.
   */
  readyAt(): number {
    this.#tick();
    if (this.#state === 'closed') return Number.NEGATIVE_INFINITY;
    if (this.#state === 'open') return this.#openUntil;
    // -Infinity, not now: a caller compares it with a `now` it read a moment earlier.
    return this.#probesOut < this.policy.probes
      ? Number.NEGATIVE_INFINITY
      : Number.POSITIVE_INFINITY;
  }

  /**
   * Takes the right to send one attempt: its ticket, for `record` or `release`; undefined
   * (nothing taken) when the breaker holds it back.
   */
  tryDispatch(): BreakerTicket | undefined {
    const now = this.#clock.now();
    if (now < this.readyAt()) return undefined;
    const probe = this.#state === 'half-open';
    if (probe) {
      this.#probesOut++;
      this.#probesSent++;
    }
    this.#outstanding++;
    return { epoch: this.#opened, probe };
  }

  /** A dispatch taken by tryDispatch was not sent after all (another process settled it). */
  release(ticket: BreakerTicket): void {
    this.#outstanding = Math.max(0, this.#outstanding - 1);
    if (this.#isOutProbe(ticket)) this.#probesOut--;
  }

  /**
   * The attempt sent on `ticket` ended; `retryAfterMs` is the provider's, when it gave one.
   * Returns whether the attempt is excused (its failure came while the provider was seen down,
   * or was sent before it was: it uses no attempt).
   */
  record(ticket: BreakerTicket, outcome: BreakerOutcome, retryAfterMs?: number): boolean {
    this.#tick();
    const now = this.#clock.now();
    this.#outstanding = Math.max(0, this.#outstanding - 1);
    if (outcome === 'neutral') return false;
    const failed = outcome === 'failure';
    const probe = this.#isOutProbe(ticket);
    if (probe) this.#probesOut--;
    if (ticket.epoch !== this.#opened) {
      // Sent before the latest opening: it says how the provider was, not how it is.
      if (!failed) return false;
      // While open, the open time may follow its Retry-After.
      if (this.#state === 'open' && retryAfterMs !== undefined) {
        this.#extend(now + this.#cap(retryAfterMs));
      }
      return true;
    }
    if (!failed) {
      if (this.#state !== 'closed') this.#close();
      this.#push(false, now);
      return false;
    }
    if (this.#state === 'half-open') {
      // A probe failed (only probes are sent since the latest opening while it is not closed).
      this.#open(now, retryAfterMs);
      return true;
    }
    this.#push(true, now);
    if (this.#trips(now)) {
      this.#open(now, retryAfterMs);
      return true;
    }
    return false;
  }

  /** Why the run should stop: down for `giveUpMs`; undefined otherwise. */
  stopReason(): string | undefined {
    if (this.#downSince === undefined) return undefined;
    const downMs = this.#clock.now() - this.#downSince;
    if (downMs < this.policy.giveUpMs) return undefined;
    return `the provider has been failing (5xx, resets, timeouts) for ${formatDuration(downMs)}: stopping, the charges left stay pending`;
  }

  snapshot(): BreakerSnapshot {
    this.#tick();
    return {
      state: this.#state,
      openUntil: this.#state === 'open' ? this.#openUntil : undefined,
      opened: this.#opened,
      probes: this.#probesSent,
      downSince: this.#downSince,
    };
  }

  /** Open → half-open once the open time is over. */
  #tick(): void {
    if (this.#state === 'open' && this.#clock.now() >= this.#openUntil) {
      this.#state = 'half-open';
      this.#probesOut = 0;
    }
  }

  #open(now: number, retryAfterMs: number | undefined): void {
    const ceiling = Math.min(this.policy.maxOpenMs, this.policy.openMs * 2 ** this.#reopens);
    // Half sure, half jitter: breakers that opened together do not probe together.
    let ms = ceiling * (0.5 + 0.5 * this.#random());
    if (retryAfterMs !== undefined) ms = Math.max(ms, this.#cap(retryAfterMs));
    this.#reopens++;
    this.#opened++;
    this.#state = 'open';
    this.#openUntil = now + ms;
    this.#probesOut = 0;
    this.#downSince ??= now;
  }

  /** A probe of this half-open spell still out. */
  #isOutProbe(ticket: BreakerTicket): boolean {
    return (
      ticket.probe &&
      ticket.epoch === this.#opened &&
      this.#state === 'half-open' &&
      this.#probesOut > 0
    );
  }

  #extend(until: number): void {
    if (until > this.#openUntil) this.#openUntil = until;
  }

  #cap(ms: number): number {
    return Math.min(this.policy.maxOpenMs, Math.max(0, ms));
  }

  #close(): void {
    this.#state = 'closed';
    this.#reopens = 0;
    this.#probesOut = 0;
    this.#downSince = undefined;
    this.#failed.length = 0;
    this.#at.length = 0;
  }

  /**
   * The window and its least samples at the in flight now: the policy's, or a tenth of what is
   * in flight (and twice that), whichever is more. A wave of requests sent together answers its
   * fast failures first: at 1,000 in flight, 2% of transient 503s are the first 20 answers, all
   * failed, and a window of 20 opened on a provider that was up (the demo did, at every start
   * and after every close).
   */
  #sized(): { window: number; minSamples: number } {
    const minSamples = Math.max(this.policy.minSamples, Math.ceil(WAVE_SHARE * this.#outstanding));
    return { window: Math.max(this.policy.window, 2 * minSamples), minSamples };
  }

  #push(failed: boolean, now: number): void {
    this.#failed.push(failed);
    this.#at.push(now);
    const keep = this.#sized().window;
    if (this.#failed.length > keep) {
      this.#failed.splice(0, this.#failed.length - keep);
      this.#at.splice(0, this.#at.length - keep);
    }
  }

  #trips(now: number): boolean {
    const { window, minSamples } = this.#sized();
    let samples = 0;
    let failures = 0;
    const from = Math.max(0, this.#failed.length - window);
    for (let index = this.#failed.length - 1; index >= from; index--) {
      if (now - (this.#at[index] as number) > this.policy.windowMs) break;
      samples++;
      if (this.#failed[index]) failures++;
    }
    return samples >= minSamples && failures >= samples * this.policy.failureRatio;
  }
}
