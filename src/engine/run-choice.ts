import { randomBytes } from 'node:crypto';
import { BulkbillError, ErrorCode } from '../domain/errors.js';
import type { Ledger, RunRecord } from '../ledger/ledger.js';

/** Which run a call bills and how it was found. */
export interface RunChoice {
  readonly run: RunRecord;
  /** `created`: a new run; `resumed`: an unfinished one; `finished`: nothing left to bill. */
  readonly how: 'created' | 'resumed' | 'finished';
}

/** A fresh run id: the date and time, then four random hex digits, e.g. `2026-11-30T1712-a3f9`. */
export function freshRunId(now = new Date()): string {
  const stamp = now.toISOString().slice(0, 16).replace(':', '');
  return `${stamp}-${randomBytes(2).toString('hex')}`;
}

/** The run ids an endpoint has no say in yet: a run enqueued without one is bound by its first worker. */
export const UNBOUND_ENDPOINT = '';

/**
 * The run an input resumes, by the rules both engines share: the named run, else the input's
 * unfinished run, else its latest (finished) one; undefined when a new run must be created.
 * Refuses a run made from another input, or bound to another endpoint (its idempotency keys
 * live at the first provider). `endpoint` undefined (an enqueue without one) checks no endpoint.
 */
export async function chooseRun(
  ledger: Ledger,
  request: { readonly input: string; readonly runId?: string | undefined },
  inputHash: string,
  endpoint: string | undefined,
): Promise<RunChoice | undefined> {
  const existing =
    request.runId === undefined
      ? ((await ledger.findUnfinishedRun(inputHash)) ?? (await ledger.findLatestRun(inputHash)))
      : await ledger.findRun(request.runId);
  if (existing === undefined) return undefined;
  if (existing.inputHash !== inputHash) {
    throw new BulkbillError(
      ErrorCode.Usage,
      `run ${existing.runId} was created from another input (${existing.inputPath}); resuming it with ${request.input} is refused. Pass the original file, or a new --run-id`,
    );
  }
  if (
    endpoint !== undefined &&
    existing.endpoint !== UNBOUND_ENDPOINT &&
    existing.endpoint !== endpoint
  ) {
    throw endpointMismatch(existing, endpoint);
  }
  return { run: existing, how: existing.finishedAt === undefined ? 'resumed' : 'finished' };
}

export function endpointMismatch(run: RunRecord, endpoint: string): BulkbillError {
  return new BulkbillError(
    ErrorCode.Usage,
    `run ${run.runId} bills ${run.endpoint}; resuming it against ${endpoint} is refused (its idempotency keys live at the first provider). Pass a new --run-id to bill elsewhere`,
  );
}
