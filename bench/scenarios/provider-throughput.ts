import { Agent } from 'undici';
import { createBareAgent } from '../lib/bare-loop.js';
import {
  formatCount,
  formatCpuShare,
  formatMicroseconds,
  formatRatio,
  formatSeconds,
  median,
} from '../lib/figures.js';
import { describeQuietWait } from '../lib/quiet-machine.js';
import {
  type BenchSettings,
  markdownTable,
  type ScenarioReport,
  type Verdict,
} from '../lib/report.js';
import {
  describeMedian,
  describeNoise,
  describeRerun,
  isDisturbed,
  runCleanSample,
  runSample,
  type SampleResult,
  samplesForMedian,
} from '../lib/sample-run.js';
import type { ServerProcess } from '../lib/server-process.js';
import { startBareServer, startMockProviderServer, stopServers } from '../lib/servers.js';

export const PROVIDER_THROUGHPUT = 'provider-throughput';

/** The target: the mock provider at zero latency serves at least this many charges a second. */
const TARGET_REQUESTS_PER_SECOND = 15_000;
/** Of 32, 64 and 128, the concurrency that gave the bare server its best (docs/benchmarks.md). */
const DEFAULT_CONCURRENCY = 64;

type Side = 'bare' | 'mock';

export interface ProviderThroughputSample extends SampleResult {
  readonly side: Side;
  readonly warmUp: boolean;
  /** Earlier attempts at this sample, thrown away because neighbours used the machine meanwhile. */
  readonly discarded: readonly SampleResult[];
}

export interface ProviderThroughputRaw extends CrossChecks {
  readonly requests: number;
  readonly concurrency: number;
  readonly samplesPerSide: number;
  readonly targetRequestsPerSecond: number;
  readonly medianRequestsPerSecond: Readonly<Record<Side, number>>;
  /** mock / bare. */
  readonly ratio: number;
  readonly verdict: Verdict;
  readonly samples: readonly ProviderThroughputSample[];
}

/**
 * Two readings of mock against bare that a drifting machine disturbs less than a ratio of
 * medians: each back-to-back pair's own ratio, and the server CPU each charge costs.
 */
export interface CrossChecks {
  /** mock / bare req/s within each back-to-back pair, in the order run. */
  readonly pairRatios: readonly number[];
  /** Median of pairRatios (over undisturbed pairs when there are any). */
  readonly medianPairRatio: number;
  /** Median server CPU per charge, in µs. */
  readonly serverCpuPerChargeUs: Readonly<Record<Side, number>>;
}

/**
 * How many charges a second the mock provider serves at zero latency, against a bare node:http
 * server driven by the same bare client in the same run.
 */
export async function runProviderThroughput(
  settings: BenchSettings,
): Promise<ScenarioReport<ProviderThroughputRaw>> {
  const requests = settings.quick ? 10_000 : 60_000;
  const samplesPerSide = settings.quick ? 2 : 5;
  const concurrency = settings.concurrency ?? DEFAULT_CONCURRENCY;
  const { progress } = settings;

  const servers: ServerProcess[] = [];
  const agents = { bare: createBareAgent(concurrency), mock: createBareAgent(concurrency) };
  const admin = new Agent({ connections: 1 });
  const samples: ProviderThroughputSample[] = [];
  try {
    const bare = await startBareServer(settings.serverNodeArgs);
    servers.push(bare);
    const mock = await startMockProviderServer('0', settings.serverNodeArgs);
    servers.push(mock);
    progress(`${PROVIDER_THROUGHPUT}: bare server ${bare.url}, mock provider ${mock.url}`);

    const plan: { side: Side; warmUp: boolean }[] = [
      { side: 'bare', warmUp: true },
      { side: 'mock', warmUp: true },
    ];
    for (let pair = 0; pair < samplesPerSide; pair++) {
      // Swapping who goes first in every other pair keeps a drifting machine from favouring one side.
      const sides: Side[] = pair % 2 === 0 ? ['bare', 'mock'] : ['mock', 'bare'];
      for (const side of sides) plan.push({ side, warmUp: false });
    }

    let index = 0;
    for (const { side, warmUp } of plan) {
      index++;
      const label = warmUp ? `${side} warm-up` : `${side} sample`;
      const options = {
        server: side === 'bare' ? bare : mock,
        url: side === 'bare' ? bare.url : mock.url,
        requests,
        concurrency,
        sample: `throughput-${index}-${side}`,
        dispatcher: agents[side],
        ...(side === 'mock' ? { mockAdmin: admin } : {}),
      };
      const { result, discarded } = warmUp
        ? { result: await runSample(options), discarded: [] }
        : await runCleanSample(options);
      samples.push({ ...result, side, warmUp, discarded });
      progress(
        `${PROVIDER_THROUGHPUT}: ${label} ${index}/${plan.length}: ` +
          `${formatCount(result.requestsPerSecond)} req/s in ${formatSeconds(result.wallMs)}` +
          describeRerun(discarded) +
          (isDisturbed(result) ? ' (disturbed)' : '') +
          (result.problems.length > 0 ? `; ${result.problems.join('; ')}` : ''),
      );
    }
  } finally {
    await Promise.allSettled([agents.bare.close(), agents.mock.close(), admin.close()]);
    await stopServers(servers);
  }

  const measured = samples.filter((sample) => !sample.warmUp);
  const sideSamples = (side: Side) => measured.filter((sample) => sample.side === side);
  const medianOf = (side: Side) =>
    median(samplesForMedian(sideSamples(side)).map((sample) => sample.requestsPerSecond));
  const medianRequestsPerSecond = { bare: medianOf('bare'), mock: medianOf('mock') };
  const ratio = medianRequestsPerSecond.mock / medianRequestsPerSecond.bare;
  const verdict: Verdict =
    medianRequestsPerSecond.mock >= TARGET_REQUESTS_PER_SECOND ? 'PASS' : 'FAIL';
  const problems = samples.flatMap((sample, at) =>
    sample.problems.map((problem) => `sample ${at + 1} (${sample.side}): ${problem}`),
  );
  const cross = crossChecks(measured);

  return {
    summary: {
      scenario: PROVIDER_THROUGHPUT,
      measure: `req/s at zero latency, c=${concurrency}, n=${formatCount(requests)}; bare: ${describeMedian(sideSamples('bare'))}; mock: ${describeMedian(sideSamples('mock'))}`,
      baseline: `bare server ${formatCount(medianRequestsPerSecond.bare)}`,
      subject: `mock provider ${formatCount(medianRequestsPerSecond.mock)}`,
      ratio: formatRatio(ratio),
      target: `mock ≥ ${formatCount(TARGET_REQUESTS_PER_SECOND)} req/s`,
      verdict,
      checks: [
        problems.length === 0
          ? 'no errors, all 200; mock charges = requests in every sample'
          : problems.join('; '),
        `median paired ratio ${formatRatio(cross.medianPairRatio)}`,
        `server CPU per charge ${formatMicroseconds(cross.serverCpuPerChargeUs.bare)} bare, ${formatMicroseconds(cross.serverCpuPerChargeUs.mock)} mock`,
        describeNoise(samples.filter((sample) => !sample.warmUp)),
      ]
        .filter((part) => part !== '')
        .join('; '),
    },
    details: `${throughputDetails(samples)}\n\n${describeCrossChecks(cross)}`,
    raw: {
      requests,
      concurrency,
      samplesPerSide,
      targetRequestsPerSecond: TARGET_REQUESTS_PER_SECOND,
      medianRequestsPerSecond,
      ratio,
      ...cross,
      verdict,
      samples,
    },
  };
}

