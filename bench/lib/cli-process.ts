import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PEAK_RSS_FILE_ENV } from './peak-rss-preload.js';
import { REPO_ROOT } from './server-process.js';

/** A `bulkbill <command>` process started as a user would start it from the repository. */
export interface CliProcessOptions {
  /** Node flags before `--import tsx`, e.g. `--cpu-prof`. Default: none. */
  readonly nodeArgs?: readonly string[];
  /** Have the process write its peak RSS at exit (bench/lib/peak-rss-preload.ts). Default false. */
  readonly peakRss?: boolean;
  /** SIGKILL it after this long, in ms. Default 15 minutes. */
  readonly timeoutMs?: number;
  /** Told every line it writes on stderr (a worker's pino JSON logs), as it comes. */
  readonly onStderrLine?: (line: string) => void;
}

/** How a CLI process ended. */
export interface CliExit {
  readonly exitCode: number | null;
  readonly signal: NodeJS.Signals | null;
  /** From spawn to exit, in ms: Node and tsx startup included. */
  readonly elapsedMs: number;
  readonly stdout: string;
  /** Its last lines on stderr. */
  readonly stderrTail: string;
  /** maxRSS at exit, in bytes, when asked for and the process exited on its own. */
  readonly peakRssBytes: number | undefined;
}

export interface CliProcess {
  readonly pid: number;
  /** Resolves once the process has exited and its output is read; never rejects for its failure. */
  readonly exited: Promise<CliExit>;
  kill(signal?: NodeJS.Signals): void;
}

const STDERR_TAIL_CHARS = 2_000;

/** Children still running: killed if the bench exits without waiting for them (a crash). */
const running = new Set<{ kill: (signal: NodeJS.Signals) => boolean }>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** Spawns `node [nodeArgs] --import tsx src/cli/main.ts <args…>` from the repository root. */
export function spawnBulkbill(
  args: readonly string[],
  options: CliProcessOptions = {},
): CliProcess {
  const { nodeArgs = [], peakRss = false, onStderrLine } = options;
  const timeoutMs = options.timeoutMs ?? 15 * 60_000;
  const peakFile = peakRss
    ? join(tmpdir(), `bulkbill-bench-peak-${randomBytes(6).toString('hex')}`)
    : undefined;
  const preload = peakRss ? ['--import', './bench/lib/peak-rss-preload.ts'] : [];
  const started = performance.now();
  const child = spawn(
    process.execPath,
    [...nodeArgs, '--import', 'tsx', ...preload, 'src/cli/main.ts', ...args],
    {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: peakFile ? { ...process.env, [PEAK_RSS_FILE_ENV]: peakFile } : process.env,
    },
  );
  running.add(child);
  let stdout = '';
  let stderrTail = '';
  let partial = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk;
  });
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    stderrTail = (stderrTail + chunk).slice(-STDERR_TAIL_CHARS);
    if (!onStderrLine) return;
    const lines = (partial + chunk).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) onStderrLine(line);
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  let elapsedMs = Number.NaN;
  const exited = new Promise<{ exitCode: number | null; signal: NodeJS.Signals | null }>(
    (resolve, reject) => {
      child.once('exit', () => {
        elapsedMs = performance.now() - started;
      });
      // 'close' comes after 'exit' once stdout and stderr are fully read.
      child.once('close', (code, signal) => resolve({ exitCode: code, signal }));
      child.once('error', reject);
    },
  )
    .finally(() => {
      clearTimeout(timer);
      running.delete(child);
    })
    .then(async ({ exitCode, signal }) => {
      if (onStderrLine && partial !== '') onStderrLine(partial);
      let peakRssBytes: number | undefined;
      if (peakFile) {
        const text = await readFile(peakFile, 'utf8').catch(() => '');
        peakRssBytes = text.trim() === '' ? undefined : Number(text);
        await rm(peakFile, { force: true });
      }
      return {
        exitCode,
        signal,
        elapsedMs,
        stdout,
        stderrTail: stderrTail.trim(),
        peakRssBytes,
      };
    });
  const { pid } = child;
  if (pid === undefined) {
    void exited.catch(() => {});
    throw new Error(`cannot start bulkbill ${args[0] ?? ''}`);
  }
  return { pid, exited, kill: (signal = 'SIGTERM') => void child.kill(signal) };
}

/** The last JSON object a process printed on stdout, or undefined. */
export function lastJsonLine(stdout: string): unknown {
  const line = stdout.trim().split('\n').at(-1);
  if (!line) return undefined;
  try {
    return JSON.parse(line);
  } catch {
    return undefined;
  }
}
