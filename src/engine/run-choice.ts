import { randomBytes } from 'node:crypto';
import { userIdFold } from '../domain/charge.js';
import { BulkbillError, ErrorCode } from '../domain/errors.js';
import {
  formatDuplicateProblem,
  formatProblem,
  type InputFormat,
  type ReadInputOptions,
  readInputBatches,
} from '../input/index.js';
import type { Ledger, RunRecord } from '../ledger/ledger.js';
import { extendRunWith, InputInvalidError, importRun, PROBLEMS_LISTED } from './import.js';

/** Which run a call bills and how it was found. */
export interface RunChoice {
  readonly run: RunRecord;
  /**
   * `created`: a new run; `resumed`: an unfinished one, or a finished one that this input added
   * users to; `finished`: nothing left to bill.
   */
  readonly how: 'created' | 'resumed' | 'finished';
  /** Users this input added to an existing run. */
  readonly added: number;
  /** Users the run holds that this input does not: left as they are. */
  readonly missing: number;
  /** Failed and unknown charges made pending again (`--retry-failed`). */
  readonly reopened: number;
}

/** A fresh run id: the date and time, then four random hex digits, e.g. `2026-11-30T1712-a3f9`. */
export function freshRunId(now = new Date()): string {
  const stamp = now.toISOString().slice(0, 16).replace(':', '');
  return `${stamp}-${randomBytes(2).toString('hex')}`;
}

/** The run ids an endpoint has no say in yet: a run enqueued without one is bound by its first worker. */
export const UNBOUND_ENDPOINT = '';

/** What the operator asked for, in the words both engines share. */
export interface RunRequest {
  readonly input: string;
  /** The cycle the operator named; undefined: the input's own run, found by its content. */
  readonly runId?: string | undefined;
  /** Create a new run although the input overlaps an unfinished one (`--new-cycle`). */
  readonly newCycle?: boolean | undefined;
  /** Make failed and unknown charges pending again (`--retry-failed`). */
  readonly retryFailed?: boolean | undefined;
  readonly skipInvalid: boolean;
  readonly format?: InputFormat | undefined;
  /** More rules for a valid row: the provider template's (see ReadInputOptions.check). */
  readonly check?: ReadInputOptions['check'];
}

/** A row of the input whose amount or currency differs from what the run holds for its user. */
export interface ChangedRow {
  readonly line: number;
  readonly userId: string;
  readonly amount: number;
  readonly currency: string;
  readonly heldAmount: number;
  readonly heldCurrency: string;
  readonly heldLine: number;
}

/** The input's rows differ from the run's: their keys exist at the provider with another body. */
export class InputConflictError extends BulkbillError {
  override readonly name = 'InputConflictError';
  readonly changed: readonly ChangedRow[];

  constructor(file: string, run: RunRecord, changed: readonly ChangedRow[], count: number) {
    const listed = changed.map(
      (row) =>
        `${file}:${row.line}: amount: ${row.amount} ${row.currency} here, but run ${run.runId} holds ${row.heldAmount} ${row.heldCurrency} for ${row.userId} (line ${row.heldLine})`,
    );
    const more = count > changed.length ? ` (the first ${changed.length} shown)` : '';
    super(
      ErrorCode.InputInvalid,
      `${file}: ${count} row${count === 1 ? '' : 's'} change${count === 1 ? 's' : ''} the amount or currency of a user run ${run.runId} already holds${more}; their idempotency keys may exist at the provider with the held amount, so nothing was charged:\n${listed.join('\n')}\nRestore the held amounts to continue run ${run.runId}, or bill the new amounts as a new cycle: a new --run-id${run.finishedAt === undefined ? ' with --new-cycle' : ''}`,
    );
    this.changed = changed;
  }
}

/** How an input compares with one run. */
interface Overlap {
  readonly run: RunRecord;
  shared: number;
  added: number;
  changedCount: number;
  readonly changed: ChangedRow[];
}

