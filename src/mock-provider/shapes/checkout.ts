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
  storedAnswer,
} from './shape.js';

/*
 * Checkout.com's Payments API, as checkout.com/docs describes it: `POST /payments` with JSON
 * `{source: {type: "id", id}, amount, currency, reference, metadata}`, `Authorization: Bearer
 * sk_…` (the bare secret key is accepted too), a `Cko-Idempotency-Key` header (no documented
 * length limit; the mock allows 255). The user is `reference`.
 *
 * - Authorized: 201 `{id: "pay_…", approved: true, status: "Authorized", response_code: "10000",
 *   response_summary: "Approved", reference, amount, currency, …}`.
 * - Declined: 201 too, `approved: false`, `status: "Declined"`, response_code 20xxx (soft: may
 *   succeed later) or 30xxx (hard), a mix drawn from the seeded draws.
 * - Only 2xx answers are kept per key (Checkout.com: "if the original request returns a 4xx or
 *   5xx response code, no idempotent result is saved"); declines are 201, so they replay.
 * - A key in progress: 409, "Conflict with another request being processed" (which replaced the
 *   429 the docs first gave). Checkout.com documents no check of the body: a key reused with
 *   another body gets the first answer again (counted as a mismatch).
 * - Invalid requests: 422 `{request_id, error_type: "request_invalid", error_codes}`. 401, 409,
 *   429 and 5xx carry no body. Every answer has a `Cko-Request-Id` header.
 */

interface CheckoutEcho {
  readonly sourceId: string;
  readonly metadata: Record<string, unknown> | undefined;
}

const KEY_LIMIT = 255;
const DECLINES = [
  { below: 0.35, code: '20005', summary: 'Declined - Do Not Honour' },
  { below: 0.6, code: '20051', summary: 'Insufficient Funds' },
  { below: 0.8, code: '30004', summary: 'Pick Up Card - No Fraud' },
  { below: 1, code: '30043', summary: 'Stolen Card - Pick Up' },
] as const;

function requestIdOf(serial: string): string {
  return `req_${serial}`;
}

function bodiless(status: number, serial: string): Answer {
  return { status, body: '', headers: ['cko-request-id', requestIdOf(serial)] };
}

function invalid(serial: string, ...codes: string[]): Rejected {
  const requestId = requestIdOf(serial);
  return {
    rejected: {
      status: 422,
      body: JSON.stringify({
        request_id: requestId,
        error_type: 'request_invalid',
        error_codes: codes,
      }),
      headers: ['cko-request-id', requestId],
    },
  };
}

export function createCheckoutShape(context: ShapeContext): MockShape<CheckoutEcho> {
  const bearer = `Bearer ${context.apiKey}`;
  const bare = context.apiKey;

  function payment(
    charge: ParsedCharge<CheckoutEcho>,
    id: string,
    serial: string,
    result: Record<string, unknown>,
  ): Answer {
    const body: Record<string, unknown> = {
      id,
      action_id: `act_${id.slice('pay_'.length)}`,
      amount: charge.amount,
      currency: charge.currency,
      ...result,
      reference: charge.userId,
      processed_on: isoNow(),
      source: { type: 'card', id: charge.echo.sourceId },
    };
    if (charge.echo.metadata) body.metadata = charge.echo.metadata;
    body._links = { self: { href: `https://api.checkout.com/payments/${id}` } };
    return {
      status: 201,
      body: JSON.stringify(body),
      headers: ['cko-request-id', requestIdOf(serial)],
    };
  }

  return {
    name: 'checkout',
    route: '/payments',
    keyLimit: KEY_LIMIT,
    storesDeclines: true,
    requestIds: true,
    isChargePath: (path) => path === '/payments',
    authorized: (headers) =>
      headers.authorization === bearer || (bare !== undefined && headers.authorization === bare),
    parse(headers, raw, serial): ParsedCharge<CheckoutEcho> | Rejected {
      const request = jsonObject(raw);
      if (request === undefined) return invalid(serial, 'request_body_malformed');
      const source = request.source;
      if (!isRecord(source)) return invalid(serial, 'payment_source_required');
      if (source.type !== 'id' || typeof source.id !== 'string' || source.id === '') {
        return invalid(serial, 'source_id_invalid');
      }
      if (request.amount === undefined) return invalid(serial, 'amount_required');
      if (amountProblem(request.amount)) return invalid(serial, 'amount_invalid');
      if (request.currency === undefined) return invalid(serial, 'currency_required');
      if (currencyProblem(request.currency)) return invalid(serial, 'currency_invalid');
      const userId = request.reference;
      if (userIdProblem(userId)) return invalid(serial, 'reference_invalid');
      const metadata = request.metadata;
      if (metadata !== undefined && !isRecord(metadata)) return invalid(serial, 'metadata_invalid');
      const amount = request.amount as number;
      const currency = request.currency as string;
      return {
        userId: userId as string,
        amount,
        currency,
        key: headerValue(headers, 'cko-idempotency-key'),
        fingerprint: `${userId}\u0000${amount}\u0000${currency}\u0000${source.id}`,
        echo: { sourceId: source.id, metadata },
      };
    },
    chargeId: (serial) => `pay_${serial}`,
    charged: (charge, chargeId, serial) =>
      payment(charge, chargeId, serial, {
        approved: true,
        status: 'Authorized',
        auth_code: chargeId.slice(-6).toUpperCase(),
        response_code: '10000',
        response_summary: 'Approved',
      }),
    declined(charge, facts) {
      const decline = DECLINES.find((entry) => facts.mix < entry.below) ?? DECLINES[0];
      return payment(charge, `pay_${facts.serial()}`, facts.requestId, {
        approved: false,
        status: 'Declined',
        response_code: decline.code,
        response_summary: decline.summary,
      });
    },
    replayed: (entry, _key, serial) => storedAnswer(entry, ['cko-request-id', requestIdOf(serial)]),
    inProgress: (_key, serial) => bodiless(409, serial),
    keyReused: (entry, _key, serial) =>
      entry.status === undefined
        ? bodiless(409, serial)
        : storedAnswer(entry, ['cko-request-id', requestIdOf(serial)]),
    badKey: (_length, serial) => invalid(serial, 'idempotency_key_invalid').rejected,
    unauthorized: (_headers, serial) => bodiless(401, serial),
    rateLimited: (serial) => bodiless(429, serial),
    overloaded: (serial) => bodiless(503, serial),
    unavailable: (serial) => bodiless(503, serial),
  };
}
