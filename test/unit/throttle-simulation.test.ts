import { describe, expect, it } from 'vitest';
import type { Random } from '../../src/control/backoff.js';
import {
  type ChargeAttempts,
  decideRetry,
  resolveRetryPolicy,
} from '../../src/control/retry-policy.js';
import {
  resolveThrottlePolicy,
  ThrottleGovernor,
  type ThrottlePolicy,
} from '../../src/control/throttle.js';
import { TokenBucket } from '../../src/control/token-bucket.js';
import type { AttemptResult } from '../../src/domain/outcome.js';
import { FakeClock } from '../helpers/fake-clock.js';

// A deterministic simulation, on a fake clock and an event list (no timers, no sockets): a
// provider with a token bucket, and a dispatcher that uses the governor exactly as an engine
// does — asks it before each dispatch, tells it every answer — and decides each answer with the
// retry policy (decideRetry: the charge's delay, and its bound on throttles in a row).

/** Events in time order (same instant: in the order they were scheduled). */
class EventList {
  readonly clock = new FakeClock(0);
  #events: Array<{ at: number; seq: number; run: () => void }> = [];
  #seq = 0;

  at(at: number, run: () => void): void {
    const event = { at: Math.max(at, this.clock.now()), seq: this.#seq++, run };
    // Binary search for the insertion point: events stay sorted by (at, seq).
    let low = 0;
    let high = this.#events.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      const other = this.#events[middle] as { at: number; seq: number };
      if (other.at < event.at || (other.at === event.at && other.seq < event.seq)) low = middle + 1;
      else high = middle;
    }
    this.#events.splice(low, 0, event);
  }

  after(ms: number, run: () => void): void {
    this.at(this.clock.now() + ms, run);
  }

  /** Runs every event; fails when virtual time passes `limitMs` (a run that never ends). */
  run(limitMs: number): void {
    for (;;) {
      const next = this.#events.shift();
      if (!next) return;
      if (next.at > limitMs) throw new Error(`still running at ${limitMs} ms of virtual time`);
      this.clock.advance(next.at - this.clock.now());
      next.run();
    }
  }
}

interface Scenario {
  readonly users: number;
  readonly concurrency: number;
  /** The provider's token bucket. */
  readonly ratePerSecond: number;
  readonly burst: number;
  /** Processing time of a charge that passes the bucket; a 429 is answered at once. */
  readonly latencyMs: number;
  /** One-way network delay. */
  readonly networkMs: number;
  /** Send Retry-After (whole seconds until a token, at least 1, as the mock provider does). */
  readonly retryAfter: boolean;
  /** Every request is throttled: the provider never lets one through. */
  readonly alwaysThrottle?: boolean;
  /** Stop dispatching once the governor says the run should stop (stopReason). */
  readonly honourStop?: boolean;
  readonly policy?: ThrottlePolicy;
}

interface Figures {
  readonly requests: number;
  readonly throttled: number;
  readonly charged: number;
  readonly failed: number;
  readonly failReasons: ReadonlySet<string>;
  /** Virtual time when the last charge ended, in ms. */
  readonly elapsedMs: number;
  /** When each request was sent. */
  readonly starts: readonly number[];
  /** Every pause in force at some throttled answer: [start, end) on the virtual clock. */
  readonly pauses: ReadonlyArray<readonly [number, number]>;
  /** Throttle episodes the governor counted. */
  readonly episodes: number;
  /** Why the dispatcher stopped early (honourStop), and when. */
  readonly stopped: { readonly reason: string; readonly at: number } | undefined;
}

const THROTTLED = (retryAfterMs: number | undefined): AttemptResult => ({
  kind: 'retry',
  status: 429,
  reason: '429 rate_limited',
  ambiguous: false,
  throttled: true,
  retryAfterMs,
});
const CHARGED: AttemptResult = { kind: 'charged', status: 200, chargeId: 'ch' };

/** A fixed sequence of draws in [0, 1), the same on every run. */
function fixedRandom(): Random {
  let state = 7;
  return () => {
    state = (state * 48_271) % 2_147_483_647;
    return state / 2_147_483_647;
  };
}

