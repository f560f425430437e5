import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { billDistributed } from '../../src/engine/distributed/distributed-engine.js';
import { enqueue } from '../../src/engine/distributed/enqueue.js';
import { ledgerPrefix } from '../../src/engine/distributed/jobs.js';
import { type BillResult, bill } from '../../src/engine/local-engine.js';
import { RedisLedger } from '../../src/ledger/redis-ledger.js';
import { type ReportRow, readReport } from '../helpers/billing-cycle.js';
import { runCli } from '../helpers/cli.js';
import { closeServer, readBody } from '../helpers/http.js';
import { closeRedisAdmin, deleteKeysUnder, REDIS_URL, uniquePrefix } from '../helpers/redis.js';

// The example adapter examples/adapters/two-step-oauth.mjs end to end, on both engines and
// through the CLI, against a create-then-confirm payments API behind an OAuth client-credentials
// token, written here: a real HTTP server on port 0 that honours idempotency keys, counts every
// charge per user, revokes its token once, answers a confirm 503 once and drops connections
// after a create and after a confirm.

const ADAPTER = fileURLToPath(
  new URL('../../examples/adapters/two-step-oauth.mjs', import.meta.url),
);
const CLIENT_ID = 'bulkbill-test';
const CLIENT_SECRET = 'cs_canary_7f3a91';
// Another client of the same API: another account, whose idempotency keys are another namespace.
const OTHER_CLIENT = {
  TWO_STEP_CLIENT_ID: 'other-client',
  TWO_STEP_CLIENT_SECRET: 'cs_other_0b2c',
};
const CLIENTS = new Set(
  [`${CLIENT_ID}:${CLIENT_SECRET}`, 'other-client:cs_other_0b2c'].map(
    (pair) => `Basic ${Buffer.from(pair).toString('base64')}`,
  ),
);

interface Stored {
  readonly status: number;
  readonly body: Record<string, unknown>;
}

interface Payment {
  readonly id: string;
  readonly userId: string;
  readonly key: string;
  confirmed: boolean;
}

interface Faults {
  /** Users whose first create is made, then its connection dropped unanswered. */
  readonly dropAfterCreate: Set<string>;
  /** Users whose first confirm answers 503 before anything is charged. */
  readonly confirm503: Set<string>;
  /** Users whose first confirm charges, then its connection is dropped unanswered. */
  readonly dropAfterConfirm: Set<string>;
  /** Every token issued so far is revoked once this many payments were created (0: never). */
  readonly revokeAfterCreates: number;
  /** Users whose card is declined at confirm. */
  readonly declined: Set<string>;
}

/** The two-step payments API with an OAuth token endpoint. */
class TwoStepApi {
  readonly server: Server;
  tokensIssued = 0;
  unauthorized = 0;
  creates = 0;
  /** Requests that broke the protocol (a wrong key, a bad body): must stay empty. */
  readonly problems: string[] = [];
  readonly charges = new Map<string, number>();
  readonly chargeIds = new Map<string, string>();
  readonly #tokens = new Set<string>();
  readonly #createdByKey = new Map<string, Stored>();
  readonly #confirmedByKey = new Map<string, Stored>();
  readonly #payments = new Map<string, Payment>();
  readonly #faults: Faults;
  #revoked = false;

