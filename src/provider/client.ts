import { readFileSync } from 'node:fs';
import { rootCertificates } from 'node:tls';
import { type Dispatcher, Pool } from 'undici';
import type { WallClock } from '../control/retry-after.js';
import { RETRY_DEFAULTS } from '../control/retry-policy.js';
import { BulkbillError, describeValue, ErrorCode, UsageError } from '../domain/errors.js';
import type { AttemptResult } from '../domain/outcome.js';
import { classify } from './classify.js';
import { credentialsFingerprint, fingerprintSalt } from './credentials.js';
import {
  type ProviderDescription,
  type ProviderDescriptionInput,
  providerSchema,
} from './description.js';
import {
  describeHeaders,
  maskSecrets,
  parseHeaderFlags,
  REDACTED,
  type RequestHeader,
  resolveHeaders,
  secretFragments,
} from './header-template.js';
import { type Classifier, compileRules } from './rules.js';
import { type CompiledRequest, compileRequest, TemplateRenderError } from './template.js';

export interface ProviderClientOptions {
  /** PEM text of CA certificates trusted besides Node's roots (a private CA; see readCaFile). */
  readonly ca?: string;
  /**
   * Where charges are sent, e.g. `http://127.0.0.1:4010/charge`: http or https, without
   * credentials (send those with a header). Required, unless the provider description's
   * request.url is absolute; a relative request.url (`/v1/payment_intents`) resolves against it.
   */
  readonly endpoint?: string | undefined;
  /**
   * How to speak to the billing API: request template, idempotency placement, response rules.
   * Default: bulkbill's own shape (POST {user_id, amount, currency} as JSON, Idempotency-Key).
   */
  readonly provider?: ProviderDescriptionInput | undefined;
  /**
   * Headers sent with every charge (from resolveHeaders: the description's headers with the
   * --header flags over them, `${NAME}` read); values may hold per-charge placeholders such as
   * `{{idempotency_key}}`. Default: none.
   */
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
  /** The row's other columns, which a request template may read. */
  readonly metadata?: Readonly<Record<string, string>> | undefined;
  /**
   * This attempt's number, 1-based, over every crash and resume: the ledger's counted attempts
   * + 1 (throttled answers and 409s count none, so the next attempt has the same number).
   */
  readonly attempt?: number | undefined;
}

/** What an engine needs of what sends its charges: the HTTP client, or a user's adapter module. */
export interface BillingSender {
  /** What a run is bound to, as safe to print and store. */
  readonly endpoint: string;
  /** Sends one attempt; never rejects: every failure becomes a result. */
  attempt(charge: ChargeRequest): Promise<AttemptResult>;
  /** The fingerprint of the sender's credentials with a stored fingerprint's salt (or a fresh one). */
  credentials(stored?: string): string;
  /** What the first attempt of `charge` sends, secrets masked: for a dry run. */
  preview(charge: ChargeRequest): {
    method: string;
    url: string;
    headers: Record<string, string>;
    body: string;
  };
  /** Lets attempts in flight finish, then releases what the sender holds. */
  close(): Promise<void>;
  /** Whether attempts read a row's other columns (false: the ledger need not load them). */
  readonly readsMetadata?: boolean;
}

export const PROVIDER_CLIENT_DEFAULTS = {
  connections: 16,
  timeoutMs: 30_000,
} as const;

/** Most response body bytes kept: enough for a charge id or a reason, never a flood. */
const MAX_BODY_BYTES = 64 * 1024;
const systemWallClock: WallClock = { now: Date.now };

// Settings every attempt shares, built once per client.
interface AttemptShared {
  readonly classify: Classifier;
  readonly timeoutMs: number;
}

/**
 * The billing API client: one POST per attempt over a keep-alive undici Pool it owns, each
 * attempt classified into an AttemptResult. `attempt()` never rejects: every answer, timeout
 * or connection error becomes a result. Call `close()` when done.
 */
