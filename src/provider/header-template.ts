import { BulkbillError, ErrorCode, UsageError } from '../domain/errors.js';

/** A `--header "Name: value"` as given, its `${NAME}` references not yet read. */
export interface HeaderTemplate {
  /** As typed, e.g. `Authorization`. */
  readonly name: string;
  /** The value as typed, e.g. `Bearer ${BILLING_TOKEN}`. */
  readonly value: string;
  /** Environment variables the value reads, in order, each once. */
  readonly variables: readonly string[];
  /** The value must never be shown: a secret-looking name, or it reads the environment. */
  readonly sensitive: boolean;
}

/** A header ready to send. Keep it out of logs: show `describeHeaders(...)` instead. */
export interface RequestHeader {
  readonly name: string;
  readonly value: string;
  readonly sensitive: boolean;
}

/** What a redacted header value reads as. */
export const REDACTED = '[redacted]';

// RFC 9110 §5.6.2 token characters: what a header name is made of.
const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
const LEADING_TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]*/;
const VARIABLE_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const REFERENCE = /\$\{([^}]*)\}/g;
// Tab and printable ASCII: a value no server trims into something else or splits in two.
const VALUE = /^[\t\x20-\x7e]*$/;
const SECRET_NAME = /auth|token|key|secret|cookie|passw|session|signature|credential/i;
// bulkbill sets these itself (or undici does); overriding them would break the request.
const RESERVED = new Set([
  'idempotency-key',
  'content-type',
  'content-length',
  'transfer-encoding',
  'host',
  'connection',
  'keep-alive',
  'upgrade',
  'expect',
]);

/**
 * Parses one `Name: value` header flag strictly: a header name (RFC 9110 token) directly
 * followed by `:`, then a non-empty value of printable ASCII where `${NAME}` reads environment
 * variable NAME when the headers are resolved. Errors name the header, never its value: only
 * the leading name characters of a malformed flag are shown, as the rest may be a secret.
 */
export function parseHeaderFlag(text: string, label = '--header'): HeaderTemplate {
  const colon = text.indexOf(':');
  const name = colon === -1 ? '' : text.slice(0, colon);
  if (!TOKEN.test(name)) {
    const shown = LEADING_TOKEN.exec(text)?.[0] ?? '';
    if (shown.length === 0) {
      throw new UsageError(`${label}: expected "Name: value", but no header name starts it`);
    }
    const rest = text.length > shown.length ? '…' : '';
    throw new UsageError(
      `${label} "${shown}${rest}": expected "Name: value", with ":" directly after the header name`,
    );
  }
  const value = text.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '');
  if (value.length === 0) throw new UsageError(`${label} "${name}": the value is empty`);
  if (!VALUE.test(value)) {
    throw new UsageError(
      `${label} "${name}": the value may hold only printable ASCII characters and tabs`,
    );
  }
  const variables: string[] = [];
  for (const match of value.matchAll(REFERENCE)) {
    const variable = match[1] ?? '';
    if (!VARIABLE_NAME.test(variable)) {
      throw new UsageError(
        `${label} "${name}": \${…} must hold an environment variable name (letters, digits, _)`,
      );
    }
    if (!variables.includes(variable)) variables.push(variable);
  }
  if (value.replace(REFERENCE, '').includes('${')) {
    throw new UsageError(`${label} "${name}": a "\${" is not closed by "}"`);
  }
  const sensitive = variables.length > 0 || SECRET_NAME.test(name);
  return { name, value, variables, sensitive };
}

/** Parses every header flag, refusing duplicates and headers bulkbill sets itself. */
export function parseHeaderFlags(texts: readonly string[], label = '--header'): HeaderTemplate[] {
  const seen = new Set<string>();
  return texts.map((text) => {
    const template = parseHeaderFlag(text, label);
    const lower = template.name.toLowerCase();
    if (RESERVED.has(lower)) {
      throw new UsageError(`${label} "${template.name}": bulkbill sets this header itself`);
    }
    if (seen.has(lower)) {
      throw new UsageError(`${label} "${template.name}": given more than once`);
    }
    if (template.sensitive && template.variables.length === 0) {
      // A literal secret sits in shell history, `ps` and the config file: read it from the env.
      const example = lower === 'authorization' ? `Bearer \${BILLING_TOKEN}` : `\${BILLING_TOKEN}`;
      throw new UsageError(
        `${label} "${template.name}": a credential is read only from the environment: write its value with \${NAME}, e.g. "${template.name}: ${example}", and set NAME`,
      );
    }
    seen.add(lower);
    return template;
  });
}

