import type { Clock } from '../domain/clock.js';
import { describeValue } from '../domain/errors.js';

/**
 * `--concurrency auto`: finds how many requests the provider takes at once from what it answers,
 * and follows it as it changes. Pure and clock-injected: the engines tell it when a request
 * starts and how it ended; it never sends, sleeps or reads a clock of its own.
 *
 * Built for slow charges (1.6 s) and few completions, where the known limiters stall (Netflix's
 * needs 10 completions a window before it moves; Envoy's pins concurrency to re-measure its
 * minimum latency). Here:
 *
 * - A **window** is one round trip: it closes at the first answer 0.8 smoothed latencies after
 *   the limit last changed (with at least half the limit's worth of answers, at most 8),
 *   counting only requests sent since then: those sent under an older limit say nothing of
 *   this one; in a cold start, not before half the requests its limit let go have answered
 *   (against a provider that queues, the first answers are those that found a free slot). So
 *   the limit moves about once per round trip, whatever the rate: at 5 in flight and 1.6 s,
 *   every 1.6 s on about 5 answers.
 * - The **baseline** is the no-load latency, measured passively: the 10th percentile of the
 *   last 64 window medians (never by pinning concurrency down).
 * - **Refusals** (429, 503, a timeout) of requests sent since the last change cut when they
 *   are load, not the provider's background errors: a burst (more than 5% of what was sent
 *   since the change, or of the limit while fewer were sent, three at least; two at a limit of
 *   10 or less) cuts at once; refusals at more in flight than anything answered since the
 *   change (two at least, as many as a burst) cut at the window's end. The others in flight
 *   when it was sent were taken, so the capacity is about that many, and the limit goes to 95%
 *   of it (10% down at least). Refusals of requests sent before a cut are not counted, and
 *   however many come, a round trip halves the limit at most: a burst cannot collapse it. A
 *   lone refusal is noise: with every one read as load, 1% of random 503s held a capacity of
 *   300 at 8 in flight.
 * - **Queueing**: a window median over `tolerance` × the baseline twice in a row (or over 1.5×
 *   once) means requests wait at the provider: in flight ÷ (median ÷ baseline) is what it
 *   processes at once, and the limit goes there (by half at most; a cold start's first cut
 *   not under 95% of the limit it last grew from, which read flat).
 * - **Growth**, in windows where the limit was used (in flight reached 80% of it) and latency is
 *   not rising, while no capacity is known (a cold start, from 10): double four times, then
 *   half again a window (a limit just past the capacity reads flat, and doubling from there
 *   overshoots it twice), a quarter when the window's slowest tenth waits (past the tolerance of
 *   the least seen) though its median does not: 10 → 1,000 in 9 round trips;
 *   below 90% of the estimate, straight back to 95% of it; near it, +1% a window; at it, held
 *   three windows and until 300 answers came since the last cut for refusals (so the burst a
 *   probe may cost is at most 1% of them), then, on windows whose median is within 5% of the
 *   baseline (a queue forming holds it), probes past it of +0.5%, +1%, +2%, +4% a window (no
 *   more: a probe is judged a window late), so a provider that doubled its capacity is found in
 *   about twenty-five round trips.
 */
export interface LimitControllerOptions {
  readonly clock: Clock;
  /** Fewest requests in flight it goes down to. Default 1. */
  readonly min?: number | undefined;
  /** Most requests in flight it goes up to. Default 1,000. */
  readonly max?: number | undefined;
  /** Where a cold start begins. Default 10 (TCP's initial window), within `min` and `max`. */
  readonly initial?: number | undefined;
  /**
   * The provider's capacity as a controller before this one estimated it (a decider taking over
   * from one that died): growth goes back to it, not past it by doubling. Default: unknown.
   */
  readonly initialCapacity?: number | undefined;
  /** A window median over baseline × this (twice in a row) is queueing. Default 1.15. */
  readonly tolerance?: number | undefined;
}

