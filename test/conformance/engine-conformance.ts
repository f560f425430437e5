import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ChargeState } from '../../src/domain/outcome.js';
import type { BillResult } from '../../src/engine/local-engine.js';
import type { ChargeRecord, Ledger, StateCounts } from '../../src/ledger/ledger.js';
import {
  type MockProvider,
  type MockProviderOptions,
  startMockProvider,
} from '../../src/mock-provider/index.js';
import { closeServer } from '../helpers/http.js';

/** The options every engine takes, in the local engine's words. */
export interface ConformanceBillOptions {
  readonly input: string;
  readonly endpoint: string;
  readonly runId?: string;
  readonly concurrency?: number;
  readonly rate?: number;
  readonly timeoutMs?: number;
  readonly maxAttempts?: number;
  readonly skipInvalid?: boolean;
  readonly newCycle?: boolean;
  readonly retryFailed?: boolean;
  readonly keyRetentionMs?: number;
  readonly headers?: readonly string[];
  readonly env?: Readonly<Record<string, string | undefined>>;
  readonly signal?: AbortSignal;
}

export interface ConformanceBillResult {
  readonly outcome: string;
  readonly runId: string;
  readonly total: number;
  readonly counts: StateCounts;
}

/** An engine as the suite drives it: one instance per test, with its own storage. */
export interface EngineUnderTest {
  bill(options: ConformanceBillOptions): Promise<ConformanceBillResult>;
  /** Every charge of the run, from the engine's ledger. */
  charges(runId: string): Promise<ChargeRecord[]>;
  /** Whether the engine's ledger holds this run at all. */
  hasRun(runId: string): Promise<boolean>;
  close(): Promise<void>;
}

export type EngineFactory = (workdir: string) => Promise<EngineUnderTest>;

/**
 * An engine under test from what every engine has: a bill() that resolves with a BillResult,
 * and the ledger it keeps runs in (read for charges and runs).
 */
export function engineOver(
  ledger: Ledger,
  billWith: (options: ConformanceBillOptions) => Promise<BillResult>,
  close: () => Promise<void>,
): EngineUnderTest {
  return {
    async bill(options) {
      const result = await billWith(options);
      return {
        outcome: result.outcome,
        runId: result.run.runId,
        total: result.run.total,
        counts: result.counts,
      };
    },
    async charges(runId) {
      const all: ChargeRecord[] = [];
      for await (const charge of ledger.charges(runId)) all.push(charge);
      return all;
    },
    async hasRun(runId) {
      return (await ledger.findRun(runId)) !== undefined;
    },
    close,
  };
}

const TERMINAL: readonly ChargeState[] = ['charged', 'declined', 'failed', 'unknown', 'invalid'];

function sum(counts: StateCounts): number {
  return Object.values(counts).reduce((total, count) => total + count, 0);
}

/**
 * The promises every engine keeps, run against a real mock provider on port 0: the same suite
 * for the local engine and (unchanged) for the distributed one.
 */
