import {
  DEFAULT_MARGIN,
  type Plan,
  parseDeadline,
  planConcurrency,
} from '../control/deadline-planner.js';
import { userIdFold } from '../domain/charge.js';
import { formatDuration } from '../domain/duration.js';
import { UsageError } from '../domain/errors.js';
import { InputInvalidError, PROBLEMS_LISTED } from '../engine/import.js';
import { formatDuplicateProblem, formatProblem, readInputBatches } from '../input/index.js';
import { type ProviderDescriptionInput, templateRowCheck } from '../provider/index.js';
import { formatAmounts } from '../report/format.js';
import { ExitStatus } from './exit-codes.js';

/**
 * `bulkbill plan <input>`: reads and validates the input as `run` does (the same reader, the
 * same rules, the same duplicate-user rule as the ledger's import, the same error), then says
 * what billing it would take: users, totals per currency, and, with `--deadline`, the
 * concurrency the deadline needs (control/deadline-planner.ts). Opens no ledger and sends
 * nothing: it takes no endpoint.
 */
export interface PlanFlags {
  /** Expected latency of one request, in ms (`--latency`, required). */
  latency: number;
  /** `--deadline`: a duration from now or a time with its date and offset. */
  deadline?: string;
  rate?: number;
  maxConcurrency?: number;
  concurrency?: number;
  skipInvalid?: boolean;
  json?: boolean;
  /** The config file's provider description: its template's rules for a row apply. */
  provider?: unknown;
}

export const PLAN_DEFAULTS = { concurrency: 64, maxConcurrency: 1_000 } as const;

/** What the input holds, as the plan counts it. */
interface InputTally {
  /** Rows that would be charged. */
  readonly users: number;
  /** Rows that fail validation. */
  readonly invalid: number;
  /** Rows of a user met on an earlier row (the same id, or one of its fold). */
  readonly duplicates: number;
  /** Minor units per currency of the rows that would be charged, currencies in order. */
  readonly amounts: Readonly<Record<string, number>>;
}

/** The figures of a plan, as printed and as `--json` emits them. */
export interface PlanReport extends InputTally {
  readonly input: string;
  readonly latencyMs: number;
  /** Requests to keep in flight: the deadline's need, or `--concurrency`. */
  readonly concurrency: number;
  readonly rate: number | null;
  /** How long the charges take at `concurrency` (and `rate`). */
  readonly expectedMs: number;
  /** The same charges one after another. */
  readonly serialMs: number;
  /** Whether the deadline can be met; true without one. */
  readonly feasible: boolean;
  readonly deadline: {
    readonly at: string;
    readonly timeLeftMs: number;
    readonly maxConcurrency: number;
    readonly margin: number;
    /** Requests per second the deadline needs, with the margin; null once it has passed. */
    readonly neededPerSecond: number | null;
    /** How long the charges take at the most the limits allow. */
    readonly fastestMs: number;
    readonly bound: NonNullable<Plan['bound']> | null;
  } | null;
}

const number = new Intl.NumberFormat('en-US');
const perSecond = new Intl.NumberFormat('en-US', { maximumFractionDigits: 2 });

