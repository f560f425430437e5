/** One sample of Prometheus text: a name, its labels, its value. */
export interface PromSample {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
}

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
const SAMPLE = new RegExp(`^(${NAME})(?:\\{(.*)\\})? (\\S+)(?: (-?\\d+))?$`);
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)/gy;

/**
 * Parses the Prometheus text exposition format (0.0.4) strictly: every line a `# HELP`, a
 * `# TYPE` or a sample, every sample of a family its TYPE declared, label values well quoted.
 * Throws naming the first line that is not. (No library parses it for Node 20 that is kept up.)
 */
export function parsePrometheus(text: string): PromSample[] {
  const samples: PromSample[] = [];
  const types = new Map<string, string>();
  text.split('\n').forEach((line, index) => {
    if (line === '') return;
    const where = `line ${index + 1}: ${line}`;
    if (line.startsWith('# HELP ')) return;
    if (line.startsWith('# TYPE ')) {
      const [, , name, type] = line.split(' ');
      if (
        name === undefined ||
        !['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(type ?? '')
      ) {
        throw new Error(`bad TYPE, ${where}`);
      }
      types.set(name, type as string);
      return;
    }
    if (line.startsWith('#')) throw new Error(`unknown comment, ${where}`);
    const match = SAMPLE.exec(line);
    if (match === null) throw new Error(`not a sample, ${where}`);
    const [, name = '', labelText = '', valueText = ''] = match;
    const family = [...types.keys()].find(
      (declared) =>
        name === declared ||
        (types.get(declared) === 'histogram' &&
          /^(.*)_(bucket|sum|count)$/.exec(name)?.[1] === declared) ||
        (types.get(declared) === 'summary' && /^(.*)_(sum|count)$/.exec(name)?.[1] === declared),
    );
    if (family === undefined) throw new Error(`sample without a TYPE, ${where}`);
    const labels: Record<string, string> = {};
    LABEL.lastIndex = 0;
    while (LABEL.lastIndex < labelText.length) {
      const label = LABEL.exec(labelText);
      if (label === null) throw new Error(`bad labels, ${where}`);
      labels[label[1] as string] = (label[2] as string).replace(/\\(.)/g, (_, c: string) =>
        c === 'n' ? '\n' : c,
      );
    }
    const value =
      valueText === '+Inf'
        ? Number.POSITIVE_INFINITY
        : valueText === '-Inf'
          ? Number.NEGATIVE_INFINITY
          : Number(valueText);
    // Prometheus reads values with Go's ParseFloat: NaN and Inf in any case (prom-client says Nan).
    if (Number.isNaN(value) && valueText.toLowerCase() !== 'nan')
      throw new Error(`bad value, ${where}`);
    samples.push({ name, labels, value });
  });
  return samples;
}

/** The value of the sample named `name` with these labels (0 when absent). */
export function metricValue(
  samples: readonly PromSample[],
  name: string,
  labels: Record<string, string> = {},
): number {
  const found = samples.find(
    (sample) =>
      sample.name === name &&
      Object.entries(labels).every(([key, value]) => sample.labels[key] === value),
  );
  return found?.value ?? 0;
}

/** The sum of every sample named `name`. */
export function sumOf(samples: readonly PromSample[], name: string): number {
  return samples
    .filter((sample) => sample.name === name)
    .reduce((sum, sample) => sum + sample.value, 0);
}
