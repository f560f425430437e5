import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Browser, chromium } from 'playwright-core';
import { Agent, request } from 'undici';
import { ledgerSource } from '../../src/cli/dashboard.js';
import { LATENCY_BUCKETS_MS } from '../../src/domain/samples.js';
import type {
  AttemptStart,
  ChargeOutcome,
  ImportRow,
  RunSample,
  StateCounts,
} from '../../src/ledger/ledger.js';
import { SqliteLedger } from '../../src/ledger/sqlite-ledger.js';
import type {
  ProblemPage,
  RunView,
  SeriesPage,
  UserView,
} from '../../src/observe/dashboard/api.js';
import { startDashboard } from '../../src/observe/dashboard/server.js';
import { latencyBucket } from '../../src/observe/sampler.js';
import {
  finiteMedian,
  formatCount,
  formatMebibytes,
  formatMilliseconds,
  formatRatio,
  formatSeconds,
  median,
} from '../lib/figures.js';
import { machineBusyCpuMs } from '../lib/os-counters.js';
import { describeQuietWait, type QuietWait, waitForQuietMachine } from '../lib/quiet-machine.js';
import {
  type BenchSettings,
  markdownTable,
  type ScenarioReport,
  type Verdict,
} from '../lib/report.js';
import { DISTURBED_OTHER_SHARE } from '../lib/sample-run.js';

export const DASHBOARD_LOAD = 'dashboard-load';

/** The issue's target: the page of a finished 100,000-user run is ready in under a second. */
const TARGET_READY_MS = 1_000;
/** The pace the run is made up at: a 100,000-user run at ~600 charges/s lasts ~170 s. */
const CHARGES_PER_SECOND = 600;
/** `--concurrency`: the limit every sample shows. */
const CONCURRENCY = 1_000;
/** Where the provider answers: latencies around 1.6 s. */
const LATENCY_MEAN_MS = 1_600;
const LATENCY_SD_MS = 120;
/** The unknown charges' first attempt timed out after the request was sent (`--timeout 10s`). */
const TIMEOUT_MS = 10_000;
/** How far in the past the made-up run ended: long enough that nothing of it reads as live. */
const RUN_AGO_MS = 15 * 60_000;
/** Users per startAttempts call and per import batch. */
const BATCH = 1_000;
/** A sample waits at most this long for quiet: it lasts under a second. */
const QUIET_TIMEOUT_MS = 10_000;
/** Attempts per sample while neighbours disturb it. */
const MAX_ATTEMPTS = 4;
const CHROMIUM = '/usr/bin/chromium';
/** The flags the machine needs: its closed network refuses Chromium's background connections. */
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const READY_SELECTOR = 'body[data-ready="1"]';
const TINY_PAGE =
  '<!doctype html><html><head><meta charset="utf-8"><title>baseline</title></head><body data-ready="1">ok</body></html>';

type Kind = 'charged' | 'retried' | 'declined' | 'failed' | 'unknown';

/** One attempt of the made-up run, as the engine would have sent and recorded it. */
interface PlannedAttempt {
  readonly n: number;
  /** Epoch ms the request left. */
  readonly at: number;
  readonly latencyMs: number;
  readonly status: number | undefined;
  /** What the attempt left the charge in. */
  readonly state: 'charged' | 'declined' | 'failed' | 'unknown' | 'pending';
  readonly error: string | undefined;
  /** Sent and unanswered (a timeout): the provider may have charged. */
  readonly ambiguous: boolean;
}

interface PlannedUser {
  readonly userId: string;
  readonly kind: Kind;
  readonly attempts: readonly PlannedAttempt[];
}

/** What building the run in the ledger took. */
export interface BuiltRun {
  readonly runId: string;
  readonly users: number;
  readonly kinds: Readonly<Record<Kind, number>>;
  readonly attempts: number;
  readonly samples: number;
  /** From the first second to the last one sampled, in ms. */
  readonly runSpanMs: number;
  readonly createRunMs: number;
  readonly recordMs: number;
  readonly samplesMs: number;
  /** finishIfComplete's answer: false while failed or unknown charges remain. */
  readonly finished: boolean;
  /** The ledger file plus its WAL after close. */
  readonly ledgerBytes: number;
  readonly declinedUser: string;
}

/** One navigation of a new browser context, from page.goto to the ready mark. */
export interface LoadSample {
  readonly side: 'static' | 'dashboard';
  readonly index: number;
  readonly warmUp: boolean;
  readonly readyMs: number;
  /** CPU of everything but this process and its children (Chromium) meanwhile, in ms. */
  readonly otherCpuMs: number | undefined;
  /** CPU of this process (the dashboard server, the ledger, Playwright) and Chromium's. */
  readonly ownCpuMs: number | undefined;
  readonly quietWait: QuietWait;
  readonly disturbed: boolean;
  /** Disturbed attempts at this sample thrown away. */
  readonly rerun: number;
  readonly pageErrors: readonly string[];
  /** What the dashboard page showed once ready (absent on the static side). */
  readonly facts: PageFacts | undefined;
}

