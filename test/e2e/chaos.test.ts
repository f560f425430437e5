import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { distributedRound } from '../chaos/distributed-round.js';
import { localRound } from '../chaos/local-round.js';
import type { RoundResult } from '../chaos/round.js';

// The short chaos suite: a few rounds of `npm run chaos` (test/chaos/main.ts) with fixed seeds,
// from the 50-round runs in docs/guarantees.md (seed 6000 found the Adyen cut-off refusal), chosen for
// the many kinds of fault they inject (kills of the run, of enqueue, of workers, of Redis; outages; operator reruns). A failing round
// names its seed: `npm run chaos -- --rounds 1 --engine <engine> --seed <seed>` replays it.

let workDir: string;
beforeAll(async () => {
  workDir = await mkdtemp(join(tmpdir(), 'bulkbill-chaos-test-'));
});
afterAll(async () => {
  await rm(workDir, { recursive: true, force: true });
});

function explain(result: RoundResult): string {
  return [
    `seed ${result.seed} (${result.engine}): ${result.violations.length} violations`,
    ...result.violations.slice(0, 20),
    ...result.log,
    `faults: ${JSON.stringify(result.faults)}`,
  ].join('\n');
}

const LOCAL_SEEDS = [5016, 6000];
const DISTRIBUTED_SEEDS = [5025];

describe('chaos, short', () => {
  it.each(LOCAL_SEEDS)(
    'local engine, seed %i: every promise holds through the faults',
    async (seed) => {
      const result = await localRound(seed, workDir);
      expect(result.violations, explain(result)).toEqual([]);
      expect(Object.keys(result.faults).length, explain(result)).toBeGreaterThan(0);
      expect(result.provider.duplicate_charges).toBe(0);
    },
    180_000,
  );

  it.each(DISTRIBUTED_SEEDS)(
    'distributed engine, seed %i: every promise holds through the faults',
    async (seed) => {
      const result = await distributedRound(seed, workDir);
      expect(result.violations, explain(result)).toEqual([]);
      expect(Object.keys(result.faults).length, explain(result)).toBeGreaterThan(0);
      expect(result.provider.duplicate_charges).toBe(0);
    },
    240_000,
  );
});
