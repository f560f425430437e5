import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_QUEUE } from '../../src/engine/distributed/jobs.js';
import { type BareEnqueueResult, runBareEnqueue } from '../lib/bare-enqueue.js';
import {
  type EnqueueProcessResult,
  type QueuePlace,
  runEnqueueProcess,
} from '../lib/distributed-process.js';
import {
  type BillingSample,
  type BillingSide,
  billingSampleTable,
  enqueueJobsPerSecond,
  keyGroupOf,
  runDistributedVersusLocal,
} from '../lib/distributed-versus-local.js';
import { findingsOf } from '../lib/engine-versus-bare.js';
import { formatCount, formatMebibytes, formatRatio, formatSeconds } from '../lib/figures.js';
import { describeQuietWait, type QuietWait, waitForQuietMachine } from '../lib/quiet-machine.js';
import {
  deleteKeysUnder,
  describeRedisServer,
  type KeyMemory,
  memoryUnder,
  openBenchRedis,
  redisServerCounters,
  uniqueBenchPrefix,
} from '../lib/redis-admin.js';
import {
  type BenchSettings,
  markdownTable,
  type ScenarioReport,
  type SummaryRow,
  type Verdict,
} from '../lib/report.js';
import { writeUsersCsv } from '../lib/users-file.js';

export const DISTRIBUTED_ENQUEUE_1M = 'distributed-enqueue-1m';

/** Billing the enqueued users to see what Redis keeps afterwards: 4 workers, 256 in flight. */
const BILLING: BillingSide = { kind: 'distributed', workers: 4, concurrency: 64 };
/** Bounded memory: the enqueue's peak RSS at n users at most this many times its peak at n/10. */
const TARGET_PEAK_GROWTH = 1.25;

/** One `bulkbill enqueue` of its own, outside the billing sample. */
export interface EnqueueOnly {
  readonly users: number;
  readonly result: EnqueueProcessResult;
  readonly quietWait: QuietWait;
}

export interface BareEnqueueSample extends BareEnqueueResult {
  readonly memory: KeyMemory;
  /** Redis used_memory growth, bytes. */
  readonly usedMemoryBytes: number;
  readonly quietWait: QuietWait;
  /** How long deleting its keys took (SCAN + UNLINK in batches of 1,000), in ms. */
  readonly deleteMs: number;
}

export interface DistributedEnqueue1mRaw {
  readonly users: number;
  readonly redis: string;
  readonly small: EnqueueOnly;
  readonly bare: BareEnqueueSample;
  readonly billing: BillingSample | undefined;
  readonly enqueueJobsPerSecond: number;
  readonly importRowsPerSecond: number;
  readonly peakRssBytes: { readonly small: number; readonly large: number };
  readonly bytesPerUser: {
    readonly bareJobs: number;
    readonly afterEnqueue: number;
    readonly afterRun: number;
    readonly afterEnqueueUsedMemory: number;
    readonly afterRunUsedMemory: number;
  };
}

/**
 * `bulkbill enqueue` of a 1,000,000-row CSV: jobs/s beside BullMQ's own addBulk of the same
 * jobs, the enqueue process's peak RSS beside its peak at 100,000 rows (memory must not grow
 * with the input), and what Redis holds per user once enqueued and once billed (4 workers at
 * zero latency bill them all; finished jobs are removed, the ledger stays).
 */