/** What the page showed, and when its API answers arrived, as the page measured them. */
export interface PageFacts {
  readonly runId: string | null;
  readonly done: string | null;
  readonly problemCount: string | null;
  readonly problemRows: number;
  readonly banner: string;
  /** The page's own clock, in ms from navigation start: the document's answer read. */
  readonly documentMs: number;
  /** The scripts and styles (/assets/…) read. */
  readonly assetsMs: number;
  readonly domContentLoadedMs: number;
  /** The last /api/ answer read. */
  readonly lastApiMs: number;
  /** body[data-ready] set (a MutationObserver installed before the page's scripts). */
  readonly readyMs: number | null;
  /** Resource timing of each /api/ fetch: path, start and end in ms from navigation start. */
  readonly api: readonly {
    readonly path: string;
    readonly startMs: number;
    readonly endMs: number;
    readonly bytes: number;
  }[];
}

/** One API answer, fetched alone with undici. */
export interface ApiFigure {
  readonly name: string;
  readonly path: string;
  readonly status: number;
  readonly bytes: number;
  readonly samplesMs: readonly number[];
  readonly medianMs: number;
  /** The page's own resource timing of the same request during its loads (median; end − start). */
  readonly inPageMedianMs: number | undefined;
}

export interface DashboardLoadRaw {
  readonly run: BuiltRun;
  readonly sampleCount: number;
  readonly targetReadyMs: number;
  readonly dashboardMedianMs: number;
  readonly dashboardP90Ms: number;
  readonly staticMedianMs: number;
  readonly staticP90Ms: number;
  /** dashboard median / static median. */
  readonly ratio: number;
  readonly verdict: Verdict;
  /** Medians of the page's own clock (PageFacts), ms from navigation start. */
  readonly timeline: {
    readonly documentMs: number;
    readonly assetsMs: number;
    readonly domContentLoadedMs: number;
    readonly lastApiMs: number;
    readonly readyMs: number;
  };
  readonly api: readonly ApiFigure[];
  readonly samples: readonly LoadSample[];
}

/**
 * The web dashboard's page load for a finished 100,000-user run: the run is built in a SQLite
 * ledger with the ledger's own API (import, attempts, outcomes, per-second samples), served by
 * the real dashboard server in this process, and loaded in headless Chromium, a new context
 * (no cache) per sample, against a tiny static page served by node:http as the baseline.
 */
