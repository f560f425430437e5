import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { repoRoot, spawnCli, waitForOutput } from '../helpers/cli.js';

// A SIGTERM that reaches a run after it ended (summary printed, ledger and pools still closing)
// must not turn its exit status into 143: the chaos suite's seed 6000 once saw exactly that.

const dirs: string[] = [];
afterAll(async () => {
  await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
});

/** A process whose command ended with status 1 while something still keeps it alive. */
async function endedCommand(withLateHandler: boolean): Promise<number> {
  const dir = await mkdtemp(join(tmpdir(), 'bulkbill-late-signal-'));
  dirs.push(dir);
  const script = join(dir, 'ended.ts');
  const signals = JSON.stringify(join(repoRoot, 'src/cli/signals.ts'));
  await writeFile(
    script,
    [
      `import { exitOnLateStopSignals } from ${signals};`,
      'process.exitCode = 1;',
      withLateHandler ? 'exitOnLateStopSignals();' : '',
      'setInterval(() => {}, 1_000);',
      "process.stdout.write('ended\\n');",
    ].join('\n'),
  );
  const child = spawnCli([], { entry: script, env: { NODE_OPTIONS: '--import tsx' } });
  await waitForOutput(child, /ended/);
  child.child.kill('SIGTERM');
  return child.exited;
}

describe('a stop signal after the command ended', () => {
  it('exits at once with the command’s own status, not the signal’s', async () => {
    expect(await endedCommand(true)).toBe(1);
  });

  it('would die as 143 without it (the test can tell the two apart)', async () => {
    expect(await endedCommand(false)).toBe(143);
  });
});
