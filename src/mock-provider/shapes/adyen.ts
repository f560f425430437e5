import { amountProblem, currencyProblem, userIdProblem } from '../../domain/charge.js';
import {
  type Answer,
  headerValue,
  isRecord,
  jsonObject,
  type MockShape,
  type ParsedCharge,
  type Rejected,
  type ShapeContext,
  storedAnswer,
  upperId,
} from './shape.js';

/*
 * Adyen's Checkout API, as Adyen/adyen-openapi CheckoutService-v71.json and the
 * @adyen/api-library 32 client describe it: `POST /v71/payments` (the library, 32.x, posts to
 * /v72/payments: both are served) with JSON `{amount: {value, currency}, reference,
 * merchantAccount, shopperReference, paymentMethod, shopperInteraction,
 * recurringProcessingModel}`, `X-API-Key`, an `Idempotency-Key` header of at most 64 characters.
 * The user is `shopperReference` (Adyen: 3 to 256 characters).
 *
 * - Authorised: 200 `{pspReference, resultCode: "Authorised", amount, merchantReference}`.
 * - Declined: 200 too, `resultCode: "Refused"` with `refusalReason` and `refusalReasonCode`.
 * - Errors: `{status, errorCode, message, errorType, pspReference}` with that HTTP status
 *   (the library's HttpClientException carries statusCode and errorCode).
 * - Key in progress: 409 errorCode 704 "request already processed or in progress" with
 *   `Transient-Error: true` (Adyen: retry later with the same key).
 * - Replay: the first answer again. Adyen documents no check of the body: a key reused with
 *   another body is answered as a replay too (the mock counts it as a mismatch).
 * - Every answer to a keyed request echoes the `Idempotency-Key` header, as Adyen's does.
 * Validation codes other than 702 (malformed JSON) are Adyen's generic "000": the mock does not
 * reproduce Adyen's per-field codes.
 */

interface AdyenEcho {
  readonly reference: string;
}

const KEY_LIMIT = 64;
const PATHS = new Set(['/v71/payments', '/v72/payments']);
const REFUSALS = [
  { below: 0.6, code: '2', reason: 'Refused' },
  { below: 0.85, code: '12', reason: 'Not enough balance' },
  { below: 1, code: '5', reason: 'Blocked Card' },
] as const;

function serviceError(
  status: number,
  errorCode: string,
  message: string,
  errorType: string,
  pspReference: string,
  headers?: string[],
): Answer {
  const body = JSON.stringify({ status, errorCode, message, errorType, pspReference });
  return headers === undefined ? { status, body } : { status, body, headers };
}

function keyHeaders(key: string | undefined): string[] | undefined {
  return key === undefined ? undefined : ['idempotency-key', key];
}

