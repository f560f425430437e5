import type { Redis } from 'ioredis';
import { FIRST_ROUND_TRIP } from '../../control/dispatch-limit.js';
import type { LimitOutcome } from '../../control/limit-controller.js';
import type { DeadlineReport } from '../../domain/dispatch.js';
import { LuaScript } from '../../ledger/redis-scripts.js';
import { DEFAULT_PREFIX, DEFAULT_QUEUE, type QueuePlace } from './jobs.js';

/**
 * How a run asked to be paced (`--concurrency auto`, `--deadline`), kept in Redis while it has
 * charges pending so that every worker of its queue follows it, whichever process queued it.
 */
export interface RunPacing {
  /** `--concurrency auto`: the queue's limit controller finds the provider's capacity. */
  readonly auto: boolean;
  /** `--min-concurrency`. */
  readonly min: number;
  /** `--max-concurrency` (with a deadline and a number as `--concurrency`: that number). */
  readonly max: number;
  /** The deadline, epoch ms. */
  readonly deadlineAt?: number | undefined;
  /** Latency assumed before any answer, ms. */
  readonly assumedLatencyMs: number;
}

/** One attempt a worker of a paced queue sent and saw end: what the decider replays. */
export interface PacedAttempt {
  /** When it was sent, epoch ms on the worker's clock. */
  readonly sentAt: number;
  readonly latencyMs: number;
  /** Jobs active on the queue (every worker's) when it was sent, itself included. */
  readonly inFlight: number;
  readonly outcome: LimitOutcome;
}

/** What the queue's decider said last, for progress, `status` and the summary. */
export interface PacingState {
  readonly mode: 'fixed' | 'auto';
  /** Requests in flight the decider allows, across the queue. */
  readonly limit: number;
  /**
   * The queue's global concurrency it set for that (BullMQ's, of jobs active): the limit and the
   * jobs between their requests (the ledger's reads and writes), as measured.
   */
  readonly jobs?: number | undefined;
  /** The least it goes down to (the paced runs' `--min-concurrency`). */
  readonly min: number;
  readonly capacity: number | undefined;
  readonly baselineMs: number | undefined;
  readonly deadline: DeadlineReport | undefined;
  /** The worker deciding (its name), and when it last decided (epoch ms). */
  readonly decider: string | undefined;
  readonly decidedAt: number | undefined;
}

const OUTCOME_CODE: Record<LimitOutcome, string> = { answered: 'a', refused: 'r', ignored: 'i' };
const CODE_OUTCOME: Record<string, LimitOutcome> = { a: 'answered', r: 'refused', i: 'ignored' };

/** Most attempts kept waiting for a decider: a queue paced with no decider left does not grow. */
const MOST_EVENTS = 100_000;

// KEYS of every script: 1 the runs' pacing (hash: run id → JSON), 2 the decider's state (hash),
// 3 the decider's lease, 4 the attempts to replay (list), 5 BullMQ's meta hash (its
// `concurrency` field is the queue's global concurrency, what Queue.setGlobalConcurrency sets),
// 6 BullMQ's marker (a sorted set its blocked workers wait on), 7 requests in flight per worker
// (hash: worker → count), 8 when each worker last said it lives (hash: worker → Redis ms), 9
// BullMQ's active list, 10 the jobs each worker holds (hash: worker → count).

/** Redis's clock, in ms: heartbeats need no agreement between the machines' clocks. */
const REDIS_NOW = `
local time = redis.call('TIME')
local redisNow = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
`;

/** Sums the requests in flight of every worker; a count below 0 (its run's pacing ended mid-request) is 0. */
const SUM = `
local function inflight()
  local values = redis.call('HVALS', KEYS[7])
  local sum = 0
  for _, value in ipairs(values) do
    local count = tonumber(value) or 0
    if count > 0 then sum = sum + count end
  end
  return sum
end
`;

