import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { compileJsonPath, compileLeadingMember } from '../../src/provider/json-path.js';

describe('compileLeadingMember', () => {
  const id = compileLeadingMember('$.id');

  it('serves only a path of one member step', () => {
    expect(compileLeadingMember('$.payment.id')).toBeUndefined();
    expect(compileLeadingMember('$.errors[0]')).toBeUndefined();
    expect(compileLeadingMember('$["id"]')).toBeUndefined();
    expect(id).toBeDefined();
  });

  it('reads the first member, compact or pretty-printed as Stripe sends it', () => {
    expect(id?.('{"id":"pi_1","object":"payment_intent"}')).toBe('pi_1');
    expect(id?.('{\n  "id": "pi_2",\n  "object": "payment_intent"\n}\n')).toBe('pi_2');
    expect(id?.(' {"id":"pi_3"}')).toBe('pi_3');
  });

  it('leaves to a full parse whatever the fast reading could get wrong', () => {
    // Not first, escaped, a number, blank, repeated (JSON.parse keeps the last), a nested "id".
    expect(id?.('{"object":"x","id":"pi_1"}')).toBeUndefined();
    expect(id?.('{"id":"pi_\\u0031"}')).toBeUndefined();
    expect(id?.('{"\\u0069d":"pi_1"}')).toBeUndefined();
    expect(id?.('{"id":42}')).toBeUndefined();
    expect(id?.('{"id":"  "}')).toBeUndefined();
    expect(id?.('{"id":"a","id":"b"}')).toBeUndefined();
    expect(id?.('{"id":"a","charge":{"id":"ch_1"}}')).toBeUndefined();
    expect(id?.('["id","x"]')).toBeUndefined();
    expect(id?.('{"identity":"x"}')).toBeUndefined();
    expect(id?.('')).toBeUndefined();
  });

  it('agrees with JSON.parse on every object it reads (property)', () => {
    const get = compileJsonPath('$.id');
    const member = fc.oneof(fc.string(), fc.constantFrom('id', 'ID', 'ids', '\u0069d', 'object'));
    const value = fc.oneof(fc.string(), fc.integer(), fc.constant(null), fc.boolean());
    const body = fc
      .tuple(
        // Half the bodies start with an "id" holding a string, as a charge's answer does.
        fc.oneof(fc.tuple(fc.constant('id'), fc.string()), fc.tuple(member, value)),
        fc.array(fc.tuple(member, fc.oneof(value, fc.dictionary(member, value))), {
          maxLength: 6,
        }),
        fc.constantFrom(undefined, 0, 2),
      )
      .map(([first, rest, indent]) => {
        const members = [first, ...rest];
        // Members in the order drawn, repeats kept: JSON.stringify of an object cannot repeat one.
        const text = members
          .map(([name, v]) => `${JSON.stringify(name)}:${JSON.stringify(v, null, indent)}`)
          .join(indent === undefined ? ',' : ',\n  ');
        return indent === undefined ? `{${text}}` : `{\n  ${text}\n}`;
      });
    let read = 0;
    fc.assert(
      fc.property(body, (text) => {
        const fast = id?.(text);
        if (fast === undefined) return;
        read++;
        expect(fast).toBe(get(JSON.parse(text)));
      }),
      { numRuns: 2_000 },
    );
    // The property is not empty: many drawn bodies did take the fast reading.
    expect(read).toBeGreaterThan(100);
  });
});
