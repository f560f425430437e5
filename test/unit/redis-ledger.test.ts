import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BulkbillError } from '../../src/domain/errors.js';
import { HISTORY_KEPT, type ImportRow } from '../../src/ledger/ledger.js';
import { RedisLedger, type RedisLedgerOptions } from '../../src/ledger/redis-ledger.js';

// The storage-independent promises are in test/conformance/ledger-conformance.ts; these are the
// Redis ledger's own: options, connection errors, key layout, crashed imports, memory per user.

const REDIS_URL = 'redis://127.0.0.1:6379';
const suitePrefix = `bbtest:${randomBytes(6).toString('hex')}`;
const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const admin = new Redis(REDIS_URL, { maxRetriesPerRequest: 3 });
let tests = 0;
let prefix: string;
let opened: RedisLedger[];

beforeEach(() => {
  prefix = `${suitePrefix}:${++tests}`;
  opened = [];
});

afterEach(async () => {
  for (const ledger of opened) await ledger.close();
  const keys = await scanKeys(`${prefix}:*`);
  if (keys.length > 0) await admin.unlink(...keys);
});

afterAll(async () => {
  expect(await scanKeys(`${suitePrefix}:*`)).toEqual([]);
  await admin.quit();
});

async function scanKeys(pattern: string): Promise<string[]> {
  const keys: string[] = [];
  let cursor = '0';
  do {
    const [next, found] = await admin.scan(cursor, 'MATCH', pattern, 'COUNT', 1_000);
    keys.push(...found);
    cursor = next;
  } while (cursor !== '0');
  return keys.sort();
}

function open(options: Partial<RedisLedgerOptions> = {}): RedisLedger {
  const ledger = new RedisLedger({ redis: REDIS_URL, prefix, ...options });
  opened.push(ledger);
  return ledger;
}

function rows(count: number, from = 1): ImportRow[] {
  return Array.from({ length: count }, (_, index) => ({
    line: from + index + 1,
    userId: `u${from + index}`,
    amount: 100,
    currency: 'USD',
    metadata: {},
  }));
}

async function* batchesOf(...batches: ImportRow[][]): AsyncIterable<ImportRow[]> {
  yield* batches;
}

function runOf(runId: string, inputHash = `hash-${runId}`) {
  return { runId, inputHash, inputPath: 'users.csv', endpoint: 'http://127.0.0.1:1/charge' };
}

async function thrownBy(action: () => unknown): Promise<unknown> {
  try {
    await action();
  } catch (error) {
    return error;
  }
  throw new Error('expected an error');
}

describe('RedisLedger: options', () => {
  it.each([
    [{ prefix: '' }, 'Expected `prefix` to be a non-empty string without { or }, got "" (string)'],
    [{ prefix: 'a{b}' }, '`prefix`'],
    [{ batchSize: 0 }, 'Expected `batchSize` to be an integer >= 1, got 0 (number)'],
    [{ batchSize: 1.5 }, '`batchSize`'],
    [
      { flushIntervalMs: -1 },
      'Expected `flushIntervalMs` to be a finite number >= 0, got -1 (number)',
    ],
    [{ redis: 42 }, 'Expected `redis` to be a redis:// URL or an ioredis client, got 42 (number)'],
  ])('names the option and the value: %j', async (options, message) => {
    const error = await thrownBy(
      () => new RedisLedger({ redis: REDIS_URL, ...(options as Partial<RedisLedgerOptions>) }),
    );
    expect(error).toBeInstanceOf(BulkbillError);
    expect((error as BulkbillError).code).toBe('BULKBILL_CONFIG_INVALID');
    expect((error as BulkbillError).message).toContain(message);
  });

  it('refuses a string that is not a Redis URL without echoing it (it may hold a password)', async () => {
    const error = await thrownBy(() => new RedisLedger({ redis: 'http://:s3cret@example.com' }));
    expect((error as BulkbillError).message).toMatch(/`redis`/);
    expect((error as BulkbillError).message).not.toContain('s3cret');
  });
});

