import { join } from 'node:path';
import { Redis } from 'ioredis';
import { request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { RunView } from '../../src/observe/dashboard/api.js';
import {
  expectedExitStatus,
  expectReportAgreesWithProvider,
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
  type RedisPlace,
  redisStatus,
  useChildren,
} from '../helpers/distributed.js';
import { globEscape, uniquePrefix } from '../helpers/redis.js';
import { OwnRedisServer } from '../helpers/redis-server.js';

// Redis stopped and started again under running workers. This file runs its own redis-server
// (append-only file, fsync on every write, no snapshots) on a free port, so that it can stop
// it without touching the Redis other tests share.

const redisServer = new OwnRedisServer({ appendonly: true });

const ws = useCliWorkspace('bulkbill-e2e-restart-');
let admin: Redis | undefined;
let place: RedisPlace;

beforeAll(async () => {
  await redisServer.start();
  admin = new Redis(redisServer.port, '127.0.0.1', { maxRetriesPerRequest: 3 });
  admin.on('error', () => {});
  place = { url: redisServer.url, prefix: uniquePrefix(), queue: 'charges' };
});
afterAll(async () => {
  admin?.disconnect();
  // Whatever happened in the test: the server must not outlive the file.
  await redisServer.destroy();
});
afterEach(async () => {
  // The server is this file's own, but keep to the house rule: leave no keys behind.
  if (admin?.status !== 'ready') return;
  const keys = await admin.keys(`${globEscape(place.prefix)}:*`);
  if (keys.length > 0) await admin.unlink(...keys);
});
// Registered last, so it runs first: the workers are dead before the keys and provider go.
const children = useChildren();

describe('the distributed engine across a Redis restart', () => {
  it('workers outlive a Redis stop and start mid-run; every user ends once', async () => {
    const rows = plainUsers(1_000);
    const input = await writeCsvInput(join(ws.dir, 'cycle.csv'), rows);
    const mock = await ws.provider({ latencyMs: 100, jitter: 0, seed: 9 });

    const enqueued = await runCli(['enqueue', input, ...placeFlags(place)]);
    expect(enqueued.code, enqueued.stderr).toBe(0);
    const runId = enqueued.stdout.trim();
    const flags = ['--exit-when-idle', '--concurrency', '20', '--lock-duration', '5s'];
    const spawnWorker = (): CliProcess =>
      children.spawn([
        'worker',
        ...placeFlags(place),
        '--endpoint',
        `${mock.url}/charge`,
        ...flags,
      ]);
    const workers = [spawnWorker(), spawnWorker()];
    for (const worker of workers) await waitForStderr(worker, /worker started/);

    // Stop Redis while charges are being made: some done, some in flight, most to come.
    await pollUntil('200 charges made', async () =>
      mock.stats().charges >= 200 && mock.stats().in_flight > 0 ? true : undefined,
    );
    await redisServer.stop();
    const atStop = mock.stats();
    expect(atStop.charges).toBeLessThan(rows.length);
    // Down for a moment: the requests in flight finish at the provider meanwhile.
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    await redisServer.start();

    const codes = await Promise.all(workers.map((worker) => worker.exited));
    expect(codes, workers.map((worker) => worker.stderr()).join('\n')).toEqual([0, 0]);
    for (const worker of workers) {
      // They saw Redis go away, and did not take it for a Redis that keeps nothing on disk.
      expect(worker.stderr()).toMatch(/ECONNREFUSED|Connection is closed|ECONNRESET/);
      expect(worker.stderr()).not.toContain('keeps nothing on disk');
    }

    const status = await redisStatus(place, runId);
    expect(status.total).toBe(rows.length);
    expect(countsSum(status.counts)).toBe(rows.length);
    expect(status.counts.pending).toBe(0);
    expect(status.queue).toEqual({ waiting: 0, active: 0, delayed: 0 });

    const report = await runCli([
      ...['report', '--redis', place.url, '--prefix', place.prefix, '--run-id', runId],
      ...['--out', ws.report],
    ]);
    expect(report.code, report.stderr).toBe(0);
    const byUser = await expectReportAgreesWithProvider({
      agent: ws.agent,
      providerUrl: mock.url,
      reportPath: ws.report,
      userIds: rows.map((row) => row.userId),
    });
    const stats = mock.stats();
    expect(stats.duplicate_charges).toBe(0);
    expect(stats.charges).toBe(status.counts.charged);
    const waited = await runCli(['status', ...placeFlags(place), '--run-id', runId, '--wait']);
    expect(waited.code, waited.stderr).toBe(expectedExitStatus(byUser.values()));
  }, 60_000);

  it('a queue paced by --concurrency auto stays paced across a Redis stop and start; every user once', async () => {
    // 60 at once, 100 ms each; past 60 the provider answers 503 at once.
    const CAPACITY = 60;
    const rows = plainUsers(2_000);
    const input = await writeCsvInput(join(ws.dir, 'paced.csv'), rows);
    const mock = await ws.provider({
      latencyMs: 100,
      jitter: 0.05,
      seed: 11,
      capacity: CAPACITY,
      overload: '503',
    });
    const enqueued = await runCli([
      ...['enqueue', input, ...placeFlags(place), '--run-id', 'paced'],
      ...['--concurrency', 'auto'],
    ]);
    expect(enqueued.code, enqueued.stderr).toBe(0);
    // Each worker alone would take 300 at once: only the queue's pacing holds them to 60.
    const workers = [0, 1].map(() =>
      children.spawn([
        ...['worker', ...placeFlags(place), '--endpoint', `${mock.url}/charge`],
        ...['--exit-when-idle', '--concurrency', '300', '--lock-duration', '5s'],
      ]),
    );
    const pacing = () => admin?.hgetall(`${place.prefix}:${place.queue}:pacing`);
    await pollUntil('a decided limit and 400 charges made', async () =>
      Number((await pacing())?.capacity || 0) > 0 && mock.stats().charges >= 400 ? true : undefined,
    );
    const before = await pacing();
    await redisServer.stop();
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    await redisServer.start();
    const refusedAtStart = mock.stats().rejected_503;
    const requestsAtStart = mock.stats().requests;
    // A decider decides again after the restart (its round writes decidedAt).
    await pollUntil('a decision after the restart', async () => {
      const now = await pacing();
      return now?.decidedAt !== undefined && now.decidedAt !== before?.decidedAt ? true : undefined;
    });

    const codes = await Promise.all(workers.map((worker) => worker.exited));
    expect(codes, workers.map((worker) => worker.stderr()).join('\n')).toEqual([0, 0]);
    const status = await redisStatus(place, 'paced');
    expect(status.total).toBe(rows.length);
    expect(status.counts.pending).toBe(0);
    expect(status.counts.charged).toBe(rows.length);
    const stats = mock.stats();
    expect(stats).toMatchObject({ users_charged: rows.length, duplicate_charges: 0 });
    // Still paced after the restart: not two workers' 600 at once against 60, refused by the
    // thousand, but the controller's few probes past the capacity.
    const refusedAfter = stats.rejected_503 - refusedAtStart;
    const requestsAfter = stats.requests - requestsAtStart;
    expect(refusedAfter / requestsAfter).toBeLessThan(0.05);
    // The run ended: its pacing is gone and the queue's global concurrency with it.
    await pollUntil('the pacing ended', async () =>
      Object.keys((await pacing()) ?? {}).length === 0 ? true : undefined,
    );
    expect(await admin?.hget(`${place.prefix}:${place.queue}:meta`, 'concurrency')).toBeNull();
  }, 60_000);

  it('the dashboard of a queue outlives a Redis stop and start: its answers wait, then come; its stream says the ledger is away, then goes on', async () => {
    const rows = plainUsers(120);
    const input = await writeCsvInput(join(ws.dir, 'cycle.csv'), rows);
    const mock = await ws.provider({ latencyMs: 5, jitter: 0, declineRate: 0.1, seed: 4 });
    const enqueued = await runCli(['enqueue', input, ...placeFlags(place)]);
    expect(enqueued.code, enqueued.stderr).toBe(0);
    const runId = enqueued.stdout.trim();
    const worker = children.spawn([
      'worker',
      ...placeFlags(place),
      '--endpoint',
      `${mock.url}/charge`,
      '--exit-when-idle',
    ]);
    expect(await worker.exited).toBe(0);
    const dashboard = children.spawn([
      'dashboard',
      ...placeFlags(place),
      '--port',
      '0',
      '--run-id',
      runId,
    ]);
    const url = (await waitForStderr(dashboard, /on (http:\/\/127\.0\.0\.1:\d+\/)/))[1] as string;
    const view = async () => {
      const answer = await request(`${url}api/runs/${runId}`);
      return { status: answer.statusCode, body: (await answer.body.json()) as RunView };
    };
    const before = await view();
    expect(before.status).toBe(200);
    expect(before.body).toMatchObject({ done: 120, total: 120, live: false });

    // The event stream, read as it comes.
    const stream = await request(`${url}api/runs/${encodeURIComponent(runId)}/events`);
    let text = '';
    stream.body.setEncoding('utf8');
    stream.body.on('data', (chunk: string) => {
      text += chunk;
    });
    const updates = () => (text.match(/^event: update$/gm) ?? []).length;
    await pollUntil('a first update', async () => (updates() > 0 ? true : undefined));

    await redisServer.stop();
    // Asked while Redis is down: the answer waits for it (the ledger's connection is patient),
    // up to 10 s; the stream says the ledger does not answer (after 3 s), once.
    const during = view();
    await pollUntil('the stream says the ledger does not answer', async () =>
      /^event: stale$/m.test(text) ? true : undefined,
    );
    const stale = /^event: stale\ndata: (.*)$/m.exec(text)?.[1] as string;
    expect(JSON.parse(stale)).toMatchObject({ error: expect.stringMatching(/not answered/) });
    const seen = updates();
    await redisServer.start();
    const after = await during;
    expect(after.status).toBe(200);
    expect(after.body).toMatchObject({ done: 120, counts: before.body.counts });
    await pollUntil('an update after the restart', async () =>
      updates() > seen ? true : undefined,
    );
    expect(dashboard.child.exitCode).toBeNull();
    stream.body.destroy();
    dashboard.child.kill('SIGTERM');
    expect(await dashboard.exited).toBe(0);
  }, 60_000);
});
