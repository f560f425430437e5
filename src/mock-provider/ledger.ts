/** What the mock provider counts; served as JSON by GET /stats. */
export interface MockProviderStats {
  /** Every request to the charge route (POST /charge by default). */
  requests: number;
  /** Charges applied (each counts once, replays never). */
  charges: number;
  /** Charges beyond the first for the same user: what bulkbill exists to keep at 0. */
  duplicate_charges: number;
  /** Distinct users charged at least once. */
  users_charged: number;
  /** Requests without an idempotency key (the Idempotency-Key header by default). */
  keyless: number;
  /** Stored results replayed for a repeated key (nothing charged). */
  replays: number;
  /** The key's first request is still being processed (409 by default). */
  conflicts: number;
  /** The key was first used with a different body (422 by default). */
  mismatches: number;
  /** Refused while read: malformed body, field or key (400 by default). */
  invalid: number;
  /** Missing or wrong API key (401 by default). */
  unauthorized: number;
  /** Over the rate limit (429). */
  rejected_429: number;
  /** Refused at once over capacity with --overload 503 (503 by default; Stripe's shape: 429). */
  rejected_503: number;
  /** Refused by --fail-rate before anything was charged (503 by default). */
  failed_503: number;
  /** Charged, then the connection was dropped without an answer. */
  lost: number;
  /** Charged, then the connection was reset partway through the answer. */
  reset_mid_body: number;
  /** Charge requests answered 503 during an outage window (nothing charged). */
  outage_503: number;
  /** Charged, then the answer was held back by --slow. */
  slow: number;
  /** Declined (402 card_declined by default). */
  declined: number;
  /** Requests holding a capacity slot right now. */
  in_flight: number;
  /** Most requests ever holding a slot at once (since start or reset). */
  max_in_flight: number;
  /** Requests waiting for a slot right now (--overload queue). */
  queued: number;
  /** Most requests ever waiting at once. */
  max_queued: number;
  /** The seed of all randomness, to repeat this run. */
  seed: number;
}

/** The first completed answer for an idempotency key, or a marker that one is being made. */
export interface IdempotencyEntry {
  /** The request body's identity; a later request with another is refused (422 by default). */
  readonly fingerprint: string;
  /** undefined while the first request is still being processed (a repeat gets 409). */
  status: number | undefined;
  body: string;
  /** The charge the first request made, when it made one (GoCardless's replay names it). */
  chargeId: string | undefined;
  /** The first request's id, for shapes whose replays point back at it ('' when none). */
  readonly requestId: string;
}

interface UserRecord {
  /** Requests about this user that reached processing; numbers the random streams. */
  attempts: number;
  chargeIds: string[] | undefined;
}

/**
 * The provider's memory: counters, idempotency results and charges per user. POST /reset
 * swaps in a fresh one; requests already in progress finish against the old one.
 */
export class ProviderLedger {
  readonly counters = {
    requests: 0,
    charges: 0,
    duplicate_charges: 0,
    users_charged: 0,
    keyless: 0,
    replays: 0,
    conflicts: 0,
    mismatches: 0,
    invalid: 0,
    unauthorized: 0,
    rejected_429: 0,
    rejected_503: 0,
    failed_503: 0,
    lost: 0,
    reset_mid_body: 0,
    outage_503: 0,
    slow: 0,
    declined: 0,
  };
  readonly idempotency = new Map<string, IdempotencyEntry>();
  readonly #users = new Map<string, UserRecord>();

  /** Numbers this request among those about `userId` (0 for the first). */
  nextAttempt(userId: string): number {
    const record = this.#users.get(userId);
    if (record) return record.attempts++;
    this.#users.set(userId, { attempts: 1, chargeIds: undefined });
    return 0;
  }

  /** Records a charge applied to `userId`. */
  recordCharge(userId: string, chargeId: string): void {
    let record = this.#users.get(userId);
    if (!record) {
      record = { attempts: 0, chargeIds: undefined };
      this.#users.set(userId, record);
    }
    this.counters.charges++;
    if (record.chargeIds) {
      record.chargeIds.push(chargeId);
      this.counters.duplicate_charges++;
    } else {
      record.chargeIds = [chargeId];
      this.counters.users_charged++;
    }
  }

  /** The ids of every charge applied to `userId`, oldest first. */
  chargesOf(userId: string): readonly string[] {
    return this.#users.get(userId)?.chargeIds ?? [];
  }
}
