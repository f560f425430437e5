import { describe, expect, it } from 'vitest';
import { parseHttpDate, parseRetryAfter, type WallClock } from '../../src/control/retry-after.js';

const NOW = Date.UTC(2015, 9, 21, 7, 28, 0); // Wed, 21 Oct 2015 07:28:00 GMT
const wallClock: WallClock = { now: () => NOW };
const options = { wallClock, maxMs: 300_000 };

describe('parseRetryAfter', () => {
  it('reads delta-seconds', () => {
    expect(parseRetryAfter('0', options)).toBe(0);
    expect(parseRetryAfter('1', options)).toBe(1_000);
    expect(parseRetryAfter('120', options)).toBe(120_000);
    expect(parseRetryAfter(' 7 ', options)).toBe(7_000);
  });

  it('caps what it honours', () => {
    expect(parseRetryAfter('301', options)).toBe(300_000);
    expect(parseRetryAfter('99999999999999999999999', options)).toBe(300_000);
    expect(parseRetryAfter('10', { wallClock, maxMs: 2_000 })).toBe(2_000);
  });

  it('reads an HTTP date relative to the wall clock it is given', () => {
    expect(parseRetryAfter('Wed, 21 Oct 2015 07:28:30 GMT', options)).toBe(30_000);
    expect(parseRetryAfter('Wed, 21 Oct 2015 08:28:00 GMT', options)).toBe(300_000);
    const later: WallClock = { now: () => NOW + 10_000 };
    expect(parseRetryAfter('Wed, 21 Oct 2015 07:28:30 GMT', { ...options, wallClock: later })).toBe(
      20_000,
    );
  });

  it('reads a date in the past as no wait at all', () => {
    expect(parseRetryAfter('Wed, 21 Oct 2015 07:27:00 GMT', options)).toBe(0);
  });

  it('does not read the clock for delta-seconds', () => {
    const untouchable: WallClock = {
      now: () => {
        throw new Error('read the clock');
      },
    };
    expect(parseRetryAfter('5', { wallClock: untouchable, maxMs: 10_000 })).toBe(5_000);
  });

  it('ignores an absent or malformed value', () => {
    for (const value of [undefined, '', '-1', '1.5', 'soon', '2015-10-21T07:28:30Z', '1e3']) {
      expect(parseRetryAfter(value, options)).toBeUndefined();
    }
    expect(parseRetryAfter('Wed, 31 Feb 2015 07:28:30 GMT', options)).toBeUndefined();
    expect(parseRetryAfter('Wed, 21 Oct 2015 25:28:30 GMT', options)).toBeUndefined();
    expect(parseRetryAfter('Wed, 21 Oct 2015 07:28:30 PST', options)).toBeUndefined();
  });

  it('refuses a cap that is not a number >= 0', () => {
    expect(() => parseRetryAfter('1', { wallClock, maxMs: -1 })).toThrow(
      'Expected `maxMs` to be a finite number >= 0, got -1 (number)',
    );
  });
});

describe('parseHttpDate', () => {
  const expected = Date.UTC(1994, 10, 6, 8, 49, 37);

  it('reads the three forms of RFC 9110', () => {
    expect(parseHttpDate('Sun, 06 Nov 1994 08:49:37 GMT', NOW)).toBe(expected);
    expect(parseHttpDate('Sunday, 06-Nov-94 08:49:37 GMT', NOW)).toBe(expected);
    expect(parseHttpDate('Sun Nov  6 08:49:37 1994', NOW)).toBe(expected);
  });

  it('reads a two-digit year as at most 50 years ahead', () => {
    const in2015 = Date.UTC(2015, 0, 1);
    expect(parseHttpDate('Thursday, 01-Jan-65 00:00:00 GMT', in2015)).toBe(Date.UTC(2065, 0, 1));
    expect(parseHttpDate('Tuesday, 01-Jan-70 00:00:00 GMT', in2015)).toBe(Date.UTC(1970, 0, 1));
  });
});
