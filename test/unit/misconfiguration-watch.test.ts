import { describe, expect, it } from 'vitest';
import {
  MISCONFIG_SAMPLE,
  MisconfigurationWatch,
} from '../../src/control/misconfiguration-watch.js';
import type { AttemptResult } from '../../src/domain/outcome.js';
import { answer } from '../helpers/answers.js';

const declined = (status: number): AttemptResult => ({
  kind: 'declined',
  status,
  reason: `${status} bad`,
});
const charged = answer.charged();
const timeout = answer.timedOut();

describe('MisconfigurationWatch', () => {
  it('holds alike 400s and stops on the 20th, then leaves every further one pending', () => {
    const watch = new MisconfigurationWatch();
    for (let i = 1; i < MISCONFIG_SAMPLE; i++)
      expect(watch.observe(declined(400)).action).toBe('hold');
    const verdict = watch.observe(declined(400));
    expect(verdict.action).toBe('stop');
    expect(verdict.action === 'stop' && verdict.reason).toMatch(/first 20 answers were all 400/);
    expect(watch.watching).toBe(false);
    expect(watch.observe(declined(400)).action).toBe('pend');
    expect(watch.observe(charged).action).toBe('decide');
  });

  it('ends at the first other answer, releasing what it held; a timeout does not end it', () => {
    const watch = new MisconfigurationWatch();
    expect(watch.observe(declined(422)).action).toBe('hold');
    expect(watch.observe(timeout).action).toBe('decide');
    expect(watch.watching).toBe(true);
    expect(watch.observe(declined(400)).action).toBe('release');
    expect(watch.watching).toBe(false);
    expect(watch.observe(declined(422)).action).toBe('decide');
  });

  it('counts a 402 as another answer, and ends when the run runs out of charges', () => {
    const watch = new MisconfigurationWatch();
    expect(watch.observe(declined(402)).action).toBe('release');
    const quiet = new MisconfigurationWatch();
    expect(quiet.observe(declined(400)).action).toBe('hold');
    expect(quiet.end()).toBe(true);
    expect(quiet.end()).toBe(false);
    expect(quiet.observe(declined(400)).action).toBe('decide');
  });
});
