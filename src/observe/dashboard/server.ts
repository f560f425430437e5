import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import type { DeadlineReport, DispatchReport } from '../../domain/dispatch.js';
import { UsageError } from '../../domain/errors.js';
import type { ChargeState } from '../../domain/outcome.js';
import type { RunSample } from '../../domain/samples.js';
import { histogramQuantile } from '../sampler.js';
import type {
  LiveUpdate,
  ProblemPage,
  RunList,
  RunListItem,
  RunView,
  SeriesPage,
  SeriesPoint,
  UserView,
} from './api.js';

/** What the dashboard reads: a ledger, seen through the CLI (observe/ imports no ledger). */
export interface DashboardSource {
  runs(): Promise<readonly RunListItem[]>;
  /** The run's record, counts and charged amounts; undefined for a run the ledger lacks. */
  run(runId: string): Promise<RunBasics | undefined>;
  /** Samples whose second starts after `afterAt`, oldest first. */
  samples(runId: string, afterAt: number): Promise<readonly RunSample[]>;
  problems(
    runId: string,
    filter: { state?: ProblemState | undefined; q?: string | undefined; limit: number },
  ): Promise<ProblemPage>;
  user(runId: string, userId: string): Promise<UserView | undefined>;
}

export type ProblemState = 'declined' | 'failed' | 'unknown' | 'invalid' | 'pending';
const PROBLEM_STATES: readonly string[] = ['declined', 'failed', 'unknown', 'invalid', 'pending'];

export interface RunBasics {
  readonly runId: string;
  readonly inputPath: string;
  readonly endpoint: string;
  readonly createdAt: string;
  readonly finishedAt: string | undefined;
  readonly total: number;
  readonly counts: Readonly<Record<ChargeState, number>>;
  readonly chargedAmounts: Readonly<Record<string, number>>;
  readonly dispatch: DispatchReport | undefined;
}

export interface DashboardOptions {
  readonly source: DashboardSource;
  /** Default 127.0.0.1. Any other address needs a token. */
  readonly host?: string | undefined;
  /** Default 0: any free port. */
  readonly port?: number | undefined;
  /** Checked on every request (header, cookie or query); required off loopback. */
  readonly token?: string | undefined;
  /** The run the page opens on (a function: `run` learns it once the run is chosen). */
  readonly current?: string | (() => string | undefined) | undefined;
  /** Prometheus text for /metrics. Default: none (404). */
  readonly metrics?: (() => Promise<{ contentType: string; text: string }>) | undefined;
  /** Calendar time. Default Date.now. */
  readonly now?: () => number;
  /** How often the event stream sends an update, in ms. Default 1,000. */
  readonly updateIntervalMs?: number;
  /** A request the source has not answered this long gets a 503, in ms. Default 10 s. */
  readonly answerTimeoutMs?: number;
}

export interface Dashboard {
  /** `http://host:port/` */
  readonly url: string;
  readonly port: number;
  close(): Promise<void>;
}

/** A sample this old or newer means some process bills the run now. */
const LIVE_MS = 5_000;
/** A second is drawn once this long has passed since its end: samples of other processes arrive late. */
const SETTLE_MS = 2_000;
/** Seconds the pace is averaged over. */
const PACE_SECONDS = 5;
const COOKIE = 'bulkbill_token';
/** An update the ledger has not answered for this long is said to be stale. */
const STALE_MS = 3_000;
/** A request the ledger has not answered for this long gets a 503. */
const ANSWER_MS = 10_000;
/** How long a run's counts read for one request serve the others. */
const BASICS_MS = 250;

/** Whether an address is this machine's loopback: there the dashboard may go without a token. */
export function isLoopback(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, '');
  return bare === 'localhost' || bare === '::1' || /^127\.\d+\.\d+\.\d+$/.test(bare);
}

