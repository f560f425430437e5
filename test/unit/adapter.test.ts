import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BulkbillError, UsageError } from '../../src/domain/errors.js';
import type { AttemptResult } from '../../src/domain/outcome.js';
import {
  type AdapterAttemptContext,
  type AdapterCharge,
  type AdapterModule,
  type AdapterOptions,
  AdapterSender,
  type ChargeRequest,
  chosenAdapter,
  credentialsFingerprint,
  fingerprintSalt,
  loadAdapter,
} from '../../src/provider/index.js';
import { FakeTimers } from '../helpers/fake-timers.js';

// The adapter sender: what a user's module returns is validated (anything else is an ambiguous
// retry, never charged), thrown errors and the deadline become ambiguous retries, and the run is
// bound to a fingerprint of the adapter's secret.

const request: ChargeRequest = {
  userId: 'user-1',
  amount: 1_250,
  currency: 'EUR',
  idempotencyKey: 'cycle-1:user-1',
  attempt: 3,
};

function open(module: AdapterModule, options: Partial<AdapterOptions> = {}) {
  return AdapterSender.open(module, { timeoutMs: 1_000, name: 'test.mjs', ...options });
}

/** A sender whose charge() returns `value` (or what `value` returns). */
async function returning(value: unknown): Promise<AttemptResult> {
  const sender = await open({ charge: async () => value });
  return sender.attempt(request);
}

describe('outcomes', () => {
  it('passes each kind of the AttemptResult union through', async () => {
    expect(await returning({ kind: 'charged', status: 200, chargeId: 'pay_1' })).toEqual({
      kind: 'charged',
      status: 200,
      chargeId: 'pay_1',
    });
    expect(await returning({ kind: 'charged', status: 201 })).toEqual({
      kind: 'charged',
      status: 201,
      chargeId: undefined,
    });
    expect(await returning({ kind: 'declined', status: 402, reason: 'card_declined' })).toEqual({
      kind: 'declined',
      status: 402,
      reason: 'card_declined',
    });
    expect(
      await returning({
        kind: 'retry',
        status: 409,
        reason: 'key in use',
        ambiguous: true,
        throttled: false,
        retryAfterMs: 1_000,
        conflict: true,
      }),
    ).toEqual({
      kind: 'retry',
      status: 409,
      reason: 'key in use',
      ambiguous: true,
      throttled: false,
      retryAfterMs: 1_000,
      conflict: true,
    });
    expect(
      await returning({
        kind: 'retry',
        status: 503,
        reason: 'no',
        ambiguous: false,
        throttled: true,
        final: true,
      }),
    ).toEqual({
      kind: 'retry',
      status: 503,
      reason: 'no',
      ambiguous: false,
      throttled: true,
      retryAfterMs: undefined,
      final: true,
    });
    expect(await returning({ kind: 'fatal', status: 401, reason: 'bad key' })).toEqual({
      kind: 'fatal',
      status: 401,
      reason: 'bad key',
    });
  });

  it("keeps a reason to one short line and caps Retry-After, as the HTTP client's are", async () => {
    const result = await returning({
      kind: 'retry',
      status: 429,
      reason: `slow\ndown ${'x'.repeat(500)}`,
      ambiguous: false,
      throttled: true,
      retryAfterMs: 3_600_000,
    });
    expect(result.kind).toBe('retry');
    if (result.kind !== 'retry') return;
    expect(result.reason.startsWith('slow down x')).toBe(true);
    expect(result.reason.length).toBeLessThanOrEqual(200);
    expect(result.retryAfterMs).toBe(300_000);
  });

  it.each([
    ['nothing', undefined, 'expected an outcome object, got nothing'],
    ['a string', 'charged', 'expected an outcome object, got a string'],
    ['an unknown kind', { kind: 'ok', status: 200 }, 'kind'],
    ['a charged without status', { kind: 'charged', chargeId: 'x' }, 'status'],
    ['a status out of range', { kind: 'charged', status: 2_000 }, 'status'],
    [
      'a retry without ambiguous',
      { kind: 'retry', status: 503, reason: 'x', throttled: false },
      'ambiguous',
    ],
    [
      'a misspelt key',
      { kind: 'retry', status: 409, reason: 'x', ambiguous: true, throttled: false, confict: true },
      'confict',
    ],
  ])('takes %s for an ambiguous retry, never a charge', async (_what, value, named) => {
    const result = await returning(value);
    expect(result).toMatchObject({
      kind: 'retry',
      status: undefined,
      ambiguous: true,
      throttled: false,
    });
    expect(result.kind === 'retry' && result.reason).toContain(
      'adapter test.mjs: charge() returned a malformed outcome',
    );
    expect(result.kind === 'retry' && result.reason).toContain(named);
  });

  it('hands charge() the charge, its idempotency key and the attempt number', async () => {
    const seen: Array<{ charge: AdapterCharge; context: AdapterAttemptContext }> = [];
    const sender = await open({
      charge: (charge, context) => {
        seen.push({ charge, context });
        return { kind: 'charged', status: 200, chargeId: null };
      },
    });
    expect(await sender.attempt(request)).toEqual({
      kind: 'charged',
      status: 200,
      chargeId: undefined,
    });
    await sender.attempt({ ...request, attempt: undefined, metadata: { plan: 'pro' } });
    expect(seen.map(({ charge }) => charge)).toEqual([
      { userId: 'user-1', amount: 1_250, currency: 'EUR', metadata: {} },
      { userId: 'user-1', amount: 1_250, currency: 'EUR', metadata: { plan: 'pro' } },
    ]);
    expect(seen.map(({ context }) => [context.idempotencyKey, context.attempt])).toEqual([
      ['cycle-1:user-1', 3],
      ['cycle-1:user-1', 1],
    ]);
    expect(seen[0]?.context.signal.aborted).toBe(false);
  });
});

