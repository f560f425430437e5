import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  currencyExponent,
  formatMoney,
  fromMajorUnits,
  majorUnitsProblem,
  NO_MINOR_UNIT,
  toMajorUnits,
} from '../../src/domain/money.js';

describe('currencyExponent (ISO 4217, not Intl)', () => {
  it.each([
    ['JPY', 0],
    ['KRW', 0],
    ['XOF', 0],
    ['USD', 2],
    ['EUR', 2],
    ['KWD', 3],
    ['BHD', 3],
    ['CLF', 4],
    ['UYW', 4],
  ])('%s has %d decimals', (currency, exponent) => {
    expect(currencyExponent(currency)).toBe(exponent);
  });

  // Node's ICU data rounds these to 0 decimals for display; ISO 4217 lists 3, 2 and 2.
  it.each([
    ['IQD', 3],
    ['HUF', 2],
    ['LBP', 2],
  ])('%s has ISO’s %d decimals, where Intl disagrees', (currency, exponent) => {
    expect(currencyExponent(currency)).toBe(exponent);
  });

  it.each(['ABC', 'usd', '', 'US', 'USDX', 'XAU', 'XXX', 'XDR'])(
    'is undefined for %j, which has no known minor unit',
    (currency) => {
      expect(currencyExponent(currency)).toBeUndefined();
    },
  );

  it('leaves out exactly the codes ISO 4217 lists with minor unit "N.A."', async () => {
    // The package turns "N.A." into 0 digits; the list it ships is the truth to check against.
    const root = dirname(createRequire(import.meta.url).resolve('currency-codes/package.json'));
    const xml = await readFile(join(root, 'iso-4217-list-one.xml'), 'utf8');
    const notApplicable = new Set<string>();
    for (const entry of xml.matchAll(/<Ccy>([A-Z]{3})<\/Ccy>[\s\S]*?<CcyMnrUnts>([^<]*)</g)) {
      if (entry[2] === 'N.A.') notApplicable.add(entry[1] as string);
    }
    expect([...NO_MINOR_UNIT].sort()).toEqual([...notApplicable].sort());
  });
});

describe('majorUnitsProblem', () => {
  it('is undefined for a listed currency', () => {
    expect(majorUnitsProblem('USD')).toBeUndefined();
    expect(majorUnitsProblem('JPY')).toBeUndefined();
  });

  it('says why an unlisted code or one without a minor unit cannot be shown in major units', () => {
    expect(majorUnitsProblem('ABC')).toBe(
      '"ABC" is not an ISO 4217 currency, so its minor unit is not known',
    );
    expect(majorUnitsProblem('XAU')).toBe(
      'XAU has no minor unit in ISO 4217, so its amounts have no major-unit form',
    );
  });
});

describe('toMajorUnits', () => {
  it.each([
    [1234, 'JPY', '1234'],
    [0, 'JPY', '0'],
    [1234, 'USD', '12.34'],
    [5, 'USD', '0.05'],
    [50, 'USD', '0.50'],
    [100, 'USD', '1.00'],
    [0, 'USD', '0.00'],
    [1234, 'KWD', '1.234'],
    [7, 'KWD', '0.007'],
    [1234, 'IQD', '1.234'],
    [1234, 'HUF', '12.34'],
    [1234, 'LBP', '12.34'],
    [12_345, 'CLF', '1.2345'],
    [1, 'CLF', '0.0001'],
  ])('%d %s is %j, every decimal of the exponent written', (amount, currency, text) => {
    expect(toMajorUnits(amount, currency)).toBe(text);
  });

  it('writes a negative amount with its sign before the padded digits', () => {
    expect(toMajorUnits(-5, 'USD')).toBe('-0.05');
    expect(toMajorUnits(-1234, 'JPY')).toBe('-1234');
    expect(toMajorUnits(-0, 'USD')).toBe('0.00');
  });

  it('writes the largest safe integer exactly, with no float rounding', () => {
    expect(toMajorUnits(Number.MAX_SAFE_INTEGER, 'USD')).toBe('90071992547409.91');
    expect(toMajorUnits(Number.MAX_SAFE_INTEGER, 'JPY')).toBe('9007199254740991');
    expect(toMajorUnits(Number.MAX_SAFE_INTEGER, 'KWD')).toBe('9007199254740.991');
    // What float division would give instead:
    expect(String(Number.MAX_SAFE_INTEGER / 100)).not.toBe('90071992547409.91');
  });

  it('throws a RangeError for a currency without a known minor unit', () => {
    expect(() => toMajorUnits(100, 'ABC')).toThrow(RangeError);
    expect(() => toMajorUnits(100, 'ABC')).toThrow('"ABC" is not an ISO 4217 currency');
    expect(() => toMajorUnits(100, 'XAU')).toThrow('XAU has no minor unit');
  });

  it.each([1.5, Number.NaN, Number.POSITIVE_INFINITY, Number.MAX_SAFE_INTEGER + 1])(
    'throws a RangeError for %d, not a safe integer of minor units',
    (amount) => {
      expect(() => toMajorUnits(amount, 'USD')).toThrow(RangeError);
    },
  );
});

