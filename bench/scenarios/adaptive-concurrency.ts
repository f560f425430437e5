import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent } from 'undici';
import type { EngineConcurrency } from '../lib/engine-process.js';
import {
  type ChargeSample,
  findingsOf,
  isDisturbed,
  runChargeSample,
  runCleanChargeSample,
  type SampleContext,
} from '../lib/engine-versus-bare.js';
import {
  finiteMedian,
  formatCount,
  formatCpuShare,
  formatMebibytes,
  formatMilliseconds,
  formatRatio,
  formatSeconds,
} from '../lib/figures.js';
import { describeQuietWait } from '../lib/quiet-machine.js';
import {
  type BenchSettings,
  markdownTable,
  type ScenarioReport,
  type SummaryRow,
  type Verdict,
} from '../lib/report.js';
import type { ServerProcess } from '../lib/server-process.js';
import { startMockProviderServer, stopServers } from '../lib/servers.js';
import { type UsersFile, writeUsersCsv } from '../lib/users-file.js';

export const ADAPTIVE_CONCURRENCY = 'adaptive-concurrency';

/** The mock provider: 200 ms a charge, 300 at once, the rest wait in line (latency grows). */
const LATENCY = '200ms';
const CAPACITY = 300;
const OVERLOAD = 'queue';
/** The fixed settings `auto` is held against: too few, the capacity, far too many. */
const FIXED = [50, 300, 2_000] as const;
/** `auto`'s --max-concurrency: the same ceiling as the largest fixed setting (its default is 1,000). */
const AUTO_MAX = 2_000;
/** The no-load latency: the p50 of a small run this far under the capacity. */
const NO_LOAD_CONCURRENCY = 10;
/** The issue's target (11): auto within 10% of the best fixed setting's throughput ... */
const TARGET_THROUGHPUT_RATIO = 0.9;
/** ... with its p95 within 1.5× the no-load latency. */
const TARGET_P95_RATIO = 1.5;
/** Attempts per sample while neighbours disturb it: 2, not 4, as c=50's samples take 2 minutes. */
const MAX_ATTEMPTS = 2;

/** One way of billing the users: a fixed `--concurrency`, `auto`, or the small no-load run. */
interface Setting {
  readonly name: string;
  readonly concurrency: EngineConcurrency;
  readonly maxConcurrency?: number;
  /** Held against the best fixed setting (the no-load run is not). */
  readonly compared: boolean;
}

const NO_LOAD: Setting = {
  name: `no-load c=${NO_LOAD_CONCURRENCY}`,
  concurrency: NO_LOAD_CONCURRENCY,
  compared: false,
};
const AUTO: Setting = {
  name: 'auto',
  concurrency: 'auto',
  maxConcurrency: AUTO_MAX,
  compared: true,
};
const SETTINGS: readonly Setting[] = [
  ...FIXED.map((concurrency) => ({ name: `c=${concurrency}`, concurrency, compared: true })),
  AUTO,
];

export interface AdaptiveSample {
  readonly setting: string;
  /** 0 for the warm-up. */
  readonly round: number;
  readonly warmUp: boolean;
  readonly run: ChargeSample;
}

/** Medians over a setting's measured samples (the undisturbed ones when there are any). */
export interface SettingFigures {
  readonly setting: string;
  readonly concurrency: EngineConcurrency;
  /** Held against the best fixed setting (not the no-load run). */
  readonly compared: boolean;
  readonly samples: number;
  /** The summary's `throughputPerSecond` (users / wall when it printed none). */
  readonly chargesPerSecond: number;
  readonly wallMs: number;
  readonly p50Ms: number;
  readonly p95Ms: number;
  readonly p99Ms: number;
  /** The mock's `requests`. */
  readonly requests: number;
  /** The mock's `rejected_503` + `rejected_429`. */
  readonly refusals: number;
  /** The mock's `max_in_flight` and `max_queued`. */
  readonly mockMaxInFlight: number;
  readonly mockMaxQueued: number;
  /** The summary's `dispatch`: the limit it ended at, its most in flight, auto's estimates. */
  readonly limit: number;
  readonly maxInFlight: number;
  readonly capacity: number;
  readonly baselineMs: number;
  /** chargesPerSecond ÷ the best fixed setting's. */
  readonly throughputRatio: number;
  /** p95 ÷ the no-load latency. */
  readonly p95Ratio: number;
}

