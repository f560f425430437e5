import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { MockProvider } from '../../src/mock-provider/index.js';
import { plainUsers, useCliWorkspace, writeCsvInput } from '../helpers/billing-cycle.js';
import { type CliProcess, runCli } from '../helpers/cli.js';
import { placeFlags, useRedisPlace } from '../helpers/distributed.js';

// The queue's circuit breaker, end to end on the distributed engine: `run --redis` with its own
// worker and two `bulkbill worker` processes on the same queue (real processes, the real Redis, a
// real mock provider), through an outage of the provider mid-run.

const ws = useCliWorkspace('bulkbill-e2e-dbreaker-', { seed: 13 });
const { place, children } = useRedisPlace();

const USERS = 600;
const OUTAGE_MS = 8_000;
// Three processes of 10 in flight each.
const IN_FLIGHT = 30;

// biome-ignore lint/suspicious/noExplicitAny: the summary's JSON, read field by field.
function summaryOf(stdout: string): Record<string, any> {
  return JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}');
}

async function billThroughOutage(
  mock: MockProvider,
  flags: string[] = [],
  during?: (workers: CliProcess[]) => Promise<void>,
) {
  const input = await writeCsvInput(join(ws.dir, 'users.csv'), plainUsers(USERS));
  const common = ['--endpoint', `${mock.url}/charge`, '--concurrency', '10', ...flags];
  const run = children.spawn([
    ...['run', input, ...placeFlags(place), '--run-id', 'outage', '--json'],
    ...['--report', ws.report, '--max-attempts', '3', ...common],
  ]);
  const workers: CliProcess[] = [];
  for (let index = 0; index < 2; index++) {
    workers.push(
      // Not --exit-when-idle: they may start before the run has enqueued anything.
      children.spawn(['worker', ...placeFlags(place), ...common]),
    );
  }
  while (mock.stats().charges < 100) {
    if (run.child.exitCode !== null) break;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  await mock.outage(OUTAGE_MS);
  await during?.(workers);
  const code = await run.exited;
  for (const worker of workers) worker.child.kill('SIGTERM');
  await Promise.all(workers.map((worker) => worker.exited));
  return { code, run, workers, stats: mock.stats() };
}

describe('the circuit breaker on the distributed engine', () => {
  it('fails nobody through an outage, and the provider sees one probe at a time for the whole queue', async () => {
    const mock = await ws.provider({ latencyMs: 50, jitter: 0 });
    let during = '';
    const { code, run, stats, workers } = await billThroughOutage(mock, [], async () => {
      // An operator asks what is going on, 2 s into the outage.
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      const status = await runCli(['status', ...placeFlags(place), '--run-id', 'outage']);
      expect(status.code, status.stderr).toBe(0);
      during = status.stdout;
    });
    expect(during).toMatch(/PROVIDER DOWN: the queue's circuit breaker is (open|half-open)/);
    // The process whose answer opened it said so in its log.
    const logs = [run, ...workers].map((cli) => cli.stderr()).join('\n');
    expect(logs).toMatch(/the queue's circuit breaker opened; every worker holds its jobs/);
    expect(code, run.stderr().slice(-2_000)).toBe(0);
    expect(stats).toMatchObject({ charges: USERS, users_charged: USERS, duplicate_charges: 0 });
    const summary = summaryOf(run.stdout());
    expect(summary.counts).toMatchObject({ charged: USERS, failed: 0, unknown: 0 });
    const breaker = summary.dispatch.breaker;
    expect(breaker.opened).toBeGreaterThanOrEqual(1);
    // Each opening after the first follows a failed probe, and the probes were the queue's, not
    // one per worker: about log2 of the outage over 2 s, not three times that.
    expect(breaker.opened).toBeLessThanOrEqual(breaker.probes + 1);
    expect(breaker.probes).toBeLessThanOrEqual(OUTAGE_MS / 1_000);
    // Before it opened: the 30 in flight and the window's 10; then probes, a few a second at most.
    expect(stats.outage_503).toBeLessThanOrEqual(IN_FLIGHT + 10 + 3 * (OUTAGE_MS / 1_000));
    expect(run.stderr()).toMatch(/PROVIDER DOWN/);
    // The three processes billed side by side once it closed.
    expect(stats.max_in_flight).toBeGreaterThan(10);
  }, 90_000);

  it('without it (--outage-wait 0) the same outage burns every attempt and fails users', async () => {
    const mock = await ws.provider({ latencyMs: 50, jitter: 0 });
    const { code, run, stats } = await billThroughOutage(mock, ['--outage-wait', '0']);
    // Failed users: exit 1, and the provider took far more requests while it was down.
    expect(code, run.stderr().slice(-2_000)).toBe(1);
    expect(stats.duplicate_charges).toBe(0);
    const summary = summaryOf(run.stdout());
    expect(summary.counts.failed).toBeGreaterThan(0);
    expect(summary.dispatch.breaker).toBeUndefined();
    expect(stats.outage_503).toBeGreaterThan(IN_FLIGHT + 10 + 3 * (OUTAGE_MS / 1_000));
  }, 90_000);

  it('a worker killed (kill -9) while the provider is down, perhaps with the probe out: the others carry on, nobody charged twice or failed', async () => {
    const mock = await ws.provider({ latencyMs: 50, jitter: 0 });
    // A probe's lease is the timeout and 5 s: 7 s; a dead worker's jobs come back within 2–4 s.
    const flags = ['--timeout', '2s', '--lock-duration', '2s'];
    const { code, run, stats } = await billThroughOutage(mock, flags, async (workers) => {
      await new Promise((resolve) => setTimeout(resolve, 3_000));
      workers[0]?.child.kill('SIGKILL');
    });
    expect(code, run.stderr().slice(-2_000)).toBe(0);
    expect(stats).toMatchObject({ charges: USERS, users_charged: USERS, duplicate_charges: 0 });
    expect(summaryOf(run.stdout()).counts).toMatchObject({ charged: USERS, failed: 0, unknown: 0 });
    expect(stats.outage_503).toBeLessThanOrEqual(IN_FLIGHT + 10 + 3 * (OUTAGE_MS / 1_000));
  }, 90_000);
});
