import type { AttemptResult } from '../../src/domain/outcome.js';

/** Attempt results as the provider client classifies them, for the tests of what decides on them. */
export const answer = {
  charged: (id = 'ch_1'): AttemptResult => ({ kind: 'charged', status: 200, chargeId: id }),
  declined: (status = 402): AttemptResult => ({
    kind: 'declined',
    status,
    reason: 'card_declined',
  }),
  unavailable: (): AttemptResult => ({
    kind: 'retry',
    status: 503,
    reason: '503',
    ambiguous: false,
    throttled: false,
    retryAfterMs: undefined,
  }),
  throttled: (retryAfterMs?: number): AttemptResult => ({
    kind: 'retry',
    status: 429,
    reason: '429',
    ambiguous: false,
    throttled: true,
    retryAfterMs,
  }),
  timedOut: (): AttemptResult => ({
    kind: 'retry',
    status: undefined,
    reason: 'timeout',
    ambiguous: true,
    throttled: false,
    retryAfterMs: undefined,
  }),
  conflict: (): AttemptResult => ({
    kind: 'retry',
    status: 409,
    reason: '409',
    ambiguous: true,
    throttled: false,
    conflict: true,
    retryAfterMs: undefined,
  }),
  unauthorized: (): AttemptResult => ({ kind: 'fatal', status: 401, reason: '401 Unauthorized' }),
};
