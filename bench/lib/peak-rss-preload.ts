/**
 * Loaded with `--import` into a CLI process the bench starts (`bulkbill enqueue`, `bulkbill
 * worker`), whose own output does not say how much memory it took: when the process exits, it
 * writes its peak resident memory in bytes (`process.resourceUsage().maxRSS`, the figure `bulkbill
 * run --json` reports as peakRssBytes) to the file named by PEAK_RSS_FILE_ENV.
 */
import { writeFileSync } from 'node:fs';

export const PEAK_RSS_FILE_ENV = 'BULKBILL_BENCH_PEAK_RSS_FILE';

const file = process.env[PEAK_RSS_FILE_ENV];
if (file) {
  process.once('exit', () => {
    // maxRSS is in kibibytes.
    writeFileSync(file, `${process.resourceUsage().maxRSS * 1_024}\n`);
  });
}
