import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { type MockProvider, startMockProvider } from '../../src/mock-provider/index.js';
import { type CliProcess, runCli, spawnCli } from '../helpers/cli.js';
import { OwnRedisServer } from '../helpers/redis-server.js';
import { type ChaosUser, chaosUsers, type FileStyle, writeChaosInput } from './input.js';
import { ATTEMPT_TIMEOUT_MS, drawProfile, drawProviderFaults, providerFlags } from './provider.js';
import { Random } from './random.js';
import { type FaultTally, finishRound, lastJson, type RoundResult, sleep, tally } from './round.js';
import { TcpProxy } from './tcp-proxy.js';

const LOCK_MS = 2_000;
/** Fault moments per round; then the workers are left to finish. */
const FAULTS = 3;
/** Times the operator may have to enqueue again and restart workers before the run ends. */
const MAX_RECOVERIES = 6;
/** How long `status --wait` runs before the operator looks whether a worker is left. */
const WAIT_MS = 15_000;
/** How long after the faults the run may take to end before the round calls it stuck. */
const RECOVERY_MS = 120_000;
/** How long a worker has to stop after SIGTERM before it is killed (and that is reported). */
const STOP_MS = 20_000;

/**
 * One round on the distributed engine, on a Redis of its own that syncs its append-only file
 * every second (Redis's default, so a kill -9 may lose the last second of writes): `enqueue`
 * (perhaps killed -9 and run again), two or three workers, one of them reaching Redis through
 * a proxy that can partition it while it still reaches the provider; at random moments a
 * worker or all of them killed -9 and restarted, Redis killed -9 and restarted after longer
 * than the lock, the partition, a provider outage. Then as an operator would: `status --wait`,
 * and while charges are left pending with no job, `enqueue` again and workers again, until
 * the run ends; `report`, and the checks.
 */
