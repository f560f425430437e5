import { describe, expect, it } from 'vitest';
import {
  describeProgress,
  ProgressDisplay,
  type ProgressEvent,
  type ProgressStream,
} from '../../src/observe/progress.js';

function event(overrides: Partial<ProgressEvent> = {}): ProgressEvent {
  return {
    runId: 'march-2026',
    total: 10_000,
    done: 2_500,
    charged: 2_400,
    declined: 60,
    failed: 25,
    unknown: 5,
    invalid: 10,
    inFlight: 64,
    retrying: 12,
    perSecond: 123.6,
    etaMs: 65_000,
    elapsedMs: 20_000,
    pausedMs: 0,
    ...overrides,
  };
}

class FakeStream implements ProgressStream {
  readonly writes: string[] = [];
  constructor(
    readonly isTTY: boolean,
    readonly columns?: number,
  ) {}
  write(text: string): boolean {
    this.writes.push(text);
    return true;
  }
}

const CLEAR_LINE = '\r\x1b[2K';

describe('describeProgress', () => {
  it('shows done/total, percent, rate, ETA, in flight and each outcome', () => {
    expect(describeProgress(event())).toBe(
      '2,500/10,000 25% · 124/s · ETA 1m 05s · in flight 64 · charged 2,400 · declined 60 · retrying 12 · failed 30',
    );
  });

  it('counts unknown charges with the failed ones', () => {
    expect(describeProgress(event({ failed: 0, unknown: 7 }))).toContain('failed 7');
    expect(describeProgress(event({ failed: 3, unknown: 0 }))).toContain('failed 3');
  });

  it('shows the concurrency limit, refusals, the deadline and the breaker where they exist', () => {
    const fixed = { mode: 'fixed' as const, limit: 80, maxInFlight: 80, throttled: 0 };
    expect(describeProgress(event({ dispatch: fixed }))).toContain('in flight 64/80 ·');
    expect(describeProgress(event({ dispatch: fixed }))).not.toContain('refused');
    const auto = { ...fixed, mode: 'auto' as const, throttled: 1_234 };
    const line = describeProgress(event({ dispatch: auto }));
    expect(line).toContain('in flight 64/80 (auto)');
    expect(line).toContain('refused 1,234 (429/503)');
    const deadline = {
      ...fixed,
      deadline: {
        at: 0,
        feasible: false,
        need: 900,
        expectedEndAt: Date.UTC(2026, 11, 1, 9, 30),
        bound: 'rate',
      },
    };
    expect(describeProgress(event({ dispatch: deadline }))).toContain(
      'DEADLINE AT RISK: rate, ends about 09:30:00Z',
    );
    const onTrack = { ...fixed, deadline: { ...deadline.deadline, feasible: true } };
    expect(describeProgress(event({ dispatch: onTrack }))).toContain(
      'deadline on track (needs 900)',
    );
    const open = {
      ...fixed,
      breaker: { state: 'open' as const, opened: 1, probes: 0, excused: 3 },
    };
    expect(describeProgress(event({ dispatch: open }))).toContain('PROVIDER DOWN: breaker open');
  });

  it('writes ? for an ETA not known yet', () => {
    expect(describeProgress(event({ etaMs: undefined }))).toContain('ETA ?');
  });

  it('rounds the percent down, so 100% means done', () => {
    expect(describeProgress(event({ done: 9_999 }))).toMatch(/^9,999\/10,000 99% /);
    expect(describeProgress(event({ done: 10_000 }))).toMatch(/^10,000\/10,000 100% /);
    expect(describeProgress(event({ done: 0, total: 0 }))).toMatch(/^0\/0 100% /);
  });

  it('shows the Retry-After pause only while there is one', () => {
    expect(describeProgress(event({ pausedMs: 0 }))).not.toContain('paused');
    expect(describeProgress(event({ pausedMs: 1_500 }))).toMatch(
      / · paused 1\.5s \(Retry-After\)$/,
    );
  });
});

