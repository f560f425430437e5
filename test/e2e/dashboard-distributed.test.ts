import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { request } from 'undici';
import { describe, expect, it } from 'vitest';
import { drawsFor } from '../../src/mock-provider/random.js';
import type {
  ProblemPage,
  RunView,
  SeriesPage,
  SeriesPoint,
  UserView,
} from '../../src/observe/dashboard/api.js';
import {
  plainUsers,
  useCliWorkspace,
  waitForStderr,
  writeCsvInput,
} from '../helpers/billing-cycle.js';
import { type CliProcess, runCli } from '../helpers/cli.js';
import {
  countsSum,
  placeFlags,
  pollUntil,
  redisStatus,
  useRedisPlace,
} from '../helpers/distributed.js';
import { metricValue, type PromSample, parsePrometheus, sumOf } from '../helpers/prometheus.js';

// The distributed engine watched as an operator watches it: two `bulkbill worker` processes
// with --metrics-port (one logging to --log-file), and `bulkbill dashboard --redis` reading the
// same run from the Redis ledger: live progress, charts summed over both workers, problems,
// one user's story, Prometheus text, and a JSON log without a line per charge at info.

const ws = useCliWorkspace('bulkbill-e2e-dashboard-');
const { place, children } = useRedisPlace();

const USERS = 1_000;
const CONCURRENCY = 20;
const SEED = 41;
const FAIL_RATE = 0.04;
const DECLINE_RATE = 0.05;
/** The worker's default --max-attempts. */
const MAX_ATTEMPTS = 5;

type LogLine = Record<string, unknown> & { level: number; msg: string };

/** JSON log lines (pino) in a text: stderr or a --log-file. */
function logLinesOf(text: string): LogLine[] {
  return text
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as LogLine);
}

/**
 * What the seeded mock does to a user with these rates (and no other fault): the requests it
 * answers 503 first, then whether the one it processes is declined.
 */
function fateOf(userId: string): { failsFirst: number; declined: boolean } {
  let attempt = 0;
  while (attempt < MAX_ATTEMPTS && drawsFor(SEED, userId, attempt).fail < FAIL_RATE) attempt++;
  return {
    failsFirst: attempt,
    declined: attempt < MAX_ATTEMPTS && drawsFor(SEED, userId, attempt).decline < DECLINE_RATE,
  };
}

async function get(url: string): Promise<{ status: number; type: string; text: string }> {
  const response = await request(url, { dispatcher: ws.agent });
  const text = await response.body.text();
  return {
    status: response.statusCode,
    type: String(response.headers['content-type'] ?? ''),
    text,
  };
}

/** Reads a worker's (or the dashboard's) /metrics strictly; every name is bulkbill_*, no user id in a label. */
async function scrape(url: string, userIds: ReadonlySet<string>): Promise<PromSample[]> {
  const answer = await get(url);
  expect(answer.status, answer.text).toBe(200);
  expect(answer.type).toMatch(/^text\/plain/);
  const samples = parsePrometheus(answer.text);
  expect(samples.length).toBeGreaterThan(0);
  expect(samples.filter((sample) => !sample.name.startsWith('bulkbill_'))).toEqual([]);
  const leaks = samples.filter((sample) =>
    Object.values(sample.labels).some((value) => userIds.has(value)),
  );
  expect(leaks).toEqual([]);
  return samples;
}

/** The charges a worker's metrics say it ended, by state. */
function endedOf(samples: readonly PromSample[]): Record<string, number> {
  const ended: Record<string, number> = {};
  for (const state of ['charged', 'declined', 'failed', 'unknown']) {
    ended[state] = metricValue(samples, 'bulkbill_charges_ended_total', { state });
  }
  return ended;
}

