import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ProviderClient, type ProviderClientOptions } from '../../src/provider/index.js';
import { runCli } from '../helpers/cli.js';
import { selfSignedCertificate } from '../helpers/tls.js';

// A provider that answers in ways no provider should: each is classified as docs/guarantees.md
// says, memory stays bounded, and the credentials never go to another host.

const SECRET = 'Bearer sk_canary_hostile_1f9a';
const servers: Server[] = [];
const clients: ProviderClient[] = [];

afterEach(async () => {
  await Promise.all(clients.splice(0).map((client) => client.close()));
  for (const server of servers.splice(0)) server.closeAllConnections();
  await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
});

async function serve(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<string> {
  const server = createServer(handler);
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

function client(endpoint: string, options: Partial<ProviderClientOptions> = {}): ProviderClient {
  const created = new ProviderClient({
    endpoint,
    timeoutMs: 500,
    headers: [{ name: 'authorization', value: SECRET, sensitive: true }],
    ...options,
  });
  clients.push(created);
  return created;
}

const charge = {
  userId: 'u1',
  amount: 1999,
  currency: 'USD',
  idempotencyKey: 'hostile:u1',
  attempt: 1,
};

describe('hostile answers', () => {
  it('a 200 that is not JSON is charged, without an id', async () => {
    const url = await serve((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end('<html>ok</html>');
    });
    expect(await client(`${url}/charge`).attempt(charge)).toEqual({
      kind: 'charged',
      status: 200,
      chargeId: undefined,
    });
  });

  it('a 200 of 50 MB is charged with the id it starts with, read no further than 64 KiB', async () => {
    const chunk = Buffer.alloc(1024 * 1024, 0x20);
    let sent = 0;
    let hungUp = false;
    const url = await serve((_req, res) => {
      res.on('close', () => {
        hungUp = !res.writableFinished;
      });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"id":"ch_big","padding":"');
      const more = () => {
        while (sent < 50 && !res.destroyed) {
          sent++;
          if (!res.write(chunk)) {
            res.once('drain', more);
            return;
          }
        }
        if (!res.destroyed) res.end('"}');
      };
      more();
    });
    const result = await client(`${url}/charge`, { timeoutMs: 10_000 }).attempt(charge);
    expect(result).toEqual({ kind: 'charged', status: 200, chargeId: 'ch_big' });
    // The client hung up once it had read enough: the 50 MB were never all sent.
    await expect.poll(() => hungUp).toBe(true);
    expect(sent).toBeLessThan(50);
  });

  it('a body that never ends: the status line said charged, the deadline ends the wait', async () => {
    const url = await serve((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"id":"ch_slow",');
      // …and nothing more, ever.
    });
    expect(await client(`${url}/charge`).attempt(charge)).toMatchObject({
      kind: 'charged',
      chargeId: 'ch_slow',
    });
  });

  it('headers that never come: a timeout after sending, so ambiguous', async () => {
    const url = await serve(() => {
      // Reads the request, answers nothing.
    });
    expect(await client(`${url}/charge`).attempt(charge)).toMatchObject({
      kind: 'retry',
      ambiguous: true,
    });
  });

  it('a Retry-After of a year is cut to the longest honoured; garbage is ignored', async () => {
    const answers = ['31536000', 'soon', '-5', 'Wed, 21 Oct 2099 07:28:00 GMT'];
    let at = 0;
    const url = await serve((_req, res) => {
      res.writeHead(429, { 'retry-after': answers[at++] as string });
      res.end();
    });
    const shared = client(`${url}/charge`, { maxRetryAfterMs: 300_000 });
    const results = [];
    for (const _ of answers) results.push(await shared.attempt(charge));
    expect(results.map((result) => (result.kind === 'retry' ? result.retryAfterMs : 'no'))).toEqual(
      [300_000, undefined, undefined, 300_000],
    );
    for (const result of results) expect(result).toMatchObject({ kind: 'retry', throttled: true });
  });

  it('a redirect to another host stops the run as misconfigured; the other host sees nothing', async () => {
    let elsewhere = 0;
    const other = await serve((_req, res) => {
      elsewhere++;
      res.writeHead(200);
      res.end('{"id":"ch_stolen"}');
    });
    const url = await serve((_req, res) => {
      res.writeHead(307, { location: `${other}/charge` });
      res.end();
    });
    const result = await client(`${url}/charge`).attempt(charge);
    expect(result.kind).toBe('fatal');
    expect(JSON.stringify(result)).not.toContain('sk_canary');
    expect(elsewhere).toBe(0);
  });
});

describe('a TLS certificate that does not verify', () => {
  let url: string;
  let requests = 0;

  beforeAll(async () => {
    const server = createHttpsServer(selfSignedCertificate(), (_req, res) => {
      requests++;
      res.writeHead(200);
      res.end('{"id":"ch_tls"}');
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  it('stops the run as misconfigured, never sending the request', async () => {
    const result = await client(`${url}/charge`).attempt(charge);
    expect(result).toMatchObject({ kind: 'fatal' });
    expect(result.kind === 'fatal' ? result.reason : '').toMatch(/certificate/i);
    expect(requests).toBe(0);
  });
});

describe('a private CA given with --ca', () => {
  it('is trusted besides the usual roots: the run charges; a file without a certificate is refused naming it, nothing sent', async () => {
    const tls = selfSignedCertificate();
    let requests = 0;
    const server = createHttpsServer(tls, (req, res) => {
      req.resume();
      req.on('end', () => {
        requests++;
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(`{"id":"ch_${requests}"}`);
      });
    });
    servers.push(server);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const endpoint = `https://127.0.0.1:${(server.address() as AddressInfo).port}/charge`;
    const dir = await mkdtemp(join(tmpdir(), 'bulkbill-ca-'));
    try {
      const ca = join(dir, 'private-ca.pem');
      const notCa = join(dir, 'key-by-mistake.txt');
      const input = join(dir, 'users.csv');
      await writeFile(ca, tls.cert);
      await writeFile(notCa, 'this is not a certificate\n');
      await writeFile(input, 'user_id,amount,currency\nu1,100,USD\nu2,200,EUR\n');
      const run = (...flags: string[]) =>
        runCli(['run', input, '--endpoint', endpoint, '--ledger', join(dir, 'l.db'), ...flags]);

      const refused = await run('--ca', notCa);
      expect(refused.code).toBe(2);
      expect(refused.stderr).toContain(`${notCa} holds no PEM certificate`);
      const missing = await run('--ca', join(dir, 'nowhere.pem'));
      expect(missing.code).toBe(2);
      expect(missing.stderr).toContain(`cannot read ${join(dir, 'nowhere.pem')}`);
      expect(requests).toBe(0);

      const billed = await run('--ca', ca, '--report', join(dir, 'report.csv'));
      expect(billed.code, billed.stderr).toBe(0);
      expect(requests).toBe(2);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 30_000);
});
