import pLimit from 'p-limit';
import { Agent, type Dispatcher, request } from 'undici';

/** One sample of the baseline client. */
export interface BareLoopOptions {
  /** Base URL of the server; charges go to `${url}/charge`. Required. */
  readonly url: string;
  /** Charges to send, an integer >= 1. Required. */
  readonly requests: number;
  /** Charges in flight at once (p-limit), an integer >= 1. Required. */
  readonly concurrency: number;
  /** Names the sample in the idempotency keys `bench-<sample>-<i>`, so samples never replay each other. Required. */
  readonly sample: string;
  /**
   * The connections to send on; pass one to keep connections warm across samples.
   * Default: `createBareAgent(concurrency)`, closed when the sample ends.
   */
  readonly dispatcher?: Dispatcher;
}

/** What one sample of the baseline client saw. */
export interface BareLoopResult {
  readonly sample: string;
  readonly requests: number;
  readonly concurrency: number;
  /** From the first charge sent to the last answer read, in ms. */
  readonly wallMs: number;
  /** Answers per second of wall time, errors excluded. */
  readonly requestsPerSecond: number;
  /** Answers with a 2xx status. */
  readonly ok: number;
  /** Answers by HTTP status, e.g. `{ "200": 60000 }`. */
  readonly statuses: Readonly<Record<string, number>>;
  /** Charges that got no answer (connect error, reset, timeout); never retried. */
  readonly errors: number;
  /** Those errors by code, e.g. `{ "UND_ERR_SOCKET": 2 }`. */
  readonly errorCodes: Readonly<Record<string, number>>;
  /** From handing a charge to undici to reading its whole answer, in ms; answered charges only. */
  readonly latencyMs: LatencySummary;
  /** When the last charge was handed to undici, in ms from the start: the send ramp at concurrency >= requests. */
  readonly lastStartedMs: number;
  /** CPU time this process spent during the sample (all threads), in ms. */
  readonly clientCpuMs: number;
}

export interface LatencySummary {
  readonly min: number;
  readonly p50: number;
  readonly p99: number;
  readonly max: number;
}

/** The baseline's connections: keep-alive (undici's default), one request per connection at a time. */
export function createBareAgent(connections: number): Agent {
  checkPositiveInteger('connections', connections);
  return new Agent({ connections, pipelining: 1 });
}

/**
 * THE baseline client: a bare p-limit + undici loop with no retries, no ledger, no engine.
 * Later benchmarks compare bulkbill against this, measured in the same run.
 */
export async function runBareLoop(options: BareLoopOptions): Promise<BareLoopResult> {
  const { url, requests, concurrency, sample } = options;
  checkPositiveInteger('requests', requests);
  checkPositiveInteger('concurrency', concurrency);
  const dispatcher = options.dispatcher ?? createBareAgent(concurrency);
  const target = `${url}/charge`;
  const limit = pLimit(concurrency);
  const statuses: Record<string, number> = {};
  const errorCodes: Record<string, number> = {};
  const latencies = new Float64Array(requests).fill(Number.NaN);
  let ok = 0;
  let errors = 0;
  let lastStarted = 0;

  const charge = async (index: number): Promise<void> => {
    const startedAt = performance.now();
    lastStarted = startedAt;
    try {
      const { statusCode, body } = await request(target, {
        dispatcher,
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'idempotency-key': `bench-${sample}-${index}`,
        },
        body: JSON.stringify({ user_id: `u${index}`, amount: 1999, currency: 'USD' }),
      });
      await body.dump();
      latencies[index] = performance.now() - startedAt;
      statuses[statusCode] = (statuses[statusCode] ?? 0) + 1;
      if (statusCode >= 200 && statusCode < 300) ok++;
    } catch (error) {
      errors++;
      const code = errorCode(error);
      errorCodes[code] = (errorCodes[code] ?? 0) + 1;
    }
  };

  const cpuBefore = process.cpuUsage();
  const started = performance.now();
  const charges: Promise<void>[] = [];
  for (let index = 0; index < requests; index++) charges.push(limit(() => charge(index)));
  await Promise.all(charges);
  const wallMs = performance.now() - started;
  const cpu = process.cpuUsage(cpuBefore);
  if (options.dispatcher === undefined) await dispatcher.close();

  return {
    sample,
    requests,
    concurrency,
    wallMs,
    requestsPerSecond: ((requests - errors) * 1_000) / wallMs,
    ok,
    statuses,
    errors,
    errorCodes,
    latencyMs: summariseLatencies(latencies),
    lastStartedMs: lastStarted - started,
    clientCpuMs: (cpu.user + cpu.system) / 1_000,
  };
}

function summariseLatencies(latencies: Float64Array): LatencySummary {
  const answered = latencies.filter((latency) => !Number.isNaN(latency)).sort();
  const at = (quantile: number) =>
    answered[Math.min(answered.length - 1, Math.floor(quantile * answered.length))] ?? Number.NaN;
  return { min: at(0), p50: at(0.5), p99: at(0.99), max: at(1) };
}

function errorCode(error: unknown): string {
  if (error instanceof Error) {
    const { code } = error as Error & { code?: unknown };
    return typeof code === 'string' ? code : error.name;
  }
  return typeof error;
}

function checkPositiveInteger(name: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new TypeError(
      `Expected \`${name}\` to be an integer >= 1, got \`${String(value)}\` (${typeof value})`,
    );
  }
}
