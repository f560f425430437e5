import type { RunChoice } from '../engine/run-choice.js';

/** The line that says which run a command works on and where it lives, on stderr. */
export function announceRun(choice: RunChoice, where: string): string {
  const { run, how } = choice;
  const what =
    how === 'created'
      ? `new run ${run.runId}`
      : how === 'resumed'
        ? `resuming unfinished run ${run.runId}`
        : `run ${run.runId} already finished on ${run.finishedAt}: nobody will be billed (a new cycle needs a new --run-id)`;
  return `bulkbill: ${what} · ${run.total.toLocaleString('en-US')} rows · ${where}\n`;
}
