import { createServer } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Clock } from '../../src/domain/clock.js';
import { idempotencyKey } from '../../src/domain/idempotency-key.js';
import type { AttemptResult } from '../../src/domain/outcome.js';
import {
  type MockProvider,
  type MockProviderOptions,
  startMockProvider,
} from '../../src/mock-provider/index.js';
import {
  type ChargeRequest,
  ProviderClient,
  type ProviderClientOptions,
  parseHeaderFlags,
  resolveHeaders,
} from '../../src/provider/index.js';

const RUN = 'e2e-run';
const API_KEY = 'sekret-key-123';
// The mock's token bucket never refills on this clock, so the second request is over the rate.
const frozenClock: Clock = { now: () => 0 };

const mocks: MockProvider[] = [];
const clients: ProviderClient[] = [];

async function mock(options: MockProviderOptions): Promise<MockProvider> {
  const started = await startMockProvider({
    port: 0,
    latencyMs: 20,
    jitter: 0,
    seed: 7,
    ...options,
  });
  mocks.push(started);
  return started;
}

function client(options: ProviderClientOptions): ProviderClient {
  const created = new ProviderClient(options);
  clients.push(created);
  return created;
}

function charge(userId: string, amount = 1_250): ChargeRequest {
  return { userId, amount, currency: 'EUR', idempotencyKey: idempotencyKey(RUN, userId) };
}

async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

let plain: MockProvider;
let plainClient: ProviderClient;

beforeAll(async () => {
  plain = await mock({ declineSuffix: '-declined' });
  plainClient = client({ endpoint: `${plain.url}/charge`, connections: 8 });
});

afterAll(async () => {
  await Promise.all(clients.map((created) => created.close()));
  await Promise.all(mocks.map((started) => started.close({ graceMs: 0 })));
});

