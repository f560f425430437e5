import currencyCodes from 'currency-codes';

/**
 * Money in a currency's own units, from amounts kept as integers of minor units. The minor-unit
 * exponents are ISO 4217's (list one, as published in the `currency-codes` package): JPY 0,
 * USD 2, KWD 3, CLF 4. Node's Intl data is not used for this: it gives 0 for IQD, HUF and
 * LBP, whose ISO exponents are 3, 2 and 2. All arithmetic is on digits, never on floats.
 */

/**
 * The codes ISO 4217 lists with no minor unit ("N.A.": precious metals, bond-market units, SDR,
 * testing, "no currency"), which currency-codes gives as 0 digits. Their amounts are not counts
 * of a major unit, so they are shown as minor units, as an unknown code is.
 */
export const NO_MINOR_UNIT: ReadonlySet<string> = new Set([
  'XAG',
  'XAU',
  'XBA',
  'XBB',
  'XBC',
  'XBD',
  'XDR',
  'XPD',
  'XPT',
  'XSU',
  'XTS',
  'XUA',
  'XXX',
]);

const EXPONENTS: ReadonlyMap<string, number> = new Map(
  currencyCodes.data
    .filter((entry) => !NO_MINOR_UNIT.has(entry.code))
    .map((entry) => [entry.code, entry.digits]),
);

/**
 * The ISO 4217 minor-unit exponent of `currency` (USD 2), or undefined for a code ISO does not
 * list or lists without a minor unit (XAU).
 */
export function currencyExponent(currency: string): number | undefined {
  return EXPONENTS.get(currency);
}

/** Why `currency` cannot be shown or sent in major units, or undefined when it can. */
export function majorUnitsProblem(currency: string): string | undefined {
  if (EXPONENTS.has(currency)) return undefined;
  return NO_MINOR_UNIT.has(currency)
    ? `${currency} has no minor unit in ISO 4217, so its amounts have no major-unit form`
    : `${JSON.stringify(currency)} is not an ISO 4217 currency, so its minor unit is not known`;
}

/**
 * `amount` minor units as a decimal string in major units, with exactly the currency's
 * exponent of decimals: 1234 USD → "12.34", 1200 JPY → "1200", 1234 KWD → "1.234",
 * 5 USD → "0.05". Throws a RangeError for a currency without a known minor unit (see
 * majorUnitsProblem), or an amount that is not a safe integer.
 */
export function toMajorUnits(amount: number, currency: string): string {
  const exponent = EXPONENTS.get(currency);
  if (exponent === undefined) throw new RangeError(majorUnitsProblem(currency));
  return decimalOf(amount, exponent);
}

/**
 * A decimal string in major units as minor units: "12.34" USD → 1234, "12.3" USD → 1230.
 * Undefined when the text is not a plain non-negative decimal, has more decimals than the
 * currency's exponent (it would not be a whole number of minor units), or is too large.
 */
export function fromMajorUnits(text: string, currency: string): number | undefined {
  const exponent = EXPONENTS.get(currency);
  if (exponent === undefined) return undefined;
  const match = /^(\d+)(?:\.(\d+))?$/.exec(text);
  if (!match) return undefined;
  const whole = match[1] as string;
  const fraction = match[2] ?? '';
  if (fraction.length > exponent) return undefined;
  const value = Number(`${whole}${fraction.padEnd(exponent, '0')}`);
  return Number.isSafeInteger(value) ? value : undefined;
}

const grouped = new Intl.NumberFormat('en-US', { useGrouping: true, maximumFractionDigits: 0 });

/**
 * Money for people: `USD 462,170.94`, `JPY 12,000`, `KWD 1.234`. A currency ISO 4217 does not
 * list, or lists without a minor unit (XAU), is shown as its exact count of minor units:
 * `ABC 1,234 (minor units)`.
 */
export function formatMoney(amount: number, currency: string): string {
  const exponent = EXPONENTS.get(currency);
  if (exponent === undefined || !Number.isSafeInteger(amount)) {
    return `${currency} ${grouped.format(amount)} (minor units)`;
  }
  const decimal = decimalOf(Math.abs(amount), exponent);
  const point = decimal.indexOf('.');
  const whole = point === -1 ? decimal : decimal.slice(0, point);
  const fraction = point === -1 ? '' : decimal.slice(point);
  // Group the whole part as text: a BigInt-safe route that never rounds.
  const groupedWhole = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return `${currency} ${amount < 0 ? '-' : ''}${groupedWhole}${fraction}`;
}

function decimalOf(amount: number, exponent: number): string {
  if (!Number.isSafeInteger(amount)) {
    throw new RangeError(`expected an integer amount of minor units, got ${amount}`);
  }
  const negative = amount < 0;
  const digits = String(Math.abs(amount));
  if (exponent === 0) return negative ? `-${digits}` : digits;
  const padded = digits.padStart(exponent + 1, '0');
  const cut = padded.length - exponent;
  return `${negative ? '-' : ''}${padded.slice(0, cut)}.${padded.slice(cut)}`;
}
