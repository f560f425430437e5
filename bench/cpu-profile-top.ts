/**
 * Where a process's time went, from a V8 CPU profile written by `--cpu-prof` (for instance with
 * `npm run bench -- --engine-cpu-prof .tmp/prof`): the functions with the most self time, and
 * self time summed per source file or package.
 *
 * Usage: npx tsx bench/cpu-profile-top.ts <file.cpuprofile> [--top 30]
 *
 * Native work done inside a call (a SQLite statement, a system call) counts as the self time of
 * the JavaScript function that made it. Under tsx the line numbers are those of the transformed
 * code; the function names are right.
 */
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { markdownTable } from './lib/report.js';

interface CallFrame {
  readonly functionName: string;
  readonly url: string;
  readonly lineNumber: number;
}

interface ProfileNode {
  readonly id: number;
  readonly callFrame: CallFrame;
}

interface CpuProfile {
  readonly nodes: readonly ProfileNode[];
  readonly startTime: number;
  readonly endTime: number;
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

/** Self time in µs per key. */
type Tally = Map<string, number>;

function add(tally: Tally, key: string, us: number): void {
  tally.set(key, (tally.get(key) ?? 0) + us);
}

/** `src/ledger/sqlite-ledger.ts`, `undici`, `node:internal`, or a native frame's name. */
function sourceOf(frame: CallFrame, root: string): string {
  const { url } = frame;
  if (url === '') return frame.functionName;
  const packageMatch = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (packageMatch) return packageMatch[1] as string;
  if (url.startsWith('node:')) return `node:${url.slice(5).split('/')[0]}`;
  return url.replace(root, '');
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    options: { top: { type: 'string', default: '30' } },
    allowPositionals: true,
  });
  const [file] = positionals;
  const top = Number(values.top);
  if (file === undefined || !Number.isSafeInteger(top) || top < 1) {
    throw new Error('usage: npx tsx bench/cpu-profile-top.ts <file.cpuprofile> [--top 30]');
  }
  const profile = JSON.parse(await readFile(file, 'utf8')) as CpuProfile;
  const root = new URL('../', import.meta.url).href;
  const selfByNode = new Map<number, number>();
  profile.samples.forEach((id, at) => {
    selfByNode.set(id, (selfByNode.get(id) ?? 0) + (profile.timeDeltas[at] ?? 0));
  });

  const byFunction: Tally = new Map();
  const bySource: Tally = new Map();
  let idleUs = 0;
  for (const node of profile.nodes) {
    const us = selfByNode.get(node.id) ?? 0;
    if (us === 0) continue;
    const { callFrame } = node;
    if (callFrame.functionName === '(idle)') {
      idleUs += us;
      continue;
    }
    const source = sourceOf(callFrame, root);
    const name = callFrame.functionName || '(anonymous)';
    add(byFunction, callFrame.url === '' ? name : `${name} (${source})`, us);
    add(bySource, source, us);
  }
  const busyUs = [...byFunction.values()].reduce((sum, us) => sum + us, 0);
  const rows = (tally: Tally) =>
    [...tally]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([key, us]) => [
        key,
        `${(us / 1_000).toFixed(0)} ms`,
        `${((100 * us) / busyUs).toFixed(1)}%`,
      ]);
  const wallMs = (profile.endTime - profile.startTime) / 1_000;
  process.stdout.write(
    [
      `${file}: ${wallMs.toFixed(0)} ms profiled, main thread busy ${(busyUs / 1_000).toFixed(0)} ms, idle ${(idleUs / 1_000).toFixed(0)} ms`,
      '',
      markdownTable(['function (self time)', 'self', 'of busy'], rows(byFunction), [
        'left',
        'right',
        'right',
      ]),
      '',
      markdownTable(['source', 'self', 'of busy'], rows(bySource), ['left', 'right', 'right']),
      '',
    ].join('\n'),
  );
}

try {
  await main();
} catch (error) {
  process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
  process.exitCode = 2;
}