export interface AdaptiveConcurrencyRaw {
  readonly users: number;
  readonly noLoadUsers: number;
  readonly rounds: number;
  readonly latency: string;
  readonly capacity: number;
  readonly overload: string;
  readonly autoMaxConcurrency: number;
  /** Median p50 of the no-load runs, in ms. */
  readonly noLoadMs: number;
  readonly bestFixed: string;
  readonly figures: readonly SettingFigures[];
  readonly targetMet: boolean;
  readonly samples: readonly AdaptiveSample[];
}

/**
 * `--concurrency auto` against fixed settings, on a provider with a capacity of 300 at 200 ms
 * that queues what is past it (so too many in flight buys latency, not throughput): each of
 * c=50, c=300, c=2,000 and auto (--max-concurrency 2,000) bills the same users in its own
 * `bulkbill run` process. Does auto find the capacity by itself: the throughput of the best
 * fixed setting, at a p95 near the no-load latency? Rounds interleave the settings, each round
 * starting with the next one, after a small no-load run at c=10.
 */
export async function runAdaptiveConcurrency(
  settings: BenchSettings,
): Promise<ScenarioReport<AdaptiveConcurrencyRaw>> {
  const { progress } = settings;
  const users = settings.quick ? 6_000 : 30_000;
  const noLoadUsers = settings.quick ? 200 : 400;
  const rounds = settings.quick ? 1 : 3;
  const workDir = await mkdtemp(join(tmpdir(), `bulkbill-bench-${ADAPTIVE_CONCURRENCY}-`));
  const servers: ServerProcess[] = [];
  const admin = new Agent({ connections: 1 });
  const samples: AdaptiveSample[] = [];
  try {
    const input = await writeUsersCsv(join(workDir, `users-${users}.csv`), users);
    progress(
      `${ADAPTIVE_CONCURRENCY}: wrote ${formatCount(users)} users (${formatMebibytes(input.bytes)}) in ${formatSeconds(input.writeMs)}`,
    );
    const noLoadInput = await writeUsersCsv(join(workDir, `users-${noLoadUsers}.csv`), noLoadUsers);
    const mock = await startMockProviderServer(LATENCY, settings.serverNodeArgs, {
      capacity: CAPACITY,
      overload: OVERLOAD,
    });
    servers.push(mock);
    progress(
      `${ADAPTIVE_CONCURRENCY}: mock provider ${mock.url} (latency ${LATENCY}, capacity ${CAPACITY}, overload ${OVERLOAD}), reset before every run`,
    );

    const plan: { setting: Setting; round: number; file: UsersFile }[] = [
      // Warms tsx's cache and the disk: not counted.
      { setting: NO_LOAD, round: 0, file: noLoadInput },
    ];
    for (let round = 1; round <= rounds; round++) {
      plan.push({ setting: NO_LOAD, round, file: noLoadInput });
      // Round r starts with the r-th setting: none always goes first or last.
      for (let at = 0; at < SETTINGS.length; at++) {
        const setting = SETTINGS[(round - 1 + at) % SETTINGS.length] as Setting;
        plan.push({ setting, round, file: input });
      }
    }

    let index = 0;
    for (const { setting, round, file } of plan) {
      index++;
      const warmUp = round === 0;
      const context: SampleContext = {
        scenario: ADAPTIVE_CONCURRENCY,
        mock,
        admin,
        workDir,
        file,
        concurrency: setting.concurrency,
        ...(setting.maxConcurrency === undefined ? {} : { maxConcurrency: setting.maxConcurrency }),
        warmUp,
        engineNodeArgs: settings.engineNodeArgs,
      };
      const run = await runCleanChargeSample(
        (attempt) => runChargeSample('engine', context, `${index}-a${attempt}`),
        warmUp ? 1 : MAX_ATTEMPTS,
      );
      samples.push({ setting: setting.name, round, warmUp, run });
      progress(
        `${ADAPTIVE_CONCURRENCY}: ${warmUp ? `${setting.name} warm-up` : `round ${round}/${rounds} ${setting.name}`} (${index}/${plan.length}): ${describeSample(run)}`,
      );
      for (const violation of run.violations) {
        progress(
          `${ADAPTIVE_CONCURRENCY}: CORRECTNESS VIOLATION (${setting.name}, sample ${index}): ${violation}`,
        );
      }
    }
  } finally {
    await admin.close();
    await stopServers(servers);
    await rm(workDir, { recursive: true, force: true });
  }

  const noLoadMs = finiteMedian(
    medianSamples(samples, NO_LOAD.name).map(
      (run) => run.engine?.summary?.latencyMs.p50 ?? Number.NaN,
    ),
  );
  const unrated = [NO_LOAD, ...SETTINGS].map((setting) => figuresOf(setting, samples, noLoadMs));
  const best = unrated
    .filter((figures) => figures.compared && figures.concurrency !== 'auto')
    .reduce((a, b) => (b.chargesPerSecond > a.chargesPerSecond ? b : a));
  const figures = unrated.map((entry) => ({
    ...entry,
    throughputRatio: entry.chargesPerSecond / best.chargesPerSecond,
  }));
  const auto = figures.find((entry) => entry.setting === AUTO.name) as SettingFigures;

  const { violations, problems } = findingsOf(
    samples.map((sample) => ({ ...sample.run, side: sample.setting, warmUp: sample.warmUp })),
  );
  const clean = violations.length === 0 && problems.length === 0;
  const throughputMet = auto.throughputRatio >= TARGET_THROUGHPUT_RATIO;
  const p95Met = auto.p95Ratio <= TARGET_P95_RATIO;
  const targetMet = throughputMet && p95Met;
  const verdictOf = (met: boolean): Verdict => (met && clean ? 'PASS' : 'FAIL');
  const measured = samples.filter((sample) => !sample.warmUp);
  const checks = [
    violations.length > 0
      ? `CORRECTNESS VIOLATION: ${violations.join('; ')}`
      : 'no duplicate charge, provider charges = users in every sample',
    problems.length > 0 ? problems.join('; ') : 'engine exit 0, one request per user',
    describeNoiseOf(measured),
  ]
    .filter((part) => part !== '')
    .join('; ');
  const median = `median of ${auto.samples} (best fixed: ${best.samples})`;
  const provider = `latency ${LATENCY}, capacity ${CAPACITY}, overload ${OVERLOAD}, n=${formatCount(users)}`;
  const autoEnd = `ended at limit ${formatCount(auto.limit)}, capacity estimate ${formatCount(auto.capacity)}`;
  const throughputRow: SummaryRow = {
    scenario: ADAPTIVE_CONCURRENCY,
    measure: `charges/s (summary throughputPerSecond), ${provider}; ${median}`,
    baseline: `best fixed ${best.setting} ${formatCount(best.chargesPerSecond)}`,
    subject: `auto (max ${formatCount(AUTO_MAX)}) ${formatCount(auto.chargesPerSecond)}, ${autoEnd}`,
    ratio: formatFineRatio(auto.throughputRatio),
    target: `auto / best fixed ≥ ${formatRatio(TARGET_THROUGHPUT_RATIO)}`,
    verdict: verdictOf(throughputMet),
    checks: `${figures
      .filter((entry) => entry.compared)
      .map((entry) => `${entry.setting} ${formatCount(entry.chargesPerSecond)}/s`)
      .join(', ')}; ${checks}`,
  };
  const p95Row: SummaryRow = {
    scenario: ADAPTIVE_CONCURRENCY,
    measure: `request latency p95 (summary latencyMs.p95), ${provider}; ${median}`,
    baseline: `no-load p50 ${formatMilliseconds(noLoadMs)} (c=${NO_LOAD_CONCURRENCY}, n=${formatCount(noLoadUsers)})`,
    subject: `auto p95 ${formatMilliseconds(auto.p95Ms)}`,
    ratio: formatRatio(auto.p95Ratio),
    target: `auto p95 / no-load ≤ ${formatRatio(TARGET_P95_RATIO)}`,
    verdict: verdictOf(p95Met),
    checks: `${figures
      .filter((entry) => entry.compared)
      .map((entry) => `${entry.setting} p95 ${formatMilliseconds(entry.p95Ms)}`)
      .join(
        ', ',
      )}; refusals ${figures.map((entry) => `${entry.setting} ${formatCount(entry.refusals)}`).join(', ')}`,
  };

  const targetLine =
    `**Target (issue 11): ${targetMet && clean ? 'PASS' : 'FAIL'}.** auto's throughput is ${formatFineRatio(auto.throughputRatio)} of the best fixed setting's (${best.setting}; at least ${formatRatio(TARGET_THROUGHPUT_RATIO)} wanted: ${throughputMet ? 'met' : `missed by ${formatPercentPoints(TARGET_THROUGHPUT_RATIO - auto.throughputRatio)}`}), ` +
    `its p95 ${formatRatio(auto.p95Ratio)}× the no-load latency (at most ${formatRatio(TARGET_P95_RATIO)}× wanted: ${p95Met ? 'met' : `missed: ${formatMilliseconds(auto.p95Ms)} against ${formatMilliseconds(TARGET_P95_RATIO * noLoadMs)}`})` +
    `${clean ? '' : '; and a check failed (see the summary)'}.`;

  return {
    summary: throughputRow,
    moreSummaries: [p95Row],
    details: [
      `### ${ADAPTIVE_CONCURRENCY}: fixed concurrency against auto`,
      '',
      `The mock provider: \`bulkbill mock-provider --port 0 --latency ${LATENCY} --jitter 0 --seed 1 --capacity ${CAPACITY} --overload ${OVERLOAD}\`, one process, \`POST /reset\` before every run. Each run: \`bulkbill run <users.csv> --endpoint <mock>/charge --concurrency <c> --ledger <tmp> --report <tmp> --json\` in its own process, fresh ledger; auto adds \`--max-concurrency ${AUTO_MAX}\`. ${rounds} round${rounds === 1 ? '' : 's'}, each a no-load run (c=${NO_LOAD_CONCURRENCY}, ${formatCount(noLoadUsers)} users) then the four settings on ${formatCount(users)} users, each round starting with the next setting; one uncounted no-load warm-up first.`,
      '',
      targetLine,
      '',
      settingTable(figures, best.setting, noLoadMs),
      '',
      sampleTable(samples),
    ].join('\n'),
    raw: {
      users,
      noLoadUsers,
      rounds,
      latency: LATENCY,
      capacity: CAPACITY,
      overload: OVERLOAD,
      autoMaxConcurrency: AUTO_MAX,
      noLoadMs,
      bestFixed: best.setting,
      figures,
      targetMet,
      samples,
    },
  };
}

