import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, type Dispatcher } from 'undici';
import type { MockProviderStats } from '../../src/mock-provider/index.js';
import { type BareLoopResult, runBareLoop } from './bare-loop.js';
import {
  type EngineConcurrency,
  type EngineProcessResult,
  runEngineProcess,
} from './engine-process.js';
import {
  formatCount,
  formatCpuShare,
  formatMebibytes,
  formatMilliseconds,
  formatSeconds,
  median,
} from './figures.js';
import { mockProviderStats, resetMockProvider } from './mock-provider-admin.js';
import {
  machineBusyCpuMs,
  type ProcessMemory,
  processCpuMs,
  processMemory,
} from './os-counters.js';
import { describeQuietWait, type QuietWait, waitForQuietMachine } from './quiet-machine.js';
import { type BenchSettings, markdownTable } from './report.js';
import { DISTURBED_OTHER_SHARE } from './sample-run.js';
import type { ServerProcess } from './server-process.js';
import { startMockProviderServer, stopServers } from './servers.js';
import { type UsersFile, writeUsersCsv } from './users-file.js';

/** Who bills the users in a sample: bulkbill's engine in its own process, or the bare loop. */
export type Side = 'engine' | 'bare';

/** One sample of either side against the mock provider, reset before it. */
export interface ChargeSample {
  readonly side: Side;
  readonly sample: string;
  readonly users: number;
  /** `--concurrency` (a number, or `auto` for an engine sample). */
  readonly concurrency: EngineConcurrency;
  readonly warmUp: boolean;
  /** engine: the `wallMs` of its summary (hashing and importing included); bare: the loop's. */
  readonly wallMs: number;
  /** engine: from spawn to exit, Node and tsx startup included; bare: the same as wallMs. */
  readonly elapsedMs: number;
  /** users / wallMs. */
  readonly chargesPerSecond: number;
  /** CPU the billing side used, in ms: the engine's process, or the bench process for the loop. */
  readonly clientCpuMs: number | undefined;
  /** CPU the mock provider used, in ms. */
  readonly serverCpuMs: number | undefined;
  /** CPU everything else on the machine used meanwhile, in ms: the neighbours' noise. */
  readonly otherCpuMs: number | undefined;
  readonly quietWait: QuietWait;
  /** The mock provider's GET /stats after the sample. */
  readonly providerStats: MockProviderStats | undefined;
  /** The mock provider's resident memory right after the sample, holding all its keys. */
  readonly providerRssBytes: number | undefined;
  /** Broken guarantees: a duplicate charge, or charges other than one per user. */
  readonly violations: readonly string[];
  /** Anything else not clean: an exit status, errors, retries. */
  readonly problems: readonly string[];
  /** The engine's run, for engine samples. */
  readonly engine: EngineProcessResult | undefined;
  /** The loop's figures, for bare samples. */
  readonly bare: BareLoopResult | undefined;
  /** Earlier attempts at this sample, thrown away because neighbours used the machine meanwhile. */
  readonly discarded: readonly ChargeSample[];
}

/** Engine and bare loop against one mock provider, alternating, in one run. */
export interface EngineVersusBareOptions {
  /** Names the scenario in progress lines, run ids and idempotency keys. Required. */
  readonly scenario: string;
  /** The mock provider's `--latency`, e.g. `1.6s` or `0`. Required. */
  readonly latency: string;
  /** Users billed per sample, by both sides. Required. */
  readonly users: number;
  /** In flight at once, for both sides. Required. */
  readonly concurrency: number;
  /** Measured samples of each side. Required. */
  readonly samplesPerSide: number;
  /** Users of one uncounted sample of each side first, warming the mock and the disk cache. Default: none. */
  readonly warmUpUsers?: number;
  /** Attempts per sample while neighbours disturb it. Default 4. */
  readonly maxAttempts?: number;
  readonly settings: BenchSettings;
}