  constructor(faults: Faults) {
    this.#faults = faults;
    this.server = createServer((req, res) => {
      this.#handle(req, res).catch((error: unknown) => {
        this.problems.push(String(error));
        res.destroy();
      });
    });
  }

  async listen(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  /** Faults planned for this API that have not happened yet (each happens once). */
  faultsLeft(): string[] {
    const { dropAfterCreate, confirm503, dropAfterConfirm } = this.#faults;
    return [...dropAfterCreate, ...confirm503, ...dropAfterConfirm];
  }

  /** Users charged more than once. */
  duplicates(): string[] {
    return [...this.charges].filter(([, count]) => count > 1).map(([userId]) => userId);
  }

  totalCharges(): number {
    return [...this.charges.values()].reduce((sum, count) => sum + count, 0);
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const body = await readBody(req);
    const url = req.url ?? '';
    if (req.method === 'POST' && url === '/oauth/token') return this.#token(req, body, res);
    const bearer = /^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1];
    if (bearer === undefined || !this.#tokens.has(bearer)) {
      this.unauthorized++;
      return answer(res, 401, { error: 'invalid_token' });
    }
    const key = req.headers['idempotency-key'];
    if (typeof key !== 'string' || key === '') {
      this.problems.push(`${url}: no idempotency key`);
      return answer(res, 400, { error: 'idempotency_key_required' });
    }
    if (req.method === 'POST' && url === '/v1/payments') return this.#create(key, body, res);
    const confirm = /^\/v1\/payments\/([^/]+)\/confirm$/.exec(url);
    if (req.method === 'POST' && confirm) {
      return this.#confirm(decodeURIComponent(confirm[1] as string), key, res);
    }
    return answer(res, 404, { error: 'not_found' });
  }

  #token(req: IncomingMessage, body: string, res: ServerResponse) {
    const form = new URLSearchParams(body);
    if (!CLIENTS.has(req.headers.authorization ?? '')) {
      return answer(res, 401, { error: 'invalid_client' });
    }
    if (form.get('grant_type') !== 'client_credentials') {
      return answer(res, 400, { error: 'unsupported_grant_type' });
    }
    this.tokensIssued++;
    const token = `tok_${this.tokensIssued}_${Math.random().toString(36).slice(2)}`;
    this.#tokens.add(token);
    answer(res, 200, { access_token: token, token_type: 'Bearer', expires_in: 3_600 });
  }

  #create(key: string, text: string, res: ServerResponse) {
    const replay = this.#createdByKey.get(key);
    if (replay) return answer(res, replay.status, replay.body);
    const charge = JSON.parse(text) as { user_id?: unknown; amount?: unknown; currency?: unknown };
    const userId = String(charge.user_id);
    if (!key.endsWith(`:${userId}`)) this.problems.push(`create ${userId}: key ${key}`);
    this.creates++;
    const id = `pay_${this.creates}`;
    this.#payments.set(id, { id, userId, key, confirmed: false });
    const stored = {
      status: 201,
      body: { id, status: 'requires_confirmation', amount: charge.amount },
    };
    this.#createdByKey.set(key, stored);
    if (this.#faults.revokeAfterCreates > 0 && this.creates === this.#faults.revokeAfterCreates) {
      this.#revoked = true;
      this.#tokens.clear();
    }
    if (this.#faults.dropAfterCreate.delete(userId)) {
      res.socket?.destroy();
      return;
    }
    answer(res, stored.status, stored.body);
  }

  #confirm(id: string, key: string, res: ServerResponse) {
    const payment = this.#payments.get(id);
    if (payment === undefined) return answer(res, 404, { error: 'no_such_payment' });
    if (key !== `${payment.key}:confirm`) this.problems.push(`confirm ${id}: key ${key}`);
    const replay = this.#confirmedByKey.get(key);
    if (replay) return answer(res, replay.status, replay.body);
    const { userId } = payment;
    if (this.#faults.confirm503.delete(userId)) {
      return answer(res, 503, { error: 'unavailable' });
    }
    if (payment.confirmed) {
      this.problems.push(`confirm ${id}: confirmed again with key ${key}`);
      return answer(res, 400, { error: 'already_confirmed' });
    }
    let stored: Stored;
    if (this.#faults.declined.has(userId)) {
      stored = { status: 402, body: { error: 'card_declined', message: 'insufficient funds' } };
    } else {
      payment.confirmed = true;
      this.charges.set(userId, (this.charges.get(userId) ?? 0) + 1);
      this.chargeIds.set(userId, id);
      stored = { status: 200, body: { id, status: 'succeeded' } };
    }
    this.#confirmedByKey.set(key, stored);
    if (this.#faults.dropAfterConfirm.delete(userId)) {
      res.socket?.destroy();
      return;
    }
    answer(res, stored.status, stored.body);
  }

  get revoked(): boolean {
    return this.#revoked;
  }
}

function answer(res: ServerResponse, status: number, body: Record<string, unknown>): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

const USERS = Array.from({ length: 60 }, (_, index) => `user-${index}`);
const DECLINED = new Set(['user-13', 'user-41']);

function faults(): Faults {
  return {
    dropAfterCreate: new Set(['user-3', 'user-17', 'user-30']),
    confirm503: new Set(['user-5', 'user-22', 'user-44']),
    dropAfterConfirm: new Set(['user-8', 'user-29']),
    revokeAfterCreates: 20,
    declined: new Set(DECLINED),
  };
}

let dir: string;
let api: TwoStepApi;
let base: string;
let input: string;
let prefix: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bulkbill-adapter-two-step-'));
  api = new TwoStepApi(faults());
  base = await api.listen();
  input = join(dir, 'users.csv');
  const rows = USERS.map((userId, index) => `${userId},${1_000 + index},EUR,plan-${index % 3}`);
  await writeFile(input, `user_id,amount,currency,plan\n${rows.join('\n')}\n`);
  prefix = uniquePrefix();
});

afterEach(async () => {
  await closeServer(api.server);
  await deleteKeysUnder(prefix);
  await rm(dir, { recursive: true, force: true });
});

afterAll(async () => {
  await closeRedisAdmin();
});

function env(): Record<string, string> {
  return {
    TWO_STEP_API_BASE: base,
    TWO_STEP_CLIENT_ID: CLIENT_ID,
    TWO_STEP_CLIENT_SECRET: CLIENT_SECRET,
  };
}