/** Reads the input and compares its valid rows with each candidate run, by content. */
async function compareInput(
  ledger: Ledger,
  request: RunRequest,
  candidates: readonly RunRecord[],
  /** Drop older finished candidates once a newer finished one shares a user. */
  newestFinishedOnly: boolean,
): Promise<Overlap[]> {
  const overlaps: Overlap[] = candidates.map((run) => ({
    run,
    shared: 0,
    added: 0,
    changedCount: 0,
    changed: [],
  }));
  if (candidates.length === 0) return [];
  let live = overlaps;
  const problems: Array<{ line: number; text: string }> = [];
  let problemCount = 0;
  const note = (line: number, text: string) => {
    problemCount++;
    if (problems.length < PROBLEMS_LISTED) problems.push({ line, text });
  };
  // The input is checked whole before a run is changed: on Redis rows are added as they are read.
  // This input's users by fold (userIdFold): their first line and id.
  const firstLines = new Map<string, { line: number; userId: string }>();
  const file = request.input;
  for await (const batch of readInputBatches(file, {
    format: request.format,
    check: request.check,
  })) {
    const valid = [];
    for (const row of batch) {
      if (row.charge !== undefined) {
        const { userId } = row.charge;
        const key = userIdFold(userId) || userId;
        const first = firstLines.get(key);
        if (first === undefined) {
          firstLines.set(key, { line: row.line, userId });
          valid.push({ line: row.line, ...row.charge });
        } else if (!request.skipInvalid) {
          const twin = first.userId === userId ? {} : { twin: first.userId };
          note(
            row.line,
            formatDuplicateProblem(file, { line: row.line, firstLine: first.line, ...twin }),
          );
        }
      } else if (!request.skipInvalid) {
        for (const problem of row.problems) {
          note(row.line, formatProblem(file, row.line, problem.field, problem.reason));
        }
      }
    }
    if (valid.length === 0 || live.length === 0) continue;
    const ids = valid.map((row) => row.userId);
    for (const overlap of live) {
      const held = await ledger.heldCharges(overlap.run.runId, ids);
      for (const row of valid) {
        const charge = held.get(row.userId);
        if (charge === undefined) {
          overlap.added++;
          continue;
        }
        overlap.shared++;
        if (charge.twin !== undefined) {
          // Another spelling of a user the run holds: one person, who would be billed twice.
          if (!request.skipInvalid) {
            const { twin } = charge;
            note(
              row.line,
              formatDuplicateProblem(file, {
                line: row.line,
                firstLine: charge.line,
                twin,
                held: true,
              }),
            );
          }
          continue;
        }
        if (charge.amount !== row.amount || charge.currency !== row.currency) {
          overlap.changedCount++;
          if (overlap.changed.length < PROBLEMS_LISTED) {
            overlap.changed.push({
              line: row.line,
              userId: row.userId,
              amount: row.amount,
              currency: row.currency,
              heldAmount: charge.amount,
              heldCurrency: charge.currency,
              heldLine: charge.line,
            });
          }
        }
      }
    }
    if (newestFinishedOnly) {
      // Candidates are the unfinished runs, then the finished ones newest first: once a finished
      // run shares a user, no older one can be the newest that does.
      const newest = live.findIndex((o) => o.run.finishedAt !== undefined && o.shared > 0);
      if (newest >= 0) {
        live = live.filter((o, index) => index <= newest || o.run.finishedAt === undefined);
      }
    }
  }
  if (problemCount > 0) {
    const listed = problems.sort((a, b) => a.line - b.line).map((problem) => problem.text);
    throw new InputInvalidError(file, listed, problemCount);
  }
  return overlaps.filter((overlap) => live.includes(overlap));
}

function describeRuns(runs: readonly RunRecord[]): string {
  return runs
    .map((run) => `${run.runId} (created ${run.createdAt} from ${run.inputPath})`)
    .join(', ');
}

/**
 * Decides which run an invocation bills, by the rules both engines share, and makes the ledger
 * ready for it (creates the run, or adds this input's new users to the run it continues):
 *
 * - A run is found by the input's content (user, amount, currency), never by its bytes: an input
 *   that shares users with a run continues that run; users it adds are added; a changed amount or
 *   currency is refused before anything is charged (InputConflictError); users it lacks are left.
 * - `--run-id` naming an existing run continues it (refused when the input shares no user with
 *   it: the wrong file). Naming a new id creates it, unless an unfinished run shares users with
 *   the input: that is refused without `--new-cycle`.
 * - Without `--run-id`: the run with the very same bytes, else the one unfinished run sharing
 *   users (several: refused, name one), else the newest finished run sharing users, else a new run
 *   with a fresh id. `--new-cycle` always creates a new run.
 *
 * `claim` is called before an existing run is changed (the local engine claims it there);
 * `checkRun` before anything is written for an existing run (endpoint, credentials).
 */