/** How one request ended, as the controller reads it. */
export type LimitOutcome =
  /** Answered (charged, declined, any answer that is not a refusal). */
  | 'answered'
  /** Refused for load or not answered in time: 429, 503, a timeout. */
  | 'refused'
  /** Says nothing of the provider's load (a connection refused before sending, say). */
  | 'ignored';

/** What the controller knows now: for progress, `status` and the summary. */
export interface LimitSnapshot {
  readonly limit: number;
  /** The no-load latency it measured, in ms; undefined before the first window. */
  readonly baselineMs: number | undefined;
  /** The latest window's median latency, in ms. */
  readonly latencyMs: number | undefined;
  /** The provider's capacity as last estimated from a refusal or queueing; undefined before. */
  readonly capacity: number | undefined;
  readonly inFlight: number;
  /** Windows closed so far (round trips observed). */
  readonly windows: number;
  /** Why the limit last changed. */
  readonly reason: 'start' | 'growth' | 'refusals' | 'queueing';
}

/** Windows whose medians the baseline is the lowest of. */
export const BASELINE_WINDOWS = 64;
const CUT_MARGIN = 0.95;
const MAX_CUT = 0.5;
const MIN_CUT = 0.9;
const UTILIZED = 0.8;
const NEAR = 0.9;
/**
 * A window closes this share of a smoothed latency after it began: the answers to what was sent
 * as it began have come (their latencies vary), so a window is one round trip, not two.
 */
const WINDOW = 0.8;
/** Windows of a cold start whose baseline is too rough to hold growth on a small rise. */
const ROUGH_BASELINE = 4;
/** Growth a window between 90% and 100% of the capacity estimate. */
const NEAR_STEP = 0.01;
/** Clean windows at the estimate before probing past it. */
const PROBE_DELAY = 3;
/** Answers since the last cut for refusals before a probe: a probe's refusals (a burst, 3) are at most 1% of them. */
const PROBE_BUDGET = 300;
/** Refusals past what was answered that say load at a window's end: one may be noise. */
const PAST_MIN = 2;
/** A limit this small or smaller needs one refusal fewer for a burst. */
const SMALL_LIMIT = 10;
/** Refusals in a burst, at least: fewer are a provider's noise, whatever the share. */
const BURST_MIN = 3;
/** Refusals past this share of what was sent since the limit changed (of the limit at least) are a burst: load. */
const BURST_SHARE = 0.05;
/** The first probe past the estimate; each clean window after it doubles the step. */
const PROBE_STEP = 0.005;
/**
 * A probe past the estimate only on a window whose median is within a third of the tolerance
 * of the baseline (+5%): past the capacity a queue forms, and probing on up to +7.5% of latency
 * held requests up to 1.4× the no-load latency in each probe's round trips.
 */
const PROBE_LEVEL = 1 / 3;
/**
 * Doublings of the probe's step at most: +4% a window. A window reads the queue its limit's
 * requests joined, which the limit before built, so a probe is judged a window late; with the
 * step doubling on to +64%, a capacity of 300 was probed to 500–800 in flight (p95 1.9× the
 * no-load latency against the mock provider), where +4% overshoots it by some 10%.
 */
const PROBE_DOUBLINGS = 3;
/** Where a cold start begins: 10 at once, as TCP's initial window (3 round trips sooner than 1). */
const COLD_START = 10;
/**
 * A cold start's window waits for answers to this share of the wave its limit let go (sent
 * before the first answer came): against a provider that queues, the first answers are of the
 * requests that found a free slot, and the queued ones answer late. On its first 8 answers a
 * doubling past a capacity of 300 read clean twice, 256 → 512 → 1,024 in flight.
 */
const WAVE_SHARE = 0.5;
/**
 * A cold start's step when its window's slowest tenth waited (past the tolerance) though its
 * median did not: the limit is just past the capacity, the queue a few requests long, and a
 * doubling from there (to twice the capacity) held every request past it twice as long.
 */