describe('RedisLedger: connection', () => {
  it('fails with an I/O error naming the URL, never the password, when Redis does not answer', async () => {
    const ledger = open({ redis: 'redis://bulkbill:s3cret@127.0.0.1:1/0' });
    const error = await thrownBy(() => ledger.findRun('r1'));
    expect(error).toBeInstanceOf(BulkbillError);
    expect((error as BulkbillError).code).toBe('BULKBILL_IO');
    expect((error as BulkbillError).retryable).toBe(true);
    expect((error as BulkbillError).message).toContain('redis://bulkbill@127.0.0.1:1/0');
    expect((error as BulkbillError).message).not.toContain('s3cret');
    expect(JSON.stringify(error)).not.toContain('s3cret');
  });

  it('leaves a client it was given open', async () => {
    const client = new Redis(REDIS_URL);
    try {
      const ledger = new RedisLedger({ redis: client, prefix });
      await ledger.createRun(runOf('r1'), batchesOf(rows(2)), () => {});
      await ledger.close();
      expect(await client.ping()).toBe('PONG');
      expect(await new RedisLedger({ redis: client, prefix }).findRun('r1')).toMatchObject({
        total: 2,
      });
    } finally {
      await client.quit();
    }
  });

  it('keeps the error of a background write for the next flush(), and the outcomes for the one after', async () => {
    const client = new Redis(REDIS_URL);
    try {
      const ledger = new RedisLedger({ redis: client, prefix, flushIntervalMs: 1 });
      await ledger.createRun(runOf('r1'), batchesOf(rows(3)), () => {});
      client.disconnect();
      const outcome = {
        state: 'charged',
        attempts: 1,
        ambiguous: false,
        httpStatus: 200,
        latencyMs: 5,
        chargeId: 'ch_1',
        error: undefined,
      } as const;
      ledger.record('r1', { ...outcome, userId: 'u1' });
      ledger.record('r1', { ...outcome, userId: 'u2' });
      await new Promise((resolve) => setTimeout(resolve, 50)); // the timer's write fails
      await client.connect();
      const error = await thrownBy(() => ledger.flush());
      expect(error).toBeInstanceOf(BulkbillError);
      expect((error as BulkbillError).message).toMatch(/^cannot record outcomes in the ledger: /);
      ledger.record('r1', { ...outcome, userId: 'u3', state: 'declined' });
      await ledger.flush();
      expect(await open().counts('r1')).toMatchObject({ charged: 2, declined: 1, pending: 0 });
    } finally {
      await client.quit();
    }
  });
});

describe('RedisLedger: record', () => {
  it('writes a burst of outcomes recorded at once, more than one script can take', async () => {
    const users = 120_000;
    const ledger = open({ flushIntervalMs: 60_000 });
    const all = rows(users);
    await ledger.createRun(runOf('r1'), batchesOf(all), () => {});
    // One synchronous loop: the buffer fills far past batchSize before any write can start.
    for (const { userId } of all) {
      ledger.record('r1', {
        userId,
        state: 'charged',
        attempts: 1,
        ambiguous: false,
        httpStatus: 200,
        latencyMs: 3,
        chargeId: `ch_${userId}`,
        error: undefined,
      });
    }
    await ledger.flush();
    expect(await open().counts('r1')).toMatchObject({ charged: users, pending: 0 });
    expect(await ledger.totals('r1', 'charged')).toEqual({ USD: 100 * users });
  });
});