describe('ProviderClient against the mock provider', () => {
  it('charges, keeping the provider’s charge id', async () => {
    const result = await plainClient.attempt(charge('alice'));
    expect(result).toEqual({
      kind: 'charged',
      status: 200,
      chargeId: expect.stringMatching(/^ch_/),
    });
    expect(plain.chargesOf('alice')).toEqual([(result as { chargeId: string }).chargeId]);
    expect(plain.stats().keyless).toBe(0);
  });

  it('replays the same key: the same charge id, charged once', async () => {
    const first = await plainClient.attempt(charge('bob'));
    const again = await plainClient.attempt(charge('bob'));
    expect(first.kind).toBe('charged');
    expect(again).toEqual(first);
    expect(plain.chargesOf('bob')).toHaveLength(1);
    const stats = plain.stats();
    expect(stats.replays).toBeGreaterThanOrEqual(1);
    expect(stats.duplicate_charges).toBe(0);
  });

  it('sends hashed keys for user ids that are not printable ASCII', async () => {
    for (const userId of ['José 🙂', 'a:b, "c"', '~tilde', 'x'.repeat(200)]) {
      const first = await plainClient.attempt(charge(userId));
      expect(first.kind).toBe('charged');
      expect(await plainClient.attempt(charge(userId))).toEqual(first);
      expect(plain.chargesOf(userId)).toHaveLength(1);
    }
  });

  it('declines with the provider’s reason: 402, 400, 422', async () => {
    expect(await plainClient.attempt(charge('carol-declined'))).toEqual({
      kind: 'declined',
      status: 402,
      reason: 'card_declined',
    });
    expect(await plainClient.attempt(charge('dave', 0))).toEqual({
      kind: 'declined',
      status: 400,
      reason: 'invalid_request: amount must be positive, got 0',
    });
    await plainClient.attempt(charge('erin', 100));
    expect(await plainClient.attempt(charge('erin', 200))).toMatchObject({
      kind: 'declined',
      status: 422,
      reason: expect.stringMatching(/^idempotency_key_reused: /),
    });
  });

  it('retries a 409 while the same key is still being processed: ambiguous, a conflict', async () => {
    const results = await Promise.all([
      plainClient.attempt(charge('frank')),
      plainClient.attempt(charge('frank')),
    ]);
    expect(results.map((result) => result.kind).sort()).toEqual(['charged', 'retry']);
    expect(results.find((result) => result.kind === 'retry')).toMatchObject({
      status: 409,
      ambiguous: true,
      conflict: true,
      throttled: false,
    });
    expect(plain.chargesOf('frank')).toHaveLength(1);
  });

  it('stops on 404 and 405, naming the endpoint', async () => {
    const wrongPath = client({ endpoint: `${plain.url}/nope`, connections: 1 });
    expect(await wrongPath.attempt(charge('gina'))).toEqual({
      kind: 'fatal',
      status: 404,
      reason: `404 Not Found from ${plain.url}/nope: check the endpoint URL`,
    });
    const wrongMethod = client({ endpoint: `${plain.url}/stats`, connections: 1 });
    expect(await wrongMethod.attempt(charge('gina'))).toMatchObject({
      kind: 'fatal',
      status: 405,
      reason: expect.stringContaining(`405 Method Not Allowed from ${plain.url}/stats`),
    });
  });

  it('authorizes with a header read from the environment, and stops on 401', async () => {
    const authed = await mock({ apiKey: API_KEY });
    const templates = parseHeaderFlags(['Authorization: Bearer ${BILLING_TOKEN}', 'X-Team: ops']);
    const good = client({
      endpoint: `${authed.url}/charge`,
      headers: resolveHeaders(templates, { BILLING_TOKEN: API_KEY }),
    });
    expect(await good.attempt(charge('hank'))).toMatchObject({ kind: 'charged', status: 200 });
    expect(good.describeHeaders()).toEqual({ Authorization: '[redacted]', 'X-Team': 'ops' });

    const bad = client({
      endpoint: `${authed.url}/charge`,
      headers: resolveHeaders(templates, { BILLING_TOKEN: 'wrong-key' }),
    });
    const result = await bad.attempt(charge('ivy'));
    expect(result).toEqual({
      kind: 'fatal',
      status: 401,
      reason: `401 Unauthorized from ${authed.url}/charge: check the Authorization header`,
    });
    expect(JSON.stringify(result)).not.toContain('wrong-key');
    expect(authed.stats()).toMatchObject({ unauthorized: 1, charges: 1 });
  });

  it('is throttled by a 429 with Retry-After', async () => {
    const limited = await mock({ rate: 1, burst: 1, clock: frozenClock });
    const limitedClient = client({ endpoint: `${limited.url}/charge` });
    expect(await limitedClient.attempt(charge('jack'))).toMatchObject({ kind: 'charged' });
    expect(await limitedClient.attempt(charge('kate'))).toEqual({
      kind: 'retry',
      status: 429,
      reason: '429 rate_limited: Too many requests.',
      ambiguous: false,
      throttled: true,
      retryAfterMs: 1_000,
    });
    expect(limited.stats()).toMatchObject({ rejected_429: 1, charges: 1 });
  });

  it('retries a 503 from a failing provider, not as throttling', async () => {
    const failing = await mock({ failRate: 1 });
    const failingClient = client({ endpoint: `${failing.url}/charge` });
    expect(await failingClient.attempt(charge('liam'))).toEqual({
      kind: 'retry',
      status: 503,
      reason: '503 service_unavailable: Try again.',
      ambiguous: false,
      throttled: false,
      retryAfterMs: undefined,
    });
    expect(failing.stats()).toMatchObject({ failed_503: 1, charges: 0 });
  });

  it('is throttled by a 503 with Retry-After from a provider at capacity', async () => {
    const full = await mock({ capacity: 1, latencyMs: 300 });
    const fullClient = client({ endpoint: `${full.url}/charge`, connections: 2 });
    const results = await Promise.all([
      fullClient.attempt(charge('mia')),
      fullClient.attempt(charge('noah')),
    ]);
    const kinds = results.map((result: AttemptResult) => result.kind).sort();
    expect(kinds).toEqual(['charged', 'retry']);
    expect(results.find((result) => result.kind === 'retry')).toMatchObject({
      status: 503,
      throttled: true,
      retryAfterMs: 1_000,
      ambiguous: false,
    });
  });

  it('flags a lost answer as ambiguous: the provider did charge', async () => {
    const lossy = await mock({ lostRate: 1 });
    const lossyClient = client({ endpoint: `${lossy.url}/charge` });
    const lost = await lossyClient.attempt(charge('olga'));
    expect(lost).toMatchObject({
      kind: 'retry',
      status: undefined,
      ambiguous: true,
      throttled: false,
      reason: expect.stringContaining('after the request was sent'),
    });
    expect(lossy.stats()).toMatchObject({ lost: 1, charges: 1 });
    // The retry, with the same key, learns the outcome without charging again.
    expect(await lossyClient.attempt(charge('olga'))).toMatchObject({ kind: 'charged' });
    expect(lossy.chargesOf('olga')).toHaveLength(1);
  });

  it('flags a timeout after sending as ambiguous, and one still queued as not', async () => {
    const slow = await mock({ latencyMs: 0, slowRate: 1, slowMs: 2_000 });
    // One connection: the second attempt waits behind the first and never gets sent.
    const slowClient = client({ endpoint: `${slow.url}/charge`, connections: 1, timeoutMs: 200 });
    const [sent, queued] = await Promise.all([
      slowClient.attempt(charge('pete')),
      slowClient.attempt(charge('quinn')),
    ]);
    expect(sent).toEqual({
      kind: 'retry',
      status: undefined,
      reason:
        'timeout: no answer within 200ms, after the request was sent: the provider may have charged',
      ambiguous: true,
      throttled: false,
      retryAfterMs: undefined,
    });
    expect(queued).toMatchObject({
      kind: 'retry',
      ambiguous: false,
      reason: 'timeout: no answer within 200ms, before the request was sent',
    });
    expect(slow.chargesOf('pete')).toHaveLength(1);
    // The retry gets the stored answer at once.
    expect(await slowClient.attempt(charge('pete'))).toMatchObject({ kind: 'charged' });
    await slowClient.close();
    expect(slow.stats()).toMatchObject({ requests: 2, charges: 1, replays: 1 });
  });

  it('retries a refused connection, not ambiguous', async () => {
    const port = await closedPort();
    const nowhere = client({ endpoint: `http://127.0.0.1:${port}/charge`, timeoutMs: 5_000 });
    expect(await nowhere.attempt(charge('rita'))).toMatchObject({
      kind: 'retry',
      status: undefined,
      ambiguous: false,
      throttled: false,
      reason: expect.stringMatching(
        /^connection error: .*\(ECONNREFUSED\), before the request was sent$/,
      ),
    });
  });

  it('refuses an attempt after close() as fatal, not sent', async () => {
    const closing = client({ endpoint: `${plain.url}/charge` });
    await closing.close();
    expect(await closing.attempt(charge('sam'))).toMatchObject({
      kind: 'fatal',
      status: undefined,
      reason: expect.stringMatching(
        /^the HTTP client refused the request: .*\(UND_ERR_(CLOSED|DESTROYED)\)$/,
      ),
    });
    expect(plain.chargesOf('sam')).toHaveLength(0);
  });
});

