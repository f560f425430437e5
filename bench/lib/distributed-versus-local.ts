import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { Agent, type Dispatcher } from 'undici';
import { DEFAULT_QUEUE, ledgerPrefix } from '../../src/engine/distributed/jobs.js';
import type { StateCounts } from '../../src/ledger/ledger.js';
import { RedisLedger } from '../../src/ledger/redis-ledger.js';
import type { MockProviderStats } from '../../src/mock-provider/index.js';
import {
  type EnqueueProcessResult,
  type QueuePlace,
  runEnqueueProcess,
  startWorkerProcess,
  type WorkerProcess,
  type WorkerProcessResult,
} from './distributed-process.js';
import { type EngineProcessResult, runEngineProcess } from './engine-process.js';
import { undisturbedOrAll, violationsOf } from './engine-versus-bare.js';

import {
  finiteMedian,
  formatCount,
  formatCpuShare,
  formatMebibytes,
  formatMicroseconds,
  formatSeconds,
} from './figures.js';
import { mockProviderStats, resetMockProvider } from './mock-provider-admin.js';
import {
  machineBusyCpuMs,
  type ProcessMemory,
  processCpuMs,
  processMemory,
} from './os-counters.js';
import { describeQuietWait, type QuietWait, waitForQuietMachine } from './quiet-machine.js';
import {
  deleteKeysUnder,
  type KeyMemory,
  memoryUnder,
  openBenchRedis,
  redisServerCounters,
  uniqueBenchPrefix,
} from './redis-admin.js';
import { type BenchSettings, markdownTable } from './report.js';
import { DISTURBED_OTHER_SHARE } from './sample-run.js';
import type { ServerProcess } from './server-process.js';
import { startMockProviderServer, stopServers } from './servers.js';
import { type UsersFile, writeUsersCsv } from './users-file.js';

/** Who bills: `bulkbill run` on SQLite, or `bulkbill worker` processes sharing one queue. */
export type BillingSide =
  | { readonly kind: 'local'; readonly concurrency: number }
  | { readonly kind: 'distributed'; readonly workers: number; readonly concurrency: number };

/** `local c=256`, `4 workers × 64`. */
export function sideName(side: BillingSide): string {
  return side.kind === 'local'
    ? `local c=${formatCount(side.concurrency)}`
    : `${side.workers} worker${side.workers === 1 ? '' : 's'} × ${formatCount(side.concurrency)}`;
}

/** Requests in flight at most, all processes of the side together. */
export function totalConcurrency(side: BillingSide): number {
  return side.kind === 'local' ? side.concurrency : side.workers * side.concurrency;
}

/** How often the bench reads the mock provider's counters and the Redis ledger's, in ms. */
export const WATCH_INTERVAL_MS = 20;

