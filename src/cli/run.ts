import { formatDuration } from '../domain/duration.js';
import { closeRedis, connectRedis } from '../engine/distributed/connection.js';
import { billDistributed } from '../engine/distributed/distributed-engine.js';
import { DEFAULT_PREFIX, DEFAULT_QUEUE } from '../engine/distributed/jobs.js';
import { DistributedStatusReader } from '../engine/distributed/status.js';
import { type BillPlan, type BillResult, bill } from '../engine/local-engine.js';
import { redactedUrl } from '../ledger/redis-ledger.js';
import { SqliteLedger } from '../ledger/sqlite-ledger.js';
import type { AttemptEvent } from '../observe/attempts.js';
import { ProgressDisplay, type ProgressEvent } from '../observe/progress.js';
import { type ProviderDescriptionInput, plainHttpWarning } from '../provider/index.js';
import { formatAmounts, formatSummary } from '../report/format.js';
import { latencyPercentiles, type RunSummary } from '../report/summary.js';
import { announceRun } from './announce.js';
import { ledgerSource, queueSource } from './dashboard.js';
import { ExitStatus } from './exit-codes.js';
import { type ObserveFlags, Observers } from './observers.js';
import { billLabel } from './parse.js';
import { onStopSignals } from './signals.js';

export interface RunFlags extends ObserveFlags {
  endpoint?: string;
  /** The config file's provider description. */
  provider?: unknown;
  /** A code adapter module's path (`--adapter`, or the config file's `adapter`). */
  adapter?: string;
  runId?: string;
  concurrency?: number | 'auto';
  minConcurrency?: number;
  maxConcurrency?: number;
  deadline?: string;
  outageWait?: number;
  rate?: number;
  timeout?: number;
  ca?: string;
  maxAttempts?: number;
  keyRetention?: number;
  newCycle?: boolean;
  retryFailed?: boolean;
  ledger: string;
  report?: string;
  header: string[];
  skipInvalid?: boolean;
  dryRun?: boolean;
  json?: boolean;
  /** The distributed engine: the run goes through this Redis instead of the SQLite ledger. */
  redis?: string;
  queue?: string;
  prefix?: string;
  globalConcurrency?: number;
  lockDuration?: number;
  /** Keep the dashboard and metrics up this long after the run, in ms. */
  linger?: number;
}

/** The summary of a finished call, as printed and as `--json` emits it. */
export function toSummary(result: BillResult, reportPath: string | undefined): RunSummary {
  return {
    runId: result.run.runId,
    total: result.run.total,
    counts: result.counts,
    chargedAmounts: result.chargedAmounts,
    wallMs: result.wallMs,
    throughputPerSecond: result.wallMs > 0 ? (result.ended * 1_000) / result.wallMs : 0,
    attempts: result.attempts,
    latencyMs: latencyPercentiles(result.latencies),
    serialMs: result.serialMs,
    interrupted: result.outcome === 'interrupted',
    stoppedBecause: result.stoppedBecause,
    reportPath,
    importMs: result.importMs,
    // maxRSS is in kibibytes.
    peakRssBytes: process.resourceUsage().maxRSS * 1024,
    ...(result.dispatch === undefined ? {} : { dispatch: result.dispatch }),
    ...(result.dispatch?.deadline === undefined
      ? {}
      : { deadlineMet: Date.now() <= result.dispatch.deadline.at }),
  };
}

/** Exit status of a bill() result, the same for every engine. */
export function exitStatusOf(result: BillResult): number {
  if (result.outcome === 'interrupted') return ExitStatus.Interrupted;
  if (result.outcome === 'stopped') return ExitStatus.Usage;
  if (result.outcome === 'planned') return ExitStatus.Ok;
  const { failed, unknown, pending } = result.counts;
  if (failed + unknown + pending > 0) return ExitStatus.Failed;
  const deadline = result.dispatch?.deadline;
  // Every charge ended well, but later than it had to.
  if (deadline !== undefined && Date.now() > deadline.at) return ExitStatus.DeadlineMissed;
  return ExitStatus.Ok;
}

/** The dry run's requests, as they will be sent: secret header values read [redacted]. */
function previewLines(requests: BillPlan['requests']): string[] {
  if (requests.length === 0) return [];
  const lines = [
    `  the first ${requests.length === 1 ? 'request' : `${requests.length} requests`}, as they will be sent (secret headers masked):`,
  ];
  for (const request of requests) {
    lines.push(`    ${request.method} ${request.url}`);
    for (const [name, value] of Object.entries(request.headers))
      lines.push(`      ${name}: ${value}`);
    lines.push(`      ${request.body}`);
  }
  return lines;
}

