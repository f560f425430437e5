import { Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import type { Agent } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { resolveThrottlePolicy } from '../../src/control/throttle.js';
import { systemClock } from '../../src/domain/clock.js';
import { UNLIMITED } from '../../src/engine/distributed/jobs.js';
import { QueuePause } from '../../src/engine/distributed/queue-pause.js';
import { type MockProvider, startMockProvider } from '../../src/mock-provider/index.js';
import { spawnCli, waitForOutput } from '../helpers/cli.js';
import { postCharge, testAgent } from '../helpers/http.js';
import {
  closeRedisAdmin,
  deleteKeysUnder,
  REDIS_URL,
  redisAdmin,
  uniquePrefix,
} from '../helpers/redis.js';

const QUEUE = 'billing';
const prefixes: string[] = [];
const closers: Array<() => Promise<unknown>> = [];

function place(): { prefix: string; redis: Redis } {
  const prefix = uniquePrefix();
  prefixes.push(prefix);
  // As a worker's: BullMQ requires maxRetriesPerRequest null for a Worker's connection.
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: null });
  closers.push(() => redis.quit());
  return { prefix, redis };
}

function pauseOn(at: { prefix: string; redis: Redis }, draw = 0): QueuePause {
  return new QueuePause({
    redis: at.redis,
    prefix: at.prefix,
    queue: QUEUE,
    random: () => draw,
    policy: resolveThrottlePolicy(),
  });
}

afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close().catch(() => {});
  for (const prefix of prefixes.splice(0)) await deleteKeysUnder(prefix);
});
afterAll(async () => {
  await closeRedisAdmin();
});

describe('QueuePause', () => {
  it("uses BullMQ's limiter key, as Queue.rateLimit does", async () => {
    const at = place();
    const pause = pauseOn(at);
    expect(pause.limiterKey).toBe(`${at.prefix}:${QUEUE}:limiter`);
    const queue = new Queue(QUEUE, { connection: at.redis, prefix: at.prefix });
    closers.push(() => queue.close());
    await queue.rateLimit(3_000);
    expect(await pause.remaining()).toBeGreaterThan(2_900);
  });

  it('keeps the longer pause: 5 s, then 1 s, leaves at least 4 s on the limiter key', async () => {
    const at = place();
    const pause = pauseOn(at);
    expect(await pause.remaining()).toBe(0);
    expect(await pause.extend(5_000)).toBe(5_000);
    expect(await pause.extend(1_000)).toBeGreaterThan(4_000);
    expect(await redisAdmin().pttl(pause.limiterKey)).toBeGreaterThanOrEqual(4_000);
    expect(await pause.remaining()).toBeGreaterThanOrEqual(4_000);
    // A longer one does lengthen it.
    expect(await pause.extend(8_000)).toBe(8_000);
    expect(await redisAdmin().pttl(pause.limiterKey)).toBeGreaterThan(7_000);
  });

  it('is not cut by Retry-After either: 5 s, then 1 s, from two workers', async () => {
    const at = place();
    const one = pauseOn(at);
    const other = pauseOn(at);
    const sentAt = systemClock.now();
    await one.throttled({ retryAfterMs: 5_000, sentAt });
    const after = await other.throttled({ retryAfterMs: 1_000, sentAt });
    expect(after.pauseMs).toBeGreaterThan(4_000);
    expect(await redisAdmin().pttl(one.limiterKey)).toBeGreaterThanOrEqual(4_000);
  });

  it("does not take a fixed window's count for a pause: the pause is as long as asked", async () => {
    const at = place();
    const pause = pauseOn(at);
    // What BullMQ's limiter keeps between jobs: a count of the window's jobs, with its PTTL (a
    // worker without --rate keeps a 60 s window): a 500 ms pause must not become one of 60 s.
    await redisAdmin().set(pause.limiterKey, '2', 'PX', 60_000);
    expect(await pause.remaining()).toBe(0);
    expect(await pause.extend(500)).toBe(500);
    expect(await pause.remaining()).toBeLessThanOrEqual(500);
    // A key without expiry pauses nothing for BullMQ: it is replaced.
    await redisAdmin().set(pause.limiterKey, String(Number.MAX_SAFE_INTEGER));
    expect(await pause.extend(700)).toBe(700);
  });

  it('grows the pause queue-wide with throttles in a row without Retry-After, shared by every worker', async () => {
    const at = place();
    // Two workers of one queue: the count is the queue's, not each one's.
    const one = pauseOn(at, 0);
    const other = pauseOn(at, 0);
    const first = await one.throttled({ retryAfterMs: undefined, sentAt: systemClock.now() });
    expect(first).toEqual({ pauseMs: 0, newEpisode: true, inARow: 1 });
    // The rest of the wave that caused it (sent before it began) counts once.
    const wave = await other.throttled({
      retryAfterMs: undefined,
      sentAt: systemClock.now() - 5_000,
    });
    expect(wave).toEqual({ pauseMs: 0, newEpisode: false, inARow: 1 });
    await new Promise((resolve) => setTimeout(resolve, 5));
    const second = await other.throttled({ retryAfterMs: undefined, sentAt: systemClock.now() });
    expect(second.newEpisode).toBe(true);
    expect(second.inARow).toBe(2);
    // The draw 0: half of basePauseMs × 2^0.
    expect(second.pauseMs).toBe(500);
    await new Promise((resolve) => setTimeout(resolve, 5));
    const third = await one.throttled({ retryAfterMs: undefined, sentAt: systemClock.now() });
    expect(third.inARow).toBe(3);
    expect(third.pauseMs).toBe(1_000);
    // Kept next to the queue's keys, with an expiry: a quiet queue forgets.
    const keepMs = await redisAdmin().pttl(one.throttleKey);
    expect(keepMs).toBeGreaterThan(50_000);
    expect(keepMs).toBeLessThanOrEqual(60_000);
  });

  it('ends the run of episodes on an answer to a request sent since, not on a stale one', async () => {
    const at = place();
    const one = pauseOn(at, 0);
    const other = pauseOn(at, 0);
    await one.throttled({ retryAfterMs: undefined, sentAt: systemClock.now() });
    await new Promise((resolve) => setTimeout(resolve, 5));
    expect(
      (await other.throttled({ retryAfterMs: undefined, sentAt: systemClock.now() })).inARow,
    ).toBe(2);
    // Stale: sent before the episode began. Nothing ends.
    await other.answered(systemClock.now() - 10_000);
    expect(await redisAdmin().hget(other.throttleKey, 'clean')).toBe('0');
    await new Promise((resolve) => setTimeout(resolve, 5));
    await other.answered(systemClock.now());
    expect(await redisAdmin().hget(other.throttleKey, 'clean')).toBe('1');
    await new Promise((resolve) => setTimeout(resolve, 5));
    const next = await one.throttled({ retryAfterMs: undefined, sentAt: systemClock.now() });
    expect(next).toMatchObject({ newEpisode: true, inARow: 1 });
  });

  it('holds a real BullMQ worker: a job added during a 1.5 s pause starts only after it', async () => {
    const at = place();
    const pause = pauseOn(at);
    const queue = new Queue(QUEUE, { connection: at.redis, prefix: at.prefix });
    closers.push(() => queue.close());
    let startedAt = 0;
    let done!: () => void;
    const processed = new Promise<void>((resolve) => {
      done = resolve;
    });
    const workerRedis = at.redis.duplicate();
    const worker = new Worker(
      QUEUE,
      async () => {
        startedAt = Date.now();
        done();
      },
      // As BillingWorker's: a limiter is what makes BullMQ look at the key.
      { connection: workerRedis, prefix: at.prefix, limiter: UNLIMITED, concurrency: 4 },
    );
    worker.on('error', () => {});
    closers.push(async () => {
      await worker.close();
      await workerRedis.quit();
    });
    await worker.waitUntilReady();
    // The worker is idle, blocked waiting for a job, when the pause begins.
    await new Promise((resolve) => setTimeout(resolve, 100));
    const pausedAt = Date.now();
    await pause.extend(1_500);
    // A shorter pause meanwhile (another worker's Retry-After: 0.2 s) does not cut it.
    await pause.extend(200);
    await queue.add('charge', { n: 1 });
    await processed;
    expect(startedAt - pausedAt).toBeGreaterThanOrEqual(1_500 - 5);
    expect(startedAt - pausedAt).toBeLessThan(1_500 + 3_000);
  });
});

