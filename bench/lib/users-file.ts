import { once } from 'node:events';
import { createWriteStream } from 'node:fs';

const PLANS = [
  { plan: 'basic', amount: 999 },
  { plan: 'pro', amount: 2_999 },
  { plan: 'team', amount: 9_999 },
] as const;

/** What writing a billing cycle's input took. */
export interface UsersFile {
  readonly path: string;
  readonly users: number;
  readonly bytes: number;
  readonly writeMs: number;
}

/** A column after `plan`, e.g. a provider profile's `payment_method`. */
export interface ExtraColumn {
  /** The header, e.g. `payment_method`: a CSV name that needs no quoting. Required. */
  readonly name: string;
  /** The value for the row of user `index` (1-based), id `userId`: needs no quoting. Required. */
  readonly value: (index: number, userId: string) => string;
}

/** How the users are written besides their count. */
export interface UsersCsvOptions {
  /** Columns after `user_id,amount,currency,plan`, in this order. Default: none. */
  readonly extraColumns?: readonly ExtraColumn[];
}

/**
 * Writes a billing cycle as a CSV, `user_id,amount,currency,plan` with ids `user-0000001`…,
 * the way `npm start` generates its users, streamed: a million rows never sit in memory.
 * `extraColumns` follow `plan` (other columns are metadata, which a provider template may read).
 */
export async function writeUsersCsv(
  path: string,
  users: number,
  options: UsersCsvOptions = {},
): Promise<UsersFile> {
  if (!Number.isSafeInteger(users) || users < 1) {
    throw new TypeError(
      `Expected \`users\` to be an integer >= 1, got \`${String(users)}\` (${typeof users})`,
    );
  }
  const started = performance.now();
  const out = createWriteStream(path);
  const width = Math.max(7, String(users).length);
  const extra = options.extraColumns ?? [];
  out.write(`user_id,amount,currency,plan${extra.map((column) => `,${column.name}`).join('')}\n`);
  for (let index = 1; index <= users; index++) {
    const { plan, amount } = PLANS[index % PLANS.length] as (typeof PLANS)[number];
    const userId = `user-${String(index).padStart(width, '0')}`;
    let line = `${userId},${amount},USD,${plan}`;
    for (const column of extra) line += `,${column.value(index, userId)}`;
    if (!out.write(`${line}\n`)) {
      await once(out, 'drain');
    }
  }
  out.end();
  await once(out, 'finish');
  return { path, users, bytes: out.bytesWritten, writeMs: performance.now() - started };
}
