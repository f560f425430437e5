import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type Browser, chromium, type Page } from 'playwright-core';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteLedger } from '../../src/ledger/sqlite-ledger.js';
import {
  plainUsers,
  useCliWorkspace,
  waitForStderr,
  writeCsvInput,
} from '../helpers/billing-cycle.js';
import { type CliProcess, runCli } from '../helpers/cli.js';
import { useChildren } from '../helpers/distributed.js';
import { metricValue, parsePrometheus, sumOf } from '../helpers/prometheus.js';

// The dashboard in real headless Chromium (Debian's, driven by playwright-core) during a real
// `bulkbill run` against the mock provider: progress rises, the charts draw, a searched user's
// attempts show; the run's /metrics agree with its ledger at the end; a credential given through
// --header is in no log line, metric, page or API answer; and a dashboard off loopback is
// refused without a token, and answers 401 to every request without it.
// With BULKBILL_SCREENSHOT=<path>, the finished run's page is saved there (docs/dashboard.png).

// What the functions run in the page read of it (the project's types hold no DOM).
interface PageElement {
  readonly textContent: string | null;
  getAttribute(name: string): string | null;
}
declare const document: {
  querySelector(selector: string): PageElement | null;
  querySelectorAll(selector: string): Iterable<PageElement>;
};

const CANARY = 'sk_live_dash_canary_3c9e71f0';
const env = { BULKBILL_CANARY: CANARY };
const CHROMIUM = '/usr/bin/chromium';
const USERS = 1_500;

const ws = useCliWorkspace('bulkbill-dashboard-');
const children = useChildren();
let browser: Browser;

beforeAll(async () => {
  // The flags the machine needs: its closed network refuses Chromium's background connections.
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}, 30_000);

afterAll(async () => {
  await browser?.close();
});

async function text(url: string, headers: Record<string, string> = {}) {
  const answer = await request(url, { headers });
  return { status: answer.statusCode, headers: answer.headers, body: await answer.body.text() };
}

/** A printed `… on http://host:port/…` URL of the process's stderr. */
async function urlOf(cli: CliProcess, pattern: RegExp): Promise<string> {
  return (await waitForStderr(cli, pattern))[1] as string;
}

async function intOf(page: Page, selector: string): Promise<number> {
  return Number(await page.textContent(selector));
}

