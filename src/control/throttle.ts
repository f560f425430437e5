import type { Clock } from '../domain/clock.js';
import { formatDuration } from '../domain/duration.js';
import { describeValue } from '../domain/errors.js';
import type { AttemptResult } from '../domain/outcome.js';
import type { Random } from './backoff.js';

/**
 * How an engine slows down when the provider throttles (429, or 503 with Retry-After), for the
 * whole run; how often one charge may be throttled is the retry policy's (RETRY_DEFAULTS.maxWaits).
 * Every field is documented with its default in THROTTLE_DEFAULTS.
 */
export interface ThrottlePolicy {
  readonly basePauseMs: number;
  readonly maxPauseMs: number;
  readonly rateCut: number;
  readonly rateGrowth: number;
  readonly startDoublingMs: number;
  readonly minRate: number;
  readonly maxThrottledMs: number;
}

export type ThrottlePolicyOptions = Partial<ThrottlePolicy>;

/** Every throttling default, written out in one place (as RETRY_DEFAULTS is for retries). */
export const THROTTLE_DEFAULTS = {
  /**
   * Ceiling of the run-wide pause after the second throttle episode in a row (no answer got
   * through in between) that came without Retry-After; it doubles with each further one. A lone
   * episode pauses nothing: the dispatch rate is cut instead, which is what finds the provider's
   * rate without losing time. 1 s: a per-second rate limit has refilled by then.
   */
  basePauseMs: 1_000,
  /** Longest such pause (reached at the 7th episode in a row): 30 s, as the retry backoff's cap. */
  maxPauseMs: 30_000,
  /**
   * On a throttle episode the dispatch rate becomes this fraction of the requests per second sent
   * in the last second and not throttled (or of the rate then, if lower). 0.9: close enough to
   * the provider's rate to lose little time, far enough below it that its bucket refills.
   */
  rateCut: 0.9,
  /**
   * The rate grows by this factor per second's worth of answers that get through, above the rate
   * the last cut found: 1.05 climbs back from a cut in about 2 s, so a provider that sends a
   * Retry-After (which pauses everyone) is probed rarely, and still follows a rate that rises.
   */
  rateGrowth: 1.05,
  /**
   * Below half the rate of the last episode, or before a second episode has shown where the
   * provider's rate is (slow start), the rate doubles every this many ms while answers get
   * through (at most once per answer): a first estimate of 1/s, which a smooth provider gives
   * (it lets 1 of a first wave through), finds 800/s in about 2.5 s.
   */
  startDoublingMs: 100,
  /** Lowest dispatch rate, in requests per second, whatever was measured. */
  minRate: 1,
  /**
   * How long every answer may be a throttle, nothing getting through, before the run should stop
   * (charges stay pending, a resume continues): a provider that refuses us for 10 minutes is not
   * going to let the cycle through today.
   */
  maxThrottledMs: 600_000,
} as const satisfies ThrottlePolicy;

/** Checks options once and fills in defaults; the message names the field and the value. */
export function resolveThrottlePolicy(options: ThrottlePolicyOptions = {}): ThrottlePolicy {
  const policy: ThrottlePolicy = { ...THROTTLE_DEFAULTS, ...definedOnly(options) };
  const finiteAtLeast = (name: keyof ThrottlePolicy, min: number, strict = false): void => {
    const value = policy[name];
    if (!(Number.isFinite(value) && (strict ? value > min : value >= min))) {
      throw new RangeError(
        `Expected \`${name}\` to be a finite number ${strict ? '>' : '>='} ${min}, got ${describeValue(value)}`,
      );
    }
  };
  finiteAtLeast('basePauseMs', 0);
  finiteAtLeast('maxPauseMs', policy.basePauseMs);
  const { rateCut } = policy;
  if (!(Number.isFinite(rateCut) && rateCut > 0 && rateCut <= 1)) {
    throw new RangeError(
      `Expected \`rateCut\` to be a number > 0 and <= 1, got ${describeValue(rateCut)}`,
    );
  }
  finiteAtLeast('rateGrowth', 1);
  finiteAtLeast('startDoublingMs', 0, true);
  finiteAtLeast('minRate', 0, true);
  finiteAtLeast('maxThrottledMs', 0, true);
  return policy;
}

