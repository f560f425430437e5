import type { DispatchReport } from '../domain/dispatch.js';
import { formatDuration } from '../domain/duration.js';
import { formatMoney } from '../domain/money.js';
import type { StateCounts } from '../ledger/ledger.js';
import type { RunSummary } from './summary.js';

const number = new Intl.NumberFormat('en-US');

/** `9,950 charged · 40 declined · …`: every state, so the counts visibly add up. */
export function formatCounts(counts: StateCounts): string {
  return (['charged', 'declined', 'failed', 'unknown', 'invalid', 'pending'] as const)
    .map((state) => `${number.format(counts[state])} ${state}`)
    .join(' · ');
}

/**
 * `USD 1,990.00 · JPY 12,000`: exact sums of minor units in each currency's own units (ISO 4217
 * exponents); a code without a known minor unit stays a count of minor units.
 */
export function formatAmounts(amounts: Readonly<Record<string, number>>): string {
  const entries = Object.entries(amounts);
  if (entries.length === 0) return 'nothing';
  return entries.map(([currency, minor]) => formatMoney(minor, currency)).join(' · ');
}

/** The end-of-run summary, for people. */
export function formatSummary(summary: RunSummary, heading: string): string {
  const { latencyMs } = summary;
  const lines = [
    heading,
    `  ${number.format(summary.total)} ${summary.total === 1 ? 'user' : 'users'}: ${formatCounts(summary.counts)}`,
    `  charged: ${formatAmounts(summary.chargedAmounts)}`,
  ];
  if (summary.attempts > 0) {
    const speedup = summary.wallMs > 0 ? summary.serialMs / summary.wallMs : 0;
    lines.push(
      `  ${formatDuration(summary.wallMs)} wall · ${number.format(Math.round(summary.throughputPerSecond))} charges/s · ${number.format(summary.attempts)} requests · latency p50 ${formatDuration(latencyMs.p50)} p95 ${formatDuration(latencyMs.p95)} p99 ${formatDuration(latencyMs.p99)}`,
      `  one after another, these requests would have taken ${formatDuration(summary.serialMs)}${speedup >= 1 ? ` (${number.format(Math.round(speedup))}× longer)` : ''}`,
    );
  }
  const memory = `peak memory ${Math.round(summary.peakRssBytes / 1_048_576)} MiB`;
  lines.push(
    summary.importMs > 0
      ? `  imported ${number.format(summary.total)} rows in ${formatDuration(summary.importMs)} · ${memory}`
      : `  ${memory}`,
  );
  lines.push(...dispatchLines(summary));
  if (summary.stoppedBecause) lines.push(`  stopped: ${summary.stoppedBecause}`);
  if (summary.reportPath) lines.push(`  report: ${summary.reportPath}`);
  return `${lines.join('\n')}\n`;
}

/** The pacing lines of the summary: the limit, the deadline, the breaker. */
function dispatchLines(summary: RunSummary): string[] {
  const { dispatch } = summary;
  if (dispatch === undefined || summary.attempts === 0) return [];
  return formatDispatch(dispatch, summary.deadlineMet);
}

/** How a run is (or was) paced, for people: `status` and the summary. */
export function formatDispatch(
  dispatch: DispatchReport,
  deadlineMet?: boolean | undefined,
): string[] {
  const summary = { deadlineMet };
  const lines: string[] = [];
  const parts = [
    dispatch.mode === 'auto'
      ? `concurrency auto: limit ${number.format(dispatch.limit)}${dispatch.capacity === undefined ? '' : ` (provider capacity about ${number.format(Math.round(dispatch.capacity))})`}${dispatch.baselineMs === undefined ? '' : ` · no-load latency ${formatDuration(dispatch.baselineMs)}`}`
      : `concurrency ${number.format(dispatch.limit)}`,
    `most in flight ${number.format(dispatch.maxInFlight)}`,
    `${number.format(dispatch.throttled)} throttled`,
  ];
  lines.push(`  ${parts.join(' · ')}`);
  const { deadline } = dispatch;
  if (deadline !== undefined) {
    const at = new Date(deadline.at).toISOString();
    lines.push(
      summary.deadlineMet === false
        ? `  deadline ${at}: MISSED${deadline.bound ? ` (bound by ${deadline.bound})` : ''}`
        : summary.deadlineMet === true
          ? `  deadline ${at}: met, with at most ${number.format(dispatch.maxInFlight)} in flight`
          : `  deadline ${at}: ${deadline.feasible ? 'on track' : `cannot be met (bound by ${deadline.bound ?? '?'})`}`,
    );
  }
  const { breaker } = dispatch;
  if (breaker !== undefined && breaker.opened > 0) {
    lines.push(
      `  circuit breaker: opened ${number.format(breaker.opened)} times (the provider was down) · ${number.format(breaker.probes)} probes · ${number.format(breaker.excused)} failed attempts excused (they used up no charge's attempts) · now ${breaker.state}`,
    );
  }
  return lines;
}
