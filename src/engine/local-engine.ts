import { access, constants, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, resolve } from 'node:path';
import { z } from 'zod';
import type { Random } from '../control/backoff.js';
import { BREAKER_DEFAULTS } from '../control/circuit-breaker.js';
import { resolveRetryPolicy } from '../control/retry-policy.js';
import { type Clock, systemClock } from '../domain/clock.js';
import type { DispatchReport } from '../domain/dispatch.js';
import { BulkbillError, describeValue, ErrorCode, UsageError } from '../domain/errors.js';
import { idempotencyKey, runIdProblem } from '../domain/idempotency-key.js';
import { hashInput, type InputFormat } from '../input/index.js';
import {
  type Ledger,
  otherCredentials,
  type RunRecord,
  type StateCounts,
} from '../ledger/ledger.js';
import { SqliteLedger } from '../ledger/sqlite-ledger.js';
import type { AttemptEvent } from '../observe/attempts.js';
import { etaMsOf, PaceMeter, type ProgressEvent } from '../observe/progress.js';
import { RunSampler, type SampleGauges } from '../observe/sampler.js';
import {
  type AdapterModule,
  type BillingSender,
  type ChargeRequest,
  chosenAdapter,
  openAdapter,
  ProviderClient,
  providerHeaders,
  providerSchema,
  readCaFile,
} from '../provider/index.js';
import { writeReport } from '../report/report.js';
import { endpointMismatch, type RunChoice, settleRun } from './run-choice.js';

export type {
  AdapterAttemptContext,
  AdapterCharge,
  AdapterModule,
  AdapterSetupContext,
} from '../provider/index.js';
export type { RunChoice } from './run-choice.js';

import {
  checkDispatchSettings,
  deadlineOf,
  dispatchControls,
  mostInFlight,
} from './dispatch-controls.js';
import { type ChargeSender, Scheduler, systemTimers, type Timers } from './scheduler.js';

const positiveInteger = z.number().int().min(1);

/** The local engine's options: every field documented with its default, checked once. */
export const billOptionsSchema = z
  .object({
    /** The billing cycle: a CSV or NDJSON file. Required. */
    input: z.string().min(1),
    /**
     * Where charges are sent, e.g. https://billing.example.com/v1/charges. Required unless the
     * provider description's request.url is absolute; a relative one resolves against it.
     */
    endpoint: z.string().min(1).optional(),
    /**
     * How to speak to the billing API (request template, idempotency placement, response
     * rules): see docs/providers.md. Default: bulkbill's own shape.
     */
    provider: providerSchema.optional(),
    /**
     * A code adapter: the path of a module whose `charge(charge, ctx)` sends each charge itself
     * (docs/adapters.md), in place of `endpoint`, `provider` and `headers`. Default: none.
     */
    adapter: z.string().min(1).optional(),
    /** Names the billing cycle (`2026-11`). Default: resume the input's unfinished run, else a fresh id. */
    runId: z.string().optional(),
    /**
     * Most requests in flight, or `auto`: found from what the provider answers (latency rising,
     * 429/503/timeouts), between minConcurrency and maxConcurrency. Default 64; with a deadline,
     * the fewest that finish in time.
     */
    concurrency: z.union([positiveInteger.max(100_000), z.literal('auto')]).optional(),
    /** Fewest requests in flight `auto` and a deadline go down to. Default 1. */
    minConcurrency: positiveInteger.max(100_000).default(1),
    /** Most requests in flight `auto` and a deadline go up to. Default 1,000. */
    maxConcurrency: positiveInteger.max(100_000).default(1_000),
    /**
     * When the cycle must be done: epoch ms, a duration from now (`45m`) or a time with date and
     * offset (`2026-12-02T09:00:00+01:00`). Runs at the fewest requests in flight that finish in
     * time. Default: none.
     */
    deadline: z.union([z.number().finite(), z.string().min(1)]).optional(),
    /**
     * How long the circuit breaker waits for a provider that is down (5xx, resets, timeouts on
     * most recent attempts) before the run stops with its charges pending, in ms; 0 turns the
     * breaker off. Default 30 min.
     */
    outageWaitMs: z.number().finite().nonnegative().default(BREAKER_DEFAULTS.giveUpMs),
    /** Most requests per second (smooth token bucket). Default: unlimited. */
    rate: z.number().finite().positive().optional(),
    /** Deadline of one request, in ms. Default 30 s. */
    timeoutMs: z.number().finite().positive().default(30_000),
    /** A PEM file of CAs trusted besides Node's roots for the provider's TLS (a private CA). */
    caFile: z.string().min(1).optional(),
    /** Attempts per charge (throttled ones do not count), over every crash and resume. Default 5. */
    maxAttempts: positiveInteger.max(100).default(5),
    /**
     * How long the provider keeps an idempotency key, in ms: a charge that may have been charged
     * and whose first attempt is older is not retried (it ends `unknown`). Default 24 h (Stripe's).
     */
    keyRetentionMs: z
      .number()
      .finite()
      .positive()
      .default(24 * 60 * 60 * 1_000),
    /** Create a new run even though the input shares users with an unfinished one. Default false. */
    newCycle: z.boolean().default(false),
    /** Retry the run's failed and unknown charges (a new round of attempts). Default false. */
    retryFailed: z.boolean().default(false),
    /** The SQLite ledger file. Default ./bulkbill.db. */
    ledger: z.string().min(1).default('bulkbill.db'),
    /** `Name: value` headers; `${NAME}` is read from `env`. Default none. */
    headers: z.array(z.string()).default([]),
    /** Record invalid rows as `invalid` and bill the rest, instead of refusing the file. Default false. */
    skipInvalid: z.boolean().default(false),
    /** Validate and import, plan, charge nobody. Default false. */
    dryRun: z.boolean().default(false),
    /** Latency assumed by the dry-run plan, in ms. Default 1.6 s. */
    assumedLatencyMs: z.number().finite().positive().default(1_600),
    /** The input's format. Default: from the extension, else sniffed. */
    format: z.enum(['csv', 'ndjson']).optional(),
    /** How often onProgress is called, in ms. Default 250. */
    progressIntervalMs: z.number().finite().positive().default(250),
  })
  .strict();

