import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { MockProvider, MockProviderOptions } from '../../src/mock-provider/index.js';
import {
  announcedRunId,
  expectedExitStatus,
  expectReportAgreesWithProvider,
  type InputRow,
  ledgerBytes,
  plainUsers,
  providerCharges,
  providerStats,
  readReport,
  statusJson,
  TERMINAL_STATES,
  unescapeCell,
  useCliWorkspace,
  writeCsvInput,
} from '../helpers/billing-cycle.js';
import { runCli } from '../helpers/cli.js';

// The real CLI as a child process (from the TypeScript sources) against a real mock provider
// on port 0; engine-level promises are in test/conformance, these are the command's promises.

const ws = useCliWorkspace('bulkbill-e2e-run-', { latencyMs: 10, seed: 1 });
const provider = (options?: MockProviderOptions) => ws.provider(options);

/** `bulkbill run <input> --endpoint <mock>/charge --ledger <tmp> --report <tmp> ...flags`. */
function runArgs(input: string, mock: MockProvider, ...flags: string[]): string[] {
  const args = ['run', input, '--endpoint', `${mock.url}/charge`, '--ledger', ws.ledger];
  return [...args, '--report', ws.report, ...flags];
}

/** What a usage-error case builds its command line from; `run` is a working command. */
interface UsageFiles {
  readonly input: string;
  readonly ledger: string;
  readonly report: string;
  readonly run: readonly string[];
}

// User ids a key must survive: a separator, spaces, commas, quotes, non-ASCII, a leading `~`.
const ODD_IDS = ['a:b', 'with space', 'comma,here', 'quote"d', 'zoë', '日本語', '~tilde', 'x:y:z'];
// Cells a spreadsheet would run as formulas: the report must escape them with a leading `'`.
const FORMULA_IDS = ['=1+1', '+cmd', '-minus', '@at', '=HYPERLINK("http://x","y")'];