/** Refuses (UsageError) a dashboard on a non-loopback host without a token. */
export function refuseOpenDashboard(host: string, token: string | undefined): void {
  if (!isLoopback(host) && (token === undefined || token === '')) {
    throw new UsageError(
      `the dashboard on ${host} would show every user's charges to anyone who can reach it: give it a token (--dashboard-token or BULKBILL_DASHBOARD_TOKEN), or keep it on 127.0.0.1`,
    );
  }
}

/**
 * Starts the dashboard's HTTP server: the page, its JSON API, Server-Sent Events and /metrics.
 * Refuses (UsageError) a non-loopback host without a token.
 */
export async function startDashboard(options: DashboardOptions): Promise<Dashboard> {
  const host = options.host ?? '127.0.0.1';
  const token = options.token === '' ? undefined : options.token;
  refuseOpenDashboard(host, token);
  const app = new DashboardApp(options, token, host);
  const answerMs = options.answerTimeoutMs ?? ANSWER_MS;
  const server = createServer((request, response) => {
    // A ledger that does not answer (Redis restarting) gets a 503 in time, not a request that
    // hangs; the event stream says it its own way (`stale`).
    const timer = request.url?.split('?')[0]?.endsWith('/events')
      ? undefined
      : setTimeout(() => {
          if (!response.headersSent) {
            json(response, 503, {
              error: `the ledger has not answered for ${Math.round(answerMs / 1_000)} s (Redis restarting? a locked ledger file?); try again`,
            });
          }
        }, answerMs);
    app
      .handle(request, response)
      .catch((error: unknown) => {
        if (!response.headersSent) json(response, 500, { error: (error as Error).message });
        else if (!response.writableEnded) response.destroy();
      })
      .finally(() => clearTimeout(timer));
  });
  await new Promise<void>((resolve, reject) => {
    const refused = (error: NodeJS.ErrnoException) =>
      reject(
        new UsageError(
          `the dashboard cannot listen on ${host}:${options.port ?? 0}: ${error.code === 'EADDRINUSE' ? 'the port is taken (another dashboard? pick another port, or 0 for any)' : error.message}`,
        ),
      );
    server.once('error', refused);
    server.listen(options.port ?? 0, host, () => {
      server.off('error', refused);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const shown = host.includes(':') ? `[${host}]` : host;
  return {
    url: `http://${shown}:${port}/`,
    port,
    close: () => app.close(server),
  };
}

const assetsDir = fileURLToPath(new URL('./assets/', import.meta.url));
const require = createRequire(import.meta.url);
const ASSETS: Readonly<Record<string, { path: () => string; type: string }>> = {
  '/': { path: () => `${assetsDir}index.html`, type: 'text/html; charset=utf-8' },
  '/assets/app.js': { path: () => `${assetsDir}app.js`, type: 'text/javascript; charset=utf-8' },
  '/assets/app.css': { path: () => `${assetsDir}app.css`, type: 'text/css; charset=utf-8' },
  '/assets/uPlot.iife.min.js': {
    path: () => require.resolve('uplot/dist/uPlot.iife.min.js'),
    type: 'text/javascript; charset=utf-8',
  },
  '/assets/uPlot.min.css': {
    path: () => require.resolve('uplot/dist/uPlot.min.css'),
    type: 'text/css; charset=utf-8',
  },
};

class DashboardApp {
  readonly #options: DashboardOptions;
  readonly #token: Buffer | undefined;
  readonly #loopbackOnly: boolean;
  readonly #now: () => number;
  readonly #streams = new Set<ServerResponse>();
  readonly #assets = new Map<string, Buffer>();
  readonly #basicsCache = new Map<string, { at: number; read: Promise<RunBasics | undefined> }>();

  constructor(options: DashboardOptions, token: string | undefined, host: string) {
    this.#options = options;
    this.#token = token === undefined ? undefined : digest(token);
    this.#loopbackOnly = isLoopback(host);
    this.#now = options.now ?? Date.now;
  }

  async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const url = new URL(request.url ?? '/', 'http://dashboard.invalid');
    securityHeaders(response);
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      return json(response, 405, { error: 'the dashboard only reads: GET' });
    }
    // Without a token, a page elsewhere could rebind its name to 127.0.0.1 and read this one:
    // only a loopback Host is answered.
    if (this.#token === undefined && this.#loopbackOnly && !loopbackHost(request.headers.host)) {
      return json(response, 403, { error: 'the dashboard answers only to a loopback Host' });
    }
    const given = url.searchParams.get('token');
    if (!this.#authorized(request, given)) {
      response.setHeader('WWW-Authenticate', 'Bearer realm="bulkbill"');
      return json(response, 401, {
        error:
          'this dashboard needs its token: open it as /?token=…, or send Authorization: Bearer …',
      });
    }
    if (given !== null && this.#token !== undefined) {
      // Kept in a cookie the page's requests and event stream carry; the address loses it.
      response.setHeader(
        'Set-Cookie',
        `${COOKIE}=${encodeURIComponent(given)}; HttpOnly; SameSite=Strict; Path=/`,
      );
      if (!url.pathname.startsWith('/api/') && url.pathname !== '/metrics') {
        url.searchParams.delete('token');
        response.writeHead(303, { Location: `${url.pathname}${url.search}` });
        response.end();
        return;
      }
    }
    const asset = ASSETS[url.pathname];
    if (asset !== undefined) return this.#asset(response, url.pathname, asset);
    if (url.pathname === '/metrics') return this.#metrics(response);
    if (url.pathname === '/api/runs') return this.#runs(response);
    const match = /^\/api\/runs\/([^/]+)(?:\/(series|problems|events)|\/(users)\/([^/]+))?$/.exec(
      url.pathname,
    );
    if (match === null) return json(response, 404, { error: `no such page: ${url.pathname}` });
    const runId = safeDecode(match[1] ?? '');
    const part = match[2] ?? match[3];
    if (runId === undefined) return json(response, 400, { error: 'a run id badly encoded' });
    const basics = await this.#basics(runId);
    if (basics === undefined) return json(response, 404, { error: `no run ${runId}` });
    switch (part) {
      case undefined: {
        const samples = await this.#samples(runId, 0);
        return json(response, 200, runView(basics, samples, this.#now(), samples[0]?.at));
      }
      case 'series':
        return json(response, 200, await this.#series(basics, numberOf(url, 'after') ?? 0));
      case 'problems':
        return this.#problems(response, runId, url);
      case 'users': {
        const userId = safeDecode(match[4] ?? '');
        if (userId === undefined || userId === '') {
          return json(response, 400, { error: 'which user? /api/runs/:runId/users/:userId' });
        }
        const user = await this.#options.source.user(runId, userId);
        if (user === undefined) {
          return json(response, 404, { error: `run ${runId} has no user ${userId}` });
        }
        return json(response, 200, user);
      }
      case 'events':
        return this.#events(request, response, basics, url);
      default:
        return json(response, 404, { error: `no such page: ${url.pathname}` });
    }
  }

  /**
   * The run's record and counts, read at most once per BASICS_MS of real time: a page's first
   * load asks for them five times at once (view, series, problems, the stream), and each read
   * counts every row of the run (27 ms at 100,000 on SQLite).
   */
  #basics(runId: string): Promise<RunBasics | undefined> {
    const now = performance.now();
    const cached = this.#basicsCache.get(runId);
    if (cached !== undefined && now - cached.at < BASICS_MS) return cached.read;
    const read = this.#options.source.run(runId);
    this.#basicsCache.set(runId, { at: now, read });
    // A failed read is not kept.
    read.catch(() => this.#basicsCache.delete(runId));
    return read;
  }

  async close(server: Server): Promise<void> {
    for (const stream of this.#streams) stream.end();
    this.#streams.clear();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  #authorized(request: IncomingMessage, given: string | null): boolean {
    const expected = this.#token;
    if (expected === undefined) return true;
    const header = request.headers.authorization;
    const bearer = header?.startsWith('Bearer ') ? header.slice('Bearer '.length) : undefined;
    const cookie = cookieOf(request.headers.cookie, COOKIE);
    return [bearer, cookie, given ?? undefined].some(
      (candidate) => candidate !== undefined && timingSafeEqual(digest(candidate), expected),
    );
  }

  async #asset(
    response: ServerResponse,
    path: string,
    asset: { path: () => string; type: string },
  ): Promise<void> {
    let body = this.#assets.get(path);
    if (body === undefined) {
      body = await readFile(asset.path());
      this.#assets.set(path, body);
    }
    response.writeHead(200, {
      'Content-Type': asset.type,
      'Content-Length': body.length,
      'Cache-Control': 'no-cache',
    });
    response.end(body);
  }

  async #metrics(response: ServerResponse): Promise<void> {
    const metrics = this.#options.metrics;
    if (metrics === undefined) return json(response, 404, { error: 'no metrics here' });
    const { contentType, text } = await metrics();
    response.writeHead(200, { 'Content-Type': contentType, 'Cache-Control': 'no-store' });
    response.end(text);
  }

  async #runs(response: ServerResponse): Promise<void> {
    const list: RunList = {
      runs: await this.#options.source.runs(),
      current:
        typeof this.#options.current === 'function'
          ? this.#options.current()
          : this.#options.current,
    };
    json(response, 200, list);
  }

  async #problems(response: ServerResponse, runId: string, url: URL): Promise<void> {
    const state = url.searchParams.get('state') ?? '';
    if (state !== '' && state !== 'all' && !PROBLEM_STATES.includes(state)) {
      return json(response, 400, {
        error: `state must be one of all, ${PROBLEM_STATES.join(', ')}; got ${JSON.stringify(state)}`,
      });
    }
    const limit = Math.floor(Math.min(Math.max(numberOf(url, 'limit') ?? 100, 1), 1_000));
    const q = url.searchParams.get('q') ?? '';
    json(
      response,
      200,
      await this.#options.source.problems(runId, {
        state: state === '' || state === 'all' ? undefined : (state as ProblemState),
        q: q === '' ? undefined : q,
        limit,
      }),
    );
  }

  async #samples(runId: string, afterAt: number): Promise<readonly RunSample[]> {
    return this.#options.source.samples(runId, afterAt);
  }

  /** The chart points after `after`: whole seconds only, once they have settled. */
  async #series(basics: RunBasics, after: number): Promise<SeriesPage> {
    return seriesOf(await this.#samples(basics.runId, after), after, this.#now());
  }

  async #events(
    request: IncomingMessage,
    response: ServerResponse,
    basics: RunBasics,
    url: URL,
  ): Promise<void> {
    const runId = basics.runId;
    const lastEventId = Number(request.headers['last-event-id']);
    const all = await this.#series(basics, 0);
    // The run's first second: known now, or from the first points the stream sends.
    let firstAt = all.points[0]?.at;
    let lastAt = all.points.at(-1)?.at;
    let cursor =
      numberOf(url, 'after') ??
      (Number.isFinite(lastEventId) && lastEventId > 0 ? lastEventId : undefined) ??
      all.cursor;
    response.writeHead(200, {
      'Content-Type': 'text/event-stream; charset=utf-8',
      'Cache-Control': 'no-store',
      Connection: 'keep-alive',
      'X-Accel-Buffering': 'no',
    });
    response.write('retry: 2000\n\n');
    this.#streams.add(response);
    let busy = false;
    let busySince = 0;
    let staleSaid = false;
    let lastGoodAt = this.#now();
    // The page learns the ledger stopped answering (Redis restarting, a locked SQLite file), once
    // per outage, instead of showing old figures as live.
    const stale = (why: string) => {
      if (staleSaid || response.writableEnded) return;
      staleSaid = true;
      response.write(
        `event: stale\ndata: ${JSON.stringify({ error: why.replace(/\s+/g, ' '), since: lastGoodAt })}\n\n`,
      );
    };
    const send = async () => {
      if (response.writableEnded) return;
      if (busy) {
        if (performance.now() - busySince >= STALE_MS) {
          stale(`the ledger has not answered for ${Math.round(STALE_MS / 1_000)} s`);
        }
        return;
      }
      busy = true;
      busySince = performance.now();
      try {
        const now = await this.#basics(runId);
        if (now === undefined) return;
        // One read for both: the points after the cursor, and the last minute for the view.
        const at = this.#now();
        const recentFrom = at - 60_000;
        const samples = await this.#samples(runId, Math.min(cursor, recentFrom));
        const page = seriesOf(
          samples.filter((sample) => sample.at > cursor),
          cursor,
          at,
        );
        cursor = page.cursor;
        firstAt ??= page.points[0]?.at;
        lastAt = page.points.at(-1)?.at ?? lastAt;
        const update: LiveUpdate = {
          run: runView(
            now,
            samples.filter((sample) => sample.at > recentFrom),
            at,
            firstAt,
            lastAt,
          ),
          points: page.points,
          cursor,
        };
        response.write(`id: ${cursor}\nevent: update\ndata: ${JSON.stringify(update)}\n\n`);
        lastGoodAt = this.#now();
        staleSaid = false;
      } catch (error) {
        // A ledger that fails (Redis refusing): the stream says so and tries again next time.
        stale((error as Error).message);
      } finally {
        busy = false;
      }
    };
    const timer = setInterval(() => void send(), this.#options.updateIntervalMs ?? 1_000);
    void send();
    const stop = () => {
      clearInterval(timer);
      this.#streams.delete(response);
    };
    request.on('close', stop);
    response.on('close', stop);
  }
}

