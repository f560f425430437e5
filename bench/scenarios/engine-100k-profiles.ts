import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent } from 'undici';
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
  formatMicroseconds,
  formatMilliseconds,
  formatRatio,
  formatSeconds,
} from '../lib/figures.js';
import { writeConfig, writeProfileConfig } from '../lib/profile-config.js';
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
import { type ExtraColumn, type UsersFile, writeUsersCsv } from '../lib/users-file.js';

export const ENGINE_100K_PROFILES = 'engine-100k-profiles';

const CONCURRENCY = 256;
/**
 * The target (issue 9): a templated JSON profile and a form-encoded one bill at zero latency at
 * least 90% of the charges/s of today's default shape, in the same run.
 */
const TARGET_RATIO = 0.9;

/**
 * Who is measured: the default shape without a config file; a form-encoded template of the
 * default shape (the same answers, so what differs is rendering the request); or a shipped
 * provider profile against the mock's shape of that provider.
 */
export type ProfileSubject = 'default' | 'form' | 'stripe' | 'adyen';

interface SubjectSpec {
  readonly subject: ProfileSubject;
  /** What the report calls it. */
  readonly label: string;
  /** The mock's `--shape`, and the profile examples/providers/<name>.jsonc; none for the default. */
  readonly profile: 'stripe' | 'adyen' | undefined;
  /**
   * Held to TARGET_RATIO: the templates whose cost is bulkbill's. The Stripe profile is measured
   * and shown but not held to it: against its own shape it also pays for Stripe's wire format
   * (an answer of 433 bytes and 8 headers against 109 and 5, the mock's Stripe shape ×1.4 CPU),
   * which the `form` subject shows is not the rendering (docs/benchmarks.md).
   */
  readonly held: boolean;
}

const SUBJECTS: readonly SubjectSpec[] = [
  { subject: 'default', label: 'default shape', profile: undefined, held: false },
  {
    subject: 'form',
    label: 'form template of the default shape',
    profile: undefined,
    held: true,
  },
  { subject: 'stripe', label: 'Stripe profile (form)', profile: 'stripe', held: false },
  { subject: 'adyen', label: 'Adyen profile (JSON, rule)', profile: 'adyen', held: true },
];

/**
 * The `form` subject's config: bulkbill's default request (user_id, amount, currency; the key in
 * Idempotency-Key) as a form-encoded template, against the default shape, which reads a form too.
 */
function formTemplateConfig(mockUrl: string): Record<string, unknown> {
  return {
    endpoint: `${mockUrl}/charge`,
    provider: {
      request: {
        body: {
          form: { user_id: '{{user_id}}', amount: '{{amount}}', currency: '{{currency}}' },
        },
      },
      idempotency: { header: 'Idempotency-Key' },
    },
  };
}

/**
 * The columns the profiles read besides user_id, amount and currency (see the comment at the top
 * of each profile): every subject bills the same file, so the import, the ledger's rows and the
 * report weigh the same in each.
 */
const PROFILE_COLUMNS: readonly ExtraColumn[] = [
  { name: 'customer', value: (_index, userId) => `cus_${userId.slice('user-'.length)}` },
  { name: 'payment_method', value: (_index, userId) => `pm_${userId.slice('user-'.length)}` },
  {
    name: 'stored_payment_method_id',
    value: (_index, userId) => `spm_${userId.slice('user-'.length)}`,
  },
];

/** One sample of one subject. */
export interface ProfileSample {
  readonly subject: ProfileSubject;
  /** 0 for a warm-up, then 1, 2, 3: the round it belongs to. */
  readonly round: number;
  readonly warmUp: boolean;
  readonly run: ChargeSample;
}

