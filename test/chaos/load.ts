/**
 * The load test: `npm run load -- [--engine local|distributed|both] [--users N] [--workers N]
 * [--seed S] [--keep]`.
 *
 * - local (default 1,000,000 users): `bulkbill run` at zero latency against the mock provider
 *   with a mild fault mix (1% 503, 0.3% answers lost, 0.3% resets mid-answer), killed -9 once at
 *   40% charged and run again with the same command until the run ends.
 * - distributed (default 200,000 users): `bulkbill enqueue` into a Redis of its own (append-only,
 *   fsync every second), `--workers` (4) × `bulkbill worker` at 256 in flight in all, one of them
 *   killed -9 at 40% charged and a new one started, `bulkbill status --wait`, `bulkbill report`.
 *
 * Then it checks that nothing was lost and nothing duplicated (test/chaos/load-check.ts: every
 * input row in the report once and charged, the provider holding exactly that charge, by id, and
 * no other, the ledger counting every user and the input's amount), prints each bulkbill
 * process's peak RSS and its RSS at 25/50/75/100% charged (read from /proc once a second), and the
 * run's charges/s (overall, over the provider's span, and steady between faults) beside a
 * baseline measured in the same run, `npm run bench`'s for that engine: the bare loop for the
 * local engine, the local engine (and the bare loop) for the distributed one. Progress goes to
 * stderr, the markdown report to stdout. Exit status 1 when any check failed (each is printed).
 */
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import os, { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { formatCount, formatMebibytes, formatRatio } from '../../bench/lib/figures.js';
import { markdownTable } from '../../bench/lib/report.js';
import { distributedLoad } from './load-distributed.js';
import { localLoad } from './load-local.js';
import { PROGRESS_MARKS } from './load-memory.js';
import type { LoadEngine, LoadResult } from './load-result.js';

const DEFAULT_USERS: Readonly<Record<LoadEngine, number>> = {
  local: 1_000_000,
  distributed: 200_000,
};

function usage(message: string): never {
  process.stderr.write(`load: ${message}\n`);
  process.exit(2);
}

const { values } = parseArgs({
  options: {
    engine: { type: 'string', default: 'both' },
    users: { type: 'string' },
    workers: { type: 'string', default: '4' },
    seed: { type: 'string' },
    keep: { type: 'boolean', default: false },
  },
  strict: true,
  allowPositionals: false,
});
const engineFlag = values.engine;
if (engineFlag !== 'local' && engineFlag !== 'distributed' && engineFlag !== 'both') {
  usage(`--engine must be local, distributed or both, got ${engineFlag}`);
}
const engines: LoadEngine[] = engineFlag === 'both' ? ['local', 'distributed'] : [engineFlag];
const wholeNumber = (flag: string, text: string | undefined, least: number): number | undefined => {
  if (text === undefined) return undefined;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < least)
    usage(`${flag} must be a whole number of at least ${least}, got ${text}`);
  return value;
};
const usersFlag = wholeNumber('--users', values.users, 100);
const workers = wholeNumber('--workers', values.workers, 2) as number;
const seed = wholeNumber('--seed', values.seed, 0) ?? Math.floor(Math.random() * 0xffff_ffff);
if (seed > 0xffff_ffff) usage(`--seed must be at most ${0xffff_ffff}, got ${seed}`);

const workDir = await mkdtemp(join(tmpdir(), 'bulkbill-load-'));
const cleanUp = () => {
  if (!values.keep) rmSync(workDir, { recursive: true, force: true });
};
process.once('exit', cleanUp);
// Ctrl-C: exit, so that the exit handlers kill every process started (bench/lib/cli-process.ts
// kills its children, the distributed run its Redis) and remove the folder.
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(130));

const startedAt = new Date();
const started = performance.now();
process.stderr.write(
  `load: ${engines.map((engine) => `${engine} ${formatCount(usersFlag ?? DEFAULT_USERS[engine])} users`).join(', ')}, seed ${seed}, in ${workDir}\n`,
);
const results: LoadResult[] = [];
const crashes: string[] = [];
for (const engine of engines) {
  const users = usersFlag ?? DEFAULT_USERS[engine];
  const progress = (line: string) =>
    process.stderr.write(
      `load [${engine}] ${((performance.now() - started) / 1_000).toFixed(1)} s: ${line}\n`,
    );
  try {
    const options = { users, seed, dir: workDir, progress };
    results.push(
      engine === 'local'
        ? await localLoad(options)
        : await distributedLoad({ ...options, workers }),
    );
  } catch (error) {
    crashes.push(`${engine}: the load run itself failed: ${(error as Error).stack ?? error}`);
    progress(`FAILED: ${(error as Error).message}`);
  }
}

