// biome-ignore-all lint/suspicious/noTemplateCurlyInString: ${NAME} in a plain string is the header template syntax under test.
import { describe, expect, it } from 'vitest';
import { BulkbillError, ErrorCode, UsageError } from '../../src/domain/errors.js';
import {
  describeHeaders,
  maskSecrets,
  parseHeaderFlag,
  parseHeaderFlags,
  REDACTED,
  resolveHeaders,
  secretFragments,
} from '../../src/provider/header-template.js';

const SECRET = 'sk_live_abc123';

function thrown(run: () => unknown): Error {
  try {
    run();
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected a throw');
}

describe('parseHeaderFlag', () => {
  it('splits "Name: value", trimming the spaces around the value', () => {
    expect(parseHeaderFlag('X-Team: billing')).toEqual({
      name: 'X-Team',
      value: 'billing',
      variables: [],
      sensitive: false,
    });
    expect(parseHeaderFlag('X-Team:billing ')).toMatchObject({ value: 'billing' });
    expect(parseHeaderFlag('X-Time: 12:30')).toMatchObject({ name: 'X-Time', value: '12:30' });
  });

  it('finds ${NAME} references, each once', () => {
    expect(parseHeaderFlag('Authorization: Bearer ${BILLING_TOKEN}')).toEqual({
      name: 'Authorization',
      value: 'Bearer ${BILLING_TOKEN}',
      variables: ['BILLING_TOKEN'],
      sensitive: true,
    });
    expect(parseHeaderFlag('X-Pair: ${A}-${_b2}-${A}')).toMatchObject({ variables: ['A', '_b2'] });
    expect(parseHeaderFlag('X-Price: $5 or $A')).toMatchObject({ variables: [] });
  });

  it('marks secret-looking names sensitive even without variables', () => {
    for (const name of [
      'Authorization',
      'Proxy-Authorization',
      'X-Api-Key',
      'X-Auth-Token',
      'Cookie',
      'X-Client-Secret',
      'X-Session',
      'X-Signature',
    ]) {
      expect(parseHeaderFlag(`${name}: literal`).sensitive).toBe(true);
    }
    expect(parseHeaderFlag('X-Team: billing').sensitive).toBe(false);
  });

  it('names the header, never the value, on bad syntax', () => {
    const noColon = thrown(() => parseHeaderFlag(`Authorization Bearer ${SECRET}`));
    expect(noColon).toBeInstanceOf(UsageError);
    expect(noColon.message).toBe(
      '--header "Authorization…": expected "Name: value", with ":" directly after the header name',
    );
    const spaceBeforeColon = thrown(() => parseHeaderFlag(`Authorization : ${SECRET}`));
    expect(spaceBeforeColon.message).toContain('"Authorization…"');
    const basicAuth = thrown(() => parseHeaderFlag(`Authorization Basic user:${SECRET}`));
    expect(basicAuth.message).toContain('"Authorization…"');
    for (const error of [noColon, spaceBeforeColon, basicAuth]) {
      expect(error.message).not.toContain(SECRET);
    }
    expect(thrown(() => parseHeaderFlag(': value')).message).toBe(
      '--header: expected "Name: value", but no header name starts it',
    );
    expect(thrown(() => parseHeaderFlag('')).message).toContain('no header name');
  });

  it('refuses empty values, control characters and broken references', () => {
    expect(thrown(() => parseHeaderFlag('X-Team:   ')).message).toBe(
      '--header "X-Team": the value is empty',
    );
    const control = thrown(() => parseHeaderFlag(`X-Key: ${SECRET}\r\nX-Evil: 1`));
    expect(control.message).toBe(
      '--header "X-Key": the value may hold only printable ASCII characters and tabs',
    );
    expect(thrown(() => parseHeaderFlag('X-Team: café')).message).toContain('printable ASCII');
    expect(thrown(() => parseHeaderFlag('X-A: ${1BAD}')).message).toContain(
      'must hold an environment variable name',
    );
    expect(thrown(() => parseHeaderFlag('X-A: ${}')).message).toContain('variable name');
    expect(thrown(() => parseHeaderFlag('X-A: Bearer ${TOKEN')).message).toBe(
      '--header "X-A": a "${" is not closed by "}"',
    );
  });

  it('uses the label it is given', () => {
    expect(thrown(() => parseHeaderFlag('nope', 'headers[0]')).message).toMatch(/^headers\[0\] /);
  });
});

describe('parseHeaderFlags', () => {
  it('parses every flag', () => {
    expect(parseHeaderFlags(['A: 1', 'B: 2']).map((header) => header.name)).toEqual(['A', 'B']);
    expect(parseHeaderFlags([])).toEqual([]);
  });

  it('refuses a header given twice, whatever its case', () => {
    expect(thrown(() => parseHeaderFlags(['X-Team: a', 'x-team: b'])).message).toBe(
      '--header "x-team": given more than once',
    );
  });

  it('refuses headers bulkbill sets itself', () => {
    for (const name of ['Idempotency-Key', 'content-type', 'Content-Length', 'Host']) {
      expect(thrown(() => parseHeaderFlags([`${name}: x`])).message).toBe(
        `--header "${name}": bulkbill sets this header itself`,
      );
    }
  });

  it('refuses a credential written literally: it is read only from the environment', () => {
    const bearer = thrown(() => parseHeaderFlags([`Authorization: Bearer ${SECRET}`]));
    expect(bearer).toBeInstanceOf(UsageError);
    expect(bearer.message).toBe(
      '--header "Authorization": a credential is read only from the environment: write its value with ${NAME}, e.g. "Authorization: Bearer ${BILLING_TOKEN}", and set NAME',
    );
    const key = thrown(() => parseHeaderFlags([`X-Api-Key: ${SECRET}`], 'headers'));
    expect(key.message).toMatch(/^headers "X-Api-Key": a credential is read only/);
    expect(key.message).toContain('"X-Api-Key: ${BILLING_TOKEN}"');
    expect(key.message).not.toContain(SECRET);
    // A header that reads the environment, or is no credential, is taken as it is.
    expect(parseHeaderFlags(['X-Api-Key: ${KEY}', 'X-Team: ops'])).toHaveLength(2);
  });
});

describe('resolveHeaders', () => {
  it('reads ${NAME} from the environment it is given', () => {
    const templates = parseHeaderFlags([
      'Authorization: Bearer ${BILLING_TOKEN}',
      'X-Pair: ${A}/${B}/${A}',
      'X-Team: billing',
    ]);
    expect(resolveHeaders(templates, { BILLING_TOKEN: SECRET, A: 'a', B: 'b' })).toEqual([
      { name: 'Authorization', value: `Bearer ${SECRET}`, sensitive: true },
      { name: 'X-Pair', value: 'a/b/a', sensitive: true },
      { name: 'X-Team', value: 'billing', sensitive: false },
    ]);
  });

  it('does not expand what a variable holds', () => {
    const templates = parseHeaderFlags(['X-A: ${A}']);
    expect(resolveHeaders(templates, { A: '${B}', B: 'no' })[0]?.value).toBe('${B}');
  });

  it('names the header and the variable when one is missing or empty, never a value', () => {
    const templates = parseHeaderFlags(['Authorization: Bearer ${BILLING_TOKEN}']);
    const missing = thrown(() => resolveHeaders(templates, { OTHER: SECRET }));
    expect(missing).toBeInstanceOf(BulkbillError);
    expect((missing as BulkbillError).code).toBe(ErrorCode.Config);
    expect(missing.message).toBe(
      'header "Authorization" reads ${BILLING_TOKEN}, which is not set in the environment',
    );
    expect(thrown(() => resolveHeaders(templates, { BILLING_TOKEN: '' })).message).toBe(
      'header "Authorization" reads ${BILLING_TOKEN}, which is empty in the environment',
    );
  });

  it('refuses a variable holding a line break or surrounding spaces, without showing it', () => {
    const templates = parseHeaderFlags(['Authorization: Bearer ${BILLING_TOKEN}']);
    for (const bad of [`${SECRET}\n`, `${SECRET}\r\nX-Evil: 1`, ` ${SECRET}`, `${SECRET}é`]) {
      const error = thrown(() => resolveHeaders(templates, { BILLING_TOKEN: bad }));
      expect((error as BulkbillError).code).toBe(ErrorCode.Config);
      expect(error.message).toContain('header "Authorization" reads ${BILLING_TOKEN}');
      expect(error.message).not.toContain(SECRET);
    }
  });
});

describe('describeHeaders', () => {
  it('redacts sensitive values, in templates and in resolved headers alike', () => {
    const templates = [
      ...parseHeaderFlags(['Authorization: Bearer ${BILLING_TOKEN}']),
      // One header at a time, a secret-looking name with a literal value is still redacted.
      parseHeaderFlag(`X-Api-Key: ${SECRET}`),
      ...parseHeaderFlags(['X-Tenant: ${TENANT}', 'X-Team: billing']),
    ];
    const expected = {
      Authorization: REDACTED,
      'X-Api-Key': REDACTED,
      'X-Tenant': REDACTED,
      'X-Team': 'billing',
    };
    expect(describeHeaders(templates)).toEqual(expected);
    const resolved = resolveHeaders(templates, { BILLING_TOKEN: SECRET, TENANT: 'acme' });
    expect(describeHeaders(resolved)).toEqual(expected);
    expect(JSON.stringify(describeHeaders(resolved))).not.toContain(SECRET);
    expect(REDACTED).toBe('[redacted]');
  });
});

describe('secretFragments and maskSecrets', () => {
  const basic = Buffer.from(`public_id:${SECRET}`).toString('base64');
  const headers = [
    { name: 'Authorization', value: `Bearer ${SECRET}`, sensitive: true },
    { name: 'X-Basic', value: `Basic ${basic}`, sensitive: true },
    { name: 'X-Token', value: 'Token token=tok_9f8e7d6c5b', sensitive: true },
    { name: 'X-Team', value: 'billing-operations', sensitive: false },
  ];

  it('masks what a provider could echo: the value, the token after its scheme, a Basic pair', () => {
    const fragments = secretFragments(headers);
    const echoed = [
      `you sent "Bearer ${SECRET}"`,
      `key ${SECRET} is not allowed`,
      `basic ${basic}, that is public_id:${SECRET}`,
      'token tok_9f8e7d6c5b expired',
    ].join(' | ');
    const masked = maskSecrets(echoed, fragments);
    expect(masked).toBe(
      `you sent "${REDACTED}" | key ${REDACTED} is not allowed | basic ${REDACTED}, that is ${REDACTED} | token ${REDACTED} expired`,
    );
    expect(masked).not.toContain(SECRET);
  });

  it('leaves what is no secret alone: schemes, short words, headers that are not sensitive', () => {
    const fragments = secretFragments(headers);
    expect(fragments).not.toContain('Bearer');
    expect(fragments).not.toContain('billing-operations');
    expect(maskSecrets('Bearer token expired for billing-operations', fragments)).toBe(
      'Bearer token expired for billing-operations',
    );
    expect(secretFragments([{ name: 'X-Team', value: 'ops', sensitive: false }])).toEqual([]);
  });
});
