import { amountProblem, currencyProblem, userIdProblem } from '../../domain/charge.js';
import {
  type Answer,
  headerValue,
  isoNow,
  isRecord,
  jsonObject,
  type MockShape,
  type ParsedCharge,
  type Rejected,
  type ShapeContext,
  upperId,
} from './shape.js';

/*
 * GoCardless's Payments API, as developer.gocardless.com, GoCardless's idempotency-keys post and
 * gocardless-nodejs (its errors and fixtures) describe it: `POST /payments` with the resource in
 * an envelope, `{"payments": {amount, currency, links: {mandate}, metadata: {user_id}}}`,
 * `Authorization: Bearer <access token>`, `GoCardless-Version` (not checked), an
 * `Idempotency-Key` header (no documented length limit; the mock allows 255). The user is
 * `metadata.user_id`.
 *
 * - Created: 201 `{"payments": {id: "PM…", status: "pending_submission", …}}`.
 * - A repeat of a key that created a payment is not a replay: 409 `{"error": {type:
 *   "invalid_state", code: 409, errors: [{reason: "idempotent_creation_conflict", links:
 *   {conflicting_resource_id: "PM…"}}]}}`, whatever the body; the client reads the id from it.
 * - Declines: a Direct Debit fails days later (a `failed` event), never in the create call. The
 *   mock's --decline-rate and --decline-suffix give GoCardless's synchronous refusal instead:
 *   422 invalid_state `mandate_is_inactive`. Nothing is created, so nothing is kept for the key:
 *   a retry with it is processed again.
 * - Key in progress: GoCardless documents nothing; the mock answers 409 invalid_state with the
 *   mock's own reason `idempotent_request_in_progress` (no conflicting_resource_id: nothing is
 *   created yet).
 * - Errors: `{"error": {message, documentation_url, type, request_id, code, errors: [{reason |
 *   field, message}]}}` with `code` the HTTP status: validation_failed 422, invalid_api_usage
 *   (400, 401, 429), gocardless (5xx). Every answer has an `X-Request-Id` header.
 */

interface GoCardlessEcho {
  readonly mandate: string;
  readonly metadata: Record<string, unknown>;
}

const KEY_LIMIT = 255;
const DOCS = 'https://developer.gocardless.com/api-reference';

interface GoCardlessError {
  readonly reason?: string;
  readonly field?: string;
  readonly request_pointer?: string;
  readonly message: string;
  readonly links?: Record<string, string>;
}

function requestIdOf(serial: string): string {
  return serial.toUpperCase();
}

function errorAnswer(
  status: number,
  type: string,
  message: string,
  serial: string,
  error: GoCardlessError,
): Answer {
  const requestId = requestIdOf(serial);
  const anchor = error.reason ?? type;
  return {
    status,
    body: JSON.stringify({
      error: {
        message,
        documentation_url: `${DOCS}#${anchor}`,
        type,
        request_id: requestId,
        errors: [error],
        code: status,
      },
    }),
    headers: ['x-request-id', requestId],
  };
}

function invalidField(serial: string, field: string, message: string): Rejected {
  return {
    rejected: errorAnswer(422, 'validation_failed', 'Validation failed', serial, {
      field,
      message,
      request_pointer: `/payments/${field.replaceAll('.', '/')}`,
    }),
  };
}

function inProgressAnswer(serial: string): Answer {
  return errorAnswer(
    409,
    'invalid_state',
    'A request with this idempotency key is still being processed',
    serial,
    {
      reason: 'idempotent_request_in_progress',
      message: 'A request with this idempotency key is still being processed',
    },
  );
}

