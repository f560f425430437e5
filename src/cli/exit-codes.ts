import { ErrorCode, isBulkbillError } from '../domain/errors.js';

/** Exit statuses, the same for every command. */
export const ExitStatus = {
  /** Everything ended as it should. */
  Ok: 0,
  /** Work ended, but not all of it well (e.g. charges failed or unknown). */
  Failed: 1,
  /** Usage, input or configuration error: nothing was done. */
  Usage: 2,
  /** Every charge ended well, but after `--deadline`. */
  DeadlineMissed: 3,
  /** Interrupted by SIGINT/SIGTERM. */
  Interrupted: 130,
} as const;

/** The one place an error becomes an exit status. */
export function exitStatusFor(error: unknown): number {
  if (!isBulkbillError(error)) return ExitStatus.Failed;
  switch (error.code) {
    case ErrorCode.Usage:
    case ErrorCode.Config:
    case ErrorCode.InputInvalid:
    case ErrorCode.Io:
    case ErrorCode.ProviderFatal:
      return ExitStatus.Usage;
    case ErrorCode.Interrupted:
      return ExitStatus.Interrupted;
    default:
      return ExitStatus.Failed;
  }
}
