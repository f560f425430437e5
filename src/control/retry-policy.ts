import { describeValue } from '../domain/errors.js';
import type { AttemptResult, AttemptTerminalState } from '../domain/outcome.js';
import {
  type BackoffOptions,
  backoffDelayMs,
  checkBackoffOptions,
  type Random,
} from './backoff.js';

/** How a charge is retried. Every field is documented with its default in RETRY_DEFAULTS. */
export interface RetryPolicy extends BackoffOptions {
  readonly maxAttempts: number;
  readonly honourRetryAfter: boolean;
  readonly maxRetryAfterMs: number;
  readonly throttlesConsumeAttempts: boolean;
}

export type RetryPolicyOptions = Partial<RetryPolicy>;

/**
 * Every retry default, written out in one place (after undici's lib/handler/retry-handler.js).
 * The status lists are the billing API contract, not tunables: the provider client classifies
 * answers by them (statusVerdict) and this policy decides from that classification.
 */
export const RETRY_DEFAULTS = {
  /** Attempts per charge, the first included; throttled attempts do not count. */
  maxAttempts: 5,
  /** Ceiling of the first retry's delay (full jitter: the delay is drawn from [0, ceiling)). */
  baseDelayMs: 500,
  /** Largest ceiling, reached on the 7th attempt: 500 ms × 2^6 = 32 s > 30 s. */
  maxDelayMs: 30_000,
  /** Wait at least as long as the provider's Retry-After asks. */
  honourRetryAfter: true,
  /** Longest Retry-After honoured; a longer one is cut to this (5 minutes). */
  maxRetryAfterMs: 300_000,
  /** A throttled attempt (429, 503 with Retry-After) does not use up one of the charge's attempts. */
  throttlesConsumeAttempts: false,
  /** Answers worth retrying, besides every 5xx: request timeout, key in use, too early, too many. */
  retryStatuses: [408, 409, 425, 429],
  /** Answers that mean "slow down" and pause all dispatch: 429 always, 503 when it has Retry-After. */
  throttleStatuses: [429, 503],
  /** Answers that mean the run is misconfigured: it stops at once, charges stay pending. */
  fatalStatuses: [401, 403, 404, 405],
  // Every other 4xx (402, 400, 422, …) declines the charge for good; every 2xx charged it.
} as const satisfies RetryPolicy & Record<string, unknown>;

/** What an answer's status alone says, by RETRY_DEFAULTS' lists. */
export type StatusVerdict = 'charged' | 'declined' | 'retry' | 'fatal';

const VERDICTS: readonly StatusVerdict[] = (() => {
  const verdicts: StatusVerdict[] = [];
  for (let status = 0; status < 600; status++) {
    if (status >= 200 && status < 300) verdicts.push('charged');
    else if (status >= 500) verdicts.push('retry');
    else if (status >= 400) verdicts.push('declined');
    // 1xx never ends an exchange and a billing API has no business redirecting a POST.
    else verdicts.push('fatal');
  }
  for (const status of RETRY_DEFAULTS.retryStatuses) verdicts[status] = 'retry';
  for (const status of RETRY_DEFAULTS.fatalStatuses) verdicts[status] = 'fatal';
  return verdicts;
})();

/**
 * The verdict on an answer's status: 2xx charged; 408, 409, 425, 429 and 5xx retry; 401, 403,
 * 404, 405 fatal; any other 4xx declined; anything else (1xx, 3xx, past 599) fatal.
 */
export function statusVerdict(status: number): StatusVerdict {
  return VERDICTS[status] ?? 'fatal';
}

