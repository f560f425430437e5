import { BulkbillError, ErrorCode } from '../domain/errors.js';
import { formatAmounts, formatCounts } from '../report/format.js';
import { ExitStatus } from './exit-codes.js';
import { openRun } from './ledger-access.js';

export interface StatusFlags {
  runId: string;
  ledger: string;
  user?: string;
  json?: boolean;
}

export async function statusCommand(flags: StatusFlags): Promise<number> {
  const { ledger, run } = await openRun(flags.ledger, flags.runId);
  try {
    if (flags.user !== undefined) {
      const charge = await ledger.charge(run.runId, flags.user);
      if (!charge) {
        throw new BulkbillError(
          ErrorCode.Usage,
          `--user: no user ${flags.user} in run ${run.runId}`,
        );
      }
      if (flags.json) {
        process.stdout.write(`${JSON.stringify({ runId: run.runId, ...charge })}\n`);
      } else {
        const parts = [
          `${charge.userId} in run ${run.runId}: ${charge.state}`,
          `  line ${charge.line} · ${charge.amount} ${charge.currency} (minor units) · ${charge.attempts} attempt${charge.attempts === 1 ? '' : 's'}`,
        ];
        if (charge.httpStatus !== undefined) parts.push(`  last answer: HTTP ${charge.httpStatus}`);
        if (charge.chargeId) parts.push(`  provider charge id: ${charge.chargeId}`);
        if (charge.ambiguous) parts.push('  an attempt may have reached the provider unanswered');
        if (charge.error) parts.push(`  reason: ${charge.error}`);
        process.stdout.write(`${parts.join('\n')}\n`);
      }
      return ExitStatus.Ok;
    }
    const counts = await ledger.counts(run.runId);
    const charged = await ledger.totals(run.runId, 'charged');
    if (flags.json) {
      process.stdout.write(`${JSON.stringify({ ...run, counts, chargedAmounts: charged })}\n`);
    } else {
      const state = run.finishedAt ? `finished ${run.finishedAt}` : 'not finished';
      process.stdout.write(
        `${[
          `run ${run.runId}: ${state} (created ${run.createdAt})`,
          `  input ${run.inputPath} · endpoint ${run.endpoint}`,
          `  ${run.total.toLocaleString('en-US')} rows: ${formatCounts(counts)}`,
          `  charged: ${formatAmounts(charged)}`,
        ].join('\n')}\n`,
      );
    }
    return ExitStatus.Ok;
  } finally {
    await ledger.close();
  }
}
