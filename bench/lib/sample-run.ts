import type { Dispatcher } from 'undici';
import type { MockProviderStats } from '../../src/mock-provider/index.js';
import { type BareLoopOptions, type BareLoopResult, runBareLoop } from './bare-loop.js';
import { formatCount } from './figures.js';
import { mockProviderStats, resetMockProvider } from './mock-provider-admin.js';
import {
  type ListenQueueDrops,
  listenQueueDrops,
  listenQueueDropsSince,
  machineBusyCpuMs,
  processCpuMs,
} from './os-counters.js';
import { type QuietWait, waitForQuietMachine } from './quiet-machine.js';
import type { ServerProcess } from './server-process.js';

/** One sample of the bare loop against a server process. */
export interface SampleOptions extends BareLoopOptions {
  readonly server: ServerProcess;
  /** Connection for POST /reset and GET /stats; give it for the mock provider only. */
  readonly mockAdmin?: Dispatcher;
  /** Longest wait for the machine to go quiet before the sample, in ms. Default 30,000. */
  readonly quietTimeoutMs?: number;
}

/** Above this share of one core used by the rest of the machine, a sample is disturbed. */
export const DISTURBED_OTHER_SHARE = 0.3;

/** The bare loop's figures, plus what the server and the kernel saw meanwhile. */
export interface SampleResult extends BareLoopResult {
  readonly server: string;
  /** CPU time the server process used during the sample, in ms. */
  readonly serverCpuMs: number | undefined;
  /**
   * CPU time the rest of the machine used during the sample (busy time of every core, minus
   * this process and the server), in ms: the neighbours' noise on a shared machine.
   */
  readonly otherCpuMs: number | undefined;
  /** How long the sample waited for the machine to go quiet before it started. */
  readonly quietWait: QuietWait;
  /** Connections the kernel refused or cookied during the sample (whole machine). */
  readonly listenQueueDrops: ListenQueueDrops | undefined;
  /** The mock provider's GET /stats after the sample (reset before it). */
  readonly providerStats: MockProviderStats | undefined;
  /** Why this sample is not clean; empty when it is. */
  readonly problems: readonly string[];
}

/** Resets the mock provider, runs the bare loop, then reads what the provider counted. */
export async function runSample(options: SampleOptions): Promise<SampleResult> {
  const { server, mockAdmin } = options;
  if (mockAdmin) await resetMockProvider(server.url, mockAdmin);
  const quietWait = await waitForQuietMachine({
    serverPids: [server.pid],
    ...(options.quietTimeoutMs === undefined ? {} : { timeoutMs: options.quietTimeoutMs }),
  });
  const dropsBefore = listenQueueDrops();
  const serverCpuBefore = processCpuMs(server.pid);
  const machineCpuBefore = machineBusyCpuMs();
  const loop = await runBareLoop(options);
  const machineCpuAfter = machineBusyCpuMs();
  const serverCpuAfter = processCpuMs(server.pid);
  const drops = listenQueueDropsSince(dropsBefore, listenQueueDrops());
  const providerStats = mockAdmin ? await mockProviderStats(server.url, mockAdmin) : undefined;
  const serverCpuMs =
    serverCpuBefore === undefined || serverCpuAfter === undefined
      ? undefined
      : serverCpuAfter - serverCpuBefore;
  const otherCpuMs =
    machineCpuBefore === undefined || machineCpuAfter === undefined || serverCpuMs === undefined
      ? undefined
      : Math.max(0, machineCpuAfter - machineCpuBefore - serverCpuMs - loop.clientCpuMs);
  return {
    ...loop,
    server: server.name,
    serverCpuMs,
    otherCpuMs,
    quietWait,
    listenQueueDrops: drops,
    providerStats,
    problems: problemsOf(loop, providerStats),
  };
}

