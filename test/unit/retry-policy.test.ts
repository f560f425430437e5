import { describe, expect, it } from 'vitest';
import {
  type ChargeAttempts,
  decideRetry,
  gateAttempt,
  RETRY_DEFAULTS,
  resolveRetryPolicy,
  statusVerdict,
} from '../../src/control/retry-policy.js';
import type { AttemptResult, AttemptRetry } from '../../src/domain/outcome.js';

const policy = resolveRetryPolicy();
const fresh: ChargeAttempts = { attempts: 0, ambiguous: false };
const half = () => 0.5;
const top = () => 1;

function retry(overrides: Partial<AttemptRetry> = {}): AttemptRetry {
  return {
    kind: 'retry',
    status: 503,
    reason: '503 Service Unavailable',
    ambiguous: false,
    throttled: false,
    retryAfterMs: undefined,
    ...overrides,
  };
}

/** Feeds the same result until the policy stops retrying; returns the decisions. */
function playOut(result: AttemptResult, start: ChargeAttempts = fresh) {
  const decisions = [];
  let state = start;
  for (let step = 0; step < 20; step++) {
    const decision = decideRetry(policy, state, result, half);
    decisions.push(decision);
    if (decision.action !== 'retry') break;
    state = decision;
  }
  return decisions;
}

describe('RETRY_DEFAULTS', () => {
  it('writes out the issue’s numbers', () => {
    expect(RETRY_DEFAULTS).toMatchObject({
      maxAttempts: 5,
      baseDelayMs: 500,
      maxDelayMs: 30_000,
      honourRetryAfter: true,
      maxRetryAfterMs: 300_000,
      throttlesConsumeAttempts: false,
    });
    expect(policy).toEqual({
      maxAttempts: 5,
      baseDelayMs: 500,
      maxDelayMs: 30_000,
      honourRetryAfter: true,
      maxRetryAfterMs: 300_000,
      throttlesConsumeAttempts: false,
      conflictBaseDelayMs: 2_000,
      maxWaits: 50,
      keyRetentionMs: 86_400_000,
    });
  });
});

describe('statusVerdict', () => {
  it('charges on every 2xx', () => {
    for (const status of [200, 201, 202, 204, 299]) expect(statusVerdict(status)).toBe('charged');
  });

  it('retries 408, 409, 425, 429 and every 5xx', () => {
    for (const status of [408, 409, 425, 429, 500, 502, 503, 504, 599]) {
      expect(statusVerdict(status)).toBe('retry');
    }
  });

  it('stops the run on 401, 403, 404, 405', () => {
    for (const status of [401, 403, 404, 405]) expect(statusVerdict(status)).toBe('fatal');
  });

  it('declines on 400, 402, 422 and any other 4xx', () => {
    for (const status of [400, 402, 406, 410, 413, 418, 422, 451, 499]) {
      expect(statusVerdict(status)).toBe('declined');
    }
  });

  it('stops on statuses a billing API should never send', () => {
    for (const status of [0, 100, 101, 199, 301, 302, 307, 600, 999, -1, 200.5]) {
      expect(statusVerdict(status)).toBe('fatal');
    }
  });
});

describe('resolveRetryPolicy', () => {
  it('keeps what it is given and fills in the rest', () => {
    expect(resolveRetryPolicy({ maxAttempts: 2, throttlesConsumeAttempts: true })).toMatchObject({
      maxAttempts: 2,
      baseDelayMs: 500,
      throttlesConsumeAttempts: true,
    });
  });

  it('names the field and the value received', () => {
    expect(() => resolveRetryPolicy({ maxAttempts: 0 })).toThrow(
      'Expected `maxAttempts` to be an integer >= 1, got 0 (number)',
    );
    expect(() => resolveRetryPolicy({ baseDelayMs: Number.NaN })).toThrow(/`baseDelayMs`/);
    expect(() => resolveRetryPolicy({ maxDelayMs: 100 })).toThrow(/`maxDelayMs`.*got 100/);
    expect(() => resolveRetryPolicy({ maxRetryAfterMs: -5 })).toThrow(
      'Expected `maxRetryAfterMs` to be a finite number >= 0, got -5 (number)',
    );
    expect(() => resolveRetryPolicy({ honourRetryAfter: 'yes' as unknown as boolean })).toThrow(
      'Expected `honourRetryAfter` to be a boolean, got "yes" (string)',
    );
  });
});

