import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/config-file.js';
import { billDistributed } from '../../src/engine/distributed/distributed-engine.js';
import { bill } from '../../src/engine/local-engine.js';
import { type MockProvider, startMockProvider } from '../../src/mock-provider/index.js';
import type { ProviderDescriptionInput } from '../../src/provider/index.js';
import { expectReportAgreesWithProvider, readReport } from '../helpers/billing-cycle.js';
import { repoRoot, runCli } from '../helpers/cli.js';
import { dumpKeys } from '../helpers/distributed.js';
import {
  closeRedisAdmin,
  deleteKeysUnder,
  keysUnder,
  REDIS_URL,
  redisAdmin,
  uniquePrefix,
} from '../helpers/redis.js';

// Every shipped provider profile (examples/providers/*.jsonc, read as the config file it is),
// run end to end against the mock provider speaking that provider's shape, with faults: 503s
// before charging, answers lost after charging (a timeout: ambiguous), declines. The promises are
// the default shape's: nobody charged twice, the charges are exactly the charged rows, and the
// report agrees with the provider on every user.

const SECRET = 'sk_test_canary_5e3c1f0a9b';
const PROFILES = {
  stripe: { env: { STRIPE_SECRET_KEY: SECRET }, apiKey: SECRET },
  adyen: { env: { ADYEN_API_KEY: SECRET }, apiKey: SECRET },
  braintree: {
    env: { BRAINTREE_AUTH: Buffer.from(`public_id:${SECRET}`).toString('base64') },
    apiKey: `public_id:${SECRET}`,
  },
  square: { env: { SQUARE_ACCESS_TOKEN: SECRET }, apiKey: SECRET },
  checkout: { env: { CKO_SECRET_KEY: SECRET }, apiKey: SECRET },
  gocardless: { env: { GOCARDLESS_ACCESS_TOKEN: SECRET }, apiKey: SECRET },
} as const;
type ProfileName = keyof typeof PROFILES;

const USERS = 240;
const CURRENCIES = ['USD', 'EUR', 'JPY'] as const;

let dir: string;
const agent = new Agent();
const opened: MockProvider[] = [];
const prefixes: string[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bulkbill-profiles-'));
});
afterEach(async () => {
  for (const mock of opened.splice(0)) await mock.close({ graceMs: 0 });
  for (const prefix of prefixes.splice(0)) await deleteKeysUnder(prefix);
});
afterAll(async () => {
  await agent.close();
  await rm(dir, { recursive: true, force: true });
  await closeRedisAdmin();
});

async function profile(
  name: ProfileName,
): Promise<{ provider: ProviderDescriptionInput; header: string[] }> {
  const file = join(repoRoot, 'examples', 'providers', `${name}.jsonc`);
  const values = parseConfig(await readFile(file, 'utf8'), file);
  return {
    provider: values.provider as ProviderDescriptionInput,
    header: values.header as string[],
  };
}

/** A cycle with every column any profile reads: payment method ids, sources, mandates. */
async function cycle(name: string): Promise<{ input: string; userIds: string[] }> {
  const header =
    'user_id,amount,currency,customer,payment_method,stored_payment_method_id,payment_method_id,source_id,mandate';
  const lines = [header];
  const userIds: string[] = [];
  for (let index = 0; index < USERS; index++) {
    const userId = `user-${index}`;
    userIds.push(userId);
    const currency = CURRENCIES[index % CURRENCIES.length] as string;
    const amount = currency === 'JPY' ? 1_000 + index : 1_999 + index;
    lines.push(
      [
        userId,
        amount,
        currency,
        `cus_${index}`,
        `pm_${index}`,
        `spm_${index}`,
        `pmid_${index}`,
        `src_${index}`,
        `MD${index}`,
      ].join(','),
    );
  }
  const input = join(dir, `${name}.csv`);
  await writeFile(input, `${lines.join('\n')}\n`);
  return { input, userIds };
}

/** The canary secret and the header values made of it. */
function secretsOf(name: ProfileName): string[] {
  return [SECRET, ...Object.values(PROFILES[name].env)];
}

async function mockFor(name: ProfileName, seed: number): Promise<MockProvider> {
  const mock = await startMockProvider({
    shape: name,
    port: 0,
    latencyMs: 3,
    jitter: 0.5,
    failRate: 0.08,
    lostRate: 0.03,
    declineRate: 0.05,
    apiKey: PROFILES[name].apiKey,
    seed,
  });
  opened.push(mock);
  return mock;
}

