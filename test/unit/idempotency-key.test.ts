import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { IDEMPOTENCY_KEY_MAX_LENGTH } from '../../src/domain/charge.js';
import { isBulkbillError } from '../../src/domain/errors.js';
import {
  idempotencyKey,
  RUN_ID_MAX_LENGTH,
  runIdProblem,
} from '../../src/domain/idempotency-key.js';

const RUN = '2024-06';
const PRINTABLE_KEY = /^[\x20-\x7e]{1,255}$/;

function sha(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('base64url');
}

describe('idempotencyKey', () => {
  it('is <run-id>:<user-id> for printable ASCII ids', () => {
    expect(idempotencyKey(RUN, 'user-42')).toBe('2024-06:user-42');
    expect(idempotencyKey(RUN, 'a:b:c')).toBe('2024-06:a:b:c');
    expect(idempotencyKey(RUN, 'Ann Smith')).toBe('2024-06:Ann Smith');
    expect(idempotencyKey(RUN, ' leading')).toBe('2024-06: leading');
    expect(idempotencyKey(RUN, 'a,b;"c"\'d\\e')).toBe('2024-06:a,b;"c"\'d\\e');
    expect(idempotencyKey(RUN, 'x~y')).toBe('2024-06:x~y');
  });

  it('is the same on every call, so every retry and every process sends the same key', () => {
    for (const userId of ['u1', 'ünïcödé', '🙂', 'x'.repeat(200)]) {
      expect(idempotencyKey(RUN, userId)).toBe(idempotencyKey(RUN, userId));
    }
  });

  it('hashes ids that are not printable ASCII, documented as base64url SHA-256 of UTF-8', () => {
    expect(idempotencyKey(RUN, 'José')).toBe(`2024-06:~${sha('José')}`);
    expect(idempotencyKey(RUN, '🙂')).toBe(`2024-06:~${sha('🙂')}`);
    expect(idempotencyKey(RUN, 'tab\there')).toBe(`2024-06:~${sha('tab\there')}`);
    expect(idempotencyKey(RUN, 'new\nline')).toBe(`2024-06:~${sha('new\nline')}`);
    expect(idempotencyKey(RUN, 'del\x7f')).toBe(`2024-06:~${sha('del\x7f')}`);
    expect(sha('x')).toHaveLength(43);
  });

  it('hashes an id with a trailing space, which a server would trim into another id', () => {
    expect(idempotencyKey(RUN, 'bob ')).toBe(`2024-06:~${sha('bob ')}`);
    expect(idempotencyKey(RUN, 'bob ')).not.toBe(idempotencyKey(RUN, 'bob'));
  });

  it('hashes ids starting with ~, so a raw id can never pose as a hashed one', () => {
    const hashed = idempotencyKey(RUN, 'José');
    const impostor = hashed.slice(`${RUN}:`.length);
    expect(impostor.startsWith('~')).toBe(true);
    expect(idempotencyKey(RUN, impostor)).not.toBe(hashed);
    expect(idempotencyKey(RUN, '~')).toBe(`2024-06:~${sha('~')}`);
  });

  it('keeps a 200-character ASCII id whole with the longest run id, and hashes longer keys', () => {
    const longest = 'r'.repeat(RUN_ID_MAX_LENGTH);
    const id200 = 'u'.repeat(200);
    expect(idempotencyKey(longest, id200)).toBe(`${longest}:${id200}`);
    expect(idempotencyKey(longest, id200)).toHaveLength(IDEMPOTENCY_KEY_MAX_LENGTH);
    expect(idempotencyKey(longest, `${id200}u`)).toBe(`${longest}:~${sha(`${id200}u`)}`);
    expect(idempotencyKey(RUN, 'é'.repeat(200))).toBe(`2024-06:~${sha('é'.repeat(200))}`);
  });

  it('keeps ids with lone surrogates apart from their UTF-8 replacement', () => {
    const lone = idempotencyKey(RUN, 'a\ud800');
    expect(lone).toMatch(/^2024-06:~![A-Za-z0-9_-]{43}$/);
    expect(lone).not.toBe(idempotencyKey(RUN, 'a\ufffd'));
    expect(idempotencyKey(RUN, 'a\udc00')).not.toBe(lone);
    expect(idempotencyKey(RUN, '\ud83d\ude42')).toBe(idempotencyKey(RUN, '🙂'));
  });

  it('always yields 1 to 255 printable ASCII characters, distinct for distinct ids', () => {
    const ids = [
      'plain',
      'with:colon',
      'with space',
      'with,comma',
      '"quoted"',
      "it's",
      '~tilde',
      '~~',
      'Zoë',
      'ZOË',
      'Zoe\u0308', // the same letter, decomposed: a different id
      '北京',
      '🙂',
      '🙂🙂',
      'a'.repeat(200),
      'é'.repeat(200),
      '🙂'.repeat(100),
      '',
      ' ',
      'x ',
      'x',
    ];
    const keys = ids.map((id) => idempotencyKey('r'.repeat(RUN_ID_MAX_LENGTH), id));
    for (const key of keys) expect(key).toMatch(PRINTABLE_KEY);
    expect(new Set(keys).size).toBe(ids.length);
  });

  it('refuses a run id that is not visible ASCII without ":", or too long', () => {
    for (const bad of ['', 'a:b', 'has space', 'ünï', 'tab\t', 'r'.repeat(RUN_ID_MAX_LENGTH + 1)]) {
      let caught: unknown;
      try {
        idempotencyKey(bad, 'u1');
      } catch (error) {
        caught = error;
      }
      expect(isBulkbillError(caught)).toBe(true);
      expect((caught as Error).message).toMatch(/^run id /);
    }
  });
});

describe('runIdProblem', () => {
  it('says what is wrong, or nothing', () => {
    expect(runIdProblem('2024-06_cycle.1')).toBeUndefined();
    expect(runIdProblem(undefined)).toBe('is missing');
    expect(runIdProblem(7)).toBe('must be a string, got number');
    expect(runIdProblem('')).toBe('must not be empty');
    expect(runIdProblem('r'.repeat(55))).toBe('must be at most 54 characters, got 55');
    expect(runIdProblem('a:b')).toBe(
      'must be visible ASCII characters other than ":" (no spaces), got "a:b"',
    );
  });

  it('bounds run ids so a 200-character id fits beside one', () => {
    expect(RUN_ID_MAX_LENGTH).toBe(54);
  });
});
