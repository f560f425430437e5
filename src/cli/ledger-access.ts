import { existsSync } from 'node:fs';
import { BulkbillError, ErrorCode } from '../domain/errors.js';
import type { RunRecord } from '../ledger/ledger.js';
import { SqliteLedger } from '../ledger/sqlite-ledger.js';

/** Opens an existing ledger, or fails naming the path. */
export async function openLedger(path: string): Promise<SqliteLedger> {
  // Opening would create an empty ledger: a typo in --ledger must not look like "no runs".
  if (path !== ':memory:' && !existsSync(path)) {
    throw new BulkbillError(ErrorCode.Usage, `--ledger: no ledger at ${path}`);
  }
  return new SqliteLedger({ path });
}

/** Opens an existing ledger and finds a run in it, or fails naming what is missing. */
export async function openRun(
  path: string,
  runId: string,
): Promise<{ ledger: SqliteLedger; run: RunRecord }> {
  // Opening would create an empty ledger: a typo in --ledger must not look like "no such run".
  if (path !== ':memory:' && !existsSync(path)) {
    throw new BulkbillError(ErrorCode.Usage, `--ledger: no ledger at ${path}`);
  }
  const ledger = new SqliteLedger({ path });
  const run = await ledger.findRun(runId);
  if (!run) {
    await ledger.close();
    throw new BulkbillError(ErrorCode.Usage, `--run-id: no run ${runId} in ${path}`);
  }
  return { ledger, run };
}
