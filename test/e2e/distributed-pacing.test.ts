import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { plainUsers, useCliWorkspace, writeCsvInput } from '../helpers/billing-cycle.js';
import { type CliProcess, runCli } from '../helpers/cli.js';
import { placeFlags, pollUntil, useRedisPlace } from '../helpers/distributed.js';
import { redisAdmin } from '../helpers/redis.js';

// `--concurrency auto` and `--deadline` on the distributed engine, end to end: `run --redis`
// with its own worker and `bulkbill worker` processes on the same queue (real processes, the real
// Redis, a real mock provider with a capacity model). One worker at a time decides the queue's
// global concurrency for all; a decider killed with kill -9 is replaced within seconds.

const ws = useCliWorkspace('bulkbill-e2e-dpacing-', { seed: 17 });
const { place, children } = useRedisPlace();

// biome-ignore lint/suspicious/noExplicitAny: the summary's JSON, read field by field.
function summaryOf(stdout: string): Record<string, any> {
  return JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}');
}

// biome-ignore lint/suspicious/noExplicitAny: the status JSON's pacing, read field by field.
async function pacingNow(): Promise<Record<string, any>> {
  return redisAdmin().hgetall(`${place.prefix}:${place.queue}:pacing`);
}

const metaConcurrency = () =>
  redisAdmin().hget(`${place.prefix}:${place.queue}:meta`, 'concurrency');

function startRun(input: string, url: string, runId: string, ...flags: string[]): CliProcess {
  return children.spawn([
    ...['run', input, ...placeFlags(place), '--run-id', runId, '--json'],
    ...['--endpoint', `${url}/charge`, '--report', ws.report, ...flags],
  ]);
}

function startWorker(url: string): CliProcess {
  return children.spawn([
    'worker',
    ...placeFlags(place),
    ...['--endpoint', `${url}/charge`, '--concurrency', '500', '--lock-duration', '2s'],
  ]);
}

