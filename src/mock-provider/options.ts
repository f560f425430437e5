import { z } from 'zod';
import type { Clock } from '../domain/clock.js';
import { describeValue, UsageError } from '../domain/errors.js';
import { SHAPE_NAMES } from './shapes/shape.js';

const probability = z.number().min(0).max(1);
const nonNegativeMs = z.number().finite().min(0);

/**
 * What the mock billing provider simulates. Every field is optional; the default is given.
 * Probabilities are drawn from a stream seeded per user and attempt, so a run with the same
 * seed and the same requests sees the same faults, whatever order concurrent requests arrive in.
 */
export const mockProviderOptionsSchema = z
  .object({
    /** TCP port; 0 picks a free one. Default 4010. */
    port: z.number().int().min(0).max(65_535).default(4010),
    /** Interface to listen on. Default 127.0.0.1. */
    host: z.string().min(1).default('127.0.0.1'),
    /** Time to process one charge, in ms. Default 1600. */
    latencyMs: nonNegativeMs.default(1_600),
    /** Latency varies uniformly within ±jitter × latency. Default 0.1. */
    jitter: probability.default(0.1),
    /** Most requests processed at once; unlimited when absent. */
    capacity: z.number().int().min(1).optional(),
    /** Past capacity: '503' answers 503 at once, 'queue' waits in line (latency grows). Default '503'. */
    overload: z.enum(['503', 'queue']).default('503'),
    /** Requests per second allowed by a token bucket; past it, 429 with Retry-After. Unlimited when absent. */
    rate: z.number().finite().positive().optional(),
    /** Token bucket size (largest burst). Default: max(1, rate). */
    burst: z.number().finite().min(1).optional(),
    /**
     * Send `Retry-After` with a 429 past `rate`; false answers 429 without it, as providers that
     * never say how long to wait do. Default true.
     */
    retryAfter: z.boolean().default(true),
    /** Probability of a 503 before anything is charged. Default 0. */
    failRate: probability.default(0),
    /** Probability that the charge is applied and the connection then dropped unanswered. Default 0. */
    lostRate: probability.default(0),
    /**
     * Probability that the charge is applied and the connection then reset in the middle of the
     * answer (the status line, the headers and half the body sent). Default 0.
     */
    resetRate: probability.default(0),
    /** Probability that the charge is applied and the answer delayed by `slowMs`. Default 0. */
    slowRate: probability.default(0),
    /** Extra delay of a slow answer, in ms. Default 35 s, past bulkbill's default 30 s timeout. */
    slowMs: nonNegativeMs.default(35_000),
    /** Probability that a card is declined (402). Default 0. */
    declineRate: probability.default(0),
    /** User ids ending with this are always declined. */
    declineSuffix: z.string().min(1).optional(),
    /** Seed of all randomness. Default: a random seed, reported by `seed`. */
    seed: z.number().int().min(0).max(0xffff_ffff).optional(),
    /**
     * The wire format: the mock's own (`default`: POST /charge) or a real provider's API
     * (`stripe`, `adyen`, `braintree`, `square`, `checkout`, `gocardless`; docs/mock-provider.md).
     * Default 'default'.
     */
    shape: z.enum(SHAPE_NAMES).default('default'),
    /**
     * When set, charges must carry this API key the way the shape's provider takes one
     * (`Authorization: Bearer <apiKey>` by default), and are refused as unauthorized otherwise.
     */
    apiKey: z.string().min(1).optional(),
    /** How long close() lets requests in flight finish before dropping them, in ms. Default 5000. */
    shutdownGraceMs: nonNegativeMs.default(5_000),
  })
  .strict();

export type MockProviderOptions = z.input<typeof mockProviderOptionsSchema> & {
  /** Clock of the rate limiter (tests pass a fake one). Default: the system's monotonic clock. */
  readonly clock?: Clock;
};

export type ResolvedMockProviderOptions = z.output<typeof mockProviderOptionsSchema> & {
  readonly seed: number;
  readonly clock?: Clock;
};

/**
 * Checks options once and fills in defaults. `label` turns an option name into what the user
 * typed (the CLI passes `failRate` → `--fail-rate`), so the message names the right thing.
 */
export function resolveMockProviderOptions(
  options: MockProviderOptions = {},
  label: (name: string) => string = (name) => `\`${name}\``,
): ResolvedMockProviderOptions {
  const { clock, ...rest } = options;
  const parsed = mockProviderOptionsSchema.safeParse(rest);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const name = String(issue?.path[0] ?? 'options');
    const received = (rest as Record<string, unknown>)[name];
    const detail =
      issue?.code === 'unrecognized_keys'
        ? `unknown option ${issue.keys.join(', ')}`
        : issue?.message;
    throw new UsageError(`${label(name)}: ${detail}, got ${describeValue(received)}`);
  }
  const seed = parsed.data.seed ?? Math.floor(Math.random() * 0xffff_ffff);
  return clock === undefined ? { ...parsed.data, seed } : { ...parsed.data, seed, clock };
}
