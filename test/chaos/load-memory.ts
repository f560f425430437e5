/**
 * What the load test watches while a run bills: each process's resident memory (VmRSS and VmHWM
 * from /proc/<pid>/status, bench/lib/os-counters.ts processMemory) once a second, tagged with the
 * run's progress, and the provider's counters several times a second for the charge rate.
 */
import {
  exitedChildrenCpuMs,
  machineBusyCpuMs,
  processCpuMs,
  processMemory,
} from '../../bench/lib/os-counters.js';

/** Progress marks at which each process's RSS is shown: "flat" is seen across them. */
export const PROGRESS_MARKS = [0.25, 0.5, 0.75, 1] as const;

export interface MemorySample {
  /** performance.now() of the read. */
  readonly at: number;
  /** Share of the users charged at the provider when read, 0 to 1. */
  readonly progress: number;
  readonly rssBytes: number;
}

/** One process whose memory is followed. */
export class TrackedProcess {
  readonly samples: MemorySample[] = [];
  /** VmHWM (the kernel's peak RSS of the process) at the last read. */
  hwmBytes = 0;
  /** maxRSS the process wrote at exit (bench/lib/peak-rss-preload.ts); none after kill -9. */
  exitPeakBytes: number | undefined;
  endedAt: number | undefined;
  /** How it ended: `exit 0`, `SIGKILL`, … */
  exit = 'running';

  constructor(
    readonly label: string,
    readonly pid: number,
    readonly startedAt: number,
  ) {}

  get alive(): boolean {
    return this.endedAt === undefined;
  }

  /** The largest resident memory it ever had: its own figure at exit, or VmHWM as last read. */
  get peakBytes(): number {
    const sampled = this.samples.reduce((most, sample) => Math.max(most, sample.rssBytes), 0);
    return Math.max(this.hwmBytes, this.exitPeakBytes ?? 0, sampled);
  }

  /**
   * RSS at the first read at or past `mark` of the progress, when this process was already
   * running before the progress got there (a process started later has no figure for it).
   */
  rssAt(mark: number): number | undefined {
    const index = this.samples.findIndex((sample) => sample.progress >= mark);
    if (index <= 0) return undefined;
    return this.samples[index]?.rssBytes;
  }

  /** RSS at its last read. */
  get lastRssBytes(): number | undefined {
    return this.samples.at(-1)?.rssBytes;
  }
}

/** The provider's counters at one moment. */
export interface CountSample {
  readonly at: number;
  readonly requests: number;
  readonly charges: number;
}

export class LoadSampler {
  readonly processes: TrackedProcess[] = [];
  readonly counts: CountSample[] = [];
  #memoryTimer: NodeJS.Timeout | undefined;
  #countTimer: NodeJS.Timeout | undefined;

  /**
   * `counters`: the provider's requests and charges now; `users`: how many make 100%.
   * Memory is read every `memoryEveryMs` (1 s), the counters every `countEveryMs` (100 ms).
   */
  #counters: () => { readonly requests: number; readonly charges: number };
  #stopped = false;

  constructor(
    counters: () => { readonly requests: number; readonly charges: number },
    readonly users: number,
    readonly memoryEveryMs = 1_000,
    readonly countEveryMs = 100,
  ) {
    this.#counters = counters;
  }

  start(): void {
    this.sampleCounts();
    this.sampleMemory();
    this.#memoryTimer = setInterval(() => this.sampleMemory(), this.memoryEveryMs);
    this.#countTimer = setInterval(() => this.sampleCounts(), this.countEveryMs);
  }

