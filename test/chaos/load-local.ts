import { join } from 'node:path';
import { lastJsonLine } from '../../bench/lib/cli-process.js';
import { type UsersFile, writeUsersCsv } from '../../bench/lib/users-file.js';
import { startMockProvider } from '../../src/mock-provider/index.js';
import type { RunSummary } from '../../src/report/summary.js';
import { runBareLoopProcess } from './load-bare.js';
import type { LedgerFigures } from './load-check.js';
import {
  describeNoise,
  LoadSampler,
  measureNoise,
  type SteadyWindow,
  steadyWindow,
} from './load-memory.js';
import {
  type Baseline,
  type Billed,
  checkedRun,
  describeExit,
  faultyProvider,
  type LoadResult,
  quietMachine,
  spawnTracked,
  until,
} from './load-result.js';

/** bench's engine-1m-import and engine-100k-throughput bill 256 at a time at zero latency. */
export const LOCAL_CONCURRENCY = 256;
const MAX_ATTEMPTS = 5;
/** The one kill -9: once the provider holds this share of the users' charges. */
const KILL_AT = 0.4;
/** Launches in all before the run is called stuck. */
const MAX_LAUNCHES = 6;

export interface LoadOptions {
  readonly users: number;
  readonly seed: number;
  /** Where inputs, ledgers and reports go (a temporary folder). */
  readonly dir: string;
  readonly progress: (line: string) => void;
}

/**
 * The local engine under load: `bulkbill run` of `users` users against the mock provider at zero
 * latency with a mild fault mix, killed -9 once at 40% charged and run again with the same
 * command until it ends; then the checks, and then, in the same run, the bare loop against a
 * clean provider as the baseline (bench's baseline for this engine).
 */
export async function localLoad(options: LoadOptions): Promise<LoadResult> {
  const { users, seed, dir, progress } = options;
  const input = await writeUsersCsv(join(dir, 'local-users.csv'), users);
  progress(`wrote ${users.toLocaleString('en-US')} users in ${Math.round(input.writeMs)} ms`);
  // Billed and checked first; the faulty provider (a million keys) is gone before the baseline.
  const billed = await billWithFaults(options, input);
  const bare = await bareBaseline(options, LOCAL_CONCURRENCY);
  return {
    ...billed,
    engine: 'local',
    users,
    seed,
    billedBy: `bulkbill run --concurrency ${LOCAL_CONCURRENCY} (SQLite ledger)`,
    baselines: [bare.baseline],
    problems: [...billed.problems, ...bare.problems],
  };
}

