import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import Database from 'better-sqlite3';
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
/** `--retry-failed` launches the operator may make after the run ended. */
const MAX_RETRY_LAUNCHES = 2;

/**
 * One round on the local engine: a billing cycle of awkward ids, a provider with a fault mix,
 * and `bulkbill run` killed (-9, TERM, INT) at random moments, the provider going down (503s,
 * or a restart that keeps its keys) meanwhile, the operator editing the file between runs
 * (a re-export in another order, CRLF, a BOM, NDJSON; typos fixed; users added or removed)
 * and making the mistakes the run must refuse without a request (an amount changed, a second
 * spelling of an id); then the same command run again, as docs/guarantees.md tells an
 * operator, until the run ends; and, when charges ended failed or unknown, `--retry-failed`
 * (perhaps killed -9 too, then run again) until none is left to retry or the operator stops.
 */
export async function localRound(seed: number, workDir: string): Promise<RoundResult> {
  const started = performance.now();
  const random = new Random(seed, 'local');
  // The operator's own moves draw from a stream of their own: the rest of the plan stays put.
  const operator = new Random(seed, 'local-operator');
  const faults: FaultTally = {};
  const dir = join(workDir, `local-${seed}`);
  await mkdir(dir, { recursive: true });
  let users: ChaosUser[] = chaosUsers(random, random.int(100, 500), random.int(0, 3));
  /** Users the operator removed from the file after the run held them: still in its report. */
  const removed: ChaosUser[] = [];
  /** Launches with --retry-failed: each gives the failed charges a new round of attempts. */
  let retryRounds = 0;
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
  let summary: Record<string, unknown> | undefined;

  /** One `bulkbill run`, perhaps with a fault; whether it ended the run, or undefined to stop. */
  async function launchOnce(
    launch: number,
    faulty: boolean,
    mayOutage: boolean,
    extra: readonly string[] = [],
    longOutageMs = 0,
  ): Promise<boolean | undefined> {
    launches++;
    const cli = spawnCli(['run', input, ...flags, ...extra]);
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
    if (mayOutage && random.chance(0.3)) {
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
    if (longOutageMs > 0) {
      // Longer than the retries' backoff: charges end failed, for --retry-failed to retry.
      void billing.then(() => {
        tally(faults, 'long provider outage (503): charges fail');
        void provider.outage(longOutageMs, '503');
      });
    }
    const code = await cli.exited;
    for (const timer of timers) clearTimeout(timer);
    log.push(
      `launch ${launch + 1}${extra.length > 0 ? ` (${extra.join(' ')})` : ''}: exit ${code}${signalled ? ` after ${signalled}` : ''}`,
    );
    const ended = await settled(cli, code, signalled, log, violations);
    if (ended) summary = lastJson(cli.stdout());
    if (!ended && code !== 0 && code !== 1 && signalled === undefined && code !== 130) {
      // An exit the operator would have to act on: stop here, the checks below say the rest.
      return undefined;
    }
    return ended;
  }

  try {
    for (let launch = 0; launch < FAULTY_LAUNCHES + MAX_CALM_LAUNCHES && !finished; launch++) {
      const faulty = launch < FAULTY_LAUNCHES && random.chance(0.8);
      const longOutageMs = launch === 0 && operator.chance(0.3) ? operator.int(5_000, 10_000) : 0;
      const ended = await launchOnce(launch, faulty, launch < FAULTY_LAUNCHES, [], longOutageMs);
      if (ended === undefined) break;
      finished = ended;
      if (!finished) await operatorEdits();
    }
    // Charges that ended failed or unknown: the operator retries them, as the summary says.
    for (let retry = 0; finished && retry < MAX_RETRY_LAUNCHES && leftToRetry(summary) > 0; ) {
      if (!operator.chance(0.7)) break;
      retry++;
      retryRounds++;
      tally(faults, 'operator --retry-failed');
      const killed = operator.chance(0.4);
      const ended = await launchOnce(launches, killed, false, ['--retry-failed']);
      if (ended === undefined) {
        finished = false;
        break;
      }
      // Killed mid-way: the same command again, until the run has ended again.
      finished = ended;
      for (let again = 0; !finished && again < MAX_CALM_LAUNCHES; again++) {
        const resumed = await launchOnce(launches, false, false, ['--retry-failed']);
        retryRounds++;
        if (resumed === undefined) break;
        finished = resumed;
      }
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
      users: [...users, ...removed],
      launches,
      faults,
      maxAttempts: maxAttempts * (1 + retryRounds),
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
      // Numbered after every user the file ever held: a removed user's id is never reused.
      users = [...users, ...addedUsers(random, users.length + removed.length, random.int(1, 20))];
      tally(faults, 'operator adds users');
    }
    await write();
    await operatorMistakes();
  }

  /**
   * What the run holds decides what the operator can get wrong: a user it holds removed from
   * the file (left as it is, still reported), or its amount changed or its id spelled a second
   * way (refused, exit 2, before any request; then put back as it was).
   */
  async function operatorMistakes(): Promise<void> {
    const held = usersInRun(ledger);
    const candidates = users.filter((user) => !user.broken && held.has(user.userId));
    if (candidates.length === 0) return;
    if (operator.chance(0.2)) {
      const gone = new Set(operator.sample(candidates, operator.int(1, 10)));
      removed.push(...gone);
      users = users.filter((user) => !gone.has(user));
      tally(faults, 'operator removes users');
      await write();
    }
    const still = candidates.filter((user) => users.includes(user));
    if (still.length > 0 && operator.chance(0.2)) {
      const victim = operator.pick(still);
      const index = users.indexOf(victim);
      const edited = [...users];
      edited[index] = { ...victim, amount: victim.amount + operator.int(1, 500) };
      await mistake('operator changes an amount (refused)', edited);
    }
    const twins = still.filter((user) => user.userId.toUpperCase() !== user.userId);
    if (twins.length > 0 && operator.chance(0.15)) {
      const victim = operator.pick(twins);
      const twin = { ...victim, userId: victim.userId.toUpperCase(), ref: `t${victim.ref}` };
      // With --skip-invalid (the round's flag) the second spelling is recorded invalid and the
      // rest billed; it is never sent.
      await mistake('operator adds a second spelling of an id (invalid)', [...users, twin], twin);
    }
  }

  /**
   * Runs the command on `edited`, then puts the file back. Without `twin`: it must exit 2 and
   * send nothing. With one: the run goes on, `twin` recorded invalid and never sent.
   */
  async function mistake(kind: string, edited: ChaosUser[], twin?: ChaosUser): Promise<void> {
    tally(faults, kind);
    await writeChaosInput(input, edited, style, (items, shuffleSeed) =>
      new Random(shuffleSeed, 'shuffle').shuffle(items),
    );
    const before = provider.stats().requests;
    launches++;
    const result = await runCli(['run', input, ...flags]);
    const sent = provider.stats().requests - before;
    log.push(`${kind}: exit ${result.code}, ${sent} requests`);
    if (twin === undefined && (result.code !== 2 || sent !== 0)) {
      violations.push(
        `${kind}: exit ${result.code} and ${sent} requests, expected exit 2 and none: ${result.stderr.slice(-1_000)}`,
      );
    }
    if (twin !== undefined) {
      const state = stateInRun(ledger, twin.userId);
      if ((result.code !== 0 && result.code !== 1) || state !== 'invalid') {
        violations.push(
          `${kind}: exit ${result.code}, ${twin.userId} ${state ?? 'not in the run'}, expected it invalid and the run billed: ${result.stderr.slice(-1_000)}`,
        );
      }
      if (provider.chargesOf(twin.userId).length > 0) {
        violations.push(`${kind}: the provider charged ${twin.userId}`);
      }
    }
    await write();
  }
}

/** The user ids the round's run holds (one run per ledger), read between launches. */
function usersInRun(ledger: string): Set<string> {
  let db: Database.Database | undefined;
  try {
    db = new Database(ledger, { readonly: true, fileMustExist: true });
    const rows = db.prepare('SELECT user_id FROM charges').pluck().all() as string[];
    return new Set(rows);
  } catch {
    return new Set();
  } finally {
    db?.close();
  }
}

/** The state of one user's charge in the round's run, or undefined. */
function stateInRun(ledger: string, userId: string): string | undefined {
  let db: Database.Database | undefined;
  try {
    db = new Database(ledger, { readonly: true, fileMustExist: true });
    return db.prepare('SELECT state FROM charges WHERE user_id = ?').pluck().get(userId) as
      | string
      | undefined;
  } catch {
    return undefined;
  } finally {
    db?.close();
  }
}

/** Charges the summary says ended failed or unknown. */
function leftToRetry(summary: Record<string, unknown> | undefined): number {
  const counts = summary?.counts as Record<string, number> | undefined;
  return (counts?.failed ?? 0) + (counts?.unknown ?? 0);
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
