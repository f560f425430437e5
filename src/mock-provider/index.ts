export type { MockProviderStats } from './ledger.js';
export {
  type MockProviderOptions,
  mockProviderOptionsSchema,
  type ResolvedMockProviderOptions,
  resolveMockProviderOptions,
} from './options.js';
export { type MockProvider, startMockProvider } from './server.js';
export { SHAPE_NAMES, type ShapeName } from './shapes/index.js';
