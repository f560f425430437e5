// A bulkbill code adapter (docs/adapters.md) on Stripe's official SDK (npm install stripe):
// one confirmed PaymentIntent per charge, under bulkbill's idempotency key.
//
// Environment: STRIPE_SECRET_KEY (required); STRIPE_API_BASE (default https://api.stripe.com;
// http://127.0.0.1:4010 for `bulkbill mock-provider --shape stripe`); STRIPE_TIMEOUT_MS (the
// SDK's own request timeout, default 30000, bulkbill's --timeout applies as well).
// A row's `payment_method` column names the payment method (default pm_card_visa, Stripe's test
// card).
//
//   STRIPE_SECRET_KEY=sk_test_… bulkbill run users.csv --adapter examples/adapters/stripe-sdk.mjs
//
// Outcomes: a succeeded PaymentIntent is charged; StripeCardError declined (with its
// decline_code); a 409 (idempotency key in use) a conflict, waited for; StripeRateLimitError a
// throttle; StripeConnectionError an ambiguous retry (the request may have been processed);
// StripeAPIError 5xx a retry, ambiguous for 500, 502 and 504 (as bulkbill's HTTP client takes
// them), final when Stripe-Should-Retry says false; StripeAuthenticationError and
// StripePermissionError stop the run; StripeInvalidRequestError declines the one charge (bulkbill
// stops the run when the first answers are all the same refusal).

import Stripe from 'stripe';

/** What the run is bound to; set by setup() (an ES module export is a live binding). */
export let endpoint;

const MAY_HAVE_PROCESSED = new Set([500, 502, 504]);
// The connection was refused: the request never left, nothing can have been charged.
const NOT_SENT = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN']);

let stripe;
let secretKey;

export async function setup({ env }) {
  secretKey = env.STRIPE_SECRET_KEY;
  if (!secretKey) throw new Error('set STRIPE_SECRET_KEY');
  const base = new URL(env.STRIPE_API_BASE ?? 'https://api.stripe.com');
  const protocol = base.protocol === 'http:' ? 'http' : 'https';
  stripe = new Stripe(secretKey, {
    host: base.hostname,
    port: Number(base.port || (protocol === 'http' ? 80 : 443)),
    protocol,
    // bulkbill retries, with the same key, after the backoff and the limits it keeps.
    maxNetworkRetries: 0,
    timeout: Number(env.STRIPE_TIMEOUT_MS) || 30_000,
    telemetry: false,
  });
  endpoint = `stripe-sdk:${base.origin}`;
}

/** The secret key: another key is another Stripe account, whose idempotency keys are others. */
export function credentials() {
  return secretKey;
}

export async function charge(charge, ctx) {
  let intent;
  try {
    intent = await stripe.paymentIntents.create(
      {
        amount: charge.amount,
        currency: charge.currency.toLowerCase(),
        confirm: true,
        payment_method: charge.metadata.payment_method || 'pm_card_visa',
        // Billing off-session: a payment method that would redirect the customer is refused.
        automatic_payment_methods: { enabled: true, allow_redirects: 'never' },
        metadata: { user_id: charge.userId },
      },
      { idempotencyKey: ctx.idempotencyKey, maxNetworkRetries: 0 },
    );
  } catch (error) {
    return outcomeOfError(error);
  }
  const status = intent.lastResponse?.statusCode ?? 200;
  switch (intent.status) {
    case 'succeeded':
      return { kind: 'charged', status, chargeId: intent.id };
    case 'processing':
      // It may still succeed: the same key answers with this PaymentIntent as it is then.
      return retry(status, `payment_intent ${intent.id} is processing`, { ambiguous: true });
    case 'requires_action':
    case 'requires_payment_method':
      return {
        kind: 'declined',
        status,
        reason: `${intent.status}: ${intent.last_payment_error?.message ?? 'the customer must act'}`,
      };
    default:
      return retry(status, `payment_intent ${intent.id} is ${intent.status}`, { ambiguous: true });
  }
}

function outcomeOfError(error) {
  const status = error?.statusCode;
  const headers = error?.headers ?? {};
  const said = `${error?.code ? `${error.code}: ` : ''}${error?.message ?? 'error'}`;
  if (error instanceof Stripe.errors.StripeCardError) {
    return {
      kind: 'declined',
      status: status ?? 402,
      reason: `${error.decline_code ?? error.code ?? 'card_declined'}: ${error.message}`,
    };
  }
  if (error instanceof Stripe.errors.StripeRateLimitError) {
    const retryAfterMs = parseRetryAfter(headers['retry-after']);
    return retry(status ?? 429, said, { throttled: true, retryAfterMs });
  }
  if (error instanceof Stripe.errors.StripeIdempotencyError) {
    // The key was first used with other parameters, and that request may have charged: the
    // same key can never succeed, another could charge twice. A human must look.
    return retry(status, said, { ambiguous: true, final: true });
  }
  if (error instanceof Stripe.errors.StripeConnectionError) {
    const code = error.detail?.code;
    return retry(undefined, `${said}${code ? ` (${code})` : ''}`, {
      ambiguous: !NOT_SENT.has(code),
    });
  }
  if (
    error instanceof Stripe.errors.StripeAuthenticationError ||
    error instanceof Stripe.errors.StripePermissionError
  ) {
    return {
      kind: 'fatal',
      status,
      reason: `${status} from Stripe: ${said}; check STRIPE_SECRET_KEY`,
    };
  }
  if (status === 409) {
    // idempotency_key_in_use: the first request with this key is still being processed.
    return retry(409, said, { ambiguous: true, conflict: true });
  }
  if (error instanceof Stripe.errors.StripeAPIError || (status !== undefined && status >= 500)) {
    const shouldRetry = headers['stripe-should-retry'];
    return retry(status, said, {
      ambiguous: status === undefined || MAY_HAVE_PROCESSED.has(status),
      final: shouldRetry === 'false',
      retryAfterMs: status === 503 ? parseRetryAfter(headers['retry-after']) : undefined,
    });
  }
  if (error instanceof Stripe.errors.StripeInvalidRequestError) {
    return { kind: 'declined', status: status ?? 400, reason: said };
  }
  // Not Stripe's answer (a bug, an unexpected error): bulkbill takes a thrown error as an
  // ambiguous retry, naming it.
  throw error;
}

function retry(status, reason, options = {}) {
  return {
    kind: 'retry',
    status,
    reason,
    ambiguous: options.ambiguous ?? false,
    throttled: options.throttled ?? false,
    retryAfterMs: options.retryAfterMs,
    ...(options.conflict ? { conflict: true } : {}),
    ...(options.final ? { final: true } : {}),
  };
}

/** Retry-After in ms: seconds or an HTTP date; undefined when absent or unreadable. */
function parseRetryAfter(value) {
  const text = Array.isArray(value) ? value[0] : value;
  if (typeof text !== 'string' || text.trim() === '') return undefined;
  if (/^\d+$/.test(text.trim())) return Number(text.trim()) * 1_000;
  const at = Date.parse(text);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}