/** One subject's figures over its measured samples (the undisturbed ones, if any). */
export interface SubjectFigures {
  readonly subject: ProfileSubject;
  readonly samples: number;
  readonly medianChargesPerSecond: number;
  readonly medianWallMs: number;
  readonly medianImportMs: number;
  /** The engine process's CPU per user, startup, import and report included, in µs. */
  readonly medianEngineCpuUsPerCharge: number;
  /** The mock provider's CPU per charge, in µs. */
  readonly medianMockCpuUsPerCharge: number;
  readonly medianPeakRssBytes: number;
  /** This subject against the default shape within each round (none for the default). */
  readonly pairs: readonly RoundPair[];
  /** How many pairs the medians below are taken over: the undisturbed ones, or all. */
  readonly pairsUsed: number;
  /** The median of the pairs' charges/s ratios: the figure held to the target. */
  readonly medianPairRatio: number;
  /** The median of the pairs' ratios of engine CPU per charge (subject / default). */
  readonly medianEngineCpuRatio: number;
  /** The median of the pairs' ratios of mock CPU per charge (subject / default). */
  readonly medianMockCpuRatio: number;
  /** This subject's median charges/s over the default's. */
  readonly ratioOfMedians: number;
}

/** A subject's sample and the default shape's in the same round. */
export interface RoundPair {
  readonly round: number;
  /** Either sample was disturbed: left out of the medians while undisturbed pairs remain. */
  readonly disturbed: boolean;
  /** charges/s, subject / default. */
  readonly chargesRatio: number;
  /** Engine CPU per charge, subject / default. */
  readonly engineCpuRatio: number;
  /** Mock provider CPU per charge, subject / default. */
  readonly mockCpuRatio: number;
}

export interface Engine100kProfilesRaw {
  readonly users: number;
  readonly concurrency: number;
  readonly rounds: number;
  /** Header names left out of each profile's config (their `${ENV}` credential): the mocks run open. */
  readonly droppedHeaders: Readonly<Record<string, readonly string[]>>;
  readonly subjects: readonly SubjectFigures[];
  readonly samples: readonly ProfileSample[];
}

/**
 * 100,000 users at zero latency, 256 at a time, billed by `bulkbill run` three ways in one run:
 * today's default shape (no config file) against the mock's own shape, the Stripe profile
 * (form-encoded) against `--shape stripe`, and the Adyen profile (nested JSON, a response rule)
 * against `--shape adyen`, each profile passed as a config file. Samples are interleaved, a
 * round at a time, each round starting with the next subject, so a drifting machine weighs on
 * each alike.
 */
