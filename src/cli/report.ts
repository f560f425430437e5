import { writeReport } from '../report/report.js';
import { ExitStatus } from './exit-codes.js';
import { openRun } from './ledger-access.js';

export interface ReportFlags {
  runId: string;
  ledger: string;
  out: string;
}

export async function reportCommand(flags: ReportFlags): Promise<number> {
  const { ledger, run } = await openRun(flags.ledger, flags.runId);
  try {
    const rows = await writeReport(ledger, run.runId, flags.out);
    process.stderr.write(
      `bulkbill: wrote ${rows.toLocaleString('en-US')} rows of run ${run.runId} to ${flags.out}\n`,
    );
    return ExitStatus.Ok;
  } finally {
    await ledger.close();
  }
}
