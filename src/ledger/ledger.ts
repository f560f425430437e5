import type { DispatchReport } from '../domain/dispatch.js';
import type { ChargeState, TerminalChargeState } from '../domain/outcome.js';
import type { AttemptOutcome, RunSample } from '../domain/samples.js';

export { type AttemptOutcome, LATENCY_BUCKETS_MS, type RunSample } from '../domain/samples.js';

/** A billing cycle as the ledger keeps it. */
export interface RunRecord {
  readonly runId: string;
  /** sha256 of the input file's bytes: resuming with another file is refused. */
  readonly inputHash: string;
  /** The input file as given when the run was created (for people; the hash is what counts). */
  readonly inputPath: string;
  /** The billing endpoint the run charges; never holds a secret. */
  readonly endpoint: string;
  /** ISO 8601. */
  readonly createdAt: string;
  /** ISO 8601, once every charge ended charged, declined or invalid. */
  readonly finishedAt: string | undefined;
  /** Input rows imported, invalid ones included. */
  readonly total: number;
  /** How the latest process paced it (limit, deadline, breaker), as it last said; SQLite only. */
  readonly dispatch?: DispatchReport | undefined;
}

/** One input row's charge and where it stands. */
export interface ChargeRecord {
  readonly userId: string;
  /** 1-based line of the input file the row starts on. */
  readonly line: number;
  readonly amount: number;
  readonly currency: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly state: ChargeState;
  /** Attempts that counted (throttled ones do not), over every process and every retry round. */
  readonly attempts: number;
  /** Some attempt may have reached the provider without an answer. */
  readonly ambiguous: boolean;
  /** When the first attempt was started (epoch ms), once one was. */
  readonly firstAttemptAt: number | undefined;
  /** The last answer's HTTP status, when one came. */
  readonly httpStatus: number | undefined;
  /** The last attempt's latency, in ms. */
  readonly latencyMs: number | undefined;
  /** The provider's charge id, when charged and the provider sent one. */
  readonly chargeId: string | undefined;
  /** Why the charge was declined, failed, unknown or invalid. */
  readonly error: string | undefined;
}

/** A charge ready to be sent: what the engine needs and nothing more. */
export interface PendingCharge {
  /** The ledger's position of the row; pages of pending charges are read after it. */
  readonly seq: number;
  readonly userId: string;
  readonly amount: number;
  readonly currency: string;
  /** Attempts counted so far, over every process (each is recorded before its request leaves). */
  readonly attempts: number;
  /**
   * Attempts counted before the current round (`--retry-failed` starts a new round): the
   * attempt budget is `attempts - budgetFrom` out of `--max-attempts`.
   */
  readonly budgetFrom: number;
  /** Some attempt may have reached the provider unanswered, or was cut off by a crash. */
  readonly ambiguous: boolean;
  /** When the first attempt was started (epoch ms), once one was. */
  readonly firstAttemptAt: number | undefined;
  /** Throttled and 409 answers in a row before this read, when the ledger keeps them. */
  readonly waits?: number | undefined;
  /** The row's other columns (a request template may read them); absent when it has none. */
  readonly metadata?: Readonly<Record<string, string>> | undefined;
}

/** An attempt about to be sent: recorded (and committed) before its request leaves. */
export interface AttemptStart {
  readonly userId: string;
  /** The charge's attempts counted with this one (it may turn out not to count: throttled). */
  readonly attempts: number;
  readonly ambiguous: boolean;
  /** Epoch ms: kept as the first attempt's time when the charge has none yet. */
  readonly at: number;
}

/** One row of an input, as a run holds it, for comparing an input with a run. */
export interface HeldCharge {
  readonly line: number;
  readonly amount: number;
  readonly currency: string;
  readonly state: ChargeState;
  /** The held row's user id, when it is not the id asked for but one of its fold (userIdFold). */
  readonly twin?: string;
}

