import { Redis } from 'ioredis';
import { afterAll, beforeAll, expect } from 'vitest';
import { billDistributed } from '../../src/engine/distributed/distributed-engine.js';
import { ledgerPrefix } from '../../src/engine/distributed/jobs.js';
import { RedisLedger } from '../../src/ledger/redis-ledger.js';
import { globEscape, uniquePrefix } from '../helpers/redis.js';
import { OwnRedisServer } from '../helpers/redis-server.js';
import { engineConformance, engineOver } from './engine-conformance.js';

// A Redis of this file's own, with an append-only file: on a Redis that keeps nothing on disk
// (the machine's) a run without --run-id is refused, and the suite bills runs without one too.
const server = new OwnRedisServer({ appendonly: true });
let admin: Redis | undefined;
const prefixes: string[] = [];

beforeAll(async () => {
  await server.start();
  admin = new Redis(server.url, { maxRetriesPerRequest: 3 });
});

async function keysUnder(prefix: string): Promise<string[]> {
  return (await admin?.keys(`${globEscape(prefix)}:*`)) ?? [];
}

engineConformance('the distributed engine on BullMQ and the Redis ledger', async () => {
  // Each engine has its own keys: its queue and its ledger live under a prefix no one else uses.
  const prefix = uniquePrefix();
  prefixes.push(prefix);
  const ledger = new RedisLedger({ redis: server.url, prefix: ledgerPrefix(prefix) });
  return engineOver(
    ledger,
    (options) =>
      billDistributed({
        ...options,
        headers: [...(options.headers ?? [])],
        redis: server.url,
        prefix,
        queue: 'charges',
      }),
    async () => {
      await ledger.close();
      const keys = await keysUnder(prefix);
      if (keys.length > 0) await admin?.unlink(...keys);
    },
  );
});

afterAll(async () => {
  for (const prefix of prefixes) expect(await keysUnder(prefix)).toEqual([]);
  admin?.disconnect();
  await server.destroy();
});
