import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { TokenBucket } from '../control/token-bucket.js';
import { systemClock } from '../domain/clock.js';
import { BulkbillError, ErrorCode } from '../domain/errors.js';
import { CapacityGate } from './capacity-gate.js';
import { type IdempotencyEntry, type MockProviderStats, ProviderLedger } from './ledger.js';
import {
  type MockProviderOptions,
  type ResolvedMockProviderOptions,
  resolveMockProviderOptions,
} from './options.js';
import { drawsFor, hashSeed, type RequestDraws } from './random.js';
import { createShape } from './shapes/index.js';
import type { Answer, IdSource, ParsedCharge } from './shapes/shape.js';

/** A running mock billing provider. */
export interface MockProvider {
  /** Base URL, e.g. http://127.0.0.1:4010. */
  readonly url: string;
  /** Where charges go: `${url}/charge` for the default shape, `${url}/v1/payment_intents` for Stripe's. */
  readonly chargeUrl: string;
  readonly port: number;
  readonly options: ResolvedMockProviderOptions;
  /** The same figures as GET /stats. */
  stats(): MockProviderStats;
  /** Ids of every charge applied to a user, as GET /charges/:user_id. */
  chargesOf(userId: string): readonly string[];
  /** Forgets every charge, key and counter, as POST /reset. */
  reset(): void;
  /**
   * An outage of `ms`, as POST /outage?ms=…&mode=…: `503` answers every charge request 503
   * (nothing charged, no key kept) until it ends; `restart` drops every connection at once
   * (requests in flight lose their answers; those already being processed still complete, as a
   * provider's committed work does) and refuses connections until it ends, then listens again
   * on the same port with the same charges and keys. Resolves once the outage has begun.
   */
  outage(ms: number, mode?: OutageMode): Promise<void>;
  /**
   * Changes how many requests it processes at once, as POST /capacity?n=…: a provider whose
   * capacity moves during a run (a smaller one takes effect as requests in flight end).
   */
  setCapacity(capacity: number): void;
  /**
   * Stops accepting connections, lets requests in flight finish for up to `graceMs`
   * (default: the `shutdownGraceMs` option), then drops whatever is left.
   */
  close(options?: { graceMs?: number }): Promise<void>;
}

export type OutageMode = '503' | 'restart';

const MAX_BODY_BYTES = 64 * 1024;
/** Largest capacity POST /capacity takes. */
const MAX_CAPACITY = 1_000_000;
/** Longest outage an admin request may ask for. */
const MAX_OUTAGE_MS = 3_600_000;
const JSON_TYPE = 'application/json';
const RETRY_AFTER_ONE = ['retry-after', '1'] as const;

// The mock's own admin routes, the same for every shape.
const ANSWER = {
  tooLarge: JSON.stringify({ error: 'payload_too_large', message: 'Body over 64 KiB.' }),
  notFound: JSON.stringify({ error: 'not_found' }),
  reset: JSON.stringify({ ok: true }),
  health: JSON.stringify({ ok: true }),
} as const;

function send(
  res: ServerResponse,
  status: number,
  body: string,
  extraHeaders?: readonly string[],
): void {
  // A flat [name, value, …] list: the cheapest form writeHead takes.
  const headers = ['content-type', JSON_TYPE, 'content-length', String(Buffer.byteLength(body))];
  if (extraHeaders) headers.push(...extraHeaders);
  res.writeHead(status, headers);
  res.end(body);
}

/** Sends a shape's answer, with `extraHeaders` (Retry-After) after its own. */
function sendAnswer(res: ServerResponse, answer: Answer, extraHeaders?: readonly string[]): void {
  const headers =
    answer.body === ''
      ? ['content-length', '0']
      : ['content-type', JSON_TYPE, 'content-length', String(Buffer.byteLength(answer.body))];
  if (answer.headers) headers.push(...answer.headers);
  if (extraHeaders) headers.push(...extraHeaders);
  res.writeHead(answer.status, headers);
  res.end(answer.body);
}

function badRequest(res: ServerResponse, field: string, reason: string): void {
  send(
    res,
    400,
    JSON.stringify({ error: 'invalid_request', field, message: `${field} ${reason}` }),
  );
}

interface PendingCharge {
  readonly charge: ParsedCharge;
  readonly requestId: string;
  /** The key's entry in the ledger the request started with; undefined when keyless. */
  readonly entry: IdempotencyEntry | undefined;
  readonly ledger: ProviderLedger;
}

