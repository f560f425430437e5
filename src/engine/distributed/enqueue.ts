import { Queue } from 'bullmq';
import { BulkbillError, ErrorCode, UsageError } from '../../domain/errors.js';
import { runIdProblem } from '../../domain/idempotency-key.js';
import { hashInput, type InputFormat, type ReadInputOptions } from '../../input/index.js';
import { RedisLedger } from '../../ledger/redis-ledger.js';
import { endpointMismatch, type RunChoice, settleRun, UNBOUND_ENDPOINT } from '../run-choice.js';
import {
  type ChargeJobData,
  DEFAULT_PREFIX,
  DEFAULT_QUEUE,
  JOB_ATTEMPTS,
  JOB_NAME,
  jobIdOf,
  ledgerPrefix,
  type QueuePlace,
} from './jobs.js';
import { redisKeepsNothing } from './redis-checks.js';

export interface EnqueueOptions extends QueuePlace {
  /** The billing cycle: a CSV or NDJSON file. */
  readonly input: string;
  /** Names the run. Default: resume the input's unfinished run, else a fresh id. */
  readonly runId?: string | undefined;
  /** Binds the run to this endpoint now (printable form); default: its first worker binds it. */
  readonly endpoint?: string | undefined;
  readonly skipInvalid?: boolean | undefined;
  /** Create a new run although the input shares users with an unfinished one. */
  readonly newCycle?: boolean | undefined;
  /** Make the run's failed and unknown charges pending again and queue them. */
  readonly retryFailed?: boolean | undefined;
  readonly format?: InputFormat | undefined;
  /** More rules for a valid row: the provider template's (see ReadInputOptions.check). */
  readonly check?: ReadInputOptions['check'];
  /** Told which run is queued, once it is chosen (before any job is added). */
  readonly onRun?: ((choice: RunChoice) => void | Promise<void>) | undefined;
  /** Validate and import (or find) the run, queue nothing. Default false. */
  readonly dryRun?: boolean | undefined;
  /** Told how many charges are queued so far, after every batch. */
  readonly onQueued?: ((queued: number) => void) | undefined;
  /** Stops between batches; what is queued stays queued, a second enqueue adds the rest. */
  readonly signal?: AbortSignal | undefined;
  /** Jobs per addBulk call. Default 1000. */
  readonly batchSize?: number | undefined;
}

export interface EnqueueResult {
  readonly choice: RunChoice;
  /** Charges handed to the queue by this call (a job already queued is not added twice). */
  readonly queued: number;
  /** The signal stopped the enqueue before every charge was queued. */
  readonly interrupted: boolean;
  /** Time spent validating and importing (0 for a resumed run). */
  readonly importMs: number;
  /** Time spent adding jobs. */
  readonly enqueueMs: number;
}

/**
 * Queues a billing cycle for the distributed engine: validates and imports the input into the
 * Redis ledger exactly as the local engine does (nothing is queued when it does not validate),
 * or finds the run to resume, then adds one BullMQ job per charge that still needs an attempt,
 * in batches, each with a job id derived from the run and user ids. Running it again after a
 * crash adds only what is missing: a job whose id is queued is not added twice, and a charge
 * the ledger holds as charged or declined is not queued at all.
 */
export async function enqueue(options: EnqueueOptions): Promise<EnqueueResult> {
  if (options.runId !== undefined) {
    const problem = runIdProblem(options.runId);
    if (problem) throw new UsageError(`--run-id ${problem}`);
  }
  const prefix = options.prefix ?? DEFAULT_PREFIX;
  const batchSize = options.batchSize ?? 1_000;
  const ledger = new RedisLedger({ redis: options.redis, prefix: ledgerPrefix(prefix) });
  let queue: Queue | undefined;
  try {
    if (options.runId === undefined && (await redisKeepsNothing(options.redis))) {
      throw new BulkbillError(
        ErrorCode.Usage,
        'this Redis keeps nothing on disk (appendonly no, no save points): after a restart it would hold no run, and a run without --run-id would bill everyone again under new idempotency keys. Name the cycle with --run-id (the same one after a restart), or turn on appendonly yes',
      );
    }
    const inputHash = await hashInput(options.input);
    const endpoint = options.endpoint;
    const choice = await settleRun(
      ledger,
      {
        input: options.input,
        runId: options.runId,
        newCycle: options.newCycle,
        retryFailed: options.retryFailed === true && options.dryRun !== true,
        skipInvalid: options.skipInvalid === true,
        format: options.format,
        check: options.check,
      },
      inputHash,
      endpoint ?? UNBOUND_ENDPOINT,
      {
        checkRun: async (run) => {
          if (endpoint === undefined) return;
          if (run.endpoint === UNBOUND_ENDPOINT) await ledger.bindEndpoint(run.runId, endpoint);
          else if (run.endpoint !== endpoint) throw endpointMismatch(run, endpoint);
        },
      },
    );
    const { importMs } = choice;
    await options.onRun?.(choice);
    const { runId } = choice.run;
    if (choice.how === 'finished' || options.dryRun) {
      return { choice, queued: 0, interrupted: false, importMs, enqueueMs: 0 };
    }
    await ledger.clearStop(runId);
    queue = new Queue<ChargeJobData>(options.queue ?? DEFAULT_QUEUE, {
      connection: options.redis,
      prefix,
    });
    queue.on('error', () => {});
    const started = performance.now();
    let queued = 0;
    let afterSeq = 0;
    for (;;) {
      if (options.signal?.aborted) {
        return {
          choice,
          queued,
          interrupted: true,
          importMs,
          enqueueMs: performance.now() - started,
        };
      }
      const page = await ledger.pendingCharges(runId, afterSeq, batchSize);
      if (page.length === 0) break;
      await queue.addBulk(
        page.map((charge) => ({
          name: JOB_NAME,
          data: {
            r: runId,
            u: charge.userId,
            a: charge.amount,
            c: charge.currency,
            n: charge.attempts,
            x: charge.ambiguous,
            ...(charge.metadata === undefined ? {} : { m: charge.metadata }),
          } satisfies ChargeJobData,
          opts: {
            jobId: jobIdOf(runId, charge.userId),
            attempts: JOB_ATTEMPTS,
            backoff: { type: 'bulkbill' },
            removeOnComplete: true,
            removeOnFail: true,
          },
        })),
      );
      queued += page.length;
      options.onQueued?.(queued);
      afterSeq = page.at(-1)?.seq ?? afterSeq;
      if (page.length < batchSize) break;
    }
    return { choice, queued, interrupted: false, importMs, enqueueMs: performance.now() - started };
  } finally {
    await queue?.close();
    await ledger.close();
  }
}
