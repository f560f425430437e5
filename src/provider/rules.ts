import { STATUS_CODES } from 'node:http';
import { parseRetryAfter } from '../control/retry-after.js';
import { statusVerdict } from '../control/retry-policy.js';
import type { AttemptResult } from '../domain/outcome.js';
import {
  type ClassifyContext,
  classify,
  oneLineReason,
  type ProviderAnswer,
  type ProviderExchange,
  providerReason,
} from './classify.js';
import type { ProviderDescription, ResponseRule, RuleOutcome } from './description.js';
import { compileJsonPath, compileLeadingMember, type JsonGetter } from './json-path.js';

/**
 * A provider description's response rules, compiled once into a classifier: the first rule
 * whose status, body and header conditions hold decides what the answer means; an answer no
 * rule matches is classified as bulkbill's default shape is (2xx charged, 402 and other 4xx
 * declined, 5xx and 408/409/425/429 retried, 401/403/404/405 fatal), with the charge id and the
 * reason read where the description says. Then the provider's retry hints apply: a
 * should-retry header of `false` ends a retry now; of `true` retries a decline; a rate-limit
 * reset header stands in for a missing Retry-After.
 */
export type Classifier = (exchange: ProviderExchange) => AttemptResult;

type Response = ProviderDescription['response'];

interface CompiledRule {
  readonly index: number;
  readonly statuses: ((status: number) => boolean) | undefined;
  readonly body: readonly ((json: unknown) => boolean)[];
  readonly headers: readonly ((headers: ProviderAnswer['headers']) => boolean)[];
  readonly outcome: RuleOutcome;
  readonly reason: readonly JsonGetter[] | undefined;
}

/** Longest charge id kept. */
const CHARGE_ID_MAX_LENGTH = 255;
const MAY_HAVE_PROCESSED = new Set([500, 502, 504]);

/** Whether `response` is the default (nothing to compile: classify() serves it as is). */
function isDefault(response: Response): boolean {
  const success = response.chargeId.success;
  return (
    response.rules.length === 0 &&
    (success === '$.id' ||
      (Array.isArray(success) && success.length === 1 && success[0] === '$.id')) &&
    response.chargeId.failure === undefined &&
    response.reason === undefined &&
    response.shouldRetryHeader === undefined &&
    response.rateLimitResetHeaders.length === 0
  );
}

function paths(value: string | readonly string[] | undefined): JsonGetter[] | undefined {
  if (value === undefined) return undefined;
  return (typeof value === 'string' ? [value] : value).map(compileJsonPath);
}

function statusTest(selector: number | string): (status: number) => boolean {
  if (typeof selector === 'number') return (status) => status === selector;
  const hundreds = Number(selector[0]) * 100;
  return (status) => status >= hundreds && status < hundreds + 100;
}

function compileRule(rule: ResponseRule, index: number): CompiledRule {
  const statuses =
    rule.status === undefined
      ? undefined
      : (() => {
          const tests = (Array.isArray(rule.status) ? rule.status : [rule.status]).map(statusTest);
          return (status: number) => tests.some((test) => test(status));
        })();
  const bodyConditions =
    rule.body === undefined ? [] : Array.isArray(rule.body) ? rule.body : [rule.body];
  const body = bodyConditions.map((condition) => {
    const get = compileJsonPath(condition.path);
    if (condition.exists !== undefined) {
      const exists = condition.exists;
      return (json: unknown) => (get(json) !== undefined) === exists;
    }
    if (condition.prefix !== undefined) {
      const prefix = condition.prefix;
      return (json: unknown) => {
        const value = get(json);
        return typeof value === 'string' && value.startsWith(prefix);
      };
    }
    const accepted = condition.in ?? [condition.equals];
    return (json: unknown) => {
      const value = get(json);
      return value !== undefined && accepted.includes(value as string | number | boolean | null);
    };
  });
  const headerConditions =
    rule.header === undefined ? [] : Array.isArray(rule.header) ? rule.header : [rule.header];
  const headers = headerConditions.map((condition) => {
    const name = condition.name.toLowerCase();
    return (all: ProviderAnswer['headers']) => {
      const found = headerValue(all, name);
      if (condition.exists !== undefined) return (found !== undefined) === condition.exists;
      if (found === undefined) return false;
      if (condition.prefix !== undefined) return found.startsWith(condition.prefix);
      return found === condition.equals;
    };
  });
  return { index, statuses, body, headers, outcome: rule.outcome, reason: paths(rule.reason) };
}

