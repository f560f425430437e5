import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'csv-parse/sync';
import type { Agent } from 'undici';
import { afterAll, afterEach, beforeAll, beforeEach, expect } from 'vitest';
import type { StateCounts } from '../../src/ledger/ledger.js';
import {
  type MockProvider,
  type MockProviderOptions,
  type MockProviderStats,
  startMockProvider,
} from '../../src/mock-provider/index.js';
import { type CliProcess, runCli, waitForOutput } from './cli.js';
import { getJson, testAgent } from './http.js';

/** One row of `bulkbill run --report`, as csv-parse reads it (every cell a string). */
export interface ReportRow {
  readonly user_id: string;
  readonly status: string;
  readonly attempts: string;
  readonly http_status: string;
  readonly latency_ms: string;
  readonly charge_id: string;
  readonly error: string;
  readonly line: string;
  readonly amount: string;
  readonly currency: string;
  readonly ambiguous: string;
  readonly metadata: string;
}

/** The columns the issue makes a contract, in order. */
export const REPORT_CONTRACT_COLUMNS = [
  'user_id',
  'status',
  'attempts',
  'http_status',
  'latency_ms',
  'charge_id',
  'error',
];

export const TERMINAL_STATES: readonly (keyof StateCounts)[] = [
  'charged',
  'declined',
  'failed',
  'unknown',
  'invalid',
];

/** Input rows for a CSV billing file. */
export interface InputRow {
  readonly userId: string;
  readonly amount: number | string;
  readonly currency: string;
  /** The extra `note` column (metadata). */
  readonly note?: string;
}