/** One sample of either side, against the mock provider reset before it. */
export interface BillingSample {
  readonly side: string;
  readonly kind: BillingSide['kind'];
  readonly users: number;
  readonly warmUp: boolean;
  /**
   * The billing span, in ms. Distributed: from the moment the bench resumed the paused queue
   * (every job available to every worker, all of them started) to the first reading of the Redis
   * ledger counting every charge ended. Local: from the first reading of the mock provider's
   * GET /stats that counted a request to the first that counted every charge. Read every 20 ms.
   */
  readonly spanMs: number;
  /** From the first request to the last charge as the mock provider counted them, both sides. */
  readonly providerSpanMs: number | undefined;
  /** users / spanMs. */
  readonly chargesPerSecond: number;
  /** Local: from spawn to exit; distributed: from resuming the queue to the last worker's exit. */
  readonly elapsedMs: number;
  /** Distributed: from spawning the workers to the last `worker started` (not in the span). */
  readonly workerStartMs: number | undefined;
  /** Distributed: from the last outcome to the last worker's exit (--exit-when-idle polls every 500 ms). */
  readonly drainMs: number | undefined;
  readonly local: EngineProcessResult | undefined;
  readonly enqueue: EnqueueProcessResult | undefined;
  readonly workers: readonly WorkerProcessResult[];
  /** Over how long the CPU figures were measured, in ms: elapsed (local) or the span (distributed). */
  readonly cpuWindowMs: number;
  /** CPU of the billing processes (the engine, or every worker), in ms. */
  readonly billingCpuMs: number | undefined;
  readonly mockCpuMs: number | undefined;
  /** The Redis server's CPU (every client's commands, not only ours), in ms; distributed only. */
  readonly redisCpuMs: number | undefined;
  /** Commands the Redis server processed (every client's), distributed only. */
  readonly redisCommands: number | undefined;
  /** Everything else on the machine, in ms: the neighbours' noise. */
  readonly otherCpuMs: number | undefined;
  readonly quietWait: QuietWait;
  /** Distributed: the sample's keys (MEMORY USAGE) once enqueued, when asked for. */
  readonly memoryAfterEnqueue: KeyMemory | undefined;
  /** Distributed: the sample's keys once every charge has ended and the workers have exited. */
  readonly memoryAfterRun: KeyMemory | undefined;
  /** Distributed: the Redis server's used_memory growth from before the enqueue to after it. */
  readonly usedMemoryAfterEnqueueBytes: number | undefined;
  /** Distributed: the same growth to after the run. */
  readonly usedMemoryAfterRunBytes: number | undefined;
  readonly providerStats: MockProviderStats | undefined;
  readonly providerRssBytes: number | undefined;
  /** Broken guarantees: a duplicate charge, or charges other than one per user. */
  readonly violations: readonly string[];
  /** Anything else not clean: exit statuses, counts, jobs left behind, retries. */
  readonly problems: readonly string[];
  /** Earlier attempts at this sample, thrown away because neighbours used the machine meanwhile. */
  readonly discarded: readonly BillingSample[];
}

export interface DistributedVersusLocalOptions {
  /** Names the scenario in progress lines and run ids. Required. */
  readonly scenario: string;
  /** The mock provider's `--latency`. Required. */
  readonly latency: string;
  readonly users: number;
  /** The sides, each sampled once per round; round r starts at side r (rotation). */
  readonly sides: readonly BillingSide[];
  readonly rounds: number;
  /** One uncounted sample of each of these sides first, with this many users. Default: none. */
  readonly warmUp?: { readonly users: number; readonly sides: readonly BillingSide[] };
  /** Attempts per sample while neighbours disturb it. Default 4. */
  readonly maxAttempts?: number;
  /** Sum MEMORY USAGE over the sample's keys after the enqueue (a SCAN of every job). Default false. */
  readonly memoryAfterEnqueue?: boolean;
  readonly settings: BenchSettings;
}

export interface DistributedVersusLocal {
  /** In the order run, warm-ups first. */
  readonly samples: readonly BillingSample[];
  readonly input: UsersFile;
  /** The mock provider just before it was stopped. */
  readonly providerMemory: ProcessMemory | undefined;
}

/**
 * Bills the same generated users with the local engine (`bulkbill run`, SQLite, a fresh ledger
 * per sample) and with `bulkbill enqueue` + N `bulkbill worker --exit-when-idle` processes on
 * one queue (a fresh key prefix per sample, deleted afterwards), against one mock provider.
 */
