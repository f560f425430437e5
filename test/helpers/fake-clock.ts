import type { Clock } from '../../src/domain/clock.js';

/** A clock that moves only when the test says so. */
export class FakeClock implements Clock {
  #now: number;

  constructor(start = 1_000_000) {
    this.#now = start;
  }

  now(): number {
    return this.#now;
  }

  advance(ms: number): void {
    this.#now += ms;
  }
}