describe('bulkbill dashboard and worker metrics and logs (distributed engine, end to end)', () => {
  it('two workers bill a run with retries and declines: the dashboard follows it live and after, /metrics and the JSON log agree with the ledger', async () => {
    const rows = plainUsers(USERS, 'dash');
    const userIds = new Set(rows.map((row) => row.userId));
    const input = await writeCsvInput(join(ws.dir, 'cycle.csv'), rows);
    // What the seed holds for each user: some declined, some answered 503 first (so retried).
    const expectedDeclined = rows
      .map((row) => row.userId)
      .filter((userId) => fateOf(userId).declined)
      .sort();
    const retriedThenCharged = rows
      .map((row) => row.userId)
      .find((userId) => {
        const fate = fateOf(userId);
        return fate.failsFirst === 1 && !fate.declined;
      });
    expect(expectedDeclined.length).toBeGreaterThan(10);
    expect(retriedThenCharged).toBeDefined();
    expect(rows.every((row) => fateOf(row.userId).failsFirst < MAX_ATTEMPTS)).toBe(true);

    const mock = await ws.provider({
      latencyMs: 250,
      jitter: 0.2,
      failRate: FAIL_RATE,
      declineRate: DECLINE_RATE,
      seed: SEED,
    });

    // The workers wait on the empty queue first, so that both bill from the first job on.
    const logFile = join(ws.dir, 'worker-b.log');
    const workerFlags = [
      'worker',
      ...placeFlags(place),
      '--endpoint',
      `${mock.url}/charge`,
      '--concurrency',
      String(CONCURRENCY),
      '--metrics-port',
      '0',
    ];
    const workerA = children.spawn(workerFlags);
    const workerB = children.spawn([...workerFlags, '--log-file', logFile]);
    const logOf = async (worker: CliProcess): Promise<LogLine[]> =>
      worker === workerA
        ? logLinesOf(workerA.stderr())
        : logLinesOf(await readFile(logFile, 'utf8').catch(() => ''));
    const metricsUrlOf = async (worker: CliProcess): Promise<string> => {
      const found = await pollUntil(
        'a worker saying where its metrics are',
        async () => {
          if (worker.child.exitCode !== null) {
            throw new Error(`the worker exited: ${worker.stderr()}`);
          }
          const lines = await logOf(worker);
          const served = lines.find((line) => line.msg === 'metrics served');
          const started = lines.some((line) => line.msg === 'worker started');
          return started && typeof served?.url === 'string' ? served.url : undefined;
        },
        20_000,
        50,
      );
      expect(found).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
      expect(found).not.toMatch(/:0\/metrics$/);
      return found;
    };
    const [metricsA, metricsB] = await Promise.all([metricsUrlOf(workerA), metricsUrlOf(workerB)]);
    expect(metricsA).not.toBe(metricsB);
    // --log-file takes the JSON log off stderr.
    expect(logLinesOf(workerB.stderr())).toEqual([]);

    const runId = 'dash-cycle-1';
    const enqueued = await runCli(['enqueue', input, ...placeFlags(place), '--run-id', runId]);
    expect(enqueued.code, enqueued.stderr).toBe(0);
    expect(enqueued.stdout.trim()).toBe(runId);

    const dashboard = children.spawn([
      'dashboard',
      ...placeFlags(place),
      '--port',
      '0',
      '--run-id',
      runId,
    ]);
    const [, dashboardUrl = ''] = await waitForStderr(
      dashboard,
      /bulkbill: dashboard of redis:\/\/127\.0\.0\.1:6379 on (http:\/\/127\.0\.0\.1:\d+\/)[;\s]/,
    );
    const api = async <T>(path: string): Promise<T> => {
      const answer = await get(new URL(path, dashboardUrl).href);
      expect(answer.status, `${path}: ${answer.text}`).toBe(200);
      return JSON.parse(answer.text) as T;
    };
    const runPath = `/api/runs/${encodeURIComponent(runId)}`;

    // While the workers bill: the run is live and part done.
    const midRun = await pollUntil(
      'the dashboard showing the run live and part done',
      async () => {
        const view = await api<RunView>(runPath);
        return view.live && view.done > 0 && view.done < USERS ? view : undefined;
      },
      20_000,
      100,
    );
    expect(midRun.total).toBe(USERS);
    expect(countsSum(midRun.counts)).toBe(USERS);
    expect(midRun.done).toBe(USERS - midRun.counts.pending);
    expect(midRun.finishedAt).toBeUndefined();
    // Both workers' metrics, while they bill.
    const [midA, midB] = await Promise.all([scrape(metricsA, userIds), scrape(metricsB, userIds)]);
    expect(
      sumOf(midA, 'bulkbill_attempts_total') + sumOf(midB, 'bulkbill_attempts_total'),
    ).toBeGreaterThan(0);
    // The charts: a settled second with attempts and requests in flight.
    await pollUntil(
      'a chart point with attempts and requests in flight',
      async () => {
        const page = await api<SeriesPage>(`${runPath}/series`);
        return page.points.some((point) => point.attemptsPerSecond > 0 && point.inFlight > 0)
          ? true
          : undefined;
      },
      20_000,
      200,
    );

    // The run's every charge ends; the workers, still up, are scraped once more.
    const ended = await pollUntil(
      'every charge ended',
      async () => {
        const view = await api<RunView>(runPath);
        return view.counts.pending === 0 ? view : undefined;
      },
      30_000,
      100,
    );
    const endedInLedger = USERS - ended.counts.invalid;
    const finalScrape = async () =>
      Promise.all([scrape(metricsA, userIds), scrape(metricsB, userIds)]);
    // A charge's attempt is told to the metrics right after the ledger has it: allow a moment
    // (past it, the last scrape stands and the checks below say what is missing).
    const [finalA, finalB] = await pollUntil(
      "the workers' metrics counting every charge the ledger ended",
      async () => {
        const both = await finalScrape();
        const total = both.reduce(
          (sum, samples) => sum + sumOf(samples, 'bulkbill_charges_ended_total'),
          0,
        );
        return total >= endedInLedger ? both : undefined;
      },
      3_000,
      100,
    ).catch(async () => finalScrape());

    const stoppedAt = Date.now();
    workerA.child.kill('SIGTERM');
    workerB.child.kill('SIGTERM');
    const [codeA, codeB] = await Promise.all([workerA.exited, workerB.exited]);
    expect(codeA, workerA.stderr()).toBe(0);
    expect(codeB, workerB.stderr()).toBe(0);

    // The ledger, as `status` reads it.
    const status = await redisStatus(place, runId);
    expect(status.total).toBe(USERS);
    expect(countsSum(status.counts)).toBe(USERS);
    expect(status.counts.pending).toBe(0);
    expect(status.counts.invalid).toBe(0);
    expect(status.counts.declined).toBe(expectedDeclined.length);
    expect(status.counts.charged).toBe(USERS - expectedDeclined.length);
    const stats = mock.stats();
    expect(stats).toMatchObject({
      charges: status.counts.charged,
      declined: status.counts.declined,
      duplicate_charges: 0,
    });
    expect(stats.failed_503).toBeGreaterThan(0);

    // Metrics: both workers' ended charges add up to the ledger's, state by state.
    const endedA = endedOf(finalA);
    const endedB = endedOf(finalB);
    for (const state of ['charged', 'declined', 'failed', 'unknown'] as const) {
      expect((endedA[state] ?? 0) + (endedB[state] ?? 0), state).toBe(status.counts[state]);
    }
    expect(
      sumOf(finalA, 'bulkbill_charges_ended_total') + sumOf(finalB, 'bulkbill_charges_ended_total'),
    ).toBe(endedInLedger);
    const attemptsA = sumOf(finalA, 'bulkbill_attempts_total');
    const attemptsB = sumOf(finalB, 'bulkbill_attempts_total');
    // Retries were sent: more attempts than charges ended, one per 503 the mock answered.
    expect(attemptsA + attemptsB).toBeGreaterThan(endedInLedger);
    expect(attemptsA + attemptsB).toBe(stats.requests);
    expect(
      metricValue(finalA, 'bulkbill_attempts_total', { outcome: 'retry' }) +
        metricValue(finalB, 'bulkbill_attempts_total', { outcome: 'retry' }),
    ).toBe(stats.failed_503);
    for (const [samples, mid] of [
      [finalA, midA],
      [finalB, midB],
    ] as const) {
      const attempts = sumOf(samples, 'bulkbill_attempts_total');
      expect(attempts).toBeGreaterThan(0);
      expect(attempts).toBeGreaterThanOrEqual(sumOf(mid, 'bulkbill_attempts_total'));
      expect(sumOf(samples, 'bulkbill_charges_ended_total')).toBeGreaterThan(0);
      expect(metricValue(samples, 'bulkbill_request_duration_seconds_count')).toBe(attempts);
      expect(metricValue(samples, 'bulkbill_request_duration_seconds_bucket', { le: '+Inf' })).toBe(
        attempts,
      );
      // The mock answers in 200–300 ms: no request took under 0.1 s on average, nor seconds.
      const meanSeconds = metricValue(samples, 'bulkbill_request_duration_seconds_sum') / attempts;
      expect(meanSeconds).toBeGreaterThan(0.1);
      expect(meanSeconds).toBeLessThan(2);
      expect(
        sumOf(
          samples.filter((sample) => sample.labels.status === '503'),
          'bulkbill_attempts_by_status_total',
        ),
      ).toBe(metricValue(samples, 'bulkbill_attempts_total', { outcome: 'retry' }));
    }

    // The dashboard once the workers are gone: not live, finished, every row in one state.
    const after = await pollUntil(
      'the dashboard showing the run no longer live',
      async () => {
        const view = await api<RunView>(runPath);
        return view.live ? undefined : view;
      },
      8_000,
      200,
    );
    expect(after.finishedAt).toEqual(expect.any(String));
    expect(after.total).toBe(USERS);
    expect(after.done).toBe(USERS);
    expect(countsSum(after.counts)).toBe(USERS);
    expect(after.counts).toEqual(status.counts);
    expect(after.perSecond).toBe(0);
    expect(after.etaMs).toBeUndefined();
    expect(after.chargedAmounts).toEqual(status.chargedAmounts);

    // The charts, summed over both workers: more in flight at once than one worker's limit.
    // A second is drawn once settled, 2 s after its end: the workers' last one (written as they
    // close) is drawn 3 s after they stopped.
    await new Promise((resolve) =>
      setTimeout(resolve, Math.max(0, stoppedAt + 3_500 - Date.now())),
    );
    const series = await api<SeriesPage>(`${runPath}/series`);
    const points: readonly SeriesPoint[] = series.points;
    expect(points.length).toBeGreaterThan(2);
    expect(series.cursor).toBe(points.at(-1)?.at);
    const sum = (pick: (point: SeriesPoint) => number) =>
      points.reduce((total, point) => total + pick(point), 0);
    // Every attempt is in the charts once, whichever second and worker it fell in (soft: the
    // checks after it still run when it fails).
    expect
      .soft({
        charges: sum((point) => point.chargesPerSecond),
        attempts: sum((point) => point.attemptsPerSecond),
        retries: sum((point) => point.retriesPerSecond),
        refusals: sum((point) => point.refusalsPerSecond),
      })
      .toEqual({
        charges: endedInLedger,
        attempts: attemptsA + attemptsB,
        retries: stats.failed_503,
        refusals: stats.failed_503,
      });
    expect(Math.max(...points.map((point) => point.inFlight))).toBeGreaterThan(CONCURRENCY);
    expect(Math.max(...points.map((point) => point.limit))).toBe(2 * CONCURRENCY);
    for (const point of points) {
      expect(point.inFlight).toBeLessThanOrEqual(2 * CONCURRENCY);
      expect(point.breaker ?? 0).toBe(0);
      if (point.attemptsPerSecond === 0) expect(point.p50Ms).toBeNull();
      else expect(point.p95Ms).toBeGreaterThanOrEqual(point.p50Ms ?? Number.POSITIVE_INFINITY);
    }
    // The busiest second's latency is the mock's: 200–300 ms (a 503 comes at once, and is rare).
    const busiest = points.reduce((best, point) =>
      point.attemptsPerSecond > best.attemptsPerSecond ? point : best,
    );
    expect(busiest.p50Ms).toBeGreaterThanOrEqual(150);
    expect(busiest.p50Ms).toBeLessThanOrEqual(400);

    // Problems: exactly the declined users.
    const declinedPage = await api<ProblemPage>(`${runPath}/problems?state=declined&limit=1000`);
    expect(declinedPage.matching).toBe(status.counts.declined);
    expect(declinedPage.problems).toHaveLength(declinedPage.matching);
    expect(declinedPage.problems.map((problem) => problem.userId).sort()).toEqual(expectedDeclined);
    for (const problem of declinedPage.problems) {
      expect(problem, problem.userId).toMatchObject({ state: 'declined', httpStatus: 402 });
    }
    const allProblems = await api<ProblemPage>(`${runPath}/problems`);
    expect(allProblems.matching).toBe(status.counts.declined);

    // One declined user's story, and one charged after a 503.
    const declinedUser = expectedDeclined[0] ?? '';
    const declinedView = await api<UserView>(
      `${runPath}/users/${encodeURIComponent(declinedUser)}`,
    );
    expect(declinedView).toMatchObject({
      runId,
      userId: declinedUser,
      state: 'declined',
      httpStatus: 402,
    });
    expect(declinedView.chargeId).toBeUndefined();
    expect(declinedView.history.at(-1)).toMatchObject({ outcome: 'declined', httpStatus: 402 });
    expect(mock.chargesOf(declinedUser)).toEqual([]);

    const chargedUser = retriedThenCharged ?? '';
    const chargedView = await api<UserView>(`${runPath}/users/${encodeURIComponent(chargedUser)}`);
    const [chargeId] = mock.chargesOf(chargedUser);
    expect(chargeId).toEqual(expect.any(String));
    expect(chargedView).toMatchObject({
      userId: chargedUser,
      state: 'charged',
      chargeId,
      attempts: 2,
    });
    expect(chargedView.history.map((attempt) => [attempt.outcome, attempt.httpStatus])).toEqual([
      ['retry', 503],
      ['charged', 200],
    ]);
    const nobody = await get(new URL(`${runPath}/users/not-a-user`, dashboardUrl).href);
    expect(nobody.status).toBe(404);

    // The dashboard's own /metrics: the run's rows per state, as the ledger counts them.
    const dashboardMetrics = await scrape(new URL('/metrics', dashboardUrl).href, userIds);
    for (const state of ['pending', 'charged', 'declined', 'failed', 'unknown'] as const) {
      expect(
        metricValue(dashboardMetrics, 'bulkbill_charges', { run_id: runId, state }),
        state,
      ).toBe(status.counts[state]);
    }
    expect(
      dashboardMetrics.some(
        (sample) =>
          sample.name === 'bulkbill_charges' &&
          sample.labels.run_id === runId &&
          sample.labels.state === 'charged',
      ),
    ).toBe(true);

    // The JSON logs: a warn line per charge declined on that worker, never an info line per charge.
    const loggedDeclines: string[] = [];
    for (const [worker, samples] of [
      [workerA, finalA],
      [workerB, finalB],
    ] as const) {
      const lines = await logOf(worker);
      expect(lines.length).toBeGreaterThan(0);
      const declines = lines.filter((line) => line.msg === 'charge declined');
      for (const line of declines) {
        expect(line, JSON.stringify(line)).toMatchObject({
          level: 40,
          runId,
          status: 402,
          outcome: 'declined',
          component: 'worker',
        });
        loggedDeclines.push(String(line.userId));
      }
      expect(declines).toHaveLength(endedOf(samples).declined ?? -1);
      // Every line naming a user is a decline's warning (no other charge ended badly here).
      expect(lines.filter((line) => line.userId !== undefined)).toHaveLength(declines.length);
      const endedHere = sumOf(samples, 'bulkbill_charges_ended_total');
      const info = lines.filter((line) => line.level === 30);
      expect(info.length).toBeLessThan(endedHere / 10);
      expect(info.filter((line) => line.userId !== undefined)).toEqual([]);
      const workerEnded = info.find((line) => line.msg === 'worker ended');
      expect(workerEnded).toMatchObject({
        reason: 'closed',
        charged: endedOf(samples).charged,
        declined: endedOf(samples).declined,
      });
    }
    expect(loggedDeclines.sort()).toEqual(expectedDeclined);

    dashboard.child.kill('SIGTERM');
    expect(await dashboard.exited, dashboard.stderr()).toBe(0);
  }, 40_000);
});