/** What both engines take besides their plain options: hooks, the environment, test seams. */
export interface BillHooks {
  /** Environment for `${NAME}` in headers. Default process.env. */
  readonly env?: Readonly<Record<string, string | undefined>>;
  /** Stops dispatching when aborted: in-flight requests finish, the ledger is flushed. */
  readonly signal?: AbortSignal;
  /** Called every `progressIntervalMs` while charging, and once at the end. */
  readonly onProgress?: (event: ProgressEvent) => void;
  /** Told which run is billed, once it is chosen (before any charge). */
  readonly onRun?: (run: RunChoice) => void;
  /** Told of every attempt once its charge's next step is decided (metrics, the log). */
  readonly onAttempt?: (event: AttemptEvent) => void;
  /** A code adapter already loaded (the module object), in place of the `adapter` path. */
  readonly adapterModule?: AdapterModule;
  /** Where to write the per-user CSV report, given the run id. Default: no report. */
  readonly reportPath?: (runId: string) => string;
  /** Test seams. */
  readonly random?: Random;
  readonly sender?: ChargeSender;
}

export type BillOptions = z.input<typeof billOptionsSchema> &
  BillHooks & {
    /** An open ledger to use instead of the `ledger` file (it is not closed). */
    readonly ledgerInstance?: Ledger;
    /** Test seams. */
    readonly clock?: Clock;
    readonly timers?: Timers;
    /** Calendar time, for attempt times kept in the ledger. Default Date.now. */
    readonly wallClock?: () => number;
  };

type ResolvedBillOptions = z.output<typeof billOptionsSchema>;

/** The dry run's plan. */
export interface BillPlan {
  /** Charges that would be attempted. */
  readonly charges: number;
  readonly invalid: number;
  /** Amount per currency, in minor units, of the charges that would be attempted. */
  readonly amounts: Readonly<Record<string, number>>;
  readonly concurrency: number;
  readonly rate: number | undefined;
  readonly assumedLatencyMs: number;
  /** Expected wall time at that concurrency, rate and latency (Little's law). */
  readonly expectedMs: number;
  /** The same charges one after another. */
  readonly serialMs: number;
  /** The first charges' requests as they will be sent, secret header values masked. */
  readonly requests: readonly RequestPreview[];
}

/** One request as a dry run shows it. */
export interface RequestPreview {
  readonly userId: string;
  readonly method: string;
  readonly url: string;
  readonly headers: Readonly<Record<string, string>>;
  readonly body: string;
}