/** Checks options once and fills in defaults; the message names the field and the value. */
export function resolveRetryPolicy(options: RetryPolicyOptions = {}): RetryPolicy {
  const policy: RetryPolicy = {
    maxAttempts: options.maxAttempts ?? RETRY_DEFAULTS.maxAttempts,
    baseDelayMs: options.baseDelayMs ?? RETRY_DEFAULTS.baseDelayMs,
    maxDelayMs: options.maxDelayMs ?? RETRY_DEFAULTS.maxDelayMs,
    honourRetryAfter: options.honourRetryAfter ?? RETRY_DEFAULTS.honourRetryAfter,
    maxRetryAfterMs: options.maxRetryAfterMs ?? RETRY_DEFAULTS.maxRetryAfterMs,
    throttlesConsumeAttempts:
      options.throttlesConsumeAttempts ?? RETRY_DEFAULTS.throttlesConsumeAttempts,
  };
  if (!(Number.isSafeInteger(policy.maxAttempts) && policy.maxAttempts >= 1)) {
    throw new RangeError(
      `Expected \`maxAttempts\` to be an integer >= 1, got ${describeValue(policy.maxAttempts)}`,
    );
  }
  checkBackoffOptions(policy);
  if (!(Number.isFinite(policy.maxRetryAfterMs) && policy.maxRetryAfterMs >= 0)) {
    throw new RangeError(
      `Expected \`maxRetryAfterMs\` to be a finite number >= 0, got ${describeValue(policy.maxRetryAfterMs)}`,
    );
  }
  for (const name of ['honourRetryAfter', 'throttlesConsumeAttempts'] as const) {
    if (typeof policy[name] !== 'boolean') {
      throw new TypeError(
        `Expected \`${name}\` to be a boolean, got ${describeValue(policy[name])}`,
      );
    }
  }
  return policy;
}

/**
 * What the engine keeps per charge between attempts (in its ledger, so it survives a crash):
 * the input of one decision, and, updated, part of its output.
 */
export interface ChargeAttempts {
  /** Attempts that counted against maxAttempts so far (0 before the first). */
  readonly attempts: number;
  /** Whether any attempt so far may have reached the provider without an answer. */
  readonly ambiguous: boolean;
}

/** Try the charge again after `delayMs`. When `throttled`, pause all dispatch that long too. */
export interface RetryAgain extends ChargeAttempts {
  readonly action: 'retry';
  readonly delayMs: number;
  readonly throttled: boolean;
}

/** The charge is done: record `state`. */
export interface RetryFinish extends ChargeAttempts {
  readonly action: 'finish';
  readonly state: AttemptTerminalState;
}

/** The run is misconfigured: stop it now, leave this charge (and the rest) pending. */
export interface RetryStop extends ChargeAttempts {
  readonly action: 'stop';
  readonly reason: string;
}

export type RetryDecision = RetryAgain | RetryFinish | RetryStop;

/**
 * Decides what follows an attempt: retry (after how long), finish in a terminal state, or stop
 * the run. `before` is the charge's record before this attempt; the decision carries the
 * updated record (`attempts`, `ambiguous`) for the engine to store with it.
 *
 * Attempts exhausted end `unknown` when any attempt (this one or an earlier) was ambiguous,
 * else `failed`. The delay is full-jitter backoff on the attempt's number, raised to the
 * provider's Retry-After when it asked for longer.
 */
export function decideRetry(
  policy: RetryPolicy,
  before: ChargeAttempts,
  result: AttemptResult,
  random: Random,
): RetryDecision {
  switch (result.kind) {
    case 'charged':
      return finish(before.attempts + 1, before.ambiguous, 'charged');
    case 'declined':
      return finish(before.attempts + 1, before.ambiguous, 'declined');
    case 'fatal':
      // The provider refused the run, not the charge: nothing is used up.
      return {
        action: 'stop',
        reason: result.reason,
        attempts: before.attempts,
        ambiguous: before.ambiguous,
      };
    case 'retry': {
      const ambiguous = before.ambiguous || result.ambiguous;
      const counts = !result.throttled || policy.throttlesConsumeAttempts;
      const attempts = counts ? before.attempts + 1 : before.attempts;
      if (attempts >= policy.maxAttempts) {
        return finish(attempts, ambiguous, ambiguous ? 'unknown' : 'failed');
      }
      let delayMs = backoffDelayMs(before.attempts + 1, policy, random);
      if (policy.honourRetryAfter && result.retryAfterMs !== undefined) {
        delayMs = Math.max(delayMs, Math.min(result.retryAfterMs, policy.maxRetryAfterMs));
      }
      return { action: 'retry', delayMs, throttled: result.throttled, attempts, ambiguous };
    }
  }
}

function finish(attempts: number, ambiguous: boolean, state: AttemptTerminalState): RetryFinish {
  return { action: 'finish', state, attempts, ambiguous };
}
