import type { Redis } from 'ioredis';
import type { Random } from '../../control/backoff.js';
import {
  type BreakerOutcome,
  type BreakerPolicy,
  type BreakerState,
  type BreakerTicket,
  resolveBreakerPolicy,
} from '../../control/circuit-breaker.js';
import type { Clock } from '../../domain/clock.js';
import { formatDuration } from '../../domain/duration.js';
import { LuaScript } from '../../ledger/redis-scripts.js';
import { DEFAULT_PREFIX, DEFAULT_QUEUE, type QueuePlace } from './jobs.js';

// The breaker of a queue, shared by every worker, in a hash: `s` its state (c, o, h), `e` its
// epoch (times it opened), `u` when an open one lets its probe go, `r` openings in a row without
// a probe getting through, `p` until when the probe out holds its lease (0: none out), `n` probes
// sent, `d` since when the provider has been down. Its window of recent outcomes is a list next
// to it, newest first, of `<ms>:<0|1>`. Times are Redis's own (or ARGV[1], an injected clock's),
// so the machines' clocks need not agree.
const NOW = `
local now = tonumber(ARGV[1])
if now == nil then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
local function num(field, default)
  return tonumber(redis.call('HGET', KEYS[1], field)) or default
end
`;

/**
 * Takes the right to send one attempt. ARGV: now, the probe's lease (ms), the keys' expiry (ms).
 * Returns {1 if it may go else 0, epoch, 1 if a probe (2: held back by a probe out) else 0, ms
 * to wait when it may not}.
 */
const DISPATCH = new LuaScript(`${NOW}
local state = redis.call('HGET', KEYS[1], 's') or 'c'
local epoch = num('e', 0)
if state == 'c' then return {1, epoch, 0, 0} end
if state == 'o' then
  local untilAt = num('u', 0)
  if now < untilAt then return {0, epoch, 0, untilAt - now} end
  redis.call('HSET', KEYS[1], 's', 'h', 'p', 0)
end
local lease = num('p', 0)
-- The probe is out: nothing else goes until it answers, or its worker died and its lease ended.
if lease > now then return {0, epoch, 2, lease - now} end
redis.call('HSET', KEYS[1], 'p', now + tonumber(ARGV[2]))
redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, epoch, 1, 0}
`);

/** A probe taken and not sent: its place goes back. ARGV: now, epoch. */
const RELEASE = new LuaScript(`${NOW}
if num('e', 0) == tonumber(ARGV[2]) and redis.call('HGET', KEYS[1], 's') == 'h' then
  redis.call('HSET', KEYS[1], 'p', 0)
end
return 1
`);

/**
 * An attempt ended. ARGV: now, its epoch, 1 if a probe, 1 if it failed, its Retry-After in ms
 * (-1: none), then the policy: window, windowMs, minSamples, failureRatio, openMs, maxOpenMs, a
 * jitter draw in [0, 1), the keys' expiry. Returns {1 if excused else 0, ms down (-1: up), 1 if
 * it opened the breaker, 2 if it closed it, else 0, the open time in ms when it opened it}.
 * The same rules as CircuitBreaker.record, on the queue's shared state.
 */
