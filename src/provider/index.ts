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
  type ChargeRequest,
  clientFromOptions,
  PROVIDER_CLIENT_DEFAULTS,
  ProviderClient,
  type ProviderClientOptions,
  printableEndpoint,
} from './client.js';
export { credentialsFingerprint, fingerprintSalt, sameCredentials } from './credentials.js';
export {
  describeHeaders,
  type HeaderTemplate,
  parseHeaderFlag,
  parseHeaderFlags,
  REDACTED,
  type RequestHeader,
  resolveHeaders,
} from './header-template.js';
