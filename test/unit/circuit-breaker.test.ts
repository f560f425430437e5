import { describe, expect, it } from 'vitest';
import {
  BREAKER_DEFAULTS,
  breakerOutcome,
  CircuitBreaker,
  resolveBreakerPolicy,
} from '../../src/control/circuit-breaker.js';
import { answer } from '../helpers/answers.js';

function breaker(options: Partial<typeof BREAKER_DEFAULTS> = {}) {
  let now = 0;
  const clock = { now: () => now };
  const made = new CircuitBreaker({
    clock,
    random: () => 0.5,
    policy: resolveBreakerPolicy(options),
  });
  return {
    breaker: made,
    /** Sends one attempt now: its ticket (the breaker must let it go). */
    send: () => {
      const ticket = made.tryDispatch();
      if (ticket === undefined) throw new Error('the breaker held the attempt back');
      return ticket;
    },
    advance: (ms: number) => {
      now += ms;
    },
    at: () => now,
  };
}

describe('the circuit breaker', () => {
  it('reads 5xx, resets and timeouts as failures; 429, 409, declines and charges as the provider being up', () => {
    expect(breakerOutcome(answer.unavailable())).toBe('failure');
    expect(breakerOutcome(answer.timedOut())).toBe('failure');
    expect(breakerOutcome(answer.throttled(1_000))).toBe('success');
    expect(breakerOutcome(answer.conflict())).toBe('success');
    expect(breakerOutcome(answer.declined())).toBe('success');
    expect(breakerOutcome(answer.charged())).toBe('success');
  });

  it('opens once half of at least 10 recent attempts failed, and not on a few', () => {
    const { breaker: b, send } = breaker();
    for (let index = 0; index < 9; index++) expect(b.record(send(), 'failure')).toBe(false);
    expect(b.state).toBe('closed');
    // The 10th failure opens it, and is excused with it.
    expect(b.record(send(), 'failure')).toBe(true);
    expect(b.state).toBe('open');
  });

  it('does not open when failures are under half, and forgets attempts older than its window', () => {
    const { breaker: b, send, advance } = breaker();
    for (let index = 0; index < 40; index++) {
      b.record(send(), index % 3 === 0 ? 'failure' : 'success');
    }
    expect(b.state).toBe('closed');
    const { breaker: fresh, send: sendFresh, advance: later } = breaker();
    for (let index = 0; index < 9; index++) fresh.record(sendFresh(), 'failure');
    later(BREAKER_DEFAULTS.windowMs + 1);
    // The 9 went out of the window: one more failure is one of one, under minSamples.
    expect(fresh.record(sendFresh(), 'failure')).toBe(false);
    expect(fresh.state).toBe('closed');
    for (let index = 0; index < 9; index++) b.record(send(), 'success');
    advance(BREAKER_DEFAULTS.windowMs + 1);
    // The 9 went out of the window: one more failure is one of one, under minSamples.
    expect(b.record(send(), 'failure')).toBe(false);
    expect(b.state).toBe('closed');
  });

  it('holds dispatch while open, lets one probe go half-open, closes on its answer', () => {
    const { breaker: b, send, advance, at } = breaker();
    for (let index = 0; index < 10; index++) b.record(send(), 'failure');
    const openUntil = b.readyAt();
    // 2 s with jitter drawn at 0.5: 1.5 s.
    expect(openUntil - at()).toBe(1_500);
    expect(b.tryDispatch()).toBeUndefined();
    advance(1_500);
    expect(b.state).toBe('half-open');
    // Ready now, whatever instant the caller read a moment before.
    expect(b.readyAt()).toBe(Number.NEGATIVE_INFINITY);
    const probe = send();
    expect(probe.probe).toBe(true);
    // The probe is out: nothing else goes until it answers.
    expect(b.readyAt()).toBe(Number.POSITIVE_INFINITY);
    expect(b.tryDispatch()).toBeUndefined();
    expect(b.record(probe, 'success')).toBe(false);
    expect(b.state).toBe('closed');
    expect(b.snapshot()).toMatchObject({ opened: 1, probes: 1, downSince: undefined });
  });

  it('reopens for twice as long when a probe fails, up to its ceiling, and follows a longer Retry-After', () => {
    const { breaker: b, send, advance, at } = breaker();
    for (let index = 0; index < 10; index++) b.record(send(), 'failure');
    const opens: number[] = [];
    for (let round = 0; round < 8; round++) {
      opens.push(b.readyAt() - at());
      advance(b.readyAt() - at());
      expect(b.record(send(), 'failure')).toBe(true);
    }
    expect(opens).toEqual([1_500, 3_000, 6_000, 12_000, 24_000, 45_000, 45_000, 45_000]);
    advance(b.readyAt() - at());
    b.record(send(), 'failure', 120_000);
    // A Retry-After past the ceiling is held to it (60 s).
    expect(b.readyAt() - at()).toBe(60_000);
  });

  it('gives back a probe that was not sent, and says when to stop after its give-up time', () => {
    const { breaker: b, send, advance, at } = breaker({ giveUpMs: 10_000 });
    for (let index = 0; index < 10; index++) b.record(send(), 'failure');
    advance(b.readyAt() - at());
    b.release(send());
    expect(b.tryDispatch()).toMatchObject({ probe: true });
    expect(b.stopReason()).toBeUndefined();
    advance(10_000);
    expect(b.stopReason()).toMatch(/failing .* for 11.5s: stopping, the charges left stay pending/);
  });

  it('is moved only by answers to attempts sent since it last opened: a late success of an earlier one closes nothing', () => {
    const { breaker: b, send, advance, at } = breaker();
    // 20 in flight when the provider goes down: the failures come back first.
    const before = Array.from({ length: 20 }, () => send());
    for (const ticket of before.slice(0, 10)) b.record(ticket, 'failure');
    expect(b.state).toBe('open');
    // Requests the provider took before it went down, answered late: stale news.
    expect(b.record(before[10] as (typeof before)[number], 'success')).toBe(false);
    expect(b.state).toBe('open');
    // A late failure is excused, and a longer Retry-After it brings is followed.
    expect(b.record(before[11] as (typeof before)[number], 'failure', 5_000)).toBe(true);
    expect(b.readyAt() - at()).toBe(5_000);
    advance(5_000);
    const probe = send();
    // Half-open: a late success neither closes it nor frees the probe's place.
    expect(b.record(before[12] as (typeof before)[number], 'success')).toBe(false);
    expect(b.state).toBe('half-open');
    expect(b.tryDispatch()).toBeUndefined();
    // The probe's own answer decides.
    expect(b.record(probe, 'failure')).toBe(true);
    expect(b.state).toBe('open');
    advance(b.readyAt() - at());
    expect(b.record(send(), 'success')).toBe(false);
    expect(b.state).toBe('closed');
    // Closed again: the last of the old attempts time out; excused, and out of the new window.
    for (const ticket of before.slice(13)) expect(b.record(ticket, 'failure')).toBe(true);
    // 8 new failures and the probe's success: 9 samples, under minSamples; with the 7 old, 16.
    for (let index = 0; index < 8; index++) b.record(send(), 'failure');
    expect(b.state).toBe('closed');
    expect(b.snapshot()).toMatchObject({ opened: 2, probes: 2 });
  });

  it('at 1,000 in flight, is not opened by the fast failures of a wave sent together, and is by an outage', () => {
    const { breaker: b, send } = breaker();
    // A cold start: 1,000 sent at once; 2% fail fast (503s) and answer before the others.
    const wave = Array.from({ length: 1_000 }, () => send());
    for (const ticket of wave.slice(0, 20)) expect(b.record(ticket, 'failure')).toBe(false);
    expect(b.state).toBe('closed');
    for (const ticket of wave.slice(20)) b.record(ticket, 'success');
    expect(b.state).toBe('closed');
    // The provider goes down with 1,000 in flight: each failure's place is sent again and fails.
    const inFlight = Array.from({ length: 1_000 }, () => send());
    let failures = 0;
    for (;;) {
      b.record(inFlight.shift() as (typeof inFlight)[number], 'failure');
      failures++;
      if (b.state !== 'closed') break;
      inFlight.push(send());
    }
    // A tenth of what is in flight answered, most of them failed: 80 here (the window held 20
    // successes), not the 10 of a window sized for 20 in flight.
    expect(failures).toBe(80);
  });

  it('refuses settings that make no sense, naming them', () => {
    expect(() => resolveBreakerPolicy({ minSamples: 30 })).toThrow(/minSamples/);
    expect(() => resolveBreakerPolicy({ failureRatio: 0 })).toThrow(/failureRatio/);
    expect(() => resolveBreakerPolicy({ openMs: 120_000 })).toThrow(/maxOpenMs/);
  });
});
