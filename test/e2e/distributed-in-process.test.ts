import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue, RedisConnection } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { resolveRetryPolicy } from '../../src/control/retry-policy.js';
import { closeRedis, connectRedis } from '../../src/engine/distributed/connection.js';
import { billDistributed } from '../../src/engine/distributed/distributed-engine.js';
import { enqueue } from '../../src/engine/distributed/enqueue.js';
import { DistributedStatusReader } from '../../src/engine/distributed/status.js';
import { BillingWorker } from '../../src/engine/distributed/worker.js';
import { type MockProvider, startMockProvider } from '../../src/mock-provider/index.js';
import { ProviderClient } from '../../src/provider/index.js';
import {
  closeRedisAdmin,
  deleteKeysUnder,
  keysUnder,
  REDIS_URL,
  uniquePrefix,
} from '../helpers/redis.js';

// The distributed engine's parts in this process (each worker with its own connections, as on
// its own machine) against the real Redis and a real mock provider: limits that hold across the
// workers of a queue, what `status --redis` reads, and `run --redis --dry-run`.

let dir: string;
let prefix: string;
const opened: Array<{ close(): Promise<unknown> }> = [];
const connections: Redis[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bulkbill-in-process-'));
});
beforeEach(() => {
  prefix = uniquePrefix();
});
afterEach(async () => {
  for (const item of opened.splice(0).reverse()) await item.close();
  for (const redis of connections.splice(0)) await closeRedis(redis);
  await deleteKeysUnder(prefix);
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
  await closeRedisAdmin();
});

function connect(kind: 'short' | 'patient'): Redis {
  const redis = connectRedis(REDIS_URL, kind);
  connections.push(redis);
  return redis;
}

async function provider(latencyMs: number): Promise<MockProvider> {
  const mock = await startMockProvider({ port: 0, jitter: 0, seed: 5, latencyMs });
  opened.push({ close: () => mock.close({ graceMs: 0 }) });
  return mock;
}

/** A CSV of `count` users, `amount` minor units of `currency` each. */
async function usersFile(count: number, amount = 100, currency = 'USD'): Promise<string> {
  const input = join(dir, `users-${prefix}.csv`);
  const rows = Array.from({ length: count }, (_, index) => `user-${index},${amount},${currency}`);
  await writeFile(input, `user_id,amount,currency\n${rows.join('\n')}\n`);
  return input;
}

async function enqueueFile(input: string): Promise<string> {
  const result = await enqueue({
    input,
    redis: connect('short'),
    prefix,
    queue: 'q',
    runId: `cycle-${prefix}`,
  });
  return result.choice.run.runId;
}

async function startWorker(
  mock: MockProvider,
  options: {
    concurrency: number;
    globalConcurrency?: number;
    exitWhenIdle?: boolean;
    name?: string;
    closeStuckMs?: number;
    onLog?: (level: 'info' | 'warn' | 'error', message: string) => void;
  },
): Promise<{ worker: BillingWorker; endpoint: string }> {
  const client = new ProviderClient({
    endpoint: `${mock.url}/charge`,
    connections: options.concurrency,
    timeoutMs: 5_000,
  });
  opened.push(client);
  const worker = await BillingWorker.start({
    redis: connect('patient'),
    prefix,
    queue: 'q',
    endpoint: client.endpoint,
    sender: client,
    policy: resolveRetryPolicy({ maxAttempts: 5 }),
    lockDurationMs: 5_000,
    ...options,
  });
  opened.push(worker);
  return { worker, endpoint: client.endpoint };
}

describe('limits across the workers of a queue', () => {
  it('--global-concurrency caps the requests in flight at the provider, whatever each worker allows', async () => {
    const mock = await provider(40);
    await enqueueFile(await usersFile(200));
    const first = await startWorker(mock, {
      concurrency: 20,
      globalConcurrency: 6,
      exitWhenIdle: true,
    });
    const second = await startWorker(mock, { concurrency: 20, exitWhenIdle: true });
    const [a, b] = await Promise.all([first.worker.done, second.worker.done]);
    expect([a.reason, b.reason]).toEqual(['idle', 'idle']);
    const stats = mock.stats();
    expect(stats.charges).toBe(200);
    expect(stats.duplicate_charges).toBe(0);
    // Each worker alone would have 20 in flight; the queue lets 6 be active at once in all.
    expect(stats.max_in_flight).toBeLessThanOrEqual(6);
    expect(stats.max_in_flight).toBeGreaterThanOrEqual(2);
    const charged = first.worker.snapshot().ended.charged + second.worker.snapshot().ended.charged;
    expect(charged).toBe(200);
  });

  it('--global-concurrency 0 takes the cap off the queue again', async () => {
    const queue = new Queue('q', { connection: connect('short'), prefix });
    opened.push(queue);
    const mock = await provider(40);
    await enqueueFile(await usersFile(100));
    await queue.setGlobalConcurrency(2);
    const { worker } = await startWorker(mock, {
      concurrency: 10,
      globalConcurrency: 0,
      exitWhenIdle: true,
    });
    await worker.done;
    expect(await queue.getGlobalConcurrency()).toBeNull();
    expect(mock.stats().charges).toBe(100);
    expect(mock.stats().max_in_flight).toBeGreaterThan(2);
  });
});

