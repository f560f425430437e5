export {
  type AdapterAttemptContext,
  type AdapterCharge,
  AdapterDeadlineError,
  type AdapterModule,
  type AdapterOptions,
  AdapterSender,
  type AdapterSetupContext,
  type AdapterTimers,
  chosenAdapter,
  loadAdapter,
  openAdapter,
  senderFromOptions,
} from './adapter.js';
export {
  type ClassifyContext,
  classify,
  type ProviderAnswer,
  type ProviderExchange,
  providerReason,
  REASON_MAX_LENGTH,
  type TransportFailure,
} from './classify.js';
export {
  type BillingSender,
  type ChargeRequest,
  clientFromOptions,
  describeRunEndpoint,
  PROVIDER_CLIENT_DEFAULTS,
  ProviderClient,
  type ProviderClientOptions,
  plainHttpWarning,
  printableEndpoint,
  providerHeaders,
  readCaFile,
  templateRowCheck,
} from './client.js';
export { credentialsFingerprint, fingerprintSalt, sameCredentials } from './credentials.js';
export {
  OUTCOMES,
  type ProviderDescription,
  type ProviderDescriptionInput,
  providerSchema,
  type RuleOutcome,
} from './description.js';
export {
  describeHeaders,
  type HeaderTemplate,
  parseHeaderFlag,
  parseHeaderFlags,
  REDACTED,
  type RequestHeader,
  resolveHeaders,
} from './header-template.js';
export { type Classifier, compileRules } from './rules.js';
export {
  type CompiledRequest,
  compileRequest,
  type TemplateCharge,
  TemplateRenderError,
} from './template.js';