describe("RedisLedger: the distributed engine's extras", () => {
  function outcome(userId: string, state: 'charged' | 'failed' | 'unknown', ambiguous: boolean) {
    return {
      userId,
      state,
      attempts: 3,
      ambiguous,
      httpStatus: state === 'charged' ? 200 : 503,
      latencyMs: 12,
      chargeId: state === 'charged' ? 'ch_1' : undefined,
      error: state === 'charged' ? undefined : 'unavailable | try later',
    };
  }

  it("reads a charge's state and ambiguity with one HGET, as a worker does before each attempt", async () => {
    const ledger = open();
    await ledger.createRun(runOf('r'), batchesOf(rows(3)), () => {});
    ledger.record('r', outcome('u1', 'unknown', true));
    ledger.record('r', outcome('u2', 'charged', false));
    await ledger.flush();
    const blank = { attempts: 0, budgetFrom: 0, firstAttemptAt: undefined };
    expect(await ledger.chargeState('r', 'u1')).toEqual({
      ...blank,
      attempts: 3,
      state: 'unknown',
      ambiguous: true,
    });
    expect(await ledger.chargeState('r', 'u2')).toEqual({
      ...blank,
      attempts: 3,
      state: 'charged',
      ambiguous: false,
    });
    expect(await ledger.chargeState('r', 'u3')).toEqual({
      ...blank,
      state: 'pending',
      ambiguous: false,
    });
    await ledger.startAttempts('r', [{ userId: 'u3', attempts: 1, ambiguous: false, at: 42 }]);
    expect(await ledger.chargeState('r', 'u3')).toEqual({
      state: 'pending',
      attempts: 1,
      budgetFrom: 0,
      ambiguous: true,
      firstAttemptAt: 42,
    });
    expect(await ledger.chargeState('r', 'nobody')).toBeUndefined();
  });

  it('binds an unbound run to the first endpoint asked, and keeps a stop note until cleared', async () => {
    const ledger = open();
    await ledger.createRun({ ...runOf('r'), endpoint: '' }, batchesOf(rows(1)), () => {});
    expect(await ledger.bindEndpoint('r', 'http://a.example/charge')).toBe(
      'http://a.example/charge',
    );
    expect(await ledger.bindEndpoint('r', 'http://b.example/charge')).toBe(
      'http://a.example/charge',
    );
    expect((await ledger.findRun('r'))?.endpoint).toBe('http://a.example/charge');
    expect(await ledger.stopNote('r')).toBeUndefined();
    await ledger.noteStop('r', 'HTTP 401');
    await ledger.noteStop('r', 'HTTP 403');
    expect(await ledger.stopNote('r')).toBe('HTTP 401');
    await ledger.clearStop('r');
    expect(await ledger.stopNote('r')).toBeUndefined();
  });
});

describe('RedisLedger: keys', () => {
  it('keeps a run in a registry entry and keys under one hash tag, none of them expiring', async () => {
    const ledger = open();
    await ledger.createRun(
      runOf('r1'),
      batchesOf([...rows(3), { ...rows(1)[0], line: 9 } as ImportRow]),
      () => {},
    );
    await ledger.claimRun('r1');
    const base = `${prefix}:{r1}:`;
    expect(await scanKeys(`${prefix}:*`)).toEqual(
      [
        `${base}invalid`,
        `${base}order`,
        `${base}owner`,
        `${base}rows`,
        `${base}tally`,
        `${prefix}:runs`,
      ].sort(),
    );
    for (const key of await scanKeys(`${base}*`)) expect(await admin.pttl(key)).toBe(-1);
    expect(await admin.hget(`${base}rows`, 'u1')).toBe('2|100|USD|');
    expect(await admin.hget(`${base}invalid`, '4')).toBe(
      '9|100|USD||user_id: appears twice (first on line 2)',
    );
    await ledger.releaseRun('r1');
    expect(await admin.exists(`${base}owner`)).toBe(0);
  });
});

