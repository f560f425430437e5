import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { Redis } from 'ioredis';
import { userIdFold } from '../domain/charge.js';
import { BulkbillError, describeValue, ErrorCode } from '../domain/errors.js';
import type { ChargeState } from '../domain/outcome.js';
import { CLAIM_BEAT_MS, processIsAlive, type RunClaim, refuseLiveClaim } from './claims.js';
import {
  type AttemptRecord,
  type AttemptStart,
  attemptOutcome,
  type ChargeOutcome,
  type ChargeRecord,
  type DuplicateUser,
  emptyCounts,
  type HeldCharge,
  type ImportRow,
  type Ledger,
  otherCredentials,
  type PendingCharge,
  type PendingOptions,
  type ProblemFilter,
  type ProblemRows,
  type RunRecord,
  type RunSample,
  type StateCounts,
  withFirstRequest,
} from './ledger.js';
import {
  BEGIN_EXTEND,
  BEGIN_IMPORT,
  BIND_CREDENTIALS,
  CHARGES_PAGE,
  CREATE_RUN,
  DISCARD_IMPORT,
  EXTEND_ROWS,
  HASH_CAS,
  HELD_CHARGES,
  IMPORT_ROWS,
  INVALID_ROWS,
  KEY_CAS,
  type LuaScript,
  ONE_CHARGE,
  PENDING_CHARGES,
  PROBLEM_ROWS,
  RECORD_OUTCOMES,
  RENEW_IMPORT,
  REOPEN_CHARGES,
  SEAL_IMPORT,
  START_ATTEMPTS,
} from './redis-scripts.js';

export interface RedisLedgerOptions {
  /**
   * A `redis://` or `rediss://` URL, or an ioredis client. A connection opened from a URL is
   * closed by close(); a client passed in is left open. A connection opened from a URL fails a
   * command after 10 refused reconnections (about 3 s) or 10 s without an answer; pass a client
   * for another policy.
   */
  readonly redis: string | Redis;
  /** Start of every key; several ledgers can share one Redis under different prefixes. Default `bulkbill`. */
  readonly prefix?: string;
  /** Outcomes buffered before a write is started. Default 1000. */
  readonly batchSize?: number;
  /** Longest an outcome waits in the buffer before it is written, in ms. Default 50. */
  readonly flushIntervalMs?: number;
}

/** One letter per state in the rows hash and the tally's field names. */
const STATE_LETTERS: Record<ChargeState, string> = {
  pending: 'p',
  charged: 'c',
  declined: 'd',
  failed: 'f',
  unknown: 'u',
  invalid: 'i',
};
const STATE_OF_LETTER: Readonly<Record<string, ChargeState>> = Object.fromEntries(
  Object.entries(STATE_LETTERS).map(([state, letter]) => [letter, state as ChargeState]),
);

const PAGE = 1_000;
// Rows per import script: big enough to amortize a round trip, small enough to keep Redis responsive.
const IMPORT_CHUNK = 1_000;
// Outcomes per record script, whatever batchSize is: a script blocks Redis while it runs.
const OUTCOMES_PER_SCRIPT = 1_000;
// Rows one pendingCharges script looks at before it lets other clients in.
const PENDING_SCAN = 20_000;
// An import renews its lease every RENEW_MS; a lease not renewed for LEASE_MS marks it dead.
const LEASE_MS = 30_000;
const RENEW_MS = 5_000;
// Rows of an import outlive its lease, so a live import never finds its rows expired.
const IMPORT_DATA_MS = 2 * LEASE_MS;

// The dashboard's reads: list entries and invalid rows per script, samples per XRANGE.
const PROBLEM_CHUNK = 1_000;
const SAMPLE_PAGE = 5_000;
// Samples kept per run (MAXLEN ~): 50,000 seconds of one process, 5,000 of ten.
const SAMPLES_KEPT = 50_000;
// A sample's stream id is Redis's clock, its `at` the worker's: read from this much earlier.
const SAMPLE_SKEW_MS = 60_000;
// The longest reason a history entry keeps (the row keeps the last one whole).
const HISTORY_REASON = 200;

const EMPTY: Readonly<Record<string, string>> = Object.freeze({});

/** One letter per outcome name in a history entry. */
const OUTCOME_LETTERS: Record<AttemptRecord['outcome'], string> = {
  charged: 'c',
  declined: 'd',
  failed: 'f',
  unknown: 'u',
  invalid: 'i',
  pending: 'p',
  retry: 'r',
  throttled: 't',
};
const OUTCOME_OF_LETTER: Readonly<Record<string, AttemptRecord['outcome']>> = Object.fromEntries(
  Object.entries(OUTCOME_LETTERS).map(([name, letter]) => [
    letter,
    name as AttemptRecord['outcome'],
  ]),
);

/** The problems an attempt ends in (the rest come from the import: invalid). */
const ENDED_PROBLEMS = ['declined', 'failed', 'unknown'] as const;

/** The run's registry entry: a RunRecord minus its id, plus creation order and import state. */
interface StoredRun {
  readonly inputHash: string;
  readonly inputPath: string;
  readonly endpoint: string;
  readonly createdAt: string;
  readonly finishedAt?: string;
  readonly total: number;
  /** Creation order as Redis saw it: newest first is highest first, whatever the clocks say. */
  readonly n: number;
  /** Present while the run is being imported: the run is invisible until it is gone. */
  readonly importing?: { readonly token: string; readonly pid: number; readonly host: string };
}

type Claim = RunClaim;

// Text fields are escaped so that a stored value can be split on `|`: `\` → `\\`, `|` → `\p`.
// Optional text tells undefined (nothing) from '' (`\-`).
/**
 * The keys of an import (see the scripts' KEYS[1..9]): rows, order, invalid, tally, lease, folds,
 * then the dashboard's history, problems and samples, dropped and expired with the others.
 */
function importKeysOf(keys: {
  readonly rows: string;
  readonly order: string;
  readonly invalid: string;
  readonly tally: string;
  readonly lease: string;
  readonly folds: string;
  readonly history: string;
  readonly problems: string;
  readonly samples: string;
}): string[] {
  return [
    keys.rows,
    keys.order,
    keys.invalid,
    keys.tally,
    keys.lease,
    keys.folds,
    keys.history,
    keys.problems,
    keys.samples,
  ];
}

/** A row as IMPORT_ROWS and EXTEND_ROWS take it: kind, user id, value, fold ('' if invalid). */
function scriptRow(row: ImportRow): [string, string, string, string] {
  const base = rowBase(row);
  if (row.invalidReason === undefined) return ['v', row.userId, base, userIdFold(row.userId)];
  return ['i', row.userId, `${base}|${escapeText(row.invalidReason)}`, ''];
}

/** A duplicate as the import scripts report it: first line, twin ('' for the same id)[, held]. */
function reportedDuplicate(
  row: ImportRow,
  [firstLine, twin, held]: ReadonlyArray<number | string>,
): DuplicateUser {
  return {
    userId: row.userId,
    line: row.line,
    firstLine: Number(firstLine),
    ...(twin === '' || twin === undefined ? {} : { twin: String(twin) }),
    ...(held === '1' ? { held: true } : {}),
  };
}

function escapeText(text: string): string {
  return /[|\\]/.test(text) ? text.replace(/[|\\]/g, (c) => (c === '|' ? '\\p' : '\\\\')) : text;
}