/** The measured runs of a setting a median is taken over: the undisturbed ones, or all. */
function medianSamples(samples: readonly AdaptiveSample[], setting: string): ChargeSample[] {
  const mine = samples.filter((sample) => !sample.warmUp && sample.setting === setting);
  const undisturbed = mine.filter((sample) => !isDisturbed(sample.run));
  return (undisturbed.length > 0 ? undisturbed : mine).map((sample) => sample.run);
}

/** A setting's medians; its throughputRatio is filled in once the best fixed setting is known. */
function figuresOf(
  setting: Setting,
  samples: readonly AdaptiveSample[],
  noLoadMs: number,
): SettingFigures {
  const used = medianSamples(samples, setting.name);
  const of = (figure: (run: ChargeSample) => number | undefined) =>
    finiteMedian(used.map((run) => figure(run) ?? Number.NaN));
  const stats = (run: ChargeSample) => run.providerStats;
  const p95Ms = of((run) => run.engine?.summary?.latencyMs.p95);
  return {
    setting: setting.name,
    concurrency: setting.concurrency,
    compared: setting.compared,
    samples: used.length,
    chargesPerSecond: of((run) => run.engine?.summary?.throughputPerSecond ?? run.chargesPerSecond),
    wallMs: of((run) => run.wallMs),
    p50Ms: of((run) => run.engine?.summary?.latencyMs.p50),
    p95Ms,
    p99Ms: of((run) => run.engine?.summary?.latencyMs.p99),
    requests: of((run) => stats(run)?.requests),
    refusals: of((run) => {
      const counted = stats(run);
      return counted === undefined ? undefined : counted.rejected_503 + counted.rejected_429;
    }),
    mockMaxInFlight: of((run) => stats(run)?.max_in_flight),
    mockMaxQueued: of((run) => stats(run)?.max_queued),
    limit: of((run) => run.engine?.summary?.dispatch?.limit),
    maxInFlight: of((run) => run.engine?.summary?.dispatch?.maxInFlight),
    capacity: of((run) => run.engine?.summary?.dispatch?.capacity),
    baselineMs: of((run) => run.engine?.summary?.dispatch?.baselineMs),
    throughputRatio: Number.NaN,
    p95Ratio: p95Ms / noLoadMs,
  };
}