async function billWithFaults(options: LoadOptions, input: UsersFile): Promise<Billed> {
  const { users, seed, dir, progress } = options;
  const quiet = await quietMachine(progress, 'the run');
  const provider = await startMockProvider(faultyProvider(seed));
  const sampler = new LoadSampler(() => provider.stats(), users);
  sampler.track('load test + mock provider (in-process)', process.pid);
  sampler.start();
  const noise = measureNoise();
  const ledgerPath = join(dir, 'local-ledger.db');
  const report = join(dir, 'local-report.csv');
  const runId = `load-local-${seed}`;
  const command = [
    'run',
    input.path,
    ...['--endpoint', provider.chargeUrl, '--run-id', runId],
    ...['--ledger', ledgerPath, '--report', report],
    ...['--concurrency', String(LOCAL_CONCURRENCY), '--max-attempts', String(MAX_ATTEMPTS)],
    '--json',
  ];
  const problems: string[] = [];
  const faults: Record<string, number> = {};
  const windows: SteadyWindow[] = [];
  const started = performance.now();
  let ended = started;
  let summary: RunSummary | undefined;
  let killed = false;
  try {
    for (let launch = 1; launch <= MAX_LAUNCHES; launch++) {
      const cli = spawnTracked(sampler, `bulkbill run #${launch}`, command);
      const spawnedAt = performance.now();
      let exitedYet = false;
      void cli.exited.then(() => {
        exitedYet = true;
      });
      let killedAt: number | undefined;
      if (!killed) {
        void until(
          () => provider.stats().charges >= users * KILL_AT,
          () => exitedYet,
          10,
        ).then((reached) => {
          if (!reached) return;
          killedAt = performance.now();
          killed = true;
          faults['kill -9 of bulkbill run'] = 1;
          progress(
            `kill -9 of bulkbill run #${launch} (pid ${cli.pid}) at ${provider.stats().charges.toLocaleString('en-US')} charges`,
          );
          cli.kill('SIGKILL');
        });
      }
      const exit = await cli.exited;
      ended = performance.now();
      progress(
        `bulkbill run #${launch}: ${describeExit(exit)} after ${((ended - spawnedAt) / 1_000).toFixed(1)} s, provider ${provider.stats().charges.toLocaleString('en-US')} charges`,
      );
      // Billing between faults: from this launch's first charge to the kill, or to 99% (the
      // last retries' back-off is not the steady rate).
      const to =
        killedAt ?? Math.min(sampler.timeOfCharges(users * 0.99, spawnedAt) ?? ended, ended);
      const window = steadyWindow(
        sampler,
        killedAt === undefined
          ? `run #${launch}, its first charge to 99%`
          : `run #${launch}, its first charge to the kill`,
        sampler.firstChargeAfter(spawnedAt),
        to,
      );
      if (window) windows.push(window);
      if (exit.signal === 'SIGKILL' && killedAt !== undefined) continue;
      const parsed = lastJsonLine(exit.stdout) as RunSummary | undefined;
      if (exit.exitCode !== 0 || parsed?.counts === undefined) {
        problems.push(
          `bulkbill run #${launch} ${describeExit(exit)}, expected exit 0: ${exit.stderrTail.split('\n').slice(-3).join(' / ')}`,
        );
        break;
      }
      summary = parsed;
      if (parsed.counts.pending === 0) break;
    }
    if (!killed) problems.push(`the run ended before the kill -9 at ${KILL_AT * 100}% could land`);
    if (summary?.counts.pending !== 0) problems.push('the run did not end');

    // The ledger's own word on the run, read by another process.
    const status = spawnTracked(sampler, 'bulkbill status', [
      'status',
      ...['--ledger', ledgerPath, '--run-id', runId, '--json'],
    ]);
    const statusExit = await status.exited;
    const ledger = lastJsonLine(statusExit.stdout) as LedgerFigures | undefined;
    if (statusExit.exitCode !== 0 || ledger?.counts === undefined) {
      problems.push(`bulkbill status ${describeExit(statusExit)}: ${statusExit.stderrTail}`);
    }
    sampler.stop();
    const noiseNow = noise();
    return await checkedRun({
      sampler,
      provider,
      report,
      inputPath: input.path,
      users,
      maxAttempts: MAX_ATTEMPTS,
      ledger,
      faults,
      startedAt: started,
      endedAt: ended,
      windows,
      problems,
      notes: [
        `input: ${(input.bytes / 1_048_576).toFixed(1)} MiB CSV, written in ${Math.round(input.writeMs)} ms`,
        `while it billed (first run to status): ${describeNoise(noiseNow)}; before it, ${quiet}`,
        ...(summary === undefined
          ? []
          : [
              `the last \`bulkbill run\`'s summary: import ${Math.round(summary.importMs)} ms (finding the run again by content on resume), its own wall ${(summary.wallMs / 1_000).toFixed(1)} s, its peakRssBytes ${summary.peakRssBytes.toLocaleString('en-US')}`,
            ]),
      ],
      progress,
    });
  } finally {
    sampler.stop();
    await provider.close({ graceMs: 0 });
  }
}

/**
 * bench/lib/bare-loop.ts in a process of its own against a clean provider in this one, the same
 * number of charges at the same concurrency: the baseline `npm run bench` puts beside the local
 * engine (engine-1m-import, engine-100k-throughput).
 */
export async function bareBaseline(
  options: LoadOptions,
  concurrency: number,
): Promise<{ baseline: Baseline; problems: string[] }> {
  const { users, seed, progress } = options;
  progress(
    `baseline: the bare loop, ${users.toLocaleString('en-US')} charges at c=${concurrency}, against a clean provider`,
  );
  const clean = await startMockProvider({
    ...faultyProvider(seed),
    failRate: 0,
    lostRate: 0,
    resetRate: 0,
  });
  const quiet = await quietMachine(progress, 'baseline');
  const noise = measureNoise();
  try {
    const loop = await runBareLoopProcess({
      url: clean.url,
      requests: users,
      concurrency,
      sample: `load-${seed}`,
    });
    const noiseNow = noise();
    const perSecond = (users * 1_000) / loop.wallMs;
    progress(`baseline: ${Math.round(perSecond).toLocaleString('en-US')} charges/s`);
    const stats = clean.stats();
    const problems =
      loop.ok === users && stats.charges === users && stats.duplicate_charges === 0
        ? []
        : [
            `baseline: the bare loop got ${loop.ok} 2xx of ${users} (errors ${JSON.stringify(loop.errorCodes)}), the provider ${stats.charges} charges`,
          ];
    return {
      baseline: {
        name: 'bare loop',
        perSecond,
        detail: `bench/lib/bare-loop.ts in its own process, ${users.toLocaleString('en-US')} charges at c=${concurrency}, no faults: ${(loop.wallMs / 1_000).toFixed(1)} s; ${describeNoise(noiseNow)}; before it, ${quiet}`,
      },
      problems,
    };
  } finally {
    await clean.close({ graceMs: 0 });
  }
}
