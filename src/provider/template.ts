import { createHash } from 'node:crypto';
import { BulkbillError, ErrorCode } from '../domain/errors.js';
import { majorUnitsProblem, toMajorUnits } from '../domain/money.js';
import type { ProviderDescription, TemplateValue } from './description.js';

/**
 * A provider description's request, compiled once: every `{{placeholder}}` is found, checked and
 * turned into a slot, and the static text around the slots is encoded ahead of time, so that
 * rendering one attempt is string concatenation.
 *
 * Placeholders: `{{user_id}}`, `{{amount}}` (minor units, a number), `{{currency}}`,
 * `{{idempotency_key}}`, `{{vars.NAME}}` (a constant of the description) and `{{COLUMN}}` (any
 * other column of the input row), each optionally filtered: `|major` (a decimal string in major
 * units, by the currency's ISO 4217 exponent), `|lower`, `|upper`, `|number` (the value as a
 * JSON number), `|string` (as a JSON string). A JSON string that is exactly one placeholder takes
 * the value's type: `"{{amount}}"` renders 1234, `"{{amount|major}}"` renders "12.34".
 */

/** What a template reads of one charge. */
export interface TemplateCharge {
  readonly userId: string;
  /** In minor units. */
  readonly amount: number;
  readonly currency: string;
  /** The charge's idempotency key, before the provider's length limit is applied. */
  readonly idempotencyKey: string;
  /** The row's other columns. */
  readonly metadata?: Readonly<Record<string, string>> | undefined;
}

/** One attempt's request, ready for undici. */
export interface RenderedRequest {
  /** Path and query, e.g. `/v1/payment_intents`. */
  readonly path: string;
  /** Header names and values after the shared ones: the per-charge ones. */
  readonly headers: readonly string[];
  readonly body: string;
}

/** A request template for one provider, compiled. */
export interface CompiledRequest {
  readonly method: 'POST' | 'PUT' | 'PATCH';
  /** Scheme, host and port: fixed, so one connection pool serves every charge. */
  readonly origin: string;
  /** The URL as safe to print and to bind a run to: origin and path, placeholders as written. */
  readonly printable: string;
  readonly contentType: string;
  /** The idempotency header's name (lower case), or undefined when the body carries the key. */
  readonly idempotencyHeader: string | undefined;
  readonly maxKeyLength: number;
  /** Input columns the template reads besides user_id, amount and currency. */
  readonly columns: readonly string[];
  /** Columns read with `|number`: each must hold a number. */
  readonly numberColumns: readonly string[];
  /** Whether a charge's currency must have an ISO 4217 exponent (`|major` is used). */
  readonly needsMajorUnits: boolean;
  /** The key as sent: `key`, or its hash cut to the provider's limit. */
  keyFor(key: string): string;
  /** Renders one attempt. Throws a TemplateRenderError when a row lacks a column it reads. */
  render(charge: TemplateCharge): RenderedRequest;
  /**
   * Why this row cannot be rendered (a column missing or not a number, a currency without an
   * ISO exponent), by field, or an empty list. Run on every input row before anything is sent.
   */
  rowProblems(charge: Omit<TemplateCharge, 'idempotencyKey'>): { field: string; reason: string }[];
}

/** A row could not be rendered: nothing was sent. */
export class TemplateRenderError extends Error {
  override readonly name = 'TemplateRenderError';
}

type Filter = 'major' | 'lower' | 'upper' | 'number' | 'string';
const FILTERS = new Set<string>(['major', 'lower', 'upper', 'number', 'string']);
const BUILT_INS = new Set(['user_id', 'amount', 'currency', 'idempotency_key']);
const PLACEHOLDER = /\{\{\s*([^{}|]+?)\s*(?:\|\s*([a-z]+)\s*)?\}\}/g;

/** A slot's value for one attempt: the charge and its key as sent. */
type Value = (charge: TemplateCharge, key: string) => string | number;

interface Slot {
  readonly value: Value;
  /** A number (amount, `|number`) or a string. */
  readonly numeric: boolean;
}

/** A compiled string: literal text and slots, alternating (`parts[0]` literal, then slot, literal…). */
interface StringTemplate {
  readonly literals: readonly string[];
  readonly slots: readonly Slot[];
}

interface Reads {
  readonly columns: Set<string>;
  readonly numberColumns: Set<string>;
  major: boolean;
  key: boolean;
}

function configError(where: string, message: string): BulkbillError {
  return new BulkbillError(ErrorCode.Config, `provider.${where}: ${message}`);
}

