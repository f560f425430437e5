import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BulkbillError } from '../../src/domain/errors.js';
import type {
  ChargeOutcome,
  ChargeRecord,
  DuplicateUser,
  ImportRow,
  RunRecord,
} from '../../src/ledger/ledger.js';
import { SqliteLedger, type SqliteLedgerOptions } from '../../src/ledger/sqlite-ledger.js';

let dir: string;
let opened: SqliteLedger[];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bulkbill-sqlite-ledger-'));
  opened = [];
});

afterEach(async () => {
  for (const ledger of opened) await ledger.close();
  await rm(dir, { recursive: true, force: true });
});

function open(options: Partial<SqliteLedgerOptions> = {}): SqliteLedger {
  const ledger = new SqliteLedger({ path: join(dir, 'ledger.db'), ...options });
  opened.push(ledger);
  return ledger;
}

function row(line: number, userId: string, overrides: Partial<ImportRow> = {}): ImportRow {
  return { line, userId, amount: 100 * line, currency: 'USD', metadata: {}, ...overrides };
}

/** `count` valid rows, user ids `u1`…, lines 2… as after a CSV header. */
function rows(count: number): ImportRow[] {
  return Array.from({ length: count }, (_, index) => row(index + 2, `u${index + 1}`));
}

async function* batchesOf(all: readonly ImportRow[], size = 3): AsyncIterable<ImportRow[]> {
  for (let start = 0; start < all.length; start += size) yield all.slice(start, start + size);
}

function runOf(runId: string, inputHash = `hash-${runId}`) {
  return { runId, inputHash, inputPath: 'users.csv', endpoint: 'http://127.0.0.1:1/charge' };
}

async function create(
  ledger: SqliteLedger,
  runId: string,
  all: readonly ImportRow[],
  inputHash?: string,
): Promise<{ run: RunRecord; duplicates: DuplicateUser[] }> {
  const duplicates: DuplicateUser[] = [];
  const run = await ledger.createRun(runOf(runId, inputHash), batchesOf(all), (duplicate) =>
    duplicates.push(duplicate),
  );
  return { run, duplicates };
}

function outcome(userId: string, overrides: Partial<ChargeOutcome> = {}): ChargeOutcome {
  return {
    userId,
    state: 'charged',
    attempts: 1,
    ambiguous: false,
    httpStatus: 200,
    latencyMs: 12,
    chargeId: `ch_${userId}`,
    error: undefined,
    ...overrides,
  };
}

async function collect(iterable: AsyncIterable<ChargeRecord>): Promise<ChargeRecord[]> {
  const all: ChargeRecord[] = [];
  for await (const charge of iterable) all.push(charge);
  return all;
}