describe('mock provider without Retry-After', () => {
  let agent: Agent;
  const providers: MockProvider[] = [];
  beforeAll(() => {
    agent = testAgent();
  });
  afterAll(async () => {
    await Promise.all(providers.map((provider) => provider.close({ graceMs: 0 })));
    await agent.close();
  });

  const charge = (userId: string) => ({ user_id: userId, amount: 100, currency: 'USD' });

  it('answers 429 past its rate with no Retry-After header when retryAfter is false', async () => {
    const quiet = await startMockProvider({ port: 0, latencyMs: 0, rate: 1, burst: 1, seed: 1 });
    const silent = await startMockProvider({
      port: 0,
      latencyMs: 0,
      rate: 1,
      burst: 1,
      seed: 1,
      retryAfter: false,
    });
    providers.push(quiet, silent);
    expect(quiet.options.retryAfter).toBe(true);
    for (const provider of [quiet, silent]) {
      expect((await postCharge(agent, provider.url, charge('a'))).status).toBe(200);
    }
    const told = await postCharge(agent, quiet.url, charge('b'));
    expect(told.status).toBe(429);
    expect(told.headers['retry-after']).toBe('1');
    const untold = await postCharge(agent, silent.url, charge('b'));
    expect(untold.status).toBe(429);
    expect(untold.headers['retry-after']).toBeUndefined();
    expect(untold.json).toEqual({ error: 'rate_limited', message: 'Too many requests.' });
    expect(silent.stats().rejected_429).toBe(1);
  });

  it('refuses a retryAfter that is not a boolean, naming it', async () => {
    await expect(
      startMockProvider({ port: 0, retryAfter: 'no' as unknown as boolean }),
    ).rejects.toThrow(/`retryAfter`: .*got "no"/);
  });

  it('bulkbill mock-provider --no-retry-after says so and sends none', async () => {
    const cli = spawnCli([
      'mock-provider',
      '--port',
      '0',
      '--latency',
      '0',
      '--rate',
      '1',
      '--burst',
      '1',
      '--no-retry-after',
    ]);
    closers.push(async () => {
      cli.child.kill('SIGTERM');
      await cli.exited;
    });
    const [, url] = (await waitForOutput(cli, /listening on (http:\/\/\S+)/)) as unknown as [
      string,
      string,
    ];
    expect(cli.stdout()).toContain('rate 1/s (429 without Retry-After)');
    expect((await postCharge(agent, url, charge('a'))).status).toBe(200);
    const untold = await postCharge(agent, url, charge('b'));
    expect(untold.status).toBe(429);
    expect(untold.headers['retry-after']).toBeUndefined();
  });
});
