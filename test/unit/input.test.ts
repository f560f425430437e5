import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readlinkSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BulkbillError, ErrorCode, UsageError } from '../../src/domain/errors.js';
import {
  formatDuplicateProblem,
  formatProblem,
  hashInput,
  type InputRow,
  READ_CHUNK_BYTES,
  type ReadInputOptions,
  readInput,
  readInputBatches,
} from '../../src/input/index.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bulkbill-input-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

let files = 0;
async function file(name: string, content: string | Buffer): Promise<string> {
  const folder = join(dir, String(++files));
  await mkdir(folder);
  const path = join(folder, name);
  await writeFile(path, content);
  return path;
}

async function rowsOf(path: string, options?: ReadInputOptions): Promise<InputRow[]> {
  const rows: InputRow[] = [];
  for await (const row of readInput(path, options)) rows.push(row);
  return rows;
}

async function failureOf(promise: Promise<unknown>): Promise<BulkbillError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(BulkbillError);
    return error as BulkbillError;
  }
  throw new Error('expected a failure');
}

const CSV = 'user_id,amount,currency\nu1,100,USD\n';
const NDJSON = '{"user_id":"u1","amount":100,"currency":"USD"}\n';
const U1 = { line: 2, charge: { userId: 'u1', amount: 100, currency: 'USD', metadata: {} } };
const U1_NDJSON = { ...U1, line: 1 };

describe('formatProblem', () => {
  it('prints file:line: field: reason', () => {
    expect(
      formatProblem(
        'users.csv',
        17,
        'amount',
        'must be an integer in minor units (cents), got "19.99"',
      ),
    ).toBe('users.csv:17: amount: must be an integer in minor units (cents), got "19.99"');
  });

  it('prints a duplicate user id the same way', () => {
    expect(formatDuplicateProblem('users.csv', { line: 40, firstLine: 17 })).toBe(
      'users.csv:40: user_id: appears twice (first on line 17)',
    );
  });
});

describe('format detection', () => {
  it.each([
    ['users.csv', CSV, U1],
    ['users.CSV', CSV, U1],
    ['users.ndjson', NDJSON, U1_NDJSON],
    ['users.jsonl', NDJSON, U1_NDJSON],
    ['users.JSONL', NDJSON, U1_NDJSON],
    ['users.txt', CSV, U1],
    ['users', NDJSON, U1_NDJSON],
    ['users.json', ` \r\n\t${NDJSON}`, { ...U1_NDJSON, line: 2 }],
    ['users.data', `\ufeff${NDJSON}`, U1_NDJSON],
    ['users.data', `\ufeff${CSV}`, U1],
  ])('reads %s holding %j', async (name, content, row) => {
    expect(await rowsOf(await file(name, content))).toEqual([row]);
  });

  it('trusts the extension over the content', async () => {
    const error = await failureOf(rowsOf(await file('users.csv', NDJSON)));
    expect(error.message).toContain('users.csv:1: ');
    const rows = await rowsOf(await file('users.ndjson', CSV));
    expect(rows.map((row) => row.problems?.[0]?.reason)).toEqual([
      expect.stringMatching(/^invalid JSON/),
      expect.stringMatching(/^invalid JSON/),
    ]);
  });

  it('obeys a forced format', async () => {
    expect(await rowsOf(await file('users.csv', NDJSON), { format: 'ndjson' })).toEqual([
      U1_NDJSON,
    ]);
    expect(await rowsOf(await file('users.ndjson', CSV), { format: 'csv' })).toEqual([U1]);
    expect(await rowsOf(await file('users.txt', CSV), { format: undefined })).toEqual([U1]);
  });

  it('refuses an unknown format at once, naming the option and the value', () => {
    expect(() => readInput('users.csv', { format: 'xml' as 'csv' })).toThrow(UsageError);
    expect(() => readInput('users.csv', { format: 'xml' as 'csv' })).toThrow(
      '`format`: expected "csv" or "ndjson", got "xml" (string)',
    );
    expect(() => readInputBatches('users.csv', { format: 'CSV' as 'csv' })).toThrow(UsageError);
  });
});

