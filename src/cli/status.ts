import { formatDuration } from '../domain/duration.js';
import { BulkbillError, ErrorCode } from '../domain/errors.js';
import { formatMoney } from '../domain/money.js';
import { checkReachable, closeRedis, connectRedis } from '../engine/distributed/connection.js';
import {
  type DistributedStatus,
  DistributedStatusReader,
  PollPause,
  progressOf,
} from '../engine/distributed/status.js';
import { type ChargeRecord, endedOf, type Ledger, type RunRecord } from '../ledger/ledger.js';
import { redactedUrl } from '../ledger/redis-ledger.js';
import { PaceMeter, ProgressDisplay } from '../observe/progress.js';
import { formatAmounts, formatCounts, formatDispatch } from '../report/format.js';
import { ExitStatus } from './exit-codes.js';
import { openLedger, openRun } from './ledger-access.js';
import { onStopSignals } from './signals.js';

export interface StatusFlags {
  runId?: string;
  ledger: string;
  user?: string;
  json?: boolean;
  redis?: string;
  queue: string;
  prefix: string;
  wait?: boolean;
}

const number = new Intl.NumberFormat('en-US');
/** How long `status --wait` sees pending charges with nothing queued before it says so and ends. */
const STUCK_MS = 10_000;

export async function statusCommand(flags: StatusFlags): Promise<number> {
  if (flags.redis !== undefined) return redisStatusCommand(flags, flags.redis);
  if (flags.wait) {
    throw new BulkbillError(
      ErrorCode.Usage,
      '--wait: follows a run on Redis (--redis); a local run is followed by its own `bulkbill run`',
    );
  }
  if (flags.runId === undefined) {
    const ledger = await openLedger(flags.ledger);
    try {
      return await listOrFind(ledger, flags, `in ${flags.ledger}`);
    } finally {
      await ledger.close();
    }
  }
  const { ledger, run } = await openRun(flags.ledger, flags.runId);
  try {
    if (flags.user !== undefined) return await printCharge(ledger, run, flags.user, flags.json);
    const counts = await ledger.counts(run.runId);
    const charged = await ledger.totals(run.runId, 'charged');
    if (flags.json) {
      process.stdout.write(`${JSON.stringify({ ...run, counts, chargedAmounts: charged })}\n`);
    } else {
      const state = run.finishedAt ? `finished ${run.finishedAt}` : 'not finished';
      process.stdout.write(
        `${[
          `run ${run.runId}: ${state} (created ${run.createdAt})`,
          `  input ${run.inputPath} · endpoint ${run.endpoint}`,
          `  ${run.total.toLocaleString('en-US')} rows: ${formatCounts(counts)}`,
          `  charged: ${formatAmounts(charged)}`,
          ...(run.dispatch === undefined
            ? []
            : [
                `  paced (as its ${run.finishedAt ? 'last' : 'latest'} process last said):`,
                ...formatDispatch(
                  run.dispatch,
                  run.finishedAt === undefined || run.dispatch.deadline === undefined
                    ? undefined
                    : Date.parse(run.finishedAt) <= run.dispatch.deadline.at,
                ).map((line) => `  ${line}`),
              ]),
        ].join('\n')}\n`,
      );
    }
    return ExitStatus.Ok;
  } finally {
    await ledger.close();
  }
}

/**
 * Without a run id: every run of the ledger (id, created, input, counts, finished or not), or,
 * with --user, that user in every run that holds them.
 */
async function listOrFind(ledger: Ledger, flags: StatusFlags, where: string): Promise<number> {
  const runs = await ledger.listRuns();
  if (flags.user !== undefined) {
    const found: Array<{ run: RunRecord; charge: ChargeRecord }> = [];
    for (const run of runs) {
      const charge = await ledger.charge(run.runId, flags.user);
      if (charge) found.push({ run, charge });
    }
    if (found.length === 0) {
      throw new BulkbillError(
        ErrorCode.Usage,
        `--user: no user ${flags.user} in any of the ${runs.length} runs ${where}`,
      );
    }
    if (flags.json) {
      for (const { run, charge } of found) {
        process.stdout.write(`${JSON.stringify({ runId: run.runId, ...charge })}\n`);
      }
      return ExitStatus.Ok;
    }
    for (const { run, charge } of found) process.stdout.write(describeCharge(run, charge));
    return ExitStatus.Ok;
  }
  const listed = [];
  for (const run of runs) listed.push({ ...run, counts: await ledger.counts(run.runId) });
  if (flags.json) {
    process.stdout.write(`${JSON.stringify({ runs: listed })}\n`);
    return ExitStatus.Ok;
  }
  if (listed.length === 0) {
    process.stdout.write(`no runs ${where}\n`);
    return ExitStatus.Ok;
  }
  const lines = [`${listed.length} run${listed.length === 1 ? '' : 's'} ${where}, newest first:`];
  for (const run of listed) {
    const state = run.finishedAt ? `finished ${run.finishedAt}` : 'not finished';
    lines.push(
      `  ${run.runId}: ${state} · created ${run.createdAt} · input ${run.inputPath} · ${number.format(run.total)} rows: ${formatCounts(run.counts)}`,
    );
  }
  process.stdout.write(`${lines.join('\n')}\n`);
  return ExitStatus.Ok;
}

