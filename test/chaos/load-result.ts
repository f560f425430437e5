import { type CliExit, spawnBulkbill } from '../../bench/lib/cli-process.js';
import { describeQuietWait, waitForQuietMachine } from '../../bench/lib/quiet-machine.js';
import type {
  MockProvider,
  MockProviderOptions,
  MockProviderStats,
} from '../../src/mock-provider/index.js';
import { checkLoad, inputUsdTotal, type LedgerFigures, type LoadCheck } from './load-check.js';
import {
  type LoadSampler,
  type SteadyWindow,
  steadyRate,
  type TrackedProcess,
} from './load-memory.js';

export type LoadEngine = 'local' | 'distributed';

/** A baseline measured in the same run, beside which the run's rate is shown. */
export interface Baseline {
  readonly name: string;
  readonly perSecond: number;
  /** How it was measured, in words. */
  readonly detail: string;
}

/** What one load run did and found. */
export interface LoadResult {
  readonly engine: LoadEngine;
  readonly users: number;
  readonly seed: number;
  /** Who billed, e.g. `bulkbill run, --concurrency 256`. */
  readonly billedBy: string;
  /** Faults injected, by kind: bulkbill's (kill -9 …) and the provider's, as it counted them. */
  readonly faults: Readonly<Record<string, number>>;
  /** From the first bulkbill process started to the run's end (its last process's exit). */
  readonly wallMs: number;
  /** From the provider's first request to its last charge. */
  readonly spanMs: number | undefined;
  /** Billing between faults, trimmed at both ends. */
  readonly windows: readonly SteadyWindow[];
  readonly steadyPerSecond: number;
  readonly baselines: readonly Baseline[];
  readonly processes: readonly TrackedProcess[];
  readonly check: LoadCheck | undefined;
  /** Broken expectations outside the report check: exit statuses, a fault that never landed. */
  readonly problems: readonly string[];
  readonly provider: MockProviderStats;
  /** Further figures, one line each (Redis memory, enqueue rate, …). */
  readonly notes: readonly string[];
}

/**
 * The provider's fault mix in every load run: mild, at zero latency (bench's speed): 1% 503
 * before charging, 0.3% answers lost after charging, 0.3% connections reset halfway through
 * the answer after charging. No declines: every user must end charged.
 */
export function faultyProvider(seed: number): MockProviderOptions {
  return {
    port: 0,
    latencyMs: 0,
    jitter: 0,
    seed,
    failRate: 0.01,
    lostRate: 0.003,
    resetRate: 0.003,
    shutdownGraceMs: 0,
  };
}

/** The provider's own tally of the faults it injected. */
export function providerFaults(stats: MockProviderStats): Record<string, number> {
  return {
    '503 before charging': stats.failed_503,
    'answer lost after charging': stats.lost,
    'reset mid-answer': stats.reset_mid_body,
  };
}

/** A bulkbill process whose memory the sampler follows until it exits. */
export interface TrackedCli {
  readonly pid: number;
  readonly tracked: TrackedProcess;
  readonly exited: Promise<CliExit>;
  kill(signal?: NodeJS.Signals): void;
}

/**
 * `bulkbill <args>` started as a user would (bench/lib/cli-process.ts: Node, tsx, the sources;
 * its maxRSS written at exit by bench/lib/peak-rss-preload.ts), followed by the sampler.
 */
export function spawnTracked(
  sampler: LoadSampler,
  label: string,
  args: readonly string[],
  onStderrLine?: (line: string) => void,
): TrackedCli {
  const cli = spawnBulkbill(args, {
    peakRss: true,
    timeoutMs: 30 * 60_000,
    ...(onStderrLine === undefined ? {} : { onStderrLine }),
  });
  const tracked = sampler.track(label, cli.pid);
  const exited = cli.exited.then((exit) => {
    sampler.ended(tracked, describeExit(exit), exit.peakRssBytes);
    return exit;
  });
  return { pid: cli.pid, tracked, exited, kill: (signal) => cli.kill(signal) };
}

export function describeExit(exit: Pick<CliExit, 'exitCode' | 'signal'>): string {
  return exit.signal ?? `exit ${exit.exitCode}`;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resolves once `condition` holds (polled every `everyMs`), or once `giveUp` does: false then. */
export async function until(
  condition: () => boolean,
  giveUp: () => boolean,
  everyMs = 20,
): Promise<boolean> {
  for (;;) {
    if (condition()) return true;
    if (giveUp()) return false;
    await sleep(everyMs);
  }
}

/**
 * bench's wait for a quiet machine (bench/lib/quiet-machine.ts: everything else under 0.2 of a
 * core for 500 ms, at most 30 s) before a measured phase; says how long it waited.
 */
export async function quietMachine(
  progress: (line: string) => void,
  what: string,
  ownPids: readonly number[] = [],
): Promise<string> {
  const wait = await waitForQuietMachine({ serverPids: ownPids });
  const said = `waited ${describeQuietWait(wait)} for a quiet machine`;
  if (wait.waitedMs > 1_000 || !wait.quiet) progress(`${what}: ${said}`);
  return said;
}

/** What a faulty run yields before its baselines are measured. */
export type Billed = Omit<LoadResult, 'engine' | 'users' | 'seed' | 'billedBy' | 'baselines'>;

/**
 * The end of a faulty run, on either engine: its report checked against the provider and the
 * ledger's own figures, and its timings and faults gathered. Call with the sampler stopped.
 */
export async function checkedRun(run: {
  readonly sampler: LoadSampler;
  readonly provider: MockProvider;
  readonly report: string;
  readonly inputPath: string;
  readonly users: number;
  readonly maxAttempts: number;
  readonly ledger: LedgerFigures | undefined;
  readonly faults: Readonly<Record<string, number>>;
  readonly startedAt: number;
  readonly endedAt: number;
  readonly windows: readonly SteadyWindow[];
  readonly problems: readonly string[];
  readonly notes: readonly string[];
  readonly progress: (line: string) => void;
}): Promise<Billed> {
  const { sampler, provider, progress, ledger } = run;
  const firstRequest = sampler.firstRequestAt();
  const lastCharge = sampler.timeOfCharges(provider.stats().charges);
  progress('checking the report against the provider');
  const check = await checkLoad(run.report, provider, {
    users: run.users,
    maxAttempts: run.maxAttempts,
    usdTotal: await inputUsdTotal(run.inputPath),
    ledger: ledger?.counts === undefined ? undefined : ledger,
  });
  progress(`checked ${check.rows.toLocaleString('en-US')} rows in ${Math.round(check.ms)} ms`);
  const stats = provider.stats();
  return {
    faults: { ...run.faults, ...providerFaults(stats) },
    wallMs: run.endedAt - run.startedAt,
    spanMs:
      firstRequest === undefined || lastCharge === undefined
        ? undefined
        : lastCharge - firstRequest,
    windows: run.windows,
    steadyPerSecond: steadyRate(run.windows),
    processes: sampler.processes,
    check,
    problems: run.problems,
    provider: stats,
    notes: run.notes,
  };
}
