import { closeSync, openSync } from 'node:fs';
import { hostname } from 'node:os';
import Database from 'better-sqlite3';
import { duplicateReason, userIdFold } from '../domain/charge.js';
import type { DispatchReport } from '../domain/dispatch.js';
import { BulkbillError, ErrorCode } from '../domain/errors.js';
import type { ChargeState } from '../domain/outcome.js';
import { CLAIM_BEAT_MS, refuseLiveClaim } from './claims.js';
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
  type PendingCharge,
  type PendingOptions,
  type ProblemFilter,
  type ProblemRows,
  type RunRecord,
  type RunSample,
  type StateCounts,
  withFirstRequest,
} from './ledger.js';

export interface SqliteLedgerOptions {
  /** Database file; created on first use. `:memory:` works for tests. */
  readonly path: string;
  /** Outcomes buffered before a commit is forced. Default 1000. */
  readonly batchSize?: number;
  /** Longest an outcome waits in the buffer before it is committed, in ms. Default 50. */
  readonly flushIntervalMs?: number;
  /**
   * How long a write waits for another process's lock (SQLITE_BUSY), in ms, before it fails: it
   * is retried from a timer, so the event loop (and requests in flight) never block. Default 60 s.
   */
  readonly busyRetryMs?: number;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS run_owners (
  run_id TEXT PRIMARY KEY,
  pid    INTEGER NOT NULL,
  host   TEXT NOT NULL,
  since  TEXT NOT NULL,
  beat   INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS runs (
  run_id      TEXT PRIMARY KEY,
  input_hash  TEXT NOT NULL,
  input_path  TEXT NOT NULL,
  endpoint    TEXT NOT NULL,
  created_at  TEXT NOT NULL,
  finished_at TEXT,
  total       INTEGER NOT NULL,
  credentials TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS runs_by_input ON runs (input_hash, created_at);
CREATE TABLE IF NOT EXISTS charges (
  run_id      TEXT NOT NULL,
  seq         INTEGER NOT NULL,
  line        INTEGER NOT NULL,
  user_id     TEXT NOT NULL,
  amount      INTEGER NOT NULL,
  currency    TEXT NOT NULL,
  metadata    TEXT,
  state       TEXT NOT NULL,
  attempts    INTEGER NOT NULL DEFAULT 0,
  ambiguous   INTEGER NOT NULL DEFAULT 0,
  http_status INTEGER,
  latency_ms  INTEGER,
  charge_id   TEXT,
  error       TEXT,
  open        INTEGER NOT NULL DEFAULT 0,
  first_at    INTEGER,
  budget_from INTEGER NOT NULL DEFAULT 0,
  valid       INTEGER NOT NULL DEFAULT 1,
  waits       INTEGER NOT NULL DEFAULT 0,
  fold        TEXT,
  PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attempt_starts (
  id     INTEGER PRIMARY KEY,
  run_id TEXT NOT NULL,
  starts TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS attempt_starts_by_run ON attempt_starts (run_id);
CREATE TABLE IF NOT EXISTS attempt_log (
  run_id      TEXT NOT NULL,
  seq         INTEGER NOT NULL,
  n           INTEGER NOT NULL,
  at          INTEGER NOT NULL,
  http_status INTEGER,
  latency_ms  INTEGER,
  outcome     TEXT NOT NULL,
  reason      TEXT
);
CREATE INDEX IF NOT EXISTS attempt_log_of_charge ON attempt_log (run_id, seq, at);
CREATE TABLE IF NOT EXISTS run_samples (
  run_id TEXT NOT NULL,
  at     INTEGER NOT NULL,
  data   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS run_samples_by_at ON run_samples (run_id, at);
`;

// Columns added since the first ledgers were written: a ledger of an older bulkbill gains them.
const ADDED_COLUMNS: ReadonlyArray<[table: string, column: string, definition: string]> = [
  ['charges', 'open', 'INTEGER NOT NULL DEFAULT 0'],
  ['charges', 'first_at', 'INTEGER'],
  ['charges', 'budget_from', 'INTEGER NOT NULL DEFAULT 0'],
  ['run_owners', 'beat', 'INTEGER NOT NULL DEFAULT 0'],
  ['runs', 'credentials', "TEXT NOT NULL DEFAULT ''"],
  ['charges', 'valid', 'INTEGER NOT NULL DEFAULT 1'],
  ['charges', 'waits', 'INTEGER NOT NULL DEFAULT 0'],
  ['charges', 'fold', 'TEXT'],
  ['runs', 'dispatch', 'TEXT'],
];
// One valid row per user and run. The index's condition is on `valid`, a column no outcome
// changes, so writing an outcome never rewrites the index (on `state`, every outcome did: a
// fifth of its cost). An older ledger's index on state is replaced by this one when it is opened.
const USER_INDEX = `CREATE UNIQUE INDEX IF NOT EXISTS charges_of_user ON charges (run_id, user_id)
  WHERE valid = 1`;
// One valid row per fold of a user id (userIdFold), so `Alice` and `alice` cannot both be billed:
// `fold` holds it where it differs from the id (NULL for every lower-case ASCII id). Two rows of
// one stored fold meet in this index; a stored fold and an id that is its own fold (`Alice`,
// `alice`) meet in the two triggers, which skip the row as ON CONFLICT DO NOTHING would. Rather
// than one index on coalesce(fold, user_id): that second index of every row cost an import of
// lower-case ids 14% more time and 37% more file; here they pay one probe of an empty index.
// Rows imported before the column existed have no fold: a later id differing from one of them
// only by case is not caught.
const FOLD_INDEX = `CREATE UNIQUE INDEX IF NOT EXISTS charges_of_fold ON charges (run_id, fold)
  WHERE valid = 1 AND fold IS NOT NULL`;
const TWIN_TRIGGERS = `
CREATE TRIGGER IF NOT EXISTS charges_twin_of_fold BEFORE INSERT ON charges
  WHEN NEW.valid = 1 AND NEW.fold IS NULL
BEGIN
  SELECT RAISE(IGNORE) FROM charges
  WHERE run_id = NEW.run_id AND fold = NEW.user_id AND valid = 1 AND fold IS NOT NULL;
END;
CREATE TRIGGER IF NOT EXISTS charges_twin_of_id BEFORE INSERT ON charges
  WHEN NEW.valid = 1 AND NEW.fold IS NOT NULL
BEGIN
  SELECT RAISE(IGNORE) FROM charges WHERE run_id = NEW.run_id AND user_id = NEW.fold AND valid = 1;
END;`;
// A charge no later write may change: the provider has settled it. (Statements that find a row by
// user also say `valid = 1` in so many words: only then does SQLite use the partial index
// charges_of_user; without it each such statement is a scan of the run.)
const SETTLED = `('invalid', 'charged', 'declined')`;
const PAGE = 1_000;
/** An imported row's columns, and the rows a new run's import inserts per statement. */
const INSERT_COLUMNS =
  'run_id, seq, line, user_id, amount, currency, metadata, state, error, valid, fold';
const INSERT_VALUES = '(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)';
const INSERT_CHUNK = 50;

interface RunRow {
  run_id: string;
  input_hash: string;
  input_path: string;
  endpoint: string;
  created_at: string;
  finished_at: string | null;
  total: number;
  dispatch?: string | null;
}

interface ChargeRow {
  seq: number;
  line: number;
  user_id: string;
  amount: number;
  currency: string;
  metadata: string | null;
  state: ChargeState;
  attempts: number;
  ambiguous: number;
  http_status: number | null;
  latency_ms: number | null;
  charge_id: string | null;
  error: string | null;
  open: number;
  first_at: number | null;
  budget_from: number;
}

const EMPTY: Readonly<Record<string, string>> = Object.freeze({});

/** The columns of a charge row read as an array (raw), in the order ChargeTuple names them. */
const CHARGE_COLUMNS =
  'seq, line, user_id, amount, currency, metadata, state, attempts, ambiguous, http_status, latency_ms, charge_id, error, open, first_at';
type ChargeTuple = [
  seq: number,
  line: number,
  userId: string,
  amount: number,
  currency: string,
  metadata: string | null,
  state: ChargeState,
  attempts: number,
  ambiguous: number,
  httpStatus: number | null,
  latencyMs: number | null,
  chargeId: string | null,
  error: string | null,
  open: number,
  firstAt: number | null,
];

/** The columns of a pending charge read as an array, in the order PendingTuple names them. */
const PENDING_COLUMNS =
  'seq, user_id, amount, currency, attempts, ambiguous, open, first_at, budget_from, waits, metadata';
type PendingTuple = [
  seq: number,
  userId: string,
  amount: number,
  currency: string,
  attempts: number,
  ambiguous: number,
  open: number,
  firstAt: number | null,
  budgetFrom: number,
  waits: number,
  metadata: string | null,
];

/**
 * A pending charge as read from its page: the row's other columns stay the JSON text SQLite
 * returned until the charge is sent and its template reads them. A page of 2,000 charges lives
 * for a few hundred milliseconds; parsed up front, each row's object and strings would outlive
 * several young-generation collections and be copied and promoted with the page.
 */
class PendingRow implements PendingCharge {
  readonly seq: number;
  readonly userId: string;
  readonly amount: number;
  readonly currency: string;
  readonly attempts: number;
  readonly budgetFrom: number;
  readonly ambiguous: boolean;
  readonly firstAttemptAt: number | undefined;
  readonly waits: number;
  #metadata: string | Record<string, string> | null;

  constructor(row: PendingTuple, metadata: string | null) {
    this.seq = row[0];
    this.userId = row[1];
    this.amount = row[2];
    this.currency = row[3];
    this.attempts = row[4];
    this.budgetFrom = row[8];
    this.ambiguous = row[5] === 1 || row[6] === 1;
    this.firstAttemptAt = row[7] ?? undefined;
    this.waits = row[9];
    this.#metadata = metadata === '' ? null : metadata;
  }

  get metadata(): Readonly<Record<string, string>> | undefined {
    const held = this.#metadata;
    if (held === null) return undefined;
    if (typeof held !== 'string') return held;
    const parsed = JSON.parse(held) as Record<string, string>;
    this.#metadata = parsed;
    return parsed;
  }
}

function fromTuple(row: ChargeTuple): ChargeRecord {
  return {
    userId: row[2],
    line: row[1],
    amount: row[3],
    currency: row[4],
    metadata: row[5] ? (JSON.parse(row[5]) as Record<string, string>) : EMPTY,
    state: row[6],
    attempts: row[7],
    ambiguous: row[8] === 1 || row[13] === 1,
    firstAttemptAt: row[14] ?? undefined,
    httpStatus: row[9] ?? undefined,
    latencyMs: row[10] ?? undefined,
    chargeId: row[11] ?? undefined,
    error: row[12] ?? undefined,
  };
}

function toRun(row: RunRow): RunRecord {
  return {
    runId: row.run_id,
    inputHash: row.input_hash,
    inputPath: row.input_path,
    endpoint: row.endpoint,
    createdAt: row.created_at,
    finishedAt: row.finished_at ?? undefined,
    total: row.total,
    ...(row.dispatch ? { dispatch: JSON.parse(row.dispatch) as DispatchReport } : {}),
  };
}

function toCharge(row: ChargeRow): ChargeRecord {
  return {
    userId: row.user_id,
    line: row.line,
    amount: row.amount,
    currency: row.currency,
    metadata: row.metadata ? (JSON.parse(row.metadata) as Record<string, string>) : EMPTY,
    state: row.state,
    attempts: row.attempts,
    ambiguous: row.ambiguous === 1 || row.open === 1,
    firstAttemptAt: row.first_at ?? undefined,
    httpStatus: row.http_status ?? undefined,
    latencyMs: row.latency_ms ?? undefined,
    chargeId: row.charge_id ?? undefined,
    error: row.error ?? undefined,
  };
}

/** An imported row's metadata as stored: JSON, or NULL for none. */
/** A duplicate of the earlier row of `firstUser` (the same id, or a twin of its fold). */
function twinOf(
  userId: string,
  firstLine: number,
  firstUser: string | undefined,
): Omit<DuplicateUser, 'userId' | 'line'> {
  return firstUser === undefined || firstUser === userId
    ? { firstLine }
    : { firstLine, twin: firstUser };
}

function duplicateReasonOf(duplicate: Omit<DuplicateUser, 'userId' | 'line'>): string {
  return duplicateReason(duplicate.firstLine, duplicate.twin, duplicate.held);
}

function metadataText(row: ImportRow): string | null {
  return Object.keys(row.metadata).length > 0 ? JSON.stringify(row.metadata) : null;
}

/**
 * A pending charge with a logged start its row has not counted: that attempt may have reached the
 * provider, so it shows counted, ambiguous, and started then. Others are shown as they are.
 */
function withStart(
  charge: ChargeRecord,
  starts: ReadonlyMap<string, readonly [attempts: number, at: number]>,
): ChargeRecord {
  if (charge.state !== 'pending' || starts.size === 0) return charge;
  const start = starts.get(charge.userId);
  if (start === undefined || start[0] <= charge.attempts) return charge;
  return {
    ...charge,
    attempts: start[0],
    ambiguous: true,
    firstAttemptAt: charge.firstAttemptAt ?? start[1],
  };
}

/** Opens and prepares the file; any failure (missing folder, not a database) names the path. */
function openDatabase(path: string): Database.Database {
  // Two processes opening a new ledger at once: switching it to WAL and creating the schema take
  // locks for which SQLite may answer SQLITE_BUSY at once rather than wait (to avoid a deadlock),
  // so a busy open is tried again for up to 5 s.
  const deadline = performance.now() + 5_000;
  for (;;) {
    try {
      return prepareDatabase(path);
    } catch (error) {
      const busy = (error as { code?: string }).code === 'SQLITE_BUSY';
      if (!busy || performance.now() > deadline) {
        throw new BulkbillError(
          ErrorCode.Config,
          `cannot open the ledger ${path}: ${(error as Error).message}`,
          { cause: error },
        );
      }
      // Opening happens once, before any work: blocking this thread 20 ms is harmless.
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
    }
  }
}

/**
 * Creates a new ledger file readable by its owner only (0600): it names every user and amount.
 * SQLite gives its -wal and -shm files the database file's permissions. An existing file keeps
 * the mode it has.
 */
function createPrivately(path: string): void {
  if (path === '' || path === ':memory:' || path.startsWith('file:')) return;
  try {
    closeSync(openSync(path, 'wx', 0o600));
  } catch {
    // Already there, or not creatable: then new Database says why, in its own words.
  }
}

function prepareDatabase(path: string): Database.Database {
  let db: Database.Database | undefined;
  try {
    createPrivately(path);
    db = new Database(path);
    // SQLite reads the file lazily: a file that is not a database fails here, not above.
    db.pragma('journal_mode = WAL');
    // NORMAL in WAL mode can lose the last commits on power loss, never corrupt: a lost outcome is
    // retried with the same idempotency key, so durability of each commit is not needed.
    db.pragma('synchronous = NORMAL');
    // Short: a write that meets another process's lock is retried from a timer (busyRetry), so
    // SQLite never blocks the event loop for long. The open itself is retried above.
    db.pragma('busy_timeout = 20');
    db.exec(SCHEMA);
    migrate(db);
    return db;
  } catch (error) {
    db?.close();
    throw error;
  }
}

function migrate(db: Database.Database): void {
  const missing = () =>
    ADDED_COLUMNS.filter(([table, column]) => {
      const columns = db.pragma(`table_info(${table})`) as Array<{ name: string }>;
      return !columns.some((existing) => existing.name === column);
    });
  const indexes = db
    .prepare<[], string>("SELECT name FROM sqlite_master WHERE type IN ('index', 'trigger')")
    .pluck();
  const current = () => {
    const names = indexes.all();
    return (
      ['charges_of_user', 'charges_of_fold', 'charges_twin_of_fold', 'charges_twin_of_id'].every(
        (name) => names.includes(name),
      ) && !names.includes('charges_by_user')
    );
  };
  // Most opens find nothing to do and take no write lock (a `status` beside a long import).
  if (missing().length === 0 && current()) return;
  // Under the write lock: two processes opening an older ledger at once migrate it once.
  db.transaction(() => {
    for (const [table, column, definition] of missing()) {
      db.exec(`ALTER TABLE ${table} ADD COLUMN ${column} ${definition}`);
      if (column === 'valid') db.exec("UPDATE charges SET valid = 0 WHERE state = 'invalid'");
    }
    db.exec('DROP INDEX IF EXISTS charges_by_user');
    db.exec(USER_INDEX);
    db.exec(FOLD_INDEX);
    db.exec(TWIN_TRIGGERS);
  }).immediate();
}

function isBusy(error: unknown): boolean {
  const code = (error as { code?: unknown }).code;
  return code === 'SQLITE_BUSY' || code === 'SQLITE_LOCKED' || code === 'SQLITE_BUSY_SNAPSHOT';
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/**
 * The embedded ledger: one SQLite file in WAL mode. Outcomes are group-committed: buffered and
 * written in one transaction every `flushIntervalMs` or `batchSize` outcomes, so a charge costs a
 * fraction of a commit. An outcome lost in a crash before its commit only means the charge is
 * attempted again with the same idempotency key, which the provider answers with a replay. The
 * start of every attempt is committed before its request leaves (startAttempts, one log row per
 * group the engine sends together).
 */
export class SqliteLedger implements Ledger {
  readonly #db: Database.Database;
  readonly #batchSize: number;
  readonly #flushIntervalMs: number;
  readonly #busyRetryMs: number;
  readonly #buffer: Array<[string, ChargeOutcome]> = [];
  #timer: NodeJS.Timeout | undefined;
  #backgroundError: unknown;
  /** The import in progress: it holds the connection's one transaction across awaits. */
  #importing: Promise<RunRecord> | undefined;
  /** Claims this process holds, renewed every CLAIM_BEAT_MS. */
  readonly #claims = new Set<string>();
  /** Per run, the charges whose start is logged and whose outcome was not recorded: their log row. */
  readonly #started = new Map<string, Map<string, number>>();
  /** Log rows with starts still waiting for their outcome: how many. */
  readonly #rowsLeft = new Map<number, number>();
  /** Log rows whose every start has its outcome recorded: deleted with the next commit of them. */
  #droppable: number[] = [];
  #beat: NodeJS.Timeout | undefined;
  /** Multi-row inserts of an import, by their number of rows. */
  readonly #insertStatements = new Map<number, Database.Statement>();
  readonly #statements;

  constructor(options: SqliteLedgerOptions) {
    this.#batchSize = options.batchSize ?? 1_000;
    this.#flushIntervalMs = options.flushIntervalMs ?? 50;
    this.#busyRetryMs = options.busyRetryMs ?? 60_000;
    this.#db = openDatabase(options.path);
    const db = this.#db;
    this.#statements = {
      findRun: db.prepare<[string], RunRow>('SELECT * FROM runs WHERE run_id = ?'),
      listRuns: db.prepare<[], RunRow>('SELECT * FROM runs ORDER BY created_at DESC, rowid DESC'),
      runIds: db.prepare<[], { run_id: string }>('SELECT run_id FROM runs'),
      insertRun: db.prepare(
        'INSERT INTO runs (run_id, input_hash, input_path, endpoint, created_at, total) VALUES (?, ?, ?, ?, ?, 0)',
      ),
      setTotal: db.prepare('UPDATE runs SET total = ? WHERE run_id = ?'),
      insertCharge: db.prepare(
        // A user met twice (the same id, or another of its fold) is skipped and reported; the
        // run's and the position's key is never met twice (seq is counted here).
        `INSERT INTO charges (${INSERT_COLUMNS}) VALUES ${INSERT_VALUES} ON CONFLICT DO NOTHING`,
      ),
      positions: db
        .prepare<[string, number, number], number>(
          'SELECT seq FROM charges WHERE run_id = ? AND seq BETWEEN ? AND ?',
        )
        .pluck(),
      // The valid row of a fold: the id that is its own fold, or the row that stores it.
      firstOfFold: db.prepare<{ run: string; key: string }, { line: number; user_id: string }>(
        `SELECT line, user_id FROM charges WHERE run_id = $run AND user_id = $key AND valid = 1
         UNION ALL
         SELECT line, user_id FROM charges
         WHERE run_id = $run AND fold = $key AND valid = 1 AND fold IS NOT NULL
         LIMIT 1`,
      ),
      held: db.prepare<[string, string], HeldCharge>(
        'SELECT line, amount, currency, state FROM charges WHERE run_id = ? AND user_id = ? AND valid = 1',
      ),
      // The valid rows of a JSON list of [user id, fold key] pairs, by fold as firstOfFold finds
      // them, in one statement (CROSS JOIN: the list outside, each pair an index search; else
      // SQLite scans the run).
      heldOf: db.prepare<
        { pairs: string; run: string },
        HeldCharge & { asked: string; user_id: string }
      >(
        `SELECT j.value ->> 0 AS asked, c.user_id, c.line, c.amount, c.currency, c.state
         FROM json_each($pairs) AS j
         CROSS JOIN charges AS c ON c.run_id = $run AND c.user_id = j.value ->> 1 AND c.valid = 1
         UNION ALL
         SELECT j.value ->> 0 AS asked, c.user_id, c.line, c.amount, c.currency, c.state
         FROM json_each($pairs) AS j
         CROSS JOIN charges AS c ON c.run_id = $run AND c.fold = j.value ->> 1 AND c.valid = 1
           AND c.fold IS NOT NULL`,
      ),
      maxSeq: db.prepare<[string], { seq: number | null }>(
        'SELECT max(seq) AS seq FROM charges WHERE run_id = ?',
      ),
      dropInvalid: db.prepare("DELETE FROM charges WHERE run_id = ? AND state = 'invalid'"),
      rowCount: db.prepare<[string], { n: number }>(
        'SELECT count(*) AS n FROM charges WHERE run_id = ?',
      ),
      relabel: db.prepare(
        'UPDATE runs SET input_hash = ?, input_path = ?, total = ?, finished_at = CASE WHEN ? THEN NULL ELSE finished_at END WHERE run_id = ?',
      ),
      pending: db
        .prepare<[string, number, number], PendingTuple>(
          `SELECT ${PENDING_COLUMNS} FROM charges
           WHERE run_id = ? AND seq > ? AND state = 'pending' ORDER BY seq LIMIT ?`,
        )
        .raw(),
      pendingOrEnded: db
        .prepare<[string, number, number], PendingTuple>(
          `SELECT ${PENDING_COLUMNS} FROM charges
           WHERE run_id = ? AND seq > ? AND state IN ('pending', 'failed', 'unknown')
           ORDER BY seq LIMIT ?`,
        )
        .raw(),
      // An outcome's row by its key (the engine's outcomes carry it; others are looked up by user).
      seqOf: db
        .prepare<[string, string], number>(
          'SELECT seq FROM charges WHERE run_id = ? AND user_id = ? AND valid = 1',
        )
        .pluck(),
      updateAt: db.prepare(
        `UPDATE charges SET state = ?, attempts = ?, ambiguous = ?, http_status = ?, latency_ms = ?,
           charge_id = ?, error = ?, open = 0, first_at = coalesce(first_at, ?), waits = ?
         WHERE run_id = ? AND seq = ? AND user_id = ? AND state NOT IN ${SETTLED}`,
      ),
      // Which of a JSON list of user ids are pending, by their place in the list: one statement.
      pendingOf: db
        .prepare<[string, string], number>(
          `SELECT j.key FROM json_each(?) AS j WHERE EXISTS (SELECT 1 FROM charges AS c
             WHERE c.run_id = ? AND c.user_id = j.value AND c.valid = 1 AND c.state = 'pending')`,
        )
        .pluck(),
      logStarts: db.prepare('INSERT INTO attempt_starts (run_id, starts) VALUES (?, ?)'),
      loggedStarts: db.prepare<[string], { starts: string }>(
        'SELECT starts FROM attempt_starts WHERE run_id = ? ORDER BY id',
      ),
      dropStarts: db.prepare('DELETE FROM attempt_starts WHERE run_id = ?'),
      dropStart: db.prepare('DELETE FROM attempt_starts WHERE id = ?'),
      foldStart: db.prepare(
        `UPDATE charges SET open = 1, attempts = max(attempts, ?), first_at = coalesce(first_at, ?)
         WHERE run_id = ? AND user_id = ? AND valid = 1 AND state = 'pending'`,
      ),
      reopen: db.prepare(
        `UPDATE charges SET state = 'pending', budget_from = attempts, waits = 0
         WHERE run_id = ? AND state IN ('failed', 'unknown')`,
      ),
      unfinish: db.prepare('UPDATE runs SET finished_at = NULL WHERE run_id = ?'),
      counts: db.prepare<[string], { state: ChargeState; n: number }>(
        'SELECT state, count(*) AS n FROM charges WHERE run_id = ? GROUP BY state',
      ),
      totals: db.prepare<[string], { currency: string; total: number }>(
        "SELECT currency, sum(amount) AS total FROM charges WHERE run_id = ? AND state <> 'invalid' GROUP BY currency ORDER BY currency",
      ),
      totalsIn: db.prepare<[string, string], { currency: string; total: number }>(
        'SELECT currency, sum(amount) AS total FROM charges WHERE run_id = ? AND state = ? GROUP BY currency ORDER BY currency',
      ),
      logAttempt: db.prepare(
        'INSERT INTO attempt_log (run_id, seq, n, at, http_status, latency_ms, outcome, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
      ),
      history: db.prepare<
        [string, string, string],
        {
          n: number;
          at: number;
          http_status: number | null;
          latency_ms: number | null;
          outcome: AttemptRecord['outcome'];
          reason: string | null;
        }
      >(
        `SELECT n, at, http_status, latency_ms, outcome, reason FROM attempt_log
         WHERE run_id = ? AND seq = (SELECT seq FROM charges WHERE run_id = ? AND user_id = ?
           AND valid = 1)
         ORDER BY at, rowid`,
      ),
      hasHistory: db
        .prepare<[string, number], number>(
          'SELECT 1 FROM attempt_log WHERE run_id = ? AND seq = ? LIMIT 1',
        )
        .pluck(),
      noteSample: db.prepare('INSERT INTO run_samples (run_id, at, data) VALUES (?, ?, ?)'),
      samples: db
        .prepare<[string, number], string>(
          'SELECT data FROM run_samples WHERE run_id = ? AND at > ? ORDER BY at, rowid',
        )
        .pluck(),
      // The valid row through the partial index on (run, user) WHERE valid = 1 (without the
      // condition SQLite scans the run's rows: 3.7 ms at 100,000), else the user's invalid row.
      charge: db.prepare<[string, string], ChargeRow>(
        'SELECT * FROM charges WHERE run_id = ? AND user_id = ? AND valid = 1',
      ),
      invalidCharge: db.prepare<[string, string], ChargeRow>(
        'SELECT * FROM charges WHERE run_id = ? AND user_id = ? AND valid = 0 ORDER BY seq LIMIT 1',
      ),
      // Rows as arrays (CHARGE_COLUMNS order): better-sqlite3 builds an object per row much more
      // slowly than toCharge does from an array, and a report reads every row.
      page: db
        .prepare<[string, number, number], ChargeTuple>(
          `SELECT ${CHARGE_COLUMNS} FROM charges WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?`,
        )
        .raw(),
      open: db.prepare<[string], { n: number }>(
        `SELECT count(*) AS n FROM charges WHERE run_id = ? AND state IN ('pending', 'failed', 'unknown')`,
      ),
      owner: db.prepare<[string], { pid: number; host: string; since: string; beat: number }>(
        'SELECT pid, host, since, beat FROM run_owners WHERE run_id = ?',
      ),
      setOwner: db.prepare(
        'INSERT OR REPLACE INTO run_owners (run_id, pid, host, since, beat) VALUES (?, ?, ?, ?, ?)',
      ),
      renewOwner: db.prepare(
        'UPDATE run_owners SET beat = ? WHERE run_id = ? AND pid = ? AND host = ?',
      ),
      dropOwner: db.prepare('DELETE FROM run_owners WHERE run_id = ? AND pid = ? AND host = ?'),
      finish: db.prepare(
        'UPDATE runs SET finished_at = ? WHERE run_id = ? AND finished_at IS NULL',
      ),
      credentials: db.prepare<[string], { credentials: string }>(
        'SELECT credentials FROM runs WHERE run_id = ?',
      ),
      setCredentials: db.prepare('UPDATE runs SET credentials = ? WHERE run_id = ?'),
      setDispatch: db.prepare('UPDATE runs SET dispatch = ? WHERE run_id = ?'),
      attempted: db.prepare<[string, string], { one: number }>(
        `SELECT 1 AS one FROM charges WHERE run_id = ? AND (attempts > 0 OR open = 1
           OR state IN ('charged', 'declined', 'failed', 'unknown'))
         UNION ALL SELECT 1 FROM attempt_starts WHERE run_id = ? LIMIT 1`,
      ),
    };
  }

  async findRun(runId: string): Promise<RunRecord | undefined> {
    const row = this.#statements.findRun.get(runId);
    return row && toRun(row);
  }

  async noteDispatch(runId: string, report: DispatchReport): Promise<void> {
    this.#statements.setDispatch.run(JSON.stringify(report), runId);
  }

  async listRuns(): Promise<RunRecord[]> {
    return this.#statements.listRuns.all().map(toRun);
  }

  async createRun(
    run: Omit<RunRecord, 'createdAt' | 'finishedAt' | 'total'>,
    batches: AsyncIterable<readonly ImportRow[]>,
    onDuplicate: (duplicate: DuplicateUser) => void,
    options: { readonly knownRuns?: readonly string[] } = {},
  ): Promise<RunRecord> {
    return this.#transaction(() => this.#import(run, batches, onDuplicate, options.knownRuns));
  }

  async extendRun(
    runId: string,
    input: { readonly inputHash: string; readonly inputPath: string },
    batches: AsyncIterable<readonly ImportRow[]>,
    onDuplicate: (duplicate: DuplicateUser) => void,
  ): Promise<RunRecord> {
    return this.#transaction(() => this.#extend(runId, input, batches, onDuplicate));
  }

  async heldCharges(runId: string, userIds: readonly string[]): Promise<Map<string, HeldCharge>> {
    const held = new Map<string, HeldCharge>();
    if (userIds.length === 0) return held;
    const pairs = userIds.map((userId) => [userId, userIdFold(userId) || userId]);
    for (const row of this.#statements.heldOf.all({ pairs: JSON.stringify(pairs), run: runId })) {
      held.set(row.asked, {
        line: row.line,
        amount: row.amount,
        currency: row.currency,
        state: row.state,
        ...(row.user_id === row.asked ? {} : { twin: row.user_id }),
      });
    }
    return held;
  }

  /** Runs an import-like job in the connection's one transaction, held across its awaits. */
  async #transaction(job: () => Promise<RunRecord>): Promise<RunRecord> {
    await this.#importDone();
    const importing = job();
    this.#importing = importing;
    try {
      return await importing;
    } finally {
      this.#importing = undefined;
      // Outcomes recorded meanwhile were held back from the import's transaction.
      await this.#commitSoon();
    }
  }

  async #begin(): Promise<void> {
    try {
      await this.#busyRetry(() => this.#db.exec('BEGIN IMMEDIATE'), 'begin an import');
    } catch (error) {
      // Another process holds the write lock past busyRetryMs: most likely importing a big file.
      throw new BulkbillError(
        ErrorCode.Usage,
        'the ledger is busy: another process is writing to it (importing a large input?); run again once it is done',
        { cause: error, retryable: true },
      );
    }
  }

  async #import(
    run: Omit<RunRecord, 'createdAt' | 'finishedAt' | 'total'>,
    batches: AsyncIterable<readonly ImportRow[]>,
    onDuplicate: (duplicate: DuplicateUser) => void,
    knownRuns: readonly string[] | undefined,
  ): Promise<RunRecord> {
    const { insertRun, setTotal } = this.#statements;
    const createdAt = new Date().toISOString();
    // One transaction for the whole import: a failed or aborted import leaves no trace.
    await this.#begin();
    let committed = false;
    try {
      // Under the write lock: no other process can create a run between this check and ours.
      if (this.#statements.findRun.get(run.runId)) {
        throw new BulkbillError(ErrorCode.Usage, `run ${run.runId} already exists in this ledger`);
      }
      if (knownRuns !== undefined) {
        const known = new Set(knownRuns);
        const other = this.#statements.runIds.all().find((row) => !known.has(row.run_id));
        if (other) {
          throw new BulkbillError(
            ErrorCode.Usage,
            `run ${other.run_id} was created in this ledger while ${run.inputPath} was being checked (another process?); run again to continue it`,
          );
        }
      }
      insertRun.run(run.runId, run.inputHash, run.inputPath, run.endpoint, createdAt);
      const seq = await this.#insertRows(run.runId, 0, batches, onDuplicate, undefined);
      setTotal.run(seq, run.runId);
      this.#db.exec('COMMIT');
      committed = true;
      return { ...run, createdAt, finishedAt: undefined, total: seq };
    } finally {
      if (!committed && this.#db.inTransaction) this.#db.exec('ROLLBACK');
    }
  }

  async #extend(
    runId: string,
    input: { readonly inputHash: string; readonly inputPath: string },
    batches: AsyncIterable<readonly ImportRow[]>,
    onDuplicate: (duplicate: DuplicateUser) => void,
  ): Promise<RunRecord> {
    const { findRun, dropInvalid, maxSeq, rowCount, relabel } = this.#statements;
    await this.#begin();
    let committed = false;
    try {
      if (!findRun.get(runId)) {
        throw new BulkbillError(ErrorCode.Usage, `no run ${runId} in this ledger`);
      }
      dropInvalid.run(runId);
      const before = maxSeq.get(runId)?.seq ?? 0;
      // The users of this input by fold, to tell a user met twice in it from one the run holds.
      this.#db.exec(
        'CREATE TEMP TABLE IF NOT EXISTS input_folds (fold TEXT PRIMARY KEY, user_id TEXT NOT NULL, line INTEGER NOT NULL)',
      );
      this.#db.exec('DELETE FROM temp.input_folds');
      const seen = {
        add: this.#db.prepare(
          'INSERT OR IGNORE INTO temp.input_folds (fold, user_id, line) VALUES (?, ?, ?)',
        ),
        first: this.#db.prepare<[string], { line: number; user_id: string }>(
          'SELECT line, user_id FROM temp.input_folds WHERE fold = ?',
        ),
      };
      const last = await this.#insertRows(runId, before, batches, onDuplicate, seen);
      this.#db.exec('DELETE FROM temp.input_folds');
      const total = rowCount.get(runId)?.n ?? 0;
      relabel.run(input.inputHash, input.inputPath, total, last > before ? 1 : 0, runId);
      this.#db.exec('COMMIT');
      committed = true;
      const run = findRun.get(runId);
      if (!run) throw new BulkbillError(ErrorCode.Usage, `no run ${runId} in this ledger`);
      return toRun(run);
    } finally {
      if (!committed && this.#db.inTransaction) this.#db.exec('ROLLBACK');
    }
  }

  /**
   * Inserts rows after position `seq`; returns the last position used. With `seen` (extending a
   * run), a valid row of a user the run holds is left as it is, and an invalid row of such a user
   * is dropped; a user met twice in the input, or whose id differs only by its fold from one the
   * run holds, is reported and recorded invalid.
   */
  async #insertRows(
    runId: string,
    after: number,
    batches: AsyncIterable<readonly ImportRow[]>,
    onDuplicate: (duplicate: DuplicateUser) => void,
    seen:
      | {
          add: Database.Statement;
          first: Database.Statement<[string], { line: number; user_id: string }>;
        }
      | undefined,
  ): Promise<number> {
    if (seen === undefined) return this.#insertNew(runId, after, batches, onDuplicate);
    const { insertCharge, firstOfFold, held } = this.#statements;
    let seq = after;
    const insert = (row: ImportRow, metadata: string | null, error: string | null, fold = '') =>
      insertCharge.run(
        runId,
        ++seq,
        row.line,
        row.userId,
        row.amount,
        row.currency,
        metadata,
        error === null ? 'pending' : 'invalid',
        error,
        error === null ? 1 : 0,
        fold === '' ? null : fold,
      );
    for await (const batch of batches) {
      for (const row of batch) {
        const metadata = metadataText(row);
        if (row.invalidReason !== undefined) {
          if (row.userId !== '' && held.get(runId, row.userId)) continue;
          insert(row, metadata, row.invalidReason);
          continue;
        }
        const fold = userIdFold(row.userId);
        const key = fold || row.userId;
        let duplicate: Omit<DuplicateUser, 'userId' | 'line'>;
        if (seen.add.run(key, row.userId, row.line).changes === 0) {
          const first = seen.first.get(key);
          duplicate = twinOf(row.userId, first?.line ?? 0, first?.user_id);
        } else if (held.get(runId, row.userId)) {
          continue;
        } else {
          if (insert(row, metadata, null, fold).changes > 0) continue;
          seq--;
          // Not this id (held was asked) nor one met in this input: a twin from an earlier input.
          const first = firstOfFold.get({ run: runId, key });
          duplicate = { ...twinOf(row.userId, first?.line ?? 0, first?.user_id), held: true };
        }
        onDuplicate({ userId: row.userId, line: row.line, ...duplicate });
        insert(row, metadata, `user_id: ${duplicateReasonOf(duplicate)}`);
      }
    }
    return seq;
  }

  /**
   * Inserts the rows of a new run after position `after`, INSERT_CHUNK rows per statement (a
   * statement per row costs about twice as much); returns the last position used. A row whose
   * user (or fold) an earlier row holds is skipped by the insert (its position left free), found by
   * the positions missing from its chunk, reported, and recorded invalid in that position: the
   * same rows in the same positions as one insert per row would give.
   */
  async #insertNew(
    runId: string,
    after: number,
    batches: AsyncIterable<readonly ImportRow[]>,
    onDuplicate: (duplicate: DuplicateUser) => void,
  ): Promise<number> {
    const { insertCharge, firstOfFold, positions } = this.#statements;
    let seq = after;
    let chunk: ImportRow[] = [];
    let values: unknown[] = [];
    const flush = () => {
      if (chunk.length === 0) return;
      const first = seq + 1;
      const inserted = this.#insertMany(chunk.length).run(values).changes;
      seq += chunk.length;
      if (inserted < chunk.length) {
        const held = new Set(positions.all(runId, first, seq));
        chunk.forEach((row, index) => {
          const at = first + index;
          if (held.has(at)) return;
          const earlier = firstOfFold.get({
            run: runId,
            key: userIdFold(row.userId) || row.userId,
          });
          const duplicate = twinOf(row.userId, earlier?.line ?? 0, earlier?.user_id);
          onDuplicate({ userId: row.userId, line: row.line, ...duplicate });
          insertCharge.run(
            runId,
            at,
            row.line,
            row.userId,
            row.amount,
            row.currency,
            metadataText(row),
            'invalid',
            `user_id: ${duplicateReasonOf(duplicate)}`,
            0,
            null,
          );
        });
      }
      chunk = [];
      values = [];
    };
    for await (const batch of batches) {
      for (const row of batch) {
        const invalid = row.invalidReason !== undefined;
        values.push(
          runId,
          seq + chunk.length + 1,
          row.line,
          row.userId,
          row.amount,
          row.currency,
          metadataText(row),
          invalid ? 'invalid' : 'pending',
          invalid ? row.invalidReason : null,
          invalid ? 0 : 1,
          invalid ? null : userIdFold(row.userId) || null,
        );
        chunk.push(row);
        if (chunk.length === INSERT_CHUNK) flush();
      }
      // Before the next batch is asked for: the input's last step checks the duplicates reported.
      flush();
    }
    return seq;
  }

  /** The insert of `rows` charges in one statement (prepared once per size). */
  #insertMany(rows: number): Database.Statement {
    let statement = this.#insertStatements.get(rows);
    if (statement === undefined) {
      statement = this.#db.prepare(
        `INSERT INTO charges (${INSERT_COLUMNS}) VALUES ${Array(rows).fill(INSERT_VALUES).join(', ')}
         ON CONFLICT DO NOTHING`,
      );
      this.#insertStatements.set(rows, statement);
    }
    return statement;
  }

  async pendingCharges(
    runId: string,
    afterSeq: number,
    limit: number,
    options: PendingOptions = {},
  ): Promise<PendingCharge[]> {
    const statement = options.includeEnded
      ? this.#statements.pendingOrEnded
      : this.#statements.pending;
    const withMetadata = options.metadata !== false;
    return statement
      .all(runId, afterSeq, limit)
      .map((row) => new PendingRow(row, withMetadata ? row[10] : null));
  }

  /**
   * Logs the attempts about to be sent: one row per call (a JSON list) in attempt_starts, one
   * commit, instead of a write to each charge's row, so the start before each request costs little
   * at thousands of charges a second. The charges' rows learn of a start from its outcome; a start
   * left in the log by a process that died is folded into its charge when the run is claimed
   * next (foldStarts): the charge then shows the attempt counted and open, so ambiguous. A log
   * row is deleted in the commit that holds the last outcome of its starts.
   */
  async startAttempts(runId: string, starts: readonly AttemptStart[]): Promise<boolean[]> {
    if (starts.length === 0) return [];
    await this.#importDone();
    this.#throwBackgroundError();
    const { pendingOf, logStarts } = this.#statements;
    const recorded = new Array<boolean>(starts.length).fill(false);
    const ids = JSON.stringify(starts.map((start) => start.userId));
    for (const index of pendingOf.all(ids, runId)) recorded[index] = true;
    // The log row: [[user id, attempts, epoch ms], …] of the pending ones.
    const logged: Array<[string, number, number]> = [];
    starts.forEach((start, index) => {
      if (recorded[index]) logged.push([start.userId, start.attempts, start.at]);
    });
    if (logged.length === 0) return recorded;
    const text = JSON.stringify(logged);
    const row = Number(
      (await this.#busyRetry(() => logStarts.run(runId, text), 'record attempts')).lastInsertRowid,
    );
    let open = this.#started.get(runId);
    if (open === undefined) {
      open = new Map();
      this.#started.set(runId, open);
    }
    this.#rowsLeft.set(row, logged.length);
    for (const [userId] of logged) {
      this.#closeStart(open, userId);
      open.set(userId, row);
    }
    return recorded;
  }

  /** The outcome of a logged start is recorded: its log row may go once all of its have. */
  #closeStart(open: Map<string, number> | undefined, userId: string): void {
    const row = open?.get(userId);
    if (row === undefined) return;
    open?.delete(userId);
    const left = (this.#rowsLeft.get(row) ?? 1) - 1;
    if (left > 0) {
      this.#rowsLeft.set(row, left);
    } else {
      this.#rowsLeft.delete(row);
      this.#droppable.push(row);
    }
  }

  /**
   * The starts in the log, by user: attempts whose outcome is not in the charge's row yet — in
   * flight in a live process, or cut off by one that died and not folded in yet (that happens at
   * the next claim). What `status` and a report show of a crashed run, before it is resumed.
   */
  #openStarts(runId: string): Map<string, readonly [attempts: number, at: number]> {
    const starts = new Map<string, readonly [number, number]>();
    for (const { starts: text } of this.#statements.loggedStarts.all(runId)) {
      for (const [userId, attempts, at] of JSON.parse(text) as Array<[string, number, number]>) {
        const known = starts.get(userId);
        starts.set(userId, [Math.max(attempts, known?.[0] ?? 0), Math.min(at, known?.[1] ?? at)]);
      }
    }
    return starts;
  }

  /** Folds the starts a dead process left in the log into their charges (see startAttempts). */
  #foldStarts(runId: string): void {
    // This process's own starts still waiting for outcomes are not a dead process's.
    if ((this.#started.get(runId)?.size ?? 0) > 0) return;
    const { loggedStarts, foldStart, dropStarts } = this.#statements;
    this.#db.transaction(() => {
      for (const { starts } of loggedStarts.all(runId)) {
        for (const [userId, attempts, at] of JSON.parse(starts) as Array<
          [string, number, number]
        >) {
          foldStart.run(attempts, at, runId, userId);
        }
      }
      dropStarts.run(runId);
    })();
  }

  async reopenEnded(runId: string): Promise<number> {
    await this.flush();
    const reopened = this.#statements.reopen.run(runId).changes;
    if (reopened > 0) this.#statements.unfinish.run(runId);
    return reopened;
  }

  record(runId: string, outcome: ChargeOutcome): void {
    this.#buffer.push([runId, outcome]);
    this.#closeStart(this.#started.get(runId), outcome.userId);
    if (this.#buffer.length >= this.#batchSize && !this.#importing) this.#commitInBackground();
    else this.#timer ??= setTimeout(() => this.#commitInBackground(), this.#flushIntervalMs);
  }

  async flush(): Promise<void> {
    await this.#importDone();
    this.#throwBackgroundError();
    await this.#commitSoon();
  }

  async counts(runId: string): Promise<StateCounts> {
    const counts = emptyCounts();
    for (const row of this.#statements.counts.all(runId)) counts[row.state] = row.n;
    return counts;
  }

  async totals(runId: string, state?: ChargeState): Promise<Record<string, number>> {
    const totals: Record<string, number> = {};
    const rows =
      state === undefined
        ? this.#statements.totals.all(runId)
        : this.#statements.totalsIn.all(runId, state);
    for (const row of rows) totals[row.currency] = row.total;
    return totals;
  }

  async charge(runId: string, userId: string): Promise<ChargeRecord | undefined> {
    const row =
      this.#statements.charge.get(runId, userId) ??
      this.#statements.invalidCharge.get(runId, userId);
    return row && withStart(toCharge(row), this.#openStarts(runId));
  }

  async attemptHistory(runId: string, userId: string): Promise<AttemptRecord[]> {
    await this.flush();
    const kept = this.#statements.history.all(runId, runId, userId).map((row) => ({
      attempt: row.n,
      at: row.at,
      httpStatus: row.http_status ?? undefined,
      latencyMs: row.latency_ms ?? undefined,
      outcome: row.outcome,
      reason: row.reason ?? undefined,
    }));
    if (kept.some((attempt) => attempt.outcome === 'charged')) return kept;
    // A charge charged at its first request keeps no log row (#writeOutcomes): its row is it.
    return withFirstRequest(kept, await this.charge(runId, userId));
  }

  async noteSample(runId: string, sample: RunSample): Promise<void> {
    await this.#busyRetry(
      () => this.#statements.noteSample.run(runId, sample.at, JSON.stringify(sample)),
      'keep a sample',
    );
  }

  async samples(runId: string, afterAt: number): Promise<RunSample[]> {
    return this.#statements.samples
      .all(runId, afterAt)
      .map((data) => JSON.parse(data) as RunSample);
  }

  async problems(runId: string, filter: ProblemFilter): Promise<ProblemRows> {
    const states =
      filter.state === undefined ? ['declined', 'failed', 'unknown', 'invalid'] : [filter.state];
    const q = filter.q?.trim().toLowerCase() ?? '';
    // No index on state (see USER_INDEX): a scan of the run's rows, a few ms per 100,000.
    const where = `run_id = ? AND state IN (${states.map(() => '?').join(', ')})${
      q === ''
        ? ''
        : " AND (instr(lower(user_id), ?) > 0 OR instr(lower(coalesce(error, '')), ?) > 0)"
    }`;
    const params: Array<string | number> = [runId, ...states, ...(q === '' ? [] : [q, q])];
    const matching = this.#db
      .prepare<unknown[], { n: number }>(`SELECT count(*) AS n FROM charges WHERE ${where}`)
      .get(...params)?.n;
    // The latest ended first: by the last attempt's time, rows never attempted (invalid) last.
    const rows = this.#db
      .prepare<unknown[], ChargeRow>(
        `SELECT *, (SELECT max(at) FROM attempt_log a WHERE a.run_id = charges.run_id AND a.seq = charges.seq) AS last_at
         FROM charges WHERE ${where} ORDER BY last_at IS NULL, last_at DESC, seq DESC LIMIT ?`,
      )
      .all(...params, filter.limit);
    const starts = this.#openStarts(runId);
    return { rows: rows.map((row) => withStart(toCharge(row), starts)), matching: matching ?? 0 };
  }

  async *charges(runId: string): AsyncIterable<ChargeRecord> {
    for await (const page of this.chargePages(runId)) yield* page;
  }

  async *chargePages(runId: string): AsyncIterable<readonly ChargeRecord[]> {
    const starts = this.#openStarts(runId);
    let after = 0;
    for (;;) {
      const rows = this.#statements.page.all(runId, after, PAGE);
      if (rows.length > 0) yield rows.map((row) => withStart(fromTuple(row), starts));
      const last = rows.at(-1);
      if (!last || rows.length < PAGE) return;
      after = last[0];
    }
  }

  async claimRun(runId: string): Promise<void> {
    const { owner, setOwner } = this.#statements;
    const me = { pid: process.pid, host: hostname() };
    // IMMEDIATE: two processes claiming at once are serialized by SQLite's write lock.
    await this.#busyRetry(
      () =>
        this.#db
          .transaction(() => {
            const current = owner.get(runId);
            if (current) refuseLiveClaim(runId, current, me, Date.now());
            setOwner.run(runId, me.pid, me.host, new Date().toISOString(), Date.now());
          })
          .immediate(),
      'claim the run',
    );
    // Starts a process that died left behind: their charges may have reached the provider.
    await this.#busyRetry(() => this.#foldStarts(runId), 'fold attempts left by a crash');
    this.#claims.add(runId);
    this.#beat ??= setInterval(() => this.#renewClaims(), CLAIM_BEAT_MS);
    this.#beat.unref();
  }

  async releaseRun(runId: string): Promise<void> {
    this.#claims.delete(runId);
    if (this.#claims.size === 0 && this.#beat) {
      clearInterval(this.#beat);
      this.#beat = undefined;
    }
    await this.#busyRetry(
      () => this.#statements.dropOwner.run(runId, process.pid, hostname()),
      'release the run',
    );
  }

  #renewClaims(): void {
    if (this.#importing || !this.#db.open) return;
    const now = Date.now();
    const host = hostname();
    try {
      for (const runId of this.#claims) {
        this.#statements.renewOwner.run(now, runId, process.pid, host);
      }
    } catch {
      // Busy: the next beat renews it; a lease outlives several missed beats.
    }
  }

  async finishIfComplete(runId: string): Promise<boolean> {
    await this.#importDone();
    await this.#commitSoon();
    if (!this.#statements.findRun.get(runId)) return false;
    if ((this.#statements.open.get(runId)?.n ?? 0) > 0) return false;
    await this.#busyRetry(
      () => this.#statements.finish.run(new Date().toISOString(), runId),
      'mark the run finished',
    );
    return true;
  }

  async credentials(runId: string): Promise<string> {
    return this.#statements.credentials.get(runId)?.credentials ?? '';
  }

  async bindCredentials(
    runId: string,
    fingerprint: string,
    seen: string,
  ): Promise<'bound' | 'same' | 'rebound' | 'other' | 'changed'> {
    const { credentials, setCredentials, attempted } = this.#statements;
    return this.#busyRetry(
      () =>
        this.#db
          .transaction(() => {
            const current = credentials.get(runId)?.credentials ?? '';
            if (current === fingerprint) return 'same' as const;
            if (current !== seen) return 'changed' as const;
            if (current !== '' && attempted.get(runId, runId)) return 'other' as const;
            setCredentials.run(fingerprint, runId);
            return current === '' ? ('bound' as const) : ('rebound' as const);
          })
          .immediate(),
      'bind the run to its credentials',
    );
  }

  async close(): Promise<void> {
    if (this.#beat) clearInterval(this.#beat);
    this.#beat = undefined;
    await this.#importDone();
    try {
      await this.#commitSoon();
    } finally {
      if (this.#db.open) this.#db.close();
    }
  }

  /** Waits for the import in progress, if any, to commit or roll back. */
  async #importDone(): Promise<void> {
    while (this.#importing) await this.#importing.catch(() => {});
  }

  /**
   * Runs a write, retrying it from a timer while another process holds the lock (SQLITE_BUSY),
   * for up to busyRetryMs: never a busy wait that would stall requests in flight.
   */
  async #busyRetry<T>(write: () => T, what: string): Promise<T> {
    const deadline = Date.now() + this.#busyRetryMs;
    for (let wait = 5; ; wait = Math.min(wait * 2, 250)) {
      try {
        return write();
      } catch (error) {
        if (!isBusy(error) || Date.now() > deadline) {
          if (error instanceof BulkbillError) throw error;
          throw new BulkbillError(
            ErrorCode.Io,
            `cannot ${what} in the ledger: ${(error as Error).message}`,
            { cause: error, retryable: isBusy(error) },
          );
        }
        await sleep(wait);
      }
    }
  }

  /** A timer's commit has no caller to throw to: a busy ledger is tried again, any other error kept. */
  #commitInBackground(): void {
    if (this.#timer) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    try {
      this.#commit();
    } catch (error) {
      if (isBusy(error)) {
        this.#timer ??= setTimeout(() => this.#commitInBackground(), this.#flushIntervalMs);
      } else {
        this.#backgroundError ??= error;
      }
    }
  }

  #throwBackgroundError(): void {
    const error = this.#backgroundError;
    if (error === undefined) return;
    this.#backgroundError = undefined;
    throw new BulkbillError(
      ErrorCode.Io,
      `cannot record outcomes in the ledger: ${(error as Error).message}`,
      { cause: error },
    );
  }

  /** Commits the buffer now, waiting out another process's lock. */
  async #commitSoon(): Promise<void> {
    await this.#busyRetry(() => this.#commit(), 'record outcomes');
  }

  #takeBuffer(): Array<[string, ChargeOutcome]> {
    if (this.#timer) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    return this.#buffer.splice(0);
  }

  #commit(): void {
    // Written during an import, outcomes would join its transaction and vanish with its rollback;
    // the import commits them when it ends.
    if (this.#buffer.length === 0 || this.#importing) return;
    const batch = this.#takeBuffer();
    // Log rows whose every start has its outcome in this batch or an earlier one go with it.
    const dropped = this.#droppable;
    this.#droppable = [];
    try {
      this.#db.transaction(() => {
        this.#writeOutcomes(batch);
        for (const row of dropped) this.#statements.dropStart.run(row);
      })();
    } catch (error) {
      // Nothing of the batch was written (one transaction): keep it for the next attempt.
      this.#buffer.unshift(...batch);
      this.#droppable = dropped.concat(this.#droppable);
      throw error;
    }
  }

  #writeOutcomes(batch: ReadonlyArray<[string, ChargeOutcome]>): void {
    const { seqOf, updateAt, logAttempt, hasHistory } = this.#statements;
    for (const [runId, outcome] of batch) {
      const seq = outcome.seq ?? seqOf.get(runId, outcome.userId);
      // A user the run does not hold: nothing to record.
      if (seq === undefined) continue;
      const attempt = outcome.attempt;
      // The attempt happened even when its outcome comes too late to change the row. A charge
      // charged at its first request, with nothing before, keeps no log row: its charge row holds
      // that attempt, and attemptHistory reads it there (most charges: a fifth of a charge's cost).
      const whole =
        outcome.state === 'charged' && attempt?.n === 1 && hasHistory.get(runId, seq) === undefined;
      if (attempt !== undefined && !whole) {
        logAttempt.run(
          runId,
          seq,
          attempt.n,
          attempt.at,
          outcome.httpStatus ?? null,
          outcome.latencyMs === undefined ? null : Math.round(outcome.latencyMs),
          attemptOutcome(outcome),
          outcome.error ?? null,
        );
      }
      updateAt.run(
        outcome.state,
        outcome.attempts,
        outcome.ambiguous ? 1 : 0,
        outcome.httpStatus ?? null,
        outcome.latencyMs === undefined ? null : Math.round(outcome.latencyMs),
        outcome.chargeId ?? null,
        outcome.error ?? null,
        outcome.firstAttemptAt ?? null,
        outcome.state === 'pending' ? (outcome.waits ?? 0) : 0,
        runId,
        seq,
        outcome.userId,
      );
    }
  }
}
