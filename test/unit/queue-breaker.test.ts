import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { resolveBreakerPolicy } from '../../src/control/circuit-breaker.js';
import { QueueBreaker } from '../../src/engine/distributed/queue-breaker.js';
import {
  closeRedisAdmin,
  deleteKeysUnder,
  keysUnder,
  redisAdmin,
  uniquePrefix,
} from '../helpers/redis.js';

// The queue's circuit breaker, shared in the real Redis by the workers of a queue, on a fake
// clock (passed to its scripts in place of Redis's TIME): the rules of CircuitBreaker, and what
// sharing adds: one window for every worker, one probe for all, a lease for a probe whose worker
// died.

let prefix: string;
let now: number;
const clock = { now: () => now };

function worker(options: { giveUpMs?: number; probeLeaseMs?: number } = {}): QueueBreaker {
  return new QueueBreaker({
    redis: redisAdmin(),
    prefix,
    queue: 'q',
    policy: resolveBreakerPolicy({ giveUpMs: options.giveUpMs }),
    probeLeaseMs: options.probeLeaseMs ?? 35_000,
    random: () => 0.5,
    clock,
  });
}

async function send(breaker: QueueBreaker) {
  const said = await breaker.dispatch();
  if (!said.go) throw new Error(`held back for ${said.waitMs} ms`);
  return said.ticket;
}

beforeEach(() => {
  prefix = uniquePrefix();
  now = 1_764_000_000_000;
});

afterEach(async () => {
  await deleteKeysUnder(prefix);
});

afterAll(async () => {
  await closeRedisAdmin();
});