function simulate(scenario: Scenario, limitMs = 600_000): Figures {
  const events = new EventList();
  const { clock } = events;
  const policy = scenario.policy ?? resolveThrottlePolicy();
  const random = fixedRandom();
  const governor = new ThrottleGovernor({ clock, random, policy });
  const retryPolicy = resolveRetryPolicy();
  const bucket = new TokenBucket({
    ratePerSecond: scenario.ratePerSecond,
    burst: scenario.burst,
    clock,
  });

  // The provider: the bucket is checked when a request arrives; past it, 429 at once.
  let requests = 0;
  let throttled = 0;
  function provider(answer: (result: AttemptResult) => void): void {
    requests++;
    events.after(scenario.networkMs, () => {
      if (scenario.alwaysThrottle || !bucket.tryTake()) {
        throttled++;
        const retryAfterMs = scenario.retryAfter
          ? Math.max(1, Math.ceil(bucket.msUntilAvailable() / 1_000)) * 1_000
          : undefined;
        events.after(scenario.networkMs, () => answer(THROTTLED(retryAfterMs)));
      } else {
        events.after(scenario.latencyMs + scenario.networkMs, () => answer(CHARGED));
      }
    });
  }

  // The dispatcher: a charge to retry goes back to the front of the line once its delay is over,
  // as the scheduler's due retries come before fresh charges.
  const ready = Array.from({ length: scenario.users }, (_, index) => index);
  const attemptsOf = new Map<number, ChargeAttempts>();
  const starts: number[] = [];
  const pauses: Array<readonly [number, number]> = [];
  const failReasons = new Set<string>();
  let inFlight = 0;
  let charged = 0;
  let failed = 0;
  let elapsedMs = 0;
  let wakeAt = Number.POSITIVE_INFINITY;
  let stopped: { reason: string; at: number } | undefined;

  function wake(at: number): void {
    if (at >= wakeAt) return;
    wakeAt = at;
    events.at(at, () => {
      if (wakeAt !== at) return;
      wakeAt = Number.POSITIVE_INFINITY;
      pump();
    });
  }

  function settle(user: number, sentAt: number, result: AttemptResult): void {
    inFlight--;
    governor.observe(result, sentAt);
    if (result.kind === 'retry' && result.throttled) {
      const pausedUntil = governor.pausedUntil();
      if (pausedUntil > clock.now() && pauses.at(-1)?.[1] !== pausedUntil) {
        pauses.push([clock.now(), pausedUntil]);
      }
      const before = attemptsOf.get(user) ?? { attempts: 0, ambiguous: false };
      const decision = decideRetry(retryPolicy, before, result, random);
      attemptsOf.set(user, decision);
      const reason = scenario.honourStop ? governor.stopReason() : undefined;
      if (reason !== undefined) stopped ??= { reason, at: clock.now() };
      if (decision.action === 'retry') {
        events.after(decision.delayMs, () => {
          ready.unshift(user);
          pump();
        });
      } else {
        failed++;
        failReasons.add(decision.action === 'finish' ? (decision.reason ?? '') : decision.reason);
        elapsedMs = clock.now();
      }
    } else {
      charged++;
      elapsedMs = clock.now();
    }
    pump();
  }

  function pump(): void {
    while (stopped === undefined && inFlight < scenario.concurrency && ready.length > 0) {
      if (!governor.tryDispatch()) {
        wake(governor.readyAt());
        return;
      }
      const user = ready.shift() as number;
      const sentAt = clock.now();
      inFlight++;
      starts.push(sentAt);
      provider((result) => settle(user, sentAt, result));
    }
  }

  events.at(0, pump);
  events.run(limitMs);
  const episodes = governor.episodes().total;
  return {
    requests,
    throttled,
    charged,
    failed,
    failReasons,
    elapsedMs,
    starts,
    pauses,
    episodes,
    stopped,
  };
}

const TARGET: Scenario = {
  users: 1_000,
  concurrency: 64,
  ratePerSecond: 50,
  burst: 50,
  latencyMs: 20,
  networkMs: 1,
  retryAfter: false,
};

/** 1,000 users at 50 per second: 20 s if every second's worth went through. */
const IDEAL_MS = (TARGET.users / TARGET.ratePerSecond) * 1_000;

