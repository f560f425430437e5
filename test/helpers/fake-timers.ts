import type { Timers } from '../../src/engine/scheduler.js';
import { FakeClock } from './fake-clock.js';

interface Pending {
  readonly id: number;
  readonly at: number;
  readonly run: () => void;
}

/** Timers on a FakeClock: nothing fires until the test advances time. */
export class FakeTimers implements Timers {
  readonly clock: FakeClock;
  #pending: Pending[] = [];
  #nextId = 1;

  constructor(clock = new FakeClock(0)) {
    this.clock = clock;
  }

  setTimeout(run: () => void, ms: number): unknown {
    const id = this.#nextId++;
    this.#pending.push({ id, at: this.clock.now() + Math.max(0, ms), run });
    return id;
  }

  /** Runs `run` as the real event loop would after this turn's I/O: before time moves on. */
  defer(run: () => void): void {
    setImmediate(run);
  }

  clearTimeout(handle: unknown): void {
    this.#pending = this.#pending.filter((timer) => timer.id !== handle);
  }

  /** Moves time forward by `ms`, firing due timers in order and letting promises settle. */
  async advance(ms: number): Promise<void> {
    const until = this.clock.now() + ms;
    await settle();
    for (;;) {
      const due = this.#pending
        .filter((timer) => timer.at <= until)
        .sort((a, b) => a.at - b.at || a.id - b.id)[0];
      if (!due) break;
      this.#pending = this.#pending.filter((timer) => timer !== due);
      this.clock.advance(due.at - this.clock.now());
      due.run();
      await settle();
    }
    this.clock.advance(until - this.clock.now());
    await settle();
  }
}

/** Lets every queued promise callback run (real I/O, such as SQLite, is synchronous here). */
export async function settle(): Promise<void> {
  for (let round = 0; round < 20; round++) await new Promise((resolve) => setImmediate(resolve));
}