/** What every engine must leave: each user charged once at most, the report agreeing. */
async function expectExactlyOnce(
  counts: BillResult['counts'],
  report: string,
  tokens = 2,
): Promise<void> {
  expect(api.problems).toEqual([]);
  expect(api.duplicates()).toEqual([]);
  expect(counts).toMatchObject({ charged: USERS.length - DECLINED.size, declined: DECLINED.size });
  expect(counts.pending + counts.failed + counts.unknown).toBe(0);
  expect(api.totalCharges()).toBe(counts.charged);
  // Token fetched once in setup (each run's), and once more after the revocation's 401s.
  expect(api.revoked).toBe(true);
  expect(api.unauthorized).toBeGreaterThan(0);
  expect(api.tokensIssued).toBe(tokens);
  const rows = await readReport(report);
  const byUser = new Map<string, ReportRow>(rows.map((row) => [row.user_id, row]));
  expect([...byUser.keys()].sort()).toEqual([...USERS].sort());
  const disagreements: string[] = [];
  for (const userId of USERS) {
    const row = byUser.get(userId) as ReportRow;
    const expected = DECLINED.has(userId) ? 'declined' : 'charged';
    const chargeId = api.chargeIds.get(userId) ?? '';
    if (row.status !== expected || row.charge_id !== chargeId) {
      disagreements.push(`${userId}: report ${row.status} ${row.charge_id}, api ${chargeId}`);
    }
  }
  expect(disagreements).toEqual([]);
  // Every planned fault happened (and the users above ended once regardless). Not read from the
  // report's attempts: an attempt the circuit breaker excused counts for nothing there, and the
  // fast failures at the start (8 faults among 60 answered at once) can open it.
  expect(api.faultsLeft()).toEqual([]);
  expect(byUser.get('user-13')?.error).toBe('card_declined: insufficient funds');
}

