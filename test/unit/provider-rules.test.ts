import { describe, expect, it } from 'vitest';
import { decideRetry, resolveRetryPolicy } from '../../src/control/retry-policy.js';
import type { ProviderAnswer } from '../../src/provider/classify.js';
import { type ProviderDescriptionInput, providerSchema } from '../../src/provider/description.js';
import { maskSecrets, secretFragments } from '../../src/provider/header-template.js';
import { compileRules } from '../../src/provider/rules.js';

const NOW = Date.parse('2026-12-02T03:00:00Z');
const context = {
  endpoint: 'https://pay.example/x',
  wallClock: { now: () => NOW },
  maxRetryAfterMs: 300_000,
};

function rules(response: ProviderDescriptionInput['response']) {
  return compileRules(providerSchema.parse({ response }).response, context);
}

function answer(
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): ProviderAnswer {
  return {
    type: 'answer',
    status,
    retryAfter: headers['retry-after'],
    body: typeof body === 'string' ? body : JSON.stringify(body),
    headers,
  };
}

describe('response rules', () => {
  it('reads a 2xx whose body says refused as a decline (Adyen), with its reason', () => {
    const classify = rules({
      rules: [
        {
          status: '2xx',
          body: { path: '$.resultCode', in: ['Refused', 'Error'] },
          outcome: 'declined',
          reason: '$.refusalReason',
        },
      ],
      chargeId: { success: '$.pspReference' },
    });
    expect(
      classify(
        answer(200, {
          resultCode: 'Refused',
          refusalReason: 'Not enough balance',
          pspReference: 'P1',
        }),
      ),
    ).toEqual({
      kind: 'declined',
      status: 200,
      reason: 'Not enough balance',
    });
    expect(classify(answer(200, { resultCode: 'Authorised', pspReference: 'P2' }))).toEqual({
      kind: 'charged',
      status: 200,
      chargeId: 'P2',
    });
  });

  it('retries a 2xx whose body broke off before a body rule could read it, as ambiguous (Adyen)', () => {
    const classify = rules({
      rules: [
        {
          status: '2xx',
          body: { path: '$.resultCode', in: ['Refused', 'Error'] },
          outcome: 'declined',
          reason: '$.refusalReason',
        },
      ],
      chargeId: { success: '$.pspReference' },
    });
    // A reset mid-answer: the pspReference came, the resultCode did not. Refused or Authorised?
    const cut = { ...answer(200, '{"pspReference":"P9","resultCo'), truncated: true };
    expect(classify(cut)).toEqual({
      kind: 'retry',
      status: 200,
      reason:
        '200 OK, its body cut off before the response rules could read it: the provider may have charged',
      ambiguous: true,
      throttled: false,
      retryAfterMs: undefined,
    });
    // Cut off past what the rule reads: it still decides.
    const late = {
      ...answer(200, '{"resultCode":"Refused","refusalReason":"Expired Card"}'),
      truncated: true,
    };
    expect(classify(late)).toMatchObject({ kind: 'declined', reason: 'Expired Card' });
    // Whole, and no JSON: no rule matches, and a 2xx is a charge, as before.
    expect(classify(answer(200, 'OK'))).toMatchObject({ kind: 'charged' });
    // A status no body rule reads is not held up by a cut body.
    expect(classify({ ...answer(402, '{"message":"decl'), truncated: true })).toMatchObject({
      kind: 'declined',
    });
  });

  it('masks echoed credentials in reasons before they are cut, and reads the answer unmasked', () => {
    const secret = 'sk_live_canary_0123456789abcdef';
    const fragments = secretFragments([
      { name: 'Authorization', value: `Bearer ${secret}`, sensitive: true },
      // A short sensitive value: masked in reasons, never in what the rules read.
      { name: 'X-Shard', value: '1', sensitive: true },
    ]);
    const classify = compileRules(
      providerSchema.parse({
        response: {
          rules: [
            {
              status: '2xx',
              body: { path: '$.resultCode', in: ['Refused'] },
              outcome: 'declined',
              reason: '$.refusalReason',
            },
          ],
          chargeId: { success: '$.pspReference' },
        },
      }).response,
      { ...context, mask: (text) => maskSecrets(text, fragments) },
    );
    // The secret straddles the 200-character cut: no part of it is left.
    const said = `${'x'.repeat(180)} key ${secret} refused`;
    const result = classify(
      answer(200, { pspReference: 'P1', resultCode: 'Refused', refusalReason: said, amount: 100 }),
    );
    expect(result.kind).toBe('declined');
    const reason = result.kind === 'declined' ? result.reason : '';
    expect(reason).toContain('[redacted]');
    expect(reason).not.toContain(secret.slice(0, 8));
    expect(classify(answer(200, { pspReference: 'P21', resultCode: 'Authorised' }))).toEqual({
      kind: 'charged',
      status: 200,
      chargeId: 'P21',
    });
  });

  it('without body rules, a 2xx is a charge however its body ends (the status says so)', () => {
    const classify = rules({ chargeId: { success: '$.pspReference' } });
    expect(classify({ ...answer(200, '{"pspReference":"P9","resultCo'), truncated: true })).toEqual(
      { kind: 'charged', status: 200, chargeId: 'P9' },
    );
  });

  it('tells soft declines from hard ones by a prefix (Checkout.com response codes)', () => {
    const classify = rules({
      rules: [
        {
          status: '2xx',
          body: [
            { path: '$.approved', equals: false },
            { path: '$.response_code', prefix: '20' },
          ],
          outcome: 'soft_declined',
          reason: '$.response_summary',
        },
        {
          status: '2xx',
          body: { path: '$.approved', equals: false },
          outcome: 'declined',
          reason: ['$.response_summary', '$.response_code'],
        },
      ],
    });
    expect(
      classify(
        answer(201, {
          approved: false,
          response_code: '20051',
          response_summary: 'Insufficient Funds',
        }),
      ),
    ).toEqual({
      kind: 'declined',
      status: 201,
      reason: 'soft decline: Insufficient Funds',
    });
    expect(classify(answer(201, { approved: false, response_code: '30044' }))).toEqual({
      kind: 'declined',
      status: 201,
      reason: '30044',
    });
    expect(classify(answer(201, { approved: true, id: 'pay_1' }))).toMatchObject({
      kind: 'charged',
      chargeId: 'pay_1',
    });
  });

  it('takes a 409 that names the charge made with the key as charged, with that id (GoCardless)', () => {
    const classify = rules({
      rules: [
        {
          status: 409,
          body: { path: '$.error.errors[0].reason', equals: 'idempotent_creation_conflict' },
          outcome: 'charged',
        },
      ],
      chargeId: {
        success: '$.payments.id',
        failure: '$.error.errors[0].links.conflicting_resource_id',
      },
    });
    const conflict = {
      error: {
        type: 'invalid_state',
        errors: [
          { reason: 'idempotent_creation_conflict', links: { conflicting_resource_id: 'PM123' } },
        ],
      },
    };
    expect(classify(answer(409, conflict))).toEqual({
      kind: 'charged',
      status: 409,
      chargeId: 'PM123',
    });
    expect(classify(answer(201, { payments: { id: 'PM9' } }))).toEqual({
      kind: 'charged',
      status: 201,
      chargeId: 'PM9',
    });
    // Any other 409 is still "key in use": retried, ambiguous.
    expect(classify(answer(409, { error: { errors: [{ reason: 'other' }] } }))).toMatchObject({
      kind: 'retry',
      ambiguous: true,
      conflict: true,
    });
  });

  it('falls back to the default classification, reading reasons where the description says', () => {
    const classify = rules({ reason: ['$.error.decline_code', '$.error.message'] });
    expect(
      classify(
        answer(402, {
          error: {
            decline_code: 'insufficient_funds',
            message: 'Your card has insufficient funds.',
          },
        }),
      ),
    ).toEqual({
      kind: 'declined',
      status: 402,
      reason: 'insufficient_funds',
    });
    expect(classify(answer(500, { error: { message: 'boom' } }))).toMatchObject({
      kind: 'retry',
      ambiguous: true,
      reason: '500 boom',
    });
    expect(
      classify(answer(401, { error: { message: 'Invalid API Key provided: sk_live_SECRET' } })),
    ).toEqual({
      kind: 'fatal',
      status: 401,
      reason: expect.not.stringContaining('SECRET'),
    });
  });

  it('matches errors[] in a 200 (GraphQL) and a header condition', () => {
    const classify = rules({
      rules: [
        {
          status: 200,
          body: { path: '$.errors[0].extensions.errorClass', equals: 'VALIDATION' },
          outcome: 'declined',
          reason: '$.errors[0].message',
        },
        {
          status: 200,
          body: { path: '$.errors', exists: true },
          outcome: 'ambiguous',
          reason: '$.errors[0].message',
        },
        { status: 503, header: { name: 'X-Maintenance', equals: 'true' }, outcome: 'retry' },
      ],
    });
    expect(
      classify(
        answer(200, {
          errors: [{ message: 'Amount is invalid', extensions: { errorClass: 'VALIDATION' } }],
        }),
      ),
    ).toEqual({
      kind: 'declined',
      status: 200,
      reason: 'Amount is invalid',
    });
    expect(
      classify(
        answer(200, {
          errors: [{ message: 'Internal', extensions: { errorClass: 'INTERNAL' } }],
          data: null,
        }),
      ),
    ).toMatchObject({
      kind: 'retry',
      ambiguous: true,
      reason: '200 Internal',
    });
    expect(classify(answer(503, '', { 'x-maintenance': 'true' }))).toMatchObject({
      kind: 'retry',
      ambiguous: false,
    });
  });

  it('an in_progress rule waits for the key like a 409, whatever the status', () => {
    const classify = rules({
      rules: [
        {
          status: 200,
          body: { path: '$.errors[0].extensions.inputPath[1]', equals: 'apiRequestKey' },
          outcome: 'in_progress',
        },
      ],
    });
    const busy = {
      errors: [
        {
          message: 'still being processed',
          extensions: { errorClass: 'VALIDATION', inputPath: ['input', 'apiRequestKey'] },
        },
      ],
    };
    expect(classify(answer(200, busy))).toMatchObject({
      kind: 'retry',
      ambiguous: true,
      conflict: true,
      throttled: false,
    });
  });

  it('a fatal rule stops the run without quoting the body', () => {
    const classify = rules({
      rules: [
        {
          status: 400,
          body: { path: '$.error.code', equals: 'api_key_expired' },
          outcome: 'fatal',
        },
      ],
    });
    const result = classify(
      answer(400, { error: { code: 'api_key_expired', message: 'key sk_live_SECRET expired' } }),
    );
    expect(result).toMatchObject({ kind: 'fatal', status: 400 });
    expect(result.kind === 'fatal' && result.reason).toMatch(
      /response rule 1 says the run is misconfigured/,
    );
    expect(JSON.stringify(result)).not.toContain('SECRET');
  });
});

