import { setTimeout as sleep } from 'node:timers/promises';
import { machineBusyCpuMs, processCpuMs } from './os-counters.js';

/** How long to wait, before a sample, for the neighbours on a shared machine to go quiet. */
export interface QuietOptions {
  /** Our server processes: their CPU is not noise. Required. */
  readonly serverPids: readonly number[];
  /** Most CPU everything else may use, as a share of one core. Default 0.2. */
  readonly maxOtherShare?: number;
  /** Over how long that share is measured, in ms. Default 500. */
  readonly windowMs?: number;
  /** Gives up waiting after this long, in ms, and lets the sample run anyway. Default 30,000. */
  readonly timeoutMs?: number;
}

export interface QuietWait {
  /** How long the sample waited, in ms. */
  readonly waitedMs: number;
  /** False when the timeout passed first: the sample ran on a busy machine. */
  readonly quiet: boolean;
}

/**
 * Waits until the rest of the machine uses little CPU. Medians absorb short bursts of noise;
 * this keeps a sample from starting in the middle of someone's build.
 */
export async function waitForQuietMachine(options: QuietOptions): Promise<QuietWait> {
  const maxOtherShare = options.maxOtherShare ?? 0.2;
  const windowMs = options.windowMs ?? 500;
  const timeoutMs = options.timeoutMs ?? 30_000;
  const started = performance.now();
  const ownCpuMs = () => {
    const own = process.cpuUsage();
    let total = (own.user + own.system) / 1_000;
    for (const pid of options.serverPids) total += processCpuMs(pid) ?? 0;
    return total;
  };
  while (true) {
    const machineBefore = machineBusyCpuMs();
    const ownBefore = ownCpuMs();
    const windowStart = performance.now();
    await sleep(windowMs);
    const machineAfter = machineBusyCpuMs();
    if (machineBefore === undefined || machineAfter === undefined) {
      return { waitedMs: performance.now() - started, quiet: true };
    }
    const otherMs = machineAfter - machineBefore - (ownCpuMs() - ownBefore);
    const waitedMs = performance.now() - started;
    if (otherMs <= maxOtherShare * (performance.now() - windowStart)) {
      return { waitedMs, quiet: true };
    }
    if (waitedMs >= timeoutMs) return { waitedMs, quiet: false };
  }
}

/** `0.5 s`, or `30.0 s, still busy` when the sample ran on a busy machine. */
export function describeQuietWait(wait: QuietWait): string {
  const seconds = `${(wait.waitedMs / 1_000).toFixed(1)} s`;
  return wait.quiet ? seconds : `${seconds}, still busy`;
}
