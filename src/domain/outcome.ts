import { BulkbillError, ErrorCode } from './errors.js';

/**
 * Where a charge stands. Every charge starts `pending` and ends in exactly one terminal state;
 * both engines and every ledger use these names, so they are also what a report prints.
 * (An attempt in progress is an engine's business, not a state a ledger keeps.)
 */
export const ChargeState = {
  /** Not yet charged: never tried, waiting for a retry, or left over by a stopped run. */
  Pending: 'pending',
  /** The provider answered 2xx: the user was charged. */
  Charged: 'charged',
  /** The provider refused the charge for good (402, 400, 422, other 4xx). */
  Declined: 'declined',
  /** Attempts exhausted and no attempt can have reached the provider: nothing was charged. */
  Failed: 'failed',
  /** Attempts exhausted and some attempt may have reached the provider: a human must look. */
  Unknown: 'unknown',
  /** The input row failed validation (with --skip-invalid); never sent. */
  Invalid: 'invalid',
} as const;

export type ChargeState = (typeof ChargeState)[keyof typeof ChargeState];

/** The states a charge ends a run in; `--retry-failed` retries `failed` and `unknown` ones with the same key. */
export type TerminalChargeState = Exclude<ChargeState, 'pending'>;

/** The terminal states a retry decision can reach (`invalid` is decided before any attempt). */
export type AttemptTerminalState = Exclude<TerminalChargeState, 'invalid'>;

/** The provider answered 2xx. */
export interface AttemptCharged {
  readonly kind: 'charged';
  readonly status: number;
  /** The provider's charge id (the `id` of the JSON body), when it sent one. */
  readonly chargeId: string | undefined;
}

/** The provider refused the charge for good; retrying cannot help. */
export interface AttemptDeclined {
  readonly kind: 'declined';
  readonly status: number;
  /** The provider's reason (body `error` and/or `message`), shortened; or the status text. */
  readonly reason: string;
}

/** Trying again can help: 408, 409, 425, 429, 5xx, a timeout or a connection error. */
export interface AttemptRetry {
  readonly kind: 'retry';
  /** The answer's status; undefined when no answer came (timeout, connection error). */
  readonly status: number | undefined;
  /** What went wrong, for logs and reports; never holds a header value. */
  readonly reason: string;
  /**
   * The request was sent and then no answer came (timeout, reset): the provider may have
   * charged. A charge whose attempts run out after any ambiguous attempt ends `unknown`.
   */
  readonly ambiguous: boolean;
  /**
   * The provider asked us to slow down (429, or 503 with Retry-After): dispatch pauses for
   * everyone, and the attempt does not use up one of the charge's attempts.
   */
  readonly throttled: boolean;
  /** The provider's Retry-After, in ms from when the answer arrived, capped; undefined when absent. */
  readonly retryAfterMs: number | undefined;
  /**
   * 409: the provider holds this idempotency key and its first request has not settled yet. The
   * charge may be (or be about to be) applied: it is ambiguous, is retried with the same key
   * until the first request settles, and never ends `failed`.
   */
  readonly conflict?: boolean;
  /**
   * The provider said not to retry (Stripe-Should-Retry: false): the charge ends now, `unknown`
   * when an attempt may have reached the provider, else `failed`.
   */
  readonly final?: boolean;
}

/**
 * The provider says the run is misconfigured (401, 403, 404, 405, a redirect): the engine stops
 * the whole run at once and leaves the charges pending.
 */
export interface AttemptFatal {
  readonly kind: 'fatal';
  /** undefined when the HTTP client refused the request before sending it. */
  readonly status: number | undefined;
  /** The cause and what to check, e.g. "401 Unauthorized from …: check the Authorization header". */
  readonly reason: string;
}

/** What one attempt to charge produced: the provider client's answer to the engine. */
export type AttemptResult = AttemptCharged | AttemptDeclined | AttemptRetry | AttemptFatal;

/** Thrown by an engine that stops a run on a fatal attempt result. */
export class ProviderFatalError extends BulkbillError {
  override readonly name = 'ProviderFatalError';
  readonly status: number | undefined;

  constructor(result: AttemptFatal) {
    super(ErrorCode.ProviderFatal, result.reason);
    this.status = result.status;
  }
}
