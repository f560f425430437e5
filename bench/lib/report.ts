/** How a scenario runs: chosen once by bench/main.ts from its flags. */
export interface BenchSettings {
  /** Smaller n and fewer samples: a smoke run, not a measurement. */
  readonly quick: boolean;
  /** Overrides provider-throughput's client concurrency (default 64). */
  readonly concurrency: number | undefined;
  /** Node flags for every server process, e.g. `--cpu-prof`. */
  readonly serverNodeArgs: readonly string[];
  /**
   * Node flags for every `bulkbill run`, `bulkbill enqueue` and `bulkbill worker` process of the
   * engine and distributed scenarios, e.g. `--cpu-prof`.
   */
  readonly engineNodeArgs: readonly string[];
  /** The Redis of the distributed scenarios (shared: every sample uses its own key prefix). */
  readonly redisUrl: string;
  /** Writes one line of progress to stderr. */
  readonly progress: (line: string) => void;
}

/** INFO: measured and shown, held to no target. */
export type Verdict = 'PASS' | 'FAIL' | 'INFO';

/** One line of the summary table: a subject measured against its baseline, in the same run. */
export interface SummaryRow {
  readonly scenario: string;
  /** What is measured and how it is summarised, e.g. `req/s, median of 5`. */
  readonly measure: string;
  readonly baseline: string;
  readonly subject: string;
  /** subject / baseline. */
  readonly ratio: string;
  readonly target: string;
  readonly verdict: Verdict;
  /** Everything that was checked besides the target, or what failed. */
  readonly checks: string;
}

/** What a scenario hands back: a summary row, a markdown section of detail, raw figures. */
export interface ScenarioReport<Raw> {
  readonly summary: SummaryRow;
  /** Further summary rows, for a scenario with more than one target. Default: none. */
  readonly moreSummaries?: readonly SummaryRow[];
  readonly details: string;
  readonly raw: Raw;
}

/** A GitHub-flavoured markdown table, columns padded so it also reads well in a terminal. */
export function markdownTable(
  headers: readonly string[],
  rows: readonly (readonly string[])[],
  align: readonly ('left' | 'right')[] = [],
): string {
  const escapePipes = (cell: string) => cell.replaceAll('|', '\\|');
  const body = rows.map((row) => headers.map((_, column) => escapePipes(row[column] ?? '')));
  const widths = headers.map((header, column) =>
    Math.max(3, header.length, ...body.map((row) => (row[column] as string).length)),
  );
  const pad = (cell: string, column: number) =>
    align[column] === 'right'
      ? cell.padStart(widths[column] as number)
      : cell.padEnd(widths[column] as number);
  const line = (cells: readonly string[]) =>
    `| ${cells.map((cell, column) => pad(cell, column)).join(' | ')} |`;
  const rule = widths.map((width, column) =>
    align[column] === 'right' ? `${'-'.repeat(width - 1)}:` : '-'.repeat(width),
  );
  return [line(headers), `| ${rule.join(' | ')} |`, ...body.map(line)].join('\n');
}
