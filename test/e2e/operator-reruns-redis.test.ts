import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import type { MockProvider } from '../../src/mock-provider/index.js';
import {
  cycleWithTypos,
  expectReportAgreesWithProvider,
  plainUsers,
  useCliWorkspace,
  writeCsvInput,
} from '../helpers/billing-cycle.js';
import { type CliProcess, runCli } from '../helpers/cli.js';
import { placeFlags, type RedisPlace, redisStatus, useRedisPlace } from '../helpers/distributed.js';
import { keysUnder, uniquePrefix } from '../helpers/redis.js';
import { OwnRedisServer } from '../helpers/redis-server.js';

// What operators do to a billing cycle on the distributed engine between two enqueues (the real
// CLI's enqueue, worker and status as child processes, real Redis, the real mock provider): omit
// --run-id on a Redis that keeps nothing on disk, enqueue again after such a Redis restarted
// empty, and fix rows and enqueue the file again.

const ws = useCliWorkspace('bulkbill-e2e-operator-redis-', { latencyMs: 2, jitter: 0, seed: 4 });

// redis-servers of a test's own (stopped, started, and removed after it); registered before
// useRedisPlace, whose hooks then run first: its CLI processes are dead before a server goes.
const servers: OwnRedisServer[] = [];
const admins: Redis[] = [];
afterEach(async () => {
  for (const admin of admins.splice(0)) admin.disconnect();
  await Promise.all(servers.splice(0).map((server) => server.destroy()));
});

// The machine's Redis (127.0.0.1:6379, appendonly no, no save points), a fresh prefix per test.
const { place: sharedPlace, children } = useRedisPlace();

/** Starts a redis-server of this test's own, and gives its place and an admin connection. */
async function ownRedis(
  appendonly: boolean,
): Promise<{ server: OwnRedisServer; place: RedisPlace; admin: Redis }> {
  const server = new OwnRedisServer({ appendonly });
  servers.push(server);
  await server.start();
  const admin = new Redis(server.port, '127.0.0.1', { maxRetriesPerRequest: 3 });
  admin.on('error', () => {});
  admins.push(admin);
  return { server, place: { url: server.url, prefix: uniquePrefix(), queue: 'charges' }, admin };
}

/** `bulkbill worker` on the place, billing `mock`, until the queue is empty. */
function spawnWorker(place: RedisPlace, mock: MockProvider): CliProcess {
  return children.spawn([
    ...['worker', ...placeFlags(place), '--endpoint', `${mock.url}/charge`],
    ...['--exit-when-idle', '--concurrency', '50'],
  ]);
}

/** Runs one worker to the end; it must exit 0. */
async function billWithWorker(place: RedisPlace, mock: MockProvider): Promise<void> {
  const worker = spawnWorker(place, mock);
  expect(await worker.exited, worker.stderr()).toBe(0);
}

/** `bulkbill report` of a run on Redis into the workspace's report file. */
async function writeRedisReport(place: RedisPlace, runId: string): Promise<void> {
  const report = await runCli([
    ...['report', '--redis', place.url, '--prefix', place.prefix, '--run-id', runId],
    ...['--out', ws.report],
  ]);
  expect(report.code, report.stderr).toBe(0);
}

