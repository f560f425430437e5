import { parseDuration } from '../domain/duration.js';
import { UsageError } from '../domain/errors.js';

/** commander argument parsers that fail with a message naming the flag and the value. */
export function durationFlag(flag: string): (value: string) => number {
  return (value) => parseDuration(value, flag);
}

export function numberFlag(flag: string): (value: string) => number {
  return (value) => {
    const parsed = Number(value);
    if (value.trim() === '' || !Number.isFinite(parsed)) {
      throw new UsageError(`${flag}: expected a number, got ${JSON.stringify(value)}`);
    }
    return parsed;
  };
}

export function integerFlag(flag: string): (value: string) => number {
  return (value) => {
    const parsed = numberFlag(flag)(value);
    if (!Number.isSafeInteger(parsed)) {
      throw new UsageError(`${flag}: expected a whole number, got ${JSON.stringify(value)}`);
    }
    return parsed;
  };
}

/** `failRate` → `--fail-rate`. */
export function flagName(optionName: string): string {
  return `--${optionName.replace(/[A-Z]/g, (letter) => `-${letter.toLowerCase()}`)}`;
}

const FLAG_OF_BILL_OPTION: Record<string, string> = {
  input: '<input>',
  timeoutMs: '--timeout',
  headers: '--header',
  ledgerInstance: '--ledger',
  reportPath: '--report',
  lockDurationMs: '--lock-duration',
  outageWaitMs: '--outage-wait',
};

/** The flag of an engine option, for errors: `timeoutMs` → `--timeout`, `runId` → `--run-id`. */
export function billLabel(name: string): string {
  return FLAG_OF_BILL_OPTION[name] ?? flagName(name);
}

/** `--concurrency`: a whole number, or `auto`. */
export function concurrencyFlag(flag: string): (value: string) => number | 'auto' {
  const integer = integerFlag(flag);
  return (value) => {
    if (value.trim().toLowerCase() === 'auto') return 'auto';
    try {
      return integer(value);
    } catch {
      throw new UsageError(
        `${flag}: expected a whole number or auto, got ${JSON.stringify(value)}`,
      );
    }
  };
}