export async function settleRun(
  ledger: Ledger,
  request: RunRequest,
  inputHash: string,
  endpoint: string,
  hooks: {
    readonly checkRun?: (run: RunRecord) => void | Promise<void>;
    readonly claim?: (run: RunRecord) => Promise<void>;
  } = {},
): Promise<RunChoice & { readonly importMs: number }> {
  const started = performance.now();
  const runs = await ledger.listRuns();
  const options = {
    skipInvalid: request.skipInvalid,
    format: request.format,
    check: request.check,
  };
  const create = async (runId: string) => {
    const run = await importRun(
      ledger,
      { runId, inputHash, inputPath: request.input, endpoint },
      { ...options, knownRuns: runs.map((known) => known.runId) },
    );
    return {
      run,
      how: 'created' as const,
      added: run.total,
      missing: 0,
      reopened: 0,
      importMs: performance.now() - started,
    };
  };
  const named =
    request.runId === undefined ? undefined : runs.find((r) => r.runId === request.runId);
  const unfinished = runs.filter((run) => run.finishedAt === undefined);

  let target: RunRecord | undefined;
  let overlap: Overlap | undefined;
  if (named) {
    target = named;
    if (named.inputHash !== inputHash) {
      [overlap] = await compareInput(ledger, request, [named], false);
      if (overlap && overlap.shared === 0 && named.total > 0) {
        throw new BulkbillError(
          ErrorCode.Usage,
          `run ${named.runId} holds none of the users of ${request.input} (it was created from ${named.inputPath}); pass its input, or a new --run-id for a new cycle`,
        );
      }
    }
  } else if (request.newCycle) {
    return create(request.runId ?? freshRunId());
  } else if (request.runId !== undefined) {
    const overlapping = (await compareInput(ledger, request, unfinished, false)).filter(
      (o) => o.shared > 0,
    );
    if (overlapping.length > 0) {
      const shared = overlapping.map((o) => `${o.shared} with ${o.run.runId}`).join(', ');
      throw new BulkbillError(
        ErrorCode.Usage,
        `${request.input} shares users with the unfinished run ${describeRuns(overlapping.map((o) => o.run))} (${shared}); a new run ${request.runId} would bill them again with other idempotency keys. Continue it with --run-id ${overlapping[0]?.run.runId} (or no --run-id), or add --new-cycle to bill them in a new cycle anyway`,
      );
    }
    return create(request.runId);
  } else {
    target = runs.find((run) => run.inputHash === inputHash);
    if (target === undefined) {
      const candidates = [...unfinished, ...runs.filter((run) => run.finishedAt !== undefined)];
      const overlapping = (await compareInput(ledger, request, candidates, true)).filter(
        (o) => o.shared > 0,
      );
      const open = overlapping.filter((o) => o.run.finishedAt === undefined);
      if (open.length > 1) {
        throw new BulkbillError(
          ErrorCode.Usage,
          `${request.input} shares users with ${open.length} unfinished runs: ${describeRuns(open.map((o) => o.run))}; name the one to continue with --run-id`,
        );
      }
      overlap = open[0] ?? overlapping.find((o) => o.run.finishedAt !== undefined);
      if (overlap === undefined) return create(freshRunId());
      target = overlap.run;
    }
  }

  await hooks.checkRun?.(target);
  if (overlap && overlap.changedCount > 0) {
    throw new InputConflictError(request.input, target, overlap.changed, overlap.changedCount);
  }
  await hooks.claim?.(target);
  let run = target;
  let added = 0;
  if (target.inputHash !== inputHash) {
    run = await extendRunWith(
      ledger,
      target.runId,
      { inputHash, inputPath: request.input },
      options,
    );
    added = overlap?.added ?? 0;
  }
  const counts = await ledger.counts(run.runId);
  const valid = run.total - counts.invalid;
  const missing = overlap === undefined ? 0 : Math.max(0, valid - overlap.shared - added);
  let reopened = 0;
  if (request.retryFailed) {
    reopened = await ledger.reopenEnded(run.runId);
    if (reopened > 0) run = (await ledger.findRun(run.runId)) ?? run;
  }
  return {
    run,
    how: run.finishedAt === undefined ? 'resumed' : 'finished',
    added,
    missing,
    reopened,
    importMs: performance.now() - started,
  };
}

export function endpointMismatch(run: RunRecord, endpoint: string): BulkbillError {
  return new BulkbillError(
    ErrorCode.Usage,
    `run ${run.runId} bills ${run.endpoint}; resuming it against ${endpoint} is refused (its idempotency keys live at the first provider). Pass a new --run-id to bill elsewhere`,
  );
}
