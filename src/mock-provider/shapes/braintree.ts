import type { IncomingHttpHeaders } from 'node:http';
import { userIdProblem } from '../../domain/charge.js';
import { fromMajorUnits, toMajorUnits } from '../../domain/money.js';
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
 * Braintree's GraphQL API, as braintree/graphql-api's schema, developer.paypal.com's reference
 * and braintree_node's GraphQL client describe it: `POST /graphql` with JSON `{query,
 * variables}` running the `chargePaymentMethod` mutation, `Authorization: Basic
 * base64(public_key:private_key)` (the mock's --api-key is that `public:private` pair), and a
 * `Braintree-Version` header (not checked). Read from `variables.input`:
 * `paymentMethodId`, `transaction.amount` (a decimal string in major units), and
 * `transaction.orderId` (the user).
 *
 * Currency: Braintree has no currency field; a transaction is in its merchant account's
 * currency. The mock reads `transaction.merchantAccountId` as the currency when it is a
 * 3-letter code (`usd`, `EUR`), and takes any other or no merchant account as its default one,
 * in USD.
 *
 * Idempotency: Braintree's "at-most-once processing" key is the mutation input's own
 * `apiRequestKey` (`variables.input.apiRequestKey`). Its documented behaviour: a repeat returns
 * the same transaction (in any status, declined included); a repeat while the first is in flight,
 * or with other input values, is a VALIDATION error. Braintree gives no length limit; the mock
 * allows 255 characters, like clientMutationId's documented maximum.
 *
 * Every answer is HTTP 200, as Braintree's GraphQL guide says; failures are `errors[]` with
 * `extensions.errorClass` (AUTHENTICATION, VALIDATION, RESOURCE_LIMIT, SERVICE_AVAILABILITY:
 * braintree_node maps these to AuthenticationError, TooManyRequestsError, …). A charge is
 * `data.chargePaymentMethod.transaction` with status SUBMITTED_FOR_SETTLEMENT, a decline the
 * same with PROCESSOR_DECLINED and a processorResponse. The mock answers a fixed set of
 * transaction fields whatever the query selects.
 */

interface BraintreeEcho {
  readonly orderId: string;
  readonly merchantAccountId: string;
}

const KEY_LIMIT = 255;
const DEFAULT_CURRENCY = 'USD';
const PROCESSOR_DECLINES = [
  { below: 0.6, legacyCode: '2000', message: 'Do Not Honor' },
  { below: 0.85, legacyCode: '2001', message: 'Insufficient Funds' },
  { below: 1, legacyCode: '2046', message: 'Declined' },
] as const;

interface GraphQlError {
  readonly message: string;
  readonly errorClass: string;
  readonly legacyCode?: string;
  readonly inputPath?: readonly string[];
}

function errorAnswer(requestId: string, error: GraphQlError): Answer {
  const extensions: Record<string, unknown> = {
    errorClass: error.errorClass,
    errorType: error.errorClass === 'VALIDATION' ? 'user_error' : 'developer_error',
  };
  if (error.legacyCode) extensions.legacyCode = error.legacyCode;
  if (error.inputPath) extensions.inputPath = error.inputPath;
  const validation = error.errorClass === 'VALIDATION';
  return {
    status: 200,
    body: JSON.stringify({
      data: validation ? { chargePaymentMethod: null } : null,
      errors: [
        validation
          ? { message: error.message, path: ['chargePaymentMethod'], extensions }
          : { message: error.message, extensions },
      ],
      extensions: { requestId },
    }),
  };
}

function invalid(
  requestId: string,
  message: string,
  inputPath: readonly string[],
  legacyCode?: string,
): Rejected {
  return {
    rejected: errorAnswer(requestId, {
      message,
      errorClass: 'VALIDATION',
      inputPath,
      ...(legacyCode === undefined ? {} : { legacyCode }),
    }),
  };
}

/** A request id in the UUID layout Braintree's have (base36 digits, not hex). */
function uuidOf(serial: string): string {
  const digits = serial.padStart(32, '0');
  return `${digits.slice(0, 8)}-${digits.slice(8, 12)}-${digits.slice(12, 16)}-${digits.slice(16, 20)}-${digits.slice(20)}`;
}

/** A transaction's global id (what `id` holds) and, inside it, its legacy (REST) id. */
function transactionId(serial: string): string {
  return Buffer.from(`transaction_${serial.slice(3)}`).toString('base64');
}

function legacyIdOf(id: string): string {
  return Buffer.from(id, 'base64').toString('utf8').slice('transaction_'.length);
}

export function createBraintreeShape(context: ShapeContext): MockShape<BraintreeEcho> {
  const expectedAuthorization = `Basic ${Buffer.from(context.apiKey ?? '').toString('base64')}`;

  function transaction(
    charge: ParsedCharge<BraintreeEcho>,
    id: string,
    fields: Record<string, unknown>,
    requestId: string,
  ): Answer {
    return {
      status: 200,
      body: JSON.stringify({
        data: {
          chargePaymentMethod: {
            transaction: {
              id,
              legacyId: legacyIdOf(id),
              createdAt: isoNow(),
              amount: {
                value: toMajorUnits(charge.amount, charge.currency),
                currencyCode: charge.currency,
              },
              orderId: charge.echo.orderId,
              merchantAccountId: charge.echo.merchantAccountId,
              ...fields,
            },
          },
        },
        extensions: { requestId: uuidOf(requestId) },
      }),
    };
  }

  function keyError(requestId: string, message: string): Answer {
    return errorAnswer(uuidOf(requestId), {
      message,
      errorClass: 'VALIDATION',
      inputPath: ['input', 'apiRequestKey'],
    });
  }

  return {
    name: 'braintree',
    route: '/graphql',
    keyLimit: KEY_LIMIT,
    storesDeclines: true,
    requestIds: true,
    isChargePath: (path) => path === '/graphql',
    authorized: (headers) => headers.authorization === expectedAuthorization,
    parse(_headers, raw, serverRequestId): ParsedCharge<BraintreeEcho> | Rejected {
      const requestId = uuidOf(serverRequestId);
      const request = jsonObject(raw);
      if (request === undefined) {
        return invalid(requestId, 'The request body is not a JSON object.', []);
      }
      if (typeof request.query !== 'string' || !request.query.includes('chargePaymentMethod')) {
        return invalid(
          requestId,
          'This mock runs only the chargePaymentMethod mutation, with its input in variables.input.',
          [],
        );
      }
      const input = isRecord(request.variables) ? request.variables.input : undefined;
      if (!isRecord(input)) return invalid(requestId, 'Variable input is required.', ['input']);
      const paymentMethodId = input.paymentMethodId;
      if (typeof paymentMethodId !== 'string' || paymentMethodId === '') {
        return invalid(requestId, 'A payment method ID is required.', ['input', 'paymentMethodId']);
      }
      const transactionInput = input.transaction;
      if (!isRecord(transactionInput)) {
        return invalid(requestId, 'Transaction input is required.', ['input', 'transaction']);
      }
      const merchantAccount = transactionInput.merchantAccountId;
      const currency =
        typeof merchantAccount === 'string' && /^[A-Za-z]{3}$/.test(merchantAccount)
          ? merchantAccount.toUpperCase()
          : DEFAULT_CURRENCY;
      const amountText = transactionInput.amount;
      const amountPath = ['input', 'transaction', 'amount'];
      if (amountText === undefined || amountText === null) {
        return invalid(requestId, 'Amount is required.', amountPath, '81502');
      }
      const amount =
        typeof amountText === 'string' ? fromMajorUnits(amountText, currency) : undefined;
      if (amount === undefined) {
        return invalid(requestId, 'Amount is an invalid format.', amountPath, '81503');
      }
      if (amount <= 0) {
        return invalid(requestId, 'Amount must be greater than zero.', amountPath, '81531');
      }
      const userId = transactionInput.orderId;
      const userProblem = userIdProblem(userId);
      if (userProblem) {
        return invalid(
          requestId,
          `orderId ${userProblem} (the mock's ledger counts charges per order id).`,
          ['input', 'transaction', 'orderId'],
        );
      }
      const key = input.apiRequestKey;
      if (key !== undefined && key !== null && typeof key !== 'string') {
        return invalid(requestId, 'apiRequestKey must be a string.', ['input', 'apiRequestKey']);
      }
      return {
        userId: userId as string,
        amount,
        currency,
        key: typeof key === 'string' ? key : undefined,
        fingerprint: `${userId}\u0000${amount}\u0000${currency}\u0000${paymentMethodId}`,
        echo: {
          orderId: userId as string,
          merchantAccountId: typeof merchantAccount === 'string' ? merchantAccount : currency,
        },
      };
    },
    chargeId: transactionId,
    charged: (charge, chargeId, requestId) =>
      transaction(charge, chargeId, { status: 'SUBMITTED_FOR_SETTLEMENT' }, requestId),
    declined(charge, facts) {
      const decline =
        PROCESSOR_DECLINES.find((entry) => facts.mix < entry.below) ?? PROCESSOR_DECLINES[0];
      return transaction(
        charge,
        transactionId(facts.serial()),
        {
          status: 'PROCESSOR_DECLINED',
          processorResponse: { legacyCode: decline.legacyCode, message: decline.message },
        },
        facts.requestId,
      );
    },
    // "The same transaction in its current status": the mock's transactions never move on.
    replayed: (entry) => storedAnswer(entry),
    inProgress: (_key, requestId) =>
      keyError(requestId, 'A request with this apiRequestKey is still being processed.'),
    keyReused: (entry, _key, requestId) =>
      entry.status === undefined
        ? keyError(requestId, 'A request with this apiRequestKey is still being processed.')
        : keyError(requestId, 'This apiRequestKey was already used with different input values.'),
    badKey: (length, requestId) =>
      keyError(requestId, `apiRequestKey must be 1 to ${KEY_LIMIT} characters, got ${length}.`),
    unauthorized: (headers: IncomingHttpHeaders, requestId) =>
      errorAnswer(uuidOf(requestId), {
        message:
          headers.authorization === undefined
            ? 'Authentication credentials are missing. Authorization header is required and must contain a value.'
            : 'Authentication credentials are invalid.',
        errorClass: 'AUTHENTICATION',
      }),
    rateLimited: (requestId) =>
      errorAnswer(uuidOf(requestId), {
        message: 'Too many requests.',
        errorClass: 'RESOURCE_LIMIT',
      }),
    overloaded: (requestId) =>
      errorAnswer(uuidOf(requestId), {
        message: 'The service is unavailable.',
        errorClass: 'SERVICE_AVAILABILITY',
      }),
    unavailable: (requestId) =>
      errorAnswer(uuidOf(requestId), {
        message: 'The service is unavailable.',
        errorClass: 'SERVICE_AVAILABILITY',
      }),
  };
}
