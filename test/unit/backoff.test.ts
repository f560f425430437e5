import { describe, expect, it } from 'vitest';
import { backoffDelayMs, checkBackoffOptions } from '../../src/control/backoff.js';

const options = { baseDelayMs: 500, maxDelayMs: 30_000 };
const almostOne = 1 - Number.EPSILON;

describe('backoffDelayMs', () => {
  it('draws the first delay from [0, base)', () => {
    expect(backoffDelayMs(1, options, () => 0)).toBe(0);
    expect(backoffDelayMs(1, options, () => 0.5)).toBe(250);
    expect(backoffDelayMs(1, options, () => almostOne)).toBeLessThan(500);
    expect(backoffDelayMs(1, options, () => almostOne)).toBeGreaterThan(499.99);
  });

  it('doubles the ceiling with each attempt', () => {
    const ceilings = [1, 2, 3, 4, 5, 6].map((attempt) => backoffDelayMs(attempt, options, () => 1));
    expect(ceilings).toEqual([500, 1_000, 2_000, 4_000, 8_000, 16_000]);
  });

  it('never goes past the cap, however many attempts', () => {
    expect(backoffDelayMs(7, options, () => 1)).toBe(30_000);
    expect(backoffDelayMs(50, options, () => 1)).toBe(30_000);
    expect(backoffDelayMs(5_000, options, () => 1)).toBe(30_000);
    expect(backoffDelayMs(5_000, options, () => 0.25)).toBe(7_500);
  });

  it('uses the full jitter range, down to 0, at every attempt', () => {
    for (const attempt of [1, 3, 10]) {
      expect(backoffDelayMs(attempt, options, () => 0)).toBe(0);
    }
  });

  it('refuses an attempt number below 1 or fractional', () => {
    expect(() => backoffDelayMs(0, options, Math.random)).toThrow(
      'Expected `attempt` to be an integer >= 1, got 0 (number)',
    );
    expect(() => backoffDelayMs(1.5, options, Math.random)).toThrow(/`attempt`/);
  });
});

describe('checkBackoffOptions', () => {
  it('names the field and the value received', () => {
    expect(() => checkBackoffOptions({ baseDelayMs: -1, maxDelayMs: 10 })).toThrow(
      'Expected `baseDelayMs` to be a finite number >= 0, got -1 (number)',
    );
    expect(() => checkBackoffOptions({ baseDelayMs: 500, maxDelayMs: 100 })).toThrow(
      'Expected `maxDelayMs` to be a finite number >= baseDelayMs (500), got 100 (number)',
    );
    expect(() => checkBackoffOptions(options)).not.toThrow();
  });
});