/** "What happened to user X?" */
async function printCharge(
  ledger: Ledger,
  run: RunRecord,
  userId: string,
  json: boolean | undefined,
): Promise<number> {
  const charge: ChargeRecord | undefined = await ledger.charge(run.runId, userId);
  if (!charge) {
    throw new BulkbillError(ErrorCode.Usage, `--user: no user ${userId} in run ${run.runId}`);
  }
  if (json) {
    process.stdout.write(`${JSON.stringify({ runId: run.runId, ...charge })}\n`);
    return ExitStatus.Ok;
  }
  process.stdout.write(describeCharge(run, charge));
  return ExitStatus.Ok;
}

function describeCharge(run: RunRecord, charge: ChargeRecord): string {
  // An invalid row is kept without an amount or currency (its reason says what was wrong).
  const money = charge.currency === '' ? 'no amount' : formatMoney(charge.amount, charge.currency);
  const parts = [
    `${charge.userId} in run ${run.runId}: ${charge.state}`,
    `  line ${charge.line} · ${money} · ${charge.attempts} attempt${charge.attempts === 1 ? '' : 's'}`,
  ];
  if (charge.httpStatus !== undefined) parts.push(`  last answer: HTTP ${charge.httpStatus}`);
  if (charge.chargeId) parts.push(`  provider charge id: ${charge.chargeId}`);
  if (charge.ambiguous) parts.push('  an attempt may have reached the provider unanswered');
  if (charge.firstAttemptAt !== undefined) {
    parts.push(`  first attempt: ${new Date(charge.firstAttemptAt).toISOString()}`);
  }
  if (charge.error) parts.push(`  reason: ${charge.error}`);
  return `${parts.join('\n')}\n`;
}

async function redisStatusCommand(flags: StatusFlags, url: string): Promise<number> {
  const redis = connectRedis(url, 'short');
  let reader: DistributedStatusReader | undefined;
  try {
    await checkReachable(redis, url);
    reader = new DistributedStatusReader({ redis, prefix: flags.prefix, queue: flags.queue });
    if (flags.runId === undefined) {
      if (flags.wait)
        throw new BulkbillError(ErrorCode.Usage, '--wait: needs the --run-id to follow');
      return await listOrFind(
        reader.ledger,
        flags,
        `on ${redactedUrl(url)} (prefix ${flags.prefix})`,
      );
    }
    const run = await reader.run(flags.runId);
    if (flags.user !== undefined)
      return await printCharge(reader.ledger, run, flags.user, flags.json);
    if (flags.wait) return await waitForEnd(reader, { ...flags, runId: run.runId });
    const status = await reader.read(run.runId, 1_000);
    printStatus(status, flags.json);
    return ExitStatus.Ok;
  } finally {
    await reader?.close();
    await closeRedis(redis);
  }
}

