import type { DispatchReport } from '../domain/dispatch.js';
import { formatDuration } from '../domain/duration.js';

/** A run's progress, emitted by the engines and drawn by the CLI. */
export interface ProgressEvent {
  readonly runId: string;
  /** Input rows of the run. */
  readonly total: number;
  /** Rows in a terminal state (including those ended by an earlier process, and invalid ones). */
  readonly done: number;
  readonly charged: number;
  readonly declined: number;
  readonly failed: number;
  readonly unknown: number;
  readonly invalid: number;
  readonly inFlight: number;
  readonly retrying: number;
  /** Charges ended per second over the last few seconds. */
  readonly perSecond: number;
  /** Estimated time to the end, in ms; undefined until there is a rate to go by. */
  readonly etaMs: number | undefined;
  readonly elapsedMs: number;
  /** Dispatch pause left from a provider's Retry-After, in ms. */
  readonly pausedMs: number;
  /** How requests are paced: the limit, the deadline's standing, the breaker. */
  readonly dispatch?: DispatchReport | undefined;
}

/**
 * Charges ended per second over the last few seconds, from running totals sampled as they
 * come (the caller passes the time: this room reads no clock).
 */
export class PaceMeter {
  readonly #windowMs: number;
  readonly #samples: Array<{ at: number; done: number }> = [];

  constructor(windowMs = 5_000) {
    this.#windowMs = windowMs;
  }

  /** Records `done` (a running total) at `now`, in ms; returns the pace, 0 until two samples. */
  sample(now: number, done: number): number {
    const samples = this.#samples;
    samples.push({ at: now, done });
    while (samples.length > 2 && now - (samples[0]?.at ?? now) > this.#windowMs) samples.shift();
    const oldest = samples[0] ?? { at: now, done };
    return now > oldest.at ? ((done - oldest.done) * 1_000) / (now - oldest.at) : 0;
  }
}

/** Time left, in ms, for `remaining` charges at `perSecond`; undefined without a pace. */
export function etaMsOf(remaining: number, perSecond: number): number | undefined {
  return perSecond > 0 ? (remaining / perSecond) * 1_000 : undefined;
}

/** What the progress display writes to (stderr, usually). */
export interface ProgressStream {
  readonly isTTY?: boolean;
  readonly columns?: number;
  write(text: string): unknown;
}

const BAR_WIDTH = 24;
const number = new Intl.NumberFormat('en-US');

/** One line for a person: counts, rate, ETA. */
export function describeProgress(event: ProgressEvent): string {
  const percent = event.total === 0 ? 100 : Math.floor((event.done / event.total) * 100);
  const parts = [
    `${number.format(event.done)}/${number.format(event.total)} ${percent}%`,
    `${number.format(Math.round(event.perSecond))}/s`,
    `ETA ${event.etaMs === undefined ? '?' : formatDuration(event.etaMs)}`,
    `in flight ${number.format(event.inFlight)}${event.dispatch === undefined ? '' : `/${number.format(event.dispatch.limit)}${event.dispatch.mode === 'auto' ? ' (auto)' : ''}`}`,
    `charged ${number.format(event.charged)}`,
    `declined ${number.format(event.declined)}`,
    `retrying ${number.format(event.retrying)}`,
    `failed ${number.format(event.failed + event.unknown)}`,
  ];
  if (event.pausedMs > 0) parts.push(`paused ${formatDuration(event.pausedMs)} (Retry-After)`);
  const dispatch = event.dispatch;
  if (dispatch !== undefined && dispatch.throttled > 0) {
    parts.push(`refused ${number.format(dispatch.throttled)} (429/503)`);
  }
  const deadline = dispatch?.deadline;
  if (deadline !== undefined) {
    parts.push(
      deadline.feasible
        ? `deadline on track (needs ${number.format(deadline.need)})`
        : `DEADLINE AT RISK: ${deadline.bound ?? 'too slow'}, ends about ${new Date(deadline.expectedEndAt).toISOString().slice(11, 19)}Z`,
    );
  }
  const breaker = dispatch?.breaker;
  if (breaker !== undefined && breaker.state !== 'closed') {
    parts.push(
      breaker.state === 'open'
        ? 'PROVIDER DOWN: breaker open, nothing sent'
        : 'PROVIDER DOWN: probing',
    );
  }
  return parts.join(' · ');
}

function bar(event: ProgressEvent): string {
  const filled = event.total === 0 ? BAR_WIDTH : Math.round((event.done / event.total) * BAR_WIDTH);
  return `[${'#'.repeat(filled)}${'.'.repeat(BAR_WIDTH - filled)}]`;
}

/**
 * Draws progress: on a terminal, one bar redrawn in place; elsewhere (a log file, CI), one
 * plain line every `lineIntervalMs` so logs stay readable.
 */
export class ProgressDisplay {
  readonly #stream: ProgressStream;
  readonly #lineIntervalMs: number;
  readonly #now: () => number;
  #lastLineAt: number | undefined;
  #drawn = false;
  /** The newest event a log has not seen yet (it came within the interval). */
  #unwritten: ProgressEvent | undefined;

  constructor(stream: ProgressStream, options: { lineIntervalMs?: number; now: () => number }) {
    this.#stream = stream;
    this.#lineIntervalMs = options.lineIntervalMs ?? 5_000;
    this.#now = options.now;
  }

  update(event: ProgressEvent): void {
    if (this.#stream.isTTY) {
      const line = `${bar(event)} ${describeProgress(event)}`;
      const width = Math.max(20, (this.#stream.columns ?? 120) - 1);
      this.#stream.write(`\r\x1b[2K${line.length > width ? line.slice(0, width) : line}`);
      this.#drawn = true;
      return;
    }
    const now = this.#now();
    if (this.#lastLineAt !== undefined && now - this.#lastLineAt < this.#lineIntervalMs) {
      this.#unwritten = event;
      return;
    }
    this.#lastLineAt = now;
    this.#unwritten = undefined;
    this.#stream.write(`bulkbill ${event.runId}: ${describeProgress(event)}\n`);
  }

  /** Leaves a terminal on a fresh line, and a log with the last figures it was given. */
  finish(): void {
    if (this.#drawn) this.#stream.write('\n');
    this.#drawn = false;
    const last = this.#unwritten;
    this.#unwritten = undefined;
    if (last) this.#stream.write(`bulkbill ${last.runId}: ${describeProgress(last)}\n`);
  }
}
