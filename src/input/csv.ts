import { type CsvError, type Parser, parse } from 'csv-parse';
import { amountProblem } from '../domain/charge.js';
import { BulkbillError, ErrorCode } from '../domain/errors.js';
import { formatProblem } from './problem.js';
import {
  chargeRow,
  EMPTY_METADATA,
  type InputRow,
  quoteValue,
  rowProblem,
  setMetadata,
} from './row.js';

/**
 * Longest record, in characters. Far above any real row; reaching it means a quote was left
 * open and the rest of the file is being read as one field, which must not fill the memory.
 */
export const CSV_MAX_RECORD_CHARS = 1024 * 1024;

const REQUIRED = ['user_id', 'amount', 'currency'] as const;
const DIGITS = /^[0-9]+$/;
const NEGATIVE_DIGITS = /^-[0-9]+$/;
// csv-parse reports the record it had to give up on through its 'skip' event; this marker takes
// the report's place in the stream of records, so everything before it is still counted.
const GAVE_UP = Symbol('csv-parse gave up');

const NDJSON_HINT =
  ' (if the file is NDJSON, name it .ndjson or .jsonl, or choose the format explicitly)';

/** Where the charge fields and the metadata columns sit in each record. */
interface Columns {
  readonly width: number;
  readonly userId: number;
  readonly amount: number;
  readonly currency: number;
  /** Indexes and names of every other column. */
  readonly extra: readonly { readonly index: number; readonly name: string }[];
}

/**
 * Reads a CSV amount: digits only, no sign, no decimal point, no exponent, no surrounding
 * whitespace. Returns the amount, or the reason it is not one.
 */
export function amountFromText(text: string): number | string {
  if (text.length === 0) return 'must not be empty';
  if (DIGITS.test(text)) {
    const amount = Number(text);
    if (!Number.isSafeInteger(amount)) {
      return `must be at most ${Number.MAX_SAFE_INTEGER}, got ${quoteValue(text)}`;
    }
    return amountProblem(amount) ?? amount;
  }
  if (NEGATIVE_DIGITS.test(text)) return amountProblem(Number(text)) ?? 'must be positive';
  return `must be an integer in minor units (cents), got ${quoteValue(text)}`;
}

function invalid(file: string, line: number, field: string, reason: string): BulkbillError {
  return new BulkbillError(ErrorCode.InputInvalid, formatProblem(file, line, field, reason));
}

function headerColumns(file: string, line: number, header: readonly string[]): Columns {
  const seen = new Map<string, number>();
  for (const [index, name] of header.entries()) {
    if (name.length === 0) {
      throw invalid(file, line, 'header', `column ${index + 1} has no name`);
    }
    if (seen.has(name)) {
      throw invalid(file, line, 'header', `column ${JSON.stringify(name)} appears twice`);
    }
    seen.set(name, index);
  }
  const missing = REQUIRED.filter((name) => !seen.has(name));
  if (missing.length > 0) {
    throw invalid(
      file,
      line,
      'header',
      `missing column${missing.length > 1 ? 's' : ''} ${missing.join(', ')} ` +
        `(the header must name user_id, amount and currency; found ${header.map((name) => JSON.stringify(name)).join(', ')})` +
        (header[0]?.startsWith('{') ? NDJSON_HINT : ''),
    );
  }
  return {
    width: header.length,
    userId: seen.get('user_id') ?? -1,
    amount: seen.get('amount') ?? -1,
    currency: seen.get('currency') ?? -1,
    extra: header.flatMap((name, index) =>
      (REQUIRED as readonly string[]).includes(name) ? [] : [{ index, name }],
    ),
  };
}

/** Line breaks inside a record's fields: only a quoted field can hold one. */
function lineBreaksIn(record: readonly string[]): number {
  let count = 0;
  for (const field of record) {
    for (let at = field.indexOf('\n'); at !== -1; at = field.indexOf('\n', at + 1)) count++;
  }
  return count;
}

function gaveUpReason(error: CsvError, columns: Columns | undefined): string {
  const index = typeof error.column === 'number' ? error.column : undefined;
  const where = index === undefined ? '' : ` in column ${index + 1}${columnName(columns, index)}`;
  const after =
    columns === undefined
      ? `; the header row cannot be read${NDJSON_HINT}`
      : '; the file cannot be read past this record (where it ends is ambiguous)';
  switch (error.code) {
    case 'INVALID_OPENING_QUOTE':
      return `a quote inside an unquoted field${where}: quote the whole field and double the quotes inside it ("a ""b"" c")${after}`;
    case 'CSV_INVALID_CLOSING_QUOTE':
      return `a closing quote is followed by more text${where}: a quote inside a quoted field must be doubled ("")${after}`;
    case 'CSV_QUOTE_NOT_CLOSED':
      return `a quoted field opened in this record is never closed${after}`;
    case 'CSV_MAX_RECORD_SIZE':
      return `the record is longer than ${CSV_MAX_RECORD_CHARS} characters; is a quote left open?${after}`;
    default:
      return `${error.message}${after}`;
  }
}