function headerValue(headers: ProviderAnswer['headers'], name: string): string | undefined {
  const value = headers?.[name];
  return Array.isArray(value) ? value[0] : value;
}

/**
 * An answer's body, parsed as JSON the first time a rule, a charge id or a reason asks for it:
 * most answers are a 2xx whose charge id is read without parsing (see compileLeadingMember).
 */
class AnswerBody {
  readonly text: string;
  #json: unknown;
  #parsed = false;

  constructor(text: string) {
    this.text = text;
  }

  get json(): unknown {
    if (!this.#parsed) {
      this.#parsed = true;
      this.#json = parseJson(this.text);
    }
    return this.#json;
  }
}

function parseJson(body: string): unknown {
  if (body.length === 0) return undefined;
  const first = body.charCodeAt(0);
  if (first !== 0x7b && first !== 0x5b) return undefined;
  try {
    return JSON.parse(body);
  } catch {
    return undefined;
  }
}

function firstText(
  getters: readonly JsonGetter[] | undefined,
  body: AnswerBody,
): string | undefined {
  if (getters === undefined) return undefined;
  const json = body.json;
  if (json === undefined) return undefined;
  for (const get of getters) {
    const value = get(json);
    if (typeof value === 'string' && value.trim().length > 0) return value;
    if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  }
  return undefined;
}

function statusLine(status: number): string {
  const text = STATUS_CODES[status];
  return text === undefined ? String(status) : `${status} ${text}`;
}