describe("RedisLedger: the dashboard's keys", () => {
  const sample = (at: number) => ({
    at,
    source: 'host:1',
    ended: 1,
    attempts: 1,
    retries: 0,
    refusals: 0,
    inFlight: 1,
    limit: 4,
    breaker: undefined,
    hist: [1],
  });

  it('keeps a history of the latest HISTORY_KEPT attempts with reasons cut short, a problems list and a samples stream, under the hash tag, none expiring', async () => {
    const ledger = open({ flushIntervalMs: 60_000 });
    await ledger.createRun(runOf('r1'), batchesOf(rows(2)), () => {});
    // 301 UTF-16 units, separators included, a surrogate pair at the 200th and 201st.
    const long = `${'x|\\'.repeat(66)}a💳${'y'.repeat(100)}`;
    for (let n = 1; n <= HISTORY_KEPT + 3; n++) {
      ledger.record('r1', {
        userId: 'u1',
        state: 'pending',
        attempts: n,
        ambiguous: false,
        httpStatus: 503,
        latencyMs: 10,
        chargeId: undefined,
        error: n === HISTORY_KEPT + 3 ? long : `try ${n}`,
        attempt: { n, at: n * 1_000, throttled: false },
      });
    }
    ledger.record('r1', {
      userId: 'u2',
      state: 'failed',
      attempts: 1,
      ambiguous: false,
      httpStatus: 500,
      latencyMs: 10,
      chargeId: undefined,
      error: long,
      attempt: { n: 1, at: 1_000, throttled: false },
    });
    await ledger.flush();
    await ledger.noteSample('r1', sample(1_000));
    const history = await ledger.attemptHistory('r1', 'u1');
    expect(history.map((one) => one.attempt)).toEqual(
      Array.from({ length: HISTORY_KEPT }, (_, index) => index + 4),
    );
    // Cut at 200 UTF-16 units, never inside a surrogate pair; the row keeps it whole.
    expect(history.at(-1)?.reason).toBe(`${long.slice(0, 199)}…`);
    expect((await ledger.charge('r1', 'u2'))?.error).toBe(long);
    const base = `${prefix}:{r1}:`;
    const keys = await scanKeys(`${base}*`);
    expect(keys).toEqual(
      expect.arrayContaining([`${base}history`, `${base}problems`, `${base}samples`]),
    );
    for (const key of keys) expect(await admin.pttl(key)).toBe(-1);
    expect(await admin.lrange(`${base}problems`, 0, -1)).toEqual(['u2']);
    expect(await admin.hlen(`${base}history`)).toBe(2);
  });

  it('reads the problems and history of a run billed by an older bulkbill, which kept neither', async () => {
    const ledger = open({ flushIntervalMs: 60_000 });
    await ledger.createRun(runOf('r1'), batchesOf(rows(4)), () => {});
    const ended = (userId: string, state: 'failed' | 'declined') => ({
      userId,
      state,
      attempts: 1,
      ambiguous: false,
      httpStatus: 500,
      latencyMs: 10,
      chargeId: undefined,
      error: 'no',
    });
    ledger.record('r1', ended('u1', 'failed'));
    ledger.record('r1', ended('u3', 'declined'));
    await ledger.flush();
    await admin.unlink(`${prefix}:{r1}:problems`, `${prefix}:{r1}:history`);
    // Then a newer one bills the rest: its problems are listed, the older ones found by a scan.
    ledger.record('r1', { ...ended('u2', 'failed'), attempt: { n: 1, at: 5, throttled: false } });
    await ledger.flush();
    const found = await ledger.problems('r1', { limit: 10 });
    expect(found.rows.map((charge) => charge.userId)).toEqual(['u3', 'u2', 'u1']);
    expect(found.matching).toBe(3);
    expect((await ledger.problems('r1', { state: 'failed', limit: 1 })).matching).toBe(2);
    expect(await ledger.attemptHistory('r1', 'u1')).toEqual([]);
    expect(await ledger.attemptHistory('r1', 'u2')).toHaveLength(1);
  });

  it('adds an attempt once when a batch is written again (its answer was lost)', async () => {
    const ledger = open({ flushIntervalMs: 60_000 });
    await ledger.createRun(runOf('r1'), batchesOf(rows(1)), () => {});
    const retried = {
      userId: 'u1',
      state: 'pending',
      attempts: 1,
      ambiguous: false,
      httpStatus: 503,
      latencyMs: 10,
      chargeId: undefined,
      error: 'busy',
      attempt: { n: 1, at: 1_000, throttled: false },
    } as const;
    const charged = {
      ...retried,
      state: 'failed',
      attempts: 2,
      error: 'still busy',
      attempt: { n: 2, at: 2_000, throttled: false },
    } as const;
    for (let write = 0; write < 2; write++) {
      ledger.record('r1', retried);
      ledger.record('r1', charged);
      await ledger.flush();
    }
    expect((await ledger.attemptHistory('r1', 'u1')).map((one) => one.at)).toEqual([1_000, 2_000]);
    // The list may hold the user twice (it moved into failed twice); it is listed once.
    expect(await ledger.problems('r1', { limit: 10 })).toMatchObject({
      matching: 1,
      rows: [{ userId: 'u1', state: 'failed' }],
    });
  });

  it('drops a sample noted while the import fails, with the rest of the import', async () => {
    const ledger = open();
    async function* batches(): AsyncIterable<ImportRow[]> {
      yield rows(2);
      await ledger.noteSample('r1', sample(1_000));
      yield rows(2, 3);
      throw new Error('input broke');
    }
    await expect(ledger.createRun(runOf('r1'), batches(), () => {})).rejects.toThrow('input broke');
    expect(await scanKeys(`${prefix}:*`)).toEqual([]);
  });
});

