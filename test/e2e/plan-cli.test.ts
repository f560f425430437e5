import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type InputRow, plainUsers, writeCsvInput } from '../helpers/billing-cycle.js';
import { repoRoot } from '../helpers/cli.js';

// `bulkbill plan` as a real child process (from the TypeScript sources), in a fresh temporary
// directory as its working directory: no endpoint is given (plan takes none), and the directory
// holds nothing but the input afterwards (no ledger, no report).

const cliEntry = join(repoRoot, 'src/cli/main.ts');
const tsxLoader = pathToFileURL(
  join(dirname(createRequire(import.meta.url).resolve('tsx/package.json')), 'dist/loader.mjs'),
).href;

let dir = '';
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bulkbill-e2e-plan-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** `bulkbill plan ...args` with the temporary directory as its working directory. */
async function plan(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, ['--import', tsxLoader, cliEntry, 'plan', ...args], {
    cwd: dir,
    env: process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk;
  });
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  const [code] = (await once(child, 'exit')) as [number | null];
  return { code: code ?? -1, stdout, stderr };
}

interface PlanJson {
  readonly input: string;
  readonly users: number;
  readonly invalid: number;
  readonly duplicates: number;
  readonly amounts: Record<string, number>;
  readonly latencyMs: number;
  readonly concurrency: number;
  readonly rate: number | null;
  readonly expectedMs: number;
  readonly serialMs: number;
  readonly feasible: boolean;
  readonly deadline: {
    readonly at: string;
    readonly timeLeftMs: number;
    readonly maxConcurrency: number;
    readonly neededPerSecond: number | null;
    readonly fastestMs: number;
    readonly bound: string | null;
  } | null;
}

/** 10,000 users: every fifth in EUR, every 50th (of the rest) in JPY, the others in USD. */
function cycle(): InputRow[] {
  return plainUsers(10_000).map((row, index) => ({
    ...row,
    currency: index % 5 === 0 ? 'EUR' : index % 50 === 1 ? 'JPY' : 'USD',
  }));
}

function totalsOf(rows: readonly InputRow[]): Record<string, number> {
  const totals: Record<string, number> = {};
  for (const row of rows) totals[row.currency] = (totals[row.currency] ?? 0) + Number(row.amount);
  return totals;
}

async function expectOnlyInput(...names: string[]): Promise<void> {
  expect((await readdir(dir)).sort()).toEqual(names.sort());
}

