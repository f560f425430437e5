// A bulkbill code adapter (docs/adapters.md) for a create-then-confirm payments API behind an
// OAuth 2.0 client-credentials token:
//
//   POST /oauth/token                 grant_type=client_credentials, HTTP Basic client id:secret
//   POST /v1/payments                 {amount, currency, user_id, metadata}, Idempotency-Key: <key>
//   POST /v1/payments/:id/confirm     {}, Idempotency-Key: <key>:confirm   (this moves the money)
//
// Environment: TWO_STEP_API_BASE (default http://127.0.0.1:4010), TWO_STEP_CLIENT_ID,
// TWO_STEP_CLIENT_SECRET, TWO_STEP_SCOPE (optional).
//
//   bulkbill run users.csv --adapter examples/adapters/two-step-oauth.mjs --run-id 2026-11
//
// Statuses map to outcomes as bulkbill's own HTTP client classifies them (src/provider/classify.ts):
// 2xx done; 408, 409, 425, 429 and 5xx retry (429, and 503 with Retry-After, throttle); 401
// refreshes the token once, then 401, 403, 404, 405 and redirects stop the run; any other 4xx
// declines. Only the confirm step moves money, so only its failures are ambiguous: a create that
// broke off is retried with the same key, and the API answers with the payment it made.

import { Agent, request } from 'undici';

/** What the run is bound to; set by setup() (an ES module export is a live binding). */
export let endpoint;

// Refresh a token this long before the API says it expires.
const EXPIRY_MARGIN_MS = 30_000;
const TOKEN_TIMEOUT_MS = 10_000;
// Errors that say the request never left: nothing can have reached the API.
const NOT_SENT = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'UND_ERR_CONNECT_TIMEOUT']);
const MAY_HAVE_PROCESSED = new Set([500, 502, 504]);
const FATAL_ADVICE = {
  401: 'check TWO_STEP_CLIENT_ID and TWO_STEP_CLIENT_SECRET',
  403: 'the client may not take payments',
  404: 'check TWO_STEP_API_BASE',
  405: 'check TWO_STEP_API_BASE',
};

let base;
let clientId;
let clientSecret;
let scope;
let agent;
/** { value, expiresAt } */
let token;
/** The token request in flight, shared by every charge that needs a new token. */
let refreshing;

export async function setup({ env }) {
  base = (env.TWO_STEP_API_BASE ?? 'http://127.0.0.1:4010').replace(/\/+$/, '');
  clientId = env.TWO_STEP_CLIENT_ID;
  clientSecret = env.TWO_STEP_CLIENT_SECRET;
  scope = env.TWO_STEP_SCOPE;
  if (!clientId || !clientSecret) {
    throw new Error('set TWO_STEP_CLIENT_ID and TWO_STEP_CLIENT_SECRET');
  }
  endpoint = `two-step-oauth:${base}`;
  agent = new Agent({ connections: 256, keepAliveTimeout: 10_000 });
  token = undefined;
  refreshing = undefined;
  // Once, before anyone is charged: wrong credentials stop the run here.
  const fetched = await fetchToken();
  if (fetched.failure) throw new Error(fetched.failure.reason);
}

/** The client, not the token: another client id or secret is another account. */
export function credentials() {
  return `${clientId}:${clientSecret}`;
}

export async function close() {
  await agent?.close();
  agent = undefined;
}

export async function charge(charge, ctx) {
  const created = await send(
    'create',
    '/v1/payments',
    {
      amount: charge.amount,
      currency: charge.currency,
      user_id: charge.userId,
      metadata: charge.metadata,
    },
    ctx.idempotencyKey,
    ctx.signal,
  );
  if (created.outcome) return created.outcome;
  const paymentId = created.json?.id;
  if (typeof paymentId !== 'string' || paymentId === '') {
    // Nothing moved money yet: retrying with the same key gets the same payment back.
    return retry(created.status, 'create answered without a payment id', false);
  }
  const confirmed = await send(
    'confirm',
    `/v1/payments/${encodeURIComponent(paymentId)}/confirm`,
    {},
    `${ctx.idempotencyKey}:confirm`,
    ctx.signal,
  );
  if (confirmed.outcome) return confirmed.outcome;
  return { kind: 'charged', status: confirmed.status, chargeId: confirmed.json?.id ?? paymentId };
}

/**
 * One step: POSTs `payload` with the token and `key`; a 401 refreshes the token and sends the
 * step again once. Returns { status, json } for a 2xx, else { outcome }.
 */
async function send(step, path, payload, key, signal) {
  for (let tries = 0; ; tries++) {
    const bearer = await currentToken();
    if (bearer.failure) return { outcome: bearer.failure };
    let response;
    try {
      response = await request(`${base}${path}`, {
        method: 'POST',
        dispatcher: agent,
        headers: {
          authorization: `Bearer ${bearer.value}`,
          'content-type': 'application/json',
          'idempotency-key': key,
        },
        body: JSON.stringify(payload),
        signal,
      });
    } catch (error) {
      return { outcome: transportFailure(step, error) };
    }
    // The status line says what happened; a body cut short does not change it.
    const text = await response.body.text().catch(() => '');
    const status = response.statusCode;
    if (status === 401 && tries === 0) {
      await refreshToken(bearer.value);
      continue;
    }
    if (status >= 200 && status < 300) return { status, json: parseObject(text) };
    return { outcome: outcomeOf(step, status, response.headers, text) };
  }
}

