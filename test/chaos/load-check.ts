/**
 * The load test's checks: test/chaos/check.ts's, over a report of up to a million rows. That one
 * reads the whole report into objects at once (about a gigabyte at 1,000,000 rows, in the process
 * that also holds the mock provider's million keys); this one streams it row by row and keeps one
 * byte per user. The users are bench/lib/users-file.ts's (`user-0000001`…), so a user's number
 * is its index; every one of them must end `charged`, with the one charge the provider holds.
 */
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { parse } from 'csv-parse';
import type { MockProvider } from '../../src/mock-provider/index.js';

const TERMINAL = new Set(['charged', 'declined', 'failed', 'unknown', 'invalid']);
/** Examples kept per kind of violation; the rest are counted. */
const EXAMPLES = 5;

/** Undoes the report's CSV-injection guard: `'=x` in a cell is the text `=x` (as check.ts). */
function unescapeCell(cell: string): string {
  return /^'[=+\-@\t\r]/.test(cell) ? cell.slice(1) : cell;
}

interface ReportRow {
  readonly user_id: string;
  readonly status: string;
  readonly attempts: string;
  readonly charge_id: string;
}

/** The ledger's own figures for the run (`status --json`, or the run's `--json` summary). */
export interface LedgerFigures {
  readonly counts: Readonly<Record<string, number>>;
  readonly chargedAmounts: Readonly<Record<string, number>>;
}

export interface LoadExpectation {
  /** Users in the input: `user-…1` to `user-…<users>`. */
  readonly users: number;
  /** The most counted attempts a charge may have had. */
  readonly maxAttempts: number;
  /** Sum of every user's amount, in USD minor units. */
  readonly usdTotal: number;
  /** The ledger's counts and amounts, read after the run; undefined when it could not be read. */
  readonly ledger: LedgerFigures | undefined;
}

export interface LoadCheck {
  /** Each check, passed or not, in words. */
  readonly checks: readonly {
    readonly name: string;
    readonly ok: boolean;
    readonly detail: string;
  }[];
  readonly violations: readonly string[];
  readonly rows: number;
  readonly charged: number;
  /** Charged rows whose answer broke off before the charge id (the charge itself is right). */
  readonly chargedWithoutId: number;
  readonly states: Record<string, number>;
  readonly ms: number;
}

class Findings {
  readonly #kinds = new Map<string, { count: number; examples: string[] }>();

  add(kind: string, example: string): void {
    const entry = this.#kinds.get(kind) ?? { count: 0, examples: [] };
    entry.count++;
    if (entry.examples.length < EXAMPLES) entry.examples.push(example);
    this.#kinds.set(kind, entry);
  }

  count(kind: string): number {
    return this.#kinds.get(kind)?.count ?? 0;
  }

  describe(kind: string): string {
    const entry = this.#kinds.get(kind);
    if (entry === undefined) return '';
    const more = entry.count > entry.examples.length ? `, … (${entry.count} in all)` : '';
    return `${entry.count}: ${entry.examples.join('; ')}${more}`;
  }
}

/**
 * Every input row in the report once, terminal and `charged`, within the attempt budget; the
 * provider holding exactly that charge for each (by id), no duplicate, no keyless request, no
 * key reused with another body, as many charges in all as the report has charged (so none for
 * anyone else); the ledger counting every user charged and the input's amount billed.
 */