describe('operator mistakes between two enqueues (distributed engine)', () => {
  it('on a Redis that keeps nothing on disk, enqueue without --run-id is refused (exit 2); with --run-id it queues', async () => {
    const rows = plainUsers(30);
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), rows);

    const refused = await runCli(['enqueue', input, ...placeFlags(sharedPlace)]);
    expect(refused.code, refused.stderr).toBe(2);
    expect(refused.stderr).toContain('keeps nothing on disk');
    expect(refused.stderr).toContain('--run-id');
    expect(refused.stderr).toContain('appendonly');
    expect(refused.stdout).toBe('');
    // Nothing written: no run in the ledger, no job.
    expect(await keysUnder(sharedPlace.prefix)).toEqual([]);

    const named = await runCli(['enqueue', input, ...placeFlags(sharedPlace), '--run-id', 'c9']);
    expect(named.code, named.stderr).toBe(0);
    expect(named.stdout).toBe('c9\n');
    expect(named.stderr).toContain('new run c9');
    expect(named.stderr).toContain('30 charges queued for run c9');
    const status = await redisStatus(sharedPlace, 'c9');
    expect(status.total).toBe(30);
    expect(status.counts.pending).toBe(30);
    expect(status.queue.waiting).toBe(30);
  }, 30_000);

  it('after a Redis restart without persistence: enqueue without --run-id is refused; the same --run-id replays every charge', async () => {
    const { server, place, admin } = await ownRedis(false);
    const rows = plainUsers(100);
    const userIds = rows.map((row) => row.userId);
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), rows);
    const mock = await ws.provider();

    const enqueued = await runCli(['enqueue', input, ...placeFlags(place), '--run-id', 'c1']);
    expect(enqueued.code, enqueued.stderr).toBe(0);
    expect(enqueued.stdout).toBe('c1\n');
    await billWithWorker(place, mock);
    expect((await redisStatus(place, 'c1')).counts).toMatchObject({ charged: 100, pending: 0 });
    expect(mock.stats()).toMatchObject({ requests: 100, charges: 100, duplicate_charges: 0 });

    // Redis restarts and, keeping nothing on disk, comes back empty.
    await server.stop();
    await server.start();
    expect(await admin.dbsize()).toBe(0);

    const refused = await runCli(['enqueue', input, ...placeFlags(place)]);
    expect(refused.code, refused.stderr).toBe(2);
    expect(refused.stderr).toContain('--run-id');
    expect(refused.stderr).toContain('appendonly');
    expect(await admin.dbsize()).toBe(0);

    // The operator names the cycle as before: a new run c1 in the empty Redis, the same keys.
    const again = await runCli(['enqueue', input, ...placeFlags(place), '--run-id', 'c1']);
    expect(again.code, again.stderr).toBe(0);
    expect(again.stdout).toBe('c1\n');
    expect(again.stderr).toContain('new run c1');
    expect(again.stderr).toContain('100 charges queued for run c1');
    await billWithWorker(place, mock);

    // The provider (the same process, which kept its idempotency keys) replayed every charge.
    expect(mock.stats()).toMatchObject({
      requests: 200,
      charges: 100,
      users_charged: 100,
      duplicate_charges: 0,
      replays: 100,
      mismatches: 0,
    });
    const waited = await runCli(['status', ...placeFlags(place), '--run-id', 'c1', '--wait']);
    expect(waited.code, waited.stderr).toBe(0);
    await writeRedisReport(place, 'c1');
    const byUser = await expectReportAgreesWithProvider({
      agent: ws.agent,
      providerUrl: mock.url,
      reportPath: ws.report,
      userIds,
    });
    expect([...byUser.values()].filter((row) => row.status !== 'charged')).toEqual([]);
  }, 40_000);

  it('fix-and-rerun on Redis: the fixed file enqueued again without --run-id continues the run; only the fixed users are billed', async () => {
    const { place } = await ownRedis(true);
    const { broken, fixed } = cycleWithTypos(plainUsers(98), [40, 70]);
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), broken);
    const mock = await ws.provider();

    const first = await runCli([
      ...['enqueue', input, ...placeFlags(place), '--skip-invalid', '--run-id', 'r1'],
    ]);
    expect(first.code, first.stderr).toBe(0);
    expect(first.stdout).toBe('r1\n');
    const workers = [spawnWorker(place, mock), spawnWorker(place, mock)];
    const codes = await Promise.all(workers.map((worker) => worker.exited));
    expect(codes, workers.map((worker) => worker.stderr()).join('\n')).toEqual([0, 0]);
    expect((await redisStatus(place, 'r1')).counts).toMatchObject({
      charged: 98,
      invalid: 2,
      pending: 0,
    });
    expect(mock.stats()).toMatchObject({ requests: 98, charges: 98 });

    // The operator fixes the two rows and enqueues the file again, without naming the run.
    await writeCsvInput(input, fixed);
    const second = await runCli(['enqueue', input, ...placeFlags(place), '--skip-invalid']);
    expect(second.code, second.stderr).toBe(0);
    expect(second.stdout).toBe('r1\n');
    expect(second.stderr).toContain('resuming unfinished run r1');
    expect(second.stderr).toContain('2 users of this input added to run r1');
    expect(second.stderr).toContain('2 charges queued for run r1');
    await billWithWorker(place, mock);

    expect(mock.stats()).toMatchObject({
      requests: 100,
      charges: 100,
      users_charged: 100,
      duplicate_charges: 0,
      replays: 0,
    });
    const waited = await runCli(['status', ...placeFlags(place), '--run-id', 'r1', '--wait']);
    expect(waited.code, waited.stderr).toBe(0);
    const status = await redisStatus(place, 'r1');
    expect(status.total).toBe(100);
    expect(status.counts).toMatchObject({ charged: 100, invalid: 0, pending: 0 });
    const list = await runCli(['status', ...placeFlags(place), '--json']);
    expect(list.code, list.stderr).toBe(0);
    expect(
      (JSON.parse(list.stdout) as { runs: { runId: string }[] }).runs.map((run) => run.runId),
    ).toEqual(['r1']);
    await writeRedisReport(place, 'r1');
    const byUser = await expectReportAgreesWithProvider({
      agent: ws.agent,
      providerUrl: mock.url,
      reportPath: ws.report,
      userIds: fixed.map((row) => row.userId),
    });
    expect([...byUser.values()].filter((row) => row.status !== 'charged')).toEqual([]);
  }, 40_000);
});
