import {
  type BillingSample,
  type BillingSide,
  billingSampleTable,
  bytesPerUser,
  describeMedian,
  describeNoise,
  enqueueJobsPerSecond,
  medianOf,
  medianSamples,
  roundRatios,
  runDistributedVersusLocal,
  sideName,
} from '../lib/distributed-versus-local.js';
import { findingsOf } from '../lib/engine-versus-bare.js';
import {
  formatCount,
  formatMicroseconds,
  formatRatio,
  formatSeconds,
  finiteMedian as median,
} from '../lib/figures.js';
import type { BenchSettings, ScenarioReport, SummaryRow, Verdict } from '../lib/report.js';

export const DISTRIBUTED_THROUGHPUT = 'distributed-throughput';

/** In flight at most, every side: the local engine's concurrency in engine-100k-throughput. */
const TOTAL_CONCURRENCY = 256;
const LOCAL: BillingSide = { kind: 'local', concurrency: TOTAL_CONCURRENCY };
/** 1, 2 and 4 workers sharing the 256 in flight. */
const DISTRIBUTED: readonly BillingSide[] = [1, 2, 4].map((workers) => ({
  kind: 'distributed',
  workers,
  concurrency: TOTAL_CONCURRENCY / workers,
}));

export interface DistributedThroughputRaw {
  readonly users: number;
  readonly totalConcurrency: number;
  /** Median charges/s per side (users / span). */
  readonly medianChargesPerSecond: Readonly<Record<string, number>>;
  /** Median charges/s per side over the provider span (first request to last charge). */
  readonly medianProviderChargesPerSecond: Readonly<Record<string, number>>;
  /** distributed side / local, medians. */
  readonly ratios: Readonly<Record<string, number>>;
  /** distributed side / local within each round. */
  readonly roundRatios: Readonly<Record<string, readonly number[]>>;
  /** The best distributed median: the ceiling of one queue on this machine. */
  readonly ceilingChargesPerSecond: number;
  readonly medianEnqueueJobsPerSecond: number;
  readonly samples: readonly BillingSample[];
}

/**
 * 100,000 users at zero latency, 256 in flight in all: charges/s of 1, 2 and 4 `bulkbill worker`
 * processes on one BullMQ queue beside the local engine on SQLite, in the same run. What the
 * queue costs per charge, and the most one queue bills per second on this machine.
 */
