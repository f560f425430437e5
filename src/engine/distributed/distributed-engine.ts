import { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { z } from 'zod';
import { resolveRetryPolicy } from '../../control/retry-policy.js';
import { breakerReport, type DispatchReport } from '../../domain/dispatch.js';
import { UsageError } from '../../domain/errors.js';
import type { InputFormat } from '../../input/index.js';
import { endedOf, type RunRecord } from '../../ledger/ledger.js';
import { RedisLedger } from '../../ledger/redis-ledger.js';
import { PaceMeter, type ProgressEvent } from '../../observe/progress.js';
import { ProviderClient, senderFromOptions } from '../../provider/index.js';
import { checkDispatchSettings, deadlineOf, mostInFlight } from '../dispatch-controls.js';
import {
  type BillHooks,
  type BillResult,
  billOptionsSchema,
  bindCredentials,
  checkWritable,
  parseOptions,
  unbilledResult,
  writeRunReport,
} from '../local-engine.js';
import { checkReachable, closeRedis, connectRedis } from './connection.js';
import { enqueue } from './enqueue.js';
import { DEFAULT_PREFIX, DEFAULT_QUEUE, ledgerPrefix } from './jobs.js';
import { type PacingState, QueuePacing, runPacing } from './queue-pacing.js';
import { redisWarnings } from './redis-checks.js';
import { PollPause, progressOf } from './status.js';
import { BillingWorker } from './worker.js';

const positiveInteger = z.number().int().min(1);

/** The distributed engine's options: the local engine's, with Redis in place of the SQLite file. */
export const distributedBillOptionsSchema = billOptionsSchema
  .omit({ ledger: true })
  .extend({
    /** Redis, as a `redis://` or `rediss://` URL. Required. */
    redis: z.string().min(1),
    /** Start of every key (the queue's and the ledger's). Default `bulkbill`. */
    prefix: z.string().min(1).default(DEFAULT_PREFIX),
    /** The BullMQ queue. Default `bulkbill`. */
    queue: z.string().min(1).default(DEFAULT_QUEUE),
    /** Jobs in flight across every worker of the queue. Default: no such limit. */
    globalConcurrency: positiveInteger.optional(),
    /** A dead worker's jobs are taken over within one to two of these, in ms. Default 30 s. */
    lockDurationMs: z.number().int().min(1_000).default(30_000),
  })
  .strict();

export type DistributedBillOptions = z.input<typeof distributedBillOptionsSchema> &
  BillHooks & {
    /** Told what the in-process worker logs. */
    readonly onLog?: (level: 'info' | 'warn' | 'error', message: string) => void;
  };

/**
 * Bills a billing cycle on the distributed engine, the way `bill()` does on the local one:
 * enqueues it (validating and importing it into the Redis ledger, or resuming it), runs one
 * worker in this process, and waits until every charge has ended, whichever worker of the queue
 * ended it. Other workers started with `bulkbill worker` on the same queue share the work.
 */
export async function billDistributed(
  options: DistributedBillOptions,
  label: (name: string) => string = (name) => `\`${name}\``,
): Promise<BillResult> {
  const {
    env,
    signal,
    onProgress,
    onRun,
    adapterModule,
    reportPath: reportPathOf,
    onLog,
    onAttempt,
    random,
    sender,
    ...plain
  } = options;
  const config = parseOptions(distributedBillOptionsSchema, plain, label);
  checkDispatchSettings(config, label);
  // Read once, at the start: a duration counts from the command, as on the local engine.
  const deadlineAt = deadlineOf(config.deadline, Date.now(), label('deadline'));
  const pacing = runPacing(config, deadlineAt);
  if (pacing !== undefined && config.globalConcurrency !== undefined) {
    throw new UsageError(
      `${label('globalConcurrency')} fixes the queue's concurrency, which ${config.concurrency === 'auto' ? `${label('concurrency')} auto` : label('deadline')} sets for every worker of the queue: give one of them`,
    );
  }
  const started = performance.now();
  const policy = resolveRetryPolicy({
    maxAttempts: config.maxAttempts,
    keyRetentionMs: config.keyRetentionMs,
  });
  const client = await senderFromOptions({
    adapter: config.adapter,
    adapterModule,
    endpoint: config.endpoint,
    provider: config.provider,
    headers: config.headers,
    env: env ?? process.env,
    signal,
    connections: mostInFlight(config),
    timeoutMs: config.timeoutMs,
    caFile: config.caFile,
    label,
  });
  let redis: Redis;
  try {
    redis = connectRedis(config.redis, 'short', label('redis'));
  } catch (error) {
    // An adapter's setup may hold sockets or timers: they must not outlive a refused run.
    await client.close();
    throw error;
  }
  const ledger = new RedisLedger({ redis, prefix: ledgerPrefix(config.prefix) });
  let patient: Redis | undefined;
  let following: RedisLedger | undefined;
  let worker: BillingWorker | undefined;
  try {
    await checkReachable(redis, config.redis, label('redis'));
    for (const warning of await redisWarnings(redis)) onLog?.('warn', warning);
    const queued = await enqueue({
      input: config.input,
      redis,
      prefix: config.prefix,
      queue: config.queue,
      runId: config.runId,
      endpoint: client.endpoint,
      skipInvalid: config.skipInvalid,
      newCycle: config.newCycle,
      retryFailed: config.retryFailed,
      format: config.format as InputFormat | undefined,
      check:
        client instanceof ProviderClient && config.provider !== undefined
          ? client.request.rowProblems
          : undefined,
      dryRun: config.dryRun,
      signal,
      onRun: async (choice) => {
        if (reportPathOf && !config.dryRun && choice.how !== 'finished') {
          await checkWritable(reportPathOf(choice.run.runId), label('reportPath'));
        }
        // Refused here, before a job is queued, as the local engine refuses it.
        if (!config.dryRun && choice.how !== 'finished') {
          await bindCredentials(ledger, choice.run.runId, (seen) => client.credentials(seen));
          // Set before its jobs are queued: no worker of the queue takes a wave of them first.
          // A command without auto or a deadline clears what an earlier one set for the run.
          await new QueuePacing({ redis, prefix: config.prefix, queue: config.queue }).setRun(
            choice.run.runId,
            pacing,
          );
        }
        onRun?.(choice);
      },
    });
    const { run } = queued.choice;
    const unbilled = await unbilledResult({
      ledger,
      choice: queued.choice,
      counts: await ledger.counts(run.runId),
      dryRun: config.dryRun,
      importMs: queued.importMs,
      planning: config,
      reportPath: reportPathOf,
      elapsedMs: () => performance.now() - started,
      preview: (charge) => client.preview(charge),
    });
    if (unbilled) return unbilled;

    // From here on Redis may restart under the run: the worker and the wait outlive it.
    patient = connectRedis(config.redis, 'patient', label('redis'));
    following = new RedisLedger({ redis: patient, prefix: ledgerPrefix(config.prefix) });
    worker = await BillingWorker.start({
      redis: patient,
      prefix: config.prefix,
      queue: config.queue,
      endpoint: client.endpoint,
      sender: sender ?? client,
      credentials: (seen: string) => client.credentials(seen),
      policy,
      concurrency: mostInFlight(config),
      rate: config.rate,
      globalConcurrency: config.globalConcurrency,
      lockDurationMs: config.lockDurationMs,
      outageWaitMs: config.outageWaitMs,
      requestTimeoutMs: config.timeoutMs,
      keepLatencies: true,
      random,
      onLog,
      ...(onAttempt === undefined ? {} : { onAttempt: (_runId, event) => onAttempt(event) }),
    });
    const queuePacing =
      pacing === undefined
        ? undefined
        : new PacingWatch(
            new QueuePacing({ redis: patient, prefix: config.prefix, queue: config.queue }),
          );
    const outcome = await waitForRun({
      ledger: following,
      redis: patient,
      prefix: config.prefix,
      queueName: config.queue,
      run,
      worker,
      signal: signal ?? (queued.interrupted ? AbortSignal.abort() : undefined),
      intervalMs: config.progressIntervalMs,
      concurrency: mostInFlight(config),
      pacing: queuePacing,
      onProgress,
    });
    const dispatch = await dispatchOf(worker, mostInFlight(config), queuePacing);
    const end = await worker.close();
    await following.finishIfComplete(run.runId);
    // Every charge ended: the run's pacing goes, and with the last paced run's the queue's
    // global concurrency is put back as it was (a decider left would do the same within a second).
    if (outcome === 'completed') {
      await queuePacing?.pacing.setRun(run.runId, undefined).catch(() => {});
    }
    const snapshot = worker.snapshot();
    const { latencies, serialMs } = worker.latencies();
    const { charged, declined, failed, unknown } = snapshot.ended;
    return {
      outcome: outcome === 'completed' || end.reason !== 'stopped' ? outcome : 'stopped',
      run: (await following.findRun(run.runId)) ?? run,
      counts: await following.counts(run.runId),
      chargedAmounts: await following.totals(run.runId, 'charged'),
      wallMs: performance.now() - started,
      ended: charged + declined + failed + unknown,
      attempts: snapshot.attempts,
      latencies,
      serialMs,
      stoppedBecause: end.stoppedBecause,
      plan: undefined,
      dispatch,
      reportPath: await writeRunReport(following, run.runId, reportPathOf),
      importMs: queued.importMs,
    };
  } finally {
    await worker?.close();
    await client.close();
    await ledger.close();
    await following?.close();
    await closeRedis(redis);
    if (patient) await closeRedis(patient);
  }
}

/**
 * How this process's worker paced its requests, and the queue's breaker (shared by every
 * worker: its openings and probes are the queue's, the attempts excused this worker's).
 */
async function dispatchOf(
  worker: BillingWorker,
  concurrency: number,
  pacing: PacingWatch | undefined,
): Promise<DispatchReport> {
  const snapshot = worker.snapshot();
  const breaker = await worker.breakerSnapshot();
  const paced = await pacing?.read();
  return {
    mode: paced?.mode ?? 'fixed',
    limit: paced?.limit ?? concurrency,
    maxInFlight: snapshot.maxInFlight,
    ...(paced === undefined ? {} : { capacity: paced.capacity, baselineMs: paced.baselineMs }),
    throttled: snapshot.throttled,
    ...(paced?.deadline === undefined ? {} : { deadline: paced.deadline }),
    ...(breaker === undefined ? {} : { breaker: breakerReport(breaker, snapshot.excused) }),
  };
}

/**
 * The queue's pacing as a paced run sees it: the decider's latest word, kept once the pacing has
 * ended (the decider may end it, the run's last charge settled, before the run's summary reads it).
 */
class PacingWatch {
  #last: PacingState | undefined;
  constructor(readonly pacing: QueuePacing) {}

  async read(): Promise<PacingState | undefined> {
    const now = await this.pacing.state().catch(() => undefined);
    if (now !== undefined) this.#last = now;
    return this.#last;
  }
}

/**
 * Polls the ledger until every charge of the run has ended (`completed`), the worker stopped
 * (`stopped`), or the signal aborted (`interrupted`); reports progress on the way.
 */
async function waitForRun(args: {
  ledger: RedisLedger;
  redis: Redis;
  prefix: string;
  queueName: string;
  run: RunRecord;
  worker: BillingWorker;
  signal: AbortSignal | undefined;
  intervalMs: number;
  concurrency: number;
  pacing: PacingWatch | undefined;
  onProgress: ((event: ProgressEvent) => void) | undefined;
}): Promise<'completed' | 'stopped' | 'interrupted'> {
  const { ledger, run, worker, signal, onProgress } = args;
  const queue = new Queue(args.queueName, { connection: args.redis, prefix: args.prefix });
  queue.on('error', () => {});
  const started = performance.now();
  const pace = new PaceMeter();
  let stopped = false;
  const pause = new PollPause();
  void worker.done.then((end) => {
    stopped = end.reason === 'stopped';
    pause.wake();
  });
  const onAbort = () => pause.wake();
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    for (;;) {
      const counts = await ledger.counts(run.runId);
      // Kept for the summary, progress shown or not: the decider ends the pacing with the run.
      if (!onProgress) await args.pacing?.read();
      if (onProgress) {
        const now = performance.now();
        onProgress(
          progressOf({
            run,
            counts,
            perSecond: pace.sample(now, endedOf(counts)),
            inFlight: worker.snapshot().inFlight,
            retrying: await queue.getDelayedCount(),
            elapsedMs: now - started,
            dispatch: await dispatchOf(worker, args.concurrency, args.pacing),
          }),
        );
      }
      if (counts.pending === 0) return 'completed';
      if (stopped) return 'stopped';
      if (signal?.aborted) return 'interrupted';
      await pause.sleep(args.intervalMs);
    }
  } finally {
    signal?.removeEventListener('abort', onAbort);
    await queue.close().catch(() => {});
  }
}