export async function runDistributedVersusLocal(
  options: DistributedVersusLocalOptions,
): Promise<DistributedVersusLocal> {
  const { scenario, users, sides, rounds, settings } = options;
  const { progress } = settings;
  const maxAttempts = options.maxAttempts ?? 4;
  const workDir = await mkdtemp(join(tmpdir(), `bulkbill-bench-${scenario}-`));
  const servers: ServerProcess[] = [];
  const admin = new Agent({ connections: 1 });
  const redis = await openBenchRedis(settings.redisUrl);
  const samples: BillingSample[] = [];
  try {
    const input = await writeUsersCsv(join(workDir, `users-${users}.csv`), users);
    progress(
      `${scenario}: wrote ${formatCount(users)} users (${formatMebibytes(input.bytes)}) in ${formatSeconds(input.writeMs)}`,
    );
    const warmUpInput = options.warmUp
      ? await writeUsersCsv(
          join(workDir, `users-${options.warmUp.users}.csv`),
          options.warmUp.users,
        )
      : undefined;
    const mock = await startMockProviderServer(options.latency, settings.serverNodeArgs);
    servers.push(mock);
    progress(`${scenario}: mock provider ${mock.url} (latency ${options.latency})`);

    const plan: { side: BillingSide; file: UsersFile; warmUp: boolean }[] = [];
    if (options.warmUp && warmUpInput) {
      for (const side of options.warmUp.sides) plan.push({ side, file: warmUpInput, warmUp: true });
    }
    for (let round = 0; round < rounds; round++) {
      // Rotating who goes first keeps a drifting machine from favouring one side.
      for (let at = 0; at < sides.length; at++) {
        const side = sides[(round + at) % sides.length] as BillingSide;
        plan.push({ side, file: input, warmUp: false });
      }
    }

    let index = 0;
    for (const { side, file, warmUp } of plan) {
      index++;
      const context: SampleContext = {
        scenario,
        mock,
        admin,
        redis,
        workDir,
        file,
        warmUp,
        memoryAfterEnqueue: options.memoryAfterEnqueue === true,
        settings,
      };
      const discarded: BillingSample[] = [];
      let sample: BillingSample;
      for (let attempt = 1; ; attempt++) {
        const sampleId = `${index}-a${attempt}`;
        sample =
          side.kind === 'local'
            ? await runLocalSample(side, context, sampleId)
            : await runDistributedSample(side, context, sampleId);
        if (warmUp || attempt >= maxAttempts || !isDisturbed(sample)) break;
        discarded.push(sample);
      }
      sample = { ...sample, discarded };
      samples.push(sample);
      progress(
        `${scenario}: ${warmUp ? 'warm-up' : 'sample'} ${index}/${plan.length} ${sample.side}: ${describeSample(sample)}`,
      );
      for (const violation of sample.violations) {
        progress(
          `${scenario}: CORRECTNESS VIOLATION (${sample.side}, sample ${index}): ${violation}`,
        );
      }
    }
    return { samples, input, providerMemory: processMemory(mock.pid) };
  } finally {
    await admin.close();
    await stopServers(servers);
    redis.disconnect();
    await rm(workDir, { recursive: true, force: true });
  }
}

interface SampleContext {
  readonly scenario: string;
  readonly mock: ServerProcess;
  readonly admin: Dispatcher;
  readonly redis: Redis;
  readonly workDir: string;
  readonly file: UsersFile;
  readonly warmUp: boolean;
  readonly memoryAfterEnqueue: boolean;
  readonly settings: BenchSettings;
}

/** When the mock provider, and the Redis ledger when given, first counted what a span needs. */
interface Watched {
  firstRequestAt: number | undefined;
  lastChargeAt: number | undefined;
  ledgerDoneAt: number | undefined;
}

/**
 * Reads GET /stats (and the ledger's counts, for a distributed run) every WATCH_INTERVAL_MS
 * until every charge is counted, or `gaveUp()` says the billing side is gone.
 */
async function watchBilling(args: {
  readonly mock: ServerProcess;
  readonly admin: Dispatcher;
  readonly users: number;
  readonly ledger?: { readonly ledger: RedisLedger; readonly runId: string };
  readonly gaveUp: () => boolean;
  readonly timeoutMs: number;
}): Promise<Watched> {
  const watched: Watched = {
    firstRequestAt: undefined,
    lastChargeAt: undefined,
    ledgerDoneAt: undefined,
  };
  const started = performance.now();
  for (let tick = 1; ; tick++) {
    const [stats, counts] = await Promise.all([
      mockProviderStats(args.mock.url, args.admin),
      args.ledger ? args.ledger.ledger.counts(args.ledger.runId) : undefined,
    ]);
    const now = performance.now();
    if (watched.firstRequestAt === undefined && stats.requests > 0) watched.firstRequestAt = now;
    if (watched.lastChargeAt === undefined && stats.charges >= args.users) {
      watched.lastChargeAt = now;
    }
    if (counts && watched.ledgerDoneAt === undefined && endedOf(counts) >= args.users) {
      watched.ledgerDoneAt = now;
    }
    const done =
      watched.lastChargeAt !== undefined &&
      (args.ledger === undefined || watched.ledgerDoneAt !== undefined);
    if (done || args.gaveUp() || now - started > args.timeoutMs) return watched;
    // A fixed pace, whatever the readings took.
    await sleep(Math.max(0, started + tick * WATCH_INTERVAL_MS - performance.now()));
  }
}

function endedOf(counts: StateCounts): number {
  return counts.charged + counts.declined + counts.failed + counts.unknown + counts.invalid;
}

