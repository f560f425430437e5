import { BulkbillError, ErrorCode } from '../domain/errors.js';
import {
  formatDuplicateProblem,
  formatProblem,
  type InputFormat,
  type InputRow,
  type ReadInputOptions,
  readInputBatches,
} from '../input/index.js';
import type { DuplicateUser, ImportRow, Ledger, RunRecord } from '../ledger/ledger.js';

/** Problems listed in the error of an input that does not validate. */
export const PROBLEMS_LISTED = 20;

/** An input that does not validate: nothing was imported, nothing charged. */
export class InputInvalidError extends BulkbillError {
  override readonly name = 'InputInvalidError';
  /** The first problems, formatted `file:line: field: reason`, in line order. */
  readonly problems: readonly string[];
  /** Invalid rows in all. */
  readonly problemCount: number;

  constructor(file: string, problems: readonly string[], problemCount: number) {
    const more = problemCount > problems.length ? ` (the first ${problems.length} shown)` : '';
    super(
      ErrorCode.InputInvalid,
      `${file}: ${problemCount} invalid row${problemCount === 1 ? '' : 's'}${more}; nothing was charged (--skip-invalid bills the valid rows and records these as invalid):\n${problems.join('\n')}`,
    );
    this.problems = problems;
    this.problemCount = problemCount;
  }
}

interface Collected {
  line: number;
  text: string;
}

/** How an input is read and what is done with invalid rows. */
export interface ImportOptions {
  readonly skipInvalid: boolean;
  readonly format?: InputFormat | undefined;
  /** More rules for a valid row: the provider template's (see ReadInputOptions.check). */
  readonly check?: ReadInputOptions['check'];
}

/**
 * The input's rows for the ledger, validated, with a collector of their problems: without
 * `skipInvalid`, the batches throw InputInvalidError (after the last one) when any row, or any
 * duplicate the ledger reported, is a problem, so the ledger rolls the import back.
 */
function validatedRows(file: string, options: ImportOptions) {
  const problems: Collected[] = [];
  let problemCount = 0;
  const note = (line: number, text: string) => {
    problemCount++;
    if (problems.length < PROBLEMS_LISTED) problems.push({ line, text });
  };
  async function* batches(): AsyncGenerator<readonly ImportRow[]> {
    for await (const batch of readInputBatches(file, {
      format: options.format,
      check: options.check,
    })) {
      yield batch.map((row) => toImportRow(file, row, options.skipInvalid, note));
    }
    if (problemCount > 0 && !options.skipInvalid) {
      const listed = problems.sort((a, b) => a.line - b.line).map((problem) => problem.text);
      throw new InputInvalidError(file, listed, problemCount);
    }
  }
  const onDuplicate = (duplicate: DuplicateUser) => {
    note(duplicate.line, formatDuplicateProblem(file, duplicate));
  };
  return { batches: batches(), onDuplicate };
}

/**
 * Validates the input and imports it as a new run in one ledger transaction. Without
 * `skipInvalid`, any invalid row (or user id met twice) rolls the import back and throws
 * InputInvalidError listing the first problems; with it, such rows are recorded `invalid`.
 * `knownRuns`: refuse when a run not among these was created since they were listed.
 */
export async function importRun(
  ledger: Ledger,
  run: Omit<RunRecord, 'createdAt' | 'finishedAt' | 'total'>,
  options: ImportOptions & { readonly knownRuns?: readonly string[] | undefined },
): Promise<RunRecord> {
  const { batches, onDuplicate } = validatedRows(run.inputPath, options);
  return ledger.createRun(
    run,
    batches,
    onDuplicate,
    options.knownRuns === undefined ? {} : { knownRuns: options.knownRuns },
  );
}

/**
 * Continues a run with a later input of it: validated as importRun does, the users the run does
 * not hold are added (pending), and the run's invalid rows become this input's.
 */
export async function extendRunWith(
  ledger: Ledger,
  runId: string,
  input: { readonly inputHash: string; readonly inputPath: string },
  options: ImportOptions,
): Promise<RunRecord> {
  const { batches, onDuplicate } = validatedRows(input.inputPath, options);
  return ledger.extendRun(runId, input, batches, onDuplicate);
}

function toImportRow(
  file: string,
  row: InputRow,
  skipInvalid: boolean,
  note: (line: number, text: string) => void,
): ImportRow {
  if (row.charge !== undefined) {
    const { userId, amount, currency, metadata } = row.charge;
    return { line: row.line, userId, amount, currency, metadata };
  }
  for (const problem of row.problems) {
    note(row.line, formatProblem(file, row.line, problem.field, problem.reason));
  }
  const reason = row.problems.map((problem) => `${problem.field}: ${problem.reason}`).join('; ');
  // Without --skip-invalid the import is rolled back anyway; with it the row is kept, as it came.
  return {
    line: row.line,
    userId: skipInvalid ? (row.rawUserId ?? '') : '',
    amount: 0,
    currency: '',
    metadata: {},
    invalidReason: reason,
  };
}