export async function runDistributedThroughput(
  settings: BenchSettings,
): Promise<ScenarioReport<DistributedThroughputRaw>> {
  const users = settings.quick ? 10_000 : 100_000;
  const sides = [LOCAL, ...DISTRIBUTED];
  const { samples } = await runDistributedVersusLocal({
    scenario: DISTRIBUTED_THROUGHPUT,
    latency: '0',
    users,
    sides,
    rounds: settings.quick ? 1 : 3,
    // Lets V8 optimise the mock provider's and Redis's paths, and warms the disk and tsx caches.
    warmUp: {
      users: settings.quick ? 2_000 : 20_000,
      sides: [LOCAL, DISTRIBUTED[0] as BillingSide],
    },
    settings,
  });

  const local = sideName(LOCAL);
  const names = sides.map(sideName);
  const chargesPerSecond = (sample: BillingSample) => sample.chargesPerSecond;
  const providerChargesPerSecond = (sample: BillingSample) =>
    sample.providerSpanMs === undefined
      ? Number.NaN
      : (sample.users * 1_000) / sample.providerSpanMs;
  const medianChargesPerSecond = Object.fromEntries(
    names.map((name) => [name, medianOf(samples, name, chargesPerSecond)]),
  );
  const medianProviderChargesPerSecond = Object.fromEntries(
    names.map((name) => [name, medianOf(samples, name, providerChargesPerSecond)]),
  );
  const localRate = medianChargesPerSecond[local] as number;
  const distributedNames = DISTRIBUTED.map(sideName);
  const ratios = Object.fromEntries(
    distributedNames.map((name) => [name, (medianChargesPerSecond[name] as number) / localRate]),
  );
  const perRound = Object.fromEntries(
    distributedNames.map((name) => [name, roundRatios(samples, name, local, chargesPerSecond)]),
  );
  const ceilingChargesPerSecond = Math.max(
    ...distributedNames.map((name) => medianChargesPerSecond[name] as number),
  );
  const distributedSamples = samples.filter(
    (sample) => !sample.warmUp && sample.kind === 'distributed',
  );
  const medianEnqueueJobsPerSecond = median(distributedSamples.map(enqueueJobsPerSecond));
  const { violations, problems } = findingsOf(samples);
  const clean = violations.length === 0 && problems.length === 0;
  const verdict: Verdict = clean ? 'PASS' : 'FAIL';
  const correctness =
    violations.length > 0
      ? `CORRECTNESS VIOLATION: ${violations.join('; ')}`
      : 'no duplicate charge, provider charges = users in every sample';

  const rows: SummaryRow[] = DISTRIBUTED.map((side) => {
    const name = sideName(side);
    const medianOfSide = (figure: (sample: BillingSample) => number) =>
      medianOf(samples, name, figure);
    const billingCpu = medianOfSide(
      (sample) => ((sample.billingCpuMs ?? Number.NaN) * 1_000) / sample.users,
    );
    const redisCpu = medianOfSide(
      (sample) => ((sample.redisCpuMs ?? Number.NaN) * 1_000) / sample.users,
    );
    const commands = medianOfSide((sample) => (sample.redisCommands ?? Number.NaN) / sample.users);
    return {
      scenario: DISTRIBUTED_THROUGHPUT,
      measure: `charges/s (users / span, first job to last outcome) at zero latency, ${formatCount(TOTAL_CONCURRENCY)} in flight in all, n=${formatCount(users)}; local: ${describeMedian(samples, local)}; ${name}: ${describeMedian(samples, name)}`,
      baseline: `local engine (SQLite) c=${TOTAL_CONCURRENCY} ${formatCount(localRate)}`,
      subject: `${name} ${formatCount(medianChargesPerSecond[name] as number)}`,
      ratio: formatRatio(ratios[name] as number),
      target: 'informational',
      verdict,
      checks: [
        `per round ${(perRound[name] ?? []).map(formatRatio).join(', ')}`,
        `provider span: ${formatCount(medianProviderChargesPerSecond[name] as number)} against ${formatCount(medianProviderChargesPerSecond[local] as number)}`,
        `CPU per charge: workers ${formatMicroseconds(billingCpu)}, Redis ${formatMicroseconds(redisCpu)}, ${commands.toFixed(1)} Redis commands`,
      ].join('; '),
    };
  });
  const [first, ...more] = rows;
  const localSamples = medianSamples(samples, local);
  const localBillingCpu = median(
    localSamples.map((sample) => ((sample.billingCpuMs ?? Number.NaN) * 1_000) / sample.users),
  );
  const afterRun = median(
    distributedSamples.map(
      (sample) => bytesPerUser(sample.memoryAfterRun, sample.users) ?? Number.NaN,
    ),
  );
  const overall = [
    correctness,
    problems.length > 0
      ? problems.join('; ')
      : 'every process exit 0, one request per user, no job left in Redis',
    `ceiling of one queue here: ${formatCount(ceilingChargesPerSecond)} charges/s`,
    `enqueue median ${formatCount(medianEnqueueJobsPerSecond)} jobs/s`,
    `Redis keys left after a run: ${afterRun.toFixed(0)} bytes per user`,
    `local engine CPU per charge ${formatMicroseconds(localBillingCpu)} (over its whole process)`,
    describeNoise(samples),
  ]
    .filter((part) => part !== '')
    .join('; ');

  return {
    summary: { ...(first as SummaryRow), checks: `${first?.checks ?? ''}; ${overall}` },
    moreSummaries: more,
    details: [
      `### ${DISTRIBUTED_THROUGHPUT}: every sample`,
      '',
      `Medians, charges/s: ${names.map((name) => `${name} ${formatCount(medianChargesPerSecond[name] as number)}`).join(', ')}. Over the provider span: ${names.map((name) => `${name} ${formatCount(medianProviderChargesPerSecond[name] as number)}`).join(', ')}. Distributed / local per round: ${distributedNames.map((name) => `${name} ${(perRound[name] ?? []).map(formatRatio).join(', ')}`).join('; ')}. Local engine wall (import and report included), median: ${formatSeconds(medianOf(samples, local, (sample) => sample.local?.summary?.wallMs ?? Number.NaN))}.`,
      '',
      billingSampleTable(samples),
    ].join('\n'),
    raw: {
      users,
      totalConcurrency: TOTAL_CONCURRENCY,
      medianChargesPerSecond,
      medianProviderChargesPerSecond,
      ratios,
      roundRatios: perRound,
      ceilingChargesPerSecond,
      medianEnqueueJobsPerSecond,
      samples,
    },
  };
}
