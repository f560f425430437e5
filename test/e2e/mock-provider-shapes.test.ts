import { type Agent, request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { toMajorUnits } from '../../src/domain/money.js';
import {
  type MockProvider,
  type MockProviderOptions,
  type ShapeName,
  startMockProvider,
} from '../../src/mock-provider/index.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { getJson, testAgent } from '../helpers/http.js';

// One suite run against every shape (as hono runs one against every router): the same
// exactly-once bookkeeping and faults, each answered the way its provider answers them.

let agent: Agent;
const running: MockProvider[] = [];

beforeAll(() => {
  agent = testAgent();
});
afterEach(async () => {
  await Promise.all(running.splice(0).map((provider) => provider.close({ graceMs: 0 })));
});
afterAll(async () => {
  await agent.close();
});

interface Charge {
  readonly userId: string;
  readonly key: string;
  readonly amount?: number;
  readonly currency?: string;
}

interface Wire {
  readonly headers: Record<string, string>;
  readonly body: string;
}

interface Reply {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
  readonly json: unknown;
}

/** The value at a dotted path (`error.errors.0.reason`), or undefined. */
function at(value: unknown, path: string): unknown {
  let current = value;
  for (const part of path.split('.')) {
    if (typeof current !== 'object' || current === null) return undefined;
    current = (current as Record<string, unknown>)[part];
  }
  return current;
}

/** An expected answer: its status, and what its body must hold (dotted path → value). */
interface Expected {
  readonly status: number;
  readonly fields?: Record<string, unknown>;
  readonly header?: Record<string, string>;
  /** The answer is the first one again. */
  readonly replay?: true;
}

interface ShapeCase {
  readonly shape: ShapeName;
  readonly keyLimit: number;
  wire(charge: Charge): Wire;
  auth(apiKey: string): Record<string, string>;
  readonly charged: Expected;
  /** Where a charged answer (and the ledger) names the charge. */
  readonly idPath: string;
  readonly declined: Expected;
  /** Whether a decline is kept for its key (false: a retry is processed again). */
  readonly declineReplays: boolean;
  readonly replayed: Expected;
  readonly inProgress: Expected;
  readonly reused: Expected;
  readonly badKey: Expected;
  readonly unauthorized: Expected;
  readonly rateLimited: Expected;
  readonly overloaded: Expected;
  readonly unavailable: Expected;
}

const json = (headers: Record<string, string> = {}) => ({
  'content-type': 'application/json',
  ...headers,
});
const bearer = (apiKey: string) => ({ authorization: `Bearer ${apiKey}` });

const CASES: readonly ShapeCase[] = [
  {
    shape: 'default',
    keyLimit: 255,
    wire: ({ userId, key, amount = 1999, currency = 'USD' }) => ({
      headers: json({ 'idempotency-key': key }),
      body: JSON.stringify({ user_id: userId, amount, currency }),
    }),
    auth: bearer,
    charged: { status: 200, fields: { status: 'succeeded' } },
    idPath: 'id',
    declined: { status: 402, fields: { error: 'card_declined' } },
    declineReplays: true,
    replayed: { status: 200, replay: true, header: { 'idempotent-replayed': 'true' } },
    inProgress: { status: 409, fields: { error: 'idempotency_key_in_use' } },
    reused: { status: 422, fields: { error: 'idempotency_key_reused' } },
    badKey: { status: 400, fields: { field: 'Idempotency-Key' } },
    unauthorized: { status: 401, fields: { error: 'unauthorized' } },
    rateLimited: { status: 429, fields: { error: 'rate_limited' } },
    overloaded: { status: 503, fields: { error: 'overloaded' } },
    unavailable: { status: 503, fields: { error: 'service_unavailable' } },
  },
  {
    shape: 'stripe',
    keyLimit: 255,
    wire: ({ userId, key, amount = 1999, currency = 'USD' }) => ({
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'idempotency-key': key },
      body: `amount=${amount}&currency=${currency.toLowerCase()}&confirm=true&payment_method=pm_card_visa&metadata[user_id]=${encodeURIComponent(userId)}`,
    }),
    auth: bearer,
    charged: { status: 200, fields: { object: 'payment_intent', status: 'succeeded' } },
    idPath: 'id',
    declined: {
      status: 402,
      fields: { 'error.type': 'card_error', 'error.code': 'card_declined' },
    },
    declineReplays: true,
    replayed: { status: 200, replay: true, header: { 'idempotent-replayed': 'true' } },
    inProgress: {
      status: 409,
      fields: { 'error.type': 'invalid_request_error', 'error.code': 'idempotency_key_in_use' },
    },
    reused: { status: 400, fields: { 'error.type': 'idempotency_error' } },
    badKey: { status: 400, fields: { 'error.type': 'invalid_request_error' } },
    unauthorized: { status: 401, fields: { 'error.type': 'invalid_request_error' } },
    rateLimited: { status: 429, fields: { 'error.code': 'rate_limit' } },
    overloaded: { status: 429, fields: { 'error.code': 'rate_limit' } },
    unavailable: {
      status: 503,
      fields: { 'error.type': 'api_error' },
      header: { 'stripe-should-retry': 'true' },
    },
  },
  {
    shape: 'adyen',
    keyLimit: 64,
    wire: ({ userId, key, amount = 1999, currency = 'EUR' }) => ({
      headers: json({ 'idempotency-key': key }),
      body: JSON.stringify({
        amount: { value: amount, currency },
        reference: `cycle-${userId}`,
        merchantAccount: 'MockMerchantECOM',
        shopperReference: userId,
        paymentMethod: { type: 'scheme', storedPaymentMethodId: 'M5N7TQ4TG5PFWR50' },
        shopperInteraction: 'ContAuth',
        recurringProcessingModel: 'Subscription',
      }),
    }),
    auth: (apiKey) => ({ 'x-api-key': apiKey }),
    charged: { status: 200, fields: { resultCode: 'Authorised' } },
    idPath: 'pspReference',
    declined: { status: 200, fields: { resultCode: 'Refused' } },
    declineReplays: true,
    replayed: { status: 200, replay: true },
    inProgress: {
      status: 409,
      fields: { errorCode: '704', errorType: 'validation' },
      header: { 'transient-error': 'true' },
    },
    reused: { status: 200, replay: true },
    badKey: { status: 422, fields: { errorType: 'validation' } },
    unauthorized: { status: 401, fields: { errorType: 'security' } },
    rateLimited: { status: 429, fields: { status: 429 } },
    overloaded: { status: 503, fields: { status: 503 } },
    unavailable: { status: 500, fields: { errorCode: '701' } },
  },
  {
    shape: 'braintree',
    keyLimit: 255,
    wire: ({ userId, key, amount = 1999, currency = 'USD' }) => ({
      headers: json({ 'braintree-version': '2019-01-01' }),
      body: JSON.stringify({
        query:
          'mutation Charge($input: ChargePaymentMethodInput!) { chargePaymentMethod(input: $input) { transaction { id status amount { value currencyCode } } } }',
        variables: {
          input: {
            paymentMethodId: 'cGF5bWVudG1ldGhvZF9jY19tb2Nr',
            apiRequestKey: key,
            transaction: {
              amount: toMajorUnits(amount, currency),
              orderId: userId,
              merchantAccountId: currency.toLowerCase(),
            },
          },
        },
      }),
    }),
    auth: (apiKey) => ({ authorization: `Basic ${Buffer.from(apiKey).toString('base64')}` }),
    charged: {
      status: 200,
      fields: { 'data.chargePaymentMethod.transaction.status': 'SUBMITTED_FOR_SETTLEMENT' },
    },
    idPath: 'data.chargePaymentMethod.transaction.id',
    declined: {
      status: 200,
      fields: { 'data.chargePaymentMethod.transaction.status': 'PROCESSOR_DECLINED' },
    },
    declineReplays: true,
    replayed: { status: 200, replay: true },
    inProgress: {
      status: 200,
      fields: { 'errors.0.extensions.errorClass': 'VALIDATION', 'data.chargePaymentMethod': null },
    },
    reused: { status: 200, fields: { 'errors.0.extensions.errorClass': 'VALIDATION' } },
    badKey: {
      status: 200,
      fields: {
        'errors.0.extensions.errorClass': 'VALIDATION',
        'errors.0.extensions.inputPath.1': 'apiRequestKey',
      },
    },
    unauthorized: { status: 200, fields: { 'errors.0.extensions.errorClass': 'AUTHENTICATION' } },
    rateLimited: { status: 200, fields: { 'errors.0.extensions.errorClass': 'RESOURCE_LIMIT' } },
    overloaded: {
      status: 200,
      fields: { 'errors.0.extensions.errorClass': 'SERVICE_AVAILABILITY' },
    },
    unavailable: {
      status: 200,
      fields: { 'errors.0.extensions.errorClass': 'SERVICE_AVAILABILITY' },
    },
  },
  {
    shape: 'square',
    keyLimit: 45,
    wire: ({ userId, key, amount = 1999, currency = 'USD' }) => ({
      headers: json({ 'square-version': '2025-08-20' }),
      body: JSON.stringify({
        source_id: 'ccof:customer-card-id-ok',
        idempotency_key: key,
        amount_money: { amount, currency },
        reference_id: userId,
        autocomplete: true,
      }),
    }),
    auth: bearer,
    charged: { status: 200, fields: { 'payment.status': 'COMPLETED' } },
    idPath: 'payment.id',
    declined: {
      status: 402,
      fields: { 'errors.0.category': 'PAYMENT_METHOD_ERROR', 'payment.status': 'FAILED' },
    },
    declineReplays: true,
    replayed: { status: 200, replay: true },
    inProgress: { status: 409, fields: { 'errors.0.code': 'CONFLICT' } },
    reused: { status: 400, fields: { 'errors.0.code': 'IDEMPOTENCY_KEY_REUSED' } },
    badKey: {
      status: 400,
      fields: { 'errors.0.code': 'VALUE_TOO_LONG', 'errors.0.field': 'idempotency_key' },
    },
    unauthorized: { status: 401, fields: { 'errors.0.category': 'AUTHENTICATION_ERROR' } },
    rateLimited: { status: 429, fields: { 'errors.0.category': 'RATE_LIMIT_ERROR' } },
    overloaded: { status: 503, fields: { 'errors.0.category': 'API_ERROR' } },
    unavailable: { status: 500, fields: { 'errors.0.category': 'API_ERROR' } },
  },
  {
    shape: 'checkout',
    keyLimit: 255,
    wire: ({ userId, key, amount = 1999, currency = 'GBP' }) => ({
      headers: json({ 'cko-idempotency-key': key }),
      body: JSON.stringify({
        source: { type: 'id', id: 'src_nwd3m4in3hkuddfpjsaevunhdy' },
        amount,
        currency,
        reference: userId,
        metadata: { cycle: '2026-11' },
      }),
    }),
    auth: bearer,
    charged: { status: 201, fields: { approved: true, status: 'Authorized' } },
    idPath: 'id',
    declined: { status: 201, fields: { approved: false, status: 'Declined' } },
    declineReplays: true,
    replayed: { status: 201, replay: true },
    inProgress: { status: 409 },
    reused: { status: 201, replay: true },
    badKey: { status: 422, fields: { error_type: 'request_invalid' } },
    unauthorized: { status: 401 },
    rateLimited: { status: 429 },
    overloaded: { status: 503 },
    unavailable: { status: 503 },
  },
  {
    shape: 'gocardless',
    keyLimit: 255,
    wire: ({ userId, key, amount = 1999, currency = 'GBP' }) => ({
      headers: json({ 'idempotency-key': key, 'gocardless-version': '2015-07-06' }),
      body: JSON.stringify({
        payments: {
          amount,
          currency,
          links: { mandate: 'MD000MOCK00001' },
          metadata: { user_id: userId },
        },
      }),
    }),
    auth: bearer,
    charged: { status: 201, fields: { 'payments.status': 'pending_submission' } },
    idPath: 'payments.id',
    declined: {
      status: 422,
      fields: { 'error.type': 'invalid_state', 'error.errors.0.reason': 'mandate_is_inactive' },
    },
    declineReplays: false,
    replayed: {
      status: 409,
      fields: { 'error.errors.0.reason': 'idempotent_creation_conflict' },
    },
    inProgress: {
      status: 409,
      fields: { 'error.errors.0.reason': 'idempotent_request_in_progress' },
    },
    reused: { status: 409, fields: { 'error.errors.0.reason': 'idempotent_creation_conflict' } },
    badKey: { status: 400, fields: { 'error.type': 'invalid_api_usage' } },
    unauthorized: { status: 401, fields: { 'error.type': 'invalid_api_usage' } },
    rateLimited: { status: 429, fields: { 'error.errors.0.reason': 'rate_limit_exceeded' } },
    overloaded: { status: 503, fields: { 'error.type': 'gocardless' } },
    unavailable: { status: 500, fields: { 'error.type': 'gocardless' } },
  },
];