describe('thrown errors', () => {
  it('are ambiguous retries naming the adapter and the message, never the stack', async () => {
    for (const charge of [
      async () => {
        throw new TypeError('socket hang up');
      },
      () => {
        throw new TypeError('socket hang up');
      },
    ]) {
      const sender = await open({ charge });
      const result = await sender.attempt(request);
      expect(result).toMatchObject({ kind: 'retry', ambiguous: true, throttled: false });
      if (result.kind !== 'retry') return;
      expect(result.reason).toBe(
        'adapter test.mjs: charge() threw TypeError: socket hang up; the provider may have charged',
      );
      expect(result.reason).not.toContain('at ');
    }
  });

  it("masks the adapter's secret and bearer tokens in the message", async () => {
    const sender = await open({
      credentials: () => 'sk_test_canary123',
      charge: async () => {
        const error = new Error(
          'rejected sk_test_canary123 (Authorization: Bearer tok_abc.def)',
        ) as Error & { code: string };
        error.code = 'ECONNRESET';
        throw error;
      },
    });
    const result = await sender.attempt(request);
    expect(result.kind === 'retry' && result.reason).toBe(
      'adapter test.mjs: charge() threw rejected [redacted] (Authorization: Bearer [redacted]) (ECONNRESET); the provider may have charged',
    );
  });

  it('takes a thrown non-error by its kind, not its content', async () => {
    const sender = await open({
      charge: () => Promise.reject({ secret: 'x' }),
    });
    const result = await sender.attempt(request);
    expect(result.kind === 'retry' && result.reason).toBe(
      'adapter test.mjs: charge() threw an object; the provider may have charged',
    );
  });
});