/** Starts the mock billing provider and resolves once it listens. */
export async function startMockProvider(
  options: MockProviderOptions = {},
  label?: (name: string) => string,
): Promise<MockProvider> {
  const config = resolveMockProviderOptions(options, label);
  const clock = config.clock ?? systemClock;
  const bucket =
    config.rate === undefined
      ? undefined
      : new TokenBucket({
          ratePerSecond: config.rate,
          clock,
          ...(config.burst === undefined ? {} : { burst: config.burst }),
        });
  const gate = new CapacityGate(config.capacity ?? Number.POSITIVE_INFINITY);
  const chargeIdPrefix = hashSeed(`charge-ids:${config.seed}`).toString(36).padStart(7, '0');
  const requestIdPrefix = hashSeed(`request-ids:${config.seed}`).toString(36).padStart(7, '0');
  let chargeCounter = 0;
  let requestCounter = 0;
  const ids: IdSource = {
    charge: () => `${chargeIdPrefix}${(++chargeCounter).toString(36).padStart(14, '0')}`,
    request: () => `${requestIdPrefix}${(++requestCounter).toString(36).padStart(14, '0')}`,
  };
  const shape = createShape(config.shape, { apiKey: config.apiKey, ids });
  const timers = new Set<NodeJS.Timeout>();
  /** Until when (clock ms) charge requests are answered 503: an outage window. */
  let unavailableUntil = Number.NEGATIVE_INFINITY;
  let ledger = new ProviderLedger();

  function later(ms: number, run: () => void): void {
    const timer = setTimeout(() => {
      timers.delete(timer);
      run();
    }, ms);
    timers.add(timer);
  }

  function applyCharge(pending: PendingCharge, draws: RequestDraws, res: ServerResponse): void {
    const { ledger: at, charge, entry, requestId } = pending;
    let answer: Answer;
    const rateDeclined = draws.decline < config.declineRate;
    const suffixDeclined =
      config.declineSuffix !== undefined && charge.userId.endsWith(config.declineSuffix);
    if (suffixDeclined || rateDeclined) {
      at.counters.declined++;
      // The decline's reason comes from the same seeded draws, so a seed repeats it.
      const mix = rateDeclined ? draws.decline / config.declineRate : draws.jitter;
      answer = shape.declined(charge, { requestId, mix, serial: ids.charge });
      if (entry) {
        if (shape.storesDeclines) {
          entry.status = answer.status;
          entry.body = answer.body;
        } else if (at.idempotency.get(charge.key as string) === entry) {
          at.idempotency.delete(charge.key as string);
        }
      }
    } else {
      const chargeId = shape.chargeId(ids.charge());
      at.recordCharge(charge.userId, chargeId);
      answer = shape.charged(charge, chargeId, requestId);
      if (entry) {
        entry.status = answer.status;
        entry.body = answer.body;
        entry.chargeId = chargeId;
      }
    }
    if (draws.lost < config.lostRate) {
      at.counters.lost++;
      gate.leave();
      res.socket?.destroy();
      return;
    }
    if (draws.reset < config.resetRate) {
      at.counters.reset_mid_body++;
      gate.leave();
      resetMidBody(res, answer);
      return;
    }
    if (draws.slow < config.slowRate) {
      at.counters.slow++;
      later(config.slowMs, () => {
        gate.leave();
        sendAnswer(res, answer);
      });
      return;
    }
    gate.leave();
    sendAnswer(res, answer);
  }

  /** Runs once the request holds a capacity slot. */
  function process(pending: PendingCharge, res: ServerResponse): void {
    const { ledger: at, charge } = pending;
    const draws = drawsFor(config.seed, charge.userId, at.nextAttempt(charge.userId));
    if (draws.fail < config.failRate) {
      at.counters.failed_503++;
      if (charge.key !== undefined) at.idempotency.delete(charge.key);
      gate.leave();
      sendAnswer(res, shape.unavailable(pending.requestId));
      return;
    }
    const latency = config.latencyMs * (1 + config.jitter * (2 * draws.jitter - 1));
    if (latency <= 0) applyCharge(pending, draws, res);
    else later(latency, () => applyCharge(pending, draws, res));
  }

  function chargeRoute(req: IncomingMessage, res: ServerResponse, raw: string): void {
    const at = ledger;
    const counters = at.counters;
    counters.requests++;
    const requestId = shape.requestIds ? ids.request() : '';
    // No clock read per request unless an outage was ever asked for.
    if (unavailableUntil !== Number.NEGATIVE_INFINITY && clock.now() < unavailableUntil) {
      counters.outage_503++;
      sendAnswer(res, shape.unavailable(requestId));
      return;
    }
    if (config.apiKey !== undefined && !shape.authorized(req.headers)) {
      counters.unauthorized++;
      sendAnswer(res, shape.unauthorized(req.headers, requestId));
      return;
    }
    if (bucket && !bucket.tryTake()) {
      counters.rejected_429++;
      if (!config.retryAfter) {
        sendAnswer(res, shape.rateLimited(requestId));
        return;
      }
      const seconds = Math.max(1, Math.ceil(bucket.msUntilAvailable() / 1_000));
      sendAnswer(res, shape.rateLimited(requestId), ['retry-after', String(seconds)]);
      return;
    }
    const parsed = shape.parse(req.headers, raw, requestId);
    if ('rejected' in parsed) {
      counters.invalid++;
      sendAnswer(res, parsed.rejected);
      return;
    }
    const { key } = parsed;
    let entry: IdempotencyEntry | undefined;
    if (key === undefined) {
      counters.keyless++;
    } else {
      if (key.length === 0 || key.length > shape.keyLimit) {
        counters.invalid++;
        sendAnswer(res, shape.badKey(key.length, requestId));
        return;
      }
      const existing = at.idempotency.get(key);
      if (existing) {
        if (existing.fingerprint !== parsed.fingerprint) {
          counters.mismatches++;
          sendAnswer(res, shape.keyReused(existing, key, requestId));
        } else if (existing.status === undefined) {
          counters.conflicts++;
          sendAnswer(res, shape.inProgress(key, requestId));
        } else {
          counters.replays++;
          sendAnswer(res, shape.replayed(existing, key, requestId));
        }
        return;
      }
      entry = {
        fingerprint: parsed.fingerprint,
        status: undefined,
        body: '',
        chargeId: undefined,
        requestId,
      };
      at.idempotency.set(key, entry);
    }
    const pending: PendingCharge = { charge: parsed, requestId, entry, ledger: at };
    if (config.overload === 'queue') {
      gate.enterWhenFree(() => process(pending, res));
      return;
    }
    if (!gate.tryEnter()) {
      counters.rejected_503++;
      if (key !== undefined) at.idempotency.delete(key);
      sendAnswer(res, shape.overloaded(requestId), RETRY_AFTER_ONE);
      return;
    }
    process(pending, res);
  }

  function setCapacity(capacity: number): void {
    if (!(Number.isSafeInteger(capacity) && capacity >= 1)) {
      throw new RangeError(`Expected a capacity that is a whole number >= 1, got ${capacity}`);
    }
    gate.setCapacity(capacity);
  }

  function capacityRoute(res: ServerResponse, query: URLSearchParams): void {
    const capacity = Number(query.get('n'));
    if (!(Number.isSafeInteger(capacity) && capacity >= 1 && capacity <= MAX_CAPACITY)) {
      badRequest(res, 'n', `must be a whole number from 1 to ${MAX_CAPACITY}`);
      return;
    }
    setCapacity(capacity);
    send(res, 200, JSON.stringify({ ok: true, capacity }));
  }

  function outageRoute(res: ServerResponse, query: URLSearchParams): void {
    const ms = Number(query.get('ms'));
    const mode = query.get('mode') ?? '503';
    if (!(Number.isFinite(ms) && ms > 0 && ms <= MAX_OUTAGE_MS)) {
      badRequest(res, 'ms', `must be a number of milliseconds from 1 to ${MAX_OUTAGE_MS}`);
      return;
    }
    if (mode !== '503' && mode !== 'restart') {
      badRequest(res, 'mode', 'must be 503 or restart');
      return;
    }
    // Answered first: a restart drops this connection too.
    send(res, 200, JSON.stringify({ ok: true, ms, mode }), ['connection', 'close']);
    res.on('finish', () => {
      void outage(ms, mode);
    });
  }

  let restarting: Promise<void> | undefined;
  async function outage(ms: number, mode: OutageMode = '503'): Promise<void> {
    if (mode === '503') {
      unavailableUntil = Math.max(unavailableUntil, clock.now() + ms);
      return;
    }
    if (closing || restarting) return;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeAllConnections();
    await closed;
    restarting = new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        timers.delete(timer);
        if (closing) {
          resolve();
          return;
        }
        server.listen({ port, host: config.host, backlog }, () => resolve());
      }, ms);
      timers.add(timer);
    }).finally(() => {
      restarting = undefined;
    });
  }

  function stats(): MockProviderStats {
    return {
      ...ledger.counters,
      in_flight: gate.inFlight,
      max_in_flight: gate.maxInFlight,
      queued: gate.queued,
      max_queued: gate.maxQueued,
      seed: config.seed,
    };
  }

  function reset(): void {
    ledger = new ProviderLedger();
    gate.resetPeaks();
  }

  function chargesOfRoute(res: ServerResponse, encodedUserId: string): void {
    let userId: string;
    try {
      userId = decodeURIComponent(encodedUserId);
    } catch {
      badRequest(res, 'user_id', 'is not valid percent-encoding');
      return;
    }
    const ids = ledger.chargesOf(userId);
    send(res, 200, JSON.stringify({ user_id: userId, charges: ids.length, ids }));
  }

  function route(req: IncomingMessage, res: ServerResponse): void {
    const target = req.url ?? '/';
    const query = target.indexOf('?');
    const path = query === -1 ? target : target.slice(0, query);
    const method = req.method ?? 'GET';
    const isCharges = path.startsWith('/charges/');
    const isCharge = shape.isChargePath(path);
    const allowed =
      isCharge || path === '/reset' || path === '/outage' || path === '/capacity'
        ? 'POST'
        : path === '/stats' || path === '/health' || isCharges
          ? 'GET'
          : undefined;
    if (allowed === undefined) send(res, 404, ANSWER.notFound);
    else if (method !== allowed) notAllowed(res, allowed);
    else if (isCharge) readBody(req, res, (raw) => chargeRoute(req, res, raw));
    else if (path === '/stats') send(res, 200, JSON.stringify(stats()));
    else if (isCharges) chargesOfRoute(res, path.slice('/charges/'.length));
    else if (path === '/reset') {
      reset();
      send(res, 200, ANSWER.reset);
    } else if (path === '/outage') outageRoute(res, new URLSearchParams(target.slice(query + 1)));
    else if (path === '/capacity') {
      capacityRoute(res, new URLSearchParams(query === -1 ? '' : target.slice(query + 1)));
    } else send(res, 200, ANSWER.health);
  }

  const server = createServer({ keepAliveTimeout: 10_000, noDelay: true }, route);
  // The default of 511 pending connections drops SYNs when thousands of clients connect at once.
  const backlog = 65_535;
  await new Promise<void>((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException) => {
      const where = `${config.host}:${config.port}`;
      const reason =
        error.code === 'EADDRINUSE'
          ? `port ${where} is already in use; choose another with --port (0 picks a free one)`
          : `cannot listen on ${where}: ${error.message}`;
      reject(new BulkbillError(ErrorCode.Io, reason, { cause: error }));
    };
    server.once('error', onError);
    server.listen({ port: config.port, host: config.host, backlog }, () => {
      server.off('error', onError);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const host = config.host.includes(':') ? `[${config.host}]` : config.host;

  let closing: Promise<void> | undefined;
  async function close(closeOptions?: { graceMs?: number }): Promise<void> {
    if (closing) return closing;
    const graceMs = closeOptions?.graceMs ?? config.shutdownGraceMs;
    closing = (async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      let graceTimer: NodeJS.Timeout | undefined;
      await Promise.race([
        gate.idle(),
        new Promise<void>((resolve) => {
          graceTimer = setTimeout(resolve, graceMs);
        }),
      ]);
      clearTimeout(graceTimer);
      for (const timer of timers) clearTimeout(timer);
      timers.clear();
      gate.abandonWaiting();
      server.closeAllConnections();
      await closed;
    })();
    return closing;
  }

  const url = `http://${host}:${port}`;
  return {
    url,
    chargeUrl: `${url}${shape.route}`,
    port,
    options: config,
    stats,
    chargesOf: (userId) => ledger.chargesOf(userId),
    reset,
    outage,
    setCapacity,
    close,
  };
}

/** Sends the status line, the headers and half the body of `answer`, then resets the connection. */
function resetMidBody(res: ServerResponse, answer: Answer): void {
  const body = Buffer.from(answer.body, 'utf8');
  const headers = ['content-type', JSON_TYPE, 'content-length', String(body.length)];
  if (answer.headers) headers.push(...answer.headers);
  res.writeHead(answer.status, headers);
  res.write(body.subarray(0, Math.floor(body.length / 2)), () => {
    res.socket?.resetAndDestroy();
  });
}

function notAllowed(res: ServerResponse, allowed: string): void {
  send(res, 405, JSON.stringify({ error: 'method_not_allowed', allowed }), ['allow', allowed]);
}

function readBody(req: IncomingMessage, res: ServerResponse, done: (raw: string) => void): void {
  const chunks: Buffer[] = [];
  let size = 0;
  req.on('data', (chunk: Buffer) => {
    if (size > MAX_BODY_BYTES) return;
    size += chunk.length;
    if (size > MAX_BODY_BYTES) send(res, 413, ANSWER.tooLarge, ['connection', 'close']);
    else chunks.push(chunk);
  });
  req.on('end', () => {
    if (size > MAX_BODY_BYTES) return;
    // A charge body arrives in one chunk; only a larger one needs joining.
    const body = chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks);
    done(body.toString('utf8'));
  });
}
