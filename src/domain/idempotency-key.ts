import { createHash } from 'node:crypto';
import { IDEMPOTENCY_KEY_MAX_LENGTH, USER_ID_MAX_LENGTH } from './charge.js';
import { UsageError } from './errors.js';

/**
 * Longest run id: 255 − 1 (`:`) − 200 (longest user id) = 54, so `<run-id>:<user-id>` stays
 * readable (unhashed) for every printable-ASCII user id of valid length, and the hashed form
 * (`<run-id>:~!` + 43 characters, at most 100) always fits the provider's 255.
 */
export const RUN_ID_MAX_LENGTH = IDEMPOTENCY_KEY_MAX_LENGTH - 1 - USER_ID_MAX_LENGTH;

// Visible ASCII (0x21–0x7E) except `:`, which separates the run id from the user id.
const RUN_ID = /^[\x21-\x39\x3b-\x7e]+$/;
// Printable ASCII (0x20–0x7E): what an HTTP header value carries unchanged.
const PRINTABLE_ASCII = /^[\x20-\x7e]*$/;
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?:^|[^\ud800-\udbff])[\udc00-\udfff]/;

/** Marks a hashed user id; a raw user id never starts with it (such ids are hashed too). */
const HASHED = '~';
/** Marks the hash of an id that is not well-formed UTF-16 (a lone surrogate). */
const HASHED_CODE_UNITS = '~!';

/** Why `value` is not a valid run id, or undefined when it is one. */
export function runIdProblem(value: unknown): string | undefined {
  if (value === undefined || value === null) return 'is missing';
  if (typeof value !== 'string') return `must be a string, got ${typeof value}`;
  if (value.length === 0) return 'must not be empty';
  if (value.length > RUN_ID_MAX_LENGTH) {
    return `must be at most ${RUN_ID_MAX_LENGTH} characters, got ${value.length}`;
  }
  if (!RUN_ID.test(value)) {
    return `must be visible ASCII characters other than ":" (no spaces), got ${JSON.stringify(value)}`;
  }
  return undefined;
}

/**
 * The idempotency key of a charge: `<run-id>:<user-id>`, the same on every attempt, in every
 * process, so a retry can never charge twice.
 *
 * A key is at most 255 printable ASCII characters. When the user id cannot appear as is (a
 * character outside 0x20–0x7E, a trailing space a server would trim, a leading `~`, or a key
 * longer than 255), the key is `<run-id>:~<h>` where `<h>` is the unpadded base64url SHA-256 of
 * the user id's UTF-8 bytes (43 characters); a user id holding a lone surrogate, which UTF-8
 * cannot carry, is `<run-id>:~!<h>` with `<h>` over its UTF-16LE code units instead. Raw ids
 * never start with `~`, so a raw key and a hashed key cannot collide.
 */
export function idempotencyKey(runId: string, userId: string): string {
  if (!(runId.length <= RUN_ID_MAX_LENGTH && RUN_ID.test(runId))) {
    throw new UsageError(`run id ${runIdProblem(runId)}`);
  }
  if (
    runId.length + 1 + userId.length <= IDEMPOTENCY_KEY_MAX_LENGTH &&
    PRINTABLE_ASCII.test(userId) &&
    !userId.startsWith(HASHED) &&
    !userId.endsWith(' ')
  ) {
    return `${runId}:${userId}`;
  }
  return `${runId}:${hashedUserId(userId)}`;
}

function hashedUserId(userId: string): string {
  if (LONE_SURROGATE.test(userId)) {
    const digest = createHash('sha256').update(Buffer.from(userId, 'utf16le')).digest('base64url');
    return `${HASHED_CODE_UNITS}${digest}`;
  }
  return `${HASHED}${createHash('sha256').update(userId, 'utf8').digest('base64url')}`;
}
