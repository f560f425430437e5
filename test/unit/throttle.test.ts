import { describe, expect, it } from 'vitest';
import {
  resolveThrottlePolicy,
  THROTTLE_DEFAULTS,
  ThrottleGovernor,
  type ThrottlePolicyOptions,
  throttlePauseMs,
} from '../../src/control/throttle.js';
import { answer } from '../helpers/answers.js';
import { FakeClock } from '../helpers/fake-clock.js';

const policy = resolveThrottlePolicy();

/** A governor on a fake clock whose jitter draws `draw` every time. */
function governor(draw = 0, options: ThrottlePolicyOptions = {}) {
  const clock = new FakeClock(1_000_000);
  const subject = new ThrottleGovernor({
    clock,
    random: () => draw,
    policy: resolveThrottlePolicy(options),
  });
  return { clock, governor: subject };
}

/** Sends `count` requests at once (the governor allowing), returns when they were sent. */
function sendAll(subject: ThrottleGovernor, clock: FakeClock, count: number): number {
  for (let index = 0; index < count; index++) {
    if (!subject.tryDispatch()) throw new Error(`dispatch ${index} refused`);
  }
  return clock.now();
}

describe('resolveThrottlePolicy', () => {
  it('fills in every default', () => {
    expect(resolveThrottlePolicy()).toEqual(THROTTLE_DEFAULTS);
    expect(resolveThrottlePolicy({ maxPauseMs: 60_000, basePauseMs: undefined })).toEqual({
      ...THROTTLE_DEFAULTS,
      maxPauseMs: 60_000,
    });
  });

  it.each([
    [{ basePauseMs: -1 }, /`basePauseMs` to be a finite number >= 0, got -1 \(number\)/],
    [{ maxPauseMs: 500 }, /`maxPauseMs` to be a finite number >= 1000, got 500 \(number\)/],
    [{ rateCut: 0 }, /`rateCut` to be a number > 0 and <= 1, got 0 \(number\)/],
    [{ rateCut: 1.5 }, /`rateCut`.*got 1.5/],
    [{ rateGrowth: 0.9 }, /`rateGrowth` to be a finite number >= 1, got 0.9/],
    [{ startDoublingMs: 0 }, /`startDoublingMs` to be a finite number > 0, got 0/],
    [{ minRate: 0 }, /`minRate` to be a finite number > 0, got 0/],
    [{ maxThrottledMs: Number.POSITIVE_INFINITY }, /`maxThrottledMs` to be a finite number > 0/],
  ])('refuses %j, naming the field and the value', (options, message) => {
    expect(() => resolveThrottlePolicy(options)).toThrow(message);
  });
});

describe('throttlePauseMs', () => {
  it('pauses nothing for a lone episode, then doubles from the base, up to the cap', () => {
    const top = 0.999_999;
    const ceilings = [1, 2, 3, 4, 5, 6, 7, 8, 20].map((episodes) =>
      Math.round(throttlePauseMs(policy, episodes, () => top)),
    );
    expect(ceilings).toEqual([0, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]);
  });

  it('draws within [ceiling / 2, ceiling): it always grows, and is jittered', () => {
    expect(throttlePauseMs(policy, 3, () => 0)).toBe(1_000);
    expect(throttlePauseMs(policy, 3, () => 0.5)).toBe(1_500);
    expect(throttlePauseMs(policy, 3, () => 0.999_999)).toBeLessThan(2_000);
    // The smallest draw of one episode is never below the largest of the episode before.
    for (let episodes = 3; episodes <= 6; episodes++) {
      expect(throttlePauseMs(policy, episodes, () => 0)).toBeGreaterThanOrEqual(
        throttlePauseMs(policy, episodes - 1, () => 0.999_999) - 1,
      );
    }
  });

  it('refuses an episode count that is not a whole number >= 1', () => {
    expect(() => throttlePauseMs(policy, 0, () => 0)).toThrow(
      /`episodes` to be an integer >= 1, got 0 \(number\)/,
    );
  });
});

