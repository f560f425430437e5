import { BulkbillError, ErrorCode } from '../domain/errors.js';

/** A claim not renewed for this long is taken over, whichever host made it (a killed container). */
export const CLAIM_LEASE_MS = 30_000;
/** How often a process renews the claims it holds. */
export const CLAIM_BEAT_MS = 5_000;

/** A run's claim as both ledgers keep it. */
export interface RunClaim {
  readonly pid: number;
  readonly host: string;
  readonly since: string;
  /** Epoch ms of its last renewal (0 or absent in claims written before leases). */
  readonly beat?: number | undefined;
}

/** Whether a process of this host still runs: a run claimed by a dead one (kill -9) is free. */
export function processIsAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists, it is just not ours to signal.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Refuses (BulkbillError) a claim held by another live process: a claim is a lease, renewed
 * while its process lives, so one of this host whose process is gone, or one not renewed for
 * CLAIM_LEASE_MS, is free. One of this very process is ours already.
 */
export function refuseLiveClaim(
  runId: string,
  holder: RunClaim,
  me: { readonly pid: number; readonly host: string },
  nowMs: number,
): void {
  if (holder.pid === me.pid && holder.host === me.host) return;
  const fresh = nowMs - (holder.beat ?? 0) < CLAIM_LEASE_MS;
  const alive = holder.host === me.host ? processIsAlive(holder.pid) && fresh : fresh;
  if (!alive) return;
  throw new BulkbillError(
    ErrorCode.Usage,
    `run ${runId} is being billed by process ${holder.pid} on ${holder.host} since ${holder.since}; wait for it to end or stop it, then run again (a claim not renewed for ${CLAIM_LEASE_MS / 1_000} s is taken over)`,
  );
}
