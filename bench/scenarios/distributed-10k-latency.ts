import {
  type BillingSample,
  type BillingSide,
  billingSampleTable,
  describeMedian,
  describeNoise,
  medianOf,
  roundRatios,
  runDistributedVersusLocal,
  sideName,
} from '../lib/distributed-versus-local.js';
import { findingsOf } from '../lib/engine-versus-bare.js';
import { formatCount, formatRatio, formatSeconds } from '../lib/figures.js';
import type { BenchSettings, ScenarioReport, SummaryRow, Verdict } from '../lib/report.js';

export const DISTRIBUTED_10K_LATENCY = 'distributed-10k-latency';

const LATENCY_MS = 1_600;
const LOCAL: BillingSide = { kind: 'local', concurrency: 1_000 };
const DISTRIBUTED: BillingSide = { kind: 'distributed', workers: 4, concurrency: 250 };
/** The target: four workers bill within 10% of the local engine's time. */
const TARGET_RATIO = 1.1;

export interface Distributed10kLatencyRaw {
  readonly users: number;
  readonly latencyMs: number;
  readonly totalConcurrency: number;
  readonly littleBoundMs: number;
  /** Median spans of each side, in ms. */
  readonly medianSpanMs: { readonly local: number; readonly distributed: number };
  /** Median provider spans (first request to last charge) of each side, in ms. */
  readonly medianProviderSpanMs: { readonly local: number; readonly distributed: number };
  /** distributed / local span. */
  readonly ratio: number;
  readonly roundRatios: readonly number[];
  readonly ratioToBound: number;
  readonly samples: readonly BillingSample[];
}

/**
 * 10,000 users against a provider that takes 1.6 s per charge: four `bulkbill worker`
 * processes of 250 against one local engine of 1,000, and both against Little's bound n·t/c.
 */
export async function runDistributed10kLatency(
  settings: BenchSettings,
): Promise<ScenarioReport<Distributed10kLatencyRaw>> {
  const users = settings.quick ? 2_000 : 10_000;
  const totalConcurrency = 1_000;
  const littleBoundMs = (users * LATENCY_MS) / totalConcurrency;
  const { samples } = await runDistributedVersusLocal({
    scenario: DISTRIBUTED_10K_LATENCY,
    latency: `${LATENCY_MS / 1_000}s`,
    users,
    sides: [LOCAL, DISTRIBUTED],
    rounds: settings.quick ? 1 : 3,
    // Small: warms the disk and tsx caches; the mock has little to warm at 1.6 s.
    warmUp: { users: settings.quick ? 500 : 1_000, sides: [LOCAL, DISTRIBUTED] },
    settings,
  });

  const local = sideName(LOCAL);
  const distributed = sideName(DISTRIBUTED);
  const span = (sample: BillingSample) => sample.spanMs;
  const providerSpan = (sample: BillingSample) => sample.providerSpanMs ?? Number.NaN;
  const medianSpanMs = {
    local: medianOf(samples, local, span),
    distributed: medianOf(samples, distributed, span),
  };
  const medianProviderSpanMs = {
    local: medianOf(samples, local, providerSpan),
    distributed: medianOf(samples, distributed, providerSpan),
  };
  const ratio = medianSpanMs.distributed / medianSpanMs.local;
  const perRound = roundRatios(samples, distributed, local, span);
  const ratioToBound = medianSpanMs.distributed / littleBoundMs;
  const { violations, problems } = findingsOf(samples);
  const clean = violations.length === 0 && problems.length === 0;
  const checks = [
    violations.length > 0
      ? `CORRECTNESS VIOLATION: ${violations.join('; ')}`
      : 'no duplicate charge, provider charges = users in every sample',
    problems.length > 0 ? problems.join('; ') : 'every process exit 0, one request per user',
    describeNoise(samples),
  ]
    .filter((part) => part !== '')
    .join('; ');
  const againstLocalVerdict: Verdict = ratio <= TARGET_RATIO && clean ? 'PASS' : 'FAIL';
  const measure = `billing span (first job to last outcome), latency 1.6 s, ${formatCount(totalConcurrency)} in flight in all, n=${formatCount(users)}; local: ${describeMedian(samples, local)}; distributed: ${describeMedian(samples, distributed)}`;
  const subject = `${distributed} ${formatSeconds(medianSpanMs.distributed)}`;
  const againstLocal: SummaryRow = {
    scenario: DISTRIBUTED_10K_LATENCY,
    measure,
    baseline: `local engine c=1,000 ${formatSeconds(medianSpanMs.local)}`,
    subject,
    ratio: formatRatio(ratio),
    target: `distributed / local ≤ ${formatRatio(TARGET_RATIO)}`,
    verdict: againstLocalVerdict,
    checks: `per round ${perRound.map(formatRatio).join(', ')}; provider spans ${formatSeconds(medianProviderSpanMs.distributed)} against ${formatSeconds(medianProviderSpanMs.local)} (${formatRatio(medianProviderSpanMs.distributed / medianProviderSpanMs.local)}); ${checks}`,
  };
  const againstBound: SummaryRow = {
    scenario: DISTRIBUTED_10K_LATENCY,
    measure,
    baseline: `Little's bound n·t/c ${formatSeconds(littleBoundMs)}`,
    subject,
    ratio: formatRatio(ratioToBound),
    target: 'informational',
    verdict: clean ? 'PASS' : 'FAIL',
    checks: `local / bound ${formatRatio(medianSpanMs.local / littleBoundMs)}`,
  };

  return {
    summary: againstLocal,
    moreSummaries: [againstBound],
    details: [
      `### ${DISTRIBUTED_10K_LATENCY}: every sample`,
      '',
      `Little's bound: ${formatCount(users)} × ${formatSeconds(LATENCY_MS)} / ${formatCount(totalConcurrency)} = ${formatSeconds(littleBoundMs)}. Distributed / local span per round: ${perRound.map(formatRatio).join(', ')}. Local engine wall (import and report included), median: ${formatSeconds(medianOf(samples, local, (sample) => sample.local?.summary?.wallMs ?? Number.NaN))}.`,
      '',
      billingSampleTable(samples),
    ].join('\n'),
    raw: {
      users,
      latencyMs: LATENCY_MS,
      totalConcurrency,
      littleBoundMs,
      medianSpanMs,
      medianProviderSpanMs,
      ratio,
      roundRatios: perRound,
      ratioToBound,
      samples,
    },
  };
}
