import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import { rename, stat, unlink } from 'node:fs/promises';
import { BulkbillError, ErrorCode } from '../domain/errors.js';
import { currencyExponent, toMajorUnits } from '../domain/money.js';
import type { Ledger } from '../ledger/ledger.js';
import { csvRecord } from './csv.js';

/**
 * The report's columns, in order: the first seven are the contract, the rest context. `amount`
 * is in the currency's own units (`12.34` USD, `1200` JPY; a code without a known minor unit:
 * its count of minor units), `amount_minor` the exact integer of minor units the ledger holds.
 */
export const REPORT_COLUMNS = [
  'user_id',
  'status',
  'attempts',
  'http_status',
  'latency_ms',
  'charge_id',
  'error',
  'line',
  'amount',
  'amount_minor',
  'currency',
  'ambiguous',
  'metadata',
] as const;

/**
 * Writes one CSV row per input row of the run, in input order, streamed from the ledger. A
 * report file is written to a temporary file and renamed, so a report on disk is always whole;
 * anything else that exists at `path` (/dev/stdout, a pipe) is written to directly, since
 * renaming over it would replace the device.
 */
export async function writeReport(ledger: Ledger, runId: string, path: string): Promise<number> {
  const existing = await stat(path).catch(() => undefined);
  const temporary =
    existing === undefined || existing.isFile() ? `${path}.${process.pid}.tmp` : undefined;
  // Owner-only (0600): a report names every user and amount. A device or pipe keeps its own.
  const out = createWriteStream(temporary ?? path, { encoding: 'utf8', mode: 0o600 });
  const ioFailure = (error: unknown) =>
    new BulkbillError(
      ErrorCode.Io,
      `cannot write the report ${path}: ${(error as Error).message}`,
      {
        cause: error,
      },
    );
  const failed = once(out, 'error').then(([error]) => {
    throw ioFailure(error);
  });
  failed.catch(() => {});
  let rows = 0;
  const write = async (text: string) => {
    if (!out.write(text)) await Promise.race([once(out, 'drain'), failed]);
  };
  try {
    await write(csvRecord(REPORT_COLUMNS));
    // One write per page of the ledger: a write per row costs more than making the row.
    for await (const page of ledger.chargePages(runId)) {
      rows += page.length;
      let text = '';
      for (const charge of page) {
        text += csvRecord([
          charge.userId,
          charge.state,
          charge.attempts,
          charge.httpStatus,
          charge.latencyMs,
          charge.chargeId,
          charge.error,
          charge.line,
          reportAmount(charge.amount, charge.currency),
          charge.amount,
          charge.currency,
          charge.ambiguous,
          Object.keys(charge.metadata).length > 0 ? JSON.stringify(charge.metadata) : undefined,
        ]);
      }
      await write(text);
    }
    out.end();
    await Promise.race([once(out, 'finish'), failed]);
    if (temporary !== undefined)
      await rename(temporary, path).catch((error) => {
        throw ioFailure(error);
      });
  } catch (error) {
    // An open still under way creates the file after an unlink: wait until the stream is closed.
    if (!out.closed)
      await new Promise<void>((resolve) => out.once('close', () => resolve()).destroy());
    if (temporary !== undefined) await unlink(temporary).catch(() => {});
    // once('drain' | 'finish') rejects with the stream's own error, which can come before `failed`.
    throw error === out.errored ? ioFailure(error) : error;
  }
  return rows;
}

/** `amount` in major units where the currency's exponent is known, else its minor-unit count. */
function reportAmount(amount: number, currency: string): string | number {
  return currencyExponent(currency) === undefined || !Number.isSafeInteger(amount)
    ? amount
    : toMajorUnits(amount, currency);
}