/** Polls `check` until it holds or `timeoutMs` passes; the one place this file waits on time. */
async function eventually(check: () => Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`not true after ${timeoutMs}ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

describe('SqliteLedger: opening', () => {
  it('names the path when the directory does not exist', () => {
    const path = join(dir, 'missing', 'ledger.db');
    let thrown: unknown;
    try {
      new SqliteLedger({ path });
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(BulkbillError);
    expect((thrown as BulkbillError).code).toBe('BULKBILL_CONFIG_INVALID');
    expect((thrown as BulkbillError).message).toContain(path);
  });

  it('names the path when the file is not a SQLite database', async () => {
    const path = join(dir, 'not-a-ledger.db');
    await writeFile(path, 'user_id,amount,currency\n'.repeat(200));
    let thrown: unknown;
    try {
      new SqliteLedger({ path });
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(BulkbillError);
    expect((thrown as BulkbillError).message).toContain(path);
    expect((thrown as BulkbillError).message).toMatch(/not a database/);
  });
});

describe('SqliteLedger: createRun', () => {
  it('imports every batch and returns the run with its total', async () => {
    const ledger = open();
    const { run, duplicates } = await create(ledger, 'r1', rows(7));
    expect(run).toMatchObject({ ...runOf('r1'), total: 7, finishedAt: undefined });
    expect(Number.isNaN(Date.parse(run.createdAt))).toBe(false);
    expect(duplicates).toEqual([]);
    expect(await ledger.findRun('r1')).toEqual(run);
    expect(await ledger.counts('r1')).toEqual({
      pending: 7,
      charged: 0,
      declined: 0,
      failed: 0,
      unknown: 0,
      invalid: 0,
    });
  });

  it('leaves no run and no charges when the batches throw half-way', async () => {
    const ledger = open();
    async function* failing(): AsyncIterable<ImportRow[]> {
      yield rows(3);
      yield [row(5, 'u4'), row(6, 'u5')];
      throw new Error('input broke on line 7');
    }
    await expect(ledger.createRun(runOf('r1'), failing(), () => {})).rejects.toThrow(
      'input broke on line 7',
    );
    expect(await ledger.findRun('r1')).toBeUndefined();
    expect(await ledger.findLatestRun('hash-r1')).toBeUndefined();
    expect(Object.values(await ledger.counts('r1')).every((n) => n === 0)).toBe(true);
    expect(await collect(ledger.charges('r1'))).toEqual([]);
    expect(await ledger.charge('r1', 'u1')).toBeUndefined();

    // Nothing is left half-open: the same run id imports cleanly afterwards.
    const { run } = await create(ledger, 'r1', rows(2));
    expect(run.total).toBe(2);
  });

  it('leaves nothing when onDuplicate throws', async () => {
    const ledger = open();
    const all = [row(2, 'a'), row(3, 'a')];
    await expect(
      ledger.createRun(runOf('r1'), batchesOf(all), () => {
        throw new Error('duplicates are fatal here');
      }),
    ).rejects.toThrow('duplicates are fatal here');
    expect(await ledger.findRun('r1')).toBeUndefined();
    expect(await collect(ledger.charges('r1'))).toEqual([]);
  });

  it('refuses a run id that already exists and keeps the first run whole', async () => {
    const ledger = open();
    const { run } = await create(ledger, 'r1', rows(3));
    await expect(create(ledger, 'r1', rows(5))).rejects.toThrow();
    expect(await ledger.findRun('r1')).toEqual(run);
    expect((await collect(ledger.charges('r1'))).length).toBe(3);
  });

  it('records a duplicate user id invalid and tells onDuplicate the first line', async () => {
    const ledger = open();
    const all = [row(2, 'a'), row(3, 'b'), row(4, 'a', { amount: 999 }), row(5, 'a')];
    const { run, duplicates } = await create(ledger, 'r1', all);
    expect(duplicates).toEqual([
      { userId: 'a', line: 4, firstLine: 2 },
      { userId: 'a', line: 5, firstLine: 2 },
    ]);
    expect(run.total).toBe(4);
    const charges = await collect(ledger.charges('r1'));
    expect(charges.map((c) => [c.userId, c.line, c.state, c.amount])).toEqual([
      ['a', 2, 'pending', 200],
      ['b', 3, 'pending', 300],
      ['a', 4, 'invalid', 999],
      ['a', 5, 'invalid', 500],
    ]);
    expect(charges[2]?.error).toMatch(/^user_id: appears twice \(first on line 2\)$/);
    expect(charges[3]?.error).toMatch(/line 2/);
    expect((await ledger.counts('r1')).invalid).toBe(2);
  });

  it('records rows that failed validation invalid, with their reason, and counts them in total', async () => {
    const ledger = open();
    const all = [
      row(2, 'a'),
      row(3, 'b', { amount: 0, invalidReason: 'amount: expected a positive integer' }),
      row(4, 'c'),
      // An invalid row is not a duplicate, and does not make a later valid row one.
      row(5, 'c', { invalidReason: 'currency: expected ISO 4217' }),
      row(6, 'd', { invalidReason: 'currency: expected ISO 4217' }),
      row(7, 'd'),
    ];
    const { run, duplicates } = await create(ledger, 'r1', all);
    expect(duplicates).toEqual([]);
    expect(run.total).toBe(6);
    const charges = await collect(ledger.charges('r1'));
    expect(charges.map((c) => [c.userId, c.state, c.error])).toEqual([
      ['a', 'pending', undefined],
      ['b', 'invalid', 'amount: expected a positive integer'],
      ['c', 'pending', undefined],
      ['c', 'invalid', 'currency: expected ISO 4217'],
      ['d', 'invalid', 'currency: expected ISO 4217'],
      ['d', 'pending', undefined],
    ]);
    const counts = await ledger.counts('r1');
    expect(counts).toMatchObject({ pending: 3, invalid: 3 });
    expect(Object.values(counts).reduce((sum, n) => sum + n, 0)).toBe(run.total);
  });

  it('keeps metadata, and stores {} as NULL (read back as an empty object)', async () => {
    const ledger = open();
    const metadata = { plan: 'pro, yearly', note: 'says "hi"\nbye', emoji: '💳' };
    await create(ledger, 'r1', [row(2, 'a', { metadata }), row(3, 'b')]);
    expect((await ledger.charge('r1', 'a'))?.metadata).toEqual(metadata);
    expect((await ledger.charge('r1', 'b'))?.metadata).toEqual({});

    // The column itself: read through a raw connection to the same file.
    const { default: Database } = await import('better-sqlite3');
    const raw = new Database(join(dir, 'ledger.db'), { readonly: true });
    try {
      const stored = raw
        .prepare<[], { user_id: string; metadata: string | null }>(
          'SELECT user_id, metadata FROM charges ORDER BY seq',
        )
        .all();
      expect(stored).toEqual([
        { user_id: 'a', metadata: JSON.stringify(metadata) },
        { user_id: 'b', metadata: null },
      ]);
    } finally {
      raw.close();
    }
  });
});

describe('SqliteLedger: an import in progress', () => {
  /** An import that yields one batch, then waits for release() and fails or ends. */
  function heldImport(ledger: SqliteLedger, runId: string, fail: boolean) {
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    let started: () => void = () => {};
    const yielded = new Promise<void>((resolve) => {
      started = resolve;
    });
    async function* batches(): AsyncIterable<ImportRow[]> {
      yield rows(2);
      started();
      await gate;
      if (fail) throw new Error('input broke');
      yield [row(9, 'u9')];
    }
    const created = ledger.createRun(runOf(runId), batches(), () => {});
    created.catch(() => {});
    return { created, yielded, release };
  }

  it('keeps outcomes of another run out of its transaction, so its rollback cannot drop them', async () => {
    const path = join(dir, 'ledger.db');
    const ledger = open({ path, flushIntervalMs: 60_000 });
    await create(ledger, 'r1', rows(2));
    const reader = open({ path });
    const held = heldImport(ledger, 'r2', true);
    await held.yielded;

    ledger.record('r1', outcome('u1'));
    const flushed = ledger.flush();
    // flush() cannot make the outcome durable while the import holds the transaction: it waits.
    held.release();
    await expect(held.created).rejects.toThrow('input broke');
    await flushed;
    expect((await reader.charge('r1', 'u1'))?.state).toBe('charged');
    expect((await ledger.charge('r1', 'u1'))?.state).toBe('charged');
    expect(await reader.findRun('r2')).toBeUndefined();
  });

  it('commits outcomes recorded during an import when the import ends', async () => {
    const path = join(dir, 'ledger.db');
    const ledger = open({ path, flushIntervalMs: 60_000, batchSize: 1 });
    await create(ledger, 'r1', rows(2));
    const reader = open({ path });
    const held = heldImport(ledger, 'r2', false);
    await held.yielded;
    ledger.record('r1', outcome('u1')); // batchSize reached: would commit at once, but must not
    ledger.record('r1', outcome('u2'));
    held.release();
    expect((await held.created).total).toBe(3);
    expect(await reader.counts('r1')).toMatchObject({ charged: 2, pending: 0 });
    expect((await reader.findRun('r2'))?.total).toBe(3);
  });

  it('runs a second import after the first instead of failing', async () => {
    const ledger = open();
    const held = heldImport(ledger, 'r1', false);
    await held.yielded;
    const second = create(ledger, 'r2', rows(4));
    held.release();
    expect((await held.created).total).toBe(3);
    expect((await second).run.total).toBe(4);
    expect((await collect(ledger.charges('r2'))).length).toBe(4);
  });
});

describe('SqliteLedger: pendingCharges', () => {
  it('pages in input order after afterSeq', async () => {
    const ledger = open();
    await create(ledger, 'r1', rows(10));
    const first = await ledger.pendingCharges('r1', 0, 4);
    expect(first.map((c) => c.userId)).toEqual(['u1', 'u2', 'u3', 'u4']);
    expect(first[0]).toEqual({
      seq: 1,
      userId: 'u1',
      amount: 200,
      currency: 'USD',
      attempts: 0,
      ambiguous: false,
    });
    const second = await ledger.pendingCharges('r1', first.at(-1)?.seq ?? 0, 4);
    expect(second.map((c) => c.userId)).toEqual(['u5', 'u6', 'u7', 'u8']);
    const third = await ledger.pendingCharges('r1', second.at(-1)?.seq ?? 0, 4);
    expect(third.map((c) => c.userId)).toEqual(['u9', 'u10']);
    expect(await ledger.pendingCharges('r1', third.at(-1)?.seq ?? 0, 4)).toEqual([]);
  });

  it('returns pending, failed and unknown charges only, with the attempts already counted', async () => {
    const ledger = open();
    await create(ledger, 'r1', [
      ...rows(6),
      row(8, 'bad', { invalidReason: 'amount: expected a positive integer' }),
    ]);
    ledger.record('r1', outcome('u1'));
    ledger.record('r1', outcome('u2', { state: 'declined', httpStatus: 402, chargeId: undefined }));
    ledger.record('r1', outcome('u3', { state: 'failed', attempts: 5, httpStatus: 503 }));
    ledger.record(
      'r1',
      outcome('u4', { state: 'unknown', attempts: 5, ambiguous: true, httpStatus: undefined }),
    );
    ledger.record('r1', outcome('u5', { state: 'pending', attempts: 2, chargeId: undefined }));
    await ledger.flush();
    const pending = await ledger.pendingCharges('r1', 0, 100);
    expect(pending.map((c) => [c.userId, c.attempts, c.ambiguous])).toEqual([
      ['u3', 5, false],
      ['u4', 5, true],
      ['u5', 2, false],
      ['u6', 0, false],
    ]);
  });
});

describe('SqliteLedger: record and flush', () => {
  it('stores every field of an outcome on flush()', async () => {
    const ledger = open({ flushIntervalMs: 60_000 });
    await create(ledger, 'r1', rows(4));
    ledger.record('r1', outcome('u1', { latencyMs: 12.5 }));
    ledger.record(
      'r1',
      outcome('u2', {
        state: 'declined',
        attempts: 2,
        httpStatus: 402,
        latencyMs: 40.4,
        chargeId: undefined,
        error: 'card_declined: insufficient funds',
      }),
    );
    ledger.record(
      'r1',
      outcome('u3', {
        state: 'unknown',
        attempts: 3,
        ambiguous: true,
        httpStatus: undefined,
        latencyMs: undefined,
        chargeId: undefined,
        error: 'timeout after request sent',
      }),
    );
    await ledger.flush();

    expect(await ledger.charge('r1', 'u1')).toMatchObject({
      state: 'charged',
      attempts: 1,
      ambiguous: false,
      httpStatus: 200,
      latencyMs: 13,
      chargeId: 'ch_u1',
      error: undefined,
    });
    expect(await ledger.charge('r1', 'u2')).toMatchObject({
      state: 'declined',
      attempts: 2,
      ambiguous: false,
      httpStatus: 402,
      latencyMs: 40,
      chargeId: undefined,
      error: 'card_declined: insufficient funds',
    });
    expect(await ledger.charge('r1', 'u3')).toMatchObject({
      state: 'unknown',
      attempts: 3,
      ambiguous: true,
      httpStatus: undefined,
      latencyMs: undefined,
      chargeId: undefined,
      error: 'timeout after request sent',
    });
    expect(await ledger.counts('r1')).toEqual({
      pending: 1,
      charged: 1,
      declined: 1,
      failed: 0,
      unknown: 1,
      invalid: 0,
    });
  });

  it('applies outcomes of the same charge in the order recorded', async () => {
    const ledger = open({ flushIntervalMs: 60_000 });
    await create(ledger, 'r1', rows(1));
    ledger.record('r1', outcome('u1', { state: 'failed', attempts: 1, chargeId: undefined }));
    ledger.record('r1', outcome('u1', { state: 'charged', attempts: 2 }));
    await ledger.flush();
    expect(await ledger.charge('r1', 'u1')).toMatchObject({ state: 'charged', attempts: 2 });
  });

  it('never overwrites an invalid duplicate row with an outcome of the valid one', async () => {
    const ledger = open({ flushIntervalMs: 60_000 });
    await create(ledger, 'r1', [row(2, 'a'), row(3, 'a')]);
    ledger.record('r1', outcome('a'));
    await ledger.flush();
    const charges = await collect(ledger.charges('r1'));
    expect(charges.map((c) => [c.line, c.state, c.chargeId])).toEqual([
      [2, 'charged', 'ch_a'],
      [3, 'invalid', undefined],
    ]);
  });

  it('commits recorded outcomes on its own after flushIntervalMs', async () => {
    const path = join(dir, 'ledger.db');
    const writer = open({ path, flushIntervalMs: 20, batchSize: 1_000 });
    await create(writer, 'r1', rows(3));
    const reader = open({ path });
    writer.record('r1', outcome('u1'));
    writer.record('r1', outcome('u2', { state: 'declined', httpStatus: 402 }));
    // Not yet: the outcomes wait in the writer's buffer.
    expect((await reader.counts('r1')).pending).toBe(3);
    await eventually(async () => (await reader.counts('r1')).pending === 1);
    expect(await reader.counts('r1')).toMatchObject({ charged: 1, declined: 1, pending: 1 });
  });

  it('commits at once when batchSize outcomes are buffered', async () => {
    const path = join(dir, 'ledger.db');
    const writer = open({ path, flushIntervalMs: 60_000, batchSize: 3 });
    await create(writer, 'r1', rows(5));
    const reader = open({ path });
    writer.record('r1', outcome('u1'));
    writer.record('r1', outcome('u2'));
    expect((await reader.counts('r1')).charged).toBe(0);
    writer.record('r1', outcome('u3'));
    // No await, no timer: the third record() committed synchronously.
    expect((await reader.counts('r1')).charged).toBe(3);
    writer.record('r1', outcome('u4'));
    expect((await reader.counts('r1')).charged).toBe(3);
    await writer.flush();
    expect((await reader.counts('r1')).charged).toBe(4);
  });

  it('makes what flush() wrote visible to another connection', async () => {
    const path = join(dir, 'ledger.db');
    const writer = open({ path, flushIntervalMs: 60_000 });
    await create(writer, 'r1', rows(2));
    const reader = open({ path });
    writer.record('r1', outcome('u1'));
    expect((await reader.charge('r1', 'u1'))?.state).toBe('pending');
    await writer.flush();
    expect((await reader.charge('r1', 'u1'))?.state).toBe('charged');
  });
});

describe('SqliteLedger: reading', () => {
  it('streams every charge in input order across several pages', async () => {
    const ledger = open();
    const all = rows(2_345);
    await create(ledger, 'r1', all);
    const charges = await collect(ledger.charges('r1'));
    expect(charges.length).toBe(2_345);
    expect(charges.map((c) => c.userId)).toEqual(all.map((r) => r.userId));
    expect(charges.map((c) => c.line)).toEqual(all.map((r) => r.line));
  });

  it('streams a run of exactly one page', async () => {
    const ledger = open();
    await create(ledger, 'r1', rows(1_000));
    const charges = await collect(ledger.charges('r1'));
    expect(charges.length).toBe(1_000);
    expect(charges.at(-1)?.userId).toBe('u1000');
  });

  it('finds one charge, or nothing', async () => {
    const ledger = open();
    await create(ledger, 'r1', [
      row(2, 'a', { amount: 1234, currency: 'EUR', metadata: { plan: 'pro' } }),
    ]);
    expect(await ledger.charge('r1', 'a')).toEqual({
      userId: 'a',
      line: 2,
      amount: 1234,
      currency: 'EUR',
      metadata: { plan: 'pro' },
      state: 'pending',
      attempts: 0,
      ambiguous: false,
      httpStatus: undefined,
      latencyMs: undefined,
      chargeId: undefined,
      error: undefined,
    });
    expect(await ledger.charge('r1', 'nobody')).toBeUndefined();
    expect(await ledger.charge('other-run', 'a')).toBeUndefined();
  });

  it('finds the valid row of a user id that also has an invalid row, whichever came first', async () => {
    const ledger = open();
    await create(ledger, 'r1', [
      row(2, 'dup'), // valid, then a duplicate recorded invalid
      row(3, 'dup'),
      row(4, 'late', { invalidReason: 'amount: expected a positive integer' }), // invalid, then valid
      row(5, 'late'),
    ]);
    expect(await ledger.charge('r1', 'dup')).toMatchObject({ line: 2, state: 'pending' });
    expect(await ledger.charge('r1', 'late')).toMatchObject({ line: 5, state: 'pending' });
    // With no valid row at all, the invalid one is what there is to show.
    await create(ledger, 'r2', [row(2, 'only', { invalidReason: 'bad' })]);
    expect(await ledger.charge('r2', 'only')).toMatchObject({ state: 'invalid', error: 'bad' });
  });

  it('sums amounts per currency, over all but invalid rows or over one state', async () => {
    const ledger = open({ flushIntervalMs: 60_000 });
    await create(ledger, 'r1', [
      row(2, 'a', { amount: 1_000, currency: 'USD' }),
      row(3, 'b', { amount: 250, currency: 'EUR' }),
      row(4, 'c', { amount: 4_000, currency: 'USD' }),
      row(5, 'd', { amount: 7, currency: 'USD', invalidReason: 'bad' }),
      row(6, 'a', { amount: 50_000, currency: 'USD' }), // duplicate, recorded invalid
    ]);
    expect(await ledger.totals('r1')).toEqual({ EUR: 250, USD: 5_000 });
    expect(await ledger.totals('r1', 'charged')).toEqual({});
    ledger.record('r1', outcome('a'));
    ledger.record('r1', outcome('b'));
    ledger.record('r1', outcome('c', { state: 'declined', httpStatus: 402 }));
    await ledger.flush();
    expect(await ledger.totals('r1', 'charged')).toEqual({ EUR: 250, USD: 1_000 });
    expect(await ledger.totals('r1', 'declined')).toEqual({ USD: 4_000 });
    expect(await ledger.totals('r1', 'invalid')).toEqual({ USD: 50_007 });
    expect(await ledger.totals('r1')).toEqual({ EUR: 250, USD: 5_000 });
  });
});

describe('SqliteLedger: runs', () => {
  it('finds the newest unfinished and the newest run of an input', async () => {
    const ledger = open();
    await create(ledger, 'old', rows(1), 'same-input');
    await create(ledger, 'mid', rows(1), 'same-input');
    await create(ledger, 'other', rows(1), 'other-input');
    await create(ledger, 'new', rows(1), 'same-input');
    expect((await ledger.findUnfinishedRun('same-input'))?.runId).toBe('new');
    expect((await ledger.findLatestRun('same-input'))?.runId).toBe('new');

    ledger.record('new', outcome('u1'));
    expect(await ledger.finishIfComplete('new')).toBe(true);
    expect((await ledger.findUnfinishedRun('same-input'))?.runId).toBe('mid');
    expect((await ledger.findLatestRun('same-input'))?.runId).toBe('new');
    expect((await ledger.findLatestRun('same-input'))?.finishedAt).toEqual(expect.any(String));

    expect((await ledger.findUnfinishedRun('other-input'))?.runId).toBe('other');
    expect(await ledger.findUnfinishedRun('no-such-input')).toBeUndefined();
    expect(await ledger.findLatestRun('no-such-input')).toBeUndefined();
  });

  it('finishes a run only when nothing is pending, failed or unknown', async () => {
    const ledger = open({ flushIntervalMs: 60_000 });
    await create(ledger, 'r1', [...rows(3), row(9, 'bad', { invalidReason: 'bad' })]);
    expect(await ledger.finishIfComplete('r1')).toBe(false);

    ledger.record('r1', outcome('u1'));
    ledger.record('r1', outcome('u2', { state: 'failed', httpStatus: 503 }));
    ledger.record('r1', outcome('u3', { state: 'unknown', ambiguous: true }));
    expect(await ledger.finishIfComplete('r1')).toBe(false);
    expect((await ledger.findRun('r1'))?.finishedAt).toBeUndefined();

    ledger.record('r1', outcome('u2', { state: 'charged', attempts: 2 }));
    expect(await ledger.finishIfComplete('r1')).toBe(false);

    // finishIfComplete() sees outcomes still in the buffer.
    ledger.record('r1', outcome('u3', { state: 'declined', attempts: 2, httpStatus: 402 }));
    expect(await ledger.finishIfComplete('r1')).toBe(true);
    const finishedAt = (await ledger.findRun('r1'))?.finishedAt;
    expect(Number.isNaN(Date.parse(finishedAt ?? ''))).toBe(false);

    // Finishing again keeps the first finish time.
    expect(await ledger.finishIfComplete('r1')).toBe(true);
    expect((await ledger.findRun('r1'))?.finishedAt).toBe(finishedAt);
  });

  it('keeps two runs with the same user ids apart', async () => {
    const ledger = open({ flushIntervalMs: 60_000 });
    await create(ledger, 'march', rows(3));
    await create(ledger, 'april', [...rows(3), row(5, 'u4')]);
    ledger.record('march', outcome('u1'));
    ledger.record('april', outcome('u1', { state: 'declined', httpStatus: 402 }));
    ledger.record('april', outcome('u2'));
    await ledger.flush();

    expect((await ledger.charge('march', 'u1'))?.state).toBe('charged');
    expect((await ledger.charge('april', 'u1'))?.state).toBe('declined');
    expect((await ledger.charge('march', 'u2'))?.state).toBe('pending');
    expect(await ledger.counts('march')).toMatchObject({ pending: 2, charged: 1, declined: 0 });
    expect(await ledger.counts('april')).toMatchObject({ pending: 2, charged: 1, declined: 1 });
    expect((await ledger.pendingCharges('march', 0, 10)).map((c) => c.userId)).toEqual([
      'u2',
      'u3',
    ]);
    expect((await ledger.pendingCharges('april', 0, 10)).map((c) => c.userId)).toEqual([
      'u3',
      'u4',
    ]);
    expect((await collect(ledger.charges('march'))).length).toBe(3);
    expect((await collect(ledger.charges('april'))).length).toBe(4);
    expect((await ledger.findRun('march'))?.total).toBe(3);
    expect((await ledger.findRun('april'))?.total).toBe(4);
  });

  it('sees everything after close and re-open, including outcomes never flushed', async () => {
    const path = join(dir, 'ledger.db');
    const first = open({ path, flushIntervalMs: 60_000 });
    const { run } = await create(first, 'r1', [
      ...rows(3),
      row(5, 'u1'),
      row(6, 'x', { invalidReason: 'bad', metadata: { why: 'test' } }),
    ]);
    first.record('r1', outcome('u1', { latencyMs: 99.6 }));
    first.record('r1', outcome('u2', { state: 'unknown', ambiguous: true, attempts: 4 }));
    await first.finishIfComplete('r1');
    first.record('r1', outcome('u3', { state: 'declined', httpStatus: 402, error: 'no' }));
    const before = await collect(first.charges('r1'));
    await first.close();

    const second = open({ path });
    expect(await second.findRun('r1')).toEqual(run);
    const after = await collect(second.charges('r1'));
    expect(after.map((c) => [c.userId, c.state])).toEqual([
      ['u1', 'charged'],
      ['u2', 'unknown'],
      ['u3', 'declined'],
      ['u1', 'invalid'],
      ['x', 'invalid'],
    ]);
    expect(after.slice(0, 2)).toEqual(before.slice(0, 2));
    expect(after[0]?.latencyMs).toBe(100);
    expect(after[4]?.metadata).toEqual({ why: 'test' });
    expect(await second.counts('r1')).toEqual({
      pending: 0,
      charged: 1,
      declined: 1,
      failed: 0,
      unknown: 1,
      invalid: 2,
    });
  });
});
