import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  formatRowProblems,
  type InputRow,
  NDJSON_MAX_LINE_BYTES,
  readInput,
} from '../../src/input/index.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bulkbill-input-ndjson-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

let files = 0;
async function file(content: string | Buffer): Promise<string> {
  const path = join(dir, `${++files}-users.ndjson`);
  await writeFile(path, content);
  return path;
}

async function rowsOf(content: string | Buffer): Promise<InputRow[]> {
  const rows: InputRow[] = [];
  for await (const row of readInput(await file(content))) rows.push(row);
  return rows;
}

/** Each row as `line: userId amount currency` or `line: field: reason`. */
async function read(content: string | Buffer): Promise<string[]> {
  return (await rowsOf(content)).flatMap((row) =>
    row.charge !== undefined
      ? [`${row.line}: ${row.charge.userId} ${row.charge.amount} ${row.charge.currency}`]
      : formatRowProblems('u.ndjson', row).map((text) => text.replace(/^u\.ndjson:/, '')),
  );
}

const json = (value: unknown) => `${JSON.stringify(value)}\n`;

describe('readInput, NDJSON', () => {
  it('reads one charge per line, with its line number', async () => {
    expect(
      await rowsOf(
        json({ user_id: 'u1', amount: 1999, currency: 'USD' }) +
          json({ currency: 'EUR', amount: 5, user_id: 'u2' }),
      ),
    ).toEqual([
      { line: 1, charge: { userId: 'u1', amount: 1999, currency: 'USD', metadata: {} } },
      { line: 2, charge: { userId: 'u2', amount: 5, currency: 'EUR', metadata: {} } },
    ]);
  });

  it('keeps other keys as metadata: strings as they are, other values as their JSON text', async () => {
    const rows = await rowsOf(
      json({
        user_id: 'u1',
        amount: 1,
        currency: 'USD',
        plan: 'pro',
        seats: 5,
        trial: false,
        coupon: null,
        tags: ['a', 'b'],
        address: { city: 'Lyon' },
      }),
    );
    expect(rows[0]?.charge?.metadata).toEqual({
      plan: 'pro',
      seats: '5',
      trial: 'false',
      coupon: 'null',
      tags: '["a","b"]',
      address: '{"city":"Lyon"}',
    });
  });

  it('shares one frozen empty metadata object when a row has no other keys', async () => {
    const rows = await rowsOf(
      json({ user_id: 'u1', amount: 1, currency: 'USD' }) +
        json({ user_id: 'u2', amount: 2, currency: 'USD' }),
    );
    expect(rows[0]?.charge?.metadata).toBe(rows[1]?.charge?.metadata);
    expect(Object.isFrozen(rows[0]?.charge?.metadata)).toBe(true);
  });

  it('keeps a __proto__ key as plain metadata', async () => {
    const rows = await rowsOf('{"user_id":"u1","amount":1,"currency":"USD","__proto__":{"x":1}}\n');
    const metadata = rows[0]?.charge?.metadata as Record<string, string>;
    expect(Object.getPrototypeOf(metadata)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(metadata, '__proto__')?.value).toBe('{"x":1}');
  });

  it.each([
    [19.99, 'must be an integer in minor units (cents), got 19.99'],
    [-5, 'must be positive, got -5'],
    [0, 'must be positive, got 0'],
    ['500', 'must be a number, got "500"'],
    [null, 'is missing'],
    [undefined, 'is missing'],
    [9_007_199_254_740_992, 'must be an integer in minor units (cents), got 9007199254740992'],
  ])('rejects amount %j on its line', async (amount, reason) => {
    expect(
      await read(
        `\n${json({ user_id: 'u1', amount: 1, currency: 'USD' })}${json({ user_id: 'u2', amount, currency: 'USD' })}`,
      ),
    ).toEqual(['2: u1 1 USD', `3: amount: ${reason}`]);
  });

  it('reads a JSON number the way JSON does: 1e3 and 1000.0 are 1000', async () => {
    expect(
      await read(
        '{"user_id":"u1","amount":1e3,"currency":"USD"}\n{"user_id":"u2","amount":1000.0,"currency":"USD"}\n',
      ),
    ).toEqual(['1: u1 1000 USD', '2: u2 1000 USD']);
  });

  it('checks user_id and currency, reporting every problem of a row', async () => {
    expect(
      await read(
        json({ user_id: 12345, amount: 1, currency: 'usd' }) +
          json({ user_id: '', amount: 1, currency: 'USD' }) +
          json({ user_id: 'x'.repeat(201), amount: 1, currency: 'USD' }) +
          json({ amount: 1 }),
      ),
    ).toEqual([
      '1: user_id: must be a string, got number',
      '1: currency: must be three capital letters such as USD, got "usd"',
      '2: user_id: must not be empty',
      '3: user_id: must be at most 200 characters, got 201',
      '4: user_id: is missing',
      '4: currency: is missing',
    ]);
  });

  it('refuses a user id that is not well-formed Unicode (a lone surrogate), naming the line', async () => {
    expect(
      await read(
        '{"user_id":"ok-\\ud83d\\udcb3","amount":1,"currency":"USD"}\n' +
          '{"user_id":"half-\\ud83d","amount":1,"currency":"USD"}\n' +
          '{"user_id":"\\udcb3-low","amount":1,"currency":"USD"}\n',
      ),
    ).toEqual([
      '1: ok-💳 1 USD',
      '2: user_id: must be well-formed Unicode, got a lone surrogate \\ud83d at character 6',
      '3: user_id: must be well-formed Unicode, got a lone surrogate \\udcb3 at character 1',
    ]);
  });

  it('keeps the user id as it came on a row with problems', async () => {
    const rows = await rowsOf(
      json({ user_id: 'u1', amount: 1.5, currency: 'USD' }) +
        json({ user_id: 7, amount: 1.5, currency: 'USD' }),
    );
    expect(rows.map((row) => row.rawUserId)).toEqual(['u1', undefined]);
  });

  it('reports a line that is not JSON, or not an object, and reads on', async () => {
    expect(
      await read(
        '{"user_id":"u1",\n[1,2]\n"u2"\nnull\n{"user_id":"u3","amount":3,"currency":"USD"}\n',
      ),
    ).toEqual([
      expect.stringMatching(/^1: row: invalid JSON: /),
      '2: row: must be a JSON object, got an array',
      '3: row: must be a JSON object, got a string',
      '4: row: must be a JSON object, got null',
      '5: u3 3 USD',
    ]);
  });

  it('reads a BOM, CRLF, blank and whitespace-only lines, and a trailing blank line', async () => {
    const content = Buffer.concat([
      Buffer.from([0xef, 0xbb, 0xbf]),
      Buffer.from(
        '{"user_id":"u1","amount":1,"currency":"USD"}\r\n\r\n  \t\r\n{"user_id":"u2","amount":2.5,"currency":"USD"}\r\n{"user_id":"u3","amount":3,"currency":"USD"}\r\n\r\n',
      ),
    ]);
    expect(await read(content)).toEqual([
      '1: u1 1 USD',
      '4: amount: must be an integer in minor units (cents), got 2.5',
      '5: u3 3 USD',
    ]);
  });

  it('reads a last line without a line break, and a file shorter than a BOM', async () => {
    expect(await read('{"user_id":"u1","amount":1,"currency":"USD"}\n{"user_id":"u2"')).toEqual([
      '1: u1 1 USD',
      expect.stringMatching(/^2: row: invalid JSON: /),
    ]);
    expect(await read('{}')).toEqual([
      '1: user_id: is missing',
      '1: amount: is missing',
      '1: currency: is missing',
    ]);
    expect(await read('')).toEqual([]);
  });

  it('reports a line longer than the limit without holding it, and reads on', async () => {
    const long = `{"user_id":"u2","amount":2,"currency":"USD","note":"${'x'.repeat(NDJSON_MAX_LINE_BYTES + 10)}"}\n`;
    expect(
      await read(
        json({ user_id: 'u1', amount: 1, currency: 'USD' }) +
          long +
          json({ user_id: 'u3', amount: 3, currency: 'USD' }) +
          long.trimEnd(),
      ),
    ).toEqual([
      '1: u1 1 USD',
      `2: row: line is longer than ${NDJSON_MAX_LINE_BYTES} bytes`,
      '3: u3 3 USD',
      `4: row: line is longer than ${NDJSON_MAX_LINE_BYTES} bytes`,
    ]);
  });

  it('reads multi-byte UTF-8 split across chunks', async () => {
    // Rows long enough that chunk boundaries fall inside multi-byte characters.
    const lines = Array.from({ length: 3_000 }, (_, index) =>
      json({ user_id: `ü-${index}-😀`, amount: index + 1, currency: 'EUR', note: 'é'.repeat(37) }),
    );
    const rows = await rowsOf(lines.join(''));
    expect(rows).toHaveLength(3_000);
    expect(rows.every((row, index) => row.charge?.userId === `ü-${index}-😀`)).toBe(true);
    expect(rows.every((row) => row.charge?.metadata.note === 'é'.repeat(37))).toBe(true);
  });
});
