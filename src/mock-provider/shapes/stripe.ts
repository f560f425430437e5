import { userIdProblem } from '../../domain/charge.js';
import { parseForm } from './form-body.js';
import {
  type Answer,
  headerValue,
  type MockShape,
  type ParsedCharge,
  type Rejected,
  type ShapeContext,
} from './shape.js';

/*
 * Stripe's PaymentIntents API, as stripe-node 23 and docs.stripe.com describe it:
 * `POST /v1/payment_intents`, form-encoded with bracket nesting (`metadata[user_id]`),
 * `Authorization: Bearer <secret key>` (Basic with the key as user name works too),
 * `Idempotency-Key` header of at most 255 characters.
 *
 * - Confirmed and charged: 200, a PaymentIntent (`id: pi_…`, `status: "succeeded"`,
 *   `latest_charge: ch_…`). The user is `metadata[user_id]` (the mock's ledger needs one; Stripe
 *   does not): this mock charges only `confirm=true` with a `payment_method`.
 * - Declined: 402 `{"error": {"type": "card_error", "code": "card_declined", "decline_code",
 *   "payment_intent": {…}}}` (stripe-node: StripeCardError).
 * - Replay: the saved status and body with `Idempotent-Replayed: true` and `Original-Request`.
 * - Same key, other parameters: 400 `idempotency_error` (StripeIdempotencyError).
 * - Key in progress: 409 `invalid_request_error` with code `idempotency_key_in_use` (stripe-go's
 *   error-code list; the message as real answers quote it). stripe-node has no class for a 409:
 *   StripeAPIError with statusCode 409, and it retries 409s when retries are on.
 * - 401 `invalid_request_error` (stripe-node: StripeAuthenticationError), never echoing the key.
 * - 429 `rate_limit` (StripeRateLimitError) for the rate and, as Stripe's concurrency limiter
 *   does, for capacity; 503 `api_error` with `Stripe-Should-Retry: true` for --fail-rate.
 * - Every answer has `Request-Id: req_…`, and `Idempotency-Key` when the request had one.
 */

interface StripeEcho {
  readonly paymentMethod: string;
  readonly metadata: Record<string, string>;
  readonly description: string | undefined;
}

const KEY_LIMIT = 255;
const DECLINES = [
  { below: 0.5, code: 'generic_decline', message: 'Your card was declined.' },
  { below: 0.8, code: 'insufficient_funds', message: 'Your card has insufficient funds.' },
  { below: 1, code: 'do_not_honor', message: 'Your card was declined.' },
] as const;
const RATE_LIMIT_MESSAGE =
  'Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.';

function error(status: number, fields: Record<string, unknown>, headers: string[]): Answer {
  return { status, body: JSON.stringify({ error: fields }), headers };
}

function invalid(requestId: string, param: string, message: string, code?: string): Rejected {
  const fields: Record<string, unknown> = code
    ? {
        code,
        doc_url: `https://stripe.com/docs/error-codes/${code.replaceAll('_', '-')}`,
        message,
        param,
        type: 'invalid_request_error',
      }
    : { message, param, type: 'invalid_request_error' };
  return { rejected: error(400, fields, ['request-id', req(requestId)]) };
}

/** Stripe's request ids are `req_…`; the server's serial makes the rest. */
function req(serial: string): string {
  return `req_${serial}`;
}

function headersFor(serial: string, key: string | undefined): string[] {
  return key === undefined
    ? ['request-id', req(serial)]
    : ['request-id', req(serial), 'idempotency-key', key];
}