function unescapeText(text: string): string {
  if (!text.includes('\\')) return text;
  return text.replace(/\\(.)/g, (_, c: string) => (c === 'p' ? '|' : c === '-' ? '' : c));
}

function encodeOptional(text: string | undefined): string {
  if (text === undefined) return '';
  return text === '' ? '\\-' : escapeText(text);
}

function decodeOptional(text: string | undefined): string | undefined {
  return text === undefined || text === '' ? undefined : unescapeText(text);
}

function optionalNumber(text: string | undefined): number | undefined {
  return text === undefined || text === '' ? undefined : Number(text);
}

/** `line|amount|currency|metadata`: what never changes about a row. */
function rowBase(row: ImportRow): string {
  if (!Number.isSafeInteger(row.amount)) {
    throw new BulkbillError(
      ErrorCode.InputInvalid,
      `line ${row.line}: the ledger keeps amounts as integers in minor units, got ${describeValue(row.amount)}`,
    );
  }
  const metadata = Object.keys(row.metadata).length > 0 ? JSON.stringify(row.metadata) : '';
  return `${row.line}|${row.amount}|${escapeText(row.currency)}|${escapeText(metadata)}`;
}

/** `state|attempts|ambiguous|http|latency|chargeId|error`: what record() writes. */
function outcomeText(outcome: ChargeOutcome): string {
  return [
    STATE_LETTERS[outcome.state],
    outcome.attempts,
    outcome.ambiguous ? 1 : 0,
    outcome.httpStatus ?? '',
    outcome.latencyMs === undefined ? '' : Math.round(outcome.latencyMs),
    encodeOptional(outcome.chargeId),
    encodeOptional(outcome.error),
  ].join('|');
}

/** At most `length` characters of `text` (a surrogate pair is never cut), `…` when cut. */
function shortened(text: string, length: number): string {
  if (text.length <= length) return text;
  const cut = /[\uD800-\uDBFF]/.test(text.charAt(length - 1)) ? length - 1 : length;
  return `${text.slice(0, cut)}…`;
}

/**
 * The history entry of an outcome that ends an attempt, '' for one that ends none:
 * `n,at,http,latency,outcome letter,reason` (the reason escaped, so it holds no `|`, which
 * separates entries; it is the last field, so it may hold commas).
 */
function historyEntry(outcome: ChargeOutcome): string {
  const { attempt } = outcome;
  if (attempt === undefined) return '';
  const reason = outcome.error === undefined ? undefined : shortened(outcome.error, HISTORY_REASON);
  return [
    Math.round(attempt.n),
    Math.round(attempt.at),
    outcome.httpStatus ?? '',
    outcome.latencyMs === undefined ? '' : Math.round(outcome.latencyMs),
    OUTCOME_LETTERS[attemptOutcome(outcome)],
    encodeOptional(reason),
  ].join(',');
}

/** A charge's history as RECORD_OUTCOMES keeps it, oldest first. */
function parseHistory(value: string): AttemptRecord[] {
  const records = value.split('|').map((entry): AttemptRecord => {
    const fields: string[] = [];
    let from = 0;
    for (let i = 0; i < 5; i++) {
      const comma = entry.indexOf(',', from);
      fields.push(entry.slice(from, comma < 0 ? entry.length : comma));
      from = comma < 0 ? entry.length : comma + 1;
    }
    const [n, at, httpStatus, latencyMs, letter] = fields;
    return {
      attempt: Number(n),
      at: Number(at),
      httpStatus: optionalNumber(httpStatus),
      latencyMs: optionalNumber(latencyMs),
      outcome: OUTCOME_OF_LETTER[letter ?? ''] ?? 'pending',
      reason: decodeOptional(entry.slice(from)),
    };
  });
  // Appended as outcomes were written: workers' outcomes may land slightly out of order.
  return records.sort((a, b) => a.at - b.at);
}

function toCharge(userId: string, kind: string, value: string): ChargeRecord {
  const [line, amount, currency, metadata, ...rest] = value.split('|');
  const base = {
    userId,
    line: Number(line),
    amount: Number(amount),
    currency: unescapeText(currency ?? ''),
    metadata: metadata ? (JSON.parse(unescapeText(metadata)) as Record<string, string>) : EMPTY,
  };
  if (kind === 'i') {
    return {
      ...base,
      state: 'invalid',
      attempts: 0,
      ambiguous: false,
      httpStatus: undefined,
      latencyMs: undefined,
      firstAttemptAt: undefined,
      chargeId: undefined,
      error: unescapeText(rest.join('|')),
    };
  }
  const [state, attempts, ambiguous, httpStatus, latencyMs, chargeId, error, open, firstAt] = rest;
  return {
    ...base,
    state: STATE_OF_LETTER[state ?? 'p'] ?? 'pending',
    attempts: attempts ? Number(attempts) : 0,
    ambiguous: ambiguous === '1' || open === '1',
    firstAttemptAt: optionalNumber(firstAt),
    httpStatus: optionalNumber(httpStatus),
    latencyMs: optionalNumber(latencyMs),
    chargeId: decodeOptional(chargeId),
    error: decodeOptional(error),
  };
}

/** The budget start of a stored value (its 14th field; 0 in rows written before it existed). */
function budgetOf(value: string): number {
  return Number(value.split('|')[13] || 0);
}

/** What a worker reads of a charge before an attempt. */
export interface ChargeStanding {
  readonly state: ChargeState;
  readonly attempts: number;
  readonly budgetFrom: number;
  readonly ambiguous: boolean;
  readonly firstAttemptAt: number | undefined;
}

function toRun(runId: string, stored: StoredRun): RunRecord {
  return {
    runId,
    inputHash: stored.inputHash,
    inputPath: stored.inputPath,
    endpoint: stored.endpoint,
    createdAt: stored.createdAt,
    finishedAt: stored.finishedAt,
    total: stored.total,
  };
}

/** The stored form of a published run; `finishedAt` when given. */
function storedText(stored: StoredRun, finishedAt = stored.finishedAt): string {
  const { importing: _, ...published } = stored;
  return JSON.stringify(finishedAt === undefined ? published : { ...published, finishedAt });
}

function checkOptions(options: RedisLedgerOptions): Required<Omit<RedisLedgerOptions, 'redis'>> {
  const fail = (name: string, expected: string, value: unknown): never => {
    throw new BulkbillError(
      ErrorCode.Config,
      `Expected \`${name}\` to be ${expected}, got ${describeValue(value)}`,
    );
  };
  const { redis, prefix = 'bulkbill', batchSize = 1_000, flushIntervalMs = 50 } = options;
  if (typeof redis === 'string') {
    let url: URL | undefined;
    try {
      url = new URL(redis);
    } catch {}
    if (url === undefined || (url.protocol !== 'redis:' && url.protocol !== 'rediss:')) {
      // Never echo the value: a URL may hold a password.
      throw new BulkbillError(
        ErrorCode.Config,
        'Expected `redis` to be a redis:// or rediss:// URL or an ioredis client, got a string that is not one',
      );
    }
  } else if (typeof redis !== 'object' || redis === null || typeof redis.evalsha !== 'function') {
    fail('redis', 'a redis:// URL or an ioredis client', redis);
  }
  if (typeof prefix !== 'string' || prefix.length === 0 || /[{}]/.test(prefix)) {
    // Braces would make the prefix a hash tag and put every run in one Cluster slot.
    fail('prefix', 'a non-empty string without { or }', prefix);
  }
  if (!Number.isInteger(batchSize) || batchSize < 1)
    fail('batchSize', 'an integer >= 1', batchSize);
  if (
    typeof flushIntervalMs !== 'number' ||
    !Number.isFinite(flushIntervalMs) ||
    flushIntervalMs < 0
  ) {
    fail('flushIntervalMs', 'a finite number >= 0', flushIntervalMs);
  }
  return { prefix, batchSize, flushIntervalMs };
}