/** The chart points of `samples` after `after`: whole seconds only, once they have settled. */
function seriesOf(samples: readonly RunSample[], after: number, now: number): SeriesPage {
  const settled = now - SETTLE_MS;
  const points = pointsOf(samples).filter(
    (point) => point.at > after && point.at + 1_000 <= settled,
  );
  return { points, cursor: points.at(-1)?.at ?? after };
}

/**
 * The run's view from its ledger figures and recent samples: pace over the last settled
 * seconds, live while a sample is fresh, and the ETA at that pace.
 */
export function runView(
  basics: RunBasics,
  samples: readonly RunSample[],
  now: number,
  firstAt: number | undefined,
  /** The run's last second known, when `samples` are only the recent ones (the stream's). */
  lastAt?: number | undefined,
): RunView {
  const points = pointsOf(samples);
  const last = points.at(-1);
  const lastKnown = Math.max(
    last?.at ?? Number.NEGATIVE_INFINITY,
    lastAt ?? Number.NEGATIVE_INFINITY,
  );
  const live = basics.finishedAt === undefined && last !== undefined && last.at >= now - LIVE_MS;
  const settled = points.filter((point) => point.at + 1_000 <= now - SETTLE_MS);
  const recent = settled.slice(-PACE_SECONDS);
  const perSecond = live
    ? recent.reduce((sum, point) => sum + point.chargesPerSecond, 0) / Math.max(1, recent.length)
    : 0;
  const counts = basics.counts;
  const done = basics.total - counts.pending;
  const first = firstAt ?? points[0]?.at ?? Date.parse(basics.createdAt);
  // Ended: at its last second (a run idle since has not been billed meanwhile).
  const end = live ? now : Number.isFinite(lastKnown) ? lastKnown + 1_000 : now;
  const deadline: DeadlineReport | undefined = basics.dispatch?.deadline;
  return {
    runId: basics.runId,
    inputPath: basics.inputPath,
    endpoint: basics.endpoint,
    createdAt: basics.createdAt,
    finishedAt: basics.finishedAt,
    total: basics.total,
    counts,
    done,
    chargedAmounts: basics.chargedAmounts,
    perSecond,
    etaMs: live && perSecond > 0 ? (counts.pending / perSecond) * 1_000 : undefined,
    elapsedMs: Math.max(0, end - first),
    live,
    dispatch: basics.dispatch,
    deadline,
    at: now,
  };
}

