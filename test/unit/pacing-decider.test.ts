import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { combinePacing, PacingDecider } from '../../src/engine/distributed/pacing-decider.js';
import { QueuePacing, type RunPacing } from '../../src/engine/distributed/queue-pacing.js';
import type { StateCounts } from '../../src/ledger/ledger.js';
import { closeRedisAdmin, deleteKeysUnder, redisAdmin, uniquePrefix } from '../helpers/redis.js';

// The distributed engine's decider, on the real Redis and a fake clock: one worker of the queue
// at a time holds the lease, replays the attempts every worker told into the limit controller,
// and sets the queue's global concurrency (BullMQ's meta `concurrency`) for all; a dead decider's
// lease ends and the next one goes on from its published limit, not from a cold start.

let prefix: string;
let now: number;
const wallClock = () => now;
let pending: Map<string, number>;

const counts = (runId: string): StateCounts => ({
  pending: pending.get(runId) ?? 0,
  charged: 0,
  declined: 0,
  failed: 0,
  unknown: 0,
  invalid: 0,
});

function place() {
  return { redis: redisAdmin(), prefix, queue: 'q' };
}

function decider(name: string, queued = 0): PacingDecider {
  return new PacingDecider({
    pacing: new QueuePacing(place()),
    ledger: { counts: async (runId: string) => counts(runId) },
    rate: () => undefined,
    queued: async () => queued,
    name,
    wallClock,
    leaseMs: 5_000,
  });
}

const metaConcurrency = async () => {
  const value = await redisAdmin().hget(`${prefix}:q:meta`, 'concurrency');
  return value === null ? undefined : Number(value);
};

const AUTO: RunPacing = { auto: true, min: 1, max: 1_000, assumedLatencyMs: 1_600 };

/**
 * Round trips of a simulated provider that takes `capacity` at once: the workers send the
 * queue's limit together, each at its place in the queue's in flight, and tell how each ended;
 * the decider ticks once the answers are in.
 */
async function roundTrips(
  pacing: QueuePacing,
  leader: PacingDecider,
  capacity: () => number,
  trips: number,
  latencyMs = 200,
): Promise<number[]> {
  const limits: number[] = [];
  for (let trip = 0; trip < trips; trip++) {
    const limit = (await metaConcurrency()) ?? 1;
    const sentAt = now;
    now += latencyMs;
    // A refusal (503) comes back at once, before the answers of the requests sent with it.
    for (let level = capacity() + 1; level <= limit; level++) {
      await pacing.record('w', { sentAt, latencyMs: 5, inFlight: level, outcome: 'refused' });
    }
    for (let level = 1; level <= Math.min(limit, capacity()); level++) {
      await pacing.record('w', { sentAt, latencyMs, inFlight: level, outcome: 'answered' });
    }
    await leader.tick();
    limits.push((await metaConcurrency()) ?? 0);
  }
  return limits;
}

beforeEach(() => {
  prefix = uniquePrefix();
  now = 1_764_000_000_000;
  pending = new Map();
});

afterEach(async () => {
  await deleteKeysUnder(prefix);
});

afterAll(async () => {
  await closeRedisAdmin();
});