/** Options of pendingCharges(). */
export interface PendingOptions {
  /** Also return `failed` and `unknown` charges (default: pending ones only). */
  readonly includeEnded?: boolean;
  /** Read each row's other columns into `metadata` (default true); false spares the work. */
  readonly metadata?: boolean;
}

/**
 * Where a charge ended up after an attempt, or after the engine is done with it for now. A
 * ledger never moves a charge out of `charged` or `declined`: a late or stale outcome loses.
 */
export interface ChargeOutcome {
  readonly userId: string;
  /**
   * The charge's position in the ledger (PendingCharge.seq), when the engine read it from a page:
   * the SQLite ledger then finds the row by its key. The user id must match it.
   */
  readonly seq?: number | undefined;
  /** `pending`: to be retried (or the engine stopped before the charge ended). */
  readonly state: TerminalChargeState | 'pending';
  readonly attempts: number;
  readonly ambiguous: boolean;
  readonly httpStatus: number | undefined;
  readonly latencyMs: number | undefined;
  readonly chargeId: string | undefined;
  readonly error: string | undefined;
  /** When its first attempt was started (epoch ms), as the engine knows it; kept if already set. */
  readonly firstAttemptAt?: number | undefined;
  /**
   * Throttled and 409 answers in a row so far (a pending outcome): kept by the SQLite ledger so
   * that their bound holds over crashes. The distributed engine keeps them in the job's data.
   */
  readonly waits?: number | undefined;
  /**
   * The attempt this outcome ends, for the charge's history (what `dashboard` shows of a user):
   * set once per request sent, absent on outcomes that end no request (a charge ended unsent).
   */
  readonly attempt?: AttemptNote | undefined;
}

/** An attempt, as an outcome carries it into the charge's history. */
export interface AttemptNote {
  /** The attempt's number as sent (a throttled attempt, which does not count, shares the next one's). */
  readonly n: number;
  /** Epoch ms the request left. */
  readonly at: number;
  /** The provider refused it for load (429, or 503 with Retry-After). */
  readonly throttled: boolean;
  /** The run stopped after it (a misconfiguration, an outage too long): the charge waits, unretried. */
  readonly stopped?: true | undefined;
}

/** One attempt of a charge, as the ledger keeps it. */
export interface AttemptRecord {
  readonly attempt: number;
  /** Epoch ms the request left. */
  readonly at: number;
  readonly httpStatus: number | undefined;
  readonly latencyMs: number | undefined;
  readonly outcome: AttemptOutcome;
  readonly reason: string | undefined;
}

/** The outcome name an attempt's history keeps for an outcome that carries the attempt. */
export function attemptOutcome(outcome: ChargeOutcome): AttemptRecord['outcome'] {
  if (outcome.state !== 'pending') return outcome.state;
  if (outcome.attempt?.stopped) return 'pending';
  return outcome.attempt?.throttled ? 'throttled' : 'retry';
}

/**
 * A charge's kept attempts with the one its row holds: a charge charged at its first request
 * keeps no history entry in either ledger (its row is that attempt: its time, status, latency).
 */
export function withFirstRequest(
  kept: readonly AttemptRecord[],
  charge: ChargeRecord | undefined,
): AttemptRecord[] {
  if (charge === undefined || charge.state !== 'charged' || charge.firstAttemptAt === undefined) {
    return [...kept];
  }
  const first: AttemptRecord = {
    attempt: charge.attempts,
    at: charge.firstAttemptAt,
    httpStatus: charge.httpStatus,
    latencyMs: charge.latencyMs,
    outcome: 'charged',
    reason: undefined,
  };
  return [first, ...kept].sort((a, b) => a.at - b.at);
}

/** Attempts the Redis ledger keeps per charge (the latest); SQLite keeps every one. */
export const HISTORY_KEPT = 20;

/** Which problems: a state, or (undefined) every charge that ended declined, failed, unknown or invalid. */
export interface ProblemFilter {
  readonly state?: 'declined' | 'failed' | 'unknown' | 'invalid' | 'pending' | undefined;
  /** Text the user id or the reason contains (case-insensitive). */
  readonly q?: string | undefined;
  /** Most rows returned, the latest first. */
  readonly limit: number;
}

