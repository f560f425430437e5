import { join } from 'node:path';
import { bill } from '../../src/engine/local-engine.js';
import { SqliteLedger } from '../../src/ledger/sqlite-ledger.js';
import { engineConformance, engineOver } from './engine-conformance.js';

let ledgers = 0;

engineConformance('the local engine on SQLite', async (workdir) => {
  const ledger = new SqliteLedger({ path: join(workdir, `ledger-${++ledgers}.db`) });
  return engineOver(
    ledger,
    (options) =>
      bill({ ...options, headers: [...(options.headers ?? [])], ledgerInstance: ledger }),
    () => ledger.close(),
  );
});
