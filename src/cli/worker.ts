import { resolveRetryPolicy } from '../control/retry-policy.js';
import { UsageError } from '../domain/errors.js';
import { checkReachable, closeRedis, connectRedis } from '../engine/distributed/connection.js';
import { redisWarnings } from '../engine/distributed/redis-checks.js';
import { BillingWorker } from '../engine/distributed/worker.js';
import {
  type ProviderDescriptionInput,
  plainHttpWarning,
  senderFromOptions,
} from '../provider/index.js';
import { ExitStatus } from './exit-codes.js';
import { type ObserveFlags, Observers } from './observers.js';
import { billLabel } from './parse.js';
import { onStopSignals } from './signals.js';

export interface WorkerFlags
  extends Omit<ObserveFlags, 'dashboard' | 'dashboardHost' | 'dashboardToken'> {
  redis?: string;
  endpoint?: string;
  /** The config file's provider description. */
  provider?: unknown;
  /** A code adapter module's path (`--adapter`, or the config file's `adapter`). */
  adapter?: string;
  queue: string;
  prefix: string;
  concurrency: number;
  rate?: number;
  globalConcurrency?: number;
  timeout: number;
  outageWait?: number;
  ca?: string;
  maxAttempts: number;
  keyRetention: number;
  header: string[];
  exitWhenIdle?: boolean;
  lockDuration: number;
}

/** How often a worker logs its figures. */
const REPORT_EVERY_MS = 5_000;

/** Flags' ranges, as the local run checks them; the message names the flag. */
function checkFlags(flags: WorkerFlags): void {
  const wholeAtLeastOne = (flag: string, value: number | undefined, max: number) => {
    if (value !== undefined && !(Number.isSafeInteger(value) && value >= 1 && value <= max)) {
      throw new UsageError(`${flag}: expected a whole number from 1 to ${max}, got ${value}`);
    }
  };
  wholeAtLeastOne('--concurrency', flags.concurrency, 100_000);
  if (flags.globalConcurrency !== 0) {
    wholeAtLeastOne('--global-concurrency', flags.globalConcurrency, 1_000_000);
  }
  wholeAtLeastOne('--max-attempts', flags.maxAttempts, 100);
  if (flags.rate !== undefined && !(flags.rate >= 0)) {
    throw new UsageError(
      `--rate: expected a number above 0 (or 0 to clear the queue's rate), got ${flags.rate}`,
    );
  }
  if (!(flags.keyRetention > 0)) {
    throw new UsageError(
      `--key-retention: expected a duration above 0, got ${flags.keyRetention} ms`,
    );
  }
  if (!(flags.timeout > 0)) {
    throw new UsageError(`--timeout: expected a duration above 0, got ${flags.timeout} ms`);
  }
  if (flags.outageWait !== undefined && !(flags.outageWait >= 0)) {
    throw new UsageError(
      `--outage-wait: expected a duration (or 0 for no breaker), got ${flags.outageWait} ms`,
    );
  }
  if (!(flags.lockDuration >= 1_000)) {
    throw new UsageError(`--lock-duration: expected at least 1s, got ${flags.lockDuration} ms`);
  }
}

