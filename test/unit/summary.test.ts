import { describe, expect, it } from 'vitest';
import { emptyCounts } from '../../src/ledger/ledger.js';
import { formatAmounts, formatCounts, formatSummary } from '../../src/report/format.js';
import { latencyPercentiles, percentile, type RunSummary } from '../../src/report/summary.js';

const oneToHundred = Float64Array.from({ length: 100 }, (_, index) => index + 1);

describe('percentile (nearest rank)', () => {
  it('is 0 for no values', () => {
    expect(percentile(new Float64Array(0), 50)).toBe(0);
    expect(percentile(new Float64Array(0), 99)).toBe(0);
  });

  it('is the one value, whatever the percentile', () => {
    for (const p of [0, 1, 50, 95, 99, 100]) expect(percentile(Float64Array.of(42), p)).toBe(42);
  });

  it('picks the value at rank ceil(p/100 × n) on 1..100', () => {
    expect(percentile(oneToHundred, 50)).toBe(50);
    expect(percentile(oneToHundred, 95)).toBe(95);
    expect(percentile(oneToHundred, 99)).toBe(99);
    expect(percentile(oneToHundred, 100)).toBe(100);
    expect(percentile(oneToHundred, 1)).toBe(1);
    expect(percentile(oneToHundred, 0)).toBe(1);
    expect(percentile(oneToHundred, 99.5)).toBe(100);
  });

  it('rounds the rank up, never interpolates', () => {
    const four = Float64Array.of(10, 20, 30, 40);
    expect(percentile(four, 25)).toBe(10);
    expect(percentile(four, 26)).toBe(20);
    expect(percentile(four, 50)).toBe(20);
    expect(percentile(four, 75)).toBe(30);
    expect(percentile(four, 76)).toBe(40);
  });
});

describe('latencyPercentiles', () => {
  it('sorts numerically, not as text', () => {
    // As text, 1000 < 200 < 30 < 4: a string sort would put the p99 at 4.
    const latencies = Float64Array.of(4, 1_000, 30, 200);
    expect(latencyPercentiles(latencies)).toEqual({ p50: 30, p95: 1_000, p99: 1_000 });
  });

  it('gives p50, p95 and p99 of shuffled 1..100', () => {
    const shuffled = Float64Array.from(oneToHundred).reverse();
    [shuffled[3], shuffled[70]] = [shuffled[70] as number, shuffled[3] as number];
    expect(latencyPercentiles(shuffled)).toEqual({ p50: 50, p95: 95, p99: 99 });
  });

  it('leaves its input as it was', () => {
    const latencies = Float64Array.of(300, 100, 200, 50.5);
    const before = Array.from(latencies);
    latencyPercentiles(latencies);
    expect(Array.from(latencies)).toEqual(before);
  });

  it('is all zeros for no latencies', () => {
    expect(latencyPercentiles(new Float64Array(0))).toEqual({ p50: 0, p95: 0, p99: 0 });
  });
});

describe('formatCounts', () => {
  it('lists every state, with thousands separators', () => {
    const counts = { ...emptyCounts(), charged: 9_950, declined: 40, unknown: 3, pending: 1_234 };
    expect(formatCounts(counts)).toBe(
      '9,950 charged · 40 declined · 0 failed · 3 unknown · 0 invalid · 1,234 pending',
    );
  });

  it('names all six states even when every count is 0', () => {
    const text = formatCounts(emptyCounts());
    for (const state of Object.keys(emptyCounts())) expect(text).toContain(`0 ${state}`);
  });
});

