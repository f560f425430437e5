import { duplicateReason } from '../domain/charge.js';
import type { InputRow } from './row.js';

/**
 * The one shape of every input problem: `file:line: field: reason`, as compilers print it, so
 * editors and terminals can jump to the line. Example:
 * `users.csv:17: amount: must be an integer in minor units (cents), got "19.99"`.
 */
export function formatProblem(file: string, line: number, field: string, reason: string): string {
  return `${file}:${line}: ${field}: ${reason}`;
}

/**
 * A user id found twice. The reader does not look for duplicates (memory would grow with the
 * file); the ledger's import does, and reports them with this so every message looks alike:
 * `users.csv:40: user_id: appears twice (first on line 17)`.
 */
export function formatDuplicateProblem(
  file: string,
  duplicate: {
    readonly line: number;
    readonly firstLine: number;
    readonly twin?: string;
    readonly held?: boolean;
  },
): string {
  const { line, firstLine, twin, held } = duplicate;
  return formatProblem(file, line, 'user_id', duplicateReason(firstLine, twin, held));
}

/** Every problem of a row, formatted; empty for a row that holds a charge. */
export function formatRowProblems(file: string, row: InputRow): string[] {
  if (row.problems === undefined) return [];
  return row.problems.map((problem) =>
    formatProblem(file, row.line, problem.field, problem.reason),
  );
}