process.stdout.write(`${report(results, crashes, (performance.now() - started) / 1_000)}\n`);
const failed =
  crashes.length > 0 ||
  results.some(
    (result) =>
      result.check === undefined ||
      result.check.violations.length > 0 ||
      result.problems.length > 0,
  );
if (failed) {
  process.stderr.write('load: FAILED:\n');
  for (const line of failures()) process.stderr.write(`  - ${line}\n`);
}
process.exit(failed ? 1 : 0);

function failures(): string[] {
  return [
    ...crashes,
    ...results.flatMap((result) => [
      ...(result.check?.violations ?? ['no check']).map((line) => `${result.engine}: ${line}`),
      ...result.problems.map((line) => `${result.engine}: ${line}`),
    ]),
  ];
}

function seconds(ms: number | undefined): string {
  return ms === undefined || !Number.isFinite(ms) ? 'n/a' : `${(ms / 1_000).toFixed(1)} s`;
}

function perSecond(users: number, ms: number | undefined): number {
  return ms === undefined ? Number.NaN : (users * 1_000) / ms;
}

function commit(): string {
  try {
    // Read-only: another engineer commits in this tree.
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim();
  } catch {
    return 'unknown';
  }
}

function report(
  all: readonly LoadResult[],
  crashed: readonly string[],
  totalSeconds: number,
): string {
  const cpus = os.cpus();
  const lines = [
    '## bulkbill load test',
    '',
    `- date: ${startedAt.toISOString()}, ${totalSeconds.toFixed(0)} s in all`,
    `- command: \`npm run load -- ${process.argv.slice(2).join(' ')}\` (seed ${seed})`,
    `- machine: ${cpus[0]?.model.trim() ?? 'unknown'}, ${cpus.length} cores, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB; node ${process.version}; load average at the end ${os
      .loadavg()
      .map((load) => load.toFixed(2))
      .join(', ')}`,
    `- sources: commit ${commit()} and the work tree as it was (tsx runs src/ as it is on disk)`,
    '- provider: the mock, in this process, zero latency, 1% 503 before charging, 0.3% answers lost after charging, 0.3% resets mid-answer',
    '',
    markdownTable(
      [
        'engine',
        'users',
        'billed by',
        'faults injected',
        'wall',
        'charges/s (wall)',
        'charges/s (provider span)',
        'charges/s (steady, between faults)',
        'baseline, same run',
        'ratio steady / baseline',
        'ratio wall / baseline',
        'peak RSS, largest bulkbill process',
        'checks',
      ],
      all.map((result) => {
        const bulkbill = result.processes.filter((tracked) => tracked.label.startsWith('bulkbill'));
        const largest = bulkbill.reduce(
          (most, tracked) => (tracked.peakBytes > most.peakBytes ? tracked : most),
          bulkbill[0] ?? { label: 'none', peakBytes: Number.NaN },
        );
        const wallRate = perSecond(result.users, result.wallMs);
        const failedChecks = (result.check?.violations.length ?? 1) + result.problems.length;
        return [
          result.engine,
          formatCount(result.users),
          result.billedBy,
          Object.entries(result.faults)
            .map(([kind, count]) => `${kind} ${formatCount(count)}`)
            .join(', '),
          seconds(result.wallMs),
          formatCount(wallRate),
          formatCount(perSecond(result.users, result.spanMs)),
          formatCount(result.steadyPerSecond),
          result.baselines
            .map((baseline) => `${baseline.name} ${formatCount(baseline.perSecond)}`)
            .join('; '),
          result.baselines
            .map((baseline) => formatRatio(result.steadyPerSecond / baseline.perSecond))
            .join('; '),
          result.baselines.map((baseline) => formatRatio(wallRate / baseline.perSecond)).join('; '),
          `${formatMebibytes(largest.peakBytes)} (${largest.label})`,
          failedChecks === 0
            ? `all ${result.check?.checks.length ?? 0} passed`
            : `${failedChecks} FAILED`,
        ];
      }),
      [
        'left',
        'right',
        'left',
        'left',
        'right',
        'right',
        'right',
        'right',
        'left',
        'right',
        'right',
        'left',
        'left',
      ],
    ),
  ];
  for (const result of all) lines.push('', ...details(result));
  if (crashed.length > 0) lines.push('', '### the load run itself failed', '', ...crashed);
  return lines.join('\n');
}

