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
