import { Agent } from 'undici';
import { createBareAgent } from '../lib/bare-loop.js';
import { formatCount, formatCpuShare, formatRatio, formatSeconds, median } from '../lib/figures.js';
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
import { startMockProviderServer, stopServers } from '../lib/servers.js';

export const PROVIDER_10K_CONNECTIONS = 'provider-10k-connections';

const REQUESTS = 10_000;
const CONCURRENCY = 10_000;
const LATENCY_MS = 1_600;
/** Little's law: n charges, each held t, c at a time, take at least n·t/c. */
const LITTLE_BOUND_MS = (REQUESTS * LATENCY_MS) / CONCURRENCY;

export interface Provider10kSample extends SampleResult {
  /** The first sample opens the 10,000 connections; the measured ones reuse them. */
  readonly coldConnections: boolean;
  /** Earlier attempts at this sample, thrown away because neighbours used the machine meanwhile. */
  readonly discarded: readonly SampleResult[];
}

export interface Provider10kRaw {
  readonly requests: number;
  readonly concurrency: number;
  readonly latencyMs: number;
  readonly littleBoundMs: number;
  readonly medianWallMs: number;
  /** median wall / Little's bound. */
  readonly ratio: number;
  readonly verdict: Verdict;
  readonly samples: readonly Provider10kSample[];
}

/**
 * Whether the mock provider holds 10,000 charges in flight at once, each on its own connection,
 * and how close 10,000 charges of 1.6 s each come to Little's bound of 1.6 s.
 */
export async function runProvider10kConnections(
  settings: BenchSettings,
): Promise<ScenarioReport<Provider10kRaw>> {
  const sampleCount = settings.quick ? 1 : 3;
  const { progress } = settings;
  const servers: ServerProcess[] = [];
  const agent = createBareAgent(CONCURRENCY);
  const admin = new Agent({ connections: 1 });
  const samples: Provider10kSample[] = [];
  try {
    const mock = await startMockProviderServer(`${LATENCY_MS / 1_000}s`, settings.serverNodeArgs);
    servers.push(mock);
    progress(`${PROVIDER_10K_CONNECTIONS}: mock provider ${mock.url}`);
    // One extra sample first: it pays for 10,000 TCP handshakes, which are not what is measured.
    for (let index = 0; index <= sampleCount; index++) {
      const coldConnections = index === 0;
      const options = {
        server: mock,
        url: mock.url,
        requests: REQUESTS,
        concurrency: CONCURRENCY,
        sample: `c10k-${index}`,
        dispatcher: agent,
        mockAdmin: admin,
        // undici drops an idle connection after the server's keep-alive hint (10 s) less 2 s.
        ...(coldConnections ? {} : { quietTimeoutMs: 4_000 }),
      };
      const { result, discarded } = coldConnections
        ? { result: await runSample(options), discarded: [] }
        : await runCleanSample(options);
      samples.push({ ...result, coldConnections, discarded });
      progress(
        `${PROVIDER_10K_CONNECTIONS}: ${coldConnections ? 'cold-connection warm-up' : `sample ${index}/${sampleCount}`}: ` +
          `${formatSeconds(result.wallMs)}, max_in_flight ${formatCount(result.providerStats?.max_in_flight ?? 0)}` +
          describeRerun(discarded) +
          (isDisturbed(result) ? ' (disturbed)' : '') +
          (result.problems.length > 0 ? `; ${result.problems.join('; ')}` : ''),
      );
    }
  } finally {
    await Promise.allSettled([agent.close(), admin.close()]);
    await stopServers(servers);
  }

  const measured = samples.filter((sample) => !sample.coldConnections);
  const medianWallMs = median(samplesForMedian(measured).map((sample) => sample.wallMs));
  const ratio = medianWallMs / LITTLE_BOUND_MS;
  const shortfallsOf = (sample: Provider10kSample, name: string): string[] => {
    const found = sample.problems.map((problem) => `${name}: ${problem}`);
    const maxInFlight = sample.providerStats?.max_in_flight ?? 0;
    if (maxInFlight !== CONCURRENCY) {
      found.push(`${name}: max_in_flight ${formatCount(maxInFlight)}`);
    }
    return found;
  };
  const measuredShortfalls = measured.flatMap((sample, at) =>
    shortfallsOf(sample, `sample ${at + 1}`),
  );
  const warmUpShortfalls = samples
    .filter((sample) => sample.coldConnections)
    .flatMap((sample) => shortfallsOf(sample, 'warm-up (not counted)'));
  const shortfalls = [...measuredShortfalls, ...warmUpShortfalls];
  const verdict: Verdict = measuredShortfalls.length === 0 ? 'PASS' : 'FAIL';
  const inFlight = measured.map((sample) => sample.providerStats?.max_in_flight ?? 0);

  return {
    summary: {
      scenario: PROVIDER_10K_CONNECTIONS,
      measure: `wall time, latency 1.6 s, c=${formatCount(CONCURRENCY)}, n=${formatCount(REQUESTS)}, ${describeMedian(measured)}`,
      baseline: `Little's bound n·t/c ${formatSeconds(LITTLE_BOUND_MS)}`,
      subject: `mock provider ${formatSeconds(medianWallMs)}`,
      ratio: formatRatio(ratio),
      target: `0 errors, max_in_flight ${formatCount(CONCURRENCY)}`,
      verdict,
      checks: [
        shortfalls.length === 0
          ? `0 errors; max_in_flight ${inFlight.map(formatCount).join(', ')}; charges = requests`
          : shortfalls.join('; '),
        describeNoise(measured),
      ]
        .filter((part) => part !== '')
        .join('; '),
    },
    details: connectionDetails(samples),
    raw: {
      requests: REQUESTS,
      concurrency: CONCURRENCY,
      latencyMs: LATENCY_MS,
      littleBoundMs: LITTLE_BOUND_MS,
      medianWallMs,
      ratio,
      verdict,
      samples,
    },
  };
}

