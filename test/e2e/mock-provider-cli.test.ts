import { fileURLToPath } from 'node:url';
import type { Agent } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, spawnCli, waitForOutput } from '../helpers/cli.js';
import { getJson, postCharge, testAgent } from '../helpers/http.js';

const LISTENING = /listening on (http:\/\/\S+)/;
let agent: Agent;

beforeAll(() => {
  agent = testAgent();
});
afterAll(async () => {
  await agent.close();
});

describe('bulkbill mock-provider', () => {
  it('serves the contract on a free port and stops gracefully on SIGTERM', async () => {
    const cli = spawnCli(['mock-provider', '--port', '0', '--latency', '20ms', '--seed', '3']);
    const [, url] = (await waitForOutput(cli, LISTENING)) as unknown as [string, string];
    expect(cli.stdout()).toContain('seed 3');

    const headers = { 'idempotency-key': 'cycle:ann' };
    const body = { user_id: 'ann', amount: 500, currency: 'USD' };
    const first = await postCharge(agent, url, body, headers);
    const replay = await postCharge(agent, url, body, headers);
    expect(first.status).toBe(200);
    expect(replay.headers['idempotent-replayed']).toBe('true');
    const stats = await getJson(agent, `${url}/stats`);
    expect(stats).toMatchObject({ requests: 2, charges: 1, replays: 1, seed: 3 });

    cli.child.kill('SIGTERM');
    expect(await cli.exited).toBe(0);
    expect(cli.stdout()).toMatch(/stopped: \{.*"charges":1/);
  });

  it('answers a request in flight before exiting on SIGINT', async () => {
    const cli = spawnCli(['mock-provider', '--port', '0', '--latency', '600ms', '--jitter', '0']);
    const [, url] = (await waitForOutput(cli, LISTENING)) as unknown as [string, string];
    const pending = postCharge(agent, url, { user_id: 'bo', amount: 1, currency: 'EUR' });
    await new Promise((resolve) => setTimeout(resolve, 150));
    cli.child.kill('SIGINT');
    expect((await pending).status).toBe(200);
    expect(await cli.exited).toBe(0);
  });

  it('reads the API key from the environment and never prints it', async () => {
    const secret = 'sk_live_do_not_print';
    const cli = spawnCli(['mock-provider', '--port', '0', '--latency', '0'], {
      env: { MOCK_PROVIDER_API_KEY: secret },
    });
    const [, url] = (await waitForOutput(cli, LISTENING)) as unknown as [string, string];
    const body = { user_id: 'cy', amount: 1, currency: 'EUR' };
    expect((await postCharge(agent, url, body)).status).toBe(401);
    expect((await postCharge(agent, url, body, { authorization: `Bearer ${secret}` })).status).toBe(
      200,
    );
    cli.child.kill('SIGTERM');
    await cli.exited;
    expect(cli.stdout() + cli.stderr()).not.toContain(secret);
    expect(cli.stdout()).toContain('API key required');
  });

  it.each([
    [['--fail-rate', '1.5'], /--fail-rate/],
    [['--latency', '5'], /--latency: expected a duration/],
    [['--port', 'eighty'], /--port: expected a number/],
    [['--overload', 'drop'], /--overload/],
    [['--capacity', '0'], /--capacity/],
    [['--no-such-flag'], /unknown option/],
  ])('exits 2 naming the flag for %j', async (flags, message) => {
    const result = await runCli(['mock-provider', '--port', '0', ...flags]);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(message);
    expect(result.stdout).not.toMatch(LISTENING);
  });

  it('runs through the installed bin shim (the build `npm install` makes)', async () => {
    const shim = fileURLToPath(new URL('../../bin/bulkbill.js', import.meta.url));
    const result = await runCli(['--help'], { entry: shim });
    expect(result.code).toBe(0);
    expect(result.stdout).toContain('mock-provider');
  });
});
