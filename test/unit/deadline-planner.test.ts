import { describe, expect, it } from 'vitest';
import { parseDeadline, planConcurrency } from '../../src/control/deadline-planner.js';

const HOUR = 3_600_000;

describe('planConcurrency', () => {
  it('10,000 users at 1.6 s by a deadline an hour away: about 5 in flight, not 1,000', () => {
    const plan = planConcurrency({
      remaining: 10_000,
      latencyMs: 1_600,
      timeLeftMs: HOUR,
      maxConcurrency: 1_000,
    });
    expect(plan.concurrency).toBe(5);
    expect(plan.feasible).toBe(true);
    // 5 in flight at 1.6 s: 3.125 a second, 10,000 in 53 min 20 s, inside the hour.
    expect(plan.expectedMs).toBe(3_200_000);
    expect(plan.expectedMs).toBeLessThan(HOUR);
    expect(plan.fastestMs).toBe(16_000);
  });

  it('plans for the retries it has seen: 1.5 attempts a charge needs half as many again', () => {
    const plan = planConcurrency({
      remaining: 10_000,
      latencyMs: 1_600,
      timeLeftMs: HOUR,
      maxConcurrency: 1_000,
      attemptsPerCharge: 1.5,
    });
    expect(plan.concurrency).toBe(8);
  });

  it('re-plans as time passes: the same work in half the time needs twice the concurrency', () => {
    const early = planConcurrency({
      remaining: 6_000,
      latencyMs: 1_600,
      timeLeftMs: HOUR,
      maxConcurrency: 1_000,
    });
    const late = planConcurrency({
      remaining: 6_000,
      latencyMs: 1_600,
      timeLeftMs: HOUR / 2,
      maxConcurrency: 1_000,
    });
    expect(late.concurrency).toBeGreaterThanOrEqual(2 * early.concurrency - 1);
    expect(late.concurrency).toBeLessThanOrEqual(2 * early.concurrency);
  });

  it('says when the deadline cannot be met within --max-concurrency, and runs at it', () => {
    const plan = planConcurrency({
      remaining: 1_000_000,
      latencyMs: 1_600,
      timeLeftMs: HOUR,
      maxConcurrency: 100,
    });
    expect(plan).toMatchObject({ feasible: false, bound: 'max-concurrency', concurrency: 100 });
    expect(plan.fastestMs).toBe(16_000_000);
  });

  it('says when the rate binds, and keeps only the concurrency the rate can use', () => {
    const plan = planConcurrency({
      remaining: 100_000,
      latencyMs: 1_600,
      timeLeftMs: HOUR,
      maxConcurrency: 1_000,
      rate: 20,
    });
    expect(plan).toMatchObject({ feasible: false, bound: 'rate', concurrency: 32 });
    expect(plan.fastestMs).toBe(5_000_000);
  });

  it('a deadline sooner than one request takes cannot be met, however few the charges', () => {
    expect(
      planConcurrency({ remaining: 3, latencyMs: 1_600, timeLeftMs: 1_000, maxConcurrency: 50 }),
    ).toMatchObject({ feasible: false, bound: 'too-soon', concurrency: 50 });
    // One round trip with its margin fits: feasible at the few it needs.
    expect(
      planConcurrency({ remaining: 3, latencyMs: 1_600, timeLeftMs: 1_800, maxConcurrency: 50 }),
    ).toMatchObject({ feasible: true, concurrency: 3 });
  });

  it('a deadline already passed: infeasible, at the most allowed; nothing left: one is enough', () => {
    expect(
      planConcurrency({ remaining: 10, latencyMs: 100, timeLeftMs: 0, maxConcurrency: 50 }),
    ).toMatchObject({ feasible: false, bound: 'deadline-passed', concurrency: 50 });
    expect(
      planConcurrency({ remaining: 0, latencyMs: 100, timeLeftMs: 0, maxConcurrency: 50 }),
    ).toMatchObject({ feasible: true, concurrency: 1, expectedMs: 0 });
  });

  it('refuses what cannot be planned with, naming it', () => {
    expect(() =>
      planConcurrency({ remaining: 1, latencyMs: 0, timeLeftMs: 1, maxConcurrency: 1 }),
    ).toThrow('`latencyMs`');
  });
});

describe('parseDeadline', () => {
  const now = Date.parse('2026-12-02T07:00:00Z');

  it('reads a duration from now, or a time with its date and offset', () => {
    expect(parseDeadline('45m', now)).toBe(now + 45 * 60_000);
    expect(parseDeadline('2h', now)).toBe(now + 2 * HOUR);
    expect(parseDeadline('2026-12-02T09:00:00+01:00', now)).toBe(
      Date.parse('2026-12-02T08:00:00Z'),
    );
    expect(parseDeadline('2026-12-02T08:00Z', now)).toBe(Date.parse('2026-12-02T08:00:00Z'));
  });

  it('refuses a time without a date or an offset, naming the flag', () => {
    for (const text of ['09:00', '2026-12-02T09:00', 'tomorrow', '45']) {
      expect(() => parseDeadline(text, now)).toThrow(
        /^--deadline: expected a duration such as 45m/,
      );
    }
  });
});
