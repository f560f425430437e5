import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { afterEach, describe, expect, it } from 'vitest';
import { bindCredentials } from '../../src/engine/local-engine.js';
import {
  type AttemptRecord,
  type ChargeOutcome,
  type ChargeRecord,
  HISTORY_KEPT,
  type ImportRow,
  LATENCY_BUCKETS_MS,
  type Ledger,
  type ProblemFilter,
  type ProblemRows,
  type RunSample,
} from '../../src/ledger/ledger.js';
import { credentialsFingerprint, fingerprintSalt } from '../../src/provider/credentials.js';
import { batchesOf, create, heldImport, row, rows, runOf } from '../helpers/ledger-rows.js';

/** The two tuning options every ledger takes. */
export interface LedgerTuning {
  readonly batchSize?: number;
  readonly flushIntervalMs?: number;
}

/** One empty storage (a SQLite file, a Redis key prefix) on which the suite opens ledgers. */
export interface LedgerStorage {
  /** A ledger on this storage; ledgers opened on the same storage see the same runs. */
  open(tuning?: LedgerTuning): Ledger;
  /** Writes a claim of the run as process `pid` of `host` would have, last renewed `beatAgoMs` ago. */
  claimAs(runId: string, pid: number, host: string, beatAgoMs?: number): Promise<void>;
  /** How many things the storage holds about the run (rows, keys, registry entries…): 0 is none. */
  traces(runId: string): Promise<number>;
  /** Deletes everything; every ledger opened on it is closed first. */
  destroy(): Promise<void>;
}

export type LedgerFactory = () => Promise<LedgerStorage>;

const MAX_AMOUNT = Number.MAX_SAFE_INTEGER; // 2^53 - 1

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

