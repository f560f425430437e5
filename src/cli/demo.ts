import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { formatDuration } from '../domain/duration.js';
import { BulkbillError, ErrorCode } from '../domain/errors.js';
import { runCommand } from './run.js';

export interface DemoFlags {
  users: number;
  latency: number;
  concurrency: number;
  /** `--dashboard [port]`: watch the demo in the browser. */
  dashboard?: true | number;
  linger?: number;
}

/** Starts `bulkbill mock-provider` as a child process (its own core) and resolves its URL. */
async function startProvider(
  args: readonly string[],
): Promise<{ child: ChildProcess; url: string }> {
  const entry = process.argv[1] as string;
  const child = spawn(process.execPath, [...process.execArgv, entry, 'mock-provider', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout?.setEncoding('utf8');
  // Its stderr only matters when it fails to start.
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    out += chunk;
  });
  const url = await new Promise<string>((resolve, reject) => {
    child.stdout?.on('data', (chunk: string) => {
      out += chunk;
      const match = /listening on (http:\/\/\S+)/.exec(out);
      if (match) resolve(match[1] as string);
    });
    child.once('exit', (code) =>
      reject(
        new BulkbillError(
          ErrorCode.Io,
          `the mock provider exited (${code}) before listening: ${out}`,
        ),
      ),
    );
  });
  return { child, url };
}

async function writeUsers(path: string, users: number): Promise<void> {
  const out = createWriteStream(path);
  out.write('user_id,amount,currency,plan\n');
  const plans = ['basic', 'pro', 'team'] as const;
  for (let index = 1; index <= users; index++) {
    const plan = plans[index % plans.length] as string;
    const amount = plan === 'basic' ? 999 : plan === 'pro' ? 2_999 : 9_999;
    if (!out.write(`user-${String(index).padStart(6, '0')},${amount},USD,${plan}\n`)) {
      await once(out, 'drain');
    }
  }
  out.end();
  await once(out, 'finish');
}

/** `npm start`: bills demo users against the mock provider, with live progress and a report. */
export async function demoCommand(flags: DemoFlags): Promise<number> {
  const stderr = process.stderr;
  const directory = await mkdtemp(join(tmpdir(), 'bulkbill-demo-'));
  const providerArgs = [
    '--port',
    '0',
    '--latency',
    `${flags.latency}ms`,
    '--fail-rate',
    '0.02',
    '--lost-rate',
    '0.005',
    '--decline-rate',
    '0.01',
  ];
  const provider = await startProvider(providerArgs);
  try {
    const input = join(directory, 'users.csv');
    await writeUsers(input, flags.users);
    const serial = formatDuration(flags.users * flags.latency);
    stderr.write(
      [
        `bulkbill demo: ${flags.users.toLocaleString('en-US')} users against the mock billing provider at ${provider.url}`,
        `  the provider: ${formatDuration(flags.latency)} per charge, 2% transient 503s, 0.5% answers lost after charging, 1% declined cards`,
        `  one after another this would take ${serial}; bulkbill runs ${flags.concurrency} at a time`,
        ...(flags.dashboard === undefined
          ? ['  to watch it in a browser: npm start -- --dashboard 8080 --linger 10m']
          : []),
        '',
      ].join('\n'),
    );
    const runId = `demo-${new Date().toISOString().slice(0, 19).replaceAll(':', '')}`;
    const status = await runCommand(input, {
      endpoint: `${provider.url}/charge`,
      runId,
      // Every demo is a cycle of its own against a fresh mock, whatever an earlier one left.
      newCycle: true,
      concurrency: flags.concurrency,
      ledger: 'bulkbill-demo.db',
      report: `${runId}.report.csv`,
      header: [],
      ...(flags.dashboard === undefined ? {} : { dashboard: flags.dashboard }),
      ...(flags.linger === undefined ? {} : { linger: flags.linger }),
    });
    const response = await request(`${provider.url}/stats`);
    const stats = (await response.body.json()) as Record<string, number>;
    process.stdout.write(
      `  the provider saw ${stats.requests} requests, applied ${stats.charges} charges to ${stats.users_charged} users, duplicate charges: ${stats.duplicate_charges}\n` +
        `  what happened to one user: npx bulkbill status --ledger bulkbill-demo.db --run-id ${runId} --user user-000042\n`,
    );
    return status;
  } finally {
    provider.child.kill('SIGTERM');
    await once(provider.child, 'exit');
    await rm(directory, { recursive: true, force: true });
  }
}
