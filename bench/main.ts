/**
 * bulkbill's benchmarks (npm run bench): a separate program, never part of npm test. Each
 * scenario prints its subject against a baseline measured in the same run, as medians of
 * several samples, because the machine is shared and noisy.
 *
 *   npm run bench                              every scenario, full size
 *   npm run bench -- --quick                   smaller n, fewer samples: a smoke run
 *   npm run bench -- --only provider-throughput
 *   npm run bench -- --json bench/results/run.json
 *   npm run bench -- --only provider-throughput --concurrency 128
 *   npm run bench -- --only client-concurrency   how the default concurrency of 64 was chosen
 *   npm run bench -- --only adaptive-concurrency   --concurrency auto against fixed settings
 *   npm run bench -- --only dashboard-load   the dashboard's page of a finished 100k run, in Chromium
 *   npm run bench -- --server-cpu-prof .tmp/prof   servers write V8 CPU profiles there
 *   npm run bench -- --only engine-100k-throughput --engine-cpu-prof .tmp/prof
 *                                              every `bulkbill run` process writes one there
 *                                              (and every `bulkbill enqueue` and `worker`)
 *   npm run bench -- --only distributed-throughput --redis redis://127.0.0.1:6379
 *                                              the Redis of the distributed scenarios
 *
 * Progress goes to stderr, the markdown report to stdout. Exit status 1 when a scenario fails.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { dirname, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { DEFAULT_BENCH_REDIS_URL } from './lib/redis-admin.js';
import { type BenchSettings, markdownTable, type ScenarioReport } from './lib/report.js';
import { ADAPTIVE_CONCURRENCY, runAdaptiveConcurrency } from './scenarios/adaptive-concurrency.js';
import { CLIENT_CONCURRENCY, runClientConcurrency } from './scenarios/client-concurrency.js';
import { DASHBOARD_LOAD, runDashboardLoad } from './scenarios/dashboard-load.js';
import {
  DISTRIBUTED_10K_LATENCY,
  runDistributed10kLatency,
} from './scenarios/distributed-10k-latency.js';
import {
  DISTRIBUTED_ENQUEUE_1M,
  runDistributedEnqueue1m,
} from './scenarios/distributed-enqueue-1m.js';
import {
  DISTRIBUTED_THROUGHPUT,
  runDistributedThroughput,
} from './scenarios/distributed-throughput.js';
import { ENGINE_1M_IMPORT, runEngine1mImport } from './scenarios/engine-1m-import.js';
import { ENGINE_10K_LATENCY, runEngine10kLatency } from './scenarios/engine-10k-latency.js';
import { ENGINE_100K_PROFILES, runEngine100kProfiles } from './scenarios/engine-100k-profiles.js';
import {
  ENGINE_100K_THROUGHPUT,
  runEngine100kThroughput,
} from './scenarios/engine-100k-throughput.js';
import {
  PROVIDER_10K_CONNECTIONS,
  runProvider10kConnections,
} from './scenarios/provider-10k-connections.js';
import { PROVIDER_THROUGHPUT, runProviderThroughput } from './scenarios/provider-throughput.js';

interface Scenario {
  readonly run: (settings: BenchSettings) => Promise<ScenarioReport<unknown>>;
  /** Run without --only; otherwise only when named. */
  readonly byDefault: boolean;
}

const SCENARIOS: Readonly<Record<string, Scenario>> = {
  [PROVIDER_THROUGHPUT]: { run: runProviderThroughput, byDefault: true },
  [PROVIDER_10K_CONNECTIONS]: { run: runProvider10kConnections, byDefault: true },
  [ENGINE_10K_LATENCY]: { run: runEngine10kLatency, byDefault: true },
  [ENGINE_100K_THROUGHPUT]: { run: runEngine100kThroughput, byDefault: true },
  [ENGINE_100K_PROFILES]: { run: runEngine100kProfiles, byDefault: true },
  [ENGINE_1M_IMPORT]: { run: runEngine1mImport, byDefault: true },
  [ADAPTIVE_CONCURRENCY]: { run: runAdaptiveConcurrency, byDefault: true },
  [DISTRIBUTED_THROUGHPUT]: { run: runDistributedThroughput, byDefault: true },
  [DISTRIBUTED_10K_LATENCY]: { run: runDistributed10kLatency, byDefault: true },
  [DISTRIBUTED_ENQUEUE_1M]: { run: runDistributedEnqueue1m, byDefault: true },
  [DASHBOARD_LOAD]: { run: runDashboardLoad, byDefault: true },
  [CLIENT_CONCURRENCY]: { run: runClientConcurrency, byDefault: false },
};

interface BenchFlags {
  readonly quick: boolean;
  readonly only: string | undefined;
  readonly json: string | undefined;
  readonly concurrency: number | undefined;
  readonly serverCpuProf: string | undefined;
  readonly engineCpuProf: string | undefined;
  readonly redis: string;
}

