import type { MockProviderStats } from '../../src/mock-provider/index.js';

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
  readonly profile: 'default' | 'stripe' | 'adyen';
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