export async function planCommand(input: string, flags: PlanFlags): Promise<number> {
  // Every flag is checked before the input is read.
  const nowMs = Date.now();
  const deadlineAt =
    flags.deadline === undefined ? undefined : parseDeadline(flags.deadline, nowMs);
  const latencyMs = flags.latency;
  if (!(Number.isFinite(latencyMs) && latencyMs > 0)) {
    throw new UsageError(`--latency: must be more than 0, got ${JSON.stringify(flags.latency)}`);
  }
  const concurrency = wholeAtLeastOne(
    '--concurrency',
    flags.concurrency,
    PLAN_DEFAULTS.concurrency,
  );
  const maxConcurrency = wholeAtLeastOne(
    '--max-concurrency',
    flags.maxConcurrency,
    PLAN_DEFAULTS.maxConcurrency,
  );
  const { rate } = flags;
  if (rate !== undefined && !(Number.isFinite(rate) && rate > 0)) {
    throw new UsageError(`--rate: must be more than 0 requests per second, got ${rate}`);
  }
  const check = templateRowCheck(flags.provider as ProviderDescriptionInput | undefined);

  const tally = await tallyInput(input, flags.skipInvalid === true, check);
  const serialMs = tally.users * latencyMs;
  let report: PlanReport;
  if (deadlineAt === undefined) {
    // Little's law at --concurrency, as the dry run figures it: never less than one round trip.
    const { fastestMs } = planConcurrency({
      remaining: tally.users,
      latencyMs,
      timeLeftMs: Number.POSITIVE_INFINITY,
      maxConcurrency: concurrency,
      rate,
    });
    report = {
      input,
      ...tally,
      latencyMs,
      concurrency,
      rate: rate ?? null,
      expectedMs: tally.users === 0 ? 0 : Math.max(latencyMs, fastestMs),
      serialMs,
      feasible: true,
      deadline: null,
    };
  } else {
    const timeLeftMs = deadlineAt - Date.now();
    const plan = planConcurrency({
      remaining: tally.users,
      latencyMs,
      timeLeftMs,
      maxConcurrency,
      rate,
    });
    report = {
      input,
      ...tally,
      latencyMs,
      concurrency: plan.concurrency,
      rate: rate ?? null,
      expectedMs: plan.expectedMs,
      serialMs,
      feasible: plan.feasible,
      deadline: {
        at: new Date(deadlineAt).toISOString(),
        timeLeftMs,
        maxConcurrency,
        margin: DEFAULT_MARGIN,
        neededPerSecond: Number.isFinite(plan.neededPerSecond) ? plan.neededPerSecond : null,
        fastestMs: plan.fastestMs,
        bound: plan.bound ?? null,
      },
    };
  }

  if (flags.json) process.stdout.write(`${JSON.stringify(report)}\n`);
  else process.stdout.write(formatPlan(report));
  if (!report.feasible) {
    process.stderr.write(`bulkbill: the deadline cannot be met: ${whyNot(report)}\n`);
    return ExitStatus.Failed;
  }
  return ExitStatus.Ok;
}

function wholeAtLeastOne(flag: string, value: number | undefined, fallback: number): number {
  const chosen = value ?? fallback;
  if (!(Number.isSafeInteger(chosen) && chosen >= 1 && chosen <= 100_000)) {
    throw new UsageError(`${flag}: expected a whole number from 1 to 100000, got ${chosen}`);
  }
  return chosen;
}

/**
 * Reads the input with the engines' reader and applies the import's rules without a ledger: a
 * row that fails validation, or whose user (the same id, or one of its fold) an earlier valid
 * row holds, is a problem. Without `skipInvalid` any problem throws the import's
 * InputInvalidError (the same message as `run`, the first problems by line); with it they are
 * counted and left out.
 */
async function tallyInput(
  file: string,
  skipInvalid: boolean,
  check: ReturnType<typeof templateRowCheck>,
): Promise<InputTally> {
  const problems: { line: number; text: string }[] = [];
  let problemCount = 0;
  const note = (line: number, text: string) => {
    problemCount++;
    if (problems.length < PROBLEMS_LISTED) problems.push({ line, text });
  };
  // The first valid row of each fold of a user id (its id where that is its own fold).
  const seen = new Map<string, { line: number; userId: string }>();
  const amounts = new Map<string, number>();
  let users = 0;
  let invalid = 0;
  let duplicates = 0;
  for await (const batch of readInputBatches(file, { check })) {
    for (const row of batch) {
      if (row.charge === undefined) {
        invalid++;
        for (const problem of row.problems) {
          note(row.line, formatProblem(file, row.line, problem.field, problem.reason));
        }
        continue;
      }
      const { userId, amount, currency } = row.charge;
      const key = userIdFold(userId) || userId;
      const first = seen.get(key);
      if (first !== undefined) {
        duplicates++;
        note(
          row.line,
          formatDuplicateProblem(file, {
            line: row.line,
            firstLine: first.line,
            ...(first.userId === userId ? {} : { twin: first.userId }),
          }),
        );
        continue;
      }
      seen.set(key, { line: row.line, userId });
      users++;
      amounts.set(currency, (amounts.get(currency) ?? 0) + amount);
    }
  }
  if (problemCount > 0 && !skipInvalid) {
    const listed = problems.sort((a, b) => a.line - b.line).map((problem) => problem.text);
    throw new InputInvalidError(file, listed, problemCount);
  }
  const sorted = [...amounts.keys()].sort();
  return {
    users,
    invalid,
    duplicates,
    amounts: Object.fromEntries(sorted.map((currency) => [currency, amounts.get(currency) ?? 0])),
  };
}