export function createAdyenShape(context: ShapeContext): MockShape<AdyenEcho> {
  const apiKey = context.apiKey;
  const pspReference = (requestId: string) => upperId(requestId, 16);

  function invalid(requestId: string, message: string, errorCode = '000', status = 422): Rejected {
    return {
      rejected: serviceError(status, errorCode, message, 'validation', pspReference(requestId)),
    };
  }

  function inProgressAnswer(key: string, requestId: string): Answer {
    return serviceError(
      409,
      '704',
      'request already processed or in progress',
      'validation',
      pspReference(requestId),
      ['idempotency-key', key, 'transient-error', 'true'],
    );
  }

  function paymentResponse(
    charge: ParsedCharge<AdyenEcho>,
    reference: string,
    result: Record<string, string>,
  ): Answer {
    const body = JSON.stringify({
      pspReference: reference,
      ...result,
      amount: { currency: charge.currency, value: charge.amount },
      merchantReference: charge.echo.reference,
    });
    const headers = keyHeaders(charge.key);
    return headers === undefined ? { status: 200, body } : { status: 200, body, headers };
  }

  return {
    name: 'adyen',
    route: '/v71/payments',
    keyLimit: KEY_LIMIT,
    storesDeclines: true,
    requestIds: true,
    isChargePath: (path) => PATHS.has(path),
    authorized: (headers) => headers['x-api-key'] === apiKey,
    parse(headers, raw, requestId): ParsedCharge<AdyenEcho> | Rejected {
      const request = jsonObject(raw);
      if (request === undefined) {
        return invalid(requestId, 'Unexpected input: the body is not a JSON object', '702', 400);
      }
      const amount = request.amount;
      if (!isRecord(amount)) return invalid(requestId, "Required field 'amount' is not provided.");
      const valueProblem = amountProblem(amount.value);
      if (valueProblem) return invalid(requestId, `Invalid amount: value ${valueProblem}`);
      const currencyText = amount.currency;
      if (currencyProblem(currencyText)) {
        return invalid(requestId, `Invalid amount: currency must be an ISO 4217 code.`);
      }
      if (typeof request.merchantAccount !== 'string' || request.merchantAccount === '') {
        return invalid(requestId, "Required field 'merchantAccount' is not provided.");
      }
      const reference = request.reference;
      if (typeof reference !== 'string' || reference === '') {
        return invalid(requestId, "Required field 'reference' is not provided.");
      }
      if (!isRecord(request.paymentMethod)) {
        return invalid(requestId, "Required field 'paymentMethod' is not provided.");
      }
      const userId = request.shopperReference;
      const userProblem = userIdProblem(userId);
      if (userProblem) return invalid(requestId, `shopperReference ${userProblem}`);
      if ((userId as string).length < 3) {
        return invalid(requestId, 'shopperReference must be at least 3 characters.');
      }
      const value = amount.value as number;
      const currency = currencyText as string;
      return {
        userId: userId as string,
        amount: value,
        currency,
        key: headerValue(headers, 'idempotency-key'),
        fingerprint: `${userId}\u0000${value}\u0000${currency}\u0000${reference}\u0000${request.merchantAccount}`,
        echo: { reference },
      };
    },
    chargeId: (serial) => upperId(serial, 16),
    charged: (charge, chargeId) => paymentResponse(charge, chargeId, { resultCode: 'Authorised' }),
    declined(charge, facts) {
      const refusal = REFUSALS.find((entry) => facts.mix < entry.below) ?? REFUSALS[0];
      return paymentResponse(charge, upperId(facts.serial(), 16), {
        resultCode: 'Refused',
        refusalReason: refusal.reason,
        refusalReasonCode: refusal.code,
      });
    },
    replayed: (entry, key) => storedAnswer(entry, ['idempotency-key', key]),
    inProgress: inProgressAnswer,
    keyReused: (entry, key, requestId) =>
      entry.status === undefined
        ? inProgressAnswer(key, requestId)
        : storedAnswer(entry, ['idempotency-key', key]),
    // Adyen documents the 64-character limit but not its answer past it.
    badKey: (length, requestId) =>
      serviceError(
        422,
        '000',
        `Idempotency-Key must be 1 to ${KEY_LIMIT} characters, got ${length}.`,
        'validation',
        pspReference(requestId),
      ),
    // As the generic-401 example of Adyen's OpenAPI file: no pspReference, no key echoed.
    unauthorized: () => ({
      status: 401,
      body: JSON.stringify({
        status: 401,
        errorCode: '000',
        message: 'HTTP Status Response - Unauthorized',
        errorType: 'security',
      }),
    }),
    rateLimited: (requestId) =>
      serviceError(429, '000', 'Too many requests', 'internal', pspReference(requestId)),
    overloaded: (requestId) =>
      serviceError(
        503,
        '701',
        'server could not process request',
        'internal',
        pspReference(requestId),
      ),
    unavailable: (requestId) =>
      serviceError(
        500,
        '701',
        'server could not process request',
        'internal',
        pspReference(requestId),
      ),
  };
}
