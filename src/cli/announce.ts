import type { RunChoice } from '../engine/run-choice.js';

const number = new Intl.NumberFormat('en-US');

/** The lines that say which run a command works on and where it lives, on stderr. */
export function announceRun(choice: RunChoice, where: string): string {
  const { run, how } = choice;
  const what =
    how === 'created'
      ? `new run ${run.runId}`
      : how === 'resumed'
        ? `resuming unfinished run ${run.runId}`
        : `run ${run.runId} already finished on ${run.finishedAt}: nobody will be billed (a new cycle needs a new --run-id)`;
  const lines = [`bulkbill: ${what} · ${number.format(run.total)} rows · ${where}`];
  if (how !== 'created' && choice.added > 0) {
    lines.push(
      `bulkbill: ${number.format(choice.added)} users of this input added to run ${run.runId}`,
    );
  }
  if (choice.missing > 0) {
    lines.push(
      `bulkbill: ${number.format(choice.missing)} users of run ${run.runId} are not in this input; they stay in the run as they are`,
    );
  }
  if (choice.reopened > 0) {
    lines.push(
      `bulkbill: ${number.format(choice.reopened)} failed or unknown charges reopened for a new round of attempts (--retry-failed)`,
    );
  }
  return `${lines.join('\n')}\n`;
}
