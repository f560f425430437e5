import type { RunSummary } from '../../src/report/summary.js';
import { lastJsonLine, spawnBulkbill } from './cli-process.js';
import { exitedChildrenCpuMs } from './os-counters.js';

/** `--concurrency`: a fixed number of requests in flight, or `auto` (the limit controller). */
export type EngineConcurrency = number | 'auto';

/** One `bulkbill run` in its own process, started exactly as a user would start it. */
export interface EngineProcessOptions {
  /** The input file (CSV or NDJSON). Required. */
  readonly input: string;
  /**
   * `--endpoint`: where charges are POSTed, e.g. `http://127.0.0.1:4010/charge`. Required, unless
   * `config` gives the endpoint.
   */
  readonly endpoint?: string;
  /** `--config`: a config file (a provider profile, for instance). Default: none given. */
  readonly config?: string;
  /** `--concurrency`, an integer >= 1, or `auto`. Required. */
  readonly concurrency: EngineConcurrency;
  /** `--max-concurrency`, an integer >= 1 (the ceiling of `auto`). Default: none given (1,000). */
  readonly maxConcurrency?: number;
  /** `--run-id`. Required, so that a run never resumes another. */
  readonly runId: string;
  /** `--ledger`: a file that does not exist yet. Required. */
  readonly ledger: string;
  /** `--report`. Required. */
  readonly report: string;
  /** Node flags before `--import tsx`, e.g. `--cpu-prof`. Default: none. */
  readonly nodeArgs?: readonly string[];
  /** SIGKILL the run after this long, in ms. Default 15 minutes. */
  readonly timeoutMs?: number;
  /** Told the process id once it is started (to read its CPU while it runs). */
  readonly onSpawn?: (pid: number) => void;
}

/** What one engine process did, as seen from outside and from its `--json` summary. */
export interface EngineProcessResult {
  readonly runId: string;
  /** The summary it printed with `--json`; undefined when it printed none (see stderrTail). */
  readonly summary: RunSummary | undefined;
  /** From spawn to exit, in ms: the run's own wallMs plus Node and tsx startup and shutdown. */
  readonly elapsedMs: number;
  /** CPU time the process (and its children) used, in ms; undefined where /proc is absent. */
  readonly cpuMs: number | undefined;
  readonly exitCode: number | null;
  readonly signal: NodeJS.Signals | null;
  /** Its last lines on stderr (progress, or why it failed). */
  readonly stderrTail: string;
}

/**
 * Runs `node --import tsx src/cli/main.ts run <input> --endpoint … --json` from the repository
 * root and resolves when it has exited. Never rejects for the run's own failure: the exit
 * status, the summary (if any) and the end of stderr say what happened.
 */
export async function runEngineProcess(
  options: EngineProcessOptions,
): Promise<EngineProcessResult> {
  const { input, endpoint, config, concurrency, maxConcurrency, runId, ledger, report } = options;
  const { nodeArgs = [] } = options;
  for (const [name, value] of [
    ['concurrency', concurrency === 'auto' ? 1 : concurrency],
    ['maxConcurrency', maxConcurrency ?? 1],
  ] as const) {
    if (!Number.isSafeInteger(value) || value < 1) {
      throw new TypeError(
        `Expected \`${name}\` to be an integer >= 1${name === 'concurrency' ? " or 'auto'" : ''}, got \`${String(value)}\` (${typeof value})`,
      );
    }
  }
  if (endpoint === undefined && config === undefined) {
    throw new TypeError('Expected `endpoint`, or a `config` that gives one');
  }
  const args = [
    'run',
    input,
    ...(endpoint === undefined ? [] : ['--endpoint', endpoint]),
    ...(config === undefined ? [] : ['--config', config]),
    '--concurrency',
    String(concurrency),
    ...(maxConcurrency === undefined ? [] : ['--max-concurrency', String(maxConcurrency)]),
    '--run-id',
    runId,
    '--ledger',
    ledger,
    '--report',
    report,
    '--json',
  ];
  // The children's CPU counters grow only once a child has been waited for, so read them around it.
  const cpuBefore = exitedChildrenCpuMs();
  const child = spawnBulkbill(args, {
    nodeArgs,
    ...(options.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }),
  });
  options.onSpawn?.(child.pid);
  const { exitCode, signal, elapsedMs, stdout, stderrTail } = await child.exited;
  const cpuAfter = exitedChildrenCpuMs();

  return {
    runId,
    summary: parseSummary(stdout),
    elapsedMs,
    cpuMs: cpuBefore === undefined || cpuAfter === undefined ? undefined : cpuAfter - cpuBefore,
    exitCode,
    signal,
    stderrTail,
  };
}

function parseSummary(stdout: string): RunSummary | undefined {
  const parsed = lastJsonLine(stdout);
  return typeof parsed === 'object' && parsed !== null && 'wallMs' in parsed
    ? (parsed as RunSummary)
    : undefined;
}
