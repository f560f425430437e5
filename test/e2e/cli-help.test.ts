import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { repoRoot, runCli } from '../helpers/cli.js';

// What an operator types first: --version, and --help with examples that work as shown.

const COMMANDS = ['run', 'status', 'report', 'enqueue', 'worker', 'demo', 'mock-provider', 'plan'];

/** The flags a --help lists in its Options section. */
function listedFlags(help: string): Set<string> {
  const options = help.slice(help.indexOf('Options:'), help.indexOf('Example:'));
  return new Set(options.match(/--[a-z][a-z-]*/g) ?? []);
}

/** The example commands of a --help, continuation lines joined. */
function exampleCommands(help: string): string[] {
  const block = help.slice(help.indexOf('Example:') + 'Example:'.length);
  return block
    .replaceAll(/\\\n\s*/g, ' ')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line.startsWith('$ '))
    .map((line) => line.slice(2));
}

describe('bulkbill --version and --help', () => {
  it("--version prints the package's version and exits 0", async () => {
    const { version } = JSON.parse(await readFile(join(repoRoot, 'package.json'), 'utf8')) as {
      version: string;
    };
    for (const flag of ['--version', '-V']) {
      const result = await runCli([flag]);
      expect(result.code, result.stderr).toBe(0);
      expect(result.stdout.trim()).toBe(version);
    }
  });

  it('every command has examples, and every flag an example uses is one the command takes', async () => {
    const top = await runCli(['--help']);
    expect(top.code).toBe(0);
    expect(exampleCommands(top.stdout).length).toBeGreaterThan(0);
    for (const command of COMMANDS) {
      const result = await runCli([command, '--help']);
      expect(result.code, result.stderr).toBe(0);
      const examples = exampleCommands(result.stdout);
      expect(examples.length, `${command} --help has no example`).toBeGreaterThan(0);
      const flags = listedFlags(result.stdout);
      for (const example of examples) {
        if (!example.startsWith('bulkbill ')) continue;
        expect(example.split(' ')[1], example).toBe(command);
        for (const used of example.match(/(?<=\s)--[a-z][a-z-]*/g) ?? []) {
          expect(flags.has(used), `${command} --help: ${used} in "${example}"`).toBe(true);
        }
      }
    }
  }, 60_000);
});