describe('ProgressDisplay on a terminal', () => {
  it('redraws one line in place', () => {
    const stream = new FakeStream(true, 300);
    const display = new ProgressDisplay(stream, { now: () => 0 });
    display.update(event({ done: 0 }));
    display.update(event({ done: 5_000 }));
    display.update(event({ done: 10_000 }));
    expect(stream.writes).toHaveLength(3);
    for (const text of stream.writes) {
      expect(text.startsWith(CLEAR_LINE)).toBe(true);
      expect(text).not.toContain('\n');
    }
    expect(stream.writes[0]).toBe(
      `${CLEAR_LINE}[${'.'.repeat(24)}] ${describeProgress(event({ done: 0 }))}`,
    );
    expect(stream.writes[1]).toContain(`[${'#'.repeat(12)}${'.'.repeat(12)}] 5,000/10,000 50%`);
    expect(stream.writes[2]).toContain(`[${'#'.repeat(24)}] 10,000/10,000 100%`);
  });

  it('draws every update, however close together', () => {
    const stream = new FakeStream(true, 300);
    const display = new ProgressDisplay(stream, { now: () => 0, lineIntervalMs: 60_000 });
    for (let done = 0; done < 5; done++) display.update(event({ done }));
    expect(stream.writes).toHaveLength(5);
  });

  it('cuts the line to the terminal width, leaving the last column free', () => {
    const stream = new FakeStream(true, 40);
    const display = new ProgressDisplay(stream, { now: () => 0 });
    display.update(event());
    const drawn = (stream.writes[0] ?? '').slice(CLEAR_LINE.length);
    expect(drawn).toHaveLength(39);
    expect(drawn).toBe(`[${'#'.repeat(6)}${'.'.repeat(18)}] 2,500/10,000 25`.slice(0, 39));
  });

  it('keeps at least 20 columns on a very narrow terminal, and assumes 120 when unknown', () => {
    const narrow = new FakeStream(true, 5);
    new ProgressDisplay(narrow, { now: () => 0 }).update(event());
    expect((narrow.writes[0] ?? '').slice(CLEAR_LINE.length)).toHaveLength(20);

    const unknown = new FakeStream(true);
    new ProgressDisplay(unknown, { now: () => 0 }).update(event({ pausedMs: 90_000 }));
    expect((unknown.writes[0] ?? '').slice(CLEAR_LINE.length)).toHaveLength(119);
  });

  it('does not cut a line that fits', () => {
    const stream = new FakeStream(true, 500);
    new ProgressDisplay(stream, { now: () => 0 }).update(event());
    expect(stream.writes[0]).toMatch(/ · failed 30$/);
  });

  it('ends the line on finish(), once, and only after drawing', () => {
    const stream = new FakeStream(true, 300);
    const display = new ProgressDisplay(stream, { now: () => 0 });
    display.finish();
    expect(stream.writes).toEqual([]);
    display.update(event());
    display.finish();
    display.finish();
    expect(stream.writes).toHaveLength(2);
    expect(stream.writes[1]).toBe('\n');
    display.update(event());
    display.finish();
    expect(stream.writes.at(-1)).toBe('\n');
    expect(stream.writes).toHaveLength(4);
  });
});

describe('ProgressDisplay elsewhere (a log file, CI)', () => {
  it('writes a plain line at most every lineIntervalMs', () => {
    let now = 1_000;
    const stream = new FakeStream(false);
    const display = new ProgressDisplay(stream, { now: () => now, lineIntervalMs: 1_000 });

    display.update(event({ done: 1 }));
    expect(stream.writes).toEqual([
      `bulkbill march-2026: ${describeProgress(event({ done: 1 }))}\n`,
    ]);

    now += 500;
    display.update(event({ done: 2 }));
    now += 499;
    display.update(event({ done: 3 }));
    expect(stream.writes).toHaveLength(1);

    now += 1;
    display.update(event({ done: 4 }));
    expect(stream.writes).toHaveLength(2);
    expect(stream.writes[1]).toMatch(/^bulkbill march-2026: 4\/10,000 0% · .*\n$/);

    now += 10_000;
    display.update(event({ done: 5 }));
    display.update(event({ done: 6 }));
    expect(stream.writes).toHaveLength(3);
    expect(stream.writes[2]).toContain(' 5/10,000 ');
    for (const text of stream.writes) {
      expect(text).not.toContain('\r');
      expect(text).not.toContain('\x1b');
    }
  });

  it('waits 5 seconds between lines by default', () => {
    let now = 0;
    const stream = new FakeStream(false);
    const display = new ProgressDisplay(stream, { now: () => now });
    display.update(event());
    now = 4_999;
    display.update(event());
    expect(stream.writes).toHaveLength(1);
    now = 5_000;
    display.update(event());
    expect(stream.writes).toHaveLength(2);
  });

  it('writes nothing more on finish() when the last figures were written', () => {
    const stream = new FakeStream(false);
    const display = new ProgressDisplay(stream, { now: () => 0 });
    display.update(event());
    display.finish();
    expect(stream.writes).toHaveLength(1);
  });

  it('ends the log with the last figures on finish(), even inside the interval', () => {
    let now = 0;
    const stream = new FakeStream(false);
    const display = new ProgressDisplay(stream, { now: () => now });
    display.update(event({ done: 1 }));
    now = 100;
    display.update(event({ done: 10_000 }));
    expect(stream.writes).toHaveLength(1);
    display.finish();
    display.finish();
    expect(stream.writes).toHaveLength(2);
    expect(stream.writes[1]).toContain(' 10,000/10,000 100% ');
  });
});