describe.each(Object.keys(PROFILES) as ProfileName[])('the %s profile', (name) => {
  it('bills every user exactly once against the mock speaking its shape, with faults', async () => {
    const mock = await mockFor(name, 11);
    const { provider, header } = await profile(name);
    const { input, userIds } = await cycle(name);
    const reportPath = join(dir, `${name}.report.csv`);
    const ledger = join(dir, `${name}.db`);
    const result = await bill({
      input,
      endpoint: mock.url,
      provider,
      headers: header,
      env: PROFILES[name].env,
      ledger,
      runId: `2026-12-${name}`,
      concurrency: 32,
      timeoutMs: 400,
      maxAttempts: 10,
      reportPath: () => reportPath,
    });
    expect(result.outcome).toBe('completed');
    expect(result.counts.pending).toBe(0);
    expect(result.counts.failed + result.counts.unknown).toBe(0);
    expect(result.counts.declined).toBeGreaterThan(0);
    expect(result.counts.charged).toBeGreaterThan(USERS * 0.8);
    const rows = await expectReportAgreesWithProvider({
      agent,
      providerUrl: mock.url,
      reportPath,
      userIds,
    });
    // The faults happened, and were handled by retries with the same keys.
    const stats = mock.stats();
    expect(stats.failed_503 + stats.lost).toBeGreaterThan(0);
    expect(stats.invalid).toBe(0);
    const all = [...rows.values()];
    if (name === 'gocardless') {
      // A retry after a lost answer is GoCardless' 409 naming the payment: read as charged.
      expect(all.some((row) => row.status === 'charged' && row.http_status === '409')).toBe(true);
    }
    if (name === 'adyen' || name === 'braintree') {
      // Their refusals are HTTP 200s that the rules read as declines.
      expect(all.some((row) => row.status === 'declined' && row.http_status === '200')).toBe(true);
    }
    if (name === 'checkout') {
      const reasons = [...rows.values()]
        .filter((row) => row.status === 'declined')
        .map((row) => row.error);
      expect(reasons.some((reason) => reason.startsWith('soft decline: '))).toBe(true);
    }
    // The credential reached the provider and nothing else.
    for (const file of [reportPath, ledger, `${ledger}-wal`]) {
      const bytes = await readFile(file).catch(() => Buffer.alloc(0));
      for (const secret of secretsOf(name)) expect(bytes.includes(secret), file).toBe(false);
    }
  });
});

describe('a profile on the distributed engine', () => {
  it.each(['stripe', 'gocardless'] as const)(
    '%s: exactly once across a worker and the queue',
    async (name) => {
      const prefix = uniquePrefix();
      prefixes.push(prefix);
      const mock = await mockFor(name, 23);
      const { provider, header } = await profile(name);
      const { input, userIds } = await cycle(`${name}-distributed`);
      const reportPath = join(dir, `${name}-distributed.report.csv`);
      const result = await billDistributed({
        input,
        endpoint: mock.url,
        provider,
        headers: header,
        env: PROFILES[name].env,
        redis: REDIS_URL,
        prefix,
        runId: `2026-12-${name}-d`,
        concurrency: 32,
        timeoutMs: 400,
        maxAttempts: 10,
        reportPath: () => reportPath,
      });
      expect(result.outcome).toBe('completed');
      expect(result.counts.failed + result.counts.unknown + result.counts.pending).toBe(0);
      await expectReportAgreesWithProvider({ agent, providerUrl: mock.url, reportPath, userIds });
      // No key of the run (ledger, queue, jobs) holds the credential.
      const dump = await dumpKeys(redisAdmin(), await keysUnder(prefix));
      expect(dump.size).toBeGreaterThan(0);
      for (const [key, text] of dump) {
        for (const secret of secretsOf(name)) expect(text.includes(secret), key).toBe(false);
      }
    },
  );
});

