import { describe, expect, it } from 'vitest';
import { parseForm } from '../../src/mock-provider/shapes/form-body.js';
import { createShape, SHAPE_NAMES, type ShapeName } from '../../src/mock-provider/shapes/index.js';
import type { ParsedCharge, Rejected } from '../../src/mock-provider/shapes/shape.js';

function shape(name: ShapeName, apiKey?: string) {
  let serial = 0;
  const next = () => (++serial).toString(36).padStart(21, '0');
  return createShape(name, { apiKey, ids: { charge: next, request: next } });
}

function rejectedAnswer(result: ParsedCharge | Rejected): { status: number; json: unknown } {
  expect('rejected' in result, JSON.stringify(result)).toBe(true);
  const { rejected } = result as Rejected;
  return {
    status: rejected.status,
    json: rejected.body === '' ? undefined : JSON.parse(rejected.body),
  };
}

describe('parseForm', () => {
  it('reads bracket names, percent-encoding and + as a space', () => {
    const form = parseForm('amount=1999&metadata[user_id]=a%20b%2Bc&metadata%5Bnote%5D=x+y&flag');
    expect(Object.fromEntries(form ?? [])).toEqual({
      amount: '1999',
      'metadata[user_id]': 'a b+c',
      'metadata[note]': 'x y',
      flag: '',
    });
  });

  it('keeps the last of a repeated name, skips empty pairs, and refuses bad encoding', () => {
    expect(Object.fromEntries(parseForm('a=1&&a=2&') ?? [])).toEqual({ a: '2' });
    expect(parseForm('')?.size).toBe(0);
    expect(parseForm('a=%E0%A4%A')).toBeUndefined();
  });
});

describe('shapes', () => {
  it('has one module per name, each with a charge route of its own or the provider path', () => {
    const routes = Object.fromEntries(SHAPE_NAMES.map((name) => [name, shape(name).route]));
    expect(routes).toEqual({
      default: '/charge',
      stripe: '/v1/payment_intents',
      adyen: '/v71/payments',
      braintree: '/graphql',
      square: '/v2/payments',
      checkout: '/payments',
      gocardless: '/payments',
    });
  });

  it.each(SHAPE_NAMES)(
    '%s refuses a body that is not JSON (or form) the way its provider does',
    (name) => {
      const answer = rejectedAnswer(
        shape(name).parse({}, name === 'stripe' ? 'a=%ZZ' : '{"x":', 'r1'),
      );
      expect(answer.status).toBe(
        {
          default: 400,
          stripe: 400,
          adyen: 400,
          braintree: 200,
          square: 400,
          checkout: 422,
          gocardless: 400,
        }[name],
      );
    },
  );

  it('default: takes the same fields form-encoded, as a form template sends them', () => {
    const form = { 'content-type': 'application/x-www-form-urlencoded' };
    const json = shape('default').parse(
      {},
      '{"user_id":"u 1","amount":1999,"currency":"USD"}',
      'r',
    );
    const formed = shape('default').parse(form, 'user_id=u+1&amount=1999&currency=USD', 'r');
    expect(formed).toEqual(json);
    expect(
      rejectedAnswer(shape('default').parse(form, 'user_id=u1&amount=19.99&currency=USD', 'r')),
    ).toMatchObject({ status: 400, json: { field: 'amount' } });
    expect(
      rejectedAnswer(shape('default').parse(form, 'user_id=%E0%A4&amount=1', 'r')),
    ).toMatchObject({
      status: 400,
      json: { field: 'body', message: 'body is not valid form encoding' },
    });
    // Without the form's content type the body is read as JSON, as before.
    expect(rejectedAnswer(shape('default').parse({}, 'user_id=u1&amount=1999', 'r'))).toMatchObject(
      {
        json: { field: 'body', message: 'body is not valid JSON' },
      },
    );
  });

  it('stripe: names the missing parameter as Stripe does', () => {
    const answer = rejectedAnswer(
      shape('stripe').parse({}, 'currency=usd&confirm=true&payment_method=pm_1', 'r1'),
    );
    expect(answer.json).toMatchObject({
      error: { type: 'invalid_request_error', code: 'parameter_missing', param: 'amount' },
    });
  });

  it('stripe: fingerprints the charge the same whatever the currency case or parameter order', () => {
    const stripe = shape('stripe');
    const one = stripe.parse(
      {},
      'amount=5&currency=usd&confirm=true&payment_method=pm_1&metadata[user_id]=u',
      'r',
    ) as ParsedCharge;
    const two = stripe.parse(
      {},
      'metadata[user_id]=u&payment_method=pm_1&confirm=true&currency=USD&amount=5',
      'r',
    ) as ParsedCharge;
    expect(one.fingerprint).toBe(two.fingerprint);
    expect(one.currency).toBe('USD');
  });

  it('adyen: wants a shopperReference of at least 3 characters, as Adyen does', () => {
    const body = {
      amount: { value: 100, currency: 'EUR' },
      reference: 'r',
      merchantAccount: 'M',
      paymentMethod: { type: 'scheme' },
      shopperReference: 'ab',
    };
    const answer = rejectedAnswer(shape('adyen').parse({}, JSON.stringify(body), 'r1'));
    expect(answer).toMatchObject({ status: 422, json: { errorType: 'validation' } });
  });

  it('braintree: takes a merchant account that is no currency code as the default one, in USD', () => {
    const body = {
      query:
        'mutation ($input: ChargePaymentMethodInput!) { chargePaymentMethod(input: $input) { transaction { id } } }',
      variables: {
        input: {
          paymentMethodId: 'pm',
          transaction: { amount: '10.00', orderId: 'u', merchantAccountId: 'acme_store' },
        },
      },
    };
    const parsed = shape('braintree').parse({}, JSON.stringify(body), 'r1') as ParsedCharge;
    expect(parsed).toMatchObject({ amount: 1000, currency: 'USD', key: undefined });
  });

  it('gocardless: reads the user from metadata inside the payments envelope', () => {
    const body = {
      payments: {
        amount: 100,
        currency: 'GBP',
        links: { mandate: 'MD1' },
        metadata: { user_id: 'u1' },
      },
    };
    const parsed = shape('gocardless').parse(
      { 'idempotency-key': 'k' },
      JSON.stringify(body),
      'r1',
    ) as ParsedCharge;
    expect(parsed).toMatchObject({ userId: 'u1', amount: 100, currency: 'GBP', key: 'k' });
    const bare = rejectedAnswer(shape('gocardless').parse({}, JSON.stringify(body.payments), 'r1'));
    expect(bare.json).toMatchObject({ error: { type: 'invalid_api_usage', code: 400 } });
  });

  it('takes each provider its API key its own way', () => {
    const basic = `Basic ${Buffer.from('pub:priv').toString('base64')}`;
    expect(shape('stripe', 'sk').authorized({ authorization: 'Bearer sk' })).toBe(true);
    expect(shape('adyen', 'AQE').authorized({ 'x-api-key': 'AQE' })).toBe(true);
    expect(shape('adyen', 'AQE').authorized({ authorization: 'Bearer AQE' })).toBe(false);
    expect(shape('braintree', 'pub:priv').authorized({ authorization: basic })).toBe(true);
    expect(shape('checkout', 'sk_1').authorized({ authorization: 'sk_1' })).toBe(true);
    expect(shape('square', 'EAAA').authorized({ authorization: 'Bearer EAAA' })).toBe(true);
    expect(shape('gocardless', 'live_1').authorized({ authorization: 'Bearer nope' })).toBe(false);
  });
});
