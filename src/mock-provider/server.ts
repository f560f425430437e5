import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { TokenBucket } from '../control/token-bucket.js';
import { chargeFieldsProblem, IDEMPOTENCY_KEY_MAX_LENGTH } from '../domain/charge.js';
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

/** A running mock billing provider. */
export interface MockProvider {
  /** Base URL, e.g. http://127.0.0.1:4010; charges go to `${url}/charge`. */
  readonly url: string;
  readonly port: number;
  readonly options: ResolvedMockProviderOptions;
  /** The same figures as GET /stats. */
  stats(): MockProviderStats;
  /** Ids of every charge applied to a user, as GET /charges/:user_id. */
  chargesOf(userId: string): readonly string[];
  /** Forgets every charge, key and counter, as POST /reset. */
  reset(): void;
  /**
   * Stops accepting connections, lets requests in flight finish for up to `graceMs`
   * (default: the `shutdownGraceMs` option), then drops whatever is left.
   */
  close(options?: { graceMs?: number }): Promise<void>;
}

const MAX_BODY_BYTES = 64 * 1024;
const JSON_TYPE = 'application/json';
const REPLAYED = ['idempotent-replayed', 'true'] as const;

const ANSWER = {
  declined: JSON.stringify({ error: 'card_declined' }),
  unauthorized: JSON.stringify({
    error: 'unauthorized',
    message: 'Missing or invalid API key (Authorization: Bearer <key>).',
  }),
  rateLimited: JSON.stringify({ error: 'rate_limited', message: 'Too many requests.' }),
  overloaded: JSON.stringify({ error: 'overloaded', message: 'Server at capacity, retry later.' }),
  unavailable: JSON.stringify({ error: 'service_unavailable', message: 'Try again.' }),
  conflict: JSON.stringify({
    error: 'idempotency_key_in_use',
    message: 'A request with this Idempotency-Key is still being processed.',
  }),
  mismatch: JSON.stringify({
    error: 'idempotency_key_reused',
    message: 'This Idempotency-Key was first used with a different request body.',
  }),
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

function badRequest(res: ServerResponse, field: string, reason: string): void {
  send(
    res,
    400,
    JSON.stringify({ error: 'invalid_request', field, message: `${field} ${reason}` }),
  );
}

interface ChargeRequest {
  readonly userId: string;
  readonly amount: number;
  readonly currency: string;
  readonly key: string | undefined;
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
  const timers = new Set<NodeJS.Timeout>();
  let ledger = new ProviderLedger();
  let chargeCounter = 0;

  function later(ms: number, run: () => void): void {
    const timer = setTimeout(() => {
      timers.delete(timer);
      run();
    }, ms);
    timers.add(timer);
  }

  function applyCharge(request: ChargeRequest, draws: RequestDraws, res: ServerResponse): void {
    const { ledger: at, userId, entry } = request;
    let status: number;
    let body: string;
    const suffixDeclined =
      config.declineSuffix !== undefined && userId.endsWith(config.declineSuffix);
    if (suffixDeclined || draws.decline < config.declineRate) {
      at.counters.declined++;
      status = 402;
      body = ANSWER.declined;
    } else {
      chargeCounter++;
      const id = `ch_${chargeIdPrefix}${chargeCounter.toString(36).padStart(14, '0')}`;
      at.recordCharge(userId, id);
      status = 200;
      body = JSON.stringify({
        id,
        user_id: userId,
        amount: request.amount,
        currency: request.currency,
        status: 'succeeded',
      });
    }
    if (entry) {
      entry.status = status;
      entry.body = body;
    }
    if (draws.lost < config.lostRate) {
      at.counters.lost++;
      gate.leave();
      res.socket?.destroy();
      return;
    }
    if (draws.slow < config.slowRate) {
      at.counters.slow++;
      later(config.slowMs, () => {
        gate.leave();
        send(res, status, body);
      });
      return;
    }
    gate.leave();
    send(res, status, body);
  }

  /** Runs once the request holds a capacity slot. */
  function process(request: ChargeRequest, res: ServerResponse): void {
    const { ledger: at, userId, key } = request;
    const draws = drawsFor(config.seed, userId, at.nextAttempt(userId));
    if (draws.fail < config.failRate) {
      at.counters.failed_503++;
      if (key !== undefined) at.idempotency.delete(key);
      gate.leave();
      send(res, 503, ANSWER.unavailable);
      return;
    }
    const latency = config.latencyMs * (1 + config.jitter * (2 * draws.jitter - 1));
    if (latency <= 0) applyCharge(request, draws, res);
    else later(latency, () => applyCharge(request, draws, res));
  }

  function charge(req: IncomingMessage, res: ServerResponse, raw: string): void {
    const at = ledger;
    const counters = at.counters;
    counters.requests++;
    if (config.apiKey !== undefined && req.headers.authorization !== `Bearer ${config.apiKey}`) {
      counters.unauthorized++;
      send(res, 401, ANSWER.unauthorized);
      return;
    }
    if (bucket && !bucket.tryTake()) {
      counters.rejected_429++;
      if (!config.retryAfter) {
        send(res, 429, ANSWER.rateLimited);
        return;
      }
      const seconds = Math.max(1, Math.ceil(bucket.msUntilAvailable() / 1_000));
      send(res, 429, ANSWER.rateLimited, ['retry-after', String(seconds)]);
      return;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw);
    } catch {
      counters.invalid++;
      badRequest(res, 'body', 'is not valid JSON');
      return;
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      counters.invalid++;
      badRequest(res, 'body', 'must be a JSON object');
      return;
    }
    const fields = parsed as { user_id?: unknown; amount?: unknown; currency?: unknown };
    const problem = chargeFieldsProblem(fields);
    if (problem) {
      counters.invalid++;
      badRequest(res, problem.field, problem.reason);
      return;
    }
    const userId = fields.user_id as string;
    const amount = fields.amount as number;
    const currency = fields.currency as string;
    const header = req.headers['idempotency-key'];
    const key = Array.isArray(header) ? header.join(', ') : header;
    let entry: IdempotencyEntry | undefined;
    if (key === undefined) {
      counters.keyless++;
    } else {
      if (key.length === 0 || key.length > IDEMPOTENCY_KEY_MAX_LENGTH) {
        counters.invalid++;
        badRequest(
          res,
          'Idempotency-Key',
          `must be 1 to ${IDEMPOTENCY_KEY_MAX_LENGTH} characters, got ${key.length}`,
        );
        return;
      }
      const fingerprint = `${userId}\u0000${amount}\u0000${currency}`;
      const existing = at.idempotency.get(key);
      if (existing) {
        if (existing.fingerprint !== fingerprint) {
          counters.mismatches++;
          send(res, 422, ANSWER.mismatch);
        } else if (existing.status === undefined) {
          counters.conflicts++;
          send(res, 409, ANSWER.conflict);
        } else {
          counters.replays++;
          send(res, existing.status, existing.body, REPLAYED);
        }
        return;
      }
      entry = { fingerprint, status: undefined, body: '' };
      at.idempotency.set(key, entry);
    }
    const request: ChargeRequest = { userId, amount, currency, key, entry, ledger: at };
    if (config.overload === 'queue') {
      gate.enterWhenFree(() => process(request, res));
      return;
    }
    if (!gate.tryEnter()) {
      counters.rejected_503++;
      if (key !== undefined) at.idempotency.delete(key);
      send(res, 503, ANSWER.overloaded, ['retry-after', '1']);
      return;
    }
    process(request, res);
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
    const allowed =
      path === '/charge' || path === '/reset'
        ? 'POST'
        : path === '/stats' || path === '/health' || isCharges
          ? 'GET'
          : undefined;
    if (allowed === undefined) send(res, 404, ANSWER.notFound);
    else if (method !== allowed) notAllowed(res, allowed);
    else if (path === '/charge') readBody(req, res, (raw) => charge(req, res, raw));
    else if (path === '/stats') send(res, 200, JSON.stringify(stats()));
    else if (isCharges) chargesOfRoute(res, path.slice('/charges/'.length));
    else if (path === '/reset') {
      reset();
      send(res, 200, ANSWER.reset);
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

  return {
    url: `http://${host}:${port}`,
    port,
    options: config,
    stats,
    chargesOf: (userId) => ledger.chargesOf(userId),
    reset,
    close,
  };
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