export interface EngineVersusBare {
  /** In the order run, warm-ups first. */
  readonly samples: readonly ChargeSample[];
  readonly input: UsersFile;
  /** The mock provider's memory just before it was stopped (VmHWM: its peak over every sample). */
  readonly providerMemory: ProcessMemory | undefined;
}

/**
 * Bills the same generated users with bulkbill's engine (`bulkbill run … --json`, a child
 * process with a fresh ledger per sample) and with the bare loop, against one mock provider
 * process, alternating and swapping who goes first in every other pair.
 */
export async function runEngineVersusBare(
  options: EngineVersusBareOptions,
): Promise<EngineVersusBare> {
  const { scenario, users, concurrency, samplesPerSide, warmUpUsers, settings } = options;
  const maxAttempts = options.maxAttempts ?? 4;
  const { progress } = settings;
  const workDir = await mkdtemp(join(tmpdir(), `bulkbill-bench-${scenario}-`));
  const servers: ServerProcess[] = [];
  const admin = new Agent({ connections: 1 });
  const samples: ChargeSample[] = [];
  let providerMemory: ProcessMemory | undefined;
  try {
    const input = await writeUsersCsv(join(workDir, `users-${users}.csv`), users);
    progress(
      `${scenario}: wrote ${formatCount(users)} users (${formatMebibytes(input.bytes)}) in ${formatSeconds(input.writeMs)}`,
    );
    const warmUpInput =
      warmUpUsers === undefined
        ? undefined
        : await writeUsersCsv(join(workDir, `users-${warmUpUsers}.csv`), warmUpUsers);
    const mock = await startMockProviderServer(options.latency, settings.serverNodeArgs);
    servers.push(mock);
    progress(`${scenario}: mock provider ${mock.url} (latency ${options.latency})`);

    const plan: { side: Side; file: UsersFile; warmUp: boolean }[] = [];
    if (warmUpInput) {
      plan.push({ side: 'engine', file: warmUpInput, warmUp: true });
      plan.push({ side: 'bare', file: warmUpInput, warmUp: true });
    }
    for (let pair = 0; pair < samplesPerSide; pair++) {
      // Swapping who goes first in every other pair keeps a drifting machine from favouring one side.
      const sides: Side[] = pair % 2 === 0 ? ['engine', 'bare'] : ['bare', 'engine'];
      for (const side of sides) plan.push({ side, file: input, warmUp: false });
    }

    let index = 0;
    for (const { side, file, warmUp } of plan) {
      index++;
      const context: SampleContext = {
        scenario,
        mock,
        admin,
        workDir,
        file,
        concurrency,
        warmUp,
        engineNodeArgs: settings.engineNodeArgs,
      };
      const sample = await runCleanChargeSample(
        (attempt) => runChargeSample(side, context, `${index}-a${attempt}`),
        warmUp ? 1 : maxAttempts,
      );
      samples.push(sample);
      const what = warmUp ? `${side} warm-up` : `${side} sample`;
      progress(`${scenario}: ${what} ${index}/${plan.length}: ${describeSample(sample)}`);
      for (const violation of sample.violations) {
        progress(`${scenario}: CORRECTNESS VIOLATION (${side}, sample ${index}): ${violation}`);
      }
    }
    providerMemory = processMemory(mock.pid);
    return { samples, input, providerMemory };
  } finally {
    await admin.close();
    await stopServers(servers);
    await rm(workDir, { recursive: true, force: true });
  }
}

