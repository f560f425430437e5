import { afterEach, describe, expect, it } from 'vitest';
import { CircuitBreaker } from '../../src/control/circuit-breaker.js';
import { resolveRetryPolicy } from '../../src/control/retry-policy.js';
import type { AttemptResult } from '../../src/domain/outcome.js';
import { Scheduler } from '../../src/engine/scheduler.js';
import type { ChargeRecord } from '../../src/ledger/ledger.js';
import type { SqliteLedger } from '../../src/ledger/sqlite-ledger.js';
import { answer } from '../helpers/answers.js';
import { FakeTimers } from '../helpers/fake-timers.js';
import { chargesIn, memoryLedgerWith } from '../helpers/ledger-rows.js';

// The scheduler with a circuit breaker, on a fake clock: an outage of the provider fails nobody,
// uses up no charge's attempts past the few that opened the breaker, and the provider sees only
// the probes while it lasts.

const RUN = 'cycle';
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

/** A provider taking `latencyMs` per answer, down (every answer `down()`) between two instants. */
function provider(timers: FakeTimers, latencyMs: number, downFrom: number, downUntil: number) {
  const sentAt: number[] = [];
  const sender = {
    attempt(): Promise<AttemptResult> {
      const now = timers.clock.now();
      sentAt.push(now);
      const down = now >= downFrom && now < downUntil;
      return new Promise((resolve) => {
        timers.setTimeout(
          () => resolve(down ? answer.unavailable() : answer.charged()),
          down ? 5 : latencyMs,
        );
      });
    },
  };
  return { sender, sentAt };
}

function scheduler(
  ledger: SqliteLedger,
  timers: FakeTimers,
  sender: { attempt(): Promise<AttemptResult> },
  breaker: CircuitBreaker | undefined,
) {
  return new Scheduler({
    runId: RUN,
    ledger,
    sender,
    policy: resolveRetryPolicy({ maxAttempts: 3 }),
    concurrency: 20,
    breaker,
    clock: timers.clock,
    timers,
    wallClock: () => 1_800_000_000_000 + timers.clock.now(),
    random: () => 0.5,
  });
}

describe('Scheduler with a circuit breaker', () => {
  it('fails nobody through a 10-minute outage, and sends only probes while it lasts', async () => {
    const ledger = await ledgerWith(2_000);
    const timers = new FakeTimers();
    const DOWN_FROM = 2_000;
    const DOWN_UNTIL = DOWN_FROM + 600_000;
    const { sender, sentAt } = provider(timers, 100, DOWN_FROM, DOWN_UNTIL);
    const breaker = new CircuitBreaker({ clock: timers.clock, random: () => 0.5 });
    const done = scheduler(ledger, timers, sender, breaker).run();
    await timers.advance(DOWN_UNTIL + 120_000);
    const result = await done;
    expect(result.fatal).toBeUndefined();
    const charges = await chargesOf(ledger);
    expect(charges.filter((charge) => charge.state !== 'charged')).toEqual([]);
    // Counted attempts: at most the one that a charge in flight when it began used up.
    expect(Math.max(...charges.map((charge) => charge.attempts))).toBeLessThanOrEqual(2);
    // While it lasted (past the first seconds, when the requests in flight came back): probes.
    const during = sentAt.filter((at) => at >= DOWN_FROM + 5_000 && at < DOWN_UNTIL);
    expect(during.length).toBeLessThan(600 / 20);
    expect(breaker.snapshot().state).toBe('closed');
    expect(breaker.snapshot().opened).toBeGreaterThan(1);
  });

  it('without it, the same outage fails charges (the test can tell)', async () => {
    const ledger = await ledgerWith(2_000);
    const timers = new FakeTimers();
    const { sender } = provider(timers, 100, 2_000, 602_000);
    const done = scheduler(ledger, timers, sender, undefined).run();
    await timers.advance(800_000);
    await done;
    const charges = await chargesOf(ledger);
    expect(charges.filter((charge) => charge.state === 'failed').length).toBeGreaterThan(100);
  });

  it('stops with the charges pending once the provider has been down for its give-up time', async () => {
    const ledger = await ledgerWith(500);
    const timers = new FakeTimers();
    const { sender } = provider(timers, 100, 1_000, Number.POSITIVE_INFINITY);
    const breaker = new CircuitBreaker({
      clock: timers.clock,
      random: () => 0.5,
      policy: {
        ...new CircuitBreaker({ clock: timers.clock, random: () => 0.5 }).policy,
        giveUpMs: 120_000,
      },
    });
    const done = scheduler(ledger, timers, sender, breaker).run();
    await timers.advance(400_000);
    const result = await done;
    expect(result.fatal).toMatch(/failing .* stopping, the charges left stay pending/);
    const charges = await chargesOf(ledger);
    expect(charges.filter((charge) => charge.state === 'failed')).toEqual([]);
    expect(charges.filter((charge) => charge.state === 'pending').length).toBeGreaterThan(0);
  });
});
