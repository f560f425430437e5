import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BulkbillError } from '../../src/domain/errors.js';
import type { ChargeOutcome } from '../../src/ledger/ledger.js';
import { SqliteLedger, type SqliteLedgerOptions } from '../../src/ledger/sqlite-ledger.js';
import { create, heldImport, row, rows } from '../helpers/ledger-rows.js';

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

describe('SqliteLedger: the file', () => {
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

  it('opens a ledger written before issue 8 and keeps billing it: its users, its invalid rows, its index', async () => {
    const path = join(dir, 'ledger.db');
    const { default: Database } = await import('better-sqlite3');
    // The schema of bulkbill at 3d54e03, with a run in it: u1 charged, u2 pending, a second u2 invalid.
    const old = new Database(path);
    old.pragma('journal_mode = WAL');
    old.exec(`
      CREATE TABLE run_owners (run_id TEXT PRIMARY KEY, pid INTEGER NOT NULL, host TEXT NOT NULL, since TEXT NOT NULL);
      CREATE TABLE runs (run_id TEXT PRIMARY KEY, input_hash TEXT NOT NULL, input_path TEXT NOT NULL,
        endpoint TEXT NOT NULL, created_at TEXT NOT NULL, finished_at TEXT, total INTEGER NOT NULL);
      CREATE INDEX runs_by_input ON runs (input_hash, created_at);
      CREATE TABLE charges (run_id TEXT NOT NULL, seq INTEGER NOT NULL, line INTEGER NOT NULL,
        user_id TEXT NOT NULL, amount INTEGER NOT NULL, currency TEXT NOT NULL, metadata TEXT,
        state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, ambiguous INTEGER NOT NULL DEFAULT 0,
        http_status INTEGER, latency_ms INTEGER, charge_id TEXT, error TEXT,
        PRIMARY KEY (run_id, seq)) WITHOUT ROWID;
      CREATE UNIQUE INDEX charges_by_user ON charges (run_id, user_id) WHERE state <> 'invalid';
      INSERT INTO runs VALUES ('r1', 'h', 'users.csv', 'http://provider/charge', '2026-11-01T00:00:00.000Z', NULL, 3);
      INSERT INTO charges (run_id, seq, line, user_id, amount, currency, state, attempts, http_status, charge_id)
        VALUES ('r1', 1, 2, 'u1', 100, 'USD', 'charged', 1, 200, 'ch_u1');
      INSERT INTO charges (run_id, seq, line, user_id, amount, currency, state)
        VALUES ('r1', 2, 3, 'u2', 200, 'USD', 'pending');
      INSERT INTO charges (run_id, seq, line, user_id, amount, currency, state, error)
        VALUES ('r1', 3, 4, 'u2', 0, '', 'invalid', 'user_id: appears twice (first on line 3)');
    `);
    old.close();

    const ledger = open();
    expect(await ledger.counts('r1')).toMatchObject({ charged: 1, pending: 1, invalid: 1 });
    expect(await ledger.charge('r1', 'u2')).toMatchObject({ state: 'pending', line: 3 });
    const [pending] = await ledger.pendingCharges('r1', 0, 10);
    expect(pending).toMatchObject({ userId: 'u2', seq: 2 });
    ledger.record('r1', outcome('u2', { seq: pending?.seq }));
    // A stale outcome for a settled charge still loses, found by user as by key.
    ledger.record('r1', outcome('u1', { state: 'failed', chargeId: undefined }));
    await ledger.flush();
    expect(await ledger.counts('r1')).toMatchObject({ charged: 2, pending: 0, invalid: 1 });
    expect(await ledger.finishIfComplete('r1')).toBe(true);

    const raw = new Database(path, { readonly: true });
    try {
      const indexes = raw
        .prepare<[], string>("SELECT name FROM sqlite_master WHERE type = 'index' ORDER BY name")
        .pluck()
        .all();
      expect(indexes).toContain('charges_of_user');
      expect(indexes).not.toContain('charges_by_user');
      expect(raw.prepare('SELECT seq, valid FROM charges ORDER BY seq').raw().all()).toEqual([
        [1, 1],
        [2, 1],
        [3, 0],
      ]);
      // The lookups by user use the new index, not a scan of the run.
      const plan = raw
        .prepare(
          "EXPLAIN QUERY PLAN SELECT line FROM charges WHERE run_id = 'r1' AND user_id = 'u2' AND valid = 1",
        )
        .all() as Array<{ detail: string }>;
      expect(plan.map((step) => step.detail).join(' ')).toContain('charges_of_user');
    } finally {
      raw.close();
    }
  });
});

// What the Ledger interface promises is checked against every ledger in
// test/conformance/ledger-conformance.ts; this file keeps what only SQLite's one transaction does.
describe('SqliteLedger: one connection, one transaction', () => {
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
});
