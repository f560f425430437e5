import type { IncomingHttpHeaders } from 'node:http';
import { chargeFieldsProblem, IDEMPOTENCY_KEY_MAX_LENGTH } from '../../domain/charge.js';
import type { IdempotencyEntry } from '../ledger.js';
import { parseForm } from './form-body.js';
import {
  type Answer,
  headerValue,
  type MockShape,
  type ParsedCharge,
  type Rejected,
  type ShapeContext,
} from './shape.js';

// The mock's own shape, which the benchmarks and bulkbill's plain template use: every answer
// here is byte for byte what the mock has always sent.

const REPLAYED = ['idempotent-replayed', 'true'] as const;

function constant(status: number, body: unknown): Answer {
  return { status, body: JSON.stringify(body) };
}

const DECLINED = constant(402, { error: 'card_declined' });
const UNAUTHORIZED = constant(401, {
  error: 'unauthorized',
  message: 'Missing or invalid API key (Authorization: Bearer <key>).',
});
const RATE_LIMITED = constant(429, { error: 'rate_limited', message: 'Too many requests.' });
const OVERLOADED = constant(503, {
  error: 'overloaded',
  message: 'Server at capacity, retry later.',
});
const UNAVAILABLE = constant(503, { error: 'service_unavailable', message: 'Try again.' });
const IN_PROGRESS = constant(409, {
  error: 'idempotency_key_in_use',
  message: 'A request with this Idempotency-Key is still being processed.',
});
const REUSED = constant(422, {
  error: 'idempotency_key_reused',
  message: 'This Idempotency-Key was first used with a different request body.',
});

/** A 400 naming the field, as `{"error":"invalid_request","field","message"}`. */
export function invalidRequest(field: string, reason: string): Answer {
  return constant(400, { error: 'invalid_request', field, message: `${field} ${reason}` });
}

function rejected(field: string, reason: string): Rejected {
  return { rejected: invalidRequest(field, reason) };
}

const FORM = 'application/x-www-form-urlencoded';

class FormRejected implements Rejected {
  constructor(readonly rejected: Answer) {}
}

/**
 * The same three fields form-encoded (`user_id=u1&amount=1999&currency=USD`), as a request
 * template with a form body sends them: the amount digits only, read as the number JSON would
 * carry. Undefined (and read as JSON) unless the request says it is a form.
 */
function formFields(
  headers: IncomingHttpHeaders,
  raw: string,
): Record<string, unknown> | FormRejected | undefined {
  const type = headers['content-type'];
  if (type === undefined || !type.toLowerCase().startsWith(FORM)) return undefined;
  const form = parseForm(raw);
  if (form === undefined)
    return new FormRejected(invalidRequest('body', 'is not valid form encoding'));
  const amount = form.get('amount');
  return {
    user_id: form.get('user_id'),
    amount: amount !== undefined && /^\d{1,16}$/.test(amount) ? Number(amount) : amount,
    currency: form.get('currency'),
  };
}

/**
 * `POST /charge` with JSON `{"user_id", "amount", "currency"}` (or the same fields as a form
 * body) and an `Idempotency-Key` header; `Authorization: Bearer <key>`. 200 `{"id": "ch_…", …}`,
 * 402 `{"error": "card_declined"}`, 409 while a key is in progress, 422 for a key reused with
 * another body.
 */
export function createDefaultShape(context: ShapeContext): MockShape<undefined> {
  const expectedAuthorization = `Bearer ${context.apiKey}`;
  return {
    name: 'default',
    route: '/charge',
    keyLimit: IDEMPOTENCY_KEY_MAX_LENGTH,
    storesDeclines: true,
    requestIds: false,
    isChargePath: (path) => path === '/charge',
    authorized: (headers) => headers.authorization === expectedAuthorization,
    parse(headers: IncomingHttpHeaders, raw: string): ParsedCharge<undefined> | Rejected {
      const form = formFields(headers, raw);
      if (form instanceof FormRejected) return form;
      let parsed: unknown = form;
      if (parsed === undefined) {
        try {
          parsed = JSON.parse(raw);
        } catch {
          return rejected('body', 'is not valid JSON');
        }
      }
      if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
        return rejected('body', 'must be a JSON object');
      }
      const charge = parsed as { user_id?: unknown; amount?: unknown; currency?: unknown };
      const problem = chargeFieldsProblem(charge);
      if (problem) return rejected(problem.field, problem.reason);
      const userId = charge.user_id as string;
      const amount = charge.amount as number;
      const currency = charge.currency as string;
      return {
        userId,
        amount,
        currency,
        key: headerValue(headers, 'idempotency-key'),
        fingerprint: `${userId}\u0000${amount}\u0000${currency}`,
        echo: undefined,
      };
    },
    chargeId: (serial) => `ch_${serial}`,
    charged: (charge, chargeId) => ({
      status: 200,
      body: JSON.stringify({
        id: chargeId,
        user_id: charge.userId,
        amount: charge.amount,
        currency: charge.currency,
        status: 'succeeded',
      }),
    }),
    declined: () => DECLINED,
    replayed: (entry: IdempotencyEntry) => ({
      status: entry.status ?? 500,
      body: entry.body,
      headers: REPLAYED,
    }),
    inProgress: () => IN_PROGRESS,
    keyReused: () => REUSED,
    badKey: (length) =>
      invalidRequest(
        'Idempotency-Key',
        `must be 1 to ${IDEMPOTENCY_KEY_MAX_LENGTH} characters, got ${length}`,
      ),
    unauthorized: () => UNAUTHORIZED,
    rateLimited: () => RATE_LIMITED,
    overloaded: () => OVERLOADED,
    unavailable: () => UNAVAILABLE,
  };
}