async function start(shape: ShapeName, options: MockProviderOptions = {}): Promise<MockProvider> {
  const provider = await startMockProvider({
    port: 0,
    latencyMs: 0,
    jitter: 0,
    seed: 1,
    shape,
    ...options,
  });
  running.push(provider);
  return provider;
}

async function send(
  provider: MockProvider,
  wire: Wire,
  extraHeaders: Record<string, string> = {},
): Promise<Reply> {
  const response = await request(provider.chargeUrl, {
    dispatcher: agent,
    method: 'POST',
    headers: { ...wire.headers, ...extraHeaders },
    body: wire.body,
  });
  const body = await response.body.text();
  return {
    status: response.statusCode,
    headers: response.headers,
    body,
    json: body === '' ? undefined : JSON.parse(body),
  };
}

function expectAnswer(reply: Reply, expected: Expected, first?: Reply): void {
  expect(reply.status, reply.body).toBe(expected.status);
  for (const [path, value] of Object.entries(expected.fields ?? {})) {
    expect(at(reply.json, path), `${path} in ${reply.body}`).toEqual(value);
  }
  for (const [name, value] of Object.entries(expected.header ?? {})) {
    expect(reply.headers[name], name).toBe(value);
  }
  if (expected.replay) expect(reply.body).toBe(first?.body);
}

