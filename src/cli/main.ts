import { Command, CommanderError, Option } from 'commander';
import { ExitStatus, exitStatusFor } from './exit-codes.js';
import { durationFlag, integerFlag, numberFlag } from './parse.js';

const program = new Command('bulkbill')
  .description(
    'Bill every user of a billing cycle exactly once, as fast as the billing provider allows.',
  )
  .showHelpAfterError('(run with --help for usage)')
  .exitOverride();

program
  .command('mock-provider')
  .description(
    'Run the mock billing API (POST /charge, GET /stats, GET /charges/:user_id, POST /reset) for rehearsals, tests and benchmarks.',
  )
  .option('--port <n>', 'TCP port; 0 picks a free one', integerFlag('--port'), 4010)
  .option('--host <host>', 'interface to listen on', '127.0.0.1')
  .option('--latency <duration>', 'time to process one charge', durationFlag('--latency'), 1_600)
  .option('--jitter <fraction>', 'latency varies within ±fraction', numberFlag('--jitter'), 0.1)
  .option('--capacity <n>', 'most requests processed at once', integerFlag('--capacity'))
  .addOption(
    new Option('--overload <mode>', 'past capacity: 503 at once, or queue (latency grows)')
      .choices(['503', 'queue'])
      .default('503'),
  )
  .option('--rate <n>', 'requests per second (token bucket); past it 429', numberFlag('--rate'))
  .option('--burst <n>', 'token bucket size (default: the rate)', numberFlag('--burst'))
  .option('--fail-rate <p>', 'probability of a 503 before charging', numberFlag('--fail-rate'), 0)
  .option(
    '--lost-rate <p>',
    'probability of charging, then dropping the connection unanswered',
    numberFlag('--lost-rate'),
    0,
  )
  .option(
    '--slow-rate <p>',
    'probability of charging, then answering --slow late',
    numberFlag('--slow-rate'),
    0,
  )
  .option('--slow <duration>', 'delay of a slow answer', durationFlag('--slow'), 35_000)
  .option('--decline-rate <p>', 'probability of a 402 decline', numberFlag('--decline-rate'), 0)
  .option('--decline-suffix <s>', 'user ids ending with this are always declined')
  .option('--seed <n>', 'seed of all randomness (default: random, printed)', integerFlag('--seed'))
  .option(
    '--api-key <key>',
    'require Authorization: Bearer <key> (default: $MOCK_PROVIDER_API_KEY; none: open)',
  )
  .action(async (flags) => {
    const { mockProviderCommand } = await import('./mock-provider.js');
    process.exitCode = await mockProviderCommand(flags);
  });

async function main(): Promise<void> {
  try {
    await program.parseAsync(process.argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      // Help and version print and end well; every other commander error is a usage error.
      const helpful =
        error.code === 'commander.helpDisplayed' || error.code === 'commander.version';
      process.exitCode = helpful || error.exitCode === 0 ? ExitStatus.Ok : ExitStatus.Usage;
      return;
    }
    const message = error instanceof Error ? error.message : String(error);
    process.stderr.write(`bulkbill: ${message}\n`);
    if (exitStatusFor(error) === ExitStatus.Failed && error instanceof Error && error.stack) {
      process.stderr.write(`${error.stack}\n`);
    }
    process.exitCode = exitStatusFor(error);
  }
}

await main();