function columnName(columns: Columns | undefined, index: number): string {
  if (columns === undefined) return '';
  if (index === columns.userId) return ' (user_id)';
  if (index === columns.amount) return ' (amount)';
  if (index === columns.currency) return ' (currency)';
  const extra = columns.extra.find((column) => column.index === index);
  return extra === undefined ? '' : ` (${JSON.stringify(extra.name)})`;
}

/**
 * Turns the bytes of a CSV file, chunk by chunk, into rows. Strict RFC 4180: fields are separated
 * by commas, records end with LF or CRLF (mixed endings are fine), a field with a comma, a quote
 * or a line break is quoted and its quotes doubled; a UTF-8 BOM is skipped; blank lines (also
 * spaces or tabs only) are skipped. The first non-blank record is the header; it must name user_id, amount and currency,
 * in any order, and every other column is metadata.
 *
 * A record with the wrong number of fields or invalid values becomes a row of problems. Quoting
 * that breaks the rules (a stray or unclosed quote) throws a BulkbillError naming the line: after
 * it, where the following records start is a guess, and a guess must not decide who is billed.
 *
 * csv-parse is driven synchronously (write a chunk, read its records), so a chunk costs no
 * promise per record and nothing is read ahead of the consumer.
 */
export class CsvRowReader {
  readonly #file: string;
  readonly #parser: Parser;
  #columns: Columns | undefined;
  // The line the next record starts on: csv-parse's own count sees a CRLF inside quotes as two.
  #line = 1;
  #gaveUp: CsvError | undefined;
  #failed: unknown;
  // A fatal problem found after some rows of the same chunk: those rows go out first.
  #pending: unknown;

  constructor(file: string) {
    this.#file = file;
    this.#parser = parse({
      bom: true,
      record_delimiter: ['\r\n', '\n'],
      relax_column_count: true,
      skip_records_with_error: true,
      max_record_size: CSV_MAX_RECORD_CHARS,
    });
    this.#parser.on('skip', (error: CsvError) => {
      if (this.#gaveUp !== undefined) return;
      this.#gaveUp = error;
      this.#parser.push(GAVE_UP);
    });
    this.#parser.on('error', (error: unknown) => {
      this.#failed ??= error;
    });
  }

  /** The rows of the records that `chunk` completes. */
  push(chunk: Buffer): InputRow[] {
    if (this.#pending !== undefined) throw this.#pending;
    if (this.#failed !== undefined) throw this.#failed;
    const rows: InputRow[] = [];
    this.#parser.write(chunk);
    try {
      for (let record = this.#read(); record !== null; record = this.#read()) {
        this.#add(record, rows);
      }
    } catch (error) {
      if (rows.length === 0) throw error;
      this.#pending = error;
    }
    return rows;
  }

  /** The rows of the last records, once the whole file has been pushed. */
  async end(): Promise<InputRow[]> {
    if (this.#pending !== undefined) throw this.#pending;
    const rows: InputRow[] = [];
    this.#parser.end();
    for await (const record of this.#parser as AsyncIterable<string[] | typeof GAVE_UP>) {
      this.#add(record, rows);
    }
    if (this.#columns === undefined) {
      throw invalid(
        this.#file,
        1,
        'header',
        'the file has no header row: it must start with one naming user_id, amount and currency',
      );
    }
    return rows;
  }

  /** Stops parsing, when the consumer stops early or reading failed. */
  destroy(): void {
    this.#parser.destroy();
  }

  #read(): string[] | typeof GAVE_UP | null {
    if (this.#failed !== undefined) throw this.#failed;
    return this.#parser.read() as string[] | typeof GAVE_UP | null;
  }

  #add(record: string[] | typeof GAVE_UP, rows: InputRow[]): void {
    const file = this.#file;
    if (record === GAVE_UP) {
      throw invalid(file, this.#line, 'row', gaveUpReason(this.#gaveUp as CsvError, this.#columns));
    }
    const start = this.#line;
    const line = start + 1 + lineBreaksIn(record);
    this.#line = line;
    // A blank line is one field of nothing but spaces or tabs (or nothing at all).
    if (record.length === 1 && (record[0] ?? '').trim() === '') return;
    const columns = this.#columns;
    if (columns === undefined) {
      this.#columns = headerColumns(file, start, record);
      return;
    }
    if (record.length !== columns.width) {
      const span = line - 1 > start ? ` (the record spans lines ${start}-${line - 1})` : '';
      rows.push(
        rowProblem(
          start,
          `expected ${columns.width} fields as in the header, got ${record.length}${span}`,
        ),
      );
      return;
    }
    let metadata = EMPTY_METADATA;
    if (columns.extra.length > 0) {
      const entries: Record<string, string> = {};
      for (const { index, name } of columns.extra) setMetadata(entries, name, record[index] ?? '');
      metadata = entries;
    }
    const amount = amountFromText(record[columns.amount] ?? '');
    const valid = typeof amount === 'number';
    rows.push(
      chargeRow(
        start,
        record[columns.userId],
        valid ? amount : undefined,
        valid ? undefined : amount,
        record[columns.currency],
        metadata,
      ),
    );
  }
}
