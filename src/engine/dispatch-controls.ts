import type { Random } from '../control/backoff.js';
import { CircuitBreaker, resolveBreakerPolicy } from '../control/circuit-breaker.js';
import { parseDeadline } from '../control/deadline-planner.js';
import { DispatchLimit } from '../control/dispatch-limit.js';
import { LimitController } from '../control/limit-controller.js';
import type { Clock } from '../domain/clock.js';
import { UsageError } from '../domain/errors.js';

/** The options both engines take to pace their requests. */
export interface DispatchSettings {
  /** A number, or `auto`; undefined: 64, or with a deadline the planner's. */
  readonly concurrency?: number | 'auto' | undefined;
  readonly minConcurrency: number;
  readonly maxConcurrency: number;
  /** Epoch ms, or text for parseDeadline (a duration from now, or a time with date and offset). */
  readonly deadline?: number | string | undefined;
  readonly rate?: number | undefined;
  readonly assumedLatencyMs: number;
  /** How long the breaker waits for a provider that is down before the run stops; 0: no breaker. */
  readonly outageWaitMs: number;
}

export const DEFAULT_CONCURRENCY = 64;

/** The deadline as epoch ms, read once (a duration counts from now). */
export function deadlineOf(
  deadline: number | string | undefined,
  nowMs: number,
  label: string,
): number | undefined {
  if (deadline === undefined) return undefined;
  if (typeof deadline === 'number') {
    if (!Number.isFinite(deadline))
      throw new UsageError(`${label}: expected a time, got ${deadline}`);
    return deadline;
  }
  return parseDeadline(deadline, nowMs, label);
}

/** Checks that the settings agree; the message names the flags. */
export function checkDispatchSettings(
  settings: Pick<DispatchSettings, 'minConcurrency' | 'maxConcurrency'>,
  label: (name: string) => string,
): void {
  if (settings.minConcurrency > settings.maxConcurrency) {
    throw new UsageError(
      `${label('minConcurrency')} (${settings.minConcurrency}) must not be above ${label('maxConcurrency')} (${settings.maxConcurrency})`,
    );
  }
}

/** The most requests in flight the settings can ever ask for: the HTTP pool's size. */
export function mostInFlight(
  settings: Pick<DispatchSettings, 'concurrency' | 'maxConcurrency' | 'deadline'>,
): number {
  if (typeof settings.concurrency === 'number') return settings.concurrency;
  if (settings.concurrency === 'auto' || settings.deadline !== undefined) {
    return settings.maxConcurrency;
  }
  return DEFAULT_CONCURRENCY;
}

/**
 * The limit (fixed, auto, and the deadline's plan) and the breaker of one engine (a scheduler,
 * or a worker), from the settings. With a deadline, a number given as `concurrency` is the most
 * the plan may use (as `maxConcurrency` is otherwise).
 */
export function dispatchControls(
  settings: DispatchSettings,
  deadlineAt: number | undefined,
  seams: { clock: Clock; wallClock: () => number; random: Random },
): { limit: DispatchLimit; breaker: CircuitBreaker | undefined } {
  const { clock } = seams;
  const auto = settings.concurrency === 'auto';
  const ceiling =
    typeof settings.concurrency === 'number' && deadlineAt !== undefined
      ? settings.concurrency
      : settings.maxConcurrency;
  const limit = new DispatchLimit({
    mode: auto
      ? {
          kind: 'auto',
          controller: new LimitController({
            clock,
            min: settings.minConcurrency,
            max: settings.maxConcurrency,
          }),
        }
      : {
          kind: 'fixed',
          concurrency:
            typeof settings.concurrency === 'number' ? settings.concurrency : DEFAULT_CONCURRENCY,
        },
    clock,
    deadline: deadlineAt === undefined ? undefined : { at: deadlineAt, wallClock: seams.wallClock },
    maxConcurrency: ceiling,
    minConcurrency: settings.minConcurrency,
    rate: settings.rate,
    assumedLatencyMs: settings.assumedLatencyMs,
  });
  const breaker =
    settings.outageWaitMs === 0
      ? undefined
      : new CircuitBreaker({
          clock,
          random: seams.random,
          policy: resolveBreakerPolicy({ giveUpMs: settings.outageWaitMs }),
        });
  return { limit, breaker };
}
