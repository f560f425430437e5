import type { IncomingHttpHeaders } from 'node:http';
import type { IdempotencyEntry } from '../ledger.js';

/** The wire shapes the mock provider speaks: its own (`default`) and real providers' APIs. */
export const SHAPE_NAMES = [
  'default',
  'stripe',
  'adyen',
  'braintree',
  'square',
  'checkout',
  'gocardless',
] as const;

export type ShapeName = (typeof SHAPE_NAMES)[number];

/** One HTTP answer. An empty body is sent without a content type. */
export interface Answer {
  readonly status: number;
  readonly body: string;
  /** Extra headers as a flat [name, value, …] list (the cheapest form writeHead takes). */
  readonly headers?: readonly string[];
}

/** A charge request as a shape read it off the wire. */
export interface ParsedCharge<Echo = unknown> {
  /** The user the charge is for: the mock's ledger counts charges per user. */
  readonly userId: string;
  /** Integer minor units (cents), whatever the wire carried. */
  readonly amount: number;
  /** ISO 4217 code, upper case, whatever case the wire carried. */
  readonly currency: string;
  /** The idempotency key, or undefined when the request carried none. */
  readonly key: string | undefined;
  /** The request's identity for "same key, other body": equal for a faithful retry. */
  readonly fingerprint: string;
  /** What the shape's answers echo back (payment method, reference, metadata, …). */
  readonly echo: Echo;
}

/** A request the shape refused while reading it (its own 400/422), counted as invalid. */
export interface Rejected {
  readonly rejected: Answer;
}

/** What a decline answer may draw on. */
export interface DeclineFacts {
  readonly requestId: string;
  /** A seeded number in [0, 1) for this attempt: picks the decline reason, so runs repeat. */
  readonly mix: number;
  /** A fresh unique serial, for the id of the declined object the provider still creates. */
  serial(): string;
}

/** Unique ids the server hands out; both are base36 text, 21 characters. */
export interface IdSource {
  /** For charges (and declined objects): the same sequence the default shape has always used. */
  charge(): string;
  /** For request ids (Stripe's Request-Id, GoCardless's request_id, …). */
  request(): string;
}

export interface ShapeContext {
  /** When set, charges must carry this API key, the way the provider takes one. */
  readonly apiKey: string | undefined;
  readonly ids: IdSource;
}

/**
 * One provider's wire format. The server keeps the exactly-once bookkeeping (keys, replays,
 * conflicts, the per-user ledger) and the faults; a shape only reads requests and renders each
 * kind of answer the way that provider does. Methods take the request id the server drew for
 * this request ('' when `requestIds` is false).
 */
export interface MockShape<Echo = unknown> {
  readonly name: ShapeName;
  /** The charge route, as shown in the startup banner (the first of `isChargePath`'s). */
  readonly route: string;
  /** Most characters a key may have (a longer one gets `badKey`). */
  readonly keyLimit: number;
  /** Whether a decline is the key's stored answer; false: a retry with the key is processed again. */
  readonly storesDeclines: boolean;
  /** Whether answers carry request ids, so the server draws one per request. */
  readonly requestIds: boolean;
  isChargePath(path: string): boolean;
  /** Only asked when the mock has an API key. */
  authorized(headers: IncomingHttpHeaders): boolean;
  parse(
    headers: IncomingHttpHeaders,
    raw: string,
    requestId: string,
  ): ParsedCharge<Echo> | Rejected;
  /** The provider's id of a charge, from a fresh serial. */
  chargeId(serial: string): string;
  charged(charge: ParsedCharge<Echo>, chargeId: string, requestId: string): Answer;
  declined(charge: ParsedCharge<Echo>, facts: DeclineFacts): Answer;
  /** A repeat of a key whose first request completed (with the same body). */
  replayed(entry: IdempotencyEntry, key: string, requestId: string): Answer;
  /** A repeat of a key whose first request is still being processed. */
  inProgress(key: string, requestId: string): Answer;
  /** A repeat of a key first used with another body (`entry.status` undefined: still in progress). */
  keyReused(entry: IdempotencyEntry, key: string, requestId: string): Answer;
  /** A key that is empty or longer than `keyLimit`. */
  badKey(length: number, requestId: string): Answer;
  unauthorized(headers: IncomingHttpHeaders, requestId: string): Answer;
  /** Past the rate limit; the server adds Retry-After when the mock sends one. */
  rateLimited(requestId: string): Answer;
  /** Past capacity with --overload 503; the server adds `Retry-After: 1`. */
  overloaded(requestId: string): Answer;
  /** --fail-rate: refused before anything was charged (nothing is stored for the key). */
  unavailable(requestId: string): Answer;
}

/** The one header value of `name`, joining repeats as Node does for unknown headers. */
export function headerValue(headers: IncomingHttpHeaders, name: string): string | undefined {
  const value = headers[name];
  return Array.isArray(value) ? value.join(', ') : value;
}

/** A JSON object body, or undefined for anything else (malformed text, arrays, scalars). */
export function jsonObject(raw: string): Record<string, unknown> | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    return undefined;
  }
  return isRecord(parsed) ? parsed : undefined;
}

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** The replay of a stored answer, byte for byte, with extra headers. */
export function storedAnswer(entry: IdempotencyEntry, headers?: readonly string[]): Answer {
  const status = entry.status ?? 500;
  return headers === undefined
    ? { status, body: entry.body }
    : { status, body: entry.body, headers };
}

/** `count` upper-case base36 characters from a serial: its first two and its last count - 2. */
export function upperId(serial: string, count: number): string {
  return (serial.slice(0, 2) + serial.slice(serial.length - (count - 2))).toUpperCase();
}

/** The time now as ISO 8601 text, for the timestamps answers carry. */
export function isoNow(): string {
  return new Date().toISOString();
}
