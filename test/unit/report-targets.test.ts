import { statSync } from 'node:fs';
import { afterEach, expect, it } from 'vitest';
import { SqliteLedger } from '../../src/ledger/sqlite-ledger.js';
import { writeReport } from '../../src/report/report.js';

const ledgers: SqliteLedger[] = [];
afterEach(async () => {
  await Promise.all(ledgers.splice(0).map((ledger) => ledger.close()));
});

it('writes a report to a device in place, never renaming over it (--report /dev/null)', async () => {
  const ledger = new SqliteLedger({ path: ':memory:' });
  ledgers.push(ledger);
  async function* batches() {
    yield [{ line: 2, userId: 'u1', amount: 100, currency: 'USD', metadata: {} }];
  }
  await ledger.createRun(
    { runId: 'r', inputHash: 'h', inputPath: 'in.csv', endpoint: 'e' },
    batches(),
    () => {},
  );
  expect(statSync('/dev/null').isCharacterDevice()).toBe(true);
  expect(await writeReport(ledger, 'r', '/dev/null')).toBe(1);
  expect(statSync('/dev/null').isCharacterDevice()).toBe(true);
});
