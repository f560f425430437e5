import { writeProfileConfig } from '../../bench/lib/profile-config.js';
import type { MockProvider, MockProviderOptions } from '../../src/mock-provider/index.js';
import { Random } from './random.js';
import { type FaultTally, tally } from './round.js';

/** The deadline of one request in every round: slow answers are drawn past it. */
export const ATTEMPT_TIMEOUT_MS = 1_000;

/** Which API the round's provider speaks: the mock's own, or Stripe's or Adyen's (a profile). */
export type ChaosProfile = 'default' | 'stripe' | 'adyen';

/** Drawn from a stream of its own, so the rest of a seed's round is what it was without it. */
export function drawProfile(seed: number): ChaosProfile {
  return new Random(seed, 'profile').pick(['default', 'default', 'stripe', 'adyen'] as const);
}

/**
 * How bulkbill is pointed at the provider: `--endpoint` for the mock's own API, else the shipped
 * profile (examples/providers/<name>.jsonc) as a config file, its endpoint the mock's.
 */
export async function providerFlags(
  profile: ChaosProfile,
  provider: MockProvider,
  dir: string,
): Promise<string[]> {
  if (profile === 'default') return ['--endpoint', `${provider.url}/charge`];
  const { path } = await writeProfileConfig(profile, provider.url, dir);
  return ['--config', path];
}

/** The provider faults of a round, drawn from its seed. */
export function drawProviderFaults(random: Random, faults: FaultTally): MockProviderOptions {
  const options: MockProviderOptions = {
    latencyMs: random.int(10, 80),
    jitter: 0.5,
    seed: random.int(0, 0xffff_ffff),
    failRate: random.pick([0, 0.05, 0.15]),
    lostRate: random.pick([0, 0.03, 0.08]),
    resetRate: random.pick([0, 0.03]),
    slowRate: random.pick([0, 0, 0.03]),
    // Slower than the timeout: the retry meets the key still in progress (409) or its replay.
    slowMs: ATTEMPT_TIMEOUT_MS + random.int(200, 1_500),
    declineRate: random.pick([0, 0.05]),
    shutdownGraceMs: 0,
  };
  if (random.chance(0.3)) {
    options.rate = random.int(150, 600);
    options.retryAfter = random.chance(0.5);
    tally(faults, options.retryAfter ? '429 with Retry-After' : '429 without Retry-After');
  }
  if (random.chance(0.3)) {
    options.capacity = random.int(4, 16);
    tally(faults, '503 over capacity');
  }
  if ((options.failRate ?? 0) > 0) tally(faults, '503 before charging');
  if ((options.lostRate ?? 0) > 0) tally(faults, 'lost answer');
  if ((options.resetRate ?? 0) > 0) tally(faults, 'reset mid-answer');
  if ((options.slowRate ?? 0) > 0) tally(faults, 'answer slower than the timeout');
  return options;
}
