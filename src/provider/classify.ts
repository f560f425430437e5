import { STATUS_CODES } from 'node:http';
import { parseRetryAfter, type WallClock } from '../control/retry-after.js';
import { statusVerdict } from '../control/retry-policy.js';
import type { AttemptResult } from '../domain/outcome.js';
import { compileLeadingMember } from './json-path.js';

/** The provider answered: what classification needs of the answer. */
export interface ProviderAnswer {
  readonly type: 'answer';
  readonly status: number;
  /** The Retry-After header, when there was one. */
  readonly retryAfter: string | undefined;
  /** The body as text (possibly cut short); may be empty. */
  readonly body: string;
  /**
   * The body broke off before its end (a reset or the deadline mid-body, or past the size
   * read): what it would have said is unknown. A description's rules that read the body then
   * cannot tell a charge from a refusal.
   */
  readonly truncated?: boolean | undefined;
  /** Every header of the answer, names in lower case (read by a description's rules and hints). */
  readonly headers?: Readonly<Record<string, string | string[] | undefined>> | undefined;
}

/** No answer came. */
export interface TransportFailure {
  readonly type: 'failure';
  /** `timeout`: the attempt's deadline passed; `connection`: the connection failed or broke. */
  readonly failure: 'timeout' | 'connection';
  /**
   * Whether the request had been handed to a connected socket: from then on the provider may
   * have received it, so a failure is ambiguous. Connection refused or DNS errors come before.
   */
  readonly sent: boolean;
  /** The error's code, e.g. ECONNREFUSED or UND_ERR_SOCKET, when it had one. */
  readonly code: string | undefined;
  /** What happened, in words (an error message); never holds a header value. */
  readonly detail: string;
}

export type ProviderExchange = ProviderAnswer | TransportFailure;

/** Masks what a provider echoed of the credentials in a text (see `secretFragments`). */
export type ReasonMask = (text: string) => string;

export interface ClassifyContext {
  /** The endpoint as safe to print (no credentials, no query string), for fatal reasons. */
  readonly endpoint: string;
  /**
   * Applied to every reason taken from an answer before it is cut to length, so no reason the
   * ledger keeps holds a credential the provider echoed (the answer itself is read unmasked).
   */
  readonly mask?: ReasonMask | undefined;
  /** Read only for a Retry-After given as an HTTP date. */
  readonly wallClock: WallClock;
  /** Longest Retry-After honoured, in ms; longer ones are cut to it. */
  readonly maxRetryAfterMs: number;
}

/** Longest provider reason kept, in characters. */
export const REASON_MAX_LENGTH = 200;
/** Longest charge id kept; a longer `id` is not one we can store. */
const CHARGE_ID_MAX_LENGTH = 255;

const FATAL_ADVICE: Readonly<Record<number, string>> = {
  401: 'check the Authorization header',
  403: 'the credentials are not allowed to charge; check the Authorization header',
  404: 'check the endpoint URL',
  405: 'the endpoint does not take POST; check the endpoint URL',
};

// Errors a server or gateway sends while or after handling the request: the charge may be done.
const MAY_HAVE_PROCESSED = new Set([500, 502, 504]);

/**
 * Classifies one attempt (pure; the provider client feeds it):
 * 2xx charged (with the body's `id`); 408, 409, 425, 429 and 5xx retry; 401, 403, 404, 405
 * fatal; any other 4xx declined with the provider's reason; 1xx/3xx/unknown statuses fatal.
 * A failure is a retry, ambiguous exactly when the request had been sent; so are 500, 502 and
 * 504, which a server or gateway sends after it may have processed the charge (503, 408, 425
 * and 429 say it was not), and 409, which says the provider holds the key: a request with it is
 * still being processed, so the charge may be applied. 429, and 503 with a Retry-After, are
 * throttling.
 * Fatal reasons never quote the body, which could echo a secret.
 */