describe.each(CASES)('shape $shape', (shapeCase) => {
  const { shape } = shapeCase;

  it('charges once and replays a repeated key, charging nothing more', async () => {
    const provider = await start(shape);
    const wire = shapeCase.wire({ userId: 'alice', key: 'cycle:alice' });
    const first = await send(provider, wire);
    expectAnswer(first, shapeCase.charged);
    const chargeId = at(first.json, shapeCase.idPath);
    expect(typeof chargeId).toBe('string');
    const again = await send(provider, wire);
    expectAnswer(again, shapeCase.replayed, first);
    if (shape === 'gocardless') {
      expect(at(again.json, 'error.errors.0.links.conflicting_resource_id')).toBe(chargeId);
    }
    expect(provider.chargesOf('alice')).toEqual([chargeId]);
    expect(provider.stats()).toMatchObject({ requests: 2, charges: 1, replays: 1 });
  });

  it('declines the way its provider does, and keeps the decline for the key or not', async () => {
    const provider = await start(shape, { declineSuffix: '_nope' });
    const wire = shapeCase.wire({ userId: 'zoe_nope', key: 'cycle:zoe' });
    const first = await send(provider, wire);
    expectAnswer(first, shapeCase.declined);
    const again = await send(provider, wire);
    if (shapeCase.declineReplays) {
      expect(again.body).toBe(first.body);
      expect(provider.stats()).toMatchObject({ declined: 1, replays: 1, charges: 0 });
    } else {
      expectAnswer(again, shapeCase.declined);
      expect(provider.stats()).toMatchObject({ declined: 2, replays: 0, charges: 0 });
    }
  });

  it('answers a key still in progress its way, charging once', async () => {
    const provider = await start(shape, { latencyMs: 100 });
    const wire = shapeCase.wire({ userId: 'carol', key: 'cycle:carol' });
    const answers = await Promise.all([send(provider, wire), send(provider, wire)]);
    const done = answers.find(
      (answer) =>
        answer.status === shapeCase.charged.status &&
        answer.json &&
        at(answer.json, shapeCase.idPath) !== undefined,
    );
    const waiting = answers.find((answer) => answer !== done) as Reply;
    expect(done, answers.map((answer) => answer.body).join('\n')).toBeDefined();
    expectAnswer(waiting, shapeCase.inProgress);
    expect(provider.stats()).toMatchObject({ charges: 1, conflicts: 1, duplicate_charges: 0 });
  });

  it('answers a key reused with another body its way, charging nothing more', async () => {
    const provider = await start(shape);
    const first = await send(provider, shapeCase.wire({ userId: 'dave', key: 'cycle:dave' }));
    const other = shapeCase.wire({ userId: 'dave', key: 'cycle:dave', amount: 2000 });
    const reused = await send(provider, other);
    expectAnswer(reused, shapeCase.reused, first);
    expect(provider.stats()).toMatchObject({ charges: 1, mismatches: 1 });
  });

  it(`refuses a key over ${shapeCase.keyLimit} characters and takes one of exactly that`, async () => {
    const provider = await start(shape);
    const long = 'k'.repeat(shapeCase.keyLimit + 1);
    expectAnswer(
      await send(provider, shapeCase.wire({ userId: 'erin', key: long })),
      shapeCase.badKey,
    );
    const longest = 'k'.repeat(shapeCase.keyLimit);
    expectAnswer(
      await send(provider, shapeCase.wire({ userId: 'erin', key: longest })),
      shapeCase.charged,
    );
    expect(provider.stats()).toMatchObject({ invalid: 1, charges: 1 });
  });

  it('requires the API key its provider way and never echoes it', async () => {
    const secret = 'sk_test_mock_secret_4242';
    const provider = await start(shape, { apiKey: secret });
    const wire = shapeCase.wire({ userId: 'frank', key: 'cycle:frank' });
    const missing = await send(provider, wire);
    const wrong = await send(provider, wire, shapeCase.auth('sk_test_wrong'));
    for (const answer of [missing, wrong]) {
      expectAnswer(answer, shapeCase.unauthorized);
      expect(answer.body).not.toContain(secret);
      expect(JSON.stringify(answer.headers)).not.toContain(secret);
    }
    expectAnswer(await send(provider, wire, shapeCase.auth(secret)), shapeCase.charged);
    expect(provider.stats()).toMatchObject({ unauthorized: 2, charges: 1 });
  });

  it('answers past the rate limit its way, with Retry-After', async () => {
    const clock = new FakeClock();
    const provider = await start(shape, { rate: 1, burst: 1, clock });
    expectAnswer(
      await send(provider, shapeCase.wire({ userId: 'gina', key: 'g' })),
      shapeCase.charged,
    );
    const limited = await send(provider, shapeCase.wire({ userId: 'hank', key: 'h' }));
    expectAnswer(limited, shapeCase.rateLimited);
    expect(limited.headers['retry-after']).toBe('1');
    clock.advance(1_000);
    expectAnswer(
      await send(provider, shapeCase.wire({ userId: 'hank', key: 'h' })),
      shapeCase.charged,
    );
  });

  it('answers --fail-rate its way, storing nothing for the key', async () => {
    const provider = await start(shape, { failRate: 1 });
    const wire = shapeCase.wire({ userId: 'ivan', key: 'cycle:ivan' });
    expectAnswer(await send(provider, wire), shapeCase.unavailable);
    expectAnswer(await send(provider, wire), shapeCase.unavailable);
    expect(provider.stats()).toMatchObject({ failed_503: 2, replays: 0, charges: 0 });
  });

  it('answers past capacity its way, with Retry-After: 1', async () => {
    const provider = await start(shape, { capacity: 1, latencyMs: 100 });
    const answers = await Promise.all([
      send(provider, shapeCase.wire({ userId: 'judy', key: 'j' })),
      send(provider, shapeCase.wire({ userId: 'kurt', key: 'k' })),
    ]);
    const refused = answers.filter((answer) => answer.headers['retry-after'] === '1');
    expect(refused).toHaveLength(1);
    expectAnswer(refused[0] as Reply, shapeCase.overloaded);
    expect(provider.stats()).toMatchObject({ rejected_503: 1, charges: 1 });
    // Nothing was stored for the refused key: it charges now.
    const user = answers[0] === refused[0] ? 'judy' : 'kurt';
    const retry = await send(provider, shapeCase.wire({ userId: user, key: user[0] as string }));
    expectAnswer(retry, shapeCase.charged);
  });

  it('keeps the admin routes: /stats, /charges/:user_id, /reset', async () => {
    const provider = await start(shape);
    const userId = 'a b:ü';
    const first = await send(provider, shapeCase.wire({ userId, key: 'cycle:ab' }));
    const chargeId = at(first.json, shapeCase.idPath);
    const ledger = await getJson(agent, `${provider.url}/charges/${encodeURIComponent(userId)}`);
    expect(ledger).toEqual({ user_id: userId, charges: 1, ids: [chargeId] });
    expect(await getJson(agent, `${provider.url}/stats`)).toMatchObject({ charges: 1, seed: 1 });
    const reset = await request(`${provider.url}/reset`, { dispatcher: agent, method: 'POST' });
    expect(reset.statusCode).toBe(200);
    await reset.body.dump();
    expect(provider.stats()).toMatchObject({ requests: 0, charges: 0 });
    const after = await send(provider, shapeCase.wire({ userId, key: 'cycle:ab' }));
    expectAnswer(after, shapeCase.charged);
    expect(at(after.json, shapeCase.idPath)).not.toBe(chargeId);
  });

  it('answers 405 on its charge route to GET and 404 elsewhere', async () => {
    const provider = await start(shape);
    const wrong = await request(provider.chargeUrl, { dispatcher: agent });
    const missing = await request(`${provider.url}/nope`, { dispatcher: agent });
    expect([wrong.statusCode, missing.statusCode]).toEqual([405, 404]);
    await Promise.all([wrong.body.dump(), missing.body.dump()]);
  });
});