describe('the queue breaker (shared in Redis)', () => {
  it('opens on the failures of every worker together, and holds all of them back', async () => {
    const a = worker();
    const b = worker();
    for (let index = 0; index < 9; index++) {
      const said = await (index % 2 === 0 ? a : b).record(await send(a), 'failure');
      expect(said.excused).toBe(false);
    }
    expect((await b.snapshot()).state).toBe('closed');
    // The 10th, on the other worker: half of at least 10 failed, across both.
    expect(await b.record(await send(b), 'failure')).toEqual({
      excused: true,
      stop: undefined,
      change: { to: 'open', openMs: 1_500 },
    });
    // 2 s with jitter drawn at 0.5: 1.5 s, for both.
    for (const breaker of [a, b]) {
      expect(await breaker.dispatch()).toEqual({ go: false, waitMs: 1_500, probeOut: false });
    }
    expect(await a.snapshot()).toEqual({ state: 'open', opened: 1, probes: 0, openMs: 1_500 });
  });

  it('lets one probe go for the whole queue; its answer closes it for everyone', async () => {
    const a = worker();
    const b = worker();
    for (let index = 0; index < 10; index++) await a.record(await send(a), 'failure');
    now += 1_500;
    const probe = await send(b);
    expect(probe.probe).toBe(true);
    // The other worker is held back while the probe is out, and told so.
    expect(await a.dispatch()).toMatchObject({ go: false, probeOut: true });
    expect(await b.record(probe, 'success')).toEqual({
      excused: false,
      stop: undefined,
      change: { to: 'closed' },
    });
    expect(await a.dispatch()).toMatchObject({ go: true, ticket: { probe: false } });
    expect(await a.snapshot()).toMatchObject({ state: 'closed', opened: 1, probes: 1 });
  });

  it('reopens for twice as long on a failed probe, and follows a longer Retry-After', async () => {
    const a = worker();
    for (let index = 0; index < 10; index++) await a.record(await send(a), 'failure');
    now += 1_500;
    await a.record(await send(a), 'failure');
    expect(await a.dispatch()).toMatchObject({ go: false, waitMs: 3_000 });
    now += 3_000;
    await a.record(await send(a), 'failure', 20_000);
    expect(await a.dispatch()).toMatchObject({ go: false, waitMs: 20_000 });
    expect(await a.snapshot()).toMatchObject({ state: 'open', opened: 3, probes: 2 });
  });

  it('is moved only by answers to attempts sent since it last opened', async () => {
    const a = worker();
    const b = worker();
    // 20 in flight across two workers when the provider goes down; the failures come back first.
    const before = [];
    for (let index = 0; index < 20; index++) before.push(await send(index % 2 ? a : b));
    for (const ticket of before.slice(0, 10)) await a.record(ticket, 'failure');
    // A late success of a request sent before: stale news, it closes nothing.
    expect(await b.record(before[10] as (typeof before)[number], 'success')).toMatchObject({
      excused: false,
    });
    expect((await a.snapshot()).state).toBe('open');
    // A late failure is excused, and a longer Retry-After it brings is followed.
    expect(await b.record(before[11] as (typeof before)[number], 'failure', 5_000)).toMatchObject({
      excused: true,
    });
    expect(await a.dispatch()).toMatchObject({ go: false, waitMs: 5_000 });
    now += 5_000;
    const probe = await send(a);
    // Half-open: another late success neither closes it nor frees the probe's place.
    await b.record(before[12] as (typeof before)[number], 'success');
    expect(await b.dispatch()).toMatchObject({ go: false, probeOut: true });
    await a.record(probe, 'success');
    expect((await b.snapshot()).state).toBe('closed');
    // Closed: the old attempts' timeouts are excused and out of the new window.
    for (const ticket of before.slice(13)) {
      expect((await b.record(ticket, 'failure')).excused).toBe(true);
    }
    for (let index = 0; index < 8; index++) await a.record(await send(a), 'failure');
    expect((await a.snapshot()).state).toBe('closed');
  });

  it('gives a probe whose worker died to another once its lease ends, and one not sent at once', async () => {
    const a = worker({ probeLeaseMs: 10_000 });
    const b = worker({ probeLeaseMs: 10_000 });
    for (let index = 0; index < 10; index++) await a.record(await send(a), 'failure');
    now += 1_500;
    await send(a); // a dies with its probe out (kill -9): it never answers
    now += 9_999;
    expect(await b.dispatch()).toMatchObject({ go: false, waitMs: 1, probeOut: true });
    now += 1;
    const second = await send(b);
    expect(second.probe).toBe(true);
    await b.release(second);
    expect((await send(a)).probe).toBe(true);
    expect((await a.snapshot()).probes).toBe(3);
  });

  it('says to stop once the provider has been down for the give-up time', async () => {
    const a = worker({ giveUpMs: 10_000 });
    for (let index = 0; index < 10; index++) await a.record(await send(a), 'failure');
    now += 1_500;
    expect((await a.record(await send(a), 'failure')).stop).toBeUndefined();
    now += 8_500;
    const said = await a.record(await send(a), 'failure');
    expect(said.stop).toMatch(/failing .* for 10s: stopping, the charges left stay pending/);
  });

  it("sizes its least samples by the queue's jobs in flight: a wave's fast failures do not open it", async () => {
    const a = worker();
    // 1,000 jobs active across the workers (BullMQ's active list), sent together.
    const active = QueueBreaker.keysOf(prefix, 'q').active;
    await redisAdmin().rpush(active, ...Array.from({ length: 1_000 }, (_, index) => `${index}`));
    // 2% of them fail fast and answer first: 20 failures, under a tenth of 1,000 answers.
    for (let index = 0; index < 20; index++) await a.record(await send(a), 'failure');
    expect((await a.snapshot()).state).toBe('closed');
    // An outage: failure after failure, it opens once half of at least 100 failed.
    let failures = 20;
    while ((await a.snapshot()).state === 'closed') {
      await a.record(await send(a), 'failure');
      failures++;
    }
    expect(failures).toBe(100);
  });

  it('keeps its keys under the queue, with an expiry', async () => {
    const a = worker();
    for (let index = 0; index < 10; index++) await a.record(await send(a), 'failure');
    const keys = (await keysUnder(prefix)).sort();
    expect(keys).toEqual([`${prefix}:q:breaker`, `${prefix}:q:breaker:window`]);
    for (const key of keys) expect(await redisAdmin().pttl(key)).toBeGreaterThan(0);
  });
});
