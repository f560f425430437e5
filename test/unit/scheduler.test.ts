import { afterEach, describe, expect, it } from 'vitest';
import { resolveRetryPolicy } from '../../src/control/retry-policy.js';
import type { AttemptResult } from '../../src/domain/outcome.js';
import { Scheduler, type SchedulerResult } from '../../src/engine/scheduler.js';
import type { ChargeRecord } from '../../src/ledger/ledger.js';
import type { SqliteLedger } from '../../src/ledger/sqlite-ledger.js';
import type { AttemptEvent } from '../../src/observe/attempts.js';
import type { ChargeRequest } from '../../src/provider/index.js';
import { answer } from '../helpers/answers.js';
import { FakeTimers, settle } from '../helpers/fake-timers.js';
import { chargesIn, memoryLedgerWith } from '../helpers/ledger-rows.js';

const RUN = 'cycle';

/** A provider the test answers by hand: each attempt waits until the test settles it. */
class ScriptedSender {
  readonly sent: ChargeRequest[] = [];
  readonly #waiting: Array<{ request: ChargeRequest; resolve: (result: AttemptResult) => void }> =
    [];
  readonly #auto: ((request: ChargeRequest, nth: number) => AttemptResult) | undefined;

  constructor(auto?: (request: ChargeRequest, nth: number) => AttemptResult) {
    this.#auto = auto;
  }

  get inFlight(): number {
    return this.#waiting.length;
  }