describe('bulkbill run (end to end)', () => {
  it('bills every user exactly once through a seeded fault mix, and the report agrees with the provider', async () => {
    const declined = [
      ...['zoë_x', '=decl_x', 'with space_x', 'q"uo,te_x'],
      ...Array.from({ length: 16 }, (_, index) => `dec-${index}_x`),
    ];
    const rows: InputRow[] = [
      ...plainUsers(280),
      ...[...ODD_IDS, ...FORMULA_IDS, ...declined].map((userId, index) => ({
        userId,
        amount: 500 + index,
        currency: index % 2 === 0 ? 'EUR' : 'USD',
        note: index % 3 === 0 ? `=SUM(A1:A9), "quoted" ${index}` : `plain ${index}`,
      })),
    ];
    // The last row's metadata spans lines: line numbers count the row's first line.
    rows.push({ userId: 'last', amount: 1, currency: 'JPY', note: 'two\r\nlines' });
    const userIds = rows.map((row) => row.userId);
    const input = await writeCsvInput(join(ws.dir, 'cycle.csv'), rows);
    const mock = await provider({
      latencyMs: 20,
      capacity: 10,
      rate: 150,
      burst: 30,
      failRate: 0.05,
      lostRate: 0.03,
      slowRate: 0.03,
      slowMs: 1_500,
      declineSuffix: '_x',
      seed: 42,
    });

    // A client rate above the provider's and a timeout below its slow answers: every fault bites.
    const flags = [
      '--concurrency',
      '16',
      '--rate',
      '240',
      '--timeout',
      '400ms',
      '--max-attempts',
      '8',
    ];
    const result = await runCli(runArgs(input, mock, ...flags));
    const byUser = await expectReportAgreesWithProvider({
      agent: ws.agent,
      providerUrl: mock.url,
      reportPath: ws.report,
      userIds,
    });
    expect(result.code, result.stderr).toBe(expectedExitStatus(byUser.values()));

    // Every fault the seed draws was met, and the statuses are what the provider made them.
    const stats = await providerStats(ws.agent, mock.url);
    expect(stats.failed_503).toBeGreaterThan(0);
    expect(stats.lost).toBeGreaterThan(0);
    expect(stats.slow).toBeGreaterThan(0);
    expect(stats.rejected_429 + stats.rejected_503).toBeGreaterThan(0);
    // Each answer lost or held past the timeout was settled by a replay of the same key.
    expect(stats.replays).toBeGreaterThanOrEqual(stats.lost + stats.slow);
    expect(stats.keyless).toBe(0);
    expect(stats.mismatches).toBe(0);
    for (const userId of declined) {
      const row = byUser.get(userId);
      expect(row?.status, userId).toBe('declined');
      expect(row?.http_status, userId).toBe('402');
      expect(row?.error, userId).not.toBe('');
    }
    const notDeclined = [...byUser.values()].filter((row) => row.status !== 'declined');
    expect(notDeclined).toHaveLength(userIds.length - declined.length);
    for (const row of notDeclined) expect(['charged', 'failed', 'unknown']).toContain(row.status);

    // Input order, line numbers, amounts and metadata come back as they went in.
    const reportRows = await readReport(ws.report);
    expect(reportRows.map((row) => unescapeCell(row.user_id))).toEqual(userIds);
    rows.forEach((row, index) => {
      const out = reportRows[index];
      expect(out?.line).toBe(String(index + 2));
      // amount in the currency's own units (JPY has none below the yen), amount_minor exact.
      const major =
        row.currency === 'JPY' ? String(row.amount) : (Number(row.amount) / 100).toFixed(2);
      expect(out).toMatchObject({ amount: major, amount_minor: String(row.amount) });
      expect(out?.currency).toBe(row.currency);
      expect(JSON.parse(out?.metadata ?? '{}')).toEqual({ note: row.note });
    });

    // CSV injection: formula-looking ids come out with a leading `'`, and no cell starts bare.
    for (const userId of [...FORMULA_IDS, '=decl_x']) {
      expect(
        reportRows.some((row) => row.user_id === `'${userId}`),
        userId,
      ).toBe(true);
    }
    for (const row of reportRows) {
      for (const [column, cell] of Object.entries(row)) {
        expect(/^[=+\-@\t\r]/.test(cell), `${column} ${cell}`).toBe(false);
      }
    }
  }, 60_000);

  it.each([
    {
      name: 'failed (every attempt 503 before charging)',
      mock: { latencyMs: 1, failRate: 1 },
      flags: ['--max-attempts', '2'],
      state: 'failed',
      attempts: '2',
    },
    {
      // One attempt: a retry would meet 409 (the key still in progress) and wait it out.
      name: 'unknown (the attempt timed out after sending)',
      mock: { latencyMs: 800, jitter: 0 },
      flags: ['--max-attempts', '1', '--timeout', '100ms'],
      state: 'unknown',
      attempts: '1',
    },
  ])('exits 1 when charges end $name', async ({ mock: options, flags, state, attempts }) => {
    const rows = plainUsers(3);
    const input = await writeCsvInput(join(ws.dir, 'few.csv'), rows);
    const mock = await provider(options);
    const result = await runCli(runArgs(input, mock, ...flags));
    expect(result.code, result.stderr).toBe(1);
    const reportRows = await readReport(ws.report);
    expect(reportRows.map((row) => row.status)).toEqual([state, state, state]);
    expect(reportRows.map((row) => row.attempts)).toEqual([attempts, attempts, attempts]);
    expect(result.stderr).toContain('--retry-failed');
    if (state === 'unknown') {
      expect(reportRows.every((row) => row.ambiguous === 'true')).toBe(true);
      return;
    }
    expect((await providerStats(ws.agent, mock.url)).charges).toBe(0);
  });

  it('creates the ledger and the report readable by their owner only (0600)', async () => {
    const input = await writeCsvInput(join(ws.dir, 'modes.csv'), plainUsers(5));
    const mock = await provider();
    const run = await runCli(runArgs(input, mock));
    expect(run.code, run.stderr).toBe(0);
    // SQLite removes the WAL when the last connection closes; the ledger and report stay.
    for (const file of [ws.ledger, ws.report]) {
      expect((await stat(file)).mode & 0o777, file).toBe(0o600);
    }
  });

  it('--json prints one JSON summary that adds up; status agrees with the report', async () => {
    const rows: InputRow[] = [
      ...plainUsers(50),
      ...plainUsers(10, 'no').map((row) => ({ ...row, userId: `${row.userId}_x` })),
      { userId: 'a:b, "c" ü', amount: 700, currency: 'EUR', note: 'odd' },
      { userId: '-lead', amount: 1, currency: 'GBP' },
    ];
    const input = await writeCsvInput(join(ws.dir, 'json.csv'), rows);
    const mock = await provider({ declineSuffix: '_x' });

    const result = await runCli(runArgs(input, mock, '--json'));
    expect(result.code, result.stderr).toBe(0);
    const lines = result.stdout.split('\n').filter((line) => line.trim() !== '');
    expect(lines).toHaveLength(1);
    const summary = JSON.parse(lines[0] ?? '') as {
      runId: string;
      total: number;
      counts: Record<string, number>;
      chargedAmounts: Record<string, number>;
    };
    expect(summary.runId).toBe(announcedRunId(result.stderr));
    expect(summary.total).toBe(rows.length);
    const sum = Object.values(summary.counts).reduce((total, count) => total + count, 0);
    expect(sum).toBe(rows.length);
    expect(summary.counts).toMatchObject({ charged: 52, declined: 10, pending: 0 });
    const usd = plainUsers(50).reduce((total, row) => total + Number(row.amount), 0);
    expect(summary.chargedAmounts).toEqual({ USD: usd, EUR: 700, GBP: 1 });

    const byUser = await expectReportAgreesWithProvider({
      agent: ws.agent,
      providerUrl: mock.url,
      reportPath: ws.report,
      userIds: rows.map((row) => row.userId),
    });
    const tally: Record<string, number> = {};
    for (const row of byUser.values()) tally[row.status] = (tally[row.status] ?? 0) + 1;

    const status = await statusJson(ws.ledger, summary.runId);
    expect(status.total).toBe(rows.length);
    expect(status.finishedAt).toEqual(expect.any(String));
    expect(status.counts).toEqual(summary.counts);
    for (const state of TERMINAL_STATES) expect(status.counts[state]).toBe(tally[state] ?? 0);
    expect(status.chargedAmounts).toEqual(summary.chargedAmounts);

    const asked = ['a:b, "c" ü', 'no-3_x', 'user-7', '-lead'];
    const answers = await Promise.all(
      asked.map((userId) =>
        runCli([
          'status',
          '--run-id',
          summary.runId,
          '--ledger',
          ws.ledger,
          '--user',
          userId,
          '--json',
        ]),
      ),
    );
    asked.forEach((userId, index) => {
      const answer = answers[index];
      expect(answer?.code, answer?.stderr).toBe(0);
      const charge = JSON.parse(answer?.stdout ?? '') as Record<string, unknown>;
      const row = byUser.get(userId);
      expect(charge).toMatchObject({ runId: summary.runId, userId, state: row?.status });
      expect(charge.chargeId ?? '').toBe(row?.charge_id);
      expect(String(charge.attempts)).toBe(row?.attempts);
      // --json keeps the exact integer of minor units; the report has it as amount_minor.
      expect(charge.amount).toBe(Number(rows.find((input) => input.userId === userId)?.amount));
      expect(row).toMatchObject({ amount_minor: String(charge.amount) });
    });
    const human = await runCli(['status', '--run-id', summary.runId, '--ledger', ws.ledger]);
    expect(human.code).toBe(0);
    expect(human.stdout).toContain('52 charged · 10 declined · 0 failed');
    // 100 + 101 + … + 149 cents charged in USD, 700 in EUR, 1 in GBP.
    for (const money of ['USD 62.25', 'EUR 7.00', 'GBP 0.01'])
      expect(human.stdout).toContain(money);
    expect(human.stdout).not.toContain('minor units');
    const one = await runCli([
      'status',
      '--run-id',
      summary.runId,
      '--ledger',
      ws.ledger,
      '--user',
      'user-7',
    ]);
    expect(one.code, one.stderr).toBe(0);
    expect(one.stdout).toMatch(/^ {2}line \d+ · USD 1\.07 · \d+ attempts?$/m);
  }, 60_000);

  it('refuses bad input before any request, naming file:line: field; --skip-invalid bills the rest', async () => {
    const input = join(ws.dir, 'bad.csv');
    await writeCsvInput(input, [
      { userId: 'ok-1', amount: 100, currency: 'USD' },
      { userId: 'bad-amount', amount: '19.99', currency: 'USD' },
      { userId: 'bad-currency', amount: 100, currency: 'usd' },
      { userId: 'ok-1', amount: 5, currency: 'USD' },
      { userId: '', amount: 100, currency: 'USD' },
      { userId: 'ok-3', amount: 300, currency: 'EUR' },
      { userId: 'OK-1', amount: 100, currency: 'USD' },
    ]);
    const mock = await provider();

    const refused = await runCli(runArgs(input, mock));
    expect(refused.code).toBe(2);
    const problems = refused.stderr
      .split('\n')
      .filter((line) => line.startsWith(`${input}:`))
      .map((line) => line.slice(input.length + 1));
    expect(problems).toEqual([
      expect.stringMatching(/^3: amount: .*19\.99/),
      expect.stringMatching(/^4: currency: .*usd/),
      expect.stringMatching(/^5: user_id: appears twice \(first on line 2\)/),
      expect.stringMatching(/^6: user_id: /),
      `8: user_id: differs from line 2's "ok-1" only by case or Unicode normalization`,
    ]);
    expect(refused.stderr).toContain('nothing was charged');
    expect((await providerStats(ws.agent, mock.url)).requests).toBe(0);

    const skipped = await runCli(runArgs(input, mock, '--skip-invalid'));
    expect(skipped.code, skipped.stderr).toBe(0);
    const rows = await readReport(ws.report);
    expect(rows.map((row) => [row.line, row.user_id, row.status])).toEqual([
      ['2', 'ok-1', 'charged'],
      ['3', 'bad-amount', 'invalid'],
      ['4', 'bad-currency', 'invalid'],
      ['5', 'ok-1', 'invalid'],
      ['6', '', 'invalid'],
      ['7', 'ok-3', 'charged'],
      ['8', 'OK-1', 'invalid'],
    ]);
    for (const row of rows.filter((row) => row.status === 'invalid')) {
      expect(row.error, row.line).not.toBe('');
    }
    const stats = await providerStats(ws.agent, mock.url);
    expect(stats).toMatchObject({ requests: 2, charges: 2, duplicate_charges: 0 });
    const atProvider = await providerCharges(ws.agent, mock.url, ['ok-1', 'ok-3', 'bad-amount']);
    expect(atProvider.get('ok-1')).toEqual([rows[0]?.charge_id]);
    expect(atProvider.get('ok-3')).toEqual([rows[5]?.charge_id]);
    expect(atProvider.get('bad-amount')).toEqual([]);
  }, 30_000);

  it('stops on a wrong token (401) with every charge pending, never writing the token; the right one completes', async () => {
    const wrongToken = 'sk_test_wrong_4f9a1c77e2';
    const rightToken = 'sk_test_right_9b3d5e11a0';
    const rows = plainUsers(40);
    const input = await writeCsvInput(join(ws.dir, 'auth.csv'), rows);
    const mock = await provider({ apiKey: rightToken });
    const args = runArgs(input, mock, '--header', 'Authorization: Bearer ${BILLING_TOKEN}');

    const wrong = await runCli(args, { env: { BILLING_TOKEN: wrongToken } });
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toMatch(/401 Unauthorized.*Authorization/);
    expect(wrong.stdout + wrong.stderr).not.toContain(wrongToken);
    const runId = announcedRunId(wrong.stderr);
    const stopped = await statusJson(ws.ledger, runId);
    expect(stopped.counts).toMatchObject({ pending: 40, charged: 0, declined: 0, failed: 0 });
    const stats = await providerStats(ws.agent, mock.url);
    expect(stats.charges).toBe(0);
    expect(stats.unauthorized).toBeGreaterThan(0);
    expect((await ledgerBytes(ws.dir, 'l.db')).includes(wrongToken)).toBe(false);
    expect(await readFile(ws.report, 'utf8')).not.toContain(wrongToken);

    const right = await runCli(args, { env: { BILLING_TOKEN: rightToken } });
    expect(right.code, right.stderr).toBe(0);
    expect(right.stderr).toContain(`resuming unfinished run ${runId}`);
    expect(right.stdout + right.stderr).not.toContain(rightToken);
    const byUser = await expectReportAgreesWithProvider({
      agent: ws.agent,
      providerUrl: mock.url,
      reportPath: ws.report,
      userIds: rows.map((row) => row.userId),
    });
    expect([...byUser.values()].every((row) => row.status === 'charged')).toBe(true);
    const bytes = await ledgerBytes(ws.dir, 'l.db');
    const reportText = await readFile(ws.report, 'utf8');
    for (const secret of [wrongToken, rightToken, 'Bearer']) {
      expect(bytes.includes(secret), secret).toBe(false);
      expect(reportText, secret).not.toContain(secret);
    }
  }, 30_000);

  it('--dry-run prints the plan and charges nobody; the real run then resumes it', async () => {
    const rows: InputRow[] = [
      ...plainUsers(20),
      ...plainUsers(10, 'eu').map((row) => ({ ...row, currency: 'EUR', amount: 1_000 })),
    ];
    const input = await writeCsvInput(join(ws.dir, 'dry.csv'), rows);
    const mock = await provider();

    const dry = await runCli(runArgs(input, mock, '--dry-run', '--concurrency', '10'));
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toContain('nobody was charged');
    expect(dry.stdout).toContain('30 charges');
    // 100 + 101 + … + 119 cents in USD, 10 × 1,000 cents in EUR, in the currencies' own units.
    expect(dry.stdout).toContain('USD 21.90');
    expect(dry.stdout).toContain('EUR 100.00');
    expect(dry.stdout).not.toContain('minor units');
    // 30 charges, 10 at a time, at the assumed 1.6 s each: three waves.
    expect(dry.stdout).toMatch(/concurrency 10.*about 4\.8s/);
    expect((await providerStats(ws.agent, mock.url)).requests).toBe(0);
    const runId = announcedRunId(dry.stderr);
    expect((await statusJson(ws.ledger, runId)).counts.pending).toBe(30);

    const real = await runCli(runArgs(input, mock));
    expect(real.code, real.stderr).toBe(0);
    expect(real.stderr).toContain(`resuming unfinished run ${runId}`);
    const byUser = await expectReportAgreesWithProvider({
      agent: ws.agent,
      providerUrl: mock.url,
      reportPath: ws.report,
      userIds: rows.map((row) => row.userId),
    });
    expect([...byUser.values()].filter((row) => row.status === 'charged')).toHaveLength(30);
  }, 30_000);

  it('bills nobody when the file was already billed, and a new --run-id bills a new cycle', async () => {
    const rows = plainUsers(10);
    const userIds = rows.map((row) => row.userId);
    const input = await writeCsvInput(join(ws.dir, 'done.csv'), rows);
    const mock = await provider();

    const first = await runCli(runArgs(input, mock));
    expect(first.code, first.stderr).toBe(0);
    const runId = announcedRunId(first.stderr);
    const firstRows = await readReport(ws.report);
    const requests = (await providerStats(ws.agent, mock.url)).requests;

    const again = await runCli(runArgs(input, mock));
    expect(again.code, again.stderr).toBe(0);
    expect(again.stderr).toContain(`run ${runId} already finished`);
    expect(again.stdout + again.stderr).toMatch(/nobody (will be|was )?billed/);
    expect((await providerStats(ws.agent, mock.url)).requests).toBe(requests);

    const next = await runCli(runArgs(input, mock, '--run-id', 'cycle-2')); // new cycle
    expect(next.code, next.stderr).toBe(0);
    expect(next.stderr).toContain('new run cycle-2');
    const nextRows = await readReport(ws.report);
    const stats = await providerStats(ws.agent, mock.url);
    // The mock counts a user's second charge as a duplicate whatever its key: here, one per user.
    expect(stats).toMatchObject({ charges: 20, users_charged: 10, duplicate_charges: 10 });
    const atProvider = await providerCharges(ws.agent, mock.url, userIds);
    nextRows.forEach((row, index) => {
      const before = firstRows[index];
      expect(row.status).toBe('charged');
      expect(row.charge_id).not.toBe(before?.charge_id);
      expect(atProvider.get(row.user_id)).toEqual(
        expect.arrayContaining([before?.charge_id, row.charge_id]),
      );
      expect(atProvider.get(row.user_id)).toHaveLength(2);
    });
  }, 30_000);

  it('refuses to resume a run id with a file of other users or another endpoint (exit 2, nobody charged)', async () => {
    const first = await writeCsvInput(join(ws.dir, 'first.csv'), plainUsers(5));
    const other = await writeCsvInput(join(ws.dir, 'other.csv'), plainUsers(6, 'stranger'));
    const mock = await provider();
    const planned = await runCli(runArgs(first, mock, '--run-id', 'cycle-a', '--dry-run'));
    expect(planned.code, planned.stderr).toBe(0);

    const otherFile = await runCli(runArgs(other, mock, '--run-id', 'cycle-a'));
    expect(otherFile.code).toBe(2);
    expect(otherFile.stderr).toMatch(/run cycle-a holds none of the users of .*other\.csv/);
    const otherEndpoint = await runCli([
      ...['run', first, '--endpoint', `${mock.url}/v2/charge`, '--ledger', ws.ledger],
      ...['--run-id', 'cycle-a'],
    ]);
    expect(otherEndpoint.code).toBe(2);
    expect(otherEndpoint.stderr).toContain(`bills ${mock.url}/charge`);
    expect((await providerStats(ws.agent, mock.url)).requests).toBe(0);
    expect((await statusJson(ws.ledger, 'cycle-a')).counts.pending).toBe(5);
  }, 30_000);

  it.each<{ name: string; args: (at: UsageFiles) => string[]; names: RegExp }>([
    {
      name: 'no --endpoint',
      args: (at) => ['run', at.input, '--ledger', at.ledger, '--report', at.report],
      names: /--endpoint/,
    },
    // commander keeps the last of a repeated flag: these override the working defaults.
    {
      name: '--endpoint foo',
      args: (at) => [...at.run, '--endpoint', 'foo'],
      names: /--endpoint.*foo/,
    },
    {
      name: '--concurrency 0',
      args: (at) => [...at.run, '--concurrency', '0'],
      names: /--concurrency/,
    },
    { name: '--timeout 5', args: (at) => [...at.run, '--timeout', '5'], names: /--timeout.*"5"/ },
    {
      name: 'a missing input file',
      args: (at) => ['run', join(ws.dir, 'missing.csv'), ...at.run.slice(2)],
      names: /missing\.csv/,
    },
    {
      // The report is written after billing: a path that cannot take it must be refused before.
      name: 'a --report in a missing directory',
      args: (at) => [...at.run, '--report', join(ws.dir, 'no-such-dir', 'r.csv')],
      names: /no-such-dir/,
    },
  ])('exits 2 on a usage error ($name), naming it, charging nobody', async ({ args, names }) => {
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), plainUsers(5));
    const mock = await provider();
    const run = runArgs(input, mock);
    const result = await runCli(args({ input, ledger: ws.ledger, report: ws.report, run }));
    expect(result.code, result.stderr).toBe(2);
    expect(result.stderr).toMatch(names);
    expect(result.stdout).toBe('');
    expect((await providerStats(ws.agent, mock.url)).requests).toBe(0);
  });
});
