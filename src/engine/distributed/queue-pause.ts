import type { Redis } from 'ioredis';
import type { Random } from '../../control/backoff.js';
import {
  resolveThrottlePolicy,
  type ThrottledAnswer,
  type ThrottlePolicy,
  throttlePauseMs,
} from '../../control/throttle.js';
import { type Clock, systemClock } from '../../domain/clock.js';
import { LuaScript } from '../../ledger/redis-scripts.js';
import { DEFAULT_PREFIX, DEFAULT_QUEUE, type QueuePlace } from './jobs.js';

// What BullMQ's own Queue.rateLimit() stores in the limiter key: more than any limiter's max
// (ours is at most 10^15, UNLIMITED), so every worker's moveToActive sees the queue limited and
// waits for the key's PTTL. A shorter value would be a fixed window's job count, not a pause.
const PAUSED = String(Number.MAX_SAFE_INTEGER);

/**
 * Pauses the queue for max(the pause left, ARGV[1] ms), in one step: a shorter pause never cuts
 * a longer one, whoever sets it. A key without expiry or holding a window's count is no pause
 * (BullMQ limits only while the PTTL is positive), so it is replaced. Returns the pause in ms.
 */
const EXTEND = new LuaScript(`
local ms = tonumber(ARGV[1])
-- Only a pause counts: a window's count (a limiter of 60 s, say) lasting longer is no pause.
if redis.call('GET', KEYS[1]) == ARGV[2] then
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl >= ms then return pttl end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ms)
return ms
`);

/** The pause left in ms: the limiter key's PTTL when it holds a pause, else 0. */
const REMAINING = new LuaScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local pttl = redis.call('PTTL', KEYS[1])
if pttl < 0 then return 0 end
return pttl
`);

// The queue's throttle episodes, shared by every worker, in a hash with an expiry: `at` when the
// current episode began (Redis time, ms), `k` episodes in a row, `clean` once an answer to a
// request sent since `at` got through. Times are Redis's own, so machines' clocks need not agree.
const REDIS_NOW = `
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
`;

/**
 * A throttled answer to a request sent ARGV[1] ms ago: a new episode unless it was sent before
 * the current one began. Returns {1 if new else 0, episodes in a row, when the episode began,
 * now}.
 */
const THROTTLED = new LuaScript(`${REDIS_NOW}
local sent = now - tonumber(ARGV[1])
local at = tonumber(redis.call('HGET', KEYS[1], 'at'))
if at and sent < at then
  return {0, tonumber(redis.call('HGET', KEYS[1], 'k')) or 1, at, now}
end
local k = 1
if at and redis.call('HGET', KEYS[1], 'clean') ~= '1' then
  k = (tonumber(redis.call('HGET', KEYS[1], 'k')) or 0) + 1