/** The URL without its password, for messages. */
export function redactedUrl(url: string): string {
  const parsed = new URL(url);
  parsed.password = '';
  return parsed.toString().replace(/\/$/, '');
}

/**
 * The ledger on Redis, for runs billed by many processes on many machines. Keys (one hash tag per
 * run, so all of a run's keys live in one Cluster slot):
 *
 * - `<prefix>:runs` hash: run id → JSON run record (creation order `n`, `importing` while imported).
 * - `<prefix>:{<run>}:rows` hash: user id → `line|amount|currency|metadata` of the user's valid row,
 *   plus `|state|attempts|ambiguous|http|latency|chargeId|error` once an outcome is recorded (no
 *   suffix: pending, never tried). One field per user, rewritten in place by record().
 * - `…:order` list: user ids in input order; the position (1-based) is the row's `seq`.
 * - `…:invalid` hash: seq → `line|amount|currency|metadata|reason` of each invalid row, and
 *   `=<user id>` → seq of the user's first invalid row. Only exists when a row is invalid.
 * - `…:tally` hash: `n<state letter><currency>` → rows, `s<state letter><currency>` → sum of amounts
 *   (HINCRBY: exact in 64 bits), moved by the same script that records an outcome, so counts() and
 *   totals() read one small hash.
 * - `…:import` string: the lease of the import in progress; `…:owner` string: the run's claim.
 * - `…:stopped` string: why a worker stopped billing the run (distributed engine), until re-enqueued.
 * - `…:history` hash (the dashboard's): user id → the charge's latest HISTORY_KEPT attempts,
 *   `n,at,http,latency,outcome,reason` each (see historyEntry), separated by `|`. A user gets a
 *   field at its first attempt. Measured (Redis 7.0, 20,000 users, 12-character ids): 85 bytes
 *   per user charged at the first attempt, then about 35 bytes plus the reason per further
 *   attempt (reasons cut at 200 characters): at most about 5 KB for a user retried 20 times with
 *   long reasons. The largest of the dashboard's keys: issue 13 may want to cap or drop it.
 * - `…:problems` list: user ids, pushed when a charge moves into declined, failed or unknown (the
 *   latest last; again after a reopened charge fails again): about 2 bytes plus the id per entry
 *   (14 for 12-character ids), for users who end badly only.
 * - `…:samples` stream: one JSON RunSample per second per billing process, capped near
 *   SAMPLES_KEPT entries (MAXLEN ~): about 245 bytes each, so at most about 12 MB per run,
 *   whatever its size (not per user).
 *
 * Measured on Redis 7.0 (MEMORY USAGE, 100,000 users): about 97 bytes per pending user, 132 per
 * user charged with a 24-character charge id; 115 for a run half charged (test/unit/redis-ledger.test.ts).
 *
 * Redis has no long transaction, so an import writes rows as it reads them and publishes the run
 * at the end: until then its registry entry says `importing` and no reader sees it; when the
 * batches throw, the entry and the rows are deleted. An import holds a lease (`…:import`, 30 s,
 * renewed every 5 s) and every write checks it, so an import taken over cannot write any more.
 * A process killed mid-import (kill -9) leaves its registry entry (invisible) and rows that expire
 * on their own within a minute; killed in the one round trip between sealing and publishing, rows
 * that do not expire. The next createRun (of any run) finds the entry dead (lease gone, or its
 * process gone from this host), deletes it, then the rows; a createRun of the same run id thus
 * succeeds at once on the same host, within 30 s from another.
 *
 * Outcomes are buffered and written by one script per run every `flushIntervalMs` or `batchSize`
 * outcomes. A flush is durable as far as Redis is: with `appendonly yes` and `appendfsync everysec`,
 * a crash of Redis loses at most the last second, which only means those charges are attempted
 * again with the same idempotency key.
 */
export class RedisLedger implements Ledger {
  readonly #redis: Redis;
  readonly #ownsConnection: boolean;
  /** Where Redis is, for messages: never holds a password. */
  readonly #where: string;
  readonly #password: string | undefined;
  readonly #prefix: string;
  readonly #runsKey: string;
  readonly #batchSize: number;
  readonly #flushIntervalMs: number;
  #buffer: Array<[string, ChargeOutcome]> = [];
  #timer: NodeJS.Timeout | undefined;
  #backgroundError: unknown;
  /** Writes of outcomes, one after another, so outcomes land in the order recorded. */
  #writing: Promise<void> = Promise.resolve();
  /** A write is queued and has not taken the buffer yet: it will take what comes meanwhile too. */
  #writeQueued = false;
  /** Runs known to be published: a published run never goes back to importing. */
  readonly #published = new Set<string>();
  /** Attempt starts gathered in this event-loop turn, per run, and who waits for them. */
  readonly #starts = new Map<
    string,
    {
      runId: string;
      credentials: string;
      starts: AttemptStart[];
      waiters: Array<{
        from: number;
        count: number;
        resolve: (recorded: boolean[]) => void;
        reject: (error: unknown) => void;
      }>;
    }
  >();
  #startsQueued = false;
  /** Claims this process holds, renewed every CLAIM_BEAT_MS. */
  readonly #claims = new Set<string>();
  #beat: NodeJS.Timeout | undefined;

