import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BulkbillError, ErrorCode } from '../../src/domain/errors.js';
import {
  CSV_MAX_RECORD_CHARS,
  formatRowProblems,
  type InputRow,
  readInput,
} from '../../src/input/index.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bulkbill-input-csv-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

let files = 0;
/** Writes `content` to a fresh file named `name` and returns its path. */
async function file(content: string | Buffer, name = 'users.csv'): Promise<string> {
  const path = join(dir, `${++files}-${name}`);
  await writeFile(path, content);
  return path;
}

async function rowsOf(path: string): Promise<InputRow[]> {
  const rows: InputRow[] = [];
  for await (const row of readInput(path)) rows.push(row);
  return rows;
}

/** Each row as `line: userId amount currency` or `line: field: reason`, to compare at a glance. */
async function read(content: string | Buffer): Promise<string[]> {
  const rows = await rowsOf(await file(content));
  return rows.flatMap((row) =>
    row.charge !== undefined
      ? [`${row.line}: ${row.charge.userId} ${row.charge.amount} ${row.charge.currency}`]
      : formatRowProblems('users.csv', row).map((text) => text.replace(/^users\.csv:/, '')),
  );
}

async function failure(
  content: string | Buffer,
): Promise<{ error: BulkbillError; rows: string[] }> {
  const rows: string[] = [];
  try {
    for await (const row of readInput(await file(content))) {
      rows.push(row.charge !== undefined ? `${row.line}: ${row.charge.userId}` : `${row.line}: !`);
    }
  } catch (error) {
    expect(error).toBeInstanceOf(BulkbillError);
    expect((error as BulkbillError).code).toBe(ErrorCode.InputInvalid);
    return { error: error as BulkbillError, rows };
  }
  throw new Error('expected reading to fail');
}

