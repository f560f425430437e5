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
export { connectRedis } from './engine/distributed/connection.js';
export {
  billDistributed,
  type DistributedBillOptions,
} from './engine/distributed/distributed-engine.js';
export { type EnqueueOptions, type EnqueueResult, enqueue } from './engine/distributed/enqueue.js';
export {
  BillingWorker,
  type BillingWorkerOptions,
  type WorkerEnd,
} from './engine/distributed/worker.js';
export { InputInvalidError } from './engine/import.js';
export {
  type AdapterAttemptContext,
  type AdapterCharge,
  type AdapterModule,
  type AdapterSetupContext,
  type BillOptions,
  type BillPlan,
  type BillResult,
  bill,
  type RequestPreview,
  type RunChoice,
} from './engine/local-engine.js';
export type { ChargeRecord, Ledger, RunRecord, StateCounts } from './ledger/ledger.js';
export { RedisLedger, type RedisLedgerOptions } from './ledger/redis-ledger.js';
export { SqliteLedger, type SqliteLedgerOptions } from './ledger/sqlite-ledger.js';
export {
  type MockProvider,
  type MockProviderOptions,
  type MockProviderStats,
  startMockProvider,
} from './mock-provider/index.js';
export type { ProgressEvent } from './observe/progress.js';
export { writeReport } from './report/report.js';
