import type { Redis } from 'ioredis';

/**
 * What BullMQ's production advice asks of Redis and this one lacks: `maxmemory-policy noeviction`
 * (an evicted job or ledger key is a charge silently lost) and persistence (AOF or RDB snapshots;
 * without either, a Redis restart forgets the queue and the ledger). Empty when all is well or
 * when the server does not let CONFIG GET be read (managed Redis): then nothing can be said.
 */
export async function redisWarnings(redis: Redis): Promise<string[]> {
  const warnings: string[] = [];
  let config: Record<string, string>;
  try {
    const [policy, appendonly, save] = await Promise.all(
      ['maxmemory-policy', 'appendonly', 'save'].map(
        (name) => redis.config('GET', name) as Promise<string[]>,
      ),
    );
    config = Object.fromEntries(
      [policy, appendonly, save].flatMap((pairs) => {
        const entries: Array<[string, string]> = [];
        for (let i = 0; i + 1 < (pairs ?? []).length; i += 2) {
          entries.push([String(pairs?.[i]), String(pairs?.[i + 1])]);
        }
        return entries;
      }),
    );
  } catch {
    return warnings;
  }
  const policy = config['maxmemory-policy'];
  if (policy !== undefined && policy !== 'noeviction') {
    warnings.push(
      `Redis evicts keys under memory pressure (maxmemory-policy ${policy}): a job or ledger record evicted is a charge lost from view. Set maxmemory-policy noeviction`,
    );
  }
  if (config.appendonly === 'no' && (config.save ?? '') !== '') {
    warnings.push(
      `Redis keeps only RDB snapshots (save ${config.save}, appendonly no): a Redis crash loses every write since the last snapshot, and those charges are sent again (with the same idempotency keys) when their jobs come back. Turn on appendonly yes`,
    );
  }
  if (config.appendonly === 'no' && (config.save ?? '') === '') {
    warnings.push(
      'Redis keeps nothing on disk (appendonly no, no save points): a Redis restart forgets the queue and the ledger, and the run must be enqueued again with the same --run-id (its idempotency keys keep anyone from being charged twice). Turn on appendonly yes',
    );
  }
  return warnings;
}

/**
 * Whether Redis keeps nothing on disk (appendonly no, no save points): a restart then forgets
 * every run, so a run can only be found again by the id the operator gives it. False when the
 * server does not let CONFIG GET be read (managed Redis, which persists).
 */
export async function redisKeepsNothing(redis: Redis): Promise<boolean> {
  try {
    const [appendonly, save] = (await Promise.all(
      ['appendonly', 'save'].map((name) => redis.config('GET', name) as Promise<string[]>),
    )) as [string[], string[]];
    return appendonly[1] === 'no' && (save[1] ?? '') === '';
  } catch {
    return false;
  }
}
