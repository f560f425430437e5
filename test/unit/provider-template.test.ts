import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { plainHttpWarning } from '../../src/provider/client.js';
import { type ProviderDescriptionInput, providerSchema } from '../../src/provider/description.js';
import { compileRequest, TemplateRenderError } from '../../src/provider/template.js';

const charge = {
  userId: 'user-1',
  amount: 1234,
  currency: 'USD',
  idempotencyKey: '2026-11:user-1',
  metadata: { customer: 'cus_9', seats: '3', note: 'a&b=c d/é' },
};

function compile(provider: ProviderDescriptionInput, endpoint?: string) {
  return compileRequest(providerSchema.parse(provider), endpoint);
}

describe('request template: JSON body', () => {
  it('renders the default shape exactly as bulkbill always sent it', () => {
    const request = compile({}, 'http://127.0.0.1:4010/charge');
    expect(request.origin).toBe('http://127.0.0.1:4010');
    expect(request.printable).toBe('http://127.0.0.1:4010/charge');
    const rendered = request.render(charge);
    expect(rendered.path).toBe('/charge');
    expect(rendered.headers).toEqual(['idempotency-key', '2026-11:user-1']);
    expect(JSON.parse(rendered.body)).toEqual({ user_id: 'user-1', amount: 1234, currency: 'USD' });
  });

  it('keeps types: a lone placeholder takes the value type, text around one makes a string', () => {
    const request = compile(
      {
        vars: { merchant: 'Acme', version: 71, live: false },
        request: {
          body: {
            json: {
              amount: { value: '{{amount}}', currency: '{{currency}}' },
              major: '{{amount|major}}',
              asText: '{{amount|string}}',
              reference: 'bill-{{user_id}}-{{amount}}',
              seats: '{{seats|number}}',
              customer: '{{customer}}',
              merchantAccount: '{{vars.merchant}}',
              version: '{{vars.version}}',
              live: '{{vars.live}}',
              fixed: [1, true, null, 'x'],
              key: '{{idempotency_key}}',
            },
          },
        },
      },
      'https://pay.example/v1',
    );
    expect(JSON.parse(request.render(charge).body)).toEqual({
      amount: { value: 1234, currency: 'USD' },
      major: '12.34',
      asText: '1234',
      reference: 'bill-user-1-1234',
      seats: 3,
      customer: 'cus_9',
      merchantAccount: 'Acme',
      version: 71,
      live: 'false',
      fixed: [1, true, null, 'x'],
      key: '2026-11:user-1',
    });
    expect([...request.columns].sort()).toEqual(['customer', 'seats']);
    expect(request.numberColumns).toEqual(['seats']);
    expect(request.needsMajorUnits).toBe(true);
  });

  it('writes major units with the ISO 4217 exponent of each currency', () => {
    const request = compile(
      {
        request: { body: { json: { amount: '{{amount|major}}', currency: '{{currency|lower}}' } } },
      },
      'https://pay.example/x',
    );
    const major = (amount: number, currency: string) =>
      JSON.parse(request.render({ ...charge, amount, currency }).body);
    expect(major(1200, 'JPY')).toEqual({ amount: '1200', currency: 'jpy' });
    expect(major(1234, 'KWD')).toEqual({ amount: '1.234', currency: 'kwd' });
    expect(major(5, 'EUR')).toEqual({ amount: '0.05', currency: 'eur' });
    expect(major(1500, 'IQD')).toEqual({ amount: '1.500', currency: 'iqd' });
  });

  it('escapes what JSON must escape in every value', () => {
    const request = compile(
      { request: { body: { json: { u: '{{user_id}}', t: 'x {{note}}' } } } },
      'https://p.example/',
    );
    const body = request.render({ ...charge, userId: 'a"b\\c\n' }).body;
    expect(JSON.parse(body)).toEqual({ u: 'a"b\\c\n', t: 'x a&b=c d/é' });
  });
});