describe('ProviderClient options', () => {
  it('names the option and the value received', () => {
    const endpoint = 'http://127.0.0.1:1/charge';
    expect(() => new ProviderClient({ endpoint, connections: 0 })).toThrow(
      'Expected `connections` to be an integer >= 1, got 0 (number)',
    );
    expect(() => new ProviderClient({ endpoint, timeoutMs: -1 })).toThrow(
      'Expected `timeoutMs` to be a finite number > 0, got -1 (number)',
    );
    expect(() => new ProviderClient({ endpoint, maxRetryAfterMs: Number.NaN })).toThrow(
      /`maxRetryAfterMs`/,
    );
  });

  it('refuses endpoints it cannot use, without echoing credentials', () => {
    expect(() => new ProviderClient({ endpoint: 'not a url sk_live_1' })).toThrow(
      'endpoint: expected a URL such as http://127.0.0.1:4010/charge',
    );
    expect(() => new ProviderClient({ endpoint: 'ftp://host/charge' })).toThrow(
      'endpoint: expected an http or https URL, got ftp:',
    );
    let message = '';
    try {
      new ProviderClient({ endpoint: 'https://user:sk_live_1@host/charge' });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toMatch(/^endpoint: must not hold credentials/);
    expect(message).not.toContain('sk_live_1');
  });

  it('describes the endpoint without its query string', async () => {
    const withQuery = client({ endpoint: `${plain.url}/charge?api_key=sk_live_1` });
    expect(withQuery.endpoint).toBe(`${plain.url}/charge?…`);
    expect(await withQuery.attempt(charge('tom'))).toMatchObject({ kind: 'charged' });
  });
});
