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
