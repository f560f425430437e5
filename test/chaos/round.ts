import type { MockProvider, MockProviderStats } from '../../src/mock-provider/index.js';
import { checkRound } from './check.js';
import type { ChaosUser } from './input.js';
import type { ChaosProfile } from './provider.js';

/** How many times each kind of fault was injected. */
export type FaultTally = Record<string, number>;

export function tally(faults: FaultTally, kind: string, count = 1): void {
  faults[kind] = (faults[kind] ?? 0) + count;
}

export type ChaosEngine = 'local' | 'distributed';

/** What one round did and found. */
export interface RoundResult {
  readonly seed: number;
  readonly engine: ChaosEngine;
  /** The API the provider spoke: the mock's own, or a shipped profile's. */
  readonly profile: ChaosProfile;
  /** Users the run had to account for. */
  readonly users: number;
  /** Processes of bulkbill started to bill it (runs, or enqueues and workers). */
  readonly launches: number;
  readonly faults: FaultTally;
  /** Users the report says were charged. */
  readonly charged: number;
  /** Report rows per state. */
  readonly states: Record<string, number>;
  readonly provider: MockProviderStats;
  /** Every broken promise, in words; empty for a round that passed. */
  readonly violations: readonly string[];
  /** What happened, launch by launch: printed with a failing round. */
  readonly log: readonly string[];
  readonly ms: number;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The last line of `text` that is a JSON object (a command's `--json` output). */
export function lastJson(text: string): Record<string, unknown> | undefined {
  for (const line of text.trim().split('\n').reverse()) {
    try {
      const value = JSON.parse(line) as unknown;
      if (typeof value === 'object' && value !== null) return value as Record<string, unknown>;
    } catch {
      // not JSON
    }
  }
  return undefined;
}

/** Checks a round's report against the provider and gathers what the round did and found. */
export async function finishRound(round: {
  readonly seed: number;
  readonly engine: ChaosEngine;
  readonly profile: ChaosProfile;
  /** Every user the run had to account for; `broken` ones are still typos in the file. */
  readonly users: readonly ChaosUser[];
  readonly launches: number;
  readonly faults: FaultTally;
  readonly maxAttempts: number;
  readonly report: string;
  readonly provider: MockProvider;
  /** Found while the round ran; the checks add theirs. */
  readonly violations: string[];
  readonly log: readonly string[];
  /** performance.now() when the round began. */
  readonly started: number;
}): Promise<RoundResult> {
  const { users, provider, violations } = round;
  const checked = await checkRound(round.report, provider, {
    userIds: users.map((user) => user.userId),
    invalid: new Set(users.filter((user) => user.broken).map((user) => user.userId)),
    maxAttempts: round.maxAttempts,
  });
  violations.push(...checked.violations);
  return {
    seed: round.seed,
    engine: round.engine,
    profile: round.profile,
    users: users.length,
    launches: round.launches,
    faults: round.faults,
    charged: checked.charged,
    states: checked.states,
    provider: provider.stats(),
    violations,
    log: round.log,
    ms: performance.now() - round.started,
  };
}