describe('unreadable input files', () => {
  it('names a missing file', async () => {
    const path = join(dir, 'missing.csv');
    const error = await failureOf(rowsOf(path));
    expect(error.code).toBe(ErrorCode.InputInvalid);
    expect(error.message).toBe(`${path}: input file not found`);
  });

  it('names a directory', async () => {
    const error = await failureOf(rowsOf(dir));
    expect(error.code).toBe(ErrorCode.InputInvalid);
    expect(error.message).toBe(`${dir}: input file is a directory`);
  });

  // Root reads everything.
  it.skipIf(process.getuid?.() === 0)('names a file it may not read', async () => {
    const path = await file('secret.csv', CSV);
    const { chmod } = await import('node:fs/promises');
    await chmod(path, 0o000);
    const error = await failureOf(rowsOf(path));
    expect(error.message).toBe(`${path}: input file cannot be read: permission denied`);
  });
});

describe('readInputBatches', () => {
  it('yields the same rows as readInput, in non-empty batches no larger than a chunk', async () => {
    const lines = ['user_id,amount,currency,note'];
    for (let index = 1; index <= 20_000; index++) {
      lines.push(`u${index},${index % 7 === 0 ? '1.5' : index},USD,${'n'.repeat(index % 50)}`);
    }
    const path = await file('users.csv', `${lines.join('\n')}\n`);
    const batches: (readonly InputRow[])[] = [];
    for await (const batch of readInputBatches(path)) batches.push(batch);
    const rows = await rowsOf(path);

    expect(batches.length).toBeGreaterThan(5);
    expect(batches.every((batch) => batch.length > 0)).toBe(true);
    // A batch covers one chunk of the file: never more rows than a chunk has lines.
    expect(Math.max(...batches.map((batch) => batch.length))).toBeLessThan(READ_CHUNK_BYTES / 10);
    expect(batches.flat()).toEqual(rows);
    expect(rows).toHaveLength(20_000);
    expect(rows.map((row) => row.line)).toEqual(rows.map((_, index) => index + 2));
    expect(rows.filter((row) => row.problems !== undefined)).toHaveLength(Math.floor(20_000 / 7));
  });
});

describe('stopping early', () => {
  // Which descriptors of this process point at `path` (Linux only).
  function openDescriptors(path: string): number {
    return readdirSync('/proc/self/fd').filter((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`) === path;
      } catch {
        return false;
      }
    }).length;
  }

  it.skipIf(!existsSync('/proc/self/fd')).each([
    ['users.csv', CSV + 'u1,100,USD\n'.repeat(50_000)],
    ['users.ndjson', NDJSON.repeat(50_000)],
  ])('closes %s when the consumer breaks out', async (name, content) => {
    const path = await file(name, content);
    for await (const row of readInput(path)) {
      expect(row.charge?.userId).toBe('u1');
      expect(openDescriptors(path)).toBe(1);
      break;
    }
    // The file closes asynchronously once the stream is destroyed.
    for (let tries = 0; tries < 100 && openDescriptors(path) > 0; tries++) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    expect(openDescriptors(path)).toBe(0);
  });
});

describe('hashInput', () => {
  it('is the SHA-256 hex of the bytes, streamed, the same on every call', async () => {
    const content = Buffer.alloc(3 * 1024 * 1024 + 17, 'user_id,amount,currency\nu1,1,USD\n');
    const path = await file('users.csv', content);
    const expected = createHash('sha256')
      .update(await readFile(path))
      .digest('hex');
    expect(await hashInput(path)).toBe(expected);
    expect(await hashInput(path)).toBe(expected);
    expect(expected).toMatch(/^[0-9a-f]{64}$/);
  });

  it('differs when one byte differs, and for an empty file is the SHA-256 of nothing', async () => {
    const a = await hashInput(await file('a.csv', 'user_id,amount,currency\nu1,100,USD\n'));
    const b = await hashInput(await file('b.csv', 'user_id,amount,currency\nu1,101,USD\n'));
    expect(a).not.toBe(b);
    expect(await hashInput(await file('empty.csv', ''))).toBe(
      'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
    );
  });

  it('names a missing file', async () => {
    const path = join(dir, 'missing.csv');
    const error = await failureOf(hashInput(path));
    expect(error.code).toBe(ErrorCode.InputInvalid);
    expect(error.message).toBe(`${path}: input file not found`);
  });
});
