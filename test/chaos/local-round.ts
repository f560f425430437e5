import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { type MockProvider, startMockProvider } from '../../src/mock-provider/index.js';
import { type CliProcess, runCli, spawnCli } from '../helpers/cli.js';
import {
  addedUsers,
  type ChaosUser,
  chaosUsers,
  type FileStyle,
  writeChaosInput,
} from './input.js';
import { ATTEMPT_TIMEOUT_MS, drawProfile, drawProviderFaults, providerFlags } from './provider.js';
import { Random } from './random.js';
import { type FaultTally, finishRound, lastJson, type RoundResult, sleep, tally } from './round.js';

/** Launches with a fault at most; then the run is resumed without faults until it ends. */
const FAULTY_LAUNCHES = 4;
const MAX_CALM_LAUNCHES = 8;

/**
 * One round on the local engine: a billing cycle of awkward ids, a provider with a fault mix,
 * and `bulkbill run` killed (-9, TERM, INT) at random moments, the provider going down (503s,
 * or a restart that keeps its keys) meanwhile, the operator editing the file between runs
 * (a re-export in another order, CRLF, a BOM, NDJSON; typos fixed; users added); then the
 * same command run again, as docs/guarantees.md tells an operator, until the run ends.
 */
export async function localRound(seed: number, workDir: string): Promise<RoundResult> {
  const started = performance.now();
  const random = new Random(seed, 'local');
  const faults: FaultTally = {};
  const dir = join(workDir, `local-${seed}`);
  await mkdir(dir, { recursive: true });
  let users: ChaosUser[] = chaosUsers(random, random.int(100, 500), random.int(0, 3));
  let style: FileStyle = {
    format: random.pick(['csv', 'ndjson'] as const),
    bom: random.chance(0.3),
    crlf: random.chance(0.5),
    shuffle: 0,
  };
  const profile = drawProfile(seed);
  const provider: MockProvider = await startMockProvider({
    port: 0,
    ...(profile === 'default' ? {} : { shape: profile }),
    ...drawProviderFaults(random, faults),
  });
  const ledger = join(dir, 'ledger.db');
  const report = join(dir, 'report.csv');
  const maxAttempts = random.int(3, 6);
  const flags = [
    ...(await providerFlags(profile, provider, dir)),
    ...['--ledger', ledger, '--report', report],
    ...['--concurrency', String(random.int(4, 48)), '--max-attempts', String(maxAttempts)],
    ...['--timeout', `${ATTEMPT_TIMEOUT_MS}ms`, '--skip-invalid', '--json'],
  ];
  const log: string[] = [];
  let input = '';
  const write = async () => {
    input = join(dir, `cycle.${style.format}`);
    await writeChaosInput(input, users, style, (items, shuffleSeed) =>
      new Random(shuffleSeed, 'shuffle').shuffle(items),
    );
  };
  await write();
  const violations: string[] = [];
  let finished = false;
  let launches = 0;
  try {
    for (let launch = 0; launch < FAULTY_LAUNCHES + MAX_CALM_LAUNCHES && !finished; launch++) {
      launches++;
      const faulty = launch < FAULTY_LAUNCHES && random.chance(0.8);
      const cli = spawnCli(['run', input, ...flags]);
      const timers: NodeJS.Timeout[] = [];
      let signalled: string | undefined;
      // Faults land while it bills: timed from the moment it says which run it bills.
      const billing = untilBilling(cli);
      if (faulty) {
        const signal = random.pick(['SIGKILL', 'SIGKILL', 'SIGTERM', 'SIGINT'] as const);
        const at = random.int(0, 1_500);
        void billing.then(() => {
          timers.push(
            setTimeout(() => {
              if (cli.child.exitCode === null && cli.child.signalCode === null) {
                signalled = signal;
                tally(faults, `${signal === 'SIGKILL' ? 'kill -9' : signal} of run`);
                cli.child.kill(signal);
              }
            }, at),
          );
        });
      }
      if (launch < FAULTY_LAUNCHES && random.chance(0.3)) {
        const mode = random.pick(['503', 'restart'] as const);
        const ms = random.int(300, 2_500);
        const at = random.int(0, 1_500);
        void billing.then(() => {
          timers.push(
            setTimeout(() => {
              tally(faults, mode === '503' ? 'provider outage (503)' : 'provider restart');
              void provider.outage(ms, mode);
            }, at),
          );
        });
      }
      const code = await cli.exited;
      for (const timer of timers) clearTimeout(timer);
      log.push(`launch ${launch + 1}: exit ${code}${signalled ? ` after ${signalled}` : ''}`);
      finished = await settled(cli, code, signalled, log, violations);
      if (!finished && code !== 0 && code !== 1 && signalled === undefined && code !== 130) {
        // An exit the operator would have to act on: stop here, the checks below say the rest.
        break;
      }
      if (!finished) await operatorEdits();
    }
    if (!finished)
      violations.push(`the run did not end after ${launches} launches: ${log.join('; ')}`);
    // The final word: the report of the run, written again by `bulkbill report`.
    const runs = await runCli(['status', '--ledger', ledger, '--json']);
    const runId = runIdOf(runs.stdout);
    if (runId === undefined) {
      violations.push(`no run in the ledger: ${runs.stdout}${runs.stderr}`);
    } else {
      const written = await runCli([
        'report',
        '--ledger',
        ledger,
        '--run-id',
        runId,
        '--out',
        report,
      ]);
      if (written.code !== 0) violations.push(`report: exit ${written.code}: ${written.stderr}`);
    }
    return await finishRound({
      seed,
      engine: 'local',
      profile,
      users,
      launches,
      faults,
      maxAttempts,
      report,
      provider,
      violations,
      log,
      started,
    });
  } finally {
    await provider.close({ graceMs: 0 });
  }

  async function operatorEdits(): Promise<void> {
    if (random.chance(0.35)) {
      style = {
        format: random.chance(0.2) ? (style.format === 'csv' ? 'ndjson' : 'csv') : style.format,
        bom: random.chance(0.3),
        crlf: random.chance(0.5),
        shuffle: random.int(1, 1_000_000),
      };
      tally(faults, 'operator re-export');
    }
    const broken = users.filter((user) => user.broken);
    if (broken.length > 0 && random.chance(0.4)) {
      for (const user of broken) user.broken = false;
      tally(faults, 'operator fixes rows');
    }
    if (random.chance(0.25)) {
      users = [...users, ...addedUsers(random, users.length, random.int(1, 20))];
      tally(faults, 'operator adds users');
    }
    await write();
  }
}