  attempt(request: ChargeRequest): Promise<AttemptResult> {
    this.sent.push(request);
    const nth = this.sent.filter((sent) => sent.userId === request.userId).length;
    if (this.#auto) return Promise.resolve(this.#auto(request, nth));
    return new Promise((resolve) => this.#waiting.push({ request, resolve }));
  }

  /** Answers the oldest attempt in flight. */
  answer(result: AttemptResult): ChargeRequest {
    const next = this.#waiting.shift();
    if (!next) throw new Error('nothing in flight');
    next.resolve(result);
    return next.request;
  }
}

const ledgers: SqliteLedger[] = [];
afterEach(async () => {
  await Promise.all(ledgers.splice(0).map((ledger) => ledger.close()));
});

function ledgerWith(count: number): Promise<SqliteLedger> {
  return memoryLedgerWith(count, RUN, ledgers);
}

function chargesOf(ledger: SqliteLedger): Promise<ChargeRecord[]> {
  return chargesIn(ledger, RUN);
}

function start(
  ledger: SqliteLedger,
  sender: ScriptedSender,
  timers: FakeTimers,
  options: {
    concurrency?: number;
    rate?: number;
    maxAttempts?: number;
    signal?: AbortSignal;
    onAttempt?: (event: AttemptEvent) => void;
  } = {},
): { scheduler: Scheduler; done: Promise<SchedulerResult> } {
  const scheduler = new Scheduler({
    runId: RUN,
    ledger,
    sender,
    policy: resolveRetryPolicy({ maxAttempts: options.maxAttempts ?? 5 }),
    concurrency: options.concurrency ?? 4,
    rate: options.rate,
    clock: timers.clock,
    timers,
    wallClock: () => 1_800_000_000_000 + timers.clock.now(),
    // Full jitter drawn at its top: the delay is exactly the exponential cap of the attempt.
    random: () => 0.999_999,
    signal: options.signal,
    onAttempt: options.onAttempt,
  });
  return { scheduler, done: scheduler.run() };
}

describe('Scheduler', () => {
  it('keeps at most `concurrency` attempts in flight, and refills a slot as soon as one frees', async () => {
    const ledger = await ledgerWith(10);
    const sender = new ScriptedSender();
    const timers = new FakeTimers();
    const { done } = start(ledger, sender, timers, { concurrency: 3 });
    await settle();
    expect(sender.inFlight).toBe(3);
    expect(sender.sent.map((request) => request.userId)).toEqual(['u0', 'u1', 'u2']);
    sender.answer(answer.charged());
    await settle();
    expect(sender.inFlight).toBe(3);
    expect(sender.sent).toHaveLength(4);
    while (sender.inFlight > 0) {
      sender.answer(answer.charged());
      await settle();
    }
    const result = await done;
    expect(result.fatal).toBeUndefined();
    expect((await chargesOf(ledger)).every((charge) => charge.state === 'charged')).toBe(true);
  });

  it('sends every attempt of a charge with the same idempotency key', async () => {
    const ledger = await ledgerWith(1);
    const sender = new ScriptedSender((_request, nth) =>
      nth < 3 ? answer.timedOut() : answer.charged(),
    );
    const timers = new FakeTimers();
    const { done } = start(ledger, sender, timers);
    await timers.advance(60_000);
    await done;
    expect(sender.sent).toHaveLength(3);
    expect(new Set(sender.sent.map((request) => request.idempotencyKey))).toEqual(
      new Set(['cycle:u0']),
    );
  });

  it('holds a smooth rate: one attempt per 1/rate seconds', async () => {
    const ledger = await ledgerWith(20);
    const sender = new ScriptedSender(() => answer.charged());
    const timers = new FakeTimers();
    const { done } = start(ledger, sender, timers, { concurrency: 20, rate: 10 });
    await settle();
    expect(sender.sent).toHaveLength(1);
    await timers.advance(99);
    expect(sender.sent).toHaveLength(1);
    await timers.advance(1);
    expect(sender.sent).toHaveLength(2);
    await timers.advance(1_000);
    expect(sender.sent).toHaveLength(12);
    await timers.advance(1_000);
    await done;
    expect(sender.sent).toHaveLength(20);
  });

  it('retries after exponential backoff without holding a concurrency slot', async () => {
    const ledger = await ledgerWith(2);
    const sender = new ScriptedSender();
    const timers = new FakeTimers();
    const { done } = start(ledger, sender, timers, { concurrency: 1 });
    await settle();
    expect(sender.answer(answer.unavailable()).userId).toBe('u0');
    await settle();
    // u0 waits for its retry; its slot went to u1 at once.
    expect(sender.sent.map((request) => request.userId)).toEqual(['u0', 'u1']);
    sender.answer(answer.charged());
    await timers.advance(499);
    expect(sender.sent).toHaveLength(2);
    await timers.advance(1);
    expect(sender.sent.map((request) => request.userId)).toEqual(['u0', 'u1', 'u0']);
    sender.answer(answer.unavailable());
    // The second retry waits twice as long.
    await timers.advance(999);
    expect(sender.sent).toHaveLength(3);
    await timers.advance(1);
    expect(sender.sent).toHaveLength(4);
    sender.answer(answer.charged());
    await done;
    const charges = await chargesOf(ledger);
    expect(charges.map((charge) => [charge.userId, charge.state, charge.attempts])).toEqual([
      ['u0', 'charged', 3],
      ['u1', 'charged', 1],
    ]);
  });

  it("pauses all dispatch for a 429's Retry-After, without using up the charge's attempts", async () => {
    const ledger = await ledgerWith(3);
    const sender = new ScriptedSender();
    const timers = new FakeTimers();
    const { done } = start(ledger, sender, timers, { concurrency: 1, maxAttempts: 1 });
    await settle();
    sender.answer(answer.throttled(2_000));
    await settle();
    // Nobody is sent during the pause: not the throttled charge, not the next one.
    await timers.advance(1_999);
    expect(sender.sent).toHaveLength(1);
    await timers.advance(1);
    expect(sender.sent).toHaveLength(2);
    for (let index = 0; index < 3; index++) {
      sender.answer(answer.charged());
      await timers.advance(10_000);
    }
    await done;
    const charges = await chargesOf(ledger);
    expect(charges.every((charge) => charge.state === 'charged')).toBe(true);
  });

  it('ends a charge failed when attempts run out, unknown when one may have reached the provider', async () => {
    const ledger = await ledgerWith(2);
    const sender = new ScriptedSender((request) =>
      request.userId === 'u0' ? answer.unavailable() : answer.timedOut(),
    );
    const timers = new FakeTimers();
    const { done } = start(ledger, sender, timers, { maxAttempts: 3 });
    await timers.advance(120_000);
    await done;
    const charges = await chargesOf(ledger);
    expect(
      charges.map((charge) => [charge.userId, charge.state, charge.attempts, charge.ambiguous]),
    ).toEqual([
      ['u0', 'failed', 3, false],
      ['u1', 'unknown', 3, true],
    ]);
  });

  it('bounds the 409 waits of a charge over interruptions: the waits in a row are kept in the ledger', async () => {
    const ledger = await ledgerWith(1);
    const maxWaits = resolveRetryPolicy({}).maxWaits;
    const stop = new AbortController();
    // The provider holds the key for ever (409); the first process is stopped after 20 of them.
    const first = new ScriptedSender((_request, nth) => {
      if (nth === 20) stop.abort();
      return answer.conflict();
    });
    const timers = new FakeTimers();
    const { done } = start(ledger, first, timers, { signal: stop.signal });
    await timers.advance(24 * 3_600_000);
    expect((await done).interrupted).toBe(true);
    await ledger.flush();
    expect((await ledger.pendingCharges(RUN, 0, 1))[0]?.waits).toBe(20);

    // The next process goes on counting from 20, not from 0: 51 requests in all, not 71.
    const second = new ScriptedSender(() => answer.conflict());
    const later = new FakeTimers();
    const resumed = start(ledger, second, later);
    await later.advance(24 * 3_600_000);
    await resumed.done;
    expect(first.sent.length + second.sent.length).toBe(maxWaits + 1);
    const [charge] = await chargesOf(ledger);
    // A 409 says the provider holds the key: the charge may be applied, so never `failed`.
    expect(charge).toMatchObject({ state: 'unknown', ambiguous: true });
    expect(charge?.error).toMatch(new RegExp(`${maxWaits + 1} times in a row`));
  });

  it('stops at a fatal answer: nothing more is sent, answers in flight are still recorded', async () => {
    const ledger = await ledgerWith(10);
    const sender = new ScriptedSender();
    const timers = new FakeTimers();
    const { done } = start(ledger, sender, timers, { concurrency: 2 });
    await settle();
    sender.answer(answer.unauthorized());
    await settle();
    expect(sender.sent).toHaveLength(2);
    sender.answer(answer.charged('ch_in_flight'));
    const result = await done;
    expect(result.fatal).toBe('401 Unauthorized');
    const charges = await chargesOf(ledger);
    expect(
      charges.filter((charge) => charge.state === 'charged').map((charge) => charge.chargeId),
    ).toEqual(['ch_in_flight']);
    expect(charges.filter((charge) => charge.state === 'pending')).toHaveLength(9);
  });

  it('tells every attempt once, with what it left the charge in, and keeps it in the charge history', async () => {
    const ledger = await ledgerWith(3);
    const events: AttemptEvent[] = [];
    // u0: a 503, then charged; u1: throttled (429), then declined; u2: charged at once.
    const sender = new ScriptedSender((request, nth) => {
      if (request.userId === 'u0') return nth === 1 ? answer.unavailable() : answer.charged('ch_0');
      if (request.userId === 'u1') return nth === 1 ? answer.throttled(0) : answer.declined(402);
      return answer.charged('ch_2');
    });
    const timers = new FakeTimers();
    const { done } = start(ledger, sender, timers, {
      concurrency: 3,
      onAttempt: (event) => events.push(event),
    });
    for (let round = 0; round < 10; round++) await timers.advance(60_000);
    await done;
    const told = events.map((event) => [event.userId, event.attempt, event.status, event.outcome]);
    expect(told).toEqual(
      expect.arrayContaining([
        ['u0', 1, 503, 'retry'],
        ['u0', 2, 200, 'charged'],
        ['u1', 1, 429, 'throttled'],
        ['u1', 1, 402, 'declined'],
        ['u2', 1, 200, 'charged'],
      ]),
    );
    expect(events).toHaveLength(5);
    await ledger.flush();
    const history = await ledger.attemptHistory(RUN, 'u0');
    expect(history.map((one) => [one.attempt, one.httpStatus, one.outcome])).toEqual([
      [1, 503, 'retry'],
      [2, 200, 'charged'],
    ]);
    // Times are the calendar's when each request left.
    expect(history[0]?.at).toBeGreaterThanOrEqual(1_800_000_000_000);
    expect((await ledger.attemptHistory(RUN, 'u1')).map((one) => one.outcome)).toEqual([
      'throttled',
      'declined',
    ]);
    // Charged at its first request: the row is the history.
    expect(await ledger.attemptHistory(RUN, 'u2')).toMatchObject([
      { attempt: 1, httpStatus: 200, outcome: 'charged' },
    ]);
  });

  it('tells the attempts a fatal answer stops as pending, not as retries', async () => {
    const ledger = await ledgerWith(4);
    const events: AttemptEvent[] = [];
    const sender = new ScriptedSender();
    const timers = new FakeTimers();
    const { done } = start(ledger, sender, timers, {
      concurrency: 2,
      onAttempt: (event) => events.push(event),
    });
    await settle();
    sender.answer(answer.unauthorized());
    await settle();
    sender.answer(answer.charged('ch_in_flight'));
    await done;
    expect(events.map((event) => [event.status, event.outcome])).toEqual([
      [401, 'pending'],
      [200, 'charged'],
    ]);
  });

  it('stops when the first 20 answers are all the same 400, recording no decline', async () => {
    const ledger = await ledgerWith(30);
    const sender = new ScriptedSender(() => answer.declined(400));
    const timers = new FakeTimers();
    const { done } = start(ledger, sender, timers, { concurrency: 1 });
    const result = await done;
    expect(result.fatal).toMatch(/first 20 answers were all 400/);
    expect(sender.sent).toHaveLength(20);
    const charges = await chargesOf(ledger);
    expect(charges.every((charge) => charge.state === 'pending')).toBe(true);
  });

  it('declines 400s normally once another answer has come first', async () => {
    const ledger = await ledgerWith(30);
    const sender = new ScriptedSender((request) =>
      request.userId === 'u3' ? answer.charged() : answer.declined(400),
    );
    const timers = new FakeTimers();
    const { done } = start(ledger, sender, timers, { concurrency: 1 });
    const result = await done;
    expect(result.fatal).toBeUndefined();
    const charges = await chargesOf(ledger);
    expect(charges.filter((charge) => charge.state === 'declined')).toHaveLength(29);
  });

  it('stops dispatching when interrupted and lets attempts in flight finish', async () => {
    const ledger = await ledgerWith(10);
    const sender = new ScriptedSender();
    const timers = new FakeTimers();
    const controller = new AbortController();
    const { done } = start(ledger, sender, timers, { concurrency: 3, signal: controller.signal });
    await settle();
    controller.abort();
    await settle();
    expect(sender.sent).toHaveLength(3);
    for (let index = 0; index < 3; index++) sender.answer(answer.charged());
    const result = await done;
    expect(result.interrupted).toBe(true);
    const charges = await chargesOf(ledger);
    expect(charges.filter((charge) => charge.state === 'charged')).toHaveLength(3);
    expect(charges.filter((charge) => charge.state === 'pending')).toHaveLength(7);
  });
});