describe('the queue decider', () => {
  it("finds the provider's capacity from every worker's attempts and sets it as the queue's global concurrency", async () => {
    const pacing = new QueuePacing(place());
    pending.set('r1', 100_000);
    await pacing.setRun('r1', AUTO);
    expect(await metaConcurrency()).toBe(1);
    const leader = decider('a');
    const limits = await roundTrips(pacing, leader, () => 60, 40);
    expect(leader.leading).toBe(true);
    // A cold start doubles to past 60, is cut back by the refusals, and holds near it.
    expect(Math.max(...limits.slice(0, 12))).toBeGreaterThan(60);
    for (const limit of limits.slice(-10)) {
      expect(limit).toBeGreaterThanOrEqual(54);
      expect(limit).toBeLessThanOrEqual(66);
    }
    const state = await pacing.state();
    expect(state).toMatchObject({ mode: 'auto', decider: 'a' });
    expect(state?.capacity).toBeGreaterThanOrEqual(54);
    expect(state?.capacity).toBeLessThanOrEqual(66);
  });

  it('lets one worker decide at a time; a dead decider is replaced once its lease ends, from its limit', async () => {
    const pacing = new QueuePacing(place());
    pending.set('r1', 100_000);
    await pacing.setRun('r1', AUTO);
    const a = decider('a');
    const b = decider('b');
    await roundTrips(pacing, a, () => 40, 30);
    await b.tick();
    expect(a.leading).toBe(true);
    expect(b.leading).toBe(false);
    const before = (await metaConcurrency()) as number;
    expect(before).toBeGreaterThanOrEqual(36);
    // `a` dies (no close): within its lease nobody takes over, the queue keeps its limit.
    now += 4_000;
    await b.tick();
    expect(b.leading).toBe(false);
    now += 1_500;
    await b.tick();
    expect(b.leading).toBe(true);
    // It goes on from `a`'s limit and capacity, not from 1.
    const limits = await roundTrips(pacing, b, () => 40, 5);
    for (const limit of limits) {
      expect(limit).toBeGreaterThanOrEqual(36);
      expect(limit).toBeLessThanOrEqual(44);
    }
    expect((await pacing.state())?.decider).toBe('b');
    // A decider that closes lets go at once, and takes no lease again.
    await b.close();
    await b.tick();
    expect(b.leading).toBe(false);
    await a.tick();
    expect(a.leading).toBe(true);
  });

  it("ends a run's pacing once its charges have ended, and puts the queue's own global concurrency back", async () => {
    const redis = redisAdmin();
    await redis.hset(`${prefix}:q:meta`, 'concurrency', 7);
    const pacing = new QueuePacing(place());
    pending.set('r1', 10);
    pending.set('r2', 10);
    await pacing.setRun('r1', AUTO);
    await pacing.setRun('r2', { ...AUTO, deadlineAt: now + 60_000 });
    expect(await metaConcurrency()).toBe(1);
    const leader = decider('a');
    await roundTrips(pacing, leader, () => 100, 3);
    expect((await pacing.state())?.deadline).toBeDefined();
    pending.set('r1', 0);
    now += 1_000;
    await leader.tick();
    expect([...(await pacing.runs()).keys()]).toEqual(['r2']);
    expect(await metaConcurrency()).not.toBe(7);
    pending.set('r2', 0);
    now += 1_000;
    await leader.tick();
    expect(await pacing.paced()).toBe(false);
    expect(leader.leading).toBe(false);
    expect(await metaConcurrency()).toBe(7);
    expect(await pacing.state()).toBeUndefined();
  });

  it("plans a deadline for every job on the queue, at the deadline's need, not at the most allowed", async () => {
    const pacing = new QueuePacing(place());
    pending.set('r1', 1_000);
    // 1,000 of its charges and 1,000 of another run's ahead on the queue, at 200 ms, in 100 s.
    await pacing.setRun('r1', {
      auto: false,
      min: 1,
      max: 500,
      deadlineAt: now + 100_000,
      assumedLatencyMs: 200,
    });
    const leader = decider('a', 2_000);
    const limits = await roundTrips(pacing, leader, () => 1_000, 10);
    const need = (await pacing.state())?.deadline?.need ?? 0;
    // 2,000 × 0.2 s over about 90 s (the margin): 5 in flight, not 500.
    expect(need).toBeGreaterThanOrEqual(4);
    expect(need).toBeLessThanOrEqual(8);
    expect(limits.at(-1)).toBe(need);
  });
});

describe("the queue's global concurrency", () => {
  it("lets the limit be requests at the provider: jobs between their requests (and a killed worker's) are allowed for", async () => {
    const redis = redisAdmin();
    const pacing = new QueuePacing(place());
    pending.set('r1', 100_000);
    await pacing.setRun('r1', { ...AUTO, min: 30, max: 30 });
    // A live worker holds 60 jobs, 30 of them in a request (the others in the ledger, say):
    // twice the limit.
    await pacing.heartbeat('w1', 60);
    for (let index = 0; index < 30; index++) expect(await pacing.sent('w1')).toBe(index + 1);
    // A worker killed with 50 jobs and 50 requests: silent since long ago, its counts go; its
    // jobs, active until their locks end, are not allowed for (once back in waiting, they would
    // all go at once past the limit).
    await redis.rpush(
      `${prefix}:q:active`,
      ...Array.from({ length: 110 }, (_, index) => `${index}`),
    );
    await redis.hset(`${prefix}:q:pacing:inflight`, 'w2', 50);
    await redis.hset(`${prefix}:q:pacing:held`, 'w2', 50);
    await redis.hset(`${prefix}:q:pacing:alive`, 'w2', 0);
    const leader = decider('a');
    for (let tick = 0; tick < 100; tick++) {
      now += 200;
      await leader.tick();
    }
    expect(await pacing.load(5_000)).toEqual({ held: 60, requests: 30, active: 110 });
    const state = await pacing.state();
    expect(state?.limit).toBe(30);
    expect(state?.jobs).toBeGreaterThanOrEqual(57);
    expect(state?.jobs).toBeLessThanOrEqual(60);
    expect(await metaConcurrency()).toBe(state?.jobs);
    // An attempt's end takes its request off its worker's count.
    await pacing.record('w1', { sentAt: now, latencyMs: 1, inFlight: 30, outcome: 'answered' });
    expect((await pacing.load(5_000)).requests).toBe(29);
  });
});

describe('combinePacing', () => {
  it('makes one setting of the runs on a queue: auto if any, the strictest bounds, the earliest deadline', () => {
    expect(combinePacing([])).toBeUndefined();
    expect(
      combinePacing([
        { auto: true, min: 2, max: 1_000, assumedLatencyMs: 1_600 },
        { auto: false, min: 5, max: 50, deadlineAt: 2_000, assumedLatencyMs: 200 },
        { auto: false, min: 1, max: 80, deadlineAt: 1_000, assumedLatencyMs: 200 },
      ]),
    ).toEqual({ auto: true, min: 5, max: 50, deadlineAt: 1_000, assumedLatencyMs: 1_600 });
    // A least above the most: the most holds.
    expect(
      combinePacing([
        { auto: true, min: 100, max: 1_000, assumedLatencyMs: 1 },
        { auto: true, min: 1, max: 10, assumedLatencyMs: 1 },
      ]),
    ).toMatchObject({ min: 10, max: 10 });
  });
});
