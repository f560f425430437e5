import { describeValue } from '../domain/errors.js';

/**
 * Calendar time, for the one thing that needs it: a Retry-After given as an HTTP date. Kept
 * apart from the monotonic Clock, whose readings mean nothing as dates.
 */
export interface WallClock {
  /** Milliseconds since the Unix epoch, like Date.now(). */
  now(): number;
}

export interface RetryAfterOptions {
  /** Read only when the value is an HTTP date. */
  readonly wallClock: WallClock;
  /** The longest wait honoured, in ms; longer ones are cut to it. Must be a finite number >= 0. */
  readonly maxMs: number;
}

const DELTA_SECONDS = /^\d+$/;
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
// RFC 9110 §5.6.7: IMF-fixdate, the obsolete RFC 850 form and asctime's.
const IMF_FIXDATE =
  /^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\d\d) ([A-Z][a-z]{2}) (\d{4}) (\d\d):(\d\d):(\d\d) GMT$/;
const RFC_850 =
  /^(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), (\d\d)-([A-Z][a-z]{2})-(\d\d) (\d\d):(\d\d):(\d\d) GMT$/;
const ASCTIME =
  /^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ([A-Z][a-z]{2}) ([ \d]\d) (\d\d):(\d\d):(\d\d) (\d{4})$/;

/**
 * How long a Retry-After header asks us to wait, in ms, between 0 and `maxMs`: delta-seconds
 * (`120`) or an HTTP date (`Wed, 21 Oct 2015 07:28:00 GMT`, a date in the past meaning 0).
 * undefined when the header is absent or malformed, so the caller falls back to its backoff.
 */
export function parseRetryAfter(
  value: string | undefined,
  options: RetryAfterOptions,
): number | undefined {
  if (value === undefined) return undefined;
  const { maxMs } = options;
  if (!(Number.isFinite(maxMs) && maxMs >= 0)) {
    throw new RangeError(
      `Expected \`maxMs\` to be a finite number >= 0, got ${describeValue(maxMs)}`,
    );
  }
  const text = value.trim();
  if (DELTA_SECONDS.test(text)) return Math.min(maxMs, Number(text) * 1_000);
  const nowMs = options.wallClock.now();
  const at = parseHttpDate(text, nowMs);
  if (at === undefined) return undefined;
  return Math.min(maxMs, Math.max(0, at - nowMs));
}

/** An HTTP date as epoch ms, or undefined when `text` is not one of RFC 9110's three forms. */
export function parseHttpDate(text: string, nowMs: number): number | undefined {
  let match = IMF_FIXDATE.exec(text);
  if (match) return utc(match[3], match[2], match[1], match[4], match[5], match[6]);
  match = RFC_850.exec(text);
  if (match) {
    const twoDigits = Number(match[3]);
    // RFC 9110: a two-digit year more than 50 years ahead means the latest such year past.
    const nowYear = new Date(nowMs).getUTCFullYear();
    let year = nowYear - (nowYear % 100) + twoDigits;
    if (year > nowYear + 50) year -= 100;
    return utc(String(year), match[2], match[1], match[4], match[5], match[6]);
  }
  match = ASCTIME.exec(text);
  if (match) return utc(match[6], match[1], match[2], match[3], match[4], match[5]);
  return undefined;
}

function utc(
  yearText: string | undefined,
  monthName: string | undefined,
  dayText: string | undefined,
  hourText: string | undefined,
  minuteText: string | undefined,
  secondText: string | undefined,
): number | undefined {
  const month = MONTHS.indexOf(monthName ?? '');
  const year = Number(yearText);
  const day = Number(dayText?.trim());
  const hour = Number(hourText);
  const minute = Number(minuteText);
  const second = Number(secondText);
  if (month < 0 || day < 1 || hour > 23 || minute > 59 || second > 60) return undefined;
  const ms = Date.UTC(year, month, day, hour, minute, second);
  // Date.UTC rolls 31 Feb over into March; a real date does not.
  return new Date(ms).getUTCDate() === day ? ms : undefined;
}
