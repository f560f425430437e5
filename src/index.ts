/** bulkbill's library API. */
export { type Clock, systemClock } from './domain/clock.js';
export { formatDuration, parseDuration } from './domain/duration.js';
export { BulkbillError, ErrorCode, isBulkbillError, UsageError } from './domain/errors.js';
export {
  type MockProvider,
  type MockProviderOptions,
  type MockProviderStats,
  startMockProvider,
} from './mock-provider/index.js';
