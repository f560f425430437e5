import { describe, expect, it } from 'vitest';
import { TokenBucket } from '../../src/control/token-bucket.js';
import { FakeClock } from '../helpers/fake-clock.js';

describe('TokenBucket', () => {
  it('starts full and allows a burst of its size, then refuses', () => {
    const bucket = new TokenBucket({ ratePerSecond: 10, burst: 3, clock: new FakeClock() });
    expect([bucket.tryTake(), bucket.tryTake(), bucket.tryTake(), bucket.tryTake()]).toEqual([
      true,
      true,
      true,
      false,
    ]);
  });

  it('refills continuously at the rate', () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 10, burst: 1, clock });
    expect(bucket.tryTake()).toBe(true);
    expect(bucket.msUntilAvailable()).toBeCloseTo(100);
    clock.advance(60);
    expect(bucket.tryTake()).toBe(false);
    expect(bucket.msUntilAvailable()).toBeCloseTo(40);
    clock.advance(40);
    expect(bucket.msUntilAvailable()).toBe(0);
    expect(bucket.tryTake()).toBe(true);
  });

  it('never holds more than its burst, however long it idles', () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 100, burst: 5, clock });
    clock.advance(3_600_000);
    expect(bucket.available()).toBe(5);
  });

  it('defaults the burst to one second of tokens, at least one', () => {
    const clock = new FakeClock();
    expect(new TokenBucket({ ratePerSecond: 800, clock }).burst).toBe(800);
    expect(new TokenBucket({ ratePerSecond: 0.2, clock }).burst).toBe(1);
  });

  it('holds a long run to its rate exactly', () => {
    const clock = new FakeClock();
    const bucket = new TokenBucket({ ratePerSecond: 50, burst: 1, clock });
    let taken = 0;
    for (let ms = 0; ms < 10_000; ms++) {
      if (bucket.tryTake()) taken++;
      clock.advance(1);
    }
    expect(taken).toBe(500);
  });

  it.each([
    [{ ratePerSecond: 0 }, /`ratePerSecond` to be a finite number > 0, got 0 \(number\)/],
    [{ ratePerSecond: Number.NaN }, /`ratePerSecond`/],
    [{ ratePerSecond: 5, burst: 0.5 }, /`burst` to be a finite number >= 1, got 0.5 \(number\)/],
  ])('refuses %j, naming the option and the value', (options, message) => {
    expect(() => new TokenBucket({ ...options, clock: new FakeClock() })).toThrow(message);
  });
});