/**
 * A run's pacing is set (ARGV[2] a JSON) or cleared (''): ARGV[1] the run id, ARGV[3] the limit
 * to start at while no decider has set one (so no worker takes a wave of jobs before the first
 * decision). The queue's global concurrency from before pacing is kept once (`saved`, '' when
 * none) and put back when the last paced run's entry goes. Returns the number of runs paced now.
 */
const SET_RUN = new LuaScript(`
if ARGV[2] ~= '' then
  if redis.call('HEXISTS', KEYS[2], 'saved') == 0 then
    redis.call('HSET', KEYS[2], 'saved', redis.call('HGET', KEYS[5], 'concurrency') or '')
  end
  if redis.call('HEXISTS', KEYS[2], 'limit') == 0 then
    redis.call('HSET', KEYS[5], 'concurrency', ARGV[3])
  end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return redis.call('HLEN', KEYS[1])
end
redis.call('HDEL', KEYS[1], ARGV[1])
local left = redis.call('HLEN', KEYS[1])
if left == 0 and redis.call('HEXISTS', KEYS[2], 'saved') == 1 then
  local saved = redis.call('HGET', KEYS[2], 'saved')
  if saved == '' then redis.call('HDEL', KEYS[5], 'concurrency')
  else redis.call('HSET', KEYS[5], 'concurrency', saved) end
  -- Workers blocked on a queue the paced limit held full take jobs again.
  redis.call('ZADD', KEYS[6], 0, '0')
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[7], KEYS[8], KEYS[10])
end
return left
`);

/**
 * Takes or renews the decider's lease, `<token>|<until>` (the decider's epoch ms: its clock, so
 * a test's clock can end a lease). ARGV: token, lease ms, now. Returns 1 when held.
 */
const LEASE = new LuaScript(`
local now, ms = tonumber(ARGV[3]), tonumber(ARGV[2])
local holder = redis.call('GET', KEYS[3])
if holder then
  local bar = string.find(holder, '|', 1, true)
  local token = bar and string.sub(holder, 1, bar - 1) or holder
  local untilAt = bar and tonumber(string.sub(holder, bar + 1)) or 0
  if token ~= ARGV[1] and untilAt > now then return 0 end
end
-- No paced run: nothing to decide.
if redis.call('HLEN', KEYS[1]) == 0 then
  if holder then redis.call('DEL', KEYS[3]) end
  return 0
end
-- Redis's own expiry only collects a lease nobody renews (a clock far off from Redis's).
redis.call('SET', KEYS[3], ARGV[1] .. '|' .. (now + ms), 'PX', 10 * ms)
return 1
`);

/** Whether the lease is `token`'s: the start of every script that acts as the decider. */
const HOLDS = `
local function holds(token)
  local holder = redis.call('GET', KEYS[3])
  return holder ~= false and string.sub(holder, 1, #token + 1) == token .. '|'
end
`;

/** Lets the lease go, when held. ARGV: token. */
const RELEASE = new LuaScript(`${HOLDS}
if holds(ARGV[1]) then redis.call('DEL', KEYS[3]) end
return 1
`);

/** Takes up to ARGV[1] attempts to replay, oldest first. */
const DRAIN = new LuaScript(`
local taken = redis.call('LRANGE', KEYS[4], 0, tonumber(ARGV[1]) - 1)
redis.call('LTRIM', KEYS[4], #taken, -1)
return taken
`);

/**
 * A request goes: the worker's count in flight up by one. ARGV: worker. Returns the requests in
 * flight across the queue, this one included.
 */
const SENT = new LuaScript(`${REDIS_NOW}${SUM}
if tonumber(redis.call('HINCRBY', KEYS[7], ARGV[1], 1)) < 1 then
  redis.call('HSET', KEYS[7], ARGV[1], 1)
end
redis.call('HSET', KEYS[8], ARGV[1], redisNow)
return inflight()
`);

