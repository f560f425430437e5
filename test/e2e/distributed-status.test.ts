import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Redis } from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
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

// What `status --redis` reads (counts, pace, queue, live workers) and `run --redis --dry-run`,
// in this process against the real Redis and a real mock provider.

let dir: string;
let prefix: string;
const opened: Array<{ close(): Promise<unknown> }> = [];
const connections: Redis[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bulkbill-status-'));
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

async function usersFile(count: number): Promise<string> {
  const input = join(dir, `users-${prefix}.csv`);
  const rows = Array.from({ length: count }, (_, index) => `user-${index},250,EUR`);
  await writeFile(input, `user_id,amount,currency\n${rows.join('\n')}\n`);
  return input;
}

async function provider(latencyMs: number): Promise<MockProvider> {
  const mock = await startMockProvider({ port: 0, jitter: 0, seed: 2, latencyMs });
  opened.push({ close: () => mock.close({ graceMs: 0 }) });
  return mock;
}

describe('status of a run on the distributed engine', () => {
  it('shows counts, the pace, the queue and the live workers by name while the run goes on', async () => {
    prefix = uniquePrefix();
    const mock = await provider(100);
    const { choice } = await enqueue({
      input: await usersFile(300),
      redis: connect('short'),
      prefix,
      queue: 'q',
    });
    const runId = choice.run.runId;
    const client = new ProviderClient({ endpoint: `${mock.url}/charge`, connections: 10 });
    opened.push(client);
    const worker = await BillingWorker.start({
      redis: connect('patient'),
      prefix,
      queue: 'q',
      endpoint: client.endpoint,
      sender: client,
      policy: resolveRetryPolicy(),
      concurrency: 10,
      name: 'billing-host-7',
    });
    opened.push(worker);
    const reader = new DistributedStatusReader({ redis: connect('short'), prefix, queue: 'q' });
    opened.push(reader);

    const during = await reader.read(runId, 500);
    expect(during.run.endpoint).toBe(client.endpoint);
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
    prefix = uniquePrefix();
    const mock = await provider(1);
    const result = await billDistributed({
      input: await usersFile(40),
      endpoint: `${mock.url}/charge`,
      redis: REDIS_URL,
      prefix,
      queue: 'q',
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
