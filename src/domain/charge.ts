/** Limits and rules for one charge's fields, shared by input validation and the mock provider. */
export const USER_ID_MAX_LENGTH = 200;
export const IDEMPOTENCY_KEY_MAX_LENGTH = 255;
const CURRENCY = /^[A-Z]{3}$/;

/** A field that failed validation and why, in words a person can act on. */
export interface FieldProblem {
  readonly field: 'user_id' | 'amount' | 'currency';
  readonly reason: string;
}

/** Why `value` is not a valid user id, or undefined when it is one. */
export function userIdProblem(value: unknown): string | undefined {
  if (value === undefined || value === null) return 'is missing';
  if (typeof value !== 'string') return `must be a string, got ${typeof value}`;
  if (value.length === 0) return 'must not be empty';
  if (value.length > USER_ID_MAX_LENGTH) {
    return `must be at most ${USER_ID_MAX_LENGTH} characters, got ${value.length}`;
  }
  // A lone surrogate (a JSON "\ud800" escape) has no UTF-8 form: it would reach the provider,
  // and the ledger, as U+FFFD, another id than the input's.
  const lone = LONE_SURROGATE.exec(value);
  if (lone) {
    const unit = value.charCodeAt(lone.index).toString(16).padStart(4, '0');
    return `must be well-formed Unicode, got a lone surrogate \\u${unit} at character ${lone.index + 1}`;
  }
  return undefined;
}

// With the u flag a surrogate pair is one code point: only unpaired halves match.
const LONE_SURROGATE = /\p{Cs}/u;

/** Why `value` is not a positive integer amount in minor units, or undefined when it is one. */
export function amountProblem(value: unknown): string | undefined {
  if (value === undefined || value === null) return 'is missing';
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    return `must be a number, got ${JSON.stringify(value)}`;
  }
  if (!Number.isSafeInteger(value)) {
    return `must be an integer in minor units (cents), got ${value}`;
  }
  if (value <= 0) return `must be positive, got ${value}`;
  return undefined;
}

/** Why `value` is not an ISO 4217-shaped currency code, or undefined when it is one. */
export function currencyProblem(value: unknown): string | undefined {
  if (value === undefined || value === null) return 'is missing';
  if (typeof value !== 'string' || !CURRENCY.test(value)) {
    return `must be three capital letters such as USD, got ${JSON.stringify(value)}`;
  }
  return undefined;
}

/** The first problem with a charge's fields, checked in a fixed order, or undefined. */
export function chargeFieldsProblem(fields: {
  user_id?: unknown;
  amount?: unknown;
  currency?: unknown;
}): FieldProblem | undefined {
  const userId = userIdProblem(fields.user_id);
  if (userId) return { field: 'user_id', reason: userId };
  const amount = amountProblem(fields.amount);
  if (amount) return { field: 'amount', reason: amount };
  const currency = currencyProblem(fields.currency);
  if (currency) return { field: 'currency', reason: currency };
  return undefined;
}

/**
 * The form of a user id that two spellings of one user share: lower case (Unicode's default
 * mapping) and Unicode NFC, so `Alice@x` and `alice@x`, or `José` precomposed and decomposed, fold
 * alike. Returns '' when the id is its own fold (every lower-case ASCII id): ledgers store a fold
 * only where it differs. Two ids of a run with one fold are refused as one user written twice.
 */
export function userIdFold(userId: string): string {
  const lower = userId.toLowerCase();
  const fold = ASCII.test(lower) ? lower : lower.normalize('NFC');
  return fold === userId ? '' : fold;
}

/** No code point above U+007F (the normalization forms of such text are itself). */
const ASCII = /^[^\u0080-\u{10ffff}]*$/u;

/**
 * Why a row is refused as a user met before (without the `user_id: ` field name): the same id
 * again (`twin` undefined), or an id of the same fold as `twin`'s, on `firstLine` of this input,
 * or (`held`) already in the run from an earlier input of it.
 */
export function duplicateReason(firstLine: number, twin?: string, held = false): string {
  if (twin === undefined) return `appears twice (first on line ${firstLine})`;
  const whose = held ? `"${twin}", whom the run already holds,` : `line ${firstLine}'s "${twin}"`;
  return `differs from ${whose} only by case or Unicode normalization`;
}