export async function distributedRound(seed: number, workDir: string): Promise<RoundResult> {
  const started = performance.now();
  const random = new Random(seed, 'distributed');
  // The operator's own moves draw from a stream of their own: the rest of the plan stays put.
  const operator = new Random(seed, 'distributed-operator');
  /** `enqueue --retry-failed` launches: each gives the failed charges a new round of attempts. */
  let retryRounds = 0;
  const faults: FaultTally = {};
  const dir = join(workDir, `distributed-${seed}`);
  await mkdir(dir, { recursive: true });
  const users: ChaosUser[] = chaosUsers(random, random.int(100, 400), random.int(0, 2));
  const style: FileStyle = {
    format: random.pick(['csv', 'ndjson'] as const),
    bom: random.chance(0.3),
    crlf: random.chance(0.5),
    shuffle: 0,
  };
  const input = join(dir, `cycle.${style.format}`);
  await writeChaosInput(input, users, style, (items, s) => new Random(s, 'shuffle').shuffle(items));
  const redis = new OwnRedisServer({ appendonly: true, fsync: 'everysec' });
  await redis.start();
  const proxy = new TcpProxy({ host: '127.0.0.1', port: redis.port });
  await proxy.start();
  const profile = drawProfile(seed);
  const provider: MockProvider = await startMockProvider({
    ...(profile === 'default' ? {} : { shape: profile }),
    port: 0,
    ...drawProviderFaults(random, faults),
  });
  const maxAttempts = random.int(3, 6);
  const prefix = ['--prefix', `chaos${seed}`];
  const place = [...prefix, '--queue', 'charges'];
  const report = join(dir, 'report.csv');
  const log: string[] = [];
  const violations: string[] = [];
  const workers = new Set<CliProcess>();
  /** Workers the round sent a signal to. */
  const signalled = new Set<CliProcess>();
  const kill = (worker: CliProcess, signal: NodeJS.Signals) => {
    signalled.add(worker);
    worker.child.kill(signal);
  };
  let launches = 0;
  const pointed = await providerFlags(profile, provider, dir);
  const workerFlags = [
    ...pointed,
    '--exit-when-idle',
    ...['--concurrency', String(random.int(4, 32)), '--max-attempts', String(maxAttempts)],
    ...['--timeout', `${ATTEMPT_TIMEOUT_MS}ms`, '--lock-duration', `${LOCK_MS}ms`],
  ];
  /** Waits for a signalled worker to exit; one that takes over STOP_MS is killed, and reported. */
  const stopped = async (worker: CliProcess): Promise<void> => {
    const timer = setTimeout(() => {
      violations.push(
        `worker ${worker.child.pid} did not stop within ${STOP_MS} ms of a signal: ${worker.stderr().slice(-1_000)}`,
      );
      kill(worker, 'SIGKILL');
    }, STOP_MS);
    await worker.exited;
    clearTimeout(timer);
  };
  const startWorker = (viaProxy: boolean) => {
    launches++;
    const worker = spawnCli([
      'worker',
      '--redis',
      viaProxy ? proxy.url : redis.url,
      ...place,
      ...workerFlags,
    ]);
    workers.add(worker);
    void worker.exited.then((code) => {
      workers.delete(worker);
      log.push(`worker ${worker.child.pid}${viaProxy ? ' (via proxy)' : ''}: exit ${code}`);
      // Not a fault the round injected: BullMQ's close that a Redis fault left waiting forever
      // (bullmq#4656), which the worker cut short. Counted, to show how often it happens.
      if (worker.stderr().includes('blocking Redis connection did not end')) {
        tally(faults, 'worker close stuck in BullMQ, cut short');
      }
      // Killed by the round, or done: anything else is a worker that gave up on its own.
      if (code !== 0 && !signalled.has(worker)) {
        violations.push(
          `worker ${worker.child.pid} exited ${code} by itself: ${worker.stderr().slice(-1_500)}`,
        );
      }
    });
    return worker;
  };
  const enqueue = async (
    killAfterMs?: number,
    extra: readonly string[] = [],
  ): Promise<string | undefined> => {
    launches++;
    // With a profile, enqueue reads its config too: the template's columns are checked at import.
    const config = pointed[0] === '--config' ? pointed : [];
    const cli = spawnCli([
      'enqueue',
      input,
      '--redis',
      redis.url,
      ...place,
      '--skip-invalid',
      ...config,
      ...extra,
    ]);
    let killed = false;
    const timer =
      killAfterMs === undefined
        ? undefined
        : setTimeout(() => {
            killed = true;
            tally(faults, 'kill -9 of enqueue');
            cli.child.kill('SIGKILL');
          }, killAfterMs);
    const stuck = setTimeout(() => {
      violations.push(
        `enqueue did not end within ${STOP_MS * 3} ms: ${cli.stderr().slice(-1_000)}`,
      );
      cli.child.kill('SIGKILL');
    }, STOP_MS * 3);
    const code = await cli.exited;
    clearTimeout(timer);
    clearTimeout(stuck);
    log.push(
      `enqueue${extra.length > 0 ? ` ${extra.join(' ')}` : ''}: exit ${code}${killed ? ' after kill -9' : ''}`,
    );
    if (killed) return undefined;
    if (code !== 0) {
      violations.push(`enqueue exited ${code}: ${cli.stderr().slice(-1_500)}`);
      return undefined;
    }
    return cli.stdout().trim().split('\n').at(-1);
  };

  /** `status --wait`, enqueuing again and starting workers, until the run ends or time is up. */
  async function waitForEnd(
    runId: string,
  ): Promise<{ finished: boolean; counts: Record<string, number> | undefined }> {
    let finished = false;
    let counts: Record<string, number> | undefined;
    const giveUpAt = Date.now() + RECOVERY_MS;
    for (let recovery = 0; recovery < MAX_RECOVERIES && !finished && Date.now() < giveUpAt; ) {
      // A run with jobs left and no worker waits for one: an operator starts one.
      if (workers.size === 0) {
        tally(faults, 'operator starts a worker');
        startWorker(false);
      }
      const waiting = spawnCli([
        'status',
        '--redis',
        redis.url,
        ...place,
        '--run-id',
        runId,
        '--wait',
        '--json',
      ]);
      // Looked at again every WAIT_MS: whether a worker is still there to bill the run.
      const timer = setTimeout(() => waiting.child.kill('SIGKILL'), WAIT_MS);
      const code = await waiting.exited;
      clearTimeout(timer);
      log.push(
        `status --wait: exit ${code}${code === 137 ? ` (no end within ${WAIT_MS} ms)` : ''}`,
      );
      if (code === 137) continue;
      const status = lastJson(waiting.stdout());
      counts = status?.counts as Record<string, number> | undefined;
      finished = counts?.pending === 0;
      if (finished) break;
      recovery++;
      tally(faults, 'operator enqueues again');
      await enqueue();
    }
    return { finished, counts };
  }

  try {
    let runId = random.chance(0.3) ? await enqueue(random.int(50, 1_200)) : undefined;
    runId ??= await enqueue();
    if (runId === undefined) throw new Error(`no run: ${log.join('; ')}`);
    const count = random.int(2, 3);
    for (let index = 0; index < count; index++) startWorker(index === 0);

    // Faults land while it bills: from the first charge on.
    const deadline = Date.now() + 30_000;
    while (provider.stats().requests === 0 && Date.now() < deadline) await sleep(10);
    if (operator.chance(0.3)) {
      // Longer than the retries' backoff: charges end failed, for --retry-failed to retry.
      tally(faults, 'long provider outage (503): charges fail');
      await provider.outage(operator.int(5_000, 10_000), '503');
    }
    for (let fault = 0; fault < FAULTS; fault++) {
      await sleep(random.int(100, 1_500));
      const kind = random.pick([
        'kill -9 of a worker',
        'kill -9 of every worker',
        'SIGTERM of a worker',
        'kill -9 of Redis',
        'partition worker–Redis',
        'provider outage',
      ] as const);
      // Workers exit once the queue is empty: a run already billed has none left to kill.
      if (kind.includes('worker') && workers.size === 0) continue;
      tally(faults, kind);
      log.push(`fault: ${kind}`);
      switch (kind) {
        case 'kill -9 of a worker':
        case 'SIGTERM of a worker': {
          const victim = random.pick([...workers]);
          kill(victim, kind === 'SIGTERM of a worker' ? 'SIGTERM' : 'SIGKILL');
          await stopped(victim);
          startWorker(false);
          break;
        }
        case 'kill -9 of every worker': {
          const all = [...workers];
          for (const victim of all) kill(victim, 'SIGKILL');
          await Promise.all(all.map((victim) => victim.exited));
          for (let index = 0; index < count; index++) startWorker(index === 0);
          break;
        }
        case 'kill -9 of Redis':
          await redis.stop('SIGKILL');
          // Down for longer than the lock: every job's lock has expired when it comes back.
          await sleep(LOCK_MS + random.int(300, 1_500));
          await redis.start();
          break;
        case 'partition worker–Redis':
          proxy.partition(LOCK_MS + random.int(0, 1_500));
          break;
        case 'provider outage':
          await provider.outage(random.int(300, 2_000), random.pick(['503', 'restart'] as const));
          break;
      }
    }

    // As an operator: wait for the run; charges pending with no job queued get enqueued again.
    let { finished, counts } = await waitForEnd(runId);
    // Charges that ended failed or unknown: the operator queues them again, as status says.
    for (let retry = 0; finished && retry < 2 && leftToRetry(counts) > 0; retry++) {
      if (!operator.chance(0.7)) break;
      retryRounds++;
      tally(faults, 'operator enqueue --retry-failed');
      if ((await enqueue(undefined, ['--run-id', runId, '--retry-failed'])) === undefined) break;
      for (let index = workers.size; index < 2; index++) startWorker(index === 0);
      if (operator.chance(0.4) && workers.size > 0) {
        await sleep(operator.int(50, 800));
        const victim = operator.pick([...workers]);
        tally(faults, 'kill -9 of a worker (retrying)');
        kill(victim, 'SIGKILL');
        await stopped(victim);
        startWorker(false);
      }
      ({ finished, counts } = await waitForEnd(runId));
    }
    if (!finished) violations.push(`the run did not end: ${log.join('; ')}`);
    for (const worker of [...workers]) {
      kill(worker, 'SIGTERM');
      await stopped(worker);
    }
    const written = await runCli([
      'report',
      '--redis',
      redis.url,
      ...prefix,
      '--run-id',
      runId,
      '--out',
      report,
    ]);
    if (written.code !== 0) violations.push(`report: exit ${written.code}: ${written.stderr}`);
    return await finishRound({
      seed,
      engine: 'distributed',
      profile,
      users,
      launches,
      faults,
      maxAttempts: maxAttempts * (1 + retryRounds),
      report,
      provider,
      violations,
      log,
      started,
    });
  } finally {
    for (const worker of workers) kill(worker, 'SIGKILL');
    await proxy.close();
    await redis.destroy();
    await provider.close({ graceMs: 0 });
  }
}

/** Charges the counts say ended failed or unknown. */
function leftToRetry(counts: Record<string, number> | undefined): number {
  return (counts?.failed ?? 0) + (counts?.unknown ?? 0);
}