describe('throttling, simulated: 1,000 users against a 50/s provider, concurrency 64', () => {
  it('without Retry-After: at most one 429 per user on average, within 1.2× of 20 s, everyone charged', () => {
    const figures = simulate(TARGET);
    expect(figures.charged).toBe(1_000);
    expect(figures.failed).toBe(0);
    expect(figures.throttled).toBeLessThanOrEqual(1_000);
    expect(figures.elapsedMs).toBeLessThanOrEqual(1.2 * IDEAL_MS);
    // Measured: 25 429s of 1,025 requests (14 of them the first wave; 12 throttle episodes, 3
    // pauses of 0.5 to 1 s), 19.08 s of virtual time (the provider's first burst of 50 is free). Far inside both bounds, so a
    // change in the governor's tuning that makes either much worse fails here.
    expect(figures.throttled).toBeLessThanOrEqual(250);
    expect(figures.elapsedMs).toBeLessThanOrEqual(1.1 * IDEAL_MS);
  });

  it('with Retry-After: 1, every charge waits the pause out, then dispatch resumes spread out', () => {
    const figures = simulate({ ...TARGET, retryAfter: true });
    expect(figures.charged).toBe(1_000);
    expect(figures.throttled).toBeLessThanOrEqual(1_000);
    expect(figures.elapsedMs).toBeLessThanOrEqual(1.2 * IDEAL_MS);
    const [first] = figures.pauses;
    if (first === undefined) throw new Error('the provider never paused the run');
    const [from, until] = first;
    expect(until - from).toBeGreaterThanOrEqual(1_000 - 21);
    // Nothing starts while the pause holds.
    expect(figures.starts.filter((at) => at >= from && at < until)).toEqual([]);
    // At the pause's end the 64 charges waiting could all start in the same instant; instead
    // they start at the learned rate (45/s), doubling every 100 ms while they get through.
    // Measured: 1 in the first 20 ms, 6 in 100 ms, 29 in 250 ms, 69 in the first second (the
    // provider takes up to 100 then: its bucket of 50, full after the pause, and 50/s).
    const startsWithin = (ms: number) =>
      figures.starts.filter((at) => at >= until && at < until + ms).length;
    expect(startsWithin(20)).toBeLessThanOrEqual(2);
    expect(startsWithin(100)).toBeGreaterThanOrEqual(1);
    expect(startsWithin(100)).toBeLessThanOrEqual(8);
    expect(startsWithin(1_000)).toBeLessThanOrEqual(100);
    // Measured: 21 429s, 19.42 s, 8 pauses of 1 s (the provider's Retry-After is whole seconds).
    expect(figures.throttled).toBeLessThanOrEqual(250);
  });

  it('against a smooth provider (burst 1) still ends everyone charged, gently', () => {
    const figures = simulate({ ...TARGET, burst: 1 });
    expect(figures.charged).toBe(1_000);
    // Measured: 68 429s (63 of them the first wave: the bucket lets 1 of 64 through), 27.9 s:
    // the first estimate is 1/s, and slow start at that rate doubles only once per answer.
    expect(figures.throttled).toBeLessThanOrEqual(150);
    expect(figures.elapsedMs).toBeLessThanOrEqual(1.5 * IDEAL_MS);
  });

  it('a provider that throttles everything: every charge ends failed at the retry policy bound, one request per pause', () => {
    const figures = simulate({ ...TARGET, users: 20, alwaysThrottle: true }, 100_000_000);
    const bound = resolveRetryPolicy().maxWaits + 1;
    expect(figures.charged).toBe(0);
    expect(figures.failed).toBe(20);
    expect([...figures.failReasons]).toEqual([
      `throttled ${bound} times in a row: 429 rate_limited`,
    ]);
    expect(figures.requests).toBe(20 * bound);
    // After the first wave, one request per pause, each pause 15 to 30 s once grown.
    expect(figures.pauses.length).toBeGreaterThan(900);
    expect(figures.elapsedMs).toBeGreaterThan(900 * 15_000);
  });

  it('a provider that throttles everything: the run stops after 10 minutes when the engine asks', () => {
    const figures = simulate({ ...TARGET, alwaysThrottle: true, honourStop: true }, 100_000_000);
    expect(figures.charged).toBe(0);
    expect(figures.stopped?.reason).toMatch(/^the provider has throttled every request for 10m/);
    expect(figures.stopped?.at).toBeGreaterThanOrEqual(600_000);
    expect(figures.stopped?.at).toBeLessThan(600_000 + 31_000);
    // The first wave (64), then about one request per pause: gentle while it lasts.
    expect(figures.requests).toBeLessThan(64 + 50);
  });
});