export async function runEngine100kProfiles(
  settings: BenchSettings,
): Promise<ScenarioReport<Engine100kProfilesRaw>> {
  const { progress } = settings;
  const users = settings.quick ? 20_000 : 100_000;
  const warmUpUsers = settings.quick ? 5_000 : 20_000;
  const rounds = settings.quick ? 1 : 3;
  const workDir = await mkdtemp(join(tmpdir(), `bulkbill-bench-${ENGINE_100K_PROFILES}-`));
  const servers: ServerProcess[] = [];
  const admin = new Agent({ connections: 1 });
  const samples: ProfileSample[] = [];
  const droppedHeaders: Record<string, string[]> = {};
  try {
    const input = await writeUsersCsv(join(workDir, `users-${users}.csv`), users, {
      extraColumns: PROFILE_COLUMNS,
    });
    progress(
      `${ENGINE_100K_PROFILES}: wrote ${formatCount(users)} users (${formatMebibytes(input.bytes)}) in ${formatSeconds(input.writeMs)}`,
    );
    const warmUpInput = await writeUsersCsv(
      join(workDir, `users-${warmUpUsers}.csv`),
      warmUpUsers,
      {
        extraColumns: PROFILE_COLUMNS,
      },
    );

    // One mock process per subject, started once: each is warmed up by its own warm-up sample.
    const targets = new Map<ProfileSubject, { mock: ServerProcess; config: string | undefined }>();
    for (const spec of SUBJECTS) {
      const mock = await startMockProviderServer(
        '0',
        settings.serverNodeArgs,
        spec.profile === undefined ? {} : { shape: spec.profile },
      );
      servers.push(mock);
      let config: string | undefined;
      if (spec.profile !== undefined) {
        const written = await writeProfileConfig(spec.profile, mock.url, workDir);
        config = written.path;
        droppedHeaders[spec.subject] = written.dropped;
      } else if (spec.subject === 'form') {
        config = await writeConfig(formTemplateConfig(mock.url), join(workDir, 'form.config.json'));
      }
      targets.set(spec.subject, { mock, config });
      progress(
        `${ENGINE_100K_PROFILES}: ${spec.label}: mock provider ${mock.url}${spec.profile === undefined ? '' : ` --shape ${spec.profile}, config ${config}`}`,
      );
    }

    const plan: { spec: SubjectSpec; round: number; file: UsersFile }[] = [];
    for (const spec of SUBJECTS) plan.push({ spec, round: 0, file: warmUpInput });
    for (let round = 1; round <= rounds; round++) {
      // Round r starts with the r-th subject: no subject always goes first or last.
      for (let at = 0; at < SUBJECTS.length; at++) {
        const spec = SUBJECTS[(round - 1 + at) % SUBJECTS.length] as SubjectSpec;
        plan.push({ spec, round, file: input });
      }
    }

    let index = 0;
    for (const { spec, round, file } of plan) {
      index++;
      const target = targets.get(spec.subject);
      if (!target) throw new Error(`no mock provider for ${spec.subject}`);
      const warmUp = round === 0;
      const context: SampleContext = {
        scenario: ENGINE_100K_PROFILES,
        mock: target.mock,
        admin,
        workDir,
        file,
        concurrency: CONCURRENCY,
        warmUp,
        engineNodeArgs: settings.engineNodeArgs,
        ...(target.config === undefined ? {} : { config: target.config }),
      };
      const run = await runCleanChargeSample(
        (attempt) => runChargeSample('engine', context, `${index}-a${attempt}`),
        warmUp ? 1 : 4,
      );
      samples.push({ subject: spec.subject, round, warmUp, run });
      progress(
        `${ENGINE_100K_PROFILES}: ${warmUp ? `${spec.subject} warm-up` : `round ${round} ${spec.subject}`} (${index}/${plan.length}): ${describeSample(run)}`,
      );
      for (const violation of run.violations) {
        progress(
          `${ENGINE_100K_PROFILES}: CORRECTNESS VIOLATION (${spec.subject}, sample ${index}): ${violation}`,
        );
      }
    }
  } finally {
    await admin.close();
    await stopServers(servers);
    await rm(workDir, { recursive: true, force: true });
  }

  const subjects = SUBJECTS.map((spec) => figuresOf(spec.subject, samples));
  const baseline = subjects[0] as SubjectFigures;
  const { violations, problems } = findingsOf(
    samples.map((sample) => ({ ...sample.run, side: sample.subject, warmUp: sample.warmUp })),
  );
  const clean = violations.length === 0 && problems.length === 0;
  const measured = samples.filter((sample) => !sample.warmUp);
  const noise = describeNoiseOf(measured);
  const perCharge = (figures: SubjectFigures) =>
    `CPU per charge against the default shape's, paired: engine ×${formatRatio(figures.medianEngineCpuRatio)}, mock ×${formatRatio(figures.medianMockCpuRatio)} (medians: engine ${formatMicroseconds(figures.medianEngineCpuUsPerCharge)} against ${formatMicroseconds(baseline.medianEngineCpuUsPerCharge)}, mock ${formatMicroseconds(figures.medianMockCpuUsPerCharge)} against ${formatMicroseconds(baseline.medianMockCpuUsPerCharge)})`;
  const rows: SummaryRow[] = subjects.slice(1).map((figures) => {
    const spec = SUBJECTS.find((candidate) => candidate.subject === figures.subject) as SubjectSpec;
    const verdict: Verdict = !clean
      ? 'FAIL'
      : !spec.held
        ? 'INFO'
        : figures.medianPairRatio >= TARGET_RATIO
          ? 'PASS'
          : 'FAIL';
    return {
      scenario: ENGINE_100K_PROFILES,
      measure: `charges/s (users / wall) at zero latency, c=${CONCURRENCY}, n=${formatCount(users)}; medians of ${figures.samples} and ${baseline.samples}; ratio: median of ${figures.pairsUsed} paired ratios${figures.pairsUsed < figures.pairs.length ? ` (${figures.pairs.length - figures.pairsUsed} disturbed left out)` : ''}`,
      baseline: `default shape ${formatCount(baseline.medianChargesPerSecond)}`,
      subject: `${spec.label} ${formatCount(figures.medianChargesPerSecond)}`,
      ratio: formatRatio(figures.medianPairRatio),
      target: spec.held
        ? `profile / default ≥ ${formatRatio(TARGET_RATIO)}`
        : "none: also the provider's wire format",
      verdict,
      checks: [
        violations.length > 0
          ? `CORRECTNESS VIOLATION: ${violations.join('; ')}`
          : 'no duplicate charge, provider charges = users in every sample',
        problems.length > 0 ? problems.join('; ') : 'engine exit 0, one request per user',
        `paired ratios ${describePairs(figures.pairs)}`,
        `ratio of medians ${formatRatio(figures.ratioOfMedians)}`,
        perCharge(figures),
        noise,
      ]
        .filter((part) => part !== '')
        .join('; '),
    };
  });

  return {
    summary: rows[0] as SummaryRow,
    moreSummaries: rows.slice(1),
    details: [
      `### ${ENGINE_100K_PROFILES}: every sample`,
      '',
      `Subjects: ${SUBJECTS.map((spec) => `${spec.subject}: ${spec.subject === 'form' ? '`bulkbill run … --config <user_id, amount and currency as a form body, Idempotency-Key>` against `bulkbill mock-provider`' : spec.profile === undefined ? '`bulkbill run … --endpoint <mock>/charge`, no config, against `bulkbill mock-provider`' : `\`bulkbill run … --config <examples/providers/${spec.profile}.jsonc with the mock's URL as endpoint, without rate, concurrency and the ${(droppedHeaders[spec.subject] ?? []).join(', ') || 'no'} header>\` against \`bulkbill mock-provider --shape ${spec.profile}\` (no --api-key)`}`).join('; ')}. Every subject bills the same ${formatCount(users)}-row CSV (\`user_id,amount,currency,plan,${PROFILE_COLUMNS.map((column) => column.name).join(',')}\`).`,
      '',
      subjectTable(subjects),
      '',
      sampleTable(samples),
    ].join('\n'),
    raw: { users, concurrency: CONCURRENCY, rounds, droppedHeaders, subjects, samples },
  };
}