describe('the deadline', () => {
  it('answers an ambiguous retry at timeoutMs, aborts the signal and does not wait', async () => {
    const timers = new FakeTimers();
    let signal: AbortSignal | undefined;
    let answer: ((value: unknown) => void) | undefined;
    const sender = await open(
      {
        charge: (_charge, context) => {
          signal = context.signal;
          return new Promise((resolve) => {
            answer = resolve;
          });
        },
      },
      { timeoutMs: 50, timers },
    );
    let result: AttemptResult | undefined;
    void sender.attempt(request).then((settled) => {
      result = settled;
    });
    await timers.advance(49);
    expect(result).toBeUndefined();
    expect(signal?.aborted).toBe(false);
    await timers.advance(1);
    expect(result).toEqual({
      kind: 'retry',
      status: undefined,
      reason: 'adapter test.mjs: timeout: no answer within 50ms; the provider may have charged',
      ambiguous: true,
      throttled: false,
      retryAfterMs: undefined,
    });
    expect(signal?.aborted).toBe(true);
    expect((signal?.reason as Error | undefined)?.name).toBe('AdapterDeadlineError');
    // A late answer belongs to an attempt that is over: it changes nothing.
    answer?.({ kind: 'charged', status: 200 });
    await timers.advance(10);
    expect(result?.kind).toBe('retry');
  });

  it('clears its timer when the adapter answers in time', async () => {
    const timers = new FakeTimers();
    const sender = await open(
      { charge: async () => ({ kind: 'charged', status: 200, chargeId: 'c' }) },
      { timeoutMs: 50, timers },
    );
    expect((await sender.attempt(request)).kind).toBe('charged');
    await timers.advance(100);
  });

  it('holds with a real timer and a promise that never settles', async () => {
    const sender = await open({ charge: () => new Promise(() => {}) }, { timeoutMs: 5 });
    const result = await sender.attempt(request);
    expect(result).toMatchObject({ kind: 'retry', ambiguous: true });
  });
});

describe('credentials', () => {
  it('fingerprints the secret with a run’s salt, never holding it in the fingerprint', async () => {
    const sender = await open({ charge: () => undefined, credentials: () => 'sk_live_one' });
    const bound = sender.credentials();
    expect(bound).toMatch(/^v1:[0-9a-f]{32}:[0-9a-f]{32}$/);
    expect(bound).not.toContain('sk_live_one');
    expect(sender.credentials(bound)).toBe(bound);
    const salt = fingerprintSalt(bound) as string;
    const other = await open({ charge: () => undefined, credentials: async () => 'sk_live_two' });
    expect(other.credentials(bound)).not.toBe(bound);
    const none = await open({ charge: () => undefined });
    expect(none.credentials(bound)).toBe(credentialsFingerprint([], salt));
    expect(none.credentials(bound)).not.toBe(bound);
  });

  it('refuses credentials() that return something other than a string', async () => {
    await expect(open({ charge: () => undefined, credentials: () => 42 })).rejects.toThrow(
      'adapter: test.mjs: credentials() must return a string (or nothing), got a number',
    );
  });
});

