import type {
  ChargeRecord,
  DuplicateUser,
  ImportRow,
  Ledger,
  RunRecord,
} from '../../src/ledger/ledger.js';
import { SqliteLedger } from '../../src/ledger/sqlite-ledger.js';

// Rows and runs for ledger tests, shared by the conformance suite and the SQLite-only tests.

export function row(line: number, userId: string, overrides: Partial<ImportRow> = {}): ImportRow {
  return { line, userId, amount: 100 * line, currency: 'USD', metadata: {}, ...overrides };
}

/** `count` valid rows, user ids `u1`…, lines 2… as after a CSV header. */
export function rows(count: number): ImportRow[] {
  return Array.from({ length: count }, (_, index) => row(index + 2, `u${index + 1}`));
}

export async function* batchesOf(all: readonly ImportRow[], size = 3): AsyncIterable<ImportRow[]> {
  for (let start = 0; start < all.length; start += size) yield all.slice(start, start + size);
}

export function runOf(runId: string, inputHash = `hash-${runId}`) {
  return { runId, inputHash, inputPath: 'users.csv', endpoint: 'http://127.0.0.1:1/charge' };
}

export async function create(
  ledger: Ledger,
  runId: string,
  all: readonly ImportRow[],
  inputHash?: string,
  batchSize?: number,
): Promise<{ run: RunRecord; duplicates: DuplicateUser[] }> {
  const duplicates: DuplicateUser[] = [];
  const run = await ledger.createRun(
    runOf(runId, inputHash),
    batchesOf(all, batchSize),
    (duplicate) => duplicates.push(duplicate),
  );
  return { run, duplicates };
}

/** An import that yields one batch, then waits for release() and fails or ends. */
export function heldImport(ledger: Ledger, runId: string, fail: boolean) {
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

/**
 * An in-memory SQLite ledger holding run `runId` with `count` users `u0`…, for scheduler tests;
 * it is pushed on `opened` for the test to close.
 */
export async function memoryLedgerWith(
  count: number,
  runId: string,
  opened: SqliteLedger[],
): Promise<SqliteLedger> {
  const ledger = new SqliteLedger({ path: ':memory:', flushIntervalMs: 1 });
  opened.push(ledger);
  const all = Array.from({ length: count }, (_, index) => ({
    line: index + 2,
    userId: `u${index}`,
    amount: 100,
    currency: 'USD',
    metadata: {},
  }));
  await ledger.createRun(
    { runId, inputHash: 'h', inputPath: 'in.csv', endpoint: 'e' },
    batchesOf(all, all.length || 1),
    () => {},
  );
  return ledger;
}

/** Every charge of run `runId`, after the ledger's pending writes. */
export async function chargesIn(ledger: Ledger, runId: string): Promise<ChargeRecord[]> {
  await ledger.flush();
  const all: ChargeRecord[] = [];
  for await (const charge of ledger.charges(runId)) all.push(charge);
  return all;
}