function crossChecks(measured: readonly ProviderThroughputSample[]): CrossChecks {
  const pairs: { bare: ProviderThroughputSample; mock: ProviderThroughputSample }[] = [];
  for (let at = 0; at + 1 < measured.length; at += 2) {
    const [first, second] = [measured[at], measured[at + 1]];
    const bare = first?.side === 'bare' ? first : second;
    const mock = first?.side === 'mock' ? first : second;
    if (bare && mock && bare !== mock) pairs.push({ bare, mock });
  }
  const pairRatios = pairs.map(({ bare, mock }) => mock.requestsPerSecond / bare.requestsPerSecond);
  const quietPairs = pairs.filter(({ bare, mock }) => !isDisturbed(bare) && !isDisturbed(mock));
  const medianPairRatio = median(
    (quietPairs.length > 0 ? quietPairs : pairs).map(
      ({ bare, mock }) => mock.requestsPerSecond / bare.requestsPerSecond,
    ),
  );
  const cpuPerCharge = (side: Side) =>
    median(
      samplesForMedian(measured.filter((sample) => sample.side === side)).map(
        (sample) => ((sample.serverCpuMs ?? Number.NaN) * 1_000) / sample.requests,
      ),
    );
  return {
    pairRatios,
    medianPairRatio,
    serverCpuPerChargeUs: { bare: cpuPerCharge('bare'), mock: cpuPerCharge('mock') },
  };
}

function describeCrossChecks(cross: CrossChecks): string {
  const { bare, mock } = cross.serverCpuPerChargeUs;
  return [
    `Paired: mock / bare within each back-to-back pair: ${cross.pairRatios.map(formatRatio).join(', ')}; median ${formatRatio(cross.medianPairRatio)}.`,
    `Server CPU per charge, median: bare server ${formatMicroseconds(bare)}, mock provider ${formatMicroseconds(mock)} (×${formatRatio(mock / bare)}).`,
  ].join('\n');
}

function throughputDetails(samples: readonly ProviderThroughputSample[]): string {
  const rows = samples.map((sample, at) => [
    String(at + 1),
    sample.warmUp ? `${sample.side} (warm-up)` : sample.side,
    formatCount(sample.requestsPerSecond),
    formatSeconds(sample.wallMs),
    formatCpuShare(sample.clientCpuMs, sample.wallMs),
    formatCpuShare(sample.serverCpuMs, sample.wallMs),
    formatCpuShare(sample.otherCpuMs, sample.wallMs),
    describeQuietWait(sample.quietWait),
    String(sample.discarded.length),
    sample.serverCpuMs === undefined
      ? 'n/a'
      : formatMicroseconds((sample.serverCpuMs * 1_000) / sample.requests),
    sample.providerStats
      ? `${formatCount(sample.providerStats.charges)} / ${formatCount(sample.requests)}`
      : '',
    [
      ...sample.problems,
      ...(isDisturbed(sample) ? ['disturbed (over 30% of a core used by others)'] : []),
    ].join('; ') || 'ok',
  ]);
  return [
    `### ${PROVIDER_THROUGHPUT}: every sample`,
    '',
    "CPU: the share of one core used during the sample by the bench client, by the server process, and by everything else on the machine (other people's work: noise).",
    'Before each sample the bench waits (up to 30 s) until everything else uses under 20% of a core; a sample during which it used over 30% is thrown away and run again (up to 4 attempts; the last one is kept either way).',
    '',
    markdownTable(
      [
        '#',
        'server',
        'req/s',
        'wall',
        'client CPU',
        'server CPU',
        'other CPU',
        'waited for quiet',
        'disturbed, rerun',
        'server CPU per charge',
        'mock charges',
        'checks',
      ],
      rows,
      ['right', 'left', ...Array<'right'>(9).fill('right'), 'left'],
    ),
  ].join('\n');
}