/** Where and how one sample bills: the mock provider, the input, the engine's flags. */
export interface SampleContext {
  readonly scenario: string;
  readonly mock: ServerProcess;
  readonly admin: Dispatcher;
  /** Each engine sample's ledger and report go in a fresh folder under it, removed afterwards. */
  readonly workDir: string;
  readonly file: UsersFile;
  /** `--concurrency`; `auto` for the engine only. */
  readonly concurrency: EngineConcurrency;
  /** The engine's `--max-concurrency`. Default: none given. */
  readonly maxConcurrency?: number;
  readonly warmUp: boolean;
  readonly engineNodeArgs: readonly string[];
  /**
   * The engine's `--endpoint`. Default: `<mock>/charge`, the mock's own shape; none when
   * `config` is given (its endpoint is used).
   */
  readonly endpoint?: string;
  /** The engine's `--config` (a provider profile). Default: none. */
  readonly config?: string;
}

/** What one side's billing hands back to the measurement around it. */
interface Billed {
  readonly wallMs: number;
  readonly elapsedMs: number;
  /** CPU of the billing side, in ms, measured by the side itself. */
  readonly clientCpuMs: number | undefined;
  readonly problems: readonly string[];
  readonly engine?: EngineProcessResult;
  readonly bare?: BareLoopResult;
}

/** Resets the mock provider, waits for a quiet machine, bills, then reads what the provider saw. */
export async function runChargeSample(
  side: Side,
  context: SampleContext,
  sample: string,
): Promise<ChargeSample> {
  const { mock, admin, file, concurrency } = context;
  await resetMockProvider(mock.url, admin);
  const quietWait = await waitForQuietMachine({ serverPids: [mock.pid] });
  const ownCpuBefore = process.cpuUsage();
  const serverCpuBefore = processCpuMs(mock.pid);
  const machineCpuBefore = machineBusyCpuMs();
  const billed =
    side === 'engine'
      ? await billWithEngine(context, sample)
      : await billWithBareLoop(context, sample);
  const machineCpuAfter = machineBusyCpuMs();
  const serverCpuAfter = processCpuMs(mock.pid);
  const ownCpu = process.cpuUsage(ownCpuBefore);
  const providerStats = await mockProviderStats(mock.url, admin);
  const providerRssBytes = processMemory(mock.pid)?.rssBytes;

  const serverCpuMs =
    serverCpuBefore === undefined || serverCpuAfter === undefined
      ? undefined
      : serverCpuAfter - serverCpuBefore;
  // The bench process is counted whichever side bills: it spawns and reads the engine too.
  const ownCpuMs = (ownCpu.user + ownCpu.system) / 1_000;
  const engineCpuMs = side === 'engine' ? billed.clientCpuMs : 0;
  const otherCpuMs =
    machineCpuBefore === undefined ||
    machineCpuAfter === undefined ||
    serverCpuMs === undefined ||
    engineCpuMs === undefined
      ? undefined
      : Math.max(0, machineCpuAfter - machineCpuBefore - serverCpuMs - ownCpuMs - engineCpuMs);
  return {
    side,
    sample,
    users: file.users,
    concurrency,
    warmUp: context.warmUp,
    wallMs: billed.wallMs,
    elapsedMs: billed.elapsedMs,
    chargesPerSecond: (file.users * 1_000) / billed.wallMs,
    clientCpuMs: billed.clientCpuMs,
    serverCpuMs,
    otherCpuMs,
    quietWait,
    providerStats,
    providerRssBytes,
    violations: violationsOf(providerStats, file.users),
    problems: [...billed.problems, ...requestProblems(side, providerStats, file.users)],
    engine: billed.engine,
    bare: billed.bare,
    discarded: [],
  };
}

