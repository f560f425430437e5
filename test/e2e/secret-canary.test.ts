import { readdir, readFile, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { useCliWorkspace, waitForStderr, writeCsvInput } from '../helpers/billing-cycle.js';
import { runCli } from '../helpers/cli.js';
import { dumpKeys, useRedisPlace } from '../helpers/distributed.js';
import { closeServer, readBody } from '../helpers/http.js';
import { keysUnder, redisAdmin } from '../helpers/redis.js';

// One canary over every output of every command: a credential given the only way bulkbill takes
// one (an environment variable a --header reads) and a Redis password in the URL, through the
// local and the distributed engine, a dry run, an interrupted run and its resume, status,
// report, a provider that echoes the credential back in its answers (declines, retries, a
// failure, a 401), and the mistakes an operator makes (the secret written into a flag or the
// config file, a Redis that does not answer). Afterwards neither secret is in any stdout or
// stderr, any file the commands wrote (ledger, its WAL, reports) or any Redis key of the run.

const CANARY = 'sk_live_canary_8d3f1b6e2a907c45';
const BASIC_CANARY = `acct_canary:${CANARY}`;
const REDIS_PASSWORD = 'rpw_canary_5b1e9a';
const env = {
  BULKBILL_CANARY: CANARY,
  BULKBILL_BASIC: Buffer.from(BASIC_CANARY).toString('base64'),
};
const SECRETS = [CANARY, REDIS_PASSWORD, env.BULKBILL_BASIC];
const HEADERS = [
  '--header',
  'Authorization: Bearer ${BULKBILL_CANARY}',
  '--header',
  'X-Basic: Basic ${BULKBILL_BASIC}',
];

const ws = useCliWorkspace('bulkbill-canary-');
const { place, children } = useRedisPlace();

/** Every output a command gave, named for the failure message. */
const outputs: { name: string; text: string }[] = [];
async function bulkbill(name: string, args: readonly string[]) {
  const result = await runCli(args, { env });
  outputs.push({ name, text: `${result.stdout}\n${result.stderr}` });
  return result;
}

async function filesUnder(dir: string): Promise<{ name: string; bytes: Buffer }[]> {
  const found: { name: string; bytes: Buffer }[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile()) continue;
    const path = join(entry.parentPath, entry.name);
    found.push({ name: path, bytes: await readFile(path) });
  }
  return found;
}

/** Fails naming every output, file or key that holds a secret. */
async function expectNoSecretIn(extra: { name: string; text: string }[] = []): Promise<number> {
  const leaks: string[] = [];
  const checked = [...outputs, ...extra];
  for (const { name, text } of checked) {
    for (const secret of SECRETS) if (text.includes(secret)) leaks.push(`${name}: ${secret}`);
  }
  for (const { name, bytes } of await filesUnder(ws.dir)) {
    for (const secret of SECRETS) if (bytes.includes(secret)) leaks.push(`${name}: ${secret}`);
  }
  expect(leaks).toEqual([]);
  return checked.length;
}

afterEach(() => {
  outputs.length = 0;
});

/**
 * A provider that echoes the credentials in its answers, as some do ("invalid key sk_live_…"):
 * `*-decline` gets a 402 quoting the Authorization header, `*-text` a 400 plain-text body with
 * the bare key, `*-retry` a 503 quoting it once and then its charge, `*-fail` a 500 quoting the
 * Basic pair every time (unknown after the attempts), `*-401` a 401 quoting the header (the run
 * stops); everyone else is charged once per key.
 */