/** `0.897`: three decimals, so that a ratio just under a target of 0.90 does not print as 0.90. */
function formatFineRatio(value: number): string {
  return value.toFixed(3);
}

/** `3.5 points` from 0.035. */
function formatPercentPoints(share: number): string {
  return `${(share * 100).toFixed(1)} points`;
}

/** A figure, or `–` where it does not apply (NaN). */
function orDash(value: number, format: (value: number) => string): string {
  return Number.isFinite(value) ? format(value) : '–';
}

function describeNoiseOf(samples: readonly AdaptiveSample[]): string {
  const rerun = samples.reduce((sum, sample) => sum + sample.run.discarded.length, 0);
  const kept = samples.filter((sample) => isDisturbed(sample.run)).length;
  const plural = (count: number, noun: string) => `${count} ${noun}${count === 1 ? '' : 's'}`;
  return [
    rerun > 0 ? `${plural(rerun, 'disturbed attempt')} rerun` : '',
    kept > 0 ? `${plural(kept, 'sample')} kept though disturbed` : '',
  ]
    .filter((part) => part !== '')
    .join('; ');
}

function describeSample(run: ChargeSample): string {
  const summary = run.engine?.summary;
  const dispatch = summary?.dispatch;
  const stats = run.providerStats;
  const count = run.discarded.length;
  const rerun =
    count === 0 ? '' : ` (${count} disturbed attempt${count === 1 ? '' : 's'} thrown away)`;
  const findings = [...run.violations, ...run.problems];
  return (
    `${formatSeconds(run.wallMs)} (${formatSeconds(run.elapsedMs)} with startup), ${formatCount(summary?.throughputPerSecond ?? run.chargesPerSecond)} charges/s` +
    (summary
      ? `, p50 ${formatMilliseconds(summary.latencyMs.p50)} p95 ${formatMilliseconds(summary.latencyMs.p95)}`
      : '') +
    (stats
      ? `, mock max in flight ${formatCount(stats.max_in_flight)} queued ${formatCount(stats.max_queued)}, refused ${formatCount(stats.rejected_503 + stats.rejected_429)}`
      : '') +
    (dispatch?.mode === 'auto'
      ? `, limit ${formatCount(dispatch.limit)} (capacity ${orDash(dispatch.capacity ?? Number.NaN, formatCount)}, most in flight ${formatCount(dispatch.maxInFlight)})`
      : '') +
    rerun +
    (isDisturbed(run) ? ' (disturbed)' : '') +
    (findings.length > 0 ? `; ${findings.join('; ')}` : '')
  );
}