async function billWithEngine(context: SampleContext, sample: string): Promise<Billed> {
  const { scenario, mock, workDir, file, concurrency, maxConcurrency, config } = context;
  const endpoint = context.endpoint ?? (config === undefined ? `${mock.url}/charge` : undefined);
  // A fresh ledger every sample: nothing is resumed, everything is imported and billed.
  const runDir = await mkdtemp(join(workDir, 'run-'));
  try {
    const run = await runEngineProcess({
      input: file.path,
      endpoint,
      config,
      concurrency,
      ...(maxConcurrency === undefined ? {} : { maxConcurrency }),
      runId: `bench-${scenario}-${sample}`,
      ledger: join(runDir, 'ledger.db'),
      report: join(runDir, 'report.csv'),
      nodeArgs: context.engineNodeArgs,
    });
    const { summary } = run;
    const problems: string[] = [];
    if (run.exitCode !== 0) {
      problems.push(
        `engine exited ${run.signal ?? `with status ${run.exitCode}`}: ${run.stderrTail.split('\n').slice(-3).join(' / ')}`,
      );
    }
    if (summary === undefined) {
      problems.push('engine printed no --json summary');
    } else {
      const { counts } = summary;
      if (summary.total !== file.users || counts.charged !== file.users) {
        problems.push(
          `engine counted ${formatCount(counts.charged)} charged of ${formatCount(summary.total)} rows (${JSON.stringify(counts)}), expected ${formatCount(file.users)}`,
        );
      }
    }
    return {
      // Without a summary the wall time falls back to the process's, and the sample is not clean.
      wallMs: summary?.wallMs ?? run.elapsedMs,
      elapsedMs: run.elapsedMs,
      clientCpuMs: run.cpuMs,
      problems,
      engine: run,
    };
  } finally {
    await rm(runDir, { recursive: true, force: true });
  }
}

async function billWithBareLoop(context: SampleContext, sample: string): Promise<Billed> {
  const { concurrency } = context;
  if (concurrency === 'auto') throw new TypeError('the bare loop has no `auto` concurrency');
  const loop = await runBareLoop({
    url: context.mock.url,
    requests: context.file.users,
    concurrency,
    sample: `${context.scenario}-${sample}`,
  });
  const problems: string[] = [];
  if (loop.errors > 0) {
    problems.push(`${formatCount(loop.errors)} errors ${JSON.stringify(loop.errorCodes)}`);
  }
  if (loop.ok < loop.requests - loop.errors)
    problems.push(`statuses ${JSON.stringify(loop.statuses)}`);
  return {
    wallMs: loop.wallMs,
    elapsedMs: loop.wallMs,
    clientCpuMs: loop.clientCpuMs,
    problems,
    bare: loop,
  };
}

/** Exactly-once, as the provider saw it: no duplicate charge, one charge per user. */
export function violationsOf(stats: MockProviderStats, users: number): string[] {
  const violations: string[] = [];
  if (stats.duplicate_charges !== 0) {
    violations.push(`${formatCount(stats.duplicate_charges)} duplicate charges`);
  }
  if (stats.charges !== users) {
    violations.push(
      `provider charged ${formatCount(stats.charges)} for ${formatCount(users)} users`,
    );
  }
  return violations;
}

/** With no faults, every user should take exactly one request. */
function requestProblems(side: Side, stats: MockProviderStats, users: number): string[] {
  if (stats.requests === users) return [];
  const extra = stats.requests - users;
  return [
    side === 'engine' && extra > 0
      ? `provider saw ${formatCount(stats.requests)} requests: ${formatCount(extra)} retries`
      : `provider saw ${formatCount(stats.requests)} requests for ${formatCount(users)} users`,
  ];
}

/**
 * Runs a sample again, up to `maxAttempts` in all, while neighbours used over
 * DISTURBED_OTHER_SHARE of a core during it; the last attempt is kept either way.
 */
export async function runCleanChargeSample(
  run: (attempt: number) => Promise<ChargeSample>,
  maxAttempts: number,
): Promise<ChargeSample> {
  const discarded: ChargeSample[] = [];
  for (let attempt = 1; ; attempt++) {
    const result = await run(attempt);
    if (attempt >= maxAttempts || !isDisturbed(result)) return { ...result, discarded };
    discarded.push(result);
  }
}

/** Whether the rest of the machine used over DISTURBED_OTHER_SHARE of a core during the sample. */
export function isDisturbed(sample: ChargeSample): boolean {
  return (
    sample.otherCpuMs !== undefined && sample.otherCpuMs / sample.elapsedMs > DISTURBED_OTHER_SHARE
  );
}