describe('shape details', () => {
  it('stripe: takes any case of currency, answers it lower case, and a retry in another case replays', async () => {
    const provider = await start('stripe');
    const stripe = CASES[1] as ShapeCase;
    const upper = stripe.wire({ userId: 'lena', key: 'cycle:lena', currency: 'EUR' });
    const first = await send(provider, {
      ...upper,
      body: upper.body.replace('currency=eur', 'currency=EUR'),
    });
    expect(at(first.json, 'currency')).toBe('eur');
    expect(first.headers['request-id']).toMatch(/^req_/);
    const again = await send(provider, upper);
    expect(again.body).toBe(first.body);
    expect(again.headers['original-request']).toBe(first.headers['request-id']);
    expect(provider.stats()).toMatchObject({ charges: 1, replays: 1, mismatches: 0 });
  });

  it('adyen: serves the /v72 path the library posts to, and echoes the key', async () => {
    const provider = await start('adyen');
    const adyen = CASES[2] as ShapeCase;
    const response = await request(`${provider.url}/v72/payments`, {
      dispatcher: agent,
      method: 'POST',
      ...adyen.wire({ userId: 'milo', key: 'cycle:milo' }),
    });
    expect(response.statusCode).toBe(200);
    expect(response.headers['idempotency-key']).toBe('cycle:milo');
    expect(await response.body.json()).toMatchObject({ resultCode: 'Authorised' });
  });

  it.each([
    ['JPY', 1200, '1200'],
    ['KWD', 1234, '1.234'],
    ['USD', 5, '0.05'],
  ])(
    'braintree: reads %s amounts in major units from the merchant account',
    async (currency, amount, text) => {
      const provider = await start('braintree');
      const braintree = CASES[3] as ShapeCase;
      const answer = await send(
        provider,
        braintree.wire({ userId: 'nora', key: 'n', amount, currency }),
      );
      expect(at(answer.json, 'data.chargePaymentMethod.transaction.amount')).toEqual({
        value: text,
        currencyCode: currency,
      });
    },
  );

  it('braintree: refuses an amount with more decimals than the currency has', async () => {
    const provider = await start('braintree');
    const braintree = CASES[3] as ShapeCase;
    const wire = braintree.wire({ userId: 'otto', key: 'o' });
    const answer = await send(provider, {
      ...wire,
      body: wire.body.replace('"19.99"', '"19.999"'),
    });
    expect(answer.status).toBe(200);
    expect(at(answer.json, 'errors.0.extensions')).toMatchObject({
      errorClass: 'VALIDATION',
      legacyCode: '81503',
    });
    expect(provider.stats()).toMatchObject({ invalid: 1, charges: 0 });
  });

  it('checkout: declines with a seeded mix of soft (20xxx) and hard (30xxx) codes', async () => {
    const provider = await start('checkout', { declineRate: 1, seed: 9 });
    const checkout = CASES[5] as ShapeCase;
    const codes = new Set<string>();
    for (let index = 0; index < 40; index++) {
      const answer = await send(provider, checkout.wire({ userId: `u${index}`, key: `k${index}` }));
      codes.add(String(at(answer.json, 'response_code')).slice(0, 1));
    }
    expect([...codes].sort()).toEqual(['2', '3']);
  });

  it('square: refuses a reference_id over its 40 characters and a missing key', async () => {
    const provider = await start('square');
    const square = CASES[4] as ShapeCase;
    const long = await send(provider, square.wire({ userId: 'u'.repeat(41), key: 'k' }));
    expect(long.status).toBe(400);
    expect(at(long.json, 'errors.0')).toMatchObject({
      code: 'VALUE_TOO_LONG',
      field: 'reference_id',
    });
    const wire = square.wire({ userId: 'pia', key: 'k' });
    const keyless = await send(provider, {
      ...wire,
      body: wire.body.replace('"idempotency_key":"k",', ''),
    });
    expect(at(keyless.json, 'errors.0')).toMatchObject({
      code: 'MISSING_REQUIRED_PARAMETER',
      field: 'idempotency_key',
    });
  });
});