function settingTable(figures: readonly SettingFigures[], best: string, noLoadMs: number): string {
  return [
    `Medians over each setting's measured runs (the undisturbed ones when there are any). Charges/s: the run's \`throughputPerSecond\` (charges / its wallMs, import included). Latency: per request, from the run's summary. No-load latency: the no-load runs' p50, ${formatMilliseconds(noLoadMs)}. Refusals: the mock's \`rejected_503\` + \`rejected_429\` (a queueing provider refuses none). Limit, capacity, baseline: the summary's \`dispatch\` (auto's limit when the run ended, its capacity estimate and its no-load latency measured).`,
    '',
    markdownTable(
      [
        'setting',
        'runs',
        'charges/s',
        `÷ best fixed (${best})`,
        'wall',
        'p50',
        'p95',
        'p95 ÷ no-load',
        'p99',
        'requests',
        'refusals',
        'mock max in flight / queued',
        'limit at end',
        'most in flight',
        'auto capacity est.',
        'auto baseline',
      ],
      figures.map((entry) => [
        entry.setting,
        String(entry.samples),
        formatCount(entry.chargesPerSecond),
        entry.compared ? formatFineRatio(entry.throughputRatio) : '–',
        formatSeconds(entry.wallMs),
        formatMilliseconds(entry.p50Ms),
        formatMilliseconds(entry.p95Ms),
        formatRatio(entry.p95Ratio),
        formatMilliseconds(entry.p99Ms),
        formatCount(entry.requests),
        formatCount(entry.refusals),
        `${formatCount(entry.mockMaxInFlight)} / ${formatCount(entry.mockMaxQueued)}`,
        formatCount(entry.limit),
        formatCount(entry.maxInFlight),
        orDash(entry.capacity, formatCount),
        orDash(entry.baselineMs, formatMilliseconds),
      ]),
      ['left', ...Array<'right'>(15).fill('right')],
    ),
  ].join('\n');
}