  /**
   * Stops reading, and lets go of the provider (its counters are kept as they are now), so that
   * a baseline measured later does not share its process with a million dead keys.
   */
  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    clearInterval(this.#memoryTimer);
    clearInterval(this.#countTimer);
    this.sampleCounts();
    this.sampleMemory();
    const last = this.#counters();
    const frozen = { requests: last.requests, charges: last.charges };
    this.#counters = () => frozen;
  }

  /** Follows `pid` from now on; read at once, so that a short process has a figure too. */
  track(label: string, pid: number): TrackedProcess {
    const tracked = new TrackedProcess(label, pid, performance.now());
    this.processes.push(tracked);
    this.#read(tracked, this.progress());
    return tracked;
  }

  /** The process has exited: no more reads; `peakRssBytes` is its own figure when it gave one. */
  ended(tracked: TrackedProcess, exit: string, peakRssBytes: number | undefined): void {
    tracked.endedAt = performance.now();
    tracked.exit = exit;
    tracked.exitPeakBytes = peakRssBytes;
  }

  progress(): number {
    return this.#counters().charges / this.users;
  }

  /** The charges at the provider at `at`, interpolated between the two nearest reads. */
  chargesAt(at: number): number {
    const { counts } = this;
    const after = counts.findIndex((sample) => sample.at >= at);
    if (after === -1) return counts.at(-1)?.charges ?? 0;
    const next = counts[after] as CountSample;
    const previous = counts[after - 1];
    if (previous === undefined || next.at === previous.at) return next.charges;
    return (
      previous.charges +
      ((next.charges - previous.charges) * (at - previous.at)) / (next.at - previous.at)
    );
  }

  /** When the provider first held at least `charges` charges (the read that showed it), if ever. */
  timeOfCharges(charges: number, from = 0): number | undefined {
    return this.counts.find((sample) => sample.at >= from && sample.charges >= charges)?.at;
  }

  /** When the provider first saw more charges than it had at `from`: billing (re)started. */
  firstChargeAfter(from: number): number | undefined {
    const base = this.chargesAt(from);
    return this.counts.find((sample) => sample.at >= from && sample.charges > base)?.at;
  }

  /** When the provider saw its first request, if it did. */
  firstRequestAt(): number | undefined {
    return this.counts.find((sample) => sample.requests > 0)?.at;
  }

  sampleCounts(): void {
    const { requests, charges } = this.#counters();
    const before = this.counts.at(-1)?.charges ?? 0;
    this.counts.push({ at: performance.now(), requests, charges });
    // Crossing a progress mark: memory is read now too, within a count interval of the mark.
    const crossed = PROGRESS_MARKS.some(
      (mark) => before < mark * this.users && charges >= mark * this.users,
    );
    if (crossed && !this.#stopped) this.sampleMemory();
  }

  sampleMemory(): void {
    const progress = this.progress();
    for (const tracked of this.processes) if (tracked.alive) this.#read(tracked, progress);
  }

  #read(tracked: TrackedProcess, progress: number): void {
    const memory = processMemory(tracked.pid);
    // Gone (or a zombie, which has no VmRSS): nothing to read.
    if (memory === undefined) return;
    tracked.hwmBytes = Math.max(tracked.hwmBytes, memory.peakRssBytes);
    tracked.samples.push({ at: performance.now(), progress, rssBytes: memory.rssBytes });
  }
}

/** A stretch of billing between faults, and the charges the provider counted across it. */
export interface SteadyWindow {
  readonly label: string;
  readonly from: number;
  readonly to: number;
  readonly charges: number;
  readonly perSecond: number;
}

/**
 * The charge rate between `from` and `to`, trimmed by `marginMs` at both ends (start-up and the
 * fault itself stay out); undefined when less than 200 ms is left.
 */
export function steadyWindow(
  sampler: LoadSampler,
  label: string,
  from: number | undefined,
  to: number | undefined,
  marginMs = 1_000,
): SteadyWindow | undefined {
  if (from === undefined || to === undefined) return undefined;
  // A short window (a small run) loses a tenth at each end instead.
  const margin = Math.min(marginMs, (to - from) / 10);
  const start = from + margin;
  const end = to - margin;
  if (end - start < 200) return undefined;
  const charges = sampler.chargesAt(end) - sampler.chargesAt(start);
  return { label, from: start, to: end, charges, perSecond: (charges * 1_000) / (end - start) };
}

/** Charges per second over every window together. */
export function steadyRate(windows: readonly SteadyWindow[]): number {
  const charges = windows.reduce((sum, window) => sum + window.charges, 0);
  const ms = windows.reduce((sum, window) => sum + (window.to - window.from), 0);
  return ms > 0 ? (charges * 1_000) / ms : Number.NaN;
}

/** What the rest of the machine did meanwhile: the noise under a figure on a shared machine. */
export interface Noise {
  readonly wallMs: number;
  /** CPU of this process, its children that exited meanwhile, and the live ones named. */
  readonly ownCpuMs: number;
  /** CPU of everything else on the machine. */
  readonly otherCpuMs: number;
}

/**
 * Starts measuring the machine's CPU not spent by this test: every core's busy time less this
 * process's, its children's that exited meanwhile (the bulkbill processes, the bare loop), and
 * the live processes `livePids` names (Redis). Call the result to stop; undefined without /proc.
 */
export function measureNoise(livePids: readonly number[] = []): () => Noise | undefined {
  const own = () => {
    const self = process.cpuUsage();
    let total = (self.user + self.system) / 1_000 + (exitedChildrenCpuMs() ?? Number.NaN);
    for (const pid of livePids) total += processCpuMs(pid) ?? Number.NaN;
    return total;
  };
  const machineBefore = machineBusyCpuMs();
  const ownBefore = own();
  const started = performance.now();
  return () => {
    const machineAfter = machineBusyCpuMs();
    const ownCpuMs = own() - ownBefore;
    if (machineBefore === undefined || machineAfter === undefined || !Number.isFinite(ownCpuMs))
      return undefined;
    return {
      wallMs: performance.now() - started,
      ownCpuMs,
      otherCpuMs: Math.max(0, machineAfter - machineBefore - ownCpuMs),
    };
  };
}

/** `other processes 0.12 cores on average (this test 1.85)`. */
export function describeNoise(noise: Noise | undefined): string {
  if (noise === undefined) return 'other processes: unknown (no /proc)';
  const cores = (ms: number) => (ms / noise.wallMs).toFixed(2);
  return `other processes on the machine ${cores(noise.otherCpuMs)} cores on average, this test's ${cores(noise.ownCpuMs)}`;
}