describe('bulkbill plan (end to end)', () => {
  it('10,000 users at 1.6 s with a 1 h deadline need 5 in flight: feasible, totals per currency, nothing written', async () => {
    const rows = cycle();
    const input = await writeCsvInput(join(dir, 'users.csv'), rows);
    const totals = totalsOf(rows);
    // The figures the text must show, from the rows.
    expect(totals).toEqual({ EUR: 10_195_000, JPY: 1_015_200, USD: 39_784_800 });

    const text = await plan(input, '--latency', '1.6s', '--deadline', '1h');
    expect(text.code, text.stderr).toBe(0);
    expect(text.stderr).toBe('');
    expect(text.stdout).toContain('nobody was charged, nothing was sent');
    expect(text.stdout).toContain(
      '10,000 users to charge · 0 invalid rows skipped · 0 duplicate users skipped',
    );
    expect(text.stdout).toContain('totals: EUR 101,950.00 · JPY 1,015,200 · USD 397,848.00');
    expect(text.stdout).toMatch(/\(in 1h 00m\), assuming 1\.6s per request/);
    expect(text.stdout).toContain('feasible at concurrency 5 ');
    expect(text.stdout).toContain('about 53m 20s');
    expect(text.stdout).toContain('fastest within --max-concurrency 1,000: 16s');

    const json = await plan(input, '--latency', '1.6s', '--deadline', '1h', '--json');
    expect(json.code, json.stderr).toBe(0);
    const figures = JSON.parse(json.stdout) as PlanJson;
    expect(figures).toMatchObject({
      users: 10_000,
      invalid: 0,
      duplicates: 0,
      amounts: totals,
      latencyMs: 1_600,
      concurrency: 5,
      rate: null,
      expectedMs: 3_200_000,
      serialMs: 16_000_000,
      feasible: true,
    });
    expect(figures.deadline).toMatchObject({
      maxConcurrency: 1_000,
      fastestMs: 16_000,
      bound: null,
    });
    expect(figures.deadline?.timeLeftMs).toBeGreaterThan(3_590_000);
    expect(figures.deadline?.timeLeftMs).toBeLessThanOrEqual(3_600_000);
    expect(Date.parse(figures.deadline?.at ?? '') - Date.now()).toBeLessThanOrEqual(3_600_000);

    // No endpoint was given, and no ledger (nor anything else) was made in the working directory.
    await expectOnlyInput('users.csv');
  });

  it('an ISO deadline with its offset is read in that zone', async () => {
    const input = await writeCsvInput(join(dir, 'users.csv'), cycle());
    // Two hours from now, written as the wall time at +02:00.
    const at = Date.now() + 2 * 3_600_000;
    const local = new Date(at + 2 * 3_600_000).toISOString().slice(0, 19);
    const result = await plan(input, '--latency', '1.6s', '--deadline', `${local}+02:00`, '--json');
    expect(result.code, result.stderr).toBe(0);
    const figures = JSON.parse(result.stdout) as PlanJson;
    // 10,000 × 1.1 ÷ 7,200 s × 1.6 s = 2.44 in flight.
    expect(figures.concurrency).toBe(3);
    expect(Math.abs(Date.parse(figures.deadline?.at ?? '') - at)).toBeLessThan(1_000);
  });

  it('without --deadline: the expected duration at --concurrency (64 by default), as the dry run figures it', async () => {
    const input = await writeCsvInput(join(dir, 'users.csv'), cycle());
    const byDefault = await plan(input, '--latency', '1.6s');
    expect(byDefault.code, byDefault.stderr).toBe(0);
    expect(byDefault.stdout).toContain(
      'at concurrency 64, assuming 1.6s per request: about 4m 10s',
    );

    const paced = await plan(
      input,
      '--latency',
      '1.6s',
      '--concurrency',
      '500',
      '--rate',
      '100',
      '--json',
    );
    expect(paced.code, paced.stderr).toBe(0);
    const figures = JSON.parse(paced.stdout) as PlanJson;
    expect(figures).toMatchObject({
      concurrency: 500,
      rate: 100,
      expectedMs: 100_000,
      feasible: true,
    });
    expect(figures.deadline).toBeNull();
    await expectOnlyInput('users.csv');
  });

  it('a deadline --max-concurrency cannot meet: exit 1, said loudly on stderr, bound max-concurrency', async () => {
    const input = await writeCsvInput(join(dir, 'users.csv'), cycle());
    const args = [input, '--latency', '1.6s', '--deadline', '10s', '--max-concurrency', '100'];
    const text = await plan(...args);
    expect(text.code).toBe(1);
    expect(text.stdout).toContain('NOT feasible: bound by max-concurrency');
    expect(text.stdout).toContain(
      'fastest within --max-concurrency 100: 2m 40s at concurrency 100',
    );
    expect(text.stderr).toMatch(
      /^bulkbill: the deadline cannot be met: 10,000 charges at 1\.6s each/,
    );
    expect(text.stderr).toContain('--max-concurrency 100 allows 62.5 requests/s');
    expect(text.stderr).toContain('raise --max-concurrency to at least');

    const json = await plan(...args, '--json');
    expect(json.code).toBe(1);
    expect(json.stderr).toContain('bulkbill: the deadline cannot be met:');
    const figures = JSON.parse(json.stdout) as PlanJson;
    expect(figures).toMatchObject({ feasible: false, concurrency: 100 });
    expect(figures.deadline).toMatchObject({ bound: 'max-concurrency', fastestMs: 160_000 });
    await expectOnlyInput('users.csv');
  });

  it('a deadline --rate cannot meet: exit 1, bound rate, and the rate it would need', async () => {
    const input = await writeCsvInput(join(dir, 'users.csv'), cycle());
    const args = [input, '--latency', '1.6s', '--deadline', '10m', '--rate', '10', '--json'];
    const result = await plan(...args);
    expect(result.code).toBe(1);
    const figures = JSON.parse(result.stdout) as PlanJson;
    // 10 requests/s at 1.6 s each is 16 in flight: 10,000 take 1,000 s, past the 600 s deadline.
    expect(figures).toMatchObject({ feasible: false, concurrency: 16, rate: 10 });
    expect(figures.deadline).toMatchObject({ bound: 'rate', fastestMs: 1_000_000 });
    expect(result.stderr).toContain('bulkbill: the deadline cannot be met:');
    expect(result.stderr).toContain('--rate allows 10 requests/s');
    expect(result.stderr).toContain('raise --rate to at least 18.');

    // The same rate is enough for a later deadline.
    const later = await plan(input, '--latency', '1.6s', '--deadline', '30m', '--rate', '10');
    expect(later.code, later.stderr).toBe(0);
    expect(later.stdout).toContain('feasible at concurrency');
  });

  it('an invalid row: exit 2 naming file, line and field, as run does; --skip-invalid counts it and plans the rest', async () => {
    const rows: InputRow[] = [
      ...plainUsers(3),
      { userId: 'dollars', amount: '19.99', currency: 'USD' },
      { userId: 'user-1', amount: 5, currency: 'USD' },
      { userId: 'yen', amount: 1_200, currency: 'JPY' },
    ];
    const input = await writeCsvInput(join(dir, 'cycle.csv'), rows);
    const refused = await plan(input, '--latency', '1.6s', '--deadline', '1h');
    expect(refused.code).toBe(2);
    expect(refused.stdout).toBe('');
    expect(refused.stderr).toContain(`bulkbill: ${input}: 2 invalid rows; nothing was charged`);
    expect(refused.stderr).toContain(
      `${input}:5: amount: must be an integer in minor units (cents), got "19.99"`,
    );
    expect(refused.stderr).toContain(`${input}:6: user_id: appears twice (first on line 3)`);

    const skipped = await plan(input, '--latency', '1.6s', '--skip-invalid', '--json');
    expect(skipped.code, skipped.stderr).toBe(0);
    expect(JSON.parse(skipped.stdout)).toMatchObject({
      users: 4,
      invalid: 1,
      duplicates: 1,
      amounts: { JPY: 1_200, USD: 303 },
    });
    const text = await plan(input, '--latency', '1.6s', '--skip-invalid');
    expect(text.stdout).toContain(
      '4 users to charge · 1 invalid rows skipped · 1 duplicate users skipped',
    );
    expect(text.stdout).toContain('totals: JPY 1,200 · USD 3.03');
    await expectOnlyInput('cycle.csv');
  });

  it('usage errors exit 2: a deadline without an offset, no --latency, a missing file', async () => {
    const input = await writeCsvInput(join(dir, 'users.csv'), plainUsers(10));
    const noOffset = await plan(input, '--latency', '1.6s', '--deadline', '2026-12-02T09:00');
    expect(noOffset.code).toBe(2);
    expect(noOffset.stdout).toBe('');
    expect(noOffset.stderr).toContain(
      'bulkbill: --deadline: expected a duration such as 45m or 2h, or a time with its date and offset such as 2026-12-02T09:00:00+01:00, got "2026-12-02T09:00"',
    );

    const noLatency = await plan(input, '--deadline', '1h');
    expect(noLatency.code).toBe(2);
    expect(noLatency.stderr).toContain("required option '--latency <duration>' not specified");

    const badLatency = await plan(input, '--latency', '1.6');
    expect(badLatency.code).toBe(2);
    expect(badLatency.stderr).toContain('--latency: expected a duration');

    const missing = await plan(join(dir, 'nope.csv'), '--latency', '1.6s');
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('nope.csv: input file not found');
    await expectOnlyInput('users.csv');
  });

  it('takes no endpoint', async () => {
    const input = await writeCsvInput(join(dir, 'users.csv'), plainUsers(10));
    const result = await plan(
      input,
      '--latency',
      '1.6s',
      '--endpoint',
      'http://127.0.0.1:9/charge',
    );
    expect(result.code).toBe(2);
    expect(result.stderr).toContain("unknown option '--endpoint'");
    await expectOnlyInput('users.csv');
  });
});
