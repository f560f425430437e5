import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BulkbillError, ErrorCode } from '../../src/domain/errors.js';
import {
  CSV_MAX_RECORD_CHARS,
  NDJSON_MAX_LINE_BYTES,
  readInputBatches,
} from '../../src/input/index.js';
import type { InputRow } from '../../src/input/row.js';

// The input readers get random and malformed files. Whatever the bytes, reading either yields
// rows, each a valid charge or a row with its line and the problems that stop it, or throws one
// BulkbillError of code BULKBILL_INPUT_INVALID whose message names the file (and the line, when
// there is one). Never another exception, never a charge that breaks a charge's rules.

let dir: string;
let serial = 0;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bulkbill-input-fuzz-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function readAll(
  bytes: Uint8Array,
  extension: 'csv' | 'ndjson',
): Promise<{ rows: InputRow[]; file: string }> {
  const file = join(dir, `input-${++serial}.${extension}`);
  await writeFile(file, bytes);
  const rows: InputRow[] = [];
  for await (const batch of readInputBatches(file)) rows.push(...batch);
  return { rows, file };
}

/** Reading never fails but as documented, and every row it gives keeps the rules. */
async function expectReadAsDocumented(
  bytes: Uint8Array,
  extension: 'csv' | 'ndjson',
): Promise<void> {
  const file = join(dir, `input-${++serial}.${extension}`);
  await writeFile(file, bytes);
  try {
    let lastLine = 0;
    for await (const batch of readInputBatches(file)) {
      for (const row of batch) {
        expect(row.line).toBeGreaterThan(lastLine);
        lastLine = row.line;
        if (row.charge !== undefined) {
          expect(Number.isSafeInteger(row.charge.amount) && row.charge.amount > 0).toBe(true);
          expect(row.charge.currency).toMatch(/^[A-Z]{3}$/);
          expect(row.charge.userId.length).toBeGreaterThan(0);
          expect(LONE_SURROGATE.test(row.charge.userId)).toBe(false);
        } else {
          expect(row.problems.length).toBeGreaterThan(0);
          for (const problem of row.problems) expect(problem.reason.length).toBeGreaterThan(0);
        }
      }
    }
  } catch (error) {
    if (!(error instanceof BulkbillError)) throw error;
    expect(error.code).toBe(ErrorCode.InputInvalid);
    expect(error.message.startsWith(file)).toBe(true);
  }
}

const encoder = new TextEncoder();
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/** Pieces a broken export is made of. */
const csvPiece = fc.oneof(
  fc.constantFrom(
    'user_id,amount,currency',
    'user_id,amount,currency,note',
    'user_id,user_id,amount,currency',
    'amount,currency',
    ',amount,currency,user_id',
    'u1,1999,USD',
    'u2,12.50,USD',
    'u3,1e3,EUR',
    'u4,0x10,USD',
    'u5,-0,USD',
    'u6,١٢٣,USD',
    'u7,,USD',
    '"u8",100,usd',
    '"u""9",100,USD',
    '"u10,100,USD',
    'u11",100,USD',
    'u12,100',
    'u13,100,USD,extra,more',
    '"multi\nline",100,USD',
    'José,100,USD',
    'Jose\u0301,100,USD',
    'ALICE,100,USD',
    'alice,100,USD',
    '=cmd|calc,100,USD',
    '',
    '\u0000',
    'u14,\u0000100,USD',
  ),
  fc.string({ maxLength: 40 }),
);

function joinPieces(pieces: readonly string[], crlf: boolean, bom: boolean): Uint8Array {
  return encoder.encode(`${bom ? '\ufeff' : ''}${pieces.join(crlf ? '\r\n' : '\n')}`);
}