/** Requests a dry run shows. */
const PREVIEWED = 3;

/** What one call of bill() did. */
export interface BillResult {
  /**
   * `completed`: every charge ended (see counts for how); `finished-before`: the run had
   * already ended, nobody was billed; `planned`: dry run; `interrupted`: the signal stopped it;
   * `stopped`: the provider reported a misconfiguration and charges are left pending.
   */
  readonly outcome: 'completed' | 'finished-before' | 'planned' | 'interrupted' | 'stopped';
  readonly run: RunRecord;
  /** States of every input row now; they add up to run.total. */
  readonly counts: StateCounts;
  /** Amount charged per currency, in minor units (all processes). */
  readonly chargedAmounts: Readonly<Record<string, number>>;
  readonly wallMs: number;
  /** Charges ended by this call. */
  readonly ended: number;
  /** Requests sent by this call. */
  readonly attempts: number;
  /** Latency of every request sent by this call, in ms. */
  readonly latencies: Float64Array;
  /** How long this call's requests would have taken one after another, in ms. */
  readonly serialMs: number;
  /** Why the run stopped, for `stopped`. */
  readonly stoppedBecause: string | undefined;
  readonly plan: BillPlan | undefined;
  /** Where the report was written, when one was asked for. */
  readonly reportPath: string | undefined;
  /** Time spent validating and importing the input (0 when an existing run was resumed). */
  readonly importMs: number;
  /** How requests were paced: the limit, the deadline's standing, the breaker. */
  readonly dispatch?: DispatchReport | undefined;
}

function checkOptions(options: BillOptions, label: (name: string) => string): ResolvedBillOptions {
  const {
    env: _env,
    signal: _signal,
    onProgress: _onProgress,
    onRun: _onRun,
    onAttempt: _onAttempt,
    adapterModule: _adapterModule,
    ledgerInstance: _ledgerInstance,
    reportPath: _reportPath,
    clock: _clock,
    timers: _timers,
    wallClock: _wallClock,
    random: _random,
    sender: _sender,
    ...plain
  } = options;
  return parseOptions(billOptionsSchema, plain, label);
}

/**
 * Checks plain options against an engine's schema and fills in defaults; the error names the
 * option as `label` spells it (the CLI: its flag) and the value received.
 */
export function parseOptions<Schema extends z.ZodType<{ runId?: string | undefined }>>(
  schema: Schema,
  plain: object,
  label: (name: string) => string,
): z.output<Schema> {
  const parsed = schema.safeParse(plain);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const path = issue?.path ?? [];
    const name = String(path[0] ?? 'options');
    // A nested option (provider.request.url) is named by its whole path, its value shown.
    let received: unknown = plain;
    for (const step of path) {
      received =
        typeof received === 'object' && received !== null
          ? (received as Record<PropertyKey, unknown>)[step as PropertyKey]
          : undefined;
    }
    const rest = path
      .slice(1)
      .map((step) => (typeof step === 'number' ? `[${step}]` : `.${String(step)}`))
      .join('');
    throw new UsageError(
      `${label(name)}${rest}: ${issue?.message}, got ${describeValue(received)}`,
    );
  }
  const runId = parsed.data.runId;
  if (runId !== undefined) {
    const problem = runIdProblem(runId);
    if (problem) throw new UsageError(`${label('runId')} ${problem}`);
  }
  return parsed.data;
}

/** Where a charge stands in terms of "done" (terminal and not to be retried). */
function doneOf(counts: StateCounts): number {
  return counts.charged + counts.declined + counts.invalid;
}

/**
 * Bills a billing cycle on the local engine: validates and imports the input into the SQLite
 * ledger (or finds the run to resume), then charges every pending user exactly once, as fast
 * as the concurrency, rate and provider allow. Resolves with what happened; rejects with a
 * BulkbillError for usage, input and configuration errors (nothing charged).
 */
