import { type Dispatcher, Pool } from 'undici';
import type { WallClock } from '../control/retry-after.js';
import { RETRY_DEFAULTS } from '../control/retry-policy.js';
import { describeValue, UsageError } from '../domain/errors.js';
import type { AttemptResult } from '../domain/outcome.js';
import { type ClassifyContext, classify } from './classify.js';
import { credentialsFingerprint, fingerprintSalt } from './credentials.js';
import {
  describeHeaders,
  parseHeaderFlags,
  type RequestHeader,
  resolveHeaders,
} from './header-template.js';

export interface ProviderClientOptions {
  /**
   * Where charges are POSTed, e.g. `http://127.0.0.1:4010/charge`: http or https, without
   * credentials (send those with a header). Required.
   */
  readonly endpoint: string;
  /** Headers sent with every charge (from resolveHeaders). Default: none. */
  readonly headers?: readonly RequestHeader[];
  /** Keep-alive connections kept to the provider, at most; set it to the concurrency. Default 16. */
  readonly connections?: number;
  /** Deadline of one attempt, from dispatch to the answer's last byte, in ms. Default 30000. */
  readonly timeoutMs?: number;
  /** Longest Retry-After honoured, in ms. Default RETRY_DEFAULTS.maxRetryAfterMs (5 minutes). */
  readonly maxRetryAfterMs?: number;
  /** How errors name the endpoint (the CLI passes `--endpoint`). Default `endpoint`. */
  readonly endpointLabel?: string;
  /** Calendar clock, read only for Retry-After dates. Default: Date.now. */
  readonly wallClock?: WallClock;
}

/** One attempt's request. */
export interface ChargeRequest {
  readonly userId: string;
  /** In minor units (cents). */
  readonly amount: number;
  readonly currency: string;
  /** From idempotencyKey(runId, userId): the same on every attempt of the charge. */
  readonly idempotencyKey: string;
}

export const PROVIDER_CLIENT_DEFAULTS = {
  connections: 16,
  timeoutMs: 30_000,
} as const;

/** Most response body bytes kept: enough for a charge id or a reason, never a flood. */
const MAX_BODY_BYTES = 16 * 1024;
const systemWallClock: WallClock = { now: Date.now };

// Settings every attempt shares, built once per client.
interface AttemptShared {
  readonly context: ClassifyContext;
  readonly timeoutMs: number;
}

/**
 * The billing API client: one POST per attempt over a keep-alive undici Pool it owns, each
 * attempt classified into an AttemptResult. `attempt()` never rejects: every answer, timeout
 * or connection error becomes a result. Call `close()` when done.
 */
export class ProviderClient {
  /** The endpoint as safe to print: no credentials, no query string. */
  readonly endpoint: string;
  readonly connections: number;
  readonly timeoutMs: number;
  readonly #pool: Pool;
  readonly #path: string;
  // `name, value, …, 'idempotency-key', ''`: copied per attempt, its last slot set to the key.
  readonly #headerList: readonly string[];
  readonly #headers: readonly RequestHeader[];
  readonly #shared: AttemptShared;
  #closing: Promise<void> | undefined;

