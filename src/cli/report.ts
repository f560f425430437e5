import { checkReachable, closeRedis, connectRedis } from '../engine/distributed/connection.js';
import { DistributedStatusReader } from '../engine/distributed/status.js';
import type { Ledger, RunRecord } from '../ledger/ledger.js';
import { writeReport } from '../report/report.js';
import { ExitStatus } from './exit-codes.js';
import { openRun } from './ledger-access.js';

export interface ReportFlags {
  runId: string;
  ledger: string;
  out: string;
  redis?: string;
  prefix: string;
}

export async function reportCommand(flags: ReportFlags): Promise<number> {
  if (flags.redis !== undefined) {
    const redis = connectRedis(flags.redis, 'short');
    let reader: DistributedStatusReader | undefined;
    try {
      await checkReachable(redis, flags.redis);
      reader = new DistributedStatusReader({ redis, prefix: flags.prefix });
      return await write(reader.ledger, await reader.run(flags.runId), flags.out);
    } finally {
      await reader?.close();
      await closeRedis(redis);
    }
  }
  const { ledger, run } = await openRun(flags.ledger, flags.runId);
  try {
    return await write(ledger, run, flags.out);
  } finally {
    await ledger.close();
  }
}

async function write(ledger: Ledger, run: RunRecord, out: string): Promise<number> {
  const rows = await writeReport(ledger, run.runId, out);
  process.stderr.write(
    `bulkbill: wrote ${rows.toLocaleString('en-US')} rows of run ${run.runId} to ${out}\n`,
  );
  return ExitStatus.Ok;
}
