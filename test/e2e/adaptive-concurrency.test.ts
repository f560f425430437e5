import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { plainUsers, useCliWorkspace, writeCsvInput } from '../helpers/billing-cycle.js';
import { runCli, spawnCli } from '../helpers/cli.js';

// `--concurrency auto`, `--deadline` and the circuit breaker, end to end: the real CLI as a
// child process against a real mock provider on port 0 with a capacity model.

const ws = useCliWorkspace('bulkbill-e2e-adaptive-', { seed: 11 });

function runArgs(input: string, url: string, ...flags: string[]): string[] {
  return [
    'run',
    input,
    ...['--endpoint', `${url}/charge`, '--ledger', ws.ledger, '--report', ws.report],
    '--json',
    ...flags,
  ];
}

// biome-ignore lint/suspicious/noExplicitAny: the summary's JSON, read field by field.
function summaryOf(stdout: string): Record<string, any> {
  return JSON.parse(stdout.trim().split('\n').at(-1) ?? '{}');
}

describe('--concurrency auto', () => {
  it('finds a capacity of 300 (--overload 503) without being told: ≥ 80% of capacity/latency, < 2% refused', async () => {
    // 30,000: the cold start's overshoot (one doubling past 300, about 200 refusals) is a fixed cost
    // the 2% must carry; on 20,000 users one CI run saw 2.12% in all.
    const USERS = 30_000;
    const mock = await ws.provider({
      latencyMs: 200,
      jitter: 0.05,
      capacity: 300,
      overload: '503',
    });
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), plainUsers(USERS));
    const cli = spawnCli(runArgs(input, mock.url, '--concurrency', 'auto'));
    // The provider's charges over time: the pace once the capacity is found (past the first
    // fifth of the users, a cold start of about ten round trips) up to the last tenth.
    const samples: Array<{ at: number; charges: number }> = [];
    while (cli.child.exitCode === null && cli.child.signalCode === null) {
      samples.push({ at: performance.now(), charges: mock.stats().charges });
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const code = await cli.exited;
    expect(code, cli.stderr().slice(-2_000)).toBe(0);
    const summary = summaryOf(cli.stdout());
    const stats = mock.stats();
    expect(stats).toMatchObject({ charges: USERS, users_charged: USERS, duplicate_charges: 0 });
    const from = samples.find((sample) => sample.charges >= USERS * 0.2);
    const to = samples.find((sample) => sample.charges >= USERS * 0.9);
    expect(from && to).toBeTruthy();
    const perSecond =
      (((to?.charges ?? 0) - (from?.charges ?? 0)) * 1_000) / ((to?.at ?? 0) - (from?.at ?? 1));
    // capacity ÷ latency = 1,500 charges/s.
    expect(
      perSecond,
      `steady pace ${perSecond}/s; whole run ${summary.throughputPerSecond}/s`,
    ).toBeGreaterThanOrEqual(0.8 * 1_500);
    expect(stats.rejected_503 / stats.requests).toBeLessThan(0.02);
    expect(summary.dispatch).toMatchObject({ mode: 'auto' });
    // `status` tells how the run was paced, from the ledger.
    const status = await runCli(['status', '--ledger', ws.ledger, '--run-id', summary.runId]);
    expect(status.stdout).toMatch(/concurrency auto: limit \d+ \(provider capacity about \d+\)/);
    expect(summary.dispatch.capacity).toBeGreaterThan(250);
    expect(summary.dispatch.capacity).toBeLessThan(350);
  }, 90_000);
});

describe('--deadline', () => {
  it('finishes in time at about the fewest requests in flight that do: the provider sees under twice the plan', async () => {
    const USERS = 300;
    // 300 charges at 200 ms in 12 s: 300 × 0.2 s × 1.1 ÷ 12 s = 5.5, so 6 in flight.
    const mock = await ws.provider({ latencyMs: 200, jitter: 0.05 });
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), plainUsers(USERS));
    const result = await runCli(runArgs(input, mock.url, '--deadline', '12s'));
    expect(result.code, result.stderr.slice(-2_000)).toBe(0);
    const summary = summaryOf(result.stdout);
    // Met: the run ended before the deadline it read at its start (the summary's own check).
    expect(summary.deadlineMet).toBe(true);
    expect(summary.wallMs).toBeLessThan(12_000);
    const status = await runCli(['status', '--ledger', ws.ledger, '--run-id', summary.runId]);
    expect(status.stdout).toMatch(/deadline .*: met, with at most \d+ in flight/);
    // Not by rushing: it took most of the time it had, at few requests in flight.
    expect(summary.wallMs).toBeGreaterThan(6_000);
    expect(mock.stats().charges).toBe(USERS);
    // The plan's need: 6 (re-planned as it goes, with the latency seen); the provider saw about
    // that many at once, not the 1,000 --max-concurrency allows.
    expect(mock.stats().max_in_flight).toBeGreaterThanOrEqual(4);
    expect(mock.stats().max_in_flight).toBeLessThan(2 * 6);
  }, 60_000);

  it('says early and loudly when the deadline cannot be met, runs at the most allowed, and exits 3 when it ends late', async () => {
    const USERS = 120;
    const mock = await ws.provider({ latencyMs: 200, jitter: 0 });
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), plainUsers(USERS));
    // 120 × 200 ms at most 4 in flight: 6 s; the deadline is 2 s away.
    const result = await runCli(
      runArgs(input, mock.url, '--deadline', '2s', '--max-concurrency', '4'),
    );
    expect(result.stderr).toMatch(/DEADLINE AT RISK: max-concurrency/);
    expect(result.code, result.stderr.slice(-2_000)).toBe(3);
    const summary = summaryOf(result.stdout);
    expect(summary.deadlineMet).toBe(false);
    expect(summary.counts.charged).toBe(USERS);
    expect(mock.stats().max_in_flight).toBe(4);
  }, 60_000);
});

