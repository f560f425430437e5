import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readInput } from '../../src/input/index.js';

// A memory bound, not a timing: with a collection forced before each sample, heap growth is
// what the reader keeps, not garbage that happens to be waiting for the collector.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

const ROWS = 200_000;
const SAMPLE_EVERY = 10_000;

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bulkbill-input-memory-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Writes `header` and ROWS lines made by `line`, respecting the write stream's backpressure. */
async function generate(name: string, header: string, line: (index: number) => string) {
  const path = join(dir, name);
  const out = createWriteStream(path);
  if (header) out.write(header);
  let lines: string[] = [];
  for (let index = 1; index <= ROWS; index++) {
    lines.push(line(index));
    if (lines.length === 1_000) {
      if (!out.write(lines.join(''))) await once(out, 'drain');
      lines = [];
    }
  }
  out.end(lines.join(''));
  await once(out, 'finish');
  return { path, size: (await stat(path)).size };
}

const NOTE = 'a metadata column so the file is large enough for a bound that means something';

describe('readInput on a large file', () => {
  it.each([
    [
      'users.csv',
      'user_id,amount,currency,note\n',
      (index: number) => `user-${index},${index},USD,${NOTE}\n`,
    ],
    [
      'users.ndjson',
      '',
      (index: number) =>
        `${JSON.stringify({ user_id: `user-${index}`, amount: index, currency: 'USD', note: NOTE })}\n`,
    ],
  ])('streams %s in bounded memory', async (name, header, line) => {
    const { path, size } = await generate(name, header, line);
    expect(size).toBeGreaterThan(20_000_000);

    gc();
    const before = process.memoryUsage().heapUsed;
    let rows = 0;
    let valid = 0;
    let lastLine = 0;
    let growth = 0;
    for await (const row of readInput(path)) {
      rows++;
      if (row.charge !== undefined && row.charge.amount === rows) valid++;
      lastLine = row.line;
      if (rows % SAMPLE_EVERY === 0) {
        gc();
        growth = Math.max(growth, process.memoryUsage().heapUsed - before);
      }
    }

    expect(rows).toBe(ROWS);
    expect(valid).toBe(ROWS);
    expect(lastLine).toBe(header ? ROWS + 1 : ROWS);
    // Holding every row would take several times the file's size; a chunk's rows take ~1 MB.
    expect(growth).toBeLessThan(size / 8);
  });
});