/**
 * An attempt ended, to replay: its worker's count down by one. ARGV: the attempt, most kept,
 * worker, the least global concurrency a refusal may take a slot down to ('' for none: not
 * `auto`). A refused request's slot would be taken at once by the next job, refused again
 * within milliseconds, many times before the decider's next round: under `auto` it closes with
 * the refusal, and the decider opens it again if its limit (which reads every refusal) still
 * says so.
 */
const RECORD = new LuaScript(`
if (tonumber(redis.call('HGET', KEYS[7], ARGV[3])) or 0) > 0 then
  redis.call('HINCRBY', KEYS[7], ARGV[3], -1)
end
if ARGV[4] ~= '' and string.sub(ARGV[1], -1) == 'r' then
  local slots = tonumber(redis.call('HGET', KEYS[5], 'concurrency'))
  if slots and slots > tonumber(ARGV[4]) then redis.call('HINCRBY', KEYS[5], 'concurrency', -1) end
end
local length = redis.call('RPUSH', KEYS[4], ARGV[1])
if length > tonumber(ARGV[2]) then redis.call('LTRIM', KEYS[4], -tonumber(ARGV[2]), -1) end
return length
`);

/**
 * A worker says it lives (one killed stops saying so), and how many jobs it holds. ARGV: worker,
 * jobs.
 */
const HEARTBEAT = new LuaScript(`${REDIS_NOW}
redis.call('HSET', KEYS[8], ARGV[1], redisNow)
redis.call('HSET', KEYS[10], ARGV[1], ARGV[2])
return 1
`);

/**
 * The queue's load now: {jobs the live workers hold, requests in flight, jobs active}. The
 * counts of a worker silent for ARGV[1] ms (killed) go: its requests ended with it, and its jobs
 * wait in the active list for their locks to end.
 */
const LOAD = new LuaScript(`${REDIS_NOW}${SUM}
local seen = redis.call('HGETALL', KEYS[8])
for i = 1, #seen, 2 do
  if redisNow - tonumber(seen[i + 1]) > tonumber(ARGV[1]) then
    redis.call('HDEL', KEYS[8], seen[i])
    redis.call('HDEL', KEYS[7], seen[i])
    redis.call('HDEL', KEYS[10], seen[i])
  end
end
local held = 0
for _, value in ipairs(redis.call('HVALS', KEYS[10])) do held = held + (tonumber(value) or 0) end
return {held, inflight(), redis.call('LLEN', KEYS[9])}
`);

/**
 * The decider's limit, set only while it holds the lease and a run is paced. ARGV: token, the
 * queue's global concurrency (jobs), then field/value pairs of its state. Returns 1 when set, 0
 * when not the decider.
 */
const PUBLISH = new LuaScript(`${HOLDS}
if not holds(ARGV[1]) or redis.call('HLEN', KEYS[1]) == 0 then return 0 end
local before = tonumber(redis.call('HGET', KEYS[5], 'concurrency'))
local limit = tonumber(ARGV[2])
if before ~= limit then
  redis.call('HSET', KEYS[5], 'concurrency', limit)
  -- Raised: workers blocked on a full queue take the new slots now, not at their next job's end.
  if before == nil or limit > before then redis.call('ZADD', KEYS[6], 0, '0') end
end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
`);

/**
 * The pacing of one queue in Redis: the runs that asked for `--concurrency auto` or a deadline,
 * the lease of the one worker that decides the queue's global concurrency for all of them, the
 * attempts the workers tell it, and what it decided. Cheap to build; the connection is the
 * caller's.
 */
export class QueuePacing {
  readonly #redis: Redis;
  readonly #keys: string[];
  /** `<prefix>:<queue>`, the start of BullMQ's keys for the queue. */
  readonly #base: string;

