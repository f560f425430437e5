import type { Redis } from 'ioredis';
import { idempotencyKey } from '../../domain/idempotency-key.js';

/** The BullMQ job of one charge: what a worker needs to send it, nothing more. */
export interface ChargeJobData {
  /** Run id. */
  readonly r: string;
  /** User id. */
  readonly u: string;
  /** Amount in minor units. */
  readonly a: number;
  /** Currency. */
  readonly c: string;
  /** Attempts the ledger counted before this job (an earlier pass of the run). */
  readonly n: number;
  /** Some attempt so far may have reached the provider unanswered. */
  readonly x: boolean;
  /** Throttled and 409 answers in a row so far (absent: 0), bounded by the retry policy's maxWaits. */
  readonly w?: number;
  /** The row's other columns, for a request template that reads them (absent: none). */
  readonly m?: Readonly<Record<string, string>>;
}

export const JOB_NAME = 'charge';

/** Where runs live on Redis: a connection, the start of every key, and the queue. */
export interface QueuePlace {
  /** An open connection; the caller closes it. */
  readonly redis: Redis;
  /** Start of every key, the queue's and the ledger's. Default `bulkbill`. */
  readonly prefix?: string | undefined;
  /** The BullMQ queue. Default `bulkbill`. */
  readonly queue?: string | undefined;
}

/** Queue name used when none is given. */
export const DEFAULT_QUEUE = 'bulkbill';
/** Start of every key, BullMQ's and the ledger's, when none is given. */
export const DEFAULT_PREFIX = 'bulkbill';

/**
 * BullMQ's own attempt ceiling for a job. Workers decide when a charge has had enough attempts
 * (their --max-attempts, at most 100), so BullMQ must never end a job first.
 */
export const JOB_ATTEMPTS = 100;

/** The ledger's key prefix under a BullMQ prefix: the queue's keys and the ledger's never meet. */
export function ledgerPrefix(prefix: string): string {
  return `${prefix}:ledger`;
}

/**
 * The job id of a charge: its idempotency key (one per run and user, printable ASCII) with `%`
 * and `:` percent-encoded, because BullMQ refuses custom ids holding `:`. The encoded `:` also
 * means an id is never a plain integer, which BullMQ refuses too. Adding a job whose id exists
 * adds nothing: that is what makes enqueueing twice harmless.
 */
export function jobIdOf(runId: string, userId: string): string {
  return idempotencyKey(runId, userId).replace(/%/g, '%25').replace(/:/g, '%3A');
}

/**
 * BullMQ's limiter (a fixed window shared by every worker of the queue) for a rate in requests
 * per second: the smallest window holding a whole number of jobs within 1% below the rate, so
 * the provider sees small bursts, never more than the rate.
 */
export function limiterOf(ratePerSecond: number): { max: number; duration: number } {
  for (let max = 1; max <= 10_000; max++) {
    const duration = Math.ceil((max * 1_000) / ratePerSecond);
    if ((max * 1_000) / duration >= ratePerSecond * 0.99) return { max, duration };
  }
  return { max: Math.floor(ratePerSecond), duration: 1_000 };
}

/**
 * The limiter of a worker without --rate. BullMQ checks a manual rate limit (a provider's
 * Retry-After, set on the limiter key) only through a limiter's max, so there is always one;
 * this one never limits by itself. Its window is short because BullMQ holds a worker that puts a
 * job back (RateLimitError) for the limiter key's PTTL, whatever the key holds: a long window
 * there would hold it that long.
 */
export const UNLIMITED = { max: 1e15, duration: 1_000 } as const;