describe('status of a run on the distributed engine', () => {
  it('shows counts, the pace, the queue and the live workers by name while the run goes on', async () => {
    const mock = await provider(100);
    const runId = await enqueueFile(await usersFile(300, 250, 'EUR'));
    const { worker, endpoint } = await startWorker(mock, {
      concurrency: 10,
      name: 'billing-host-7',
    });
    const reader = new DistributedStatusReader({ redis: connect('short'), prefix, queue: 'q' });
    opened.push(reader);

    const during = await reader.read(runId, 500);
    expect(during.run.endpoint).toBe(endpoint);
    expect(during.counts.pending).toBeGreaterThan(0);
    expect(during.counts.charged).toBeGreaterThan(0);
    // 10 in flight at 100 ms: about 100 charges/s; a loaded machine may manage far less.
    expect(during.perSecond).toBeGreaterThan(10);
    expect(during.perSecond).toBeLessThan(150);
    expect(during.etaMs).toBeGreaterThan(0);
    expect(during.queue.waiting + during.queue.active).toBeGreaterThan(0);
    expect(during.workers.map((live) => live.name)).toEqual(['billing-host-7']);
    expect(during.stoppedBecause).toBeUndefined();

    for (;;) {
      const counts = await reader.ledger.counts(runId);
      if (counts.pending === 0) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await worker.close();
    const after = await reader.read(runId, 500);
    expect(after.counts).toMatchObject({ charged: 300, pending: 0 });
    expect(after.chargedAmounts).toEqual({ EUR: 75_000 });
    expect(after.run.finishedAt).toBeDefined();
    expect(after.perSecond).toBeUndefined();
    expect(after.queue).toEqual({ waiting: 0, active: 0, delayed: 0 });
    expect(after.workers).toEqual([]);
  });

  it('plans a dry run on Redis without queueing a job or charging anyone', async () => {
    const mock = await provider(1);
    const result = await billDistributed({
      input: await usersFile(40, 250, 'EUR'),
      endpoint: `${mock.url}/charge`,
      redis: REDIS_URL,
      prefix,
      queue: 'q',
      runId: 'cycle-dry',
      concurrency: 10,
      dryRun: true,
    });
    expect(result.outcome).toBe('planned');
    expect(result.plan).toMatchObject({ charges: 40, amounts: { EUR: 10_000 }, concurrency: 10 });
    expect(result.counts.pending).toBe(40);
    expect(mock.stats().requests).toBe(0);
    const queueKeys = (await keysUnder(`${prefix}:q`)).filter((key) => !key.endsWith(':meta'));
    expect(queueKeys).toEqual([]);
  });
});

describe('closing a worker whose blocking connection a Redis fault parked', () => {
  it('ends: BullMQ waiting forever for the blocking connection (bullmq#4656) is cut short once nothing is in flight', async () => {
    const mock = await provider(5);
    await enqueueFile(await usersFile(30));
    const warnings: string[] = [];
    // As a client parked in "reconnecting" does: a disconnect that waits for an end never comes.
    const disconnect = RedisConnection.prototype.disconnect;
    RedisConnection.prototype.disconnect = function (this: RedisConnection, wait?: boolean) {
      return wait === false ? disconnect.call(this, wait) : new Promise<void>(() => {});
    };
    try {
      const { worker } = await startWorker(mock, {
        concurrency: 4,
        exitWhenIdle: true,
        closeStuckMs: 300,
        onLog: (level, message) => {
          if (level === 'warn') warnings.push(message);
        },
      });
      const end = await worker.done;
      expect(end.reason).toBe('idle');
      expect(mock.stats().charges).toBe(30);
      expect(worker.snapshot().ended.charged).toBe(30);
      expect(warnings).toContain(
        "closing: the queue's blocking Redis connection did not end within 0.3 s with no job in flight; dropping it",
      );
    } finally {
      RedisConnection.prototype.disconnect = disconnect;
    }
  });
});