describe('decideRetry', () => {
  it('finishes charged or declined, counting the attempt', () => {
    expect(
      decideRetry(
        policy,
        { attempts: 2, ambiguous: true },
        {
          kind: 'charged',
          status: 200,
          chargeId: 'ch_1',
        },
        half,
      ),
    ).toEqual({ action: 'finish', state: 'charged', attempts: 3, ambiguous: true });
    expect(
      decideRetry(policy, fresh, { kind: 'declined', status: 402, reason: 'card_declined' }, half),
    ).toEqual({ action: 'finish', state: 'declined', attempts: 1, ambiguous: false });
  });

  it('stops the run on a fatal result without using up an attempt', () => {
    expect(
      decideRetry(
        policy,
        { attempts: 1, ambiguous: false },
        {
          kind: 'fatal',
          status: 401,
          reason: '401 Unauthorized from http://x/charge: check the Authorization header',
        },
        half,
      ),
    ).toEqual({
      action: 'stop',
      reason: '401 Unauthorized from http://x/charge: check the Authorization header',
      attempts: 1,
      ambiguous: false,
    });
  });

  it('retries with full-jitter backoff on the attempt number', () => {
    const delays = playOut(retry())
      .filter((decision) => decision.action === 'retry')
      .map((decision) => decision.delayMs);
    // random 0.5 × 500, 1000, 2000, 4000
    expect(delays).toEqual([250, 500, 1_000, 2_000]);
    expect(decideRetry(policy, fresh, retry(), top)).toMatchObject({ delayMs: 500 });
    expect(decideRetry(policy, fresh, retry(), () => 0)).toMatchObject({ delayMs: 0 });
  });

  it('ends failed after maxAttempts when no attempt was ambiguous', () => {
    const decisions = playOut(retry());
    expect(decisions).toHaveLength(5);
    expect(decisions.at(-1)).toEqual({
      action: 'finish',
      state: 'failed',
      attempts: 5,
      ambiguous: false,
    });
  });

  it('ends unknown when any attempt, even an early one, was ambiguous', () => {
    const first = decideRetry(policy, fresh, retry({ ambiguous: true, status: undefined }), half);
    expect(first).toMatchObject({ action: 'retry', attempts: 1, ambiguous: true });
    const decisions = playOut(retry(), { attempts: 1, ambiguous: true });
    expect(decisions.at(-1)).toEqual({
      action: 'finish',
      state: 'unknown',
      attempts: 5,
      ambiguous: true,
    });
  });

  it('ends unknown when only the last attempt was ambiguous', () => {
    expect(
      decideRetry(policy, { attempts: 4, ambiguous: false }, retry({ ambiguous: true }), half),
    ).toEqual({ action: 'finish', state: 'unknown', attempts: 5, ambiguous: true });
  });

  it('waits at least as long as Retry-After asks', () => {
    expect(
      decideRetry(policy, fresh, retry({ retryAfterMs: 3_000, throttled: true }), half),
    ).toMatchObject({ action: 'retry', delayMs: 3_000, throttled: true });
    // A backoff longer than Retry-After is kept.
    expect(
      decideRetry(policy, { attempts: 3, ambiguous: false }, retry({ retryAfterMs: 100 }), top),
    ).toMatchObject({ delayMs: 4_000 });
    // A zero Retry-After still waits the backoff.
    expect(decideRetry(policy, fresh, retry({ retryAfterMs: 0 }), half)).toMatchObject({
      delayMs: 250,
    });
  });

  it('caps Retry-After and can ignore it', () => {
    const huge = retry({ retryAfterMs: 3_600_000, throttled: true });
    expect(decideRetry(policy, fresh, huge, half)).toMatchObject({ delayMs: 300_000 });
    const ignoring = resolveRetryPolicy({ honourRetryAfter: false });
    expect(decideRetry(ignoring, fresh, huge, half)).toMatchObject({ delayMs: 250 });
  });

  it('does not use up attempts on throttling, but ends a charge throttled maxWaits times in a row', () => {
    const throttled = retry({ status: 429, throttled: true, retryAfterMs: 1_000 });
    let state: ChargeAttempts = { attempts: 4, ambiguous: false };
    for (let step = 0; step < 50; step++) {
      const decision = decideRetry(policy, state, throttled, half);
      expect(decision).toMatchObject({ action: 'retry', attempts: 4, throttled: true });
      state = decision;
    }
    expect(decideRetry(policy, state, throttled, half)).toMatchObject({
      action: 'finish',
      state: 'failed',
      attempts: 4,
      waits: 51,
      reason: 'throttled 51 times in a row: 503 Service Unavailable',
    });
    // A throttle-free answer starts the count again.
    expect(decideRetry(policy, { ...state, attempts: 2 }, retry(), half)).toMatchObject({
      waits: 0,
      attempts: 3,
    });
    // …unless the policy says so.
    const counting = resolveRetryPolicy({ throttlesConsumeAttempts: true });
    expect(decideRetry(counting, state, throttled, half)).toEqual({
      action: 'finish',
      state: 'failed',
      attempts: 5,
      ambiguous: false,
    });
  });

  it('counts a plain 503 (no Retry-After) as an attempt', () => {
    expect(decideRetry(policy, fresh, retry(), half)).toMatchObject({
      action: 'retry',
      attempts: 1,
      throttled: false,
    });
  });

  it('gives up at once with maxAttempts 1', () => {
    const once = resolveRetryPolicy({ maxAttempts: 1 });
    expect(decideRetry(once, fresh, retry(), half)).toMatchObject({
      action: 'finish',
      state: 'failed',
    });
  });

  it('a 409 (key in use) is ambiguous, uses no attempt, waits longer, and never ends failed', () => {
    const conflict = retry({
      status: 409,
      ambiguous: true,
      conflict: true,
      reason: '409 Conflict',
    });
    let state: ChargeAttempts = { attempts: 4, ambiguous: false };
    const first = decideRetry(policy, state, conflict, top);
    // Its own, longer backoff: 2 s for the first wait, then doubling to the 30 s cap.
    expect(first).toMatchObject({ action: 'retry', attempts: 4, ambiguous: true, delayMs: 2_000 });
    for (let step = 0; step < 49; step++) {
      const decision = decideRetry(policy, state, conflict, top);
      expect(decision.action).toBe('retry');
      state = decision;
    }
    expect(decideRetry(policy, state, conflict, top)).toMatchObject({ delayMs: 30_000 });
    state = decideRetry(policy, state, conflict, top);
    expect(decideRetry(policy, state, conflict, top)).toMatchObject({
      action: 'finish',
      state: 'unknown',
      ambiguous: true,
      reason: 'answered 409 (key in use) 51 times in a row: 409 Conflict',
    });
    // Attempts running out after a 409 end unknown, not failed.
    expect(decideRetry(policy, { attempts: 4, ambiguous: true }, retry(), half)).toMatchObject({
      state: 'unknown',
    });
    // A Retry-After on the 409 is honoured.
    expect(
      decideRetry(
        policy,
        { attempts: 0, ambiguous: false },
        { ...conflict, retryAfterMs: 9_000 },
        half,
      ),
    ).toMatchObject({ delayMs: 9_000 });
  });
});