/**
 * One point per second from the samples of every process: counts and latency histograms
 * summed; in flight and the limit summed over processes (a process's last sample of a second
 * stands for it); the breaker at its worst.
 */
export function pointsOf(samples: readonly RunSample[]): SeriesPoint[] {
  const seconds = new Map<number, Map<string, RunSample>>();
  for (const sample of samples) {
    let sources = seconds.get(sample.at);
    if (sources === undefined) {
      sources = new Map();
      seconds.set(sample.at, sources);
    }
    const earlier = sources.get(sample.source);
    sources.set(sample.source, earlier === undefined ? sample : merged(earlier, sample));
  }
  return [...seconds.entries()]
    .sort(([a], [b]) => a - b)
    .map(([at, sources]) => {
      let ended = 0;
      let attempts = 0;
      let retries = 0;
      let refusals = 0;
      let inFlight = 0;
      let limit = 0;
      let breaker: number | null = null;
      const hist: number[] = [];
      for (const sample of sources.values()) {
        ended += sample.ended;
        attempts += sample.attempts;
        retries += sample.retries;
        refusals += sample.refusals;
        inFlight += sample.inFlight;
        limit += sample.limit;
        if (sample.breaker !== undefined) {
          breaker = Math.max(breaker ?? 0, BREAKER_LEVEL[sample.breaker]);
        }
        sample.hist.forEach((n, i) => {
          hist[i] = (hist[i] ?? 0) + n;
        });
      }
      return {
        at,
        chargesPerSecond: ended,
        attemptsPerSecond: attempts,
        p50Ms: rounded(histogramQuantile(hist, 0.5)),
        p95Ms: rounded(histogramQuantile(hist, 0.95)),
        inFlight,
        limit,
        retriesPerSecond: retries,
        refusalsPerSecond: refusals,
        breaker,
      };
    });
}

