/**
 * Every error bulkbill raises on purpose carries a stable code. The CLI maps codes to exit
 * statuses in one place (src/cli/exit-codes.ts); `retryable` says whether trying again can help.
 */
export const ErrorCode = {
  /** A flag, option or argument is missing or malformed. */
  Usage: 'BULKBILL_USAGE',
  /** A configuration value (option object, header template, environment) is invalid. */
  Config: 'BULKBILL_CONFIG_INVALID',
  /** The input file holds rows that fail validation. */
  InputInvalid: 'BULKBILL_INPUT_INVALID',
  /** The process was asked to stop (SIGINT/SIGTERM). */
  Interrupted: 'BULKBILL_INTERRUPTED',
  /** A network resource (port, socket) could not be used. */
  Io: 'BULKBILL_IO',
  /** The provider answered 401, 403, 404, 405 or a redirect: the run is misconfigured and stops. */
  ProviderFatal: 'BULKBILL_PROVIDER_FATAL',
} as const;

export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export class BulkbillError extends Error {
  override readonly name: string = 'BulkbillError';
  readonly code: ErrorCode;
  readonly retryable: boolean;

  constructor(
    code: ErrorCode,
    message: string,
    options?: { cause?: unknown; retryable?: boolean },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.retryable = options?.retryable ?? false;
  }
}

/** A flag or option failed validation: the message names the option and the value received. */
export class UsageError extends BulkbillError {
  override readonly name = 'UsageError';
  constructor(message: string) {
    super(ErrorCode.Usage, message);
  }
}

export function isBulkbillError(error: unknown): error is BulkbillError {
  return error instanceof BulkbillError;
}

/** Renders a value for an error message: `-1` (number), `"abc"` (string). */
export function describeValue(value: unknown): string {
  if (typeof value === 'string') return `${JSON.stringify(value)} (string)`;
  if (value === null) return 'null';
  if (value === undefined) return 'nothing';
  if (typeof value === 'object')
    return `${JSON.stringify(value)} (${Array.isArray(value) ? 'array' : 'object'})`;
  return `${String(value)} (${typeof value})`;
}
