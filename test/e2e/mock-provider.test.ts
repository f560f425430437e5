import { type Agent, request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import {
  type MockProvider,
  type MockProviderOptions,
  startMockProvider,
} from '../../src/mock-provider/index.js';
import { drawsFor } from '../../src/mock-provider/random.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { type Answer, getJson, postCharge, testAgent } from '../helpers/http.js';
import { pollUntil } from '../helpers/poll.js';

let agent: Agent;
const running: MockProvider[] = [];

beforeAll(() => {
  agent = testAgent();
});
afterEach(async () => {
  await Promise.all(running.splice(0).map((provider) => provider.close({ graceMs: 0 })));
});
afterAll(async () => {
  await agent.close();
});

async function start(options: MockProviderOptions = {}): Promise<MockProvider> {
  const provider = await startMockProvider({
    port: 0,
    latencyMs: 0,
    jitter: 0,
    seed: 1,
    ...options,
  });
  running.push(provider);
  return provider;
}

function charge(userId: string, amount = 1999, currency = 'USD') {
  return { user_id: userId, amount, currency };
}

/** Posts and reports a dropped connection as status 0 instead of throwing. */
async function attempt(
  provider: MockProvider,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<Answer> {
  try {
    return await postCharge(agent, provider.url, body, headers);
  } catch {
    return { status: 0, headers: {}, body: '', json: {} };
  }
}

function users(count: number, prefix = 'user'): string[] {
  return Array.from({ length: count }, (_, index) => `${prefix}-${index}`);
}

describe('POST /charge', () => {
  it('charges and answers with the charge', async () => {
    const provider = await start();
    const answer = await postCharge(agent, provider.url, charge('alice', 2500, 'EUR'), {
      'idempotency-key': 'run:alice',
    });
    expect(answer.status).toBe(200);
    expect(answer.json).toMatchObject({
      user_id: 'alice',
      amount: 2500,
      currency: 'EUR',
      status: 'succeeded',
    });
    expect(answer.json.id).toMatch(/^ch_[0-9a-z]{21}$/);
    expect(provider.chargesOf('alice')).toEqual([answer.json.id]);
  });

  it('replays the first answer for a repeated key, with the replay header, charging once', async () => {
    const provider = await start();
    const headers = { 'idempotency-key': 'run:bob' };
    const first = await postCharge(agent, provider.url, charge('bob'), headers);
    const second = await postCharge(agent, provider.url, charge('bob'), headers);
    const third = await postCharge(agent, provider.url, charge('bob'), headers);
    expect(first.status).toBe(200);
    expect(first.headers['idempotent-replayed']).toBeUndefined();
    for (const replay of [second, third]) {
      expect(replay.status).toBe(200);
      expect(replay.body).toBe(first.body);
      expect(replay.headers['idempotent-replayed']).toBe('true');
    }
    const stats = provider.stats();
    expect(stats).toMatchObject({ requests: 3, charges: 1, replays: 2, duplicate_charges: 0 });
    const ledger = await getJson(agent, `${provider.url}/charges/bob`);
    expect(ledger).toEqual({ user_id: 'bob', charges: 1, ids: [first.json.id] });
  });

  it('answers 409 to requests with a key still being processed, and charges once', async () => {
    const provider = await start({ latencyMs: 300 });
    const headers = { 'idempotency-key': 'run:carol' };
    const answers = await Promise.all(
      Array.from({ length: 8 }, () => postCharge(agent, provider.url, charge('carol'), headers)),
    );
    const statuses = answers.map((answer) => answer.status).sort();
    expect(statuses).toEqual([200, 409, 409, 409, 409, 409, 409, 409]);
    expect(answers.find((answer) => answer.status === 409)?.json.error).toBe(
      'idempotency_key_in_use',
    );
    expect(provider.stats()).toMatchObject({ charges: 1, conflicts: 7, duplicate_charges: 0 });
  });

  it('answers 422 to a key reused with a different body, charging nothing more', async () => {
    const provider = await start();
    const headers = { 'idempotency-key': 'run:dave' };
    expect((await postCharge(agent, provider.url, charge('dave', 100), headers)).status).toBe(200);
    const changedAmount = await postCharge(agent, provider.url, charge('dave', 101), headers);
    const changedUser = await postCharge(agent, provider.url, charge('erin', 100), headers);
    expect(changedAmount.status).toBe(422);
    expect(changedAmount.json.error).toBe('idempotency_key_reused');
    expect(changedUser.status).toBe(422);
    expect(provider.stats()).toMatchObject({ charges: 1, mismatches: 2 });
  });

  it('charges every time when there is no key, and counts the duplicates', async () => {
    const provider = await start();
    for (let index = 0; index < 3; index++) {
      expect((await postCharge(agent, provider.url, charge('frank'))).status).toBe(200);
    }
    expect(provider.stats()).toMatchObject({
      charges: 3,
      keyless: 3,
      users_charged: 1,
      duplicate_charges: 2,
    });
    expect(provider.chargesOf('frank')).toHaveLength(3);
  });

  it.each([
    ['malformed JSON', '{"user_id": "a",', 'body'],
    ['a JSON array', '[1, 2]', 'body'],
    ['no user_id', { amount: 100, currency: 'USD' }, 'user_id'],
    ['an empty user_id', { user_id: '', amount: 100, currency: 'USD' }, 'user_id'],
    ['a numeric user_id', { user_id: 42, amount: 100, currency: 'USD' }, 'user_id'],
    ['a user_id over 200 characters', charge('u'.repeat(201)), 'user_id'],
    ['no amount', { user_id: 'a', currency: 'USD' }, 'amount'],
    ['a negative amount', charge('a', -5), 'amount'],
    ['a zero amount', charge('a', 0), 'amount'],
    ['a fractional amount', charge('a', 19.99), 'amount'],
    ['an amount as a string', { user_id: 'a', amount: '100', currency: 'USD' }, 'amount'],
    ['no currency', { user_id: 'a', amount: 100 }, 'currency'],
    ['a lower-case currency', charge('a', 100, 'usd'), 'currency'],
    ['a two-letter currency', charge('a', 100, 'US'), 'currency'],
  ])('answers 400 naming the field for %s', async (_case, body, field) => {
    const provider = await start();
    const answer = await postCharge(agent, provider.url, body);
    expect(answer.status).toBe(400);
    expect(answer.json.error).toBe('invalid_request');
    expect(answer.json.field).toBe(field);
    expect(String(answer.json.message)).toMatch(new RegExp(`^${field} `));
    expect(provider.stats()).toMatchObject({ charges: 0, invalid: 1 });
  });

  it('answers 400 naming the header for an idempotency key over 255 characters', async () => {
    const provider = await start();
    const answer = await postCharge(agent, provider.url, charge('a'), {
      'idempotency-key': 'k'.repeat(256),
    });
    expect(answer.status).toBe(400);
    expect(answer.json.field).toBe('Idempotency-Key');
    const longest = await postCharge(agent, provider.url, charge('a'), {
      'idempotency-key': 'k'.repeat(255),
    });
    expect(longest.status).toBe(200);
  });

  it('requires the API key when one is set', async () => {
    const provider = await start({ apiKey: 'sk_test_123' });
    const missing = await postCharge(agent, provider.url, charge('a'));
    const wrong = await postCharge(agent, provider.url, charge('a'), {
      authorization: 'Bearer sk_test_999',
    });
    const right = await postCharge(agent, provider.url, charge('a'), {
      authorization: 'Bearer sk_test_123',
    });
    expect([missing.status, wrong.status, right.status]).toEqual([401, 401, 200]);
    expect(missing.body).not.toContain('sk_test_123');
    expect(provider.stats()).toMatchObject({ unauthorized: 2, charges: 1 });
  });
});

describe('fault injection under a fixed seed', () => {
  async function billEach(
    provider: MockProvider,
    userIds: readonly string[],
  ): Promise<Map<string, number>> {
    const statuses = new Map<string, number>();
    await Promise.all(
      userIds.map(async (userId) => {
        const answer = await attempt(provider, charge(userId), {
          'idempotency-key': `r:${userId}`,
        });
        statuses.set(userId, answer.status);
      }),
    );
    return statuses;
  }

  function count(statuses: Map<string, number>, status: number): number {
    return [...statuses.values()].filter((value) => value === status).length;
  }

  it('--fail-rate answers 503 before charging; /stats agrees; the same seed fails the same users', async () => {
    const everyone = users(400);
    const provider = await start({ failRate: 0.3, seed: 7 });
    const statuses = await billEach(provider, everyone);
    const failed = count(statuses, 503);
    expect(failed).toBeGreaterThan(400 * 0.3 - 45);
    expect(failed).toBeLessThan(400 * 0.3 + 45);
    expect(provider.stats()).toMatchObject({
      requests: 400,
      failed_503: failed,
      charges: 400 - failed,
      users_charged: 400 - failed,
    });
    const failedUser = everyone.find((userId) => statuses.get(userId) === 503) as string;
    expect(provider.chargesOf(failedUser)).toEqual([]);

    // Sequentially this time, against a fresh provider with the same seed: the same users fail.
    const again = await start({ failRate: 0.3, seed: 7 });
    for (const userId of everyone) {
      const answer = await attempt(again, charge(userId), { 'idempotency-key': `r:${userId}` });
      expect(answer.status, userId).toBe(statuses.get(userId));
    }
    const otherSeed = await billEach(await start({ failRate: 0.3, seed: 8 }), everyone);
    expect([...otherSeed.entries()]).not.toEqual([...statuses.entries()]);
  });

  it('--fail-rate stores nothing: a retry with the same key is a fresh attempt', async () => {
    const provider = await start({ failRate: 0.5, seed: 3 });
    const headers = { 'idempotency-key': 'r:retry-me' };
    const seen: number[] = [];
    for (let index = 0; index < 20 && !seen.includes(200); index++) {
      seen.push((await attempt(provider, charge('retry-me'), headers)).status);
    }
    expect(seen.at(-1)).toBe(200);
    expect(seen.slice(0, -1).every((status) => status === 503)).toBe(true);
    expect(provider.stats()).toMatchObject({ charges: 1, replays: 0 });
  });

  it('--lost-rate charges, then drops the connection; a retry replays the charge', async () => {
    const everyone = users(200);
    const provider = await start({ lostRate: 0.25, seed: 11 });
    const statuses = await billEach(provider, everyone);
    const lost = everyone.filter((userId) => statuses.get(userId) === 0);
    expect(lost.length).toBeGreaterThan(200 * 0.25 - 30);
    expect(lost.length).toBeLessThan(200 * 0.25 + 30);
    expect(provider.stats()).toMatchObject({ lost: lost.length, charges: 200, users_charged: 200 });

    const [lostUser] = lost as [string];
    const retry = await attempt(provider, charge(lostUser), { 'idempotency-key': `r:${lostUser}` });
    expect(retry.status).toBe(200);
    expect(retry.headers['idempotent-replayed']).toBe('true');
    expect(provider.chargesOf(lostUser)).toEqual([retry.json.id]);
    expect(provider.stats().duplicate_charges).toBe(0);
  });

  it('--reset-rate charges, then resets the connection halfway through the answer', async () => {
    const provider = await start({ resetRate: 1 });
    const response = await request(`${provider.url}/charge`, {
      dispatcher: agent,
      method: 'POST',
      headers: { 'content-type': 'application/json', 'idempotency-key': 'r:u1' },
      body: JSON.stringify(charge('u1')),
    });
    // The status line and the headers came; the body breaks off.
    expect(response.statusCode).toBe(200);
    await expect(response.body.text()).rejects.toThrow();
    expect(provider.stats()).toMatchObject({ reset_mid_body: 1, charges: 1 });
    const retry = await attempt(provider, charge('u1'), { 'idempotency-key': 'r:u1' });
    // The retry's draws are another attempt's: reset again or replayed, never charged twice.
    expect(provider.chargesOf('u1')).toHaveLength(1);
    expect([0, 200]).toContain(retry.status);
  });

  it('an outage answers 503 to every charge until it ends, charging nothing', async () => {
    const clock = new FakeClock();
    const provider = await start({ clock });
    await provider.outage(60_000);
    const during = await attempt(provider, charge('u1'), { 'idempotency-key': 'r:u1' });
    expect(during.status).toBe(503);
    clock.advance(59_999);
    expect((await attempt(provider, charge('u2'), { 'idempotency-key': 'r:u2' })).status).toBe(503);
    clock.advance(1);
    const after = await attempt(provider, charge('u1'), { 'idempotency-key': 'r:u1' });
    expect(after.status).toBe(200);
    expect(after.headers['idempotent-replayed']).toBeUndefined();
    expect(provider.stats()).toMatchObject({ outage_503: 2, charges: 1, requests: 3 });
  });

  it('POST /outage?mode=restart drops connections, refuses new ones, then serves the same keys', async () => {
    const provider = await start();
    const first = await attempt(provider, charge('u1'), { 'idempotency-key': 'r:u1' });
    expect(first.status).toBe(200);
    const asked = await request(`${provider.url}/outage?ms=1500&mode=restart`, {
      method: 'POST',
    });
    expect(asked.statusCode).toBe(200);
    await asked.body.text();
    // Refused while it restarts (a fresh agent: no pooled connection to reuse).
    const fresh = testAgent(1);
    try {
      await expect
        .poll(async () => {
          try {
            await request(`${provider.url}/health`, { dispatcher: fresh });
            return 'up';
          } catch (error) {
            return (error as { code?: string }).code;
          }
        })
        .toBe('ECONNREFUSED');
      // Back on the same port, with the same keys: the charge is replayed, not made again.
      await expect
        .poll(
          async () => (await attempt(provider, charge('u1'), { 'idempotency-key': 'r:u1' })).status,
          {
            timeout: 5_000,
          },
        )
        .toBe(200);
    } finally {
      await fresh.close();
    }
    expect(provider.chargesOf('u1')).toEqual([first.json.id]);
    expect(provider.stats()).toMatchObject({ charges: 1, duplicate_charges: 0 });
    expect(provider.stats().replays).toBeGreaterThanOrEqual(1);
  });

  it('POST /outage refuses a bad length or mode', async () => {
    const provider = await start();
    for (const query of ['ms=0', 'ms=abc', 'ms=10&mode=maybe', 'ms=99999999']) {
      const answer = await request(`${provider.url}/outage?${query}`, { method: 'POST' });
      expect(answer.statusCode).toBe(400);
      await answer.body.text();
    }
  });

  it('--slow-rate charges, then holds the answer back by --slow; a retry meanwhile replays', async () => {
    const everyone = users(40);
    const slowMs = 600;
    const provider = await start({ slowRate: 0.5, slowMs, seed: 5 });
    const elapsed = new Map<string, number>();
    await Promise.all(
      everyone.map(async (userId) => {
        const started = performance.now();
        const answer = await attempt(provider, charge(userId), {
          'idempotency-key': `r:${userId}`,
        });
        expect(answer.status).toBe(200);
        elapsed.set(userId, performance.now() - started);
      }),
    );
    const slow = everyone.filter((userId) => (elapsed.get(userId) ?? 0) >= slowMs * 0.9);
    expect(provider.stats()).toMatchObject({ slow: slow.length, charges: 40 });
    expect(slow.length).toBeGreaterThan(5);
    expect(slow.length).toBeLessThan(35);

    // A slow answer's charge is applied before the answer leaves: a retry replays it at once.
    const slowNext = users(100, 'next').find((userId) => drawsFor(5, userId, 0).slow < 0.5);
    const headers = { 'idempotency-key': `r:${slowNext}` };
    const started = performance.now();
    const pending = attempt(provider, charge(slowNext as string), headers);
    while (provider.chargesOf(slowNext as string).length === 0) {
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    const retried = await attempt(provider, charge(slowNext as string), headers);
    expect(performance.now() - started).toBeLessThan(slowMs);
    expect(retried.status).toBe(200);
    expect(retried.headers['idempotent-replayed']).toBe('true');
    const original = await pending;
    expect(original.body).toBe(retried.body);
    expect(performance.now() - started).toBeGreaterThanOrEqual(slowMs * 0.9);
    expect(provider.stats()).toMatchObject({ charges: 41, duplicate_charges: 0 });
  });

  it('--decline-rate answers 402 card_declined and replays the decline', async () => {
    const everyone = users(300);
    const provider = await start({ declineRate: 0.2, seed: 13 });
    const statuses = await billEach(provider, everyone);
    const declined = everyone.filter((userId) => statuses.get(userId) === 402);
    expect(declined.length).toBeGreaterThan(300 * 0.2 - 35);
    expect(declined.length).toBeLessThan(300 * 0.2 + 35);
    expect(provider.stats()).toMatchObject({
      declined: declined.length,
      charges: 300 - declined.length,
    });
    const declinedUser = declined[0] as string;
    const replay = await attempt(provider, charge(declinedUser), {
      'idempotency-key': `r:${declinedUser}`,
    });
    expect(replay.status).toBe(402);
    expect(replay.json).toEqual({ error: 'card_declined' });
    expect(replay.headers['idempotent-replayed']).toBe('true');
  });

  it('--decline-suffix always declines matching user ids, even without a key', async () => {
    const provider = await start({ declineSuffix: '_nope' });
    for (let index = 0; index < 3; index++) {
      expect((await attempt(provider, charge('zoe_nope'))).status).toBe(402);
    }
    expect((await attempt(provider, charge('zoe_nope_not'))).status).toBe(200);
    expect(provider.stats()).toMatchObject({ declined: 3, charges: 1 });
  });

  it('--latency with --jitter spreads answers around the latency', async () => {
    const provider = await start({ latencyMs: 100, jitter: 0.5, seed: 17 });
    const elapsed = await Promise.all(
      users(20).map(async (userId) => {
        const started = performance.now();
        await attempt(provider, charge(userId));
        return performance.now() - started;
      }),
    );
    expect(Math.min(...elapsed)).toBeGreaterThanOrEqual(49);
    expect(Math.max(...elapsed) - Math.min(...elapsed)).toBeGreaterThan(20);
  });

  it('draws the same faults whatever order concurrent requests arrive in', async () => {
    const everyone = users(150);
    const options = { failRate: 0.2, declineRate: 0.2, seed: 23 };
    const together = await billEach(await start(options), everyone);
    const reversed = await start(options);
    for (const userId of [...everyone].reverse()) {
      const answer = await attempt(reversed, charge(userId), { 'idempotency-key': `r:${userId}` });
      expect(answer.status, userId).toBe(together.get(userId));
    }
  });
});

describe('limits', () => {
  it('--rate answers 429 with Retry-After past the token bucket', async () => {
    const clock = new FakeClock();
    const provider = await start({ rate: 2, burst: 3, clock });
    const first = await Promise.all(users(5).map((userId) => attempt(provider, charge(userId))));
    const statuses = first.map((answer) => answer.status).sort();
    expect(statuses).toEqual([200, 200, 200, 429, 429]);
    const limited = first.find((answer) => answer.status === 429) as Answer;
    // One token every 500 ms: the wait rounds up to a whole second, as the header requires.
    expect(limited.headers['retry-after']).toBe('1');
    expect(limited.json.error).toBe('rate_limited');

    clock.advance(500);
    expect((await attempt(provider, charge('after-wait'))).status).toBe(200);
    expect((await attempt(provider, charge('too-soon'))).status).toBe(429);
    expect(provider.stats()).toMatchObject({ rejected_429: 3, charges: 4 });
  });

  it('--rate gives a Retry-After of the whole wait for slow rates', async () => {
    const clock = new FakeClock();
    const provider = await start({ rate: 0.1, burst: 1, clock });
    expect((await attempt(provider, charge('a'))).status).toBe(200);
    clock.advance(2_500);
    const limited = await attempt(provider, charge('b'));
    expect(limited.status).toBe(429);
    expect(limited.headers['retry-after']).toBe('8');
  });

  it('--capacity with --overload 503 caps requests in flight and refuses the rest at once', async () => {
    const provider = await start({ capacity: 3, latencyMs: 400 });
    const answers = await Promise.all(
      users(10).map((userId) =>
        attempt(provider, charge(userId), { 'idempotency-key': `r:${userId}` }),
      ),
    );
    const refused = answers.filter((answer) => answer.status === 503);
    expect(answers.filter((answer) => answer.status === 200)).toHaveLength(3);
    expect(refused).toHaveLength(7);
    expect(refused[0]?.headers['retry-after']).toBe('1');
    expect(refused[0]?.json.error).toBe('overloaded');
    expect(provider.stats()).toMatchObject({
      max_in_flight: 3,
      rejected_503: 7,
      charges: 3,
      in_flight: 0,
    });
    // A refused request stored nothing: its key is free to succeed now.
    const refusedUser = users(10).find((_, index) => answers[index]?.status === 503) as string;
    const retry = await attempt(provider, charge(refusedUser), {
      'idempotency-key': `r:${refusedUser}`,
    });
    expect(retry.status).toBe(200);
    expect(retry.headers['idempotent-replayed']).toBeUndefined();
  });

  it('--capacity with --overload queue serves everyone, slower, never above capacity', async () => {
    const provider = await start({ capacity: 2, latencyMs: 100, overload: 'queue' });
    const started = performance.now();
    const answers = await Promise.all(users(8).map((userId) => attempt(provider, charge(userId))));
    const wall = performance.now() - started;
    expect(answers.every((answer) => answer.status === 200)).toBe(true);
    // Eight charges through two slots of 100 ms each take at least four rounds.
    expect(wall).toBeGreaterThanOrEqual(395);
    const stats = provider.stats();
    expect(stats).toMatchObject({ max_in_flight: 2, charges: 8, rejected_503: 0, queued: 0 });
    expect(stats.max_queued).toBeGreaterThanOrEqual(1);
  });
});

describe('a capacity that changes during a run (POST /capacity)', () => {
  it('more slots let the queue in at once; fewer take effect as requests end; bad values refused', async () => {
    const provider = await start({ capacity: 1, latencyMs: 150, overload: 'queue' });
    const answers = Promise.all(users(4).map((userId) => attempt(provider, charge(userId))));
    // Latency 150 ms, one slot: one charge in processing and three waiting, once all arrived.
    await pollUntil('four charges arrived', async () =>
      provider.stats().queued === 3 ? true : undefined,
    );
    expect(provider.stats()).toMatchObject({ in_flight: 1, queued: 3 });
    const raised = await request(`${provider.url}/capacity?n=4`, {
      dispatcher: agent,
      method: 'POST',
    });
    expect(raised.statusCode).toBe(200);
    expect(await raised.body.json()).toEqual({ ok: true, capacity: 4 });
    expect(provider.stats()).toMatchObject({ in_flight: 4, queued: 0 });
    expect((await answers).every((answer) => answer.status === 200)).toBe(true);

    provider.setCapacity(1);
    provider.reset();
    await Promise.all(users(3, 'second').map((userId) => attempt(provider, charge(userId))));
    expect(provider.stats()).toMatchObject({ max_in_flight: 1, charges: 3 });

    for (const bad of ['', 'n=0', 'n=1.5', 'n=abc']) {
      const refused = await request(`${provider.url}/capacity?${bad}`, {
        dispatcher: agent,
        method: 'POST',
      });
      expect(refused.statusCode, bad).toBe(400);
      await refused.body.text();
    }
    expect(() => provider.setCapacity(0)).toThrow(RangeError);
  });
});

describe('the other routes', () => {
  it('GET /charges/:user_id decodes the user id', async () => {
    const provider = await start();
    const userId = 'a b:ü,"q"';
    const answer = await postCharge(agent, provider.url, charge(userId));
    const ledger = await getJson(agent, `${provider.url}/charges/${encodeURIComponent(userId)}`);
    expect(ledger).toEqual({ user_id: userId, charges: 1, ids: [answer.json.id] });
    const nobody = await getJson(agent, `${provider.url}/charges/nobody`);
    expect(nobody).toEqual({ user_id: 'nobody', charges: 0, ids: [] });
  });

  it('POST /reset forgets charges, keys and counters', async () => {
    const provider = await start();
    const headers = { 'idempotency-key': 'r:once' };
    const before = await postCharge(agent, provider.url, charge('once'), headers);
    const reset = await request(`${provider.url}/reset`, { dispatcher: agent, method: 'POST' });
    expect(reset.statusCode).toBe(200);
    await reset.body.dump();
    expect(provider.stats()).toMatchObject({ requests: 0, charges: 0, max_in_flight: 0 });
    const after = await postCharge(agent, provider.url, charge('once'), headers);
    expect(after.headers['idempotent-replayed']).toBeUndefined();
    expect(after.json.id).not.toBe(before.json.id);
  });

  it('GET /stats serves every counter', async () => {
    const provider = await start({ seed: 99 });
    const stats = await getJson(agent, `${provider.url}/stats`);
    expect(Object.keys(stats).sort()).toEqual(
      [
        'requests',
        'charges',
        'duplicate_charges',
        'users_charged',
        'keyless',
        'replays',
        'conflicts',
        'mismatches',
        'invalid',
        'unauthorized',
        'rejected_429',
        'rejected_503',
        'failed_503',
        'lost',
        'reset_mid_body',
        'outage_503',
        'slow',
        'declined',
        'in_flight',
        'max_in_flight',
        'queued',
        'max_queued',
        'seed',
      ].sort(),
    );
    expect(stats.seed).toBe(99);
  });

  it('answers 404 to unknown paths and 405 to wrong methods', async () => {
    const provider = await start();
    const missing = await request(`${provider.url}/nope`, { dispatcher: agent });
    const wrong = await request(`${provider.url}/charge`, { dispatcher: agent });
    expect(missing.statusCode).toBe(404);
    expect(wrong.statusCode).toBe(405);
    expect(wrong.headers.allow).toBe('POST');
    await Promise.all([missing.body.dump(), wrong.body.dump()]);
  });
});

describe('close()', () => {
  it('lets a request in flight finish before stopping', async () => {
    const provider = await startMockProvider({ port: 0, latencyMs: 200, jitter: 0 });
    const pending = attempt(provider, charge('last'));
    await new Promise((resolve) => setTimeout(resolve, 50));
    await provider.close();
    expect((await pending).status).toBe(200);
    expect(provider.stats().charges).toBe(1);
  });

  it('drops what is left after the grace period', async () => {
    const provider = await startMockProvider({ port: 0, latencyMs: 5_000, jitter: 0 });
    const pending = attempt(provider, charge('never'));
    await new Promise((resolve) => setTimeout(resolve, 50));
    const started = performance.now();
    await provider.close({ graceMs: 100 });
    expect(performance.now() - started).toBeLessThan(4_000);
    expect((await pending).status).toBe(0);
  });

  it('names the port when it is taken', async () => {
    const provider = await start();
    await expect(startMockProvider({ port: provider.port })).rejects.toThrow(
      /already in use.*--port/,
    );
  });
});