/** The measured samples of a subject a median is taken over: the undisturbed ones, or all. */
function medianSamples(samples: readonly ProfileSample[], subject: ProfileSubject): ChargeSample[] {
  const mine = samples.filter((sample) => !sample.warmUp && sample.subject === subject);
  const undisturbed = mine.filter((sample) => !isDisturbed(sample.run));
  return (undisturbed.length > 0 ? undisturbed : mine).map((sample) => sample.run);
}

function figuresOf(subject: ProfileSubject, samples: readonly ProfileSample[]): SubjectFigures {
  const used = medianSamples(samples, subject);
  const of = (figure: (sample: ChargeSample) => number) => finiteMedian(used.map(figure));
  const defaults = medianSamples(samples, 'default');
  const defaultMedian = finiteMedian(defaults.map((sample) => sample.chargesPerSecond));
  const medianChargesPerSecond = of((sample) => sample.chargesPerSecond);
  const pairs: RoundPair[] = [];
  if (subject !== 'default') {
    const rounds = new Set(
      samples.filter((sample) => !sample.warmUp).map((sample) => sample.round),
    );
    const perCharge = (cpuMs: number | undefined, sample: ChargeSample) =>
      cpuMs === undefined ? Number.NaN : cpuMs / sample.users;
    for (const round of rounds) {
      const mine = samples.find((sample) => sample.round === round && sample.subject === subject);
      const base = samples.find((sample) => sample.round === round && sample.subject === 'default');
      if (!mine || !base) continue;
      const [a, b] = [mine.run, base.run];
      pairs.push({
        round,
        disturbed: isDisturbed(a) || isDisturbed(b),
        chargesRatio: a.chargesPerSecond / b.chargesPerSecond,
        engineCpuRatio: perCharge(a.clientCpuMs, a) / perCharge(b.clientCpuMs, b),
        mockCpuRatio: perCharge(a.serverCpuMs, a) / perCharge(b.serverCpuMs, b),
      });
    }
  }
  const undisturbedPairs = pairs.filter((pair) => !pair.disturbed);
  const usedPairs = undisturbedPairs.length > 0 ? undisturbedPairs : pairs;
  const pairMedian = (figure: (pair: RoundPair) => number) =>
    subject === 'default' ? 1 : finiteMedian(usedPairs.map(figure));
  return {
    subject,
    samples: used.length,
    medianChargesPerSecond,
    medianWallMs: of((sample) => sample.wallMs),
    medianImportMs: of((sample) => sample.engine?.summary?.importMs ?? Number.NaN),
    medianEngineCpuUsPerCharge: of((sample) =>
      sample.clientCpuMs === undefined ? Number.NaN : (sample.clientCpuMs * 1_000) / sample.users,
    ),
    medianMockCpuUsPerCharge: of((sample) =>
      sample.serverCpuMs === undefined ? Number.NaN : (sample.serverCpuMs * 1_000) / sample.users,
    ),
    medianPeakRssBytes: of((sample) => sample.engine?.summary?.peakRssBytes ?? Number.NaN),
    pairs,
    pairsUsed: usedPairs.length,
    medianPairRatio: pairMedian((pair) => pair.chargesRatio),
    medianEngineCpuRatio: pairMedian((pair) => pair.engineCpuRatio),
    medianMockCpuRatio: pairMedian((pair) => pair.mockCpuRatio),
    ratioOfMedians: medianChargesPerSecond / defaultMedian,
  };
}