function definedOnly(options: ThrottlePolicyOptions): ThrottlePolicyOptions {
  return Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined));
}

/**
 * The run-wide pause after the `episodes`-th throttle episode in a row without Retry-After:
 * none for the first; then drawn from [c/2, c) with c = min(maxPauseMs, basePauseMs × 2^(n−2)).
 * Half of it is sure, so the pause really grows; the other half is jitter, so runs that were
 * throttled together do not come back together.
 */
export function throttlePauseMs(policy: ThrottlePolicy, episodes: number, random: Random): number {
  if (!(Number.isSafeInteger(episodes) && episodes >= 1)) {
    throw new RangeError(
      `Expected \`episodes\` to be an integer >= 1, got ${describeValue(episodes)}`,
    );
  }
  if (episodes === 1) return 0;
  const ceiling = Math.min(policy.maxPauseMs, policy.basePauseMs * 2 ** (episodes - 2));
  return ceiling * (0.5 + 0.5 * random());
}

/** A throttled answer, as the governor needs it. */
export interface ThrottledAnswer {
  /** The provider's Retry-After in ms from now (the answer's arrival); undefined when absent. */
  readonly retryAfterMs: number | undefined;
  /** When the request was sent, on the governor's clock. */
  readonly sentAt: number;
}

export interface ThrottleGovernorOptions {
  /** Time source: instants given to and returned by the governor are on this clock. */
  readonly clock: Clock;
  /** Draws the pauses' jitter. */
  readonly random: Random;
  /** Default: resolveThrottlePolicy(). */
  readonly policy?: ThrottlePolicy | undefined;
}

// Requests sent and not throttled, by when they were sent, in 10 slots of 100 ms: the last
// second, without allocating.
const SLOT_MS = 100;
const SLOTS = 10;
const WINDOW_SECONDS = (SLOT_MS * SLOTS) / 1_000;
// A rate past this means no limit worth keeping; it also keeps growth from overflowing.
const MAX_RATE = 1e6;

/**
 * Paces dispatch to what the provider lets through, for one engine (a scheduler, or one worker).
 * The engine tells it every answer and asks it before every dispatch; it does no I/O and reads
 * only the clock it is given.
 *
 * - Unlimited until the first throttle. A throttle *episode* begins with a throttled answer to a
 *   request sent after the previous episode began: the other answers of a wave already in flight
 *   belong to the episode that wave caused, so one wave counts once.
 * - Each episode cuts a learned dispatch rate to `rateCut` × the requests per second sent in
 *   the last second and not throttled. Answers that get through (to requests sent since the
 *   episode began) grow it again: doubling every `startDoublingMs` up to half the rate the last
 *   episode came at (without bound before a second episode), then by `rateGrowth` per second.
 *   Dispatch is spaced at that rate, so after any pause it resumes spread out, never as a wave.
 * - A Retry-After pauses all dispatch until now + Retry-After, unless a longer pause holds: a
 *   shorter pause never cuts a longer one. Without Retry-After, the second episode in a row
 *   (nothing got through in between) pauses `basePauseMs`, each further one twice as long, up to
 *   `maxPauseMs`, with jitter; one answer that gets through resets the count.
 */
export class ThrottleGovernor {
  readonly policy: ThrottlePolicy;
  readonly #clock: Clock;
  readonly #random: Random;
  #pausedUntil = Number.NEGATIVE_INFINITY;
  /** The learned rate in requests per second; undefined until the first episode (no limit). */
  #rate: number | undefined;
  /** Below this rate the rate grows by doubling (slow start), above it by `rateGrowth`. */
  #threshold = Number.POSITIVE_INFINITY;
  /** The rate when the current episode began. */
  #rateBeforeEpisode: number | undefined;
  /** When the rate last grew (or was cut). */
  #grownAt = Number.NEGATIVE_INFINITY;
  #nextSlotAt = Number.NEGATIVE_INFINITY;
  /** When the current episode began (its first throttled answer arrived). */
  #episodeAt = Number.NEGATIVE_INFINITY;
  /** Episodes in a row with no answer to a request sent since the last one getting through. */
  #episodes = 0;
  #episodesTotal = 0;
  /** Since when every answer has been a throttle; undefined when the last one got through. */
  #throttledSince: number | undefined;
  readonly #accepted = new Float64Array(SLOTS);
  #slotEpoch = Number.NEGATIVE_INFINITY;