export async function workerCommand(flags: WorkerFlags): Promise<number> {
  checkFlags(flags);
  if (flags.redis === undefined) {
    throw new UsageError('--redis: required (give it here or as `redis` in the config file)');
  }
  const redisUrl = flags.redis;
  // JSON lines on stderr (or --log-file), for a service's log collector; headers are never
  // handed to the logger, and its redaction would censor them.
  const observers = await Observers.start(flags, { log: 'always', component: 'worker' });
  const log = observers.log as NonNullable<typeof observers.log>;
  if (observers.metricsUrl !== undefined) {
    log.info({ url: observers.metricsUrl }, 'metrics served');
    // With --log-file the log is elsewhere: the operator still sees where to scrape.
    if (flags.logFile !== undefined)
      process.stderr.write(`bulkbill: metrics on ${observers.metricsUrl}\n`);
  }
  const policy = resolveRetryPolicy({
    maxAttempts: flags.maxAttempts,
    keyRetentionMs: flags.keyRetention,
  });
  const client = await (async () => {
    try {
      return await senderFromOptions({
        adapter: flags.adapter,
        endpoint: flags.endpoint,
        provider: flags.provider as ProviderDescriptionInput | undefined,
        headers: flags.header,
        env: process.env,
        connections: flags.concurrency,
        timeoutMs: flags.timeout,
        caFile: flags.ca,
        label: billLabel,
      });
    } catch (error) {
      await observers.close();
      throw error;
    }
  })();
  if (flags.adapter === undefined) {
    const insecure = plainHttpWarning(
      flags.provider as ProviderDescriptionInput | undefined,
      flags.endpoint,
    );
    if (insecure !== undefined) log.warn(insecure);
  }
  const probe = connectRedis(redisUrl, 'short');
  try {
    await checkReachable(probe, redisUrl);
    for (const warning of await redisWarnings(probe)) log.warn(warning);
  } catch (error) {
    await client.close();
    await observers.close();
    throw error;
  } finally {
    await closeRedis(probe);
  }
  const redis = connectRedis(redisUrl, 'patient');
  let worker: BillingWorker | undefined;
  let signalled = false;
  const removeSignals = onStopSignals(
    () => {
      signalled = true;
      log.info('stopping: no new jobs; finishing those in flight (signal again to quit at once)');
      void worker?.close();
    },
    () =>
      log.warn(
        'quitting at once: jobs in flight are taken over by other workers once their lock expires',
      ),
  );
  try {
    worker = await BillingWorker.start({
      redis,
      prefix: flags.prefix,
      queue: flags.queue,
      endpoint: client.endpoint,
      sender: client,
      credentials: (seen: string) => client.credentials(seen),
      policy,
      concurrency: flags.concurrency,
      rate: flags.rate,
      globalConcurrency: flags.globalConcurrency,
      lockDurationMs: flags.lockDuration,
      outageWaitMs: flags.outageWait,
      requestTimeoutMs: flags.timeout,
      exitWhenIdle: flags.exitWhenIdle === true,
      onLog: (level, message) => log[level](message),
      onAttempt: (runId, event) => observers.attempt(event, runId),
    });
    log.info(
      {
        queue: flags.queue,
        endpoint: client.endpoint,
        concurrency: flags.concurrency,
        rate: worker.rate ?? null,
        globalConcurrency: flags.globalConcurrency ?? null,
      },
      'worker started',
    );
    if (signalled) void worker.close();
    const started = worker;
    let lastAttempts = 0;
    const gauges = setInterval(() => {
      const snapshot = started.snapshot();
      observers.metrics?.dispatch(snapshot.inFlight, flags.concurrency);
    }, 1_000);
    gauges.unref();
    const timer = setInterval(() => {
      const snapshot = started.snapshot();
      log.info(
        {
          ...snapshot.ended,
          inFlight: snapshot.inFlight,
          attempts: snapshot.attempts,
          perSecond: Math.round(((snapshot.attempts - lastAttempts) * 1_000) / REPORT_EVERY_MS),
        },
        'progress',
      );
      lastAttempts = snapshot.attempts;
    }, REPORT_EVERY_MS);
    const end = await worker.done;
    clearInterval(timer);
    clearInterval(gauges);
    log.info(
      { ...worker.snapshot().ended, attempts: worker.snapshot().attempts, reason: end.reason },
      'worker ended',
    );
    if (end.reason === 'stopped') {
      log.error(`stopped: ${end.stoppedBecause}`);
      return ExitStatus.Usage;
    }
    return ExitStatus.Ok;
  } finally {
    removeSignals();
    await worker?.close();
    await client.close();
    await closeRedis(redis);
    await observers.close();
  }
}
