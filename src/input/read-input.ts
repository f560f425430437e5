import type { ReadStream } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { describeValue, UsageError } from '../domain/errors.js';
import { CsvRowReader } from './csv.js';
import { NdjsonRowReader } from './ndjson.js';
import type { InputCharge, InputProblem, InputRow } from './row.js';
import {
  formatFromExtension,
  type InputFormat,
  inputFileError,
  openInput,
  READ_CHUNK_BYTES,
  sniffFormat,
} from './source.js';

/** How to read an input file. */
export interface ReadInputOptions {
  /**
   * The file's format. Default: from the extension (`.csv` is CSV; `.ndjson` and `.jsonl` are
   * NDJSON), otherwise from the first character that is not whitespace (`{` is NDJSON, anything
   * else CSV).
   */
  readonly format?: InputFormat | undefined;
  /**
   * More rules for a valid row (a provider template's: the columns it reads): the problems it
   * returns make the row invalid, as a rule of the reader's own would.
   */
  readonly check?: ((charge: InputCharge) => readonly InputProblem[]) | undefined;
}

function checkOptions(options: ReadInputOptions): InputFormat | undefined {
  const { format } = options;
  if (format !== undefined && format !== 'csv' && format !== 'ndjson') {
    throw new UsageError(`\`format\`: expected "csv" or "ndjson", got ${describeValue(format)}`);
  }
  return format;
}

/**
 * Streams the rows of a billing-cycle input file, in file order: a file of a million rows is
 * never held in memory, and reading keeps pace with the consumer (at most a chunk of
 * READ_CHUNK_BYTES ahead). Stopping early (`break`) closes the file. For bulk work prefer
 * readInputBatches, which is the same stream without a promise per row.
 *
 * Each row holds a valid charge or every problem that stops it from being one, with the 1-based
 * line the record starts on (see formatProblem). Duplicate user ids are not looked for here.
 *
 * Throws (when iterated) a BulkbillError with code BULKBILL_INPUT_INVALID when the file cannot
 * be read (missing, a directory, unreadable), when a CSV header lacks user_id, amount or
 * currency, or when CSV quoting breaks down so that the rest of the file cannot be split into
 * records; the message starts with `file:line:` when there is a line to name. Throws a
 * UsageError at once when `options` are invalid.
 *
 * CSV: a header row, then one record per line (a quoted field may hold line breaks); `amount` is
 * digits only. NDJSON: one JSON object per line; `amount` is a JSON number. Both: no value is
 * trimmed, blank lines are skipped, a UTF-8 BOM and CRLF line endings are fine, and every other
 * column or key is kept as metadata (see CsvRowReader and NdjsonRowReader).
 */
export function readInput(path: string, options: ReadInputOptions = {}): AsyncIterable<InputRow> {
  return eachRow(checked(readBatches(path, checkOptions(options)), options.check));
}

/**
 * readInput in batches: each batch holds the rows completed by one chunk of the file (at most
 * READ_CHUNK_BYTES), never empty, in file order. The ledger's import inserts a batch per
 * transaction; a consumer that goes row by row pays a promise per row.
 */
export function readInputBatches(
  path: string,
  options: ReadInputOptions = {},
): AsyncIterable<readonly InputRow[]> {
  return checked(readBatches(path, checkOptions(options)), options.check);
}

async function* checked(
  batches: AsyncIterable<readonly InputRow[]>,
  check: ReadInputOptions['check'],
): AsyncIterable<readonly InputRow[]> {
  if (check === undefined) {
    yield* batches;
    return;
  }
  for await (const batch of batches) {
    yield batch.map((row) => {
      if (row.charge === undefined) return row;
      const problems = check(row.charge);
      return problems.length === 0
        ? row
        : { line: row.line, problems, rawUserId: row.charge.userId };
    });
  }
}

async function* eachRow(batches: AsyncIterable<readonly InputRow[]>): AsyncGenerator<InputRow> {
  for await (const batch of batches) {
    for (const row of batch) yield row;
  }
}

async function* readBatches(
  path: string,
  forced: InputFormat | undefined,
): AsyncGenerator<readonly InputRow[]> {
  const handle = await openInput(path);
  let source: ReadStream;
  let format: InputFormat;
  try {
    format = forced ?? formatFromExtension(path) ?? (await sniffFormat(handle));
    // Closes the handle when the stream ends or is destroyed.
    source = handle.createReadStream({ start: 0, highWaterMark: READ_CHUNK_BYTES });
  } catch (error) {
    await closeQuietly(handle);
    throw inputFileError(path, error);
  }
  const reader = format === 'csv' ? new CsvRowReader(path) : new NdjsonRowReader();
  try {
    for await (const chunk of source as AsyncIterable<Buffer>) {
      const rows = reader.push(chunk);
      if (rows.length > 0) yield rows;
    }
    const rows = await reader.end();
    if (rows.length > 0) yield rows;
  } catch (error) {
    throw inputFileError(path, error);
  } finally {
    if (reader instanceof CsvRowReader) reader.destroy();
    source.destroy();
  }
}

async function closeQuietly(handle: FileHandle): Promise<void> {
  try {
    await handle.close();
  } catch {
    // Already failing with a better error.
  }
}