const BREAKER_LEVEL = { closed: 0, 'half-open': 0.5, open: 1 } as const;

/** Two samples of one process for one second (it sampled it twice): counts add, gauges are the later's. */
function merged(earlier: RunSample, later: RunSample): RunSample {
  return {
    ...later,
    ended: earlier.ended + later.ended,
    attempts: earlier.attempts + later.attempts,
    retries: earlier.retries + later.retries,
    refusals: earlier.refusals + later.refusals,
    hist: later.hist.map((n, i) => n + (earlier.hist[i] ?? 0)),
  };
}

function rounded(value: number | null): number | null {
  return value === null ? null : Math.round(value);
}

function json(response: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  response.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    'Cache-Control': 'no-store',
  });
  response.end(text);
}

function securityHeaders(response: ServerResponse): void {
  response.setHeader(
    'Content-Security-Policy',
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  );
  response.setHeader('X-Content-Type-Options', 'nosniff');
  response.setHeader('Referrer-Policy', 'no-referrer');
  response.setHeader('X-Frame-Options', 'DENY');
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

function cookieOf(header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined;
  for (const part of header.split(';')) {
    const [key, ...value] = part.trim().split('=');
    if (key === name) return safeDecode(value.join('='));
  }
  return undefined;
}

function loopbackHost(host: string | undefined): boolean {
  if (host === undefined) return false;
  const name = host.startsWith('[') ? host.slice(0, host.indexOf(']') + 1) : host.split(':')[0];
  return isLoopback(name ?? '');
}

function safeDecode(text: string): string | undefined {
  try {
    return decodeURIComponent(text);
  } catch {
    return undefined;
  }
}

function numberOf(url: URL, name: string): number | undefined {
  const text = url.searchParams.get(name);
  if (text === null || text === '') return undefined;
  const value = Number(text);
  return Number.isFinite(value) ? value : undefined;
}
