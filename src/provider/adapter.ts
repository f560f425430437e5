import { stat } from 'node:fs/promises';
import { basename, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { z } from 'zod';
import { RETRY_DEFAULTS } from '../control/retry-policy.js';
import { BulkbillError, describeValue, ErrorCode, UsageError } from '../domain/errors.js';
import type { AttemptResult } from '../domain/outcome.js';
import { oneLineReason } from './classify.js';
import {
  type BillingSender,
  type ChargeRequest,
  clientFromOptions,
  type ProviderClient,
} from './client.js';
import { credentialsFingerprint, fingerprintSalt } from './credentials.js';
import type { ProviderDescriptionInput } from './description.js';
import { REDACTED } from './header-template.js';

/*
 * Code adapters: a user's module that sends each charge itself (an OAuth flow, a two-step API,
 * an official SDK), where a request template cannot say how. bulkbill keeps everything else:
 * the ledger, the idempotency key, retries, limits, the deadline, the report.
 */

/** The charge an adapter is asked to make. */
export interface AdapterCharge {
  readonly userId: string;
  /** In minor units (cents). */
  readonly amount: number;
  /** ISO 4217, as the input gives it (upper case). */
  readonly currency: string;
  /** The row's other columns; empty when it has none. */
  readonly metadata: Readonly<Record<string, string>>;
}

/** What an adapter is told of one attempt. */
export interface AdapterAttemptContext {
  /** `<run-id>:<user-id>`: the same on every attempt of the charge. The adapter must send it. */
  readonly idempotencyKey: string;
  /** Fires at the attempt's deadline: stop, the attempt is over (its answer is not read). */
  readonly signal: AbortSignal;
  /** This attempt's number, 1-based, over every crash and resume (ChargeRequest.attempt). */
  readonly attempt: number;
}

/** What an adapter's setup() is given. */
export interface AdapterSetupContext {
  /** The environment (bill()'s `env`, else process.env). */
  readonly env: Readonly<Record<string, string | undefined>>;
  /** The run's signal: fires when the operator stops the run. */
  readonly signal: AbortSignal;
}

/**
 * A code adapter: the module a user writes. Only `charge` is required; it returns an
 * AttemptResult (validated at run time: anything else is an ambiguous retry).
 */
export interface AdapterModule {
  setup?(context: AdapterSetupContext): unknown;
  charge(charge: AdapterCharge, context: AdapterAttemptContext): unknown;
  close?(): unknown;
  /** What a run is bound to (read after setup()). Default `adapter:<file name>`. */
  readonly endpoint?: unknown;
  /** A secret whose fingerprint binds the run (read once, after setup()); never stored. */
  credentials?(): unknown;
}

/** Timers, injectable so a test moves the deadline with a fake clock. */
export interface AdapterTimers {
  setTimeout(run: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface AdapterOptions {
  /** Deadline of one attempt, in ms: the signal fires and the attempt is an ambiguous retry. */
  readonly timeoutMs: number;
  /** Given to setup(). Default process.env. */
  readonly env?: Readonly<Record<string, string | undefined>> | undefined;
  /** The run's signal, given to setup(). Default: one that never fires. */
  readonly signal?: AbortSignal | undefined;
  /** How errors name the option (the CLI passes `--adapter`). Default `adapter`. */
  readonly label?: string | undefined;
  /** Longest Retry-After honoured, in ms. Default RETRY_DEFAULTS.maxRetryAfterMs (5 minutes). */
  readonly maxRetryAfterMs?: number | undefined;
  /** Default: the system's. */
  readonly timers?: AdapterTimers | undefined;
}

const systemTimers: AdapterTimers = {
  setTimeout: (run, ms) => setTimeout(run, ms),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

/**
 * Imports the adapter module at `path` (resolved against the working directory), checks that
 * it exports a `charge` function, and runs its setup(). Fails with a usage error naming the
 * path when the file is missing, cannot be imported or exports no `charge`.
 */
export async function loadAdapter(path: string, options: AdapterOptions): Promise<AdapterSender> {
  const label = options.label ?? 'adapter';
  const file = resolve(path);
  const found = await stat(file).catch((error: NodeJS.ErrnoException) => error);
  if (found instanceof Error) {
    throw new UsageError(
      `${label}: cannot load ${path}: ${found.code === 'ENOENT' ? 'no such file' : found.message}`,
    );
  }
  if (!found.isFile()) throw new UsageError(`${label}: cannot load ${path}: not a file`);
  let namespace: unknown;
  try {
    namespace = await import(pathToFileURL(file).href);
  } catch (error) {
    throw new UsageError(`${label}: cannot load ${path}: ${errorText(error)}`);
  }
  return AdapterSender.open(namespace, { ...options, name: basename(file), where: path });
}

/**
 * Sends each charge through a code adapter, with the surface the engines use of ProviderClient:
 * attempt() never rejects (a thrown error or a malformed outcome is an ambiguous retry), every
 * attempt has the deadline, and the credentials are a fingerprint of the adapter's secret.
 */
export class AdapterSender implements BillingSender {
  /** What the run is bound to: the module's `endpoint`, or `adapter:<file name>`. */
  readonly endpoint: string;
  readonly timeoutMs: number;
  /** An adapter is handed every row's other columns. */
  readonly readsMetadata = true;
  /** The adapter as reasons name it: its file name. */
  readonly name: string;
  readonly #module: AdapterModule;
  readonly #secret: string | undefined;
  readonly #timers: AdapterTimers;
  readonly #maxRetryAfterMs: number;
  #closing: Promise<void> | undefined;

  private constructor(
    module: AdapterModule,
    settings: { name: string; endpoint: string; secret: string | undefined } & AdapterOptions,
  ) {
    this.#module = module;
    this.name = settings.name;
    this.endpoint = settings.endpoint;
    this.#secret = settings.secret;
    this.timeoutMs = settings.timeoutMs;
    this.#timers = settings.timers ?? systemTimers;
    this.#maxRetryAfterMs = settings.maxRetryAfterMs ?? RETRY_DEFAULTS.maxRetryAfterMs;
  }

  /**
   * An adapter from a module already loaded (a namespace or a plain object): checks it, runs
   * its setup(), reads its endpoint and credentials. `name` names it in reasons (default
   * `module`); `where` in errors (default: the name).
   */
  static async open(
    module: unknown,
    options: AdapterOptions & { readonly name?: string; readonly where?: string },
  ): Promise<AdapterSender> {
    const label = options.label ?? 'adapter';
    const name = options.name ?? 'module';
    const where = `${label}: ${options.where ?? name}`;
    const timeoutMs = options.timeoutMs;
    if (!(Number.isFinite(timeoutMs) && timeoutMs > 0)) {
      throw new RangeError(
        `Expected \`timeoutMs\` to be a finite number > 0, got ${describeValue(timeoutMs)}`,
      );
    }
    const adapter = adapterModuleOf(module, where);
    if (adapter.setup !== undefined) {
      try {
        await adapter.setup({
          env: options.env ?? process.env,
          signal: options.signal ?? new AbortController().signal,
        });
      } catch (error) {
        throw new BulkbillError(
          ErrorCode.Config,
          `${where}: setup() failed: ${errorText(error)} (nothing was charged)`,
        );
      }
    }
    try {
      const endpoint = endpointOf(adapter.endpoint, name, where);
      const secret = await secretOf(adapter, where);
      return new AdapterSender(adapter, { ...options, name, endpoint, secret });
    } catch (error) {
      await closeQuietly(adapter);
      throw error;
    }
  }

  /** Runs one attempt through the adapter's charge(). Never rejects. */
  attempt(request: ChargeRequest): Promise<AttemptResult> {
    const charge: AdapterCharge = {
      userId: request.userId,
      amount: request.amount,
      currency: request.currency,
      metadata: request.metadata ?? NO_METADATA,
    };
    const controller = new AbortController();
    const context: AdapterAttemptContext = {
      idempotencyKey: request.idempotencyKey,
      signal: controller.signal,
      attempt: request.attempt ?? 1,
    };
    return new Promise<AttemptResult>((resolveResult) => {
      let settled = false;
      const timers = this.#timers;
      const timer = timers.setTimeout(() => {
        if (settled) return;
        settled = true;
        // Not waited for: whatever the adapter still does belongs to an attempt that is over.
        resolveResult(this.#ambiguous(`timeout: no answer within ${this.timeoutMs}ms`));
        controller.abort(new AdapterDeadlineError(`no answer within ${this.timeoutMs}ms`));
      }, this.timeoutMs);
      const settle = (result: AttemptResult) => {
        if (settled) return;
        settled = true;
        timers.clearTimeout(timer);
        resolveResult(result);
      };
      let returned: unknown;
      try {
        returned = this.#module.charge(charge, context);
      } catch (error) {
        settle(this.#threw(error));
        return;
      }
      Promise.resolve(returned).then(
        (value) => settle(this.#outcomeOf(value)),
        (error: unknown) => settle(this.#threw(error)),
      );
    });
  }

  /** What the first attempt of `charge` is handed, for a dry run: the charge and its key. */
  preview(request: ChargeRequest): {
    method: string;
    url: string;
    headers: Record<string, string>;
    body: string;
  } {
    return {
      method: 'adapter',
      url: this.endpoint,
      headers: {},
      body: JSON.stringify({
        charge: {
          userId: request.userId,
          amount: request.amount,
          currency: request.currency,
          metadata: request.metadata ?? NO_METADATA,
        },
        idempotencyKey: request.idempotencyKey,
      }),
    };
  }

  /**
   * The fingerprint of the adapter's credentials() (none: the fingerprint of no credentials),
   * with `stored`'s salt or a fresh one; never the secret itself.
   */
  credentials(stored = ''): string {
    const secrets =
      this.#secret === undefined
        ? []
        : [{ name: 'adapter-credentials', value: this.#secret, sensitive: true }];
    const salt = fingerprintSalt(stored);
    return salt === undefined
      ? credentialsFingerprint(secrets)
      : credentialsFingerprint(secrets, salt);
  }

  /** Calls the adapter's close() once; its failure is not the run's. */
  close(): Promise<void> {
    this.#closing ??= closeQuietly(this.#module);
    return this.#closing;
  }

  #outcomeOf(value: unknown): AttemptResult {
    const parsed = outcomeSchema.safeParse(value);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      const at = issue === undefined || issue.path.length === 0 ? '' : `${issue.path.join('.')}: `;
      const what =
        typeof value !== 'object' || value === null || Array.isArray(value)
          ? `expected an outcome object, got ${kindOf(value)}`
          : `${at}${issue?.message ?? 'invalid'}`;
      return this.#ambiguous(`charge() returned a malformed outcome (${what})`);
    }
    const outcome = parsed.data;
    switch (outcome.kind) {
      case 'charged': {
        const id = outcome.chargeId;
        return {
          kind: 'charged',
          status: outcome.status,
          chargeId:
            id !== undefined && id !== null && id.length > 0 && id.length <= 255 ? id : undefined,
        };
      }
      case 'declined':
        return {
          kind: 'declined',
          status: outcome.status,
          reason: this.#reason(outcome.reason, 'declined'),
        };
      case 'retry':
        return {
          kind: 'retry',
          status: outcome.status,
          reason: this.#reason(outcome.reason, 'retry'),
          ambiguous: outcome.ambiguous,
          throttled: outcome.throttled,
          retryAfterMs:
            outcome.retryAfterMs === undefined
              ? undefined
              : Math.min(outcome.retryAfterMs, this.#maxRetryAfterMs),
          ...(outcome.conflict === undefined ? {} : { conflict: outcome.conflict }),
          ...(outcome.final === undefined ? {} : { final: outcome.final }),
        };
      case 'fatal':
        return {
          kind: 'fatal',
          status: outcome.status,
          reason: this.#reason(outcome.reason, 'fatal'),
        };
    }
  }

  #threw(error: unknown): AttemptResult {
    return this.#ambiguous(`charge() threw ${errorText(error)}`);
  }

  /** An attempt that may have reached the provider and gave no outcome: retried with the key. */
  #ambiguous(what: string): AttemptResult {
    return {
      kind: 'retry',
      status: undefined,
      reason: this.#reason(`${what}; the provider may have charged`, 'retry', true),
      ambiguous: true,
      throttled: false,
      retryAfterMs: undefined,
    };
  }

  /**
   * A reason as the ledger keeps it: one line, short, the adapter's secret and any bearer token
   * masked; `own` (bulkbill's words, not the adapter's) names the adapter.
   */
  #reason(text: string, kind: string, own = false): string {
    const secret = this.#secret;
    const masked = (
      secret !== undefined && secret.length >= 4 ? text.replaceAll(secret, REDACTED) : text
    ).replace(BEARER, `$1${REDACTED}`);
    const named = own ? `adapter ${this.name}: ${masked}` : masked;
    return oneLineReason(named) ?? `adapter ${this.name}: ${kind}`;
  }
}

/** Aborts an adapter's attempt at its deadline (the signal's reason). */
export class AdapterDeadlineError extends Error {
  override readonly name = 'AdapterDeadlineError';
}

/**
 * What sends a run's charges: the adapter module when the options name one (a path, or a module
 * object), else the HTTP client. An adapter sends charges itself, so it is refused together with
 * a provider description, an endpoint or headers (none of them would be used).
 */
export async function senderFromOptions(options: {
  readonly caFile?: string | undefined;
  readonly adapter?: string | undefined;
  readonly adapterModule?: AdapterModule | undefined;
  readonly endpoint: string | undefined;
  readonly provider?: ProviderDescriptionInput | undefined;
  readonly headers: readonly string[];
  readonly env: Readonly<Record<string, string | undefined>>;
  readonly signal?: AbortSignal | undefined;
  readonly connections: number;
  readonly timeoutMs: number;
  readonly label: (name: string) => string;
}): Promise<ProviderClient | AdapterSender> {
  const adapter = chosenAdapter(options, options.label);
  if (adapter === undefined) return clientFromOptions(options);
  return openAdapter(adapter, {
    timeoutMs: options.timeoutMs,
    env: options.env,
    signal: options.signal,
    label: options.label('adapter'),
  });
}

/**
 * The adapter the options name (a path or a module), or undefined for the HTTP client; refuses
 * an adapter together with what only the HTTP client reads.
 */
export function chosenAdapter(
  options: {
    readonly adapter?: string | undefined;
    readonly adapterModule?: AdapterModule | undefined;
    readonly endpoint?: string | undefined;
    readonly provider?: unknown;
    readonly headers?: readonly string[] | undefined;
  },
  label: (name: string) => string,
): string | AdapterModule | undefined {
  const { adapter, adapterModule } = options;
  if (adapter !== undefined && adapterModule !== undefined) {
    throw new UsageError(`${label('adapter')} and ${label('adapterModule')}: give one`);
  }
  const chosen = adapter ?? adapterModule;
  if (chosen === undefined) return undefined;
  const sends = 'an adapter sends charges itself';
  if (options.provider !== undefined) {
    throw new UsageError(
      `${label('adapter')}: ${sends}; it reads no provider description (remove \`provider\`)`,
    );
  }
  if (options.endpoint !== undefined) {
    throw new UsageError(
      `${label('adapter')}: ${sends}, to where it chooses; it takes no ${label('endpoint')} (its \`endpoint\` export names what the run is bound to)`,
    );
  }
  if (options.headers !== undefined && options.headers.length > 0) {
    throw new UsageError(
      `${label('adapter')}: ${sends} with its own headers; ${label('headers')} would not be sent (give the adapter its secrets through the environment)`,
    );
  }
  return chosen;
}

/** Loads the adapter at a path, or opens a module already loaded. */
export function openAdapter(
  adapter: string | AdapterModule,
  options: AdapterOptions,
): Promise<AdapterSender> {
  return typeof adapter === 'string'
    ? loadAdapter(adapter, options)
    : AdapterSender.open(adapter, options);
}

const NO_METADATA: Readonly<Record<string, string>> = Object.freeze({});
// `Bearer <token>` in an error message: the token is masked.
const BEARER = /(bearer\s+)[^\s,;"')]+/gi;
const ENDPOINT_MAX_LENGTH = 300;

const status = z.number().int().min(100).max(599);
const reason = z.string();

/** The AttemptResult union, as an adapter must return it. */
const outcomeSchema = z.discriminatedUnion('kind', [
  z.strictObject({
    kind: z.literal('charged'),
    status,
    chargeId: z.string().nullish(),
  }),
  z.strictObject({ kind: z.literal('declined'), status, reason }),
  z.strictObject({
    kind: z.literal('retry'),
    status: status.optional(),
    reason,
    ambiguous: z.boolean(),
    throttled: z.boolean(),
    retryAfterMs: z.number().finite().min(0).optional(),
    conflict: z.boolean().optional(),
    final: z.boolean().optional(),
  }),
  z.strictObject({ kind: z.literal('fatal'), status: status.optional(), reason }),
]);

function adapterModuleOf(value: unknown, where: string): AdapterModule {
  const record = (typeof value === 'object' && value !== null ? value : {}) as Partial<
    Record<keyof AdapterModule | 'default', unknown>
  >;
  // A CommonJS module (module.exports = { charge }) arrives as the default export.
  const fallback = record.default;
  const module =
    typeof record.charge !== 'function' &&
    typeof fallback === 'object' &&
    fallback !== null &&
    typeof (fallback as { charge?: unknown }).charge === 'function'
      ? (fallback as Partial<Record<keyof AdapterModule, unknown>>)
      : record;
  if (typeof module.charge !== 'function') {
    throw new UsageError(
      `${where}: exports no \`charge\` function (expected \`export async function charge(charge, ctx)\` returning an outcome)`,
    );
  }
  for (const name of ['setup', 'close', 'credentials'] as const) {
    if (module[name] !== undefined && typeof module[name] !== 'function') {
      throw new UsageError(`${where}: \`${name}\` must be a function, got ${kindOf(module[name])}`);
    }
  }
  return module as AdapterModule;
}

function endpointOf(value: unknown, name: string, where: string): string {
  if (value === undefined) return `adapter:${name}`;
  if (typeof value !== 'string' || value.length === 0 || value.length > ENDPOINT_MAX_LENGTH) {
    throw new UsageError(
      `${where}: \`endpoint\` must be a string of 1 to ${ENDPOINT_MAX_LENGTH} characters, got ${kindOf(value)}`,
    );
  }
  // Printed and stored with the run: it must be one line, and hold no credentials.
  if (!/^[\x21-\x7e]+$/.test(value)) {
    throw new UsageError(`${where}: \`endpoint\` must be printable ASCII without spaces`);
  }
  if (/\/\/[^/]*@/.test(value)) {
    throw new UsageError(`${where}: \`endpoint\` must not hold credentials (user:password@)`);
  }
  return value;
}

async function secretOf(adapter: AdapterModule, where: string): Promise<string | undefined> {
  if (adapter.credentials === undefined) return undefined;
  let secret: unknown;
  try {
    secret = await adapter.credentials();
  } catch (error) {
    throw new UsageError(`${where}: credentials() failed: ${errorText(error)}`);
  }
  if (secret === undefined || secret === null || secret === '') return undefined;
  if (typeof secret !== 'string') {
    throw new UsageError(
      `${where}: credentials() must return a string (or nothing), got ${kindOf(secret)}`,
    );
  }
  return secret;
}

async function closeQuietly(adapter: AdapterModule): Promise<void> {
  try {
    await adapter.close?.();
  } catch {
    // The charges are recorded; a module that cannot close leaves nothing to undo.
  }
}

/** An error as a reason may hold it: its name, message and code; never its stack. */
function errorText(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code;
    const name = error.name && error.name !== 'Error' ? `${error.name}: ` : '';
    const codeText = typeof code === 'string' || typeof code === 'number' ? ` (${code})` : '';
    return `${name}${error.message || '(no message)'}${codeText}`;
  }
  return typeof error === 'string' ? error : kindOf(error);
}

/** A value's kind for an error message, never its content (it could be a secret). */
function kindOf(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'nothing';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'object' ? 'an object' : `a ${typeof value}`;
}