describe('gateAttempt', () => {
  const now = Date.UTC(2026, 11, 1);
  const day = 86_400_000;

  it('lets a charge with attempts left, and within the key retention, go', () => {
    expect(
      gateAttempt(policy, { attempts: 4, ambiguous: true, firstAttemptAt: now - day + 1 }, now),
    ).toBe(undefined);
    expect(
      gateAttempt(policy, { attempts: 0, ambiguous: false, firstAttemptAt: undefined }, now),
    ).toBe(undefined);
  });

  it('ends a charge whose attempts are used up (a crash cut off the last): unknown when ambiguous', () => {
    expect(
      gateAttempt(policy, { attempts: 5, ambiguous: true, firstAttemptAt: now }, now),
    ).toMatchObject({
      state: 'unknown',
      reason: expect.stringMatching(
        /its 5 attempts are used up and one may have reached the provider/,
      ),
    });
    expect(
      gateAttempt(policy, { attempts: 5, ambiguous: false, firstAttemptAt: now }, now),
    ).toEqual({
      state: 'failed',
      reason: 'its 5 attempts are used up',
    });
  });

  it('does not retry an ambiguous charge first tried longer ago than the provider keeps keys', () => {
    const old = { attempts: 1, ambiguous: true, firstAttemptAt: now - day - 1 };
    expect(gateAttempt(policy, old, now)).toEqual({
      state: 'unknown',
      reason:
        'its first attempt (2026-11-29T23:59:59.999Z) is older than the provider keeps idempotency keys (--key-retention 24h): a retry could charge twice; check this user at the provider',
    });
    // Nothing can have been charged: a retry cannot charge twice, whenever it comes.
    expect(gateAttempt(policy, { ...old, ambiguous: false }, now)).toBeUndefined();
    const week = resolveRetryPolicy({ keyRetentionMs: 7 * day });
    expect(gateAttempt(week, old, now)).toBeUndefined();
  });
});