/**
 * Reads each template's `${NAME}` from `env` (usually process.env). A variable that is missing
 * or empty, or that holds a character a header cannot carry, is a configuration error naming
 * the header and the variable, never the value.
 */
export function resolveHeaders(
  templates: readonly HeaderTemplate[],
  env: Readonly<Record<string, string | undefined>>,
): RequestHeader[] {
  return templates.map(({ name, value, variables, sensitive }) => {
    for (const variable of variables) {
      const found = env[variable];
      if (found === undefined || found.length === 0) {
        throw new BulkbillError(
          ErrorCode.Config,
          `header "${name}" reads \${${variable}}, which is ${found === undefined ? 'not set' : 'empty'} in the environment`,
        );
      }
      if (!VALUE.test(found) || /^[ \t]|[ \t]$/.test(found)) {
        throw new BulkbillError(
          ErrorCode.Config,
          `header "${name}" reads \${${variable}}, which holds a line break, a control or non-ASCII character, or surrounding spaces`,
        );
      }
    }
    const resolved =
      variables.length === 0
        ? value
        : value.replace(REFERENCE, (_, variable: string) => env[variable] ?? '');
    return { name, value: resolved, sensitive };
  });
}

/** Headers as safe to log: sensitive values read `[redacted]`. */
export function describeHeaders(
  headers: readonly {
    readonly name: string;
    readonly value: string;
    readonly sensitive: boolean;
  }[],
): Record<string, string> {
  const shown: Record<string, string> = {};
  for (const { name, value, sensitive } of headers) shown[name] = sensitive ? REDACTED : value;
  return shown;
}

// A fragment shorter than this is not masked on its own (the whole value always is).
const FRAGMENT_MIN_LENGTH = 8;

/**
 * The texts a provider could echo back of the sensitive headers, longest first: each whole
 * value, its parts (the token after `Bearer `, after `token=`) and what a Basic value's base64
 * decodes to (`id:secret`, and `secret`). What `maskSecrets` replaces.
 */
export function secretFragments(headers: readonly RequestHeader[]): string[] {
  const fragments = new Set<string>();
  const add = (text: string, whole = false): void => {
    if (whole ? text.length > 0 : text.length >= FRAGMENT_MIN_LENGTH) fragments.add(text);
  };
  for (const { value, sensitive } of headers) {
    if (!sensitive) continue;
    add(value, true);
    for (const part of value.split(/[\s,;]+/)) {
      const afterEquals = part.slice(part.indexOf('=') + 1);
      for (const piece of [part, afterEquals]) {
        add(piece);
        const decoded = decodedBase64(piece);
        if (decoded === undefined) continue;
        add(decoded);
        for (const half of decoded.split(':')) add(half);
      }
    }
  }
  return [...fragments].sort((a, b) => b.length - a.length);
}

/** Printable ASCII text a base64 token decodes to, or undefined. */
function decodedBase64(token: string): string | undefined {
  if (token.length < FRAGMENT_MIN_LENGTH || token.length % 4 !== 0) return undefined;
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(token)) return undefined;
  const text = Buffer.from(token, 'base64').toString('latin1');
  return /^[\x20-\x7e]+$/.test(text) ? text : undefined;
}

/** `text` with every fragment (from `secretFragments`) replaced by `[redacted]`. */
export function maskSecrets(text: string, fragments: readonly string[]): string {
  let masked = text;
  for (const fragment of fragments) {
    if (masked.includes(fragment)) masked = masked.replaceAll(fragment, REDACTED);
  }
  return masked;
}