async function echoingProvider(): Promise<{ url: string; server: Server }> {
  const seen = new Map<string, string>();
  const tried = new Set<string>();
  const server = createServer(async (req, res) => {
    const body = JSON.parse(await readBody(req)) as { user_id: string };
    const auth = String(req.headers.authorization);
    const key = String(req.headers['idempotency-key']);
    const basic = Buffer.from(String(req.headers['x-basic']).slice(6), 'base64').toString();
    const answer = (status: number, text: string, type = 'application/json') => {
      res.writeHead(status, { 'content-type': type }).end(text);
    };
    const user = body.user_id;
    if (user.endsWith('-decline')) {
      return answer(402, JSON.stringify({ error: 'card_declined', message: `for ${auth}` }));
    }
    if (user.endsWith('-text')) return answer(400, `bad key ${auth.slice(7)}`, 'text/plain');
    if (user.endsWith('-fail')) return answer(500, JSON.stringify({ message: `as ${basic}` }));
    if (user.endsWith('-401')) return answer(401, JSON.stringify({ error: `not ${auth}` }));
    if (user.endsWith('-retry') && !tried.has(key)) {
      tried.add(key);
      return answer(503, JSON.stringify({ error: 'busy', message: `retry ${auth.slice(7)}` }));
    }
    const id = seen.get(key) ?? `ch_${seen.size + 1}`;
    seen.set(key, id);
    return answer(200, JSON.stringify({ id, echoed: auth }));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/charge`, server };
}

describe('a secret given to bulkbill', () => {
  it('reaches no output of the local engine: dry run, run, interruption, resume, status, report', async () => {
    const mock = await ws.provider({
      latencyMs: 30,
      failRate: 0.1,
      lostRate: 0.03,
      declineRate: 0.1,
      apiKey: CANARY,
      seed: 3,
    });
    const input = await writeCsvInput(
      join(ws.dir, 'cycle.csv'),
      Array.from({ length: 240 }, (_, index) => ({
        userId: `user-${index}`,
        amount: 100 + index,
        currency: 'USD',
      })),
    );
    const common = [
      input,
      '--endpoint',
      `${mock.url}/charge`,
      '--ledger',
      ws.ledger,
      ...HEADERS,
      '--timeout',
      '300ms',
      '--max-attempts',
      '10',
    ];
    const dry = await bulkbill('run --dry-run', ['run', ...common, '--run-id', 'c-1', '--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toContain('Authorization: [redacted]');

    // Interrupted mid-run (SIGINT, as Ctrl-C), then resumed to the end.
    // Its report in the workspace, with the others, where the canary is looked for.
    const interrupted = join(ws.dir, 'c-1.interrupted.report.csv');
    const first = children.spawn(
      ['run', ...common, '--run-id', 'c-1', '--concurrency', '2', '--report', interrupted],
      { env },
    );
    await waitForStderr(first, /run c-1/);
    await new Promise((resolve) => setTimeout(resolve, 700));
    first.child.kill('SIGINT');
    await first.exited;
    outputs.push({ name: 'run (interrupted)', text: `${first.stdout()}\n${first.stderr()}` });
    const resumed = await bulkbill('run (resumed)', [
      'run',
      ...common,
      '--run-id',
      'c-1',
      '--concurrency',
      '32',
      '--report',
      join(ws.dir, 'c-1.report.csv'),
      '--json',
    ]);
    expect(resumed.code, resumed.stderr).toBe(0);
    expect(JSON.parse(resumed.stdout)).toMatchObject({ counts: { pending: 0 } });
    expect(mock.stats().invalid).toBe(0);

    for (const [name, args] of [
      ['status', ['status', '--ledger', ws.ledger]],
      ['status --json', ['status', '--ledger', ws.ledger, '--run-id', 'c-1', '--json']],
      ['status --user', ['status', '--ledger', ws.ledger, '--user', 'user-7']],
      ['status --user --json', ['status', '--ledger', ws.ledger, '--user', 'user-7', '--json']],
      ['report', ['report', '--ledger', ws.ledger, '--run-id', 'c-1', '--out', ws.report]],
    ] as const) {
      const result = await bulkbill(name, args);
      expect(result.code, `${name}: ${result.stderr}`).toBe(0);
    }
    expect(await expectNoSecretIn()).toBe(8);
  });

  it('is masked where a provider echoes it: declines, retries, failures, a 401', async () => {
    const { url, server } = await echoingProvider();
    try {
      const users = ['a-ok', 'b-decline', 'c-text', 'd-retry', 'e-fail', 'f-ok'].map((userId) => ({
        userId,
        amount: 500,
        currency: 'EUR',
      }));
      const input = await writeCsvInput(join(ws.dir, 'echo.csv'), users);
      const common = ['--endpoint', url, '--ledger', ws.ledger, ...HEADERS, '--max-attempts', '3'];
      const run = await bulkbill('run (echoing provider)', [
        'run',
        input,
        ...common,
        '--run-id',
        'echo-1',
        '--report',
        ws.report,
      ]);
      // The failure after every attempt ends the run non-zero: it is reported, not hidden.
      expect(run.code, run.stderr).not.toBe(0);
      const report = await readFile(ws.report, 'utf8');
      expect(report).toContain('card_declined: for [redacted]');
      expect(report).toContain('bad key [redacted]');
      expect(report).toContain('as [redacted]');
      const user = await bulkbill('status --user (echoed)', [
        'status',
        '--ledger',
        ws.ledger,
        '--run-id',
        'echo-1',
        '--user',
        'e-fail',
      ]);
      expect(user.stdout).toContain('[redacted]');

      // A 401 that quotes the header stops the run; its message never quotes the body.
      const stopped = join(ws.dir, 'stop.csv');
      await writeCsvInput(stopped, [{ userId: 'g-401', amount: 100, currency: 'EUR' }]);
      const fatal = await bulkbill('run (401)', [
        ...['run', stopped, ...common, '--run-id', 'echo-2'],
        ...['--report', join(ws.dir, 'echo-2.report.csv')],
      ]);
      expect(fatal.code).not.toBe(0);
      expect(fatal.stderr).toContain('401 Unauthorized');
    } finally {
      await closeServer(server);
    }
    expect(await expectNoSecretIn()).toBe(3);
  });

  it('reaches no output, job or key of the distributed engine, nor does the Redis password', async () => {
    const mock = await ws.provider({
      latencyMs: 5,
      failRate: 0.1,
      lostRate: 0.03,
      declineRate: 0.1,
      apiKey: CANARY,
      seed: 5,
    });
    const input = await writeCsvInput(
      join(ws.dir, 'cycle.csv'),
      Array.from({ length: 150 }, (_, index) => ({
        userId: `user-${index}`,
        amount: 100 + index,
        currency: 'USD',
      })),
    );
    const redis = new URL(place.url);
    redis.username = 'default';
    redis.password = REDIS_PASSWORD;
    const at = ['--redis', redis.href, '--prefix', place.prefix, '--queue', place.queue];
    const queued = await bulkbill('enqueue', ['enqueue', input, ...at, '--run-id', 'd-1']);
    expect(queued.code, queued.stderr).toBe(0);
    const again = await bulkbill('enqueue --json (again)', [
      'enqueue',
      input,
      ...at,
      '--run-id',
      'd-1',
      '--json',
    ]);
    expect(again.code, again.stderr).toBe(0);
    const worker = children.spawn(
      [
        'worker',
        ...at,
        '--endpoint',
        `${mock.url}/charge`,
        ...HEADERS,
        '--timeout',
        '300ms',
        '--max-attempts',
        '10',
        '--exit-when-idle',
      ],
      { env },
    );
    const waited = await bulkbill('status --wait', ['status', ...at, '--run-id', 'd-1', '--wait']);
    expect(waited.code, waited.stderr).toBe(0);
    expect(await worker.exited, worker.stderr()).toBe(0);
    outputs.push({ name: 'worker', text: `${worker.stdout()}\n${worker.stderr()}` });
    for (const [name, args] of [
      ['status --redis', ['status', ...at, '--run-id', 'd-1']],
      ['status --redis --json', ['status', ...at, '--run-id', 'd-1', '--json']],
      ['status --redis --user', ['status', ...at, '--run-id', 'd-1', '--user', 'user-3']],
      ['report --redis', ['report', ...at.slice(0, 4), '--run-id', 'd-1', '--out', ws.report]],
    ] as const) {
      const result = await bulkbill(name, args);
      expect(result.code, `${name}: ${result.stderr}`).toBe(0);
    }

    // A Redis that does not answer: the message names the URL, never its password.
    redis.port = '1';
    const down = await bulkbill('status --redis (down)', [
      'status',
      '--redis',
      redis.href,
      '--run-id',
      'd-1',
    ]);
    expect(down.code).not.toBe(0);
    expect(down.stderr).toContain('127.0.0.1:1');

    const keys = await dumpKeys(redisAdmin(), await keysUnder(place.prefix));
    expect(keys.size).toBeGreaterThan(0);
    const dumped = [...keys].map(([name, text]) => ({ name: `redis ${name}`, text }));
    expect(await expectNoSecretIn(dumped)).toBe(9 + keys.size);
  });

  it('is refused when an operator writes it into a flag or the config file, never echoed', async () => {
    const input = await writeCsvInput(join(ws.dir, 'cycle.csv'), [
      { userId: 'user-1', amount: 100, currency: 'USD' },
    ]);
    const endpoint = ['--endpoint', 'http://127.0.0.1:9/charge', '--ledger', ws.ledger];
    const flag = await bulkbill('run --header <literal>', [
      'run',
      input,
      ...endpoint,
      '--header',
      `Authorization: Bearer ${CANARY}`,
    ]);
    expect(flag.code).toBe(2);
    expect(flag.stderr).toContain('a credential is read only from the environment');
    const config = join(ws.dir, 'bulkbill.config.json');
    await writeFile(config, JSON.stringify({ headers: [`X-Api-Key: ${CANARY}`] }));
    const file = await bulkbill('run --config <literal>', [
      'run',
      input,
      ...endpoint,
      '--config',
      config,
    ]);
    expect(file.code).toBe(2);
    expect(file.stderr).toContain('bulkbill.config.json');
    expect(file.stderr).toContain('a credential is read only from the environment');
    // A variable the header reads that is not set: named, and nothing is sent.
    const unset = await runCli(['run', input, ...endpoint, '--header', 'X-Key: ${NOT_SET_HERE}']);
    expect(unset.code).toBe(2);
    expect(unset.stderr).toContain('${NOT_SET_HERE}, which is not set in the environment');
    // The config file holds the secret itself, as the operator wrote it: that file is theirs.
    const leaks = outputs.filter(({ text }) => text.includes(CANARY));
    expect(leaks.map(({ name }) => name)).toEqual([]);
  });
});
