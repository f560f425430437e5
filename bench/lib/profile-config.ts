import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseConfig } from '../../src/config/config-file.js';
import { REPO_ROOT } from './server-process.js';

/**
 * Writes examples/providers/<name>.jsonc, read with parseConfig as the CLI reads a config file,
 * as a config file for this run: its endpoint the mock's URL; without `rate` and `concurrency`
 * (the bench gives --concurrency, and Stripe's 80/s would be the whole measure); without the
 * headers that read a credential from the environment (`${NAME}`), the mock running without an
 * API key, so that what differs from the default shape is the provider description.
 */
export async function writeProfileConfig(
  name: string,
  mockUrl: string,
  workDir: string,
): Promise<{ path: string; dropped: string[] }> {
  const file = join(REPO_ROOT, 'examples', 'providers', `${name}.jsonc`);
  const values = parseConfig(await readFile(file, 'utf8'), file);
  const { endpoint: _endpoint, rate: _rate, concurrency: _concurrency, header, ...rest } = values;
  const headers = (header as readonly string[] | undefined) ?? [];
  const readsEnv = (text: string) => text.includes('${');
  const kept = headers.filter((text) => !readsEnv(text));
  const dropped = headers.filter(readsEnv).map((text) => text.slice(0, text.indexOf(':')).trim());
  const config = { ...rest, endpoint: mockUrl, ...(kept.length > 0 ? { headers: kept } : {}) };
  const path = await writeConfig(config, join(workDir, `${name}.config.json`));
  return { path, dropped };
}

export async function writeConfig(config: Record<string, unknown>, path: string): Promise<string> {
  const text = `${JSON.stringify(config, null, 2)}\n`;
  // Still a valid config file: the engine would refuse it otherwise, after the mock started.
  parseConfig(text, path);
  await writeFile(path, text);
  return path;
}
