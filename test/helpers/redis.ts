import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';

/** The machine's Redis, which tests share: every test keeps to keys under its own prefix. */
export const REDIS_URL = 'redis://127.0.0.1:6379';

let admin: Redis | undefined;

/** One connection for a test file's own reads and clean-up; closeRedisAdmin() ends it. */
export function redisAdmin(): Redis {
  admin ??= new Redis(REDIS_URL, { maxRetriesPerRequest: 3 });
  return admin;
}

export async function closeRedisAdmin(): Promise<void> {
  await admin?.quit();
  admin = undefined;
}

/** A key prefix no other test uses: `bbtest-<12 hex>` (no `:`, so it also names a BullMQ prefix). */
export function uniquePrefix(): string {
  return `bbtest-${randomBytes(6).toString('hex')}`;
}

function globEscape(text: string): string {
  return text.replace(/[*?[\]\\]/g, '\\$&');
}

/** Keys matching a glob pattern, by SCAN (never KEYS: other tests share this Redis). */
export async function scanKeys(pattern: string): Promise<string[]> {
  const keys: string[] = [];
  let cursor = '0';
  do {
    const [next, found] = await redisAdmin().scan(cursor, 'MATCH', pattern, 'COUNT', 1_000);
    keys.push(...found);
    cursor = next;
  } while (cursor !== '0');
  return keys;
}

/** Keys that start with `prefix:`. */
export function keysUnder(prefix: string): Promise<string[]> {
  return scanKeys(`${globEscape(prefix)}:*`);
}

/** Deletes every key that starts with `prefix:`. */
export async function deleteKeysUnder(prefix: string): Promise<void> {
  const keys = await keysUnder(prefix);
  for (let start = 0; start < keys.length; start += 1_000) {
    await redisAdmin().unlink(...keys.slice(start, start + 1_000));
  }
}

export { globEscape };
