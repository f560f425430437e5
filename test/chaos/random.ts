import { hashSeed, mulberry32 } from '../../src/mock-provider/random.js';

/** A seeded stream of choices: a round's whole plan follows from its seed. */
export class Random {
  readonly #next: () => number;

  constructor(seed: number, stream = '') {
    this.#next = mulberry32(hashSeed(`${seed}\u0000${stream}`));
  }

  /** In [0, 1). */
  next(): number {
    return this.#next();
  }

  /** An integer in [min, max]. */
  int(min: number, max: number): number {
    return min + Math.floor(this.#next() * (max - min + 1));
  }

  chance(p: number): boolean {
    return this.#next() < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new RangeError('pick from nothing');
    return items[Math.floor(this.#next() * items.length)] as T;
  }

  /** `count` distinct items, in a random order. */
  sample<T>(items: readonly T[], count: number): T[] {
    return this.shuffle([...items]).slice(0, Math.min(count, items.length));
  }

  /** Fisher–Yates, in place; returns `items`. */
  shuffle<T>(items: T[]): T[] {
    for (let index = items.length - 1; index > 0; index--) {
      const other = Math.floor(this.#next() * (index + 1));
      [items[index], items[other]] = [items[other] as T, items[index] as T];
    }
    return items;
  }
}