/** Compiles `description.request` and `description.idempotency` against `endpoint`. */
export function compileRequest(
  description: ProviderDescription,
  endpoint: string | undefined,
): CompiledRequest {
  const reads: Reads = { columns: new Set(), numberColumns: new Set(), major: false, key: false };
  const vars = description.vars;
  const compileString = (text: string, where: string, allowed?: (name: string) => boolean) =>
    parseString(text, where, vars, reads, allowed);

  const { request, idempotency } = description;
  // --- URL: origin fixed (placeholders there may read only vars), path and query per charge.
  // Without a request.url the endpoint is the URL, as the URL parser normalises it.
  const urlText = request.url ?? (endpoint === undefined ? undefined : normalised(endpoint));
  if (urlText === undefined) {
    throw new BulkbillError(
      ErrorCode.Usage,
      'no endpoint: give --endpoint (or `endpoint` in the config file), an absolute provider.request.url, or an --adapter',
    );
  }
  const absolute = /^[a-z][a-z0-9+.-]*:\/\//i.test(urlText);
  if (!absolute && endpoint === undefined) {
    throw configError(
      'request.url',
      `${JSON.stringify(urlText)} is a path and no endpoint is given to resolve it against`,
    );
  }
  const { origin, pathText } = splitUrl(urlText, absolute ? undefined : endpoint, vars);
  const path = compileString(pathText, 'request.url');
  const printable = `${origin}${pathText.split('?')[0]}${pathText.includes('?') ? '?…' : ''}`;

  // --- Headers: ${ENV} was resolved by the caller; placeholders here are per charge.
  const idempotencyHeader = idempotency.header?.toLowerCase();
  const headerTemplates: { name: string; value: StringTemplate }[] = [];
  for (const [name, value] of Object.entries(request.headers)) {
    headerTemplates.push({
      name,
      value: compileString(
        value,
        `request.headers.${name}`,
        (read) =>
          read === 'idempotency_key' ||
          read === 'amount' ||
          read === 'currency' ||
          read.startsWith('vars.'),
      ),
    });
  }

  // --- Body.
  const body = request.body;
  let contentType: string;
  let renderBody: (charge: TemplateCharge, key: string) => string;
  if ('form' in body) {
    contentType = 'application/x-www-form-urlencoded';
    renderBody = compileForm(body.form, compileString);
  } else if ('graphql' in body) {
    contentType = 'application/json';
    const { query, variables, operationName } = body.graphql;
    renderBody = compileJson(
      {
        query,
        ...(operationName === undefined ? {} : { operationName }),
        variables,
      },
      'request.body.graphql',
      compileString,
      // The query is GraphQL text, not a template: `{{` never appears in one by accident.
      (path) => path === 'request.body.graphql.query',
    );
  } else {
    contentType = 'application/json';
    renderBody = compileJson(body.json, 'request.body.json', compileString);
  }

  if (idempotencyHeader === undefined && !reads.key) {
    throw configError(
      'idempotency',
      'the request carries no idempotency key (idempotency.header is null and no {{idempotency_key}} placeholder is used): a retry could charge a user twice',
    );
  }
  const maxKeyLength = idempotency.maxLength;
  const keyFor = (key: string) =>
    key.length <= maxKeyLength
      ? key
      : createHash('sha256').update(key).digest('base64url').slice(0, maxKeyLength);

  const columns = [...reads.columns];
  const numberColumns = [...reads.numberColumns];
  const needsMajorUnits = reads.major;
  const headerCount = headerTemplates.length + (idempotencyHeader === undefined ? 0 : 1);

  return {
    method: request.method,
    origin,
    printable,
    contentType,
    idempotencyHeader,
    maxKeyLength,
    columns,
    numberColumns,
    needsMajorUnits,
    keyFor,
    render(charge) {
      const key = keyFor(charge.idempotencyKey);
      const headers = new Array<string>(headerCount * 2);
      let at = 0;
      for (const header of headerTemplates) {
        headers[at++] = header.name;
        headers[at++] = renderString(header.value, charge, key, encodeNothing);
      }
      if (idempotencyHeader !== undefined) {
        headers[at++] = idempotencyHeader;
        headers[at++] = key;
      }
      return {
        path: renderString(path, charge, key, encodeURIComponent),
        headers,
        body: renderBody(charge, key),
      };
    },
    rowProblems(charge) {
      const problems: { field: string; reason: string }[] = [];
      if (needsMajorUnits) {
        const problem = majorUnitsProblem(charge.currency);
        if (problem !== undefined) {
          problems.push({
            field: 'currency',
            reason: `${problem}, and the provider template sends the amount in major units`,
          });
        }
      }
      const metadata = charge.metadata ?? {};
      for (const column of columns) {
        const value = Object.hasOwn(metadata, column) ? metadata[column] : undefined;
        if (value === undefined) {
          problems.push({
            field: column,
            reason: 'is missing, and the provider template reads it',
          });
        } else if (value.length === 0) {
          problems.push({ field: column, reason: 'is empty, and the provider template reads it' });
        } else if (reads.numberColumns.has(column) && !isJsonNumber(value)) {
          problems.push({
            field: column,
            reason: `must be a number (the provider template reads it with |number), got ${JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}…` : value)}`,
          });
        }
      }
      return problems;
    },
  };
}

function normalised(endpoint: string): string {
  try {
    const url = new URL(endpoint);
    return `${url.origin}${url.pathname}${url.search}`;
  } catch {
    return endpoint;
  }
}

const JSON_NUMBER = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?$/;
function isJsonNumber(text: string): boolean {
  return JSON_NUMBER.test(text) && Number.isFinite(Number(text));
}

function encodeNothing(text: string): string {
  return text;
}

/** Splits a URL into its fixed origin and its path-and-query template. */
function splitUrl(
  text: string,
  base: string | undefined,
  vars: ProviderDescription['vars'],
): { origin: string; pathText: string } {
  // Placeholders in scheme, host and port may read only vars: one pool, one origin.
  const authorityEnd = base === undefined ? text.indexOf('/', text.indexOf('//') + 2) : 0;
  const authority =
    base === undefined ? (authorityEnd === -1 ? text : text.slice(0, authorityEnd)) : '';
  const filledAuthority = authority.replace(PLACEHOLDER, (whole, name: string, filter?: string) => {
    if (!name.startsWith('vars.') || filter !== undefined) {
      throw configError(
        'request.url',
        `${whole}: a placeholder in the host may read only {{vars.NAME}}, unfiltered`,
      );
    }
    const value = vars[name.slice(5)];
    if (value === undefined)
      throw configError('request.url', `${whole}: vars.${name.slice(5)} is not defined`);
    const host = String(value);
    if (!/^[A-Za-z0-9.-]+$/.test(host)) {
      throw configError(
        `vars.${name.slice(5)}`,
        `${JSON.stringify(host)} cannot be part of a host name`,
      );
    }
    return host;
  });
  const rest = base === undefined ? (authorityEnd === -1 ? '/' : text.slice(authorityEnd)) : text;
  let url: URL;
  try {
    url = base === undefined ? new URL(filledAuthority) : new URL(base);
  } catch {
    throw configError(
      'request.url',
      `expected an http or https URL, got ${JSON.stringify(base ?? authority)}`,
    );
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw configError('request.url', `expected an http or https URL, got ${url.protocol}`);
  }
  if (url.username !== '' || url.password !== '') {
    throw configError('request.url', 'must not hold credentials; send them in a header');
  }
  if (base !== undefined) {
    // A path resolves against the endpoint's path: "/v1/x" replaces it, as a browser would.
    if (!rest.startsWith('/')) {
      throw configError('request.url', `${JSON.stringify(rest)}: a relative URL must start with /`);
    }
    const basePath = url.pathname === '/' ? '' : url.pathname.replace(/\/$/, '');
    return { origin: url.origin, pathText: `${basePath}${rest}` };
  }
  return { origin: url.origin, pathText: rest.length === 0 ? '/' : rest };
}

function parseString(
  text: string,
  where: string,
  vars: ProviderDescription['vars'],
  reads: Reads,
  allowed?: (name: string) => boolean,
): StringTemplate {
  const literals: string[] = [];
  const slots: Slot[] = [];
  let last = 0;
  let literal = '';
  for (const match of text.matchAll(PLACEHOLDER)) {
    literal += text.slice(last, match.index);
    last = match.index + match[0].length;
    const name = match[1] as string;
    const filter = match[2];
    if (filter !== undefined && !FILTERS.has(filter)) {
      throw configError(
        where,
        `${match[0]}: unknown filter |${filter} (known: |major, |lower, |upper, |number, |string)`,
      );
    }
    if (allowed && !allowed(name)) {
      throw configError(
        where,
        `${match[0]}: a header may read only {{idempotency_key}}, {{amount}}, {{currency}} and {{vars.NAME}}`,
      );
    }
    if (name.startsWith('vars.')) {
      const value = vars[name.slice(5)];
      if (value === undefined)
        throw configError(where, `${match[0]}: vars.${name.slice(5)} is not defined`);
      if (filter === 'major') throw configError(where, `${match[0]}: |major reads an amount`);
      const constant = applyConstantFilter(value, filter as Filter | undefined);
      literals.push(literal);
      literal = '';
      slots.push({
        value: () => constant as string | number,
        numeric: typeof constant === 'number',
      });
      continue;
    }
    literals.push(literal);
    literal = '';
    slots.push(slotFor(name, filter as Filter | undefined, where, match[0], reads));
  }
  literals.push(literal + text.slice(last));
  if (literals.some((part) => part.includes('{{'))) {
    throw configError(
      where,
      `${JSON.stringify(text)}: a "{{" does not open a placeholder such as {{user_id}}`,
    );
  }
  return { literals, slots };
}

function applyConstantFilter(
  value: string | number | boolean,
  filter: Filter | undefined,
): string | number | boolean {
  switch (filter) {
    case 'lower':
      return String(value).toLowerCase();
    case 'upper':
      return String(value).toUpperCase();
    case 'string':
      return String(value);
    case 'number': {
      const number = Number(value);
      if (!Number.isFinite(number)) throw new TypeError(`${value} is not a number`);
      return number;
    }
    default:
      return value;
  }
}

function slotFor(
  name: string,
  filter: Filter | undefined,
  where: string,
  written: string,
  reads: Reads,
): Slot {
  const wrong = (what: string) => configError(where, `${written}: ${what}`);
  switch (name) {
    case 'amount':
      if (filter === 'major') {
        reads.major = true;
        return { value: (charge) => toMajorUnits(charge.amount, charge.currency), numeric: false };
      }
      if (filter === 'string') return { value: (charge) => String(charge.amount), numeric: false };
      if (filter === undefined || filter === 'number')
        return { value: (charge) => charge.amount, numeric: true };
      throw wrong(`|${filter} does not apply to an amount (use |major, |number or |string)`);
    case 'currency':
      if (filter === 'lower')
        return { value: (charge) => charge.currency.toLowerCase(), numeric: false };
      if (filter === undefined || filter === 'upper' || filter === 'string') {
        return { value: (charge) => charge.currency, numeric: false };
      }
      throw wrong(`|${filter} does not apply to a currency (use |lower or |upper)`);
    case 'user_id':
    case 'idempotency_key': {
      if (filter === 'major' || filter === 'number')
        throw wrong(`|${filter} does not apply to ${name}`);
      if (name === 'idempotency_key') reads.key = true;
      const read: Value = name === 'user_id' ? (charge) => charge.userId : (_charge, key) => key;
      if (filter === 'lower')
        return { value: (charge, key) => String(read(charge, key)).toLowerCase(), numeric: false };
      if (filter === 'upper')
        return { value: (charge, key) => String(read(charge, key)).toUpperCase(), numeric: false };
      return { value: read, numeric: false };
    }
    default: {
      if (BUILT_INS.has(name)) throw wrong('unknown placeholder');
      if (filter === 'major') throw wrong('|major reads {{amount}}');
      reads.columns.add(name);
      const column = (charge: TemplateCharge): string => {
        const metadata = charge.metadata;
        const value =
          metadata !== undefined && Object.hasOwn(metadata, name) ? metadata[name] : undefined;
        if (value === undefined || value.length === 0) {
          throw new TemplateRenderError(
            `the provider template reads the column ${JSON.stringify(name)}, which user ${JSON.stringify(charge.userId)}'s row does not have`,
          );
        }
        return value;
      };
      if (filter === 'number') {
        reads.numberColumns.add(name);
        return { value: (charge) => Number(column(charge)), numeric: true };
      }
      if (filter === 'lower')
        return { value: (charge) => column(charge).toLowerCase(), numeric: false };
      if (filter === 'upper')
        return { value: (charge) => column(charge).toUpperCase(), numeric: false };
      return { value: column, numeric: false };
    }
  }
}