describe('RedisLedger: imports', () => {
  it('lets only one of two imports of the same input started at once through', async () => {
    const [a, b] = [open(), open()];
    const results = await Promise.allSettled([
      a.createRun(runOf('ra', 'twin'), batchesOf(rows(500)), () => {}, { knownRuns: [] }),
      b.createRun(runOf('rb', 'twin'), batchesOf(rows(500)), () => {}, { knownRuns: [] }),
    ]);
    expect(results.filter((result) => result.status === 'fulfilled')).toHaveLength(1);
    const refused = results.find((result) => result.status === 'rejected');
    expect(refused?.reason).toBeInstanceOf(BulkbillError);
    expect(String(refused?.reason)).toMatch(/run r[ab] was created in this ledger while/);
    const winner = (await a.listRuns())[0]?.runId;
    expect(await scanKeys(`${prefix}:{${winner === 'ra' ? 'rb' : 'ra'}}:*`)).toEqual([]);
  });

  it('splits a large batch into several scripts, duplicates across them included', async () => {
    const ledger = open();
    const duplicates: unknown[] = [];
    const all = [...rows(2_500), { ...rows(1, 1)[0], line: 9_000 } as ImportRow];
    const run = await ledger.createRun(runOf('r1'), batchesOf(all), (d) => duplicates.push(d));
    expect(run.total).toBe(2_501);
    expect(duplicates).toEqual([{ userId: 'u1', line: 9_000, firstLine: 2 }]);
    expect(await ledger.counts('r1')).toMatchObject({ pending: 2_500, invalid: 1 });
  });

  it('refuses the run id of an import in progress, naming its process', async () => {
    const ledger = open();
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    async function* held(): AsyncIterable<ImportRow[]> {
      yield rows(2);
      await gate;
    }
    const first = ledger.createRun(runOf('r1'), held(), () => {});
    await new Promise((resolve) => setTimeout(resolve, 50));
    await expect(open().createRun(runOf('r1'), batchesOf(rows(1)), () => {})).rejects.toThrow(
      new RegExp(`run r1 is being imported by process ${process.pid} on `),
    );
    release();
    expect((await first).total).toBe(2);
  });

  it('fails an import whose lease was lost, keeping nothing of it', async () => {
    const ledger = open();
    async function* batches(): AsyncIterable<ImportRow[]> {
      yield rows(2);
      await admin.del(`${prefix}:{r1}:import`); // as if it had stalled past the lease
      yield rows(2, 3);
    }
    await expect(ledger.createRun(runOf('r1'), batches(), () => {})).rejects.toThrow(
      /the import of run r1 lost its lease/,
    );
    expect(await scanKeys(`${prefix}:*`)).toEqual([]);
  });

  it('clears an import left by a process of another host once its lease has expired', async () => {
    const stale = {
      inputHash: 'h',
      inputPath: 'users.csv',
      endpoint: 'e',
      createdAt: '2026-11-30T00:00:00.000Z',
      total: 0,
      importing: { token: 'dead', pid: 1, host: 'elsewhere' },
      n: 1,
    };
    await admin.hset(`${prefix}:runs`, 'r1', JSON.stringify(stale));
    await admin.hset(`${prefix}:{r1}:rows`, 'u1', '2|100|USD|');
    await admin.set(`${prefix}:{r1}:import`, 'dead', 'PX', 30_000);
    const ledger = open();
    // Its lease still runs: it may be alive, and a process elsewhere cannot be checked.
    await expect(ledger.createRun(runOf('r1'), batchesOf(rows(1)), () => {})).rejects.toThrow(
      /run r1 is being imported by process 1 on elsewhere/,
    );
    expect(await ledger.findRun('r1')).toBeUndefined();
    await admin.del(`${prefix}:{r1}:import`); // the lease expires
    const run = await ledger.createRun(runOf('r1'), batchesOf(rows(3)), () => {});
    expect(run.total).toBe(3);
    expect(await ledger.counts('r1')).toMatchObject({ pending: 3 });
  });

  it('leaves nothing visible when killed mid-import (kill -9), and lets the run id be used again', async () => {
    const directory = await mkdtemp(join(tmpdir(), 'bulkbill-redis-crash-'));
    try {
      const script = join(directory, 'import.mts');
      const source = new URL('../../src/ledger/redis-ledger.ts', import.meta.url).href;
      await writeFile(
        script,
        `import { RedisLedger } from ${JSON.stringify(source)};
const ledger = new RedisLedger({ redis: ${JSON.stringify(REDIS_URL)}, prefix: ${JSON.stringify(prefix)} });
async function* batches() {
  for (let b = 0; b < 3; b++) {
    yield Array.from({ length: 1000 }, (_, i) => ({ line: b * 1000 + i + 2, userId: 'U' + (b * 1000 + i), amount: 100, currency: 'USD', metadata: {} }));
  }
  process.stdout.write('imported\\n');
  setInterval(() => {}, 1000);
  await new Promise(() => {});
}
await ledger.createRun({ runId: 'r1', inputHash: 'h', inputPath: 'users.csv', endpoint: 'e' }, batches(), () => {});
`,
      );
      const child = spawn(process.execPath, ['--import', 'tsx', script], {
        cwd: repoRoot,
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      const exited = once(child, 'exit');
      await new Promise<void>((resolve, reject) => {
        child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
          if (chunk.includes('imported')) resolve();
        });
        child.on('exit', () => reject(new Error('the importing process ended early')));
      });
      child.kill('SIGKILL');
      await exited;

      // Left behind: an entry marked importing, and rows (and the folds of their upper-case
      // ids) that expire on their own.
      const rowsKey = `${prefix}:{r1}:rows`;
      const foldsKey = `${prefix}:{r1}:folds`;
      expect(await admin.hlen(rowsKey)).toBe(3_000);
      expect(await admin.hlen(foldsKey)).toBe(3_000);
      for (const key of [rowsKey, foldsKey]) {
        const ttl = await admin.pttl(key);
        expect(ttl, key).toBeGreaterThan(0);
        expect(ttl, key).toBeLessThanOrEqual(60_000);
      }
      const reader = open();
      expect(await reader.findRun('r1')).toBeUndefined();
      expect(await reader.listRuns()).toEqual([]);
      expect(await reader.pendingCharges('r1', 0, 10)).toEqual([]);
      expect(await reader.counts('r1')).toMatchObject({ pending: 0 });

      // Its process is gone from this host: the run id is free at once, nothing of the dead
      // import stays: not its rows, nor its folds (u1 is no second spelling of a dead U1).
      const duplicates: unknown[] = [];
      const run = await reader.createRun(
        { runId: 'r1', inputHash: 'h', inputPath: 'users.csv', endpoint: 'e' },
        batchesOf(rows(5)),
        (duplicate) => duplicates.push(duplicate),
        { knownRuns: [] },
      );
      expect(duplicates).toEqual([]);
      expect(run.total).toBe(5);
      expect(await admin.exists(foldsKey)).toBe(0);
      expect(await admin.hlen(rowsKey)).toBe(5);
      expect(await admin.llen(`${prefix}:{r1}:order`)).toBe(5);
      expect(await reader.counts('r1')).toMatchObject({ pending: 5 });
      expect(await admin.pttl(rowsKey)).toBe(-1);
    } finally {
      await rm(directory, { recursive: true, force: true });
    }
  });
});

