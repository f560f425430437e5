import { z } from 'zod';

/**
 * How to speak to one billing API: the request a charge becomes and what its answers mean.
 * It is data (a config file's `provider` key), validated once by this schema and compiled once
 * (compileRequest, compileRules) before anything is sent. Absent, bulkbill speaks its default
 * shape: POST `{"user_id","amount","currency"}` as JSON with an Idempotency-Key header.
 */

/** A JSON value as a template: strings may hold `{{placeholders}}`. */
export type TemplateValue =
  | string
  | number
  | boolean
  | null
  | readonly TemplateValue[]
  | { readonly [key: string]: TemplateValue };

const templateValue: z.ZodType<TemplateValue> = z.lazy(() =>
  z.union([
    z.string(),
    z.number(),
    z.boolean(),
    z.null(),
    z.array(templateValue),
    z.record(z.string(), templateValue),
  ]),
);

const templateObject = z.record(z.string(), templateValue);

const jsonPath = z
  .string()
  .regex(
    /^\$(?:\.[A-Za-z_][A-Za-z0-9_-]*|\[\d+\]|\["[^"]*"\])*$/,
    'must be a JSON path such as $.error.decline_code or $.errors[0].code',
  );

const statusSelector = z.union([
  z.number().int().min(100).max(599),
  z.string().regex(/^[1-5]xx$/, 'must be a status such as 402 or a class such as "2xx"'),
]);

const bodyCondition = z
  .object({
    /** Where in the JSON answer to look, e.g. `$.resultCode`. */
    path: jsonPath,
    /** Holds when the value there equals this (string, number, boolean or null). */
    equals: z.union([z.string(), z.number(), z.boolean(), z.null()]).optional(),
    /** Holds when the value there is a string starting with this. */
    prefix: z.string().min(1).optional(),
    /** Holds when a value is there (true) or is not (false). */
    exists: z.boolean().optional(),
    /** Holds when the value there is one of these. */
    in: z.array(z.union([z.string(), z.number(), z.boolean(), z.null()])).optional(),
  })
  .strict()
  .refine(
    (condition) =>
      [condition.equals, condition.prefix, condition.exists, condition.in].filter(
        (test) => test !== undefined,
      ).length === 1,
    { message: 'must have exactly one of equals, prefix, exists or in' },
  );

const headerCondition = z
  .object({
    /** The answer's header, any case. */
    name: z.string().min(1),
    equals: z.string().optional(),
    prefix: z.string().min(1).optional(),
    exists: z.boolean().optional(),
  })
  .strict()
  .refine(
    (condition) =>
      [condition.equals, condition.prefix, condition.exists].filter((test) => test !== undefined)
        .length === 1,
    { message: 'must have exactly one of equals, prefix or exists' },
  );

/**
 * What an answer means: `charged`; `declined` (for good) or `soft_declined` (declined for now:
 * the charge ends declined, its reason says soft); `retry` (the provider did not process it);
 * `ambiguous` (retry, but the provider may have charged: 5xx-like); `in_progress` (the provider
 * holds this key and its first request has not settled, as a 409 says: wait and retry with the
 * key, never ending `failed`); `fatal` (the run is misconfigured: stop it, leave every charge
 * pending).
 */
export const OUTCOMES = [
  'charged',
  'declined',
  'soft_declined',
  'retry',
  'ambiguous',
  'in_progress',
  'fatal',
] as const;
export type RuleOutcome = (typeof OUTCOMES)[number];

const rule = z
  .object({
    /** The answer's status: a code, a class (`2xx`), or a list of them. Default: any. */
    status: z.union([statusSelector, z.array(statusSelector).min(1)]).optional(),
    /** Conditions on the JSON body; all must hold. */
    body: z.union([bodyCondition, z.array(bodyCondition).min(1)]).optional(),
    /** Conditions on headers; all must hold. */
    header: z.union([headerCondition, z.array(headerCondition).min(1)]).optional(),
    /** What the answer means when every condition holds. */
    outcome: z.enum(OUTCOMES),
    /** JSON paths of the reason to record, tried in order. Default: the response's `reason`. */
    reason: z.union([jsonPath, z.array(jsonPath).min(1)]).optional(),
  })
  .strict();

export const providerSchema = z
  .object({
    /** Constants the templates read as `{{vars.name}}` (a merchant account, a site name). */
    vars: z
      .record(
        z.string().regex(/^[A-Za-z_][A-Za-z0-9_]*$/),
        z.union([z.string(), z.number(), z.boolean()]),
      )
      .default({}),
    request: z
      .object({
        /** Default POST. */
        method: z.enum(['POST', 'PUT', 'PATCH']).default('POST'),
        /**
         * Absolute (`https://{{vars.site}}.chargebee.com/api/v2/invoices`) or a path resolved
         * against the endpoint (`/v1/payment_intents`). Values are URL-encoded. Default: the
         * endpoint itself.
         */
        url: z.string().min(1).optional(),
        /**
         * Headers sent with every charge: `${NAME}` reads environment variable NAME (never
         * stored or logged); `{{idempotency_key}}`, `{{amount}}`, `{{currency}}` and
         * `{{vars.…}}` are filled per charge.
         */
        headers: z.record(z.string(), z.string().min(1)).default({}),
        /** One of: `json` (a JSON value), `form` (an object, form-encoded with bracket nesting), `graphql`. */
        body: z
          .union([
            z.object({ json: templateValue }).strict(),
            z.object({ form: templateObject }).strict(),
            z
              .object({
                graphql: z
                  .object({
                    query: z.string().min(1),
                    variables: templateObject.default({}),
                    operationName: z.string().min(1).optional(),
                  })
                  .strict(),
              })
              .strict(),
          ])
          .default({
            json: { user_id: '{{user_id}}', amount: '{{amount}}', currency: '{{currency}}' },
          }),
      })
      .strict()
      .default({
        method: 'POST',
        headers: {},
        body: { json: { user_id: '{{user_id}}', amount: '{{amount}}', currency: '{{currency}}' } },
      }),
    idempotency: z
      .object({
        /** The header that carries the key; null when a `{{idempotency_key}}` placeholder carries it. Default Idempotency-Key. */
        header: z
          .string()
          .regex(/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/, 'must be a header name (RFC 9110 token)')
          .nullable()
          .default('Idempotency-Key'),
        /**
         * The provider's longest key (Square 45, Adyen 64, Chargebee 100, Stripe 255): a longer
         * key is sent as its SHA-256, base64url, cut to this. At least 22. Default 255.
         */
        maxLength: z.number().int().min(22).max(255).default(255),
      })
      .strict()
      .default({ header: 'Idempotency-Key', maxLength: 255 }),
    response: z
      .object({
        /** Tried in order; the first whose conditions hold decides. Unmatched answers: the default classification. */
        rules: z.array(rule).default([]),
        /** JSON paths of the charge id: on a charged answer, and on a failure answer that names one (GoCardless' 409). */
        chargeId: z
          .object({
            success: z.union([jsonPath, z.array(jsonPath).min(1)]).default('$.id'),
            failure: z.union([jsonPath, z.array(jsonPath).min(1)]).optional(),
          })
          .strict()
          .default({ success: '$.id' }),
        /** JSON paths of the provider's reason for a decline or an error, tried in order. Default `$.error`, `$.message`. */
        reason: z.union([jsonPath, z.array(jsonPath).min(1)]).optional(),
        /** Headers that say whether to retry (`true`/`false`), as Stripe-Should-Retry. */
        shouldRetryHeader: z.string().min(1).optional(),
        /**
         * Headers that say when a rate limit resets, read when a throttled answer has no
         * Retry-After: seconds from now, or (when larger than 10^9) epoch seconds.
         */
        rateLimitResetHeaders: z.array(z.string().min(1)).default([]),
      })
      .strict()
      .default({ rules: [], chargeId: { success: '$.id' }, rateLimitResetHeaders: [] }),
  })
  .strict();

/** A provider description as written (defaults may be left out). */
export type ProviderDescriptionInput = z.input<typeof providerSchema>;
/** A provider description with every default filled in. */
export type ProviderDescription = z.output<typeof providerSchema>;
export type ResponseRule = z.output<typeof rule>;
