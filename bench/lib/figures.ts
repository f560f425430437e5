/** The median of `values` (the mean of the middle two when their count is even). */
export function median(values: readonly number[]): number {
  if (values.length === 0) throw new RangeError('median of no samples');
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  const upper = sorted[middle] as number;
  return sorted.length % 2 === 1 ? upper : ((sorted[middle - 1] as number) + upper) / 2;
}

/** The median of the finite values (unknown figures are NaN), or NaN when there are none. */
export function finiteMedian(values: readonly number[]): number {
  const finite = values.filter(Number.isFinite);
  return finite.length === 0 ? Number.NaN : median(finite);
}

/** `12,345` */
export function formatCount(value: number): string {
  return Math.round(value).toLocaleString('en-US');
}

/** `1.234 s` from milliseconds. */
export function formatSeconds(ms: number): string {
  return `${(ms / 1_000).toFixed(3)} s`;
}

/** `0.87` */
export function formatRatio(value: number): string {
  return value.toFixed(2);
}

/** `4.2 ms` */
export function formatMilliseconds(ms: number): string {
  return `${ms.toFixed(1)} ms`;
}

/** `41 µs` */
export function formatMicroseconds(us: number): string {
  return `${Math.round(us)} µs`;
}

/** `87%` from 0.87. */
export function formatPercent(share: number): string {
  return Number.isFinite(share) ? `${Math.round(share * 100)}%` : 'n/a';
}

/** CPU time as a share of one core over `wallMs`: `87%`, or `n/a` when unknown. */
export function formatCpuShare(cpuMs: number | undefined, wallMs: number): string {
  return cpuMs === undefined ? 'n/a' : formatPercent(cpuMs / wallMs);
}

/** `181 MiB`, or `0.14 MiB` under 10 MiB, from bytes (1 MiB = 1,048,576 bytes). */
export function formatMebibytes(bytes: number | undefined): string {
  if (bytes === undefined || !Number.isFinite(bytes)) return 'n/a';
  const mebibytes = bytes / 1_048_576;
  return mebibytes < 10
    ? `${mebibytes.toFixed(2)} MiB`
    : `${Math.round(mebibytes).toLocaleString('en-US')} MiB`;
}