describe('fromMajorUnits', () => {
  it.each([
    ['12.34', 'USD', 1234],
    ['12.3', 'USD', 1230],
    ['12', 'USD', 1200],
    ['0.05', 'USD', 5],
    ['0', 'USD', 0],
    ['007.50', 'USD', 750],
    ['1200', 'JPY', 1200],
    ['1.234', 'KWD', 1234],
    ['1.2', 'KWD', 1200],
    ['1.234', 'IQD', 1234],
    ['1.2345', 'CLF', 12_345],
    ['90071992547409.91', 'USD', Number.MAX_SAFE_INTEGER],
    ['9007199254740991', 'JPY', Number.MAX_SAFE_INTEGER],
  ])('reads %j %s as %d minor units', (text, currency, amount) => {
    expect(fromMajorUnits(text, currency)).toBe(amount);
  });

  it.each([
    ['12.345', 'USD'],
    ['0.001', 'USD'],
    ['12.0', 'JPY'],
    ['1.2345', 'KWD'],
    ['1.23456', 'CLF'],
  ])('refuses %j %s: more decimals than the exponent', (text, currency) => {
    expect(fromMajorUnits(text, currency)).toBeUndefined();
  });

  it.each([
    '',
    ' 12.34',
    '12.34 ',
    '-12.34',
    '+12.34',
    '12.',
    '.5',
    '1,234.00',
    '1e3',
    '0x10',
    '12.3.4',
    'NaN',
    'Infinity',
    '١٢',
  ])('refuses %j, not a plain decimal', (text) => {
    expect(fromMajorUnits(text, 'USD')).toBeUndefined();
  });

  it('refuses an amount past the largest safe integer of minor units', () => {
    expect(fromMajorUnits('90071992547409.92', 'USD')).toBeUndefined();
    expect(fromMajorUnits('9007199254740992', 'JPY')).toBeUndefined();
    expect(fromMajorUnits('1'.repeat(400), 'JPY')).toBeUndefined();
  });

  it('refuses a currency without a known minor unit', () => {
    expect(fromMajorUnits('12.34', 'ABC')).toBeUndefined();
    expect(fromMajorUnits('12', 'XAU')).toBeUndefined();
    expect(fromMajorUnits('12', 'usd')).toBeUndefined();
  });

  it('round-trips with toMajorUnits for every exponent, at the edges and between', () => {
    const amounts = [0, 1, 5, 9, 10, 99, 100, 101, 999, 1000, 1001, 123_456_789];
    amounts.push(Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER - 1);
    for (let seed = 1; seed <= 200; seed++) amounts.push((seed * 2_654_435_761) % 2 ** 52);
    for (const currency of ['JPY', 'USD', 'KWD', 'CLF', 'IQD', 'HUF']) {
      for (const amount of amounts) {
        expect(fromMajorUnits(toMajorUnits(amount, currency), currency), currency).toBe(amount);
      }
    }
  });
});

describe('formatMoney', () => {
  it.each([
    [46_217_094, 'USD', 'USD 462,170.94'],
    [12_000, 'JPY', 'JPY 12,000'],
    [1234, 'KWD', 'KWD 1.234'],
    [1_234_567, 'KWD', 'KWD 1,234.567'],
    [5, 'USD', 'USD 0.05'],
    [0, 'USD', 'USD 0.00'],
    [99_999, 'USD', 'USD 999.99'],
    [100_000, 'USD', 'USD 1,000.00'],
    [999, 'JPY', 'JPY 999'],
    [1000, 'JPY', 'JPY 1,000'],
    [12_345, 'CLF', 'CLF 1.2345'],
    [1_234_567, 'IQD', 'IQD 1,234.567'],
    [123_456, 'HUF', 'HUF 1,234.56'],
    [123_456, 'LBP', 'LBP 1,234.56'],
  ])('%d %s is %j', (amount, currency, text) => {
    expect(formatMoney(amount, currency)).toBe(text);
  });

  it('groups the whole part only, never the decimals', () => {
    expect(formatMoney(123_456_789, 'CLF')).toBe('CLF 12,345.6789');
    expect(formatMoney(1_000_000_000, 'JPY')).toBe('JPY 1,000,000,000');
  });

  it('puts the sign of a negative amount before the digits', () => {
    expect(formatMoney(-5, 'USD')).toBe('USD -0.05');
    expect(formatMoney(-123_456, 'USD')).toBe('USD -1,234.56');
    expect(formatMoney(-12_000, 'JPY')).toBe('JPY -12,000');
    expect(formatMoney(-0, 'USD')).toBe('USD 0.00');
  });

  it('shows the largest safe integer exactly, with no float rounding', () => {
    expect(formatMoney(Number.MAX_SAFE_INTEGER, 'USD')).toBe('USD 90,071,992,547,409.91');
    expect(formatMoney(Number.MAX_SAFE_INTEGER, 'JPY')).toBe('JPY 9,007,199,254,740,991');
    expect(formatMoney(-Number.MAX_SAFE_INTEGER, 'KWD')).toBe('KWD -9,007,199,254,740.991');
  });

  it('shows a code without a known minor unit as its exact count of minor units', () => {
    expect(formatMoney(1234, 'ABC')).toBe('ABC 1,234 (minor units)');
    expect(formatMoney(1234, 'XAU')).toBe('XAU 1,234 (minor units)');
    expect(formatMoney(Number.MAX_SAFE_INTEGER, 'ABC')).toBe(
      'ABC 9,007,199,254,740,991 (minor units)',
    );
    expect(formatMoney(-1234, 'ABC')).toBe('ABC -1,234 (minor units)');
  });
});
