import { readFile } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { type ParseError, parse, printParseErrorCode } from 'jsonc-parser';
import { z } from 'zod';
import { parseDuration } from '../domain/duration.js';
import { BulkbillError, describeValue, ErrorCode } from '../domain/errors.js';
import { providerSchema } from '../provider/description.js';
import { parseHeaderFlags } from '../provider/header-template.js';

/**
 * The config file: every option a command takes that belongs to a deployment rather than to
 * one invocation (endpoint, provider description, headers, limits, ledger, Redis), as JSON with
 * comments. `bulkbill.config.json` in the working directory is read when it exists, or the file
 * `--config` names; a flag given on the command line wins over the file. Validated once:
 * schema (zod) → normalize (durations to ms, paths against the file's folder) → rules.
 */

/** The file read when no --config is given, in the working directory. */
export const CONFIG_FILE_NAME = 'bulkbill.config.json';

const duration = z.union([
  z.number().finite().min(0),
  z.string().min(1).describe('a duration such as 250ms, 1.6s, 2m or 24h'),
]);

export const configSchema = z
  .object({
    $schema: z.string().describe('Where editors find this schema.').optional(),
    endpoint: z
      .string()
      .min(1)
      .describe('Where charges are sent, or what a relative provider.request.url resolves against.')
      .optional(),
    provider: providerSchema
      .describe('How to speak to the billing API: request template, idempotency, response rules.')
      .optional(),
    adapter: z
      .string()
      .min(1)
      .describe(
        'A module that sends charges itself (`charge(charge, ctx)`), instead of a request template.',
      )
      .optional(),
    headers: z
      .array(z.string().min(1))
      // biome-ignore lint/suspicious/noTemplateCurlyInString: the text names a literal ${NAME}.
      .describe('Extra request headers, `Name: value`; `${NAME}` is read from the environment.')
      .optional(),
    concurrency: z
      .union([z.number().int().min(1).max(100_000), z.literal('auto')])
      .describe(
        'Most requests in flight (a worker: jobs it runs at once), or "auto" (`run` on the local engine): found from what the provider answers.',
      )
      .optional(),
    minConcurrency: z
      .number()
      .int()
      .min(1)
      .describe('The lowest limit of "auto" and of `deadline`.')
      .optional(),
    maxConcurrency: z
      .number()
      .int()
      .min(1)
      .describe('The highest limit of "auto" and of `deadline`.')
      .optional(),
    deadline: z
      .string()
      .min(1)
      .describe(
        "Finish by then, at the fewest requests in flight that do: a time with date and offset (a duration counts from each command's start).",
      )
      .optional(),
    rate: z.number().finite().positive().describe('Most requests per second.').optional(),
    timeout: duration.describe('Deadline of one request.').optional(),
    outageWait: duration
      .describe(
        'How long the circuit breaker waits for a provider that is down before the run (a worker) stops, charges left pending; 0 turns it off.',
      )
      .optional(),
    maxAttempts: z
      .number()
      .int()
      .min(1)
      .max(100)
      .describe('Attempts per charge, over every crash and resume.')
      .optional(),
    keyRetention: duration.describe('How long the provider keeps idempotency keys.').optional(),
    ledger: z.string().min(1).describe('The SQLite ledger file, relative to this file.').optional(),
    ca: z
      .string()
      .min(1)
      .describe(
        "PEM file of the CA certificates that sign the provider's TLS certificate (a private CA), relative to this file; trusted besides the usual ones.",
      )
      .optional(),
    redis: z.string().min(1).describe('Redis, for the distributed engine.').optional(),
    queue: z.string().min(1).optional(),
    prefix: z.string().min(1).optional(),
    globalConcurrency: z
      .number()
      .int()
      .min(0)
      .describe('Most jobs in flight across every worker of the queue.')
      .optional(),
    lockDuration: duration
      .describe("A dead worker's jobs are taken over within one to two of these.")
      .optional(),
    skipInvalid: z
      .boolean()
      .describe('Record invalid rows as invalid and bill the rest.')
      .optional(),
  })
  .strict();

export type ConfigFileInput = z.input<typeof configSchema>;

/** A config file, normalized: durations in ms, paths absolute; `file` is where it came from. */
export interface ConfigFile {
  readonly file: string | undefined;
  readonly values: Readonly<Record<string, unknown>>;
}

/** The JSON Schema of the config file, for editors (`"$schema"`), from the same zod schema. */
export function configJsonSchema(): Record<string, unknown> {
  return {
    ...z.toJSONSchema(configSchema, { io: 'input', unrepresentable: 'any' }),
    title: 'bulkbill config file',
  };
}

/**
 * Reads the config file: `path` when given (it must exist), else bulkbill.config.json in `cwd`
 * when there is one, else none. Errors name the file, the line and column of a syntax error, or
 * the key path and the value received.
 */
