import { join } from 'node:path';
import { lastJsonLine } from '../../bench/lib/cli-process.js';
import { runEngineProcess } from '../../bench/lib/engine-process.js';
import { openBenchRedis, redisServerCounters } from '../../bench/lib/redis-admin.js';
import { type UsersFile, writeUsersCsv } from '../../bench/lib/users-file.js';
import { startMockProvider } from '../../src/mock-provider/index.js';
import { OwnRedisServer } from '../helpers/redis-server.js';
import type { LedgerFigures } from './load-check.js';
import { bareBaseline, LOCAL_CONCURRENCY, type LoadOptions } from './load-local.js';
import {
  describeNoise,
  LoadSampler,
  measureNoise,
  type SteadyWindow,
  steadyWindow,
} from './load-memory.js';
import {
  type Baseline,
  type Billed,
  checkedRun,
  describeExit,
  faultyProvider,
  type LoadResult,
  quietMachine,
  spawnTracked,
  type TrackedCli,
  until,
} from './load-result.js';

const MAX_ATTEMPTS = 5;
/** The kill -9 of one worker: once the provider holds this share of the users' charges. */
const KILL_AT = 0.4;
/**
 * How soon a dead worker's jobs are taken over. The default (30 s) is longer than what is left
 * of a 200,000-user run at 40% here: the run's end would wait, idle, for the lock; 10 s lets the
 * takeover happen while the other workers still bill, and stays far above the lock renewals'
 * delays on two busy cores (the chaos suite runs with 2 s).
 */
const LOCK_DURATION = '10s';
/** How long the run may take after the workers start before the test gives up on it. */
const RUN_TIMEOUT_MS = 20 * 60_000;
/** How long workers have to exit by themselves (--exit-when-idle) once the run has ended. */
const IDLE_EXIT_MS = 30_000;

interface WorkerHandle {
  readonly cli: TrackedCli;
  readonly name: string;
  /** performance.now() of its `worker started` log line. */
  startedAt: number | undefined;
  ended: Record<string, unknown> | undefined;
  killed: boolean;
}

/**
 * The distributed engine under load: `bulkbill enqueue` of `users` users into a Redis of this
 * test's own, `workers` × `bulkbill worker` billing them against the mock provider at zero latency
 * with the mild fault mix, one worker killed -9 at 40% charged and a new one started, `bulkbill
 * status --wait` following the run to its end, `bulkbill report`; the checks; then, in the same
 * run, bench's baseline for this engine (the local engine, c=256, on the same users) and the
 * bare loop.
 */
export async function distributedLoad(
  options: LoadOptions & { readonly workers: number },
): Promise<LoadResult> {
  const { users, seed, dir, progress, workers } = options;
  const input = await writeUsersCsv(join(dir, 'distributed-users.csv'), users);
  progress(`wrote ${users.toLocaleString('en-US')} users in ${Math.round(input.writeMs)} ms`);
  const billed = await billWithFaults(options, input);
  const local = await localEngineBaseline(options, input);
  const bare = await bareBaseline(options, LOCAL_CONCURRENCY);
  const perWorker = Math.max(1, Math.round(LOCAL_CONCURRENCY / workers));
  return {
    ...billed,
    engine: 'distributed',
    users,
    seed,
    billedBy: `${workers} × bulkbill worker --concurrency ${perWorker} (BullMQ, Redis ledger)`,
    baselines: [local.baseline, bare.baseline],
    problems: [...billed.problems, ...local.problems, ...bare.problems],
  };
}

