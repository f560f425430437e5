import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { RequestHeader } from './header-template.js';

/**
 * A run's credentials, as a ledger may keep them: `v1:<salt>:<HMAC-SHA256>` of the sensitive
 * headers (names lower-cased, sorted), keyed with a random per-run salt and cut to 128 bits. It
 * tells "the same credentials" from "other ones" (another account, whose idempotency keys are
 * another namespace) without the values ever leaving the process.
 */
export function credentialsFingerprint(
  headers: readonly RequestHeader[],
  salt: string = randomBytes(16).toString('hex'),
): string {
  const canonical = headers
    .filter((header) => header.sensitive)
    .map((header) => `${header.name.toLowerCase()}:${header.value}`)
    .sort()
    .join('\n');
  const mac = createHmac('sha256', salt).update(canonical).digest('hex').slice(0, 32);
  return `v1:${salt}:${mac}`;
}

/** The salt of a stored fingerprint, to compute another process's with; undefined if malformed. */
export function fingerprintSalt(stored: string): string | undefined {
  const [version, salt, mac] = stored.split(':');
  return version === 'v1' && salt && mac ? salt : undefined;
}

/** Whether `headers` are the credentials `stored` was made from. */
export function sameCredentials(stored: string, headers: readonly RequestHeader[]): boolean {
  const salt = fingerprintSalt(stored);
  if (salt === undefined) return false;
  const mine = Buffer.from(credentialsFingerprint(headers, salt));
  const theirs = Buffer.from(stored);
  return mine.length === theirs.length && timingSafeEqual(mine, theirs);
}