describe('distributed --concurrency auto', () => {
  it("finds the provider's capacity for the whole queue; a decider killed with kill -9 is replaced from its limit", async () => {
    // 500 ms and 100 at once: 200 charges/s, a pace this machine's two cores keep with several
    // billing processes (at 100 ms their own CPU binds, and reads as queueing). 5,000 users: on
    // 3,000 at 400 ms the cold start's fixed cost in refusals came near the bound (3.3% once in
    // four runs), and a capacity estimate read early was 77 once.
    const USERS = 5_000;
    const CAPACITY = 100;
    const mock = await ws.provider({
      latencyMs: 500,
      jitter: 0.05,
      capacity: CAPACITY,
      overload: '503',
    });
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), plainUsers(USERS));
    const workers = [startWorker(mock.url), startWorker(mock.url)];
    const enqueued = await runCli([
      ...['enqueue', input, ...placeFlags(place), '--run-id', 'auto'],
      ...['--concurrency', 'auto'],
    ]);
    expect(enqueued.code, enqueued.stderr).toBe(0);
    expect(enqueued.stderr).toMatch(
      /the queue's workers pace run auto at the concurrency the provider takes/,
    );
    const wait = children.spawn(['status', ...placeFlags(place), '--run-id', 'auto', '--wait']);
    // Once it has found the capacity: who decides, and what the queue holds.
    await pollUntil(
      'the capacity found',
      async () =>
        Number((await pacingNow()).capacity || 0) > 0 && mock.stats().charges > USERS * 0.25
          ? true
          : undefined,
      60_000,
    );
    const first = await pacingNow();
    // From here to the end, the capacity estimate every 250 ms: one read may follow a transient
    // cut (a neighbour's CPU on this shared machine reads as queueing), the run's mind may not.
    const capacities: number[] = [];
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const capacity = Number((await pacingNow()).capacity || 0);
        if (capacity > 0) capacities.push(capacity);
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    })();
    const steadyFrom = { charges: mock.stats().charges, at: performance.now() };
    const status = await runCli(['status', ...placeFlags(place), '--run-id', 'auto']);
    expect(status.stdout).toMatch(
      /queue paced: concurrency auto, limit \d+ \(provider capacity about \d+\).* decided by /,
    );
    const victim = workers.find((worker) => first.decider?.endsWith(`:${worker.child.pid}`));
    expect(victim, `decided by ${first.decider}`).toBeDefined();
    // The queue's global concurrency: the limit, and the jobs between their requests.
    const global = Number(await metaConcurrency());
    expect(global).toBeGreaterThanOrEqual(CAPACITY * 0.5);
    expect(global).toBeLessThanOrEqual(CAPACITY * 3);
    // Billed per second at the steady pace, before the kill: capacity ÷ latency is 200.
    const steadyRate =
      ((mock.stats().charges - steadyFrom.charges) * 1_000) / (performance.now() - steadyFrom.at);
    victim?.child.kill('SIGKILL');
    await victim?.exited;
    const killedAt = performance.now();
    // The other takes the lease once its 5 s end, and goes on from the limit, not from 1.
    await pollUntil(
      'another decider',
      async () => {
        const now = await pacingNow();
        return now.decider !== undefined && now.decider !== first.decider ? true : undefined;
      },
      15_000,
    );
    expect(performance.now() - killedAt).toBeLessThan(8_000);
    const second = await pacingNow();
    expect(Number(second.limit)).toBeGreaterThanOrEqual(CAPACITY * 0.5);
    const code = await wait.exited;
    sampling = false;
    await sampler;
    expect(code, wait.stderr().slice(-2_000)).toBe(0);
    const stats = mock.stats();
    expect(stats).toMatchObject({ charges: USERS, users_charged: USERS, duplicate_charges: 0 });
    capacities.sort((a, b) => a - b);
    const median = capacities[capacities.length >> 1] as number;
    expect(capacities.length).toBeGreaterThan(10);
    expect(median, capacities.join(' ')).toBeGreaterThanOrEqual(CAPACITY * 0.8);
    expect(median, capacities.join(' ')).toBeLessThanOrEqual(CAPACITY * 1.2);
    // Capacity ÷ latency is 200/s; measured here 185–194/s on a quiet machine, 160/s with a
    // neighbour spinning one of the two cores (its CPU reads as queueing and cut the limit to 77
    // for a while). The bound leaves room for the neighbours a CI run has.
    expect(steadyRate).toBeGreaterThanOrEqual(0.75 * (CAPACITY / 0.5));
    // The cold start's overshoot and the probes past the capacity, on the whole queue: few.
    expect(stats.rejected_503 / stats.requests).toBeLessThan(0.03);
    // Ended: the queue's global concurrency is back as it was (none), its pacing gone.
    await pollUntil(
      'the pacing ended',
      async () => ((await metaConcurrency()) === null ? true : undefined),
      10_000,
    );
    expect(await pacingNow()).toEqual({});
  }, 180_000);
});

describe('distributed --deadline', () => {
  it("finishes in time at the deadline's need, not at every worker's most", async () => {
    const USERS = 800;
    const mock = await ws.provider({ latencyMs: 100, jitter: 0.05 });
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), plainUsers(USERS));
    const workers = [startWorker(mock.url)];
    const started = performance.now();
    const run = startRun(input, mock.url, 'deadline', '--deadline', '10s');
    let during: Record<string, string> = {};
    await pollUntil(
      'a deadline planned',
      async () => {
        during = await pacingNow();
        return during.deadline && mock.stats().charges > 100 ? true : undefined;
      },
      30_000,
    );
    const code = await run.exited;
    const wallMs = performance.now() - started;
    for (const worker of workers) worker.child.kill('SIGTERM');
    expect(code, run.stderr().slice(-2_000)).toBe(0);
    expect(wallMs).toBeLessThan(10_000 + 3_000);
    const stats = mock.stats();
    expect(stats).toMatchObject({ charges: USERS, users_charged: USERS, duplicate_charges: 0 });
    const summary = summaryOf(run.stdout());
    expect(summary.deadlineMet).toBe(true);
    const need = JSON.parse(during.deadline ?? '{}').need as number;
    // 800 × 0.1 s over about 9 s: some 9 in flight; the workers could take 1,500 at once.
    expect(need).toBeGreaterThanOrEqual(5);
    expect(need).toBeLessThanOrEqual(30);
    expect(stats.max_in_flight).toBeLessThan(2 * need);
    expect(summary.dispatch.deadline).toBeDefined();
  }, 120_000);
});
