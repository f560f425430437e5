import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { MockProvider } from '../../src/mock-provider/index.js';
import {
  expectedExitStatus,
  expectReportAgreesWithProvider,
  type InputRow,
  plainUsers,
  readReport,
  TERMINAL_STATES,
  useCliWorkspace,
  waitForStderr,
  writeCsvInput,
} from '../helpers/billing-cycle.js';
import { type CliProcess, runCli } from '../helpers/cli.js';
import {
  countsSum,
  dumpKeys,
  placeFlags,
  pollUntil,
  redisStatus,
  useRedisPlace,
  workerName,
} from '../helpers/distributed.js';
import { keysUnder, redisAdmin } from '../helpers/redis.js';

// The distributed engine as an operator runs it: `bulkbill enqueue`, then `bulkbill worker`
// processes (real processes, the real Redis, a real mock provider), followed with `status`.

const ws = useCliWorkspace('bulkbill-e2e-workers-');
const { place, queue, children } = useRedisPlace();

/** `bulkbill enqueue <input>` on this test's prefix and queue; returns the run id it printed. */
let cycles = 0;
async function enqueue(input: string): Promise<string> {
  // The machine's Redis keeps nothing on disk: a run on it must be named.
  const result = await runCli([
    'enqueue',
    input,
    ...placeFlags(place),
    '--run-id',
    `cycle-${++cycles}`,
  ]);
  expect(result.code, result.stderr).toBe(0);
  const runId = result.stdout.trim();
  expect(result.stderr).toContain(`new run ${runId}`);
  return runId;
}

function spawnWorker(mock: MockProvider, ...flags: string[]): CliProcess {
  return children.spawn([
    'worker',
    ...placeFlags(place),
    '--endpoint',
    `${mock.url}/charge`,
    ...flags,
  ]);
}

/** `bulkbill report --redis` into the workspace's report path. */
async function writeRedisReport(runId: string): Promise<void> {
  const result = await runCli([
    'report',
    '--redis',
    place.url,
    '--prefix',
    place.prefix,
    '--run-id',
    runId,
    '--out',
    ws.report,
  ]);
  expect(result.code, result.stderr).toBe(0);
}

