import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'csv-parse/sync';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BulkbillError } from '../../src/domain/errors.js';
import type { ChargeOutcome, ChargeRecord, ImportRow, Ledger } from '../../src/ledger/ledger.js';
import { SqliteLedger } from '../../src/ledger/sqlite-ledger.js';
import { csvCell, csvRecord } from '../../src/report/csv.js';
import { REPORT_COLUMNS, writeReport } from '../../src/report/report.js';

describe('csvCell', () => {
  it('leaves plain text alone', () => {
    expect(csvCell('user-42')).toBe('user-42');
    expect(csvCell('a=b')).toBe('a=b');
    expect(csvCell('')).toBe('');
    expect(csvCell('déjà vu 💳')).toBe('déjà vu 💳');
  });

  it('quotes cells holding a comma, a quote, CR or LF, doubling quotes (RFC 4180)', () => {
    expect(csvCell('a,b')).toBe('"a,b"');
    expect(csvCell('say "hi"')).toBe('"say ""hi"""');
    expect(csvCell('"')).toBe('""""');
    expect(csvCell('line one\nline two')).toBe('"line one\nline two"');
    expect(csvCell('line one\rline two')).toBe('"line one\rline two"');
    expect(csvCell('a\r\nb')).toBe('"a\r\nb"');
  });

  it("prefixes a cell a spreadsheet would run as a formula with '", () => {
    expect(csvCell('=SUM(A1:A9)')).toBe("'=SUM(A1:A9)");
    expect(csvCell('+1-555-0100')).toBe("'+1-555-0100");
    expect(csvCell('-2+3')).toBe("'-2+3");
    expect(csvCell('@SUM(1)')).toBe("'@SUM(1)");
    expect(csvCell('\t=1')).toBe("'\t=1");
    expect(csvCell('\r=1')).toBe(`"'\r=1"`);
  });

  it('escapes and then quotes a formula that also needs quotes', () => {
    expect(csvCell('=HYPERLINK("http://evil.example","x")')).toBe(
      `"'=HYPERLINK(""http://evil.example"",""x"")"`,
    );
    expect(csvCell('=1,2')).toBe(`"'=1,2"`);
  });

  it('writes numbers and booleans as they are, and nothing for undefined or null', () => {
    expect(csvCell(42)).toBe('42');
    expect(csvCell(0)).toBe('0');
    expect(csvCell(-5)).toBe('-5');
    expect(csvCell(12.5)).toBe('12.5');
    expect(csvCell(true)).toBe('true');
    expect(csvCell(false)).toBe('false');
    expect(csvCell(undefined)).toBe('');
    expect(csvCell(null)).toBe('');
  });
});

describe('csvRecord', () => {
  it('joins cells with commas and ends with CRLF', () => {
    expect(csvRecord(['a', 1, undefined, true, 'b,c'])).toBe('a,1,,true,"b,c"\r\n');
    expect(csvRecord([])).toBe('\r\n');
  });

  it('reads back through a CSV parser as the same cells, formulas defused', () => {
    const nasty = [
      'plain',
      'a,b',
      '"quoted"',
      'multi\nline',
      'cr\ronly',
      'crlf\r\nend',
      '=cmd|"/c calc"!A1',
      '+1',
      '-1',
      '@x',
      '\tx',
      '\r\nx',
      '',
      ' leading space',
    ];
    const text = csvRecord(nasty) + csvRecord(['second', 'row']);
    const records = parse(text, { relax_column_count: true }) as string[][];
    expect(records).toEqual([
      nasty.map((cell) => (/^[=+\-@\t\r]/.test(cell) ? `'${cell}` : cell)),
      ['second', 'row'],
    ]);
  });
});