function printStatus(status: DistributedStatus, json: boolean | undefined): void {
  const { run, counts } = status;
  if (json) {
    process.stdout.write(`${JSON.stringify({ ...run, ...status, run: undefined })}\n`);
    return;
  }
  const state = run.finishedAt ? `finished ${run.finishedAt}` : 'not finished';
  const lines = [
    `run ${run.runId}: ${state} (created ${run.createdAt})`,
    `  input ${run.inputPath} · endpoint ${run.endpoint || '(bound by its first worker)'}`,
    `  ${number.format(run.total)} rows: ${formatCounts(counts)}`,
    `  charged: ${formatAmounts(status.chargedAmounts)}`,
  ];
  if (status.perSecond !== undefined) {
    lines.push(
      `  pace: ${number.format(Math.round(status.perSecond))} charges/s · ETA ${status.etaMs === undefined ? '?' : formatDuration(status.etaMs)}`,
    );
  }
  const { waiting, active, delayed } = status.queue;
  lines.push(
    `  queue (every run on it): ${number.format(waiting)} waiting · ${number.format(active)} active · ${number.format(delayed)} delayed`,
  );
  lines.push(
    status.workers.length === 0
      ? '  workers: none live'
      : `  workers (${status.workers.length}): ${status.workers.map((worker) => worker.name).join(', ')}`,
  );
  const { pacing } = status;
  if (pacing !== undefined) {
    const decided =
      pacing.decider === undefined
        ? ''
        : ` · decided by ${pacing.decider}${pacing.decidedAt === undefined ? '' : ` ${formatDuration(Math.max(0, Date.now() - pacing.decidedAt))} ago`}`;
    lines.push(
      `  queue paced${status.runPaced ? '' : ' (for another run)'}: ${pacing.mode === 'auto' ? `concurrency auto, limit ${number.format(pacing.limit)}${pacing.capacity === undefined ? '' : ` (provider capacity about ${number.format(Math.round(pacing.capacity))})`}${pacing.baselineMs === undefined ? '' : ` · no-load latency ${formatDuration(pacing.baselineMs)}`}` : `concurrency ${number.format(pacing.limit)} (the deadline's need)`}${decided}`,
    );
    const { deadline } = pacing;
    if (deadline !== undefined) {
      const at = new Date(deadline.at).toISOString();
      lines.push(
        deadline.feasible
          ? `  deadline ${at}: on track, ${number.format(deadline.need)} in flight needed, expected end ${new Date(deadline.expectedEndAt).toISOString()}`
          : `  DEADLINE AT RISK ${at}: cannot be met (bound by ${deadline.bound ?? '?'}); expected end ${new Date(deadline.expectedEndAt).toISOString()}`,
      );
    }
  }
  const { breaker } = status;
  if (breaker.state === 'open') {
    lines.push(
      `  PROVIDER DOWN: the queue's circuit breaker is open, nothing is sent; one probe in ${formatDuration(breaker.openMs)} (opened ${number.format(breaker.opened)} times)`,
    );
  } else if (breaker.state === 'half-open') {
    lines.push(
      `  PROVIDER DOWN: the queue's circuit breaker is half-open, a probe decides (opened ${number.format(breaker.opened)} times)`,
    );
  } else if (breaker.opened > 0) {
    lines.push(
      `  circuit breaker: closed (opened ${number.format(breaker.opened)} times, ${number.format(breaker.probes)} probes)`,
    );
  }
  if (status.stoppedBecause) lines.push(`  stopped: ${status.stoppedBecause}`);
  process.stdout.write(`${lines.join('\n')}\n`);
}

/**
 * Follows the run until every charge has ended, with the run command's exit statuses: 0 when
 * all ended charged or declined, 1 when some failed or are unknown, 2 when the run was stopped
 * (the provider refused it) and no worker is left, 130 when interrupted.
 */
async function waitForEnd(
  reader: DistributedStatusReader,
  flags: StatusFlags & { runId: string },
): Promise<number> {
  const display = new ProgressDisplay(process.stderr, { now: () => performance.now() });
  let interrupted = false;
  const pause = new PollPause();
  const removeSignals = onStopSignals(
    () => {
      interrupted = true;
      pause.wake();
    },
    () => {},
  );
  const started = performance.now();
  const pace = new PaceMeter();
  let stuckSince = started;
  try {
    for (;;) {
      const status = await reader.read(flags.runId);
      const { counts, run } = status;
      const now = performance.now();
      display.update(
        progressOf({
          run,
          counts,
          perSecond: pace.sample(now, endedOf(counts)),
          inFlight: status.queue.active,
          retrying: status.queue.delayed,
          elapsedMs: now - started,
        }),
      );
      if (counts.pending === 0) {
        await reader.ledger.finishIfComplete(run.runId);
        display.finish();
        printStatus(
          { ...status, run: await reader.run(run.runId), perSecond: undefined },
          flags.json,
        );
        return counts.failed + counts.unknown > 0 ? ExitStatus.Failed : ExitStatus.Ok;
      }
      // Pending charges and not one job on the queue: no worker can end them. Said after a grace
      // (an enqueue may be adding its jobs right now), with what to run.
      const { waiting, active, delayed } = status.queue;
      if (waiting + active + delayed > 0 || status.stoppedBecause !== undefined) stuckSince = now;
      else if (now - stuckSince >= STUCK_MS) {
        display.finish();
        printStatus(status, flags.json);
        process.stderr.write(
          `bulkbill: nothing can make progress: ${number.format(counts.pending)} charges of run ${run.runId} are pending and no job is queued for any worker${status.workers.length === 0 ? ' (and no worker is live)' : ''}. Queue them again (the same idempotency keys; nobody is charged twice): bulkbill enqueue <input> --redis … --run-id ${run.runId}, then start a worker: bulkbill worker --redis … --endpoint …\n`,
        );
        return ExitStatus.Failed;
      }
      if (status.stoppedBecause !== undefined && status.workers.length === 0) {
        display.finish();
        printStatus(status, flags.json);
        process.stderr.write(
          `bulkbill: run ${run.runId} was stopped with charges left pending: ${status.stoppedBecause}\n`,
        );
        return ExitStatus.Usage;
      }
      if (interrupted) {
        display.finish();
        return ExitStatus.Interrupted;
      }
      await pause.sleep(1_000);
    }
  } finally {
    display.finish();
    removeSignals();
  }
}