async function runLocalSample(
  side: Extract<BillingSide, { kind: 'local' }>,
  context: SampleContext,
  sampleId: string,
): Promise<BillingSample> {
  const { scenario, mock, admin, file } = context;
  await resetMockProvider(mock.url, admin);
  const quietWait = await waitForQuietMachine({ serverPids: [mock.pid] });
  const runDir = await mkdtemp(join(context.workDir, 'run-'));
  try {
    const ownBefore = process.cpuUsage();
    const mockBefore = processCpuMs(mock.pid);
    const machineBefore = machineBusyCpuMs();
    let exited = false;
    const running = runEngineProcess({
      input: file.path,
      endpoint: `${mock.url}/charge`,
      concurrency: side.concurrency,
      runId: `bench-${scenario}-${sampleId}`,
      ledger: join(runDir, 'ledger.db'),
      report: join(runDir, 'report.csv'),
      nodeArgs: context.settings.engineNodeArgs,
    }).finally(() => {
      exited = true;
    });
    const [run, watched] = await Promise.all([
      running,
      watchBilling({
        mock,
        admin,
        users: file.users,
        gaveUp: () => exited,
        timeoutMs: 15 * 60_000,
      }),
    ]);
    const machineAfter = machineBusyCpuMs();
    const mockAfter = processCpuMs(mock.pid);
    const own = process.cpuUsage(ownBefore);
    const providerStats = await mockProviderStats(mock.url, admin);

    const problems: string[] = [];
    if (run.exitCode !== 0) {
      problems.push(
        `engine exited ${run.signal ?? `with status ${run.exitCode}`}: ${lastLines(run.stderrTail)}`,
      );
    }
    const summary = run.summary;
    if (summary === undefined) problems.push('engine printed no --json summary');
    else if (summary.counts.charged !== file.users) {
      problems.push(
        `engine counted ${formatCount(summary.counts.charged)} charged of ${formatCount(file.users)}`,
      );
    }
    problems.push(...requestProblems(providerStats, file.users));
    const providerSpanMs = spanOf(watched.firstRequestAt, watched.lastChargeAt);
    if (providerSpanMs === undefined) problems.push('the provider never counted every charge');
    const spanMs = providerSpanMs ?? summary?.wallMs ?? run.elapsedMs;
    const mockCpuMs = difference(mockBefore, mockAfter);
    const ownMs = (own.user + own.system) / 1_000;
    const otherCpuMs =
      machineBefore === undefined ||
      machineAfter === undefined ||
      mockCpuMs === undefined ||
      run.cpuMs === undefined
        ? undefined
        : Math.max(0, machineAfter - machineBefore - mockCpuMs - ownMs - run.cpuMs);
    return {
      side: sideName(side),
      kind: 'local',
      users: file.users,
      warmUp: context.warmUp,
      spanMs,
      providerSpanMs,
      chargesPerSecond: (file.users * 1_000) / spanMs,
      elapsedMs: run.elapsedMs,
      workerStartMs: undefined,
      drainMs: undefined,
      local: run,
      enqueue: undefined,
      workers: [],
      cpuWindowMs: run.elapsedMs,
      billingCpuMs: run.cpuMs,
      mockCpuMs,
      redisCpuMs: undefined,
      redisCommands: undefined,
      otherCpuMs,
      quietWait,
      memoryAfterEnqueue: undefined,
      memoryAfterRun: undefined,
      usedMemoryAfterEnqueueBytes: undefined,
      usedMemoryAfterRunBytes: undefined,
      providerStats,
      providerRssBytes: processMemory(mock.pid)?.rssBytes,
      violations: violationsOf(providerStats, file.users),
      problems,
      discarded: [],
    };
  } finally {
    await rm(runDir, { recursive: true, force: true });
  }
}

/** How to tell a job's keys (`<prefix>:<queue>:<job id>[:lock|:logs]`) from the queue's own. */
export function keyGroupOf(place: QueuePlace): (key: string) => string {
  const ledger = `${ledgerPrefix(place.prefix)}:`;
  const queue = `${place.prefix}:${place.queue}:`;
  return (key) => {
    if (key.startsWith(ledger)) return 'ledger';
    // Job ids are idempotency keys with `:` encoded as `%3A` (jobIdOf): no queue key has one.
    if (key.startsWith(queue) && key.includes('%3A')) return 'jobs';
    return 'queue';
  };
}

