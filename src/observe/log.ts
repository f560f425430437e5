import { type Logger, type LoggerOptions, pino } from 'pino';
import type { AttemptEvent } from './attempts.js';
import type { ProgressEvent } from './progress.js';

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
export const LOG_LEVELS: readonly LogLevel[] = [
  'fatal',
  'error',
  'warn',
  'info',
  'debug',
  'trace',
  'silent',
];

/**
 * Paths pino censors wherever a log line would carry them: every header value, and anything
 * named like a credential. bulkbill never hands a header to its logger; this is the second lock.
 */
export const REDACTED_PATHS: readonly string[] = [
  'headers.*',
  '*.headers.*',
  'request.headers.*',
  'req.headers.*',
  'authorization',
  '*.authorization',
  'token',
  '*.token',
  'password',
  '*.password',
  'secret',
  '*.secret',
  'apiKey',
  '*.apiKey',
];

export interface LoggerSettings {
  /** Default info. */
  readonly level?: LogLevel | undefined;
  /** JSON lines go to this file (appended, its folder made); default stderr. */
  readonly file?: string | undefined;
  /** Fields on every line (`{ component: 'worker' }`). */
  readonly base?: Readonly<Record<string, unknown>> | undefined;
  /** A stream in place of stderr or the file (tests). */
  readonly stream?: { write(line: string): unknown } | undefined;
}

/** pino, JSON lines with ISO times, header values redacted. */
export function createLogger(settings: LoggerSettings = {}): Logger {
  const options: LoggerOptions = {
    level: settings.level ?? 'info',
    base: { pid: process.pid, ...settings.base },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: { paths: [...REDACTED_PATHS], censor: '[redacted]' },
  };
  if (settings.stream !== undefined) return pino(options, settings.stream);
  const destination =
    settings.file === undefined
      ? pino.destination({ dest: 2, sync: true })
      : pino.destination({ dest: settings.file, mkdir: true, append: true, sync: true });
  return pino(options, destination);
}

/**
 * The run's log, from the events the terminal draws: one line per change of the run's state at
 * info (started, paused by Retry-After, deadline at risk or back on track, breaker opened or
 * closed, ended), one per charge that did not end charged at warn, and attempts at debug only:
 * never a line per charge at info.
 */
export class RunLog {
  readonly #log: Logger;
  #paused = false;
  #feasible: boolean | undefined;
  #breaker: string | undefined;
  #started = false;

  constructor(log: Logger) {
    this.#log = log;
  }

  progress(event: ProgressEvent): void {
    const runId = event.runId;
    if (!this.#started) {
      this.#started = true;
      this.#log.info({ runId, total: event.total, done: event.done }, 'billing started');
    }
    const paused = event.pausedMs > 0;
    if (paused !== this.#paused) {
      this.#paused = paused;
      if (paused) {
        this.#log.warn(
          { runId, pausedMs: Math.round(event.pausedMs) },
          'dispatch paused: the provider asked to slow down (Retry-After)',
        );
      } else this.#log.info({ runId }, 'dispatch resumed');
    }
    const deadline = event.dispatch?.deadline;
    if (deadline !== undefined && deadline.feasible !== this.#feasible) {
      const first = this.#feasible === undefined;
      this.#feasible = deadline.feasible;
      const fields = {
        runId,
        deadline: new Date(deadline.at).toISOString(),
        expectedEnd: new Date(deadline.expectedEndAt).toISOString(),
        need: deadline.need,
        ...(deadline.bound === undefined ? {} : { bound: deadline.bound }),
      };
      if (!deadline.feasible) this.#log.warn(fields, 'deadline at risk');
      else if (!first) this.#log.info(fields, 'deadline on track again');
    }
    const breaker = event.dispatch?.breaker?.state;
    if (breaker !== undefined && breaker !== this.#breaker) {
      const before = this.#breaker;
      this.#breaker = breaker;
      if (breaker === 'open') {
        this.#log.warn(
          { runId, opened: event.dispatch?.breaker?.opened },
          'circuit breaker open: the provider is failing, nothing is sent',
        );
      } else if (before !== undefined) {
        this.#log.info(
          { runId, breaker },
          breaker === 'closed'
            ? 'circuit breaker closed: the provider answers again'
            : 'circuit breaker half-open: probing',
        );
      }
    }
  }

  attempt(runId: string, event: AttemptEvent): void {
    const failure =
      event.outcome === 'declined' || event.outcome === 'failed' || event.outcome === 'unknown';
    // Every attempt passes here: no line, no fields built, unless one is written.
    if (!failure && !this.#log.isLevelEnabled('debug')) return;
    const fields = {
      runId,
      userId: event.userId,
      attempt: event.attempt,
      status: event.status ?? null,
      latencyMs: Math.round(event.latencyMs),
      outcome: event.outcome,
      ...(event.reason === undefined ? {} : { reason: event.reason }),
    };
    if (failure) {
      this.#log.warn(fields, `charge ${event.outcome}`);
    } else this.#log.debug(fields, 'attempt');
  }

  /** The run's end, once. */
  end(fields: Readonly<Record<string, unknown>>, message: string): void {
    this.#log.info(fields, message);
  }
}
