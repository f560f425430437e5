import { Queue } from 'bullmq';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { jobIdOf, limiterOf } from '../../src/engine/distributed/jobs.js';
import { redisWarnings } from '../../src/engine/distributed/redis-checks.js';
import { closeRedisAdmin, deleteKeysUnder, redisAdmin, uniquePrefix } from '../helpers/redis.js';

describe('jobIdOf', () => {
  it('never holds ":" and is never a plain integer, which BullMQ refuses', () => {
    for (const userId of ['12345', '0', 'a:b', '::', '%3A', 'zoë', '日本', ' x ', '~y']) {
      const id = jobIdOf('2026-11', userId);
      expect(id, userId).not.toContain(':');
      expect(/^\d+$/.test(id), userId).toBe(false);
    }
  });

  it('gives every (run, user) its own id, even ids that encode alike', () => {
    const users = ['a:b', 'a%3Ab', 'a%253Ab', 'a', 'a:', '12345', '%'];
    const ids = users.map((userId) => jobIdOf('run', userId));
    expect(new Set(ids).size).toBe(users.length);
    expect(jobIdOf('run-1', 'x')).not.toBe(jobIdOf('run-2', 'x'));
  });
});

describe('limiterOf', () => {
  it('never lets more than the rate through, and stays within 1% of it', () => {
    for (const rate of [0.5, 1, 3, 15, 150, 300, 400, 999, 1_000, 2_000, 2_500, 7_777, 20_000]) {
      const { max, duration } = limiterOf(rate);
      const effective = (max * 1_000) / duration;
      expect(effective, `${rate}/s`).toBeLessThanOrEqual(rate + 1e-9);
      expect(effective, `${rate}/s`).toBeGreaterThanOrEqual(rate * 0.99);
      expect(Number.isInteger(duration) && duration >= 1, `${rate}/s`).toBe(true);
    }
  });

  it('keeps bursts small: a few jobs per window, not a second’s worth', () => {
    expect(limiterOf(300)).toEqual({ max: 3, duration: 10 });
    expect(limiterOf(100)).toEqual({ max: 1, duration: 10 });
  });
});

describe('job ids on a real queue', () => {
  const prefix = uniquePrefix();
  afterEach(() => deleteKeysUnder(prefix));
  afterAll(() => closeRedisAdmin());

  it('are accepted for user ids BullMQ would refuse raw, and a job added twice is queued once', async () => {
    const queue = new Queue('ids', { connection: redisAdmin(), prefix });
    try {
      const users = ['12345', 'a:b', '0'];
      const jobs = users.map((userId) => ({
        name: 'charge',
        data: { userId },
        opts: { jobId: jobIdOf('run', userId) },
      }));
      await queue.addBulk(jobs);
      await queue.addBulk(jobs);
      expect(await queue.getWaitingCount()).toBe(users.length);
      const stored = await queue.getJobs(['waiting']);
      expect(stored.map((job) => job.data.userId).sort()).toEqual([...users].sort());
    } finally {
      await queue.close();
    }
  });
});

describe('redisWarnings', () => {
  afterAll(() => closeRedisAdmin());

  it('warns exactly when Redis would evict keys or keeps nothing on disk', async () => {
    const config = async (name: string) =>
      ((await redisAdmin().config('GET', name)) as string[])[1];
    const policy = await config('maxmemory-policy');
    const aof = (await config('appendonly')) === 'yes';
    const snapshots = (await config('save')) !== '';
    const warnings = await redisWarnings(redisAdmin());
    expect(warnings.some((warning) => warning.includes('maxmemory-policy'))).toBe(
      policy !== 'noeviction',
    );
    expect(warnings.some((warning) => warning.includes('keeps nothing on disk'))).toBe(
      !aof && !snapshots,
    );
    expect(warnings.some((warning) => warning.includes('only RDB snapshots'))).toBe(
      !aof && snapshots,
    );
  });
});