/** The pino lines a worker wrote on stderr, parsed. */
function logLines(cli: CliProcess): Array<Record<string, unknown>> {
  return cli
    .stderr()
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

describe('bulkbill worker (distributed engine, end to end)', () => {
  it('three workers through a fault mix, one killed -9 mid-run: every user ends once, the report agrees with the provider', async () => {
    const declined = Array.from({ length: 30 }, (_, index) => `dec-${index}_x`);
    const rows: InputRow[] = [
      ...plainUsers(1_465),
      ...declined.map((userId, index) => ({ userId, amount: 300 + index, currency: 'EUR' })),
      { userId: 'a:b', amount: 7, currency: 'EUR' },
      { userId: '12345', amount: 8, currency: 'USD' },
      { userId: 'with space, "quotes"', amount: 9, currency: 'USD' },
      { userId: 'zoë', amount: 10, currency: 'USD' },
      { userId: '=formula', amount: 11, currency: 'USD' },
    ];
    const userIds = rows.map((row) => row.userId);
    const input = await writeCsvInput(join(ws.dir, 'cycle.csv'), rows);
    const mock = await ws.provider({
      latencyMs: 50,
      jitter: 0,
      failRate: 0.02,
      lostRate: 0.005,
      declineSuffix: '_x',
      seed: 17,
    });

    const runId = await enqueue(input);
    // Follows the run from the start; it must end with the status the final counts imply.
    const waiter = children.spawn(['status', ...placeFlags(place), '--run-id', runId, '--wait']);
    const flags = ['--exit-when-idle', '--lock-duration', '2s', '--concurrency', '20'];
    const workers = [spawnWorker(mock, ...flags), spawnWorker(mock, ...flags)];
    const victim = spawnWorker(mock, ...flags);
    workers.push(victim);

    // Once some charges have ended and the victim has jobs in flight, kill it without warning.
    const jobs = queue();
    const inFlight = await pollUntil('the victim billing after 150 charges', async () => {
      if (mock.stats().charges < 150) return undefined;
      const active = await jobs.getJobs(['active']);
      const its = active.filter((job) => job.processedBy === workerName(victim));
      return its.length > 0 ? its.map((job) => String(job.data.u)) : undefined;
    });
    victim.child.kill('SIGKILL');
    const atKill = mock.stats();
    expect(await victim.exited, victim.stderr()).toBe(137);
    expect(atKill.charges).toBeLessThan(rows.length);

    // The two others take its jobs over once their locks expire, and stop when nothing is left.
    const [first, second] = workers;
    expect(await first?.exited, first?.stderr()).toBe(0);
    expect(await second?.exited, second?.stderr()).toBe(0);
    for (const worker of [first, second]) {
      const ended = logLines(worker as CliProcess).find((line) => line.msg === 'worker ended');
      expect(ended?.reason, worker?.stderr()).toBe('idle');
    }

    const status = await redisStatus(place, runId);
    expect(status.total).toBe(rows.length);
    expect(countsSum(status.counts)).toBe(rows.length);
    expect(status.counts.pending).toBe(0);
    expect(status.finishedAt).toEqual(expect.any(String));
    expect(status.queue).toEqual({ waiting: 0, active: 0, delayed: 0 });

    await writeRedisReport(runId);
    const byUser = await expectReportAgreesWithProvider({
      agent: ws.agent,
      providerUrl: mock.url,
      reportPath: ws.report,
      userIds,
    });
    const tally: Record<string, number> = {};
    for (const row of byUser.values()) tally[row.status] = (tally[row.status] ?? 0) + 1;
    for (const state of TERMINAL_STATES)
      expect(status.counts[state], state).toBe(tally[state] ?? 0);
    const stats = mock.stats();
    expect(stats.charges).toBe(status.counts.charged);
    expect(stats.duplicate_charges).toBe(0);
    expect(stats.keyless).toBe(0);
    expect(stats.mismatches).toBe(0);
    // The seeded faults were met (so retries and replays were exercised), and declines stuck.
    expect(stats.failed_503).toBeGreaterThan(0);
    expect(stats.lost).toBeGreaterThan(0);
    for (const userId of declined) expect(byUser.get(userId)?.status, userId).toBe('declined');
    // What the dead worker had in flight was finished by the others, once.
    for (const userId of inFlight) {
      expect(['charged', 'declined'], userId).toContain(byUser.get(userId)?.status);
      expect(mock.chargesOf(userId).length, userId).toBeLessThanOrEqual(1);
    }

    expect(await waiter.exited, waiter.stderr()).toBe(expectedExitStatus(byUser.values()));
    const again = await runCli(['status', ...placeFlags(place), '--run-id', runId, '--wait']);
    expect(again.code, again.stderr).toBe(expectedExitStatus(byUser.values()));
  }, 60_000);

  it("--rate is the queue's: a worker without it and one with a looser one keep the stricter rate, no 429", async () => {
    const RATE = 150;
    const rows = plainUsers(1_200);
    const input = await writeCsvInput(join(ws.dir, 'rate.csv'), rows);
    // The provider refills RATE a second into a bucket of 2 × RATE: BullMQ's limiter lets RATE
    // jobs start per 1 s window, so up to 2 × RATE can start within one second across a window's
    // edge (a loaded machine clumps them there). A worker pacing itself at the looser 2 × RATE
    // would still run the bucket dry within about 2 s of the 8 the run takes, and meet 429s.
    const mock = await ws.provider({
      latencyMs: 20,
      jitter: 0,
      rate: RATE,
      burst: 2 * RATE,
      seed: 3,
    });
    const runId = await enqueue(input);
    const common = ['--exit-when-idle', '--concurrency', '20'];
    const strict = spawnWorker(mock, ...common, '--rate', String(RATE));
    await waitForStderr(strict, /worker started/);
    // Started beside it: one with no --rate, one with a looser one. Both keep the queue's.
    const flagless = spawnWorker(mock, ...common);
    const loose = spawnWorker(mock, ...common, '--rate', String(RATE * 2));
    const workers = [strict, flagless, loose];
    const codes = await Promise.all(workers.map((worker) => worker.exited));
    expect(codes, workers.map((worker) => worker.stderr()).join('\n')).toEqual([0, 0, 0]);
    expect(loose.stderr()).toMatch(
      /the queue keeps 150\/s, stricter than this worker's --rate 300\/s: 150\/s holds for every worker/,
    );
    for (const worker of workers) {
      const started = logLines(worker).find((line) => line.msg === 'worker started');
      expect(started?.rate).toBe(RATE);
    }

    const stats = mock.stats();
    expect(stats.rejected_429).toBe(0);
    expect(stats).toMatchObject({ charges: rows.length, duplicate_charges: 0 });
    const status = await redisStatus(place, runId);
    expect(status.counts).toMatchObject({ charged: rows.length, pending: 0 });
    // Several workers billed at once, so the limit was shared, not held by one worker alone.
    const busy = workers.filter((worker) => {
      const ended = logLines(worker).find((line) => line.msg === 'worker ended');
      return Number(ended?.charged ?? 0) > 0;
    });
    expect(busy.length).toBeGreaterThanOrEqual(2);
  }, 60_000);

  it('a stalled worker resumes after another took its job over and charged it: its stale "unknown" loses', async () => {
    const input = await writeCsvInput(join(ws.dir, 'stale.csv'), [
      { userId: 'stale-1', amount: 500, currency: 'USD' },
    ]);
    // Every first request is charged at once and its answer held back for a minute: the stalled
    // worker's request times out, while a later request with the same key is a replay, at once.
    const mock = await ws.provider({
      latencyMs: 20,
      jitter: 0,
      slowRate: 1,
      slowMs: 60_000,
      shutdownGraceMs: 0,
      seed: 5,
    });
    const runId = await enqueue(input);
    // One attempt and a 3 s deadline: when its request times out, this worker ends the charge
    // `unknown` (it may have charged) — a terminal state it will write after the takeover.
    const stalled = spawnWorker(
      mock,
      '--exit-when-idle',
      '--lock-duration',
      '1s',
      '--max-attempts',
      '1',
      '--timeout',
      '3s',
    );
    await pollUntil('the first request at the provider', async () =>
      mock.stats().charges > 0 ? true : undefined,
    );
    const stoppedAt = Date.now();
    // Stalled as by a long GC pause, a frozen VM or a network partition: its lock is not renewed.
    stalled.child.kill('SIGSTOP');

    // Another worker finds the job stalled, takes it over, and is answered with the replay.
    const taker = spawnWorker(mock, '--exit-when-idle', '--lock-duration', '1s');
    expect(await taker.exited, taker.stderr()).toBe(0);
    expect((await redisStatus(place, runId)).counts).toMatchObject({ charged: 1, pending: 0 });
    const ended = logLines(taker).find((line) => line.msg === 'worker ended');
    expect(ended).toMatchObject({ charged: 1 });

    // Its deadline long past, the stalled worker resumes: its request times out at once, and it
    // ends the charge unknown, which the ledger must refuse over the charged one.
    await new Promise((resolve) =>
      setTimeout(resolve, Math.max(0, stoppedAt + 3_500 - Date.now())),
    );
    stalled.child.kill('SIGCONT');
    await stalled.exited;
    const its = logLines(stalled).find((line) => line.msg === 'worker ended');
    expect(its, stalled.stderr()).toMatchObject({ unknown: 1, attempts: 1 });

    const status = await redisStatus(place, runId);
    expect(status.counts).toMatchObject({ charged: 1, unknown: 0, pending: 0 });
    expect(status.finishedAt).toEqual(expect.any(String));
    await writeRedisReport(runId);
    const [row] = await readReport(ws.report);
    expect(row).toMatchObject({ user_id: 'stale-1', status: 'charged' });
    expect(row?.charge_id).toBe(mock.chargesOf('stale-1')[0]);
    expect(mock.stats()).toMatchObject({ charges: 1, duplicate_charges: 0, replays: 1 });
  }, 60_000);

  it('SIGTERM mid-run: the worker finishes the jobs in flight, records them and exits 0', async () => {
    const rows = plainUsers(300);
    const input = await writeCsvInput(join(ws.dir, 'term.csv'), rows);
    const mock = await ws.provider({ latencyMs: 300, jitter: 0, seed: 8 });
    const runId = await enqueue(input);
    const worker = spawnWorker(mock, '--concurrency', '20', '--lock-duration', '2s');
    await waitForStderr(worker, /worker started/);

    const jobs = queue();
    const inFlight = await pollUntil('the worker billing after 20 charges', async () => {
      if (mock.stats().charges < 20) return undefined;
      const active = await jobs.getJobs(['active']);
      const its = active.filter((job) => job.processedBy === workerName(worker));
      return its.length > 0 ? its.map((job) => String(job.data.u)) : undefined;
    });
    worker.child.kill('SIGTERM');
    expect(await worker.exited, worker.stderr()).toBe(0);
    expect(worker.stderr()).toMatch(/stopping: no new jobs/);
    const ended = logLines(worker).find((line) => line.msg === 'worker ended');
    expect(ended?.reason).toBe('closed');

    // Nothing is left active (no job waits for a lock to expire); what was in flight is charged.
    expect((await jobs.getJobCounts('active')).active).toBe(0);
    const stats = mock.stats();
    expect(stats.in_flight).toBe(0);
    const status = await redisStatus(place, runId);
    expect(status.queue.active).toBe(0);
    expect(status.counts.pending).toBeGreaterThan(0);
    expect(status.queue.waiting + status.queue.delayed).toBe(status.counts.pending);
    // The ledger knows every charge the provider made: no answer was lost in the stop.
    expect(status.counts.charged).toBe(stats.charges);
    await writeRedisReport(runId);
    const reported = new Map((await readReport(ws.report)).map((row) => [row.user_id, row]));
    expect(inFlight.length).toBeGreaterThan(0);
    for (const userId of inFlight) expect(reported.get(userId)?.status, userId).toBe('charged');

    // Another worker takes the rest; the run ends with everyone charged once.
    const finisher = spawnWorker(mock, '--concurrency', '50', '--exit-when-idle');
    expect(await finisher.exited, finisher.stderr()).toBe(0);
    await writeRedisReport(runId);
    const byUser = await expectReportAgreesWithProvider({
      agent: ws.agent,
      providerUrl: mock.url,
      reportPath: ws.report,
      userIds: rows.map((row) => row.userId),
    });
    expect([...byUser.values()].every((row) => row.status === 'charged')).toBe(true);
  }, 60_000);

  it('a wrong token (401): the worker exits 2, status --wait exits 2, every charge pending, the token nowhere in Redis', async () => {
    const wrongToken = 'sk_test_wrong_7c1e90ab44';
    const rightToken = 'sk_test_right_2d8f63c5b1';
    const rows = plainUsers(40);
    const input = await writeCsvInput(join(ws.dir, 'auth.csv'), rows);
    const mock = await ws.provider({ apiKey: rightToken, latencyMs: 5 });
    const runId = await enqueue(input);

    const worker = children.spawn(
      [
        'worker',
        ...placeFlags(place),
        '--endpoint',
        `${mock.url}/charge`,
        '--header',
        'Authorization: Bearer ${BILLING_TOKEN}',
        '--exit-when-idle',
      ],
      { env: { BILLING_TOKEN: wrongToken } },
    );
    expect(await worker.exited, worker.stderr()).toBe(2);
    expect(worker.stderr()).toMatch(/401/);
    expect(worker.stdout() + worker.stderr()).not.toContain(wrongToken);
    const ended = logLines(worker).find((line) => line.msg === 'worker ended');
    expect(ended?.reason).toBe('stopped');

    const waited = await runCli(['status', ...placeFlags(place), '--run-id', runId, '--wait']);
    expect(waited.code, waited.stderr).toBe(2);
    expect(waited.stderr).toMatch(/stopped with charges left pending: .*401/);

    const status = await redisStatus(place, runId);
    expect(status.counts).toMatchObject({
      pending: rows.length,
      charged: 0,
      declined: 0,
      failed: 0,
      unknown: 0,
    });
    expect(status.stoppedBecause).toMatch(/401/);
    expect(status.workers).toEqual([]);
    const stats = mock.stats();
    expect(stats.charges).toBe(0);
    expect(stats.unauthorized).toBeGreaterThan(0);

    // The run's jobs and ledger are still there, and nothing in them holds the secret.
    const keys = await keysUnder(place.prefix);
    expect(keys.length).toBeGreaterThan(0);
    const dump = await dumpKeys(redisAdmin(), keys);
    for (const [key, value] of dump) {
      for (const secret of [wrongToken, rightToken, 'Bearer']) {
        expect(key.includes(secret), key).toBe(false);
        expect(value.includes(secret), `${key} holds ${secret}`).toBe(false);
      }
    }
  }, 30_000);
});
