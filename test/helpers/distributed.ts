import { hostname } from 'node:os';
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { afterAll, afterEach, beforeEach, expect } from 'vitest';
import { jobIdOf } from '../../src/engine/distributed/jobs.js';
import type { StateCounts } from '../../src/ledger/ledger.js';
import { type CliProcess, runCli, spawnCli } from './cli.js';
import { closeRedisAdmin, deleteKeysUnder, REDIS_URL, uniquePrefix } from './redis.js';

export { pollUntil } from './poll.js';

// Helpers of the distributed engine's end-to-end tests: the CLI's workers as child processes,
// the queue and the ledger read straight from Redis, polling with a deadline.

/** `status --redis --json`, parsed: the run, its counts, the queue and the live workers. */
export interface RedisStatusJson {
  readonly runId: string;
  readonly total: number;
  readonly finishedAt?: string;
  readonly counts: StateCounts;
  readonly chargedAmounts: Record<string, number>;
  readonly queue: { readonly waiting: number; readonly active: number; readonly delayed: number };
  readonly workers: readonly { readonly name: string }[];
  readonly stoppedBecause?: string;
}

/** Where a test's run lives: a Redis URL, a key prefix and a queue name. */
export interface RedisPlace {
  readonly url: string;
  readonly prefix: string;
  readonly queue: string;
}

/** `--redis <url> --prefix <p> --queue <q>`. */
export function placeFlags(place: RedisPlace): string[] {
  return ['--redis', place.url, '--prefix', place.prefix, '--queue', place.queue];
}

/** `bulkbill status --redis ... --run-id <id> --json`, parsed (fails the test on a non-zero exit). */
export async function redisStatus(place: RedisPlace, runId: string): Promise<RedisStatusJson> {
  const result = await runCli(['status', ...placeFlags(place), '--run-id', runId, '--json']);
  expect(result.code, result.stderr).toBe(0);
  return JSON.parse(result.stdout) as RedisStatusJson;
}

/** The sum of the counts per state: every input row is in exactly one. */
export function countsSum(counts: StateCounts): number {
  return Object.values(counts).reduce((total, count) => total + count, 0);
}

/** The name a CLI worker gives itself (host:pid), which BullMQ writes as a job's processedBy. */
export function workerName(cli: CliProcess): string {
  return `${hostname()}:${cli.child.pid}`;
}

/** A BullMQ Queue handle on the test's queue (its own connection), for reading counts and jobs. */
export function openQueue(place: RedisPlace): Queue {
  const url = new URL(place.url);
  const queue = new Queue(place.queue, {
    connection: { host: url.hostname, port: Number(url.port), maxRetriesPerRequest: 3 },
    prefix: place.prefix,
  });
  queue.on('error', () => {});
  return queue;
}

/** The job ids the enqueue gives a run's users, as a set. */
export function expectedJobIds(runId: string, userIds: readonly string[]): Set<string> {
  return new Set(userIds.map((userId) => jobIdOf(runId, userId)));
}

/**
 * Each key with its value(s) as text, whatever the key's type: for checking
 * that a secret was written nowhere.
 */
export async function dumpKeys(
  redis: Redis,
  keys: readonly string[],
): Promise<Map<string, string>> {
  const dump = new Map<string, string>();
  for (const key of keys) {
    const type = await redis.type(key);
    let text: string;
    switch (type) {
      case 'string':
        text = (await redis.get(key)) ?? '';
        break;
      case 'hash':
        text = JSON.stringify(await redis.hgetall(key));
        break;
      case 'list':
        text = JSON.stringify(await redis.lrange(key, 0, -1));
        break;
      case 'set':
        text = JSON.stringify(await redis.smembers(key));
        break;
      case 'zset':
        text = JSON.stringify(await redis.zrange(key, 0, -1, 'WITHSCORES'));
        break;
      case 'stream':
        text = JSON.stringify(await redis.xrange(key, '-', '+'));
        break;
      case 'none':
        continue;
      default:
        throw new Error(`${key}: a ${type} key, which this dump cannot read`);
    }
    dump.set(key, text);
  }
  return dump;
}

/**
 * The CLI processes of a test file: `spawn` starts one and remembers it; every one still running
 * after a test is killed (SIGKILL) and awaited in afterEach. Register it after useCliWorkspace,
 * so the processes end before the workspace's providers close and its temp dir goes.
 */
export function useChildren(): { spawn: typeof spawnCli } {
  const children: CliProcess[] = [];
  afterEach(async () => {
    const running = children.splice(0);
    for (const cli of running) {
      if (cli.child.exitCode === null && cli.child.signalCode === null) cli.child.kill('SIGKILL');
    }
    await Promise.all(running.map((cli) => cli.exited));
  });
  return {
    spawn(args, options) {
      const cli = spawnCli(args, options);
      children.push(cli);
      return cli;
    },
  };
}

/**
 * A test file's place on the shared Redis: before each test a fresh prefix (queue `charges`);
 * after it, the queue handles opened with `queue()` closed, the CLI processes killed (first)
 * and every key under the prefix deleted. Register it after useCliWorkspace, as useChildren.
 */
export function useRedisPlace(): {
  readonly place: RedisPlace;
  queue(): Queue;
  readonly children: { spawn: typeof spawnCli };
} {
  const place = { url: REDIS_URL, prefix: '', queue: 'charges' };
  const queues: Queue[] = [];
  beforeEach(() => {
    place.prefix = uniquePrefix();
  });
  afterEach(async () => {
    await Promise.all(queues.splice(0).map((queue) => queue.close()));
    await deleteKeysUnder(place.prefix);
  });
  // Registered last, so it runs first: every process is dead before the keys and providers go.
  const children = useChildren();
  afterAll(async () => {
    await closeRedisAdmin();
  });
  return {
    place,
    queue() {
      const opened = openQueue(place);
      queues.push(opened);
      return opened;
    },
    children,
  };
}