export function classify(exchange: ProviderExchange, context: ClassifyContext): AttemptResult {
  if (exchange.type === 'failure') return classifyFailure(exchange);
  const { status, body } = exchange;
  switch (statusVerdict(status)) {
    case 'charged':
      return { kind: 'charged', status, chargeId: chargeIdOf(body) };
    case 'declined':
      return {
        kind: 'declined',
        status,
        reason: providerReason(body, context.mask) ?? statusLine(status),
      };
    case 'retry': {
      let retryAfterMs: number | undefined;
      if (status === 429 || status === 503 || status === 409) {
        retryAfterMs = parseRetryAfter(exchange.retryAfter, {
          wallClock: context.wallClock,
          maxMs: context.maxRetryAfterMs,
        });
      }
      const said = providerReason(body, context.mask);
      return {
        kind: 'retry',
        status,
        reason: said === undefined ? statusLine(status) : `${status} ${said}`,
        // A 409 says the provider holds the key: an earlier request with it is being processed.
        ambiguous: MAY_HAVE_PROCESSED.has(status) || status === 409,
        // A 503 without Retry-After is a failure, and uses up an attempt like one.
        throttled: status === 429 || (status === 503 && retryAfterMs !== undefined),
        retryAfterMs,
        ...(status === 409 ? { conflict: true } : {}),
      };
    }
    case 'fatal':
      return { kind: 'fatal', status, reason: fatalReason(status, context.endpoint) };
  }
}

function classifyFailure(failure: TransportFailure): AttemptResult {
  const what = failure.code === undefined ? failure.detail : `${failure.detail} (${failure.code})`;
  const when = failure.sent
    ? 'after the request was sent: the provider may have charged'
    : 'before the request was sent';
  return {
    kind: 'retry',
    status: undefined,
    reason: `${failure.failure === 'timeout' ? 'timeout' : 'connection error'}: ${what}, ${when}`,
    ambiguous: failure.sent,
    throttled: false,
    retryAfterMs: undefined,
  };
}

function fatalReason(status: number, endpoint: string): string {
  const advice =
    FATAL_ADVICE[status] ??
    (status >= 300 && status < 400
      ? 'the endpoint redirects; use the URL it redirects to'
      : 'a status the billing API should never send');
  return `${statusLine(status)} from ${endpoint}: ${advice}`;
}

function statusLine(status: number): string {
  const text = STATUS_CODES[status];
  return text === undefined ? String(status) : `${status} ${text}`;
}

function parseObject(body: string): Record<string, unknown> | undefined {
  if (body.length === 0 || body.charCodeAt(0) !== 0x7b /* { */) return undefined;
  try {
    const parsed: unknown = JSON.parse(body);
    return typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)
      ? (parsed as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}

// A 2xx whose body broke off (a reset mid-answer) still names its charge when `id` came first.
const leadingId = compileLeadingMember('$.id') as (body: string) => string | undefined;

function chargeIdOf(body: string): string | undefined {
  const parsed = parseObject(body);
  const id = parsed === undefined ? leadingId(body) : parsed.id;
  const text = typeof id === 'string' ? id : typeof id === 'number' ? String(id) : undefined;
  return text !== undefined && text.length > 0 && text.length <= CHARGE_ID_MAX_LENGTH
    ? text
    : undefined;
}

/**
 * The provider's reason: `error` and `message` of a JSON body (`card_declined`,
 * `invalid_request: amount must be positive`), else the start of a text body; one line, short.
 */
export function providerReason(body: string, mask?: ReasonMask): string | undefined {
  const parsed = parseObject(body);
  let reason: string | undefined;
  if (parsed) {
    const error = typeof parsed.error === 'string' ? parsed.error.trim() : '';
    const message = typeof parsed.message === 'string' ? parsed.message.trim() : '';
    reason =
      error && message && error !== message
        ? `${error}: ${message}`
        : error || message || undefined;
  } else if (body.length > 0) {
    reason = body;
  }
  if (reason === undefined) return undefined;
  return oneLineReason(reason, mask);
}

/**
 * A provider's reason as a report keeps it: one line, credentials masked (before it is cut, so
 * no part of one is left at the cut), at most REASON_MAX_LENGTH characters.
 */
export function oneLineReason(text: string, mask?: ReasonMask): string | undefined {
  const line = oneLine(mask === undefined ? text : mask(text));
  return line.length === 0 ? undefined : truncate(line, REASON_MAX_LENGTH);
}

function oneLine(text: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are the target.
  return text.replace(/[\u0000-\u001f\u007f-\u009f\s]+/g, ' ').trim();
}

function truncate(text: string, max: number): string {
  if (text.length <= max) return text;
  let end = max - 1;
  // Never split a surrogate pair.
  const last = text.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) end--;
  return `${text.slice(0, end)}…`;
}
