/** bulkbill's library API. */
export { type Clock, systemClock } from './domain/clock.js';
export { formatDuration, parseDuration } from './domain/duration.js';
export { BulkbillError, ErrorCode, isBulkbillError, UsageError } from './domain/errors.js';
export { idempotencyKey } from './domain/idempotency-key.js';
export {
  type AttemptResult,
  ChargeState,
  ProviderFatalError,
  type TerminalChargeState,
} from './domain/outcome.js';
export { InputInvalidError } from './engine/import.js';
export {
  type BillOptions,
  type BillPlan,
  type BillResult,
  bill,
  type RunChoice,
} from './engine/local-engine.js';
export type { ChargeRecord, Ledger, RunRecord, StateCounts } from './ledger/ledger.js';
export { SqliteLedger, type SqliteLedgerOptions } from './ledger/sqlite-ledger.js';
export {
  type MockProvider,
  type MockProviderOptions,
  type MockProviderStats,
  startMockProvider,
} from './mock-provider/index.js';
export type { ProgressEvent } from './observe/progress.js';
export { writeReport } from './report/report.js';