describe('the CLI with a profile as its config file', () => {
  it('dry run shows the requests as they will be sent, credentials masked; the run logs no secret', async () => {
    const mock = await mockFor('stripe', 31);
    const work = await mkdtemp(join(dir, 'cli-'));
    const text = await readFile(join(repoRoot, 'examples', 'providers', 'stripe.jsonc'), 'utf8');
    const config = join(work, 'bulkbill.config.json');
    await writeFile(config, text.replace('"https://api.stripe.com"', JSON.stringify(mock.url)));
    const { input } = await cycle('cli');
    const env = { ...PROFILES.stripe.env };
    const common = [
      'run',
      input,
      '--config',
      config,
      '--run-id',
      '2026-12-cli',
      '--ledger',
      join(work, 'b.db'),
    ];
    const dry = await runCli([...common, '--dry-run'], { env });
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toContain(`POST ${mock.url}/v1/payment_intents`);
    expect(dry.stdout).toContain('Authorization: [redacted]');
    expect(dry.stdout).toContain('idempotency-key: 2026-12-cli:user-0');
    expect(dry.stdout).toContain(
      'amount=1999&currency=usd&customer=cus_0&payment_method=pm_0&confirm=true&off_session=true&metadata%5Buser_id%5D=user-0',
    );
    expect(mock.stats().requests).toBe(0);
    const run = await runCli(
      [...common, '--report', join(work, 'r.csv'), '--timeout', '400ms', '--max-attempts', '10'],
      { env },
    );
    expect(run.code, run.stderr).toBe(0);
    for (const output of [dry.stdout, dry.stderr, run.stdout, run.stderr]) {
      expect(output.includes(SECRET)).toBe(false);
    }
    expect(mock.stats().duplicate_charges).toBe(0);
    expect(mock.stats().charges).toBeGreaterThan(USERS * 0.8);
  });
});

describe('an operator who edits the request template between two runs of a cycle', () => {
  it.each(['stripe', 'square'] as const)(
    '%s: a key first sent with other parameters is never taken for a decline, and nobody is charged twice',
    async (name) => {
      const mock = await startMockProvider({
        shape: name,
        port: 0,
        latencyMs: 2,
        lostRate: 0.3,
        apiKey: PROFILES[name].apiKey,
        seed: 41,
      });
      opened.push(mock);
      const { provider, header } = await profile(name);
      const { input, userIds } = await cycle(`${name}-edited`);
      const ledger = join(dir, `${name}-edited.db`);
      const reportPath = join(dir, `${name}-edited.report.csv`);
      const common = {
        input,
        endpoint: mock.url,
        headers: header,
        env: PROFILES[name].env,
        ledger,
        runId: `2026-12-${name}-edited`,
        concurrency: 16,
        timeoutMs: 300,
        reportPath: () => reportPath,
      };
      // One attempt each: the answers lost after charging leave their charges unknown.
      const first = await bill({ ...common, provider, maxAttempts: 1 });
      expect(first.counts.unknown).toBeGreaterThan(0);
      // The operator adds a field to the body, then retries the unknown ones with the same keys
      // (both providers compare every parameter of a repeated key's request).
      const body = provider.request?.body as { form?: object; json?: object };
      const edited: ProviderDescriptionInput = {
        ...provider,
        request: {
          ...provider.request,
          body: body.form
            ? { form: { ...body.form, description: 'November' } }
            : { json: { ...body.json, note: 'November' } },
        },
      };
      const second = await bill({ ...common, provider: edited, maxAttempts: 2, retryFailed: true });
      expect(mock.stats().mismatches).toBeGreaterThan(0);
      expect(second.counts.declined).toBe(0);
      expect(second.counts.unknown).toBe(first.counts.unknown);
      // The unknown ones were charged by their first, lost, attempt: once, and no more.
      expect(mock.stats().duplicate_charges).toBe(0);
      const rows = await readReport(reportPath);
      expect(rows).toHaveLength(userIds.length);
      for (const row of rows) {
        const charges = mock.chargesOf(row.user_id).length;
        expect(charges, `${row.user_id} ${row.status}`).toBe(
          row.status === 'charged' || row.status === 'unknown' ? 1 : 0,
        );
      }
    },
  );
});

describe('an operator who changes the key length limit between two runs of a cycle', () => {
  it('is refused before anything is sent: other limits would send other keys', async () => {
    const mock = await startMockProvider({ port: 0, latencyMs: 1, failRate: 1, seed: 3 });
    opened.push(mock);
    const { input } = await cycle('key-limit');
    const common = {
      input,
      endpoint: `${mock.url}/charge`,
      ledger: join(dir, 'key-limit.db'),
      runId: '2026-12-key-limit',
      maxAttempts: 1,
      // The breaker off: every request fails, and the charges must end failed, not wait it out.
      outageWaitMs: 0,
    };
    // Every attempt answered 503: the run ends with every charge failed, to be retried later.
    const first = await bill({ ...common, provider: { idempotency: { maxLength: 22 } } });
    expect(first.run.endpoint).toBe(`${mock.url}/charge (idempotency keys cut to 22)`);
    const requests = mock.stats().requests;
    await expect(
      bill({ ...common, provider: { idempotency: { maxLength: 255 } }, retryFailed: true }),
    ).rejects.toThrow(
      /bills .*\(idempotency keys cut to 22\); resuming it against .*\/charge is refused/,
    );
    expect(mock.stats().requests).toBe(requests);
  });
});