end
redis.call('HSET', KEYS[1], 'at', now, 'k', k, 'clean', '0')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, k, now, now}
`);

/**
 * An answer that got through, to a request sent ARGV[1] ms ago: ends the run of episodes in a
 * row when it was sent since the current one began. Returns {1 if it did else 0, when the
 * current episode began (-1: none), now}.
 */
const ANSWERED = new LuaScript(`${REDIS_NOW}
local at = tonumber(redis.call('HGET', KEYS[1], 'at'))
if not at then return {0, -1, now} end
if now - tonumber(ARGV[1]) < at then return {0, at, now} end
redis.call('HSET', KEYS[1], 'clean', '1')
return {1, at, now}
`);

export interface QueuePauseOptions extends QueuePlace {
  /** Pause growth (basePauseMs, maxPauseMs). Default: resolveThrottlePolicy(). */
  readonly policy?: ThrottlePolicy | undefined;
  /** Draws the pauses' jitter. Default Math.random. */
  readonly random?: Random | undefined;
  /** The clock of the `sentAt` instants given (as the worker's governor's). Default systemClock. */
  readonly clock?: Clock | undefined;
}

/** What a throttled answer did to the queue. */
export interface QueueThrottle {
  /** The pause now in force for every worker of the queue, in ms (0: none). */
  readonly pauseMs: number;
  /** It began a new episode (else it belonged to the wave of one already counted). */
  readonly newEpisode: boolean;
  /** Episodes in a row on the queue, across every worker, with nothing getting through between. */
  readonly inARow: number;
}

/**
 * The queue-wide pause of the distributed engine, on BullMQ's limiter key
 * (`<prefix>:<queue>:limiter`), which every worker of the queue reads before it takes a job
 * (moveToActive: a value at or above the limiter's max and a positive PTTL hold it back that
 * long). Unlike Queue.rateLimit(ms), which overwrites the key's PTTL, a pause here only ever
 * lengthens: max(the pause left, ms), in one script. Throttles without Retry-After grow the pause
 * queue-wide by the same rule as the local engine (throttlePauseMs), counted in
 * `<prefix>:<queue>:throttle`, which every worker shares and which expires after a quiet spell.
 *
 * Workers need a limiter for BullMQ to look at the key at all (the worker always has one).
 */
export class QueuePause {
  readonly limiterKey: string;
  readonly throttleKey: string;
  readonly #redis: Redis;
  readonly #policy: ThrottlePolicy;
  readonly #random: Random;
  readonly #clock: Clock;
  /**
   * The latest episode this instance heard of: when it began, on Redis's clock and on ours (as
   * near as one round trip tells), and whether an answer since was told to the queue.
   */
  #episode: { at: number; localAt: number; reported: boolean } | undefined;

  constructor(options: QueuePauseOptions) {
    const { limiter, throttle } = QueuePause.keysOf(options.prefix, options.queue);
    this.limiterKey = limiter;
    this.throttleKey = throttle;
    this.#redis = options.redis;
    this.#policy = options.policy ?? resolveThrottlePolicy();
    this.#random = options.random ?? Math.random;
    this.#clock = options.clock ?? systemClock;
  }

  /** The keys of a queue's pause: BullMQ's limiter key, and the throttle episodes next to it. */
  static keysOf(
    prefix: string = DEFAULT_PREFIX,
    queue: string = DEFAULT_QUEUE,
  ): { limiter: string; throttle: string } {
    return { limiter: `${prefix}:${queue}:limiter`, throttle: `${prefix}:${queue}:throttle` };
  }

  /**
   * Holds every worker of the queue for at least `ms` from now: a shorter pause never cuts a
   * longer one. Resolves to the pause in force, in ms.
   */
  async extend(ms: number): Promise<number> {
    if (!(ms >= 1)) return this.remaining();
    return Number(await this.#eval(EXTEND, this.limiterKey, [Math.ceil(ms), PAUSED]));
  }

  /** The pause left, in ms (0: the queue is not paused). */
  async remaining(): Promise<number> {
    return Number(await this.#eval(REMAINING, this.limiterKey, [PAUSED]));
  }

  /**
   * A throttled answer (429, or 503 with Retry-After) to a request sent at `sentAt` (on this
   * pause's clock): pauses the queue for the Retry-After, or, without one, for the grown pause of
   * a new episode (none for a lone one); never shortens a pause. Then throw RateLimitError: the
   * job goes back to waiting and the worker waits out the pause with the others.
   */
  async throttled(answer: ThrottledAnswer): Promise<QueueThrottle> {
    const ageMs = Math.max(0, Math.round(this.#clock.now() - answer.sentAt));
    // Long enough to outlast the pause and a quiet spell of twice the longest grown one.
    const keepMs = Math.ceil((answer.retryAfterMs ?? 0) + 2 * this.#policy.maxPauseMs);
    const reply = (await this.#eval(THROTTLED, this.throttleKey, [ageMs, keepMs])) as number[];
    const [isNew, inARow, at, redisNow] = reply.map(Number) as [number, number, number, number];
    const newEpisode = isNew === 1;
    if (this.#episode === undefined || at > this.#episode.at) {
      this.#episode = { at, localAt: this.#clock.now() - (redisNow - at), reported: false };
    }
    let ms = 0;
    if (answer.retryAfterMs !== undefined) ms = answer.retryAfterMs;
    else if (newEpisode) ms = throttlePauseMs(this.#policy, inARow, this.#random);
    return { pauseMs: await this.extend(ms), newEpisode, inARow };
  }

  /**
   * An answer that got through (any answer with a status but a throttle), to a request sent at
   * `sentAt`: the queue's episodes in a row end, when it was sent since the current one began.
   * Talks to Redis at most once per episode this instance heard of; never rejects (the count
   * also ends when its key expires).
   */
  async answered(sentAt: number): Promise<void> {
    const episode = this.#episode;
    // Sent before the episode began (a stale answer): it says nothing; no need to ask Redis.
    if (episode === undefined || episode.reported || sentAt < episode.localAt) return;
    episode.reported = true;
    const ageMs = Math.max(0, Math.round(this.#clock.now() - sentAt));
    try {
      const reply = (await this.#eval(ANSWERED, this.throttleKey, [ageMs])) as number[];
      const [marked, at, redisNow] = reply.map(Number) as [number, number, number];
      if (at < 0) {
        // The queue forgot its episodes (the key expired): nothing to end.
        if (this.#episode === episode) this.#episode = undefined;
        return;
      }
      // Marked: the episode that holds now has ended. Not marked: our clocks disagree by a few
      // ms, or another worker began a newer episode since; a later answer tells it.
      episode.reported = marked === 1;
      if (at !== episode.at) {
        episode.at = at;
        episode.localAt = this.#clock.now() - (redisNow - at);
      }
    } catch {
      // Redis is away: tell it with a later answer (the count also ends when its key expires).
      episode.reported = false;
    }
  }

  #eval(script: LuaScript, key: string, args: ReadonlyArray<string | number>) {
    return script.run(this.#redis, [key], args);
  }
}
