import { describe, expect, it } from 'vitest';
import { LATENCY_BUCKETS_MS, type RunSample } from '../../src/domain/samples.js';
import type { AttemptEvent } from '../../src/observe/attempts.js';
import { createLogger, RunLog } from '../../src/observe/log.js';
import { BillingMetrics } from '../../src/observe/metrics.js';
import type { ProgressEvent } from '../../src/observe/progress.js';
import {
  histogramQuantile,
  latencyBucket,
  RunSampler,
  RunSamplers,
} from '../../src/observe/sampler.js';
import { metricValue, parsePrometheus, sumOf } from '../helpers/prometheus.js';

function attempt(overrides: Partial<AttemptEvent> = {}): AttemptEvent {
  return {
    userId: 'user-1',
    attempt: 1,
    latencyMs: 1_550,
    status: 200,
    outcome: 'charged',
    reason: undefined,
    ...overrides,
  };
}

function progress(overrides: Partial<ProgressEvent> = {}): ProgressEvent {
  return {
    runId: 'r-1',
    total: 10,
    done: 4,
    charged: 3,
    declined: 1,
    failed: 0,
    unknown: 0,
    invalid: 0,
    inFlight: 5,
    retrying: 1,
    perSecond: 2,
    etaMs: 3_000,
    elapsedMs: 2_000,
    pausedMs: 0,
    dispatch: { mode: 'fixed', limit: 8, maxInFlight: 6, throttled: 0 },
    ...overrides,
  };
}

describe('latency buckets', () => {
  it('put a latency in the first bucket whose bound is not below it, as Prometheus le does', () => {
    expect(latencyBucket(0)).toBe(0);
    expect(latencyBucket(5)).toBe(0);
    expect(latencyBucket(5.1)).toBe(1);
    expect(LATENCY_BUCKETS_MS[latencyBucket(1_550)]).toBe(1_600);
    expect(latencyBucket(1e9)).toBe(LATENCY_BUCKETS_MS.length);
  });

  it('resolve 1-2 s in steps of 100 ms', () => {
    const inRange = LATENCY_BUCKETS_MS.filter((ms) => ms >= 1_000 && ms <= 2_000);
    expect(inRange).toEqual([
      1_000, 1_100, 1_200, 1_300, 1_400, 1_500, 1_600, 1_700, 1_800, 1_900, 2_000,
    ]);
  });

  it('give quantiles interpolated within a bucket, null for none', () => {
    const hist = new Array<number>(LATENCY_BUCKETS_MS.length + 1).fill(0);
    expect(histogramQuantile(hist, 0.5)).toBeNull();
    // 100 answers between 1.5 s and 1.6 s: the median in the middle of the bucket.
    hist[latencyBucket(1_550)] = 100;
    expect(histogramQuantile(hist, 0.5)).toBe(1_550);
    expect(histogramQuantile(hist, 0.95)).toBeCloseTo(1_595, 5);
    // Past the last bound, the last bound.
    hist[LATENCY_BUCKETS_MS.length] = 1_000;
    expect(histogramQuantile(hist, 0.99)).toBe(LATENCY_BUCKETS_MS.at(-1));
  });
});

describe('RunSampler', () => {
  function sampler(start: number) {
    let now = start;
    const samples: RunSample[] = [];
    const gauges = { inFlight: 3, limit: 10, breaker: 'closed' as RunSample['breaker'] };
    const it = new RunSampler({
      source: 'host:1',
      now: () => now,
      gauges: () => gauges,
      sink: (sample) => samples.push(sample),
    });
    return {
      it,
      samples,
      gauges,
      at: (ms: number) => {
        now = ms;
      },
    };
  }

  it('hands over each calendar second once it is over, with its counts and the gauges at its end', () => {
    const s = sampler(10_200);
    s.it.attempt(attempt());
    s.it.attempt(attempt({ outcome: 'retry', status: 503, latencyMs: 80 }));
    s.it.attempt(attempt({ outcome: 'throttled', status: 429, latencyMs: 20 }));
    s.at(10_999);
    s.it.tick();
    expect(s.samples).toEqual([]);
    s.gauges.inFlight = 7;
    s.gauges.breaker = 'open';
    s.at(11_000);
    s.it.tick();
    expect(s.samples).toHaveLength(1);
    const [first] = s.samples;
    expect(first).toMatchObject({
      at: 10_000,
      source: 'host:1',
      ended: 1,
      attempts: 3,
      retries: 2,
      refusals: 2,
      inFlight: 7,
      limit: 10,
      breaker: 'open',
    });
    expect(first?.hist.reduce((a, b) => a + b, 0)).toBe(3);
    expect(first?.hist[latencyBucket(1_550)]).toBe(1);
  });

  it('counts a charge ended without a request as ended, not as an attempt', () => {
    const s = sampler(30_000);
    s.it.attempt(attempt({ outcome: 'unknown', status: undefined, latencyMs: 0, unsent: true }));
    s.it.stop();
    expect(s.samples).toMatchObject([{ ended: 1, attempts: 0, retries: 0 }]);
    expect(s.samples[0]?.hist.every((n) => n === 0)).toBe(true);
  });

  it('counts an attempt in the second it ends in, skips seconds the loop slept through, and stop() hands over the partial second', () => {
    const s = sampler(20_000);
    s.at(23_500);
    // The attempt that wakes it: seconds 20-22 are handed as one sample (what was in it), not three.
    s.it.attempt(attempt({ outcome: 'declined', status: 402 }));
    expect(s.samples.map((sample) => sample.at)).toEqual([20_000]);
    s.at(23_700);
    s.it.stop();
    expect(s.samples.map((sample) => [sample.at, sample.ended])).toEqual([
      [20_000, 0],
      [23_000, 1],
    ]);
  });
});