describe('provider retry hints', () => {
  const policy = resolveRetryPolicy({ maxAttempts: 5 });
  const stripe = rules({
    shouldRetryHeader: 'Stripe-Should-Retry',
    rateLimitResetHeaders: ['RateLimit-Reset', 'X-RateLimit-Reset'],
  });

  it('Stripe-Should-Retry: false ends a retry now (unknown, as a 500 may have charged)', () => {
    const result = stripe(
      answer(500, { error: { type: 'api_error' } }, { 'stripe-should-retry': 'false' }),
    );
    expect(result).toMatchObject({ kind: 'retry', ambiguous: true, final: true });
    const decision = decideRetry(policy, { attempts: 0, ambiguous: false }, result, () => 0.5);
    expect(decision).toMatchObject({ action: 'finish', state: 'unknown', attempts: 1 });
    expect(decision.action === 'finish' && decision.reason).toMatch(/said not to retry/);
    // Not a throttle or a 409: those only say "not now".
    expect(stripe(answer(409, {}, { 'stripe-should-retry': 'false' }))).not.toHaveProperty('final');
  });

  it('Stripe-Should-Retry: true retries what would be a decline', () => {
    expect(
      stripe(answer(400, { error: { code: 'lock_timeout' } }, { 'stripe-should-retry': 'true' })),
    ).toMatchObject({
      kind: 'retry',
      ambiguous: false,
      status: 400,
    });
  });

  it('reads a rate-limit reset when a 429 has no Retry-After: seconds, or epoch seconds', () => {
    expect(stripe(answer(429, {}, { 'ratelimit-reset': '7' }))).toMatchObject({
      throttled: true,
      retryAfterMs: 7_000,
    });
    expect(
      stripe(answer(429, {}, { 'x-ratelimit-reset': String(NOW / 1_000 + 12) })),
    ).toMatchObject({ retryAfterMs: 12_000 });
    expect(stripe(answer(429, {}, { 'retry-after': '3', 'ratelimit-reset': '7' }))).toMatchObject({
      retryAfterMs: 3_000,
    });
    expect(stripe(answer(429, {}, { 'ratelimit-reset': String(10 ** 6) }))).toMatchObject({
      retryAfterMs: 300_000,
    });
  });
});