function details(result: LoadResult): string[] {
  const t0 = result.processes[0]?.startedAt ?? 0;
  const at = (time: number) => `${((time - t0) / 1_000).toFixed(1)} s`;
  const mark = (mark: number) => `RSS at ${Math.round(mark * 100)}%`;
  return [
    `### ${result.engine}: ${formatCount(result.users)} users, ${result.billedBy}`,
    '',
    `Wall ${seconds(result.wallMs)} (first bulkbill process started to the run's end): ${formatCount(perSecond(result.users, result.wallMs))} charges/s. Provider span (first request to last charge) ${seconds(result.spanMs)}: ${formatCount(perSecond(result.users, result.spanMs))} charges/s. Steady, between faults: ${formatCount(result.steadyPerSecond)} charges/s.`,
    '',
    ...result.baselines.map(
      (baseline) =>
        `- baseline ${baseline.name}: ${formatCount(baseline.perSecond)} charges/s (${baseline.detail}); steady / baseline ${formatRatio(result.steadyPerSecond / baseline.perSecond)}, wall / baseline ${formatRatio(perSecond(result.users, result.wallMs) / baseline.perSecond)}`,
    ),
    ...result.notes.map((note) => `- ${note}`),
    `- provider: ${formatCount(result.provider.requests)} requests, ${formatCount(result.provider.charges)} charges, ${formatCount(result.provider.replays)} replays of a key (${formatCount(result.provider.lost)} answers were lost after charging; replays beyond those are charges sent again, with their key, after the kill -9: in flight, or their outcome not yet committed to the ledger), ${formatCount(result.provider.conflicts)} 409s (key in progress), duplicate_charges ${result.provider.duplicate_charges}`,
    '',
    markdownTable(
      ['steady window (times from the start)', 'from', 'to', 'charges', 'charges/s'],
      result.windows.map((window) => [
        window.label,
        at(window.from),
        at(window.to),
        formatCount(window.charges),
        formatCount(window.perSecond),
      ]),
      ['left', 'right', 'right', 'right', 'right'],
    ),
    '',
    markdownTable(
      [
        'process (RSS read once a second)',
        'pid',
        'ran',
        'ended',
        'peak RSS',
        ...PROGRESS_MARKS.map(mark),
        'last read',
      ],
      result.processes.map((tracked) => [
        tracked.label,
        String(tracked.pid),
        `${at(tracked.startedAt)} to ${tracked.endedAt === undefined ? 'the end' : at(tracked.endedAt)}`,
        tracked.exit,
        formatMebibytes(tracked.peakBytes),
        ...PROGRESS_MARKS.map((progress) => {
          const rss = tracked.rssAt(progress);
          return rss === undefined ? '—' : formatMebibytes(rss);
        }),
        formatMebibytes(tracked.lastRssBytes),
      ]),
      ['left', 'right', 'left', 'left', 'right', 'right', 'right', 'right', 'right', 'right'],
    ),
    '',
    "Peak RSS: the process's VmHWM at its last read, or the maxRSS it wrote at exit (bench/lib/peak-rss-preload.ts), whichever is larger. RSS at n%: the first read once n% of the users were charged at the provider, for a process that was running before. The load test's own process holds the mock provider and its keys; after the local run it may still hold that run's provider, not yet collected.",
    '',
    markdownTable(
      ['check', 'result', 'detail'],
      [
        ...(result.check?.checks ?? []).map((entry) => [
          entry.name,
          entry.ok ? 'ok' : 'FAILED',
          entry.detail,
        ]),
        ...result.problems.map((problem) => ['the run went as planned', 'FAILED', problem]),
      ],
    ),
  ];
}