describe('RedisLedger: memory', () => {
  it('keeps a 100,000-user run in under 400 bytes of Redis memory per user', async () => {
    const users = 100_000;
    const ledger = open({ flushIntervalMs: 60_000 });
    async function* batches(): AsyncIterable<ImportRow[]> {
      for (let start = 0; start < users; start += 5_000) {
        yield Array.from({ length: 5_000 }, (_, index): ImportRow => {
          const n = start + index;
          return {
            line: n + 2,
            userId: `user-${String(n).padStart(7, '0')}`,
            amount: 1_000 + (n % 9_000),
            currency: 'USD',
            metadata: n % 10 === 0 ? { plan: 'pro-yearly' } : {},
          };
        });
      }
    }
    await ledger.createRun(runOf('cycle'), batches(), () => {});
    // Half charged, with a realistic 24-character charge id, as the engines record them (with
    // the attempt, for the dashboard's history); a tenth of those after a 503; half still pending.
    const at = Date.now();
    for (let n = 0; n < users; n += 2) {
      const userId = `user-${String(n).padStart(7, '0')}`;
      const retried = n % 20 === 0;
      if (retried) {
        ledger.record('cycle', {
          userId,
          state: 'pending',
          attempts: 1,
          ambiguous: false,
          httpStatus: 503,
          latencyMs: 212.5,
          chargeId: undefined,
          error: '503 Service Unavailable',
          attempt: { n: 1, at, throttled: false },
        });
      }
      ledger.record('cycle', {
        userId,
        state: 'charged',
        attempts: retried ? 2 : 1,
        ambiguous: false,
        httpStatus: 200,
        latencyMs: 1_612.4,
        chargeId: `ch_${randomBytes(6).toString('hex')}${String(n).padStart(9, '0')}`,
        error: undefined,
        attempt: { n: retried ? 2 : 1, at: at + 2_000, throttled: false },
      });
    }
    await ledger.flush();
    expect(await ledger.counts('cycle')).toMatchObject({ charged: 50_000, pending: 50_000 });

    // MEMORY USAGE … SAMPLES 0 measures every element: exact for this run, whatever else Redis holds.
    let bytes = 0;
    for (const key of await scanKeys(`${prefix}:*`)) {
      bytes += Number(await admin.memory('USAGE', key, 'SAMPLES', 0));
    }
    const perUser = bytes / users;
    console.log(`Redis ledger: ${perUser.toFixed(1)} bytes per user (MEMORY USAGE, 100,000 users)`);
    expect(perUser).toBeLessThan(400);
  });
});
