import {
  type ChargeSample,
  chargeSampleTable,
  describeMedians,
  describeNoise,
  findingsOf,
  medianOf,
  pairedRatios,
  runEngineVersusBare,
} from '../lib/engine-versus-bare.js';
import { formatCount, formatRatio, formatSeconds } from '../lib/figures.js';
import type { BenchSettings, ScenarioReport, SummaryRow, Verdict } from '../lib/report.js';

export const ENGINE_10K_LATENCY = 'engine-10k-latency';

const LATENCY_MS = 1_600;
const CONCURRENCY = 1_000;
/** The targets: the engine's wall time within 5% of the bare loop's, 10% of Little's bound. */
const TARGET_RATIO_TO_BARE = 1.05;
const TARGET_RATIO_TO_BOUND = 1.1;

export interface Engine10kLatencyRaw {
  readonly users: number;
  readonly concurrency: number;
  readonly latencyMs: number;
  readonly littleBoundMs: number;
  readonly medianWallMs: { readonly engine: number; readonly bare: number };
  /** Median of the engine's elapsed time, Node and tsx startup included. */
  readonly medianEngineElapsedMs: number;
  readonly ratioToBare: number;
  readonly ratioToBound: number;
  /** engine / bare within each back-to-back pair. */
  readonly pairRatios: readonly number[];
  readonly samples: readonly ChargeSample[];
}

/**
 * 10,000 users against a provider that takes 1.6 s per charge, 1,000 at a time: does the engine
 * (ledger, retries, report) bill them as fast as a bare p-limit + undici loop, and near
 * Little's bound n·t/c?
 */
export async function runEngine10kLatency(
  settings: BenchSettings,
): Promise<ScenarioReport<Engine10kLatencyRaw>> {
  const users = settings.quick ? 2_000 : 10_000;
  const samplesPerSide = settings.quick ? 1 : 3;
  // Little's law: n charges, each held t, c at a time, take at least n·t/c.
  const littleBoundMs = (users * LATENCY_MS) / CONCURRENCY;
  const { samples } = await runEngineVersusBare({
    scenario: ENGINE_10K_LATENCY,
    latency: `${LATENCY_MS / 1_000}s`,
    users,
    concurrency: CONCURRENCY,
    samplesPerSide,
    // Small: it only warms the disk cache and tsx's cache; the mock has little to warm at 1.6 s.
    warmUpUsers: CONCURRENCY,
    settings,
  });

  const medianWallMs = {
    engine: medianOf(samples, 'engine', (sample) => sample.wallMs),
    bare: medianOf(samples, 'bare', (sample) => sample.wallMs),
  };
  const medianEngineElapsedMs = medianOf(samples, 'engine', (sample) => sample.elapsedMs);
  const ratioToBare = medianWallMs.engine / medianWallMs.bare;
  const ratioToBound = medianWallMs.engine / littleBoundMs;
  const pairRatios = pairedRatios(samples, (sample) => sample.wallMs);
  const { violations, problems } = findingsOf(samples);
  const checks = [
    violations.length > 0
      ? `CORRECTNESS VIOLATION: ${violations.join('; ')}`
      : 'no duplicate charge, provider charges = users in every sample',
    problems.length > 0 ? problems.join('; ') : 'engine exit 0, one request per user',
    describeNoise(samples.filter((sample) => !sample.warmUp)),
  ]
    .filter((part) => part !== '')
    .join('; ');
  const verdictOf = (met: boolean): Verdict =>
    met && violations.length === 0 && problems.length === 0 ? 'PASS' : 'FAIL';
  const measure = `wall time, latency 1.6 s, c=${formatCount(CONCURRENCY)}, n=${formatCount(users)}; ${describeMedians(samples)}`;
  const subject = `engine ${formatSeconds(medianWallMs.engine)} (${formatSeconds(medianEngineElapsedMs)} with startup)`;
  const againstBare: SummaryRow = {
    scenario: ENGINE_10K_LATENCY,
    measure,
    baseline: `bare loop ${formatSeconds(medianWallMs.bare)}`,
    subject,
    ratio: formatRatio(ratioToBare),
    target: `engine / bare ≤ ${formatRatio(TARGET_RATIO_TO_BARE)}`,
    verdict: verdictOf(ratioToBare <= TARGET_RATIO_TO_BARE),
    checks: `paired ratios ${pairRatios.map(formatRatio).join(', ')}; ${checks}`,
  };
  const againstBound: SummaryRow = {
    scenario: ENGINE_10K_LATENCY,
    measure,
    baseline: `Little's bound n·t/c ${formatSeconds(littleBoundMs)}`,
    subject,
    ratio: formatRatio(ratioToBound),
    target: `engine / bound ≤ ${formatRatio(TARGET_RATIO_TO_BOUND)}`,
    verdict: verdictOf(ratioToBound <= TARGET_RATIO_TO_BOUND),
    checks: `bare loop / bound ${formatRatio(medianWallMs.bare / littleBoundMs)}`,
  };

  return {
    summary: againstBare,
    moreSummaries: [againstBound],
    details: [
      `### ${ENGINE_10K_LATENCY}: every sample`,
      '',
      `Little's bound: ${formatCount(users)} × ${formatSeconds(LATENCY_MS)} / ${formatCount(CONCURRENCY)} = ${formatSeconds(littleBoundMs)}. Engine / bare within each back-to-back pair: ${pairRatios.map(formatRatio).join(', ')}.`,
      '',
      chargeSampleTable(samples),
    ].join('\n'),
    raw: {
      users,
      concurrency: CONCURRENCY,
      latencyMs: LATENCY_MS,
      littleBoundMs,
      medianWallMs,
      medianEngineElapsedMs,
      ratioToBare,
      ratioToBound,
      pairRatios,
      samples,
    },
  };
}