async function runDistributedSample(
  side: Extract<BillingSide, { kind: 'distributed' }>,
  context: SampleContext,
  sampleId: string,
): Promise<BillingSample> {
  const { scenario, mock, admin, redis, file, settings } = context;
  const place: QueuePlace = {
    redisUrl: settings.redisUrl,
    prefix: uniqueBenchPrefix(),
    queue: DEFAULT_QUEUE,
  };
  const runId = `bench-${scenario}-${sampleId}`;
  const queue = new Queue(place.queue, { connection: redis, prefix: place.prefix });
  queue.on('error', () => {});
  const ledger = new RedisLedger({ redis, prefix: ledgerPrefix(place.prefix) });
  const workers: WorkerProcess[] = [];
  const problems: string[] = [];
  try {
    await resetMockProvider(mock.url, admin);
    const before = await redisServerCounters(redis);
    const enqueue = await runEnqueueProcess(place, file.path, runId, settings.engineNodeArgs);
    if (enqueue.exitCode !== 0 || enqueue.summary?.queued !== file.users) {
      problems.push(
        `enqueue exited ${enqueue.signal ?? `with status ${enqueue.exitCode}`}, queued ${enqueue.summary?.queued ?? 'nothing'}: ${lastLines(enqueue.stderrTail)}`,
      );
    }
    const usedMemoryAfterEnqueueBytes =
      (await redisServerCounters(redis)).usedMemoryBytes - before.usedMemoryBytes;
    const memoryAfterEnqueue = context.memoryAfterEnqueue
      ? await memoryUnder(redis, place.prefix, keyGroupOf(place))
      : undefined;

    // Every worker started and waiting before any job is let go: the span measures billing, not
    // how fast Node and tsx start four processes on two cores.
    await queue.pause();
    const spawnedAt = performance.now();
    for (let at = 0; at < side.workers; at++) {
      workers.push(
        startWorkerProcess(place, `${mock.url}/charge`, side.concurrency, settings.engineNodeArgs),
      );
    }
    await Promise.all(workers.map((worker) => worker.started));
    const workerStartMs = performance.now() - spawnedAt;
    const redisPid = before.pid;
    const quietWait = await waitForQuietMachine({
      serverPids: [mock.pid, ...(redisPid === undefined ? [] : [redisPid])],
    });

    const ownBefore = process.cpuUsage();
    const mockBefore = processCpuMs(mock.pid);
    const machineBefore = machineBusyCpuMs();
    const redisBefore = await redisServerCounters(redis);
    const workersBefore = workers.map((worker) => worker.cpuMs());
    const resumedAt = performance.now();
    await queue.resume();
    let gone = 0;
    const results = Promise.all(
      workers.map((worker) =>
        worker.exited.finally(() => {
          gone++;
        }),
      ),
    );
    const watched = await watchBilling({
      mock,
      admin,
      users: file.users,
      ledger: { ledger, runId },
      gaveUp: () => gone === workers.length,
      timeoutMs: 30 * 60_000,
    });
    const workersAfter = workers.map((worker) => worker.cpuMs());
    const redisAfter = await redisServerCounters(redis);
    const machineAfter = machineBusyCpuMs();
    const mockAfter = processCpuMs(mock.pid);
    const own = process.cpuUsage(ownBefore);
    const windowEnd = performance.now();
    const finished = await results;
    const drainMs = performance.now() - (watched.ledgerDoneAt ?? windowEnd);
    const elapsedMs = performance.now() - resumedAt;

    const providerStats = await mockProviderStats(mock.url, admin);
    const counts = await ledger.counts(runId);
    const left = await queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized');
    const usedMemoryAfterRunBytes =
      (await redisServerCounters(redis)).usedMemoryBytes - before.usedMemoryBytes;
    const memoryAfterRun = await memoryUnder(redis, place.prefix, keyGroupOf(place));

    for (const worker of finished) {
      if (worker.exitCode !== 0) {
        problems.push(
          `worker ${worker.pid} exited ${worker.signal ?? `with status ${worker.exitCode}`}: ${lastLines(worker.stderrTail)}`,
        );
      }
      if (worker.ended === undefined)
        problems.push(`worker ${worker.pid} logged no "worker ended"`);
    }
    const workerCharged = finished.reduce((sum, worker) => sum + (worker.ended?.charged ?? 0), 0);
    if (workerCharged !== file.users) {
      problems.push(`the workers logged ${formatCount(workerCharged)} charged`);
    }
    if (counts.charged !== file.users) {
      problems.push(`the ledger counts ${JSON.stringify(counts)}`);
    }
    const jobsLeft = Object.values(left).reduce((sum, count) => sum + count, 0);
    if (jobsLeft > 0) problems.push(`jobs left in the queue: ${JSON.stringify(left)}`);
    if ((memoryAfterRun.groups.jobs?.keys ?? 0) > 0) {
      problems.push(`${formatCount(memoryAfterRun.groups.jobs?.keys ?? 0)} job keys left in Redis`);
    }
    problems.push(...requestProblems(providerStats, file.users));
    const ledgerSpanMs = spanOf(resumedAt, watched.ledgerDoneAt);
    if (ledgerSpanMs === undefined) problems.push('the ledger never counted every charge ended');
    const spanMs = ledgerSpanMs ?? windowEnd - resumedAt;

    const windowMs = windowEnd - resumedAt;
    const billingCpuMs = workersBefore.every(
      (value, at) => value !== undefined && workersAfter[at] !== undefined,
    )
      ? workersAfter.reduce<number>(
          (sum, value, at) => sum + (value ?? 0) - (workersBefore[at] ?? 0),
          0,
        )
      : undefined;
    const mockCpuMs = difference(mockBefore, mockAfter);
    const redisCpuMs = redisAfter.cpuMs - redisBefore.cpuMs;
    const ownMs = (own.user + own.system) / 1_000;
    const otherCpuMs =
      machineBefore === undefined ||
      machineAfter === undefined ||
      mockCpuMs === undefined ||
      billingCpuMs === undefined
        ? undefined
        : Math.max(0, machineAfter - machineBefore - mockCpuMs - redisCpuMs - ownMs - billingCpuMs);
    return {
      side: sideName(side),
      kind: 'distributed',
      users: file.users,
      warmUp: context.warmUp,
      spanMs,
      providerSpanMs: spanOf(watched.firstRequestAt, watched.lastChargeAt),
      chargesPerSecond: (file.users * 1_000) / spanMs,
      elapsedMs,
      workerStartMs,
      drainMs,
      local: undefined,
      enqueue,
      workers: finished,
      cpuWindowMs: windowMs,
      billingCpuMs,
      mockCpuMs,
      redisCpuMs,
      redisCommands: redisAfter.commandsProcessed - redisBefore.commandsProcessed,
      otherCpuMs,
      quietWait,
      memoryAfterEnqueue,
      memoryAfterRun,
      usedMemoryAfterEnqueueBytes,
      usedMemoryAfterRunBytes,
      providerStats,
      providerRssBytes: processMemory(mock.pid)?.rssBytes,
      violations: violationsOf(providerStats, file.users),
      problems,
      discarded: [],
    };
  } finally {
    for (const worker of workers) worker.kill('SIGKILL');
    await Promise.allSettled(workers.map((worker) => worker.exited));
    await queue.close().catch(() => {});
    await ledger.close().catch(() => {});
    await deleteKeysUnder(redis, place.prefix);
  }
}

