// Hand-written: RFC 4180 quoting plus the CSV-injection guard is a dozen lines, not a dependency.

// A spreadsheet runs a cell starting with one of these as a formula (OWASP "CSV injection").
const FORMULA_START = /^[=+\-@\t\r]/;
const NEEDS_QUOTES = /[",\r\n]/;

/** One CSV cell: formula-looking text is prefixed with `'`, then quoted when needed. */
export function csvCell(value: string | number | boolean | undefined | null): string {
  if (value === undefined || value === null) return '';
  if (typeof value !== 'string') return String(value);
  const safe = FORMULA_START.test(value) ? `'${value}` : value;
  return NEEDS_QUOTES.test(safe) ? `"${safe.replaceAll('"', '""')}"` : safe;
}

/** One CSV record, CRLF-terminated as RFC 4180 says. */
export function csvRecord(
  cells: ReadonlyArray<string | number | boolean | undefined | null>,
): string {
  return `${cells.map(csvCell).join(',')}\r\n`;
}
