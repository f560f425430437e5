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
  readonly conflictBaseDelayMs: number;
  readonly maxWaits: number;
  readonly keyRetentionMs: number;
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
  /**
   * Ceiling of the first wait after a 409 (the provider is still processing an earlier request
   * with the key): longer than a plain retry's, since that request needs time to settle.
   */
  conflictBaseDelayMs: 2_000,
  /**
   * Throttled and 409 answers a charge may get in a row in one process (they use up no attempt);
   * past it the charge ends (`failed`, or `unknown` when it may have been charged), so a run ends.
   */
  maxWaits: 50,
  /**
   * How long the provider keeps an idempotency key (Stripe: 24 h). A charge that may have reached
   * the provider and whose first attempt is older is not retried: the provider may have forgotten
   * the key, and a retry could charge twice. It ends `unknown`.
   */
  keyRetentionMs: 24 * 60 * 60 * 1_000,
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
    conflictBaseDelayMs: options.conflictBaseDelayMs ?? RETRY_DEFAULTS.conflictBaseDelayMs,
    maxWaits: options.maxWaits ?? RETRY_DEFAULTS.maxWaits,
    keyRetentionMs: options.keyRetentionMs ?? RETRY_DEFAULTS.keyRetentionMs,
  };
  if (!(Number.isSafeInteger(policy.maxAttempts) && policy.maxAttempts >= 1)) {
    throw new RangeError(
      `Expected \`maxAttempts\` to be an integer >= 1, got ${describeValue(policy.maxAttempts)}`,
    );
  }
  checkBackoffOptions(policy);
  checkBackoffOptions({ baseDelayMs: policy.conflictBaseDelayMs, maxDelayMs: policy.maxDelayMs });
  for (const name of ['maxRetryAfterMs', 'keyRetentionMs'] as const) {
    if (!(Number.isFinite(policy[name]) && policy[name] >= 0)) {
      throw new RangeError(
        `Expected \`${name}\` to be a finite number >= 0, got ${describeValue(policy[name])}`,
      );
    }
  }
  if (!(Number.isSafeInteger(policy.maxWaits) && policy.maxWaits >= 0)) {
    throw new RangeError(
      `Expected \`maxWaits\` to be an integer >= 0, got ${describeValue(policy.maxWaits)}`,
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
  /**
   * Throttled and 409 answers in a row in this process (absent: 0). Not kept in the ledger: a
   * crash restarts it, and the key retention bounds an ambiguous charge's retries across crashes.
   */
  readonly waits?: number;
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
  /** Why, when the answer's own reason does not say it (a bound was reached). */
  readonly reason?: string;
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
  /** The circuit breaker excused it: the provider was down, the attempt counts for nothing. */
  excused = false,
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
      const conflict = result.conflict === true;
      // Throttles and 409s say "not now", not "this failed": they use up waits, not attempts.
      const waiting = conflict || (result.throttled && !policy.throttlesConsumeAttempts);
      const attempts = waiting || excused ? before.attempts : before.attempts + 1;
      const waits = excused ? (before.waits ?? 0) : waiting ? (before.waits ?? 0) + 1 : 0;
      if (attempts >= policy.maxAttempts) {
        return finish(attempts, ambiguous, ambiguous ? 'unknown' : 'failed');
      }
      if (result.final === true) {
        return {
          ...finish(attempts, ambiguous, ambiguous ? 'unknown' : 'failed'),
          reason: `the provider said not to retry: ${result.reason}`,
        };
      }
      if (waits > policy.maxWaits) {
        const what = conflict ? 'answered 409 (key in use)' : 'throttled';
        return {
          ...finish(attempts, ambiguous, ambiguous ? 'unknown' : 'failed'),
          waits,
          reason: `${what} ${waits} times in a row: ${result.reason}`,
        };
      }
      let delayMs = waiting
        ? backoffDelayMs(
            waits,
            {
              baseDelayMs: conflict ? policy.conflictBaseDelayMs : policy.baseDelayMs,
              maxDelayMs: policy.maxDelayMs,
            },
            random,
          )
        : backoffDelayMs(before.attempts + 1, policy, random);
      if (policy.honourRetryAfter && result.retryAfterMs !== undefined) {
        delayMs = Math.max(delayMs, Math.min(result.retryAfterMs, policy.maxRetryAfterMs));
      }
      return {
        action: 'retry',
        delayMs,
        throttled: result.throttled,
        attempts,
        ambiguous,
        waits,
      };
    }
  }
}

/** What the ledger knows of a charge before its next attempt. */
export interface AttemptHistory extends ChargeAttempts {
  /** When its first attempt was started (epoch ms, wall clock: it is compared across machines). */
  readonly firstAttemptAt: number | undefined;
}

/** The charge must not be attempted again: record `state` with `reason`. */
export interface AttemptRefused {
  readonly state: 'failed' | 'unknown';
  readonly reason: string;
}

/**
 * Whether a charge may be attempted now, by what the ledger holds (so the answer survives any
 * crash): not when its attempts are used up (a crash cut off its last one), nor when it may
 * have been charged and its first attempt is older than the provider keeps keys. Undefined: go.
 */
export function gateAttempt(
  policy: RetryPolicy,
  history: AttemptHistory,
  nowMs: number,
): AttemptRefused | undefined {
  if (history.attempts >= policy.maxAttempts) {
    return history.ambiguous
      ? {
          state: 'unknown',
          reason: `its ${history.attempts} attempts are used up and one may have reached the provider unanswered (cut off by a crash or a timeout)`,
        }
      : { state: 'failed', reason: `its ${history.attempts} attempts are used up` };
  }
  const { firstAttemptAt } = history;
  if (
    history.ambiguous &&
    firstAttemptAt !== undefined &&
    nowMs - firstAttemptAt > policy.keyRetentionMs
  ) {
    return {
      state: 'unknown',
      reason: `its first attempt (${new Date(firstAttemptAt).toISOString()}) is older than the provider keeps idempotency keys (--key-retention ${formatHours(policy.keyRetentionMs)}): a retry could charge twice; check this user at the provider`,
    };
  }
  return undefined;
}

function formatHours(ms: number): string {
  const hours = ms / 3_600_000;
  return Number.isInteger(hours) ? `${hours}h` : `${Math.round(ms / 1_000)}s`;
}

function finish(attempts: number, ambiguous: boolean, state: AttemptTerminalState): RetryFinish {
  return { action: 'finish', state, attempts, ambiguous };
}
