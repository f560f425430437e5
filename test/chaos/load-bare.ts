/**
 * The load test's baseline, in a process of its own: bench/lib/bare-loop.ts (a bare p-limit +
 * undici loop, no ledger, no retries), the baseline `npm run bench` puts beside the local
 * engine. The mock provider lives in the load test's process, as bench's lives in its own, so
 * the loop gets a core of its own as the engine does.
 *
 *   node --import tsx test/chaos/load-bare.ts <url> <requests> <concurrency> <sample>
 *
 * Prints the loop's result as one JSON line on stdout.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { type BareLoopResult, runBareLoop } from '../../bench/lib/bare-loop.js';
import { REPO_ROOT } from '../../bench/lib/server-process.js';
import { lastJson } from './round.js';

const SCRIPT = fileURLToPath(import.meta.url);

/** Runs the loop in a child process and resolves with what it measured. */
export async function runBareLoopProcess(options: {
  readonly url: string;
  readonly requests: number;
  readonly concurrency: number;
  readonly sample: string;
}): Promise<BareLoopResult> {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      SCRIPT,
      options.url,
      String(options.requests),
      String(options.concurrency),
      options.sample,
    ],
    { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk;
  });
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-2_000);
  });
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', resolve);
  });
  const result = lastJson(stdout);
  if (code !== 0 || result === undefined) {
    throw new Error(`the bare loop exited ${code}: ${stderr}`);
  }
  return result as unknown as BareLoopResult;
}

if (process.argv[1] === SCRIPT) {
  const [url, requests, concurrency, sample] = process.argv.slice(2);
  if (url === undefined || sample === undefined) {
    process.stderr.write('usage: load-bare.ts <url> <requests> <concurrency> <sample>\n');
    process.exit(2);
  }
  const result = await runBareLoop({
    url,
    requests: Number(requests),
    concurrency: Number(concurrency),
    sample,
  });
  process.stdout.write(`${JSON.stringify(result)}\n`);
}
