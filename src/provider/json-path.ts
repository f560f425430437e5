/**
 * The JSON paths a provider description uses: `$`, then `.name`, `[0]` or `["any name"]` steps
 * (`$.error.decline_code`, `$.errors[0].links.conflicting_resource_id`). Written by hand: only
 * plain member steps are needed, and a full JSONPath engine (filters, wildcards) would be slower
 * and could return many values where one is meant.
 */
export type JsonGetter = (value: unknown) => unknown;

const STEP = /\.([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]|\["([^"]*)"\]/y;

/** Compiles a path (checked by the description's schema) to a getter; undefined where absent. */
export function compileJsonPath(path: string): JsonGetter {
  if (!path.startsWith('$')) throw new SyntaxError(`a JSON path starts with $, got ${path}`);
  const steps: (string | number)[] = [];
  STEP.lastIndex = 1;
  while (STEP.lastIndex < path.length) {
    const at = STEP.lastIndex;
    const match = STEP.exec(path);
    if (!match) throw new SyntaxError(`cannot read the JSON path ${path} at character ${at + 1}`);
    steps.push(match[1] ?? (match[2] !== undefined ? Number(match[2]) : (match[3] as string)));
  }
  return (value) => {
    let at: unknown = value;
    for (const step of steps) {
      if (typeof step === 'number') {
        if (!Array.isArray(at)) return undefined;
        at = at[step];
      } else {
        if (typeof at !== 'object' || at === null || Array.isArray(at)) return undefined;
        if (!Object.hasOwn(at, step)) return undefined;
        at = (at as Record<string, unknown>)[step];
      }
    }
    return at;
  };
}