export class ProviderClient implements BillingSender {
  /** The endpoint as safe to print: no credentials, no query string. */
  readonly endpoint: string;
  readonly connections: number;
  readonly timeoutMs: number;
  /** The compiled request template: what each attempt sends. */
  readonly request: CompiledRequest;
  /** Whether the template reads a row's other columns. */
  readonly readsMetadata: boolean;
  readonly #pool: Pool;
  // `content-type, …, name, value, …`: the headers every attempt sends, before its own.
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
    const label = options.endpointLabel ?? 'endpoint';
    if (options.endpoint !== undefined) parseEndpoint(options.endpoint, label);
    const description = providerSchema.parse(options.provider ?? {});
    this.#headers = options.headers ?? [];
    this.request = compileProviderRequest(description, options.endpoint, this.#headers);
    this.endpoint = runEndpoint(this.request);
    this.readsMetadata = this.request.columns.length > 0;
    this.connections = connections;
    this.timeoutMs = timeoutMs;
    const list = ['content-type', this.request.contentType];
    for (const header of this.#headers) {
      if (!header.value.includes('{{')) list.push(header.name, header.value);
    }
    this.#headerList = list;
    const context = {
      endpoint: this.endpoint,
      wallClock: options.wallClock ?? systemWallClock,
      maxRetryAfterMs,
      // A provider that echoes the credentials in its reason must not put them in the ledger.
      mask: reasonMask(this.#headers),
    };
    this.#shared = {
      classify:
        options.provider === undefined
          ? (exchange) => classify(exchange, context)
          : compileRules(description.response, context),
      timeoutMs,
    };
    this.#pool = new Pool(this.request.origin, {
      connections,
      pipelining: 1,
      // The attempt's own deadline comes first; these only stop a stuck socket for good.
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
      // A private CA is trusted besides Node's roots, as NODE_EXTRA_CA_CERTS would be.
      connect: {
        timeout: timeoutMs,
        ...(options.ca === undefined ? {} : { ca: [...rootCertificates, options.ca] }),
      },
    });
  }

  /** Sends one attempt and classifies what came back (or did not). Never rejects. */
  attempt(charge: ChargeRequest): Promise<AttemptResult> {
    let rendered: ReturnType<CompiledRequest['render']>;
    try {
      rendered = this.request.render(charge);
    } catch (error) {
      // Nothing was sent: a row the template cannot fill stops the run, every charge pending.
      if (!(error instanceof TemplateRenderError || error instanceof RangeError)) throw error;
      return Promise.resolve({ kind: 'fatal', status: undefined, reason: error.message });
    }
    const own = rendered.headers;
    // undici copies headers into the request it builds: the shared list is never written.
    const headers = (
      own.length === 0 ? this.#headerList : this.#headerList.concat(own)
    ) as string[];
    const promise = new Promise<AttemptResult>(captureResolve);
    const handler = new AttemptHandler(this.#shared, capturedResolve);
    this.#pool.dispatch(
      { path: rendered.path, method: this.request.method, headers, body: rendered.body },
      handler,
    );
    return promise;
  }

  /** What the first attempt of `charge` sends, with secret header values masked: for a dry run. */
  preview(charge: ChargeRequest): {
    method: string;
    url: string;
    headers: Record<string, string>;
    body: string;
  } {
    const rendered = this.request.render(charge);
    const headers: Record<string, string> = { 'content-type': this.request.contentType };
    Object.assign(
      headers,
      describeHeaders(this.#headers.filter((header) => !header.value.includes('{{'))),
    );
    const templated = new Map(this.#headers.map((header) => [header.name, header.sensitive]));
    for (let index = 0; index < rendered.headers.length; index += 2) {
      const name = rendered.headers[index] as string;
      headers[name] =
        templated.get(name) === true ? REDACTED : (rendered.headers[index + 1] as string);
    }
    return {
      method: this.request.method,
      url: `${this.request.origin}${rendered.path}`,
      headers,
      body: rendered.body,
    };
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
 * A client for an engine's options: the description's headers with the `Name: value` header
 * flags over them, resolved from `env` (a missing `${NAME}` fails here, naming it), and errors
 * naming each option as `label` spells it.
 */
/**
 * The PEM text of a CA file given with `--ca` (or `ca` in the config file): refused, naming the
 * file, when it cannot be read or holds no certificate. A certificate error is never ignored.
 */
export function readCaFile(path: string, label = '--ca'): string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new BulkbillError(
      ErrorCode.Config,
      `${label}: cannot read ${path}: ${(error as Error).message}`,
      { cause: error },
    );
  }
  if (!text.includes('-----BEGIN CERTIFICATE-----')) {
    throw new BulkbillError(
      ErrorCode.Config,
      `${label}: ${path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)`,
    );
  }
  return text;
}

export function clientFromOptions(options: {
  readonly caFile?: string | undefined;
  readonly endpoint: string | undefined;
  readonly provider?: ProviderDescriptionInput | undefined;
  readonly headers: readonly string[];
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly connections: number;
  readonly timeoutMs: number;
  readonly label: (name: string) => string;
}): ProviderClient {
  const { label } = options;
  const ca = options.caFile === undefined ? undefined : readCaFile(options.caFile, label('ca'));
  return new ProviderClient({
    ...(ca === undefined ? {} : { ca }),
    endpoint: options.endpoint,
    provider: options.provider,
    headers: providerHeaders(options.provider, options.headers, options.env, label('headers')),
    connections: options.connections,
    timeoutMs: options.timeoutMs,
    endpointLabel: label('endpoint'),
  });
}

/**
 * The headers a run sends: the provider description's, then the `Name: value` flags (a flag
 * replaces the description's header of the same name), with `${NAME}` read from `env`.
 */
export function providerHeaders(
  provider: ProviderDescriptionInput | undefined,
  flags: readonly string[],
  env: Readonly<Record<string, string | undefined>>,
  label = '--header',
): RequestHeader[] {
  const own = parseHeaderFlags(flags, label);
  const given = new Set(own.map((header) => header.name.toLowerCase()));
  const described = parseHeaderFlags(
    Object.entries(provider?.request?.headers ?? {})
      .filter(([name]) => !given.has(name.toLowerCase()))
      .map(([name, value]) => `${name}: ${value}`),
    'provider.request.headers',
  );
  return resolveHeaders([...described, ...own], env);
}

/** Compiles a description's request with the run's resolved headers in place of its own. */
function compileProviderRequest(
  description: ProviderDescription,
  endpoint: string | undefined,
  headers: readonly RequestHeader[],
): CompiledRequest {
  const templated: Record<string, string> = {};
  for (const header of headers) {
    if (header.value.includes('{{')) templated[header.name] = header.value;
  }
  const idempotencyHeader = description.idempotency.header?.toLowerCase();
  for (const header of headers) {
    if (header.name.toLowerCase() === idempotencyHeader) {
      throw new UsageError(
        `header "${header.name}": bulkbill sets this header itself (it carries the idempotency key)`,
      );
    }
  }
  return compileRequest(
    { ...description, request: { ...description.request, headers: templated } },
    endpoint,
  );
}

/**
 * What a run is bound to: the request's URL (origin and path, placeholders as written), and the
 * provider's key length limit when keys are cut to it (another limit would send other keys).
 */
function runEndpoint(request: CompiledRequest): string {
  return request.maxKeyLength < 255
    ? `${request.printable} (idempotency keys cut to ${request.maxKeyLength})`
    : request.printable;
}

/**
 * The checks a description's template makes of every input row (columns it reads, currencies
 * it writes in major units), without building a client; undefined for the default shape.
 */
export function templateRowCheck(
  provider: ProviderDescriptionInput | undefined,
): CompiledRequest['rowProblems'] | undefined {
  if (provider === undefined) return undefined;
  const description = providerSchema.parse(provider);
  // The URL does not change what a row must hold: any base serves to compile it.
  const base = description.request.url?.includes('://') ? undefined : 'http://endpoint.invalid';
  return compileRequest(description, base).rowProblems;
}

/** The endpoint a run is bound to with this description, without building a client. */
export function describeRunEndpoint(
  provider: ProviderDescriptionInput | undefined,
  endpoint: string | undefined,
  label = 'endpoint',
): string {
  if (endpoint !== undefined) parseEndpoint(endpoint, label);
  return runEndpoint(compileRequest(providerSchema.parse(provider ?? {}), endpoint));
}

/**
 * A warning when charges would go over plain http to a host other than this machine's loopback:
 * the credentials and every charge would cross the network unencrypted. Undefined otherwise.
 */
export function plainHttpWarning(
  provider: ProviderDescriptionInput | undefined,
  endpoint: string | undefined,
): string | undefined {
  const { origin } = compileRequest(providerSchema.parse(provider ?? {}), endpoint);
  const url = new URL(origin);
  if (url.protocol !== 'http:') return undefined;
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const loopback = host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
  return loopback
    ? undefined
    : `charges go to ${origin} over plain http: the credentials and every charge cross the network unencrypted; use https`;
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
// The provider's certificate does not verify: every retry would fail the same way, so the run
// stops as misconfigured (charges left pending) instead of ending everyone `failed`.
const CERTIFICATE_CODES = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
  'CERT_REVOKED',
  'CERT_SIGNATURE_FAILURE',
  'CERT_REJECTED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'HOSTNAME_MISMATCH',
]);
const TIMEOUT_CODES = new Set([
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'ETIMEDOUT',
]);