const COLD_STEP = 1.25;
/**
 * A cold start's step on a flat window past its first four: half again, not double. A limit
 * just past the capacity reads flat (a queue of 20 against a capacity of 300 is under a
 * window's noise), and a doubling from there held 340 requests waiting in most benchmark runs;
 * half again overshoots by half at most, for a round trip more.
 */
const COLD_LATE_STEP = 1.5;
/** Doublings a cold start makes before it grows by half: 10 → 160. */
const COLD_DOUBLINGS = 4;

function medianOf(values: number[]): number {
  values.sort((a, b) => a - b);
  const middle = values.length >> 1;
  return values.length % 2 === 1
    ? (values[middle] as number)
    : ((values[middle - 1] as number) + (values[middle] as number)) / 2;
}

export class LimitController {
  readonly min: number;
  readonly max: number;
  readonly tolerance: number;
  readonly #clock: Clock;
  #limit: number;
  /** The limit before rounding: small steps add up (+1% of 5 a window is a 6 in time). */
  #value: number;
  #inFlight = 0;
  /** When the limit last changed: a window counts only requests sent since. */
  #epoch: number;
  #srttMs: number | undefined;
  #latencies: number[] = [];
  #inFlightSum = 0;
  #inFlightMax = 0;
  #medians: number[] = [];
  #capacity: number | undefined;
  /** Clean windows in a row at or past the capacity estimate: how hard to probe past it. */
  #probeRun = 0;
  /** Probes made past the estimate since the last cut: each one twice the step of the last. */
  #probes = 0;
  /** Answers since the last refusal: a probe past the estimate is paid for by 1% of them. */
  #answeredSinceRefusal = 0;
  #windows = 0;
  /** The first refusal cut of the latest round trip, and the limit before it: one halving a round trip at most. */
  #episodeAt = Number.NEGATIVE_INFINITY;
  #episodeValue = 0;
  /**
   * The least slowest tenth of a window so far: the no-load tail (a provider's own spread). A
   * cold start doubles while a window's tail stays within the tolerance of it.
   */
  #tailBaseline: number | undefined;
  /** The capacity estimate before the last queueing cut, offered back once. */
  #recall: number | undefined;
  /** The estimate is a recall's: a queueing cut now keeps what it finds. */
  #recalled = false;
  /** Why the estimate was last cut: after a queue, growth goes back to it, not to 95% of it. */
  #lastCut: 'refusals' | 'queueing' | undefined;
  /** Steps a cold start made: the first few double. */
  #coldSteps = 0;
  /** The limit a cold start last grew from: a window at it read flat. */
  #coldFrom = 0;
  /** Whether the last window's median was over the tolerance too. */
  #wasQueueing = false;
  #latencyMs: number | undefined;
  #reason: LimitSnapshot['reason'] = 'start';
  /** Requests sent since the limit last changed. */
  #sent = 0;
  /** Requests sent since the limit changed when the first of them was answered: its wave. */
  #wave: number | undefined;
  /** In flight when each refused request of this window was sent (sent since the change). */
  #refusedLevels: number[] = [];
  /** Most in flight any answered request sent since the change was sent at. */
  #answeredLevel = 0;

  constructor(options: LimitControllerOptions) {
    this.#clock = options.clock;
    this.min = options.min ?? 1;
    this.max = options.max ?? 1_000;
    this.tolerance = options.tolerance ?? 1.15;
    for (const [name, value] of [
      ['min', this.min],
      ['max', this.max],
    ] as const) {
      if (!(Number.isSafeInteger(value) && value >= 1)) {
        throw new RangeError(
          `Expected \`${name}\` to be a whole number >= 1, got ${describeValue(value)}`,
        );
      }
    }
    if (this.max < this.min) {
      throw new RangeError(`Expected \`max\` (${this.max}) to be >= \`min\` (${this.min})`);
    }
    if (!(Number.isFinite(this.tolerance) && this.tolerance > 1)) {
      throw new RangeError(
        `Expected \`tolerance\` to be a number > 1, got ${describeValue(this.tolerance)}`,
      );
    }
    this.#limit = this.#clamp(options.initial ?? COLD_START);
    this.#value = this.#limit;
    const known = options.initialCapacity;
    if (known !== undefined && Number.isFinite(known) && known >= 1) this.#capacity = known;
    this.#epoch = this.#clock.now();
  }