describe('RunSamplers', () => {
  it('samples each run apart, and stops a run 5 s after its last attempt once nothing is in flight (an idle worker does not draw a finished run live)', () => {
    let now = 100_000;
    let inFlight = 2;
    const samples: Array<[string, RunSample]> = [];
    const samplers = new RunSamplers({
      source: 'w1',
      now: () => now,
      gauges: () => ({ inFlight, limit: 10, breaker: undefined }),
      sink: (runId, sample) => samples.push([runId, sample]),
    });
    samplers.attempt('a', attempt());
    samplers.attempt('b', attempt({ outcome: 'declined', status: 402 }));
    expect(samplers.runs).toEqual(['a', 'b']);
    now += 1_000;
    samplers.tick();
    expect(samples.map(([runId, sample]) => [runId, sample.ended])).toEqual([
      ['a', 1],
      ['b', 1],
    ]);
    // Long after, with requests still in flight (a slow provider): still sampled.
    now += 30_000;
    samplers.attempt('a', attempt());
    now += 10_000;
    samplers.tick();
    expect(samplers.runs).toEqual(['a', 'b']);
    // Nothing in flight: the runs idle for over 5 s stop, their last second handed over.
    inFlight = 0;
    now += 1;
    samplers.tick();
    expect(samplers.runs).toEqual([]);
    const count = samples.length;
    now += 10_000;
    samplers.tick();
    expect(samples).toHaveLength(count);
    // The next attempt starts it again.
    samplers.attempt('b', attempt());
    now += 1_000;
    samplers.tick();
    expect(samples.at(-1)?.[0]).toBe('b');
    samplers.stop();
    expect(samplers.runs).toEqual([]);
  });
});

describe('BillingMetrics', () => {
  it('exposes bulkbill_ metrics in Prometheus text: attempts by outcome and status, refusals, retries, duration, gauges', async () => {
    const metrics = new BillingMetrics();
    metrics.attempt(attempt());
    metrics.attempt(attempt({ outcome: 'throttled', status: 429, latencyMs: 30 }));
    metrics.attempt(attempt({ outcome: 'retry', status: undefined, latencyMs: 30_000 }));
    metrics.attempt(attempt({ outcome: 'declined', status: 402, latencyMs: 1_200 }));
    metrics.progress(
      progress({
        dispatch: {
          mode: 'auto',
          limit: 8,
          maxInFlight: 6,
          throttled: 1,
          breaker: { state: 'half-open', opened: 1, probes: 1, excused: 0 },
          deadline: { at: 1_800_000_000_000, feasible: false, need: 50, expectedEndAt: 0 },
        },
      }),
    );
    const samples = parsePrometheus(await metrics.text());
    for (const sample of samples) expect(sample.name).toMatch(/^bulkbill_/);
    expect(metricValue(samples, 'bulkbill_attempts_total', { outcome: 'charged' })).toBe(1);
    expect(metricValue(samples, 'bulkbill_attempts_total', { outcome: 'throttled' })).toBe(1);
    expect(metricValue(samples, 'bulkbill_attempts_by_status_total', { status: 'none' })).toBe(1);
    expect(metricValue(samples, 'bulkbill_attempts_by_status_total', { status: '429' })).toBe(1);
    expect(metricValue(samples, 'bulkbill_refusals_total', { status: '429' })).toBe(1);
    expect(metricValue(samples, 'bulkbill_retries_total')).toBe(2);
    expect(metricValue(samples, 'bulkbill_charges_ended_total', { state: 'charged' })).toBe(1);
    expect(metricValue(samples, 'bulkbill_charges_ended_total', { state: 'declined' })).toBe(1);
    expect(metricValue(samples, 'bulkbill_request_duration_seconds_count')).toBe(4);
    expect(metricValue(samples, 'bulkbill_request_duration_seconds_bucket', { le: '1.6' })).toBe(3);
    expect(metricValue(samples, 'bulkbill_request_duration_seconds_bucket', { le: '1.5' })).toBe(2);
    expect(metricValue(samples, 'bulkbill_in_flight_requests')).toBe(5);
    expect(metricValue(samples, 'bulkbill_concurrency_limit')).toBe(8);
    expect(metricValue(samples, 'bulkbill_charges', { run_id: 'r-1', state: 'pending' })).toBe(6);
    expect(
      sumOf(
        samples.filter((s) => s.labels.run_id === 'r-1'),
        'bulkbill_charges',
      ),
    ).toBe(10);
    expect(metricValue(samples, 'bulkbill_eta_seconds')).toBe(3);
    expect(metricValue(samples, 'bulkbill_breaker_state')).toBe(1);
    expect(metricValue(samples, 'bulkbill_deadline_feasible')).toBe(0);
    expect(metricValue(samples, 'bulkbill_deadline_timestamp_seconds')).toBe(1_800_000_000);
    // Node's default metrics, under the same prefix.
    expect(
      samples.some((sample) => sample.name === 'bulkbill_process_cpu_user_seconds_total'),
    ).toBe(true);
    // No label carries a user.
    expect(samples.some((sample) => Object.values(sample.labels).includes('user-1'))).toBe(false);
  });

  it('counts a charge ended without a request as ended, not as an attempt', async () => {
    const metrics = new BillingMetrics({ defaultMetrics: false });
    metrics.attempt(attempt({ outcome: 'unknown', status: undefined, latencyMs: 0, unsent: true }));
    const samples = parsePrometheus(await metrics.text());
    expect(metricValue(samples, 'bulkbill_charges_ended_total', { state: 'unknown' })).toBe(1);
    expect(sumOf(samples, 'bulkbill_attempts_total')).toBe(0);
    expect(metricValue(samples, 'bulkbill_request_duration_seconds_count')).toBe(0);
  });

  it('keeps two registries apart', async () => {
    const one = new BillingMetrics({ defaultMetrics: false });
    const two = new BillingMetrics({ defaultMetrics: false });
    one.attempt(attempt());
    expect(
      metricValue(parsePrometheus(await two.text()), 'bulkbill_attempts_total', {
        outcome: 'charged',
      }),
    ).toBe(0);
  });
});

