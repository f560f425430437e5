import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';

/** The Redis the distributed scenarios use unless `--redis` says otherwise. */
export const DEFAULT_BENCH_REDIS_URL = 'redis://127.0.0.1:6379';

/** Keys per SCAN step and per UNLINK or MEMORY USAGE batch. */
const SCAN_COUNT = 10_000;
const BATCH = 1_000;

/**
 * A key prefix no one else uses: `bbbench-<16 hex digits>`. The Redis is shared (tests of
 * other sessions run on it), so every sample's keys live under their own prefix and are deleted
 * with deleteKeysUnder afterwards.
 */
export function uniqueBenchPrefix(): string {
  return `bbbench-${randomBytes(8).toString('hex')}`;
}

/** A connection for the bench's own reads and clean-ups; fails fast when Redis is not there. */
export async function openBenchRedis(url: string): Promise<Redis> {
  const redis = new Redis(url, {
    maxRetriesPerRequest: 3,
    connectTimeout: 5_000,
    // BullMQ's Queue (the bench pauses and resumes queues) wants this unset or null.
    enableReadyCheck: true,
  });
  redis.on('error', () => {});
  try {
    await redis.ping();
  } catch (error) {
    redis.disconnect();
    throw new Error(
      `no Redis answers at ${url} (the distributed scenarios need one; --redis <url>): ${(error as Error).message}`,
    );
  }
  return redis;
}

/** Every key under `${prefix}:`, a SCAN at a time (never KEYS: the Redis is shared). */
export async function* keysUnder(redis: Redis, prefix: string): AsyncIterable<string[]> {
  if (!/^[\w.-]+$/.test(prefix)) {
    // A glob character in the prefix would match other people's keys.
    throw new Error(`keysUnder: refusing a prefix with glob characters: ${JSON.stringify(prefix)}`);
  }
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', SCAN_COUNT);
    cursor = next;
    if (keys.length > 0) yield keys;
  } while (cursor !== '0');
}

/** UNLINKs every key under `${prefix}:`, in batches of 1,000; resolves with how many. */
export async function deleteKeysUnder(redis: Redis, prefix: string): Promise<number> {
  let deleted = 0;
  for await (const keys of keysUnder(redis, prefix)) {
    for (let start = 0; start < keys.length; start += BATCH) {
      deleted += await redis.unlink(...keys.slice(start, start + BATCH));
    }
  }
  return deleted;
}

/** What a set of keys takes in Redis, by `MEMORY USAGE <key> SAMPLES 0` (every element counted). */
export interface KeyMemory {
  readonly keys: number;
  readonly bytes: number;
  /** Keys and bytes per group, as `groupOf` named them. */
  readonly groups: Readonly<Record<string, { readonly keys: number; readonly bytes: number }>>;
}

/**
 * Sums MEMORY USAGE over every key under `${prefix}:`, pipelined 1,000 keys at a time. Exact for
 * those keys (SAMPLES 0), but it leaves out what Redis spends per key outside the value (its
 * main dictionary entry), which `used_memory` deltas include.
 */
export async function memoryUnder(
  redis: Redis,
  prefix: string,
  groupOf: (key: string) => string,
): Promise<KeyMemory> {
  const groups: Record<string, { keys: number; bytes: number }> = {};
  let keys = 0;
  let bytes = 0;
  for await (const batch of keysUnder(redis, prefix)) {
    for (let start = 0; start < batch.length; start += BATCH) {
      const slice = batch.slice(start, start + BATCH);
      const pipeline = redis.pipeline();
      for (const key of slice) pipeline.memory('USAGE', key, 'SAMPLES', 0);
      const replies = (await pipeline.exec()) ?? [];
      slice.forEach((key, at) => {
        const [error, value] = replies[at] ?? [null, null];
        // A key deleted between SCAN and MEMORY USAGE answers null: it takes nothing.
        const size = error === null && typeof value === 'number' ? value : 0;
        const group = groupOf(key);
        const entry = groups[group] ?? { keys: 0, bytes: 0 };
        groups[group] = { keys: entry.keys + 1, bytes: entry.bytes + size };
        keys++;
        bytes += size;
      });
    }
  }
  return { keys, bytes, groups };
}

/** Figures of the Redis server as a whole (every client's work, not only the bench's). */
export interface RedisServerCounters {
  /** The server's process id, for the quiet-machine check. */
  readonly pid: number | undefined;
  /** used_cpu_user + used_cpu_sys, in ms. */
  readonly cpuMs: number;
  readonly commandsProcessed: number;
  /** used_memory, in bytes. */
  readonly usedMemoryBytes: number;
}

export async function redisServerCounters(redis: Redis): Promise<RedisServerCounters> {
  const info = await redis.info();
  const field = (name: string) => {
    const match = new RegExp(`^${name}:([^\\r\\n]*)`, 'm').exec(info);
    return match ? Number(match[1]) : Number.NaN;
  };
  const pid = field('process_id');
  return {
    pid: Number.isSafeInteger(pid) ? pid : undefined,
    cpuMs: (field('used_cpu_user') + field('used_cpu_sys')) * 1_000,
    commandsProcessed: field('total_commands_processed'),
    usedMemoryBytes: field('used_memory'),
  };
}

/** The server's version and the settings docs/scaling.md talks about, for the report. */
export async function describeRedisServer(redis: Redis): Promise<string> {
  const info = await redis.info('server');
  const version = /^redis_version:(\S+)/m.exec(info)?.[1] ?? 'unknown';
  const setting = async (name: string) => {
    try {
      const pair = (await redis.config('GET', name)) as string[];
      return pair[1] ?? '?';
    } catch {
      return '?';
    }
  };
  const [policy, appendonly, save] = await Promise.all([
    setting('maxmemory-policy'),
    setting('appendonly'),
    setting('save'),
  ]);
  return `Redis ${version} (maxmemory-policy ${policy}, appendonly ${appendonly}, save "${save}")`;
}
