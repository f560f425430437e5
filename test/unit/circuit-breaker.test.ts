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
    const { breaker: b } = breaker();
    for (let index = 0; index < 9; index++) expect(b.record('failure')).toBe(false);
    expect(b.state).toBe('closed');
    // The 10th failure opens it, and is excused with it.
    expect(b.record('failure')).toBe(true);
    expect(b.state).toBe('open');
  });

  it('does not open when failures are under half, and forgets attempts older than its window', () => {
    const { breaker: b, advance } = breaker();
    for (let index = 0; index < 40; index++) b.record(index % 3 === 0 ? 'failure' : 'success');
    expect(b.state).toBe('closed');
    const { breaker: fresh, advance: later } = breaker();
    for (let index = 0; index < 9; index++) fresh.record('failure');
    later(BREAKER_DEFAULTS.windowMs + 1);
    // The 9 went out of the window: one more failure is one of one, under minSamples.
    expect(fresh.record('failure')).toBe(false);
    expect(fresh.state).toBe('closed');
    for (let index = 0; index < 9; index++) b.record('success');
    advance(BREAKER_DEFAULTS.windowMs + 1);
    // The 9 went out of the window: one more failure is one of one, under minSamples.
    expect(b.record('failure')).toBe(false);
    expect(b.state).toBe('closed');
  });

  it('holds dispatch while open, lets one probe go half-open, closes on its answer', () => {
    const { breaker: b, advance, at } = breaker();
    for (let index = 0; index < 10; index++) b.record('failure');
    const openUntil = b.readyAt();
    // 2 s with jitter drawn at 0.5: 1.5 s.
    expect(openUntil - at()).toBe(1_500);
    expect(b.tryDispatch()).toBe(false);
    advance(1_500);
    expect(b.state).toBe('half-open');
    // Ready now, whatever instant the caller read a moment before.
    expect(b.readyAt()).toBe(Number.NEGATIVE_INFINITY);
    expect(b.tryDispatch()).toBe(true);
    // The probe is out: nothing else goes until it answers.
    expect(b.readyAt()).toBe(Number.POSITIVE_INFINITY);
    expect(b.tryDispatch()).toBe(false);
    expect(b.record('success')).toBe(false);
    expect(b.state).toBe('closed');
    expect(b.snapshot()).toMatchObject({ opened: 1, probes: 1, downSince: undefined });
  });

  it('reopens for twice as long when a probe fails, up to its ceiling, and follows a longer Retry-After', () => {
    const { breaker: b, advance, at } = breaker();
    for (let index = 0; index < 10; index++) b.record('failure');
    const opens: number[] = [];
    for (let round = 0; round < 8; round++) {
      opens.push(b.readyAt() - at());
      advance(b.readyAt() - at());
      expect(b.tryDispatch()).toBe(true);
      expect(b.record('failure')).toBe(true);
    }
    expect(opens).toEqual([1_500, 3_000, 6_000, 12_000, 24_000, 45_000, 45_000, 45_000]);
    advance(b.readyAt() - at());
    b.tryDispatch();
    b.record('failure', 120_000);
    // A Retry-After past the ceiling is held to it (60 s).
    expect(b.readyAt() - at()).toBe(60_000);
  });

  it('gives back a probe that was not sent, and says when to stop after its give-up time', () => {
    const { breaker: b, advance, at } = breaker({ giveUpMs: 10_000 });
    for (let index = 0; index < 10; index++) b.record('failure');
    advance(b.readyAt() - at());
    expect(b.tryDispatch()).toBe(true);
    b.release();
    expect(b.tryDispatch()).toBe(true);
    expect(b.stopReason()).toBeUndefined();
    advance(10_000);
    expect(b.stopReason()).toMatch(/failing .* for 11.5s: stopping, the charges left stay pending/);
  });

  it('refuses settings that make no sense, naming them', () => {
    expect(() => resolveBreakerPolicy({ minSamples: 30 })).toThrow(/minSamples/);
    expect(() => resolveBreakerPolicy({ failureRatio: 0 })).toThrow(/failureRatio/);
    expect(() => resolveBreakerPolicy({ openMs: 120_000 })).toThrow(/maxOpenMs/);
  });
});
