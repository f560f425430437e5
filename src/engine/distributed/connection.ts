import { Redis } from 'ioredis';
import { BulkbillError, ErrorCode } from '../../domain/errors.js';
import { redactedUrl } from '../../ledger/redis-ledger.js';

/** How a connection behaves while Redis is away. */
export type ConnectionKind =
  /** Commands fail after 10 refused reconnections (about 5 s): a command-line tool reports it. */
  | 'short'
  /** Commands wait for Redis to come back, however long: a worker outlives a Redis restart. */
  | 'patient';

/** Opens an ioredis connection to `url` (`redis://` or `rediss://`). */
export function connectRedis(url: string, kind: ConnectionKind, label = '--redis'): Redis {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new BulkbillError(
      ErrorCode.Usage,
      `${label}: expected a URL such as redis://127.0.0.1:6379`,
    );
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') {
    throw new BulkbillError(
      ErrorCode.Usage,
      `${label}: expected a redis:// or rediss:// URL, got ${parsed.protocol}`,
    );
  }
  const redis = new Redis(url, {
    // BullMQ requires null for workers: a blocking command must not count as failed retries.
    maxRetriesPerRequest: kind === 'patient' ? null : 10,
    connectTimeout: 5_000,
    retryStrategy: (times) => Math.min(times * 100, 2_000),
    lazyConnect: false,
  });
  // Commands report their own failures; without a listener ioredis prints every reconnection.
  redis.on('error', (error: Error) => lastErrors.set(redis, error.message));
  return redis;
}

/** The last connection error of each connection, for a message better than "max retries". */
const lastErrors = new WeakMap<Redis, string>();

/** Waits until Redis answers, or fails with a message naming where it was looked for. */
export async function checkReachable(redis: Redis, url: string, label = '--redis'): Promise<void> {
  try {
    await redis.ping();
  } catch (error) {
    throw new BulkbillError(
      ErrorCode.Usage,
      `${label}: no Redis answers at ${redactedUrl(url)}: ${lastErrors.get(redis) ?? (error as Error).message}`,
      { cause: error },
    );
  }
}

/** Closes a connection politely, and at once when Redis is gone. */
export async function closeRedis(redis: Redis): Promise<void> {
  if (redis.status === 'ready') await redis.quit().catch(() => {});
  redis.disconnect();
}