describe('formatAmounts', () => {
  it("writes each currency's sum in its own units, or nothing", () => {
    expect(formatAmounts({ USD: 199_000, EUR: 1_250 })).toBe('USD 1,990.00 · EUR 12.50');
    expect(formatAmounts({ USD: 46_217_094, JPY: 12_000, KWD: 1_234 })).toBe(
      'USD 462,170.94 · JPY 12,000 · KWD 1.234',
    );
    expect(formatAmounts({ IQD: 1_234_567, HUF: 5 })).toBe('IQD 1,234.567 · HUF 0.05');
    expect(formatAmounts({})).toBe('nothing');
  });

  it('keeps a sum exact up to the largest safe integer of minor units', () => {
    expect(formatAmounts({ USD: Number.MAX_SAFE_INTEGER })).toBe('USD 90,071,992,547,409.91');
  });

  it('writes a code without a known minor unit as its count of minor units', () => {
    expect(formatAmounts({ ABC: 1_234, USD: 5 })).toBe('ABC 1,234 (minor units) · USD 0.05');
  });
});

describe('formatSummary', () => {
  const summary: RunSummary = {
    runId: 'march-2026',
    total: 10_000,
    counts: { ...emptyCounts(), charged: 9_950, declined: 40, failed: 6, unknown: 4 },
    chargedAmounts: { USD: 1_990_000 },
    wallMs: 20_000,
    throughputPerSecond: 499.6,
    attempts: 10_321,
    latencyMs: { p50: 850, p95: 1_600, p99: 2_400 },
    serialMs: 9_000_000,
    interrupted: false,
    stoppedBecause: undefined,
    reportPath: undefined,
    importMs: 1_250,
    peakRssBytes: 150 * 1024 * 1024,
  };

  it('shows how long the import took and the peak memory', () => {
    const text = formatSummary(summary, 'done');
    expect(text).toContain('imported 10,000 rows in 1.25s');
    expect(text).toContain('peak memory 150 MiB');
    expect(formatSummary({ ...summary, importMs: 0 }, 'done')).not.toContain('imported');
  });

  it('prints the heading, the counts, the amounts and the speed figures', () => {
    const text = formatSummary(summary, 'bulkbill run march-2026: finished');
    const lines = text.split('\n');
    expect(lines[0]).toBe('bulkbill run march-2026: finished');
    expect(text).toContain(
      '10,000 users: 9,950 charged · 40 declined · 6 failed · 4 unknown · 0 invalid · 0 pending',
    );
    expect(text).toContain('charged: USD 19,900.00\n');
    expect(text).toContain('  20s wall · ');
    expect(text).toContain('500 charges/s');
    expect(text).toContain('10,321 requests');
    expect(text).toContain('latency p50 850ms p95 1.6s p99 2.4s');
    expect(text).toContain('would have taken 2h 30m (450× longer)');
    expect(text.endsWith('\n')).toBe(true);
    expect(text).not.toContain('stopped:');
    expect(text).not.toContain('report:');
  });

  it('includes the report path and the stop reason when there are some', () => {
    const text = formatSummary(
      {
        ...summary,
        reportPath: '/var/billing/march-2026.report.csv',
        stoppedBecause: '401 Unauthorized from http://billing.example/charge',
      },
      'bulkbill run march-2026: stopped',
    );
    expect(text).toContain('  stopped: 401 Unauthorized from http://billing.example/charge\n');
    expect(text).toContain('  report: /var/billing/march-2026.report.csv\n');
  });

  it('leaves out speed figures when nothing was sent', () => {
    const text = formatSummary(
      {
        ...summary,
        counts: { ...emptyCounts(), charged: 10_000 },
        attempts: 0,
        wallMs: 5,
        throughputPerSecond: 0,
        latencyMs: { p50: 0, p95: 0, p99: 0 },
        serialMs: 0,
        reportPath: 'r.csv',
      },
      'bulkbill run march-2026: already finished, nobody billed',
    );
    expect(text).not.toContain('latency');
    expect(text).not.toContain('charges/s');
    expect(text).toContain('10,000 charged');
    expect(text).toContain('report: r.csv');
  });

  it('claims no speed-up when the requests were not faster than one after another', () => {
    const text = formatSummary({ ...summary, serialMs: 10_000 }, 'h');
    expect(text).toContain('would have taken 10s\n');
    expect(text).not.toContain('longer');
  });
});