function sampleTable(samples: readonly AdaptiveSample[]): string {
  const rows = samples.map(({ setting, round, warmUp, run }, at) => {
    const summary = run.engine?.summary;
    const dispatch = summary?.dispatch;
    const stats = run.providerStats;
    return [
      String(at + 1),
      warmUp ? 'warm-up' : String(round),
      setting,
      formatCount(run.users),
      formatSeconds(run.wallMs),
      formatSeconds(run.elapsedMs),
      formatCount(summary?.throughputPerSecond ?? run.chargesPerSecond),
      summary
        ? `${formatMilliseconds(summary.latencyMs.p50)} / ${formatMilliseconds(summary.latencyMs.p95)} / ${formatMilliseconds(summary.latencyMs.p99)}`
        : '',
      stats ? formatCount(stats.requests) : '',
      stats ? formatCount(stats.rejected_503 + stats.rejected_429) : '',
      stats ? `${formatCount(stats.max_in_flight)} / ${formatCount(stats.max_queued)}` : '',
      dispatch
        ? `${formatCount(dispatch.limit)} / ${formatCount(dispatch.maxInFlight)}${dispatch.mode === 'auto' ? ` / ${orDash(dispatch.capacity ?? Number.NaN, formatCount)} / ${orDash(dispatch.baselineMs ?? Number.NaN, formatMilliseconds)}` : ''}`
        : '',
      formatCpuShare(run.clientCpuMs, run.elapsedMs),
      formatCpuShare(run.serverCpuMs, run.elapsedMs),
      formatCpuShare(run.otherCpuMs, run.elapsedMs),
      describeQuietWait(run.quietWait),
      String(run.discarded.length),
      [
        ...run.violations.map((violation) => `CORRECTNESS VIOLATION: ${violation}`),
        ...run.problems,
        ...(isDisturbed(run) ? ['disturbed (over 30% of a core used by others)'] : []),
      ].join('; ') || 'ok',
    ];
  });
  return [
    "Every run, in the order run. Wall: the run's own `wallMs`; elapsed: its process from spawn to exit. Dispatch: the summary's limit at the end / most in flight (auto: / capacity estimate / baseline). CPU: share of one core over the elapsed time, used by the engine process / the mock provider / everything else. Before each run the mock is reset and the bench waits (up to 30 s) until everything else uses under 20% of a core; a run during which it used over 30% is run again, once.",
    '',
    markdownTable(
      [
        '#',
        'round',
        'setting',
        'users',
        'wall',
        'elapsed',
        'charges/s',
        'latency p50 / p95 / p99',
        'requests',
        'refusals',
        'mock max in flight / queued',
        'dispatch',
        'CPU engine',
        'CPU mock',
        'CPU other',
        'waited for quiet',
        'disturbed, rerun',
        'checks',
      ],
      rows,
      ['right', 'right', 'left', ...Array<'right'>(14).fill('right'), 'left'],
    ),
  ].join('\n');
}