const RECORD = new LuaScript(`${NOW}
local epoch = tonumber(ARGV[2])
local failed = ARGV[4] == '1'
local retryAfter = tonumber(ARGV[5])
local window, windowMs, minSamples = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
-- A wave of requests sent together answers its fast failures first: the least samples grow to a
-- tenth of the queue's jobs in flight (BullMQ's active list), the window to twice that.
minSamples = math.max(minSamples, math.ceil(0.1 * redis.call('LLEN', KEYS[3])))
window = math.max(window, 2 * minSamples)
local ratio, openMs, maxOpenMs = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local keep = ARGV[13]
local state = redis.call('HGET', KEYS[1], 's') or 'c'
local current = num('e', 0)
if state == 'o' and now >= num('u', 0) then state = 'h' end
local function down()
  local since = tonumber(redis.call('HGET', KEYS[1], 'd'))
  if since == nil then return -1 end
  return now - since
end
local function cap(ms) return math.min(maxOpenMs, math.max(0, ms)) end
local function open()
  local reopens = num('r', 0)
  local ms = math.min(maxOpenMs, openMs * 2 ^ reopens) * (0.5 + 0.5 * tonumber(ARGV[12]))
  if retryAfter >= 0 then ms = math.max(ms, cap(retryAfter)) end
  redis.call('HSET', KEYS[1], 's', 'o', 'u', math.ceil(now + ms), 'r', reopens + 1,
    'e', current + 1, 'p', 0)
  redis.call('HSETNX', KEYS[1], 'd', now)
  redis.call('PEXPIRE', KEYS[1], keep)
  return math.ceil(ms)
end
if epoch ~= current then
  -- Sent before the latest opening: news of how the provider was, not of how it is.
  if not failed then return {0, down(), 0, 0} end
  if state == 'o' and retryAfter >= 0 then
    local untilAt = math.ceil(now + cap(retryAfter))
    if untilAt > num('u', 0) then redis.call('HSET', KEYS[1], 'u', untilAt) end
  end
  return {1, down(), 0, 0}
end
if not failed then
  local closed = 0
  if state ~= 'c' then
    redis.call('HSET', KEYS[1], 's', 'c', 'r', 0, 'p', 0)
    redis.call('HDEL', KEYS[1], 'd')
    redis.call('DEL', KEYS[2])
    closed = 2
  end
  redis.call('LPUSH', KEYS[2], now .. ':0')
  redis.call('LTRIM', KEYS[2], 0, window - 1)
  redis.call('PEXPIRE', KEYS[2], keep)
  return {0, -1, closed, 0}
end
if state ~= 'c' then
  -- A probe failed: open again, for longer.
  if ARGV[3] == '1' and state == 'h' then return {1, down(), 1, open()} end
  return {1, down(), 0, 0}
end
redis.call('LPUSH', KEYS[2], now .. ':1')
redis.call('LTRIM', KEYS[2], 0, window - 1)
redis.call('PEXPIRE', KEYS[2], keep)
local samples, failures = 0, 0
for _, entry in ipairs(redis.call('LRANGE', KEYS[2], 0, window - 1)) do
  local at, bad = string.match(entry, '^(%d+):(%d)$')
  if now - tonumber(at) > windowMs then break end
  samples = samples + 1
  if bad == '1' then failures = failures + 1 end
end
if samples >= minSamples and failures >= samples * ratio then
  local ms = open()
  return {1, down(), 1, ms}
end
return {0, -1, 0, 0}
`);

/** The breaker's state and figures. ARGV: now. Returns {state, epoch, probes, ms left open}. */
const SNAPSHOT = new LuaScript(`${NOW}
local state = redis.call('HGET', KEYS[1], 's') or 'c'
local left = 0
if state == 'o' then
  left = num('u', 0) - now
  if left <= 0 then state, left = 'h', 0 end
end
return {state, num('e', 0), num('n', 0), left}
`);

export interface QueueBreakerOptions extends QueuePlace {
  readonly policy?: BreakerPolicy | undefined;
  /**
   * How long a probe holds its place: a worker that died probing is replaced after this. Default:
   * the request timeout and 5 s, so a live probe is never doubled.
   */
  readonly probeLeaseMs: number;
  readonly random?: Random | undefined;
  /** Time for the shared state, when not Redis's own (tests: a fake clock). */
  readonly clock?: Clock | undefined;
}

/** What a dispatch was told. */
export type QueueDispatch =
  | { readonly go: true; readonly ticket: BreakerTicket }
  | {
      readonly go: false;
      /** Until the open time ends, or the probe out loses its lease. */
      readonly waitMs: number;
      /** Held back by another worker's probe (which may answer any moment), not an open time. */
      readonly probeOut: boolean;
    };

/** What an attempt's end did to the queue's breaker. */
export interface BreakerVerdict {
  /** Its failure uses up no attempt. */
  readonly excused: boolean;
  /** Why to stop: the provider has been down for the give-up time. */
  readonly stop: string | undefined;
  /** This answer opened the breaker (for openMs) or closed it; undefined: neither. */
  readonly change:
    | { readonly to: 'open'; readonly openMs: number }
    | { readonly to: 'closed' }
    | undefined;
}

export interface QueueBreakerSnapshot {
  readonly state: BreakerState;
  readonly opened: number;
  readonly probes: number;
  /** Ms an open breaker has left before its probe; 0 otherwise. */
  readonly openMs: number;
}

/**
 * The circuit breaker of a queue (CircuitBreaker's rules, shared in Redis by every worker of the
 * queue, its least samples grown with the queue's active jobs): one window of outcomes for all, one probe at a time for all (a lease, so a worker that
 * died probing is replaced), and while it is open every worker holds its jobs back through the
 * queue's pause. Held attempts are never sent; failures of attempts sent before it opened, while
 * it is open, or which opened it, are excused.
 */
