// Hand-written: a seeded PRNG is ten lines, and we need streams keyed by (seed, user, attempt),
// which no well-kept package offers.

/** FNV-1a over UTF-16 code units, finished with a murmur3 mix: a 32-bit seed from a string. */
export function hashSeed(text: string): number {
  let hash = 0x811c9dc5;
  for (let index = 0; index < text.length; index++) {
    hash ^= text.charCodeAt(index);
    hash = Math.imul(hash, 0x01000193);
  }
  hash ^= hash >>> 16;
  hash = Math.imul(hash, 0x85ebca6b);
  hash ^= hash >>> 13;
  hash = Math.imul(hash, 0xc2b2ae35);
  hash ^= hash >>> 16;
  return hash >>> 0;
}

/** mulberry32: a fast 32-bit PRNG with good statistical quality for simulations. */
export function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/** The fault draws of one request; all are drawn every time so streams never shift. */
export interface RequestDraws {
  readonly fail: number;
  readonly jitter: number;
  readonly decline: number;
  readonly lost: number;
  readonly slow: number;
  /** Drawn after the others, so adding it left their streams as they were. */
  readonly reset: number;
}

/**
 * The draws for the `attempt`-th request (0-based) about `userId` under `seed`: the same
 * inputs give the same draws, whatever else the server is doing at the time.
 */
export function drawsFor(seed: number, userId: string, attempt: number): RequestDraws {
  const next = mulberry32(hashSeed(`${seed}\u0000${userId}\u0000${attempt}`));
  return {
    fail: next(),
    jitter: next(),
    decline: next(),
    lost: next(),
    slow: next(),
    reset: next(),
  };
}