describe('readInput, CSV', () => {
  it('reads charges with the line each record starts on', async () => {
    const rows = await rowsOf(await file('user_id,amount,currency\nu1,1999,USD\nu2,500,EUR\n'));
    expect(rows).toEqual([
      { line: 2, charge: { userId: 'u1', amount: 1999, currency: 'USD', metadata: {} } },
      { line: 3, charge: { userId: 'u2', amount: 500, currency: 'EUR', metadata: {} } },
    ]);
  });

  it('accepts the header columns in any order', async () => {
    expect(await read('currency,amount,user_id\nUSD,1999,u1\n')).toEqual(['2: u1 1999 USD']);
  });

  it.each([
    ['19.99', 'must be an integer in minor units (cents), got "19.99"'],
    ['1e3', 'must be an integer in minor units (cents), got "1e3"'],
    ['+5', 'must be an integer in minor units (cents), got "+5"'],
    ['0x10', 'must be an integer in minor units (cents), got "0x10"'],
    ['-5', 'must be positive, got -5'],
    ['0', 'must be positive, got 0'],
    [' 5', 'must be an integer in minor units (cents), got " 5"'],
    ['5 ', 'must be an integer in minor units (cents), got "5 "'],
    ['', 'must not be empty'],
    ['9007199254740992', 'must be at most 9007199254740991, got "9007199254740992"'],
    ['123456789012345678901234567890', 'must be at most 9007199254740991, got "1234567890'],
  ])('rejects amount %j on its line', async (amount, reason) => {
    const lines = await read(`user_id,amount,currency\nu1,100,USD\nu2,${amount},USD\nu3,7,USD\n`);
    expect(lines).toHaveLength(3);
    expect(lines[0]).toBe('2: u1 100 USD');
    expect(lines[1]).toContain(`3: amount: ${reason}`);
    expect(lines[2]).toBe('4: u3 7 USD');
  });

  it.each([
    ['9007199254740991', 9_007_199_254_740_991],
    ['1', 1],
    ['0500', 500],
  ])('accepts amount %j as %d', async (amount, value) => {
    expect(await read(`user_id,amount,currency\nu1,${amount},USD\n`)).toEqual([
      `2: u1 ${value} USD`,
    ]);
  });

  it.each([
    ['usd', 'must be three capital letters such as USD, got "usd"'],
    ['US', 'must be three capital letters such as USD, got "US"'],
    ['USDX', 'must be three capital letters such as USD, got "USDX"'],
    [' USD', 'must be three capital letters such as USD, got " USD"'],
    ['', 'must be three capital letters such as USD, got ""'],
  ])('rejects currency %j on its line', async (currency, reason) => {
    expect(await read(`user_id,amount,currency\n\nu1,100,${currency}\n`)).toEqual([
      `3: currency: ${reason}`,
    ]);
  });

  it('checks user_id: not empty, at most 200 characters, kept exactly as written', async () => {
    const lines = await read(
      `user_id,amount,currency\n,100,USD\n${'x'.repeat(201)},100,USD\n${'y'.repeat(200)},100,USD\n u4 ,100,USD\n`,
    );
    expect(lines).toEqual([
      '2: user_id: must not be empty',
      '3: user_id: must be at most 200 characters, got 201',
      `4: ${'y'.repeat(200)} 100 USD`,
      '5:  u4  100 USD',
    ]);
  });

  it('reports every problem of a row, keeping the user id as it came', async () => {
    const rows = await rowsOf(await file('user_id,amount,currency\nu1,19.99,usd\n'));
    expect(rows).toEqual([
      {
        line: 2,
        rawUserId: 'u1',
        problems: [
          { field: 'amount', reason: 'must be an integer in minor units (cents), got "19.99"' },
          { field: 'currency', reason: 'must be three capital letters such as USD, got "usd"' },
        ],
      },
    ]);
    expect(formatRowProblems('users.csv', rows[0] as InputRow)[0]).toBe(
      'users.csv:2: amount: must be an integer in minor units (cents), got "19.99"',
    );
  });

  it('follows RFC 4180 quoting: commas, doubled quotes and line breaks inside quotes', async () => {
    const rows = await rowsOf(
      await file(
        'user_id,amount,currency,note\n' +
          '"Smith, J",100,USD,"say ""hi"""\n' +
          '"u2","200","EUR","two\nlines"\n' +
          'u3,300,GBP,"three\n\nlines, one blank"\n' +
          'u4,400,USD,""\n',
      ),
    );
    expect(rows.map((row) => [row.line, row.charge?.userId, row.charge?.metadata])).toEqual([
      [2, 'Smith, J', { note: 'say "hi"' }],
      [3, 'u2', { note: 'two\nlines' }],
      [5, 'u3', { note: 'three\n\nlines, one blank' }],
      [8, 'u4', { note: '' }],
    ]);
  });

  it('numbers a record with a line break inside quotes by its first line', async () => {
    expect(
      await read('user_id,amount,currency\n"multi\nline",19.99,USD\nu3,1,USD\n"u\n4",2,usd\n'),
    ).toEqual([
      '2: amount: must be an integer in minor units (cents), got "19.99"',
      '4: u3 1 USD',
      '5: currency: must be three capital letters such as USD, got "usd"',
    ]);
  });

  it('reads CRLF line endings, a BOM and a trailing blank line', async () => {
    const rows = await rowsOf(
      await file(
        Buffer.concat([
          Buffer.from([0xef, 0xbb, 0xbf]),
          Buffer.from(
            'user_id,amount,currency\r\nu1,100,USD\r\n"u\r\n2",19.99,USD\r\nu3,300,USD\r\n\r\n',
          ),
        ]),
      ),
    );
    // The BOM is not part of the first column's name, and a CRLF inside quotes is one line break.
    expect(rows.map((row) => [row.line, row.charge?.userId ?? row.problems?.[0]?.field])).toEqual([
      [2, 'u1'],
      [3, 'amount'],
      [5, 'u3'],
    ]);
    expect(rows[0]?.charge?.currency).toBe('USD');
  });

  it('reads a last record without a line break, and mixed line endings', async () => {
    expect(await read('user_id,amount,currency\r\nu1,1,USD\nu2,2,USD\r\nu3,3,USD')).toEqual([
      '2: u1 1 USD',
      '3: u2 2 USD',
      '4: u3 3 USD',
    ]);
  });

  it('skips blank (or whitespace-only) lines but counts them, before the header too', async () => {
    expect(await read('\n\nuser_id,amount,currency\n\nu1,1,USD\n  \t\n\nu2,x,USD\n\n')).toEqual([
      '5: u1 1 USD',
      '8: amount: must be an integer in minor units (cents), got "x"',
    ]);
  });

  it('keeps extra columns as metadata, in every row', async () => {
    const rows = await rowsOf(
      await file('plan,user_id,amount,currency,region\npro,u1,100,USD,eu\n,u2,200,USD,\n'),
    );
    expect(rows.map((row) => row.charge?.metadata)).toEqual([
      { plan: 'pro', region: 'eu' },
      { plan: '', region: '' },
    ]);
  });

  it('shares one frozen empty metadata object when there are no extra columns', async () => {
    const rows = await rowsOf(await file('user_id,amount,currency\nu1,1,USD\nu2,2,USD\n'));
    const [first, second] = rows.map((row) => row.charge?.metadata);
    expect(first).toEqual({});
    expect(first).toBe(second);
    expect(Object.isFrozen(first)).toBe(true);
  });

  it('keeps a column named __proto__ as plain metadata', async () => {
    const rows = await rowsOf(await file('user_id,amount,currency,__proto__\nu1,1,USD,x\n'));
    const metadata = rows[0]?.charge?.metadata as Record<string, string>;
    expect(Object.getPrototypeOf(metadata)).toBe(Object.prototype);
    expect(Object.keys(metadata)).toEqual(['__proto__']);
    expect(Object.getOwnPropertyDescriptor(metadata, '__proto__')?.value).toBe('x');
  });

  it('reports a record with the wrong number of fields on its line and reads on', async () => {
    expect(
      await read('user_id,amount,currency\nu1,1\nu2,2,USD,extra\n"u\n3",3\nu4,4,USD\n'),
    ).toEqual([
      '2: row: expected 3 fields as in the header, got 2',
      '3: row: expected 3 fields as in the header, got 4',
      '4: row: expected 3 fields as in the header, got 2 (the record spans lines 4-5)',
      '6: u4 4 USD',
    ]);
  });

  it.each([
    ['user_id,currency\nu1,USD\n', 'header: missing column amount '],
    ['id,amt,currency\nu1,1,USD\n', 'header: missing columns user_id, amount '],
    ['{user_id,amount,currency}\nu1,1,USD\n', 'header: missing columns user_id, currency '],
  ])('refuses a header without a required column: %j', async (content, message) => {
    const { error } = await failure(content);
    expect(error.message).toMatch(/users\.csv:1: /);
    expect(error.message).toContain(message);
    expect(error.message).toContain('found ');
  });

  it('suggests NDJSON when a .csv file holds JSON', async () => {
    const { error } = await failure('{"user_id":"u1","amount":1,"currency":"USD"}\n');
    expect(error.message).toMatch(
      /users\.csv:1: row: a quote inside an unquoted field in column 1: .*; the header row cannot be read \(if the file is NDJSON, name it \.ndjson or \.jsonl/,
    );
  });

  it('refuses a header with a repeated or nameless column', async () => {
    const repeated = await failure('user_id,amount,currency,amount\n');
    expect(repeated.error.message).toMatch(/users\.csv:1: header: column "amount" appears twice$/);
    const nameless = await failure('user_id,amount,currency,\nu1,1,USD,\n');
    expect(nameless.error.message).toMatch(/users\.csv:1: header: column 4 has no name$/);
  });

  it('refuses a file without a header row', async () => {
    for (const content of ['', '\n\r\n\n']) {
      const { error } = await failure(content);
      expect(error.message).toMatch(/users\.csv:1: header: the file has no header row/);
    }
  });

  it('stops at a stray quote, naming the line the record starts on, after the rows before it', async () => {
    const { error, rows } = await failure(
      'user_id,amount,currency\nu1,1,USD\n"u\n2",2,USD\nu"3,3,USD\nu4,4,USD\n',
    );
    expect(rows).toEqual(['2: u1', '3: u\n2']);
    expect(error.message).toMatch(
      /users\.csv:5: row: a quote inside an unquoted field in column 1 \(user_id\): .*cannot be read past this record/,
    );
  });

  it('stops at a closing quote followed by more text', async () => {
    const { error } = await failure('user_id,amount,currency\nu1,"1"0,USD\nu2,2,USD\n');
    expect(error.message).toMatch(
      /users\.csv:2: row: a closing quote is followed by more text in column 2 \(amount\)/,
    );
  });

  it('stops at a quote never closed, naming the line it opens on', async () => {
    const { error, rows } = await failure(
      'user_id,amount,currency\nu1,1,USD\nu2,"2,USD\nu3,3,USD\nu4,4,USD\n',
    );
    expect(rows).toEqual(['2: u1']);
    expect(error.message).toMatch(
      /users\.csv:3: row: a quoted field opened in this record is never closed/,
    );
  });

  it('stops early, without holding the rest of the file, at a quote left open in a large file', async () => {
    const rest = 'u,1,USD\n'.repeat(Math.ceil((2 * CSV_MAX_RECORD_CHARS) / 8));
    const { error, rows } = await failure(`user_id,amount,currency\nu1,1,USD\n"u2,2,USD\n${rest}`);
    expect(rows).toEqual(['2: u1']);
    expect(error.message).toMatch(
      new RegExp(
        `users\\.csv:3: row: the record is longer than ${CSV_MAX_RECORD_CHARS} characters`,
      ),
    );
  });
});