/** The measured samples of one side a median is taken over: the undisturbed ones, or all. */
export function medianSamples(samples: readonly ChargeSample[], side: Side): ChargeSample[] {
  return undisturbedOrAll(samples, side, isDisturbed);
}

/** The measured (not warm-up) samples of a side, the undisturbed ones if there are any. */
export function undisturbedOrAll<
  Sample extends { readonly side: string; readonly warmUp: boolean },
>(samples: readonly Sample[], side: string, disturbed: (sample: Sample) => boolean): Sample[] {
  const mine = samples.filter((sample) => !sample.warmUp && sample.side === side);
  const undisturbed = mine.filter((sample) => !disturbed(sample));
  return undisturbed.length > 0 ? undisturbed : mine;
}

/** The median of `figure` over medianSamples. */
export function medianOf(
  samples: readonly ChargeSample[],
  side: Side,
  figure: (sample: ChargeSample) => number,
): number {
  return median(medianSamples(samples, side).map(figure));
}

/** figure(engine) / figure(bare) within each back-to-back pair of measured samples, in the order run. */
export function pairedRatios(
  samples: readonly ChargeSample[],
  figure: (sample: ChargeSample) => number,
): number[] {
  const measured = samples.filter((sample) => !sample.warmUp);
  const ratios: number[] = [];
  for (let at = 0; at + 1 < measured.length; at += 2) {
    const pair = [measured[at], measured[at + 1]];
    const engine = pair.find((sample) => sample?.side === 'engine');
    const bare = pair.find((sample) => sample?.side === 'bare');
    if (engine && bare) ratios.push(figure(engine) / figure(bare));
  }
  return ratios;
}

/** `engine: median of 3; bare: median of 2 undisturbed (1 disturbed left out)`. */
export function describeMedians(samples: readonly ChargeSample[]): string {
  return (['engine', 'bare'] as const)
    .map((side) => {
      const all = samples.filter((sample) => !sample.warmUp && sample.side === side).length;
      const used = medianSamples(samples, side).length;
      const left = all - used;
      return `${side}: ${left === 0 ? `median of ${used}` : `median of ${used} undisturbed (${left} disturbed left out)`}`;
    })
    .join('; ');
}

/** Every correctness violation and problem, named by sample, warm-ups included. */
export function findingsOf(
  samples: readonly {
    readonly side: string;
    readonly warmUp: boolean;
    readonly violations: readonly string[];
    readonly problems: readonly string[];
  }[],
): {
  violations: string[];
  problems: string[];
} {
  const name = (sample: (typeof samples)[number], at: number) =>
    `sample ${at + 1} (${sample.side}${sample.warmUp ? ', warm-up' : ''})`;
  return {
    violations: samples.flatMap((sample, at) =>
      sample.violations.map((violation) => `${name(sample, at)}: ${violation}`),
    ),
    problems: samples.flatMap((sample, at) =>
      sample.problems.map((problem) => `${name(sample, at)}: ${problem}`),
    ),
  };
}

/** `3 disturbed attempts rerun; 1 sample kept though disturbed`, or ''. */
export function describeNoise(samples: readonly ChargeSample[]): string {
  const rerun = samples.reduce((sum, sample) => sum + sample.discarded.length, 0);
  const kept = samples.filter(isDisturbed).length;
  const plural = (count: number, noun: string) => `${count} ${noun}${count === 1 ? '' : 's'}`;
  return [
    rerun > 0 ? `${plural(rerun, 'disturbed attempt')} rerun` : '',
    kept > 0 ? `${plural(kept, 'sample')} kept though disturbed` : '',
  ]
    .filter((part) => part !== '')
    .join('; ');
}