function connectionDetails(samples: readonly Provider10kSample[]): string {
  const rows = samples.map((sample, at) => [
    sample.coldConnections ? 'warm-up (opens connections)' : String(at),
    formatSeconds(sample.wallMs),
    formatRatio(sample.wallMs / LITTLE_BOUND_MS),
    formatSeconds(sample.lastStartedMs),
    `${formatSeconds(sample.latencyMs.min)} / ${formatSeconds(sample.latencyMs.p50)} / ${formatSeconds(sample.latencyMs.max)}`,
    formatCount(sample.errors),
    formatCount(sample.providerStats?.max_in_flight ?? 0),
    sample.providerStats ? formatCount(sample.providerStats.charges) : '',
    sample.listenQueueDrops ? formatCount(sample.listenQueueDrops.listenOverflows) : 'n/a',
    `${formatCpuShare(sample.clientCpuMs, sample.wallMs)} / ${formatCpuShare(sample.serverCpuMs, sample.wallMs)} / ${formatCpuShare(sample.otherCpuMs, sample.wallMs)}`,
    describeQuietWait(sample.quietWait),
    String(sample.discarded.length),
    [
      ...sample.problems,
      ...(isDisturbed(sample) ? ['disturbed (over 30% of a core used by others)'] : []),
    ].join('; ') || 'ok',
  ]);
  return [
    `### ${PROVIDER_10K_CONNECTIONS}: every sample`,
    '',
    'Send ramp: when the client handed its last charge to undici. Latency: from handing a charge to undici to reading its answer.',
    'Listen overflows: connections the kernel dropped because the accept queue was full (net.core.somaxconn caps it at 4096).',
    'CPU: share of one core used by the bench client / the mock provider / everything else on the machine.',
    'Before each measured sample the bench waits up to 4 s (longer would let undici drop the idle connections) for everything else to use under 20% of a core; a sample during which it used over 30% is thrown away and run again (up to 4 attempts).',
    '',
    markdownTable(
      [
        'sample',
        'wall',
        'wall / bound',
        'send ramp',
        'latency min / p50 / max',
        'errors',
        'max_in_flight',
        'charges',
        'listen overflows',
        'CPU client / server / other',
        'waited for quiet',
        'disturbed, rerun',
        'checks',
      ],
      rows,
      ['left', ...Array<'right'>(11).fill('right'), 'left'],
    ),
  ].join('\n');
}
