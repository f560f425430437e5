import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ImportRow } from '../../src/ledger/ledger.js';
import { SqliteLedger } from '../../src/ledger/sqlite-ledger.js';

let directory: string;
let path: string;
const ledgers: SqliteLedger[] = [];

beforeEach(async () => {
  directory = await mkdtemp(join(tmpdir(), 'bulkbill-claims-'));
  path = join(directory, 'ledger.db');
});
afterEach(async () => {
  await Promise.all(ledgers.splice(0).map((ledger) => ledger.close()));
  await rm(directory, { recursive: true, force: true });
});

function open(): SqliteLedger {
  const ledger = new SqliteLedger({ path });
  ledgers.push(ledger);
  return ledger;
}

async function* oneRow(): AsyncGenerator<readonly ImportRow[]> {
  yield [{ line: 2, userId: 'u1', amount: 100, currency: 'USD', metadata: {} }];
}

const run = (runId: string) => ({
  runId,
  inputHash: 'same-input',
  inputPath: 'in.csv',
  endpoint: 'e',
});

/** Writes a claim as another process would have. */
function claimAs(runId: string, pid: number, host = hostname()): void {
  const db = new Database(path);
  db.prepare(
    'INSERT OR REPLACE INTO run_owners (run_id, pid, host, since) VALUES (?, ?, ?, ?)',
  ).run(runId, pid, host, '2026-11-30T00:00:00.000Z');
  db.close();
}

/** The pid of a process that has already exited. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', 'process.pid'], { stdio: 'ignore' });
  return child.pid as number;
}

describe('run claims', () => {
  it('refuses a run claimed by a live process, naming it', async () => {
    const ledger = open();
    await ledger.createRun(run('r1'), oneRow(), () => {});
    claimAs('r1', process.ppid);
    await expect(ledger.claimRun('r1')).rejects.toThrow(
      new RegExp(`run r1 is being billed by process ${process.ppid} on `),
    );
  });

  it('takes over a claim left by a process that died (kill -9)', async () => {
    const ledger = open();
    await ledger.createRun(run('r1'), oneRow(), () => {});
    claimAs('r1', deadPid());
    await expect(ledger.claimRun('r1')).resolves.toBeUndefined();
    // Ours now: a second process (another ledger connection) sees us as the holder.
    claimAs('r2', process.pid);
    await expect(open().claimRun('r1')).resolves.toBeUndefined();
  });

  it('frees the run on release', async () => {
    const ledger = open();
    await ledger.createRun(run('r1'), oneRow(), () => {});
    await ledger.claimRun('r1');
    await ledger.releaseRun('r1');
    claimAs('r1', process.ppid);
    await ledger.releaseRun('r1');
    // Releasing does not drop somebody else's claim.
    await expect(ledger.claimRun('r1')).rejects.toThrow(/being billed/);
  });

  it('respects a claim from another host, which it cannot check', async () => {
    const ledger = open();
    await ledger.createRun(run('r1'), oneRow(), () => {});
    claimAs('r1', deadPid(), 'another-host');
    await expect(ledger.claimRun('r1')).rejects.toThrow(/on another-host/);
  });
});

describe('creating runs', () => {
  it('refuses a second unfinished run of the same input when asked to', async () => {
    const first = open();
    const second = open();
    await first.createRun(run('r1'), oneRow(), () => {});
    await expect(
      second.createRun(run('r2'), oneRow(), () => {}, { soleUnfinished: true }),
    ).rejects.toThrow(/already has the unfinished run r1/);
    expect(await second.findRun('r2')).toBeUndefined();
    // A named new cycle of the same file is allowed.
    await expect(second.createRun(run('r3'), oneRow(), () => {})).resolves.toMatchObject({
      runId: 'r3',
    });
  });

  it('refuses a run id that exists, keeping the first run whole', async () => {
    const ledger = open();
    await ledger.createRun(run('r1'), oneRow(), () => {});
    await expect(ledger.createRun(run('r1'), oneRow(), () => {})).rejects.toThrow(
      /run r1 already exists/,
    );
    expect((await ledger.counts('r1')).pending).toBe(1);
  });
});