describe('provider description schema', () => {
  it('reads a 2xx charge id as a full parse would, with or without one (Stripe)', () => {
    const classify = rules({
      rules: [
        {
          status: 400,
          body: { path: '$.error.type', equals: 'idempotency_error' },
          outcome: 'ambiguous',
        },
      ],
      chargeId: { success: '$.id' },
      reason: ['$.error.decline_code', '$.error.message'],
    });
    const intent = { id: 'pi_1', object: 'payment_intent', status: 'succeeded' };
    expect(classify(answer(200, intent))).toEqual({
      kind: 'charged',
      status: 200,
      chargeId: 'pi_1',
    });
    expect(classify(answer(200, JSON.stringify(intent, null, 2)))).toMatchObject({
      chargeId: 'pi_1',
    });
    // Not the first member, an escaped id: parsed in full, the same id.
    expect(classify(answer(201, { object: 'x', id: 'pi_2' }))).toMatchObject({ chargeId: 'pi_2' });
    expect(classify(answer(200, '{"id":"pi_\\u0033"}'))).toMatchObject({ chargeId: 'pi_3' });
    // Cut short after the id: still charged, with the id the provider gave.
    expect(classify(answer(200, '{"id":"pi_4","object":"payment_int'))).toMatchObject({
      kind: 'charged',
      chargeId: 'pi_4',
    });
    expect(classify(answer(200, 'not json'))).toEqual({
      kind: 'charged',
      status: 200,
      chargeId: undefined,
    });
    // A 400 the rule reads from its body; another 400 declined with the reason path.
    expect(
      classify(answer(400, { error: { type: 'idempotency_error', message: 'keys' } })),
    ).toMatchObject({ kind: 'retry', ambiguous: true });
    expect(
      classify(answer(400, { error: { type: 'invalid_request_error', message: 'bad' } })),
    ).toEqual({
      kind: 'declined',
      status: 400,
      reason: 'bad',
    });
  });

  it('names the path of a mistake', () => {
    const parsed = providerSchema.safeParse({
      response: { rules: [{ status: '2xy', outcome: 'charged' }] },
    });
    expect(parsed.success).toBe(false);
    expect(parsed.error?.issues[0]?.path).toEqual(['response', 'rules', 0, 'status']);
    const both = providerSchema.safeParse({
      response: { rules: [{ body: { path: '$.a', equals: 1, prefix: 'x' }, outcome: 'charged' }] },
    });
    expect(both.error?.issues[0]?.message).toMatch(/exactly one of/);
    const path = providerSchema.safeParse({ response: { chargeId: { success: 'id' } } });
    expect(path.error?.issues[0]?.message).toMatch(/JSON path/);
  });
});
