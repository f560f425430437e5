import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { type MockProvider, startMockProvider } from '../../src/mock-provider/index.js';
import { spawnCli } from '../helpers/cli.js';

let directory: string;
let provider: MockProvider;

beforeEach(async () => {
  directory = await mkdtemp(join(tmpdir(), 'bulkbill-concurrent-'));
  provider = await startMockProvider({ port: 0, latencyMs: 150, jitter: 0, seed: 1 });
});
afterEach(async () => {
  await provider.close({ graceMs: 0 });
  await rm(directory, { recursive: true, force: true });
});

it('lets only one of two processes started at once on the same file bill it', async () => {
  const input = join(directory, 'users.csv');
  const rows = Array.from({ length: 300 }, (_, index) => `u${index},100,USD`);
  await writeFile(input, `user_id,amount,currency\n${rows.join('\n')}\n`);
  const args = [
    'run',
    input,
    '--endpoint',
    `${provider.url}/charge`,
    '--ledger',
    join(directory, 'ledger.db'),
    '--concurrency',
    '10',
  ];
  const first = spawnCli([...args, '--report', join(directory, 'a.csv')]);
  const second = spawnCli([...args, '--report', join(directory, 'b.csv')]);
  const codes = await Promise.all([first.exited, second.exited]);
  expect([...codes].sort()).toEqual([0, 2]);
  const loser = codes[0] === 2 ? first : second;
  expect(loser.stderr()).toMatch(
    /being billed by process \d+|was created in this ledger while .* was being checked/,
  );
  expect(provider.stats()).toMatchObject({
    charges: 300,
    users_charged: 300,
    duplicate_charges: 0,
  });
}, 60_000);
