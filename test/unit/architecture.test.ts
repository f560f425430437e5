import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

// The rules of docs/architecture.md, checked on every test run so the layers cannot drift.
const src = fileURLToPath(new URL('../../src/', import.meta.url));

/** Which rooms each room may import from (besides itself). */
const ALLOWED: Record<string, readonly string[]> = {
  domain: [],
  input: ['domain'],
  provider: ['domain', 'control'],
  config: ['domain', 'provider'],
  control: ['domain'],
  ledger: ['domain'],
  observe: ['domain'],
  report: ['domain', 'ledger'],
  'mock-provider': ['domain', 'control'],
  engine: ['domain', 'input', 'provider', 'control', 'ledger', 'observe', 'report'],
  'index.ts': ['domain', 'engine', 'report', 'observe', 'mock-provider', 'ledger'],
  cli: ['*'],
};

function sourceFiles(folder: string): string[] {
  return readdirSync(folder, { withFileTypes: true }).flatMap((entry) => {
    const path = join(folder, entry.name);
    if (entry.isDirectory()) return sourceFiles(path);
    return entry.name.endsWith('.ts') ? [path] : [];
  });
}

function roomOf(file: string): string {
  return relative(src, file).split('/')[0] as string;
}

const IMPORT =
  /(?:^|\n)\s*(?:import|export)\s[^'"]*?from\s+['"](\.[^'"]+)['"]|import\(\s*['"](\.[^'"]+)['"]\s*\)/g;

function localImports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  return [...text.matchAll(IMPORT)].map((match) =>
    resolve(dirname(file), (match[1] ?? match[2]) as string).replace(/\.js$/, '.ts'),
  );
}

/** The code of a file without its comments, so a comment may name what the code must not use. */
function withoutComments(text: string): string {
  return text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/^\s*\/\/.*$/gm, '');
}

const files = sourceFiles(src);

describe('architecture', () => {
  it('has the rooms it describes', () => {
    const rooms = new Set(files.map(roomOf));
    for (const room of rooms) expect(Object.keys(ALLOWED), room).toContain(room);
  });

  it('imports only downwards', () => {
    const violations: string[] = [];
    for (const file of files) {
      const from = roomOf(file);
      const allowed = ALLOWED[from] ?? [];
      for (const target of localImports(file)) {
        const to = roomOf(target);
        if (to === from || allowed.includes('*') || allowed.includes(to)) continue;
        violations.push(`${relative(src, file)} → ${relative(src, target)}`);
      }
    }
    expect(violations).toEqual([]);
  });

  it('has no import cycles', () => {
    const graph = new Map(files.map((file) => [file, localImports(file)]));
    const cycles: string[] = [];
    const state = new Map<string, 'visiting' | 'done'>();
    const visit = (file: string, path: string[]): void => {
      if (state.get(file) === 'done') return;
      if (state.get(file) === 'visiting') {
        cycles.push(
          [...path.slice(path.indexOf(file)), file].map((f) => relative(src, f)).join(' → '),
        );
        return;
      }
      state.set(file, 'visiting');
      for (const next of graph.get(file) ?? []) visit(next, [...path, file]);
      state.set(file, 'done');
    };
    for (const file of files) visit(file, []);
    expect(cycles).toEqual([]);
  });

  it('leaves process.exit and process.argv to the CLI', () => {
    const offenders = files
      .filter((file) => roomOf(file) !== 'cli')
      .filter((file) => /process\.(exit|argv)\b/.test(readFileSync(file, 'utf8')))
      .map((file) => relative(src, file));
    expect(offenders).toEqual([]);
  });

  it('keeps domain/ and control/ off the clock and the timers (they are handed a Clock)', () => {
    const offenders = files
      .filter((file) => ['domain', 'control'].includes(roomOf(file)))
      .filter((file) => relative(src, file) !== 'domain/clock.ts')
      .filter((file) =>
        /\b(Date\.now|performance\.now|setTimeout|setInterval|new Date\(\))/.test(
          withoutComments(readFileSync(file, 'utf8')),
        ),
      )
      .map((file) => relative(src, file));
    expect(offenders).toEqual([]);
  });
});
