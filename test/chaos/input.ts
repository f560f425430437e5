import { writeFile } from 'node:fs/promises';
import type { Random } from './random.js';

/** One user of a chaos round's billing cycle. */
export interface ChaosUser {
  readonly userId: string;
  /** Integer minor units. */
  readonly amount: number;
  readonly currency: string;
  /** The provider's reference of the user's stored card: the columns the profiles read. */
  readonly ref: string;
  /** Written as a typo (`19.99`, `usd`) until the operator fixes it in a later rerun. */
  broken: boolean;
}

export type InputFormat = 'csv' | 'ndjson';

/** How a file is written: what an export from another system may look like. */
export interface FileStyle {
  readonly format: InputFormat;
  readonly bom: boolean;
  readonly crlf: boolean;
  /** Rows shuffled with this seed (a re-export in another order); 0 keeps the order. */
  readonly shuffle: number;
}

// Ids an operator's export really holds: separators, quotes, commas, non-ASCII, spaces.
const AWKWARD = [
  (n: number) => `acct:${n}:eu`,
  (n: number) => `o"brien-${n}`,
  (n: number) => `smith, jane ${n}`,
  (n: number) => `josé-${n}`,
  (n: number) => `用户${n}`,
  (n: number) => `=cmd|${n}`,
  (n: number) => `user ${n} `,
  (n: number) => `~tilde-${n}`,
];
const CURRENCIES = ['USD', 'EUR', 'JPY', 'GBP', 'KWD'] as const;

/** `count` users with ids made to trip a careless reader, `broken` of them with a typo. */
export function chaosUsers(random: Random, count: number, broken: number): ChaosUser[] {
  const users: ChaosUser[] = [];
  for (let index = 0; index < count; index++) {
    const awkward = random.next() < 0.3;
    const userId = awkward
      ? (random.pick(AWKWARD) as (n: number) => string)(index)
      : `user-${String(index).padStart(5, '0')}`;
    users.push({
      userId,
      amount: random.int(50, 250_000),
      currency: random.pick(CURRENCIES) as string,
      ref: String(index).padStart(6, '0'),
      broken: false,
    });
  }
  for (const user of random.sample(users, broken)) user.broken = true;
  return users;
}

/** More users for an operator who adds some to the file between runs. */
export function addedUsers(random: Random, from: number, count: number): ChaosUser[] {
  return Array.from({ length: count }, (_, index) => ({
    userId: `added-${from + index}`,
    amount: random.int(50, 250_000),
    currency: random.pick(CURRENCIES) as string,
    ref: `a${String(from + index).padStart(6, '0')}`,
    broken: false,
  }));
}

/** The columns the shipped Stripe and Adyen profiles read besides the charge's own. */
const PROFILE_COLUMNS = ['customer', 'payment_method', 'stored_payment_method_id'] as const;

function profileValues(user: ChaosUser): string[] {
  return [`cus_${user.ref}`, `pm_${user.ref}`, `spm_${user.ref}`];
}

function csvCell(value: string): string {
  return /[",\r\n]/.test(value) || value !== value.trim()
    ? `"${value.replaceAll('"', '""')}"`
    : value;
}

/** The amount as written: a broken row's is in major units with a point, which bulkbill refuses. */
function amountText(user: ChaosUser): string {
  return user.broken
    ? `${Math.floor(user.amount / 100)}.${String(user.amount % 100).padStart(2, '0')}`
    : String(user.amount);
}

/** Writes the users as the style says; returns the bytes written. */
export async function writeChaosInput(
  path: string,
  users: readonly ChaosUser[],
  style: FileStyle,
  shuffle: (items: ChaosUser[], seed: number) => ChaosUser[],
): Promise<number> {
  const rows = style.shuffle === 0 ? [...users] : shuffle([...users], style.shuffle);
  const newline = style.crlf ? '\r\n' : '\n';
  const lines =
    style.format === 'csv'
      ? [
          `user_id,amount,currency,${PROFILE_COLUMNS.join(',')}`,
          ...rows.map((user) =>
            [user.userId, amountText(user), user.currency, ...profileValues(user)]
              .map(csvCell)
              .join(','),
          ),
        ]
      : rows.map((user) =>
          // NDJSON amounts are numbers; a broken one is the same typo a CSV has, as a string.
          JSON.stringify({
            user_id: user.userId,
            amount: user.broken ? amountText(user) : user.amount,
            currency: user.currency,
            ...Object.fromEntries(
              PROFILE_COLUMNS.map((name, index) => [name, profileValues(user)[index]]),
            ),
          }),
        );
  const text = `${style.bom ? '\ufeff' : ''}${lines.join(newline)}${newline}`;
  await writeFile(path, text);
  return Buffer.byteLength(text);
}