function spanOf(from: number | undefined, to: number | undefined): number | undefined {
  return from === undefined || to === undefined ? undefined : to - from;
}

function difference(before: number | undefined, after: number | undefined): number | undefined {
  return before === undefined || after === undefined ? undefined : after - before;
}

function lastLines(text: string): string {
  return text.split('\n').slice(-3).join(' / ');
}

/** With no faults, every user takes exactly one request. */
function requestProblems(stats: MockProviderStats, users: number): string[] {
  return stats.requests === users
    ? []
    : [`provider saw ${formatCount(stats.requests)} requests for ${formatCount(users)} users`];
}

/** Whether the rest of the machine used over DISTURBED_OTHER_SHARE of a core during the sample. */
export function isDisturbed(sample: BillingSample): boolean {
  return (
    sample.otherCpuMs !== undefined &&
    sample.otherCpuMs / sample.cpuWindowMs > DISTURBED_OTHER_SHARE
  );
}

/** The measured samples of one side a median is taken over: the undisturbed ones, or all. */
export function medianSamples(samples: readonly BillingSample[], side: string): BillingSample[] {
  return undisturbedOrAll(samples, side, isDisturbed);
}

/** The median of `figure` over medianSamples. */
export function medianOf(
  samples: readonly BillingSample[],
  side: string,
  figure: (sample: BillingSample) => number,
): number {
  return finiteMedian(medianSamples(samples, side).map(figure));
}

