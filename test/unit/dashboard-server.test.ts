import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { Agent, type Dispatcher, request } from 'undici';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { UsageError } from '../../src/domain/errors.js';
import { LATENCY_BUCKETS_MS, type RunSample } from '../../src/domain/samples.js';
import type {
  LiveUpdate,
  ProblemPage,
  RunList,
  RunListItem,
  RunView,
  SeriesPage,
  UserView,
} from '../../src/observe/dashboard/api.js';
import {
  type Dashboard,
  type DashboardOptions,
  type DashboardSource,
  isLoopback,
  type ProblemState,
  pointsOf,
  type RunBasics,
  refuseOpenDashboard,
  runView,
  startDashboard,
} from '../../src/observe/dashboard/server.js';
import { histogramQuantile, latencyBucket } from '../../src/observe/sampler.js';

/** A whole second, well in the future of any test machine's clock: nothing here reads Date.now. */
const T = 1_800_000_000_000;
const TOKEN = 'dashboard-secret-token';

/** The fake calendar time every dashboard of this file reads; each test sets it. */
let clock = T;
const now = (): number => clock;

function histOf(latenciesMs: readonly number[]): number[] {
  const hist = new Array<number>(LATENCY_BUCKETS_MS.length + 1).fill(0);
  for (const ms of latenciesMs) {
    const bucket = latencyBucket(ms);
    hist[bucket] = (hist[bucket] ?? 0) + 1;
  }
  return hist;
}

function sample(at: number, overrides: Partial<RunSample> = {}): RunSample {
  return {
    at,
    source: 'host-a:1',
    ended: 1,
    attempts: 1,
    retries: 0,
    refusals: 0,
    inFlight: 1,
    limit: 4,
    breaker: undefined,
    hist: histOf([]),
    ...overrides,
  };
}

/** One sample per second from `from` to `to` (inclusive), `ended` charges each. */
function samplesEverySecond(from: number, to: number, ended = 1): RunSample[] {
  const samples: RunSample[] = [];
  for (let at = from; at <= to; at += 1_000) samples.push(sample(at, { ended }));
  return samples;
}

function basicsOf(overrides: Partial<RunBasics> = {}): RunBasics {
  return {
    runId: 'r1',
    inputPath: 'cycle.csv',
    endpoint: 'https://billing.example/charge',
    createdAt: new Date(T - 600_000).toISOString(),
    finishedAt: undefined,
    total: 100,
    counts: { pending: 40, charged: 50, declined: 4, failed: 3, unknown: 2, invalid: 1 },
    chargedAmounts: { USD: 5_000 },
    dispatch: undefined,
    ...overrides,
  };
}

function userView(userId: string): UserView {
  return {
    runId: 'r1',
    userId,
    line: 7,
    state: 'charged',
    amount: 1_999,
    currency: 'USD',
    attempts: 1,
    ambiguous: false,
    httpStatus: 200,
    latencyMs: 120,
    chargeId: 'ch_1',
    error: undefined,
    history: [],
  };
}

type ProblemFilter = { state?: ProblemState | undefined; q?: string | undefined; limit: number };

/** A ledger in memory, as the dashboard sees one: it records what it was asked. */
class FakeSource implements DashboardSource {
  readonly runList: RunListItem[] = [
    {
      runId: 'r1',
      createdAt: new Date(T - 600_000).toISOString(),
      finishedAt: undefined,
      total: 100,
      inputPath: 'cycle.csv',
    },
    {
      runId: 'r0',
      createdAt: new Date(T - 86_400_000).toISOString(),
      finishedAt: new Date(T - 86_000_000).toISOString(),
      total: 3,
      inputPath: 'old.csv',
    },
  ];
  readonly basics = new Map<string, RunBasics>([['r1', basicsOf()]]);
  /** The samples of every run, by run id. */
  readonly sampleLists = new Map<string, RunSample[]>([['r1', []]]);
  readonly users = new Map<string, UserView>();
  readonly runCalls: string[] = [];
  readonly sampleCalls: Array<{ runId: string; afterAt: number }> = [];
  readonly problemCalls: Array<{ runId: string; filter: ProblemFilter }> = [];
  readonly userCalls: Array<{ runId: string; userId: string }> = [];
  /** When set, run() throws it (a ledger that stopped answering). */
  failing: string | undefined;

  get r1(): RunSample[] {
    return this.sampleLists.get('r1') ?? [];
  }

  async runs(): Promise<readonly RunListItem[]> {
    return this.runList;
  }

  async run(runId: string): Promise<RunBasics | undefined> {
    this.runCalls.push(runId);
    if (this.failing !== undefined) throw new Error(this.failing);
    return this.basics.get(runId);
  }

  async samples(runId: string, afterAt: number): Promise<readonly RunSample[]> {
    this.sampleCalls.push({ runId, afterAt });
    return (this.sampleLists.get(runId) ?? [])
      .filter((s) => s.at > afterAt)
      .sort((a, b) => a.at - b.at);
  }

  async problems(runId: string, filter: ProblemFilter): Promise<ProblemPage> {
    this.problemCalls.push({ runId, filter: { ...filter } });
    return {
      problems: [
        {
          userId: 'u-9',
          line: 9,
          state: 'failed',
          amount: 500,
          currency: 'EUR',
          attempts: 5,
          httpStatus: 503,
          error: 'HTTP 503',
        },
      ],
      matching: 1,
    };
  }

  async user(runId: string, userId: string): Promise<UserView | undefined> {
    this.userCalls.push({ runId, userId });
    return this.users.get(userId);
  }
}

// ---------------------------------------------------------------------------------------------
// Servers and requests

let agent: Agent;
beforeAll(() => {
  agent = new Agent({ connections: 64, keepAliveTimeout: 1_000 });
});
afterAll(async () => {
  await agent.close();
});

const dashboards: Dashboard[] = [];
const streams: Dispatcher.ResponseData[] = [];
afterEach(async () => {
  for (const stream of streams.splice(0)) stream.body.destroy();
  await Promise.all(dashboards.splice(0).map((dashboard) => dashboard.close()));
  clock = T;
});

interface Started {
  readonly dashboard: Dashboard;
  readonly source: FakeSource;
  /** `http://127.0.0.1:port` (no trailing slash). */
  readonly base: string;
}

async function start(
  options: Partial<Omit<DashboardOptions, 'source'>> & { source?: FakeSource } = {},
): Promise<Started> {
  const source = options.source ?? new FakeSource();
  const dashboard = await startDashboard({ port: 0, now, ...options, source });
  dashboards.push(dashboard);
  return { dashboard, source, base: `http://127.0.0.1:${dashboard.port}` };
}

interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  json: Record<string, unknown>;
}