function renderString(
  template: StringTemplate,
  charge: TemplateCharge,
  key: string,
  encode: (text: string) => string,
): string {
  const { literals, slots } = template;
  let text = literals[0] as string;
  for (let index = 0; index < slots.length; index++) {
    text +=
      encode(String((slots[index] as Slot).value(charge, key))) + (literals[index + 1] as string);
  }
  return text;
}

type CompileString = (text: string, where: string) => StringTemplate;

/**
 * A JSON template as alternating literal JSON text and slots. A string that is one placeholder
 * renders the slot's typed value; a string with text around its placeholders renders a string.
 */
function compileJson(
  value: TemplateValue,
  where: string,
  compileString: CompileString,
  literalAt: (where: string) => boolean = () => false,
): (charge: TemplateCharge, key: string) => string {
  const literals: string[] = [''];
  const slots: ((charge: TemplateCharge, key: string) => string)[] = [];
  const emit = (text: string) => {
    literals[literals.length - 1] += text;
  };
  const slot = (render: (charge: TemplateCharge, key: string) => string) => {
    slots.push(render);
    literals.push('');
  };
  const walk = (node: TemplateValue, at: string) => {
    if (typeof node === 'string') {
      if (literalAt(at)) {
        emit(JSON.stringify(node));
        return;
      }
      const template = compileString(node, at);
      if (template.slots.length === 0) {
        emit(JSON.stringify(template.literals[0]));
      } else if (
        template.slots.length === 1 &&
        template.literals[0] === '' &&
        template.literals[1] === ''
      ) {
        const only = template.slots[0] as Slot;
        slot(
          only.numeric
            ? (charge, key) => jsonNumber(only.value(charge, key), at)
            : (charge, key) => JSON.stringify(String(only.value(charge, key))),
        );
      } else {
        slot((charge, key) => JSON.stringify(renderString(template, charge, key, encodeNothing)));
      }
    } else if (node === null || typeof node !== 'object') {
      emit(JSON.stringify(node));
    } else if (Array.isArray(node)) {
      emit('[');
      node.forEach((item, index) => {
        if (index > 0) emit(',');
        walk(item, `${at}[${index}]`);
      });
      emit(']');
    } else {
      emit('{');
      Object.entries(node).forEach(([name, item], index) => {
        if (index > 0) emit(',');
        emit(`${JSON.stringify(name)}:`);
        walk(item, `${at}.${name}`);
      });
      emit('}');
    }
  };
  walk(value, where);
  if (slots.length === 0) {
    const fixed = literals[0] as string;
    return () => fixed;
  }
  return (charge, key) => {
    let text = literals[0] as string;
    for (let index = 0; index < slots.length; index++) {
      text +=
        (slots[index] as (charge: TemplateCharge, key: string) => string)(charge, key) +
        (literals[index + 1] as string);
    }
    return text;
  };
}

