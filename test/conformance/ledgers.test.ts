import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, expect } from 'vitest';
import { RedisLedger } from '../../src/ledger/redis-ledger.js';
import { SqliteLedger } from '../../src/ledger/sqlite-ledger.js';
import {
  closeRedisAdmin,
  deleteKeysUnder,
  globEscape,
  REDIS_URL,
  redisAdmin,
  scanKeys,
} from '../helpers/redis.js';
import { ledgerConformance } from './ledger-conformance.js';

ledgerConformance('SqliteLedger', async () => {
  const directory = await mkdtemp(join(tmpdir(), 'bulkbill-ledger-conformance-'));
  const path = join(directory, 'ledger.db');
  const raw = <T>(use: (db: Database.Database) => T): T => {
    const db = new Database(path);
    try {
      return use(db);
    } finally {
      db.close();
    }
  };
  return {
    open(tuning) {
      return new SqliteLedger({ path, ...tuning });
    },
    async claimAs(runId, pid, host, beatAgoMs = 0) {
      raw((db) =>
        db
          .prepare(
            'INSERT OR REPLACE INTO run_owners (run_id, pid, host, since, beat) VALUES (?, ?, ?, ?, ?)',
          )
          .run(runId, pid, host, '2026-11-30T00:00:00.000Z', Date.now() - beatAgoMs),
      );
    },
    async traces(runId) {
      return raw((db) =>
        ['runs', 'charges', 'run_owners']
          .map(
            (table) =>
              db
                .prepare<[string], { n: number }>(
                  `SELECT count(*) AS n FROM ${table} WHERE run_id = ?`,
                )
                .get(runId)?.n ?? 0,
          )
          .reduce((sum, n) => sum + n, 0),
      );
    },
    async destroy() {
      await rm(directory, { recursive: true, force: true });
    },
  };
});

// Every key of this file starts with it; each test adds its own number.
const suitePrefix = `bbtest:${randomBytes(6).toString('hex')}`;
let storages = 0;

ledgerConformance('RedisLedger', async () => {
  const prefix = `${suitePrefix}:${++storages}`;
  return {
    open(tuning) {
      return new RedisLedger({ redis: REDIS_URL, prefix, ...tuning });
    },
    async claimAs(runId, pid, host, beatAgoMs = 0) {
      await redisAdmin().set(
        `${prefix}:{${runId}}:owner`,
        JSON.stringify({
          pid,
          host,
          since: '2026-11-30T00:00:00.000Z',
          beat: Date.now() - beatAgoMs,
        }),
      );
    },
    async traces(runId) {
      const keys = await scanKeys(`${globEscape(prefix)}:{${globEscape(runId)}}:*`);
      return keys.length + (await redisAdmin().hexists(`${prefix}:runs`, runId));
    },
    async destroy() {
      await deleteKeysUnder(prefix);
    },
  };
});

afterAll(async () => {
  // Each test deleted its keys: nothing of this file is left in Redis.
  expect(await scanKeys(`${suitePrefix}:*`)).toEqual([]);
  await closeRedisAdmin();
});