function reasonMask(headers: readonly RequestHeader[]): ((text: string) => string) | undefined {
  const fragments = secretFragments(headers);
  return fragments.length === 0 ? undefined : (text) => maskSecrets(text, fragments);
}

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
  #headers: Record<string, string | string[] | undefined> | undefined;
  #chunks: Buffer[] = [];
  #bytes = 0;
  #truncated = false;

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
    this.#headers = headers;
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.#bytes >= MAX_BODY_BYTES) return;
    this.#chunks.push(chunk);
    this.#bytes += chunk.length;
    // Enough of the body to read a charge id and a reason: the status line said what happened,
    // and a provider sending megabytes is not waited for (the connection is dropped).
    if (this.#bytes >= MAX_BODY_BYTES) {
      this.#truncated = true;
      this.#answer();
      controller.abort(new AttemptExpiredError('answer body over the size read'));
    }
  }

  onResponseEnd(): void {
    this.#answer();
  }

  onResponseError(_controller: Dispatcher.DispatchController, error: Error): void {
    if (this.#settled) return;
    // The status line already said what happened; a broken body does not change it (unless
    // the description's rules read the body: see `truncated`).
    if (this.#status !== 0) {
      this.#truncated = true;
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
    if (!sent && codeText !== undefined && CERTIFICATE_CODES.has(codeText)) {
      this.#settle({
        kind: 'fatal',
        status: undefined,
        reason: `the provider's TLS certificate does not verify: ${error.message} (${codeText}); nothing was sent. Check the endpoint; a private CA is trusted with --ca <file.pem> (or NODE_EXTRA_CA_CERTS)`,
      });
      return;
    }
    this.#settle(
      this.#shared.classify({
        type: 'failure',
        failure: codeText !== undefined && TIMEOUT_CODES.has(codeText) ? 'timeout' : 'connection',
        sent,
        code: codeText,
        detail: error.message || error.name,
      }),
    );
  }

  /** The attempt's deadline passed. */
  expire(): void {
    if (this.#settled) return;
    if (this.#status !== 0) {
      this.#truncated = true;
      this.#answer();
    } else {
      const sent = this.#controller !== undefined;
      this.#settle(
        this.#shared.classify({
          type: 'failure',
          failure: 'timeout',
          sent,
          code: undefined,
          detail: `no answer within ${this.#shared.timeoutMs}ms`,
        }),
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
      this.#shared.classify({
        type: 'answer',
        status: this.#status,
        retryAfter: this.#retryAfter,
        body,
        headers: this.#headers,
        ...(this.#truncated ? { truncated: true } : {}),
      }),
    );
  }

  #settle(result: AttemptResult): void {
    if (this.#settled) return;
    this.#settled = true;
    clearTimeout(this.#timer);
    this.#resolve(result);
  }
}