export async function checkLoad(
  reportPath: string,
  provider: MockProvider,
  expected: LoadExpectation,
): Promise<LoadCheck> {
  const started = performance.now();
  const { users } = expected;
  const width = Math.max(7, String(users).length);
  const findings = new Findings();
  /** 0 unseen, 1 seen once. */
  const seen = new Uint8Array(users + 1);
  const states: Record<string, number> = {};
  let rows = 0;
  let charged = 0;
  let chargedWithoutId = 0;
  let unknownHeld = 0;
  let readError: string | undefined;

  try {
    const parser = parse({ columns: true, skip_empty_lines: true, bom: true });
    // pipe() forwards no error: a report that cannot be read ends the parse with its error.
    createReadStream(reportPath)
      .on('error', (error) => parser.destroy(error))
      .pipe(parser);
    for await (const record of parser) {
      const row = record as ReportRow;
      rows++;
      const userId = unescapeCell(row.user_id);
      states[row.status] = (states[row.status] ?? 0) + 1;
      const match = /^user-(\d+)$/.exec(userId);
      const index = match ? Number(match[1]) : Number.NaN;
      const ours =
        match !== null && (match[1] as string).length === width && index >= 1 && index <= users;
      if (!ours) findings.add('in the report, not in the input', userId);
      else if (seen[index] === 1) findings.add('twice in the report', userId);
      else seen[index] = 1;
      if (!TERMINAL.has(row.status)) findings.add('not terminal', `${userId} ${row.status}`);
      if (row.status !== 'charged') findings.add('not charged', `${userId} ${row.status}`);
      if (!(Number(row.attempts) <= expected.maxAttempts)) {
        findings.add(
          `over the attempt budget of ${expected.maxAttempts}`,
          `${userId} ${row.attempts}`,
        );
      }
      const ids = provider.chargesOf(userId);
      if (row.status === 'charged') {
        charged++;
        if (row.charge_id === '') chargedWithoutId++;
        if (ids.length !== 1 || (row.charge_id !== '' && ids[0] !== row.charge_id)) {
          findings.add(
            'charged in the report, another charge at the provider',
            `${userId}: report ${row.charge_id || '(no id)'}, provider [${ids.join(', ')}]`,
          );
        }
      } else if (row.status === 'unknown') {
        if (ids.length === 1) unknownHeld++;
        if (ids.length > 1)
          findings.add('unknown, more than one charge', `${userId}: [${ids.join(', ')}]`);
      } else if (ids.length > 0) {
        findings.add(
          'not charged in the report, charged at the provider',
          `${userId} ${row.status}: [${ids.join(', ')}]`,
        );
      }
    }
  } catch (error) {
    readError = (error as Error).message;
  }
  let missing = 0;
  for (let index = 1; index <= users; index++) {
    if (seen[index] !== 1) {
      missing++;
      if (missing <= EXAMPLES)
        findings.add('missing from the report', `user-${String(index).padStart(width, '0')}`);
    }
  }

  const stats = provider.stats();
  const checks: { name: string; ok: boolean; detail: string }[] = [];
  const check = (name: string, ok: boolean, detail: string) => checks.push({ name, ok, detail });
  check('report readable', readError === undefined, readError ?? reportPath);
  check(
    'report has every input row, once',
    rows === users &&
      missing === 0 &&
      findings.count('twice in the report') === 0 &&
      findings.count('in the report, not in the input') === 0,
    [
      `${rows.toLocaleString('en-US')} rows for ${users.toLocaleString('en-US')} users`,
      missing > 0 ? `missing ${missing}: ${findings.describe('missing from the report')}` : '',
      findings.count('twice in the report') > 0
        ? `twice ${findings.describe('twice in the report')}`
        : '',
      findings.count('in the report, not in the input') > 0
        ? `not in the input ${findings.describe('in the report, not in the input')}`
        : '',
    ]
      .filter((part) => part !== '')
      .join('; '),
  );
  check(
    'every row terminal and charged',
    findings.count('not terminal') === 0 && findings.count('not charged') === 0,
    findings.count('not charged') === 0
      ? JSON.stringify(states)
      : `${JSON.stringify(states)}; ${findings.describe('not charged')}`,
  );
  const overBudget = `over the attempt budget of ${expected.maxAttempts}`;
  check(
    `attempts within --max-attempts ${expected.maxAttempts}`,
    findings.count(overBudget) === 0,
    findings.describe(overBudget) || 'every row',
  );
  check(
    'provider: no duplicate charge, no keyless request, no key reused with another body',
    stats.duplicate_charges === 0 && stats.keyless === 0 && stats.mismatches === 0,
    `duplicate_charges ${stats.duplicate_charges}, keyless ${stats.keyless}, mismatches ${stats.mismatches}`,
  );
  const byId = [
    'charged in the report, another charge at the provider',
    'unknown, more than one charge',
    'not charged in the report, charged at the provider',
  ];
  check(
    "provider's charge = the report's, by id, for every user",
    byId.every((kind) => findings.count(kind) === 0),
    byId.map((kind) => findings.describe(kind)).find((text) => text !== '') ??
      `${charged.toLocaleString('en-US')} charged rows, ${chargedWithoutId} without an id (answer cut off before it)`,
  );
  check(
    "provider's charges = charged (+ unknown it holds)",
    stats.charges === charged + unknownHeld && stats.users_charged === charged + unknownHeld,
    `provider charges ${stats.charges.toLocaleString('en-US')}, users charged ${stats.users_charged.toLocaleString('en-US')}; report charged ${charged.toLocaleString('en-US')}, unknown held ${unknownHeld}`,
  );
  const { ledger } = expected;
  check(
    "ledger: every user charged, the input's amount billed",
    ledger !== undefined &&
      ledger.counts.charged === users &&
      ledger.counts.pending === 0 &&
      ledger.counts.charged === stats.charges &&
      ledger.chargedAmounts.USD === expected.usdTotal,
    ledger === undefined
      ? 'no ledger figures'
      : `counts ${JSON.stringify(ledger.counts)}; USD ${ledger.chargedAmounts.USD ?? 0} minor units, input ${expected.usdTotal}`,
  );
  return {
    checks,
    violations: checks
      .filter((entry) => !entry.ok)
      .map((entry) => `${entry.name}: ${entry.detail}`),
    rows,
    charged,
    chargedWithoutId,
    states,
    ms: performance.now() - started,
  };
}

/**
 * The sum of the `amount` column of a bench/lib/users-file.ts input (no quoted cells), in minor
 * units: what the ledger must show billed in the end.
 */
export async function inputUsdTotal(path: string): Promise<number> {
  const lines = createInterface({
    input: createReadStream(path),
    crlfDelay: Number.POSITIVE_INFINITY,
  });
  let total = 0;
  let header = true;
  for await (const line of lines) {
    if (header) {
      header = false;
      continue;
    }
    if (line !== '') total += Number(line.split(',', 2)[1]);
  }
  return total;
}