/** `median of 3`, or `median of 2 undisturbed (1 disturbed left out)`. */
export function describeMedian(samples: readonly BillingSample[], side: string): string {
  const all = samples.filter((sample) => !sample.warmUp && sample.side === side).length;
  const used = medianSamples(samples, side).length;
  const left = all - used;
  return left === 0
    ? `median of ${used}`
    : `median of ${used} undisturbed (${left} disturbed left out)`;
}

/**
 * figure(subject) / figure(baseline) within each round, in the order run: the two samples of
 * the round are at most a few samples apart.
 */
export function roundRatios(
  samples: readonly BillingSample[],
  subject: string,
  baseline: string,
  figure: (sample: BillingSample) => number,
): number[] {
  const measured = samples.filter((sample) => !sample.warmUp);
  const ofSide = (side: string) => measured.filter((sample) => sample.side === side);
  const subjects = ofSide(subject);
  const baselines = ofSide(baseline);
  const ratios: number[] = [];
  for (let round = 0; round < Math.min(subjects.length, baselines.length); round++) {
    ratios.push(
      figure(subjects[round] as BillingSample) / figure(baselines[round] as BillingSample),
    );
  }
  return ratios;
}

/** `3 disturbed attempts rerun; 1 sample kept though disturbed`, or ''. */
export function describeNoise(samples: readonly BillingSample[]): string {
  const measured = samples.filter((sample) => !sample.warmUp);
  const rerun = measured.reduce((sum, sample) => sum + sample.discarded.length, 0);
  const kept = measured.filter(isDisturbed).length;
  const plural = (count: number, noun: string) => `${count} ${noun}${count === 1 ? '' : 's'}`;
  return [
    rerun > 0 ? `${plural(rerun, 'disturbed attempt')} rerun` : '',
    kept > 0 ? `${plural(kept, 'sample')} kept though disturbed` : '',
  ]
    .filter((part) => part !== '')
    .join('; ');
}

/** Enqueue rate of a distributed sample: jobs added / enqueueMs (the import not included). */
export function enqueueJobsPerSecond(sample: BillingSample): number {
  const summary = sample.enqueue?.summary;
  return summary ? (summary.queued * 1_000) / summary.enqueueMs : Number.NaN;
}

/** The largest peak RSS among the sample's billing processes (the engine, or its workers). */
export function billingPeakRssBytes(sample: BillingSample): number | undefined {
  if (sample.local) return sample.local.summary?.peakRssBytes;
  const peaks = sample.workers.map((worker) => worker.peakRssBytes ?? Number.NaN);
  return peaks.length > 0 ? Math.max(...peaks) : undefined;
}

/** Redis bytes per user of a key-memory reading. */
export function bytesPerUser(memory: KeyMemory | undefined, users: number): number | undefined {
  return memory === undefined ? undefined : memory.bytes / users;
}

function describeSample(sample: BillingSample): string {
  const findings = [...sample.violations, ...sample.problems];
  const count = sample.discarded.length;
  return (
    `${formatSeconds(sample.spanMs)}, ${formatCount(sample.chargesPerSecond)} charges/s` +
    (sample.enqueue?.summary
      ? ` (enqueue ${formatSeconds(sample.enqueue.summary.enqueueMs)}, ${formatCount(enqueueJobsPerSecond(sample))} jobs/s)`
      : '') +
    (count === 0 ? '' : ` (${count} disturbed attempt${count === 1 ? '' : 's'} thrown away)`) +
    (isDisturbed(sample) ? ' (disturbed)' : '') +
    (findings.length > 0 ? `; ${findings.join('; ')}` : '')
  );
}

