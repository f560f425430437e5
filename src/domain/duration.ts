import { UsageError } from './errors.js';

const UNIT_MS = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000 } as const;
const DURATION = /^(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)$/;

/**
 * Parses a duration such as `1.6s`, `250ms`, `2m` or `1h` into milliseconds.
 * A unit is required (a bare `30` is ambiguous), except for `0`.
 * `name` is the flag or option the value came from, for the error message.
 */
export function parseDuration(text: string, name = 'duration'): number {
  const trimmed = text.trim();
  if (trimmed === '0') return 0;
  const match = DURATION.exec(trimmed);
  if (!match) {
    throw new UsageError(
      `${name}: expected a duration such as 250ms, 1.6s, 2m or 1h, got ${JSON.stringify(text)}`,
    );
  }
  const [, amount, unit] = match as unknown as [string, string, keyof typeof UNIT_MS];
  return Number(amount) * UNIT_MS[unit];
}

/** Formats milliseconds for people: `850ms`, `1.6s`, `2m 05s`, `1h 02m`. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return String(ms);
  if (ms < 1_000) return `${Math.round(ms)}ms`;
  if (ms < 60_000) return `${Number((ms / 1_000).toFixed(ms < 10_000 ? 2 : 1))}s`;
  const totalSeconds = Math.round(ms / 1_000);
  const hours = Math.floor(totalSeconds / 3_600);
  const minutes = Math.floor((totalSeconds % 3_600) / 60);
  const seconds = totalSeconds % 60;
  if (hours > 0) return `${hours}h ${String(minutes).padStart(2, '0')}m`;
  return `${minutes}m ${String(seconds).padStart(2, '0')}s`;
}
