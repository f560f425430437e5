import { afterAll, expect } from 'vitest';
import { billDistributed } from '../../src/engine/distributed/distributed-engine.js';
import { ledgerPrefix } from '../../src/engine/distributed/jobs.js';
import { RedisLedger } from '../../src/ledger/redis-ledger.js';
import {
  closeRedisAdmin,
  deleteKeysUnder,
  keysUnder,
  REDIS_URL,
  uniquePrefix,
} from '../helpers/redis.js';
import { engineConformance, engineOver } from './engine-conformance.js';

const prefixes: string[] = [];

engineConformance('the distributed engine on BullMQ and the Redis ledger', async () => {
  // Each engine has its own keys: its queue and its ledger live under a prefix no one else uses.
  const prefix = uniquePrefix();
  prefixes.push(prefix);
  const ledger = new RedisLedger({ redis: REDIS_URL, prefix: ledgerPrefix(prefix) });
  return engineOver(
    ledger,
    (options) =>
      billDistributed({
        ...options,
        headers: [...(options.headers ?? [])],
        redis: REDIS_URL,
        prefix,
        queue: 'charges',
      }),
    async () => {
      await ledger.close();
      await deleteKeysUnder(prefix);
    },
  );
});

afterAll(async () => {
  for (const prefix of prefixes) expect(await keysUnder(prefix)).toEqual([]);
  await closeRedisAdmin();
});
