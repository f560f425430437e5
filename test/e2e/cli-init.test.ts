import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/config-file.js';
import { runCli } from '../helpers/cli.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bulkbill-init-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('bulkbill init', () => {
  it('writes a commented config for the provider chosen, its $schema pointing at the shipped schema', async () => {
    const out = join(dir, 'bulkbill.config.json');
    const written = await runCli(['init', '--provider', 'adyen', '--out', out]);
    expect(written.code, written.stderr).toBe(0);
    const text = await readFile(out, 'utf8');
    expect(text).toContain('// Adyen Checkout API v71');
    expect(text).toMatch(/"\$schema": "(\.\.\/)+.*dist\/bulkbill\.config\.schema\.json"/);
    const values = parseConfig(text, out);
    expect(values.endpoint).toBe('https://checkout-test.adyen.com');
    expect(values.provider).toMatchObject({ idempotency: { maxLength: 64 } });
  });

  it('never overwrites a config without --force', async () => {
    const out = join(dir, 'mine.json');
    await writeFile(out, '{ "concurrency": 3 }');
    const refused = await runCli(['init', '--out', out]);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('exists; --force overwrites it');
    expect(await readFile(out, 'utf8')).toBe('{ "concurrency": 3 }');
    const forced = await runCli(['init', '--out', out, '--force']);
    expect(forced.code, forced.stderr).toBe(0);
    expect(parseConfig(await readFile(out, 'utf8'), out).endpoint).toBe(
      'http://127.0.0.1:4010/charge',
    );
  });

  it('prints the JSON Schema', async () => {
    const printed = await runCli(['config-schema']);
    expect(printed.code).toBe(0);
    expect(JSON.parse(printed.stdout)).toMatchObject({
      type: 'object',
      title: 'bulkbill config file',
    });
  });
});