/** What the operator can do about charges that did not end well, or nothing. */
function nextStep(result: BillResult, command: string): string {
  const { failed, unknown, pending } = result.counts;
  if (result.outcome === 'planned' || failed + unknown + pending === 0) return '';
  const lines: string[] = [];
  if (pending > 0) {
    lines.push(
      `bulkbill: ${pending} pending: run the same command again to continue them with the same idempotency keys`,
    );
  }
  if (failed + unknown > 0) {
    const parts = [
      failed > 0 ? `${failed} failed (no attempt can have reached the provider)` : undefined,
      unknown > 0
        ? `${unknown} unknown (an attempt may have charged; the report says why)`
        : undefined,
    ].filter((part) => part !== undefined);
    lines.push(
      `bulkbill: ${parts.join(', ')}: a plain rerun leaves them as they are; retry them with the same idempotency keys (a charged one is answered with its stored charge, nobody is charged twice): ${command} --retry-failed`,
    );
  }
  return `${lines.join('\n')}\n`;
}

export async function runCommand(input: string, flags: RunFlags): Promise<number> {
  const stderr = process.stderr;
  const display = new ProgressDisplay(stderr, { now: () => performance.now() });
  // Started before anything is billed: a refused dashboard or a taken port charges nobody.
  const observers = await Observers.start(flags, {
    log: 'asked',
    component: 'run',
    openSource: async () => {
      if (flags.redis === undefined) {
        const ledger = new SqliteLedger({ path: flags.ledger });
        return { source: ledgerSource(ledger), close: () => ledger.close() };
      }
      const redis = connectRedis(flags.redis, 'patient');
      const reader = new DistributedStatusReader({
        redis,
        prefix: flags.prefix ?? DEFAULT_PREFIX,
        queue: flags.queue ?? DEFAULT_QUEUE,
      });
      return {
        source: queueSource(reader),
        close: async () => {
          await reader.close();
          await closeRedis(redis);
        },
      };
    },
  });
  stderr.write(observers.describe());
  const controller = new AbortController();
  const removeSignals = onStopSignals(
    () => {
      display.finish();
      stderr.write(
        'bulkbill: stopping: no new requests; waiting for those in flight (Ctrl-C again to quit at once)…\n',
      );
      controller.abort();
    },
    () =>
      stderr.write(
        'bulkbill: quitting at once; the ledger is consistent, run the same command to resume\n',
      ),
  );
  try {
    const insecure =
      flags.adapter === undefined
        ? safely(() =>
            plainHttpWarning(
              flags.provider as ProviderDescriptionInput | undefined,
              flags.endpoint,
            ),
          )
        : undefined;
    if (insecure !== undefined) stderr.write(`bulkbill: warning: ${insecure}\n`);
    const common = {
      input,
      ...(flags.endpoint === undefined ? {} : { endpoint: flags.endpoint }),
      ...(flags.provider === undefined
        ? {}
        : { provider: flags.provider as ProviderDescriptionInput }),
      ...(flags.adapter === undefined ? {} : { adapter: flags.adapter }),
      headers: flags.header,
      ...(flags.runId === undefined ? {} : { runId: flags.runId }),
      ...(flags.concurrency === undefined ? {} : { concurrency: flags.concurrency }),
      ...(flags.minConcurrency === undefined ? {} : { minConcurrency: flags.minConcurrency }),
      ...(flags.maxConcurrency === undefined ? {} : { maxConcurrency: flags.maxConcurrency }),
      ...(flags.deadline === undefined ? {} : { deadline: flags.deadline }),
      ...(flags.outageWait === undefined ? {} : { outageWaitMs: flags.outageWait }),
      ...(flags.rate === undefined ? {} : { rate: flags.rate }),
      ...(flags.timeout === undefined ? {} : { timeoutMs: flags.timeout }),
      ...(flags.ca === undefined ? {} : { caFile: flags.ca }),
      ...(flags.maxAttempts === undefined ? {} : { maxAttempts: flags.maxAttempts }),
      ...(flags.keyRetention === undefined ? {} : { keyRetentionMs: flags.keyRetention }),
      newCycle: flags.newCycle === true,
      retryFailed: flags.retryFailed === true,
      skipInvalid: flags.skipInvalid === true,
      dryRun: flags.dryRun === true,
      signal: controller.signal,
      reportPath: (runId: string) => flags.report ?? `${runId}.report.csv`,
      onProgress: (event: ProgressEvent) => {
        display.update(event);
        observers.progress(event);
      },
      onAttempt: (event: AttemptEvent) => observers.attempt(event),
    };
    const result =
      flags.redis === undefined
        ? await bill(
            {
              ...common,
              ledger: flags.ledger,
              onRun: (choice) => {
                observers.run(choice.run.runId);
                stderr.write(announceRun(choice, `ledger ${flags.ledger}`));
              },
            },
            billLabel,
          )
        : await billDistributed(
            {
              ...common,
              redis: flags.redis,
              ...(flags.queue === undefined ? {} : { queue: flags.queue }),
              ...(flags.prefix === undefined ? {} : { prefix: flags.prefix }),
              ...(flags.globalConcurrency === undefined
                ? {}
                : { globalConcurrency: flags.globalConcurrency }),
              ...(flags.lockDuration === undefined ? {} : { lockDurationMs: flags.lockDuration }),
              onRun: (choice) => {
                observers.run(choice.run.runId);
                stderr.write(
                  announceRun(
                    choice,
                    `ledger ${redactedUrl(flags.redis ?? '')} (queue ${flags.queue ?? DEFAULT_QUEUE})`,
                  ),
                );
              },
              onLog: (level, message) => {
                if (level !== 'info') {
                  display.finish();
                  stderr.write(`bulkbill: ${message}\n`);
                }
              },
            },
            billLabel,
          );
    display.finish();
    if (result.outcome === 'planned' && result.plan) {
      const { plan } = result;
      const text = [
        `bulkbill: dry run of ${result.run.runId}: nobody was charged`,
        `  ${plan.charges.toLocaleString('en-US')} charges to attempt (${plan.invalid} invalid rows recorded): ${formatAmounts(plan.amounts)}`,
        `  at concurrency ${plan.concurrency}${plan.rate ? ` and ${plan.rate}/s` : ''}, assuming ${formatDuration(plan.assumedLatencyMs)} per request: about ${formatDuration(plan.expectedMs)} (one after another: ${formatDuration(plan.serialMs)})`,
        ...previewLines(plan.requests),
      ].join('\n');
      if (flags.json)
        process.stdout.write(`${JSON.stringify({ runId: result.run.runId, plan })}\n`);
      else process.stdout.write(`${text}\n`);
      return ExitStatus.Ok;
    }
    const summary = toSummary(result, result.reportPath);
    observers.end(
      {
        runId: summary.runId,
        outcome: result.outcome,
        ...summary.counts,
        attempts: summary.attempts,
        wallMs: Math.round(summary.wallMs),
        ...(summary.stoppedBecause === undefined ? {} : { stoppedBecause: summary.stoppedBecause }),
      },
      `run ${result.outcome}`,
    );
    const heading =
      result.outcome === 'finished-before'
        ? `bulkbill run ${summary.runId}: already finished, nobody billed`
        : `bulkbill run ${summary.runId}: ${result.outcome}`;
    if (flags.json) process.stdout.write(`${JSON.stringify(summary)}\n`);
    else process.stdout.write(formatSummary(summary, heading));
    if (result.outcome === 'stopped') {
      stderr.write(`bulkbill: stopped with charges left pending: ${result.stoppedBecause}\n`);
    }
    stderr.write(
      nextStep(
        result,
        `bulkbill run ${input} --run-id ${result.run.runId}${flags.redis === undefined ? '' : ' --redis …'}`,
      ),
    );
    const status = exitStatusOf(result);
    removeSignals();
    await linger(observers, flags.linger);
    return status;
  } finally {
    display.finish();
    removeSignals();
    await observers.close();
  }
}

/**
 * Keeps the dashboard and the metrics up `ms` after the run (for a last scrape and a look at the
 * end), or until a signal; the run's exit status stands either way.
 */
async function linger(observers: Observers, ms: number | undefined): Promise<void> {
  if (ms === undefined || ms <= 0 || !observers.serving) return;
  process.stderr.write(
    `bulkbill: the run is over; the dashboard and metrics stay up for ${formatDuration(ms)} (Ctrl-C ends it now)\n`,
  );
  await new Promise<void>((resolve) => {
    const timer = setTimeout(done, ms);
    const remove = onStopSignals(done, () => {});
    function done() {
      clearTimeout(timer);
      remove();
      resolve();
    }
  });
}

/** `make()`, or undefined where it throws: the command itself reports that mistake, in context. */
function safely<T>(make: () => T): T | undefined {
  try {
    return make();
  } catch {
    return undefined;
  }
}
