import { Queue } from 'bullmq';
import { Redis } from 'ioredis';
import {
  type ChargeJobData,
  JOB_ATTEMPTS,
  JOB_NAME,
  jobIdOf,
} from '../../src/engine/distributed/jobs.js';

/** The baseline of `bulkbill enqueue`: BullMQ's own addBulk, no ledger, no input file. */
export interface BareEnqueueOptions {
  readonly redisUrl: string;
  readonly prefix: string;
  readonly queue: string;
  readonly runId: string;
  readonly jobs: number;
  /** Jobs per addBulk call. Default 1,000, as `bulkbill enqueue`. */
  readonly batchSize?: number;
}

export interface BareEnqueueResult {
  readonly jobs: number;
  /** From the first addBulk to the last one answered, in ms. */
  readonly wallMs: number;
  readonly jobsPerSecond: number;
  /** CPU this process spent meanwhile (all threads), in ms. */
  readonly clientCpuMs: number;
}

/**
 * Adds `jobs` charge jobs with exactly the names, data shape, ids and options `bulkbill enqueue`
 * gives them (src/engine/distributed/enqueue.ts), 1,000 per addBulk, from this process, with
 * the data made up in a loop: the floor under `bulkbill enqueue`'s enqueueMs, which also pages
 * the pending charges out of the Redis ledger.
 */
export async function runBareEnqueue(options: BareEnqueueOptions): Promise<BareEnqueueResult> {
  const batchSize = options.batchSize ?? 1_000;
  const redis = new Redis(options.redisUrl, { maxRetriesPerRequest: 3 });
  redis.on('error', () => {});
  const queue = new Queue<ChargeJobData>(options.queue, {
    connection: redis,
    prefix: options.prefix,
  });
  queue.on('error', () => {});
  const width = Math.max(7, String(options.jobs).length);
  try {
    const cpuBefore = process.cpuUsage();
    const started = performance.now();
    for (let first = 1; first <= options.jobs; first += batchSize) {
      const last = Math.min(options.jobs, first + batchSize - 1);
      const batch = [];
      for (let index = first; index <= last; index++) {
        const userId = `user-${String(index).padStart(width, '0')}`;
        batch.push({
          name: JOB_NAME,
          data: {
            r: options.runId,
            u: userId,
            a: 999,
            c: 'USD',
            n: 0,
            x: false,
          } satisfies ChargeJobData,
          opts: {
            jobId: jobIdOf(options.runId, userId),
            attempts: JOB_ATTEMPTS,
            backoff: { type: 'bulkbill' },
            removeOnComplete: true,
            removeOnFail: true,
          },
        });
      }
      await queue.addBulk(batch);
    }
    const wallMs = performance.now() - started;
    const cpu = process.cpuUsage(cpuBefore);
    return {
      jobs: options.jobs,
      wallMs,
      jobsPerSecond: (options.jobs * 1_000) / wallMs,
      clientCpuMs: (cpu.user + cpu.system) / 1_000,
    };
  } finally {
    await queue.close().catch(() => {});
    redis.disconnect();
  }
}