describe('CSV input, fuzzed', () => {
  it('any arrangement of broken rows reads as documented (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(csvPiece, { maxLength: 12 }),
        fc.boolean(),
        fc.boolean(),
        async (pieces, crlf, bom) => expectReadAsDocumented(joinPieces(pieces, crlf, bom), 'csv'),
      ),
      { numRuns: 300 },
    );
  });

  it('arbitrary bytes, invalid UTF-8 among them, read as documented (property)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 400 }), async (bytes) => {
        const withHeader = new Uint8Array([
          ...encoder.encode('user_id,amount,currency\n'),
          ...bytes,
        ]);
        await expectReadAsDocumented(withHeader, 'csv');
        await expectReadAsDocumented(bytes, 'csv');
      }),
      { numRuns: 300 },
    );
  });

  it('refuses the amounts a careless reader would take, naming the line and the field', async () => {
    const amounts = [
      '1e3',
      '0x10',
      '-0',
      '12.50',
      '١٢٣',
      '+5',
      ' 5',
      '5 ',
      '1_000',
      'Infinity',
      'NaN',
      '9007199254740993',
    ];
    const text = [
      'user_id,amount,currency',
      ...amounts.map((amount, index) => `u${index},"${amount}",USD`),
    ].join('\n');
    const { rows } = await readAll(encoder.encode(text), 'csv');
    expect(rows).toHaveLength(amounts.length);
    for (const [index, row] of rows.entries()) {
      expect(row.charge, `amount ${amounts[index]}`).toBeUndefined();
      expect(row.line).toBe(index + 2);
      expect(row.problems?.map((problem) => problem.field)).toContain('amount');
    }
  });

  it('a header without user_id, and a duplicate column, name the file and line 1', async () => {
    for (const header of ['amount,currency', 'user_id,amount,amount,currency']) {
      const file = join(dir, `header-${++serial}.csv`);
      await writeFile(file, `${header}\nu1,100,USD\n`);
      const read = async () => {
        for await (const _ of readInputBatches(file)) {
          // drain
        }
      };
      await expect(read()).rejects.toThrow(
        new RegExp(`^${file.replaceAll(/[.*+?^${}()|[\]\\]/g, '\\$&')}:1:`),
      );
    }
  });

  it(`a record over ${CSV_MAX_RECORD_CHARS} characters (a quote left open) is refused with its line`, async () => {
    const text = `user_id,amount,currency\nu1,100,USD\n"u2,100,USD\n${'x'.repeat(CSV_MAX_RECORD_CHARS + 10)}\n`;
    const file = join(dir, `huge-${++serial}.csv`);
    await writeFile(file, text);
    const read = async () => {
      for await (const _ of readInputBatches(file)) {
        // drain
      }
    };
    await expect(read()).rejects.toMatchObject({
      code: ErrorCode.InputInvalid,
      message: expect.stringMatching(/:3:/),
    });
  });
});

const ndjsonPiece = fc.oneof(
  fc.constantFrom(
    '{"user_id":"u1","amount":1999,"currency":"USD"}',
    '{"user_id":"u2","amount":12.5,"currency":"USD"}',
    '{"user_id":"u3","amount":"1999","currency":"USD"}',
    '{"user_id":"u4","amount":-0,"currency":"USD"}',
    '{"user_id":"u5","amount":1e400,"currency":"USD"}',
    '{"user_id":"\\ud800","amount":1,"currency":"USD"}',
    '{"user_id":"u6","amount":1,"currency":"USD","user_id":"u7"}',
    '{"user_id":7,"amount":1,"currency":"USD"}',
    '[1,2,3]',
    '{"user_id":"u8","amount":1,',
    'null',
    '"text"',
    '',
    '\u0000',
    '{"user_id":"u9","amount":9007199254740993,"currency":"USD"}',
  ),
  fc.json({ maxDepth: 2 }),
  fc.string({ maxLength: 40 }),
);

describe('NDJSON input, fuzzed', () => {
  it('any arrangement of broken lines reads as documented (property)', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(ndjsonPiece, { maxLength: 12 }),
        fc.boolean(),
        fc.boolean(),
        async (pieces, crlf, bom) =>
          expectReadAsDocumented(joinPieces(pieces, crlf, bom), 'ndjson'),
      ),
      { numRuns: 300 },
    );
  });

  it('arbitrary bytes read as documented (property)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ maxLength: 400 }), async (bytes) =>
        expectReadAsDocumented(bytes, 'ndjson'),
      ),
      { numRuns: 300 },
    );
  });

  it(`a line over ${NDJSON_MAX_LINE_BYTES} bytes is refused or reported with its line`, async () => {
    const text = `{"user_id":"u1","amount":1,"currency":"USD"}\n{"user_id":"${'x'.repeat(NDJSON_MAX_LINE_BYTES)}","amount":1,"currency":"USD"}\n`;
    await expectReadAsDocumented(encoder.encode(text), 'ndjson');
  });
});
