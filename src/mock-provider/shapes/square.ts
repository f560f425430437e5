import { currencyProblem, userIdProblem } from '../../domain/charge.js';
import {
  type Answer,
  isoNow,
  isRecord,
  jsonObject,
  type MockShape,
  type ParsedCharge,
  type Rejected,
  type ShapeContext,
  storedAnswer,
} from './shape.js';

/*
 * Square's Payments API, as square/connect-api-specification (api.json) and Square's SDK docs
 * describe it: `POST /v2/payments` with JSON `{source_id, idempotency_key, amount_money: {amount,
 * currency}, reference_id, autocomplete}`, `Authorization: Bearer <access token>`, a
 * `Square-Version` header (not checked). The key is in the body, required, 1 to 45 characters
 * (api.json's minLength/maxLength); `reference_id` (the user) is at most 40 (api.json).
 *
 * - Completed: 200 `{"payment": {id, status: "COMPLETED", amount_money, reference_id, …}}`.
 * - Declined: 402 `{"errors": [{category: "PAYMENT_METHOD_ERROR", code: "GENERIC_DECLINE", …}],
 *   "payment": {…, status: "FAILED"}}`: the errors and FAILED payment as real answers show them;
 *   402 as Square's SDK docs give card declines ("402 Request failed - the card was declined").
 * - Errors: `{"errors": [{category, code, detail, field}]}`; VALUE_TOO_LONG / VALUE_TOO_SHORT
 *   (400) for the key, IDEMPOTENCY_KEY_REUSED (400) for a key reused with another body,
 *   RATE_LIMITED (429), API_ERROR for 5xx (TEMPORARY_ERROR for --fail-rate: Square's "safely retry
 *   with the same idempotency key"), UNAUTHORIZED (401).
 * - Key in progress: Square documents nothing; the mock answers 409 CONFLICT.
 * - Replay: the first answer again (a declined payment is created FAILED, so it replays too).
 */

interface SquareEcho {
  readonly sourceId: string;
}

const KEY_LIMIT = 45;
const REFERENCE_LIMIT = 40;
const DECLINES = [
  { below: 0.6, code: 'GENERIC_DECLINE' },
  { below: 0.85, code: 'INSUFFICIENT_FUNDS' },
  { below: 1, code: 'CVV_FAILURE' },
] as const;

interface SquareError {
  readonly category: string;
  readonly code: string;
  readonly detail: string;
  readonly field?: string;
}

function errors(status: number, ...list: SquareError[]): Answer {
  return { status, body: JSON.stringify({ errors: list }) };
}

function invalid(code: string, detail: string, field?: string): Rejected {
  const error: SquareError =
    field === undefined
      ? { category: 'INVALID_REQUEST_ERROR', code, detail }
      : { category: 'INVALID_REQUEST_ERROR', code, detail, field };
  return { rejected: errors(400, error) };
}

const UNAUTHORIZED = errors(401, {
  category: 'AUTHENTICATION_ERROR',
  code: 'UNAUTHORIZED',
  detail: 'This request could not be authorized.',
});
const RATE_LIMITED = errors(429, {
  category: 'RATE_LIMIT_ERROR',
  code: 'RATE_LIMITED',
  detail: 'Rate limited: too many requests.',
});
const OVERLOADED = errors(503, {
  category: 'API_ERROR',
  code: 'SERVICE_UNAVAILABLE',
  detail: 'Service unavailable.',
});
const UNAVAILABLE = errors(500, {
  category: 'API_ERROR',
  code: 'TEMPORARY_ERROR',
  detail:
    'A temporary internal error occurred. You can safely retry your call using the same idempotency key.',
});
const IN_PROGRESS = errors(409, {
  category: 'INVALID_REQUEST_ERROR',
  code: 'CONFLICT',
  detail: 'Another request with this idempotency key is still being processed.',
});
const REUSED = errors(400, {
  category: 'INVALID_REQUEST_ERROR',
  code: 'IDEMPOTENCY_KEY_REUSED',
  detail: 'The idempotency key has already been used with a different request.',
  field: 'idempotency_key',
});