export function createGoCardlessShape(context: ShapeContext): MockShape<GoCardlessEcho> {
  const expectedAuthorization = `Bearer ${context.apiKey}`;

  return {
    name: 'gocardless',
    route: '/payments',
    keyLimit: KEY_LIMIT,
    storesDeclines: false,
    requestIds: true,
    isChargePath: (path) => path === '/payments',
    authorized: (headers) => headers.authorization === expectedAuthorization,
    parse(headers, raw, serial): ParsedCharge<GoCardlessEcho> | Rejected {
      const request = jsonObject(raw);
      const payment = request?.payments;
      if (!isRecord(payment)) {
        return {
          rejected: errorAnswer(400, 'invalid_api_usage', 'Invalid document structure', serial, {
            reason: 'invalid_document_structure',
            message: 'The body must be a JSON object with a "payments" object',
          }),
        };
      }
      if (payment.amount === undefined) return invalidField(serial, 'amount', 'is required');
      if (amountProblem(payment.amount)) {
        return invalidField(serial, 'amount', 'must be a positive integer (in pence or cents)');
      }
      if (currencyProblem(payment.currency)) {
        return invalidField(serial, 'currency', 'must be an ISO 4217 currency code');
      }
      const mandate = isRecord(payment.links) ? payment.links.mandate : undefined;
      if (typeof mandate !== 'string' || mandate === '') {
        return invalidField(serial, 'links.mandate', 'is required');
      }
      const metadata = payment.metadata;
      const userId = isRecord(metadata) ? metadata.user_id : undefined;
      const userProblem = userIdProblem(userId);
      if (userProblem) {
        return invalidField(
          serial,
          'metadata.user_id',
          `${userProblem} (the mock's ledger counts charges per metadata.user_id)`,
        );
      }
      const amount = payment.amount as number;
      const currency = payment.currency as string;
      return {
        userId: userId as string,
        amount,
        currency,
        key: headerValue(headers, 'idempotency-key'),
        fingerprint: `${userId}\u0000${amount}\u0000${currency}\u0000${mandate}`,
        echo: { mandate, metadata: metadata as Record<string, unknown> },
      };
    },
    chargeId: (serial) => `PM${upperId(serial, 12)}`,
    charged(charge, chargeId, serial) {
      const created = isoNow();
      const requestId = requestIdOf(serial);
      return {
        status: 201,
        body: JSON.stringify({
          payments: {
            id: chargeId,
            created_at: created,
            charge_date: created.slice(0, 10),
            amount: charge.amount,
            description: null,
            currency: charge.currency,
            status: 'pending_submission',
            amount_refunded: 0,
            reference: null,
            metadata: charge.echo.metadata,
            retry_if_possible: true,
            links: { mandate: charge.echo.mandate, creditor: 'CR000MOCK00001' },
          },
        }),
        headers: ['x-request-id', requestId],
      };
    },
    declined: (_charge, facts) =>
      errorAnswer(422, 'invalid_state', 'Mandate is not active', facts.requestId, {
        reason: 'mandate_is_inactive',
        message: 'The mandate for this payment is not active',
      }),
    replayed: (entry, _key, serial) =>
      errorAnswer(
        409,
        'invalid_state',
        'A resource has already been created with this idempotency key',
        serial,
        {
          reason: 'idempotent_creation_conflict',
          message: 'A resource has already been created with this idempotency key',
          links: { conflicting_resource_id: entry.chargeId ?? '' },
        },
      ),
    inProgress: (_key, serial) => inProgressAnswer(serial),
    keyReused(entry, key, serial) {
      // GoCardless answers by key alone: a created payment is the conflict, whatever the body.
      return entry.status === undefined
        ? inProgressAnswer(serial)
        : this.replayed(entry, key, serial);
    },
    badKey: (length, serial) =>
      errorAnswer(400, 'invalid_api_usage', 'Invalid idempotency key', serial, {
        reason: 'invalid_idempotency_key',
        message: `Idempotency-Key must be 1 to ${KEY_LIMIT} characters, got ${length}`,
      }),
    unauthorized: (headers, serial) =>
      headers.authorization === undefined
        ? errorAnswer(401, 'invalid_api_usage', 'Authorization header missing', serial, {
            reason: 'missing_authorization_header',
            message: 'Authorization header missing',
          })
        : errorAnswer(401, 'invalid_api_usage', 'Access token not found', serial, {
            reason: 'access_token_not_found',
            message: 'Access token not found',
          }),
    rateLimited: (serial) =>
      errorAnswer(429, 'invalid_api_usage', 'Rate limit exceeded', serial, {
        reason: 'rate_limit_exceeded',
        message: 'Rate limit exceeded',
      }),
    overloaded: (serial) =>
      errorAnswer(503, 'gocardless', 'Service temporarily unavailable', serial, {
        reason: 'service_unavailable',
        message: 'Service temporarily unavailable',
      }),
    unavailable: (serial) =>
      errorAnswer(500, 'gocardless', 'Internal server error', serial, {
        reason: 'internal_server_error',
        message: 'Internal server error',
      }),
  };
}