  constructor(options: RedisLedgerOptions) {
    const checked = checkOptions(options);
    this.#prefix = checked.prefix;
    this.#runsKey = `${checked.prefix}:runs`;
    this.#batchSize = checked.batchSize;
    this.#flushIntervalMs = checked.flushIntervalMs;
    if (typeof options.redis === 'string') {
      this.#where = redactedUrl(options.redis);
      this.#password = new URL(options.redis).password || undefined;
      this.#ownsConnection = true;
      this.#redis = new Redis(options.redis, {
        maxRetriesPerRequest: 10,
        commandTimeout: 10_000,
        connectTimeout: 5_000,
      });
      // Errors reach the caller through the commands that fail; without a listener ioredis prints them.
      this.#redis.on('error', () => {});
    } else {
      const { host, port, path } = options.redis.options;
      this.#where = path ? `redis+unix://${path}` : `redis://${host}:${port}`;
      this.#password = options.redis.options.password;
      this.#ownsConnection = false;
      this.#redis = options.redis;
    }
  }

  async findRun(runId: string): Promise<RunRecord | undefined> {
    const stored = await this.#storedRun(runId);
    return stored && !stored.importing ? toRun(runId, stored) : undefined;
  }

  async listRuns(): Promise<RunRecord[]> {
    const all = await this.#call(() => this.#redis.hgetall(this.#runsKey));
    return Object.entries(all)
      .map(([runId, text]) => [runId, JSON.parse(text) as StoredRun] as const)
      .filter(([, stored]) => !stored.importing)
      .sort((a, b) => b[1].n - a[1].n)
      .map(([runId, stored]) => toRun(runId, stored));
  }

  async createRun(
    run: Omit<RunRecord, 'createdAt' | 'finishedAt' | 'total'>,
    batches: AsyncIterable<readonly ImportRow[]>,
    onDuplicate: (duplicate: DuplicateUser) => void,
    options: { readonly knownRuns?: readonly string[] } = {},
  ): Promise<RunRecord> {
    const createdAt = new Date().toISOString();
    const token = randomBytes(8).toString('hex');
    await this.#reapDeadImports();
    const importing = { token, pid: process.pid, host: hostname() };
    const draft = JSON.stringify({
      inputHash: run.inputHash,
      inputPath: run.inputPath,
      endpoint: run.endpoint,
      createdAt,
      total: 0,
      importing,
    });
    const known = options.knownRuns;
    const [outcome, first] = (await this.#eval(
      CREATE_RUN,
      [this.#runsKey],
      [run.runId, known ? '1' : '0', `${draft.slice(0, -1)},"n":`, ...(known ?? [])],
    )) as [string, string];
    if (outcome === 'exists') throw existsError(run.runId, JSON.parse(first) as StoredRun);
    if (outcome === 'unknown') {
      throw new BulkbillError(
        ErrorCode.Usage,
        `run ${first} was created in this ledger while ${run.inputPath} was being checked (another process?); run again to continue it`,
      );
    }
    const created = first;
    const keys = this.#runKeys(run.runId);
    const importKeys = importKeysOf(keys);
    const renew = setInterval(() => {
      this.#eval(RENEW_IMPORT, importKeys, [token, LEASE_MS, IMPORT_DATA_MS]).catch(() => {});
    }, RENEW_MS);
    renew.unref();
    let published: string | undefined;
    try {
      await this.#eval(BEGIN_IMPORT, importKeys, [token, LEASE_MS]);
      let total = 0;
      for await (const batch of batches) {
        for (let start = 0; start < batch.length; start += IMPORT_CHUNK) {
          const chunk = batch.slice(start, start + IMPORT_CHUNK);
          await this.#importChunk(run.runId, importKeys, token, total + 1, chunk, onDuplicate);
          total += chunk.length;
        }
      }
      clearInterval(renew);
      // Sealed, then published, then the lease dropped: at no moment can the run be published
      // while its rows could still expire, or its rows be reaped while it could still be published.
      if ((await this.#eval(SEAL_IMPORT, importKeys, [token, LEASE_MS])) !== 1) {
        throw lostLease(run.runId);
      }
      const stored = { ...(JSON.parse(created) as StoredRun), total };
      published = storedText(stored);
      if ((await this.#eval(HASH_CAS, [this.#runsKey], [run.runId, created, published])) !== 1) {
        throw lostLease(run.runId);
      }
      await this.#eval(KEY_CAS, [keys.lease], [`${token}:sealed`, '']).catch(() => {});
      this.#published.add(run.runId);
      return toRun(run.runId, stored);
    } catch (error) {
      clearInterval(renew);
      if (await this.#abandonImport(run.runId, importKeys, token, created, published)) {
        this.#published.add(run.runId);
        return toRun(run.runId, JSON.parse(published ?? '') as StoredRun);
      }
      throw error;
    }
  }

  async pendingCharges(
    runId: string,
    afterSeq: number,
    limit: number,
    options: PendingOptions = {},
  ): Promise<PendingCharge[]> {
    const pending: PendingCharge[] = [];
    if (limit <= 0 || !(await this.#isPublished(runId))) return pending;
    const keys = this.#runKeys(runId);
    let position = afterSeq;
    for (;;) {
      const [reached, ended, ...found] = (await this.#eval(
        PENDING_CHARGES,
        [keys.rows, keys.order, keys.invalid],
        [position, limit - pending.length, PENDING_SCAN, options.includeEnded ? '1' : '0'],
      )) as [number, number, ...Array<number | string>];
      for (let i = 0; i < found.length; i += 3) {
        const value = String(found[i + 2]);
        const charge = toCharge(String(found[i + 1]), 'v', value);
        pending.push({
          seq: Number(found[i]),
          userId: charge.userId,
          amount: charge.amount,
          currency: charge.currency,
          attempts: charge.attempts,
          budgetFrom: budgetOf(value),
          ambiguous: charge.ambiguous,
          firstAttemptAt: charge.firstAttemptAt,
          metadata: charge.metadata === EMPTY ? undefined : charge.metadata,
        });
      }
      if (ended === 1 || pending.length >= limit) return pending;
      position = reached;
    }
  }

  record(runId: string, outcome: ChargeOutcome): void {
    this.#buffer.push([runId, outcome]);
    if (this.#buffer.length >= this.#batchSize) {
      if (!this.#writeQueued) this.#writeInBackground();
    } else {
      this.#timer ??= setTimeout(() => {
        this.#timer = undefined;
        this.#writeInBackground();
      }, this.#flushIntervalMs);
    }
  }

  /**
   * Records attempts about to be sent, after every outcome recorded before (one script per run
   * for the calls of one event-loop turn). Says, per start, whether it was recorded: false when
   * the charge is not pending any more (settled by another worker), so it must not be sent.
   */
  startAttempts(
    runId: string,
    starts: readonly AttemptStart[],
    options: { readonly credentials?: string } = {},
  ): Promise<boolean[]> {
    if (starts.length === 0) return Promise.resolve([]);
    return new Promise<boolean[]>((resolve, reject) => {
      const credentials = options.credentials ?? '';
      const groupKey = `${credentials}\u0000${runId}`;
      let group = this.#starts.get(groupKey);
      if (group === undefined) {
        group = { runId, credentials, starts: [], waiters: [] };
        this.#starts.set(groupKey, group);
      }
      group.waiters.push({ from: group.starts.length, count: starts.length, resolve, reject });
      group.starts.push(...starts);
      if (!this.#startsQueued) {
        this.#startsQueued = true;
        setImmediate(() => this.#writeStarts());
      }
    });
  }

  #writeStarts(): void {
    this.#startsQueued = false;
    const groups = [...this.#starts];
    this.#starts.clear();
    const written = this.#write().then(() =>
      Promise.all(
        groups.map(async ([, group]) => {
          const { runId } = group;
          const args: Array<string | number> = [];
          for (const start of group.starts) {
            args.push(start.userId, start.attempts, start.ambiguous ? '1' : '0', start.at);
          }
          const runKeys = this.#runKeys(runId);
          const keys = [runKeys.rows, runKeys.credentials, runKeys.attempted];
          const recorded: number[] = [];
          for (let from = 0; from < args.length; from += 4 * OUTCOMES_PER_SCRIPT) {
            const slice = args.slice(from, from + 4 * OUTCOMES_PER_SCRIPT);
            const answer = (await this.#eval(START_ATTEMPTS, keys, [
              group.credentials,
              ...slice,
            ])) as number[];
            if (answer[0] === -1) {
              throw new BulkbillError(ErrorCode.Usage, otherCredentials(runId));
            }
            recorded.push(...answer);
          }
          for (const waiter of group.waiters) {
            waiter.resolve(
              recorded.slice(waiter.from, waiter.from + waiter.count).map((one) => one === 1),
            );
          }
        }),
      ),
    );
    written.catch((error: unknown) => {
      for (const [, group] of groups) for (const waiter of group.waiters) waiter.reject(error);
    });
  }

  async flush(): Promise<void> {
    this.#stopTimer();
    await this.#writing;
    this.#throwBackgroundError();
    await this.#write();
  }

  async counts(runId: string): Promise<StateCounts> {
    const counts = emptyCounts();
    for (const [state, , rows] of await this.#tally(runId)) counts[state] += rows;
    return counts;
  }

  async totals(runId: string, state?: ChargeState): Promise<Record<string, number>> {
    const sums = new Map<string, { rows: number; sum: bigint }>();
    for (const [rowState, currency, rows, sum] of await this.#tally(runId)) {
      if (state === undefined ? rowState === 'invalid' : rowState !== state) continue;
      const entry = sums.get(currency) ?? { rows: 0, sum: 0n };
      entry.rows += rows;
      entry.sum += sum;
      sums.set(currency, entry);
    }
    const totals: Record<string, number> = {};
    for (const currency of [...sums.keys()].sort()) {
      const entry = sums.get(currency);
      if (entry && entry.rows > 0) totals[currency] = Number(entry.sum);
    }
    return totals;
  }

  /**
   * What a worker needs of a valid charge before an attempt: its state, attempts, budget,
   * ambiguity (an open attempt counts: it was cut off) and first attempt's time; one HGET on the
   * worker's auto-pipelined connection. Undefined for a user the run has no valid row of.
   */
  async chargeState(runId: string, userId: string): Promise<ChargeStanding | undefined> {
    const value = await this.#call(() => this.#redis.hget(this.#runKeys(runId).rows, userId));
    if (value === null) return undefined;
    // line|amount|currency|metadata[|state|attempts|ambiguous|http|latency|chargeId|error|open|firstAt|budgetFrom]
    const fields = value.split('|');
    return {
      state: STATE_OF_LETTER[fields[4] ?? 'p'] ?? 'pending',
      attempts: Number(fields[5] || 0),
      budgetFrom: Number(fields[13] || 0),
      ambiguous: fields[6] === '1' || fields[11] === '1',
      firstAttemptAt: optionalNumber(fields[12]),
    };
  }

  async heldCharges(runId: string, userIds: readonly string[]): Promise<Map<string, HeldCharge>> {
    const held = new Map<string, HeldCharge>();
    if (userIds.length === 0 || !(await this.#isPublished(runId))) return held;
    const keys = this.#runKeys(runId);
    for (let from = 0; from < userIds.length; from += PAGE) {
      const slice = userIds.slice(from, from + PAGE);
      const found = (await this.#eval(
        HELD_CHARGES,
        [keys.rows, keys.folds],
        slice.flatMap((userId) => [userId, userIdFold(userId)]),
      )) as string[];
      slice.forEach((userId, index) => {
        const value = found[2 * index] as string;
        if (value === '') return;
        const twin = found[2 * index + 1] as string;
        const charge = toCharge(twin || userId, 'v', value);
        held.set(userId, {
          line: charge.line,
          amount: charge.amount,
          currency: charge.currency,
          state: charge.state,
          ...(twin === '' ? {} : { twin }),
        });
      });
    }
    return held;
  }

  async extendRun(
    runId: string,
    input: { readonly inputHash: string; readonly inputPath: string },
    batches: AsyncIterable<readonly ImportRow[]>,
    onDuplicate: (duplicate: DuplicateUser) => void,
  ): Promise<RunRecord> {
    if (!(await this.#isPublished(runId))) {
      throw new BulkbillError(ErrorCode.Usage, `no run ${runId} in this ledger`);
    }
    const keys = this.#runKeys(runId);
    const extendKeys = [...importKeysOf(keys).slice(0, 5), keys.seen, keys.folds];
    const token = randomBytes(8).toString('hex');
    if ((await this.#eval(BEGIN_EXTEND, extendKeys, [token, LEASE_MS])) !== 1) {
      throw new BulkbillError(
        ErrorCode.Usage,
        `run ${runId} is being imported or extended by another process; run again once it is done`,
      );
    }
    const renew = setInterval(() => {
      this.#redis.pexpire(keys.lease, LEASE_MS).catch(() => {});
    }, RENEW_MS);
    renew.unref();
    let added = 0;
    try {
      for await (const batch of batches) {
        for (let start = 0; start < batch.length; start += IMPORT_CHUNK) {
          const chunk = batch.slice(start, start + IMPORT_CHUNK);
          const args = chunk.flatMap(scriptRow);
          const [count, ...duplicates] = (await this.#eval(EXTEND_ROWS, extendKeys, [
            token,
            LEASE_MS,
            ...args,
          ])) as Array<number | string>;
          if (count === -1) throw lostLease(runId);
          added += Number(count);
          for (let i = 0; i < duplicates.length; i += 4) {
            const row = chunk[Number(duplicates[i]) - 1] as ImportRow;
            onDuplicate(reportedDuplicate(row, duplicates.slice(i + 1, i + 4)));
          }
        }
      }
    } finally {
      clearInterval(renew);
      await this.#call(() => this.#redis.del(keys.seen)).catch(() => {});
      await this.#eval(KEY_CAS, [keys.lease], [token, '']).catch(() => {});
    }
    const total = (await this.#tally(runId)).reduce((sum, [, , rows]) => sum + rows, 0);
    for (;;) {
      const text = await this.#call(() => this.#redis.hget(this.#runsKey, runId));
      if (text === null) throw new BulkbillError(ErrorCode.Usage, `no run ${runId} in this ledger`);
      const stored = JSON.parse(text) as StoredRun;
      const { finishedAt, ...rest } = stored;
      const next: StoredRun = {
        ...rest,
        inputHash: input.inputHash,
        inputPath: input.inputPath,
        total,
        ...(added === 0 && finishedAt !== undefined ? { finishedAt } : {}),
      };
      if ((await this.#eval(HASH_CAS, [this.#runsKey], [runId, text, storedText(next)])) === 1) {
        return toRun(runId, next);
      }
    }
  }

  async charge(runId: string, userId: string): Promise<ChargeRecord | undefined> {
    if (!(await this.#isPublished(runId))) return undefined;
    const keys = this.#runKeys(runId);
    const found = (await this.#eval(ONE_CHARGE, [keys.rows, keys.invalid], [userId])) as
      | [string, string]
      | null;
    return found ? toCharge(userId, found[0], found[1]) : undefined;
  }

  async *charges(runId: string): AsyncIterable<ChargeRecord> {
    for await (const page of this.chargePages(runId)) yield* page;
  }

  async *chargePages(runId: string): AsyncIterable<readonly ChargeRecord[]> {
    if (!(await this.#isPublished(runId))) return;
    const keys = this.#runKeys(runId);
    for (let start = 0; ; start += PAGE) {
      const [looked, ...page] = (await this.#eval(
        CHARGES_PAGE,
        [keys.rows, keys.order, keys.invalid],
        [start, PAGE],
      )) as [number, ...string[]];
      const charges: ChargeRecord[] = [];
      for (let i = 0; i < page.length; i += 3) {
        charges.push(toCharge(page[i] as string, page[i + 1] as string, page[i + 2] as string));
      }
      if (charges.length > 0) yield charges;
      if (Number(looked) < PAGE) return;
    }
  }

  async attemptHistory(runId: string, userId: string): Promise<AttemptRecord[]> {
    if (!(await this.#isPublished(runId))) return [];
    const key = this.#runKeys(runId).history;
    const value = await this.#call(() => this.#redis.hget(key, userId));
    const kept = value === null || value === '' ? [] : parseHistory(value);
    if (kept.some((attempt) => attempt.outcome === 'charged')) return kept;
    // A charge charged at its first request keeps no entry (RECORD_OUTCOMES), nor did any charge
    // of an older bulkbill: its row holds that attempt.
    return withFirstRequest(kept, await this.charge(runId, userId));
  }

  async noteSample(runId: string, sample: RunSample): Promise<void> {
    const key = this.#runKeys(runId).samples;
    await this.#call(() =>
      this.#redis.xadd(key, 'MAXLEN', '~', SAMPLES_KEPT, '*', 's', JSON.stringify(sample)),
    );
  }

  async samples(runId: string, afterAt: number): Promise<RunSample[]> {
    const key = this.#runKeys(runId).samples;
    const found: RunSample[] = [];
    // Ids are Redis's clock, `at` the sampling process's: start early enough for skew, filter by `at`.
    let start = `${Math.max(0, Math.floor(afterAt) - SAMPLE_SKEW_MS)}-0`;
    for (;;) {
      const page = await this.#call(() =>
        this.#redis.xrange(key, start, '+', 'COUNT', SAMPLE_PAGE),
      );
      for (const [, fields] of page) {
        const text = fields[fields.indexOf('s') + 1];
        if (text === undefined) continue;
        const sample = JSON.parse(text) as RunSample;
        if (sample.at > afterAt) found.push(sample);
      }
      const last = page.at(-1)?.[0];
      if (page.length < SAMPLE_PAGE || last === undefined) break;
      const [ms, sequence] = last.split('-');
      start = `${ms}-${Number(sequence) + 1}`;
    }
    // In the order Redis took them: processes' seconds interleave a little.
    return found.sort((a, b) => a.at - b.at);
  }

  /**
   * The latest problems. Declined, failed and unknown charges come from the `problems` list,
   * latest first; invalid rows from the `invalid` hash, last rows first; pending ones (and the
   * ended ones of a run written partly by an older bulkbill, which kept no list) from a scan of
   * every row, last rows first.
   */
  async problems(runId: string, filter: ProblemFilter): Promise<ProblemRows> {
    const limit = Math.max(0, Math.floor(filter.limit));
    if (!(await this.#isPublished(runId))) return { rows: [], matching: 0 };
    const q = filter.q?.trim().toLowerCase() ?? '';
    const matches = (charge: ChargeRecord) =>
      q === '' ||
      charge.userId.toLowerCase().includes(q) ||
      (charge.error?.toLowerCase().includes(q) ?? false);
    const { state } = filter;
    if (state === 'pending') return this.#scanProblems(runId, new Set(['pending']), matches, limit);
    const parts: ProblemRows[] = [];
    if (state !== 'invalid') {
      const states = new Set<ChargeState>(state === undefined ? ENDED_PROBLEMS : [state]);
      parts.push(await this.#endedProblems(runId, states, matches, limit));
    }
    if (state === undefined || state === 'invalid') {
      parts.push(await this.#invalidProblems(runId, matches, limit));
    }
    const rows = parts.flatMap((part) => part.rows).slice(0, limit);
    return { rows, matching: parts.reduce((sum, part) => sum + part.matching, 0) };
  }

  /** Declined, failed or unknown charges (`states`) by the problems list, latest first. */
  async #endedProblems(
    runId: string,
    states: ReadonlySet<ChargeState>,
    matches: (charge: ChargeRecord) => boolean,
    limit: number,
  ): Promise<ProblemRows> {
    const keys = this.#runKeys(runId);
    // Counted before the list is read: a charge that ends meanwhile is on the list too.
    const counts = await this.counts(runId);
    const expected = [...states].reduce((sum, one) => sum + counts[one], 0);
    if (expected === 0) return { rows: [], matching: 0 };
    const length = await this.#call(() => this.#redis.llen(keys.problems));
    const seen = new Set<string>();
    const rows: ChargeRecord[] = [];
    let inState = 0;
    let matching = 0;
    // Walked from the end by index: pushes meanwhile land after it and move nothing.
    for (let last = length - 1; last >= 0; last -= PROBLEM_CHUNK) {
      const first = Math.max(0, last - PROBLEM_CHUNK + 1);
      const found = (await this.#eval(
        PROBLEM_ROWS,
        [keys.problems, keys.rows],
        [first, last],
      )) as string[];
      for (let i = found.length - 2; i >= 0; i -= 2) {
        const userId = found[i] as string;
        const value = found[i + 1] as string;
        if (value === '' || seen.has(userId)) continue;
        seen.add(userId);
        const charge = toCharge(userId, 'v', value);
        if (!states.has(charge.state)) continue;
        inState += 1;
        if (!matches(charge)) continue;
        matching += 1;
        if (rows.length < limit) rows.push(charge);
      }
    }
    // Charges that ended under an older bulkbill are not on the list: read every row instead.
    if (inState < expected) return this.#scanProblems(runId, states, matches, limit);
    return { rows, matching };
  }

  /** The run's invalid rows, last rows first. */
  async #invalidProblems(
    runId: string,
    matches: (charge: ChargeRecord) => boolean,
    limit: number,
  ): Promise<ProblemRows> {
    const keys = this.#runKeys(runId);
    const bySeq = new Map<number, ChargeRecord>();
    let cursor = '0';
    do {
      const [next, ...found] = (await this.#eval(
        INVALID_ROWS,
        [keys.invalid, keys.order],
        [cursor, PROBLEM_CHUNK],
      )) as string[];
      for (let i = 0; i < found.length; i += 3) {
        const charge = toCharge(found[i + 1] as string, 'i', found[i + 2] as string);
        if (matches(charge)) bySeq.set(Number(found[i]), charge);
      }
      cursor = String(next);
    } while (cursor !== '0');
    const rows = [...bySeq]
      .sort((a, b) => b[0] - a[0])
      .slice(0, limit)
      .map(([, charge]) => charge);
    return { rows, matching: bySeq.size };
  }

  /** Charges in `states`, by a scan of every row, last rows first. */
  async #scanProblems(
    runId: string,
    states: ReadonlySet<ChargeState>,
    matches: (charge: ChargeRecord) => boolean,
    limit: number,
  ): Promise<ProblemRows> {
    let kept: ChargeRecord[] = [];
    let matching = 0;
    for await (const page of this.chargePages(runId)) {
      for (const charge of page) {
        if (!states.has(charge.state) || !matches(charge)) continue;
        matching += 1;
        kept.push(charge);
      }
      // Only the last `limit` are returned: keep memory bounded on a large run.
      if (kept.length > 2 * limit + PAGE) kept = kept.slice(-limit);
    }
    const rows = limit === 0 ? [] : kept.slice(-limit).reverse();
    return { rows, matching };
  }

  async claimRun(runId: string): Promise<void> {
    const key = this.#runKeys(runId).owner;
    const me = { pid: process.pid, host: hostname() };
    // Compare-and-set: two processes claiming at once cannot both see the run free.
    for (;;) {
      const current = await this.#call(() => this.#redis.get(key));
      if (current !== null) refuseLiveClaim(runId, JSON.parse(current) as Claim, me, Date.now());
      const mine = JSON.stringify({ ...me, since: new Date().toISOString(), beat: Date.now() });
      if ((await this.#eval(KEY_CAS, [key], [current ?? '', mine])) === 1) break;
    }
    this.#claims.add(runId);
    this.#beat ??= setInterval(() => void this.#renewClaims(), CLAIM_BEAT_MS);
    this.#beat.unref();
  }

  async #renewClaims(): Promise<void> {
    for (const runId of this.#claims) {
      const key = this.#runKeys(runId).owner;
      try {
        const current = await this.#redis.get(key);
        if (current === null) continue;
        const holder = JSON.parse(current) as Claim;
        if (holder.pid !== process.pid || holder.host !== hostname()) continue;
        await this.#eval(
          KEY_CAS,
          [key],
          [current, JSON.stringify({ ...holder, beat: Date.now() })],
        );
      } catch {
        // Redis is away: the next beat renews it; a lease outlives several missed beats.
      }
    }
  }

  async releaseRun(runId: string): Promise<void> {
    this.#claims.delete(runId);
    if (this.#claims.size === 0 && this.#beat) {
      clearInterval(this.#beat);
      this.#beat = undefined;
    }
    const key = this.#runKeys(runId).owner;
    const current = await this.#call(() => this.#redis.get(key));
    if (current === null) return;
    const holder = JSON.parse(current) as Claim;
    if (holder.pid !== process.pid || holder.host !== hostname()) return;
    // Deleted only if still ours: a run taken over meanwhile keeps its new holder.
    await this.#eval(KEY_CAS, [key], [current, '']);
  }

  async finishIfComplete(runId: string): Promise<boolean> {
    await this.#write();
    const counts = await this.counts(runId);
    if (counts.pending + counts.failed + counts.unknown > 0) return false;
    for (;;) {
      const text = await this.#call(() => this.#redis.hget(this.#runsKey, runId));
      if (text === null) return false;
      const stored = JSON.parse(text) as StoredRun;
      if (stored.importing) return false;
      if (stored.finishedAt !== undefined) return true;
      const finished = storedText(stored, new Date().toISOString());
      if ((await this.#eval(HASH_CAS, [this.#runsKey], [runId, text, finished])) === 1) return true;
    }
  }

  async reopenEnded(runId: string): Promise<number> {
    await this.#write();
    const keys = this.#runKeys(runId);
    let reopened = 0;
    let afterSeq = 0;
    for (;;) {
      const page = await this.pendingCharges(runId, afterSeq, OUTCOMES_PER_SCRIPT, {
        includeEnded: true,
      });
      if (page.length === 0) break;
      const ids = page.map((charge) => charge.userId);
      reopened += Number(await this.#eval(REOPEN_CHARGES, [keys.rows, keys.tally], ids));
      afterSeq = page.at(-1)?.seq ?? afterSeq;
      if (page.length < OUTCOMES_PER_SCRIPT) break;
    }
    if (reopened > 0) {
      for (;;) {
        const text = await this.#call(() => this.#redis.hget(this.#runsKey, runId));
        if (text === null) break;
        const { finishedAt: _, ...stored } = JSON.parse(text) as StoredRun;
        if ((await this.#eval(HASH_CAS, [this.#runsKey], [runId, text, storedText(stored)])) === 1)
          break;
      }
    }
    return reopened;
  }

  /**
   * Binds a run enqueued without an endpoint to `endpoint`, atomically: the first worker's
   * endpoint wins. Returns the endpoint the run bills (maybe another one, for the caller to refuse).
   */
  async bindEndpoint(runId: string, endpoint: string): Promise<string> {
    for (;;) {
      const text = await this.#call(() => this.#redis.hget(this.#runsKey, runId));
      if (text === null) throw new BulkbillError(ErrorCode.Usage, `no run ${runId} in this ledger`);
      const stored = JSON.parse(text) as StoredRun;
      if (stored.endpoint !== '') return stored.endpoint;
      const bound = storedText({ ...stored, endpoint });
      if ((await this.#eval(HASH_CAS, [this.#runsKey], [runId, text, bound])) === 1)
        return endpoint;
    }
  }

  /**
   * Notes why a worker stopped billing the run (the provider refused it: 401, a misconfiguration);
   * the first note stands until clearStop(), which the next enqueue of the run calls.
   */
  async noteStop(runId: string, reason: string): Promise<void> {
    await this.#call(() => this.#redis.set(this.#runKeys(runId).stopped, reason, 'NX'));
  }

  async stopNote(runId: string): Promise<string | undefined> {
    return (await this.#call(() => this.#redis.get(this.#runKeys(runId).stopped))) ?? undefined;
  }

  async clearStop(runId: string): Promise<void> {
    await this.#call(() => this.#redis.del(this.#runKeys(runId).stopped));
  }

  async credentials(runId: string): Promise<string> {
    return (await this.#call(() => this.#redis.get(this.#runKeys(runId).credentials))) ?? '';
  }

  async bindCredentials(
    runId: string,
    fingerprint: string,
    seen: string,
  ): Promise<'bound' | 'same' | 'rebound' | 'other' | 'changed'> {
    const keys = this.#runKeys(runId);
    return (await this.#eval(
      BIND_CREDENTIALS,
      [keys.credentials, keys.attempted],
      [fingerprint, seen],
    )) as 'bound' | 'same' | 'rebound' | 'other' | 'changed';
  }

  async close(): Promise<void> {
    if (this.#beat) clearInterval(this.#beat);
    this.#beat = undefined;
    try {
      await this.#write();
    } finally {
      if (this.#ownsConnection) {
        if (this.#redis.status === 'ready') await this.#redis.quit().catch(() => {});
        this.#redis.disconnect();
      }
    }
  }

  #runKeys(runId: string) {
    const base = `${this.#prefix}:{${runId}}:`;
    return {
      rows: `${base}rows`,
      order: `${base}order`,
      invalid: `${base}invalid`,
      tally: `${base}tally`,
      lease: `${base}import`,
      owner: `${base}owner`,
      stopped: `${base}stopped`,
      seen: `${base}seen`,
      folds: `${base}folds`,
      credentials: `${base}credentials`,
      attempted: `${base}attempted`,
      history: `${base}history`,
      problems: `${base}problems`,
      samples: `${base}samples`,
    };
  }

  async #storedRun(runId: string): Promise<StoredRun | undefined> {
    const text = await this.#call(() => this.#redis.hget(this.#runsKey, runId));
    return text === null ? undefined : (JSON.parse(text) as StoredRun);
  }

  async #isPublished(runId: string): Promise<boolean> {
    if (this.#published.has(runId)) return true;
    const stored = await this.#storedRun(runId);
    if (stored === undefined || stored.importing) return false;
    this.#published.add(runId);
    return true;
  }

  /** Deletes the entries and rows of imports whose process died (kill -9) before publishing. */
  async #reapDeadImports(): Promise<void> {
    const all = await this.#call(() => this.#redis.hgetall(this.#runsKey));
    const me = hostname();
    for (const [runId, text] of Object.entries(all)) {
      const { importing } = JSON.parse(text) as StoredRun;
      if (importing === undefined) continue;
      const keys = this.#runKeys(runId);
      const lease = await this.#call(() => this.#redis.get(keys.lease));
      const dead = lease === null || (importing.host === me && !processIsAlive(importing.pid));
      if (!dead) continue;
      // The entry first: once it is gone the import can no longer publish, so its rows may go.
      if ((await this.#eval(HASH_CAS, [this.#runsKey], [runId, text, ''])) !== 1) continue;
      await this.#eval(DISCARD_IMPORT, importKeysOf(keys), [importing.token]);
    }
  }

  /**
   * Undoes a failed import: its registry entry, then its rows. Says whether the run was published
   * after all (the answer to the publishing write was lost). Best effort: what Redis does not take
   * now is invisible, and reaped by a later createRun.
   */
  async #abandonImport(
    runId: string,
    importKeys: readonly string[],
    token: string,
    created: string,
    published: string | undefined,
  ): Promise<boolean> {
    try {
      if (published !== undefined) {
        const now = await this.#call(() => this.#redis.hget(this.#runsKey, runId));
        if (now === published) return true;
      }
      if ((await this.#eval(HASH_CAS, [this.#runsKey], [runId, created, ''])) === 1) {
        await this.#eval(DISCARD_IMPORT, importKeys, [token]);
      }
    } catch {}
    return false;
  }

  async #importChunk(
    runId: string,
    keys: readonly string[],
    token: string,
    firstSeq: number,
    chunk: readonly ImportRow[],
    onDuplicate: (duplicate: DuplicateUser) => void,
  ): Promise<void> {
    const rows: string[] = [];
    const counted = new Map<string, bigint>();
    const count = (field: string, by: bigint) =>
      counted.set(field, (counted.get(field) ?? 0n) + by);
    for (const row of chunk) {
      const letter = row.invalidReason !== undefined ? 'i' : 'p';
      const currency = escapeText(row.currency);
      count(`n${letter}${currency}`, 1n);
      if (row.amount !== 0) count(`s${letter}${currency}`, BigInt(row.amount));
      rows.push(...scriptRow(row));
    }
    const tally = [...counted].flatMap(([field, by]) => [field, by.toString()]);
    const duplicates = (await this.#eval(IMPORT_ROWS, keys, [
      token,
      firstSeq,
      IMPORT_DATA_MS,
      counted.size,
      ...tally,
      ...rows,
    ])) as Array<number | string>;
    if (duplicates[0] === -1) throw lostLease(runId);
    for (let i = 0; i < duplicates.length; i += 3) {
      const row = chunk[Number(duplicates[i]) - firstSeq] as ImportRow;
      onDuplicate(reportedDuplicate(row, duplicates.slice(i + 1, i + 3)));
    }
  }

  /** Rows per state and currency, and the sum of their amounts. */
  async #tally(runId: string): Promise<Array<[ChargeState, string, number, bigint]>> {
    if (!(await this.#isPublished(runId))) return [];
    const key = this.#runKeys(runId).tally;
    const fields = await this.#call(() => this.#redis.hgetall(key));
    const rows = new Map<string, number>();
    const sums = new Map<string, bigint>();
    for (const [field, value] of Object.entries(fields)) {
      const group = field.slice(1);
      if (field.startsWith('n')) rows.set(group, Number(value));
      else sums.set(group, BigInt(value));
    }
    const tally: Array<[ChargeState, string, number, bigint]> = [];
    for (const [group, n] of rows) {
      const state = STATE_OF_LETTER[group.slice(0, 1)];
      if (state === undefined) continue;
      tally.push([state, unescapeText(group.slice(1)), n, sums.get(group) ?? 0n]);
    }
    return tally;
  }

  #stopTimer(): void {
    if (this.#timer) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
  }

  /** A write started by a timer or a full buffer has no caller to throw to: keep its error. */
  #writeInBackground(): void {
    this.#write().catch((error: unknown) => {
      this.#backgroundError ??= error;
    });
  }

  #throwBackgroundError(): void {
    const error = this.#backgroundError;
    if (error === undefined) return;
    this.#backgroundError = undefined;
    throw error;
  }

  /** Writes what the buffer holds once the writes before are done. */
  #write(): Promise<void> {
    this.#stopTimer();
    this.#writeQueued = true;
    const write = this.#writing.then(() => {
      this.#writeQueued = false;
      return this.#writeBuffer();
    });
    this.#writing = write.catch(() => {});
    return write;
  }

  async #writeBuffer(): Promise<void> {
    if (this.#buffer.length === 0) return;
    const batch = this.#buffer.splice(0);
    const byRun = new Map<string, string[]>();
    for (const [runId, outcome] of batch) {
      const args = byRun.get(runId) ?? [];
      if (args.length === 0) byRun.set(runId, args);
      args.push(outcome.userId, outcomeText(outcome), historyEntry(outcome));
    }
    try {
      // Runs side by side (each run's keys share a slot); a run's outcomes in slices, in order.
      await Promise.all(
        [...byRun].map(async ([runId, args]) => {
          const keys = this.#runKeys(runId);
          const recordKeys = [keys.rows, keys.tally, keys.attempted, keys.history, keys.problems];
          for (let start = 0; start < args.length; start += 3 * OUTCOMES_PER_SCRIPT) {
            const slice = args.slice(start, start + 3 * OUTCOMES_PER_SCRIPT);
            await this.#eval(RECORD_OUTCOMES, recordKeys, slice);
          }
        }),
      );
    } catch (error) {
      // Outcomes set absolute values, an attempt a history holds is not added again, and problems()
      // reads a user pushed twice on the problems list once: writing a partly written batch again
      // is harmless.
      this.#buffer = batch.concat(this.#buffer);
      throw new BulkbillError(
        ErrorCode.Io,
        `cannot record outcomes in the ledger: ${(error as Error).message}`,
        { cause: error, retryable: error instanceof BulkbillError ? error.retryable : true },
      );
    }
  }

  async #eval(script: LuaScript, keys: readonly string[], args: ReadonlyArray<string | number>) {
    return this.#call(() => script.run(this.#redis, keys, args));
  }

  /** Runs a Redis command; a failure becomes a BulkbillError naming Redis (never its password). */
  async #call<T>(command: () => Promise<T>): Promise<T> {
    try {
      return await command();
    } catch (error) {
      if (error instanceof BulkbillError) throw error;
      let message = error instanceof Error ? error.message : String(error);
      if (this.#password) message = message.split(this.#password).join('***');
      const reply = error instanceof Error && error.name === 'ReplyError';
      throw new BulkbillError(ErrorCode.Io, `Redis at ${this.#where}: ${message}`, {
        cause: error,
        retryable: !reply,
      });
    }
  }
}

function existsError(runId: string, stored: StoredRun): BulkbillError {
  if (stored.importing) {
    const { pid, host } = stored.importing;
    return new BulkbillError(
      ErrorCode.Usage,
      `run ${runId} is being imported by process ${pid} on ${host}; wait for it to end, or run again once it has stopped`,
    );
  }
  return new BulkbillError(ErrorCode.Usage, `run ${runId} already exists in this ledger`);
}

function lostLease(runId: string): BulkbillError {
  return new BulkbillError(
    ErrorCode.Io,
    `the import of run ${runId} lost its lease (stalled for over ${LEASE_MS / 1_000} s; another process may have taken the run over); nothing of it was kept`,
  );
}