/** The per-sample table of the distributed scenarios. */
export function billingSampleTable(samples: readonly BillingSample[]): string {
  const rows = samples.map((sample, at) => {
    const charges = sample.users;
    const perCharge = (ms: number | undefined) =>
      ms === undefined ? '' : formatMicroseconds((ms * 1_000) / charges);
    const split = sample.workers
      .map((worker) => formatCount(worker.ended?.charged ?? 0))
      .join(' / ');
    return [
      String(at + 1),
      sample.warmUp ? `${sample.side} (warm-up)` : sample.side,
      formatCount(sample.users),
      formatSeconds(sample.spanMs),
      sample.providerSpanMs === undefined ? 'n/a' : formatSeconds(sample.providerSpanMs),
      formatCount(sample.chargesPerSecond),
      sample.enqueue?.summary
        ? `${formatSeconds(sample.enqueue.summary.enqueueMs)} (${formatCount(enqueueJobsPerSecond(sample))}/s)`
        : '',
      sample.workerStartMs === undefined ? '' : formatSeconds(sample.workerStartMs),
      sample.local?.summary ? formatSeconds(sample.local.summary.wallMs) : '',
      formatSeconds(sample.elapsedMs),
      formatMebibytes(billingPeakRssBytes(sample)),
      [
        formatCpuShare(sample.billingCpuMs, sample.cpuWindowMs),
        formatCpuShare(sample.mockCpuMs, sample.cpuWindowMs),
        sample.redisCpuMs === undefined
          ? '–'
          : formatCpuShare(sample.redisCpuMs, sample.cpuWindowMs),
        formatCpuShare(sample.otherCpuMs, sample.cpuWindowMs),
      ].join(' / '),
      `${perCharge(sample.billingCpuMs)}${sample.redisCpuMs === undefined ? '' : ` / ${perCharge(sample.redisCpuMs)}`}`,
      sample.redisCommands === undefined ? '' : (sample.redisCommands / charges).toFixed(1),
      split,
      describeQuietWait(sample.quietWait),
      String(sample.discarded.length),
      sample.providerStats
        ? `${formatCount(sample.providerStats.charges)} / ${formatCount(sample.providerStats.duplicate_charges)}`
        : '',
      [
        ...sample.violations.map((violation) => `CORRECTNESS VIOLATION: ${violation}`),
        ...sample.problems,
        ...(isDisturbed(sample) ? ['disturbed (over 30% of a core used by others)'] : []),
      ].join('; ') || 'ok',
    ];
  });
  return [
    `Span: distributed, from resuming the paused queue (every worker started and waiting) to the first reading of the Redis ledger that counted every charge ended; local, from the first reading of the mock provider's GET /stats that counted a request to the first that counted every charge (readings every ${WATCH_INTERVAL_MS} ms). Provider span: the latter, for both sides. Charges/s: users / span.`,
    "Enqueue: `bulkbill enqueue`'s own enqueueMs (adding the jobs; the import into the ledger before it is not included) and jobs / enqueueMs; not part of the span. Workers start: spawning the workers to the last `worker started` log line, not part of the span. Wall (local): the engine's wallMs, import and report included. Peak RSS: the engine's (from its summary), or the largest of the workers' (maxRSS at exit). Elapsed: local, spawn to exit; distributed, resume to the last worker's exit (an idle worker notices within 500 ms).",
    "CPU: share of one core over the elapsed time (local) or the span (distributed), used by the billing processes (the engine, or every worker) / the mock provider / the Redis server (every client's commands, the other sessions' included) / everything else. CPU per charge: the billing processes' / Redis's. Redis commands per charge: the server's total_commands_processed growth over the span / users (commands inside Lua scripts included). Charged per worker: from each worker's `worker ended` log line.",
    '',
    markdownTable(
      [
        '#',
        'side',
        'users',
        'span',
        'provider span',
        'charges/s',
        'enqueue',
        'workers start',
        'wall (local)',
        'elapsed',
        'peak RSS',
        'CPU billing / mock / Redis / other',
        'CPU per charge billing / Redis',
        'Redis cmds per charge',
        'charged per worker',
        'waited for quiet',
        'disturbed, rerun',
        'charges / duplicates',
        'checks',
      ],
      rows,
      ['right', 'left', ...Array<'right'>(16).fill('right'), 'left'],
    ),
  ].join('\n');
}
