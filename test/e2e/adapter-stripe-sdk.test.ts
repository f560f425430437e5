import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { billDistributed } from '../../src/engine/distributed/distributed-engine.js';
import { type BillResult, bill } from '../../src/engine/local-engine.js';
import { type MockProvider, startMockProvider } from '../../src/mock-provider/index.js';
import { type ReportRow, readReport } from '../helpers/billing-cycle.js';
import { closeRedisAdmin, deleteKeysUnder, REDIS_URL, uniquePrefix } from '../helpers/redis.js';

// The example adapter examples/adapters/stripe-sdk.mjs (the official stripe SDK) end to end on
// both engines against the mock provider speaking Stripe's PaymentIntents API, with 503s and
// declines: every user charged at most once, the mock's charges the run's, the report agreeing
// with the mock on every user.

const ADAPTER = fileURLToPath(new URL('../../examples/adapters/stripe-sdk.mjs', import.meta.url));
const SECRET_KEY = 'sk_test_canary_51c0ffee';
const USERS = Array.from({ length: 200 }, (_, index) => `cus-${index}`);

let dir: string;
let input: string;
let mock: MockProvider;
let prefix: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bulkbill-adapter-stripe-'));
  input = join(dir, 'users.csv');
  const rows = USERS.map(
    (userId, index) => `${userId},${500 + index},${index % 2 ? 'USD' : 'EUR'}`,
  );
  await writeFile(input, `user_id,amount,currency\n${rows.join('\n')}\n`);
  mock = await startMockProvider({
    shape: 'stripe',
    port: 0,
    latencyMs: 0,
    failRate: 0.1,
    declineRate: 0.05,
    seed: 7,
    apiKey: SECRET_KEY,
  });
  prefix = uniquePrefix();
});

afterEach(async () => {
  await mock.close({ graceMs: 0 });
  await deleteKeysUnder(prefix);
  await rm(dir, { recursive: true, force: true });
});

afterAll(async () => {
  await closeRedisAdmin();
});

function env(): Record<string, string> {
  return { STRIPE_SECRET_KEY: SECRET_KEY, STRIPE_API_BASE: mock.url };
}

async function expectExactlyOnce(result: BillResult, report: string): Promise<void> {
  expect(result.outcome).toBe('completed');
  expect(result.run.endpoint).toBe(`stripe-sdk:${mock.url}`);
  const stats = mock.stats();
  expect(stats.duplicate_charges).toBe(0);
  expect(stats.charges).toBe(result.counts.charged);
  expect(stats.failed_503 + stats.lost).toBeGreaterThan(0);
  expect(result.counts.declined).toBeGreaterThan(0);
  expect(result.counts.charged + result.counts.declined).toBe(USERS.length);
  const rows = await readReport(report);
  const byUser = new Map<string, ReportRow>(rows.map((row) => [row.user_id, row]));
  expect([...byUser.keys()].sort()).toEqual([...USERS].sort());
  const disagreements: string[] = [];
  for (const userId of USERS) {
    const row = byUser.get(userId) as ReportRow;
    const ids = mock.chargesOf(userId);
    const agrees =
      row.status === 'charged'
        ? ids.length === 1 && row.charge_id === ids[0]
        : row.status === 'declined' && ids.length === 0;
    if (!agrees)
      disagreements.push(`${userId}: report ${row.status} ${row.charge_id}, mock ${ids}`);
  }
  expect(disagreements).toEqual([]);
  const declined = rows.find((row) => row.status === 'declined');
  expect(declined?.http_status).toBe('402');
  expect(declined?.error).toMatch(/^(generic_decline|insufficient_funds|do_not_honor): /);
  for (const row of rows) expect(row.error).not.toContain(SECRET_KEY);
}

describe('the Stripe SDK adapter against the mock speaking Stripe', () => {
  it('bills every user once on the local engine', async () => {
    const report = join(dir, 'local.report.csv');
    const result = await bill({
      input,
      adapter: ADAPTER,
      runId: 'stripe-local',
      ledger: join(dir, 'l.db'),
      concurrency: 32,
      env: env(),
      reportPath: () => report,
    });
    await expectExactlyOnce(result, report);
  });

  it('bills every user once on the distributed engine', async () => {
    const report = join(dir, 'distributed.report.csv');
    const result = await billDistributed({
      input,
      adapter: ADAPTER,
      runId: `stripe-${prefix}`,
      redis: REDIS_URL,
      prefix,
      queue: 'charges',
      concurrency: 32,
      lockDurationMs: 5_000,
      env: env(),
      reportPath: () => report,
    });
    await expectExactlyOnce(result, report);
  });

  it('bills every user once when answers are lost after charging (the SDK sees a dropped connection)', async () => {
    await mock.close({ graceMs: 0 });
    mock = await startMockProvider({
      shape: 'stripe',
      port: 0,
      latencyMs: 0,
      lostRate: 0.1,
      declineRate: 0.05,
      seed: 11,
      apiKey: SECRET_KEY,
    });
    const report = join(dir, 'lost.report.csv');
    const result = await bill({
      input,
      adapter: ADAPTER,
      runId: 'stripe-lost',
      ledger: join(dir, 'lost.db'),
      concurrency: 32,
      env: env(),
      reportPath: () => report,
    });
    expect(mock.stats().lost).toBeGreaterThan(0);
    expect(mock.stats().replays).toBeGreaterThan(0);
    await expectExactlyOnce(result, report);
  });

  it('stops the run on a wrong secret key, charging nobody and never echoing the key', async () => {
    const result = await bill({
      input,
      adapter: ADAPTER,
      runId: 'stripe-wrong-key',
      ledger: join(dir, 'w.db'),
      env: { ...env(), STRIPE_SECRET_KEY: 'sk_test_wrong_0000' },
    });
    expect(result.outcome).toBe('stopped');
    expect(result.stoppedBecause).toContain('401 from Stripe');
    expect(result.stoppedBecause).not.toContain('sk_test_wrong_0000');
    expect(result.counts.pending).toBe(USERS.length);
    expect(mock.stats().charges).toBe(0);
  });
});
