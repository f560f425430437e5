import { readFile } from 'node:fs/promises';
import { parse } from 'csv-parse/sync';
import type { MockProvider } from '../../src/mock-provider/index.js';

/** A report row, as much of it as the checks read. */
interface ReportRow {
  readonly user_id: string;
  readonly status: string;
  readonly attempts: string;
  readonly charge_id: string;
}

const TERMINAL = new Set(['charged', 'declined', 'failed', 'unknown', 'invalid']);

/** Undoes the report's CSV-injection guard: `'=x` in a cell is the text `=x`. */
function unescapeCell(cell: string): string {
  return /^'[=+\-@\t\r]/.test(cell) ? cell.slice(1) : cell;
}

export interface Expectation {
  /** Every user the run must account for: each row ever in its input, once. */
  readonly userIds: readonly string[];
  /** Users whose row is still invalid in the latest input: `invalid`, never charged. */
  readonly invalid: ReadonlySet<string>;
  /** The most counted attempts a charge may have had. */
  readonly maxAttempts: number;
}

/**
 * What a finished round must show, as the issue states it: every input row in exactly one
 * terminal state; no duplicate charge at the provider; the provider's charges equal `charged`
 * for every user, by id; no `failed` (or declined, or invalid) user the provider charged; at
 * most one charge for an `unknown` one; the report's rows equal the input's; attempts within
 * the budget; every request with its key, and never a key reused with another body. Returns
 * the violations found, in words.
 */
export async function checkRound(
  reportPath: string,
  provider: MockProvider,
  expected: Expectation,
): Promise<{ violations: string[]; charged: number; states: Record<string, number> }> {
  const violations: string[] = [];
  let text: string;
  try {
    text = await readFile(reportPath, 'utf8');
  } catch (error) {
    return { violations: [`no report: ${(error as Error).message}`], charged: 0, states: {} };
  }
  const rows = parse(text, {
    columns: true,
    skip_empty_lines: true,
    bom: true,
  }) as ReportRow[];
  const byUser = new Map<string, ReportRow>();
  const states: Record<string, number> = {};
  for (const row of rows) {
    const userId = unescapeCell(row.user_id);
    if (byUser.has(userId)) violations.push(`${userId}: twice in the report`);
    byUser.set(userId, row);
    states[row.status] = (states[row.status] ?? 0) + 1;
    if (!TERMINAL.has(row.status)) violations.push(`${userId}: not terminal (${row.status})`);
    if (Number(row.attempts) > expected.maxAttempts) {
      violations.push(
        `${userId}: ${row.attempts} attempts, over the budget of ${expected.maxAttempts}`,
      );
    }
  }
  const wanted = new Set(expected.userIds);
  for (const userId of wanted)
    if (!byUser.has(userId)) violations.push(`${userId}: missing from the report`);
  for (const userId of byUser.keys())
    if (!wanted.has(userId)) violations.push(`${userId}: in the report, not in the input`);

  const stats = provider.stats();
  if (stats.duplicate_charges !== 0)
    violations.push(`provider: ${stats.duplicate_charges} duplicate charges`);
  if (stats.keyless !== 0) violations.push(`provider: ${stats.keyless} requests without a key`);
  if (stats.mismatches !== 0)
    violations.push(`provider: ${stats.mismatches} keys reused with another body`);
  let charged = 0;
  for (const [userId, row] of byUser) {
    const ids = provider.chargesOf(userId);
    if (row.status === 'charged') {
      charged++;
      // No id in the report: the answer broke off before it (the charge itself is right).
      if (ids.length !== 1 || (row.charge_id !== '' && ids[0] !== row.charge_id)) {
        violations.push(
          `${userId}: charged ${row.charge_id || '(no id)'} in the report, provider holds [${ids.join(', ')}]`,
        );
      }
    } else if (row.status === 'unknown') {
      if (ids.length > 1)
        violations.push(`${userId}: unknown, provider holds ${ids.length} charges`);
    } else if (ids.length > 0) {
      violations.push(
        `${userId}: ${row.status} in the report, provider charged [${ids.join(', ')}]`,
      );
    }
    if (expected.invalid.has(userId) && row.status !== 'invalid') {
      violations.push(`${userId}: its row is invalid, the report says ${row.status}`);
    }
  }
  const chargedAtProvider = stats.charges;
  const unknownCharged = [...byUser].filter(
    ([userId, row]) => row.status === 'unknown' && provider.chargesOf(userId).length === 1,
  ).length;
  if (chargedAtProvider !== charged + unknownCharged) {
    violations.push(
      `provider: ${chargedAtProvider} charges, the report ${charged} charged and ${unknownCharged} unknown it holds`,
    );
  }
  return { violations, charged, states };
}
