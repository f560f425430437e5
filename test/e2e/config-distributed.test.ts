import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { expectReportAgreesWithProvider, useCliWorkspace } from '../helpers/billing-cycle.js';
import { repoRoot, runCli } from '../helpers/cli.js';
import { useRedisPlace } from '../helpers/distributed.js';

// One config file for every command of the distributed engine, as an operator keeps it next to
// the cycle: Redis, queue and prefix, the endpoint, headers and a provider description (the
// GoCardless profile), read by enqueue, each worker, status and report; real processes.

const ws = useCliWorkspace('bulkbill-e2e-config-');
const { place, children } = useRedisPlace();
const TOKEN = 'gc_canary_token_7d1f';

describe('a config file shared by enqueue, workers, status and report', () => {
  it('bills every user once through two workers, each command reading only the file and its own flags', async () => {
    const mock = await ws.provider({
      shape: 'gocardless',
      latencyMs: 5,
      failRate: 0.05,
      lostRate: 0.02,
      declineRate: 0.03,
      apiKey: TOKEN,
      seed: 9,
    });
    const profile = await readFile(join(repoRoot, 'examples/providers/gocardless.jsonc'), 'utf8');
    const config = join(ws.dir, 'bulkbill.config.json');
    await writeFile(
      config,
      profile
        .replace('"https://api.gocardless.com"', JSON.stringify(mock.url))
        .replace(
          '"concurrency": 32,',
          `"concurrency": 16, "timeout": "500ms", "maxAttempts": 10, "redis": ${JSON.stringify(place.url)}, "queue": ${JSON.stringify(place.queue)}, "prefix": ${JSON.stringify(place.prefix)},`,
        ),
    );
    const userIds = Array.from({ length: 400 }, (_, index) => `user-${index}`);
    const input = join(ws.dir, 'cycle.csv');
    await writeFile(
      input,
      `user_id,amount,currency,mandate\n${userIds.map((id, index) => `${id},${500 + index},GBP,MD${index}`).join('\n')}\n`,
    );
    const env = { GOCARDLESS_ACCESS_TOKEN: TOKEN };
    const withConfig = ['--config', config];

    // A row the template cannot fill is refused before anything is queued.
    const broken = join(ws.dir, 'broken.csv');
    await writeFile(broken, 'user_id,amount,currency\nuser-x,100,GBP\n');
    const refused = await runCli(['enqueue', broken, ...withConfig, '--run-id', 'cfg-broken'], {
      env,
    });
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain(
      'broken.csv:2: mandate: is missing, and the provider template reads it',
    );

    const queued = await runCli(['enqueue', input, ...withConfig, '--run-id', 'cfg-1'], { env });
    expect(queued.code, queued.stderr).toBe(0);
    const workers = [0, 1].map(() =>
      children.spawn(['worker', ...withConfig, '--exit-when-idle'], { env }),
    );
    const followed = await runCli(['status', ...withConfig, '--run-id', 'cfg-1', '--wait'], {
      env,
    });
    expect(followed.code, followed.stderr).toBe(0);
    for (const worker of workers) expect(await worker.exited, worker.stderr()).toBe(0);

    const report = join(ws.dir, 'cfg-1.csv');
    const written = await runCli(['report', ...withConfig, '--run-id', 'cfg-1', '--out', report]);
    expect(written.code, written.stderr).toBe(0);
    await expectReportAgreesWithProvider({
      agent: ws.agent,
      providerUrl: mock.url,
      reportPath: report,
      userIds,
    });
    for (const output of [
      queued,
      followed,
      written,
      ...workers.map((w) => ({ stdout: w.stdout(), stderr: w.stderr() })),
    ]) {
      expect(`${output.stdout}${output.stderr}`.includes(TOKEN)).toBe(false);
    }
  });
});
