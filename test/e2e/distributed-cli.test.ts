import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ledgerPrefix } from '../../src/engine/distributed/jobs.js';
import {
  expectReportAgreesWithProvider,
  plainUsers,
  useCliWorkspace,
  waitForStderr,
  writeCsvInput,
} from '../helpers/billing-cycle.js';
import { runCli } from '../helpers/cli.js';
import {
  countsSum,
  expectedJobIds,
  placeFlags,
  pollUntil,
  redisStatus,
  useRedisPlace,
} from '../helpers/distributed.js';
import { keysUnder, redisAdmin } from '../helpers/redis.js';

// The distributed engine's smaller commands end to end: enqueue (bad input, kill -9 and
// again), run --redis, and what a worker says about a Redis that keeps nothing on disk.

const ws = useCliWorkspace('bulkbill-e2e-dcli-', { latencyMs: 10, seed: 2 });
const { place, queue, children } = useRedisPlace();

/** The job ids in the queue's wait list (LRANGE, not job by job: there may be 60,000). */
function waitingIds(): Promise<string[]> {
  return redisAdmin().lrange(`${place.prefix}:${place.queue}:wait`, 0, -1);
}

const USERS = 60_000;

/** USERS users: a third plain integers, a third with `:` in them, a third plain names. */
async function writeLargeInput(path: string): Promise<string[]> {
  const userIds: string[] = [];
  const lines = ['user_id,amount,currency'];
  for (let index = 0; index < USERS; index++) {
    const userId =
      index % 3 === 0 ? String(10_000 + index) : index % 3 === 1 ? `org:${index}:u` : `u-${index}`;
    userIds.push(userId);
    lines.push(`${userId},${100 + (index % 900)},USD`);
  }
  await writeFile(path, `${lines.join('\n')}\n`);
  return userIds;
}