function csvCell(value: string): string {
  return /[",\r\n]/.test(value) ? `"${value.replaceAll('"', '""')}"` : value;
}

/** Writes `user_id,amount,currency,note` with RFC 4180 quoting; returns the path. */
export async function writeCsvInput(path: string, rows: readonly InputRow[]): Promise<string> {
  const lines = ['user_id,amount,currency,note'];
  for (const row of rows) {
    lines.push(
      [row.userId, String(row.amount), row.currency, row.note ?? ''].map(csvCell).join(','),
    );
  }
  await writeFile(path, `${lines.join('\r\n')}\r\n`);
  return path;
}

/** `count` plain users `<prefix>-<n>` at 100..(100+count) cents in USD. */
export function plainUsers(count: number, prefix = 'user'): InputRow[] {
  return Array.from({ length: count }, (_, index) => ({
    userId: `${prefix}-${index}`,
    amount: 100 + index,
    currency: 'USD',
    note: `n${index}`,
  }));
}

/**
 * A cycle exported with two typos among `good` — `fix-amount` in dollars (`19.99`) before index
 * `at[0]`, `fix-currency` in lowercase (`usd`) before index `at[1]` — and the same file fixed.
 */
export function cycleWithTypos(
  good: readonly InputRow[],
  at: readonly [number, number],
): { readonly broken: InputRow[]; readonly fixed: InputRow[] } {
  const broken: InputRow[] = [
    ...good.slice(0, at[0]),
    { userId: 'fix-amount', amount: '19.99', currency: 'USD', note: 'typo' },
    ...good.slice(at[0], at[1]),
    { userId: 'fix-currency', amount: 2_000, currency: 'usd', note: 'typo' },
    ...good.slice(at[1]),
  ];
  const fixed = broken.map((row) =>
    row.userId === 'fix-amount'
      ? { ...row, amount: 1_999 }
      : row.userId === 'fix-currency'
        ? { ...row, currency: 'USD' }
        : row,
  );
  return { broken, fixed };
}

/** Parses a report, checking its header starts with the contract's columns. */
export async function readReport(path: string): Promise<ReportRow[]> {
  const text = await readFile(path, 'utf8');
  const [header] = parse(text, { to_line: 1 }) as string[][];
  expect(header?.slice(0, REPORT_CONTRACT_COLUMNS.length)).toEqual(REPORT_CONTRACT_COLUMNS);
  return parse(text, { columns: true, skip_empty_lines: true }) as ReportRow[];
}

/** Undoes the CSV-injection guard: `'=x` in the report is the user id `=x`. */
export function unescapeCell(cell: string): string {
  return /^'[=+\-@\t\r]/.test(cell) ? cell.slice(1) : cell;
}

/** Waits until `pattern` shows in the process's stderr; fails if it exits first. */
export function waitForStderr(
  cli: CliProcess,
  pattern: RegExp,
  timeoutMs = 20_000,
): Promise<RegExpExecArray> {
  return waitForOutput(cli, pattern, timeoutMs, 'stderr');
}

/** Waits for a `run` to announce the new run it created (after the import), and returns its id. */
export async function waitForNewRun(cli: CliProcess): Promise<string> {
  const [, runId] = await waitForStderr(cli, /bulkbill: new run (\S+)/);
  if (runId === undefined) throw new Error('no run id');
  return runId;
}

/** The run id a `run` announced on stderr (`new run X` or `resuming unfinished run X`). */
export function announcedRunId(stderr: string): string {
  const match = /bulkbill: (?:new run|resuming unfinished run|run) (\S+)/.exec(stderr);
  if (!match?.[1]) throw new Error(`no run announced in: ${stderr}`);
  return match[1];
}

export interface StatusJson {
  readonly runId: string;
  readonly total: number;
  readonly finishedAt?: string;
  readonly counts: StateCounts;
  readonly chargedAmounts: Record<string, number>;
}

/** `bulkbill status --run-id <id> --ledger <ledger> --json`, parsed. */
export async function statusJson(ledger: string, runId: string): Promise<StatusJson> {
  const result = await runCli(['status', '--run-id', runId, '--ledger', ledger, '--json']);
  expect(result.code, result.stderr).toBe(0);
  return JSON.parse(result.stdout) as StatusJson;
}

/** The mock provider's `GET /stats`. */
export async function providerStats(agent: Agent, url: string): Promise<MockProviderStats> {
  return getJson<MockProviderStats>(agent, `${url}/stats`);
}

/** `GET /charges/:user_id` for every user, a few at a time. */
export async function providerCharges(
  agent: Agent,
  url: string,
  userIds: readonly string[],
): Promise<Map<string, string[]>> {
  const found = new Map<string, string[]>();
  const queue = [...userIds];
  const worker = async () => {
    for (let userId = queue.pop(); userId !== undefined; userId = queue.pop()) {
      const answer = await getJson<{ user_id: string; charges: number; ids: string[] }>(
        agent,
        `${url}/charges/${encodeURIComponent(userId)}`,
      );
      expect(answer.user_id).toBe(userId);
      expect(answer.ids).toHaveLength(answer.charges);
      found.set(userId, answer.ids);
    }
  };
  await Promise.all(Array.from({ length: 32 }, worker));
  return found;
}

/**
 * The end-to-end invariants: every input user is in the report exactly once in a terminal
 * state; the provider charged nobody twice, charged exactly the `charged` rows, and agrees with
 * the report on every user. Returns the report's rows by (unescaped) user id.
 */
export async function expectReportAgreesWithProvider(options: {
  readonly agent: Agent;
  readonly providerUrl: string;
  readonly reportPath: string;
  readonly userIds: readonly string[];
}): Promise<Map<string, ReportRow>> {
  const rows = await readReport(options.reportPath);
  const byUser = new Map<string, ReportRow>();
  for (const row of rows) {
    const userId = unescapeCell(row.user_id);
    expect(byUser.has(userId), `${userId} twice in the report`).toBe(false);
    byUser.set(userId, row);
    expect(TERMINAL_STATES as readonly string[], `${userId}: ${row.status}`).toContain(row.status);
  }
  expect([...byUser.keys()].sort()).toEqual([...options.userIds].sort());

  const stats = await providerStats(options.agent, options.providerUrl);
  const charged = rows.filter((row) => row.status === 'charged').length;
  expect(stats.duplicate_charges).toBe(0);
  expect(stats.charges).toBe(charged);

  const atProvider = await providerCharges(options.agent, options.providerUrl, options.userIds);
  const disagreements: string[] = [];
  for (const [userId, row] of byUser) {
    const ids = atProvider.get(userId) ?? [];
    const agrees =
      row.status === 'charged'
        ? ids.length === 1 && row.charge_id === ids[0]
        : row.status === 'unknown'
          ? ids.length <= 1
          : ids.length === 0;
    if (!agrees)
      disagreements.push(`${userId}: report ${row.status} ${row.charge_id}, provider ${ids}`);
  }
  expect(disagreements).toEqual([]);
  return byUser;
}

/** The exit status the issue prescribes for a finished run with these rows. */
export function expectedExitStatus(rows: Iterable<ReportRow>): number {
  for (const row of rows) if (row.status === 'failed' || row.status === 'unknown') return 1;
  return 0;
}

/** Every file of the ledger (the database, its WAL and shared-memory files), concatenated. */
export async function ledgerBytes(dir: string, ledgerName: string): Promise<Buffer> {
  const names = (await readdir(dir)).filter((name) => name.startsWith(ledgerName));
  const parts = await Promise.all(names.map((name) => readFile(join(dir, name))));
  return Buffer.concat(parts);
}

/** The sum of a run's counts per state: every input row is in exactly one. */
export function runStateSum(status: StatusJson): number {
  return Object.values(status.counts).reduce((total, count) => total + count, 0);
}

/** A test file's workspace: an undici agent, a fresh temp dir per test, its mock providers. */
export interface CliWorkspace {
  readonly agent: Agent;
  /** This test's temp dir, removed after it. */
  readonly dir: string;
  /** `<dir>/l.db`, for `--ledger`. */
  readonly ledger: string;
  /** `<dir>/r.csv`, for `--report`. */
  readonly report: string;
  /** Starts a mock provider on port 0 (closed after the test), `defaults` under `options`. */
  provider(options?: MockProviderOptions): Promise<MockProvider>;
}

/** Registers the hooks of a CLI test file and gives it its workspace. */
export function useCliWorkspace(prefix: string, defaults: MockProviderOptions = {}): CliWorkspace {
  let agent: Agent | undefined;
  let dir = '';
  const providers: MockProvider[] = [];
  beforeAll(() => {
    agent = testAgent(64);
  });
  afterAll(async () => {
    await agent?.close();
  });
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), prefix));
  });
  afterEach(async () => {
    await Promise.all(providers.splice(0).map((provider) => provider.close({ graceMs: 0 })));
    await rm(dir, { recursive: true, force: true });
  });
  return {
    get agent() {
      if (!agent) throw new Error('the workspace agent exists only inside tests');
      return agent;
    },
    get dir() {
      return dir;
    },
    get ledger() {
      return join(dir, 'l.db');
    },
    get report() {
      return join(dir, 'r.csv');
    },
    async provider(options = {}) {
      const started = await startMockProvider({ port: 0, ...defaults, ...options });
      providers.push(started);
      return started;
    },
  };
}
