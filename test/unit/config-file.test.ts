import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  configJsonSchema,
  loadConfig,
  mergeConfig,
  parseConfig,
} from '../../src/config/config-file.js';
import { providerSchema } from '../../src/provider/description.js';
import { compileRequest } from '../../src/provider/template.js';
import { repoRoot } from '../helpers/cli.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bulkbill-config-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const FILE = '/etc/bulkbill/bulkbill.config.json';

describe('config file', () => {
  it('reads JSON with comments and trailing commas; normalizes durations, paths and headers', () => {
    const values = parseConfig(
      `{
        // the endpoint
        "endpoint": "https://billing.example.com/v1/charges", /* inline */
        "timeout": "2.5s",
        "keyRetention": 3600000,
        "ledger": "data/bulkbill.db",
        "headers": ["Authorization: Bearer \${TOKEN}"],
      }`,
      FILE,
    );
    expect(values).toEqual({
      endpoint: 'https://billing.example.com/v1/charges',
      timeout: 2_500,
      keyRetention: 3_600_000,
      ledger: '/etc/bulkbill/data/bulkbill.db',
      header: ['Authorization: Bearer ${TOKEN}'],
    });
  });

  it('takes "auto", its bounds and a deadline, as the flags do', () => {
    const values = parseConfig(
      '{ "concurrency": "auto", "minConcurrency": 2, "maxConcurrency": 400, "deadline": "2026-12-04T09:00:00+01:00", "outageWait": "10m" }',
      FILE,
    );
    expect(values).toEqual({
      concurrency: 'auto',
      minConcurrency: 2,
      maxConcurrency: 400,
      deadline: '2026-12-04T09:00:00+01:00',
      outageWait: 600_000,
    });
    expect(() => parseConfig('{ "concurrency": "lots" }', FILE)).toThrow(/: concurrency: /);
  });

  it.each([
    ['{ "concurrency": 8 "rate": 1 }', /bulkbill\.config\.json: line 1, column 20: comma expected/],
    ['{\n  "concurency": 8\n}', /: \(the file\): Unrecognized key: "concurency"/],
    ['{ "concurrency": 0 }', /: concurrency: Too small: expected number to be >=1, got 0/],
    ['{ "timeout": "soon" }', /: timeout: expected a duration such as 250ms/],
    [
      '{ "provider": { "response": { "rules": [{ "status": "2xy", "outcome": "charged" }] } } }',
      /: provider\.response\.rules\[0\]\.status: .*got "2xy"/,
    ],
    ['{ "provider": {}, "adapter": "./a.mjs" }', /adapter and provider: give one/],
    ['[1, 2]', /expected a JSON object/],
  ])('%s fails naming the file, and the place or the key path', (text, message) => {
    expect(() => parseConfig(text, FILE)).toThrow(message);
  });

  it('is optional in the working directory, required where --config names it', async () => {
    expect(await loadConfig(undefined, dir)).toEqual({ file: undefined, values: {} });
    await expect(loadConfig('missing.json', dir)).rejects.toThrow(
      /--config: cannot read .*missing\.json: no such file/,
    );
    await writeFile(join(dir, 'bulkbill.config.json'), '{ "concurrency": 12 }');
    expect((await loadConfig(undefined, dir)).values).toEqual({ concurrency: 12 });
  });

  it('a flag given on the command line wins; the file wins over a default; headers merge by name', () => {
    const config = {
      file: FILE,
      values: {
        concurrency: 12,
        ledger: '/srv/b.db',
        header: ['Authorization: Bearer ${TOKEN}', 'X-Team: billing'],
        provider: { request: { url: '/v1/x' } },
        redis: 'redis://r:6379',
      },
    };
    const sources: Record<string, string> = {
      concurrency: 'cli',
      ledger: 'default',
      header: 'cli',
    };
    const merged = mergeConfig(
      { concurrency: 500, ledger: 'bulkbill.db', header: ['x-team: ops'] },
      config,
      (name) => sources[name],
      ['concurrency', 'ledger', 'header', 'provider'],
    );
    expect(merged).toEqual({
      concurrency: 500,
      ledger: '/srv/b.db',
      header: ['Authorization: Bearer ${TOKEN}', 'x-team: ops'],
      provider: { request: { url: '/v1/x' } },
    });
  });

  it('has a JSON Schema for editors, made from the same schema', () => {
    const schema = configJsonSchema() as {
      properties: Record<string, unknown>;
      additionalProperties: unknown;
    };
    expect(Object.keys(schema.properties)).toEqual(
      expect.arrayContaining([
        'endpoint',
        'provider',
        'headers',
        'concurrency',
        'timeout',
        'redis',
        'adapter',
      ]),
    );
    expect(schema.additionalProperties).toBe(false);
    expect(JSON.stringify(schema)).toContain('in_progress');
  });
});

describe('shipped provider profiles', () => {
  it('every one is a valid config whose request compiles', async () => {
    const folder = join(repoRoot, 'examples', 'providers');
    const names = (await readdir(folder)).filter((name) => name.endsWith('.jsonc'));
    expect(names.sort()).toEqual(
      ['adyen', 'braintree', 'checkout', 'default', 'gocardless', 'square', 'stripe'].map(
        (name) => `${name}.jsonc`,
      ),
    );
    for (const name of names) {
      const file = join(folder, name);
      const values = parseConfig(await readFile(file, 'utf8'), file);
      expect(values.endpoint, name).toMatch(/^https?:\/\//);
      const request = compileRequest(
        providerSchema.parse(values.provider ?? {}),
        values.endpoint as string,
      );
      expect(request.origin, name).toMatch(/^https?:\/\//);
    }
  });
});