export async function runDistributedEnqueue1m(
  settings: BenchSettings,
): Promise<ScenarioReport<DistributedEnqueue1mRaw>> {
  const users = settings.quick ? 100_000 : 1_000_000;
  const smallUsers = users / 10;
  const { progress } = settings;
  const redis = await openBenchRedis(settings.redisUrl);
  const workDir = await mkdtemp(join(tmpdir(), `bulkbill-bench-${DISTRIBUTED_ENQUEUE_1M}-`));
  let small: EnqueueOnly;
  let bare: BareEnqueueSample;
  let redisDescription: string;
  try {
    redisDescription = await describeRedisServer(redis);
    const redisPid = (await redisServerCounters(redis)).pid;
    const serverPids = redisPid === undefined ? [] : [redisPid];

    // The same command at a tenth of the size: its peak RSS is what "bounded" is measured against.
    const smallFile = await writeUsersCsv(join(workDir, `users-${smallUsers}.csv`), smallUsers);
    const smallPlace: QueuePlace = {
      redisUrl: settings.redisUrl,
      prefix: uniqueBenchPrefix(),
      queue: DEFAULT_QUEUE,
    };
    try {
      const quietWait = await waitForQuietMachine({ serverPids });
      const result = await runEnqueueProcess(
        smallPlace,
        smallFile.path,
        `bench-${DISTRIBUTED_ENQUEUE_1M}-small`,
        settings.engineNodeArgs,
      );
      small = { users: smallUsers, result, quietWait };
      progress(
        `${DISTRIBUTED_ENQUEUE_1M}: enqueued ${formatCount(smallUsers)} in ${formatSeconds(result.elapsedMs)}, peak RSS ${formatMebibytes(result.peakRssBytes)}`,
      );
    } finally {
      await deleteKeysUnder(redis, smallPlace.prefix);
    }

    // The baseline: BullMQ's addBulk of the same jobs, no ledger, no file.
    const barePlace: QueuePlace = {
      redisUrl: settings.redisUrl,
      prefix: uniqueBenchPrefix(),
      queue: DEFAULT_QUEUE,
    };
    try {
      const quietWait = await waitForQuietMachine({ serverPids });
      const before = (await redisServerCounters(redis)).usedMemoryBytes;
      const result = await runBareEnqueue({
        redisUrl: settings.redisUrl,
        prefix: barePlace.prefix,
        queue: barePlace.queue,
        runId: `bench-${DISTRIBUTED_ENQUEUE_1M}-bare`,
        jobs: users,
      });
      const usedMemoryBytes = (await redisServerCounters(redis)).usedMemoryBytes - before;
      const memory = await memoryUnder(redis, barePlace.prefix, keyGroupOf(barePlace));
      const deleteStarted = performance.now();
      await deleteKeysUnder(redis, barePlace.prefix);
      bare = {
        ...result,
        memory,
        usedMemoryBytes,
        quietWait,
        deleteMs: performance.now() - deleteStarted,
      };
      progress(
        `${DISTRIBUTED_ENQUEUE_1M}: bare addBulk of ${formatCount(users)} jobs in ${formatSeconds(result.wallMs)} (${formatCount(result.jobsPerSecond)} jobs/s), ${(memory.bytes / users).toFixed(0)} bytes per job; deleted in ${formatSeconds(bare.deleteMs)}`,
      );
    } finally {
      await deleteKeysUnder(redis, barePlace.prefix);
    }
  } finally {
    redis.disconnect();
    await rm(workDir, { recursive: true, force: true });
  }

  // The subject: `bulkbill enqueue` of the whole file, then four workers bill it to the end.
  const { samples, input } = await runDistributedVersusLocal({
    scenario: DISTRIBUTED_ENQUEUE_1M,
    latency: '0',
    users,
    sides: [BILLING],
    rounds: 1,
    // A rerun costs minutes.
    maxAttempts: 1,
    memoryAfterEnqueue: true,
    settings,
  });
  const billing = samples[0];
  const enqueue = billing?.enqueue;
  const summary = enqueue?.summary;
  const jobsPerSecond = billing ? enqueueJobsPerSecond(billing) : Number.NaN;
  const importRowsPerSecond = summary ? (users * 1_000) / summary.importMs : Number.NaN;
  const peakRssBytes = {
    small: small.result.peakRssBytes ?? Number.NaN,
    large: enqueue?.peakRssBytes ?? Number.NaN,
  };
  const growth = peakRssBytes.large / peakRssBytes.small;
  const afterEnqueue = billing?.memoryAfterEnqueue;
  const afterRun = billing?.memoryAfterRun;
  const perUser = (bytes: number | undefined) => (bytes ?? Number.NaN) / users;
  const bytesPerUser = {
    bareJobs: perUser(bare.memory.bytes),
    afterEnqueue: perUser(afterEnqueue?.bytes),
    afterRun: perUser(afterRun?.bytes),
    afterEnqueueUsedMemory: perUser(billing?.usedMemoryAfterEnqueueBytes),
    afterRunUsedMemory: perUser(billing?.usedMemoryAfterRunBytes),
  };
  const groups = (memory: KeyMemory | undefined) =>
    memory === undefined
      ? 'n/a'
      : Object.entries(memory.groups)
          .sort(([a], [b]) => a.localeCompare(b))
          .map(
            ([name, group]) =>
              `${name} ${(group.bytes / users).toFixed(1)} B/user (${formatCount(group.keys)} keys)`,
          )
          .join(', ');

  const { violations, problems } = findingsOf(samples);
  if (small.result.exitCode !== 0 || small.result.summary?.queued !== smallUsers) {
    problems.push(`the ${formatCount(smallUsers)}-user enqueue: exit ${small.result.exitCode}`);
  }
  const clean = violations.length === 0 && problems.length === 0;
  const verdictOf = (met: boolean): Verdict => (met && clean ? 'PASS' : 'FAIL');
  const correctness = [
    violations.length > 0
      ? `CORRECTNESS VIOLATION: ${violations.join('; ')}`
      : 'no duplicate charge, provider charges = users',
    problems.length > 0 ? problems.join('; ') : 'every process exit 0, no job left in Redis',
  ].join('; ');

  const rows: SummaryRow[] = [
    {
      scenario: DISTRIBUTED_ENQUEUE_1M,
      measure: `jobs added per second (queued / enqueueMs, the import before it excluded), ${formatCount(users)} users, 1 sample each`,
      baseline: `bare BullMQ addBulk ${formatCount(bare.jobsPerSecond)}`,
      subject: `bulkbill enqueue ${formatCount(jobsPerSecond)}`,
      ratio: formatRatio(jobsPerSecond / bare.jobsPerSecond),
      target: 'informational',
      verdict: verdictOf(true),
      checks: [
        summary
          ? `import ${formatSeconds(summary.importMs)} (${formatCount(importRowsPerSecond)} rows/s) then enqueue ${formatSeconds(summary.enqueueMs)}; process ${formatSeconds(enqueue?.elapsedMs ?? Number.NaN)} from spawn to exit`
          : 'enqueue printed no --json summary',
        correctness,
      ].join('; '),
    },
    {
      scenario: DISTRIBUTED_ENQUEUE_1M,
      measure: `peak RSS of \`bulkbill enqueue\` (maxRSS at exit), ${formatCount(users)} users against ${formatCount(smallUsers)}`,
      baseline: `${formatCount(smallUsers)} users ${formatMebibytes(peakRssBytes.small)}`,
      subject: `${formatCount(users)} users ${formatMebibytes(peakRssBytes.large)}`,
      ratio: formatRatio(growth),
      target: `≤ ${formatRatio(TARGET_PEAK_GROWTH)} (bounded: does not grow with the input)`,
      verdict: verdictOf(growth <= TARGET_PEAK_GROWTH),
      checks: `${formatCount(peakRssBytes.large)} bytes; the local engine's budget in engine-1m-import is 200 MiB`,
    },
    {
      scenario: DISTRIBUTED_ENQUEUE_1M,
      measure: `Redis bytes per user once enqueued (MEMORY USAGE summed over the run's keys), ${formatCount(users)} users`,
      baseline: `bare addBulk jobs ${bytesPerUser.bareJobs.toFixed(0)}`,
      subject: `bulkbill enqueue ${bytesPerUser.afterEnqueue.toFixed(0)}`,
      ratio: formatRatio(bytesPerUser.afterEnqueue / bytesPerUser.bareJobs),
      target: 'informational',
      verdict: verdictOf(true),
      checks: `${groups(afterEnqueue)}; used_memory growth ${bytesPerUser.afterEnqueueUsedMemory.toFixed(0)} B/user (bare: ${(bare.usedMemoryBytes / users).toFixed(0)}; a shared Redis, other clients' keys included)`,
    },
    {
      scenario: DISTRIBUTED_ENQUEUE_1M,
      measure: `Redis bytes per user once every charge has ended (jobs removed on completion), ${formatCount(users)} users`,
      baseline: `once enqueued ${bytesPerUser.afterEnqueue.toFixed(0)}`,
      subject: `after the run ${bytesPerUser.afterRun.toFixed(0)}`,
      ratio: formatRatio(bytesPerUser.afterRun / bytesPerUser.afterEnqueue),
      target: 'informational',
      verdict: verdictOf(true),
      checks: `${groups(afterRun)}; used_memory growth ${bytesPerUser.afterRunUsedMemory.toFixed(0)} B/user; billed by ${billing?.side ?? '?'} at zero latency in ${formatSeconds(billing?.spanMs ?? Number.NaN)} (${formatCount(billing?.chargesPerSecond ?? Number.NaN)} charges/s)`,
    },
  ];
  const [first, ...more] = rows;

  const enqueueTable = markdownTable(
    [
      'what',
      'users',
      'elapsed',
      'import',
      'adding jobs',
      'jobs/s',
      'peak RSS',
      'Redis bytes per user',
      'waited for quiet',
    ],
    [
      [
        `bulkbill enqueue (${formatCount(smallUsers)})`,
        formatCount(smallUsers),
        formatSeconds(small.result.elapsedMs),
        formatSeconds(small.result.summary?.importMs ?? Number.NaN),
        formatSeconds(small.result.summary?.enqueueMs ?? Number.NaN),
        formatCount(
          ((small.result.summary?.queued ?? Number.NaN) * 1_000) /
            (small.result.summary?.enqueueMs ?? Number.NaN),
        ),
        formatMebibytes(small.result.peakRssBytes),
        '',
        describeQuietWait(small.quietWait),
      ],
      [
        'bare BullMQ addBulk (in the bench process)',
        formatCount(users),
        formatSeconds(bare.wallMs),
        '',
        formatSeconds(bare.wallMs),
        formatCount(bare.jobsPerSecond),
        '',
        (bare.memory.bytes / users).toFixed(1),
        describeQuietWait(bare.quietWait),
      ],
      [
        `bulkbill enqueue (${formatCount(users)})`,
        formatCount(users),
        formatSeconds(enqueue?.elapsedMs ?? Number.NaN),
        formatSeconds(summary?.importMs ?? Number.NaN),
        formatSeconds(summary?.enqueueMs ?? Number.NaN),
        formatCount(jobsPerSecond),
        formatMebibytes(enqueue?.peakRssBytes),
        bytesPerUser.afterEnqueue.toFixed(1),
        '',
      ],
    ],
    ['left', 'right', 'right', 'right', 'right', 'right', 'right', 'right', 'right'],
  );

  return {
    summary: first as SummaryRow,
    moreSummaries: more,
    details: [
      `### ${DISTRIBUTED_ENQUEUE_1M}: every sample`,
      '',
      `${redisDescription}. Input: ${formatCount(users)} rows, ${formatMebibytes(input.bytes)}. Redis memory by key group, once enqueued: ${groups(afterEnqueue)}; after the run: ${groups(afterRun)} (MEMORY USAGE … SAMPLES 0 over every key of the run's prefix; the events stream is capped by BullMQ at about 10,000 entries whatever the run's size). Deleting the bare baseline's ${formatCount(users)} jobs (SCAN + UNLINK, 1,000 keys a call) took ${formatSeconds(bare.deleteMs)}.`,
      '',
      enqueueTable,
      '',
      'The billing sample (enqueue, then the workers bill every user; columns as in distributed-throughput):',
      '',
      billingSampleTable(samples),
    ].join('\n'),
    raw: {
      users,
      redis: redisDescription,
      small,
      bare,
      billing,
      enqueueJobsPerSecond: jobsPerSecond,
      importRowsPerSecond,
      peakRssBytes,
      bytesPerUser,
    },
  };
}