describe('ThrottleGovernor', () => {
  it('sets no limit before the first throttle', () => {
    const { clock, governor: subject } = governor();
    sendAll(subject, clock, 10_000);
    expect(subject.rate()).toBeUndefined();
    expect(subject.readyAt()).toBe(Number.NEGATIVE_INFINITY);
  });

  it('grows the pause with each episode in a row without Retry-After', () => {
    const { clock, governor: subject } = governor(0);
    const pauses: number[] = [];
    for (let episode = 1; episode <= 5; episode++) {
      clock.advance(Math.max(0, subject.readyAt() - clock.now()));
      const sentAt = sendAll(subject, clock, 1);
      clock.advance(2);
      subject.throttled({ retryAfterMs: undefined, sentAt });
      pauses.push(Math.max(0, subject.pausedUntil() - clock.now()));
    }
    // The draw 0 takes the bottom of each range: half the ceiling.
    expect(pauses).toEqual([0, 500, 1_000, 2_000, 4_000]);
    expect(subject.episodes()).toEqual({ total: 5, inARow: 5 });
  });

  it('counts a wave of 429s to requests already in flight as one episode', () => {
    const { clock, governor: subject } = governor(0);
    const sentAt = sendAll(subject, clock, 64);
    clock.advance(2);
    for (let index = 0; index < 14; index++) subject.throttled({ retryAfterMs: undefined, sentAt });
    expect(subject.episodes()).toEqual({ total: 1, inARow: 1 });
    expect(subject.pausedUntil()).toBeLessThanOrEqual(clock.now());
  });

  it('resets the count on an answer to a request sent since the episode began', () => {
    const { clock, governor: subject } = governor(0);
    let sentAt = sendAll(subject, clock, 1);
    clock.advance(2);
    subject.throttled({ retryAfterMs: undefined, sentAt });
    clock.advance(1_000);
    sentAt = sendAll(subject, clock, 2);
    clock.advance(2);
    subject.throttled({ retryAfterMs: undefined, sentAt });
    expect(subject.episodes().inARow).toBe(2);
    clock.advance(Math.max(0, subject.readyAt() - clock.now()));
    const after = sendAll(subject, clock, 1);
    clock.advance(20);
    subject.answered(after);
    expect(subject.episodes().inARow).toBe(0);
    clock.advance(Math.max(0, subject.readyAt() - clock.now()));
    sentAt = sendAll(subject, clock, 1);
    clock.advance(2);
    subject.throttled({ retryAfterMs: undefined, sentAt });
    // A lone episode again: no pause.
    expect(subject.episodes()).toEqual({ total: 3, inARow: 1 });
    expect(subject.pausedUntil()).toBeLessThanOrEqual(clock.now());
  });

  it('is not reset by a stale answer, to a request sent before the episode began', () => {
    const { clock, governor: subject } = governor(0);
    const early = sendAll(subject, clock, 2);
    clock.advance(2);
    subject.throttled({ retryAfterMs: undefined, sentAt: early });
    clock.advance(20);
    subject.answered(early);
    expect(subject.episodes().inARow).toBe(1);
    const sentAt = sendAll(subject, clock, 1);
    clock.advance(2);
    subject.throttled({ retryAfterMs: undefined, sentAt });
    expect(subject.episodes().inARow).toBe(2);
    expect(subject.pausedUntil() - clock.now()).toBe(500);
  });

  it('keeps the longer pause: a short Retry-After never cuts a long one', () => {
    const { clock, governor: subject } = governor(0);
    const sentAt = sendAll(subject, clock, 3);
    clock.advance(2);
    subject.throttled({ retryAfterMs: 5_000, sentAt });
    const long = subject.pausedUntil();
    expect(long).toBe(clock.now() + 5_000);
    clock.advance(100);
    subject.throttled({ retryAfterMs: 1_000, sentAt });
    expect(subject.pausedUntil()).toBe(long);
    subject.pauseUntil(clock.now() + 10);
    expect(subject.pausedUntil()).toBe(long);
    // A longer one does extend it.
    subject.throttled({ retryAfterMs: 8_000, sentAt });
    expect(subject.pausedUntil()).toBe(clock.now() + 8_000);
  });

  it('keeps a Retry-After pause when a grown pause would be shorter', () => {
    const { clock, governor: subject } = governor(0);
    let sentAt = sendAll(subject, clock, 1);
    clock.advance(2);
    subject.throttled({ retryAfterMs: 60_000, sentAt });
    const long = subject.pausedUntil();
    clock.advance(10);
    sentAt = clock.now();
    clock.advance(2);
    // Sent meanwhile by another path (a request the engine had already let go): a new episode.
    subject.throttled({ retryAfterMs: undefined, sentAt });
    expect(subject.episodes().inARow).toBe(2);
    expect(subject.pausedUntil()).toBe(long);
  });

  it('holds every dispatch during a pause', () => {
    const { clock, governor: subject } = governor(0);
    const sentAt = sendAll(subject, clock, 10);
    clock.advance(2);
    subject.throttled({ retryAfterMs: 1_000, sentAt });
    for (let step = 0; step < 99; step++) {
      expect(subject.tryDispatch()).toBe(false);
      clock.advance(10);
    }
    expect(subject.readyAt()).toBe(subject.pausedUntil());
  });

  it('learns the rate from what got through: 0.9 × the requests of the last second not throttled', () => {
    const { clock, governor: subject } = governor(0);
    const sentAt = sendAll(subject, clock, 64);
    clock.advance(2);
    for (let index = 0; index < 14; index++) subject.throttled({ retryAfterMs: 1_000, sentAt });
    expect(subject.rate()).toBeCloseTo(0.9 * 50);
  });

  it('spreads dispatch after a pause at the learned rate instead of one wave', () => {
    const { clock, governor: subject } = governor(0);
    const sentAt = sendAll(subject, clock, 64);
    clock.advance(2);
    for (let index = 0; index < 14; index++) subject.throttled({ retryAfterMs: 1_000, sentAt });
    const end = subject.pausedUntil();
    clock.advance(end - clock.now());
    // 64 charges are waiting: every millisecond, let go as many as the governor allows.
    const starts: number[] = [];
    for (let ms = 0; ms < 500; ms++) {
      while (starts.length < 64 && subject.tryDispatch()) starts.push(clock.now() - end);
      clock.advance(1);
    }
    // 45/s: one every 22.2 ms (on this 1 ms grain, at the first millisecond past each slot), the
    // first at the pause's end, none before.
    expect(starts.slice(0, 5)).toEqual([0, 23, 45, 67, 89]);
    expect(starts.filter((at) => at < 100)).toHaveLength(5);
    expect(starts.length).toBeLessThanOrEqual(23);
  });

  it('tells when the next dispatch may start, and does not take a slot when refused', () => {
    const { clock, governor: subject } = governor(0);
    const sentAt = sendAll(subject, clock, 60);
    clock.advance(2);
    subject.throttled({ retryAfterMs: undefined, sentAt });
    const rate = subject.rate() as number;
    expect(subject.tryDispatch()).toBe(true);
    const next = subject.readyAt();
    expect(next - clock.now()).toBeCloseTo(1_000 / rate);
    expect(subject.tryDispatch()).toBe(false);
    expect(subject.readyAt()).toBe(next);
    clock.advance(next - clock.now());
    expect(subject.tryDispatch()).toBe(true);
  });

  it('grows the rate while answers get through: doubling every 100 ms at first, then slowly', () => {
    const { clock, governor: subject } = governor(0);
    let sentAt = sendAll(subject, clock, 20);
    clock.advance(2);
    subject.throttled({ retryAfterMs: undefined, sentAt });
    const start = subject.rate() as number;
    expect(start).toBeCloseTo(0.9 * 19);
    // Slow start: answers every 10 ms double the rate in 100 ms, twice in 200 ms.
    sentAt = clock.now();
    for (let step = 0; step < 10; step++) {
      clock.advance(10);
      subject.answered(sentAt);
    }
    expect(subject.rate()).toBeCloseTo(2 * start);
    for (let step = 0; step < 10; step++) {
      clock.advance(10);
      subject.answered(sentAt);
    }
    expect(subject.rate()).toBeCloseTo(4 * start);
    // At most one doubling per answer, however long since the last one.
    clock.advance(5_000);
    subject.answered(sentAt);
    expect(subject.rate()).toBeCloseTo(8 * start);
  });

  it('after an episode that follows answers getting through, grows by rateGrowth per second', () => {
    const { clock, governor: subject } = governor(0);
    let sentAt = sendAll(subject, clock, 40);
    clock.advance(2);
    subject.throttled({ retryAfterMs: undefined, sentAt });
    // 0.9 × 39: slow start would follow, up to wherever the next episode comes.
    expect(subject.rate()).toBeCloseTo(35.1);
    subject.answered(clock.now());
    sentAt = clock.now();
    subject.throttled({ retryAfterMs: undefined, sentAt });
    // 0.9 × min(35.1, 39): this rate is where the provider is; from here growth is slow.
    const cut = subject.rate() as number;
    expect(cut).toBeCloseTo(0.9 * 35.1);
    sentAt = clock.now();
    for (let index = 0; index < Math.round(cut); index++) {
      clock.advance(1_000 / cut);
      subject.answered(sentAt);
    }
    expect((subject.rate() as number) / cut).toBeGreaterThan(1.045);
    expect((subject.rate() as number) / cut).toBeLessThan(1.055);
  });

  it('after an outage cut to the floor, slow-starts back to half the rate before, then slowly', () => {
    const { clock, governor: subject } = governor(0);
    let sentAt = sendAll(subject, clock, 40);
    clock.advance(2);
    subject.throttled({ retryAfterMs: undefined, sentAt });
    subject.answered(clock.now());
    expect(subject.rate()).toBeCloseTo(35.1);
    // A second later nothing gets through any more.
    clock.advance(1_100);
    sentAt = sendAll(subject, clock, 1);
    clock.advance(2);
    subject.throttled({ retryAfterMs: undefined, sentAt });
    expect(subject.rate()).toBe(1);
    sentAt = clock.now();
    const rates: number[] = [];
    for (let step = 0; step < 8; step++) {
      clock.advance(100);
      subject.answered(sentAt);
      rates.push(Number((subject.rate() as number).toFixed(2)));
    }
    // 1.05^(1/17.55) per answer once past half of 35.1: 0.28% each.
    expect(rates).toEqual([2, 4, 8, 16, 17.55, 17.6, 17.65, 17.7]);
  });

  it('does not count time paused as time of slow start', () => {
    const { clock, governor: subject } = governor(0);
    const sentAt = sendAll(subject, clock, 20);
    clock.advance(2);
    subject.throttled({ retryAfterMs: 1_000, sentAt });
    const start = subject.rate() as number;
    clock.advance(subject.pausedUntil() - clock.now());
    const after = sendAll(subject, clock, 1);
    clock.advance(20);
    subject.answered(after);
    // 20 ms of answers since the pause ended: 2^(20/100), not a doubling for the pause.
    expect(subject.rate()).toBeCloseTo(start * 2 ** 0.2);
  });

  it('cuts to the floor when nothing got through, and never below it', () => {
    const { clock, governor: subject } = governor(0, { minRate: 2 });
    const sentAt = sendAll(subject, clock, 30);
    clock.advance(2);
    for (let index = 0; index < 30; index++) subject.throttled({ retryAfterMs: undefined, sentAt });
    expect(subject.rate()).toBe(2);
  });

  it('ignores an attempt without an answer, and resets on any answer with a status', () => {
    const { clock, governor: subject } = governor(0);
    let sentAt = sendAll(subject, clock, 1);
    clock.advance(2);
    subject.observe(answer.throttled(), sentAt);
    expect(subject.episodes().inARow).toBe(1);
    sentAt = clock.now();
    subject.observe(answer.timedOut(), sentAt);
    expect(subject.episodes().inARow).toBe(1);
    subject.observe({ kind: 'declined', status: 402, reason: 'card_declined' }, sentAt);
    expect(subject.episodes().inARow).toBe(0);
    subject.observe(answer.throttled(3_000), clock.now());
    expect(subject.pausedUntil()).toBe(clock.now() + 3_000);
  });

  it('says the run should stop once every answer for maxThrottledMs was a throttle', () => {
    const { clock, governor: subject } = governor(0);
    subject.throttled({ retryAfterMs: undefined, sentAt: clock.now() });
    clock.advance(599_999);
    subject.throttled({ retryAfterMs: undefined, sentAt: clock.now() });
    expect(subject.stopReason()).toBeUndefined();
    clock.advance(1);
    expect(subject.stopReason()).toBe(
      'the provider has throttled every request for 10m 00s: stopping, the charges left stay pending',
    );
    // One answer that gets through, even a stale one, starts the count again.
    subject.answered(0);
    expect(subject.stopReason()).toBeUndefined();
  });
});
