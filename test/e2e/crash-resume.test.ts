import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { MockProviderOptions } from '../../src/mock-provider/index.js';
import { mulberry32 } from '../../src/mock-provider/random.js';
import {
  expectedExitStatus,
  expectReportAgreesWithProvider,
  type InputRow,
  plainUsers,
  providerStats,
  runStateSum,
  statusJson,
  useCliWorkspace,
  waitForNewRun,
  waitForStderr,
  writeCsvInput,
} from '../helpers/billing-cycle.js';
import { runCli, spawnCli } from '../helpers/cli.js';

// `kill -9` and Ctrl-C on the real CLI mid-run, then the same command again: it must find the
// unfinished run by the input and finish it with the same keys, charging nobody twice.

const ws = useCliWorkspace('bulkbill-e2e-crash-');
const provider = (options?: MockProviderOptions) => ws.provider(options);

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const USERS = 2_000;

/** A cycle of USERS users, a few with ids that need a hashed key. */
function crashInput(): InputRow[] {
  const rows = plainUsers(USERS - 4);
  rows.push(
    { userId: 'a:b', amount: 1, currency: 'EUR' },
    { userId: 'with space, "quotes"', amount: 2, currency: 'EUR' },
    { userId: 'zoë', amount: 3, currency: 'EUR' },
    { userId: '=formula', amount: 4, currency: 'EUR' },
  );
  return rows;
}

// One kill per seed, each in its own slice of 200 ms–2 s after the run is announced (after the
// import, while charging), so the four kills spread over the run.
const KILLS = [11, 23, 37, 41].map((seed, index) => ({
  seed,
  delayMs: Math.round(200 + index * 450 + mulberry32(seed)() * 450),
}));

/**
 * Starts `args`, kills it (kill -9) `delayMs` after the run is announced, while charging, and
 * checks what the kill left; returns the run's id.
 */
async function killMidRun(args: string[], providerUrl: string, delayMs: number): Promise<string> {
  const first = spawnCli(args);
  const runId = await waitForNewRun(first);
  await sleep(delayMs);
  const atKill = await providerStats(ws.agent, providerUrl);
  first.child.kill('SIGKILL');
  // 137 = killed: the run had not ended on its own before the kill.
  expect(await first.exited, first.stderr()).toBe(137);
  expect(atKill.requests).toBeGreaterThan(0);
  expect(atKill.charges).toBeLessThan(USERS);

  // The ledger a kill -9 left behind opens, adds up, and claims no charge the provider lacks.
  const left = await statusJson(ws.ledger, runId);
  expect(runStateSum(left)).toBe(USERS);
  expect(left.finishedAt).toBeUndefined();
  expect(left.counts.pending).toBeGreaterThan(0);
  expect(left.counts.charged).toBeLessThanOrEqual(
    (await providerStats(ws.agent, providerUrl)).charges,
  );
  return runId;
}

/**
 * The same command again: it resumes the run, and with ten attempts against 2% failures and 1%
 * lost answers, and the attempts the kill cut off settled by replays, everyone ends charged
 * once, the report agreeing with the provider, exit 0.
 */
async function resumeToAllCharged(
  args: string[],
  providerUrl: string,
  rows: readonly InputRow[],
  runId: string,
) {
  const second = await runCli(args);
  expect(second.stderr).toContain(`resuming unfinished run ${runId}`);
  const byUser = await expectReportAgreesWithProvider({
    agent: ws.agent,
    providerUrl,
    reportPath: ws.report,
    userIds: rows.map((row) => row.userId),
  });
  expect([...byUser.values()].every((row) => row.status === 'charged')).toBe(true);
  expect(second.code, second.stderr.slice(-2_000)).toBe(0);
  return { second, byUser };
}