export function engineConformance(name: string, factory: EngineFactory): void {
  describe(`${name} keeps the engine's promises`, () => {
    let workdir: string;
    const providers: MockProvider[] = [];
    const servers: Server[] = [];
    const engines: EngineUnderTest[] = [];

    beforeAll(async () => {
      workdir = await mkdtemp(join(tmpdir(), 'bulkbill-conformance-'));
    });
    afterEach(async () => {
      await Promise.all(engines.splice(0).map((engine) => engine.close()));
      await Promise.all(providers.splice(0).map((provider) => provider.close({ graceMs: 0 })));
      await Promise.all(servers.splice(0).map(closeServer));
    });
    afterAll(async () => {
      await rm(workdir, { recursive: true, force: true });
    });

    async function engine(): Promise<EngineUnderTest> {
      const created = await factory(workdir);
      engines.push(created);
      return created;
    }

    async function provider(options: MockProviderOptions): Promise<MockProvider> {
      const started = await startMockProvider({ port: 0, jitter: 0, seed: 1, ...options });
      providers.push(started);
      return started;
    }

    let files = 0;
    async function inputOf(userIds: readonly string[], amount = 1_000): Promise<string> {
      const path = join(workdir, `input-${++files}.ndjson`);
      const lines = userIds.map((userId) =>
        JSON.stringify({ user_id: userId, amount, currency: 'USD' }),
      );
      await writeFile(path, `${lines.join('\n')}\n`);
      return path;
    }

    function users(count: number, prefix = 'user'): string[] {
      return Array.from({ length: count }, (_, index) => `${prefix}-${index}`);
    }

    /** The invariants: one terminal state each, no duplicate, the provider agrees on every user. */
    async function expectAccounted(
      under: EngineUnderTest,
      mock: MockProvider,
      result: ConformanceBillResult,
      userIds: readonly string[],
    ): Promise<ChargeRecord[]> {
      expect(sum(result.counts)).toBe(userIds.length);
      const charges = await under.charges(result.runId);
      expect(charges.map((charge) => charge.userId).sort()).toEqual([...userIds].sort());
      const stats = mock.stats();
      expect(stats.duplicate_charges).toBe(0);
      expect(stats.charges).toBe(charges.filter((charge) => charge.state === 'charged').length);
      for (const charge of charges) {
        const atProvider = mock.chargesOf(charge.userId);
        if (charge.state === 'charged') {
          expect(atProvider, charge.userId).toHaveLength(1);
          expect(charge.chargeId, charge.userId).toBe(atProvider[0]);
        } else if (charge.state === 'unknown') {
          expect(atProvider.length, charge.userId).toBeLessThanOrEqual(1);
        } else {
          expect(atProvider, `${charge.userId} ${charge.state}`).toHaveLength(0);
        }
      }
      return charges;
    }

    it('bills every user exactly once through a mix of faults', async () => {
      const userIds = [...users(380), ...users(20, 'declined').map((id) => `${id}_x`)];
      const mock = await provider({
        latencyMs: 30,
        capacity: 40,
        rate: 400,
        failRate: 0.05,
        lostRate: 0.03,
        slowRate: 0.02,
        slowMs: 1_500,
        declineSuffix: '_x',
        seed: 42,
      });
      const under = await engine();
      const result = await under.bill({
        input: await inputOf(userIds),
        endpoint: `${mock.url}/charge`,
        concurrency: 32,
        timeoutMs: 500,
        maxAttempts: 8,
      });
      expect(result.outcome).toBe('completed');
      const charges = await expectAccounted(under, mock, result, userIds);
      for (const charge of charges) expect(TERMINAL).toContain(charge.state);
      expect(result.counts.declined).toBe(20);
      expect(result.counts.charged).toBe(380);
      const stats = mock.stats();
      expect(stats.failed_503 + stats.lost + stats.slow).toBeGreaterThan(0);
    });

    it('sends the same idempotency key on every retry, whatever the user id holds', async () => {
      const odd = [
        'a:b',
        'with space',
        'comma,here',
        'quote"d',
        'zoë',
        '日本',
        '~tilde',
        'x'.repeat(200),
      ];
      const mock = await provider({ latencyMs: 5, lostRate: 0.5, seed: 9 });
      const under = await engine();
      const result = await under.bill({
        input: await inputOf(odd),
        endpoint: `${mock.url}/charge`,
        runId: 'cycle-odd',
        maxAttempts: 10,
      });
      expect(result.counts.charged).toBe(odd.length);
      await expectAccounted(under, mock, result, odd);
      expect(mock.stats().replays).toBeGreaterThan(0);
    });

    it('waits out 409s while the first request with the key is in progress: charged once, never failed', async () => {
      // Each first attempt times out while the provider still processes it; the retries meet 409
      // (the key in use) until it settles, then the stored answer.
      const mock = await provider({ latencyMs: 1_500 });
      const under = await engine();
      const userIds = users(5);
      const result = await under.bill({
        input: await inputOf(userIds),
        endpoint: `${mock.url}/charge`,
        timeoutMs: 300,
        maxAttempts: 2,
      });
      expect(result.counts.charged).toBe(5);
      expect(mock.stats().conflicts).toBeGreaterThan(0);
      await expectAccounted(under, mock, result, userIds);
    });

    it('waits out 429s and Retry-After without using up attempts', async () => {
      const mock = await provider({ latencyMs: 1, rate: 200, burst: 10 });
      const under = await engine();
      const userIds = users(40);
      const result = await under.bill({
        input: await inputOf(userIds),
        endpoint: `${mock.url}/charge`,
        concurrency: 20,
        maxAttempts: 1,
      });
      expect(result.counts.charged).toBe(40);
      expect(mock.stats().rejected_429).toBeGreaterThan(0);
      await expectAccounted(under, mock, result, userIds);
    });

    it('ends an attempt that timed out after sending as unknown, and --retry-failed settles it', async () => {
      // The deadline leaves a busy machine time to send the attempt (one that expires before it
      // is sent ends `failed`, rightly); the provider takes longer, so the one attempt allowed
      // times out after it may have charged.
      const mock = await provider({ latencyMs: 2_000 });
      const under = await engine();
      const input = await inputOf(users(5));
      const first = await under.bill({
        input,
        endpoint: `${mock.url}/charge`,
        runId: 'cycle-unknown',
        timeoutMs: 400,
        maxAttempts: 1,
      });
      expect(first.counts.unknown).toBe(5);
      const unknown = await under.charges('cycle-unknown');
      expect(unknown.every((charge) => charge.ambiguous)).toBe(true);
      // The resume comes once the provider has finished the first attempts, as an operator's
      // would: every retry then meets a stored answer, none a 409 for a key still in progress.
      while (mock.stats().in_flight > 0) await new Promise((resolve) => setTimeout(resolve, 50));
      // A plain rerun leaves unknown charges as they are: retrying them is the operator's call.
      const plain = await under.bill({
        input,
        endpoint: `${mock.url}/charge`,
        runId: 'cycle-unknown',
        timeoutMs: 5_000,
      });
      expect(plain.counts.unknown).toBe(5);
      const requests = mock.stats().requests;
      const second = await under.bill({
        input,
        endpoint: `${mock.url}/charge`,
        runId: 'cycle-unknown',
        timeoutMs: 5_000,
        retryFailed: true,
      });
      expect(mock.stats().requests).toBe(requests + 5);
      expect(second.counts.charged).toBe(5);
      await expectAccounted(under, mock, second, users(5));
    });

    it('ends a charge whose attempts all failed before charging as failed', async () => {
      const mock = await provider({ latencyMs: 1, failRate: 1 });
      const under = await engine();
      const result = await under.bill({
        input: await inputOf(users(3)),
        endpoint: `${mock.url}/charge`,
        maxAttempts: 2,
      });
      expect(result.counts.failed).toBe(3);
      expect(mock.stats()).toMatchObject({ charges: 0, failed_503: 6 });
    });

    it('stops at once on 401, leaving every charge pending; the corrected run completes', async () => {
      const mock = await provider({ latencyMs: 1, apiKey: 'sk_test_right' });
      const under = await engine();
      const input = await inputOf(users(50));
      const wrong = await under.bill({
        input,
        endpoint: `${mock.url}/charge`,
        runId: 'cycle-auth',
        headers: ['Authorization: Bearer ${BILLING_TOKEN}'],
        env: { BILLING_TOKEN: 'sk_test_wrong' },
      });
      expect(wrong.outcome).toBe('stopped');
      expect(wrong.counts.pending).toBe(50);
      expect(mock.stats().charges).toBe(0);
      const right = await under.bill({
        input,
        endpoint: `${mock.url}/charge`,
        runId: 'cycle-auth',
        headers: ['Authorization: Bearer ${BILLING_TOKEN}'],
        env: { BILLING_TOKEN: 'sk_test_right' },
      });
      expect(right.outcome).toBe('completed');
      expect(right.counts.charged).toBe(50);
      const charges = await under.charges('cycle-auth');
      expect(JSON.stringify(charges)).not.toContain('sk_test');
    });

    it('refuses to continue a run with other credentials once a charge was attempted, storing no secret', async () => {
      const mock = await provider({ latencyMs: 40 });
      const under = await engine();
      const input = await inputOf(users(60));
      const headers = ['Authorization: Bearer ${BILLING_TOKEN}'];
      const controller = new AbortController();
      setTimeout(() => controller.abort(), 150);
      const first = await under.bill({
        input,
        endpoint: `${mock.url}/charge`,
        runId: 'cycle-account',
        concurrency: 5,
        headers,
        env: { BILLING_TOKEN: 'sk_live_account_one' },
        signal: controller.signal,
      });
      expect(first.outcome).toBe('interrupted');
      const requests = mock.stats().requests;
      await expect(
        under.bill({
          input,
          endpoint: `${mock.url}/charge`,
          runId: 'cycle-account',
          headers,
          env: { BILLING_TOKEN: 'sk_live_account_two' },
        }),
      ).rejects.toThrow(/run cycle-account was billed with other credentials/);
      expect(mock.stats().requests).toBe(requests);
      const same = await under.bill({
        input,
        endpoint: `${mock.url}/charge`,
        runId: 'cycle-account',
        headers,
        env: { BILLING_TOKEN: 'sk_live_account_one' },
      });
      expect(same.outcome).toBe('completed');
      await expectAccounted(under, mock, same, users(60));
      expect(JSON.stringify(await under.charges('cycle-account'))).not.toContain('sk_live');
    });

    it('stops when the first 20 answers are all the same 400, declining nobody', async () => {
      const server = createServer((req, res) => {
        req.resume().on('end', () => {
          res.writeHead(400, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: 'parameter_unknown', message: 'Unknown field amount' }));
        });
      });
      servers.push(server);
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const { port } = server.address() as AddressInfo;
      const under = await engine();
      const result = await under.bill({
        input: await inputOf(users(100)),
        endpoint: `http://127.0.0.1:${port}/charge`,
        concurrency: 4,
      });
      expect(result.outcome).toBe('stopped');
      expect(result.counts.declined).toBe(0);
      expect(result.counts.pending).toBe(100);
    });

    it('declines users answered 400 when too few answers came to call the run misconfigured', async () => {
      const server = createServer((req, res) => {
        req.resume().on('end', () => {
          res.writeHead(400, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error: 'card_invalid', message: 'Card number is invalid' }));
        });
      });
      servers.push(server);
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const { port } = server.address() as AddressInfo;
      const under = await engine();
      const result = await under.bill({
        input: await inputOf(users(5)),
        endpoint: `http://127.0.0.1:${port}/charge`,
        concurrency: 2,
      });
      expect(result.outcome).toBe('completed');
      expect(result.counts).toMatchObject({ declined: 5, pending: 0 });
      const charges = await under.charges(result.runId);
      expect(charges.every((charge) => charge.httpStatus === 400 && charge.attempts === 1)).toBe(
        true,
      );
    });

    it('resumes an interrupted run with the same keys', async () => {
      const mock = await provider({ latencyMs: 40 });
      const under = await engine();
      const userIds = users(300);
      const input = await inputOf(userIds);
      const controller = new AbortController();
      setTimeout(() => controller.abort(), 150);
      const first = await under.bill({
        input,
        endpoint: `${mock.url}/charge`,
        runId: 'cycle-resume',
        concurrency: 10,
        signal: controller.signal,
      });
      expect(first.outcome).toBe('interrupted');
      expect(first.counts.pending).toBeGreaterThan(0);
      expect(first.counts.charged).toBeGreaterThan(0);
      const second = await under.bill({
        input,
        endpoint: `${mock.url}/charge`,
        concurrency: 50,
      });
      expect(second.runId).toBe('cycle-resume');
      expect(second.outcome).toBe('completed');
      await expectAccounted(under, mock, second, userIds);
    });

    it('refuses invalid input before charging anyone, and records it as invalid when asked', async () => {
      const mock = await provider({ latencyMs: 1 });
      const under = await engine();
      const path = join(workdir, 'bad.csv');
      await writeFile(
        path,
        'user_id,amount,currency\nok-1,100,USD\nbad-1,19.99,USD\nok-2,100,usd\nok-1,5,USD\n',
      );
      await expect(
        under.bill({ input: path, endpoint: `${mock.url}/charge`, runId: 'cycle-bad' }),
      ).rejects.toThrow(
        /bad\.csv:3: amount: .*\n.*bad\.csv:4: currency: .*\n.*bad\.csv:5: user_id: appears twice \(first on line 2\)/s,
      );
      expect(mock.stats().requests).toBe(0);
      expect(await under.hasRun('cycle-bad')).toBe(false);

      const skipped = await under.bill({
        input: path,
        endpoint: `${mock.url}/charge`,
        runId: 'cycle-bad',
        skipInvalid: true,
      });
      expect(skipped.outcome).toBe('completed');
      expect(skipped.counts).toMatchObject({ charged: 1, invalid: 3 });
      expect(mock.stats().charges).toBe(1);
    });

    it('bills nobody when the run already finished', async () => {
      const mock = await provider({ latencyMs: 1 });
      const under = await engine();
      const input = await inputOf(users(10));
      const first = await under.bill({ input, endpoint: `${mock.url}/charge` });
      expect(first.counts.charged).toBe(10);
      const requests = mock.stats().requests;
      const again = await under.bill({ input, endpoint: `${mock.url}/charge` });
      expect(again.runId).toBe(first.runId);
      expect(mock.stats().requests).toBe(requests);
      const newCycle = await under.bill({
        input,
        endpoint: `${mock.url}/charge`,
        runId: 'next-cycle',
      });
      expect(newCycle.counts.charged).toBe(10);
      expect(mock.stats().charges).toBe(20);
    });
  });
}