/** Resolves once the run says which run it bills (it then bills), or once it has exited. */
async function untilBilling(cli: CliProcess): Promise<void> {
  while (cli.child.exitCode === null && cli.child.signalCode === null) {
    if (/bulkbill: (?:new run|resuming|run) /.test(cli.stderr())) return;
    await sleep(10);
  }
}

/** Whether the launch ended the run; an exit code that no fault explains is a violation. */
async function settled(
  cli: CliProcess,
  code: number,
  signalled: string | undefined,
  log: string[],
  violations: string[],
): Promise<boolean> {
  if (signalled === 'SIGKILL') return false;
  if (code === 0 || code === 1) {
    // The summary on stdout says whether charges are left (a stop by signal leaves them pending).
    const summary = lastJson(cli.stdout());
    const pending = (summary?.counts as Record<string, number> | undefined)?.pending;
    return pending === 0;
  }
  if (code === 130 && signalled !== undefined) return false;
  violations.push(
    `run exited ${code}${signalled ? ` after ${signalled}` : ''}: ${cli.stderr().slice(-2_000)}`,
  );
  log.push(cli.stderr().slice(-500));
  await sleep(0);
  return false;
}

function runIdOf(statusOutput: string): string | undefined {
  const parsed = lastJson(statusOutput);
  if (parsed === undefined) return undefined;
  if (typeof parsed.runId === 'string') return parsed.runId;
  const runs = parsed.runs as { runId?: string }[] | undefined;
  return runs?.[0]?.runId;
}