/** Compiles `response` for `context`; the default response is today's classify(). */
export function compileRules(response: Response, context: ClassifyContext): Classifier {
  if (isDefault(response)) return (exchange) => classify(exchange, context);
  const rules = response.rules.map(compileRule);
  const successIds = paths(response.chargeId.success) ?? [];
  // A 2xx's charge id at one top-level member, as its answers' first member: read without parsing.
  const leadingSuccessId =
    typeof response.chargeId.success === 'string'
      ? compileLeadingMember(response.chargeId.success)
      : response.chargeId.success.length === 1
        ? compileLeadingMember(response.chargeId.success[0] as string)
        : undefined;
  const failureIds = paths(response.chargeId.failure) ?? successIds;
  const reasons = paths(response.reason);
  const shouldRetry = response.shouldRetryHeader?.toLowerCase();
  const resetHeaders = response.rateLimitResetHeaders.map((name) => name.toLowerCase());

  const chargeIdOf = (status: number, body: AnswerBody): string | undefined => {
    const success = status >= 200 && status < 300;
    const text =
      (success ? leadingSuccessId?.(body.text) : undefined) ??
      firstText(success ? successIds : failureIds, body);
    return text !== undefined && text.length <= CHARGE_ID_MAX_LENGTH ? text : undefined;
  };
  const reasonOf = (own: readonly JsonGetter[] | undefined, body: AnswerBody) => {
    const said = firstText(own, body) ?? firstText(reasons, body);
    if (said !== undefined) return oneLineReason(said, context.mask);
    // No path found one: the default shape's reading (`error`, `message`, or the text).
    return reasons === undefined && own === undefined
      ? providerReason(body.text, context.mask)
      : undefined;
  };

  const retryAfterOf = (answer: ProviderAnswer): number | undefined => {
    const given = parseRetryAfter(answer.retryAfter, {
      wallClock: context.wallClock,
      maxMs: context.maxRetryAfterMs,
    });
    if (given !== undefined || resetHeaders.length === 0) return given;
    for (const name of resetHeaders) {
      const text = headerValue(answer.headers, name);
      const value = text === undefined ? Number.NaN : Number(text.trim());
      if (!Number.isFinite(value) || value < 0) continue;
      // Larger than 10^9: epoch seconds (X-RateLimit-Reset at GitHub); else seconds from now.
      const ms = value > 1e9 ? value * 1_000 - context.wallClock.now() : value * 1_000;
      return Math.min(Math.max(0, Math.ceil(ms)), context.maxRetryAfterMs);
    }
    return undefined;
  };

  const decide = (answer: ProviderAnswer, rule: CompiledRule, body: AnswerBody): AttemptResult => {
    const { status } = answer;
    switch (rule.outcome) {
      case 'charged':
        return { kind: 'charged', status, chargeId: chargeIdOf(status, body) };
      case 'declined':
      case 'soft_declined': {
        const reason = reasonOf(rule.reason, body) ?? statusLine(status);
        return {
          kind: 'declined',
          status,
          reason: rule.outcome === 'soft_declined' ? `soft decline: ${reason}` : reason,
        };
      }
      case 'retry':
      case 'ambiguous':
      case 'in_progress': {
        const retryAfterMs = retryAfterOf(answer);
        const said = reasonOf(rule.reason, body);
        return {
          kind: 'retry',
          status,
          reason: said === undefined ? statusLine(status) : `${status} ${said}`,
          ambiguous: rule.outcome !== 'retry' || status === 409,
          throttled: status === 429 || (status === 503 && retryAfterMs !== undefined),
          retryAfterMs,
          ...(status === 409 || rule.outcome === 'in_progress' ? { conflict: true } : {}),
        };
      }
      case 'fatal':
        return {
          kind: 'fatal',
          status,
          reason: `${statusLine(status)} from ${context.endpoint}: the provider description's response rule ${rule.index + 1} says the run is misconfigured`,
        };
    }
  };

  const byDefault = (answer: ProviderAnswer, body: AnswerBody): AttemptResult => {
    // The common answer: classify() would parse the body again for its own charge id.
    if (statusVerdict(answer.status) === 'charged') {
      return { kind: 'charged', status: answer.status, chargeId: chargeIdOf(answer.status, body) };
    }
    const result = classify(answer, context);
    switch (result.kind) {
      case 'charged':
        return { ...result, chargeId: chargeIdOf(answer.status, body) };
      case 'declined':
        return reasons === undefined
          ? result
          : {
              ...result,
              reason: reasonOf(undefined, body) ?? statusLine(answer.status),
            };
      case 'retry': {
        const retryAfterMs =
          result.retryAfterMs ??
          (result.throttled || answer.status === 429 ? retryAfterOf(answer) : undefined);
        const said = reasons === undefined ? undefined : reasonOf(undefined, body);
        return {
          ...result,
          retryAfterMs,
          ...(said === undefined ? {} : { reason: `${answer.status} ${said}` }),
        };
      }
      case 'fatal':
        return result;
    }
  };

  const unreadable = (status: number): AttemptResult => ({
    kind: 'retry',
    status,
    reason: `${statusLine(status)}, its body cut off before the response rules could read it: the provider may have charged`,
    ambiguous: true,
    throttled: false,
    retryAfterMs: undefined,
  });

  const hinted = (answer: ProviderAnswer, result: AttemptResult): AttemptResult => {
    if (shouldRetry === undefined) return result;
    const hint = headerValue(answer.headers, shouldRetry)?.trim().toLowerCase();
    if (
      hint === 'false' &&
      result.kind === 'retry' &&
      !result.throttled &&
      result.conflict !== true
    ) {
      return {
        ...result,
        final: true,
        reason: `${result.reason} (${response.shouldRetryHeader}: false)`,
      };
    }
    if (hint === 'true' && result.kind === 'declined') {
      return {
        kind: 'retry',
        status: answer.status,
        reason: `${result.reason} (${response.shouldRetryHeader}: true)`,
        ambiguous: MAY_HAVE_PROCESSED.has(answer.status),
        throttled: false,
        retryAfterMs: retryAfterOf(answer),
      };
    }
    return result;
  };

  return (exchange) => {
    if (exchange.type === 'failure') return classify(exchange, context);
    const body = new AnswerBody(exchange.body);
    for (const rule of rules) {
      if (rule.statuses !== undefined && !rule.statuses(exchange.status)) continue;
      if (!rule.headers.every((test) => test(exchange.headers))) continue;
      if (rule.body.length > 0) {
        const json = body.json;
        if (json === undefined && exchange.truncated === true) {
          // The body this rule reads broke off: a refusal (Adyen's 200 "Refused") cannot be
          // told from a charge. Retried with the same key, the provider says which it was.
          return unreadable(exchange.status);
        }
        if (json === undefined || !rule.body.every((test) => test(json))) continue;
      }
      return hinted(exchange, decide(exchange, rule, body));
    }
    return hinted(exchange, byDefault(exchange, body));
  };
}