export class QueueBreaker {
  readonly policy: BreakerPolicy;
  readonly key: string;
  readonly windowKey: string;
  readonly #redis: Redis;
  readonly #random: Random;
  readonly #clock: Clock | undefined;
  readonly #leaseMs: number;
  /** The breaker's hash, its window, and BullMQ's active list (read only). */
  readonly #keys: [string, string, string];
  /** Keys outlive a quiet spell of the give-up time and the longest open time. */
  readonly #keepMs: number;

  constructor(options: QueueBreakerOptions) {
    this.policy = options.policy ?? resolveBreakerPolicy();
    const { breaker, window, active } = QueueBreaker.keysOf(options.prefix, options.queue);
    this.#keys = [breaker, window, active];
    this.key = breaker;
    this.windowKey = window;
    this.#redis = options.redis;
    this.#random = options.random ?? Math.random;
    this.#clock = options.clock;
    this.#leaseMs = Math.max(1, Math.ceil(options.probeLeaseMs));
    this.#keepMs = Math.ceil(this.policy.giveUpMs + 2 * this.policy.maxOpenMs);
  }

  static keysOf(
    prefix: string = DEFAULT_PREFIX,
    queue: string = DEFAULT_QUEUE,
  ): { breaker: string; window: string; active: string } {
    const breaker = `${prefix}:${queue}:breaker`;
    // BullMQ's list of the queue's active jobs: what every worker has in flight.
    return { breaker, window: `${breaker}:window`, active: `${prefix}:${queue}:active` };
  }

  /** May an attempt go now? Its ticket when it may, how long to hold back when not. */
  async dispatch(): Promise<QueueDispatch> {
    const reply = (await this.#eval(DISPATCH, [this.#leaseMs, this.#keepMs])) as number[];
    const [go, epoch, probe, waitMs] = reply.map(Number) as [number, number, number, number];
    if (go === 1) return { go: true, ticket: { epoch, probe: probe === 1 } };
    return { go: false, waitMs: Math.max(1, waitMs), probeOut: probe === 2 };
  }

  /** A probe taken and not sent after all: another worker may probe at once. */
  async release(ticket: BreakerTicket): Promise<void> {
    if (ticket.probe) await this.#eval(RELEASE, [ticket.epoch]);
  }

  /**
   * The attempt sent on `ticket` ended. Resolves to whether it is excused (it uses up no
   * attempt) and, when the provider has been down for the give-up time, why to stop.
   */
  async record(
    ticket: BreakerTicket,
    outcome: BreakerOutcome,
    retryAfterMs?: number,
  ): Promise<BreakerVerdict> {
    if (outcome === 'neutral') return { excused: false, stop: undefined, change: undefined };
    const { policy } = this;
    const reply = (await this.#eval(RECORD, [
      ticket.epoch,
      ticket.probe ? 1 : 0,
      outcome === 'failure' ? 1 : 0,
      retryAfterMs === undefined ? -1 : Math.max(0, Math.round(retryAfterMs)),
      policy.window,
      policy.windowMs,
      policy.minSamples,
      policy.failureRatio,
      policy.openMs,
      policy.maxOpenMs,
      this.#random(),
      this.#keepMs,
    ])) as number[];
    const [excused, downMs, transition, openMs] = reply.map(Number) as [
      number,
      number,
      number,
      number,
    ];
    const stop =
      downMs >= policy.giveUpMs
        ? `the provider has been failing (5xx, resets, timeouts) for ${formatDuration(downMs)}: stopping, the charges left stay pending`
        : undefined;
    const change: BreakerVerdict['change'] =
      transition === 1 ? { to: 'open', openMs } : transition === 2 ? { to: 'closed' } : undefined;
    return { excused: excused === 1, stop, change };
  }

  async snapshot(): Promise<QueueBreakerSnapshot> {
    const [state, opened, probes, openMs] = (await this.#eval(SNAPSHOT, [])) as [
      string,
      number,
      number,
      number,
    ];
    return {
      state: state === 'o' ? 'open' : state === 'h' ? 'half-open' : 'closed',
      opened: Number(opened),
      probes: Number(probes),
      openMs: Number(openMs),
    };
  }

  #eval(script: LuaScript, args: ReadonlyArray<string | number>): Promise<unknown> {
    const now = this.#clock === undefined ? '' : Math.round(this.#clock.now());
    return script.run(this.#redis, this.#keys, [now, ...args]);
  }
}