async function get(
  url: string,
  headers: Record<string, string> = {},
  method: Dispatcher.HttpMethod = 'GET',
): Promise<Answer> {
  const response = await request(url, { dispatcher: agent, method, headers });
  const body = await response.body.text();
  let json: Record<string, unknown> = {};
  if (String(response.headers['content-type'] ?? '').startsWith('application/json')) {
    json = JSON.parse(body) as Record<string, unknown>;
  }
  return { status: response.statusCode, headers: response.headers, body, json };
}

function header(answer: { headers: Answer['headers'] }, name: string): string {
  const value = answer.headers[name];
  return Array.isArray(value) ? value.join('\n') : (value ?? '');
}

function bearer(token = TOKEN): Record<string, string> {
  return { authorization: `Bearer ${token}` };
}

/** Resolves what `promise` resolves, or fails once `ms` have passed. */
async function within<T>(ms: number, what: string, promise: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------
// Server-Sent Events

interface SseEvent {
  readonly id: string | undefined;
  readonly event: string | undefined;
  readonly data: string | undefined;
  readonly retry: string | undefined;
  readonly comments: readonly string[];
}

/** Reads an event stream's body as text chunks as they come and parses its events. */
class SseReader {
  text = '';
  readonly events: SseEvent[] = [];
  ended = false;
  readonly #response: Dispatcher.ResponseData;
  readonly #decoder = new TextDecoder();
  #parsed = 0;
  #wake: (() => void) | undefined;

  constructor(response: Dispatcher.ResponseData) {
    this.#response = response;
    const body = response.body;
    body.on('data', (chunk: Buffer) => {
      this.text += this.#decoder.decode(chunk, { stream: true });
      this.#parse();
      this.#notify();
    });
    const end = () => {
      this.ended = true;
      this.#notify();
    };
    body.on('end', end);
    body.on('close', end);
    body.on('error', end);
  }

  get updates(): LiveUpdate[] {
    return this.events
      .filter((event) => event.event === 'update')
      .map((event) => JSON.parse(event.data ?? 'null') as LiveUpdate);
  }

  /** Waits (at most `timeoutMs`) until `probe` finds something. */
  async until<T>(what: string, probe: () => T | undefined, timeoutMs = 2_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = probe();
      if (found !== undefined) return found;
      if (this.ended) throw new Error(`${what}: the stream ended first`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${what}: not within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /** The update events with index `from` on, once there are at least `count` of them. */
  async updatesFrom(from: number, count = 1): Promise<LiveUpdate[]> {
    return this.until(`${count} update(s) from #${from}`, () => {
      const all = this.updates;
      return all.length >= from + count ? all.slice(from) : undefined;
    });
  }

  async waitForEnd(timeoutMs = 2_000): Promise<void> {
    await this.until('the end of the stream', () => (this.ended ? true : undefined), timeoutMs);
  }

  destroy(): void {
    this.#response.body.destroy();
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  #parse(): void {
    for (;;) {
      const end = this.text.indexOf('\n\n', this.#parsed);
      if (end < 0) return;
      const block = this.text.slice(this.#parsed, end);
      this.#parsed = end + 2;
      const fields = new Map<string, string>();
      const comments: string[] = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) {
          comments.push(line.slice(1).trim());
          continue;
        }
        const colon = line.indexOf(':');
        const name = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        fields.set(
          name,
          fields.has(name) && name === 'data' ? `${fields.get(name)}\n${value}` : value,
        );
      }
      this.events.push({
        id: fields.get('id'),
        event: fields.get('event'),
        data: fields.get('data'),
        retry: fields.get('retry'),
        comments,
      });
    }
  }
}

/** Opens an event stream (or any long answer) without reading it: the caller reads or destroys it. */
async function open(url: string, headers: Record<string, string> = {}) {
  const response = await request(url, { dispatcher: agent, headers });
  response.body.on('error', () => {});
  streams.push(response);
  return response;
}

async function openEvents(url: string, headers: Record<string, string> = {}) {
  const response = await open(url, headers);
  return { response, reader: new SseReader(response) };
}

const ats = (points: readonly { at: number }[]): number[] => points.map((point) => point.at);

// ---------------------------------------------------------------------------------------------

describe('loopback and open dashboards', () => {
  it('isLoopback knows the loopback names and addresses, and nothing else', () => {
    for (const host of ['127.0.0.1', '127.1.2.3', '::1', '[::1]', 'localhost']) {
      expect(isLoopback(host), host).toBe(true);
    }
    for (const host of [
      '0.0.0.0',
      '10.0.0.5',
      'example.com',
      '::',
      '127.0.0.1.example.com',
      'localhost.example.com',
      '',
    ]) {
      expect(isLoopback(host), host).toBe(false);
    }
  });

  it('refuseOpenDashboard refuses a non-loopback host without a token, and only that', () => {
    expect(() => refuseOpenDashboard('0.0.0.0', undefined)).toThrow(UsageError);
    expect(() => refuseOpenDashboard('10.0.0.5', '')).toThrow(UsageError);
    expect(() => refuseOpenDashboard('0.0.0.0', undefined)).toThrow(/token/);
    expect(() => refuseOpenDashboard('0.0.0.0', TOKEN)).not.toThrow();
    expect(() => refuseOpenDashboard('127.0.0.1', undefined)).not.toThrow();
    expect(() => refuseOpenDashboard('localhost', '')).not.toThrow();
  });

  it('startDashboard on 0.0.0.0 without a token (or with an empty one) rejects with a UsageError', async () => {
    const source = new FakeSource();
    await expect(startDashboard({ source, host: '0.0.0.0', port: 0, now })).rejects.toThrow(
      UsageError,
    );
    await expect(
      startDashboard({ source, host: '0.0.0.0', port: 0, token: '', now }),
    ).rejects.toBeInstanceOf(UsageError);
  });

  it('starts on 0.0.0.0 with a token, and still asks for the token', async () => {
    const { dashboard, base } = await start({ host: '0.0.0.0', token: TOKEN });
    expect(dashboard.url).toBe(`http://0.0.0.0:${dashboard.port}/`);
    const without = await get(`${base}/api/runs`);
    expect(without.status).toBe(401);
    expect(header(without, 'www-authenticate')).toMatch(/^Bearer /);
    expect((await get(`${base}/api/runs`, bearer('wrong'))).status).toBe(401);
    const withToken = await get(`${base}/api/runs`, bearer());
    expect(withToken.status).toBe(200);
    expect((withToken.json as unknown as RunList).runs).toHaveLength(2);
  });

  it('defaults to 127.0.0.1 and tells its url', async () => {
    const { dashboard } = await start();
    expect(dashboard.port).toBeGreaterThan(0);
    expect(dashboard.url).toBe(`http://127.0.0.1:${dashboard.port}/`);
  });

  it('refuses a taken port with a UsageError that says so (a second dashboard on one port)', async () => {
    const { dashboard } = await start();
    const second = startDashboard({ source: new FakeSource(), port: dashboard.port, now });
    await expect(second).rejects.toBeInstanceOf(UsageError);
    await expect(second).rejects.toThrow(/cannot listen on 127\.0\.0\.1:\d+: the port is taken/);
  });
});

describe('auth with a token', () => {
  const ROUTES = [
    '/',
    '/assets/app.js',
    '/api/runs',
    '/api/runs/r1',
    '/api/runs/r1/events',
    '/metrics',
  ];
  const metrics = async () => ({ contentType: 'text/plain; version=0.0.4', text: 'up 1\n' });

  it('answers 401 with WWW-Authenticate: Bearer on every route without the token', async () => {
    const { base } = await start({ token: TOKEN, metrics });
    for (const route of ROUTES) {
      const answer = await get(`${base}${route}`);
      expect(answer.status, route).toBe(401);
      expect(header(answer, 'www-authenticate'), route).toMatch(/^Bearer realm=/);
      expect(typeof answer.json.error, route).toBe('string');
    }
  });

  it('answers 401 to a wrong token, whether in the header, the cookie or the query', async () => {
    const { base } = await start({ token: TOKEN, metrics });
    for (const route of ROUTES) {
      expect((await get(`${base}${route}`, bearer('not-the-token'))).status, route).toBe(401);
      expect((await get(`${base}${route}`, bearer(`${TOKEN}x`))).status, route).toBe(401);
      expect(
        (await get(`${base}${route}`, { cookie: 'bulkbill_token=not-the-token' })).status,
        route,
      ).toBe(401);
      const sep = route.includes('?') ? '&' : '?';
      expect((await get(`${base}${route}${sep}token=nope`)).status, route).toBe(401);
    }
    // The token in another cookie, or as a bare header, is no token.
    expect((await get(`${base}/api/runs`, { cookie: `other=${TOKEN}` })).status).toBe(401);
    expect((await get(`${base}/api/runs`, { authorization: TOKEN })).status).toBe(401);
  });

  it('answers 200 on every route with Authorization: Bearer <token>', async () => {
    const { base } = await start({ token: TOKEN, metrics });
    for (const route of ROUTES.filter((route) => !route.endsWith('/events'))) {
      expect((await get(`${base}${route}`, bearer())).status, route).toBe(200);
    }
    const events = await open(`${base}/api/runs/r1/events`, bearer());
    expect(events.statusCode).toBe(200);
    expect(header(events, 'content-type')).toMatch(/^text\/event-stream/);
  });

  it('?token= on the page: 303 to the same path without it, and an HttpOnly SameSite=Strict cookie that then authorizes', async () => {
    const { base } = await start({ token: TOKEN });
    const answer = await get(`${base}/?token=${TOKEN}`);
    expect(answer.status).toBe(303);
    expect(header(answer, 'location')).toBe('/');
    const cookie = header(answer, 'set-cookie');
    expect(cookie).toMatch(new RegExp(`^bulkbill_token=${TOKEN};`));
    expect(cookie).toMatch(/;\s*HttpOnly/i);
    expect(cookie).toMatch(/;\s*SameSite=Strict/i);
    const pair = cookie.split(';')[0] ?? '';

    const runs = await get(`${base}/api/runs`, { cookie: pair });
    expect(runs.status).toBe(200);
    expect((runs.json as unknown as RunList).runs.map((run) => run.runId)).toEqual(['r1', 'r0']);
    const page = await get(`${base}/`, { cookie: `theme=dark; ${pair}` });
    expect(page.status).toBe(200);

    const { response, reader } = await openEvents(`${base}/api/runs/r1/events`, { cookie: pair });
    expect(response.statusCode).toBe(200);
    const [update] = await reader.updatesFrom(0);
    expect(update?.run.runId).toBe('r1');
  });

  it('?token= keeps the other query parameters and the path it came to', async () => {
    const { base } = await start({ token: TOKEN });
    const page = await get(`${base}/?run=r1&token=${TOKEN}`);
    expect(page.status).toBe(303);
    expect(header(page, 'location')).toBe('/?run=r1');
    const asset = await get(`${base}/assets/app.js?token=${TOKEN}`);
    expect(asset.status).toBe(303);
    expect(header(asset, 'location')).toBe('/assets/app.js');
  });

  it('a token with ; = / and spaces survives the cookie', async () => {
    const token = 'a b;c=d/e+f%';
    const { base } = await start({ token });
    const answer = await get(`${base}/?token=${encodeURIComponent(token)}`);
    expect(answer.status).toBe(303);
    const pair = header(answer, 'set-cookie').split(';')[0] ?? '';
    expect(pair).toBe(`bulkbill_token=${encodeURIComponent(token)}`);
    expect((await get(`${base}/api/runs`, { cookie: pair })).status).toBe(200);
    expect((await get(`${base}/api/runs`, bearer(token))).status).toBe(200);
  });

  it('?token= on an /api/ route (and /metrics) answers it directly', async () => {
    const { base } = await start({ token: TOKEN, metrics, current: 'r1' });
    const runs = await get(`${base}/api/runs?token=${TOKEN}`);
    expect(runs.status).toBe(200);
    expect(runs.json.current).toBe('r1');
    const view = await get(`${base}/api/runs/r1?token=${TOKEN}`);
    expect(view.status).toBe(200);
    expect(view.json.runId).toBe('r1');
    const text = await get(`${base}/metrics?token=${TOKEN}`);
    expect(text.status).toBe(200);
    expect(text.body).toBe('up 1\n');
  });

  it('a token server answers any Host (the token guards it, not the name)', async () => {
    const { base } = await start({ token: TOKEN });
    expect((await get(`${base}/api/runs`, { host: 'evil.example', ...bearer() })).status).toBe(200);
    expect((await get(`${base}/api/runs`, { host: 'evil.example' })).status).toBe(401);
  });
});

describe('without a token, on loopback', () => {
  it('answers 403 to a Host that is not loopback (DNS rebinding)', async () => {
    const { base, source } = await start();
    for (const host of [
      'evil.example',
      'evil.example:80',
      '127.0.0.1.evil.example',
      'localhost.evil.example',
      '10.0.0.5',
    ]) {
      for (const route of ['/', '/api/runs', '/api/runs/r1', '/api/runs/r1/events']) {
        const answer = await get(`${base}${route}`, { host });
        expect(answer.status, `${host} ${route}`).toBe(403);
        expect(typeof answer.json.error).toBe('string');
      }
    }
    expect(source.runCalls).toEqual([]);
  });

  it('answers 200 to a loopback Host', async () => {
    const { base, dashboard } = await start();
    for (const host of [
      `127.0.0.1:${dashboard.port}`,
      `localhost:${dashboard.port}`,
      `[::1]:${dashboard.port}`,
      'localhost',
    ]) {
      expect((await get(`${base}/api/runs`, { host })).status, host).toBe(200);
      expect((await get(`${base}/`, { host })).status, host).toBe(200);
    }
  });

  it('needs no token, and ignores a ?token= (no redirect, no cookie)', async () => {
    const { base } = await start();
    const answer = await get(`${base}/?token=whatever`);
    expect(answer.status).toBe(200);
    expect(answer.headers['set-cookie']).toBeUndefined();
  });
});

describe('headers and methods', () => {
  it('sets the security headers on every answer', async () => {
    const { base } = await start({ token: TOKEN });
    const answers = [
      await get(`${base}/`, bearer()),
      await get(`${base}/api/runs`, bearer()),
      await get(`${base}/api/runs/nope`, bearer()),
      await get(`${base}/api/runs`),
      await get(`${base}/api/runs`, {}, 'POST'),
    ];
    expect(answers.map((answer) => answer.status)).toEqual([200, 200, 404, 401, 405]);
    for (const answer of answers) {
      const csp = header(answer, 'content-security-policy');
      expect(csp).toMatch(/(^|;\s*)default-src 'self'(;|$)/);
      expect(csp).toMatch(/frame-ancestors 'none'/);
      expect(header(answer, 'x-content-type-options')).toBe('nosniff');
      expect(header(answer, 'referrer-policy')).toBe('no-referrer');
    }
  });

  it('answers 405 to anything but GET', async () => {
    const { base, source } = await start();
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH'] as const) {
      for (const route of ['/', '/api/runs', '/api/runs/r1']) {
        const answer = await get(`${base}${route}`, {}, method);
        expect(answer.status, `${method} ${route}`).toBe(405);
        expect(typeof answer.json.error).toBe('string');
      }
    }
    expect(source.runCalls).toEqual([]);
  });
});

describe('the page and its assets', () => {
  it('serves the page, which loads /assets/app.js', async () => {
    const { base } = await start();
    const page = await get(`${base}/`);
    expect(page.status).toBe(200);
    expect(header(page, 'content-type')).toMatch(/^text\/html/);
    expect(page.body).toContain('/assets/app.js');
    expect(page.body).toContain('/assets/uPlot.iife.min.js');
  });

  it('serves uPlot, the app and their styles with their types', async () => {
    const { base } = await start();
    const uplot = await get(`${base}/assets/uPlot.iife.min.js`);
    expect(uplot.status).toBe(200);
    expect(header(uplot, 'content-type')).toMatch(/^text\/javascript/);
    expect(uplot.body).toContain('uPlot');
    const app = await get(`${base}/assets/app.js`);
    expect(header(app, 'content-type')).toMatch(/^text\/javascript/);
    expect(app.body.length).toBeGreaterThan(100);
    expect(header(await get(`${base}/assets/app.css`), 'content-type')).toMatch(/^text\/css/);
    expect(header(await get(`${base}/assets/uPlot.min.css`), 'content-type')).toMatch(/^text\/css/);
    expect((await get(`${base}/assets/nope.js`)).status).toBe(404);
  });

  it('loads nothing from another origin: every src and href is on the page origin', async () => {
    const file = fileURLToPath(
      new URL('../../src/observe/dashboard/assets/index.html', import.meta.url),
    );
    const html = await readFile(file, 'utf8');
    const { base } = await start();
    expect((await get(`${base}/`)).body).toBe(html);
    const refs = [...html.matchAll(/\b(?:src|href)\s*=\s*["']([^"']*)["']/gi)].map(
      (match) => match[1] ?? '',
    );
    expect(refs.length).toBeGreaterThanOrEqual(4);
    for (const ref of refs) {
      expect(ref, ref).not.toMatch(/^(https?:)?\/\//i);
      expect(ref, ref).toMatch(/^(\/assets\/|data:)/);
    }
    expect(html).not.toMatch(/https?:\/\//i);
    // And every asset the page names is served.
    for (const ref of refs.filter((ref) => ref.startsWith('/assets/'))) {
      expect((await get(`${base}${ref}`)).status, ref).toBe(200);
    }
  });
});

describe('/api/runs', () => {
  it("returns the source's runs and the current run given as a string", async () => {
    const { base, source } = await start({ current: 'r1' });
    const answer = await get(`${base}/api/runs`);
    expect(answer.status).toBe(200);
    expect(header(answer, 'content-type')).toMatch(/^application\/json/);
    const list = answer.json as unknown as RunList;
    expect(list.current).toBe('r1');
    expect(list.runs).toEqual(JSON.parse(JSON.stringify(source.runList)));
  });

  it('asks a current given as a function on every request', async () => {
    let current: string | undefined;
    const { base } = await start({ current: () => current });
    expect((await get(`${base}/api/runs`)).json.current).toBeUndefined();
    current = 'r1';
    expect((await get(`${base}/api/runs`)).json.current).toBe('r1');
    current = 'r0';
    expect((await get(`${base}/api/runs`)).json.current).toBe('r0');
  });

  it('has no current without one', async () => {
    const { base } = await start();
    const list = (await get(`${base}/api/runs`)).json as unknown as RunList;
    expect(list.current).toBeUndefined();
    expect(list.runs).toHaveLength(2);
  });
});

describe('/api/runs/:runId and its parts', () => {
  it('answers 404 with an error to a run the source lacks, and to a page it does not have', async () => {
    const { base } = await start();
    for (const route of [
      '/api/runs/nope',
      '/api/runs/nope/series',
      '/api/runs/nope/events',
      '/api/runs/r1/nothing',
      '/api/nothing',
      '/nothing',
    ]) {
      const answer = await get(`${base}${route}`);
      expect(answer.status, route).toBe(404);
      expect(header(answer, 'content-type'), route).toMatch(/^application\/json/);
      expect(typeof answer.json.error, route).toBe('string');
    }
  });

  it('answers 404 to a sub-path of a part that takes none (only users/:userId does)', async () => {
    const { base, source } = await start();
    // (Not events/extra: it answers a stream that never ends.)
    for (const route of ['/api/runs/r1/series/extra', '/api/runs/r1/problems/extra']) {
      const answer = await get(`${base}${route}`);
      expect(answer.status, route).toBe(404);
    }
    expect(source.problemCalls).toEqual([]);
  });

  it('returns the run view: the ledger figures and the pace of its samples', async () => {
    clock = T + 500;
    const source = new FakeSource();
    source.r1.push(...samplesEverySecond(T - 9_000, T - 1_000, 3));
    const { base } = await start({ source });
    const answer = await get(`${base}/api/runs/r1`);
    expect(answer.status).toBe(200);
    const view = answer.json as unknown as RunView;
    const basics = basicsOf();
    expect(view).toEqual(JSON.parse(JSON.stringify(runView(basics, source.r1, clock, T - 9_000))));
    expect(view.live).toBe(true);
    expect(view.perSecond).toBe(3);
    expect(view.at).toBe(T + 500);
    expect(view.elapsedMs).toBe(9_500);
  });

  it('answers 404 for a user the run lacks', async () => {
    const { base, source } = await start();
    const answer = await get(`${base}/api/runs/r1/users/nobody`);
    expect(answer.status).toBe(404);
    expect(answer.json.error).toMatch(/nobody/);
    expect(source.userCalls).toEqual([{ runId: 'r1', userId: 'nobody' }]);
  });

  it('passes a user id with spaces and / decoded to the source', async () => {
    const source = new FakeSource();
    const id = 'acme corp/user 42?&#%';
    source.users.set(id, userView(id));
    const { base } = await start({ source });
    const answer = await get(`${base}/api/runs/r1/users/${encodeURIComponent(id)}`);
    expect(answer.status).toBe(200);
    expect(source.userCalls).toEqual([{ runId: 'r1', userId: id }]);
    expect(answer.json).toEqual(JSON.parse(JSON.stringify(userView(id))));
  });

  it('decodes a run id the same way', async () => {
    const source = new FakeSource();
    const runId = 'cycle 2026/01';
    source.basics.set(runId, basicsOf({ runId }));
    const { base } = await start({ source });
    const answer = await get(`${base}/api/runs/${encodeURIComponent(runId)}`);
    expect(answer.status).toBe(200);
    expect(answer.json.runId).toBe(runId);
    expect(source.runCalls).toEqual([runId]);
  });

  it('answers 400 to bad percent-encoding, before asking the source', async () => {
    const { base, source } = await start();
    const badRun = await get(`${base}/api/runs/%E0%A4%A`);
    expect(badRun.status).toBe(400);
    expect(typeof badRun.json.error).toBe('string');
    const badUser = await get(`${base}/api/runs/r1/users/%ZZ`);
    expect(badUser.status).toBe(400);
    expect(typeof badUser.json.error).toBe('string');
    expect(source.userCalls).toEqual([]);
    // A user page without a user: no such page.
    expect((await get(`${base}/api/runs/r1/users`)).status).toBe(404);
  });

  it('answers 500 with an error when the source fails', async () => {
    const source = new FakeSource();
    source.failing = 'ledger down';
    const { base } = await start({ source });
    const answer = await get(`${base}/api/runs/r1`);
    expect(answer.status).toBe(500);
    expect(answer.json.error).toBe('ledger down');
  });
});

describe('/api/runs/:runId/problems', () => {
  it('answers 400 to an unknown state, without asking the source', async () => {
    const { base, source } = await start();
    const answer = await get(`${base}/api/runs/r1/problems?state=bogus`);
    expect(answer.status).toBe(400);
    expect(answer.json.error).toMatch(/bogus/);
    expect(source.problemCalls).toEqual([]);
  });

  it('passes state: undefined for all and for none, the state itself otherwise, and q', async () => {
    const { base, source } = await start();
    const page = await get(`${base}/api/runs/r1/problems`);
    expect(page.status).toBe(200);
    expect((page.json as unknown as ProblemPage).matching).toBe(1);
    expect((page.json as unknown as ProblemPage).problems[0]?.userId).toBe('u-9');
    await get(`${base}/api/runs/r1/problems?state=all`);
    await get(`${base}/api/runs/r1/problems?state=`);
    await get(`${base}/api/runs/r1/problems?state=failed&q=${encodeURIComponent('HTTP 503')}`);
    await get(`${base}/api/runs/r1/problems?state=pending&q=`);
    expect(source.problemCalls).toEqual([
      { runId: 'r1', filter: { state: undefined, q: undefined, limit: 100 } },
      { runId: 'r1', filter: { state: undefined, q: undefined, limit: 100 } },
      { runId: 'r1', filter: { state: undefined, q: undefined, limit: 100 } },
      { runId: 'r1', filter: { state: 'failed', q: 'HTTP 503', limit: 100 } },
      { runId: 'r1', filter: { state: 'pending', q: undefined, limit: 100 } },
    ]);
    for (const state of ['declined', 'failed', 'unknown', 'invalid', 'pending']) {
      expect((await get(`${base}/api/runs/r1/problems?state=${state}`)).status, state).toBe(200);
    }
  });

  it('clamps limit to 1..1000, 100 by default', async () => {
    const { base, source } = await start();
    const cases: Array<[string, number]> = [
      ['', 100],
      ['?limit=', 100],
      ['?limit=abc', 100],
      ['?limit=0', 1],
      ['?limit=-5', 1],
      ['?limit=1', 1],
      ['?limit=250', 250],
      ['?limit=1000', 1_000],
      ['?limit=1001', 1_000],
      ['?limit=99999', 1_000],
    ];
    for (const [query] of cases) {
      expect((await get(`${base}/api/runs/r1/problems${query}`)).status, query).toBe(200);
    }
    expect(source.problemCalls.map((call) => call.filter.limit)).toEqual(
      cases.map(([, limit]) => limit),
    );
  });

  it('passes a whole number as limit (SQLite refuses LIMIT 2.5: datatype mismatch)', async () => {
    const { base, source } = await start();
    expect((await get(`${base}/api/runs/r1/problems?limit=2.5`)).status).toBe(200);
    expect((await get(`${base}/api/runs/r1/problems?limit=0.5`)).status).toBe(200);
    const limits = source.problemCalls.map((call) => call.filter.limit);
    expect(limits).toHaveLength(2);
    for (const limit of limits) {
      expect(Number.isInteger(limit), String(limit)).toBe(true);
      expect(limit).toBeGreaterThanOrEqual(1);
      expect(limit).toBeLessThanOrEqual(2);
    }
  });
});

describe('pointsOf', () => {
  it('sums the samples of two sources in one second, and merges their histograms before the quantile', () => {
    const a = sample(T, {
      source: 'host-a:1',
      ended: 2,
      attempts: 3,
      retries: 1,
      refusals: 1,
      inFlight: 4,
      limit: 8,
      hist: histOf([100, 100]),
    });
    const b = sample(T, {
      source: 'host-b:2',
      ended: 5,
      attempts: 6,
      retries: 2,
      refusals: 0,
      inFlight: 3,
      limit: 6,
      hist: histOf([1_000, 1_000]),
    });
    const points = pointsOf([a, b]);
    expect(points).toHaveLength(1);
    const merged = histOf([100, 100, 1_000, 1_000]);
    expect(points[0]).toEqual({
      at: T,
      chargesPerSecond: 7,
      attemptsPerSecond: 9,
      retriesPerSecond: 3,
      refusalsPerSecond: 1,
      inFlight: 7,
      limit: 14,
      p50Ms: Math.round(histogramQuantile(merged, 0.5) ?? Number.NaN),
      p95Ms: Math.round(histogramQuantile(merged, 0.95) ?? Number.NaN),
      breaker: null,
    });
    // Within the merged histogram: half at 75-100 ms, half at 900-1,000 ms.
    expect(points[0]?.p50Ms).toBe(100);
    expect(points[0]?.p95Ms).toBe(990);
    // Not the mean of each source's own p95 (99 and 995).
    const meanOfQuantiles =
      ((histogramQuantile(a.hist, 0.95) ?? 0) + (histogramQuantile(b.hist, 0.95) ?? 0)) / 2;
    expect(points[0]?.p95Ms).not.toBe(Math.round(meanOfQuantiles));
  });

  it('gives null latencies to a second without attempts', () => {
    const [point] = pointsOf([sample(T, { attempts: 0, ended: 0, hist: histOf([]) })]);
    expect(point?.p50Ms).toBeNull();
    expect(point?.p95Ms).toBeNull();
  });

  it('adds the counts of two samples of ONE source in one second, and takes the gauges of the later', () => {
    const earlier = sample(T, {
      ended: 1,
      attempts: 2,
      retries: 0,
      refusals: 1,
      inFlight: 9,
      limit: 10,
      breaker: 'open',
      hist: histOf([100, 100]),
    });
    const later = sample(T, {
      ended: 3,
      attempts: 4,
      retries: 1,
      refusals: 0,
      inFlight: 2,
      limit: 12,
      breaker: 'closed',
      hist: histOf([1_000, 1_000]),
    });
    const [point, ...rest] = pointsOf([earlier, later]);
    expect(rest).toEqual([]);
    expect(point).toMatchObject({
      at: T,
      chargesPerSecond: 4,
      attemptsPerSecond: 6,
      retriesPerSecond: 1,
      refusalsPerSecond: 1,
      inFlight: 2,
      limit: 12,
      breaker: 0,
      p50Ms: 100,
      p95Ms: 990,
    });
    // The samples themselves are left as they were.
    expect(earlier.ended).toBe(1);
    expect(earlier.hist[latencyBucket(1_000)]).toBe(0);
  });

  it('takes the breaker at its worst: open 1, half-open 0.5, closed 0, none null', () => {
    const breakerOf = (...states: RunSample['breaker'][]) =>
      pointsOf(states.map((breaker, i) => sample(T, { source: `host-${i}:1`, breaker })))[0]
        ?.breaker;
    expect(breakerOf('open', 'closed')).toBe(1);
    expect(breakerOf('closed', 'open')).toBe(1);
    expect(breakerOf('half-open', 'closed')).toBe(0.5);
    expect(breakerOf('closed', 'half-open', undefined)).toBe(0.5);
    expect(breakerOf('half-open', 'open')).toBe(1);
    expect(breakerOf('closed', 'closed')).toBe(0);
    expect(breakerOf(undefined, 'closed')).toBe(0);
    expect(breakerOf(undefined, undefined)).toBeNull();
    expect(breakerOf(undefined)).toBeNull();
  });

  it('sorts the points by time, one per second', () => {
    const points = pointsOf([
      sample(T + 2_000, { source: 'b', ended: 1 }),
      sample(T, { source: 'a', ended: 2 }),
      sample(T + 1_000, { source: 'a', ended: 3 }),
      sample(T + 2_000, { source: 'a', ended: 4 }),
      sample(T - 5_000, { source: 'b', ended: 5 }),
    ]);
    expect(ats(points)).toEqual([T - 5_000, T, T + 1_000, T + 2_000]);
    expect(points.map((point) => point.chargesPerSecond)).toEqual([5, 2, 3, 5]);
    expect(pointsOf([])).toEqual([]);
  });
});

describe('runView', () => {
  // ended 1..9 over T-9 s .. T-1 s.
  const paced = (): RunSample[] =>
    Array.from({ length: 9 }, (_, i) => sample(T - 9_000 + i * 1_000, { ended: i + 1 }));

  it('is live on a fresh sample: pace over the last 5 settled seconds, and the ETA at it', () => {
    const nowMs = T + 500;
    const view = runView(basicsOf(), paced(), nowMs, T - 9_000);
    expect(view.live).toBe(true);
    // Settled: seconds ended by now - 2 s, i.e. T-9 s .. T-3 s (ended 1..7); the last 5: 3..7.
    expect(view.perSecond).toBe(5);
    expect(view.etaMs).toBe((40 / 5) * 1_000);
    expect(view.done).toBe(60);
    expect(view.elapsedMs).toBe(nowMs - (T - 9_000));
    expect(view.at).toBe(nowMs);
    expect(view).toMatchObject({
      runId: 'r1',
      inputPath: 'cycle.csv',
      endpoint: 'https://billing.example/charge',
      total: 100,
      chargedAmounts: { USD: 5_000 },
      finishedAt: undefined,
    });
  });

  it('counts a second once it ended 2 s ago, not before', () => {
    const samples = [sample(T - 3_000, { ended: 10 }), sample(T - 2_000, { ended: 100 })];
    // T-2 s ends at T-1 s: unsettled until T+1 s.
    expect(runView(basicsOf(), samples, T + 999, undefined).perSecond).toBe(10);
    expect(runView(basicsOf(), samples, T + 1_000, undefined).perSecond).toBe(55);
    // Nothing settled yet: live, but no pace and no ETA.
    const young = runView(basicsOf(), [sample(T, { ended: 50 })], T + 500, undefined);
    expect(young.live).toBe(true);
    expect(young.perSecond).toBe(0);
    expect(young.etaMs).toBeUndefined();
  });

  it('is live while the last sample is at most 5 s old', () => {
    const samples = [sample(T - 1_000)];
    expect(runView(basicsOf(), samples, T + 4_000, undefined).live).toBe(true);
    expect(runView(basicsOf(), samples, T + 4_001, undefined).live).toBe(false);
  });

  it('is not live on stale samples: no pace, no ETA, elapsed to the last sample', () => {
    const view = runView(basicsOf(), paced(), T + 10_000, T - 9_000);
    expect(view.live).toBe(false);
    expect(view.perSecond).toBe(0);
    expect(view.etaMs).toBeUndefined();
    expect(view.elapsedMs).toBe(T - (T - 9_000));
    expect(view.done).toBe(60);
  });

  it('a finished run is not live, even with fresh samples', () => {
    const finishedAt = new Date(T).toISOString();
    const view = runView(basicsOf({ finishedAt }), paced(), T + 500, T - 9_000);
    expect(view.live).toBe(false);
    expect(view.perSecond).toBe(0);
    expect(view.etaMs).toBeUndefined();
    expect(view.finishedAt).toBe(finishedAt);
  });

  it('done is total minus pending', () => {
    const counts = { pending: 7, charged: 90, declined: 1, failed: 1, unknown: 0, invalid: 1 };
    const view = runView(basicsOf({ counts }), [], T, undefined);
    expect(view.done).toBe(93);
    expect(view.counts).toEqual(counts);
  });

  it('counts elapsed from firstAt, else the first sample, else creation', () => {
    const samples = [sample(T - 4_000), sample(T - 3_000)];
    expect(runView(basicsOf(), samples, T, T - 20_000).elapsedMs).toBe(20_000);
    expect(runView(basicsOf(), samples, T, undefined).elapsedMs).toBe(4_000);
    const createdAt = new Date(T - 30_000).toISOString();
    expect(runView(basicsOf({ createdAt }), [], T, undefined).elapsedMs).toBe(30_000);
  });

  it('reports the dispatch and its deadline', () => {
    const deadline = { at: T + 60_000, feasible: true, need: 4, expectedEndAt: T + 50_000 };
    const dispatch = { mode: 'auto' as const, limit: 8, maxInFlight: 8, throttled: 2, deadline };
    const view = runView(basicsOf({ dispatch }), [], T, undefined);
    expect(view.dispatch).toEqual(dispatch);
    expect(view.deadline).toEqual(deadline);
  });
});

describe('/api/runs/:runId/series', () => {
  it('returns only settled seconds, with the last one as cursor, and the points after a cursor', async () => {
    clock = T;
    const source = new FakeSource();
    source.r1.push(
      ...samplesEverySecond(T - 5_000, T - 1_000),
      sample(T - 4_000, { source: 'host-b:2', ended: 10 }),
    );
    const { base } = await start({ source });
    const first = (await get(`${base}/api/runs/r1/series`)).json as unknown as SeriesPage;
    // T-3 s ends at T-2 s = now - 2 s: settled; T-2 s and T-1 s are not.
    expect(ats(first.points)).toEqual([T - 5_000, T - 4_000, T - 3_000]);
    expect(first.points[1]?.chargesPerSecond).toBe(11);
    expect(first.cursor).toBe(T - 3_000);
    expect(source.sampleCalls.at(-1)).toEqual({ runId: 'r1', afterAt: 0 });

    const none = (await get(`${base}/api/runs/r1/series?after=${first.cursor}`))
      .json as unknown as SeriesPage;
    expect(none).toEqual({ points: [], cursor: T - 3_000 });
    expect(source.sampleCalls.at(-1)).toEqual({ runId: 'r1', afterAt: T - 3_000 });

    clock = T + 2_500;
    source.r1.push(...samplesEverySecond(T, T + 1_000));
    const next = (await get(`${base}/api/runs/r1/series?after=${first.cursor}`))
      .json as unknown as SeriesPage;
    // Settled by T+2.5 s: seconds ended by T+0.5 s, so T-2 s and T-1 s (T ends at T+1 s).
    expect(ats(next.points)).toEqual([T - 2_000, T - 1_000]);
    expect(next.cursor).toBe(T - 1_000);

    const older = (await get(`${base}/api/runs/r1/series?after=${T - 4_000}`))
      .json as unknown as SeriesPage;
    expect(ats(older.points)).toEqual([T - 3_000, T - 2_000, T - 1_000]);
  });

  it('keeps the cursor given when there is nothing settled, and ignores a bad after', async () => {
    clock = T;
    const source = new FakeSource();
    source.r1.push(sample(T - 1_000));
    const { base } = await start({ source });
    expect((await get(`${base}/api/runs/r1/series`)).json).toEqual({ points: [], cursor: 0 });
    expect((await get(`${base}/api/runs/r1/series?after=${T - 9_000}`)).json).toEqual({
      points: [],
      cursor: T - 9_000,
    });
    expect((await get(`${base}/api/runs/r1/series?after=soon`)).json).toEqual({
      points: [],
      cursor: 0,
    });
  });
});

describe('the stream of a finished run', () => {
  it("keeps its elapsed time at the run's length, not at the time since it started", async () => {
    // A run of 30 s that ended an hour ago: the stream's updates read only the last minute.
    clock = T;
    const source = new FakeSource();
    source.r1.push(...samplesEverySecond(T - 3_630_000, T - 3_601_000));
    const { base } = await start({ source, updateIntervalMs: 50 });
    const view = (await get(`${base}/api/runs/r1`)).json as unknown as RunView;
    expect(view.elapsedMs).toBe(30_000);
    const { reader } = await openEvents(`${base}/api/runs/r1/events`);
    const [first, second] = await reader.updatesFrom(0, 2);
    expect(first?.run.elapsedMs).toBe(30_000);
    expect(second?.run.elapsedMs).toBe(30_000);
    expect(first?.run.live).toBe(false);
    reader.destroy();
  });
});

describe('a source that does not answer', () => {
  it('gets a 503 that says so in time, not a request that hangs', async () => {
    const source = new FakeSource();
    source.run = () => new Promise(() => {});
    const { base } = await start({ source, answerTimeoutMs: 100 });
    const answer = await get(`${base}/api/runs/r1`);
    expect(answer.status).toBe(503);
    expect(JSON.stringify(answer.json)).toMatch(/has not answered/);
    // What needs no ledger still answers.
    expect((await get(`${base}/api/runs`)).status).toBe(200);
  });
});

describe('/api/runs/:runId/events', () => {
  it('streams updates: retry first, then LiveUpdates whose id is the cursor, then exactly the new points', async () => {
    clock = T;
    const source = new FakeSource();
    source.r1.push(...samplesEverySecond(T - 6_000, T - 1_000));
    const { base } = await start({ source, updateIntervalMs: 50 });
    const { response, reader } = await openEvents(`${base}/api/runs/r1/events`);
    expect(response.statusCode).toBe(200);
    expect(header(response, 'content-type')).toMatch(/^text\/event-stream/);
    expect(header(response, 'cache-control')).toBe('no-store');

    const [first] = await reader.updatesFrom(0);
    expect(reader.text.startsWith('retry:')).toBe(true);
    expect(reader.events[0]?.retry).toBe('2000');
    expect(first?.run.runId).toBe('r1');
    expect(first?.run.live).toBe(true);
    expect(Array.isArray(first?.points)).toBe(true);
    // Without `after`, the stream starts after what /series already gives.
    expect(first?.points).toEqual([]);
    expect(first?.cursor).toBe(T - 3_000);
    const firstEvent = reader.events.find((event) => event.event === 'update');
    expect(firstEvent?.id).toBe(String(first?.cursor));

    // Three more seconds settle, and the later ones come in.
    const seen = reader.updates.length;
    source.r1.push(...samplesEverySecond(T, T + 2_000, 2));
    clock = T + 3_000;
    const expected = [T - 2_000, T - 1_000, T];
    const later = await reader.until('the new points', () => {
      const updates = reader.updates.slice(seen);
      return updates.at(-1)?.cursor === T ? updates : undefined;
    });
    expect(later.flatMap((update) => ats(update.points))).toEqual(expected);
    expect(later.at(-1)?.points.at(-1)?.chargesPerSecond).toBe(2);
    // And none of them again.
    const settledCount = reader.updates.length;
    const after = await reader.updatesFrom(settledCount, 2);
    for (const update of after) {
      expect(update.points).toEqual([]);
      expect(update.cursor).toBe(T);
    }
    const ids = reader.events.filter((event) => event.event === 'update').map((e) => e.id);
    expect(ids.at(-1)).toBe(String(T));
    reader.destroy();
  });

  it('with ?after= the first update carries the points after it', async () => {
    clock = T;
    const source = new FakeSource();
    source.r1.push(...samplesEverySecond(T - 6_000, T - 1_000));
    const { base } = await start({ source, updateIntervalMs: 50 });
    const { reader } = await openEvents(`${base}/api/runs/r1/events?after=${T - 5_000}`);
    const [first] = await reader.updatesFrom(0);
    expect(ats(first?.points ?? [])).toEqual([T - 4_000, T - 3_000]);
    expect(first?.cursor).toBe(T - 3_000);
    expect(reader.events.find((event) => event.event === 'update')?.id).toBe(String(T - 3_000));
    reader.destroy();
  });

  it('resumes after Last-Event-ID when the browser reconnects', async () => {
    clock = T;
    const source = new FakeSource();
    source.r1.push(...samplesEverySecond(T - 6_000, T - 1_000));
    const { base } = await start({ source, updateIntervalMs: 50 });
    const { reader } = await openEvents(`${base}/api/runs/r1/events`, {
      'last-event-id': String(T - 6_000),
    });
    const [first] = await reader.updatesFrom(0);
    expect(ats(first?.points ?? [])).toEqual([T - 5_000, T - 4_000, T - 3_000]);
    reader.destroy();
  });

  it('keeps the stream open while the source fails, says so once with a stale event, and goes on once it answers', async () => {
    clock = T;
    const source = new FakeSource();
    const { base } = await start({ source, updateIntervalMs: 50 });
    const { reader } = await openEvents(`${base}/api/runs/r1/events`);
    await reader.updatesFrom(0);
    source.failing = 'ledger\nrestarting';
    const stale = await reader.until('a stale event', () =>
      reader.events.find((event) => event.event === 'stale'),
    );
    expect(JSON.parse(stale.data ?? '{}')).toEqual({ error: 'ledger restarting', since: T });
    // Several failed updates later: still one.
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(reader.events.filter((event) => event.event === 'stale')).toHaveLength(1);
    source.failing = undefined;
    const seen = reader.updates.length;
    const [again] = await reader.updatesFrom(seen);
    expect(again?.run.runId).toBe('r1');
    reader.destroy();
  });

  it("an update's run counts elapsed from the run's first sample, as /api/runs/:runId does, however long the stream is open", async () => {
    // The stream opens as the run starts (run --dashboard): nothing has settled yet.
    clock = T;
    const source = new FakeSource();
    const { base } = await start({ source, updateIntervalMs: 50 });
    const { reader } = await openEvents(`${base}/api/runs/r1/events`);
    await reader.updatesFrom(0);
    // 90 s of billing later.
    source.r1.push(...samplesEverySecond(T, T + 90_000));
    clock = T + 90_500;
    const view = (await get(`${base}/api/runs/r1`)).json as unknown as RunView;
    expect(view.elapsedMs).toBe(90_500);
    const seen = reader.updates.length;
    const [update] = await reader.updatesFrom(seen + 1);
    expect(update?.run.live).toBe(true);
    expect(update?.run.elapsedMs).toBe(view.elapsedMs);
    reader.destroy();
  });

  it('closing the dashboard ends the open streams, promptly', async () => {
    clock = T;
    const source = new FakeSource();
    const { dashboard, base } = await start({ source, updateIntervalMs: 50 });
    const one = await openEvents(`${base}/api/runs/r1/events`);
    const two = await openEvents(`${base}/api/runs/r1/events`);
    await one.reader.updatesFrom(0);
    await two.reader.updatesFrom(0);
    dashboards.splice(dashboards.indexOf(dashboard), 1);
    await within(1_000, 'close() with streams open', dashboard.close());
    await one.reader.waitForEnd(1_000);
    await two.reader.waitForEnd(1_000);
    // Nothing polls the source any more.
    const calls = source.runCalls.length;
    await new Promise((resolve) => setTimeout(resolve, 150));
    expect(source.runCalls.length).toBe(calls);
  });

  it('stops asking the source once the client goes away', async () => {
    clock = T;
    const source = new FakeSource();
    const { base } = await start({ source, updateIntervalMs: 20 });
    const { reader } = await openEvents(`${base}/api/runs/r1/events`);
    await reader.updatesFrom(0, 2);
    reader.destroy();
    await new Promise((resolve) => setTimeout(resolve, 60));
    const calls = source.runCalls.length;
    await new Promise((resolve) => setTimeout(resolve, 120));
    expect(source.runCalls.length).toBe(calls);
  });
});

describe('/metrics', () => {
  it('answers 404 without a metrics option', async () => {
    const { base } = await start();
    const answer = await get(`${base}/metrics`);
    expect(answer.status).toBe(404);
    expect(typeof answer.json.error).toBe('string');
  });

  it("answers the metrics option's content type and text", async () => {
    let asked = 0;
    const contentType = 'text/plain; version=0.0.4; charset=utf-8';
    const { base } = await start({
      metrics: async () => {
        asked++;
        return { contentType, text: `bulkbill_charges_total{state="charged"} ${asked}\n` };
      },
    });
    const answer = await get(`${base}/metrics`);
    expect(answer.status).toBe(200);
    expect(header(answer, 'content-type')).toBe(contentType);
    expect(answer.body).toBe('bulkbill_charges_total{state="charged"} 1\n');
    expect((await get(`${base}/metrics`)).body).toBe('bulkbill_charges_total{state="charged"} 2\n');
  });
});