/** `0.93, 0.61 (disturbed), 0.95`: each round's charges/s ratio. */
function describePairs(pairs: readonly RoundPair[]): string {
  return pairs
    .map((pair) => `${formatRatio(pair.chargesRatio)}${pair.disturbed ? ' (disturbed)' : ''}`)
    .join(', ');
}

function describeNoiseOf(samples: readonly ProfileSample[]): string {
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

function describeSample(sample: ChargeSample): string {
  const rss =
    sample.engine?.summary === undefined
      ? ''
      : `, peak RSS ${formatMebibytes(sample.engine.summary.peakRssBytes)}`;
  const perCharge = (cpuMs: number | undefined) =>
    cpuMs === undefined ? 'n/a' : formatMicroseconds((cpuMs * 1_000) / sample.users);
  const count = sample.discarded.length;
  const rerun =
    count === 0 ? '' : ` (${count} disturbed attempt${count === 1 ? '' : 's'} thrown away)`;
  const findings = [...sample.violations, ...sample.problems];
  return (
    `${formatSeconds(sample.wallMs)} (${formatSeconds(sample.elapsedMs)} with startup), ${formatCount(sample.chargesPerSecond)} charges/s${rss}, CPU per charge engine ${perCharge(sample.clientCpuMs)} mock ${perCharge(sample.serverCpuMs)}` +
    rerun +
    (isDisturbed(sample) ? ' (disturbed)' : '') +
    (findings.length > 0 ? `; ${findings.join('; ')}` : '')
  );
}

function subjectTable(subjects: readonly SubjectFigures[]): string {
  const profile = (figures: SubjectFigures, text: string) =>
    figures.subject === 'default' ? '' : text;
  return [
    "Medians over each subject's measured samples (the undisturbed ones when there are any). CPU per charge: the engine process (startup, import and report included) or the mock provider, over users. Paired: the subject against the default shape in the same round (pairs with a disturbed sample left out while undisturbed pairs remain): charges/s ratios, and the ratios of CPU per charge.",
    '',
    markdownTable(
      [
        'subject',
        'samples',
        'charges/s',
        'wall',
        'import',
        'engine CPU / charge',
        'mock CPU / charge',
        'engine peak RSS',
        'paired ratios',
        'median paired ratio',
        'ratio of medians',
        'engine CPU / charge, paired',
        'mock CPU / charge, paired',
      ],
      subjects.map((figures) => [
        figures.subject,
        String(figures.samples),
        formatCount(figures.medianChargesPerSecond),
        formatSeconds(figures.medianWallMs),
        formatSeconds(figures.medianImportMs),
        formatMicroseconds(figures.medianEngineCpuUsPerCharge),
        formatMicroseconds(figures.medianMockCpuUsPerCharge),
        formatMebibytes(figures.medianPeakRssBytes),
        describePairs(figures.pairs),
        profile(figures, formatRatio(figures.medianPairRatio)),
        profile(figures, formatRatio(figures.ratioOfMedians)),
        profile(figures, `×${formatRatio(figures.medianEngineCpuRatio)}`),
        profile(figures, `×${formatRatio(figures.medianMockCpuRatio)}`),
      ]),
      ['left', ...Array<'right'>(12).fill('right')],
    ),
  ].join('\n');
}

function sampleTable(samples: readonly ProfileSample[]): string {
  const perCharge = (cpuMs: number | undefined, users: number) =>
    cpuMs === undefined ? 'n/a' : formatMicroseconds((cpuMs * 1_000) / users);
  const rows = samples.map(({ subject, round, warmUp, run }, at) => {
    const summary = run.engine?.summary;
    return [
      String(at + 1),
      warmUp ? 'warm-up' : String(round),
      subject,
      formatCount(run.users),
      formatSeconds(run.wallMs),
      formatSeconds(run.elapsedMs),
      summary ? formatSeconds(summary.importMs) : '',
      formatCount(run.chargesPerSecond),
      summary
        ? `${formatMilliseconds(summary.latencyMs.p50)} / ${formatMilliseconds(summary.latencyMs.p99)}`
        : '',
      summary ? formatMebibytes(summary.peakRssBytes) : '',
      formatCpuShare(run.clientCpuMs, run.elapsedMs),
      formatCpuShare(run.serverCpuMs, run.elapsedMs),
      formatCpuShare(run.otherCpuMs, run.elapsedMs),
      perCharge(run.clientCpuMs, run.users),
      perCharge(run.serverCpuMs, run.users),
      describeQuietWait(run.quietWait),
      String(run.discarded.length),
      run.providerStats
        ? `${formatCount(run.providerStats.charges)} / ${formatCount(run.providerStats.duplicate_charges)}`
        : '',
      [
        ...run.violations.map((violation) => `CORRECTNESS VIOLATION: ${violation}`),
        ...run.problems,
        ...(isDisturbed(run) ? ['disturbed (over 30% of a core used by others)'] : []),
      ].join('; ') || 'ok',
    ];
  });
  return [
    "Wall: the engine's own `wallMs` (hashing, importing and billing, without Node and tsx startup). Elapsed: the engine process from spawn to exit. Charges/s: users / wall. Latency: per request, from the engine's summary.",
    "CPU: share of one core, over the elapsed time, used by the engine process / the mock provider / everything else on the machine; per charge: CPU time over users. Charges / duplicates: from the mock provider's GET /stats, which must count one charge and one request per user and no duplicate.",
    'Before each sample the mock provider is reset and the bench waits (up to 30 s) until everything else uses under 20% of a core; a sample during which it used over 30% is thrown away and run again (up to 4 attempts).',
    '',
    markdownTable(
      [
        '#',
        'round',
        'subject',
        'users',
        'wall',
        'elapsed',
        'import',
        'charges/s',
        'latency p50 / p99',
        'engine peak RSS',
        'CPU engine',
        'CPU mock',
        'CPU other',
        'engine CPU / charge',
        'mock CPU / charge',
        'waited for quiet',
        'disturbed, rerun',
        'charges / duplicates',
        'checks',
      ],
      rows,
      ['right', 'right', 'left', ...Array<'right'>(15).fill('right'), 'left'],
    ),
  ].join('\n');
}
