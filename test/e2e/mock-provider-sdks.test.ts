import { connect } from 'node:net';
import { createServer as createTlsServer, type Server as TlsServer } from 'node:tls';
import {
  CheckoutAPI,
  Client,
  Config,
  EnvironmentEnum,
  HttpClientException,
  HttpURLConnectionClient,
  Types,
} from '@adyen/api-library';
import Stripe from 'stripe';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  type MockProvider,
  type MockProviderOptions,
  startMockProvider,
} from '../../src/mock-provider/index.js';
import { selfSignedCertificate } from '../helpers/tls.js';

// The mock's stripe and adyen shapes, checked by the providers' own clients: what the official
// SDK parses (objects, replays, declines, error classes) is what the mock answers.

const SECRET = 'sk_test_mock_4eC39HqLyjWDarjtT1zdp7dc';
const running: MockProvider[] = [];

afterEach(async () => {
  await Promise.all(running.splice(0).map((provider) => provider.close({ graceMs: 0 })));
});

async function start(options: MockProviderOptions): Promise<MockProvider> {
  const provider = await startMockProvider({
    port: 0,
    latencyMs: 0,
    jitter: 0,
    seed: 1,
    apiKey: SECRET,
    ...options,
  });
  running.push(provider);
  return provider;
}

/** The error a promise rejects with (fails the test when it resolves). */
async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Error('expected the call to fail');
}

describe('stripe-node against --shape stripe', () => {
  function client(provider: MockProvider, key = SECRET): Stripe {
    return new Stripe(key, {
      host: '127.0.0.1',
      port: provider.port,
      protocol: 'http',
      maxNetworkRetries: 0,
      telemetry: false,
    });
  }

  function charge(userId: string, amount = 1999): Stripe.PaymentIntentCreateParams {
    return {
      amount,
      currency: 'usd',
      confirm: true,
      payment_method: 'pm_card_visa',
      metadata: { user_id: userId },
    };
  }

  it('creates a charge and returns its PaymentIntent', async () => {
    const provider = await start({ shape: 'stripe' });
    const intent = await client(provider).paymentIntents.create(charge('alice'), {
      idempotencyKey: 'cycle:alice',
    });
    expect(intent.id).toMatch(/^pi_/);
    expect(intent).toMatchObject({
      object: 'payment_intent',
      status: 'succeeded',
      amount: 1999,
      currency: 'usd',
      metadata: { user_id: 'alice' },
    });
    expect(intent.latest_charge).toMatch(/^ch_/);
    expect(intent.lastResponse.requestId).toMatch(/^req_/);
    expect(provider.chargesOf('alice')).toEqual([intent.id]);
  });

  it('gets the replay for a repeated idempotency key: the same id, one charge', async () => {
    const provider = await start({ shape: 'stripe' });
    const stripe = client(provider);
    const first = await stripe.paymentIntents.create(charge('bob'), { idempotencyKey: 'k:bob' });
    const again = await stripe.paymentIntents.create(charge('bob'), { idempotencyKey: 'k:bob' });
    expect(again.id).toBe(first.id);
    expect(again.lastResponse.headers['idempotent-replayed']).toBe('true');
    expect(provider.stats()).toMatchObject({ charges: 1, replays: 1, duplicate_charges: 0 });
  });

  it('parses a decline as StripeCardError with a decline_code', async () => {
    const provider = await start({ shape: 'stripe', declineSuffix: '_nope' });
    const error = await rejection(
      client(provider).paymentIntents.create(charge('carol_nope'), { idempotencyKey: 'k:carol' }),
    );
    expect(error).toBeInstanceOf(Stripe.errors.StripeCardError);
    const cardError = error as Stripe.errors.StripeCardError;
    expect(cardError.code).toBe('card_declined');
    expect(cardError.decline_code).toMatch(/^(generic_decline|insufficient_funds|do_not_honor)$/);
    expect(cardError.payment_intent?.status).toBe('requires_payment_method');
    expect(cardError.statusCode).toBe(402);
  });

  it('parses a 409 for a key in progress as StripeAPIError, and one charge is made', async () => {
    const provider = await start({ shape: 'stripe', latencyMs: 150 });
    const stripe = client(provider);
    const results = await Promise.allSettled([
      stripe.paymentIntents.create(charge('dave'), { idempotencyKey: 'k:dave' }),
      stripe.paymentIntents.create(charge('dave'), { idempotencyKey: 'k:dave' }),
    ]);
    const refused = results.find((result) => result.status === 'rejected');
    expect(results.filter((result) => result.status === 'fulfilled')).toHaveLength(1);
    const error = (refused as PromiseRejectedResult).reason;
    // stripe-node has no class of its own for a 409: the generic StripeAPIError carries it.
    expect(error).toBeInstanceOf(Stripe.errors.StripeAPIError);
    expect(error).toMatchObject({ statusCode: 409, code: 'idempotency_key_in_use' });
    expect(provider.stats()).toMatchObject({ charges: 1, conflicts: 1 });
  });

  it('parses the same key with other parameters as StripeIdempotencyError', async () => {
    const provider = await start({ shape: 'stripe' });
    const stripe = client(provider);
    await stripe.paymentIntents.create(charge('erin'), { idempotencyKey: 'k:erin' });
    const error = await rejection(
      stripe.paymentIntents.create(charge('erin', 2000), { idempotencyKey: 'k:erin' }),
    );
    expect(error).toBeInstanceOf(Stripe.errors.StripeIdempotencyError);
  });

  it('parses an invalid API key as StripeAuthenticationError, and the key is not echoed', async () => {
    const provider = await start({ shape: 'stripe' });
    const error = await rejection(
      client(provider, 'sk_test_wrong_key_000').paymentIntents.create(charge('frank')),
    );
    expect(error).toBeInstanceOf(Stripe.errors.StripeAuthenticationError);
    expect((error as Stripe.errors.StripeError).message).not.toContain('sk_test_wrong_key_000');
    expect(provider.stats()).toMatchObject({ unauthorized: 1, charges: 0 });
  });

  it('parses the rate limit as StripeRateLimitError', async () => {
    const provider = await start({ shape: 'stripe', rate: 0.001, burst: 1 });
    const stripe = client(provider);
    await stripe.paymentIntents.create(charge('gina'), { idempotencyKey: 'k:gina' });
    const error = await rejection(
      stripe.paymentIntents.create(charge('hank'), { idempotencyKey: 'k:hank' }),
    );
    expect(error).toBeInstanceOf(Stripe.errors.StripeRateLimitError);
  });
});