describe('bulkbill enqueue, run --redis and worker checks (end to end)', () => {
  it('enqueue killed -9 while adding jobs, then again: the same run resumes and the queue holds one job per user', async () => {
    const input = join(ws.dir, 'large.csv');
    const userIds = await writeLargeInput(input);
    const args = ['enqueue', input, ...placeFlags(place), '--run-id', 'cycle-killed'];

    const first = children.spawn(args);
    // The run is announced after the import, before the first job is added.
    const [, runId] = await waitForStderr(first, /bulkbill: new run (\S+)/);
    if (runId === undefined) throw new Error('no run id');
    const jobs = queue();
    await pollUntil('the first jobs added', async () =>
      ((await jobs.getJobCounts('waiting')).waiting ?? 0) > 0 ? true : undefined,
    );
    first.child.kill('SIGKILL');
    expect(await first.exited, first.stderr()).toBe(137);
    const left = (await jobs.getJobCounts('waiting')).waiting;
    expect(left).toBeGreaterThan(0);
    expect(left).toBeLessThan(USERS);

    const second = await runCli([...args, '--json']);
    expect(second.code, second.stderr).toBe(0);
    expect(second.stderr).toContain(`resuming unfinished run ${runId}`);
    const outcome = JSON.parse(second.stdout) as { runId: string; how: string; total: number };
    expect(outcome).toMatchObject({ runId, how: 'resumed', total: USERS });

    // Exactly one job per user: the ids are unique and are those of this run's users.
    const ids = await waitingIds();
    expect(ids).toHaveLength(USERS);
    const unique = new Set(ids);
    expect(unique.size).toBe(USERS);
    const expected = expectedJobIds(runId, userIds);
    expect([...unique].filter((id) => !expected.has(id))).toEqual([]);
    expect(await jobs.getJobCounts('waiting', 'active', 'delayed', 'prioritized')).toEqual({
      waiting: USERS,
      active: 0,
      delayed: 0,
      prioritized: 0,
    });
    // A job's data names its user as the input did: an integer id stays a string.
    const integerJob = await jobs.getJob([...expected][0] ?? '');
    expect(integerJob?.data).toMatchObject({ r: runId, u: '10000', a: 100, c: 'USD' });
    const status = await redisStatus(place, runId);
    expect(status.counts).toMatchObject({ pending: USERS, charged: 0 });
    expect(status.workers).toEqual([]);
  }, 40_000);

  it('enqueue of a bad file exits 2 naming file:line: field, and queues nothing', async () => {
    const input = join(ws.dir, 'bad.csv');
    await writeCsvInput(input, [
      { userId: 'ok-1', amount: 100, currency: 'USD' },
      { userId: 'bad-amount', amount: '19.99', currency: 'USD' },
      { userId: 'ok:2', amount: 200, currency: 'usd' },
      { userId: 'ok-3', amount: 300, currency: 'EUR' },
    ]);
    const refused = await runCli(['enqueue', input, ...placeFlags(place), '--run-id', 'bad']);
    expect(refused.code).toBe(2);
    expect(refused.stdout).toBe('');
    const problems = refused.stderr
      .split('\n')
      .filter((line) => line.startsWith(`${input}:`))
      .map((line) => line.slice(input.length + 1));
    expect(problems).toEqual([
      expect.stringMatching(/^3: amount: .*19\.99/),
      expect.stringMatching(/^4: currency: .*usd/),
    ]);

    const jobs = queue();
    expect(await jobs.getJobCounts('waiting', 'active', 'delayed', 'prioritized')).toEqual({
      waiting: 0,
      active: 0,
      delayed: 0,
      prioritized: 0,
    });
    // No run in the ledger, not even an invisible one, and no job keys.
    expect(await redisAdmin().hlen(`${ledgerPrefix(place.prefix)}:runs`)).toBe(0);
    const keys = await keysUnder(place.prefix);
    const queueKeys = keys.filter((key) => key.startsWith(`${place.prefix}:${place.queue}:`));
    expect(queueKeys.filter((key) => !key.endsWith(':meta'))).toEqual([]);
    expect(keys.filter((key) => key.startsWith(`${ledgerPrefix(place.prefix)}:`))).toEqual([]);
  });

  it('run --redis bills the file on the distributed engine, exits 0 and writes the report', async () => {
    const rows = [
      ...plainUsers(200),
      { userId: 'a:b', amount: 1, currency: 'EUR' },
      { userId: '4242', amount: 2, currency: 'EUR' },
    ];
    const input = await writeCsvInput(join(ws.dir, 'run.csv'), rows);
    const mock = await ws.provider();
    const result = await runCli([
      'run',
      input,
      ...placeFlags(place),
      '--run-id',
      'cycle-run',
      '--endpoint',
      `${mock.url}/charge`,
      '--report',
      ws.report,
      '--concurrency',
      '20',
      '--json',
    ]);
    expect(result.code, result.stderr).toBe(0);
    const summary = JSON.parse(result.stdout) as {
      runId: string;
      total: number;
      counts: Record<string, number>;
    };
    expect(summary).toMatchObject({ total: rows.length, counts: { charged: rows.length } });
    expect(result.stderr).toContain(`new run ${summary.runId}`);
    await expectReportAgreesWithProvider({
      agent: ws.agent,
      providerUrl: mock.url,
      reportPath: ws.report,
      userIds: rows.map((row) => row.userId),
    });
    const status = await redisStatus(place, summary.runId);
    expect(countsSum(status.counts)).toBe(rows.length);
    expect(status.counts).toMatchObject({ charged: rows.length, pending: 0 });
    expect(status.finishedAt).toEqual(expect.any(String));
    expect(status.queue).toEqual({ waiting: 0, active: 0, delayed: 0 });
  });

  it('enqueue without --run-id on a Redis that keeps nothing on disk is refused; with one it queues', async () => {
    const input = await writeCsvInput(join(ws.dir, 'named.csv'), plainUsers(5));
    const refused = await runCli(['enqueue', input, ...placeFlags(place)]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/keeps nothing on disk .*--run-id.*appendonly yes/s);
    expect(await keysUnder(place.prefix)).toEqual([]);
    const named = await runCli(['enqueue', input, ...placeFlags(place), '--run-id', 'c-named']);
    expect(named.code, named.stderr).toBe(0);
    expect(named.stdout.trim()).toBe('c-named');
  });

  it('status --wait says when nothing can make progress (pending charges, no job queued) and what to run', async () => {
    const input = await writeCsvInput(join(ws.dir, 'lost.csv'), plainUsers(8));
    const enqueued = await runCli(['enqueue', input, ...placeFlags(place), '--run-id', 'c-lost']);
    expect(enqueued.code, enqueued.stderr).toBe(0);
    // The jobs are lost (a Redis restored from an older snapshot, a flushed queue): the ledger
    // still holds every charge pending.
    await queue().drain(true);
    const started = performance.now();
    const waited = await runCli([
      ...['status', ...placeFlags(place), '--run-id', 'c-lost', '--wait'],
    ]);
    expect(waited.code).toBe(1);
    expect(waited.stderr).toMatch(
      /nothing can make progress: 8 charges of run c-lost are pending and no job is queued .*bulkbill enqueue <input> --redis … --run-id c-lost/,
    );
    expect(performance.now() - started).toBeLessThan(25_000);
  }, 40_000);

  it('a worker warns when Redis keeps nothing on disk (and only then)', async () => {
    const [, appendonly] = (await redisAdmin().config('GET', 'appendonly')) as string[];
    const [, save] = (await redisAdmin().config('GET', 'save')) as string[];
    const persists = appendonly !== 'no' || (save ?? '') !== '';
    const mock = await ws.provider();
    // An empty queue: the worker starts, checks Redis, finds nothing to do and ends.
    const worker = await runCli([
      'worker',
      ...placeFlags(place),
      '--endpoint',
      `${mock.url}/charge`,
      '--exit-when-idle',
    ]);
    expect(worker.code, worker.stderr).toBe(0);
    expect(worker.stderr).toContain('"msg":"worker started"');
    const warning = worker.stderr
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as { level: number; msg: string })
      .find((line) => line.msg.includes('keeps nothing on disk'));
    if (persists) {
      expect(warning, worker.stderr).toBeUndefined();
    } else {
      expect(warning?.level, worker.stderr).toBe(40);
      expect(warning?.msg).toMatch(/appendonly yes/);
    }
    expect(mock.stats().requests).toBe(0);
  });
});
