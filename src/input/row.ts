import { currencyProblem, userIdProblem } from '../domain/charge.js';

/** The field a problem is about; `row` when the record as a whole is unreadable. */
export type InputField = 'user_id' | 'amount' | 'currency' | 'row' | (string & {});

/** One reason a row cannot be billed, in words a person can act on. */
export interface InputProblem {
  readonly field: InputField;
  readonly reason: string;
}

/** A valid charge read from the input file. */
export interface InputCharge {
  readonly userId: string;
  /** Positive safe integer, in minor units (cents). */
  readonly amount: number;
  /** Three capital letters, such as USD. */
  readonly currency: string;
  /**
   * Every other column (CSV) or key (NDJSON), as strings. When a row has none this is one
   * shared frozen empty object, so rows without metadata cost no allocation.
   */
  readonly metadata: Readonly<Record<string, string>>;
}

/**
 * One record of the input file: a charge, or the problems that stop it from being one.
 * `line` is 1-based and is the line the record starts on.
 */
export type InputRow =
  | {
      readonly line: number;
      readonly charge: InputCharge;
      readonly problems?: undefined;
      readonly rawUserId?: undefined;
    }
  | {
      readonly line: number;
      readonly charge?: undefined;
      readonly problems: readonly InputProblem[];
      /**
       * The row's user_id as it came, when the record could be split into fields and it is text
       * (even an invalid one), so an invalid row can still be reported under its user.
       */
      readonly rawUserId?: string | undefined;
    };

/** The metadata of every row that has none: shared, so it must never be written to. */
export const EMPTY_METADATA: Readonly<Record<string, string>> = Object.freeze({});

// A reason quotes the value it rejects; a runaway field (a quote left open) must not flood the report.
const REASON_MAX_LENGTH = 300;

/** `value` as JSON, cut to a length that fits on a line of a report. */
export function quoteValue(value: string): string {
  return JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}…` : value);
}

function problem(field: InputField, reason: string): InputProblem {
  return {
    field,
    reason: reason.length > REASON_MAX_LENGTH ? `${reason.slice(0, REASON_MAX_LENGTH)}…` : reason,
  };
}

/** A row that is unreadable as a whole (malformed record, invalid JSON, wrong field count). */
export function rowProblem(line: number, reason: string): InputRow {
  return { line, problems: [problem('row', reason)] };
}

/**
 * Validates a row's user id and currency with the domain rules and builds the charge, or the list
 * of every problem. `amountReason` is why `amount` is not valid (the caller knows how the format
 * spells an amount), or undefined when it is.
 */
export function chargeRow(
  line: number,
  userId: unknown,
  amount: unknown,
  amountReason: string | undefined,
  currency: unknown,
  metadata: Readonly<Record<string, string>>,
): InputRow {
  const userIdReason = userIdProblem(userId);
  const currencyReason = currencyProblem(currency);
  if (userIdReason === undefined && amountReason === undefined && currencyReason === undefined) {
    // The three domain rules accept only a string, a number and a string.
    return {
      line,
      charge: {
        userId: userId as string,
        amount: amount as number,
        currency: currency as string,
        metadata,
      },
    };
  }
  const problems: InputProblem[] = [];
  if (userIdReason !== undefined) problems.push(problem('user_id', userIdReason));
  if (amountReason !== undefined) problems.push(problem('amount', amountReason));
  if (currencyReason !== undefined) problems.push(problem('currency', currencyReason));
  return { line, problems, rawUserId: typeof userId === 'string' ? userId : undefined };
}

/** Sets one metadata entry; a key named `__proto__` becomes an ordinary own property. */
export function setMetadata(target: Record<string, string>, key: string, value: string): void {
  if (key === '__proto__') {
    Object.defineProperty(target, key, {
      value,
      enumerable: true,
      writable: true,
      configurable: true,
    });
  } else {
    target[key] = value;
  }
}