describe('the dashboard of a run', () => {
  it('shows a live run in Chromium: progress rises, charts draw, a user search shows the attempts; metrics agree with the ledger; the canary is nowhere', async () => {
    const mock = await ws.provider({
      latencyMs: 120,
      jitter: 0.3,
      declineRate: 0.05,
      failRate: 0.04,
      apiKey: CANARY,
      seed: 12,
    });
    const input = await writeCsvInput(join(ws.dir, 'cycle.csv'), plainUsers(USERS));
    const logFile = join(ws.dir, 'run.log');
    const run = children.spawn(
      [
        'run',
        input,
        '--endpoint',
        `${mock.url}/charge`,
        '--ledger',
        ws.ledger,
        '--run-id',
        'dash-1',
        '--concurrency',
        '24',
        '--header',
        'Authorization: Bearer ${BULKBILL_CANARY}',
        '--dashboard',
        '0',
        '--metrics-port',
        '0',
        '--log-file',
        logFile,
        '--log-level',
        'debug',
        '--linger',
        '60s',
        '--report',
        ws.report,
      ],
      { env },
    );
    const dashboard = await urlOf(run, /dashboard on (http:\/\/127\.0\.0\.1:\d+\/)/);
    const metricsUrl = await urlOf(run, /metrics on (http:\/\/127\.0\.0\.1:\d+\/metrics)/);
    const seen: string[] = [];
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const errors: string[] = [];
    page.on('pageerror', (error) => errors.push(error.message));
    page.on('response', async (response) => {
      if (response.url().includes('/api/') && !response.url().includes('/events')) {
        seen.push(await response.text().catch(() => ''));
      }
    });
    await page.goto(dashboard);
    await page.waitForSelector('body[data-ready="1"]');
    expect(await page.textContent('#run-id')).toContain('dash-1');

    // Progress rises while the run bills, over the event stream.
    await page.waitForFunction(() => Number(document.querySelector('#done')?.textContent) > 0);
    const early = await intOf(page, '#done');
    expect(early).toBeLessThan(USERS);
    await page.waitForFunction(
      (before) => Number(document.querySelector('#done')?.textContent) > before,
      early,
    );
    expect(await page.textContent('#live')).toMatch(/live/i);
    expect(await page.textContent('#stream-status')).toMatch(/connected/);
    expect(await intOf(page, '#total')).toBe(USERS);

    // The charts draw what the run does.
    for (const chart of ['throughput', 'latency', 'inflight', 'retries', 'refusals']) {
      await page.waitForFunction(
        (id) => Number(document.querySelector(`#chart-${id}`)?.getAttribute('data-points')) > 0,
        chart,
      );
    }

    // Search a user billed early: the charge and its attempts.
    await page.fill('#user-search', 'user-0');
    await page.click('#user-search-go');
    await page.waitForSelector('tr[data-testid="attempt-row"]');
    expect(await page.textContent('#user-state')).toMatch(/charged|declined|failed|pending/);
    expect(await page.locator('tr[data-testid="attempt-row"]').count()).toBeGreaterThan(0);
    await page.fill('#user-search', 'user-nobody');
    await page.press('#user-search', 'Enter');
    await page.waitForSelector('#user-missing');

    // The run ends (its dashboard and metrics linger); the page says so.
    await waitForStderr(run, /stay up for/, 60_000);
    await page.waitForFunction(
      (total) => Number(document.querySelector('#done')?.textContent) === total,
      USERS,
      { timeout: 15_000 },
    );
    await page.waitForFunction(
      () => /finished/i.test(document.querySelector('#live')?.textContent ?? ''),
      undefined,
      {
        timeout: 15_000,
      },
    );

    // A problem of the run, from its table to its attempts.
    await page.waitForSelector('tr[data-testid="problem-row"]');
    const declinedUser = await page.getAttribute('tr[data-testid="problem-row"]', 'data-user');
    await page.selectOption('#problem-state', 'declined');
    await page.waitForFunction(() =>
      [...document.querySelectorAll('tr[data-testid="problem-row"]')].every((row) =>
        /declined/.test(row.textContent ?? ''),
      ),
    );
    await page.fill('#user-search', declinedUser as string);
    await page.click('#user-search-go');
    await page.waitForFunction(() =>
      /declined|failed|unknown/.test(document.querySelector('#user-state')?.textContent ?? ''),
    );
    await page.selectOption('#problem-state', 'all');
    const screenshot = process.env.BULKBILL_SCREENSHOT;
    if (screenshot) {
      await page.fill('#user-search', declinedUser as string);
      await page.click('#user-search-go');
      await page.waitForTimeout(500);
      await page.screenshot({ path: screenshot });
    }
    const html = await page.content();
    expect(errors).toEqual([]);

    // The run's metrics at its end agree with its ledger.
    const metricsText = (await text(metricsUrl)).body;
    const metrics = parsePrometheus(metricsText);
    for (const sample of metrics) expect(sample.name).toMatch(/^bulkbill_/);
    const ledger = new SqliteLedger({ path: ws.ledger });
    const counts = await ledger.counts('dash-1');
    const history = await ledger.attemptHistory('dash-1', 'user-0');
    await ledger.close();
    expect(counts.pending).toBe(0);
    for (const state of ['charged', 'declined', 'failed', 'unknown'] as const) {
      expect(metricValue(metrics, 'bulkbill_charges_ended_total', { state }), state).toBe(
        counts[state],
      );
      expect(metricValue(metrics, 'bulkbill_charges', { run_id: 'dash-1', state }), state).toBe(
        counts[state],
      );
    }
    const attempts = sumOf(metrics, 'bulkbill_attempts_total');
    expect(attempts).toBe(mock.stats().requests);
    expect(metricValue(metrics, 'bulkbill_request_duration_seconds_count')).toBe(attempts);
    expect(sumOf(metrics, 'bulkbill_attempts_by_status_total')).toBe(attempts);
    expect(metricValue(metrics, 'bulkbill_retries_total')).toBeGreaterThan(0);
    expect(history.length).toBeGreaterThan(0);
    // The page's /metrics is the run's too.
    const viaDashboard = parsePrometheus((await text(`${dashboard}metrics`)).body);
    expect(metricValue(viaDashboard, 'bulkbill_charges_ended_total', { state: 'charged' })).toBe(
      counts.charged,
    );

    // The log: a line per change of the run and per charge that did not end charged, no
    // info line per charge; and no credential anywhere.
    const lines = (await readFile(logFile, 'utf8'))
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as { level: number; msg: string });
    const info = lines.filter((line) => line.level === 30);
    expect(info.length).toBeLessThan(20);
    expect(info.map((line) => line.msg)).toContain('billing started');
    expect(info.map((line) => line.msg)).toContain('run completed');
    expect(lines.filter((line) => line.msg === 'charge declined')).toHaveLength(counts.declined);

    run.child.kill('SIGINT');
    expect(await run.exited).toBe(0);
    const everything = [
      run.stdout(),
      run.stderr(),
      await readFile(logFile, 'utf8'),
      metricsText,
      html,
      ...seen,
    ].join('\n');
    expect(seen.length).toBeGreaterThan(5);
    expect(everything).not.toContain(CANARY);
  }, 120_000);

  it('off loopback, refuses to start without a token (nobody charged) and answers 401 to any request without it', async () => {
    const mock = await ws.provider({ latencyMs: 5 });
    const input = await writeCsvInput(join(ws.dir, 'cycle.csv'), plainUsers(20));
    const common = ['--endpoint', `${mock.url}/charge`, '--ledger', ws.ledger];
    const refused = await runCli(
      ['run', input, ...common, '--dashboard', '0', '--dashboard-host', '0.0.0.0'],
      { env: { BULKBILL_DASHBOARD_TOKEN: '' } },
    );
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/token/);
    expect(mock.stats().requests).toBe(0);
    const billed = await runCli(['run', input, ...common, '--run-id', 'open-1']);
    expect(billed.code, billed.stderr).toBe(0);
    const alone = await runCli(['dashboard', '--ledger', ws.ledger, '--host', '0.0.0.0'], {
      env: { BULKBILL_DASHBOARD_TOKEN: '' },
    });
    expect(alone.code).toBe(2);
    expect(alone.stderr).toMatch(/token/);

    const token = 'dash-token-5f2a';
    const served = children.spawn(
      ['dashboard', '--ledger', ws.ledger, '--host', '0.0.0.0', '--port', '0'],
      { env: { BULKBILL_DASHBOARD_TOKEN: token } },
    );
    const port = (await waitForStderr(served, /on http:\/\/0\.0\.0\.0:(\d+)\//))[1];
    const base = `http://127.0.0.1:${port}`;
    for (const path of [
      '/',
      '/assets/app.js',
      '/api/runs',
      '/api/runs/open-1',
      '/api/runs/open-1/users/user-1',
      '/api/runs/open-1/events',
      '/metrics',
    ]) {
      const answer = await text(`${base}${path}`);
      expect(answer.status, path).toBe(401);
      expect(answer.body, path).not.toContain('user-1');
      const wrong = await text(`${base}${path}`, { authorization: 'Bearer nope' });
      expect(wrong.status, path).toBe(401);
    }
    const ok = await text(`${base}/api/runs/open-1`, { authorization: `Bearer ${token}` });
    expect(ok.status).toBe(200);
    expect(JSON.parse(ok.body)).toMatchObject({ runId: 'open-1', done: 20 });

    // The browser opens it with ?token= once; the cookie carries it from there, stream included.
    const page = await browser.newPage();
    await page.goto(`${base}/?token=${token}&run=open-1`);
    await page.waitForSelector('body[data-ready="1"]');
    expect(page.url()).not.toContain(token);
    expect(await page.textContent('#done')).toBe('20');
    await page.waitForFunction(() =>
      /connected/.test(document.querySelector('#stream-status')?.textContent ?? ''),
    );
    const other = await browser.newPage();
    const response = await other.goto(`${base}/`);
    expect(response?.status()).toBe(401);
    await other.close();
    await page.close();
  }, 60_000);
});