describe('request template: form body', () => {
  it('nests objects in brackets, indexes arrays, encodes keys and values as a browser does', () => {
    const request = compile(
      {
        request: {
          url: '/v1/payment_intents',
          body: {
            form: {
              amount: '{{amount}}',
              currency: '{{currency|lower}}',
              confirm: true,
              metadata: { user_id: '{{user_id}}', note: '{{note}}' },
              items: [{ price: 'price 1' }, { price: 'p&2' }],
              'charges[amount][0]': '{{amount}}',
            },
          },
        },
      },
      'https://api.stripe.com',
    );
    expect(request.contentType).toBe('application/x-www-form-urlencoded');
    const body = request.render(charge).body;
    expect(body).toBe(
      'amount=1234&currency=usd&confirm=true&metadata%5Buser_id%5D=user-1&metadata%5Bnote%5D=a%26b%3Dc+d%2F%C3%A9&items%5B0%5D%5Bprice%5D=price+1&items%5B1%5D%5Bprice%5D=p%262&charges%5Bamount%5D%5B0%5D=1234',
    );
    // What a server's parser reads back is what the template says.
    const parsed = new URLSearchParams(body);
    expect(parsed.get('metadata[user_id]')).toBe('user-1');
    expect(parsed.get('metadata[note]')).toBe('a&b=c d/é');
    expect(parsed.get('items[1][price]')).toBe('p&2');
    expect(request.render(charge).path).toBe('/v1/payment_intents');
  });
});

describe('request template: GraphQL body', () => {
  it('sends the query as written and the variables as a JSON template', () => {
    const query =
      'mutation Charge($input: ChargePaymentMethodInput!) { chargePaymentMethod(input: $input) { transaction { id status } } }';
    const request = compile(
      {
        idempotency: { header: null },
        request: {
          url: '/graphql',
          body: {
            graphql: {
              query,
              variables: {
                input: {
                  paymentMethodId: '{{customer}}',
                  apiRequestKey: '{{idempotency_key}}',
                  transaction: { amount: '{{amount|major}}', orderId: '{{user_id}}' },
                },
              },
            },
          },
        },
      },
      'https://payments.sandbox.braintree-api.com',
    );
    const body = JSON.parse(request.render(charge).body);
    expect(body).toEqual({
      query,
      variables: {
        input: {
          paymentMethodId: 'cus_9',
          apiRequestKey: '2026-11:user-1',
          transaction: { amount: '12.34', orderId: 'user-1' },
        },
      },
    });
    expect(request.idempotencyHeader).toBeUndefined();
    expect(request.render(charge).headers).toEqual([]);
  });
});

describe('request template: URL and headers', () => {
  it('URL-encodes path and query values; the host may read vars only', () => {
    const request = compile(
      {
        vars: { site: 'acme-test' },
        request: {
          url: 'https://{{vars.site}}.chargebee.com/api/v2/customers/{{user_id}}/charges?ref={{note}}',
        },
      },
      undefined,
    );
    expect(request.origin).toBe('https://acme-test.chargebee.com');
    expect(request.printable).toBe(
      'https://acme-test.chargebee.com/api/v2/customers/{{user_id}}/charges?…',
    );
    expect(request.render({ ...charge, userId: 'a/b c?' }).path).toBe(
      '/api/v2/customers/a%2Fb%20c%3F/charges?ref=a%26b%3Dc%20d%2F%C3%A9',
    );
    expect(() => compile({ request: { url: 'https://{{user_id}}.example/x' } })).toThrow(
      /a placeholder in the host may read only \{\{vars\.NAME\}\}/,
    );
    expect(() =>
      compile({ vars: { site: 'a/b' }, request: { url: 'https://{{vars.site}}.example/' } }),
    ).toThrow(/cannot be part of a host name/);
  });

  it('resolves a path against the endpoint, which is needed only then', () => {
    expect(compile({ request: { url: '/v71/payments' } }, 'http://127.0.0.1:9/').printable).toBe(
      'http://127.0.0.1:9/v71/payments',
    );
    expect(
      compile({ request: { url: '/payments' } }, 'http://127.0.0.1:9/sandbox/').printable,
    ).toBe('http://127.0.0.1:9/sandbox/payments');
    expect(() => compile({ request: { url: '/v71/payments' } })).toThrow(/no endpoint/);
    expect(() => compile({})).toThrow(/no endpoint: give --endpoint/);
    expect(() => compile({ request: { url: 'ftp://x.example/' } })).toThrow(/http or https/);
  });

  it('fills per-charge placeholders in headers, and refuses ones a header cannot carry', () => {
    const request = compile(
      {
        idempotency: { header: null },
        request: {
          headers: {
            'Cko-Idempotency-Key': '{{idempotency_key}}',
            'X-Currency': '{{currency|lower}}',
          },
        },
      },
      'https://api.checkout.com/payments',
    );
    expect(request.render(charge).headers).toEqual([
      'Cko-Idempotency-Key',
      '2026-11:user-1',
      'X-Currency',
      'usd',
    ]);
    expect(() =>
      compile({ request: { headers: { 'X-User': '{{user_id}}' } } }, 'https://p.example/'),
    ).toThrow(/a header may read only/);
  });
});