function outcomeOf(step, status, headers, text) {
  const said = reasonOf(text);
  if (FATAL_ADVICE[status] || (status >= 300 && status < 400) || status < 200 || status > 599) {
    const advice = FATAL_ADVICE[status] ?? 'the API should never send this status';
    return { kind: 'fatal', status, reason: `${status} from ${step} at ${base}: ${advice}` };
  }
  if ([408, 409, 425, 429].includes(status) || status >= 500) {
    const retryAfterMs =
      status === 429 || status === 503 || status === 409
        ? parseRetryAfter(headers['retry-after'])
        : undefined;
    return {
      kind: 'retry',
      status,
      reason: `${step}: ${status}${said ? ` ${said}` : ''}`,
      // The create step moves no money; a confirm the API may have processed may have charged.
      ambiguous: step === 'confirm' && (MAY_HAVE_PROCESSED.has(status) || status === 409),
      throttled: status === 429 || (status === 503 && retryAfterMs !== undefined),
      retryAfterMs,
      ...(status === 409 ? { conflict: true } : {}),
    };
  }
  return { kind: 'declined', status, reason: said ?? `${step}: ${status}` };
}

function transportFailure(step, error) {
  const code = typeof error?.code === 'string' ? error.code : undefined;
  const sent = code === undefined || !NOT_SENT.has(code);
  return retry(
    undefined,
    `${step}: ${error?.message ?? 'connection error'}${code ? ` (${code})` : ''}`,
    step === 'confirm' && sent,
  );
}

function retry(status, reason, ambiguous) {
  return { kind: 'retry', status, reason, ambiguous, throttled: false, retryAfterMs: undefined };
}

/** { value } of a token that has not expired, fetching one when needed; or { failure }. */
async function currentToken() {
  if (token !== undefined && Date.now() < token.expiresAt) return { value: token.value };
  return refreshToken(token?.value);
}

/**
 * A new token in place of `stale` (a 401 answered it, or it expired). One request for every
 * charge that asks at once; a charge whose token another one already replaced takes that one.
 */
async function refreshToken(stale) {
  if (token !== undefined && token.value !== stale && Date.now() < token.expiresAt) {
    return { value: token.value };
  }
  refreshing ??= fetchToken().finally(() => {
    refreshing = undefined;
  });
  return refreshing;
}

async function fetchToken() {
  const form = new URLSearchParams({ grant_type: 'client_credentials' });
  if (scope) form.set('scope', scope);
  let response;
  try {
    response = await request(`${base}/oauth/token`, {
      method: 'POST',
      dispatcher: agent,
      headers: {
        authorization: `Basic ${Buffer.from(`${clientId}:${clientSecret}`).toString('base64')}`,
        'content-type': 'application/x-www-form-urlencoded',
      },
      body: form.toString(),
      // One charge's deadline must not cut the request every other charge waits for.
      signal: AbortSignal.timeout(TOKEN_TIMEOUT_MS),
    });
  } catch (error) {
    // No payment request was sent: nothing can have been charged.
    return { failure: retry(undefined, `token: ${error?.message ?? 'connection error'}`, false) };
  }
  const text = await response.body.text().catch(() => '');
  const status = response.statusCode;
  const json = parseObject(text);
  if (status === 200 && typeof json?.access_token === 'string') {
    const lifetimeMs = (Number(json.expires_in) || 3_600) * 1_000;
    token = {
      value: json.access_token,
      expiresAt: Date.now() + Math.max(lifetimeMs - EXPIRY_MARGIN_MS, lifetimeMs / 2),
    };
    return { value: token.value };
  }
  if (status === 400 || status === 401 || status === 403) {
    // RFC 6749 §5.2: invalid_client, unauthorized_client, …: the run is misconfigured.
    return {
      failure: {
        kind: 'fatal',
        status,
        reason: `token: ${status} ${json?.error ?? ''} from ${base}/oauth/token: check TWO_STEP_CLIENT_ID and TWO_STEP_CLIENT_SECRET`,
      },
    };
  }
  return { failure: retry(status, `token: ${status}`, false) };
}

function parseObject(text) {
  if (!text.startsWith('{')) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** `error` and `message` of a JSON body, else the start of a text body. */
function reasonOf(text) {
  const json = parseObject(text);
  if (json) {
    const parts = [json.error, json.message].filter((part) => typeof part === 'string' && part);
    return parts.length > 0 ? [...new Set(parts)].join(': ') : undefined;
  }
  return text.trim().slice(0, 200) || undefined;
}

/** Retry-After in ms: seconds or an HTTP date; undefined when absent or unreadable. */
function parseRetryAfter(value) {
  const text = Array.isArray(value) ? value[0] : value;
  if (typeof text !== 'string' || text.trim() === '') return undefined;
  if (/^\d+$/.test(text.trim())) return Number(text.trim()) * 1_000;
  const at = Date.parse(text);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}
