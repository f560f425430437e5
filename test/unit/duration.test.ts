import { describe, expect, it } from 'vitest';
import { formatDuration, parseDuration } from '../../src/domain/duration.js';

describe('parseDuration', () => {
  it.each([
    ['250ms', 250],
    ['1.6s', 1_600],
    ['.5s', 500],
    ['2m', 120_000],
    ['1h', 3_600_000],
    ['0', 0],
    ['0ms', 0],
    [' 30s ', 30_000],
  ])('reads %j as %d ms', (text, ms) => {
    expect(parseDuration(text)).toBe(ms);
  });

  it.each(['5', '1.6', '-1s', '1d', 's', '', '1 s', '1e3ms', 'NaNs'])(
    'refuses %j, naming the flag',
    (text) => {
      expect(() => parseDuration(text, '--timeout')).toThrow(
        /^--timeout: expected a duration such as 250ms, 1\.6s, 2m or 1h, got /,
      );
    },
  );
});

describe('formatDuration', () => {
  it.each([
    [850, '850ms'],
    [1_600, '1.6s'],
    [12_345, '12.3s'],
    [125_000, '2m 05s'],
    [3_720_000, '1h 02m'],
    [15_840_000, '4h 24m'],
  ])('formats %d ms as %s', (ms, text) => {
    expect(formatDuration(ms)).toBe(text);
  });
});