async function billWithFaults(
  options: LoadOptions & { readonly workers: number },
  input: UsersFile,
): Promise<Billed> {
  const { users, seed, dir, progress } = options;
  // A Redis of our own rather than the shared one on 6379: it syncs its append-only file every
  // second, as docs/scaling.md tells an operator to run it; its memory is the run's alone (and
  // its pid is known, so its RSS is read like the workers'); and nothing is left behind on a
  // Redis other sessions use, even when this test is killed.
  const redis = new OwnRedisServer({ appendonly: true, fsync: 'everysec' });
  await redis.start();
  const admin = await openBenchRedis(redis.url);
  const redisPid = (await redisServerCounters(admin)).pid;
  const killRedis = () => {
    if (redisPid !== undefined) {
      try {
        process.kill(redisPid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  };
  process.once('exit', killRedis);
  const quiet = await quietMachine(progress, 'the run', redisPid === undefined ? [] : [redisPid]);
  const provider = await startMockProvider(faultyProvider(seed));
  const sampler = new LoadSampler(() => provider.stats(), users);
  sampler.track('load test + mock provider (in-process)', process.pid);
  if (redisPid !== undefined) sampler.track('redis-server (own, AOF everysec)', redisPid);
  sampler.start();
  const noise = measureNoise(redisPid === undefined ? [] : [redisPid]);
  const runId = `load-distributed-${seed}`;
  const where = ['--redis', redis.url, '--prefix', `load${seed}`];
  // `report` reads the ledger only: it takes no --queue.
  const place = [...where, '--queue', 'charges'];
  const report = join(dir, 'distributed-report.csv');
  const perWorker = Math.max(1, Math.round(LOCAL_CONCURRENCY / options.workers));
  const problems: string[] = [];
  const faults: Record<string, number> = {};
  const windows: SteadyWindow[] = [];
  const notes: string[] = [];
  const workers: WorkerHandle[] = [];
  const startWorker = (): WorkerHandle => {
    const name = `bulkbill worker #${workers.length + 1}`;
    const handle: WorkerHandle = {
      name,
      startedAt: undefined,
      ended: undefined,
      killed: false,
      cli: spawnTracked(
        sampler,
        name,
        [
          'worker',
          ...place,
          ...['--endpoint', provider.chargeUrl, '--concurrency', String(perWorker)],
          ...['--max-attempts', String(MAX_ATTEMPTS), '--lock-duration', LOCK_DURATION],
          '--exit-when-idle',
        ],
        (line) => {
          let entry: Record<string, unknown>;
          try {
            entry = JSON.parse(line) as Record<string, unknown>;
          } catch {
            return;
          }
          if (entry.msg === 'worker started') handle.startedAt = performance.now();
          if (entry.msg === 'worker ended') handle.ended = entry;
          if (typeof entry.level === 'number' && entry.level >= 50)
            problems.push(`${name}: logged an error: ${String(entry.msg)}`);
        },
      ),
    };
    workers.push(handle);
    return handle;
  };
  const started = performance.now();
  try {
    const enqueue = spawnTracked(sampler, 'bulkbill enqueue', [
      'enqueue',
      input.path,
      ...place,
      ...['--run-id', runId, '--endpoint', provider.chargeUrl, '--json'],
    ]);
    const enqueued = await enqueue.exited;
    const enqueueSummary = lastJsonLine(enqueued.stdout) as
      | { queued?: number; importMs?: number; enqueueMs?: number }
      | undefined;
    progress(
      `bulkbill enqueue: ${describeExit(enqueued)} after ${(enqueued.elapsedMs / 1_000).toFixed(1)} s, queued ${enqueueSummary?.queued ?? '?'}`,
    );
    if (enqueued.exitCode !== 0 || enqueueSummary?.queued !== users) {
      problems.push(
        `bulkbill enqueue ${describeExit(enqueued)}, queued ${enqueueSummary?.queued ?? 'nothing'} of ${users}: ${enqueued.stderrTail}`,
      );
      throw new Error(problems.at(-1));
    }
    notes.push(
      `enqueue: ${(enqueued.elapsedMs / 1_000).toFixed(1)} s from spawn to exit (import ${Math.round(enqueueSummary.importMs ?? Number.NaN)} ms, adding the jobs ${Math.round(enqueueSummary.enqueueMs ?? Number.NaN)} ms: ${Math.round((users * 1_000) / (enqueueSummary.enqueueMs ?? Number.NaN)).toLocaleString('en-US')} jobs/s)`,
    );

    const status = spawnTracked(sampler, 'bulkbill status --wait', [
      'status',
      ...place,
      ...['--run-id', runId, '--wait', '--json'],
    ]);
    let statusDone = false;
    void status.exited.then(() => {
      statusDone = true;
    });
    const workersSpawnedAt = performance.now();
    for (let index = 0; index < options.workers; index++) startWorker();

    // The fault: one worker killed -9 at 40% charged, and a new one started in its place.
    const reached = await until(
      () => provider.stats().charges >= users * KILL_AT,
      () => statusDone,
      10,
    );
    let killedAt: number | undefined;
    let replacement: WorkerHandle | undefined;
    if (reached) {
      const victim = workers[0] as WorkerHandle;
      killedAt = performance.now();
      victim.killed = true;
      faults['kill -9 of a bulkbill worker'] = 1;
      progress(
        `kill -9 of ${victim.name} (pid ${victim.cli.pid}) at ${provider.stats().charges.toLocaleString('en-US')} charges; starting a new worker`,
      );
      victim.cli.kill('SIGKILL');
      await victim.cli.exited;
      replacement = startWorker();
    } else {
      problems.push(`the run ended before the kill -9 at ${KILL_AT * 100}% could land`);
    }

    const timer = setTimeout(() => {
      problems.push(`the run did not end within ${RUN_TIMEOUT_MS / 60_000} min`);
      status.kill('SIGKILL');
    }, RUN_TIMEOUT_MS);
    const statusExit = await status.exited;
    clearTimeout(timer);
    const ended = performance.now();
    progress(
      `bulkbill status --wait: ${describeExit(statusExit)} after ${((ended - workersSpawnedAt) / 1_000).toFixed(1)} s of billing, provider ${provider.stats().charges.toLocaleString('en-US')} charges`,
    );
    const ledger = lastJsonLine(statusExit.stdout) as LedgerFigures | undefined;
    if (statusExit.exitCode !== 0 || ledger?.counts === undefined) {
      problems.push(
        `bulkbill status --wait ${describeExit(statusExit)}, expected exit 0: ${statusExit.stderrTail}`,
      );
    }

    // Every worker left ends by itself now that the queue is empty.
    const idleBy = performance.now() + IDLE_EXIT_MS;
    for (const worker of workers) {
      if (worker.killed) continue;
      const left = idleBy - performance.now();
      const exit = await Promise.race([
        worker.cli.exited,
        new Promise<undefined>((resolve) =>
          setTimeout(() => resolve(undefined), Math.max(0, left)),
        ),
      ]);
      if (exit === undefined) {
        problems.push(
          `${worker.name} did not exit within ${IDLE_EXIT_MS / 1_000} s of the run's end`,
        );
        worker.cli.kill('SIGTERM');
        await worker.cli.exited;
      } else if (exit.exitCode !== 0) {
        problems.push(`${worker.name} ${describeExit(exit)}: ${exit.stderrTail.slice(-500)}`);
      }
    }
    if (killedAt !== undefined) {
      const window = steadyWindow(
        sampler,
        `${options.workers} workers, the first charge to the kill`,
        sampler.firstChargeAfter(workersSpawnedAt),
        killedAt,
      );
      if (window) windows.push(window);
    }
    const after = replacement?.startedAt;
    const window = steadyWindow(
      sampler,
      after === undefined
        ? `${options.workers} workers, the first charge to 99%`
        : `${options.workers} workers again (the new one started) to 99%`,
      after ?? sampler.firstChargeAfter(workersSpawnedAt),
      Math.min(sampler.timeOfCharges(users * 0.99, after ?? workersSpawnedAt) ?? ended, ended),
    );
    if (window) windows.push(window);

    const reportCli = spawnTracked(sampler, 'bulkbill report', [
      'report',
      ...where,
      ...['--run-id', runId, '--out', report],
    ]);
    const reportExit = await reportCli.exited;
    if (reportExit.exitCode !== 0) {
      problems.push(`bulkbill report ${describeExit(reportExit)}: ${reportExit.stderrTail}`);
      progress(`bulkbill report ${describeExit(reportExit)}: ${reportExit.stderrTail}`);
    }
    const info = await admin.info();
    const field = (name: string) => new RegExp(`^${name}:(\\S+)`, 'm').exec(info)?.[1] ?? '?';
    notes.push(
      `Redis after the run: used_memory ${field('used_memory_human')} (peak ${field('used_memory_peak_human')}), RSS ${field('used_memory_rss_human')}, ${field('db0')}, append-only file ${(Number(field('aof_current_size')) / 1_048_576).toFixed(1)} MiB`,
    );
    const ends = workers
      .filter((worker) => worker.ended !== undefined)
      .map((worker) => `${worker.name} ${worker.ended?.charged ?? '?'}`);
    notes.push(`charged per worker (its \`worker ended\` line): ${ends.join(', ')}`);
    sampler.stop();
    notes.push(
      `while it billed (enqueue to report): ${describeNoise(noise())}; before it, ${quiet}`,
    );
    return await checkedRun({
      sampler,
      provider,
      report,
      inputPath: input.path,
      users,
      maxAttempts: MAX_ATTEMPTS,
      ledger,
      faults,
      startedAt: started,
      endedAt: ended,
      windows,
      problems,
      notes: [`input: ${(input.bytes / 1_048_576).toFixed(1)} MiB CSV`, ...notes],
      progress,
    });
  } finally {
    sampler.stop();
    for (const worker of workers) worker.cli.kill('SIGKILL');
    await Promise.all(workers.map((worker) => worker.cli.exited));
    admin.disconnect();
    await provider.close({ graceMs: 0 });
    await redis.destroy();
    process.off('exit', killRedis);
  }
}

/**
 * bench's baseline for the distributed engine (distributed-throughput): the local engine on
 * SQLite, `bulkbill run --concurrency 256`, the same users, against a clean provider in this
 * process; charges/s over the provider's span, first request to last charge, as bench counts it.
 */
async function localEngineBaseline(
  options: LoadOptions,
  input: UsersFile,
): Promise<{ baseline: Baseline; problems: string[] }> {
  const { users, seed, dir, progress } = options;
  progress(
    `baseline: the local engine, bulkbill run --concurrency ${LOCAL_CONCURRENCY}, ${users.toLocaleString('en-US')} users, against a clean provider`,
  );
  const clean = await startMockProvider({
    ...faultyProvider(seed),
    failRate: 0,
    lostRate: 0,
    resetRate: 0,
  });
  const quiet = await quietMachine(progress, 'baseline');
  const sampler = new LoadSampler(() => clean.stats(), users);
  sampler.start();
  const noise = measureNoise();
  try {
    const run = await runEngineProcess({
      input: input.path,
      endpoint: clean.chargeUrl,
      concurrency: LOCAL_CONCURRENCY,
      runId: `load-baseline-${seed}`,
      ledger: join(dir, 'baseline-ledger.db'),
      report: join(dir, 'baseline-report.csv'),
    });
    sampler.stop();
    const noiseNow = noise();
    const first = sampler.firstRequestAt();
    const last = sampler.timeOfCharges(users);
    const spanMs = first === undefined || last === undefined ? Number.NaN : last - first;
    const perSecond = (users * 1_000) / spanMs;
    progress(`baseline: ${Math.round(perSecond).toLocaleString('en-US')} charges/s`);
    const stats = clean.stats();
    const problems =
      run.exitCode === 0 &&
      run.summary?.counts.charged === users &&
      stats.charges === users &&
      stats.duplicate_charges === 0
        ? []
        : [
            `baseline: the local engine ${describeExit(run)}, ${JSON.stringify(run.summary?.counts)}, the provider ${stats.charges} charges: ${run.stderrTail.slice(-300)}`,
          ];
    return {
      baseline: {
        name: 'local engine',
        perSecond,
        detail: `bulkbill run --concurrency ${LOCAL_CONCURRENCY}, ${users.toLocaleString('en-US')} users, no faults: provider span ${(spanMs / 1_000).toFixed(1)} s, its own wall ${((run.summary?.wallMs ?? Number.NaN) / 1_000).toFixed(1)} s, peak RSS ${Math.round((run.summary?.peakRssBytes ?? Number.NaN) / 1_048_576)} MiB; ${describeNoise(noiseNow)}; before it, ${quiet}`,
      },
      problems,
    };
  } finally {
    sampler.stop();
    await clean.close({ graceMs: 0 });
  }
}
