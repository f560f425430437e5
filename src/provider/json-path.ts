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

const MEMBER_PATH = /^\$\.([A-Za-z_][A-Za-z0-9_-]*)$/;

/**
 * For a path of one member step (`$.id`), a reader of that member's string value when it is the
 * body's first member (`{"id": "pi_…", …}`, as Stripe's and Checkout.com's answers start), found
 * without parsing the rest; undefined for any other path. The reader answers undefined, and the
 * caller parses the body, whenever the fast reading could differ from JSON.parse's: the member
 * is not first, its value is not a plain string (escapes, control characters, a number) or is
 * blank, or the name appears again later (JSON.parse keeps a repeated member's last value).
 * Unlike a full parse it does not check the rest of the body: a 2xx cut short after its first
 * member still gives its charge id.
 */
export function compileLeadingMember(
  path: string,
): ((body: string) => string | undefined) | undefined {
  const name = MEMBER_PATH.exec(path)?.[1];
  if (name === undefined) return undefined;
  const quoted = `"${name}"`;
  const leading = new RegExp(
    `^[ \\t\\n\\r]*\\{[ \\t\\n\\r]*${quoted}[ \\t\\n\\r]*:[ \\t\\n\\r]*"([^"\\\\\\u0000-\\u001f]*)"[ \\t\\n\\r]*[,}]`,
  );
  return (body) => {
    const match = leading.exec(body);
    if (match === null) return undefined;
    const value = match[1] as string;
    if (value.trim().length === 0) return undefined;
    return body.indexOf(quoted, match[0].length) === -1 ? value : undefined;
  };
}
