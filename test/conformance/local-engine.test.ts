import { join } from 'node:path';
import { bill } from '../../src/engine/local-engine.js';
import { SqliteLedger } from '../../src/ledger/sqlite-ledger.js';
import { engineConformance } from './engine-conformance.js';

let ledgers = 0;

engineConformance('the local engine on SQLite', async (workdir) => {
  const ledger = new SqliteLedger({ path: join(workdir, `ledger-${++ledgers}.db`) });
  return {
    async bill(options) {
      const result = await bill({
        ...options,
        headers: [...(options.headers ?? [])],
        ledgerInstance: ledger,
      });
      return {
        outcome: result.outcome,
        runId: result.run.runId,
        total: result.run.total,
        counts: result.counts,
      };
    },
    async charges(runId) {
      const all = [];
      for await (const charge of ledger.charges(runId)) all.push(charge);
      return all;
    },
    async hasRun(runId) {
      return (await ledger.findRun(runId)) !== undefined;
    },
    close: () => ledger.close(),
  };
});
