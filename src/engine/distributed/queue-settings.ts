import type { Redis } from 'ioredis';
import { limiterOf, UNLIMITED } from './jobs.js';

/**
 * The queue's request rate, a setting of the queue that every worker obeys, whatever flags it
 * was started with: kept in Redis next to the queue's keys, the stricter of two rates holds.
 * KEYS: settings hash. ARGV: the worker's rate ('' none, '0' clear). Returns {rate before,
 * rate now} ('' = none).
 */
const JOIN_RATE = `
local before = redis.call('HGET', KEYS[1], 'rate') or ''
local now = before
if ARGV[1] == '0' then
  redis.call('HDEL', KEYS[1], 'rate')
  now = ''
elseif ARGV[1] ~= '' and (before == '' or tonumber(ARGV[1]) < tonumber(before)) then
  redis.call('HSET', KEYS[1], 'rate', ARGV[1])
  now = ARGV[1]
end
return {before, now}
`;

/** A BullMQ limiter, changed in place: BullMQ reads its worker's limiter on every job it takes. */
export interface MutableLimiter {
  max: number;
  duration: number;
}

/** What joining the queue's rate did, for the worker's log. */
export interface RateAgreement {
  /** The rate every worker of the queue now keeps, per second; undefined: none. */
  readonly rate: number | undefined;
  /** Set when this worker's --rate and the queue's differ: which one holds, and why. */
  readonly warning: string | undefined;
}

/** The key of a queue's bulkbill settings, beside BullMQ's own `<prefix>:<queue>:…` keys. */
export function settingsKey(prefix: string, queue: string): string {
  return `${prefix}:${queue}:bulkbill-settings`;
}

const parseRate = (text: string): number | undefined => (text === '' ? undefined : Number(text));

/** Reads and writes the queue's rate and keeps a worker's limiter at it. */
export class QueueRate {
  readonly #redis: Redis;
  readonly #key: string;
  /** The limiter handed to the BullMQ Worker. */
  readonly limiter: MutableLimiter = { ...UNLIMITED };
  #rate: number | undefined;

  constructor(redis: Redis, prefix: string, queue: string) {
    this.#redis = redis;
    this.#key = settingsKey(prefix, queue);
  }

  get rate(): number | undefined {
    return this.#rate;
  }

  /**
   * Joins the queue with this worker's --rate (undefined: none; 0: clear the queue's rate):
   * the queue keeps the stricter of its rate and this one. The limiter follows.
   */
  async join(mine: number | undefined): Promise<RateAgreement> {
    const [beforeText, nowText] = (await this.#redis.eval(
      JOIN_RATE,
      1,
      this.#key,
      mine === undefined ? '' : String(mine),
    )) as [string, string];
    const before = parseRate(beforeText);
    const now = parseRate(nowText);
    this.#apply(now);
    let warning: string | undefined;
    if (mine !== undefined && mine > 0 && before !== undefined && before !== mine) {
      warning =
        now === mine
          ? `--rate ${mine}/s is stricter than the queue's ${before}/s: every worker of the queue now keeps ${mine}/s`
          : `the queue keeps ${before}/s, stricter than this worker's --rate ${mine}/s: ${before}/s holds for every worker (--rate 0 clears the queue's rate)`;
    }
    return { rate: now, warning };
  }

  /** Reads the queue's rate again (another worker may have made it stricter); says whether it changed. */
  async refresh(): Promise<boolean> {
    const now = parseRate((await this.#redis.hget(this.#key, 'rate')) ?? '');
    if (now === this.#rate) return false;
    this.#apply(now);
    return true;
  }

  #apply(rate: number | undefined): void {
    this.#rate = rate;
    const next = rate === undefined ? UNLIMITED : limiterOf(rate);
    this.limiter.max = next.max;
    this.limiter.duration = next.duration;
  }
}
