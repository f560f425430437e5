/**
 * The provider's processing slots. A request holds one from the moment it is accepted until
 * its answer leaves (or its connection is dropped); past `capacity` it either is refused or
 * waits in a FIFO line, which is how an overloaded server's latency grows.
 */
export class CapacityGate {
  #capacity: number;
  inFlight = 0;
  maxInFlight = 0;
  maxQueued = 0;
  readonly #waiting: Array<() => void> = [];
  #onIdle: (() => void) | undefined;

  constructor(capacity: number) {
    this.#capacity = capacity;
  }

  get capacity(): number {
    return this.#capacity;
  }

  /**
   * A provider whose capacity changed (POST /capacity): more slots let waiters in at once; fewer
   * take effect as requests in flight end (none is dropped).
   */
  setCapacity(capacity: number): void {
    this.#capacity = capacity;
    while (this.inFlight < this.#capacity && this.#waiting.length > 0) {
      const next = this.#waiting.shift() as () => void;
      this.#take();
      next();
    }
  }

  get queued(): number {
    return this.#waiting.length;
  }

  /** Takes a slot when one is free. */
  tryEnter(): boolean {
    if (this.inFlight >= this.#capacity) return false;
    this.#take();
    return true;
  }

  /** Runs `start` once a slot is free, in arrival order. */
  enterWhenFree(start: () => void): void {
    if (this.tryEnter()) {
      start();
      return;
    }
    this.#waiting.push(start);
    if (this.#waiting.length > this.maxQueued) this.maxQueued = this.#waiting.length;
  }

  /** Gives the slot back; the longest waiter, if any, takes it at once. */
  leave(): void {
    this.inFlight--;
    const next = this.inFlight < this.#capacity ? this.#waiting.shift() : undefined;
    if (next) {
      this.#take();
      next();
    } else if (this.inFlight === 0) {
      this.#onIdle?.();
    }
  }

  /** Resolves once nothing holds or waits for a slot. */
  idle(): Promise<void> {
    if (this.inFlight === 0 && this.#waiting.length === 0) return Promise.resolve();
    return new Promise((resolve) => {
      this.#onIdle = resolve;
    });
  }

  /** Forgets the peaks (POST /reset); what is in flight stays in flight. */
  resetPeaks(): void {
    this.maxInFlight = this.inFlight;
    this.maxQueued = this.#waiting.length;
  }

  /** Drops every waiter without running it (forced shutdown). */
  abandonWaiting(): void {
    this.#waiting.length = 0;
  }

  #take(): void {
    this.inFlight++;
    if (this.inFlight > this.maxInFlight) this.maxInFlight = this.inFlight;
  }
}
