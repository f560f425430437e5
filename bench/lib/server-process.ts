import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** The repository root: servers run there so that `--import tsx` and script paths resolve. */
export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** A server program to run in its own process, so that client and server each get a core. */
export interface ServerProcessOptions {
  /** Names the server in progress and error messages, e.g. `mock provider`. Required. */
  readonly name: string;
  /** The program, relative to the repository root, e.g. `bench/bare-server.ts`. Required. */
  readonly script: string;
  /** Arguments after the script. Default: none. */
  readonly args?: readonly string[];
  /** Node flags before `--import tsx`, e.g. `--cpu-prof`. Default: none. */
  readonly nodeArgs?: readonly string[];
  /** How long to wait for the `http://…` URL on its stdout, in ms. Default 20,000. */
  readonly startTimeoutMs?: number;
  /** How long to wait for it to exit after SIGTERM before SIGKILL, in ms. Default 10,000. */
  readonly stopTimeoutMs?: number;
}

/** A running server process. */
export interface ServerProcess {
  readonly name: string;
  /** Base URL printed by the server, e.g. http://127.0.0.1:40123. */
  readonly url: string;
  readonly pid: number;
  /** Sends SIGTERM and resolves once the process has exited (SIGKILL after the stop timeout). */
  stop(): Promise<void>;
}

const URL_ON_STDOUT = /\bhttp:\/\/[^\s]+/;

/** Servers not yet stopped: killed if the bench exits without stopping them (a crash). */
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** Spawns `process.execPath --import tsx <script> …args` and resolves with the URL it prints. */
export async function startServerProcess(options: ServerProcessOptions): Promise<ServerProcess> {
  const { name, script, args = [], nodeArgs = [] } = options;
  const startTimeoutMs = options.startTimeoutMs ?? 20_000;
  const stopTimeoutMs = options.stopTimeoutMs ?? 10_000;
  const child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', script, ...args], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  running.add(child);
  const exited = new Promise<void>((resolve) =>
    child.once('exit', () => {
      running.delete(child);
      resolve();
    }),
  );

  const url = await new Promise<string>((resolve, reject) => {
    let output = '';
    const fail = (reason: string) => {
      cleanup();
      child.kill('SIGKILL');
      reject(new Error(`${name}: ${reason}; its stdout so far: ${JSON.stringify(output)}`));
    };
    const onData = (chunk: string) => {
      output += chunk;
      const match = URL_ON_STDOUT.exec(output);
      if (match) {
        cleanup();
        resolve(match[0]);
      }
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null) =>
      fail(`exited (${signal ?? `code ${code}`}) before printing its URL`);
    const onError = (error: Error) => fail(`cannot start: ${error.message}`);
    const timer = setTimeout(
      () => fail(`printed no http:// URL within ${startTimeoutMs} ms`),
      startTimeoutMs,
    );
    function cleanup(): void {
      clearTimeout(timer);
      child.stdout.off('data', onData);
      child.off('exit', onExit);
      child.off('error', onError);
    }
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', onData);
    child.once('exit', onExit);
    child.once('error', onError);
  });
  // Keep reading: a server that fills an unread pipe blocks on its next write.
  child.stdout.resume();

  const { pid } = child;
  if (pid === undefined) throw new Error(`${name}: started without a pid`);
  return { name, url, pid, stop: () => stopChild(child, exited, stopTimeoutMs) };
}

async function stopChild(
  child: ChildProcess,
  exited: Promise<void>,
  timeoutMs: number,
): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(true), timeoutMs);
  });
  const late = await Promise.race([exited.then(() => false), timedOut]);
  clearTimeout(timer);
  if (late) {
    child.kill('SIGKILL');
    await exited;
  }
}
