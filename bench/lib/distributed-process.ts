import { type CliExit, lastJsonLine, spawnBulkbill } from './cli-process.js';
import { processCpuMs } from './os-counters.js';

/** Where a distributed run lives: the same three flags on every command of it. */
export interface QueuePlace {
  /** `--redis`. */
  readonly redisUrl: string;
  /** `--prefix`: unique per sample (uniqueBenchPrefix), deleted afterwards. */
  readonly prefix: string;
  /** `--queue`. */
  readonly queue: string;
}

/** What `bulkbill enqueue --json` prints. */
export interface EnqueueSummary {
  readonly runId: string;
  readonly how: string;
  readonly total: number;
  readonly queued: number;
  readonly interrupted: boolean;
  readonly importMs: number;
  readonly enqueueMs: number;
}

export interface EnqueueProcessResult extends CliExit {
  readonly summary: EnqueueSummary | undefined;
}

/**
 * `bulkbill enqueue <input> --redis … --prefix … --queue … --run-id … --json` in its own process,
 * its peak RSS written at exit; resolves when it has exited.
 */
export async function runEnqueueProcess(
  place: QueuePlace,
  input: string,
  runId: string,
  nodeArgs: readonly string[] = [],
): Promise<EnqueueProcessResult> {
  const exit = await spawnBulkbill(
    [
      'enqueue',
      input,
      '--redis',
      place.redisUrl,
      '--prefix',
      place.prefix,
      '--queue',
      place.queue,
      '--run-id',
      runId,
      '--json',
    ],
    { nodeArgs, peakRss: true },
  ).exited;
  const parsed = lastJsonLine(exit.stdout);
  const summary =
    typeof parsed === 'object' && parsed !== null && 'enqueueMs' in parsed
      ? (parsed as EnqueueSummary)
      : undefined;
  return { ...exit, summary };
}

/** The figures of a worker's last log line, `worker ended`. */
export interface WorkerEnded {
  readonly charged: number;
  readonly declined: number;
  readonly failed: number;
  readonly unknown: number;
  readonly attempts: number;
  readonly reason: string;
}

export interface WorkerProcessResult extends CliExit {
  readonly pid: number;
  /** Its `worker ended` line; undefined when it printed none. */
  readonly ended: WorkerEnded | undefined;
  /** Its warn and error log lines (pino level 40 and above), e.g. about Redis persistence. */
  readonly warnings: readonly string[];
}

/** A `bulkbill worker --exit-when-idle` process. */
export interface WorkerProcess {
  readonly pid: number;
  /** Resolves once it has logged `worker started` (it takes jobs from then on). */
  readonly started: Promise<void>;
  readonly exited: Promise<WorkerProcessResult>;
  /** CPU time it has used so far, in ms; undefined once it has exited or without /proc. */
  cpuMs(): number | undefined;
  kill(signal?: NodeJS.Signals): void;
}

/**
 * Starts `bulkbill worker --redis … --endpoint … --prefix … --queue … --concurrency <c>
 * --exit-when-idle`, its JSON logs on stderr read line by line.
 */
export function startWorkerProcess(
  place: QueuePlace,
  endpoint: string,
  concurrency: number,
  nodeArgs: readonly string[] = [],
): WorkerProcess {
  let ended: WorkerEnded | undefined;
  const warnings: string[] = [];
  let markStarted: () => void = () => {};
  let failStart: (error: Error) => void = () => {};
  const started = new Promise<void>((resolve, reject) => {
    markStarted = resolve;
    failStart = reject;
  });
  // Nobody may wait for `started` once the worker has exited (it then rejects): no unhandled rejection.
  started.catch(() => {});
  const child = spawnBulkbill(
    [
      'worker',
      '--redis',
      place.redisUrl,
      '--endpoint',
      endpoint,
      '--prefix',
      place.prefix,
      '--queue',
      place.queue,
      '--concurrency',
      String(concurrency),
      '--exit-when-idle',
    ],
    {
      nodeArgs,
      peakRss: true,
      onStderrLine: (line) => {
        let entry: Record<string, unknown>;
        try {
          entry = JSON.parse(line) as Record<string, unknown>;
        } catch {
          return;
        }
        if (entry.msg === 'worker started') markStarted();
        if (entry.msg === 'worker ended') ended = entry as unknown as WorkerEnded;
        if (typeof entry.level === 'number' && entry.level >= 40) warnings.push(String(entry.msg));
      },
    },
  );
  let gone = false;
  const exited = child.exited.then((exit) => {
    gone = true;
    failStart(new Error(`worker ${child.pid} exited before it started: ${exit.stderrTail}`));
    return { ...exit, pid: child.pid, ended, warnings };
  });
  return {
    pid: child.pid,
    started,
    exited,
    cpuMs: () => (gone ? undefined : processCpuMs(child.pid)),
    kill: (signal) => child.kill(signal),
  };
}
