/**
 * The chaos suite: `npm run chaos -- --rounds N [--seed S] [--engine local|distributed|both]`.
 *
 * Each round draws, from its seed, a billing cycle, a provider fault mix and faults in bulkbill
 * itself, bills the cycle through them with real processes, resumes as the docs tell an
 * operator until the run ends, then checks the promises (test/chaos/check.ts). A failing round
 * prints its seed and the command that replays it. Exits 1 when any round broke a promise.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { markdownTable } from '../../bench/lib/report.js';
import { distributedRound } from './distributed-round.js';
import { localRound } from './local-round.js';
import type { ChaosEngine, RoundResult } from './round.js';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '10' },
    seed: { type: 'string' },
    engine: { type: 'string', default: 'both' },
    keep: { type: 'boolean', default: false },
  },
});

const rounds = Number(values.rounds);
if (!Number.isSafeInteger(rounds) || rounds < 1) {
  process.stderr.write(
    `chaos: --rounds must be a whole number of at least 1, got ${values.rounds}\n`,
  );
  process.exit(2);
}
const engine = values.engine;
if (engine !== 'local' && engine !== 'distributed' && engine !== 'both') {
  process.stderr.write(`chaos: --engine must be local, distributed or both, got ${engine}\n`);
  process.exit(2);
}
const baseSeed =
  values.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(values.seed);
if (!Number.isSafeInteger(baseSeed) || baseSeed < 0) {
  process.stderr.write(`chaos: --seed must be a whole number, got ${values.seed}\n`);
  process.exit(2);
}

const engines: ChaosEngine[] = engine === 'both' ? ['local', 'distributed'] : [engine];
const workDir = await mkdtemp(join(tmpdir(), 'bulkbill-chaos-'));
const results: RoundResult[] = [];
const started = performance.now();
process.stderr.write(
  `chaos: ${rounds} rounds per engine (${engines.join(', ')}), seed ${baseSeed}, in ${workDir}\n`,
);
try {
  for (let index = 0; index < rounds; index++) {
    // Round i's seed is the base seed + i: `--seed S --rounds 1` replays the round of seed S.
    const seed = baseSeed + index;
    for (const which of engines) {
      const result = await (which === 'local' ? localRound : distributedRound)(seed, workDir).catch(
        (error: unknown) => crashed(which, seed, error),
      );
      results.push(result);
      const verdict =
        result.violations.length === 0 ? 'ok' : `${result.violations.length} VIOLATIONS`;
      process.stderr.write(
        `chaos: round ${index + 1}/${rounds} ${which} seed ${seed} (${result.profile}): ${result.users} users, ${result.launches} launches, ${Object.values(result.faults).reduce((a, b) => a + b, 0)} faults, ${(result.ms / 1_000).toFixed(1)} s: ${verdict}\n`,
      );
      // Which faults: to pick the seeds of the short suite, and to read a failure by.
      process.stderr.write(
        `  faults: ${
          Object.entries(result.faults)
            .map(([kind, count]) => `${kind}${count > 1 ? ` ×${count}` : ''}`)
            .join(', ') || 'none'
        }\n`,
      );
      if (result.violations.length > 0) {
        for (const violation of result.violations.slice(0, 20))
          process.stderr.write(`  - ${violation}\n`);
        for (const line of result.log) process.stderr.write(`  | ${line}\n`);
        process.stderr.write(
          `  replay: npm run chaos -- --rounds 1 --engine ${which} --seed ${seed}\n`,
        );
      }
    }
  }
} finally {
  if (!values.keep) await rm(workDir, { recursive: true, force: true });
}

process.stdout.write(`${summaryTable(results, performance.now() - started)}\n`);
process.exit(results.some((result) => result.violations.length > 0) ? 1 : 0);

/** A round whose harness itself failed: reported as a violation, and the suite goes on. */
function crashed(which: ChaosEngine, seed: number, error: unknown): RoundResult {
  return {
    seed,
    engine: which,
    profile: 'default',
    users: 0,
    launches: 0,
    faults: {},
    charged: 0,
    states: {},
    provider: { duplicate_charges: 0 } as RoundResult['provider'],
    violations: [
      `the round itself failed: ${error instanceof Error ? error.stack : String(error)}`,
    ],
    log: [],
    ms: 0,
  };
}

function summaryTable(all: readonly RoundResult[], ms: number): string {
  const kinds = new Map<string, number>();
  for (const result of all) {
    for (const [kind, count] of Object.entries(result.faults))
      kinds.set(kind, (kinds.get(kind) ?? 0) + count);
  }
  const rows: string[][] = [];
  for (const which of engines) {
    const mine = all.filter((result) => result.engine === which);
    rows.push([
      which,
      String(mine.length),
      String(mine.reduce((sum, result) => sum + result.users, 0)),
      String(mine.reduce((sum, result) => sum + result.charged, 0)),
      String(mine.reduce((sum, result) => sum + result.provider.duplicate_charges, 0)),
      String(
        mine.reduce(
          (sum, result) => sum + Object.values(result.faults).reduce((a, b) => a + b, 0),
          0,
        ),
      ),
      String(mine.reduce((sum, result) => sum + result.violations.length, 0)),
    ]);
  }
  return [
    `## chaos: ${all.length} rounds, seed ${baseSeed}, ${(ms / 1_000).toFixed(0)} s`,
    '',
    markdownTable(
      ['engine', 'rounds', 'users', 'charged', 'duplicate charges', 'faults', 'violations'],
      rows,
    ),
    '',
    markdownTable(
      ['fault', 'injected'],
      [...kinds].sort((a, b) => b[1] - a[1]).map(([kind, count]) => [kind, String(count)]),
    ),
  ].join('\n');
}