function limitsOf(report: PlanReport, maxConcurrency: number): string {
  const limits = [`--max-concurrency ${number.format(maxConcurrency)}`];
  if (report.rate !== null) limits.push(`--rate ${perSecond.format(report.rate)}/s`);
  return limits.join(' and ');
}

/** The plan, for people. */
function formatPlan(report: PlanReport): string {
  const lines = [
    `bulkbill plan of ${report.input}: nobody was charged, nothing was sent`,
    `  ${number.format(report.users)} ${report.users === 1 ? 'user' : 'users'} to charge · ${number.format(report.invalid)} invalid rows skipped · ${number.format(report.duplicates)} duplicate users skipped`,
    `  totals: ${formatAmounts(report.amounts)}`,
  ];
  const latency = formatDuration(report.latencyMs);
  const { deadline } = report;
  if (deadline === null) {
    lines.push(
      `  at concurrency ${number.format(report.concurrency)}${report.rate === null ? '' : ` and ${perSecond.format(report.rate)}/s`}, assuming ${latency} per request: about ${formatDuration(report.expectedMs)}`,
    );
  } else {
    const when =
      deadline.timeLeftMs > 0
        ? `in ${formatDuration(deadline.timeLeftMs)}`
        : `passed ${formatDuration(-deadline.timeLeftMs)} ago`;
    const margin = `${Math.round((deadline.margin - 1) * 100)}% margin`;
    lines.push(`  deadline ${deadline.at} (${when}), assuming ${latency} per request:`);
    const limits = limitsOf(report, deadline.maxConcurrency);
    if (report.feasible) {
      lines.push(
        `    feasible at concurrency ${number.format(report.concurrency)} (${perSecond.format(deadline.neededPerSecond ?? 0)} requests/s, with a ${margin}): about ${formatDuration(report.expectedMs)}`,
      );
    } else {
      lines.push(
        `    NOT feasible: bound by ${deadline.bound}${deadline.neededPerSecond === null ? '' : ` (it needs ${perSecond.format(deadline.neededPerSecond)} requests/s, with a ${margin})`}`,
      );
    }
    lines.push(
      `    fastest within ${limits}: ${formatDuration(deadline.fastestMs)}${report.feasible ? '' : ` at concurrency ${number.format(report.concurrency)}`}`,
    );
  }
  lines.push(`  one after another: ${formatDuration(report.serialMs)}`);
  return `${lines.join('\n')}\n`;
}

/** Why the deadline cannot be met and what would meet it, in one line. */
function whyNot(report: PlanReport): string {
  const { deadline } = report;
  if (deadline === null) return 'no deadline';
  const charges = `${number.format(report.users)} charges at ${formatDuration(report.latencyMs)} each`;
  if (deadline.bound === 'too-soon') {
    return `${deadline.at} is ${formatDuration(Math.max(0, deadline.timeLeftMs))} away, sooner than one request takes (${formatDuration(report.latencyMs)}, with the ${Math.round((deadline.margin - 1) * 100)}% margin)`;
  }
  if (deadline.bound === 'deadline-passed' || deadline.neededPerSecond === null) {
    return `${deadline.at} passed ${formatDuration(Math.max(0, -deadline.timeLeftMs))} ago; ${charges} take at least ${formatDuration(deadline.fastestMs)} within ${limitsOf(report, deadline.maxConcurrency)}`;
  }
  const needed = deadline.neededPerSecond;
  const inFlight = Math.ceil((needed * report.latencyMs) / 1_000);
  const allowed =
    deadline.bound === 'rate'
      ? `--rate allows ${perSecond.format(report.rate ?? 0)} requests/s`
      : `--max-concurrency ${number.format(deadline.maxConcurrency)} allows ${perSecond.format((deadline.maxConcurrency * 1_000) / report.latencyMs)} requests/s`;
  const raise: string[] = [];
  if (report.rate !== null && report.rate < needed) {
    raise.push(`--rate to at least ${perSecond.format(needed)}/s`);
  }
  if (inFlight > deadline.maxConcurrency) {
    raise.push(`--max-concurrency to at least ${number.format(inFlight)}`);
  }
  return `${charges} need ${perSecond.format(needed)} requests/s to end by ${deadline.at} (in ${formatDuration(deadline.timeLeftMs)}, with a ${Math.round((deadline.margin - 1) * 100)}% margin), and ${allowed}: the fastest is ${formatDuration(deadline.fastestMs)}; raise ${raise.join(' and ')} (if the provider takes it), or move the deadline`;
}
