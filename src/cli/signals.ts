import { ExitStatus } from './exit-codes.js';

/**
 * Calls `onFirst` on the first SIGINT or SIGTERM; a second one runs `onSecond` and exits at once,
 * the way an operator who presses Ctrl-C twice expects.
 */
export function onStopSignals(onFirst: () => void, onSecond: () => void): () => void {
  let received = 0;
  const handler = () => {
    received++;
    if (received === 1) {
      onFirst();
      return;
    }
    onSecond();
    process.exit(ExitStatus.Interrupted);
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  return () => {
    process.off('SIGINT', handler);
    process.off('SIGTERM', handler);
  };
}

/**
 * Once a command's work is over and said, a SIGINT or SIGTERM that comes before the process has
 * wound down (closing the ledger, the HTTP pools, Redis) ends it at once with the command's own
 * exit status, not the signal's 130/143: the run already ended, and its status says how.
 */
export function exitOnLateStopSignals(): void {
  const handler = () => process.exit();
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
}