export function createStripeShape(context: ShapeContext): MockShape<StripeEcho> {
  const bearer = `Bearer ${context.apiKey}`;
  const basic = `Basic ${Buffer.from(`${context.apiKey}:`).toString('base64')}`;

  function paymentIntent(
    charge: ParsedCharge<StripeEcho>,
    id: string,
    status: 'succeeded' | 'requires_payment_method',
  ): Record<string, unknown> {
    const succeeded = status === 'succeeded';
    return {
      id,
      object: 'payment_intent',
      amount: charge.amount,
      amount_capturable: 0,
      amount_received: succeeded ? charge.amount : 0,
      capture_method: 'automatic',
      confirmation_method: 'automatic',
      created: Math.floor(Date.now() / 1_000),
      currency: charge.currency.toLowerCase(),
      customer: null,
      description: charge.echo.description ?? null,
      latest_charge: `ch_${id.slice(3)}`,
      livemode: false,
      metadata: charge.echo.metadata,
      payment_method: charge.echo.paymentMethod,
      payment_method_types: ['card'],
      status,
    };
  }

  return {
    name: 'stripe',
    route: '/v1/payment_intents',
    keyLimit: KEY_LIMIT,
    storesDeclines: true,
    requestIds: true,
    isChargePath: (path) => path === '/v1/payment_intents',
    authorized: (headers) => headers.authorization === bearer || headers.authorization === basic,
    parse(headers, raw, requestId): ParsedCharge<StripeEcho> | Rejected {
      const form = parseForm(raw);
      if (form === undefined) {
        return invalid(requestId, 'body', 'Invalid request: the body is not valid form encoding.');
      }
      const amountText = form.get('amount');
      if (amountText === undefined) {
        return invalid(requestId, 'amount', 'Missing required param: amount.', 'parameter_missing');
      }
      const amount = /^\d{1,16}$/.test(amountText) ? Number(amountText) : Number.NaN;
      if (!Number.isSafeInteger(amount)) {
        return invalid(
          requestId,
          'amount',
          `Invalid integer: ${amountText}`,
          'parameter_invalid_integer',
        );
      }
      if (amount < 1) {
        return invalid(
          requestId,
          'amount',
          'This value must be greater than or equal to 1.',
          'parameter_invalid_integer',
        );
      }
      const currencyText = form.get('currency');
      if (currencyText === undefined) {
        return invalid(
          requestId,
          'currency',
          'Missing required param: currency.',
          'parameter_missing',
        );
      }
      if (!/^[A-Za-z]{3}$/.test(currencyText)) {
        return invalid(requestId, 'currency', `Invalid currency: ${currencyText.toLowerCase()}.`);
      }
      // Stripe itself does not need these; the mock charges confirmed PaymentIntents only.
      if (form.get('confirm') !== 'true') {
        return invalid(
          requestId,
          'confirm',
          'This mock creates confirmed PaymentIntents only: send confirm=true.',
        );
      }
      const paymentMethod = form.get('payment_method');
      if (paymentMethod === undefined || paymentMethod === '') {
        return invalid(
          requestId,
          'payment_method',
          'Missing required param: payment_method.',
          'parameter_missing',
        );
      }
      const userId = form.get('metadata[user_id]');
      const userProblem = userIdProblem(userId);
      if (userProblem) {
        return invalid(
          requestId,
          'metadata[user_id]',
          `metadata[user_id] ${userProblem} (the mock's ledger counts charges per user).`,
          userId === undefined ? 'parameter_missing' : undefined,
        );
      }
      const metadata: Record<string, string> = {};
      for (const [name, value] of form) {
        if (name.startsWith('metadata[') && name.endsWith(']')) {
          metadata[name.slice('metadata['.length, -1)] = value;
        }
      }
      const currency = currencyText.toUpperCase();
      return {
        userId: userId as string,
        amount,
        currency,
        key: headerValue(headers, 'idempotency-key'),
        // Stripe compares every parameter of a repeated key's request with the first one's.
        fingerprint: [...form]
          // Stripe takes a currency in any case: USD and usd are one parameter value.
          .map(([name, value]) => `${name}=${name === 'currency' ? value.toLowerCase() : value}`)
          .sort()
          .join('\u0000'),
        echo: { paymentMethod, metadata, description: form.get('description') },
      };
    },
    chargeId: (serial) => `pi_${serial}`,
    charged(charge, chargeId, requestId) {
      const headers = headersFor(requestId, charge.key);
      headers.push('original-request', req(requestId));
      return {
        status: 200,
        body: JSON.stringify(paymentIntent(charge, chargeId, 'succeeded')),
        headers,
      };
    },
    declined(charge, facts) {
      const decline = DECLINES.find((entry) => facts.mix < entry.below) ?? DECLINES[0];
      const intent = paymentIntent(charge, `pi_${facts.serial()}`, 'requires_payment_method');
      const lastError = {
        code: 'card_declined',
        decline_code: decline.code,
        doc_url: 'https://stripe.com/docs/error-codes/card-declined',
        message: decline.message,
        type: 'card_error',
      };
      intent.last_payment_error = lastError;
      const headers = headersFor(facts.requestId, charge.key);
      headers.push('original-request', req(facts.requestId));
      return error(
        402,
        {
          ...lastError,
          charge: intent.latest_charge,
          payment_intent: intent,
          payment_method: { id: charge.echo.paymentMethod, object: 'payment_method', type: 'card' },
        },
        headers,
      );
    },
    replayed: (entry, key, requestId) => ({
      status: entry.status ?? 500,
      body: entry.body,
      headers: [
        'request-id',
        req(requestId),
        'idempotency-key',
        key,
        'idempotent-replayed',
        'true',
        'original-request',
        req(entry.requestId),
      ],
    }),
    inProgress: (key, requestId) =>
      error(
        409,
        {
          code: 'idempotency_key_in_use',
          doc_url: 'https://stripe.com/docs/error-codes/idempotency-key-in-use',
          message: `There is currently another in-progress request using this Idempotent Key (that probably means you submitted twice, and the other request is still going through): ${key}. Please try again later.`,
          type: 'invalid_request_error',
        },
        headersFor(requestId, key),
      ),
    keyReused: (_entry, key, requestId) =>
      error(
        400,
        {
          message: `Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '${key}' if you meant to execute a different request.`,
          type: 'idempotency_error',
        },
        headersFor(requestId, key),
      ),
    badKey: (length, requestId) =>
      error(
        400,
        {
          message: `Invalid Idempotency-Key: it must be 1 to ${KEY_LIMIT} characters long, got ${length}.`,
          type: 'invalid_request_error',
        },
        ['request-id', req(requestId)],
      ),
    unauthorized: (headers, requestId) =>
      error(
        401,
        {
          message:
            headers.authorization === undefined
              ? "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, or we can help at https://support.stripe.com/."
              : 'Invalid API Key provided.',
          type: 'invalid_request_error',
        },
        ['request-id', req(requestId)],
      ),
    rateLimited: (requestId) =>
      error(
        429,
        {
          code: 'rate_limit',
          doc_url: 'https://stripe.com/docs/error-codes/rate-limit',
          message: RATE_LIMIT_MESSAGE,
          type: 'invalid_request_error',
        },
        ['request-id', req(requestId)],
      ),
    overloaded: (requestId) =>
      error(
        429,
        {
          code: 'rate_limit',
          doc_url: 'https://stripe.com/docs/error-codes/rate-limit',
          message: `Too many concurrent requests. ${RATE_LIMIT_MESSAGE}`,
          type: 'invalid_request_error',
        },
        ['request-id', req(requestId)],
      ),
    unavailable: (requestId) =>
      error(
        503,
        {
          message:
            'The server is temporarily unavailable and did not process your request. Please try again.',
          type: 'api_error',
        },
        ['request-id', req(requestId), 'stripe-should-retry', 'true'],
      ),
  };
}