  /** Requests it allows in flight now. */
  get limit(): number {
    return this.#limit;
  }

  /** A request is sent: returns what `complete` takes back. */
  start(): LimitTicket {
    this.#inFlight++;
    this.#sent++;
    return { startedAt: this.#clock.now(), inFlight: this.#inFlight };
  }

  /** The request of `ticket` ended as `outcome`. */
  complete(ticket: LimitTicket, outcome: LimitOutcome): void {
    this.#inFlight = Math.max(0, this.#inFlight - 1);
    const now = this.#clock.now();
    this.#ended(ticket, outcome, now - ticket.startedAt, now);
  }

  /**
   * A request another process sent and saw end, told after the fact (the distributed engine's
   * decider replays its workers' attempts): `ticket` as that process saw it (sent at, in flight
   * then, across the queue), `latencyMs` as it measured it. Counts as sent since the limit
   * changed when it was sent since; in flight is the caller's to tell.
   */
  observe(ticket: LimitTicket, outcome: LimitOutcome, latencyMs: number): void {
    if (ticket.startedAt >= this.#epoch) this.#sent++;
    this.#ended(ticket, outcome, latencyMs, this.#clock.now());
  }

  #ended(ticket: LimitTicket, outcome: LimitOutcome, latency: number, now: number): void {
    if (outcome === 'answered') {
      this.#srttMs = this.#srttMs === undefined ? latency : this.#srttMs * 0.875 + latency * 0.125;
    }
    // Sent under an older limit, or saying nothing: not this window's evidence.
    if (outcome === 'ignored' || ticket.startedAt < this.#epoch) return;
    if (outcome === 'refused') {
      // A provider errs now and then whatever its load (a 503, a lost answer): one refusal is
      // not a capacity. Load shows as a burst (a request in flight past the capacity is refused,
      // sent again and refused again: more than 5% of what was sent since the limit
      // changed, or of the limit while fewer were sent, and three at least), cut at once; or at the
      // window's end as a refusal of a request sent at more in flight than any answered.
      this.#refusedLevels.push(ticket.inFlight);
      if (this.#isBurst(this.#refusedLevels.length)) {
        this.#loadCut(ticket.inFlight, now);
      }
      return;
    }
    this.#answeredSinceRefusal++;
    this.#wave ??= this.#sent;
    this.#latencies.push(latency);
    this.#inFlightSum += ticket.inFlight;
    this.#inFlightMax = Math.max(this.#inFlightMax, ticket.inFlight);
    this.#answeredLevel = Math.max(this.#answeredLevel, ticket.inFlight);
    if (
      now - this.#epoch >= (this.#srttMs ?? 0) * WINDOW &&
      this.#latencies.length >= this.#needed()
    ) {
      this.#close(now);
    }
  }

  snapshot(): LimitSnapshot {
    return {
      limit: this.#limit,
      baselineMs: this.#baseline(),
      latencyMs: this.#latencyMs,
      capacity: this.#capacity,
      inFlight: this.#inFlight,
      windows: this.#windows,
      reason: this.#reason,
    };
  }

  /**
   * Samples a window needs: half the limit's worth, enough for a median, 1 at a limit of 1; in
   * a cold start, the answers to half its wave too.
   */
  #needed(): number {
    const least = Math.max(1, Math.min(Math.ceil(this.#limit / 2), 8));
    if (this.#capacity !== undefined) return least;
    return Math.max(least, Math.ceil((this.#wave ?? 0) * WAVE_SHARE));
  }

  /**
   * Whether so many refusals since the limit changed are load, not noise: more than 5% of what
   * was sent (of the limit while fewer were sent), and three at least (two at a limit of 10 or
   * less, where a probe past the capacity is one request and three refusals would cost 1% of
   * the answers between probes).
   */
  #isBurst(refusals: number): boolean {
    const least = this.#limit <= SMALL_LIMIT ? BURST_MIN - 1 : BURST_MIN;
    return refusals >= least && refusals > BURST_SHARE * Math.max(this.#sent, this.#limit);
  }

  /**
   * Refusals that say the provider is full: the others in flight when it was sent were taken,
   * so the capacity is about that many. Refusals of requests sent before this cut are ignored
   * (a new limit starts a new epoch), so a burst of them cuts once.
   */
  #loadCut(level: number, now: number): void {
    this.#answeredSinceRefusal = 0;
    this.#cut(Math.max(this.min, level - 1), 'refusals', now);
    this.#newEvidence(now);
  }

  #close(now: number): void {
    // Refused at more in flight than anything answered since the limit changed, more than noise
    // would (as a burst): the step up went past the capacity. Refused at no more than was
    // answered, or a few: the provider's noise.
    const past = this.#refusedLevels.filter((level) => level > this.#answeredLevel);
    this.#refusedLevels = [];
    if (past.length >= PAST_MIN && this.#isBurst(past.length)) {
      this.#loadCut(Math.min(...past), now);
      return;
    }
    const answered = this.#latencies.length;
    const meanInFlight = this.#inFlightSum / answered;
    const utilized = this.#inFlightMax >= this.#limit * UTILIZED;
    const median = medianOf(this.#latencies);
    // Sorted by medianOf: the slowest tenth of the window's answers.
    const slow = this.#latencies[Math.floor((answered - 1) * 0.9)] as number;
    this.#medians.push(median);
    if (this.#medians.length > BASELINE_WINDOWS) this.#medians.shift();
    this.#latencyMs = median;
    const baseline = this.#baseline() as number;
    this.#windows++;
    const ratio = median / baseline;
    // Over the tolerance twice in a row (or by half): one window of a few noisy answers is not
    // a queue.
    const queueing = ratio > this.tolerance && (this.#wasQueueing || ratio > 1.5);
    this.#wasQueueing = ratio > this.tolerance;
    if (queueing && meanInFlight >= this.min) this.#cut(meanInFlight / ratio, 'queueing', now);
    // Near a known capacity with latency already rising (past half the tolerance): hold, do
    // not push it further. A cold start doubles on: its few first answers make a rough baseline.
    else if (
      utilized &&
      ((this.#capacity === undefined && this.#windows <= ROUGH_BASELINE) ||
        ratio <= 1 + (this.tolerance - 1) / 2)
    ) {
      this.#grow(
        now,
        slow <= this.tolerance * Math.max(baseline, this.#tailBaseline ?? baseline),
        ratio <= 1 + (this.tolerance - 1) * PROBE_LEVEL,
      );
    }
    this.#tailBaseline = Math.min(this.#tailBaseline ?? slow, slow);
    this.#latencies = [];
    this.#inFlightSum = 0;
    this.#inFlightMax = 0;
  }

  /** Down to `capacity` (what the provider took), less a margin after refusals. */
  #cut(capacity: number, reason: 'refusals' | 'queueing', now: number): void {
    const target = reason === 'refusals' ? capacity * CUT_MARGIN : capacity;
    let floor = this.#value * MAX_CUT;
    // A cold start's first queue: the limit it grew from read flat, so the provider took about
    // that many; in flight ÷ the latency's rise reads low while the queue forms.
    if (reason === 'queueing' && this.#capacity === undefined) {
      floor = Math.max(floor, this.#coldFrom * CUT_MARGIN);
    }
    if (reason === 'refusals') {
      if (now - this.#episodeAt > (this.#srttMs ?? 0)) {
        this.#episodeAt = now;
        this.#episodeValue = this.#value;
      }
      // However many refusals a round trip brings, it halves the limit at most.
      floor = Math.max(floor, this.#episodeValue * MAX_CUT);
    }
    const ceiling = reason === 'refusals' ? this.#value * MIN_CUT : this.#value;
    // A queue may be the client's own (a pause of its event loop reads as one): the estimate
    // before it is offered back once, on the first level window after; not after a recall.
    const before = this.#capacity;
    this.#recall =
      reason === 'queueing' && !this.#recalled && before !== undefined && before > capacity
        ? before
        : undefined;
    this.#recalled = false;
    this.#lastCut = reason;
    this.#capacity = Math.max(this.min, capacity);
    this.#set(Math.min(ceiling, Math.max(floor, target)), now);
    this.#probeRun = 0;
    this.#probes = 0;
    this.#wasQueueing = false;
    this.#reason = reason;
  }

  /**
   * `flat`: the window's slowest answers did not wait either (a cold start doubles only then);
   * `level`: its median is within 5% of the baseline (a probe, or a recall, only then).
   */
  #grow(now: number, flat: boolean, level: boolean): void {
    const capacity = this.#capacity;
    const value = this.#value;
    if (capacity === undefined) this.#coldFrom = value;
    let next: number;
    if (capacity === undefined) {
      const step = !flat ? COLD_STEP : this.#coldSteps < COLD_DOUBLINGS ? 2 : COLD_LATE_STEP;
      this.#coldSteps++;
      next = Math.max(value * step, value + 1);
    } else if (level && this.#recall !== undefined) {
      next = Math.max(value, this.#recall * CUT_MARGIN);
      this.#capacity = this.#recall;
      this.#recall = undefined;
      this.#recalled = true;
    } else if (value < capacity * NEAR) {
      // Back to the estimate, less the margin a refusal asks (a queue's estimate is what the
      // provider processed at once, no more).
      next = this.#lastCut === 'queueing' ? capacity : capacity * CUT_MARGIN;
    } else if (value < capacity) next = value * (1 + NEAR_STEP);
    else {
      // At the estimate: hold a few windows, then probe past it, harder each clean window.
      this.#probeRun++;
      // A probe may cost a refusal: made only once enough answers came since the last to pay.
      if (level && this.#probeRun > PROBE_DELAY && this.#answeredSinceRefusal >= PROBE_BUDGET) {
        next = value * (1 + PROBE_STEP * 2 ** Math.min(this.#probes, PROBE_DOUBLINGS));
        this.#probes++;
        this.#recalled = false;
      } else {
        next = value;
      }
    }
    this.#set(next, now);
    this.#reason = 'growth';
  }

  /** A new limit starts a new window: the evidence gathered was about the old one. */
  #set(value: number, now: number): void {
    this.#value = Math.min(this.max, Math.max(this.min, value));
    const limit = this.#clamp(this.#value);
    const changed = limit !== this.#limit;
    this.#limit = limit;
    if (changed) this.#newEvidence(now);
  }

  /** From now on only requests sent from now count (a new limit, or a cut at the lowest). */
  #newEvidence(now: number): void {
    this.#epoch = now;
    this.#latencies = [];
    this.#inFlightSum = 0;
    this.#inFlightMax = 0;
    this.#refusedLevels = [];
    this.#answeredLevel = 0;
    this.#sent = 0;
    this.#wave = undefined;
  }

  /** The no-load latency: a low (10th) percentile of the recent window medians. */
  #baseline(): number | undefined {
    if (this.#medians.length === 0) return undefined;
    const sorted = [...this.#medians].sort((a, b) => a - b);
    return sorted[Math.floor((sorted.length - 1) / 10)];
  }

  #clamp(value: number): number {
    return Math.min(this.max, Math.max(this.min, Math.round(value)));
  }
}

/** What `start` hands out and `complete` takes back. */
export interface LimitTicket {
  readonly startedAt: number;
  /** Requests in flight once this one was sent. */
  readonly inFlight: number;
}
