import { describe, expect, it } from 'vitest';
import type { WallClock } from '../../src/control/retry-after.js';
import {
  type ClassifyContext,
  classify,
  type ProviderAnswer,
  providerReason,
  REASON_MAX_LENGTH,
  type TransportFailure,
} from '../../src/provider/classify.js';

const NOW = Date.UTC(2015, 9, 21, 7, 28, 0);
const wallClock: WallClock = { now: () => NOW };
const ENDPOINT = 'https://billing.example/v1/charge';
const context: ClassifyContext = { endpoint: ENDPOINT, wallClock, maxRetryAfterMs: 300_000 };

function answer(status: number, body = '', retryAfter?: string): ProviderAnswer {
  return { type: 'answer', status, body, retryAfter };
}

function failure(overrides: Partial<TransportFailure>): TransportFailure {
  return {
    type: 'failure',
    failure: 'connection',
    sent: false,
    code: undefined,
    detail: 'boom',
    ...overrides,
  };
}

describe('classify: answers', () => {
  it('2xx is charged, keeping the provider’s charge id', () => {
    expect(classify(answer(200, '{"id":"ch_1","status":"succeeded"}'), context)).toEqual({
      kind: 'charged',
      status: 200,
      chargeId: 'ch_1',
    });
    expect(classify(answer(201, '{"id":42}'), context)).toMatchObject({ chargeId: '42' });
    for (const body of ['', 'ok', '{"id":""}', '{"id":{}}', '[1]', '{broken', '{"charge":"x"}']) {
      expect(classify(answer(200, body), context)).toEqual({
        kind: 'charged',
        status: 200,
        chargeId: undefined,
      });
    }
    expect(classify(answer(204), context).kind).toBe('charged');
    // Cut short (a reset halfway through the answer): the id that came first is kept.
    expect(classify(answer(200, '{"id":"ch_2","user_id":"u1","amo'), context)).toMatchObject({
      kind: 'charged',
      chargeId: 'ch_2',
    });
    expect(classify(answer(200, '{"id":"ch_'), context)).toMatchObject({ chargeId: undefined });
  });

  it('402, 400, 422 and other 4xx decline with the provider’s reason', () => {
    expect(classify(answer(402, '{"error":"card_declined"}'), context)).toEqual({
      kind: 'declined',
      status: 402,
      reason: 'card_declined',
    });
    expect(
      classify(
        answer(
          400,
          '{"error":"invalid_request","field":"amount","message":"amount must be positive"}',
        ),
        context,
      ),
    ).toEqual({
      kind: 'declined',
      status: 400,
      reason: 'invalid_request: amount must be positive',
    });
    expect(classify(answer(422, '{"message":"key reused"}'), context)).toMatchObject({
      kind: 'declined',
      reason: 'key reused',
    });
    expect(classify(answer(410), context)).toEqual({
      kind: 'declined',
      status: 410,
      reason: '410 Gone',
    });
    expect(classify(answer(499), context)).toMatchObject({ kind: 'declined', reason: '499' });
  });

  it('500, 502 and 504 are retried and ambiguous: the server or a gateway may have charged', () => {
    for (const status of [500, 502, 504]) {
      expect(classify(answer(status), context)).toMatchObject({
        kind: 'retry',
        status,
        ambiguous: true,
        throttled: false,
      });
    }
  });

  it('408, 425, 429, 503 and other 5xx are retried, not ambiguous: nothing was processed', () => {
    for (const status of [408, 425, 429, 501, 503, 599]) {
      expect(classify(answer(status), context)).toMatchObject({
        kind: 'retry',
        status,
        ambiguous: false,
      });
    }
    expect(
      classify(answer(503, '{"error":"service_unavailable","message":"Try again."}'), context),
    ).toEqual({
      kind: 'retry',
      status: 503,
      reason: '503 service_unavailable: Try again.',
      ambiguous: false,
      throttled: false,
      retryAfterMs: undefined,
    });
  });

  it('409 says the provider holds the key: a retry, ambiguous, a conflict, with its Retry-After', () => {
    expect(classify(answer(409), context)).toEqual({
      kind: 'retry',
      status: 409,
      reason: '409 Conflict',
      ambiguous: true,
      throttled: false,
      retryAfterMs: undefined,
      conflict: true,
    });
    expect(classify(answer(409, '', '3'), context)).toMatchObject({ retryAfterMs: 3_000 });
  });

  it('429 is throttling, with or without Retry-After', () => {
    expect(classify(answer(429, '{"error":"rate_limited"}', '2'), context)).toEqual({
      kind: 'retry',
      status: 429,
      reason: '429 rate_limited',
      ambiguous: false,
      throttled: true,
      retryAfterMs: 2_000,
    });
    expect(classify(answer(429), context)).toMatchObject({
      throttled: true,
      retryAfterMs: undefined,
    });
  });

  it('503 is throttling only with a Retry-After', () => {
    expect(classify(answer(503, '', '1'), context)).toMatchObject({
      throttled: true,
      retryAfterMs: 1_000,
    });
    expect(classify(answer(503, '', 'Wed, 21 Oct 2015 07:28:30 GMT'), context)).toMatchObject({
      throttled: true,
      retryAfterMs: 30_000,
    });
    expect(classify(answer(503, '', 'whenever'), context)).toMatchObject({
      throttled: false,
      retryAfterMs: undefined,
    });
  });

  it('ignores Retry-After on other statuses and caps it on 429/503', () => {
    expect(classify(answer(500, '', '5'), context)).toMatchObject({
      throttled: false,
      retryAfterMs: undefined,
    });
    expect(classify(answer(429, '', '86400'), context)).toMatchObject({ retryAfterMs: 300_000 });
    expect(
      classify(answer(429, '', '86400'), { ...context, maxRetryAfterMs: 60_000 }),
    ).toMatchObject({ retryAfterMs: 60_000 });
  });

  it('401, 403, 404, 405 are fatal, naming the cause and never quoting the body', () => {
    const echo = '{"error":"unauthorized","message":"bad key sk_live_abc123"}';
    expect(classify(answer(401, echo), context)).toEqual({
      kind: 'fatal',
      status: 401,
      reason: `401 Unauthorized from ${ENDPOINT}: check the Authorization header`,
    });
    expect(classify(answer(403, echo), context)).toMatchObject({
      kind: 'fatal',
      reason: expect.stringMatching(/^403 Forbidden from https:\/\/billing\.example\/v1\/charge: /),
    });
    expect(classify(answer(404), context)).toEqual({
      kind: 'fatal',
      status: 404,
      reason: `404 Not Found from ${ENDPOINT}: check the endpoint URL`,
    });
    expect(classify(answer(405), context)).toMatchObject({
      kind: 'fatal',
      reason: expect.stringContaining('405 Method Not Allowed'),
    });
    for (const status of [401, 403, 404, 405]) {
      const result = classify(answer(status, echo), context);
      expect(result.kind === 'fatal' && result.reason).not.toContain('sk_live');
    }
  });

  it('a redirect or an impossible status is fatal too', () => {
    expect(classify(answer(302), context)).toMatchObject({
      kind: 'fatal',
      reason: `302 Found from ${ENDPOINT}: the endpoint redirects; use the URL it redirects to`,
    });
    expect(classify(answer(700), context)).toMatchObject({ kind: 'fatal', status: 700 });
  });
});