describe('the two-step OAuth adapter', () => {
  it('bills every user once on the local engine, through 401s, drops and 503s', async () => {
    const report = join(dir, 'local.report.csv');
    const result = await bill({
      input,
      adapter: ADAPTER,
      runId: 'cycle-local',
      ledger: join(dir, 'l.db'),
      concurrency: 8,
      env: env(),
      reportPath: () => report,
    });
    expect(result.outcome).toBe('completed');
    expect(result.run.endpoint).toBe(`two-step-oauth:${base}`);
    await expectExactlyOnce(result.counts, report);
  });

  it('bills every user once on the distributed engine', async () => {
    const report = join(dir, 'distributed.report.csv');
    const result = await billDistributed({
      input,
      adapter: ADAPTER,
      runId: `cycle-${prefix}`,
      redis: REDIS_URL,
      prefix,
      queue: 'charges',
      concurrency: 8,
      lockDurationMs: 5_000,
      env: env(),
      reportPath: () => report,
    });
    expect(result.outcome).toBe('completed');
    await expectExactlyOnce(result.counts, report);
  });

  it('previews the charge and its key in a dry run, and charges nobody', async () => {
    const result = await bill({
      input,
      adapter: ADAPTER,
      runId: 'cycle-dry',
      ledger: join(dir, 'l.db'),
      env: env(),
      dryRun: true,
    });
    expect(result.outcome).toBe('planned');
    expect(result.plan?.requests[0]).toEqual({
      userId: 'user-0',
      method: 'adapter',
      url: `two-step-oauth:${base}`,
      headers: {},
      body: JSON.stringify({
        charge: { userId: 'user-0', amount: 1_000, currency: 'EUR', metadata: { plan: 'plan-0' } },
        idempotencyKey: 'cycle-dry:user-0',
      }),
    });
    expect(api.creates).toBe(0);
  });

  it('refuses to retry a run with another client, and a client the token endpoint refuses', async () => {
    const ledger = join(dir, 'l.db');
    const report = join(dir, 'retried.report.csv');
    // One attempt each: the faults' users end failed (create dropped, confirm 503) or unknown
    // (confirm dropped after charging), the run bound to the first client's fingerprint.
    const first = await bill({
      input,
      adapter: ADAPTER,
      runId: 'cycle-a',
      ledger,
      maxAttempts: 1,
      concurrency: 8,
      // No breaker: failures it excused would be retried, and this run is about one attempt.
      outageWaitMs: 0,
      env: env(),
    });
    expect(first.counts).toMatchObject({ failed: 6, unknown: 2 });
    const other = await bill({
      input,
      adapter: ADAPTER,
      runId: 'cycle-a',
      ledger,
      retryFailed: true,
      env: { ...env(), ...OTHER_CLIENT },
    }).catch((caught: unknown) => caught);
    expect((other as Error).message).toContain('run cycle-a was billed with other credentials');
    // With its own client the retry bills the rest, and the charges the dropped confirms made
    // are answered from the API's idempotency store, not made again.
    const retried = await bill({
      input,
      adapter: ADAPTER,
      runId: 'cycle-a',
      ledger,
      retryFailed: true,
      env: env(),
      reportPath: () => report,
    });
    expect(retried.outcome).toBe('completed');
    // Tokens: the first run's two, then one in each later run's setup.
    await expectExactlyOnce(retried.counts, report, 4);

    const refused = await bill({
      input,
      adapter: ADAPTER,
      runId: 'cycle-b',
      ledger: join(dir, 'b.db'),
      env: { ...env(), TWO_STEP_CLIENT_SECRET: 'wrong' },
    }).catch((caught: unknown) => caught);
    expect((refused as Error).message).toContain('setup() failed: token: 401 invalid_client from');
    expect((refused as Error).message).not.toContain('wrong');
  });

  it('runs through `bulkbill run --adapter` and `bulkbill worker --adapter`', async () => {
    const ledger = join(dir, 'cli.db');
    const report = join(dir, 'cli.report.csv');
    const run = await runCli(
      [
        ...['run', input, '--adapter', ADAPTER, '--run-id', 'cycle-cli', '--ledger', ledger],
        ...['--report', join(dir, 'cycle-cli.run.report.csv')],
      ],
      { env: env() },
    );
    expect(run.stderr).not.toContain(CLIENT_SECRET);
    expect(run.code, run.stderr).toBe(0);
    const again = await runCli(
      ['report', '--run-id', 'cycle-cli', '--ledger', ledger, '--out', report],
      { env: env() },
    );
    expect(again.code, again.stderr).toBe(0);
    await expectExactlyOnce(
      {
        charged: USERS.length - DECLINED.size,
        declined: DECLINED.size,
        pending: 0,
        failed: 0,
        unknown: 0,
        invalid: 0,
      },
      report,
    );

    // The same users again, as another cycle on Redis: enqueued, then billed by a CLI worker.
    const fresh = new TwoStepApi({ ...faults(), revokeAfterCreates: 0 });
    const freshBase = await fresh.listen();
    try {
      const runId = `cycle-${prefix}`;
      const { Redis } = await import('ioredis');
      const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 3 });
      try {
        await enqueue({ input, redis, prefix, queue: 'charges', runId });
      } finally {
        redis.disconnect();
      }
      const worker = await runCli(
        [
          'worker',
          '--adapter',
          ADAPTER,
          '--redis',
          REDIS_URL,
          '--prefix',
          prefix,
          '--queue',
          'charges',
          '--exit-when-idle',
          '--concurrency',
          '8',
        ],
        { env: { ...env(), TWO_STEP_API_BASE: freshBase } },
      );
      expect(worker.code, worker.stderr).toBe(0);
      expect(worker.stderr).not.toContain(CLIENT_SECRET);
      const ledgerOnRedis = new RedisLedger({ redis: REDIS_URL, prefix: ledgerPrefix(prefix) });
      try {
        const counts = await ledgerOnRedis.counts(runId);
        expect(counts).toMatchObject({ charged: USERS.length - DECLINED.size, pending: 0 });
        expect((await ledgerOnRedis.findRun(runId))?.endpoint).toBe(`two-step-oauth:${freshBase}`);
      } finally {
        await ledgerOnRedis.close();
      }
      expect(fresh.problems).toEqual([]);
      expect(fresh.duplicates()).toEqual([]);
      expect(fresh.totalCharges()).toBe(USERS.length - DECLINED.size);
      expect(fresh.tokensIssued).toBe(1);
    } finally {
      await closeServer(fresh.server);
    }
  });

  it("reads the config file's adapter, resolved against the file's folder", async () => {
    const config = join(dir, 'bulkbill.config.json');
    await writeFile(
      config,
      `// the adapter, relative to this file\n${JSON.stringify({ adapter: relative(dir, ADAPTER) })}\n`,
    );
    const result = await runCli(
      [
        'run',
        input,
        '--config',
        config,
        '--run-id',
        'cycle-config',
        '--ledger',
        join(dir, 'c.db'),
        '--dry-run',
      ],
      { env: env() },
    );
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toContain(`adapter two-step-oauth:${base}`);
    expect(result.stdout).toContain('"idempotencyKey":"cycle-config:user-0"');
    expect(api.tokensIssued).toBe(1);
    expect(api.creates).toBe(0);
  });

  it('refuses --adapter with --endpoint, naming both', async () => {
    const result = await runCli(
      ['run', input, '--adapter', ADAPTER, '--endpoint', base, '--ledger', join(dir, 'x.db')],
      { env: env() },
    );
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('--adapter: an adapter sends charges itself');
    expect(result.stderr).toContain('--endpoint');
    expect(api.tokensIssued).toBe(0);
  });
});