  constructor(options: ProviderClientOptions) {
    const connections = options.connections ?? PROVIDER_CLIENT_DEFAULTS.connections;
    const timeoutMs = options.timeoutMs ?? PROVIDER_CLIENT_DEFAULTS.timeoutMs;
    const maxRetryAfterMs = options.maxRetryAfterMs ?? RETRY_DEFAULTS.maxRetryAfterMs;
    if (!(Number.isSafeInteger(connections) && connections >= 1)) {
      throw new RangeError(
        `Expected \`connections\` to be an integer >= 1, got ${describeValue(connections)}`,
      );
    }
    if (!(Number.isFinite(timeoutMs) && timeoutMs > 0)) {
      throw new RangeError(
        `Expected \`timeoutMs\` to be a finite number > 0, got ${describeValue(timeoutMs)}`,
      );
    }
    if (!(Number.isFinite(maxRetryAfterMs) && maxRetryAfterMs >= 0)) {
      throw new RangeError(
        `Expected \`maxRetryAfterMs\` to be a finite number >= 0, got ${describeValue(maxRetryAfterMs)}`,
      );
    }
    const url = parseEndpoint(options.endpoint, options.endpointLabel ?? 'endpoint');
    this.endpoint = `${url.origin}${url.pathname}${url.search ? '?…' : ''}`;
    this.connections = connections;
    this.timeoutMs = timeoutMs;
    this.#path = `${url.pathname}${url.search}`;
    this.#headers = options.headers ?? [];
    const list = ['content-type', 'application/json'];
    for (const header of this.#headers) list.push(header.name, header.value);
    list.push('idempotency-key', '');
    this.#headerList = list;
    this.#shared = {
      context: {
        endpoint: this.endpoint,
        wallClock: options.wallClock ?? systemWallClock,
        maxRetryAfterMs,
      },
      timeoutMs,
    };
    this.#pool = new Pool(url.origin, {
      connections,
      pipelining: 1,
      // The attempt's own deadline comes first; these only stop a stuck socket for good.
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
      connect: { timeout: timeoutMs },
    });
  }

  /** Sends one attempt and classifies what came back (or did not). Never rejects. */
  attempt(charge: ChargeRequest): Promise<AttemptResult> {
    const headers = this.#headerList.slice();
    headers[headers.length - 1] = charge.idempotencyKey;
    const body = JSON.stringify({
      user_id: charge.userId,
      amount: charge.amount,
      currency: charge.currency,
    });
    const promise = new Promise<AttemptResult>(captureResolve);
    const handler = new AttemptHandler(this.#shared, capturedResolve);
    this.#pool.dispatch({ path: this.#path, method: 'POST', headers, body }, handler);
    return promise;
  }

  /**
   * The fingerprint of this client's credentials (its sensitive headers), with `salt` (a run's
   * stored fingerprint: its salt is used) or a fresh salt; never the values themselves.
   */
  credentials(stored = ''): string {
    const salt = fingerprintSalt(stored);
    return salt === undefined
      ? credentialsFingerprint(this.#headers)
      : credentialsFingerprint(this.#headers, salt);
  }

  /** The extra headers as safe to log: secret values read `[redacted]`. */
  describeHeaders(): Record<string, string> {
    return describeHeaders(this.#headers);
  }

  /** Lets attempts in flight finish, then closes every connection. */
  close(): Promise<void> {
    this.#closing ??= this.#pool.close();
    return this.#closing;
  }
}

// Node 20 has no Promise.withResolvers: take the resolver out without a closure per attempt.
let capturedResolve: (result: AttemptResult) => void = () => {};
function captureResolve(resolve: (result: AttemptResult) => void): void {
  capturedResolve = resolve;
}

/**
 * A client for an engine's options: `Name: value` header flags resolved from `env` (a missing
 * `${NAME}` fails here, naming it), and errors naming each option as `label` spells it.
 */
export function clientFromOptions(options: {
  readonly endpoint: string;
  readonly headers: readonly string[];
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly connections: number;
  readonly timeoutMs: number;
  readonly label: (name: string) => string;
}): ProviderClient {
  const { label } = options;
  return new ProviderClient({
    endpoint: options.endpoint,
    headers: resolveHeaders(parseHeaderFlags(options.headers, label('headers')), options.env),
    connections: options.connections,
    timeoutMs: options.timeoutMs,
    endpointLabel: label('endpoint'),
  });
}

/**
 * The endpoint as a ledger records it and a person may read it: origin and path, `?…` for a
 * query string. Fails with a usage error naming `label` for anything but a credential-free
 * http(s) URL.
 */
export function printableEndpoint(endpoint: string, label = 'endpoint'): string {
  const url = parseEndpoint(endpoint, label);
  return `${url.origin}${url.pathname}${url.search ? '?…' : ''}`;
}

function parseEndpoint(endpoint: string, label: string): URL {
  // A value that may hold a password (user:pass@host) is never echoed.
  const got = endpoint.includes('@') ? '' : `, got ${JSON.stringify(endpoint)}`;
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw new UsageError(`${label}: expected a URL such as http://127.0.0.1:4010/charge${got}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new UsageError(`${label}: expected an http or https URL, got ${url.protocol}`);
  }
  if (url.username !== '' || url.password !== '') {
    throw new UsageError(
      `${label}: must not hold credentials; send them in a header, e.g. "Authorization: Bearer \${TOKEN}"`,
    );
  }
  return url;
}

/** The deadline passed before the request reached a socket: it must never be written. */
class AttemptExpiredError extends Error {
  override readonly name = 'AttemptExpiredError';
}

// The HTTP client refused the request itself: retrying the same request cannot help.
const CLIENT_REFUSED = new Set(['UND_ERR_INVALID_ARG', 'UND_ERR_CLOSED', 'UND_ERR_DESTROYED']);
const TIMEOUT_CODES = new Set([
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'ETIMEDOUT',
]);

function onDeadline(handler: AttemptHandler): void {
  handler.expire();
}

/**
 * Follows one attempt through undici. "Sent" means undici handed the request to a connected
 * socket (onRequestStart comes just before the bytes are written): an error before that
 * (refused, DNS, connect timeout) left the provider untouched; one after may not have.
 */
class AttemptHandler implements Dispatcher.DispatchHandler {
  readonly #shared: AttemptShared;
  readonly #resolve: (result: AttemptResult) => void;
  readonly #timer: NodeJS.Timeout;
  #controller: Dispatcher.DispatchController | undefined;
  #settled = false;
  #status = 0;
  #retryAfter: string | undefined;
  #chunks: Buffer[] = [];
  #bytes = 0;

  constructor(shared: AttemptShared, resolve: (result: AttemptResult) => void) {
    this.#shared = shared;
    this.#resolve = resolve;
    this.#timer = setTimeout(onDeadline, shared.timeoutMs, this);
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    if (this.#settled) {
      controller.abort(new AttemptExpiredError('attempt deadline passed before sending'));
      return;
    }
    this.#controller = controller;
  }

  onResponseStart(
    _controller: Dispatcher.DispatchController,
    statusCode: number,
    headers: Record<string, string | string[] | undefined>,
  ): void {
    if (statusCode < 200) return;
    this.#status = statusCode;
    const retryAfter = headers['retry-after'];
    this.#retryAfter = Array.isArray(retryAfter) ? retryAfter[0] : retryAfter;
  }

  onResponseData(_controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.#bytes >= MAX_BODY_BYTES) return;
    this.#chunks.push(chunk);
    this.#bytes += chunk.length;
  }

  onResponseEnd(): void {
    this.#answer();
  }

  onResponseError(_controller: Dispatcher.DispatchController, error: Error): void {
    if (this.#settled) return;
    // The status line already said what happened; a broken body does not change it.
    if (this.#status !== 0) {
      this.#answer();
      return;
    }
    const code = (error as { code?: unknown }).code;
    const codeText = typeof code === 'string' ? code : undefined;
    const sent = this.#controller !== undefined;
    if (!sent && codeText !== undefined && CLIENT_REFUSED.has(codeText)) {
      this.#settle({
        kind: 'fatal',
        status: undefined,
        reason: `the HTTP client refused the request: ${error.message} (${codeText})`,
      });
      return;
    }
    this.#settle(
      classify(
        {
          type: 'failure',
          failure: codeText !== undefined && TIMEOUT_CODES.has(codeText) ? 'timeout' : 'connection',
          sent,
          code: codeText,
          detail: error.message || error.name,
        },
        this.#shared.context,
      ),
    );
  }

  /** The attempt's deadline passed. */
  expire(): void {
    if (this.#settled) return;
    if (this.#status !== 0) {
      this.#answer();
    } else {
      const sent = this.#controller !== undefined;
      this.#settle(
        classify(
          {
            type: 'failure',
            failure: 'timeout',
            sent,
            code: undefined,
            detail: `no answer within ${this.#shared.timeoutMs}ms`,
          },
          this.#shared.context,
        ),
      );
    }
    // Drop the connection: whatever it still carries belongs to an attempt that is over.
    this.#controller?.abort(new AttemptExpiredError('attempt deadline passed'));
  }

  #answer(): void {
    const chunks = this.#chunks;
    const body =
      chunks.length === 0
        ? ''
        : (chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks)).toString('utf8');
    this.#settle(
      classify(
        { type: 'answer', status: this.#status, retryAfter: this.#retryAfter, body },
        this.#shared.context,
      ),
    );
  }

  #settle(result: AttemptResult): void {
    if (this.#settled) return;
    this.#settled = true;
    clearTimeout(this.#timer);
    this.#resolve(result);
  }
}