  constructor(place: QueuePlace) {
    this.#redis = place.redis;
    const base = `${place.prefix ?? DEFAULT_PREFIX}:${place.queue ?? DEFAULT_QUEUE}`;
    this.#keys = [
      `${base}:pacing:runs`,
      `${base}:pacing`,
      `${base}:pacing:decider`,
      `${base}:pacing:attempts`,
      `${base}:meta`,
      `${base}:marker`,
      `${base}:pacing:inflight`,
      `${base}:pacing:alive`,
      `${base}:active`,
      `${base}:pacing:held`,
    ];
    this.#base = base;
  }

  /**
   * Sets how a run is paced (undefined: not at all, its entry goes), starting the queue at its
   * `startingLimit` while no decider has decided. Returns the runs paced now.
   */
  async setRun(runId: string, pacing: RunPacing | undefined): Promise<number> {
    return Number(
      await SET_RUN.run(this.#redis, this.#keys, [
        runId,
        pacing === undefined ? '' : JSON.stringify(pacing),
        pacing === undefined ? 1 : startingLimit(pacing),
      ]),
    );
  }

  /** Jobs on the queue (waiting, prioritized, delayed, active), every run's. */
  async queuedJobs(): Promise<number> {
    const base = this.#base;
    const [wait, active, delayed, prioritized] = await Promise.all([
      this.#redis.llen(`${base}:wait`),
      this.#redis.llen(`${base}:active`),
      this.#redis.zcard(`${base}:delayed`),
      this.#redis.zcard(`${base}:prioritized`),
    ]);
    return wait + active + delayed + prioritized;
  }

  /** The runs paced now, by id. */
  async runs(): Promise<Map<string, RunPacing>> {
    const raw = await this.#redis.hgetall(this.#keys[0] as string);
    const runs = new Map<string, RunPacing>();
    for (const [runId, json] of Object.entries(raw)) {
      try {
        runs.set(runId, JSON.parse(json) as RunPacing);
      } catch {
        // Not ours to read: left as it is, paced by the others.
      }
    }
    return runs;
  }

  /** Whether any run of the queue is paced (the workers then tell their attempts). */
  async paced(): Promise<boolean> {
    return (await this.#redis.exists(this.#keys[0] as string)) === 1;
  }

  /** `worker` sends a request: returns the requests in flight across the queue, this one included. */
  async sent(worker: string): Promise<number> {
    return Number(await SENT.run(this.#redis, this.#keys, [worker]));
  }

  /**
   * Tells the decider of an attempt of `worker`'s that ended (one `sent` announced). Under
   * `auto` (`autoMin`, the least it goes down to), a refusal also closes a slot of the queue's.
   */
  async record(worker: string, attempt: PacedAttempt, autoMin?: number): Promise<void> {
    const line = `${attempt.sentAt}|${Math.round(attempt.latencyMs)}|${attempt.inFlight}|${OUTCOME_CODE[attempt.outcome]}`;
    await RECORD.run(this.#redis, this.#keys, [
      line,
      MOST_EVENTS,
      worker,
      autoMin === undefined ? '' : autoMin,
    ]);
  }

  /** `worker` lives, holding `jobs`: its counts are not taken for a dead worker's. */
  async heartbeat(worker: string, jobs: number): Promise<void> {
    await HEARTBEAT.run(this.#redis, this.#keys, [worker, jobs]);
  }

  /**
   * The jobs the live workers hold, their requests in flight, and the jobs active on the queue
   * (a killed worker's among them until their locks end); the counts of a worker silent for
   * `deadAfterMs` go.
   */
  async load(deadAfterMs: number): Promise<{ held: number; requests: number; active: number }> {
    const [held, requests, active] = (await LOAD.run(this.#redis, this.#keys, [deadAfterMs])) as [
      number,
      number,
      number,
    ];
    return { held: Number(held), requests: Number(requests), active: Number(active) };
  }

  /** Takes or renews the decider's lease; false when another worker holds it or nothing is paced. */
  async lease(token: string, leaseMs: number, now = Date.now()): Promise<boolean> {
    return Number(await LEASE.run(this.#redis, this.#keys, [token, leaseMs, now])) === 1;
  }

  async releaseLease(token: string): Promise<void> {
    await RELEASE.run(this.#redis, this.#keys, [token]);
  }

  /** Up to `most` attempts told since the last drain, oldest first. */
  async drain(most: number): Promise<PacedAttempt[]> {
    const lines = (await DRAIN.run(this.#redis, this.#keys, [most])) as string[];
    const attempts: PacedAttempt[] = [];
    for (const line of lines) {
      const [sentAt, latencyMs, inFlight, code] = line.split('|');
      const outcome = CODE_OUTCOME[code ?? ''];
      const parsed = [Number(sentAt), Number(latencyMs), Number(inFlight)] as const;
      if (outcome === undefined || !parsed.every(Number.isFinite)) continue;
      attempts.push({
        sentAt: parsed[0],
        latencyMs: parsed[1],
        inFlight: parsed[2],
        outcome,
      });
    }
    return attempts;
  }

  /**
   * Sets the queue's global concurrency to `jobs` and the state shown, as the decider holding
   * `token`.
   */
  async publish(token: string, jobs: number, state: PacingState): Promise<boolean> {
    const fields: string[] = [
      'mode',
      state.mode,
      'limit',
      String(state.limit),
      'jobs',
      String(jobs),
      'min',
      String(state.min),
      'capacity',
      state.capacity === undefined ? '' : String(state.capacity),
      'baselineMs',
      state.baselineMs === undefined ? '' : String(state.baselineMs),
      'deadline',
      state.deadline === undefined ? '' : JSON.stringify(state.deadline),
      'decider',
      state.decider ?? '',
      'decidedAt',
      String(state.decidedAt ?? Date.now()),
    ];
    return Number(await PUBLISH.run(this.#redis, this.#keys, [token, jobs, ...fields])) === 1;
  }

  /** What the decider said last; undefined when nothing is paced or nothing was decided yet. */
  async state(): Promise<PacingState | undefined> {
    const raw = await this.#redis.hgetall(this.#keys[1] as string);
    const limit = Number(raw.limit);
    if (raw.limit === undefined || !Number.isFinite(limit)) return undefined;
    const number = (text: string | undefined) =>
      text === undefined || text === '' || !Number.isFinite(Number(text))
        ? undefined
        : Number(text);
    let deadline: DeadlineReport | undefined;
    try {
      deadline = raw.deadline ? (JSON.parse(raw.deadline) as DeadlineReport) : undefined;
    } catch {
      deadline = undefined;
    }
    return {
      mode: raw.mode === 'auto' ? 'auto' : 'fixed',
      limit,
      min: number(raw.min) ?? 1,
      jobs: number(raw.jobs),
      capacity: number(raw.capacity),
      baselineMs: number(raw.baselineMs),
      deadline,
      decider: raw.decider || undefined,
      decidedAt: number(raw.decidedAt),
    };
  }
}

/** How the run asks its queue to be paced: undefined for a fixed concurrency and no deadline. */
export function runPacing(
  config: {
    readonly concurrency?: number | 'auto' | undefined;
    readonly minConcurrency: number;
    readonly maxConcurrency: number;
    readonly assumedLatencyMs: number;
  },
  deadlineAt: number | undefined,
): RunPacing | undefined {
  const auto = config.concurrency === 'auto';
  if (!auto && deadlineAt === undefined) return undefined;
  return {
    auto,
    min: config.minConcurrency,
    // With a deadline, a number as the concurrency is the most the plan may use.
    max: typeof config.concurrency === 'number' ? config.concurrency : config.maxConcurrency,
    ...(deadlineAt === undefined ? {} : { deadlineAt }),
    assumedLatencyMs: config.assumedLatencyMs,
  };
}

/** Where the queue starts before its decider's first word: `auto` at its least, a deadline at one round trip's few. */
function startingLimit(pacing: RunPacing): number {
  return pacing.auto ? pacing.min : Math.max(pacing.min, Math.min(FIRST_ROUND_TRIP, pacing.max));
}