export async function bill(
  options: BillOptions,
  label: (name: string) => string = (name) => `\`${name}\``,
): Promise<BillResult> {
  const config = checkOptions(options, label);
  checkDispatchSettings(config, label);
  const clock = options.clock ?? systemClock;
  const wallClock = options.wallClock ?? Date.now;
  const started = clock.now();
  // Read once, at the start: a duration counts from the command, not from each re-plan.
  const deadlineAt = deadlineOf(config.deadline, wallClock(), label('deadline'));
  const adapter = chosenAdapter({ ...config, adapterModule: options.adapterModule }, label);
  // Headers first: a missing ${TOKEN} must stop the run before the input is even read.
  const headers = providerHeaders(
    config.provider,
    config.headers,
    options.env ?? process.env,
    label('headers'),
  );
  const policy = resolveRetryPolicy({
    maxAttempts: config.maxAttempts,
    keyRetentionMs: config.keyRetentionMs,
  });
  const ownsLedger = options.ledgerInstance === undefined;
  const ledger = options.ledgerInstance ?? new SqliteLedger({ path: config.ledger });
  let client: BillingSender | undefined;
  let claimed: string | undefined;
  try {
    const inputHash = await hashInput(config.input);
    let http: ProviderClient | undefined;
    if (adapter === undefined) {
      http = new ProviderClient({
        endpoint: config.endpoint,
        provider: config.provider,
        headers,
        connections: mostInFlight(config),
        timeoutMs: config.timeoutMs,
        endpointLabel: label('endpoint'),
        ...(config.caFile === undefined ? {} : { ca: readCaFile(config.caFile, label('caFile')) }),
      });
      client = http;
    } else {
      client = await openAdapter(adapter, {
        timeoutMs: config.timeoutMs,
        env: options.env ?? process.env,
        signal: options.signal,
        label: label('adapter'),
      });
    }
    const endpoint = client.endpoint;
    const sending = client;
    const fingerprintOf = (seen: string) => sending.credentials(seen);
    const choice = await settleRun(
      ledger,
      {
        input: config.input,
        runId: config.runId,
        newCycle: config.newCycle,
        // A dry run changes no charge's state.
        retryFailed: config.retryFailed && !config.dryRun,
        skipInvalid: config.skipInvalid,
        format: config.format as InputFormat | undefined,
        check:
          http === undefined || config.provider === undefined
            ? undefined
            : http.request.rowProblems,
      },
      inputHash,
      endpoint,
      {
        checkRun: async (run) => {
          if (run.endpoint !== endpoint) throw endpointMismatch(run, endpoint);
          await bindCredentials(ledger, run.runId, fingerprintOf);
        },
        claim: async (run) => {
          await ledger.claimRun(run.runId);
          claimed = run.runId;
        },
      },
    );
    const { importMs } = choice;
    if (choice.how === 'created') {
      await bindCredentials(ledger, choice.run.runId, fingerprintOf);
    }
    const { run } = choice;
    // Found before anyone is charged, not after everyone was.
    if (options.reportPath && !config.dryRun) {
      await checkWritable(options.reportPath(run.runId), label('reportPath'));
    }
    if (claimed === undefined) {
      await ledger.claimRun(run.runId);
      claimed = run.runId;
    }
    options.onRun?.(choice);
    const before = await ledger.counts(run.runId);
    const unbilled = await unbilledResult({
      ledger,
      choice,
      counts: before,
      dryRun: config.dryRun,
      importMs,
      planning: config,
      reportPath: options.reportPath,
      elapsedMs: () => clock.now() - started,
      preview: (charge) => sending.preview(charge),
    });
    if (unbilled) return unbilled;

    const random = options.random ?? Math.random;
    const controls = dispatchControls(config, deadlineAt, { clock, wallClock, random });
    // One sample a second into the ledger: the dashboard's charts, for this run or a later look.
    let snapshotOf: (() => SampleGauges) | undefined;
    const sampler = new RunSampler({
      source: `${hostname()}:${process.pid}`,
      now: wallClock,
      gauges: () => snapshotOf?.() ?? { inFlight: 0, limit: 0, breaker: undefined },
      sink: (sample) => void ledger.noteSample(run.runId, sample).catch(() => {}),
    });
    const onAttempt = options.onAttempt;
    const scheduler = new Scheduler({
      runId: run.runId,
      ledger,
      sender: options.sender ?? client,
      policy,
      concurrency: controls.limit.limit(),
      limit: controls.limit,
      breaker: controls.breaker,
      pendingAtStart: before.pending,
      rate: config.rate,
      clock,
      timers: options.timers ?? systemTimers,
      wallClock,
      random,
      signal: options.signal,
      onAttempt: (event) => {
        sampler.attempt(event);
        onAttempt?.(event);
      },
    });
    snapshotOf = () => {
      const snapshot = scheduler.snapshot();
      return {
        inFlight: snapshot.inFlight,
        limit: snapshot.limit,
        breaker: snapshot.breaker?.state,
      };
    };
    const sampleTimer = setInterval(() => sampler.tick(), 250);
    sampleTimer.unref();
    const progress = startProgress(options, config, run, before, scheduler, clock);
    // How the run is paced, kept in the ledger for `status` once a second (and at the end).
    const noteDispatch = () =>
      ledger.noteDispatch?.(run.runId, scheduler.dispatchReport()).catch(() => {});
    const dispatchTimer = setInterval(noteDispatch, 1_000);
    dispatchTimer.unref();
    let result: Awaited<ReturnType<Scheduler['run']>>;
    try {
      result = await scheduler.run();
    } finally {
      clearInterval(dispatchTimer);
      clearInterval(sampleTimer);
      sampler.stop();
      progress.stop();
    }
    await noteDispatch();
    await ledger.flush();
    await ledger.finishIfComplete(run.runId);
    const counts = await ledger.counts(run.runId);
    const ended = scheduler.snapshot().ended;
    const finalRun = (await ledger.findRun(run.runId)) ?? run;
    const reportPath = await writeRunReport(ledger, run.runId, options.reportPath);
    return {
      outcome:
        result.fatal !== undefined ? 'stopped' : result.interrupted ? 'interrupted' : 'completed',
      run: finalRun,
      counts,
      chargedAmounts: await ledger.totals(run.runId, 'charged'),
      wallMs: clock.now() - started,
      ended: ended.charged + ended.declined + ended.failed + ended.unknown,
      attempts: scheduler.snapshot().attempts,
      latencies: result.latencies,
      serialMs: result.serialMs,
      stoppedBecause: result.fatal,
      plan: undefined,
      reportPath,
      importMs,
      dispatch: scheduler.dispatchReport(),
    };
  } finally {
    await client?.close();
    if (claimed !== undefined) await ledger.releaseRun(claimed);
    if (ownsLedger) await ledger.close();
  }
}

