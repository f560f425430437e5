import { once } from 'node:events';
import { writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { MockProvider } from '../../src/mock-provider/index.js';
import {
  announcedRunId,
  cycleWithTypos,
  expectReportAgreesWithProvider,
  type InputRow,
  plainUsers,
  providerCharges,
  readReport,
  statusJson,
  useCliWorkspace,
  waitForNewRun,
  waitForStderr,
  writeCsvInput,
} from '../helpers/billing-cycle.js';
import { type CliProcess, runCli } from '../helpers/cli.js';
import { pollUntil, useChildren } from '../helpers/distributed.js';
import { closeServer, readBody } from '../helpers/http.js';

// What operators do to a billing cycle between two runs of `bulkbill run` (the real CLI, a real
// SQLite ledger, the real mock provider on port 0): fix rows and run again, re-export the file,
// add users, change an amount, name a run after a crash, resume while requests are still in
// flight, crash in a loop against a provider that always fails, and look runs up. Each ends with
// what the provider itself saw: nobody charged twice in a cycle, nobody skipped.

const ws = useCliWorkspace('bulkbill-e2e-operator-', { latencyMs: 2, jitter: 0, seed: 3 });
// Proxies of countingProxy(), closed after the CLI processes are dead (useChildren's hook,
// registered after this one, runs first).
const proxies: ReturnType<typeof createServer>[] = [];
afterEach(async () => {
  for (const server of proxies.splice(0)) await closeServer(server);
});
const children = useChildren();

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** `bulkbill run <input> --endpoint <mock>/charge --ledger <tmp> --report <tmp> ...flags`. */
function runArgs(input: string, mock: MockProvider, ...flags: string[]): string[] {
  const args = ['run', input, '--endpoint', `${mock.url}/charge`, '--ledger', ws.ledger];
  return [...args, '--report', ws.report, ...flags];
}

/** Writes `user_id,amount,currency,note` with LF line endings (writeCsvInput writes CRLF). */
async function writeLfCsv(path: string, rows: readonly InputRow[]): Promise<string> {
  const lines = ['user_id,amount,currency,note'];
  for (const row of rows) lines.push(`${row.userId},${row.amount},${row.currency},${row.note}`);
  await writeFile(path, `${lines.join('\n')}\n`);
  return path;
}

/** Waits until the provider has answered every request it was sent (after a kill -9). */
function providerSettled(mock: MockProvider): Promise<true> {
  return pollUntil('the provider idle', async () =>
    mock.stats().in_flight === 0 ? true : undefined,
  );
}

/**
 * An HTTP proxy in front of a mock provider that counts the charge requests per user that pass
 * through it (the mock's /stats counts them all together). Closed after the test.
 */
async function countingProxy(
  target: MockProvider,
): Promise<{ readonly url: string; readonly perUser: Map<string, number> }> {
  const perUser = new Map<string, number>();
  const server = createServer(async (req, res) => {
    const body = await readBody(req);
    let userId = '(no user_id)';
    try {
      userId = String((JSON.parse(body) as { user_id?: unknown }).user_id);
    } catch {}
    perUser.set(userId, (perUser.get(userId) ?? 0) + 1);
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    const key = req.headers['idempotency-key'];
    if (typeof key === 'string') headers['idempotency-key'] = key;
    fetch(`${target.url}${req.url}`, { method: req.method ?? 'POST', headers, body })
      .then(async (answer) => {
        const text = await answer.text();
        res.writeHead(answer.status, { 'content-type': 'application/json' });
        res.end(text);
      })
      .catch(() => res.destroy());
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  proxies.push(server);
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, perUser };
}

/** The announcement of whichever run a `run` works on (new, resumed, or already finished). */
const ANNOUNCED = /bulkbill: (?:new run|resuming unfinished run|run) (\S+)/;

describe('operator mistakes between two runs of bulkbill run (local engine)', () => {
  it('fix-and-rerun: the same --skip-invalid command after fixing two rows continues the run and bills only the fixed users', async () => {
    const { broken, fixed } = cycleWithTypos(plainUsers(298), [100, 200]);
    const userIds = fixed.map((row) => row.userId);
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), broken);
    const mock = await ws.provider();
    const args = runArgs(input, mock, '--skip-invalid', '--concurrency', '32');

    const first = await runCli(args);
    expect(first.code, first.stderr).toBe(0);
    const runId = announcedRunId(first.stderr);
    expect(first.stderr).toContain(`new run ${runId}`);
    const firstReport = await readReport(ws.report);
    expect(firstReport.filter((row) => row.status === 'charged')).toHaveLength(298);
    expect(firstReport.filter((row) => row.status === 'invalid').map((row) => row.user_id)).toEqual(
      ['fix-amount', 'fix-currency'],
    );
    expect(mock.stats()).toMatchObject({ requests: 298, charges: 298, duplicate_charges: 0 });

    // The operator fixes the two rows in the file and runs the very same command again.
    await writeCsvInput(input, fixed);
    const second = await runCli(args);
    expect(second.code, second.stderr).toBe(0);
    expect(second.stderr).toContain(`resuming unfinished run ${runId}`);
    expect(second.stderr).toContain(`2 users of this input added to run ${runId}`);
    expect(second.stderr).not.toContain('new run');

    // Only the two fixed users reached the provider: 300 charges, one per user.
    expect(mock.stats()).toMatchObject({
      requests: 300,
      charges: 300,
      users_charged: 300,
      duplicate_charges: 0,
      replays: 0,
      mismatches: 0,
    });
    const byUser = await expectReportAgreesWithProvider({
      agent: ws.agent,
      providerUrl: mock.url,
      reportPath: ws.report,
      userIds,
    });
    expect([...byUser.values()].filter((row) => row.status !== 'charged')).toEqual([]);
    expect(byUser.get('fix-amount')).toMatchObject({ amount: '19.99', amount_minor: '1999' });
    const [status, human] = await Promise.all([
      statusJson(ws.ledger, runId),
      runCli(['status', '--run-id', runId, '--ledger', ws.ledger]),
    ]);
    expect(status.total).toBe(300);
    expect(status.counts).toMatchObject({ charged: 300, invalid: 0, pending: 0, failed: 0 });
    expect(status.finishedAt).toEqual(expect.any(String));
    expect(human.code, human.stderr).toBe(0);
    expect(human.stdout).toMatch(/300 rows: 300 charged/);
    expect(human.stdout).toContain('0 invalid');
  }, 30_000);

  it('re-export: the finished file in another row order, then with CRLF line endings, bills nobody; with ids in upper case it is refused', async () => {
    const rows = plainUsers(80);
    const input = await writeLfCsv(join(ws.dir, 'users.csv'), rows);
    const mock = await ws.provider();

    const first = await runCli(runArgs(input, mock));
    expect(first.code, first.stderr).toBe(0);
    const runId = announcedRunId(first.stderr);
    expect(mock.stats()).toMatchObject({ requests: 80, charges: 80 });

    const reordered = await writeLfCsv(join(ws.dir, 'export-2.csv'), [...rows].reverse());
    const crlf = await writeCsvInput(join(ws.dir, 'export-3.csv'), rows);
    for (const again of [reordered, crlf]) {
      const result = await runCli(runArgs(again, mock));
      expect(result.code, result.stderr).toBe(0);
      expect(result.stderr).toContain(`run ${runId} already finished`);
      expect(result.stderr).not.toContain('new run');
      expect(result.stdout).toContain(`bulkbill run ${runId}: already finished, nobody billed`);
      expect(mock.stats()).toMatchObject({ requests: 80, charges: 80, duplicate_charges: 0 });
    }
    // An export that changed the ids' case: one person each, so refused, naming the held id.
    const shouted = await writeLfCsv(
      join(ws.dir, 'export-4.csv'),
      rows.map((row, index) => (index % 2 ? { ...row, userId: row.userId.toUpperCase() } : row)),
    );
    const refused = await runCli(runArgs(shouted, mock));
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain(
      `${shouted}:3: user_id: differs from "user-1", whom the run already holds, only by case or Unicode normalization`,
    );
    expect(refused.stderr).toContain(`${shouted}: 40 invalid rows`);
    expect(mock.stats()).toMatchObject({ requests: 80, charges: 80, duplicate_charges: 0 });
    const [status, list] = await Promise.all([
      statusJson(ws.ledger, runId),
      runCli(['status', '--ledger', ws.ledger, '--json']),
    ]);
    expect(status.counts).toMatchObject({ charged: 80, pending: 0 });
    expect(list.code, list.stderr).toBe(0);
    expect((JSON.parse(list.stdout) as { runs: { runId: string }[] }).runs).toHaveLength(1);
  }, 30_000);

  it('added users: the finished file plus 5 new users bills only the 5, in the same run', async () => {
    const rows = plainUsers(120);
    const added = plainUsers(5, 'late');
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), rows);
    const mock = await ws.provider();

    const first = await runCli(runArgs(input, mock));
    expect(first.code, first.stderr).toBe(0);
    const runId = announcedRunId(first.stderr);

    const more = await writeCsvInput(join(ws.dir, 'users-and-late.csv'), [...rows, ...added]);
    const second = await runCli(runArgs(more, mock));
    expect(second.code, second.stderr).toBe(0);
    expect(second.stderr).toContain(`resuming unfinished run ${runId}`);
    expect(second.stderr).toContain(`5 users of this input added to run ${runId}`);
    expect(mock.stats()).toMatchObject({
      requests: 125,
      charges: 125,
      duplicate_charges: 0,
      replays: 0,
    });
    const atProvider = await providerCharges(
      ws.agent,
      mock.url,
      added.map((row) => row.userId),
    );
    for (const [userId, ids] of atProvider) expect(ids, userId).toHaveLength(1);
    await expectReportAgreesWithProvider({
      agent: ws.agent,
      providerUrl: mock.url,
      reportPath: ws.report,
      userIds: [...rows, ...added].map((row) => row.userId),
    });
    const status = await statusJson(ws.ledger, runId);
    expect(status.total).toBe(125);
    expect(status.counts).toMatchObject({ charged: 125, pending: 0 });
  }, 30_000);

  it('changed amount: refused naming file:line and the held amount; a new --run-id needs --new-cycle while the run is unfinished', async () => {
    const rows = plainUsers(100);
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), rows);
    // user-7 (line 9) was 107 cents; the operator's new export says 999.
    const changedRows = rows.map((row) =>
      row.userId === 'user-7' ? { ...row, amount: 999 } : row,
    );
    const changed = await writeCsvInput(join(ws.dir, 'users-changed.csv'), changedRows);
    const mock = await ws.provider({ latencyMs: 150 });

    // The first run is stopped with Ctrl-C halfway: unfinished, charges pending.
    const first = children.spawn(runArgs(input, mock, '--concurrency', '10'));
    const runId = await waitForNewRun(first);
    await pollUntil('20 charges made', async () => (mock.stats().charges >= 20 ? true : undefined));
    first.child.kill('SIGINT');
    expect(await first.exited, first.stderr()).toBe(130);
    const atStop = mock.stats();
    expect(atStop.charges).toBeLessThan(rows.length);

    // The plain command, and the same with a new --run-id (both only read the ledger).
    const [refused, newId] = await Promise.all([
      runCli(runArgs(changed, mock)),
      runCli(runArgs(changed, mock, '--run-id', 'next')),
    ]);
    expect(refused.code, refused.stderr).toBe(2);
    expect(refused.stderr).toContain(
      `${changed}:9: amount: 999 USD here, but run ${runId} holds 107 USD for user-7`,
    );
    expect(refused.stderr).toContain('nothing was charged');
    expect(newId.code, newId.stderr).toBe(2);
    expect(newId.stderr).toContain(`unfinished run ${runId}`);
    expect(newId.stderr).toContain('--new-cycle');
    expect(newId.stderr).not.toContain('bulkbill: new run next');
    expect(mock.stats().requests).toBe(atStop.requests);

    // The operator means it: a new cycle with the new amounts.
    const cycle = await runCli(
      runArgs(changed, mock, '--run-id', 'next', '--new-cycle', '--concurrency', '100'),
    );
    expect(cycle.code, cycle.stderr).toBe(0);
    expect(cycle.stderr).toContain('new run next');
    const [next, held] = await Promise.all([
      statusJson(ws.ledger, 'next'),
      statusJson(ws.ledger, runId),
    ]);
    expect(next.counts).toMatchObject({ charged: 100, pending: 0 });
    expect(next.chargedAmounts.USD).toBe(
      changedRows.reduce((total, row) => total + Number(row.amount), 0),
    );
    // The first run was left as it was, and its own command still finishes it.
    expect(held.finishedAt).toBeUndefined();
    expect(held.counts.pending).toBeGreaterThan(0);
    const resumed = await runCli(runArgs(input, mock, '--concurrency', '100'));
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(resumed.stderr).toContain(`resuming unfinished run ${runId}`);

    // Two cycles: each user charged once in each, never twice in one, never at a mismatched body.
    const stats = mock.stats();
    expect(stats).toMatchObject({ charges: 200, users_charged: 100, mismatches: 0 });
    const atProvider = await providerCharges(
      ws.agent,
      mock.url,
      rows.map((row) => row.userId),
    );
    for (const [userId, ids] of atProvider) expect(ids, userId).toHaveLength(2);
  }, 40_000);

  it('crash, then a named run: --run-id 2026-11 is refused while the unnamed run is unfinished; the plain command finishes it', async () => {
    const rows = plainUsers(300);
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), rows);
    const mock = await ws.provider({ latencyMs: 100, jitter: 0.2 });
    const args = runArgs(input, mock, '--concurrency', '20');

    const first = children.spawn(args);
    const runId = await waitForNewRun(first);
    await pollUntil('40 charges made', async () => (mock.stats().charges >= 40 ? true : undefined));
    first.child.kill('SIGKILL');
    expect(await first.exited, first.stderr()).toBe(137);
    await providerSettled(mock);
    const atKill = mock.stats();
    expect(atKill.charges).toBeLessThan(rows.length);

    const named = await runCli(runArgs(input, mock, '--run-id', '2026-11'));
    expect(named.code, named.stderr).toBe(2);
    expect(named.stderr).toContain(`unfinished run ${runId}`);
    expect(named.stderr).toContain('--new-cycle');
    expect(named.stderr).not.toContain('bulkbill: new run 2026-11');
    expect(mock.stats().requests).toBe(atKill.requests);

    const [missing, plain] = await Promise.all([
      runCli(['status', '--run-id', '2026-11', '--ledger', ws.ledger]),
      runCli(args),
    ]);
    expect(missing.code, 'no run 2026-11 was created').toBe(2);
    expect(plain.code, plain.stderr).toBe(0);
    expect(plain.stderr).toContain(`resuming unfinished run ${runId}`);
    const byUser = await expectReportAgreesWithProvider({
      agent: ws.agent,
      providerUrl: mock.url,
      reportPath: ws.report,
      userIds: rows.map((row) => row.userId),
    });
    expect([...byUser.values()].filter((row) => row.status !== 'charged')).toEqual([]);
    expect(mock.stats()).toMatchObject({ charges: 300, users_charged: 300, duplicate_charges: 0 });
  }, 30_000);

  it('kill -9 with slow requests in flight, then an immediate resume: 409s are waited out, all charged once, nobody failed', async () => {
    const rows = plainUsers(50);
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), rows);
    const mock = await ws.provider({ latencyMs: 3_000, jitter: 0 });
    // Two attempts: the dead process's, and the resume's. A 409 says the key is still being
    // processed; waiting it out must use up no attempt, else every charge here would end failed.
    const args = runArgs(input, mock, '--concurrency', '50', '--max-attempts', '2');

    const spawnedAt = Date.now();
    const first = children.spawn(args);
    const runId = await waitForNewRun(first);
    await pollUntil('every request in flight', async () =>
      mock.stats().in_flight === 50 ? true : undefined,
    );
    // The resume's first requests must reach the provider while these are still in progress.
    // It takes about as long to send them as this process did: kill when they would land about
    // 0.6 s before the provider answers these (about 1.5 s into the 3 s), so that the stretch
    // of 409s, and the resume's conflict backoff (2 s, doubling) with it, stays short.
    const startupMs = Date.now() - spawnedAt;
    await sleep(Math.min(1_500, Math.max(500, 3_000 - startupMs - 600)));
    expect(mock.stats()).toMatchObject({ in_flight: 50, charges: 0 });
    first.child.kill('SIGKILL');
    expect(await first.exited, first.stderr()).toBe(137);

    // At once: the provider is still processing every key the dead process sent.
    const resumed = await runCli(args);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(resumed.stderr).toContain(`resuming unfinished run ${runId}`);
    expect(resumed.stdout).toContain(`bulkbill run ${runId}: completed`);
    const stats = mock.stats();
    expect(stats.conflicts).toBeGreaterThan(0);
    expect(stats).toMatchObject({ charges: 50, users_charged: 50, duplicate_charges: 0 });
    // Every charge the resume learned of came back as a replay of the dead process's request.
    expect(stats.replays).toBe(50);
    const byUser = await expectReportAgreesWithProvider({
      agent: ws.agent,
      providerUrl: mock.url,
      reportPath: ws.report,
      userIds: rows.map((row) => row.userId),
    });
    expect([...byUser.values()].map((row) => row.status)).toEqual(rows.map(() => 'charged'));
    expect((await statusJson(ws.ledger, runId)).counts).toMatchObject({
      charged: 50,
      failed: 0,
      unknown: 0,
      pending: 0,
    });
  }, 30_000);

  it('crash loop against an always-failing provider: --max-attempts holds across kills; a plain rerun sends nothing; --retry-failed sends again', async () => {
    const USERS = 5;
    const rows = plainUsers(USERS);
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), rows);
    // Every charge answered 503 before anything is charged (no Retry-After): retryable, attempts count.
    const mock = await ws.provider({ latencyMs: 1, failRate: 1 });
    const proxy = await countingProxy(mock);
    // The breaker off: a provider failing every request would otherwise keep the charges
    // pending (probing) for --outage-wait rather than use up their attempts, which this tests.
    const args = runArgs(input, mock, '--max-attempts', '3', '--outage-wait', '0');
    args[args.indexOf('--endpoint') + 1] = `${proxy.url}/charge`;

    // Up to 5 kills, each 200-400 ms into a process; a resume sends at once, so the attempts
    // may be used up before the 5th: a process that ended on its own (exit 1) ends the loop.
    const codes: number[] = [];
    for (let round = 0; round < 5; round++) {
      const cli: CliProcess = children.spawn(args);
      await waitForStderr(cli, ANNOUNCED);
      await sleep(200 + round * 50);
      if (cli.child.exitCode === null && cli.child.signalCode === null) cli.child.kill('SIGKILL');
      const code = await cli.exited;
      codes.push(code);
      expect([137, 1], cli.stderr()).toContain(code);
      if (code === 1) break;
    }
    expect(codes[0]).toBe(137);

    const last = await runCli(args);
    expect(last.code, last.stderr).toBe(1);
    const afterLoop = mock.stats();
    // Six processes, and still at most 3 requests per user in all.
    expect(afterLoop.requests).toBeGreaterThanOrEqual(USERS);
    expect(afterLoop.requests).toBeLessThanOrEqual(3 * USERS);
    expect(afterLoop.charges).toBe(0);
    expect([...proxy.perUser.keys()].sort()).toEqual(rows.map((row) => row.userId).sort());
    for (const [userId, sent] of proxy.perUser) expect(sent, userId).toBeLessThanOrEqual(3);
    expect(last.stderr).toContain('--retry-failed');
    const runId = announcedRunId(last.stderr);
    const report = await readReport(ws.report);
    expect(report).toHaveLength(USERS);
    for (const row of report) {
      expect(Number(row.attempts), row.user_id).toBeLessThanOrEqual(3);
      // Failed, unless a kill cut off an attempt whose 503 the ledger never heard: then unknown.
      expect(row.status, row.user_id).toBe(row.ambiguous === 'true' ? 'unknown' : 'failed');
    }
    const ended = await statusJson(ws.ledger, runId);
    expect(ended.counts.failed + ended.counts.unknown).toBe(USERS);
    expect(ended.counts.pending).toBe(0);

    // A plain rerun leaves them as they are and says how to retry them.
    const plain = await runCli(args);
    expect(plain.code, plain.stderr).toBe(1);
    expect(plain.stderr).toContain('--retry-failed');
    expect(mock.stats().requests).toBe(afterLoop.requests);

    // --retry-failed: a new round of (at most) 3 attempts each, with the same keys.
    const retried = await runCli([...args, '--retry-failed']);
    expect(retried.code, retried.stderr).toBe(1);
    expect(retried.stderr).toContain(`resuming unfinished run ${runId}`);
    expect(retried.stderr).toContain(`${USERS} failed or unknown charges reopened`);
    const afterRetry = mock.stats();
    expect(afterRetry.requests).toBeGreaterThan(afterLoop.requests);
    expect(afterRetry.requests - afterLoop.requests).toBeLessThanOrEqual(3 * USERS);
    for (const [userId, sent] of proxy.perUser) expect(sent, userId).toBeLessThanOrEqual(6);
    expect(afterRetry.charges).toBe(0);
    const again = await statusJson(ws.ledger, runId);
    expect(again.counts.failed + again.counts.unknown).toBe(USERS);
  }, 40_000);

  it('status without --run-id lists every run; status --user without --run-id finds the user in every run', async () => {
    const rows = plainUsers(60);
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), rows);
    const nextInput = await writeCsvInput(join(ws.dir, 'next.csv'), [
      ...rows,
      { userId: 'only-next', amount: 5, currency: 'EUR' },
    ]);
    const mock = await ws.provider({ latencyMs: 150 });

    const first = children.spawn(runArgs(input, mock, '--concurrency', '5'));
    const runId = await waitForNewRun(first);
    await pollUntil('10 charges made', async () => (mock.stats().charges >= 10 ? true : undefined));
    first.child.kill('SIGINT');
    expect(await first.exited, first.stderr()).toBe(130);
    const second = await runCli(
      runArgs(nextInput, mock, '--run-id', 'next', '--new-cycle', '--concurrency', '61'),
    );
    expect(second.code, second.stderr).toBe(0);
    expect(second.stderr).toContain('new run next');

    const [listed, listedJson, found, foundJson, onlyNext, nobody] = await Promise.all([
      runCli(['status', '--ledger', ws.ledger]),
      runCli(['status', '--ledger', ws.ledger, '--json']),
      runCli(['status', '--ledger', ws.ledger, '--user', 'user-3']),
      runCli(['status', '--ledger', ws.ledger, '--user', 'user-3', '--json']),
      runCli(['status', '--ledger', ws.ledger, '--user', 'only-next', '--json']),
      runCli(['status', '--ledger', ws.ledger, '--user', 'nobody']),
    ]);
    expect(listed.code, listed.stderr).toBe(0);
    expect(listed.stdout).toContain(`2 runs in ${ws.ledger}`);
    expect(listed.stdout).toMatch(new RegExp(`${runId}: not finished`));
    expect(listed.stdout).toMatch(/ {2}next: finished /);

    expect(listedJson.code, listedJson.stderr).toBe(0);
    const { runs } = JSON.parse(listedJson.stdout) as {
      runs: Array<{
        runId: string;
        finishedAt?: string;
        total: number;
        counts: Record<string, number>;
      }>;
    };
    expect(runs.map((run) => run.runId).sort()).toEqual([runId, 'next'].sort());
    const byId = new Map(runs.map((run) => [run.runId, run]));
    expect(byId.get(runId)?.finishedAt).toBeUndefined();
    expect(byId.get(runId)?.total).toBe(60);
    expect(byId.get(runId)?.counts.pending).toBeGreaterThan(0);
    expect(byId.get('next')?.finishedAt).toEqual(expect.any(String));
    expect(byId.get('next')?.counts).toMatchObject({ charged: 61, pending: 0 });

    expect(found.code, found.stderr).toBe(0);
    expect(found.stdout).toContain(`user-3 in run ${runId}:`);
    expect(found.stdout).toContain('user-3 in run next: charged');
    expect(foundJson.code, foundJson.stderr).toBe(0);
    const charges = foundJson.stdout
      .split('\n')
      .filter((line) => line.trim() !== '')
      .map((line) => JSON.parse(line) as { runId: string; userId: string; state: string });
    expect(charges.map((charge) => charge.runId).sort()).toEqual([runId, 'next'].sort());
    for (const charge of charges) expect(charge.userId).toBe('user-3');
    expect(charges.find((charge) => charge.runId === 'next')?.state).toBe('charged');

    expect(onlyNext.code, onlyNext.stderr).toBe(0);
    const onlyLines = onlyNext.stdout.split('\n').filter((line) => line.trim() !== '');
    expect(onlyLines.map((line) => JSON.parse(line) as { runId: string })).toEqual([
      expect.objectContaining({ runId: 'next', userId: 'only-next', state: 'charged' }),
    ]);
    expect(nobody.code).toBe(2);
    expect(nobody.stderr).toContain('no user nobody in any of the 2 runs');
  }, 30_000);
});