export function createSquareShape(context: ShapeContext): MockShape<SquareEcho> {
  const expectedAuthorization = `Bearer ${context.apiKey}`;

  function payment(
    charge: ParsedCharge<SquareEcho>,
    id: string,
    completed: boolean,
  ): Record<string, unknown> {
    const now = isoNow();
    const money = { amount: charge.amount, currency: charge.currency };
    return {
      id,
      created_at: now,
      updated_at: now,
      amount_money: money,
      total_money: money,
      approved_money: completed ? money : { amount: 0, currency: charge.currency },
      status: completed ? 'COMPLETED' : 'FAILED',
      source_type: 'CARD',
      card_details: { status: completed ? 'CAPTURED' : 'FAILED' },
      location_id: 'MOCKLOCATION1',
      reference_id: charge.userId,
    };
  }

  return {
    name: 'square',
    route: '/v2/payments',
    keyLimit: KEY_LIMIT,
    storesDeclines: true,
    requestIds: false,
    isChargePath: (path) => path === '/v2/payments',
    authorized: (headers) => headers.authorization === expectedAuthorization,
    parse(_headers, raw): ParsedCharge<SquareEcho> | Rejected {
      const request = jsonObject(raw);
      if (request === undefined) {
        return invalid('EXPECTED_JSON_BODY', 'The request body is not a JSON object.');
      }
      const sourceId = request.source_id;
      if (typeof sourceId !== 'string' || sourceId === '') {
        return invalid('MISSING_REQUIRED_PARAMETER', 'Field must be set', 'source_id');
      }
      const key = request.idempotency_key;
      if (key === undefined || key === null) {
        return invalid('MISSING_REQUIRED_PARAMETER', 'Field must be set', 'idempotency_key');
      }
      if (typeof key !== 'string') {
        return invalid('EXPECTED_STRING', 'Expected a string value', 'idempotency_key');
      }
      const money = request.amount_money;
      if (!isRecord(money)) {
        return invalid('MISSING_REQUIRED_PARAMETER', 'Field must be set', 'amount_money');
      }
      const amount = money.amount;
      if (typeof amount !== 'number' || !Number.isSafeInteger(amount)) {
        return invalid('EXPECTED_INTEGER', 'Expected an integer value', 'amount_money.amount');
      }
      if (amount <= 0) {
        return invalid('INVALID_VALUE', 'Must be greater than 0', 'amount_money.amount');
      }
      if (currencyProblem(money.currency)) {
        return invalid(
          'INVALID_ENUM_VALUE',
          'Expected an ISO 4217 currency code',
          'amount_money.currency',
        );
      }
      const userId = request.reference_id;
      const userProblem = userIdProblem(userId);
      if (userProblem) {
        return invalid(
          userId === undefined ? 'MISSING_REQUIRED_PARAMETER' : 'INVALID_VALUE',
          `reference_id ${userProblem} (the mock's ledger counts charges per reference_id)`,
          'reference_id',
        );
      }
      if ((userId as string).length > REFERENCE_LIMIT) {
        return invalid(
          'VALUE_TOO_LONG',
          `Field must not be greater than ${REFERENCE_LIMIT} length`,
          'reference_id',
        );
      }
      if (request.autocomplete === false) {
        return invalid(
          'INVALID_VALUE',
          'This mock completes payments only: autocomplete must be true',
          'autocomplete',
        );
      }
      const currency = money.currency as string;
      return {
        userId: userId as string,
        amount,
        currency,
        key,
        // Square compares the whole request of a repeated key with the first one's.
        fingerprint: JSON.stringify({ ...request, idempotency_key: undefined }),
        echo: { sourceId },
      };
    },
    chargeId: (serial) => serial.toUpperCase(),
    charged: (charge, chargeId) => ({
      status: 200,
      body: JSON.stringify({ payment: payment(charge, chargeId, true) }),
    }),
    declined(charge, facts) {
      const decline = DECLINES.find((entry) => facts.mix < entry.below) ?? DECLINES[0];
      return {
        status: 402,
        body: JSON.stringify({
          errors: [
            {
              code: decline.code,
              detail: `Authorization error: '${decline.code}'`,
              category: 'PAYMENT_METHOD_ERROR',
            },
          ],
          payment: payment(charge, facts.serial().toUpperCase(), false),
        }),
      };
    },
    replayed: (entry) => storedAnswer(entry),
    inProgress: () => IN_PROGRESS,
    keyReused: () => REUSED,
    badKey: (length) =>
      length === 0
        ? invalid('VALUE_TOO_SHORT', 'Field must not be less than 1 length', 'idempotency_key')
            .rejected
        : invalid(
            'VALUE_TOO_LONG',
            `Field must not be greater than ${KEY_LIMIT} length`,
            'idempotency_key',
          ).rejected,
    unauthorized: () => UNAUTHORIZED,
    rateLimited: () => RATE_LIMITED,
    overloaded: () => OVERLOADED,
    unavailable: () => UNAVAILABLE,
  };
}