describe('the circuit breaker', () => {
  it('fails nobody through an outage, and the provider sees only a few requests a second while it lasts', async () => {
    const USERS = 600;
    const OUTAGE_MS = 8_000;
    const mock = await ws.provider({ latencyMs: 50, jitter: 0 });
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), plainUsers(USERS));
    const cli = spawnCli(runArgs(input, mock.url, '--concurrency', '20', '--max-attempts', '3'));
    while (mock.stats().charges < 100) await new Promise((resolve) => setTimeout(resolve, 20));
    await mock.outage(OUTAGE_MS);
    const code = await cli.exited;
    expect(code, cli.stderr().slice(-2_000)).toBe(0);
    const stats = mock.stats();
    expect(stats).toMatchObject({ charges: USERS, users_charged: USERS, duplicate_charges: 0 });
    const summary = summaryOf(cli.stdout());
    expect(summary.counts).toMatchObject({ charged: USERS, failed: 0, unknown: 0 });
    expect(summary.dispatch.breaker.opened).toBeGreaterThanOrEqual(1);
    // It reopened only on a failed probe: late answers to requests sent before the outage
    // (successes among them) neither closed it nor let a new wave go.
    expect(summary.dispatch.breaker.opened).toBeLessThanOrEqual(
      summary.dispatch.breaker.probes + 1,
    );
    // Before it opened: the 20 in flight and the window's 10; then probes, a few a second at most.
    expect(stats.outage_503).toBeLessThanOrEqual(20 + 10 + 3 * (OUTAGE_MS / 1_000));
    expect(cli.stderr()).toMatch(/PROVIDER DOWN/);
  }, 60_000);
});

describe('from the config file', () => {
  it('takes concurrency "auto" and its bounds as the flags do', async () => {
    const USERS = 200;
    const mock = await ws.provider({ latencyMs: 20, jitter: 0 });
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), plainUsers(USERS));
    const config = join(ws.dir, 'bulkbill.config.json');
    await writeFile(config, JSON.stringify({ concurrency: 'auto', maxConcurrency: 4 }));
    const result = await runCli(runArgs(input, mock.url, '--config', config));
    expect(result.code, result.stderr.slice(-2_000)).toBe(0);
    const summary = summaryOf(result.stdout);
    expect(summary.dispatch).toMatchObject({ mode: 'auto' });
    expect(summary.counts.charged).toBe(USERS);
    expect(mock.stats().max_in_flight).toBeLessThanOrEqual(4);
  }, 60_000);
});

describe('operator mistakes with the new flags', () => {
  it('refuses auto or --deadline with a fixed --global-concurrency before anything is enqueued, and bounds that cross', async () => {
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), plainUsers(3));
    const mock = await ws.provider({ latencyMs: 1 });
    // Refused before Redis is even asked (nothing listens there).
    const redis = ['--redis', 'redis://127.0.0.1:1', '--prefix', 'bulkbill-test-never'];
    const fixed = ['--global-concurrency', '10'];
    const auto = await runCli([
      ...runArgs(input, mock.url, '--concurrency', 'auto', ...fixed),
      ...redis,
    ]);
    expect(auto.code).toBe(2);
    expect(auto.stderr).toMatch(
      /--global-concurrency fixes the queue's concurrency, which --concurrency auto sets for every worker of the queue: give one of them/,
    );
    const deadline = await runCli([
      ...runArgs(input, mock.url, '--deadline', '1h', ...fixed),
      ...redis,
    ]);
    expect(deadline.code).toBe(2);
    expect(deadline.stderr).toMatch(
      /--global-concurrency fixes the queue's concurrency, which --deadline sets/,
    );
    const crossedRedis = await runCli([
      ...runArgs(input, mock.url, '--concurrency', 'auto', '--min-concurrency', '10'),
      ...['--max-concurrency', '5', ...redis],
    ]);
    expect(crossedRedis.code).toBe(2);
    expect(crossedRedis.stderr).toMatch(/--min-concurrency \(10\) must not be above/);
    const crossed = await runCli(
      runArgs(
        input,
        mock.url,
        '--concurrency',
        'auto',
        '--min-concurrency',
        '10',
        '--max-concurrency',
        '5',
      ),
    );
    expect(crossed.code).toBe(2);
    expect(crossed.stderr).toMatch(
      /--min-concurrency \(10\) must not be above --max-concurrency \(5\)/,
    );
    const noOffset = await runCli(runArgs(input, mock.url, '--deadline', '2026-12-02T09:00'));
    expect(noOffset.code).toBe(2);
    expect(noOffset.stderr).toMatch(
      /--deadline: expected a duration .* or a time with its date and offset/,
    );
    const word = await runCli(runArgs(input, mock.url, '--concurrency', 'lots'));
    expect(word.code).toBe(2);
    expect(word.stderr).toMatch(/--concurrency: expected a whole number or auto, got "lots"/);
    expect(mock.stats().requests).toBe(0);
  }, 60_000);
});
