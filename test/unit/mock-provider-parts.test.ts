import { describe, expect, it } from 'vitest';
import { chargeFieldsProblem } from '../../src/domain/charge.js';
import { CapacityGate } from '../../src/mock-provider/capacity-gate.js';
import { resolveMockProviderOptions } from '../../src/mock-provider/options.js';
import { drawsFor, mulberry32 } from '../../src/mock-provider/random.js';

describe('seeded randomness', () => {
  it('gives the same draws for the same seed, user and attempt, and others otherwise', () => {
    expect(drawsFor(1, 'alice', 0)).toEqual(drawsFor(1, 'alice', 0));
    expect(drawsFor(1, 'alice', 0)).not.toEqual(drawsFor(2, 'alice', 0));
    expect(drawsFor(1, 'alice', 0)).not.toEqual(drawsFor(1, 'alice', 1));
    expect(drawsFor(1, 'alice', 0)).not.toEqual(drawsFor(1, 'alicf', 0));
  });

  it('is uniform enough that a rate p hits about p of the draws', () => {
    let hits = 0;
    for (let user = 0; user < 20_000; user++) {
      if (drawsFor(42, `user-${user}`, 0).fail < 0.02) hits++;
    }
    // 20,000 × 2% = 400, standard deviation about 20.
    expect(hits).toBeGreaterThan(320);
    expect(hits).toBeLessThan(480);
  });

  it('mulberry32 stays in [0, 1)', () => {
    const next = mulberry32(7);
    for (let index = 0; index < 10_000; index++) {
      const value = next();
      expect(value >= 0 && value < 1).toBe(true);
    }
  });
});

describe('CapacityGate', () => {
  it('refuses past capacity and hands a freed slot to the longest waiter', () => {
    const gate = new CapacityGate(2);
    const started: string[] = [];
    gate.enterWhenFree(() => started.push('a'));
    gate.enterWhenFree(() => started.push('b'));
    gate.enterWhenFree(() => started.push('c'));
    gate.enterWhenFree(() => started.push('d'));
    expect(started).toEqual(['a', 'b']);
    expect(gate.tryEnter()).toBe(false);
    expect([gate.queued, gate.maxQueued]).toEqual([2, 2]);
    gate.leave();
    expect(started).toEqual(['a', 'b', 'c']);
    gate.leave();
    gate.leave();
    gate.leave();
    expect([gate.inFlight, gate.maxInFlight, gate.queued]).toEqual([0, 2, 0]);
  });

  it('resolves idle() when the last slot is given back', async () => {
    const gate = new CapacityGate(1);
    expect(gate.tryEnter()).toBe(true);
    let idle = false;
    const waiting = gate.idle().then(() => {
      idle = true;
    });
    await Promise.resolve();
    expect(idle).toBe(false);
    gate.leave();
    await waiting;
    expect(idle).toBe(true);
  });
});

describe('resolveMockProviderOptions', () => {
  it('fills in the documented defaults', () => {
    const options = resolveMockProviderOptions({ seed: 5 });
    expect(options).toMatchObject({
      port: 4010,
      host: '127.0.0.1',
      latencyMs: 1_600,
      jitter: 0.1,
      overload: '503',
      failRate: 0,
      slowMs: 35_000,
      seed: 5,
    });
    expect(options.capacity).toBeUndefined();
    expect(options.rate).toBeUndefined();
  });

  it('picks and reports a seed when none is given', () => {
    const { seed } = resolveMockProviderOptions({});
    expect(Number.isInteger(seed)).toBe(true);
  });

  it.each([
    [{ failRate: 1.2 }, /^`failRate`: .*, got 1.2 \(number\)$/],
    [{ jitter: -0.1 }, /^`jitter`: .*, got -0.1 \(number\)$/],
    [{ capacity: 2.5 }, /^`capacity`: .*, got 2.5 \(number\)$/],
    [{ port: 70_000 }, /^`port`: .*, got 70000 \(number\)$/],
    [{ overload: 'drop' as '503' }, /^`overload`: .*, got "drop" \(string\)$/],
  ])('refuses %j, naming the option and the value', (options, message) => {
    expect(() => resolveMockProviderOptions(options)).toThrow(message);
  });

  it('names the flag instead when the CLI asks', () => {
    expect(() => resolveMockProviderOptions({ lostRate: 3 }, () => '--lost-rate')).toThrow(
      /^--lost-rate: /,
    );
  });
});

describe('chargeFieldsProblem', () => {
  it('accepts a valid charge', () => {
    expect(chargeFieldsProblem({ user_id: 'u', amount: 1, currency: 'JPY' })).toBeUndefined();
  });

  it.each([
    [{ amount: 1, currency: 'USD' }, 'user_id', 'is missing'],
    [{ user_id: 'u'.repeat(201), amount: 1, currency: 'USD' }, 'user_id', 'at most 200'],
    [{ user_id: 'u', amount: Number.MAX_SAFE_INTEGER + 2, currency: 'USD' }, 'amount', 'integer'],
    [{ user_id: 'u', amount: -1, currency: 'USD' }, 'amount', 'positive'],
    [{ user_id: 'u', amount: 1, currency: 'EURO' }, 'currency', 'three capital letters'],
  ])('finds the problem in %j', (fields, field, reason) => {
    const problem = chargeFieldsProblem(fields);
    expect(problem?.field).toBe(field);
    expect(problem?.reason).toContain(reason);
  });
});