function describeSample(sample: ChargeSample): string {
  const startup =
    sample.side === 'engine' ? ` (${formatSeconds(sample.elapsedMs)} with startup)` : '';
  const rss =
    sample.engine?.summary === undefined
      ? ''
      : `, peak RSS ${formatMebibytes(sample.engine.summary.peakRssBytes)}`;
  const count = sample.discarded.length;
  const rerun =
    count === 0 ? '' : ` (${count} disturbed attempt${count === 1 ? '' : 's'} thrown away)`;
  const findings = [...sample.violations, ...sample.problems];
  return (
    `${formatSeconds(sample.wallMs)}${startup}, ${formatCount(sample.chargesPerSecond)} charges/s${rss}` +
    rerun +
    (isDisturbed(sample) ? ' (disturbed)' : '') +
    (findings.length > 0 ? `; ${findings.join('; ')}` : '')
  );
}

/** The per-sample table every engine scenario prints. */
export function chargeSampleTable(samples: readonly ChargeSample[]): string {
  const rows = samples.map((sample, at) => {
    const summary = sample.engine?.summary;
    const latency = summary
      ? `${formatMilliseconds(summary.latencyMs.p50)} / ${formatMilliseconds(summary.latencyMs.p99)}`
      : sample.bare
        ? `${formatMilliseconds(sample.bare.latencyMs.p50)} / ${formatMilliseconds(sample.bare.latencyMs.p99)}`
        : '';
    return [
      String(at + 1),
      sample.warmUp ? `${sample.side} (warm-up)` : sample.side,
      formatCount(sample.users),
      formatSeconds(sample.wallMs),
      sample.side === 'engine' ? formatSeconds(sample.elapsedMs) : '',
      summary ? formatSeconds(summary.importMs) : '',
      formatCount(sample.chargesPerSecond),
      summary ? formatMebibytes(summary.peakRssBytes) : '',
      latency,
      formatCpuShare(sample.clientCpuMs, sample.elapsedMs),
      formatCpuShare(sample.serverCpuMs, sample.elapsedMs),
      formatCpuShare(sample.otherCpuMs, sample.elapsedMs),
      formatMebibytes(sample.providerRssBytes),
      describeQuietWait(sample.quietWait),
      String(sample.discarded.length),
      sample.providerStats
        ? `${formatCount(sample.providerStats.charges)} / ${formatCount(sample.providerStats.duplicate_charges)}`
        : '',
      [
        ...sample.violations.map((violation) => `CORRECTNESS VIOLATION: ${violation}`),
        ...sample.problems,
        ...(isDisturbed(sample) ? ['disturbed (over 30% of a core used by others)'] : []),
      ].join('; ') || 'ok',
    ];
  });
  return [
    "Wall: the engine's own `wallMs` (hashing, importing and billing, without Node and tsx startup), or the bare loop's. Elapsed: the engine process from spawn to exit. Charges/s: users / wall.",
    "Latency: per request, from the engine's summary or the bare loop (its p99 is taken from the sorted answers). CPU: share of one core, over the elapsed time, used by the billing side (the engine's process, or the bench process running the loop) / the mock provider / everything else on the machine. Mock RSS: the mock provider's resident memory right after the sample, holding every key of it.",
    "Before each sample the mock provider is reset and the bench waits (up to 30 s) until everything else uses under 20% of a core; a sample during which it used over 30% is thrown away and run again. Charges / duplicates: from the mock provider's GET /stats.",
    '',
    markdownTable(
      [
        '#',
        'side',
        'users',
        'wall',
        'elapsed',
        'import',
        'charges/s',
        'engine peak RSS',
        'latency p50 / p99',
        'CPU billing side',
        'CPU mock',
        'CPU other',
        'mock RSS',
        'waited for quiet',
        'disturbed, rerun',
        'charges / duplicates',
        'checks',
      ],
      rows,
      ['right', 'left', ...Array<'right'>(14).fill('right'), 'left'],
    ),
  ].join('\n');
}