describe('bulkbill run survives kill -9 and Ctrl-C', () => {
  it.each(KILLS)(
    'kill -9 $delayMs ms into a run (seed $seed), then the same command finishes it exactly once',
    async ({ seed, delayMs }) => {
      const rows = crashInput();
      const input = await writeCsvInput(join(ws.dir, 'cycle.csv'), rows);
      const mock = await provider({ latencyMs: 50, failRate: 0.02, lostRate: 0.01, seed });
      const args = ['run', input, '--endpoint', `${mock.url}/charge`, '--ledger', ws.ledger];
      args.push('--report', ws.report, '--concurrency', '40', '--max-attempts', '10');

      const runId = await killMidRun(args, mock.url, delayMs);
      const { byUser } = await resumeToAllCharged(args, mock.url, rows, runId);
      expect(expectedExitStatus(byUser.values())).toBe(0);
    },
    60_000,
  );

  it('Ctrl-C stops gracefully (exit 130, charges left pending), and the same command completes', async () => {
    const rows = crashInput();
    const input = await writeCsvInput(join(ws.dir, 'cycle.csv'), rows);
    const mock = await provider({ latencyMs: 50, seed: 5 });
    const args = ['run', input, '--endpoint', `${mock.url}/charge`, '--ledger', ws.ledger];
    args.push('--report', ws.report, '--concurrency', '40');

    const first = spawnCli(args);
    const runId = await waitForNewRun(first);
    await sleep(500);
    first.child.kill('SIGINT');
    expect(await first.exited, first.stderr()).toBe(130);
    expect(first.stderr()).toMatch(/stopping/);
    expect(first.stdout()).toContain(`bulkbill run ${runId}: interrupted`);

    const stopped = await statusJson(ws.ledger, runId);
    expect(runStateSum(stopped)).toBe(USERS);
    expect(stopped.finishedAt).toBeUndefined();
    expect(stopped.counts.pending).toBeGreaterThan(0);
    expect(stopped.counts.charged).toBeGreaterThan(0);
    // A graceful stop waits for the requests in flight and records their answers: the ledger
    // knows every charge the provider made, so the resume needs no replay to learn of them.
    const stats = await providerStats(ws.agent, mock.url);
    expect(stats.in_flight).toBe(0);
    expect(stopped.counts.charged).toBe(stats.charges);

    const second = await runCli(args);
    expect(second.code, second.stderr).toBe(0);
    expect(second.stderr).toContain(`resuming unfinished run ${runId}`);
    const byUser = await expectReportAgreesWithProvider({
      agent: ws.agent,
      providerUrl: mock.url,
      reportPath: ws.report,
      userIds: rows.map((row) => row.userId),
    });
    expect([...byUser.values()].every((row) => row.status === 'charged')).toBe(true);
    expect((await providerStats(ws.agent, mock.url)).replays).toBe(0);
  }, 60_000);

  it('a second signal quits at once; the charges it left unanswered are settled by replays on resume', async () => {
    const rows = plainUsers(200);
    const input = await writeCsvInput(join(ws.dir, 'cycle.csv'), rows);
    // Slow answers, so that requests are surely in flight when the second signal lands.
    const mock = await provider({ latencyMs: 600, jitter: 0, seed: 6 });
    const args = ['run', input, '--endpoint', `${mock.url}/charge`, '--ledger', ws.ledger];
    args.push('--report', ws.report, '--concurrency', '50');

    const first = spawnCli(args);
    const runId = await waitForNewRun(first);
    await sleep(800); // the first 50 answered, the next 50 in flight
    first.child.kill('SIGTERM');
    await waitForStderr(first, /stopping/);
    first.child.kill('SIGINT');
    expect(await first.exited, first.stderr()).toBe(130);
    expect(first.stderr()).toMatch(/quitting at once/);

    // The provider finishes what was in flight: charges the quit process never heard of.
    for (let waited = 0; (await providerStats(ws.agent, mock.url)).in_flight > 0; waited += 50) {
      if (waited > 5_000) throw new Error('the provider never finished the requests in flight');
      await sleep(50);
    }
    const left = await statusJson(ws.ledger, runId);
    expect(runStateSum(left)).toBe(rows.length);
    expect(left.counts.pending).toBeGreaterThan(0);
    const unheardOf = (await providerStats(ws.agent, mock.url)).charges - left.counts.charged;
    expect(unheardOf).toBeGreaterThan(0);

    const second = await runCli(args);
    expect(second.code, second.stderr).toBe(0);
    expect(second.stderr).toContain(`resuming unfinished run ${runId}`);
    await expectReportAgreesWithProvider({
      agent: ws.agent,
      providerUrl: mock.url,
      reportPath: ws.report,
      userIds: rows.map((row) => row.userId),
    });
    expect((await providerStats(ws.agent, mock.url)).replays).toBeGreaterThanOrEqual(unheardOf);
  }, 60_000);

  // The paced modes: the limit controller and the deadline's plan start again in the resumed
  // process (nothing of them is kept), and must not change what a resume promises.
  it.each([
    {
      mode: '--concurrency auto against a capacity of 40 that refuses the excess',
      flags: () => ['--concurrency', 'auto'],
    },
    {
      // A time, not a duration: the resumed run keeps the deadline of the first.
      mode: '--deadline at a time, 12 s after the start',
      flags: () => ['--deadline', new Date(Date.now() + 12_000).toISOString()],
    },
  ])(
    'kill -9 with $mode, then the same command finishes it exactly once',
    async ({ flags }) => {
      const rows = crashInput();
      const input = await writeCsvInput(join(ws.dir, 'cycle.csv'), rows);
      const mock = await provider({
        latencyMs: 50,
        failRate: 0.02,
        lostRate: 0.01,
        capacity: 40,
        overload: '503',
        seed: 59,
      });
      const args = ['run', input, '--endpoint', `${mock.url}/charge`, '--ledger', ws.ledger];
      args.push('--report', ws.report, '--max-attempts', '10', '--json', ...flags());

      const runId = await killMidRun(args, mock.url, 800);
      // Exit 0: everyone charged, and a deadline met (3 would say it ended late).
      const { second } = await resumeToAllCharged(args, mock.url, rows, runId);
      const summary = JSON.parse(second.stdout.trim().split('\n').at(-1) ?? '{}');
      expect(summary.counts.charged).toBe(USERS);
    },
    60_000,
  );
});