  constructor(options: ThrottleGovernorOptions) {
    this.policy = options.policy ?? resolveThrottlePolicy();
    this.#clock = options.clock;
    this.#random = options.random;
  }

  /** No dispatch before this instant: the pause in force, or -Infinity when none. */
  pausedUntil(): number {
    return this.#pausedUntil;
  }

  /** The learned dispatch rate in requests per second; undefined while there is no limit. */
  rate(): number | undefined {
    return this.#rate;
  }

  /** Throttle episodes so far, and how many of the last ones came in a row. */
  episodes(): { readonly total: number; readonly inARow: number } {
    return { total: this.#episodesTotal, inARow: this.#episodes };
  }

  /** The earliest instant the next dispatch may start (now or earlier: it may start now). */
  readyAt(): number {
    if (this.#rate === undefined) return this.#pausedUntil;
    return Math.max(this.#pausedUntil, this.#nextSlotAt);
  }

  /**
   * Takes the next dispatch slot when it has come, else takes nothing and says no: ask readyAt()
   * when to try again. Call it once for each request sent, right before sending, and for nothing
   * else: it counts them, to tell how much got through when a throttle comes.
   */
  tryDispatch(): boolean {
    const now = this.#clock.now();
    if (now < this.readyAt()) return false;
    if (this.#rate !== undefined) {
      const interval = 1_000 / this.#rate;
      // A slot of slack (2 ms at least, a timer's grain) lets a late timer keep the pace exact.
      const slack = Math.max(interval, 2);
      this.#nextSlotAt = Math.max(this.#nextSlotAt, now - slack) + interval;
    }
    const slot = this.#slot(now);
    this.#accepted[slot] = (this.#accepted[slot] ?? 0) + 1;
    return true;
  }

  /**
   * Holds all dispatch until at least `at` (a pause another process set, such as the queue's):
   * a shorter pause never cuts a longer one.
   */
  pauseUntil(at: number): void {
    if (at <= this.#pausedUntil) return;
    this.#pausedUntil = at;
    // Time paused is no time of answers getting through: slow start resumes where it was.
    this.#grownAt = Math.max(this.#grownAt, at);
    // Dispatch resumes at the pause's end one slot at a time, not with slots saved up before it.
    this.#nextSlotAt = Math.max(this.#nextSlotAt, at);
  }

  /** Feeds an attempt's result: throttled, an answer that got through, or no answer (ignored). */
  observe(result: AttemptResult, sentAt: number): void {
    if (result.kind === 'retry' && result.throttled) {
      this.throttled({ retryAfterMs: result.retryAfterMs, sentAt });
    } else if (result.status !== undefined) {
      this.answered(sentAt);
    }
    // A timeout or a broken connection says nothing about the provider's rate.
  }

  /** A throttled answer (429, or 503 with Retry-After) arrived for a request sent at `sentAt`. */
  throttled(answer: ThrottledAnswer): void {
    const now = this.#clock.now();
    this.#throttledSince ??= now;
    // Sent within the window: it was counted as accepted when it left; it was not.
    this.#slot(now);
    const sentEpoch = Math.floor(answer.sentAt / SLOT_MS);
    const recent = sentEpoch > this.#slotEpoch - SLOTS && sentEpoch <= this.#slotEpoch;
    if (recent) {
      const slot = slotOf(sentEpoch);
      this.#accepted[slot] = (this.#accepted[slot] ?? 0) - 1;
    }
    if (answer.retryAfterMs !== undefined) this.pauseUntil(now + answer.retryAfterMs);
    if (answer.sentAt < this.#episodeAt) {
      // Part of the wave that began the current episode: counted already, but (when it left in
      // the last second) it tells better how much got through, so the cut may go deeper.
      if (recent) this.#cutRate(now);
      return;
    }
    this.#episodeAt = now;
    this.#episodes++;
    this.#episodesTotal++;
    this.#rateBeforeEpisode = this.#rate;
    this.#cutRate(now);
    if (answer.retryAfterMs === undefined) {
      this.pauseUntil(now + throttlePauseMs(this.policy, this.#episodes, this.#random));
    }
  }

  /** Any other answer arrived (the request got through) for a request sent at `sentAt`. */
  answered(sentAt: number): void {
    const now = this.#clock.now();
    this.#throttledSince = undefined;
    // An answer to a request sent before the episode began says nothing about the rate since.
    if (sentAt < this.#episodeAt) return;
    this.#episodes = 0;
    const rate = this.#rate;
    if (rate === undefined) return;
    const sinceGrowth = Math.max(0, now - this.#grownAt);
    this.#grownAt = Math.max(this.#grownAt, now);
    let grown: number;
    if (rate < this.#threshold) {
      const doublings = Math.min(1, sinceGrowth / this.policy.startDoublingMs);
      grown = Math.min(this.#threshold, rate * 2 ** doublings);
    } else {
      // Per answer, a 1/rate-th of a second's growth: the factor applies per second of answers.
      grown = rate * this.policy.rateGrowth ** (1 / rate);
    }
    this.#rate = Math.min(MAX_RATE, grown);
  }

  /**
   * Why the run should stop, once every answer for `maxThrottledMs` has been a throttle (nothing
   * got through): the charges stay pending for a later resume. undefined otherwise.
   */
  stopReason(): string | undefined {
    if (this.#throttledSince === undefined) return undefined;
    const throttledMs = this.#clock.now() - this.#throttledSince;
    if (throttledMs < this.policy.maxThrottledMs) return undefined;
    return `the provider has throttled every request for ${formatDuration(throttledMs)}: stopping, the charges left stay pending`;
  }

  /** The current episode's cut, from what got through in the last second (see rateCut). */
  #cutRate(now: number): void {
    const before = this.#rateBeforeEpisode;
    const accepted = this.#acceptedPerSecond(now);
    const cut = Math.max(
      this.policy.minRate,
      this.policy.rateCut * Math.min(before ?? Number.POSITIVE_INFINITY, accepted),
    );
    if (this.#rate !== undefined && this.#rate <= cut) return;
    this.#rate = cut;
    // Only an episode after answers got through says where the provider's rate is; one in a row
    // keeps the threshold, so recovery from the floor is quick up to half the rate before.
    if (this.#episodes === 1) {
      this.#threshold = before === undefined ? Number.POSITIVE_INFINITY : Math.max(cut, before / 2);
    }
    this.#grownAt = Math.max(this.#grownAt, now);
    // Slots saved up at the old rate are gone: the new one starts now.
    this.#nextSlotAt = Math.max(this.#nextSlotAt, now);
  }

  /**
   * Requests per second sent in the last second and not throttled (yet): what the provider
   * accepted. Counted by sending time, not answering time, because a 429 comes back at once and
   * a charge only after its latency: at the first 429 no charge may have answered yet.
   */
  #acceptedPerSecond(now: number): number {
    this.#slot(now);
    let sum = 0;
    for (const count of this.#accepted) sum += count;
    return Math.max(0, sum) / WINDOW_SECONDS;
  }

  /** The slot of `now`, after clearing the slots that have gone out of the window. */
  #slot(now: number): number {
    const epoch = Math.floor(now / SLOT_MS);
    if (epoch > this.#slotEpoch) {
      const stale = Math.min(SLOTS, epoch - this.#slotEpoch);
      for (let step = 1; step <= stale; step++) this.#accepted[slotOf(epoch - stale + step)] = 0;
      this.#slotEpoch = epoch;
    }
    return slotOf(epoch);
  }
}

function slotOf(epoch: number): number {
  return ((epoch % SLOTS) + SLOTS) % SLOTS;
}
