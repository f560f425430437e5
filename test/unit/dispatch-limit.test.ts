import { describe, expect, it } from 'vitest';
import { DispatchLimit, FIRST_ROUND_TRIP, limitOutcome } from '../../src/control/dispatch-limit.js';
import { LimitController } from '../../src/control/limit-controller.js';
import { answer } from '../helpers/answers.js';

const HOUR = 3_600_000;

function clocks() {
  let now = 0;
  return {
    clock: { now: () => now },
    wallClock: () => 1_800_000_000_000 + now,
    advance: (ms: number) => {
      now += ms;
    },
  };
}

describe('DispatchLimit', () => {
  it('is the fixed concurrency without a deadline', () => {
    const { clock } = clocks();
    const limit = new DispatchLimit({
      mode: { kind: 'fixed', concurrency: 64 },
      clock,
      maxConcurrency: 1_000,
      assumedLatencyMs: 1_600,
    });
    limit.replan({ remaining: 10_000, attemptsPerCharge: 1 });
    expect(limit.limit()).toBe(64);
    expect(limit.deadline()).toBeUndefined();
  });

  it('plans 10,000 users at 1.6 s in 1 h at about 5 in flight, at most 8 before the first answer', () => {
    const { clock, wallClock, advance } = clocks();
    const limit = new DispatchLimit({
      mode: { kind: 'fixed', concurrency: 64 },
      clock,
      deadline: { at: wallClock() + HOUR, wallClock },
      maxConcurrency: 1_000,
      assumedLatencyMs: 100,
    });
    limit.replan({ remaining: 10_000, attemptsPerCharge: 1 });
    // The assumed 100 ms would ask for 1; the cap of the first round trip is on the need.
    expect(limit.limit()).toBeLessThanOrEqual(FIRST_ROUND_TRIP);
    const ticket = limit.start();
    advance(1_600);
    limit.complete(ticket, 'answered', 1_600);
    // The first latency re-plans at once.
    limit.replan({ remaining: 9_999, attemptsPerCharge: 1 });
    expect(limit.limit()).toBeGreaterThanOrEqual(5);
    expect(limit.limit()).toBeLessThanOrEqual(6);
    expect(limit.deadline()).toMatchObject({ feasible: true });
  });

  it('says when the deadline cannot be met and runs at the most allowed', () => {
    const { clock, wallClock } = clocks();
    const limit = new DispatchLimit({
      mode: { kind: 'fixed', concurrency: 64 },
      clock,
      deadline: { at: wallClock() + 60_000, wallClock },
      maxConcurrency: 100,
      assumedLatencyMs: 1_600,
    });
    limit.replan({ remaining: 10_000, attemptsPerCharge: 1 });
    expect(limit.deadline()).toMatchObject({ feasible: false, bound: 'max-concurrency' });
  });

  it('with auto, runs at the deadline’s need but never past what the controller found', () => {
    const { clock, wallClock, advance } = clocks();
    const controller = new LimitController({ clock, initial: 20, max: 1_000 });
    const limit = new DispatchLimit({
      mode: { kind: 'auto', controller },
      clock,
      deadline: { at: wallClock() + 60_000, wallClock },
      maxConcurrency: 1_000,
      assumedLatencyMs: 1_000,
    });
    const ticket = limit.start();
    advance(1_000);
    limit.complete(ticket, 'answered', 1_000);
    limit.replan({ remaining: 10_000, attemptsPerCharge: 1 }, true);
    // The need is about 10,000 × 1 s ÷ 53 s ≈ 190; the controller allows 20 now.
    expect(limit.limit()).toBe(controller.limit);
    limit.replan({ remaining: 100, attemptsPerCharge: 1 }, true);
    expect(limit.limit()).toBeLessThanOrEqual(3);
  });

  it('reads refusals for the controller, and nothing from what the breaker excused', () => {
    expect(limitOutcome(answer.throttled(1_000), false)).toBe('refused');
    expect(limitOutcome(answer.unavailable(), false)).toBe('refused');
    expect(limitOutcome(answer.timedOut(), false)).toBe('refused');
    expect(limitOutcome(answer.charged(), false)).toBe('answered');
    expect(limitOutcome(answer.declined(), false)).toBe('answered');
    expect(limitOutcome(answer.unavailable(), true)).toBe('ignored');
  });
});
