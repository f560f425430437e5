import { amountProblem } from '../domain/charge.js';
import { chargeRow, EMPTY_METADATA, type InputRow, rowProblem, setMetadata } from './row.js';
import { startsWithBom } from './source.js';

/**
 * Longest line, in bytes. Far above any real row; a longer line is reported as a problem and
 * skipped without being held in memory.
 */
export const NDJSON_MAX_LINE_BYTES = 1024 * 1024;

const TOO_LONG = `line is longer than ${NDJSON_MAX_LINE_BYTES} bytes`;
const LF = 0x0a;
const CR = 0x0d;
const BOM_LENGTH = 3;

function isBlank(bytes: Buffer, start: number, end: number): boolean {
  for (let at = start; at < end; at++) {
    const byte = bytes[at];
    if (byte !== 0x20 && byte !== 0x09 && byte !== CR) return false;
  }
  return true;
}

function kindOf(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return `a ${typeof value}`;
}

/** One non-blank line, `bytes[start, end)` without its line break, as a row. */
function lineToRow(line: number, bytes: Buffer, start: number, end: number): InputRow {
  let record: unknown;
  try {
    record = JSON.parse(bytes.toString('utf8', start, end));
  } catch (error) {
    return rowProblem(line, `invalid JSON: ${(error as Error).message}`);
  }
  if (typeof record !== 'object' || record === null || Array.isArray(record)) {
    return rowProblem(line, `must be a JSON object, got ${kindOf(record)}`);
  }
  const fields = record as Record<string, unknown>;
  // Built only for a row that has other keys.
  let metadata: Record<string, string> | undefined;
  for (const key in fields) {
    if (key === 'user_id' || key === 'amount' || key === 'currency') continue;
    const value = fields[key];
    metadata ??= {};
    setMetadata(metadata, key, typeof value === 'string' ? value : JSON.stringify(value));
  }
  return chargeRow(
    line,
    fields.user_id,
    fields.amount,
    amountProblem(fields.amount),
    fields.currency,
    metadata ?? EMPTY_METADATA,
  );
}

/**
 * Turns the bytes of an NDJSON file, chunk by chunk, into rows: one JSON object per line, lines
 * ending with LF or CRLF, a UTF-8 BOM skipped, blank lines skipped. `user_id` and `currency`
 * must be JSON strings and `amount` a JSON number (a positive safe integer); every other key is
 * metadata, its value kept as is when it is a string and as its JSON text otherwise (`5`, `true`,
 * `null`, `{"a":1}`).
 *
 * A line that is not valid JSON, not an object, or longer than NDJSON_MAX_LINE_BYTES is a row of
 * problems; reading goes on with the next line.
 */
export class NdjsonRowReader {
  // Lines before `#carry`.
  #line = 0;
  #first = true;
  // The start of a line whose end is in a later chunk.
  #carry: Buffer | undefined;
  // True while skipping the rest of an over-long line.
  #skipping = false;

  /** The rows of the lines that `chunk` completes. */
  push(chunk: Buffer): InputRow[] {
    const rows: InputRow[] = [];
    const bytes = this.#carry === undefined ? chunk : Buffer.concat([this.#carry, chunk]);
    this.#carry = undefined;
    let start = 0;
    if (this.#first) {
      if (bytes.length < BOM_LENGTH) {
        this.#carry = bytes;
        return rows;
      }
      this.#first = false;
      if (startsWithBom(bytes)) start = BOM_LENGTH;
    }
    if (this.#skipping) {
      const end = bytes.indexOf(LF, start);
      if (end === -1) return rows;
      this.#skipping = false;
      this.#line++;
      rows.push(rowProblem(this.#line, TOO_LONG));
      start = end + 1;
    }
    for (let end = bytes.indexOf(LF, start); end !== -1; end = bytes.indexOf(LF, start)) {
      this.#line++;
      const last = end > start && bytes[end - 1] === CR ? end - 1 : end;
      if (last - start > NDJSON_MAX_LINE_BYTES) {
        rows.push(rowProblem(this.#line, TOO_LONG));
      } else if (!isBlank(bytes, start, last)) {
        rows.push(lineToRow(this.#line, bytes, start, last));
      }
      start = end + 1;
    }
    if (start < bytes.length) {
      if (bytes.length - start > NDJSON_MAX_LINE_BYTES) {
        this.#skipping = true;
      } else {
        this.#carry = bytes.subarray(start);
      }
    }
    return rows;
  }

  /** The row of the last line when it has no line break, once the whole file has been pushed. */
  end(): InputRow[] {
    const line = this.#line + 1;
    if (this.#skipping) {
      return [rowProblem(line, TOO_LONG)];
    }
    const carry = this.#carry;
    if (carry === undefined) return [];
    // A file shorter than a BOM has not been looked at yet.
    const start = this.#first && startsWithBom(carry) ? BOM_LENGTH : 0;
    const end =
      carry.length > start && carry[carry.length - 1] === CR ? carry.length - 1 : carry.length;
    return isBlank(carry, start, end) ? [] : [lineToRow(line, carry, start, end)];
  }
}
