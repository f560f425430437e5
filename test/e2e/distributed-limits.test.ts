import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { resolveRetryPolicy } from '../../src/control/retry-policy.js';
import { closeRedis, connectRedis } from '../../src/engine/distributed/connection.js';
import { enqueue } from '../../src/engine/distributed/enqueue.js';
import { BillingWorker } from '../../src/engine/distributed/worker.js';
import { type MockProvider, startMockProvider } from '../../src/mock-provider/index.js';
import { ProviderClient } from '../../src/provider/index.js';
import { closeRedisAdmin, deleteKeysUnder, REDIS_URL, uniquePrefix } from '../helpers/redis.js';

// Limits that hold across every worker of a queue, with two workers in this process (each with
// its own connections, as on two machines) against the real Redis and a real mock provider.

let dir: string;
let prefix: string;
const opened: Array<{ close(): Promise<unknown> }> = [];
const connections: Redis[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bulkbill-limits-'));
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

async function provider(options: Parameters<typeof startMockProvider>[0]): Promise<MockProvider> {
  const mock = await startMockProvider({ port: 0, jitter: 0, seed: 5, ...options });
  opened.push({ close: () => mock.close({ graceMs: 0 }) });
  return mock;
}

async function enqueueUsers(count: number): Promise<string> {
  const input = join(dir, `users-${count}-${prefix}.csv`);
  const rows = Array.from({ length: count }, (_, index) => `user-${index},100,USD`);
  await writeFile(input, `user_id,amount,currency\n${rows.join('\n')}\n`);
  const result = await enqueue({ input, redis: connect('short'), prefix, queue: 'q' });
  return result.choice.run.runId;
}

async function startWorker(
  mock: MockProvider,
  options: { concurrency: number; globalConcurrency?: number },
): Promise<BillingWorker> {
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
    concurrency: options.concurrency,
    globalConcurrency: options.globalConcurrency,
    exitWhenIdle: true,
    lockDurationMs: 5_000,
  });
  opened.push(worker);
  return worker;
}

describe('limits across the workers of a queue', () => {
  it('--global-concurrency caps the requests in flight at the provider, whatever each worker allows', async () => {
    prefix = uniquePrefix();
    const mock = await provider({ latencyMs: 40 });
    await enqueueUsers(200);
    const first = await startWorker(mock, { concurrency: 20, globalConcurrency: 6 });
    const second = await startWorker(mock, { concurrency: 20 });
    const [a, b] = await Promise.all([first.done, second.done]);
    expect([a.reason, b.reason]).toEqual(['idle', 'idle']);
    const stats = mock.stats();
    expect(stats.charges).toBe(200);
    expect(stats.duplicate_charges).toBe(0);
    // Each worker alone would have 20 in flight; the queue lets 6 be active at once in all.
    expect(stats.max_in_flight).toBeLessThanOrEqual(6);
    expect(stats.max_in_flight).toBeGreaterThanOrEqual(2);
    expect(first.snapshot().ended.charged + second.snapshot().ended.charged).toBe(200);
  });

  it('--global-concurrency 0 takes the cap off the queue again', async () => {
    prefix = uniquePrefix();
    const queue = new Queue('q', { connection: connect('short'), prefix });
    opened.push(queue);
    const mock = await provider({ latencyMs: 40 });
    await enqueueUsers(100);
    await queue.setGlobalConcurrency(2);
    const worker = await startWorker(mock, { concurrency: 10, globalConcurrency: 0 });
    await worker.done;
    expect(await queue.getGlobalConcurrency()).toBeNull();
    expect(mock.stats().charges).toBe(100);
    expect(mock.stats().max_in_flight).toBeGreaterThan(2);
  });
});
