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

/**
 * Writes a billing cycle as a CSV, `user_id,amount,currency,plan` with ids `user-0000001`…,
 * the way `npm start` generates its users, streamed: a million rows never sit in memory.
 */
export async function writeUsersCsv(path: string, users: number): Promise<UsersFile> {
  if (!Number.isSafeInteger(users) || users < 1) {
    throw new TypeError(
      `Expected \`users\` to be an integer >= 1, got \`${String(users)}\` (${typeof users})`,
    );
  }
  const started = performance.now();
  const out = createWriteStream(path);
  const width = Math.max(7, String(users).length);
  out.write('user_id,amount,currency,plan\n');
  for (let index = 1; index <= users; index++) {
    const { plan, amount } = PLANS[index % PLANS.length] as (typeof PLANS)[number];
    if (!out.write(`user-${String(index).padStart(width, '0')},${amount},USD,${plan}\n`)) {
      await once(out, 'drain');
    }
  }
  out.end();
  await once(out, 'finish');
  return { path, users, bytes: out.bytesWritten, writeMs: performance.now() - started };
}
