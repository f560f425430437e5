import { createBareAgent } from '../lib/bare-loop.js';
import {
  formatCount,
  formatMilliseconds,
  formatPercent,
  formatRatio,
  median,
} from '../lib/figures.js';
import {
  type BenchSettings,
  markdownTable,
  type ScenarioReport,
  type Verdict,
} from '../lib/report.js';
import {
  describeNoise,
  describeRerun,
  isDisturbed,
  runCleanSample,
  runSample,
  type SampleResult,
  samplesForMedian,
} from '../lib/sample-run.js';
import type { ServerProcess } from '../lib/server-process.js';
import { startBareServer, stopServers } from '../lib/servers.js';

export const CLIENT_CONCURRENCY = 'client-concurrency';

/** The concurrencies tried for provider-throughput's client; the best one became its default. */
const CANDIDATES = [32, 64, 128] as const;

export interface ClientConcurrencySample extends SampleResult {
  readonly warmUp: boolean;
  /** Earlier attempts at this sample, thrown away because neighbours used the machine meanwhile. */
  readonly discarded: readonly SampleResult[];
}

export interface ClientConcurrencyRaw {
  readonly requests: number;
  readonly samplesPerConcurrency: number;
  readonly medianRequestsPerSecond: Readonly<Record<string, number>>;
  readonly best: number;
  readonly samples: readonly ClientConcurrencySample[];
}

/**
 * Which client concurrency gets the most out of the bare server at zero latency: how
 * provider-throughput's default of 64 was chosen. Not run unless asked for with --only.
 */
export async function runClientConcurrency(
  settings: BenchSettings,
): Promise<ScenarioReport<ClientConcurrencyRaw>> {
  const requests = settings.quick ? 10_000 : 60_000;
  const samplesPerConcurrency = settings.quick ? 2 : 5;
  const { progress } = settings;
  const servers: ServerProcess[] = [];
  const candidates = CANDIDATES.map((concurrency) => ({
    concurrency,
    agent: createBareAgent(concurrency),
  }));
  const samples: ClientConcurrencySample[] = [];
  try {
    const bare = await startBareServer(settings.serverNodeArgs);
    servers.push(bare);
    // Round-robin over the candidates, so that a burst of noise hits them all alike.
    for (let round = 0; round <= samplesPerConcurrency; round++) {
      for (const { concurrency, agent } of candidates) {
        const options = {
          server: bare,
          url: bare.url,
          requests,
          concurrency,
          sample: `concurrency-${concurrency}-${round}`,
          dispatcher: agent,
        };
        const warmUp = round === 0;
        const { result, discarded } = warmUp
          ? { result: await runSample(options), discarded: [] }
          : await runCleanSample(options);
        samples.push({ ...result, warmUp, discarded });
        progress(
          `${CLIENT_CONCURRENCY}: ${warmUp ? 'warm-up' : `round ${round}/${samplesPerConcurrency}`} c=${concurrency}: ${formatCount(result.requestsPerSecond)} req/s` +
            describeRerun(discarded),
        );
      }
    }
  } finally {
    await Promise.allSettled(candidates.map(({ agent }) => agent.close()));
    await stopServers(servers);
  }

  const measured = samples.filter((sample) => !sample.warmUp);
  const medianRequestsPerSecond = Object.fromEntries(
    CANDIDATES.map((c) => [
      String(c),
      median(
        samplesForMedian(measured.filter((s) => s.concurrency === c)).map(
          (s) => s.requestsPerSecond,
        ),
      ),
    ]),
  );
  const ranked = [...CANDIDATES].sort(
    (a, b) => (medianRequestsPerSecond[b] ?? 0) - (medianRequestsPerSecond[a] ?? 0),
  );
  const best = ranked[0] ?? CANDIDATES[0];
  const worst = ranked[ranked.length - 1] ?? CANDIDATES[0];
  const problems = samples.flatMap((sample) =>
    sample.problems.map((problem) => `c=${sample.concurrency}: ${problem}`),
  );
  const verdict: Verdict = problems.length === 0 ? 'PASS' : 'FAIL';
  const rows = CANDIDATES.map((c) => {
    const mine = measured.filter((s) => s.concurrency === c);
    return [
      String(c),
      formatCount(medianRequestsPerSecond[c] ?? 0),
      mine.map((s) => `${formatCount(s.requestsPerSecond)}${isDisturbed(s) ? '*' : ''}`).join(', '),
      formatMilliseconds(median(mine.map((s) => s.latencyMs.p50))),
      formatPercent(median(mine.map((s) => s.clientCpuMs / s.wallMs))),
      formatPercent(median(mine.map((s) => (s.serverCpuMs ?? Number.NaN) / s.wallMs))),
      formatPercent(median(mine.map((s) => (s.otherCpuMs ?? Number.NaN) / s.wallMs))),
    ];
  });

  return {
    summary: {
      scenario: CLIENT_CONCURRENCY,
      measure: `bare server req/s, c=${CANDIDATES.join('/')}, n=${formatCount(requests)}, median of ${samplesPerConcurrency}, undisturbed samples only where any`,
      baseline: `c=${worst} ${formatCount(medianRequestsPerSecond[worst] ?? 0)}`,
      subject: `c=${best} ${formatCount(medianRequestsPerSecond[best] ?? 0)}`,
      ratio: formatRatio(
        (medianRequestsPerSecond[best] ?? 0) / (medianRequestsPerSecond[worst] ?? 1),
      ),
      target: 'informational: picks the best concurrency',
      verdict,
      checks: [
        problems.length === 0 ? 'no errors, all 200' : problems.join('; '),
        describeNoise(measured),
      ]
        .filter((part) => part !== '')
        .join('; '),
    },
    details: [
      `### ${CLIENT_CONCURRENCY}: bare server by client concurrency`,
      '',
      '\\* disturbed: the rest of the machine used over 30% of a core meanwhile; left out of the median.',
      '',
      markdownTable(
        [
          'concurrency',
          'median req/s',
          'samples',
          'latency p50',
          'client CPU',
          'server CPU',
          'other CPU',
        ],
        rows,
        ['right', 'right', 'left', 'right', 'right', 'right', 'right'],
      ),
    ].join('\n'),
    raw: { requests, samplesPerConcurrency, medianRequestsPerSecond, best, samples },
  };
}