describe('the run log', () => {
  function logged() {
    const lines: Array<Record<string, unknown>> = [];
    const log = createLogger({
      level: 'debug',
      stream: { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) },
    });
    return { lines, log, run: new RunLog(log) };
  }

  it('says each change of the run at info, each charge that did not end charged at warn, attempts at debug only', () => {
    const { lines, run } = logged();
    for (let i = 0; i < 5; i++) run.progress(progress());
    run.progress(progress({ pausedMs: 2_000 }));
    run.progress(progress({ pausedMs: 1_000 }));
    run.progress(progress());
    const breaker = (state: 'open' | 'closed' | 'half-open') =>
      progress({
        dispatch: {
          mode: 'fixed',
          limit: 8,
          maxInFlight: 8,
          throttled: 0,
          breaker: { state, opened: 1, probes: 0, excused: 0 },
        },
      });
    run.progress(breaker('closed'));
    run.progress(breaker('open'));
    run.progress(breaker('open'));
    run.progress(breaker('half-open'));
    run.progress(breaker('closed'));
    for (let i = 0; i < 100; i++) run.attempt('r-1', attempt({ userId: `u${i}` }));
    run.attempt('r-1', attempt({ outcome: 'failed', status: 500, reason: '500 boom' }));
    run.attempt('r-1', attempt({ outcome: 'declined', status: 402, reason: 'card_declined' }));
    expect(lines.filter((line) => line.level === 30).map((line) => line.msg)).toEqual([
      'billing started',
      'dispatch resumed',
      'circuit breaker half-open: probing',
      'circuit breaker closed: the provider answers again',
    ]);
    expect(lines.filter((line) => line.level === 40).map((line) => line.msg)).toEqual([
      'dispatch paused: the provider asked to slow down (Retry-After)',
      'circuit breaker open: the provider is failing, nothing is sent',
      'charge failed',
      'charge declined',
    ]);
    expect(lines.filter((line) => line.level === 20)).toHaveLength(100);
    expect(lines.find((line) => line.msg === 'charge failed')).toMatchObject({
      userId: 'user-1',
      status: 500,
      reason: '500 boom',
      runId: 'r-1',
    });
  });

  it('censors every header value and anything named like a credential', () => {
    const { lines, log } = logged();
    log.info(
      {
        headers: { authorization: 'Bearer sk_live_x', 'x-api-key': 'k1' },
        request: { headers: { cookie: 'c1' } },
        token: 't1',
      },
      'with headers',
    );
    const text = JSON.stringify(lines);
    for (const secret of ['sk_live_x', 'k1', 'c1', 't1']) expect(text).not.toContain(secret);
    expect(text).toContain('[redacted]');
  });
});
