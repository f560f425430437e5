/**
 * An `application/x-www-form-urlencoded` body as flat names to values, the names kept as sent
 * in bracket form (`metadata[user_id]`), percent-decoded and with `+` as a space. Undefined when
 * a name or value is not valid percent-encoding. A repeated name keeps its last value.
 */
export function parseForm(raw: string): Map<string, string> | undefined {
  const fields = new Map<string, string>();
  let start = 0;
  while (start < raw.length) {
    let end = raw.indexOf('&', start);
    if (end === -1) end = raw.length;
    if (end > start) {
      const equals = raw.indexOf('=', start);
      const nameEnd = equals === -1 || equals > end ? end : equals;
      const name = decode(raw.slice(start, nameEnd));
      const value = nameEnd === end ? '' : decode(raw.slice(nameEnd + 1, end));
      if (name === undefined || value === undefined) return undefined;
      fields.set(name, value);
    }
    start = end + 1;
  }
  return fields;
}

function decode(text: string): string | undefined {
  // Most names and values need no decoding: skip the work for them.
  if (text.indexOf('%') === -1 && text.indexOf('+') === -1) return text;
  try {
    return decodeURIComponent(text.replaceAll('+', ' '));
  } catch {
    return undefined;
  }
}