export async function runDashboardLoad(
  settings: BenchSettings,
): Promise<ScenarioReport<DashboardLoadRaw>> {
  const users = settings.quick ? 20_000 : 100_000;
  const sampleCount = settings.quick ? 3 : 7;
  const { progress } = settings;
  const dir = await mkdtemp(join(tmpdir(), 'bulkbill-bench-dashboard-'));
  const path = join(dir, 'ledger.db');
  const runId = `bench-${DASHBOARD_LOAD}`;
  let browser: Browser | undefined;
  let baseline: Server | undefined;
  let ledger: SqliteLedger | undefined;
  let dashboard: Awaited<ReturnType<typeof startDashboard>> | undefined;
  try {
    progress(`${DASHBOARD_LOAD}: building a finished run of ${formatCount(users)} users`);
    const run = await buildRun(path, runId, users);
    progress(
      `${DASHBOARD_LOAD}: run built: import ${formatSeconds(run.createRunMs)}, ${formatCount(run.attempts)} attempts ${formatSeconds(run.recordMs)}, ${formatCount(run.samples)} samples ${formatSeconds(run.samplesMs)}, ledger ${formatMebibytes(run.ledgerBytes)}`,
    );

    ledger = new SqliteLedger({ path });
    dashboard = await startDashboard({ source: ledgerSource(ledger), port: 0 });
    baseline = await startStaticServer();
    const query = `?run=${encodeURIComponent(runId)}`;
    const urls = {
      dashboard: `${dashboard.url}${query}`,
      static: `http://127.0.0.1:${(baseline.address() as AddressInfo).port}/${query}`,
    };
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
    const chromiumBrowser = browser;

    const samples: LoadSample[] = [];
    const measure = async (side: LoadSample['side'], index: number, warmUp: boolean) => {
      const sample = await cleanLoad(chromiumBrowser, urls[side], side, index, warmUp);
      samples.push(sample);
      progress(
        `${DASHBOARD_LOAD}: ${warmUp ? 'warm-up' : `sample ${index}/${sampleCount}`} ${side}: ready in ${Math.round(sample.readyMs)} ms${sample.disturbed ? ' (disturbed)' : ''}${sample.rerun > 0 ? ` (${sample.rerun} disturbed attempt${sample.rerun === 1 ? '' : 's'} thrown away)` : ''}`,
      );
    };
    // A warm-up of each (not counted): Chromium's files, the server's assets, SQLite's pages.
    await measure('static', 0, true);
    await measure('dashboard', 0, true);
    for (let index = 1; index <= sampleCount; index++) {
      // Alternating, and every other pair swaps who goes first: a drifting machine favours neither.
      const order: LoadSample['side'][] =
        index % 2 === 1 ? ['static', 'dashboard'] : ['dashboard', 'static'];
      for (const side of order) await measure(side, index, false);
    }

    progress(`${DASHBOARD_LOAD}: timing each API answer alone (undici, ${sampleCount} each)`);
    const api = await timeApi(dashboard.url, runId, run.declinedUser, sampleCount, samples);
    const answerProblems = await checkAnswers(dashboard.url, run);

    return report({ run, samples, api, answerProblems, sampleCount, users });
  } finally {
    await browser?.close().catch(() => {});
    await dashboard?.close().catch(() => {});
    await ledger?.close().catch(() => {});
    if (baseline !== undefined) await closeServer(baseline);
    await rm(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------------------
// The run

/** A deterministic generator (mulberry32), so every run of the bench builds the same ledger. */
function seeded(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/** Of every 100 users: 95 charged (5 of them on a second attempt, after a 503), 3 declined, 1 failed, 1 unknown. */
function kindOf(index: number): Kind {
  const slot = index % 100;
  if (slot < 5) return 'retried';
  if (slot < 95) return 'charged';
  if (slot < 98) return 'declined';
  return slot === 98 ? 'failed' : 'unknown';
}

function planUsers(users: number, startAt: number): PlannedUser[] {
  const random = seeded(42);
  const latency = () => {
    // Box–Muller: normal around 1.6 s, clipped to where the provider answers.
    const u = Math.max(random(), 1e-12);
    const normal = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * random());
    return Math.round(Math.min(2_400, Math.max(1_100, LATENCY_MEAN_MS + LATENCY_SD_MS * normal)));
  };
  const width = Math.max(7, String(users).length);
  const unavailable = '503 Service Unavailable';
  const timeout = `timeout: no answer in ${TIMEOUT_MS / 1_000} s (UND_ERR_HEADERS_TIMEOUT), after the request was sent: the provider may have charged`;
  const planned: PlannedUser[] = [];
  for (let index = 1; index <= users; index++) {
    const kind = kindOf(index);
    const userId = `user-${String(index).padStart(width, '0')}`;
    const attempts: PlannedAttempt[] = [];
    let at = startAt + Math.floor(((index - 1) * 1_000) / CHARGES_PER_SECOND);
    const next = (attempt: Omit<PlannedAttempt, 'n' | 'at'>) => {
      attempts.push({ n: attempts.length + 1, at, ...attempt });
      // The retry's backoff: 0.5 s, then 1 s, with a little jitter.
      at += attempt.latencyMs + 500 * 2 ** (attempts.length - 1) + Math.floor(random() * 100);
    };
    const retry = (ambiguous: boolean) =>
      next({ latencyMs: latency(), status: 503, state: 'pending', error: unavailable, ambiguous });
    switch (kind) {
      case 'retried':
        retry(false);
        next({
          latencyMs: latency(),
          status: 200,
          state: 'charged',
          error: undefined,
          ambiguous: false,
        });
        break;
      case 'charged':
        next({
          latencyMs: latency(),
          status: 200,
          state: 'charged',
          error: undefined,
          ambiguous: false,
        });
        break;
      case 'declined':
        next({
          latencyMs: latency(),
          status: 402,
          state: 'declined',
          error: 'card_declined',
          ambiguous: false,
        });
        break;
      case 'failed':
        retry(false);
        retry(false);
        next({
          latencyMs: latency(),
          status: 503,
          state: 'failed',
          error: unavailable,
          ambiguous: false,
        });
        break;
      case 'unknown':
        next({
          latencyMs: TIMEOUT_MS,
          status: undefined,
          state: 'pending',
          error: timeout,
          ambiguous: true,
        });
        retry(true);
        next({
          latencyMs: latency(),
          status: 503,
          state: 'unknown',
          error: unavailable,
          ambiguous: true,
        });
        break;
    }
    planned.push({ userId, kind, attempts });
  }
  return planned;
}

async function* importBatches(planned: readonly PlannedUser[]): AsyncIterable<ImportRow[]> {
  const plans = [
    { plan: 'basic', amount: 999 },
    { plan: 'pro', amount: 2_999 },
    { plan: 'team', amount: 9_999 },
  ] as const;
  for (let first = 0; first < planned.length; first += BATCH) {
    yield planned.slice(first, first + BATCH).map((user, offset) => {
      const index = first + offset + 1;
      const { plan, amount } = plans[index % plans.length] as (typeof plans)[number];
      return { line: index + 1, userId: user.userId, amount, currency: 'USD', metadata: { plan } };
    });
  }
}

/** One sample per second, as a billing process's RunSampler would have left them. */
function samplesOf(planned: readonly PlannedUser[]): RunSample[] {
  let firstSecond = Number.POSITIVE_INFINITY;
  let lastSecond = 0;
  for (const user of planned) {
    for (const attempt of user.attempts) {
      firstSecond = Math.min(firstSecond, Math.floor(attempt.at / 1_000));
      lastSecond = Math.max(lastSecond, Math.floor((attempt.at + attempt.latencyMs) / 1_000));
    }
  }
  const seconds = lastSecond - firstSecond + 1;
  const zeros = () => new Array<number>(seconds).fill(0);
  const ended = zeros();
  const attempts = zeros();
  const retries = zeros();
  const refusals = zeros();
  const inFlight = zeros();
  const hists = Array.from({ length: seconds }, () =>
    new Array<number>(LATENCY_BUCKETS_MS.length + 1).fill(0),
  );
  for (const user of planned) {
    for (const attempt of user.attempts) {
      const answered = attempt.at + attempt.latencyMs;
      const second = Math.floor(answered / 1_000) - firstSecond;
      attempts[second] = (attempts[second] ?? 0) + 1;
      if (attempt.state === 'pending') retries[second] = (retries[second] ?? 0) + 1;
      else ended[second] = (ended[second] ?? 0) + 1;
      if (attempt.status === 503 || attempt.status === 429) {
        refusals[second] = (refusals[second] ?? 0) + 1;
      }
      const hist = hists[second] as number[];
      const bucket = latencyBucket(attempt.latencyMs);
      hist[bucket] = (hist[bucket] ?? 0) + 1;
      // In flight at a second's end: sent at or before it, answered after it.
      for (let end = Math.ceil(attempt.at / 1_000); end * 1_000 < answered; end++) {
        const of = end - 1 - firstSecond;
        if (of >= 0 && of < seconds) inFlight[of] = (inFlight[of] ?? 0) + 1;
      }
    }
  }
  const source = `bench:${process.pid}`;
  return Array.from({ length: seconds }, (_, second) => ({
    at: (firstSecond + second) * 1_000,
    source,
    ended: ended[second] ?? 0,
    attempts: attempts[second] ?? 0,
    retries: retries[second] ?? 0,
    refusals: refusals[second] ?? 0,
    inFlight: inFlight[second] ?? 0,
    limit: CONCURRENCY,
    breaker: 'closed' as const,
    hist: hists[second] ?? [],
  }));
}

/** Builds the finished run with the ledger's own API, as `bulkbill run` would have left it. */
async function buildRun(path: string, runId: string, users: number): Promise<BuiltRun> {
  const startAt = Math.floor((Date.now() - RUN_AGO_MS) / 1_000) * 1_000;
  const planned = planUsers(users, startAt);
  const ledger = new SqliteLedger({ path });
  try {
    let started = performance.now();
    await ledger.createRun(
      {
        runId,
        inputHash: `hash-${runId}`,
        inputPath: 'users.csv',
        endpoint: 'http://127.0.0.1:1/charge',
      },
      importBatches(planned),
      () => {},
    );
    const createRunMs = performance.now() - started;

    started = performance.now();
    let attemptCount = 0;
    for (let n = 1; n <= 3; n++) {
      const round = planned.filter((user) => user.attempts.length >= n);
      for (let first = 0; first < round.length; first += BATCH) {
        const batch = round.slice(first, first + BATCH);
        const starts: AttemptStart[] = batch.map((user) => {
          const attempt = user.attempts[n - 1] as PlannedAttempt;
          return {
            userId: user.userId,
            attempts: n,
            ambiguous: user.attempts.slice(0, n - 1).some((earlier) => earlier.ambiguous),
            at: attempt.at,
          };
        });
        const recorded = await ledger.startAttempts(runId, starts);
        const refused = recorded.filter((ok) => !ok).length;
        if (refused > 0) throw new Error(`startAttempts refused ${refused} pending charges`);
        for (const user of batch) {
          const attempt = user.attempts[n - 1] as PlannedAttempt;
          const outcome: ChargeOutcome = {
            userId: user.userId,
            state: attempt.state,
            attempts: n,
            ambiguous: user.attempts.slice(0, n).some((earlier) => earlier.ambiguous),
            httpStatus: attempt.status,
            latencyMs: attempt.latencyMs,
            chargeId: attempt.state === 'charged' ? `ch_${user.userId}` : undefined,
            error: attempt.error,
            firstAttemptAt: user.attempts[0]?.at,
            ...(attempt.state === 'pending' ? { waits: 0 } : {}),
            attempt: { n, at: attempt.at, throttled: false },
          };
          ledger.record(runId, outcome);
          attemptCount++;
        }
      }
    }
    await ledger.flush();
    const recordMs = performance.now() - started;

    started = performance.now();
    const samples = samplesOf(planned);
    for (const sample of samples) await ledger.noteSample(runId, sample);
    const samplesMs = performance.now() - started;

    const finished = await ledger.finishIfComplete(runId);
    await ledger.flush();
    await ledger.close();
    const kinds: Record<Kind, number> = {
      charged: 0,
      retried: 0,
      declined: 0,
      failed: 0,
      unknown: 0,
    };
    for (const user of planned) kinds[user.kind]++;
    const first = samples[0]?.at ?? 0;
    const last = samples.at(-1)?.at ?? 0;
    return {
      runId,
      users,
      kinds,
      attempts: attemptCount,
      samples: samples.length,
      runSpanMs: last + 1_000 - first,
      createRunMs,
      recordMs,
      samplesMs,
      finished,
      ledgerBytes: (await sizeOf(path)) + (await sizeOf(`${path}-wal`)),
      declinedUser: planned.find((user) => user.kind === 'declined')?.userId ?? '',
    };
  } catch (error) {
    await ledger.close().catch(() => {});
    throw error;
  }
}

async function sizeOf(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch {
    return 0;
  }
}

/** What the ledger should count for the run. */
function expectedCounts(kinds: Readonly<Record<Kind, number>>): StateCounts {
  return {
    pending: 0,
    charged: kinds.charged + kinds.retried,
    declined: kinds.declined,
    failed: kinds.failed,
    unknown: kinds.unknown,
    invalid: 0,
  };
}

// ---------------------------------------------------------------------------------------------
// The page in Chromium

async function startStaticServer(): Promise<Server> {
  const body = Buffer.from(TINY_PAGE);
  const server = createServer((_request, response) => {
    response.writeHead(200, {
      'Content-Type': 'text/html; charset=utf-8',
      'Content-Length': body.length,
      'Cache-Control': 'no-cache',
    });
    response.end(body);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  return server;
}

async function closeServer(server: Server): Promise<void> {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

// Run in the page (as a string: tsx's compiled functions may carry helpers the page lacks).
const READY_WATCH = `new MutationObserver((_, observer) => {
  if (document.body?.dataset.ready === '1') {
    globalThis.__benchReadyAt = performance.now();
    observer.disconnect();
  }
}).observe(document, { subtree: true, attributes: true, attributeFilter: ['data-ready'] });`;

const PAGE_FACTS = `(() => {
  const text = (selector) => document.querySelector(selector)?.textContent ?? null;
  const banner = document.querySelector('#banner');
  const resources = performance.getEntriesByType('resource');
  const navigation = performance.getEntriesByType('navigation')[0];
  const lastEnd = (entries) => Math.max(0, ...entries.map((entry) => entry.responseEnd));
  const api = resources
    .filter((entry) => entry.name.includes('/api/') && !entry.name.includes('/events'))
    .map((entry) => {
      const url = new URL(entry.name);
      return {
        path: url.pathname + url.search,
        startMs: entry.startTime,
        endMs: entry.responseEnd,
        bytes: entry.encodedBodySize,
      };
    });
  return {
    runId: text('#run-id'),
    done: text('#done'),
    problemCount: text('#problem-count'),
    problemRows: document.querySelectorAll('#problems tbody tr').length,
    banner: banner && !banner.hidden ? banner.textContent : '',
    documentMs: navigation?.responseEnd ?? 0,
    assetsMs: lastEnd(resources.filter((entry) => entry.name.includes('/assets/'))),
    domContentLoadedMs: navigation?.domContentLoadedEventEnd ?? 0,
    lastApiMs: Math.max(0, ...api.map((entry) => entry.endMs)),
    readyMs: globalThis.__benchReadyAt ?? null,
    api,
  };
})()`;

const clockTicks = (() => {
  try {
    const ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isFinite(ticks) && ticks > 0 ? ticks : 100;
  } catch {
    return 100;
  }
})();

/** This process and its descendants (Chromium's), from /proc: pid → [parent, CPU ticks]. */
function processTable(): Map<number, readonly [parent: number, ticks: number]> {
  const table = new Map<number, readonly [number, number]>();
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return table;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      // utime, stime, and the CPU of children that exited and were reaped (renderers, mostly).
      const ticks = [11, 12, 13, 14].reduce((sum, field) => sum + Number(fields[field] ?? 0), 0);
      table.set(Number(entry), [Number(fields[1]), ticks]);
    } catch {
      // Gone meanwhile.
    }
  }
  return table;
}

function ownTree(): { pids: number[]; cpuMs: number | undefined } {
  const table = processTable();
  if (table.size === 0) return { pids: [], cpuMs: undefined };
  const inTree = new Set<number>([process.pid]);
  // Parents are read before children often enough; a few passes settle the rest.
  for (let changed = true; changed; ) {
    changed = false;
    for (const [pid, [parent]] of table) {
      if (!inTree.has(pid) && inTree.has(parent)) {
        inTree.add(pid);
        changed = true;
      }
    }
  }
  let ticks = 0;
  for (const pid of inTree) ticks += table.get(pid)?.[1] ?? 0;
  return {
    pids: [...inTree].filter((pid) => pid !== process.pid),
    cpuMs: (ticks * 1_000) / clockTicks,
  };
}

/** One navigation, in a new context (no cache, no cookies), from page.goto to the ready mark. */
async function loadOnce(
  browser: Browser,
  url: string,
  side: LoadSample['side'],
): Promise<Omit<LoadSample, 'index' | 'warmUp' | 'rerun'>> {
  const quietWait = await waitForQuietMachine({
    serverPids: ownTree().pids,
    timeoutMs: QUIET_TIMEOUT_MS,
  });
  const context = await browser.newContext();
  if (side === 'dashboard') await context.addInitScript({ content: READY_WATCH });
  try {
    const page = await context.newPage();
    const pageErrors: string[] = [];
    page.on('pageerror', (error) => pageErrors.push(error.message));
    const ownBefore = ownTree().cpuMs;
    const machineBefore = machineBusyCpuMs();
    const started = performance.now();
    await page.goto(url, { waitUntil: 'commit' });
    await page.waitForSelector(READY_SELECTOR, { state: 'attached', timeout: 60_000 });
    const readyMs = performance.now() - started;
    const machineAfter = machineBusyCpuMs();
    const ownAfter = ownTree().cpuMs;
    const ownCpuMs =
      ownBefore === undefined || ownAfter === undefined ? undefined : ownAfter - ownBefore;
    const otherCpuMs =
      ownCpuMs === undefined || machineBefore === undefined || machineAfter === undefined
        ? undefined
        : Math.max(0, machineAfter - machineBefore - ownCpuMs);
    const facts =
      side === 'dashboard' ? ((await page.evaluate(PAGE_FACTS)) as PageFacts) : undefined;
    return {
      side,
      readyMs,
      otherCpuMs,
      ownCpuMs,
      quietWait,
      disturbed: otherCpuMs !== undefined && otherCpuMs / readyMs > DISTURBED_OTHER_SHARE,
      pageErrors,
      facts,
    };
  } finally {
    await context.close();
  }
}

/** A sample, run again (up to MAX_ATTEMPTS in all) while neighbours disturb it. */
async function cleanLoad(
  browser: Browser,
  url: string,
  side: LoadSample['side'],
  index: number,
  warmUp: boolean,
): Promise<LoadSample> {
  for (let attempt = 1; ; attempt++) {
    const sample = await loadOnce(browser, url, side);
    if (!sample.disturbed || attempt >= MAX_ATTEMPTS || warmUp) {
      return { ...sample, index, warmUp, rerun: attempt - 1 };
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The API answers, one at a time

function inPagePath(name: string, runId: string): string | undefined {
  const run = `/api/runs/${encodeURIComponent(runId)}`;
  const paths: Record<string, string> = {
    runs: '/api/runs',
    run,
    series: `${run}/series`,
    problems: `${run}/problems?limit=100`,
  };
  return paths[name];
}

async function timeApi(
  base: string,
  runId: string,
  declinedUser: string,
  sampleCount: number,
  loads: readonly LoadSample[],
): Promise<ApiFigure[]> {
  const run = `api/runs/${encodeURIComponent(runId)}`;
  const endpoints = [
    { name: 'run', path: run },
    { name: 'series', path: `${run}/series` },
    { name: 'problems', path: `${run}/problems?limit=100` },
    { name: 'user', path: `${run}/users/${encodeURIComponent(declinedUser)}` },
    { name: 'runs', path: 'api/runs' },
  ];
  const dispatcher = new Agent({ connections: 1, pipelining: 1 });
  const figures = endpoints.map((endpoint) => ({
    ...endpoint,
    status: 0,
    bytes: 0,
    samplesMs: [] as number[],
  }));
  try {
    // One uncounted round first, then rounds of every endpoint in turn.
    for (let round = 0; round <= sampleCount; round++) {
      for (const figure of figures) {
        const started = performance.now();
        const answer = await request(`${base}${figure.path}`, { dispatcher });
        const body = Buffer.from(await answer.body.arrayBuffer());
        const ms = performance.now() - started;
        if (round === 0) continue;
        figure.status = answer.statusCode;
        figure.bytes = body.length;
        figure.samplesMs.push(ms);
      }
    }
  } finally {
    await dispatcher.close();
  }
  const measured = loads.filter((sample) => sample.side === 'dashboard' && !sample.warmUp);
  return figures.map((figure) => {
    const wanted = inPagePath(figure.name, runId);
    const inPage = measured.flatMap((sample) =>
      (sample.facts?.api ?? [])
        .filter((entry) => entry.path === wanted)
        .map((entry) => entry.endMs - entry.startMs),
    );
    return {
      name: figure.name,
      path: `/${figure.path}`,
      status: figure.status,
      bytes: figure.bytes,
      samplesMs: figure.samplesMs,
      medianMs: median(figure.samplesMs),
      inPageMedianMs: inPage.length > 0 ? median(inPage) : undefined,
    };
  });
}

/** The API's answers, read once more, checked against the run as built. */
async function checkAnswers(base: string, run: BuiltRun): Promise<string[]> {
  const problems: string[] = [];
  const path = `${base}api/runs/${encodeURIComponent(run.runId)}`;
  const read = async <T>(suffix: string): Promise<T> => {
    const answer = await request(`${path}${suffix}`);
    if (answer.statusCode !== 200) {
      await answer.body.dump();
      throw new Error(`${suffix || '/'}: HTTP ${answer.statusCode}`);
    }
    return (await answer.body.json()) as T;
  };
  const view = await read<RunView>('');
  const expected = expectedCounts(run.kinds);
  const states = Object.keys(expected) as (keyof StateCounts)[];
  if (states.some((state) => view.counts[state] !== expected[state])) {
    problems.push(`counts ${JSON.stringify(view.counts)}, expected ${JSON.stringify(expected)}`);
  }
  if (view.live) problems.push('the run reads as live');
  const series = await read<SeriesPage>('/series');
  if (series.points.length !== run.samples) {
    problems.push(`${series.points.length} series points of ${run.samples} samples`);
  }
  const page = await read<ProblemPage>('/problems?limit=100');
  const ended = expected.declined + expected.failed + expected.unknown;
  if (page.matching !== ended || page.problems.length !== Math.min(100, ended)) {
    problems.push(`problems: ${page.problems.length} shown, ${page.matching} matching of ${ended}`);
  }
  const user = await read<UserView>(`/users/${encodeURIComponent(run.declinedUser)}`);
  if (user.state !== 'declined' || user.history.length !== 1) {
    problems.push(`user ${run.declinedUser}: ${user.state}, ${user.history.length} attempts`);
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------
// The report

/** The nearest-rank p90: of 7 samples the slowest, as of 3. */
function p90(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.max(0, Math.ceil(0.9 * sorted.length) - 1)] ?? Number.NaN;
}

function forMedian(samples: readonly LoadSample[]): LoadSample[] {
  const undisturbed = samples.filter((sample) => !sample.disturbed);
  return undisturbed.length > 0 ? undisturbed : [...samples];
}

function ms(value: number | undefined | null): string {
  return value === undefined || value === null || !Number.isFinite(value)
    ? 'n/a'
    : `${formatCount(value)} ms`;
}

/** One decimal: the API's answers take a few ms. */
function fineMs(value: number | undefined): string {
  return value === undefined || !Number.isFinite(value) ? 'n/a' : formatMilliseconds(value);
}

function pageProblems(sample: LoadSample, run: BuiltRun): string[] {
  const problems = sample.pageErrors.map((error) => `page error: ${error}`);
  const facts = sample.facts;
  if (facts === undefined) return problems;
  const ended = run.kinds.declined + run.kinds.failed + run.kinds.unknown;
  if (facts.runId !== run.runId) problems.push(`run id shown: ${facts.runId}`);
  if (facts.banner !== '') problems.push(`banner: ${facts.banner}`);
  if (Number(facts.problemCount?.replace(/\D/g, '')) !== ended) {
    problems.push(`problem count shown: ${facts.problemCount}`);
  }
  if (facts.problemRows !== Math.min(100, ended)) {
    problems.push(`${facts.problemRows} problem rows shown`);
  }
  return problems;
}

function report(input: {
  run: BuiltRun;
  samples: readonly LoadSample[];
  api: readonly ApiFigure[];
  answerProblems: readonly string[];
  sampleCount: number;
  users: number;
}): ScenarioReport<DashboardLoadRaw> {
  const { run, samples, api, answerProblems, sampleCount, users } = input;
  const measured = samples.filter((sample) => !sample.warmUp);
  const side = (name: LoadSample['side']) => measured.filter((sample) => sample.side === name);
  const dashboardSamples = side('dashboard');
  const staticSamples = side('static');
  const dashboardUsed = forMedian(dashboardSamples).map((sample) => sample.readyMs);
  const staticUsed = forMedian(staticSamples).map((sample) => sample.readyMs);
  const dashboardMedianMs = median(dashboardUsed);
  const dashboardP90Ms = p90(dashboardSamples.map((sample) => sample.readyMs));
  const staticMedianMs = median(staticUsed);
  const staticP90Ms = p90(staticSamples.map((sample) => sample.readyMs));
  const ratio = dashboardMedianMs / staticMedianMs;
  const problems = [
    ...answerProblems,
    ...new Set(samples.flatMap((sample) => pageProblems(sample, run))),
  ];
  const verdict: Verdict =
    dashboardMedianMs < TARGET_READY_MS && problems.length === 0 ? 'PASS' : 'FAIL';
  const rerun = samples.reduce((sum, sample) => sum + sample.rerun, 0);
  const stillDisturbed = measured.filter((sample) => sample.disturbed).length;
  const noise = [
    rerun > 0 ? `${rerun} disturbed attempt${rerun === 1 ? '' : 's'} rerun` : '',
    stillDisturbed > 0
      ? `${stillDisturbed} sample${stillDisturbed === 1 ? '' : 's'} kept though disturbed`
      : '',
  ].filter((part) => part !== '');
  const left = dashboardSamples.length - dashboardUsed.length;
  const medianOf =
    left === 0
      ? `median of ${dashboardUsed.length}`
      : `median of ${dashboardUsed.length} undisturbed (${left} disturbed left out)`;
  const slowest = [...api].sort((a, b) => b.medianMs - a.medianMs)[0];
  const apiLine = api.map((figure) => `${figure.name} ${fineMs(figure.medianMs)}`).join(', ');
  const inPage = (pick: (facts: PageFacts) => number | null) =>
    finiteMedian(
      forMedian(dashboardSamples).map((sample) =>
        sample.facts === undefined ? Number.NaN : (pick(sample.facts) ?? Number.NaN),
      ),
    );
  const timeline = {
    documentMs: inPage((facts) => facts.documentMs),
    assetsMs: inPage((facts) => facts.assetsMs),
    domContentLoadedMs: inPage((facts) => facts.domContentLoadedMs),
    lastApiMs: inPage((facts) => facts.lastApiMs),
    readyMs: inPage((facts) => facts.readyMs),
  };

  const sampleRows = samples.map((sample) => [
    sample.warmUp ? 'warm-up' : String(sample.index),
    sample.side,
    ms(sample.readyMs),
    sample.facts === undefined
      ? ''
      : [
          sample.facts.documentMs,
          sample.facts.assetsMs,
          sample.facts.domContentLoadedMs,
          sample.facts.lastApiMs,
          sample.facts.readyMs,
        ]
          .map((value) => (value === null ? 'n/a' : formatCount(value)))
          .join(' / '),
    ms(sample.ownCpuMs),
    ms(sample.otherCpuMs),
    describeQuietWait(sample.quietWait),
    sample.rerun > 0 ? String(sample.rerun) : '',
    sample.disturbed ? 'disturbed' : '',
  ]);
  const apiRows = api.map((figure) => [
    figure.path.replace(encodeURIComponent(run.runId), '<id>'),
    String(figure.status),
    formatCount(figure.bytes),
    fineMs(figure.medianMs),
    `${fineMs(Math.min(...figure.samplesMs))}–${fineMs(Math.max(...figure.samplesMs))}`,
    figure.inPageMedianMs === undefined ? 'not asked' : fineMs(figure.inPageMedianMs),
  ]);

  return {
    summary: {
      scenario: DASHBOARD_LOAD,
      measure: `page ready (goto → body[data-ready]), finished ${formatCount(users)}-user run, new context each, ms, ${medianOf}`,
      baseline: `static page ${ms(staticMedianMs)} (p90 ${ms(staticP90Ms)})`,
      subject: `dashboard ${ms(dashboardMedianMs)} (p90 ${ms(dashboardP90Ms)})`,
      ratio: formatRatio(ratio),
      target: `median < ${formatCount(TARGET_READY_MS)} ms`,
      verdict,
      checks: [
        problems.length > 0
          ? problems.join('; ')
          : 'page shows the run, its counts and its 100 latest problems, no page error',
        `API alone: ${apiLine}${slowest ? ` (slowest: ${slowest.name})` : ''}`,
        ...noise,
      ].join('; '),
    },
    details: [
      `### ${DASHBOARD_LOAD}: every sample`,
      '',
      `Run: ${formatCount(run.users)} users (${formatCount(run.kinds.charged + run.kinds.retried)} charged, ${formatCount(run.kinds.retried)} of them on a 2nd attempt; ${formatCount(run.kinds.declined)} declined; ${formatCount(run.kinds.failed)} failed; ${formatCount(run.kinds.unknown)} unknown), ${formatCount(run.attempts)} attempts, ${formatCount(run.samples)} per-second samples (${formatSeconds(run.runSpanMs)}); finishIfComplete: ${run.finished}. Built in ${formatSeconds(run.createRunMs)} (createRun) + ${formatSeconds(run.recordMs)} (startAttempts + record) + ${formatSeconds(run.samplesMs)} (noteSample); ledger ${formatMebibytes(run.ledgerBytes)}. CPU: *own* is this process (the dashboard server and its ledger, Playwright) and Chromium's processes; *others* is the rest of the machine.`,
      '',
      markdownTable(
        [
          'sample',
          'side',
          'ready',
          'in the page: document / assets / DOMContentLoaded / last API answer / ready',
          'own CPU',
          'others CPU',
          'quiet wait',
          'reruns',
          '',
        ],
        sampleRows,
        ['left', 'left', 'right', 'left', 'right', 'right', 'left', 'right', 'left'],
      ),
      '',
      `In the page (its own clock, ms from navigation start; medians): document read ${ms(timeline.documentMs)}, assets read ${ms(timeline.assetsMs)}, DOMContentLoaded ${ms(timeline.domContentLoadedMs)}, last API answer read ${ms(timeline.lastApiMs)}, ready ${ms(timeline.readyMs)}.`,
      '',
      `Each API answer alone (undici, one connection, median of ${sampleCount} after one uncounted round), and the same request as the page timed it during its loads (resource timing, end − start, median over the measured samples):`,
      '',
      markdownTable(['answer', 'status', 'bytes', 'median', 'range', 'in the page'], apiRows, [
        'left',
        'right',
        'right',
        'right',
        'left',
        'right',
      ]),
    ].join('\n'),
    raw: {
      run,
      sampleCount,
      targetReadyMs: TARGET_READY_MS,
      dashboardMedianMs,
      dashboardP90Ms,
      staticMedianMs,
      staticP90Ms,
      ratio,
      verdict,
      timeline,
      api,
      samples,
    },
  };
}