describe('request template: idempotency', () => {
  it('refuses a description that sends no key: a retry could charge twice', () => {
    expect(() => compile({ idempotency: { header: null } }, 'https://p.example/charge')).toThrow(
      /carries no idempotency key/,
    );
  });

  it("cuts a key longer than the provider's limit to its hash, the same on every attempt", () => {
    const request = compile(
      {
        idempotency: { header: null, maxLength: 45 },
        request: { body: { json: { idempotency_key: '{{idempotency_key}}' } } },
      },
      'https://p.example/',
    );
    const long = `2026-11:${'u'.repeat(60)}`;
    const sent = JSON.parse(
      request.render({ ...charge, idempotencyKey: long }).body,
    ).idempotency_key;
    expect(sent).toBe(createHash('sha256').update(long).digest('base64url').slice(0, 45));
    expect(sent.length).toBeLessThanOrEqual(45);
    expect(request.keyFor(long)).toBe(sent);
    // A key within the limit goes as it is.
    expect(JSON.parse(request.render(charge).body).idempotency_key).toBe('2026-11:user-1');
    expect(() => compile({ idempotency: { maxLength: 10 } }, 'https://p.example/')).toThrow();
  });
});

describe('request template: rows', () => {
  const request = compile(
    {
      request: {
        body: { json: { a: '{{amount|major}}', c: '{{customer}}', n: '{{seats|number}}' } },
      },
    },
    'https://p.example/',
  );

  it('names each problem of a row by field before anything is sent', () => {
    expect(request.rowProblems(charge)).toEqual([]);
    expect(
      request.rowProblems({
        ...charge,
        currency: 'ABC',
        metadata: { seats: 'three', customer: '' },
      }),
    ).toEqual([
      {
        field: 'currency',
        reason: expect.stringMatching(/"ABC" is not an ISO 4217 currency.*major units/),
      },
      { field: 'customer', reason: 'is empty, and the provider template reads it' },
      {
        field: 'seats',
        reason: 'must be a number (the provider template reads it with |number), got "three"',
      },
    ]);
    expect(request.rowProblems({ ...charge, metadata: { seats: '1' } })).toEqual([
      { field: 'customer', reason: 'is missing, and the provider template reads it' },
    ]);
  });

  it('never sends a row it cannot fill', () => {
    expect(() => request.render({ ...charge, metadata: {} })).toThrow(TemplateRenderError);
  });
});

describe('request template: mistakes in the description', () => {
  it.each([
    [{ request: { body: { json: { a: '{{amount|shout}}' } } } }, /unknown filter \|shout/],
    [{ request: { body: { json: { a: '{{vars.nope}}' } } } }, /vars\.nope is not defined/],
    [{ request: { body: { json: { a: '{{ user_id' } } } }, /does not open a placeholder/],
    [
      { request: { body: { json: { a: '{{currency|major}}' } } } },
      /\|major does not apply to a currency/,
    ],
    [{ request: { body: { json: { a: '{{user_id|number}}' } } } }, /does not apply to user_id/],
  ] as const)('%j fails to compile, naming the place', (provider, message) => {
    expect(() => compile(provider as ProviderDescriptionInput, 'https://p.example/')).toThrow(
      message,
    );
  });
});

describe('plainHttpWarning', () => {
  it('warns for plain http to another host, never for https or this machine', () => {
    expect(plainHttpWarning(undefined, 'http://pay.example.com/charge')).toMatch(
      /http:\/\/pay\.example\.com over plain http/,
    );
    expect(plainHttpWarning(undefined, 'http://10.0.0.5:4010/charge')).toBeDefined();
    expect(
      plainHttpWarning(
        { request: { url: 'http://{{vars.site}}.example/x' }, vars: { site: 'acme' } },
        undefined,
      ),
    ).toMatch(/acme\.example/);
    for (const quiet of [
      'https://pay.example.com/charge',
      'http://127.0.0.1:4010/charge',
      'http://localhost/x',
      'http://[::1]:80/x',
    ]) {
      expect(plainHttpWarning(undefined, quiet), quiet).toBeUndefined();
    }
  });
});
