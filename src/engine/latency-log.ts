/**
 * Every attempt's latency, for a run's percentiles, and their sum: how long the same requests
 * would have taken one after another. A growing Float64Array: 8 bytes an attempt, no objects.
 */
export class LatencyLog {
  readonly #keep: boolean;
  #values = new Float64Array(1024);
  #count = 0;
  #serialMs = 0;

  /** `keep: false` only sums (a long-lived worker must not grow without end). */
  constructor(options: { readonly keep: boolean } = { keep: true }) {
    this.#keep = options.keep;
  }

  add(ms: number): void {
    this.#serialMs += ms;
    if (!this.#keep) return;
    if (this.#count === this.#values.length) {
      const grown = new Float64Array(this.#values.length * 2);
      grown.set(this.#values);
      this.#values = grown;
    }
    this.#values[this.#count++] = ms;
  }

  /** The latencies kept so far, in ms (a view: later adds may or may not show in it). */
  get latencies(): Float64Array {
    return this.#values.subarray(0, this.#count);
  }

  get serialMs(): number {
    return this.#serialMs;
  }
}