describe('loading a module', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bulkbill-adapter-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function moduleFile(name: string, text: string): Promise<string> {
    const path = join(dir, name);
    await writeFile(path, text);
    return path;
  }

  it('refuses a missing file, naming the path', async () => {
    const path = join(dir, 'missing.mjs');
    const error = await loadAdapter(path, { timeoutMs: 1_000, label: '--adapter' }).catch(
      (caught: unknown) => caught,
    );
    expect(error).toBeInstanceOf(UsageError);
    expect((error as Error).message).toBe(`--adapter: cannot load ${path}: no such file`);
  });

  it('refuses a module without a charge function, naming the path', async () => {
    const path = await moduleFile('no-charge.mjs', 'export async function setup() {}\n');
    const error = await loadAdapter(path, { timeoutMs: 1_000 }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(UsageError);
    expect((error as Error).message).toContain(`adapter: ${path}: exports no \`charge\` function`);
    const named = await moduleFile('charge-value.mjs', 'export const charge = 1;\n');
    await expect(loadAdapter(named, { timeoutMs: 1_000 })).rejects.toThrow('exports no `charge`');
  });

  it('refuses a module that cannot be imported, naming the path', async () => {
    const path = await moduleFile('broken.mjs', 'export function charge( {\n');
    await expect(loadAdapter(path, { timeoutMs: 1_000 })).rejects.toThrow(
      `adapter: cannot load ${path}: `,
    );
  });

  it('runs setup() with the environment, then reads the endpoint it set', async () => {
    const path = await moduleFile(
      'live.mjs',
      [
        'export let endpoint;',
        'let base;',
        'export async function setup({ env, signal }) {',
        '  if (!(signal instanceof AbortSignal)) throw new Error("no signal");',
        '  base = env.BASE; endpoint = `live:${base}`;',
        '}',
        'export async function charge(charge, ctx) {',
        "  return { kind: 'charged', status: 200, chargeId: `${base}/${ctx.idempotencyKey}` };",
        '}',
      ].join('\n'),
    );
    const sender = await loadAdapter(path, { timeoutMs: 1_000, env: { BASE: 'http://x' } });
    expect(sender.endpoint).toBe('live:http://x');
    expect(sender.name).toBe('live.mjs');
    expect(await sender.attempt(request)).toEqual({
      kind: 'charged',
      status: 200,
      chargeId: 'http://x/cycle-1:user-1',
    });
  });

  it('binds a run to adapter:<file name> without an endpoint export', async () => {
    const path = await moduleFile(
      'plain.mjs',
      "export const charge = async () => ({ kind: 'charged', status: 200 });\n",
    );
    expect((await loadAdapter(path, { timeoutMs: 1_000 })).endpoint).toBe('adapter:plain.mjs');
  });

  it('takes a CommonJS module by its exports', async () => {
    const path = await moduleFile(
      'common.cjs',
      "module.exports = { charge: async () => ({ kind: 'charged', status: 200 }) };\n",
    );
    const sender = await loadAdapter(path, { timeoutMs: 1_000 });
    expect((await sender.attempt(request)).kind).toBe('charged');
  });

  it('fails when setup() fails, saying nothing was charged, without the stack', async () => {
    const path = await moduleFile(
      'failing-setup.mjs',
      [
        'export async function setup() { throw new Error("token endpoint answered 401"); }',
        'export async function charge() {}',
      ].join('\n'),
    );
    const error = await loadAdapter(path, { timeoutMs: 1_000 }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(BulkbillError);
    expect((error as BulkbillError).code).toBe('BULKBILL_CONFIG_INVALID');
    expect((error as Error).message).toBe(
      `adapter: ${path}: setup() failed: token endpoint answered 401 (nothing was charged)`,
    );
  });

  it('refuses an endpoint that holds credentials, and closes the module it set up', async () => {
    let closed = 0;
    await expect(
      open({
        endpoint: 'https://user:pw@api.example.com',
        charge: () => undefined,
        close: () => {
          closed++;
        },
      }),
    ).rejects.toThrow('`endpoint` must not hold credentials');
    expect(closed).toBe(1);
  });
});

describe('the rest of the sender surface', () => {
  it('previews the charge and its key, and closes the module once, quietly', async () => {
    let closed = 0;
    const sender = await open({
      endpoint: 'two-step:https://api.example.com',
      charge: () => undefined,
      close: () => {
        closed++;
        throw new Error('already closed');
      },
    });
    expect(sender.preview({ ...request, metadata: { plan: 'pro' } })).toEqual({
      method: 'adapter',
      url: 'two-step:https://api.example.com',
      headers: {},
      body: JSON.stringify({
        charge: { userId: 'user-1', amount: 1_250, currency: 'EUR', metadata: { plan: 'pro' } },
        idempotencyKey: 'cycle-1:user-1',
      }),
    });
    await sender.close();
    await sender.close();
    expect(closed).toBe(1);
  });

  it('is refused with what only the HTTP client reads', () => {
    const label = (name: string) => `--${name}`;
    const module: AdapterModule = { charge: () => undefined };
    expect(chosenAdapter({ adapter: 'a.mjs', headers: [] }, label)).toBe('a.mjs');
    expect(chosenAdapter({ adapterModule: module }, label)).toBe(module);
    expect(chosenAdapter({ headers: ['X: y'] }, label)).toBeUndefined();
    expect(() => chosenAdapter({ adapter: 'a.mjs', provider: {} }, label)).toThrow(
      '--adapter: an adapter sends charges itself; it reads no provider description',
    );
    expect(() => chosenAdapter({ adapter: 'a.mjs', endpoint: 'http://x' }, label)).toThrow(
      'it takes no --endpoint',
    );
    expect(() => chosenAdapter({ adapter: 'a.mjs', headers: ['X: y'] }, label)).toThrow(
      '--headers would not be sent',
    );
    expect(() => chosenAdapter({ adapter: 'a.mjs', adapterModule: module }, label)).toThrow(
      'give one',
    );
  });
});