describe('@adyen/api-library against --shape adyen', () => {
  // The library speaks HTTPS only (it always builds an https request), and its Checkout
  // services have a fixed base URL (https://checkout-test.adyen.com/v72). Its documented way in is
  // a custom HttpClient on the Client: this one hands every request to the library's own
  // HttpURLConnectionClient, pointed at a TLS front of the mock, so the library's headers,
  // serialization and error parsing are what is tested.
  let front: TlsServer;
  let upstreamPort = 0;

  beforeAll(async () => {
    front = createTlsServer(selfSignedCertificate(), (socket) => {
      const upstream = connect(upstreamPort, '127.0.0.1');
      socket.pipe(upstream).pipe(socket);
      upstream.on('error', () => socket.destroy());
      upstream.on('close', () => socket.destroy());
      socket.on('error', () => upstream.destroy());
    });
    await new Promise<void>((resolve) => front.listen(0, '127.0.0.1', resolve));
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => front.close(() => resolve()));
  });

  async function checkoutFor(provider: MockProvider, apiKey = SECRET): Promise<CheckoutAPI> {
    upstreamPort = provider.port;
    const address = front.address();
    const base = `https://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
    const library = new HttpURLConnectionClient();
    const config = new Config({
      apiKey,
      environment: EnvironmentEnum.TEST,
      // The library's switch for a certificate it cannot check (the TLS front's self-signed one).
      certificatePath: 'unencrypted',
    });
    const client = new Client(config, {
      request: (endpoint, json, requestConfig, isApiKeyRequired, requestOptions) =>
        library.request(
          endpoint.replace('https://checkout-test.adyen.com', base),
          json,
          requestConfig,
          isApiKeyRequired,
          requestOptions,
        ),
    });
    return new CheckoutAPI(client);
  }

  function payment(userId: string, value = 1999): Types.checkout.PaymentRequest {
    const { PaymentRequest, CardDetails } = Types.checkout;
    return {
      amount: { value, currency: 'EUR' },
      reference: `cycle-2026-11-${userId}`,
      merchantAccount: 'MockMerchantECOM',
      shopperReference: userId,
      paymentMethod: {
        type: CardDetails.TypeEnum.Scheme,
        storedPaymentMethodId: 'M5N7TQ4TG5PFWR50',
      },
      shopperInteraction: PaymentRequest.ShopperInteractionEnum.ContAuth,
      recurringProcessingModel: PaymentRequest.RecurringProcessingModelEnum.Subscription,
      // Required by the library's type (redirect flows need it); a stored-card charge never uses it.
      returnUrl: 'https://billing.example.com/adyen/return',
    };
  }

  it('creates a charge and returns its pspReference', async () => {
    const provider = await start({ shape: 'adyen' });
    const checkout = await checkoutFor(provider);
    const response = await checkout.PaymentsApi.payments(payment('alice'), {
      idempotencyKey: 'cycle:alice',
    });
    expect(response.resultCode).toBe('Authorised');
    expect(response.pspReference).toMatch(/^[0-9A-Z]{16}$/);
    expect(response.merchantReference).toBe('cycle-2026-11-alice');
    expect(provider.chargesOf('alice')).toEqual([response.pspReference]);
  });

  it('gets the replay for a repeated idempotency key: the same pspReference, one charge', async () => {
    const provider = await start({ shape: 'adyen' });
    const checkout = await checkoutFor(provider);
    const first = await checkout.PaymentsApi.payments(payment('bob'), { idempotencyKey: 'k:bob' });
    const again = await checkout.PaymentsApi.payments(payment('bob'), { idempotencyKey: 'k:bob' });
    expect(again.pspReference).toBe(first.pspReference);
    expect(provider.stats()).toMatchObject({ charges: 1, replays: 1, duplicate_charges: 0 });
  });

  it('parses a decline as resultCode Refused with a refusal reason', async () => {
    const provider = await start({ shape: 'adyen', declineSuffix: '_nope' });
    const checkout = await checkoutFor(provider);
    const response = await checkout.PaymentsApi.payments(payment('carol_nope'), {
      idempotencyKey: 'k:carol',
    });
    expect(response.resultCode).toBe('Refused');
    expect(response.refusalReason).toBeTruthy();
    expect(response.refusalReasonCode).toMatch(/^\d+$/);
  });

  it('parses a 409 for a key in progress as HttpClientException 704, transient', async () => {
    const provider = await start({ shape: 'adyen', latencyMs: 150 });
    const checkout = await checkoutFor(provider);
    const results = await Promise.allSettled([
      checkout.PaymentsApi.payments(payment('dave'), { idempotencyKey: 'k:dave' }),
      checkout.PaymentsApi.payments(payment('dave'), { idempotencyKey: 'k:dave' }),
    ]);
    expect(results.filter((result) => result.status === 'fulfilled')).toHaveLength(1);
    const error = (results.find((result) => result.status === 'rejected') as PromiseRejectedResult)
      .reason;
    expect(error).toBeInstanceOf(HttpClientException);
    expect(error).toMatchObject({ statusCode: 409, errorCode: '704' });
    expect((error as HttpClientException).responseHeaders?.['transient-error']).toBe('true');
    expect(provider.stats()).toMatchObject({ charges: 1, conflicts: 1 });
  });

  it('parses an invalid API key as HttpClientException 401, errorType security', async () => {
    const provider = await start({ shape: 'adyen' });
    const checkout = await checkoutFor(provider, 'AQE_wrong_key');
    const error = await rejection(checkout.PaymentsApi.payments(payment('erin')));
    expect(error).toBeInstanceOf(HttpClientException);
    expect(error).toMatchObject({ statusCode: 401, apiError: { errorType: 'security' } });
    expect(provider.stats()).toMatchObject({ unauthorized: 1, charges: 0 });
  });
});
