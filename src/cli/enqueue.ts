import { UsageError } from '../domain/errors.js';
import { checkDispatchSettings, deadlineOf } from '../engine/dispatch-controls.js';
import { checkReachable, closeRedis, connectRedis } from '../engine/distributed/connection.js';
import { enqueue } from '../engine/distributed/enqueue.js';
import { QueuePacing, runPacing } from '../engine/distributed/queue-pacing.js';
import { redactedUrl } from '../ledger/redis-ledger.js';
import {
  describeRunEndpoint,
  type ProviderDescriptionInput,
  templateRowCheck,
} from '../provider/index.js';
import { announceRun } from './announce.js';
import { ExitStatus } from './exit-codes.js';
import { onStopSignals } from './signals.js';

export interface EnqueueFlags {
  redis?: string;
  /** The config file's provider description. */
  provider?: unknown;
  queue: string;
  prefix: string;
  runId?: string;
  endpoint?: string;
  skipInvalid?: boolean;
  newCycle?: boolean;
  retryFailed?: boolean;
  json?: boolean;
  /** `auto` paces the run's queue; a number (or none) leaves it to the workers' own. */
  concurrency?: number | 'auto';
  minConcurrency?: number;
  maxConcurrency?: number;
  deadline?: string;
}

const number = new Intl.NumberFormat('en-US');

const kebab = (name: string) => name.replace(/[A-Z]/g, (letter) => `-${letter.toLowerCase()}`);

export async function enqueueCommand(input: string, flags: EnqueueFlags): Promise<number> {
  const stderr = process.stderr;
  if (flags.redis === undefined) {
    throw new UsageError('--redis: required (give it here or as `redis` in the config file)');
  }
  const redisUrl = flags.redis;
  const settings = {
    concurrency: flags.concurrency,
    minConcurrency: flags.minConcurrency ?? 1,
    maxConcurrency: flags.maxConcurrency ?? 1_000,
    assumedLatencyMs: 1_600,
  };
  checkDispatchSettings(settings, (name) => `--${kebab(name)}`);
  // Read once, here: a duration counts from this command, and the workers keep the time.
  const deadlineAt = deadlineOf(flags.deadline, Date.now(), '--deadline');
  const pacing = runPacing(settings, deadlineAt);
  const provider = flags.provider as ProviderDescriptionInput | undefined;
  const absolute = provider?.request?.url?.includes('://') === true;
  // Bound now when the endpoint is known: given, or the description's absolute URL.
  const endpoint =
    flags.endpoint === undefined && !absolute
      ? undefined
      : describeRunEndpoint(provider, flags.endpoint, '--endpoint');
  const redis = connectRedis(redisUrl, 'short');
  const controller = new AbortController();
  const removeSignals = onStopSignals(
    () => {
      stderr.write('bulkbill: stopping after this batch; enqueue again to add the rest\n');
      controller.abort();
    },
    () => stderr.write('bulkbill: quitting at once; enqueue again to add the rest\n'),
  );
  let lastShown = 0;
  try {
    await checkReachable(redis, redisUrl);
    const result = await enqueue({
      input,
      redis,
      prefix: flags.prefix,
      queue: flags.queue,
      runId: flags.runId,
      endpoint,
      skipInvalid: flags.skipInvalid === true,
      newCycle: flags.newCycle === true,
      retryFailed: flags.retryFailed === true,
      check: templateRowCheck(provider),
      signal: controller.signal,
      onRun: async (choice) => {
        stderr.write(announceRun(choice, `queue ${flags.queue} on ${redactedUrl(redisUrl)}`));
        if (choice.how === 'finished') return;
        // Before its jobs are queued, so no worker takes a wave of them first; without auto or a
        // deadline, what an earlier command set for the run goes.
        await new QueuePacing({ redis, prefix: flags.prefix, queue: flags.queue }).setRun(
          choice.run.runId,
          pacing,
        );
        if (pacing !== undefined) {
          stderr.write(
            `bulkbill: the queue's workers pace run ${choice.run.runId}${pacing.auto ? ' at the concurrency the provider takes (auto)' : ''}${deadlineAt === undefined ? '' : ` to end by ${new Date(deadlineAt).toISOString()}`}; one of them decides the queue's global concurrency for all\n`,
          );
        }
      },
      onQueued: (queued) => {
        if (queued - lastShown >= 100_000) {
          lastShown = queued;
          stderr.write(`bulkbill: ${number.format(queued)} charges queued…\n`);
        }
      },
    });
    const { run } = result.choice;
    if (flags.json) {
      process.stdout.write(
        `${JSON.stringify({
          runId: run.runId,
          how: result.choice.how,
          total: run.total,
          queued: result.queued,
          interrupted: result.interrupted,
          importMs: Math.round(result.importMs),
          enqueueMs: Math.round(result.enqueueMs),
        })}\n`,
      );
    } else {
      process.stdout.write(`${run.runId}\n`);
      stderr.write(
        `bulkbill: ${number.format(result.queued)} charges queued for run ${run.runId}${result.interrupted ? ' before the stop' : ''}; follow it with: bulkbill status --redis <url> --run-id ${run.runId} --wait\n`,
      );
    }
    return result.interrupted ? ExitStatus.Interrupted : ExitStatus.Ok;
  } finally {
    removeSignals();
    await closeRedis(redis);
  }
}