/**
 * bill()'s answer when it bills nobody: the run had finished (its report is written again), or
 * a dry run planned it. Undefined when there is billing to do. Shared by both engines.
 */
export async function unbilledResult(args: {
  readonly ledger: Ledger;
  readonly choice: RunChoice;
  /** The run's counts now. */
  readonly counts: StateCounts;
  readonly dryRun: boolean;
  readonly importMs: number;
  readonly planning: Pick<
    ResolvedBillOptions,
    'concurrency' | 'rate' | 'assumedLatencyMs' | 'maxConcurrency' | 'deadline'
  >;
  readonly reportPath: ((runId: string) => string) | undefined;
  readonly elapsedMs: () => number;
  /** Renders a charge's request for the dry run (ProviderClient.preview). */
  readonly preview?: ((charge: ChargeRequest) => Omit<RequestPreview, 'userId'>) | undefined;
}): Promise<BillResult | undefined> {
  const { ledger, choice, counts } = args;
  const { run } = choice;
  if (choice.how !== 'finished' && !args.dryRun) return undefined;
  const base = {
    run,
    importMs: args.importMs,
    counts,
    chargedAmounts: await ledger.totals(run.runId, 'charged'),
    ended: 0,
    attempts: 0,
    latencies: new Float64Array(0),
    serialMs: 0,
    stoppedBecause: undefined,
  };
  if (choice.how === 'finished') {
    const reportPath = await writeRunReport(ledger, run.runId, args.reportPath);
    return {
      ...base,
      outcome: 'finished-before',
      wallMs: args.elapsedMs(),
      plan: undefined,
      reportPath,
    };
  }
  const plan = await planRun(ledger, run, counts, args.planning, args.preview);
  return { ...base, outcome: 'planned', wallMs: args.elapsedMs(), plan, reportPath: undefined };
}

/**
 * Binds a run to the fingerprint of the credentials it is billed with, or refuses it when it
 * was billed with other ones (another account: its idempotency keys would mean nothing there).
 */
