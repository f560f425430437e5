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
import { formatCount, formatMebibytes, formatRatio, formatSeconds } from '../lib/figures.js';
import type { BenchSettings, ScenarioReport, Verdict } from '../lib/report.js';

export const ENGINE_100K_THROUGHPUT = 'engine-100k-throughput';

const CONCURRENCY = 256;
/**
 * The target (issue 8): attempts recorded before they are sent, and still at least 90% of the bare
 * loop's charges/s at zero latency, in one run.
 */
const TARGET_RATIO = 0.9;

export interface Engine100kThroughputRaw {
  readonly users: number;
  readonly concurrency: number;
  readonly medianChargesPerSecond: { readonly engine: number; readonly bare: number };
  /** engine / bare. */
  readonly ratio: number;
  /** engine / bare within each back-to-back pair. */
  readonly pairRatios: readonly number[];
  readonly medianEngineImportMs: number;
  readonly medianEnginePeakRssBytes: number;
  readonly samples: readonly ChargeSample[];
}

/**
 * 100,000 users against a provider that answers at once, 256 at a time: what the engine's
 * ledger, import and report cost per charge next to a bare p-limit + undici loop.
 */
export async function runEngine100kThroughput(
  settings: BenchSettings,
): Promise<ScenarioReport<Engine100kThroughputRaw>> {
  const users = settings.quick ? 20_000 : 100_000;
  const samplesPerSide = settings.quick ? 1 : 3;
  const { samples } = await runEngineVersusBare({
    scenario: ENGINE_100K_THROUGHPUT,
    latency: '0',
    users,
    concurrency: CONCURRENCY,
    samplesPerSide,
    // Enough for V8 to optimise the mock provider's hot paths before anything is measured.
    warmUpUsers: settings.quick ? 5_000 : 20_000,
    settings,
  });

  const medianChargesPerSecond = {
    engine: medianOf(samples, 'engine', (sample) => sample.chargesPerSecond),
    bare: medianOf(samples, 'bare', (sample) => sample.chargesPerSecond),
  };
  const ratio = medianChargesPerSecond.engine / medianChargesPerSecond.bare;
  const pairRatios = pairedRatios(samples, (sample) => sample.chargesPerSecond);
  const medianEngineImportMs = medianOf(
    samples,
    'engine',
    (sample) => sample.engine?.summary?.importMs ?? Number.NaN,
  );
  const medianEnginePeakRssBytes = medianOf(
    samples,
    'engine',
    (sample) => sample.engine?.summary?.peakRssBytes ?? Number.NaN,
  );
  const medianEngineWallMs = medianOf(samples, 'engine', (sample) => sample.wallMs);
  const { violations, problems } = findingsOf(samples);
  const verdict: Verdict =
    ratio >= TARGET_RATIO && violations.length === 0 && problems.length === 0 ? 'PASS' : 'FAIL';

  return {
    summary: {
      scenario: ENGINE_100K_THROUGHPUT,
      measure: `charges/s (users / wall) at zero latency, c=${CONCURRENCY}, n=${formatCount(users)}; ${describeMedians(samples)}`,
      baseline: `bare loop ${formatCount(medianChargesPerSecond.bare)}`,
      subject: `engine ${formatCount(medianChargesPerSecond.engine)}`,
      ratio: formatRatio(ratio),
      target: `engine / bare ≥ ${formatRatio(TARGET_RATIO)}`,
      verdict,
      checks: [
        violations.length > 0
          ? `CORRECTNESS VIOLATION: ${violations.join('; ')}`
          : 'no duplicate charge, provider charges = users in every sample',
        problems.length > 0 ? problems.join('; ') : 'engine exit 0, one request per user',
        `paired ratios ${pairRatios.map(formatRatio).join(', ')}`,
        `engine median wall ${formatSeconds(medianEngineWallMs)} of which import ${formatSeconds(medianEngineImportMs)}`,
        `engine peak RSS ${formatMebibytes(medianEnginePeakRssBytes)}`,
        describeNoise(samples.filter((sample) => !sample.warmUp)),
      ]
        .filter((part) => part !== '')
        .join('; '),
    },
    details: [
      `### ${ENGINE_100K_THROUGHPUT}: every sample`,
      '',
      `Engine / bare charges/s within each back-to-back pair: ${pairRatios.map(formatRatio).join(', ')}. Charging alone (users / (wall − import)), engine median: ${formatCount(medianOf(samples, 'engine', (sample) => (sample.users * 1_000) / (sample.wallMs - (sample.engine?.summary?.importMs ?? 0))))}/s.`,
      '',
      chargeSampleTable(samples),
    ].join('\n'),
    raw: {
      users,
      concurrency: CONCURRENCY,
      medianChargesPerSecond,
      ratio,
      pairRatios,
      medianEngineImportMs,
      medianEnginePeakRssBytes,
      samples,
    },
  };
}
