import type { AttemptResult } from '../domain/outcome.js';

/** Answers looked at before a run is called misconfigured. */
export const MISCONFIG_SAMPLE = 20;

/**
 * What to do with an answer while the watch looks at the first answers:
 * - `decide`: as usual;
 * - `release`: the watch is over, the run is sound: decide the held declines, then this answer;
 * - `hold`: keep this decline back, undecided, until the watch is over;
 * - `stop`: the run is misconfigured: stop it; this charge and every held one stay pending;
 * - `pend`: the run was found misconfigured: leave this charge pending.
 */
export type WatchVerdict =
  | { readonly action: 'decide' | 'release' | 'hold' | 'pend' }
  | { readonly action: 'stop'; readonly reason: string };

/**
 * A cycle whose first 20 answers are all the same 400 or 422 is misconfigured (a wrong endpoint,
 * a missing header), not 20 bad cards: such declines are held back while the first answers
 * come, and the run stops with nobody declined if all 20 are alike. Any other answer (a timeout
 * aside) ends the watch. The engine keeps the held charges; this keeps the rule.
 */
// One object per verdict: observe() runs once per attempt and should not allocate.
const DECIDE: WatchVerdict = { action: 'decide' };
const RELEASE: WatchVerdict = { action: 'release' };
const HOLD: WatchVerdict = { action: 'hold' };
const PEND: WatchVerdict = { action: 'pend' };

export class MisconfigurationWatch {
  #watching = true;
  #misconfigured = false;
  #sampleStatus: number | undefined;
  #held = 0;

  /** Still looking at the first answers. */
  get watching(): boolean {
    return this.#watching;
  }

  observe(result: AttemptResult): WatchVerdict {
    if (!this.#watching && !this.#misconfigured) return DECIDE;
    const status = result.status;
    const suspicious =
      result.kind === 'declined' &&
      (status === 400 || status === 422) &&
      (this.#sampleStatus === undefined || this.#sampleStatus === status);
    if (!suspicious) {
      if (status === undefined || !this.#watching) return DECIDE;
      this.#watching = false;
      return RELEASE;
    }
    this.#sampleStatus = status;
    if (this.#misconfigured) return PEND;
    this.#held++;
    if (this.#held < MISCONFIG_SAMPLE) return HOLD;
    this.#watching = false;
    this.#misconfigured = true;
    return {
      action: 'stop',
      reason: `the first ${MISCONFIG_SAMPLE} answers were all ${status} (${result.reason}): the requests look malformed for this provider, so nobody was declined; check --endpoint and --header`,
    };
  }

  /**
   * The run ran out of charges to send while still watching: fewer than 20 answers came, so the
   * held declines are declines. Says whether the watch was still on (and the held must be decided).
   */
  end(): boolean {
    const watching = this.#watching;
    this.#watching = false;
    return watching;
  }
}
