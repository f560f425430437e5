import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  plainUsers,
  readReport,
  useCliWorkspace,
  writeCsvInput,
} from '../helpers/billing-cycle.js';
import { runCli } from '../helpers/cli.js';
import { closeServer, readBody } from '../helpers/http.js';
import { closeRedisAdmin, deleteKeysUnder, REDIS_URL, uniquePrefix } from '../helpers/redis.js';

// Throttling as a provider does it, through the real CLI: a rate limit that answers 429 without
// saying how long to wait, and a Retry-After that must be honoured by every request after it.

const ws = useCliWorkspace('bulkbill-e2e-throttle-', { jitter: 0, seed: 5 });
const servers: Server[] = [];
const prefixes: string[] = [];

afterEach(async () => {
  await Promise.all(servers.splice(0).map(closeServer));
  for (const prefix of prefixes.splice(0)) await deleteKeysUnder(prefix);
});
afterAll(async () => {
  await closeRedisAdmin();
});

describe('throttling, end to end', () => {
  it('against a 50/s provider that sends no Retry-After: at most one 429 per user, everyone charged once', async () => {
    const USERS = 300;
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), plainUsers(USERS));
    const mock = await ws.provider({ latencyMs: 20, rate: 50, retryAfter: false });
    const result = await runCli([
      ...['run', input, '--endpoint', `${mock.url}/charge`, '--ledger', ws.ledger],
      ...['--report', ws.report, '--concurrency', '64', '--max-attempts', '3'],
    ]);
    expect(result.code, result.stderr).toBe(0);
    const stats = mock.stats();
    expect(stats).toMatchObject({ charges: USERS, users_charged: USERS, duplicate_charges: 0 });
    // Without the governor (main before it): thousands of 429s for these 300 users.
    expect(stats.rejected_429).toBeLessThanOrEqual(USERS);
    const report = await readReport(ws.report);
    expect(report.every((row) => row.status === 'charged')).toBe(true);
  }, 60_000);

  it('on the distributed engine too: the queue learns the rate, at most one 429 per user', async () => {
    const USERS = 200;
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), plainUsers(USERS));
    const mock = await ws.provider({ latencyMs: 20, rate: 50, retryAfter: false });
    const prefix = uniquePrefix();
    prefixes.push(prefix);
    const result = await runCli([
      ...['run', input, '--redis', REDIS_URL, '--prefix', prefix, '--queue', 'q'],
      ...['--run-id', 'throttled', '--endpoint', `${mock.url}/charge`, '--report', ws.report],
      ...['--concurrency', '64', '--max-attempts', '3'],
    ]);
    expect(result.code, result.stderr).toBe(0);
    const stats = mock.stats();
    expect(stats).toMatchObject({ charges: USERS, duplicate_charges: 0 });
    expect(stats.rejected_429).toBeLessThanOrEqual(USERS);
  }, 60_000);

  it('honours Retry-After: no request leaves before it has passed, and the charges then go through', async () => {
    // The first wave is answered 429 with Retry-After: 1; every request is timed on arrival.
    const arrivals: Array<{ at: number; status: number }> = [];
    let throttledAt = 0;
    const server = createServer(async (req, res) => {
      const body = await readBody(req);
      const at = performance.now();
      if (throttledAt === 0 || at - throttledAt < 1_000) {
        if (throttledAt === 0) throttledAt = at;
        arrivals.push({ at, status: 429 });
        res.writeHead(429, { 'retry-after': '1', 'content-type': 'application/json' });
        res.end('{"error":"rate_limited"}');
        return;
      }
      arrivals.push({ at, status: 200 });
      const { user_id: userId } = JSON.parse(body) as { user_id: string };
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ id: `ch_${userId}`, status: 'succeeded' }));
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    const input = await writeCsvInput(join(ws.dir, 'users.csv'), plainUsers(10));
    const result = await runCli([
      ...['run', input, '--endpoint', `http://127.0.0.1:${port}/charge`],
      ...['--ledger', ws.ledger, '--report', ws.report, '--concurrency', '5'],
    ]);
    expect(result.code, result.stderr).toBe(0);
    const throttled = arrivals.filter((arrival) => arrival.status === 429);
    const charged = arrivals.filter((arrival) => arrival.status === 200);
    // The first wave only: what was in flight when the first 429 came back.
    expect(throttled.length).toBeGreaterThan(0);
    expect(throttled.length).toBeLessThanOrEqual(5);
    expect(charged).toHaveLength(10);
    // Each 429 paused all dispatch for its Retry-After (a timer never fires early).
    const lastThrottle = Math.max(...throttled.map((arrival) => arrival.at));
    for (const arrival of charged) {
      expect(arrival.at - lastThrottle).toBeGreaterThanOrEqual(990);
    }
    const report = await readReport(ws.report);
    expect(report.map((row) => row.status)).toEqual(Array(10).fill('charged'));
  }, 30_000);
});