export async function loadConfig(path: string | undefined, cwd: string): Promise<ConfigFile> {
  const file = resolve(cwd, path ?? CONFIG_FILE_NAME);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (path === undefined && code === 'ENOENT') return { file: undefined, values: {} };
    throw new BulkbillError(
      ErrorCode.Usage,
      `--config: cannot read ${file}: ${code === 'ENOENT' ? 'no such file' : (error as Error).message}`,
    );
  }
  return { file, values: parseConfig(text, file) };
}

/** Parses and checks a config file's text; `file` names it in errors and anchors its paths. */
export function parseConfig(text: string, file: string): Record<string, unknown> {
  const errors: ParseError[] = [];
  const data: unknown = parse(text, errors, { allowTrailingComma: true, disallowComments: false });
  if (errors.length > 0) {
    const first = errors[0] as ParseError;
    const { line, column } = position(text, first.offset);
    throw configError(
      file,
      `line ${line}, column ${column}: ${syntaxWords(printParseErrorCode(first.error))}`,
    );
  }
  if (typeof data !== 'object' || data === null || Array.isArray(data)) {
    throw configError(file, `expected a JSON object, got ${describeValue(data)}`);
  }
  const parsed = configSchema.safeParse(data);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const path = issue?.path ?? [];
    throw configError(
      file,
      `${keyPath(path)}: ${issue?.message ?? 'invalid'}, got ${describeValue(valueAt(data, path))}`,
    );
  }
  return normalize(parsed.data, file);
}

function normalize(config: z.output<typeof configSchema>, file: string): Record<string, unknown> {
  const { $schema: _schema, ...values } = config;
  const out: Record<string, unknown> = { ...values };
  for (const key of ['timeout', 'keyRetention', 'lockDuration', 'outageWait'] as const) {
    const value = values[key];
    if (typeof value === 'string') {
      try {
        out[key] = parseDuration(value, key);
      } catch (error) {
        throw configError(file, (error as Error).message);
      }
    }
  }
  const folder = dirname(file);
  for (const key of ['ledger', 'adapter', 'ca'] as const) {
    const value = values[key];
    if (typeof value === 'string' && !isAbsolute(value)) out[key] = resolve(folder, value);
  }
  if (values.headers !== undefined) {
    try {
      // Checked here too, so a bad header (a literal credential) names this file.
      parseHeaderFlags(values.headers, 'headers');
    } catch (error) {
      throw configError(file, (error as Error).message);
    }
    out.header = values.headers;
    delete out.headers;
  }
  // Rules across keys.
  if (values.adapter !== undefined && values.provider !== undefined) {
    throw configError(
      file,
      'adapter and provider: give one (an adapter sends charges itself; it reads no request template)',
    );
  }
  return out;
}

/**
 * The options of one command: what was given on the command line wins, then the config file,
 * then the command's defaults. `sourceOf(name)` is commander's getOptionValueSource.
 */
export function mergeConfig<Flags extends object>(
  flags: Flags,
  config: ConfigFile,
  sourceOf: (name: string) => string | undefined,
  accepted: readonly string[],
): Flags & { provider?: unknown; adapter?: string } {
  const merged: Record<string, unknown> = { ...(flags as Record<string, unknown>) };
  for (const [key, value] of Object.entries(config.values)) {
    if (!accepted.includes(key)) continue;
    const source = sourceOf(key);
    if (key === 'header' && Array.isArray(merged.header)) {
      // Headers merge by name: a --header replaces the file's header of that name only.
      const given = merged.header as string[];
      const names = new Set(given.map(headerName));
      merged.header = [
        ...(value as string[]).filter((text) => !names.has(headerName(text))),
        ...given,
      ];
      continue;
    }
    if (source === 'cli' || source === 'env') continue;
    merged[key] = value;
  }
  return merged as Flags & { provider?: unknown; adapter?: string };
}

function headerName(text: string): string {
  return text
    .slice(0, Math.max(0, text.indexOf(':')))
    .trim()
    .toLowerCase();
}

function configError(file: string, message: string): BulkbillError {
  return new BulkbillError(ErrorCode.Usage, `${file}: ${message}`);
}

function keyPath(path: readonly PropertyKey[]): string {
  if (path.length === 0) return '(the file)';
  return path
    .map((step, index) =>
      typeof step === 'number' ? `[${step}]` : `${index === 0 ? '' : '.'}${String(step)}`,
    )
    .join('');
}

function valueAt(data: unknown, path: readonly PropertyKey[]): unknown {
  let at = data;
  for (const step of path) {
    at =
      typeof at === 'object' && at !== null
        ? (at as Record<PropertyKey, unknown>)[step as PropertyKey]
        : undefined;
  }
  return at;
}

function position(text: string, offset: number): { line: number; column: number } {
  let line = 1;
  let start = 0;
  for (let index = 0; index < offset && index < text.length; index++) {
    if (text.charCodeAt(index) === 0x0a) {
      line++;
      start = index + 1;
    }
  }
  return { line, column: offset - start + 1 };
}

/** jsonc-parser's `CloseBraceExpected` as words: `close brace expected`. */
function syntaxWords(code: string): string {
  return code.replace(/([a-z])([A-Z])/g, '$1 $2').toLowerCase();
}