describe('writeReport', () => {
  let dir: string;
  let ledger: SqliteLedger;

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bulkbill-report-'));
    ledger = new SqliteLedger({ path: join(dir, 'ledger.db'), flushIntervalMs: 60_000 });
  });

  afterEach(async () => {
    await ledger.close();
    await rm(dir, { recursive: true, force: true });
  });

  const input: ImportRow[] = [
    { line: 2, userId: 'u1', amount: 1_999, currency: 'USD', metadata: { plan: 'pro' } },
    { line: 3, userId: '=cmd|"/c calc"!A1', amount: 500, currency: 'EUR', metadata: {} },
    { line: 4, userId: 'u3', amount: 700, currency: 'USD', metadata: { note: 'a, "b"\nc' } },
    { line: 5, userId: 'u4', amount: 800, currency: 'USD', metadata: {} },
    { line: 6, userId: 'u1', amount: 1_999, currency: 'USD', metadata: {} },
    {
      line: 7,
      userId: 'u6',
      amount: 0,
      currency: 'USD',
      metadata: {},
      invalidReason: 'amount: expected a positive integer, got 0',
    },
    { line: 8, userId: 'u7', amount: 900, currency: 'GBP', metadata: {} },
  ];

  async function seed(runId = 'r1', rows: readonly ImportRow[] = input): Promise<void> {
    async function* batches(): AsyncIterable<readonly ImportRow[]> {
      yield rows.slice(0, 3);
      yield rows.slice(3);
    }
    await ledger.createRun(
      { runId, inputHash: 'h', inputPath: 'users.csv', endpoint: 'http://127.0.0.1:1/charge' },
      batches(),
      () => {},
    );
  }

  function record(userId: string, outcome: Partial<ChargeOutcome>): void {
    ledger.record('r1', {
      userId,
      state: 'charged',
      attempts: 1,
      ambiguous: false,
      httpStatus: 200,
      latencyMs: 10,
      chargeId: undefined,
      error: undefined,
      ...outcome,
    });
  }

  async function readReport(path: string): Promise<Record<string, string>[]> {
    return parse(await readFile(path, 'utf8'), { columns: true }) as Record<string, string>[];
  }

  it('writes the contract columns first, then one row per input row in input order', async () => {
    await seed();
    record('u1', { latencyMs: 41.6, chargeId: 'ch_1' });
    record('=cmd|"/c calc"!A1', {
      state: 'declined',
      attempts: 2,
      httpStatus: 402,
      latencyMs: 20,
      error: 'card_declined: "insufficient", funds',
    });
    record('u3', {
      state: 'unknown',
      attempts: 5,
      ambiguous: true,
      httpStatus: undefined,
      latencyMs: 30_000,
      error: 'timeout after the request was sent',
    });
    await ledger.flush();
    const path = join(dir, 'r1.report.csv');

    expect(await writeReport(ledger, 'r1', path)).toBe(input.length);

    const text = await readFile(path, 'utf8');
    expect(text.startsWith('user_id,status,attempts,http_status,latency_ms,charge_id,error')).toBe(
      true,
    );
    expect(text.split('\r\n')[0]).toBe(REPORT_COLUMNS.join(','));
    expect(text.endsWith('\r\n')).toBe(true);

    const report = await readReport(path);
    expect(report).toEqual([
      {
        user_id: 'u1',
        status: 'charged',
        attempts: '1',
        http_status: '200',
        latency_ms: '42',
        charge_id: 'ch_1',
        error: '',
        line: '2',
        amount: '19.99',
        amount_minor: '1999',
        currency: 'USD',
        ambiguous: 'false',
        metadata: '{"plan":"pro"}',
      },
      {
        user_id: `'=cmd|"/c calc"!A1`,
        status: 'declined',
        attempts: '2',
        http_status: '402',
        latency_ms: '20',
        charge_id: '',
        error: 'card_declined: "insufficient", funds',
        line: '3',
        amount: '5.00',
        amount_minor: '500',
        currency: 'EUR',
        ambiguous: 'false',
        metadata: '',
      },
      {
        user_id: 'u3',
        status: 'unknown',
        attempts: '5',
        http_status: '',
        latency_ms: '30000',
        charge_id: '',
        error: 'timeout after the request was sent',
        line: '4',
        amount: '7.00',
        amount_minor: '700',
        currency: 'USD',
        ambiguous: 'true',
        metadata: '{"note":"a, \\"b\\"\\nc"}',
      },
      {
        user_id: 'u4',
        status: 'pending',
        attempts: '0',
        http_status: '',
        latency_ms: '',
        charge_id: '',
        error: '',
        line: '5',
        amount: '8.00',
        amount_minor: '800',
        currency: 'USD',
        ambiguous: 'false',
        metadata: '',
      },
      {
        user_id: 'u1',
        status: 'invalid',
        attempts: '0',
        http_status: '',
        latency_ms: '',
        charge_id: '',
        error: 'user_id: appears twice (first on line 2)',
        line: '6',
        amount: '19.99',
        amount_minor: '1999',
        currency: 'USD',
        ambiguous: 'false',
        metadata: '',
      },
      {
        user_id: 'u6',
        status: 'invalid',
        attempts: '0',
        http_status: '',
        latency_ms: '',
        charge_id: '',
        error: 'amount: expected a positive integer, got 0',
        line: '7',
        amount: '0.00',
        amount_minor: '0',
        currency: 'USD',
        ambiguous: 'false',
        metadata: '',
      },
      {
        user_id: 'u7',
        status: 'pending',
        attempts: '0',
        http_status: '',
        latency_ms: '',
        charge_id: '',
        error: '',
        line: '8',
        amount: '9.00',
        amount_minor: '900',
        currency: 'GBP',
        ambiguous: 'false',
        metadata: '',
      },
    ]);
    // The metadata cell is the charge's metadata, as JSON.
    expect(JSON.parse(report[2]?.metadata ?? '')).toEqual({ note: 'a, "b"\nc' });
  });

  it("writes amount in the currency's own units and amount_minor as the exact integer", async () => {
    const row = (line: number, userId: string, amount: number, currency: string): ImportRow => ({
      line,
      userId,
      amount,
      currency,
      metadata: {},
    });
    await seed('money', [
      row(2, 'usd', 1_234, 'USD'),
      row(3, 'cents', 5, 'USD'),
      row(4, 'jpy', 1_200, 'JPY'),
      row(5, 'kwd', 1_234, 'KWD'),
      row(6, 'iqd', 1_234, 'IQD'),
      row(7, 'clf', 12_345, 'CLF'),
      row(8, 'max', Number.MAX_SAFE_INTEGER, 'USD'),
      row(9, 'unlisted', 1_234, 'ABC'),
      row(10, 'gold', 1_234, 'XAU'),
      { ...row(11, 'bad', 0, ''), invalidReason: 'currency: is missing' },
    ]);
    const path = join(dir, 'money.report.csv');
    await writeReport(ledger, 'money', path);
    const report = await readReport(path);
    expect(report.map((cells) => [cells.user_id, cells.amount, cells.amount_minor])).toEqual([
      ['usd', '12.34', '1234'],
      ['cents', '0.05', '5'],
      ['jpy', '1200', '1200'],
      ['kwd', '1.234', '1234'],
      ['iqd', '1.234', '1234'],
      ['clf', '1.2345', '12345'],
      ['max', '90071992547409.91', '9007199254740991'],
      // No known minor unit: amount stays the count of minor units, as amount_minor.
      ['unlisted', '1234', '1234'],
      ['gold', '1234', '1234'],
      ['bad', '0', '0'],
    ]);
    const header = (await readFile(path, 'utf8')).split('\r\n')[0]?.split(',') ?? [];
    expect(header.indexOf('amount_minor')).toBe(header.indexOf('amount') + 1);
  });

  it('writes every row of a run longer than a ledger page, in input order', async () => {
    const many: ImportRow[] = Array.from({ length: 2_500 }, (_, index) => ({
      line: index + 2,
      userId: `user-${index + 1}`,
      amount: index + 1,
      currency: 'USD',
      metadata: {},
    }));
    await seed('big', many);
    const path = join(dir, 'big.report.csv');
    expect(await writeReport(ledger, 'big', path)).toBe(2_500);
    const report = await readReport(path);
    expect(report.map((row) => row.user_id)).toEqual(many.map((row) => row.userId));
    expect(report.map((row) => Number(row.line))).toEqual(many.map((row) => row.line));
  });

  it('writes only the header for a run with no rows, or no such run', async () => {
    await seed('empty', []);
    const path = join(dir, 'empty.report.csv');
    expect(await writeReport(ledger, 'empty', path)).toBe(0);
    expect(await readFile(path, 'utf8')).toBe(`${REPORT_COLUMNS.join(',')}\r\n`);
    expect(await writeReport(ledger, 'no-such-run', path)).toBe(0);
    expect(await readFile(path, 'utf8')).toBe(`${REPORT_COLUMNS.join(',')}\r\n`);
  });

  it('leaves no temporary file behind, and replaces an older report only when whole', async () => {
    await seed();
    const path = join(dir, 'r1.report.csv');
    await writeFile(path, 'an older report\r\n');

    // A ledger that pauses half-way: the older report must still be on disk at that moment.
    let resume: () => void = () => {};
    const paused = new Promise<void>((resolve) => {
      resume = resolve;
    });
    let reached: () => void = () => {};
    const halfWay = new Promise<void>((resolve) => {
      reached = resolve;
    });
    const real = ledger;
    const slow: Ledger = Object.assign(Object.create(real) as Ledger, {
      // A page per row, so that it can pause between rows.
      async *chargePages(runId: string): AsyncIterable<readonly ChargeRecord[]> {
        let n = 0;
        for await (const charge of real.charges(runId)) {
          if (++n === 4) {
            reached();
            await paused;
          }
          yield [charge];
        }
      },
    });
    const writing = writeReport(slow, 'r1', path);
    await halfWay;
    expect(await readFile(path, 'utf8')).toBe('an older report\r\n');
    resume();
    expect(await writing).toBe(input.length);

    expect((await readReport(path)).length).toBe(input.length);
    expect((await readdir(dir)).filter((name) => name.endsWith('.tmp'))).toEqual([]);
  });

  it('rejects with a BulkbillError naming the path when the directory is missing, and writes nothing', async () => {
    await seed();
    const path = join(dir, 'missing', 'r1.report.csv');
    const failure = await writeReport(ledger, 'r1', path).then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(failure).toBeInstanceOf(BulkbillError);
    expect((failure as BulkbillError).code).toBe('BULKBILL_IO');
    expect((failure as BulkbillError).message).toContain(path);
    expect((await readdir(dir)).filter((name) => !name.startsWith('ledger.db'))).toEqual([]);
  });

  it('removes its temporary file and keeps the older report when reading the ledger fails', async () => {
    await seed();
    const path = join(dir, 'r1.report.csv');
    await writeFile(path, 'an older report\r\n');
    const real = ledger;
    const broken: Ledger = Object.assign(Object.create(real) as Ledger, {
      async *chargePages(runId: string): AsyncIterable<readonly ChargeRecord[]> {
        let n = 0;
        for await (const charge of real.charges(runId)) {
          if (++n === 3) throw new Error('ledger went away');
          yield [charge];
        }
      },
    });
    await expect(writeReport(broken, 'r1', path)).rejects.toThrow('ledger went away');
    expect(await readFile(path, 'utf8')).toBe('an older report\r\n');
    expect((await readdir(dir)).filter((name) => name.endsWith('.tmp'))).toEqual([]);
  });
});