/** Where and when the figures were measured: they mean nothing without it. */
interface Machine {
  readonly date: string;
  readonly command: string;
  readonly cpu: string;
  readonly cores: number;
  readonly memoryGiB: number;
  readonly node: string;
  readonly os: string;
  readonly loadAverage: readonly number[];
}

function parseFlags(argv: readonly string[]): BenchFlags {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      quick: { type: 'boolean', default: false },
      only: { type: 'string' },
      json: { type: 'string' },
      concurrency: { type: 'string' },
      'server-cpu-prof': { type: 'string' },
      'engine-cpu-prof': { type: 'string' },
      redis: { type: 'string', default: DEFAULT_BENCH_REDIS_URL },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.only !== undefined && !(values.only in SCENARIOS)) {
    throw new Error(
      `--only: expected one of ${Object.keys(SCENARIOS).join(', ')}, got ${JSON.stringify(values.only)}`,
    );
  }
  let concurrency: number | undefined;
  if (values.concurrency !== undefined) {
    concurrency = Number(values.concurrency);
    if (!Number.isSafeInteger(concurrency) || concurrency < 1) {
      throw new Error(
        `--concurrency: expected an integer >= 1, got ${JSON.stringify(values.concurrency)}`,
      );
    }
  }
  return {
    quick: values.quick,
    only: values.only,
    json: values.json,
    concurrency,
    serverCpuProf: values['server-cpu-prof'],
    engineCpuProf: values['engine-cpu-prof'],
    redis: values.redis,
  };
}

function describeMachine(argv: readonly string[]): Machine {
  const cpus = os.cpus();
  return {
    date: new Date().toISOString(),
    command: ['npm run bench', ...(argv.length > 0 ? ['--', ...argv] : [])].join(' '),
    cpu: cpus[0]?.model.trim() ?? 'unknown',
    cores: cpus.length,
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    loadAverage: os.loadavg().map((load) => Math.round(load * 100) / 100),
  };
}

function header(machine: Machine, quick: boolean): string {
  return [
    '## bulkbill benchmarks',
    '',
    `- date: ${machine.date}`,
    `- command: \`${machine.command}\`${quick ? ' (quick: a smoke run, not a measurement)' : ''}`,
    `- machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB`,
    `- node ${machine.node}, ${machine.os}`,
    `- load average at start: ${machine.loadAverage.join(', ')}`,
  ].join('\n');
}

function cpuProfArgs(directory: string | undefined): string[] {
  return directory === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${resolve(directory)}`];
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const flags = parseFlags(argv);
  const machine = describeMachine(argv);
  const progress = (line: string) => process.stderr.write(`bench: ${line}\n`);
  const settings: BenchSettings = {
    quick: flags.quick,
    concurrency: flags.concurrency,
    serverNodeArgs: cpuProfArgs(flags.serverCpuProf),
    engineNodeArgs: cpuProfArgs(flags.engineCpuProf),
    redisUrl: flags.redis,
    progress,
  };

  const names =
    flags.only === undefined
      ? Object.keys(SCENARIOS).filter((name) => SCENARIOS[name]?.byDefault)
      : [flags.only];
  const reports: Record<string, ScenarioReport<unknown>> = {};
  for (const name of names) {
    const scenario = SCENARIOS[name];
    if (!scenario) continue;
    progress(`${name}: starting`);
    reports[name] = await scenario.run(settings);
  }

  const rows = Object.values(reports).flatMap(({ summary, moreSummaries = [] }) => [
    summary,
    ...moreSummaries,
  ]);
  const summaries = rows.map((summary) => [
    summary.scenario,
    summary.measure,
    summary.baseline,
    summary.subject,
    summary.ratio,
    summary.target,
    summary.verdict,
    summary.checks,
  ]);
  const table = markdownTable(
    ['scenario', 'measure', 'baseline', 'subject', 'ratio', 'target', 'verdict', 'checks'],
    summaries,
    ['left', 'left', 'left', 'left', 'right', 'left', 'left', 'left'],
  );
  const details = Object.values(reports).map(({ details }) => details);
  process.stdout.write(`${[header(machine, flags.quick), table, ...details].join('\n\n')}\n`);

  if (flags.json !== undefined) {
    const path = resolve(flags.json);
    await mkdir(dirname(path), { recursive: true });
    const raw = Object.fromEntries(
      Object.entries(reports).map(([name, report]) => [
        name,
        {
          summary: report.summary,
          ...(report.moreSummaries ? { moreSummaries: report.moreSummaries } : {}),
          raw: report.raw,
        },
      ]),
    );
    await writeFile(
      path,
      `${JSON.stringify({ machine, quick: flags.quick, scenarios: raw }, null, 2)}\n`,
    );
    progress(`raw results written to ${path}`);
  }
  if (rows.some((summary) => summary.verdict === 'FAIL')) {
    process.exitCode = 1;
  }
}

try {
  await main();
} catch (error) {
  process.stderr.write(`bench: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 2;
}