export interface ProblemRows {
  /** The latest matching charges (latest ended first where the ledger knows, else the last rows). */
  readonly rows: readonly ChargeRecord[];
  /** How many match in all. */
  readonly matching: number;
}

/** A row for the import: a charge, or an invalid row (recorded only with --skip-invalid). */
export interface ImportRow {
  readonly line: number;
  readonly userId: string;
  readonly amount: number;
  readonly currency: string;
  readonly metadata: Readonly<Record<string, string>>;
  /** Set for a row that failed validation: it is recorded `invalid` with this reason. */
  readonly invalidReason?: string;
}

/** Counts per state; they add up to the run's total. */
export type StateCounts = Record<ChargeState, number>;

export function emptyCounts(): StateCounts {
  return { pending: 0, charged: 0, declined: 0, failed: 0, unknown: 0, invalid: 0 };
}

/** Rows in a terminal state for now: everything but pending. */
export function endedOf(counts: StateCounts): number {
  return counts.charged + counts.declined + counts.failed + counts.unknown + counts.invalid;
}

/**
 * A user met twice during an import: the same id again, or (`twin`) an id of the same fold
 * (userIdFold) as the id `twin` on `firstLine`, or, `held`, as `twin` which the run already holds
 * from an earlier input.
 */
export interface DuplicateUser {
  readonly userId: string;
  readonly line: number;
  readonly firstLine: number;
  readonly twin?: string;
  readonly held?: boolean;
}

/**
 * Storage of runs and charges, used by the engines alone. Every method may be asynchronous so
 * an embedded (SQLite) and a networked (Redis) implementation stand side by side.
 */