describe('classify: no answer', () => {
  it('a timeout after the request was sent is ambiguous', () => {
    expect(
      classify(
        failure({ failure: 'timeout', sent: true, detail: 'no answer within 200ms' }),
        context,
      ),
    ).toEqual({
      kind: 'retry',
      status: undefined,
      reason:
        'timeout: no answer within 200ms, after the request was sent: the provider may have charged',
      ambiguous: true,
      throttled: false,
      retryAfterMs: undefined,
    });
  });

  it('a reset after the request was sent is ambiguous', () => {
    expect(
      classify(
        failure({ sent: true, code: 'UND_ERR_SOCKET', detail: 'other side closed' }),
        context,
      ),
    ).toMatchObject({
      kind: 'retry',
      ambiguous: true,
      reason:
        'connection error: other side closed (UND_ERR_SOCKET), after the request was sent: the provider may have charged',
    });
  });

  it('connection refused, DNS failure or a connect timeout before sending is not', () => {
    for (const code of ['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN']) {
      expect(classify(failure({ code, detail: `connect ${code}` }), context)).toMatchObject({
        kind: 'retry',
        status: undefined,
        ambiguous: false,
        throttled: false,
        reason: `connection error: connect ${code} (${code}), before the request was sent`,
      });
    }
    expect(
      classify(failure({ failure: 'timeout', code: 'UND_ERR_CONNECT_TIMEOUT' }), context),
    ).toMatchObject({ ambiguous: false, reason: expect.stringMatching(/^timeout: /) });
  });
});

describe('providerReason', () => {
  it('keeps reasons on one line and short', () => {
    expect(providerReason('{"error":"a\\nb\\u0000c"}')).toBe('a b c');
    expect(providerReason('  plain text\r\nbody ')).toBe('plain text body');
    const long = providerReason(JSON.stringify({ error: 'x'.repeat(1_000) }));
    expect(long).toHaveLength(REASON_MAX_LENGTH);
    expect(long?.endsWith('…')).toBe(true);
    expect(providerReason('{"error":"same","message":"same"}')).toBe('same');
    expect(providerReason('{"error":5}')).toBeUndefined();
    expect(providerReason('')).toBeUndefined();
  });

  it('never splits a surrogate pair when shortening', () => {
    const reason = providerReason(JSON.stringify({ error: `${'x'.repeat(198)}🙂🙂` }));
    expect(reason).toBe(`${'x'.repeat(198)}…`);
  });
});
