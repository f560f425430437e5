import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';

export const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const cliEntry = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));

/** A bulkbill CLI process running from the TypeScript sources. */
export interface CliProcess {
  readonly child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves with the exit code (or 128 + signal number) once the process ends. */
  exited: Promise<number>;
}

const SIGNAL_NUMBERS: Record<string, number> = { SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };

/** Starts `bulkbill <args>` as a real child process (Node with tsx, no npm wrapper). */
export function spawnCli(
  args: readonly string[],
  options: { env?: NodeJS.ProcessEnv; entry?: string } = {},
): CliProcess {
  const entryArgs = options.entry ? [options.entry] : ['--import', 'tsx', cliEntry];
  const child = spawn(process.execPath, [...entryArgs, ...args], {
    cwd: repoRoot,
    env: { ...process.env, ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    out += chunk;
  });
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    err += chunk;
  });
  const exited = once(child, 'exit').then(([code, signal]) =>
    typeof code === 'number' ? code : 128 + (SIGNAL_NUMBERS[String(signal)] ?? 0),
  );
  return { child, stdout: () => out, stderr: () => err, exited };
}

/** Waits until `pattern` shows in the process's stdout (or stderr); fails if it exits first. */
export async function waitForOutput(
  cli: CliProcess,
  pattern: RegExp,
  timeoutMs = 20_000,
  stream: 'stdout' | 'stderr' = 'stdout',
): Promise<RegExpExecArray> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const match = pattern.exec(stream === 'stdout' ? cli.stdout() : cli.stderr());
    if (match) return match;
    if (cli.child.exitCode !== null || cli.child.signalCode !== null) {
      throw new Error(`process ended before ${pattern}: ${cli.stdout()}${cli.stderr()}`);
    }
    if (Date.now() > deadline) {
      throw new Error(`no ${pattern} within ${timeoutMs} ms: ${cli.stdout()}${cli.stderr()}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Runs `bulkbill <args>` to the end. */
export async function runCli(
  args: readonly string[],
  options: { env?: NodeJS.ProcessEnv; entry?: string } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const cli = spawnCli(args, options);
  const code = await cli.exited;
  return { code, stdout: cli.stdout(), stderr: cli.stderr() };
}