export async function bindCredentials(
  ledger: Ledger,
  runId: string,
  fingerprintOf: (seen: string) => string,
): Promise<string> {
  // Two processes binding at once make their fingerprints with salts of their own: the one that
  // finds the run bound meanwhile reads it again and makes its fingerprint with that salt.
  for (;;) {
    const seen = await ledger.credentials(runId);
    const mine = fingerprintOf(seen);
    const bound = await ledger.bindCredentials(runId, mine, seen);
    if (bound === 'other') throw new BulkbillError(ErrorCode.Usage, otherCredentials(runId));
    if (bound !== 'changed') return mine;
  }
}

/** Fails with a usage error when `path` cannot be created or written. */
export async function checkWritable(path: string, name: string): Promise<void> {
  const existing = await stat(path).catch(() => undefined);
  try {
    await access(existing ? path : dirname(resolve(path)), constants.W_OK);
  } catch (error) {
    const reason =
      (error as NodeJS.ErrnoException).code === 'ENOENT'
        ? 'its folder does not exist'
        : 'it is not writable';
    throw new UsageError(`${name}: cannot write ${path}: ${reason}`);
  }
}

export async function writeRunReport(
  ledger: Ledger,
  runId: string,
  pathOf: ((runId: string) => string) | undefined,
): Promise<string | undefined> {
  if (!pathOf) return undefined;
  const path = pathOf(runId);
  await writeReport(ledger, runId, path);
  return path;
}

async function planRun(
  ledger: Ledger,
  run: RunRecord,
  counts: StateCounts,
  config: Pick<
    ResolvedBillOptions,
    'concurrency' | 'rate' | 'assumedLatencyMs' | 'maxConcurrency' | 'deadline'
  >,
  preview: ((charge: ChargeRequest) => Omit<RequestPreview, 'userId'>) | undefined,
): Promise<BillPlan> {
  const requests: RequestPreview[] = [];
  if (preview !== undefined) {
    for (const charge of await ledger.pendingCharges(run.runId, 0, PREVIEWED)) {
      requests.push({
        userId: charge.userId,
        ...preview({
          userId: charge.userId,
          amount: charge.amount,
          currency: charge.currency,
          idempotencyKey: idempotencyKey(run.runId, charge.userId),
          metadata: charge.metadata,
        }),
      });
    }
  }
  const charges = counts.pending;
  const latency = config.assumedLatencyMs;
  // Little's law: throughput is concurrency / latency, unless the rate limit is lower.
  // `auto` and a deadline are planned at the most they may use: the fastest the run can go.
  const concurrency =
    typeof config.concurrency === 'number' ? config.concurrency : mostInFlight(config);
  const perSecond = Math.min(
    (concurrency * 1_000) / latency,
    config.rate ?? Number.POSITIVE_INFINITY,
  );
  const waves = charges === 0 ? 0 : (charges / perSecond) * 1_000;
  return {
    charges,
    invalid: counts.invalid,
    amounts: await ledger.totals(run.runId, 'pending'),
    concurrency,
    rate: config.rate,
    assumedLatencyMs: latency,
    expectedMs: charges === 0 ? 0 : Math.max(latency, waves),
    serialMs: charges * latency,
    requests,
  };
}

function startProgress(
  options: BillOptions,
  config: ResolvedBillOptions,
  run: RunRecord,
  before: StateCounts,
  scheduler: Scheduler,
  clock: Clock,
): { stop(): void } {
  const { onProgress } = options;
  if (!onProgress) return { stop() {} };
  const started = clock.now();
  const doneBefore = doneOf(before);
  const pace = new PaceMeter();
  const emit = () => {
    const snapshot = scheduler.snapshot();
    const { charged, declined, failed, unknown } = snapshot.ended;
    const ended = charged + declined + failed + unknown;
    const now = clock.now();
    const perSecond = pace.sample(now, ended);
    const done = doneBefore + ended;
    onProgress({
      runId: run.runId,
      total: run.total,
      done,
      charged: before.charged + charged,
      declined: before.declined + declined,
      failed,
      unknown,
      invalid: before.invalid,
      inFlight: snapshot.inFlight,
      retrying: snapshot.retrying,
      perSecond,
      etaMs: etaMsOf(run.total - done, perSecond),
      elapsedMs: now - started,
      pausedMs: snapshot.pausedMs,
      dispatch: scheduler.dispatchReport(),
    });
  };
  const timer = setInterval(emit, config.progressIntervalMs);
  return {
    stop() {
      clearInterval(timer);
      emit();
    },
  };
}
