import {
  type ChargeSample,
  chargeSampleTable,
  describeNoise,
  findingsOf,
  runEngineVersusBare,
} from '../lib/engine-versus-bare.js';
import { formatCount, formatMebibytes, formatRatio, formatSeconds } from '../lib/figures.js';
import type { ProcessMemory } from '../lib/os-counters.js';
import type { BenchSettings, ScenarioReport, Verdict } from '../lib/report.js';

export const ENGINE_1M_IMPORT = 'engine-1m-import';

const CONCURRENCY = 256;
/** The target: the whole run, 1,000,000 users, stays within 200 MB resident. */
const TARGET_PEAK_RSS_BYTES = 200 * 1_048_576;

export interface Engine1mImportRaw {
  readonly users: number;
  readonly concurrency: number;
  readonly inputBytes: number;
  readonly inputWriteMs: number;
  readonly engine: {
    readonly wallMs: number;
    readonly elapsedMs: number;
    readonly importMs: number;
    /** rows / importMs. */
    readonly importRowsPerSecond: number;
    readonly chargesPerSecond: number;
    readonly peakRssBytes: number;
  };
  readonly bareChargesPerSecond: number;
  /** engine / bare charges/s. */
  readonly ratio: number;
  readonly targetPeakRssBytes: number;
  /** The mock provider at the end, VmHWM its peak over both samples. */
  readonly providerMemory: ProcessMemory | undefined;
  readonly samples: readonly ChargeSample[];
}

/**
 * A 1,000,000-row CSV billed end to end at zero latency, 256 at a time: the import rate, the
 * engine's peak memory (the input is streamed, never held), and charges/s beside the bare loop.
 * One sample of each side: it is long.
 */
export async function runEngine1mImport(
  settings: BenchSettings,
): Promise<ScenarioReport<Engine1mImportRaw>> {
  const users = settings.quick ? 100_000 : 1_000_000;
  const { samples, input, providerMemory } = await runEngineVersusBare({
    scenario: ENGINE_1M_IMPORT,
    latency: '0',
    users,
    concurrency: CONCURRENCY,
    samplesPerSide: 1,
    // A rerun costs minutes: one more attempt at most when neighbours disturb a sample.
    maxAttempts: 2,
    settings,
  });
  const engineSample = samples.find((sample) => sample.side === 'engine');
  const bareSample = samples.find((sample) => sample.side === 'bare');
  const summary = engineSample?.engine?.summary;
  const importMs = summary?.importMs ?? Number.NaN;
  const engine = {
    wallMs: engineSample?.wallMs ?? Number.NaN,
    elapsedMs: engineSample?.elapsedMs ?? Number.NaN,
    importMs,
    importRowsPerSecond: (users * 1_000) / importMs,
    chargesPerSecond: engineSample?.chargesPerSecond ?? Number.NaN,
    peakRssBytes: summary?.peakRssBytes ?? Number.NaN,
  };
  const bareChargesPerSecond = bareSample?.chargesPerSecond ?? Number.NaN;
  const ratio = engine.chargesPerSecond / bareChargesPerSecond;
  const { violations, problems } = findingsOf(samples);
  const clean = violations.length === 0 && problems.length === 0;
  const correctness =
    violations.length > 0
      ? `CORRECTNESS VIOLATION: ${violations.join('; ')}`
      : 'no duplicate charge, provider charges = users';
  const noise = describeNoise(samples);
  const providerRss = samples
    .map((sample) => `${formatMebibytes(sample.providerRssBytes)} after the ${sample.side} sample`)
    .join(', ');
  const rssVerdict: Verdict =
    engine.peakRssBytes <= TARGET_PEAK_RSS_BYTES && clean ? 'PASS' : 'FAIL';
  const rateVerdict: Verdict = clean ? 'PASS' : 'FAIL';

  return {
    summary: {
      scenario: ENGINE_1M_IMPORT,
      measure: `peak RSS of the engine (maxRSS), ${formatCount(users)}-row CSV billed end to end, 1 sample`,
      baseline: `budget ${formatMebibytes(TARGET_PEAK_RSS_BYTES)}`,
      subject: `engine ${formatMebibytes(engine.peakRssBytes)}`,
      ratio: formatRatio(engine.peakRssBytes / TARGET_PEAK_RSS_BYTES),
      target: `≤ 200 MB (${formatCount(TARGET_PEAK_RSS_BYTES)} bytes)`,
      verdict: rssVerdict,
      checks: [
        correctness,
        problems.length > 0 ? problems.join('; ') : 'engine exit 0, one request per user',
        `import ${formatCount(users)} rows in ${formatSeconds(importMs)}: ${formatCount(engine.importRowsPerSecond)} rows/s`,
        noise,
      ]
        .filter((part) => part !== '')
        .join('; '),
    },
    moreSummaries: [
      {
        scenario: ENGINE_1M_IMPORT,
        measure: `charges/s (users / wall) at zero latency, c=${CONCURRENCY}, n=${formatCount(users)}, 1 sample each`,
        baseline: `bare loop ${formatCount(bareChargesPerSecond)}`,
        subject: `engine ${formatCount(engine.chargesPerSecond)} (wall ${formatSeconds(engine.wallMs)})`,
        ratio: formatRatio(ratio),
        target: 'informational',
        verdict: rateVerdict,
        checks: `mock provider RSS ${providerRss}, peak ${formatMebibytes(providerMemory?.peakRssBytes)}`,
      },
    ],
    details: [
      `### ${ENGINE_1M_IMPORT}: every sample`,
      '',
      `Input: ${formatCount(users)} rows, ${formatMebibytes(input.bytes)}, written in ${formatSeconds(input.writeMs)}. Engine: import ${formatSeconds(importMs)} (${formatCount(engine.importRowsPerSecond)} rows/s), wall ${formatSeconds(engine.wallMs)}, elapsed ${formatSeconds(engine.elapsedMs)}, peak RSS ${formatMebibytes(engine.peakRssBytes)} (${formatCount(engine.peakRssBytes)} bytes; target ≤ ${formatCount(TARGET_PEAK_RSS_BYTES)}). Mock provider: RSS ${providerRss}; peak (VmHWM) ${formatMebibytes(providerMemory?.peakRssBytes)}.`,
      '',
      chargeSampleTable(samples),
    ].join('\n'),
    raw: {
      users,
      concurrency: CONCURRENCY,
      inputBytes: input.bytes,
      inputWriteMs: input.writeMs,
      engine,
      bareChargesPerSecond,
      ratio,
      targetPeakRssBytes: TARGET_PEAK_RSS_BYTES,
      providerMemory,
      samples,
    },
  };
}
