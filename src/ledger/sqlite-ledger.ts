import { hostname } from 'node:os';
import Database from 'better-sqlite3';
import { BulkbillError, ErrorCode } from '../domain/errors.js';
import type { ChargeState } from '../domain/outcome.js';
import {
  type ChargeOutcome,
  type ChargeRecord,
  type DuplicateUser,
  emptyCounts,
  type ImportRow,
  type Ledger,
  type PendingCharge,
  type RunRecord,
  type StateCounts,
} from './ledger.js';
import { processIsAlive } from './process-alive.js';

export interface SqliteLedgerOptions {
  /** Database file; created on first use. `:memory:` works for tests. */
  readonly path: string;
  /** Outcomes buffered before a commit is forced. Default 1000. */
  readonly batchSize?: number;
  /** Longest an outcome waits in the buffer before it is committed, in ms. Default 50. */
  readonly flushIntervalMs?: number;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS run_owners (
  run_id TEXT PRIMARY KEY,
  pid    INTEGER NOT NULL,
  host   TEXT NOT NULL,
  since  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
  run_id      TEXT PRIMARY KEY,
  input_hash  TEXT NOT NULL,
  input_path  TEXT NOT NULL,
  endpoint    TEXT NOT NULL,
  created_at  TEXT NOT NULL,
  finished_at TEXT,
  total       INTEGER NOT NULL
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
  PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS charges_by_user ON charges (run_id, user_id)
  WHERE state <> 'invalid';
`;

// Charges still needing an attempt: never tried, or left failed/unknown by an earlier process.
const OPEN_STATES = `('pending', 'failed', 'unknown')`;
const PAGE = 1_000;

interface RunRow {
  run_id: string;
  input_hash: string;
  input_path: string;
  endpoint: string;
  created_at: string;
  finished_at: string | null;
  total: number;
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
}

const EMPTY: Readonly<Record<string, string>> = Object.freeze({});

function toRun(row: RunRow): RunRecord {
  return {
    runId: row.run_id,
    inputHash: row.input_hash,
    inputPath: row.input_path,
    endpoint: row.endpoint,
    createdAt: row.created_at,
    finishedAt: row.finished_at ?? undefined,
    total: row.total,
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
    ambiguous: row.ambiguous === 1,
    httpStatus: row.http_status ?? undefined,
    latencyMs: row.latency_ms ?? undefined,
    chargeId: row.charge_id ?? undefined,
    error: row.error ?? undefined,
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

function prepareDatabase(path: string): Database.Database {
  let db: Database.Database | undefined;
  try {
    db = new Database(path);
    // SQLite reads the file lazily: a file that is not a database fails here, not above.
    db.pragma('journal_mode = WAL');
    // NORMAL in WAL mode can lose the last commits on power loss, never corrupt: a lost outcome is
    // retried with the same idempotency key, so durability of each commit is not needed.
    db.pragma('synchronous = NORMAL');
    db.pragma('busy_timeout = 5000');
    db.exec(SCHEMA);
    return db;
  } catch (error) {
    db?.close();
    throw error;
  }
}

/**
 * The embedded ledger: one SQLite file in WAL mode. Outcomes are group-committed: buffered and
 * written in one transaction every `flushIntervalMs` or `batchSize` outcomes, so a charge costs a
 * fraction of a commit. An outcome lost in a crash before its commit only means the charge is
 * attempted again with the same idempotency key, which the provider answers with a replay.
 */
export class SqliteLedger implements Ledger {
  readonly #db: Database.Database;
  readonly #batchSize: number;
  readonly #flushIntervalMs: number;
  readonly #buffer: Array<[string, ChargeOutcome]> = [];
  #timer: NodeJS.Timeout | undefined;
  #backgroundError: unknown;
  /** The import in progress: it holds the connection's one transaction across awaits. */
  #importing: Promise<RunRecord> | undefined;
  readonly #statements;

  constructor(options: SqliteLedgerOptions) {
    this.#batchSize = options.batchSize ?? 1_000;
    this.#flushIntervalMs = options.flushIntervalMs ?? 50;
    this.#db = openDatabase(options.path);
    const db = this.#db;
    this.#statements = {
      findRun: db.prepare<[string], RunRow>('SELECT * FROM runs WHERE run_id = ?'),
      unfinished: db.prepare<[string], RunRow>(
        'SELECT * FROM runs WHERE input_hash = ? AND finished_at IS NULL ORDER BY created_at DESC, rowid DESC LIMIT 1',
      ),
      latest: db.prepare<[string], RunRow>(
        'SELECT * FROM runs WHERE input_hash = ? ORDER BY created_at DESC, rowid DESC LIMIT 1',
      ),
      insertRun: db.prepare(
        'INSERT INTO runs (run_id, input_hash, input_path, endpoint, created_at, total) VALUES (?, ?, ?, ?, ?, 0)',
      ),
      setTotal: db.prepare('UPDATE runs SET total = ? WHERE run_id = ?'),
      insertCharge: db.prepare(
        // Only a user id met twice is skipped (and reported); any other constraint failure throws.
        `INSERT INTO charges (run_id, seq, line, user_id, amount, currency, metadata, state, error)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
         ON CONFLICT (run_id, user_id) WHERE state <> 'invalid' DO NOTHING`,
      ),
      firstLine: db.prepare<[string, string], { line: number }>(
        "SELECT line FROM charges WHERE run_id = ? AND user_id = ? AND state <> 'invalid'",
      ),
      pending: db.prepare<[string, number, number], ChargeRow>(
        `SELECT seq, user_id, amount, currency, attempts, ambiguous FROM charges
         WHERE run_id = ? AND seq > ? AND state IN ${OPEN_STATES} ORDER BY seq LIMIT ?`,
      ),
      update: db.prepare(
        `UPDATE charges SET state = ?, attempts = ?, ambiguous = ?, http_status = ?, latency_ms = ?,
           charge_id = ?, error = ?
         WHERE run_id = ? AND user_id = ? AND state <> 'invalid'`,
      ),
      counts: db.prepare<[string], { state: ChargeState; n: number }>(
        'SELECT state, count(*) AS n FROM charges WHERE run_id = ? GROUP BY state',
      ),
      totals: db.prepare<[string], { currency: string; total: number }>(
        "SELECT currency, sum(amount) AS total FROM charges WHERE run_id = ? AND state <> 'invalid' GROUP BY currency ORDER BY currency",
      ),
      totalsIn: db.prepare<[string, string], { currency: string; total: number }>(
        'SELECT currency, sum(amount) AS total FROM charges WHERE run_id = ? AND state = ? GROUP BY currency ORDER BY currency',
      ),
      charge: db.prepare<[string, string], ChargeRow>(
        "SELECT * FROM charges WHERE run_id = ? AND user_id = ? ORDER BY state = 'invalid', seq LIMIT 1",
      ),
      page: db.prepare<[string, number, number], ChargeRow>(
        'SELECT * FROM charges WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?',
      ),
      open: db.prepare<[string], { n: number }>(
        `SELECT count(*) AS n FROM charges WHERE run_id = ? AND state IN ${OPEN_STATES}`,
      ),
      owner: db.prepare<[string], { pid: number; host: string; since: string }>(
        'SELECT pid, host, since FROM run_owners WHERE run_id = ?',
      ),
      setOwner: db.prepare(
        'INSERT OR REPLACE INTO run_owners (run_id, pid, host, since) VALUES (?, ?, ?, ?)',
      ),
      dropOwner: db.prepare('DELETE FROM run_owners WHERE run_id = ? AND pid = ? AND host = ?'),
      finish: db.prepare(
        'UPDATE runs SET finished_at = ? WHERE run_id = ? AND finished_at IS NULL',
      ),
    };
  }

  async findRun(runId: string): Promise<RunRecord | undefined> {
    const row = this.#statements.findRun.get(runId);
    return row && toRun(row);
  }

  async findUnfinishedRun(inputHash: string): Promise<RunRecord | undefined> {
    const row = this.#statements.unfinished.get(inputHash);
    return row && toRun(row);
  }

  async findLatestRun(inputHash: string): Promise<RunRecord | undefined> {
    const row = this.#statements.latest.get(inputHash);
    return row && toRun(row);
  }

  async createRun(
    run: Omit<RunRecord, 'createdAt' | 'finishedAt' | 'total'>,
    batches: AsyncIterable<readonly ImportRow[]>,
    onDuplicate: (duplicate: DuplicateUser) => void,
    options: { readonly soleUnfinished?: boolean } = {},
  ): Promise<RunRecord> {
    await this.#importDone();
    const importing = this.#import(run, batches, onDuplicate, options.soleUnfinished === true);
    this.#importing = importing;
    try {
      return await importing;
    } finally {
      this.#importing = undefined;
      // Outcomes recorded meanwhile were held back from the import's transaction.
      this.#commit();
    }
  }

  async #import(
    run: Omit<RunRecord, 'createdAt' | 'finishedAt' | 'total'>,
    batches: AsyncIterable<readonly ImportRow[]>,
    onDuplicate: (duplicate: DuplicateUser) => void,
    soleUnfinished: boolean,
  ): Promise<RunRecord> {
    const { insertRun, insertCharge, firstLine: firstLineOf, setTotal } = this.#statements;
    const createdAt = new Date().toISOString();
    // One transaction for the whole import: a failed or aborted import leaves no trace.
    try {
      this.#db.exec('BEGIN IMMEDIATE');
    } catch (error) {
      // Another process holds the write lock past busy_timeout: most likely importing a big file.
      if ((error as { code?: unknown }).code === 'SQLITE_BUSY') {
        throw new BulkbillError(
          ErrorCode.Usage,
          'the ledger is busy: another process is writing to it (importing a large input?); run again once it is done',
          { cause: error, retryable: true },
        );
      }
      throw error;
    }
    let committed = false;
    try {
      // Under the write lock: no other process can create a run between this check and ours.
      if (this.#statements.findRun.get(run.runId)) {
        throw new BulkbillError(ErrorCode.Usage, `run ${run.runId} already exists in this ledger`);
      }
      const other = soleUnfinished ? this.#statements.unfinished.get(run.inputHash) : undefined;
      if (other) {
        throw new BulkbillError(
          ErrorCode.Usage,
          `${run.inputPath} already has the unfinished run ${other.run_id} (another process just created it); run again to resume it`,
        );
      }
      insertRun.run(run.runId, run.inputHash, run.inputPath, run.endpoint, createdAt);
      let seq = 0;
      for await (const batch of batches) {
        for (const row of batch) {
          seq++;
          const metadata =
            Object.keys(row.metadata).length > 0 ? JSON.stringify(row.metadata) : null;
          const invalid = row.invalidReason !== undefined;
          const inserted = insertCharge.run(
            run.runId,
            seq,
            row.line,
            row.userId,
            row.amount,
            row.currency,
            metadata,
            invalid ? 'invalid' : 'pending',
            invalid ? row.invalidReason : null,
          );
          if (inserted.changes > 0 || invalid) continue;
          const firstLine = firstLineOf.get(run.runId, row.userId)?.line ?? 0;
          onDuplicate({ userId: row.userId, line: row.line, firstLine });
          insertCharge.run(
            run.runId,
            seq,
            row.line,
            row.userId,
            row.amount,
            row.currency,
            metadata,
            'invalid',
            `user_id: appears twice (first on line ${firstLine})`,
          );
        }
      }
      setTotal.run(seq, run.runId);
      this.#db.exec('COMMIT');
      committed = true;
      return { ...run, createdAt, finishedAt: undefined, total: seq };
    } finally {
      if (!committed && this.#db.inTransaction) this.#db.exec('ROLLBACK');
    }
  }

  async pendingCharges(runId: string, afterSeq: number, limit: number): Promise<PendingCharge[]> {
    return this.#statements.pending.all(runId, afterSeq, limit).map((row) => ({
      seq: row.seq,
      userId: row.user_id,
      amount: row.amount,
      currency: row.currency,
      attempts: row.attempts,
      ambiguous: row.ambiguous === 1,
    }));
  }

  record(runId: string, outcome: ChargeOutcome): void {
    this.#buffer.push([runId, outcome]);
    if (this.#buffer.length >= this.#batchSize) this.#commit();
    else this.#timer ??= setTimeout(() => this.#commitInBackground(), this.#flushIntervalMs);
  }

  async flush(): Promise<void> {
    await this.#importDone();
    this.#throwBackgroundError();
    this.#commit();
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
    const row = this.#statements.charge.get(runId, userId);
    return row && toCharge(row);
  }

  async *charges(runId: string): AsyncIterable<ChargeRecord> {
    let after = 0;
    for (;;) {
      const rows = this.#statements.page.all(runId, after, PAGE);
      for (const row of rows) yield toCharge(row);
      const last = rows.at(-1);
      if (!last || rows.length < PAGE) return;
      after = last.seq;
    }
  }

  async claimRun(runId: string): Promise<void> {
    const { owner, setOwner } = this.#statements;
    const me = { pid: process.pid, host: hostname() };
    // IMMEDIATE: two processes claiming at once are serialized by SQLite's write lock.
    this.#db
      .transaction(() => {
        const current = owner.get(runId);
        if (current && !(current.pid === me.pid && current.host === me.host)) {
          // A process of another host cannot be checked: its claim stands until released.
          const alive = current.host !== me.host || processIsAlive(current.pid);
          if (alive) {
            throw new BulkbillError(
              ErrorCode.Usage,
              `run ${runId} is being billed by process ${current.pid} on ${current.host} since ${current.since}; wait for it to end or stop it, then run again`,
            );
          }
        }
        setOwner.run(runId, me.pid, me.host, new Date().toISOString());
      })
      .immediate();
  }

  async releaseRun(runId: string): Promise<void> {
    this.#statements.dropOwner.run(runId, process.pid, hostname());
  }

  async finishIfComplete(runId: string): Promise<boolean> {
    await this.#importDone();
    this.#commit();
    if (!this.#statements.findRun.get(runId)) return false;
    if ((this.#statements.open.get(runId)?.n ?? 0) > 0) return false;
    this.#statements.finish.run(new Date().toISOString(), runId);
    return true;
  }

  async close(): Promise<void> {
    await this.#importDone();
    this.#commit();
    if (this.#db.open) this.#db.close();
  }

  /** Waits for the import in progress, if any, to commit or roll back. */
  async #importDone(): Promise<void> {
    while (this.#importing) await this.#importing.catch(() => {});
  }

  /** A timer's commit has no caller to throw to: keep the error for the next flush(). */
  #commitInBackground(): void {
    try {
      this.#commit();
    } catch (error) {
      this.#backgroundError ??= error;
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

  #commit(): void {
    if (this.#timer) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    // Written during an import, outcomes would join its transaction and vanish with its rollback;
    // the import commits them when it ends.
    if (this.#buffer.length === 0 || this.#importing) return;
    const batch = this.#buffer.splice(0);
    const { update } = this.#statements;
    try {
      this.#writeOutcomes(batch, update);
    } catch (error) {
      // Nothing of the batch was written (one transaction): keep it for the next attempt.
      this.#buffer.unshift(...batch);
      throw error;
    }
  }

  #writeOutcomes(batch: ReadonlyArray<[string, ChargeOutcome]>, update: Database.Statement): void {
    this.#db.transaction(() => {
      for (const [runId, outcome] of batch) {
        update.run(
          outcome.state,
          outcome.attempts,
          outcome.ambiguous ? 1 : 0,
          outcome.httpStatus ?? null,
          outcome.latencyMs === undefined ? null : Math.round(outcome.latencyMs),
          outcome.chargeId ?? null,
          outcome.error ?? null,
          runId,
          outcome.userId,
        );
      }
    })();
  }
}