/** A sample run on a machine quiet enough, and the disturbed attempts it took to get there. */
export interface CleanSample {
  /** The last attempt: undisturbed, unless every attempt was. */
  readonly result: SampleResult;
  /** Attempts thrown away because the rest of the machine used over 30% of a core meanwhile. */
  readonly discarded: readonly SampleResult[];
}

/**
 * Runs a sample again, up to `maxAttempts` times in all, while neighbours on the shared machine
 * used over DISTURBED_OTHER_SHARE of a core during it: medians alone cannot absorb a build that
 * runs through half the samples. Each attempt gets its own idempotency keys.
 */
export async function runCleanSample(
  options: SampleOptions,
  maxAttempts = 4,
): Promise<CleanSample> {
  const discarded: SampleResult[] = [];
  for (let attempt = 1; ; attempt++) {
    const result = await runSample({ ...options, sample: `${options.sample}-a${attempt}` });
    if (attempt >= maxAttempts || !isDisturbed(result)) return { result, discarded };
    discarded.push(result);
  }
}

/** Whether the rest of the machine used over DISTURBED_OTHER_SHARE of a core during the sample. */
export function isDisturbed(sample: SampleResult): boolean {
  return (
    sample.otherCpuMs !== undefined && sample.otherCpuMs / sample.wallMs > DISTURBED_OTHER_SHARE
  );
}

/**
 * The samples a median should be taken over: the undisturbed ones, or all of them when every
 * one was disturbed (the report then says so).
 */
export function samplesForMedian<Sample extends SampleResult>(
  samples: readonly Sample[],
): readonly Sample[] {
  const undisturbed = samples.filter((sample) => !isDisturbed(sample));
  return undisturbed.length > 0 ? undisturbed : samples;
}

/** `median of 3 undisturbed (2 disturbed left out)`, or `median of 5`. */
export function describeMedian(samples: readonly SampleResult[]): string {
  const used = samplesForMedian(samples).length;
  const left = samples.length - used;
  return left === 0
    ? `median of ${used}`
    : `median of ${used} undisturbed (${left} disturbed left out)`;
}

/** ` (2 disturbed attempts thrown away)` for a progress line, or ''. */
export function describeRerun(discarded: readonly SampleResult[]): string {
  const count = discarded.length;
  if (count === 0) return '';
  return ` (${count} disturbed attempt${count === 1 ? '' : 's'} thrown away)`;
}

/** `3 disturbed attempts rerun; 1 sample kept though disturbed`, or '' on a quiet machine. */
export function describeNoise(
  samples: readonly (SampleResult & { readonly discarded: readonly SampleResult[] })[],
): string {
  const rerun = samples.reduce((sum, sample) => sum + sample.discarded.length, 0);
  const stillDisturbed = samples.filter(isDisturbed).length;
  const plural = (count: number, noun: string) => `${count} ${noun}${count === 1 ? '' : 's'}`;
  return [
    rerun > 0 ? `${plural(rerun, 'disturbed attempt')} rerun` : '',
    stillDisturbed > 0 ? `${plural(stillDisturbed, 'sample')} kept though disturbed` : '',
  ]
    .filter((part) => part !== '')
    .join('; ');
}

function problemsOf(loop: BareLoopResult, stats: MockProviderStats | undefined): string[] {
  const problems: string[] = [];
  if (loop.errors > 0) {
    problems.push(`${formatCount(loop.errors)} errors ${JSON.stringify(loop.errorCodes)}`);
  }
  const answered = loop.requests - loop.errors;
  if (loop.ok < answered) problems.push(`statuses ${JSON.stringify(loop.statuses)}`);
  if (stats) {
    if (stats.requests !== loop.requests) {
      problems.push(`provider counted ${formatCount(stats.requests)} requests`);
    }
    if (stats.charges !== loop.requests) {
      problems.push(
        `provider charged ${formatCount(stats.charges)} of ${formatCount(loop.requests)}`,
      );
    }
    if (stats.duplicate_charges > 0) {
      problems.push(`${formatCount(stats.duplicate_charges)} duplicate charges`);
    }
  }
  return problems;
}