export interface Ledger {
  findRun(runId: string): Promise<RunRecord | undefined>;
  /** Every run, newest first. */
  listRuns(): Promise<RunRecord[]>;
  /**
   * Creates a run and imports its rows, batch by batch, all or nothing: either every row is in the
   * ledger, or (when `batches` throws) none is and no run exists; no other process sees the run
   * before its import ends (SQLite: one transaction; Redis: rows written as read, the run published
   * at the end). `onDuplicate` is told of each user id met twice; that second row is recorded
   * `invalid`.
   *
   * Refuses (BulkbillError) a run id that exists, and, with `knownRuns`, any run created since
   * the caller looked (a run not among those ids): checked atomically with the creation, so two
   * processes started at once on one input cannot both create a run (and bill everyone twice).
   */
  createRun(
    run: Omit<RunRecord, 'createdAt' | 'finishedAt' | 'total'>,
    batches: AsyncIterable<readonly ImportRow[]>,
    onDuplicate: (duplicate: DuplicateUser) => void,
    options?: { readonly knownRuns?: readonly string[] },
  ): Promise<RunRecord>;
  /**
   * Adds to an existing run the valid rows of users it does not hold (they start pending, and a
   * finished run is unfinished again), and makes the run's invalid rows those of `batches`
   * (an invalid row whose user now has a valid row is dropped). Rows of users the run holds are
   * left as they are. Also records the input as the run's latest (`inputHash`, `inputPath`).
   * Returns the run as it now is.
   */
  extendRun(
    runId: string,
    input: { readonly inputHash: string; readonly inputPath: string },
    batches: AsyncIterable<readonly ImportRow[]>,
    onDuplicate: (duplicate: DuplicateUser) => void,
  ): Promise<RunRecord>;
  /**
   * The valid rows the run holds of these users, or of ids of the same fold (`twin` set), keyed
   * by the id asked for; absent users are left out.
   */
  heldCharges(runId: string, userIds: readonly string[]): Promise<Map<string, HeldCharge>>;
  /**
   * Up to `limit` charges of the run that still need an attempt, in input order, after position
   * `afterSeq`: pending ones (never tried, retried, or cut off by a crash), and with
   * `includeEnded` failed and unknown ones too.
   */
  pendingCharges(
    runId: string,
    afterSeq: number,
    limit: number,
    options?: PendingOptions,
  ): Promise<PendingCharge[]>;
  /**
   * Records attempts about to be sent, durably, before their requests leave (with every outcome
   * recorded before them): a crash then neither resets a charge's attempts nor forgets that a
   * request may have reached the provider. Only pending charges are touched: says, per start,
   * whether it was recorded (false: the charge is not pending any more, and must not be sent).
   */
  startAttempts(runId: string, starts: readonly AttemptStart[]): Promise<boolean[]>;
  /**
   * Makes the run's failed and unknown charges pending again for a new round of attempts
   * (`--retry-failed`): attempts, ambiguity and the first attempt's time are kept. Returns how
   * many were reopened.
   */
  reopenEnded(runId: string): Promise<number>;
  /** Records outcomes; implementations batch them. Call flush() to make them durable now. */
  record(runId: string, outcome: ChargeOutcome): void;
  /** Makes every recorded outcome durable (on Redis: as durable as its persistence settings make it). */
  flush(): Promise<void>;
  counts(runId: string): Promise<StateCounts>;
  /** Sum of amounts per currency: over charges in `state`, or over all but invalid ones. */
  totals(runId: string, state?: ChargeState): Promise<Record<string, number>>;
  /** One charge, for "what happened to user X?". */
  charge(runId: string, userId: string): Promise<ChargeRecord | undefined>;
  /** Every charge of the run in input order, streamed. */
  charges(runId: string): AsyncIterable<ChargeRecord>;
  /** The same in pages (of about a thousand): what a report of every row reads. */
  chargePages(runId: string): AsyncIterable<readonly ChargeRecord[]>;
  /**
   * Claims the run for this process, so two processes never bill it at once; a claim left by a
   * process that died (kill -9) is taken over. Throws a BulkbillError naming the holder.
   */
  claimRun(runId: string): Promise<void>;
  /** Gives the claim back. */
  releaseRun(runId: string): Promise<void>;
  /** Marks the run finished when every charge is charged, declined or invalid; says whether it did. */
  finishIfComplete(runId: string): Promise<boolean>;
  /** Keeps how the run is paced now, for `status` (a ledger without the column ignores it). */
  noteDispatch?(runId: string, report: DispatchReport): Promise<void>;
  /** The attempts kept of one charge, oldest first ([] for a user the run does not hold). */
  attemptHistory(runId: string, userId: string): Promise<AttemptRecord[]>;
  /** Keeps one second's sample of a billing process, for the dashboard's charts. */
  noteSample(runId: string, sample: RunSample): Promise<void>;
  /** The samples kept of a run whose second starts after `afterAt` (epoch ms), oldest first. */
  samples(runId: string, afterAt: number): Promise<RunSample[]>;
  /** The latest problems of a run (see ProblemFilter), and how many match. */
  problems(runId: string, filter: ProblemFilter): Promise<ProblemRows>;
  /** The fingerprint of the credentials the run is bound to ('' when none yet). */
  credentials(runId: string): Promise<string>;
  /**
   * Binds the run to a credentials fingerprint (provider/credentials.ts; never a secret), made
   * with the salt of what credentials() returned: `bound` when it had none, `same` when it is
   * this one, `rebound` when it had another but no charge was ever attempted (a wrong token
   * stopped it at once), `other` when the run was billed with other credentials: refuse it;
   * `changed` when it no longer holds `seen` (another process bound it meanwhile, with its own
   * salt): read it again and retry. `fingerprint` is made with the salt of `seen`.
   */
  bindCredentials(
    runId: string,
    fingerprint: string,
    seen: string,
  ): Promise<'bound' | 'same' | 'rebound' | 'other' | 'changed'>;
  close(): Promise<void>;
}

/** The refusal of a run bound to other credentials. */
export function otherCredentials(runId: string): string {
  return `run ${runId} was billed with other credentials (its sensitive headers differ from those its charges were sent with); with another account's credentials its idempotency keys mean nothing, and users could be charged twice. Use the run's credentials, or a new --run-id`;
}
