import { readFile, writeFile } from 'node:fs/promises';
import { dirname, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BulkbillError, ErrorCode } from '../domain/errors.js';
import { ExitStatus } from './exit-codes.js';

export interface InitFlags {
  provider: string;
  out: string;
  force?: boolean;
}

// The shipped profiles and schema, from src/cli (tsx) and from dist/cli (the build) alike.
const PROFILES = new URL('../../examples/providers/', import.meta.url);
const SCHEMA = fileURLToPath(new URL('../../dist/bulkbill.config.schema.json', import.meta.url));

/** `bulkbill init`: copies a provider profile as the config file, its `$schema` pointed home. */
export async function initCommand(flags: InitFlags): Promise<number> {
  const out = resolve(flags.out);
  const profile = fileURLToPath(new URL(`${flags.provider}.jsonc`, PROFILES));
  const text = await readFile(profile, 'utf8');
  let schema = relative(dirname(out), SCHEMA).split(sep).join('/');
  if (!schema.startsWith('.')) schema = `./${schema}`;
  const written = text.replace(/"\$schema": "[^"]*"/, `"$schema": ${JSON.stringify(schema)}`);
  try {
    await writeFile(out, written, { flag: flags.force ? 'w' : 'wx' });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new BulkbillError(ErrorCode.Usage, `${flags.out} exists; --force overwrites it`);
    }
    throw error;
  }
  process.stderr.write(
    `bulkbill: wrote ${flags.out} from the ${flags.provider} profile: set its endpoint and the environment variables its headers read, then try: bulkbill run <input> --dry-run\n`,
  );
  return ExitStatus.Ok;
}