function jsonNumber(value: string | number, where: string): string {
  const number = typeof value === 'number' ? value : Number(value);
  if (!Number.isFinite(number))
    throw new TemplateRenderError(`${where}: ${String(value)} is not a number`);
  return String(number);
}

/** `application/x-www-form-urlencoded` as a browser writes it: UTF-8, spaces as `+`. */
export function formEncode(text: string): string {
  const encoded = encodeURIComponent(text);
  return encoded.includes('%20') ? encoded.replaceAll('%20', '+') : encoded;
}

/**
 * A form template: nested objects become bracketed keys (`metadata[user_id]`), arrays indexed
 * ones (`items[0][price]`); keys are encoded once, values per attempt.
 */
function compileForm(
  form: Readonly<Record<string, TemplateValue>>,
  compileString: CompileString,
): (charge: TemplateCharge, key: string) => string {
  const pairs: { prefix: string; value: StringTemplate }[] = [];
  const walk = (node: TemplateValue, key: string, where: string) => {
    if (node !== null && typeof node === 'object') {
      const entries = Array.isArray(node)
        ? node.map((item, index) => [String(index), item] as const)
        : Object.entries(node);
      for (const [name, item] of entries) walk(item, `${key}[${name}]`, `${where}.${name}`);
      return;
    }
    let value: StringTemplate =
      typeof node === 'string'
        ? compileString(node, where)
        : { literals: [node === null ? '' : String(node)], slots: [] };
    // Literal text is encoded here, once; slot values per attempt.
    value = { literals: value.literals.map(formEncode), slots: value.slots };
    pairs.push({ prefix: `${pairs.length === 0 ? '' : '&'}${formEncode(key)}=`, value });
  };
  for (const [name, item] of Object.entries(form)) walk(item, name, `request.body.form.${name}`);
  return (charge, key) => {
    let text = '';
    for (const pair of pairs)
      text += pair.prefix + renderString(pair.value, charge, key, formEncode);
    return text;
  };
}