/** Polls `check` until it holds or `timeoutMs` passes: for writes a ledger makes on its own. */
async function eventually(check: () => Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`not true after ${timeoutMs}ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** The pid of a process that has already exited. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', 'process.pid'], { stdio: 'ignore' });
  return child.pid as number;
}

/**
 * The promises of the `Ledger` interface that do not depend on the storage, run against every
 * ledger (hono's common.case.test.ts runs one suite against five routers the same way).
 */
export function ledgerConformance(name: string, factory: LedgerFactory): void {
  describe(`${name} keeps the ledger's promises`, () => {
    let storage: LedgerStorage | undefined;
    let opened: Ledger[] = [];

    afterEach(async () => {
      const ledgers = opened;
      opened = [];
      // close() writes what is buffered: a test that left outcomes behind fails here, visibly.
      for (const ledger of ledgers) await ledger.close();
      await storage?.destroy();
      storage = undefined;
    });

    /** A ledger on the test's storage (created on first use); every call opens another one. */
    async function open(tuning?: LedgerTuning): Promise<Ledger> {
      storage ??= await factory();
      const ledger = storage.open(tuning);
      opened.push(ledger);
      return ledger;
    }

    async function storageOf(): Promise<LedgerStorage> {
      storage ??= await factory();
      return storage;
    }

    describe('createRun', () => {
      it('imports every batch and returns the run with its total', async () => {
        const ledger = await open();
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

      it('imports a run without rows, which is complete at once', async () => {
        const ledger = await open();
        const { run } = await create(ledger, 'empty', []);
        expect(run.total).toBe(0);
        expect(await ledger.findRun('empty')).toEqual(run);
        expect(await collect(ledger.charges('empty'))).toEqual([]);
        expect(await ledger.pendingCharges('empty', 0, 10)).toEqual([]);
        expect(await ledger.finishIfComplete('empty')).toBe(true);
      });

      it('leaves no trace when the batches throw half-way', async () => {
        const ledger = await open();
        async function* failing(): AsyncIterable<ImportRow[]> {
          yield rows(3);
          yield [row(5, 'u4'), row(6, 'u5', { invalidReason: 'bad' }), row(7, 'u1')];
          throw new Error('input broke on line 8');
        }
        await expect(ledger.createRun(runOf('r1'), failing(), () => {})).rejects.toThrow(
          'input broke on line 8',
        );
        expect(await (await storageOf()).traces('r1')).toBe(0);
        expect(await ledger.findRun('r1')).toBeUndefined();
        expect(await ledger.listRuns()).toEqual([]);
        expect(Object.values(await ledger.counts('r1')).every((n) => n === 0)).toBe(true);
        expect(await ledger.totals('r1')).toEqual({});
        expect(await collect(ledger.charges('r1'))).toEqual([]);
        expect(await ledger.charge('r1', 'u1')).toBeUndefined();
        expect(await ledger.pendingCharges('r1', 0, 10)).toEqual([]);

        // Nothing is left half-open: the same run id imports cleanly afterwards.
        const { run } = await create(ledger, 'r1', rows(2));
        expect(run.total).toBe(2);
        expect((await collect(ledger.charges('r1'))).map((c) => c.userId)).toEqual(['u1', 'u2']);
      });

      it('leaves no trace when onDuplicate throws', async () => {
        const ledger = await open();
        const all = [row(2, 'a'), row(3, 'a')];
        await expect(
          ledger.createRun(runOf('r1'), batchesOf(all), () => {
            throw new Error('duplicates are fatal here');
          }),
        ).rejects.toThrow('duplicates are fatal here');
        expect(await (await storageOf()).traces('r1')).toBe(0);
        expect(await ledger.findRun('r1')).toBeUndefined();
        expect(await collect(ledger.charges('r1'))).toEqual([]);
      });

      it('refuses a run id that already exists and keeps the first run whole', async () => {
        const ledger = await open();
        const { run } = await create(ledger, 'r1', rows(3));
        await expect(create(ledger, 'r1', rows(5))).rejects.toThrow(
          expect.objectContaining({
            name: 'BulkbillError',
            message: 'run r1 already exists in this ledger',
          }),
        );
        expect(await ledger.findRun('r1')).toEqual(run);
        expect((await collect(ledger.charges('r1'))).length).toBe(3);
        expect((await ledger.counts('r1')).pending).toBe(3);
      });

      it('refuses to create a run when another was created since the caller listed the runs, from another ledger too', async () => {
        const first = await open();
        const second = await open();
        const known = (await second.listRuns()).map((run) => run.runId);
        await first.createRun(runOf('r1', 'same-input'), batchesOf(rows(1)), () => {});
        await expect(
          second.createRun(runOf('r2', 'same-input'), batchesOf(rows(1)), () => {}, {
            knownRuns: known,
          }),
        ).rejects.toThrow(/run r1 was created in this ledger while users\.csv was being checked/);
        expect(await second.findRun('r2')).toBeUndefined();
        expect(await (await storageOf()).traces('r2')).toBe(0);
        // With the runs listed again, or without the check, it is created.
        await expect(
          second.createRun(runOf('r2', 'same-input'), batchesOf(rows(1)), () => {}, {
            knownRuns: ['r1'],
          }),
        ).resolves.toMatchObject({ runId: 'r2' });
        await expect(
          second.createRun(runOf('r3', 'same-input'), batchesOf(rows(1)), () => {}),
        ).resolves.toMatchObject({ runId: 'r3' });
      });

      it('records a duplicate user id invalid and tells onDuplicate the first line', async () => {
        const ledger = await open();
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
        expect(charges[2]?.error).toBe('user_id: appears twice (first on line 2)');
        expect(charges[3]?.error).toBe('user_id: appears twice (first on line 2)');
        expect(await ledger.counts('r1')).toMatchObject({ pending: 2, invalid: 2 });
        expect(await ledger.totals('r1', 'invalid')).toEqual({ USD: 1_499 });
      });

      it('refuses an id that differs from an earlier one only by case or Unicode normalization, naming it', async () => {
        const ledger = await open();
        const composed = 'Jos\u00e9';
        const decomposed = 'Jose\u0301';
        const all = [
          row(2, 'Alice@x'),
          row(3, 'alice@x'), // the fold of line 2, written as its own fold
          row(4, composed),
          row(5, decomposed), // the same letters, another normalization
          row(6, 'ALICE@X'),
          row(7, 'bob|\\'), // separators in the ids of both rows
          row(8, 'BOB|\\'),
          row(9, 'Alice@x'), // the same id again
          row(10, 'ß'), // its own fold; `SS` is not
          row(11, 'SS'),
        ];
        const { run, duplicates } = await create(ledger, 'r1', all, undefined, 4);
        expect(duplicates).toEqual([
          { userId: 'alice@x', line: 3, firstLine: 2, twin: 'Alice@x' },
          { userId: decomposed, line: 5, firstLine: 4, twin: composed },
          { userId: 'ALICE@X', line: 6, firstLine: 2, twin: 'Alice@x' },
          { userId: 'BOB|\\', line: 8, firstLine: 7, twin: 'bob|\\' },
          { userId: 'Alice@x', line: 9, firstLine: 2 },
        ]);
        expect(run.total).toBe(10);
        const charges = await collect(ledger.charges('r1'));
        expect(charges.filter((c) => c.state === 'pending').map((c) => c.userId)).toEqual([
          'Alice@x',
          composed,
          'bob|\\',
          'ß',
          'SS',
        ]);
        expect(charges[1]?.error).toBe(
          `user_id: differs from line 2's "Alice@x" only by case or Unicode normalization`,
        );
        expect(charges[6]?.error).toBe(
          `user_id: differs from line 7's "bob|\\" only by case or Unicode normalization`,
        );
        expect(charges[7]?.error).toBe('user_id: appears twice (first on line 2)');
        expect(await ledger.counts('r1')).toMatchObject({ pending: 5, invalid: 5 });
        // A later input is checked by fold against the run too, and a held twin is told apart.
        const held = await ledger.heldCharges('r1', ['alice@x', 'Alice@x', 'JOSÉ', 'nobody']);
        expect([...held].map(([id, charge]) => [id, charge.line, charge.twin])).toEqual([
          ['alice@x', 2, 'Alice@x'],
          ['Alice@x', 2, undefined],
          ['JOSÉ', 4, composed],
        ]);
      });

      it('finds duplicates across batches', async () => {
        const ledger = await open();
        const all = [...rows(5), row(20, 'u2'), row(21, 'u5')];
        const { duplicates } = await create(ledger, 'r1', all, undefined, 2);
        expect(duplicates).toEqual([
          { userId: 'u2', line: 20, firstLine: 3 },
          { userId: 'u5', line: 21, firstLine: 6 },
        ]);
      });

      it('keeps input order, positions and first lines in a long import with duplicates and invalid rows anywhere', async () => {
        const ledger = await open();
        // 260 rows in batches of 130: duplicates next to their first, far from it, in another
        // batch, twice over, and invalid rows among them (a SQLite statement inserts 50 rows).
        const all = rows(250);
        const extra = [
          row(300, 'u1'),
          row(301, 'u49', { invalidReason: 'amount: expected a positive integer' }),
          row(302, 'u50'),
          row(303, 'u51'),
          row(304, 'u250'),
          row(305, 'u1'),
          row(306, 'new-1'),
          row(307, 'new-1'),
          row(308, '', { invalidReason: 'user_id: is missing' }),
          row(309, 'new-2'),
        ];
        all.splice(60, 0, ...extra.slice(0, 5));
        all.push(...extra.slice(5));
        const { run, duplicates } = await create(ledger, 'r1', all, undefined, 130);
        expect(run.total).toBe(all.length);
        expect(duplicates).toEqual([
          { userId: 'u1', line: 300, firstLine: 2 },
          { userId: 'u50', line: 302, firstLine: 51 },
          { userId: 'u51', line: 303, firstLine: 52 },
          // The first in the file is the one billed, whatever its line number.
          { userId: 'u250', line: 251, firstLine: 304 },
          { userId: 'u1', line: 305, firstLine: 2 },
          { userId: 'new-1', line: 307, firstLine: 306 },
        ]);
        const charges: ChargeRecord[] = [];
        for await (const charge of ledger.charges('r1')) charges.push(charge);
        expect(charges.map((charge) => charge.line)).toEqual(all.map((input) => input.line));
        const invalid = charges.filter((charge) => charge.state === 'invalid');
        expect(invalid.map((charge) => [charge.line, charge.error])).toEqual([
          [300, 'user_id: appears twice (first on line 2)'],
          [301, 'amount: expected a positive integer'],
          [302, 'user_id: appears twice (first on line 51)'],
          [303, 'user_id: appears twice (first on line 52)'],
          [251, 'user_id: appears twice (first on line 304)'],
          [305, 'user_id: appears twice (first on line 2)'],
          [307, 'user_id: appears twice (first on line 306)'],
          [308, 'user_id: is missing'],
        ]);
        expect(await ledger.counts('r1')).toMatchObject({ pending: 252, invalid: 8 });
        expect((await ledger.charge('r1', 'u50'))?.line).toBe(51);
        expect((await ledger.charge('r1', 'u250'))?.line).toBe(304);
        expect((await ledger.pendingCharges('r1', 0, 1_000)).map((c) => c.userId)).toEqual(
          all.filter((input) => !invalid.some((c) => c.line === input.line)).map((c) => c.userId),
        );
      });

      it('records rows that failed validation invalid, with their reason, and counts them in total', async () => {
        const ledger = await open();
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

      it('keeps invalid rows as they came, empty user id and currency included', async () => {
        const ledger = await open();
        await create(ledger, 'r1', [
          row(2, '', { amount: 0, currency: '', invalidReason: 'user_id: is missing' }),
          row(3, 'ok'),
        ]);
        const charges = await collect(ledger.charges('r1'));
        expect(charges[0]).toMatchObject({
          userId: '',
          line: 2,
          amount: 0,
          currency: '',
          state: 'invalid',
          error: 'user_id: is missing',
        });
        expect(await ledger.charge('r1', '')).toMatchObject({ line: 2, state: 'invalid' });
        expect(await ledger.totals('r1', 'invalid')).toEqual({ '': 0 });
        expect(await ledger.totals('r1')).toEqual({ USD: 300 });
      });

      it('keeps metadata, and reads no metadata back as an empty object', async () => {
        const ledger = await open();
        const metadata = { plan: 'pro, yearly', note: 'says "hi"\nbye | \\p', emoji: '💳' };
        await create(ledger, 'r1', [row(2, 'a', { metadata }), row(3, 'b')]);
        expect((await ledger.charge('r1', 'a'))?.metadata).toEqual(metadata);
        expect((await ledger.charge('r1', 'b'))?.metadata).toEqual({});
        const [first] = await collect(ledger.charges('r1'));
        expect(first?.metadata).toEqual(metadata);
      });
    });

    describe('an import in progress', () => {
      it('is invisible to other ledgers until it ends', async () => {
        const ledger = await open();
        const reader = await open();
        const held = heldImport(ledger, 'r1', false);
        await held.yielded; // the first batch is written
        expect(await reader.findRun('r1')).toBeUndefined();
        expect(await reader.listRuns()).toEqual([]);
        expect(await reader.pendingCharges('r1', 0, 10)).toEqual([]);
        held.release();
        expect((await held.created).total).toBe(3);
        expect((await reader.findRun('r1'))?.total).toBe(3);
        expect((await reader.pendingCharges('r1', 0, 10)).map((c) => c.userId)).toEqual([
          'u1',
          'u2',
          'u9',
        ]);
      });

      it('does not lose outcomes of another run when it fails', async () => {
        const ledger = await open({ flushIntervalMs: 60_000 });
        await create(ledger, 'r1', rows(2));
        const reader = await open();
        const held = heldImport(ledger, 'r2', true);
        await held.yielded;

        ledger.record('r1', outcome('u1'));
        const flushed = ledger.flush();
        held.release();
        await expect(held.created).rejects.toThrow('input broke');
        await flushed;
        expect((await reader.charge('r1', 'u1'))?.state).toBe('charged');
        expect((await ledger.charge('r1', 'u1'))?.state).toBe('charged');
        expect(await reader.findRun('r2')).toBeUndefined();
        expect(await (await storageOf()).traces('r2')).toBe(0);
      });

      it('keeps outcomes of another run recorded meanwhile when it ends', async () => {
        const ledger = await open({ flushIntervalMs: 60_000, batchSize: 1 });
        await create(ledger, 'r1', rows(2));
        const reader = await open();
        const held = heldImport(ledger, 'r2', false);
        await held.yielded;
        ledger.record('r1', outcome('u1'));
        ledger.record('r1', outcome('u2'));
        held.release();
        expect((await held.created).total).toBe(3);
        await ledger.flush();
        expect(await reader.counts('r1')).toMatchObject({ charged: 2, pending: 0 });
        expect((await reader.findRun('r2'))?.total).toBe(3);
      });

      it('lets a second import of the same ledger run too', async () => {
        const ledger = await open();
        const held = heldImport(ledger, 'r1', false);
        await held.yielded;
        const second = create(ledger, 'r2', rows(4));
        held.release();
        expect((await held.created).total).toBe(3);
        expect((await second).run.total).toBe(4);
        expect((await collect(ledger.charges('r2'))).length).toBe(4);
      });
    });

    describe('pendingCharges', () => {
      it('pages in input order after afterSeq', async () => {
        const ledger = await open();
        await create(ledger, 'r1', rows(10));
        const first = await ledger.pendingCharges('r1', 0, 4);
        expect(first.map((c) => c.userId)).toEqual(['u1', 'u2', 'u3', 'u4']);
        // `waits` is kept by the ledgers that keep it (SQLite); none has any yet.
        const { waits = 0, ...rest } = first[0] ?? {};
        expect(waits).toBe(0);
        expect(rest).toEqual({
          seq: expect.any(Number),
          userId: 'u1',
          amount: 200,
          currency: 'USD',
          attempts: 0,
          budgetFrom: 0,
          ambiguous: false,
          firstAttemptAt: undefined,
        });
        const second = await ledger.pendingCharges('r1', first.at(-1)?.seq ?? 0, 4);
        expect(second.map((c) => c.userId)).toEqual(['u5', 'u6', 'u7', 'u8']);
        const third = await ledger.pendingCharges('r1', second.at(-1)?.seq ?? 0, 4);
        expect(third.map((c) => c.userId)).toEqual(['u9', 'u10']);
        expect(await ledger.pendingCharges('r1', third.at(-1)?.seq ?? 0, 4)).toEqual([]);
        const seqs = [...first, ...second, ...third].map((c) => c.seq);
        expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
        expect(new Set(seqs).size).toBe(10);
      });

      it('returns pending charges only, and with includeEnded failed and unknown ones too, with the attempts already counted', async () => {
        const ledger = await open();
        await create(ledger, 'r1', [
          ...rows(6),
          row(8, 'bad', { invalidReason: 'amount: expected a positive integer' }),
          row(9, 'u6'), // duplicate: invalid
        ]);
        ledger.record('r1', outcome('u1'));
        ledger.record(
          'r1',
          outcome('u2', { state: 'declined', httpStatus: 402, chargeId: undefined }),
        );
        ledger.record('r1', outcome('u3', { state: 'failed', attempts: 5, httpStatus: 503 }));
        ledger.record(
          'r1',
          outcome('u4', { state: 'unknown', attempts: 5, ambiguous: true, httpStatus: undefined }),
        );
        ledger.record('r1', outcome('u5', { state: 'pending', attempts: 2, chargeId: undefined }));
        await ledger.flush();
        const pending = await ledger.pendingCharges('r1', 0, 100);
        expect(pending.map((c) => [c.userId, c.attempts, c.ambiguous])).toEqual([
          ['u5', 2, false],
          ['u6', 0, false],
        ]);
        const withEnded = await ledger.pendingCharges('r1', 0, 100, { includeEnded: true });
        expect(withEnded.map((c) => [c.userId, c.attempts, c.ambiguous])).toEqual([
          ['u3', 5, false],
          ['u4', 5, true],
          ['u5', 2, false],
          ['u6', 0, false],
        ]);
      });

      it('fills every page of a long run where most charges are done', async () => {
        const ledger = await open({ flushIntervalMs: 60_000 });
        const all = rows(2_500);
        await create(ledger, 'r1', all, undefined, 700);
        // All but every 100th charge done: a page of 10 spans about 1,000 rows.
        for (const [index, each] of all.entries()) {
          if (index % 100 !== 99) ledger.record('r1', outcome(each.userId));
        }
        await ledger.flush();
        const seen: string[] = [];
        let after = 0;
        for (;;) {
          const page = await ledger.pendingCharges('r1', after, 10);
          seen.push(...page.map((c) => c.userId));
          const last = page.at(-1);
          if (!last || page.length < 10) break;
          expect(page).toHaveLength(10);
          after = last.seq;
        }
        expect(seen).toEqual(all.filter((_, index) => index % 100 === 99).map((r) => r.userId));
      });
    });

    describe('record and flush', () => {
      it('stores every field of an outcome on flush()', async () => {
        const ledger = await open({ flushIntervalMs: 60_000 });
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
        const ledger = await open({ flushIntervalMs: 60_000 });
        await create(ledger, 'r1', rows(1));
        ledger.record('r1', outcome('u1', { state: 'failed', attempts: 1, chargeId: undefined }));
        ledger.record('r1', outcome('u1', { state: 'charged', attempts: 2 }));
        await ledger.flush();
        expect(await ledger.charge('r1', 'u1')).toMatchObject({ state: 'charged', attempts: 2 });
        expect(await ledger.counts('r1')).toMatchObject({ charged: 1, failed: 0, pending: 0 });
      });

      it('moves counts and sums when a charge changes state again (resume)', async () => {
        const ledger = await open({ flushIntervalMs: 60_000 });
        await create(ledger, 'r1', rows(2));
        ledger.record('r1', outcome('u1', { state: 'unknown', ambiguous: true }));
        await ledger.flush();
        expect(await ledger.totals('r1', 'unknown')).toEqual({ USD: 200 });
        ledger.record('r1', outcome('u1', { attempts: 2, ambiguous: true }));
        await ledger.flush();
        expect(await ledger.totals('r1', 'unknown')).toEqual({});
        expect(await ledger.totals('r1', 'charged')).toEqual({ USD: 200 });
        expect(await ledger.counts('r1')).toMatchObject({ pending: 1, unknown: 0, charged: 1 });
      });

      it('never overwrites an invalid duplicate row with an outcome of the valid one', async () => {
        const ledger = await open({ flushIntervalMs: 60_000 });
        await create(ledger, 'r1', [row(2, 'a'), row(3, 'a')]);
        ledger.record('r1', outcome('a'));
        await ledger.flush();
        const charges = await collect(ledger.charges('r1'));
        expect(charges.map((c) => [c.line, c.state, c.chargeId])).toEqual([
          [2, 'charged', 'ch_a'],
          [3, 'invalid', undefined],
        ]);
        expect(await ledger.counts('r1')).toMatchObject({ charged: 1, invalid: 1 });
      });

      it('ignores an outcome of a user the run does not have', async () => {
        const ledger = await open({ flushIntervalMs: 60_000 });
        await create(ledger, 'r1', [row(2, 'a'), row(3, 'b', { invalidReason: 'bad' })]);
        ledger.record('r1', outcome('nobody'));
        ledger.record('r1', outcome('b'));
        await ledger.flush();
        expect(await ledger.counts('r1')).toMatchObject({ pending: 1, charged: 0, invalid: 1 });
        expect(await ledger.charge('r1', 'nobody')).toBeUndefined();
        expect(await ledger.charge('r1', 'b')).toMatchObject({ state: 'invalid', error: 'bad' });
      });

      it('writes recorded outcomes on its own after flushIntervalMs', async () => {
        const writer = await open({ flushIntervalMs: 20, batchSize: 1_000 });
        await create(writer, 'r1', rows(3));
        const reader = await open();
        writer.record('r1', outcome('u1'));
        writer.record('r1', outcome('u2', { state: 'declined', httpStatus: 402 }));
        await eventually(async () => (await reader.counts('r1')).pending === 1);
        expect(await reader.counts('r1')).toMatchObject({ charged: 1, declined: 1, pending: 1 });
      });

      it('writes on its own when batchSize outcomes are buffered', async () => {
        const writer = await open({ flushIntervalMs: 60_000, batchSize: 3 });
        await create(writer, 'r1', rows(5));
        const reader = await open();
        writer.record('r1', outcome('u1'));
        writer.record('r1', outcome('u2'));
        writer.record('r1', outcome('u3'));
        await eventually(async () => (await reader.counts('r1')).charged === 3);
        writer.record('r1', outcome('u4'));
        await writer.flush();
        expect((await reader.counts('r1')).charged).toBe(4);
      });

      it('makes what flush() wrote visible to another ledger on the same storage', async () => {
        const writer = await open({ flushIntervalMs: 60_000 });
        await create(writer, 'r1', rows(2));
        const reader = await open();
        writer.record('r1', outcome('u1'));
        expect((await reader.charge('r1', 'u1'))?.state).toBe('pending');
        await writer.flush();
        expect((await reader.charge('r1', 'u1'))?.state).toBe('charged');
        expect(await reader.counts('r1')).toMatchObject({ charged: 1, pending: 1 });
      });

      it('keeps outcomes of several runs apart in one flush', async () => {
        const ledger = await open({ flushIntervalMs: 60_000 });
        await create(ledger, 'march', rows(3));
        await create(ledger, 'april', [...rows(3), row(5, 'u4')]);
        ledger.record('march', outcome('u1'));
        ledger.record('april', outcome('u1', { state: 'declined', httpStatus: 402 }));
        ledger.record('april', outcome('u2'));
        await ledger.flush();

        expect((await ledger.charge('march', 'u1'))?.state).toBe('charged');
        expect((await ledger.charge('april', 'u1'))?.state).toBe('declined');
        expect((await ledger.charge('march', 'u2'))?.state).toBe('pending');
        expect(await ledger.counts('march')).toMatchObject({
          pending: 2,
          charged: 1,
          declined: 0,
        });
        expect(await ledger.counts('april')).toMatchObject({
          pending: 2,
          charged: 1,
          declined: 1,
        });
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
    });

    describe('reading', () => {
      it('streams every charge of a 2,500-row run in input order, across pages', async () => {
        const ledger = await open();
        const all = rows(2_500);
        await create(ledger, 'r1', all, undefined, 1_000);
        const charges = await collect(ledger.charges('r1'));
        expect(charges.length).toBe(2_500);
        expect(charges.map((c) => c.userId)).toEqual(all.map((r) => r.userId));
        expect(charges.map((c) => c.line)).toEqual(all.map((r) => r.line));
        const pending = await ledger.pendingCharges('r1', 0, 3_000);
        expect(pending.map((c) => c.userId)).toEqual(all.map((r) => r.userId));
      });

      it('streams a run of exactly one page', async () => {
        const ledger = await open();
        await create(ledger, 'r1', rows(1_000), undefined, 1_000);
        const charges = await collect(ledger.charges('r1'));
        expect(charges.length).toBe(1_000);
        expect(charges.at(-1)?.userId).toBe('u1000');
      });

      it('finds one charge, or nothing', async () => {
        const ledger = await open();
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
        const ledger = await open();
        await create(ledger, 'r1', [
          row(2, 'dup'), // valid, then a duplicate recorded invalid
          row(3, 'dup'),
          row(4, 'late', { invalidReason: 'amount: expected a positive integer' }), // invalid, then valid
          row(5, 'late'),
        ]);
        expect(await ledger.charge('r1', 'dup')).toMatchObject({ line: 2, state: 'pending' });
        expect(await ledger.charge('r1', 'late')).toMatchObject({ line: 5, state: 'pending' });
        // With no valid row at all, the first invalid one is what there is to show.
        await create(ledger, 'r2', [
          row(2, 'only', { invalidReason: 'bad' }),
          row(3, 'only', { invalidReason: 'worse' }),
        ]);
        expect(await ledger.charge('r2', 'only')).toMatchObject({
          line: 2,
          state: 'invalid',
          error: 'bad',
        });
      });

      it('sums amounts per currency, over all but invalid rows or over one state', async () => {
        const ledger = await open({ flushIntervalMs: 60_000 });
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
        expect(await ledger.totals('r1', 'pending')).toEqual({});
        expect(await ledger.totals('r1', 'invalid')).toEqual({ USD: 50_007 });
        expect(await ledger.totals('r1')).toEqual({ EUR: 250, USD: 5_000 });
      });

      it('keeps amounts up to 2^53-1 exact, one by one and summed', async () => {
        const ledger = await open({ flushIntervalMs: 60_000 });
        await create(ledger, 'r1', [
          row(2, 'max', { amount: MAX_AMOUNT, currency: 'EUR' }),
          row(3, 'big', { amount: MAX_AMOUNT - 1, currency: 'USD' }),
          row(4, 'one', { amount: 1, currency: 'USD' }),
          row(5, 'max', { amount: MAX_AMOUNT, currency: 'JPY' }), // duplicate, recorded invalid
        ]);
        expect((await ledger.charge('r1', 'max'))?.amount).toBe(MAX_AMOUNT);
        expect((await ledger.pendingCharges('r1', 0, 10)).map((c) => c.amount)).toEqual([
          MAX_AMOUNT,
          MAX_AMOUNT - 1,
          1,
        ]);
        expect(await ledger.totals('r1')).toEqual({ EUR: MAX_AMOUNT, USD: MAX_AMOUNT });
        expect(await ledger.totals('r1', 'invalid')).toEqual({ JPY: MAX_AMOUNT });
        ledger.record('r1', outcome('big'));
        ledger.record('r1', outcome('max', { state: 'declined', httpStatus: 402 }));
        await ledger.flush();
        expect(await ledger.totals('r1', 'charged')).toEqual({ USD: MAX_AMOUNT - 1 });
        expect(await ledger.totals('r1', 'pending')).toEqual({ USD: 1 });
        expect(await ledger.totals('r1', 'declined')).toEqual({ EUR: MAX_AMOUNT });
        ledger.record('r1', outcome('one'));
        await ledger.flush();
        expect(await ledger.totals('r1', 'charged')).toEqual({ USD: MAX_AMOUNT });
        expect(await ledger.totals('r1', 'pending')).toEqual({});
        expect((await collect(ledger.charges('r1'))).map((c) => c.amount)).toEqual([
          MAX_AMOUNT,
          MAX_AMOUNT - 1,
          1,
          MAX_AMOUNT,
        ]);
      });

      it('keeps user ids, run ids and texts with separators, braces, quotes and non-ASCII apart', async () => {
        const ledger = await open({ flushIntervalMs: 60_000 });
        const ids = [
          'a|b',
          'a:b',
          '{run}',
          '}{',
          ' spaced id ',
          `"double" and 'single'`,
          'ünïcødé 💳 用户',
          'x'.repeat(200),
          'back\\slash\\p',
          '=a|b',
          '#1',
          '1',
          'u1',
        ];
        const runId = 'r{1}|: "ü"';
        const all = ids.map((id, index) =>
          row(index + 2, id, { metadata: index === 0 ? { 'k|ey': 'v|al\\ue' } : {} }),
        );
        await create(ledger, runId, [...all, row(99, 'a|b')]);
        expect((await ledger.findRun(runId))?.total).toBe(ids.length + 1);
        ledger.record(runId, outcome('a|b', { chargeId: 'ch|1\\2', error: undefined }));
        ledger.record(
          runId,
          outcome('}{', { state: 'declined', chargeId: undefined, error: 'no | way \\p' }),
        );
        ledger.record(runId, outcome('ünïcødé 💳 用户', { chargeId: '', error: '' }));
        await ledger.flush();

        const charges = await collect(ledger.charges(runId));
        expect(charges.map((c) => c.userId)).toEqual([...ids, 'a|b']);
        const ended: Record<string, string> = {
          'a|b': 'charged',
          '}{': 'declined',
          'ünïcødé 💳 用户': 'charged',
        };
        expect(charges.map((c) => c.state)).toEqual([
          ...ids.map((id) => ended[id] ?? 'pending'),
          'invalid',
        ]);
        for (const id of ids) expect((await ledger.charge(runId, id))?.userId).toBe(id);
        expect(await ledger.charge(runId, 'a|b')).toMatchObject({
          line: 2,
          chargeId: 'ch|1\\2',
          metadata: { 'k|ey': 'v|al\\ue' },
        });
        expect(await ledger.charge(runId, '}{')).toMatchObject({ error: 'no | way \\p' });
        expect(await ledger.charge(runId, 'ünïcødé 💳 用户')).toMatchObject({
          chargeId: '',
          error: '',
        });
        expect(charges.at(-1)?.error).toBe('user_id: appears twice (first on line 2)');
        expect((await ledger.pendingCharges(runId, 0, 100)).map((c) => c.userId)).toEqual(
          ids.filter((id) => !['a|b', '}{', 'ünïcødé 💳 用户'].includes(id)),
        );
        expect(await ledger.counts(runId)).toMatchObject({
          charged: 2,
          declined: 1,
          invalid: 1,
          pending: ids.length - 3,
        });
      });
    });

    describe('attempts are ledger facts', () => {
      it('records an attempt before it is sent: a process taking the run over sees it counted, open, with its first time', async () => {
        const ledger = await open({ flushIntervalMs: 60_000 });
        await create(ledger, 'r1', rows(3));
        expect(
          await ledger.startAttempts('r1', [
            { userId: 'u1', attempts: 1, ambiguous: false, at: 1_000 },
            { userId: 'u2', attempts: 1, ambiguous: false, at: 1_000 },
            { userId: 'nobody', attempts: 1, ambiguous: false, at: 1_000 },
          ]),
        ).toEqual([true, true, false]);
        // The process dies here (its ledger is never used again). Before anyone resumes the run,
        // `status --user` and a report already show the start: counted, it may have charged.
        const looker = await open();
        expect(await looker.charge('r1', 'u1')).toMatchObject({
          state: 'pending',
          attempts: 1,
          ambiguous: true,
          firstAttemptAt: 1_000,
        });
        const shown: ChargeRecord[] = [];
        for await (const charge of looker.charges('r1')) shown.push(charge);
        expect(shown.map((charge) => [charge.userId, charge.attempts, charge.ambiguous])).toEqual([
          ['u1', 1, true],
          ['u2', 1, true],
          ['u3', 0, false],
        ]);
        // Another takes the run over.
        const next = await open();
        await next.claimRun('r1');
        const [u1, u2, u3] = await next.pendingCharges('r1', 0, 3);
        // A start with no outcome after it was cut off: it may have reached the provider.
        expect(u1).toMatchObject({
          userId: 'u1',
          attempts: 1,
          ambiguous: true,
          firstAttemptAt: 1_000,
        });
        expect(u2).toMatchObject({ attempts: 1, ambiguous: true });
        expect(u3).toMatchObject({ attempts: 0, ambiguous: false, firstAttemptAt: undefined });

        // Its next attempt is charged: the outcome closes it and keeps the first time.
        await next.startAttempts('r1', [{ userId: 'u1', attempts: 2, ambiguous: true, at: 9_000 }]);
        next.record('r1', outcome('u1', { attempts: 2, ambiguous: true, firstAttemptAt: 1_000 }));
        await next.flush();
        const reader = await open();
        expect(await reader.charge('r1', 'u1')).toMatchObject({
          state: 'charged',
          attempts: 2,
          ambiguous: true,
          firstAttemptAt: 1_000,
        });
        // A settled charge is never started again.
        expect(
          await next.startAttempts('r1', [{ userId: 'u1', attempts: 3, ambiguous: false, at: 1 }]),
        ).toEqual([false]);
        expect((await reader.charge('r1', 'u1'))?.attempts).toBe(2);
      });

      it('never moves a charge out of charged or declined: a late or stale outcome loses', async () => {
        const ledger = await open();
        await create(ledger, 'r1', rows(3));
        ledger.record('r1', outcome('u1'));
        ledger.record(
          'r1',
          outcome('u2', { state: 'declined', httpStatus: 402, chargeId: undefined }),
        );
        await ledger.flush();
        for (const state of ['unknown', 'failed', 'pending', 'declined'] as const) {
          ledger.record('r1', outcome('u1', { state, chargeId: undefined, ambiguous: true }));
        }
        ledger.record('r1', outcome('u2', { state: 'charged' }));
        await ledger.flush();
        expect(await ledger.charge('r1', 'u1')).toMatchObject({
          state: 'charged',
          chargeId: 'ch_u1',
        });
        expect((await ledger.charge('r1', 'u2'))?.state).toBe('declined');
        expect(await ledger.counts('r1')).toMatchObject({ charged: 1, declined: 1, pending: 1 });
        expect(await ledger.totals('r1', 'charged')).toEqual({ USD: 200 });
      });

      it('reopens failed and unknown charges for a new round, attempts and ambiguity kept', async () => {
        const ledger = await open();
        await create(ledger, 'r1', rows(4));
        ledger.record('r1', outcome('u1', { state: 'failed', attempts: 5, chargeId: undefined }));
        ledger.record(
          'r1',
          outcome('u2', { state: 'unknown', attempts: 3, ambiguous: true, chargeId: undefined }),
        );
        ledger.record('r1', outcome('u3'));
        ledger.record('r1', outcome('u4', { state: 'declined', chargeId: undefined }));
        expect(await ledger.finishIfComplete('r1')).toBe(false);
        expect(await ledger.reopenEnded('r1')).toBe(2);
        const reopened = await ledger.pendingCharges('r1', 0, 10);
        expect(reopened.map((c) => [c.userId, c.attempts, c.budgetFrom, c.ambiguous])).toEqual([
          ['u1', 5, 5, false],
          ['u2', 3, 3, true],
        ]);
        expect(await ledger.counts('r1')).toMatchObject({ pending: 2, charged: 1, declined: 1 });
        expect(await ledger.reopenEnded('r1')).toBe(0);
      });
    });

    describe('credentials', () => {
      it('binds a run to a fingerprint, rebinds it while nothing was attempted, then refuses others', async () => {
        const ledger = await open();
        await create(ledger, 'r1', rows(2));
        expect(await ledger.credentials('r1')).toBe('');
        expect(await ledger.bindCredentials('r1', 'v1:s:aaa', '')).toBe('bound');
        expect(await ledger.bindCredentials('r1', 'v1:s:aaa', 'v1:s:aaa')).toBe('same');
        // Another process bound it since this one read it (with a salt of its own): read again.
        expect(await ledger.bindCredentials('r1', 'v1:t:zzz', '')).toBe('changed');
        // Nothing attempted yet (a wrong token stopped the run at once): the right one may bind.
        expect(await ledger.bindCredentials('r1', 'v1:s:bbb', 'v1:s:aaa')).toBe('rebound');
        await ledger.startAttempts('r1', [{ userId: 'u1', attempts: 1, ambiguous: false, at: 1 }]);
        expect(await ledger.bindCredentials('r1', 'v1:s:ccc', 'v1:s:bbb')).toBe('other');
        expect(await (await open()).credentials('r1')).toBe('v1:s:bbb');
      });
    });

    describe('credentials, bound by processes at once', () => {
      it('agrees on one fingerprint when several processes with the same credentials bind at once', async () => {
        const ledgers = [await open(), await open(), await open(), await open()];
        await create(ledgers[0] as Ledger, 'r1', rows(2));
        const headers = [{ name: 'Authorization', value: 'Bearer sk_same', sensitive: true }];
        // Each makes its fingerprint with a fresh salt when it finds the run unbound.
        const fingerprintOf = (seen: string) =>
          credentialsFingerprint(headers, fingerprintSalt(seen) ?? randomBytes(8).toString('hex'));
        const bound = await Promise.all(
          ledgers.map((ledger) => bindCredentials(ledger, 'r1', fingerprintOf)),
        );
        expect(new Set(bound).size).toBe(1);
        expect(await (ledgers[0] as Ledger).credentials('r1')).toBe(bound[0]);
        await (ledgers[1] as Ledger).startAttempts('r1', [
          { userId: 'u1', attempts: 1, ambiguous: false, at: 1 },
        ]);
        const other = [{ name: 'Authorization', value: 'Bearer sk_other', sensitive: true }];
        await expect(
          bindCredentials(ledgers[2] as Ledger, 'r1', (seen) =>
            credentialsFingerprint(other, fingerprintSalt(seen)),
          ),
        ).rejects.toThrow(/run r1 was billed with other credentials/);
      });
    });

    describe('extendRun: a later input of a run', () => {
      it('adds new users, leaves held ones, and makes the invalid rows those of the new input', async () => {
        const ledger = await open();
        const duplicates: unknown[] = [];
        await create(ledger, 'r1', [
          row(2, 'u1'),
          row(3, 'u2'),
          row(4, '', { invalidReason: 'user_id: is missing' }),
          row(5, 'u4', { invalidReason: 'amount: must be positive' }),
        ]);
        ledger.record('r1', outcome('u1'));
        ledger.record('r1', outcome('u2'));
        await ledger.flush();
        expect(await ledger.finishIfComplete('r1')).toBe(true);
        expect((await ledger.heldCharges('r1', ['u1', 'u4', 'nobody'])).get('u1')).toEqual({
          line: 2,
          amount: 200,
          currency: 'USD',
          state: 'charged',
        });
        const run = await ledger.extendRun(
          'r1',
          { inputHash: 'hash-2', inputPath: 'fixed.csv' },
          batchesOf([
            row(2, 'u2'),
            row(3, 'u1'),
            row(4, 'u3'),
            row(5, 'u4'),
            row(6, 'u3'),
            row(7, 'u1', { invalidReason: 'currency: bad' }),
            row(8, 'u9', { invalidReason: 'currency: bad' }),
          ]),
          (duplicate) => duplicates.push(duplicate),
        );
        expect(duplicates).toEqual([{ userId: 'u3', line: 6, firstLine: 4 }]);
        expect(run).toMatchObject({
          runId: 'r1',
          inputHash: 'hash-2',
          inputPath: 'fixed.csv',
          finishedAt: undefined,
          total: 6,
        });
        const all = await collect(ledger.charges('r1'));
        expect(all.map((c) => [c.userId, c.line, c.state])).toEqual([
          ['u1', 2, 'charged'],
          ['u2', 3, 'charged'],
          ['u3', 4, 'pending'],
          ['u4', 5, 'pending'],
          ['u3', 6, 'invalid'],
          ['u9', 8, 'invalid'],
        ]);
        expect(await ledger.counts('r1')).toMatchObject({ charged: 2, pending: 2, invalid: 2 });
        expect((await ledger.pendingCharges('r1', 0, 10)).map((c) => c.userId)).toEqual([
          'u3',
          'u4',
        ]);
        expect((await ledger.findRun('r1'))?.total).toBe(6);
        expect((await ledger.charge('r1', 'u4'))?.state).toBe('pending');
      });

      it('refuses a later id that differs only by case or normalization from one the run holds, or from one earlier in the input', async () => {
        const ledger = await open();
        await create(ledger, 'r1', [row(2, 'Alice@x'), row(3, 'carol')]);
        const duplicates: unknown[] = [];
        const run = await ledger.extendRun(
          'r1',
          { inputHash: 'hash-2', inputPath: 'again.csv' },
          batchesOf([
            row(2, 'alice@x'), // the run holds its twin
            row(3, 'Carol'), // likewise, the held id being its own fold
            row(4, 'Alice@x'), // held as it is, but line 2 was its twin
            row(5, 'Dave'),
            row(6, 'dave'), // a twin of line 5 of this input
            row(7, 'Dave'), // line 5 again
          ]),
          (duplicate) => duplicates.push(duplicate),
        );
        expect(duplicates).toEqual([
          { userId: 'alice@x', line: 2, firstLine: 2, twin: 'Alice@x', held: true },
          { userId: 'Carol', line: 3, firstLine: 3, twin: 'carol', held: true },
          { userId: 'Alice@x', line: 4, firstLine: 2, twin: 'alice@x' },
          { userId: 'dave', line: 6, firstLine: 5, twin: 'Dave' },
          { userId: 'Dave', line: 7, firstLine: 5 },
        ]);
        expect(run.total).toBe(8);
        const all = await collect(ledger.charges('r1'));
        expect(all.map((c) => [c.userId, c.state, c.error])).toEqual([
          ['Alice@x', 'pending', undefined],
          ['carol', 'pending', undefined],
          [
            'alice@x',
            'invalid',
            'user_id: differs from "Alice@x", whom the run already holds, only by case or Unicode normalization',
          ],
          [
            'Carol',
            'invalid',
            'user_id: differs from "carol", whom the run already holds, only by case or Unicode normalization',
          ],
          [
            'Alice@x',
            'invalid',
            `user_id: differs from line 2's "alice@x" only by case or Unicode normalization`,
          ],
          ['Dave', 'pending', undefined],
          [
            'dave',
            'invalid',
            `user_id: differs from line 5's "Dave" only by case or Unicode normalization`,
          ],
          ['Dave', 'invalid', 'user_id: appears twice (first on line 5)'],
        ]);
        // And the twin added by this input is held by fold for the next one.
        expect((await ledger.heldCharges('r1', ['DAVE'])).get('DAVE')?.twin).toBe('Dave');
      });

      it('leaves a finished run finished when the later input adds nobody', async () => {
        const ledger = await open();
        await create(ledger, 'r1', rows(2));
        ledger.record('r1', outcome('u1'));
        ledger.record('r1', outcome('u2'));
        expect(await ledger.finishIfComplete('r1')).toBe(true);
        const run = await ledger.extendRun(
          'r1',
          { inputHash: 'hash-3', inputPath: 'again.csv' },
          batchesOf([row(9, 'u2'), row(10, 'u1')]),
          () => {},
        );
        expect(run.finishedAt).toEqual(expect.any(String));
        expect(run.total).toBe(2);
      });
    });

    describe('dashboard reads', () => {
      /** An outcome that ends the attempt numbered `n`, sent at `at`. */
      function attempted(
        userId: string,
        n: number,
        at: number,
        overrides: Partial<ChargeOutcome> = {},
        throttled = false,
      ): ChargeOutcome {
        // As the engines send it: the charge's first attempt's time on every outcome (kept once).
        return outcome(userId, {
          attempts: n,
          firstAttemptAt: at,
          ...overrides,
          attempt: { n, at, throttled },
        });
      }

      function sample(at: number, source: string, ended = 1): RunSample {
        return {
          at,
          source,
          ended,
          attempts: ended + 1,
          retries: 1,
          refusals: 0,
          inFlight: 3,
          limit: 8,
          breaker: source.endsWith('1') ? 'closed' : undefined,
          hist: LATENCY_BUCKETS_MS.map((_, index) => (index === 9 ? ended : 0)).concat([0]),
        };
      }

      const failed = { chargeId: undefined } as const;

      it("keeps a charge's attempts oldest first, with outcome, status, latency and reason", async () => {
        const ledger = await open({ flushIntervalMs: 60_000 });
        await create(ledger, 'r1', rows(4));
        const reason = 'unavailable, try later | \\p; again';
        ledger.record(
          'r1',
          attempted('u1', 1, 1_000, {
            ...failed,
            state: 'pending',
            httpStatus: 503,
            latencyMs: 1_200.4,
            error: reason,
          }),
        );
        ledger.record(
          'r1',
          attempted(
            'u1',
            2,
            2_000,
            { ...failed, state: 'pending', httpStatus: 429, latencyMs: 30, error: 'rate limited' },
            true,
          ),
        );
        ledger.record('r1', attempted('u1', 2, 3_000, { latencyMs: 812 }));
        ledger.record(
          'r1',
          attempted('u2', 1, 1_500, {
            ...failed,
            state: 'declined',
            httpStatus: 402,
            error: 'card_declined: insufficient funds',
          }),
        );
        ledger.record(
          'r1',
          attempted('u3', 1, 1_600, {
            ...failed,
            state: 'unknown',
            ambiguous: true,
            httpStatus: undefined,
            latencyMs: undefined,
            error: '',
          }),
        );
        // An outcome that ends no request (a charge ended unsent) adds no attempt.
        ledger.record('r1', outcome('u4', { ...failed, state: 'failed', attempts: 0, error: 'x' }));
        await ledger.flush();

        const reader = await open();
        expect(await reader.attemptHistory('r1', 'u1')).toEqual([
          {
            attempt: 1,
            at: 1_000,
            httpStatus: 503,
            latencyMs: 1_200,
            outcome: 'retry',
            reason,
          },
          {
            attempt: 2,
            at: 2_000,
            httpStatus: 429,
            latencyMs: 30,
            outcome: 'throttled',
            reason: 'rate limited',
          },
          {
            attempt: 2,
            at: 3_000,
            httpStatus: 200,
            latencyMs: 812,
            outcome: 'charged',
            reason: undefined,
          },
        ]);
        expect(await reader.attemptHistory('r1', 'u2')).toEqual([
          {
            attempt: 1,
            at: 1_500,
            httpStatus: 402,
            latencyMs: 12,
            outcome: 'declined',
            reason: 'card_declined: insufficient funds',
          },
        ]);
        expect(await reader.attemptHistory('r1', 'u3')).toEqual([
          {
            attempt: 1,
            at: 1_600,
            httpStatus: undefined,
            latencyMs: undefined,
            outcome: 'unknown',
            reason: '',
          },
        ]);
        expect(await reader.attemptHistory('r1', 'u4')).toEqual([]);
        // A user the run does not hold, a run that does not exist.
        expect(await reader.attemptHistory('r1', 'nobody')).toEqual([]);
        expect(await reader.attemptHistory('other-run', 'u1')).toEqual([]);
      });

      it("adds a late outcome's attempt to a charged charge's history, and leaves the charge charged", async () => {
        const ledger = await open({ flushIntervalMs: 60_000 });
        await create(ledger, 'r1', rows(1));
        await ledger.startAttempts('r1', [
          { userId: 'u1', attempts: 1, ambiguous: false, at: 1_000 },
        ]);
        ledger.record('r1', attempted('u1', 1, 1_000));
        await ledger.flush();
        ledger.record(
          'r1',
          attempted('u1', 2, 2_000, {
            ...failed,
            state: 'failed',
            httpStatus: 500,
            error: 'late answer',
          }),
        );
        await ledger.flush();
        expect(await ledger.charge('r1', 'u1')).toMatchObject({
          state: 'charged',
          attempts: 1,
          chargeId: 'ch_u1',
        });
        const history = await ledger.attemptHistory('r1', 'u1');
        expect(history.map((one) => [one.attempt, one.at, one.outcome, one.reason])).toEqual([
          [1, 1_000, 'charged', undefined],
          [2, 2_000, 'failed', 'late answer'],
        ]);
        expect(await ledger.counts('r1')).toMatchObject({ charged: 1, failed: 0 });
      });

      it('keeps at least the latest HISTORY_KEPT attempts of a charge (the Redis ledger no more), the latest last', async () => {
        const ledger = await open({ flushIntervalMs: 60_000 });
        await create(ledger, 'r1', rows(2));
        const retries = HISTORY_KEPT + 5;
        const expected: AttemptRecord[] = [];
        for (let n = 1; n <= retries; n++) {
          ledger.record(
            'r1',
            attempted('u1', n, n * 1_000, {
              ...failed,
              state: 'pending',
              httpStatus: 503,
              error: `try ${n}`,
            }),
          );
          expected.push({
            attempt: n,
            at: n * 1_000,
            httpStatus: 503,
            latencyMs: 12,
            outcome: 'retry',
            reason: `try ${n}`,
          });
          // Some in one write, some over several.
          if (n % 7 === 0) await ledger.flush();
        }
        ledger.record('r1', attempted('u1', retries + 1, (retries + 1) * 1_000));
        expected.push({
          attempt: retries + 1,
          at: (retries + 1) * 1_000,
          httpStatus: 200,
          latencyMs: 12,
          outcome: 'charged',
          reason: undefined,
        });
        // Charged at its first request: its history is that one attempt.
        await ledger.startAttempts('r1', [
          { userId: 'u2', attempts: 1, ambiguous: false, at: 500 },
        ]);
        ledger.record('r1', attempted('u2', 1, 500));
        await ledger.flush();
        const history = await ledger.attemptHistory('r1', 'u1');
        expect(history.length).toBeGreaterThanOrEqual(Math.min(expected.length, HISTORY_KEPT));
        // Capped (Redis) or whole (SQLite), nothing in between.
        expect([HISTORY_KEPT, expected.length]).toContain(history.length);
        expect(history).toEqual(expected.slice(-history.length));
        expect(history.at(-1)?.outcome).toBe('charged');
        expect(await ledger.attemptHistory('r1', 'u2')).toEqual([
          {
            attempt: 1,
            at: 500,
            httpStatus: 200,
            latencyMs: 12,
            outcome: 'charged',
            reason: undefined,
          },
        ]);
      });

      it('keeps samples and returns those of seconds after a time, oldest first', async () => {
        const ledger = await open();
        await create(ledger, 'r1', rows(1));
        await create(ledger, 'r2', rows(1));
        const base = Math.floor(Date.now() / 1_000) * 1_000 - 10_000;
        // Two processes, whose seconds arrive a little out of order.
        const noted = [
          sample(base, 'host:1'),
          sample(base + 1_000, 'host:2', 4),
          sample(base + 1_000, 'host:1', 2),
          sample(base - 1_000, 'host:2', 3),
          sample(base + 2_000, 'host:1', 0),
        ];
        for (const one of noted) await ledger.noteSample('r1', one);
        await ledger.noteSample('r2', sample(base, 'other:1', 9));
        const byAt = (a: RunSample, b: RunSample) => a.at - b.at;
        const all = await (await open()).samples('r1', 0);
        expect(all).toEqual([...noted].sort(byAt));
        expect(await ledger.samples('r1', base - 1_000)).toEqual(
          noted.filter((one) => one.at > base - 1_000).sort(byAt),
        );
        expect(await ledger.samples('r1', base)).toEqual([
          sample(base + 1_000, 'host:2', 4),
          sample(base + 1_000, 'host:1', 2),
          sample(base + 2_000, 'host:1', 0),
        ]);
        expect(await ledger.samples('r1', base + 2_000)).toEqual([]);
        expect(await ledger.samples('r2', 0)).toEqual([sample(base, 'other:1', 9)]);
        expect(await ledger.samples('other-run', 0)).toEqual([]);
        // A second of a process whose clock is far behind is kept too.
        await ledger.noteSample('r1', sample(5_000, 'slow:2'));
        expect((await ledger.samples('r1', 0))[0]).toEqual(sample(5_000, 'slow:2'));
        expect(await ledger.samples('r1', 5_000)).toEqual(all);
      });

      it('returns every sample of a long run, in pages', async () => {
        const ledger = await open();
        await create(ledger, 'r1', rows(1));
        const base = Math.floor(Date.now() / 1_000) * 1_000 - 6_000_000;
        const noted = Array.from({ length: 5_100 }, (_, index) =>
          sample(base + index * 1_000, 'host:1', index),
        );
        await Promise.all(noted.map((one) => ledger.noteSample('r1', one)));
        const all = await ledger.samples('r1', 0);
        expect(all).toHaveLength(noted.length);
        expect(all.map((one) => one.at)).toEqual(noted.map((one) => one.at));
        expect((await ledger.samples('r1', base + 5_000 * 1_000)).map((one) => one.ended)).toEqual(
          Array.from({ length: 99 }, (_, index) => 5_001 + index),
        );
      });

      describe('problems', () => {
        /** u1…u8 and two invalid rows, ended as the dashboard would see them, each a second later. */
        async function billed(): Promise<Ledger> {
          const ledger = await open({ flushIntervalMs: 60_000 });
          await create(ledger, 'r1', [
            ...rows(8),
            row(20, 'bad1', { invalidReason: 'amount: expected a positive integer' }),
            row(21, 'u3'), // a duplicate: invalid
          ]);
          ledger.record('r1', attempted('u1', 1, 1_000));
          ledger.record(
            'r1',
            attempted('u2', 1, 2_000, {
              ...failed,
              state: 'declined',
              httpStatus: 402,
              error: 'card_declined: insufficient funds',
            }),
          );
          ledger.record(
            'r1',
            attempted('u3', 1, 3_000, {
              ...failed,
              state: 'failed',
              httpStatus: 503,
              error: 'service unavailable',
            }),
          );
          ledger.record(
            'r1',
            attempted('u4', 1, 4_000, {
              ...failed,
              state: 'unknown',
              ambiguous: true,
              httpStatus: undefined,
              latencyMs: undefined,
              error: 'timeout after request sent',
            }),
          );
          ledger.record(
            'r1',
            attempted('u5', 1, 5_000, {
              ...failed,
              state: 'pending',
              httpStatus: 503,
              error: 'retry me',
            }),
          );
          ledger.record(
            'r1',
            attempted('u6', 1, 6_000, {
              ...failed,
              state: 'failed',
              httpStatus: 500,
              error: 'Internal Error',
            }),
          );
          ledger.record(
            'r1',
            attempted('u7', 1, 7_000, {
              ...failed,
              state: 'declined',
              httpStatus: 402,
              error: 'do_not_honor',
            }),
          );
          await ledger.flush();
          return ledger;
        }

        const ids = (found: ProblemRows) => found.rows.map((c) => `${c.userId}@${c.line}`);

        it('lists declined, failed and unknown charges, the latest first, then invalid rows, as charge() shows them', async () => {
          const ledger = await billed();
          const found = await (await open()).problems('r1', { limit: 100 });
          expect(ids(found)).toEqual(['u7@8', 'u6@7', 'u4@5', 'u3@4', 'u2@3', 'u3@21', 'bad1@20']);
          expect(found.matching).toBe(7);
          for (const charge of found.rows.slice(0, 5)) {
            expect(charge).toEqual(await ledger.charge('r1', charge.userId));
          }
          const all = await collect(ledger.charges('r1'));
          expect(found.rows.slice(5)).toEqual([all[9], all[8]]);
          expect(found.rows[5]?.error).toBe('user_id: appears twice (first on line 4)');
        });

        it('lists the charges of one state', async () => {
          const ledger = await billed();
          const of = (state: ProblemFilter['state']) =>
            ledger.problems('r1', { state, limit: 100 });
          expect(ids(await of('declined'))).toEqual(['u7@8', 'u2@3']);
          expect(ids(await of('failed'))).toEqual(['u6@7', 'u3@4']);
          expect(ids(await of('unknown'))).toEqual(['u4@5']);
          expect(await of('unknown')).toMatchObject({
            matching: 1,
            rows: [{ state: 'unknown', ambiguous: true, error: 'timeout after request sent' }],
          });
          expect(ids(await of('invalid'))).toEqual(['u3@21', 'bad1@20']);
          expect((await of('invalid')).matching).toBe(2);
          // Pending: the order is the ledger's (it may know no latest); u5 was retried, u8 never tried.
          const pending = await of('pending');
          expect(ids(pending).sort()).toEqual(['u5@6', 'u8@9']);
          expect(pending.matching).toBe(2);
          expect(pending.rows.find((c) => c.userId === 'u5')).toMatchObject({
            state: 'pending',
            attempts: 1,
            error: 'retry me',
          });
        });

        it('filters on text in the user id or the reason, whatever its case', async () => {
          const ledger = await billed();
          const found = (q: string, state?: ProblemFilter['state']) =>
            ledger.problems('r1', { q, state, limit: 100 });
          expect(ids(await found('U3'))).toEqual(['u3@4', 'u3@21']);
          expect((await found('U3')).matching).toBe(2);
          expect(ids(await found('DECLINED'))).toEqual(['u2@3']);
          expect(ids(await found('appears twice'))).toEqual(['u3@21']);
          expect(ids(await found('internal', 'failed'))).toEqual(['u6@7']);
          expect(ids(await found('internal', 'declined'))).toEqual([]);
          expect(ids(await found('retry', 'pending'))).toEqual(['u5@6']);
          expect(await found('no such text')).toEqual({ rows: [], matching: 0 });
        });

        it('returns at most limit rows, the latest, and counts every match', async () => {
          const ledger = await billed();
          expect(await ledger.problems('r1', { limit: 2 })).toMatchObject({ matching: 7 });
          expect(ids(await ledger.problems('r1', { limit: 2 }))).toEqual(['u7@8', 'u6@7']);
          expect(ids(await ledger.problems('r1', { limit: 6 }))).toEqual([
            'u7@8',
            'u6@7',
            'u4@5',
            'u3@4',
            'u2@3',
            'u3@21',
          ]);
          expect(await ledger.problems('r1', { limit: 0 })).toEqual({ rows: [], matching: 7 });
          const invalid = await ledger.problems('r1', { state: 'invalid', limit: 1 });
          expect([ids(invalid), invalid.matching]).toEqual([['u3@21'], 2]);
          const pending = await ledger.problems('r1', { state: 'pending', limit: 1 });
          expect([pending.rows.length, pending.matching]).toEqual([1, 2]);
        });

        it('lists a charge by where it stands now, once: reopened and charged it is gone, failed again it is the latest', async () => {
          const ledger = await billed();
          expect(await ledger.reopenEnded('r1')).toBe(3); // u3, u4, u6
          expect(await ledger.problems('r1', { state: 'failed', limit: 100 })).toEqual({
            rows: [],
            matching: 0,
          });
          ledger.record('r1', attempted('u3', 2, 8_000));
          ledger.record(
            'r1',
            attempted('u6', 2, 9_000, {
              ...failed,
              state: 'failed',
              httpStatus: 500,
              error: 'still failing',
            }),
          );
          // Failed, then unknown without a reopen: still one row.
          ledger.record(
            'r1',
            attempted('u6', 3, 10_000, {
              ...failed,
              state: 'unknown',
              ambiguous: true,
              httpStatus: undefined,
              error: 'timeout after request sent',
            }),
          );
          await ledger.flush();
          const found = await ledger.problems('r1', { limit: 100 });
          expect(ids(found)).toEqual(['u6@7', 'u7@8', 'u2@3', 'u3@21', 'bad1@20']);
          expect(found.matching).toBe(5);
          expect(found.rows[0]).toMatchObject({ state: 'unknown', attempts: 3 });
          expect(new Set(ids(found)).size).toBe(found.rows.length);
          expect(ids(await ledger.problems('r1', { state: 'failed', limit: 100 }))).toEqual([]);
          expect(ids(await ledger.problems('r1', { state: 'unknown', limit: 100 }))).toEqual([
            'u6@7',
          ]);
          expect(ids(await ledger.problems('r1', { state: 'pending', limit: 100 })).sort()).toEqual(
            ['u4@5', 'u5@6', 'u8@9'],
          );
          expect(ids(await ledger.problems('r1', { q: 'u3', limit: 100 }))).toEqual(['u3@21']);
        });

        it('finds nothing in a run without problems, or in a run that does not exist', async () => {
          const ledger = await open();
          await create(ledger, 'r1', rows(2));
          ledger.record('r1', attempted('u1', 1, 1_000));
          await ledger.flush();
          expect(await ledger.problems('r1', { limit: 10 })).toEqual({ rows: [], matching: 0 });
          expect(ids(await ledger.problems('r1', { state: 'pending', limit: 10 }))).toEqual([
            'u2@3',
          ]);
          for (const state of [undefined, 'declined', 'invalid', 'pending'] as const) {
            expect(await ledger.problems('other-run', { state, limit: 10 })).toEqual({
              rows: [],
              matching: 0,
            });
          }
        });
      });
    });

    describe('runs', () => {
      it('lists every run, newest first, finished or not', async () => {
        const ledger = await open();
        await create(ledger, 'old', rows(1), 'same-input');
        await create(ledger, 'mid', rows(2), 'same-input');
        await create(ledger, 'new', rows(3), 'other-input');
        ledger.record('mid', outcome('u1'));
        ledger.record('mid', outcome('u2'));
        expect(await ledger.finishIfComplete('mid')).toBe(true);
        const runs = await ledger.listRuns();
        expect(runs.map((run) => [run.runId, run.total, run.finishedAt !== undefined])).toEqual([
          ['new', 3, false],
          ['mid', 2, true],
          ['old', 1, false],
        ]);
        expect(runs[2]?.inputHash).toBe('same-input');
      });

      it('finishes a run only when nothing is pending, failed or unknown', async () => {
        const ledger = await open({ flushIntervalMs: 60_000 });
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
        expect((await (await open()).findRun('r1'))?.finishedAt).toBe(finishedAt);
      });

      it('sees everything from a second ledger after close, including outcomes never flushed', async () => {
        const first = await open({ flushIntervalMs: 60_000 });
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
        opened = opened.filter((ledger) => ledger !== first);

        const second = await open();
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
        expect(await second.totals('r1', 'unknown')).toEqual({ USD: 300 });
      });
    });

    describe('run claims', () => {
      it('refuses a run claimed by a live process, naming it', async () => {
        const ledger = await open();
        await create(ledger, 'r1', rows(1));
        await (await storageOf()).claimAs('r1', process.ppid, hostname());
        await expect(ledger.claimRun('r1')).rejects.toThrow(
          new RegExp(`run r1 is being billed by process ${process.ppid} on `),
        );
      });

      it('takes over a claim left by a process that died (kill -9)', async () => {
        const ledger = await open();
        await create(ledger, 'r1', rows(1));
        await (await storageOf()).claimAs('r1', deadPid(), hostname());
        await expect(ledger.claimRun('r1')).resolves.toBeUndefined();
        // Ours now: another ledger of this process may claim it again, another process may not.
        await expect((await open()).claimRun('r1')).resolves.toBeUndefined();
        await ledger.releaseRun('r1');
        await (await storageOf()).claimAs('r1', process.ppid, hostname());
        await expect(ledger.claimRun('r1')).rejects.toThrow(/being billed/);
      });

      it('frees the run on release, and keeps somebody else’s claim', async () => {
        const ledger = await open();
        await create(ledger, 'r1', rows(1));
        await ledger.claimRun('r1');
        await ledger.releaseRun('r1');
        await ledger.releaseRun('r1'); // releasing twice is harmless
        await (await storageOf()).claimAs('r1', process.ppid, hostname());
        await ledger.releaseRun('r1');
        await expect(ledger.claimRun('r1')).rejects.toThrow(/being billed/);
      });

      it('respects a claim from another host, which it cannot check', async () => {
        const ledger = await open();
        await create(ledger, 'r1', rows(1));
        await (await storageOf()).claimAs('r1', deadPid(), 'another-host');
        await expect(ledger.claimRun('r1')).rejects.toThrow(/on another-host/);
      });

      it('takes over a claim not renewed for the lease, whichever host made it (a killed container)', async () => {
        const ledger = await open();
        await create(ledger, 'r1', rows(1));
        await (await storageOf()).claimAs('r1', process.pid, 'another-host', 31_000);
        await expect(ledger.claimRun('r1')).resolves.toBeUndefined();
        // Now ours, and renewed: another process of this host is refused.
        await (await storageOf()).claimAs('r1', process.pid, 'another-host', 29_000);
        await expect(ledger.claimRun('r1')).rejects.toThrow(/on another-host/);
      });
    });
  });
}
