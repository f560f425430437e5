import { type Agent, request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, spawnCli, waitForOutput } from '../helpers/cli.js';
import { getJson, testAgent } from '../helpers/http.js';

const LISTENING = /listening on (http:\/\/\S+)/;
let agent: Agent;

beforeAll(() => {
  agent = testAgent();
});
afterAll(async () => {
  await agent.close();
});

describe('bulkbill mock-provider --shape', () => {
  it('serves the shape on its route, says so in the banner, and keeps the admin routes', async () => {
    const cli = spawnCli(['mock-provider', '--port', '0', '--latency', '0', '--shape', 'stripe']);
    const [, url] = (await waitForOutput(cli, LISTENING)) as unknown as [string, string];
    expect(cli.stdout()).toContain('shape stripe');
    expect(cli.stdout()).toContain(`POST ${url}/v1/payment_intents`);
    const response = await request(`${url}/v1/payment_intents`, {
      dispatcher: agent,
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'idempotency-key': 'k:ann' },
      body: 'amount=500&currency=usd&confirm=true&payment_method=pm_card_visa&metadata[user_id]=ann',
    });
    expect(response.statusCode).toBe(200);
    expect(await response.body.json()).toMatchObject({
      object: 'payment_intent',
      status: 'succeeded',
    });
    expect(await getJson(agent, `${url}/stats`)).toMatchObject({ charges: 1 });
    cli.child.kill('SIGTERM');
    expect(await cli.exited).toBe(0);
  });

  it('exits 2 naming the flag and the choices for an unknown shape', async () => {
    const result = await runCli(['mock-provider', '--port', '0', '--shape', 'paypal']);
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/--shape.*paypal/);
    expect(result.stderr).toContain('gocardless');
  });
});
