import { createRequire } from 'node:module';
import { Command, CommanderError, Option } from 'commander';
import { DEFAULT_PREFIX, DEFAULT_QUEUE } from '../engine/distributed/jobs.js';
import { SHAPE_NAMES } from '../mock-provider/shapes/shape.js';
import { ExitStatus, exitStatusFor } from './exit-codes.js';
import { TOKEN_ENV } from './observers-flags.js';
import { concurrencyFlag, durationFlag, integerFlag, numberFlag } from './parse.js';
import { exitOnLateStopSignals } from './signals.js';

// The package's own version: ../../package.json from src/cli (tsx) and from dist/cli (the build).
const { version } = createRequire(import.meta.url)('../../package.json') as { version: string };

const program = new Command('bulkbill')
  .description(
    'Bill every user of a billing cycle exactly once, as fast as the billing provider allows.',
  )
  .version(version, '-V, --version', 'print the version of bulkbill')
  .showHelpAfterError('(run with --help for usage)')
  .addHelpText(
    'after',
    examples(
      `$ bulkbill run users.csv --endpoint https://billing.example.com/v1/charges --run-id 2026-11 \\`,
      `    --header 'Authorization: Bearer \${BILLING_TOKEN}'`,
      `$ bulkbill status --run-id 2026-11`,
    ),
  )
  .exitOverride();

/**
 * A command's flags with the config file under them: a flag given on the command line wins,
 * then bulkbill.config.json (or --config), then the command's defaults.
 */
async function configured<Flags extends { config?: string }>(
  command: Command,
  flags: Flags,
): Promise<Flags & { provider?: unknown; adapter?: string }> {
  const { loadConfig, mergeConfig } = await import('../config/config-file.js');
  const config = await loadConfig(flags.config, process.cwd());
  const accepted = [...command.options.map((option) => option.attributeName()), 'provider'];
  return mergeConfig(flags, config, (name) => command.getOptionValueSource(name), accepted);
}

function configOption(): Option {
  return new Option(
    '--config <path>',
    'config file (default: ./bulkbill.config.json when it exists); flags win over it',
  );
}

/** The `Example:` block that ends a command's --help: lines an operator can copy. */
function examples(...lines: string[]): string {
  return `\nExample:\n${lines.map((line) => `  ${line}`).join('\n')}`;
}

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
  .option('--no-retry-after', 'answer 429 without a Retry-After header')
  .option('--fail-rate <p>', 'probability of a 503 before charging', numberFlag('--fail-rate'), 0)
  .option(
    '--lost-rate <p>',
    'probability of charging, then dropping the connection unanswered',
    numberFlag('--lost-rate'),
    0,
  )
  .option(
    '--reset-rate <p>',
    'probability of charging, then resetting the connection halfway through the answer',
    numberFlag('--reset-rate'),
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
    "require this API key, as the shape's provider takes one (default shape: Authorization: Bearer <key>; default: $MOCK_PROVIDER_API_KEY; none: open)",
  )
  .addOption(
    new Option('--shape <name>', "wire format: the mock's own, or a real provider's API")
      .choices(SHAPE_NAMES)
      .default('default'),
  )
  .addHelpText(
    'after',
    examples(
      `$ bulkbill mock-provider --port 4010 --latency 1.6s --rate 200 --fail-rate 0.02`,
      `$ bulkbill mock-provider --shape stripe --latency 0 --decline-rate 0.01`,
      `$ curl -s http://127.0.0.1:4010/stats`,
    ),
  )
  .action(async (flags) => {
    const { mockProviderCommand } = await import('./mock-provider.js');
    process.exitCode = await mockProviderCommand(flags);
  });

function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

// Options several commands take, made afresh for each (commander keeps an option it was given).
function headerOption(): Option {
  return new Option(
    '--header <"Name: value">',
    // biome-ignore lint/suspicious/noTemplateCurlyInString: the help names a literal ${NAME}.
    'extra request header; ${NAME} is read from the environment (repeatable)',
  )
    .argParser(collect)
    .default([]);
}

function queueOption(note = ''): Option {
  return new Option('--queue <name>', `BullMQ queue${note}`).default(DEFAULT_QUEUE);
}

/** --metrics-port, --metrics-host, --log-level, --log-file: how a billing process is watched. */
function watchOptions(command: Command, logNote: string): Command {
  return command
    .option(
      '--metrics-port <n>',
      'serve Prometheus metrics (bulkbill_*) on this port, /metrics; 0 picks a free one',
      integerFlag('--metrics-port'),
    )
    .option('--metrics-host <host>', 'interface the metrics listen on', '127.0.0.1')
    .addOption(
      new Option('--log-level <level>', `JSON log level${logNote}`).choices([
        'fatal',
        'error',
        'warn',
        'info',
        'debug',
        'trace',
        'silent',
      ]),
    )
    .option('--log-file <path>', 'write the JSON log to this file (appended) instead of stderr');
}

function dashboardTokenOption(): Option {
  return new Option(
    '--dashboard-token <token>',
    `token the dashboard asks of every request (or ${TOKEN_ENV}); required off 127.0.0.1`,
  );
}

function prefixOption(note = ''): Option {
  return new Option('--prefix <prefix>', `start of every Redis key${note}`).default(DEFAULT_PREFIX);
}

const runCommandSpec = program
  .command('run')
  .description(
    'Bill every user of an input file exactly once (SQLite ledger; resumes an unfinished run of the same file).',
  )
  .argument('<input>', 'CSV (header user_id,amount,currency) or NDJSON file')
  .option(
    '--endpoint <url>',
    "billing API endpoint that charges are sent to (or what the provider description's path resolves against)",
  )
  .option(
    '--adapter <path>',
    'a module whose charge(charge, ctx) sends each charge itself (OAuth, two-step APIs, an SDK), in place of --endpoint',
  )
  .addOption(configOption())
  .option('--run-id <id>', 'names the billing cycle (default: resume, or a fresh id)')
  .option(
    '--concurrency <n|auto>',
    "most requests in flight (default 64), or auto: found from the provider's latency and refusals",
    concurrencyFlag('--concurrency'),
  )
  .option(
    '--min-concurrency <n>',
    'fewest requests in flight auto and --deadline go down to (default 1)',
    integerFlag('--min-concurrency'),
  )
  .option(
    '--max-concurrency <n>',
    'most requests in flight auto and --deadline go up to (default 1000)',
    integerFlag('--max-concurrency'),
  )
  .option(
    '--deadline <when>',
    'finish by then, at the fewest requests in flight that do: a duration (45m, 2h) or a time with date and offset (2026-12-02T09:00:00+01:00)',
  )
  .option(
    '--outage-wait <duration>',
    'how long the circuit breaker waits for a provider that is down before the run stops, charges left pending (default 30m; 0 turns it off)',
    durationFlag('--outage-wait'),
  )
  .option('--rate <n>', 'most requests per second (default: unlimited)', numberFlag('--rate'))
  .option(
    '--timeout <duration>',
    'deadline of one request (default 30s)',
    durationFlag('--timeout'),
  )
  .option(
    '--ca <file>',
    "PEM file of the CA that signs the provider's TLS certificate (a private CA), trusted besides the usual ones",
  )
  .option(
    '--max-attempts <n>',
    'attempts per charge, over every crash and resume (default 5)',
    integerFlag('--max-attempts'),
  )
  .option(
    '--key-retention <duration>',
    'how long the provider keeps idempotency keys: older charges that may have been charged are not retried (default 24h)',
    durationFlag('--key-retention'),
  )
  .option(
    '--new-cycle',
    'create a new run even though the input shares users with an unfinished run',
  )
  .option('--retry-failed', "retry the run's failed and unknown charges, with the same keys")
  .option('--ledger <path>', 'SQLite ledger file', 'bulkbill.db')
  .option('--report <path>', 'per-user CSV report (default <run-id>.report.csv)')
  .addOption(headerOption())
  .option('--skip-invalid', 'record invalid rows as invalid and bill the rest')
  .option('--dry-run', 'validate, import and plan; charge nobody')
  .option('--json', 'print the summary as one JSON object on stdout')
  .option(
    '--redis <url>',
    'bill on the distributed engine: enqueue on this Redis, run one worker here, wait for every worker',
  )
  .addOption(queueOption(', with --redis'))
  .addOption(prefixOption(', with --redis'))
  .option(
    '--global-concurrency <n>',
    'most requests in flight across every worker of the queue, with --redis',
    integerFlag('--global-concurrency'),
  )
  .option(
    '--lock-duration <duration>',
    "a dead worker's jobs are taken over within one to two of these, with --redis (default 30s)",
    durationFlag('--lock-duration'),
  )
  .option(
    '--dashboard [port]',
    'serve the live web dashboard during the run (default: a free port, printed)',
    integerFlag('--dashboard'),
  )
  .option('--dashboard-host <host>', 'interface the dashboard listens on', '127.0.0.1')
  .option(
    '--linger <duration>',
    'after the run, keep the dashboard and metrics up this long (a last scrape, a look at the end)',
    durationFlag('--linger'),
  )
  .addOption(dashboardTokenOption());
watchOptions(runCommandSpec, ' (default: no JSON log; with --log-file, info)');
runCommandSpec
  .addHelpText(
    'after',
    examples(
      `$ bulkbill run users.csv --endpoint https://billing.example.com/v1/charges --run-id 2026-11 \\`,
      `    --concurrency 500 --rate 300 --header 'Authorization: Bearer \${BILLING_TOKEN}'`,
      `$ bulkbill run users.csv --endpoint https://billing.example.com/v1/charges --dry-run`,
      `$ bulkbill run users.csv --endpoint https://billing.example.com/v1/charges --retry-failed`,
      `$ bulkbill run users.csv --endpoint https://billing.example.com/v1/charges --dashboard 8080 --metrics-port 9464`,
    ),
  )
  .action(async (input: string, flags, command: Command) => {
    const { runCommand } = await import('./run.js');
    process.exitCode = await runCommand(input, await configured(command, flags));
  });

program
  .command('status')
  .description(
    "Show a run's counts per state, what happened to one user, or (without --run-id) every run.",
  )
  .option('--run-id <id>', 'the run (default: list every run, or find --user in every run)')
  .option('--ledger <path>', 'SQLite ledger file', 'bulkbill.db')
  .option('--user <user_id>', "show this user's charge")
  .addOption(configOption())
  .option('--json', 'print JSON')
  .option('--redis <url>', 'read a run of the distributed engine from this Redis')
  .addOption(queueOption(', with --redis'))
  .addOption(prefixOption(', with --redis'))
  .option(
    '--wait',
    'with --redis: follow the run until every charge has ended; exit as `run` would',
  )
  .addHelpText(
    'after',
    examples(
      `$ bulkbill status                               # every run in ./bulkbill.db`,
      `$ bulkbill status --run-id 2026-11 --user user-0000042`,
      `$ bulkbill status --redis redis://127.0.0.1:6379 --run-id 2026-11 --wait`,
    ),
  )
  .action(async (flags, command: Command) => {
    const { statusCommand } = await import('./status.js');
    process.exitCode = await statusCommand(await configured(command, flags));
  });

program
  .command('report')
  .description('Write the per-user CSV report of a run.')
  .requiredOption('--run-id <id>', 'the run')
  .option('--ledger <path>', 'SQLite ledger file', 'bulkbill.db')
  .requiredOption('--out <path>', 'where to write the report')
  .addOption(configOption())
  .option('--redis <url>', 'read a run of the distributed engine from this Redis')
  .addOption(prefixOption(', with --redis'))
  .addHelpText(
    'after',
    examples(
      `$ bulkbill report --run-id 2026-11 --out 2026-11.report.csv`,
      `$ bulkbill report --redis redis://127.0.0.1:6379 --run-id 2026-11 --out 2026-11.report.csv`,
    ),
  )
  .action(async (flags, command: Command) => {
    const { reportCommand } = await import('./report.js');
    process.exitCode = await reportCommand(await configured(command, flags));
  });

program
  .command('enqueue')
  .description(
    'Validate a billing cycle into the Redis ledger and queue one job per charge for `bulkbill worker` (prints the run id; running it again adds only what is missing).',
  )
  .argument('<input>', 'CSV (header user_id,amount,currency) or NDJSON file')
  .option(
    '--redis <url>',
    'Redis, e.g. redis://127.0.0.1:6379 (required, here or in the config file)',
  )
  .addOption(configOption())
  .option('--run-id <id>', 'names the billing cycle (default: resume, or a fresh id)')
  .addOption(queueOption())
  .addOption(prefixOption())
  .option(
    '--endpoint <url>',
    'bind the run to this endpoint now (default: its first worker binds it)',
  )
  .option('--skip-invalid', 'record invalid rows as invalid and queue the rest')
  .option(
    '--new-cycle',
    'create a new run even though the input shares users with an unfinished run',
  )
  .option('--retry-failed', "queue the run's failed and unknown charges again, with the same keys")
  .option(
    '--concurrency <auto>',
    "auto: the queue's workers find the concurrency the provider takes, one of them deciding for all (a number leaves it to the workers' --concurrency and --global-concurrency)",
    concurrencyFlag('--concurrency'),
  )
  .option(
    '--min-concurrency <n>',
    'fewest requests in flight across the queue auto and --deadline go down to (default 1)',
    integerFlag('--min-concurrency'),
  )
  .option(
    '--max-concurrency <n>',
    'most requests in flight across the queue auto and --deadline go up to (default 1000)',
    integerFlag('--max-concurrency'),
  )
  .option(
    '--deadline <when>',
    'the workers finish the run by then, at the fewest requests in flight that do: a duration from now (45m, 2h) or a time with date and offset',
  )
  .option('--json', 'print the outcome as one JSON object on stdout')
  .addHelpText(
    'after',
    examples(
      `$ bulkbill enqueue users.csv --redis redis://127.0.0.1:6379 --run-id 2026-11`,
      `$ bulkbill enqueue users.csv --redis redis://127.0.0.1:6379 --run-id 2026-11 --concurrency auto --deadline 2026-12-01T09:00:00+01:00`,
      `$ bulkbill enqueue users.csv --redis redis://127.0.0.1:6379 --run-id 2026-11 --retry-failed`,
    ),
  )
  .action(async (input: string, flags, command: Command) => {
    const { enqueueCommand } = await import('./enqueue.js');
    process.exitCode = await enqueueCommand(input, await configured(command, flags));
  });

const workerCommandSpec = program
  .command('worker')
  .description(
    'Bill charges of any run on the queue until stopped (SIGTERM finishes the jobs in flight); run as many as needed, on any machine.',
  )
  .option(
    '--redis <url>',
    'Redis, e.g. redis://127.0.0.1:6379 (required, here or in the config file)',
  )
  .option(
    '--endpoint <url>',
    "billing API endpoint that charges are sent to (or what the provider description's path resolves against)",
  )
  .option(
    '--adapter <path>',
    'a module whose charge(charge, ctx) sends each charge itself (OAuth, two-step APIs, an SDK), in place of --endpoint',
  )
  .addOption(configOption())
  .addOption(queueOption())
  .addOption(prefixOption())
  .option('--concurrency <n>', 'jobs this worker runs at once', integerFlag('--concurrency'), 64)
  .option(
    '--rate <n>',
    "most requests per second across every worker of the queue, kept on the queue: the stricter of two holds, 0 clears it (default: the queue's rate, if any)",
    numberFlag('--rate'),
  )
  .option(
    '--global-concurrency <n>',
    'most jobs in flight across every worker of the queue (kept on the queue; 0 removes it)',
    integerFlag('--global-concurrency'),
  )
  .option('--timeout <duration>', 'deadline of one request', durationFlag('--timeout'), 30_000)
  .option(
    '--outage-wait <duration>',
    "how long the queue's circuit breaker (shared by its workers) waits for a provider that is down before this worker stops, charges left pending (0 turns it off)",
    durationFlag('--outage-wait'),
    1_800_000,
  )
  .option(
    '--ca <file>',
    "PEM file of the CA that signs the provider's TLS certificate (a private CA), trusted besides the usual ones",
  )
  .option(
    '--max-attempts <n>',
    'attempts per charge, over every crash',
    integerFlag('--max-attempts'),
    5,
  )
  .option(
    '--key-retention <duration>',
    'how long the provider keeps idempotency keys: older charges that may have been charged are not retried',
    durationFlag('--key-retention'),
    86_400_000,
  )
  .addOption(headerOption())
  .option('--exit-when-idle', 'exit once the queue holds no job')
  .option(
    '--lock-duration <duration>',
    "a dead worker's jobs are taken over within one to two of these",
    durationFlag('--lock-duration'),
    30_000,
  );
watchOptions(workerCommandSpec, ' (default info, on stderr)');
workerCommandSpec
  .addHelpText(
    'after',
    examples(
      `$ bulkbill worker --redis redis://127.0.0.1:6379 --endpoint https://billing.example.com/v1/charges \\`,
      `    --concurrency 250 --header 'Authorization: Bearer \${BILLING_TOKEN}'`,
    ),
  )
  .action(async (flags, command: Command) => {
    const { workerCommand } = await import('./worker.js');
    process.exitCode = await workerCommand(await configured(command, flags));
    // Its work is over and said: a connection a Redis fault left behind must not keep it alive.
    setTimeout(() => process.exit(), 3_000).unref();
  });

program
  .command('dashboard')
  .description(
    'Serve the web dashboard of a ledger: every run, live or finished (progress, charts, problems, search by user, /metrics).',
  )
  .option('--ledger <path>', 'SQLite ledger file', 'bulkbill.db')
  .option('--redis <url>', 'show the runs of the distributed engine in this Redis')
  .addOption(queueOption(', with --redis: whose pacing and breaker are shown'))
  .addOption(prefixOption(', with --redis'))
  .option('--run-id <id>', 'the run the page opens on (default: the newest)')
  .option('--port <n>', 'TCP port; 0 picks a free one', integerFlag('--port'), 8080)
  .option(
    '--host <host>',
    'interface to listen on; any but loopback needs --dashboard-token',
    '127.0.0.1',
  )
  .addOption(dashboardTokenOption())
  .addOption(
    new Option('--log-level <level>', 'JSON log level (stderr)')
      .choices(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'])
      .default('info'),
  )
  .option('--log-file <path>', 'write the JSON log to this file instead of stderr')
  .addOption(configOption())
  .addHelpText(
    'after',
    examples(
      `$ bulkbill dashboard --ledger bulkbill.db --run-id 2026-11          # http://127.0.0.1:8080/`,
      `$ ${TOKEN_ENV}=… bulkbill dashboard --redis redis://10.0.0.5:6379 --host 0.0.0.0`,
    ),
  )
  .action(async (flags, command: Command) => {
    const { dashboardCommand } = await import('./dashboard.js');
    process.exitCode = await dashboardCommand(await configured(command, flags));
  });

program
  .command('plan')
  .description(
    'Validate an input as `run` does and plan its cycle: users, totals per currency, and the concurrency a --deadline needs (charges nobody, opens no ledger, sends nothing).',
  )
  .argument('<input>', 'CSV (header user_id,amount,currency) or NDJSON file')
  .requiredOption(
    '--latency <duration>',
    'expected latency of one request, e.g. 1.6s',
    durationFlag('--latency'),
  )
  .option(
    '--deadline <when>',
    'when the cycle must be done: a duration from now (45m, 2h) or a time with its date and offset (2026-12-02T09:00:00+01:00)',
  )
  .option(
    '--max-concurrency <n>',
    'most requests in flight the deadline may ask for',
    integerFlag('--max-concurrency'),
    1_000,
  )
  .option('--rate <n>', 'most requests per second (default: unlimited)', numberFlag('--rate'))
  .option(
    '--concurrency <n>',
    'requests in flight, without --deadline',
    integerFlag('--concurrency'),
    64,
  )
  .option('--skip-invalid', 'count invalid rows and plan the rest')
  .addOption(configOption())
  .option('--json', 'print the plan as one JSON object on stdout')
  .addHelpText(
    'after',
    examples(
      `$ bulkbill plan users.csv --latency 1.6s --deadline 1h`,
      `$ bulkbill plan users.csv --latency 1.6s --deadline 2026-12-02T09:00:00+01:00 --rate 300`,
      `$ bulkbill plan users.csv --latency 250ms --concurrency 500 --json`,
    ),
  )
  .action(async (input: string, flags, command: Command) => {
    const { planCommand } = await import('./plan.js');
    process.exitCode = await planCommand(input, await configured(command, flags));
  });

program
  .command('init')
  .description(
    'Write a commented starting config file (bulkbill.config.json) for a provider: its request template, idempotency and response rules.',
  )
  .addOption(
    new Option('--provider <name>', 'the provider profile to start from')
      .choices(['default', 'stripe', 'adyen', 'braintree', 'square', 'checkout', 'gocardless'])
      .default('default'),
  )
  .option('--out <path>', 'where to write it', 'bulkbill.config.json')
  .option('--force', 'overwrite an existing file')
  .addHelpText(
    'after',
    examples(
      `$ bulkbill init --provider stripe`,
      `$ STRIPE_SECRET_KEY=sk_test_… bulkbill run users.csv --dry-run`,
    ),
  )
  .action(async (flags) => {
    const { initCommand } = await import('./init.js');
    process.exitCode = await initCommand(flags);
  });

program
  .command('config-schema')
  .description(
    "Print the config file's JSON Schema (the package ships it as dist/bulkbill.config.schema.json).",
  )
  .addHelpText('after', examples(`$ bulkbill config-schema > bulkbill.config.schema.json`))
  .action(async () => {
    const { configJsonSchema } = await import('../config/config-file.js');
    process.stdout.write(`${JSON.stringify(configJsonSchema(), null, 2)}\n`);
  });

program
  .command('demo')
  .description(
    'Bill demo users against the mock provider (started on a free port), with live progress, a summary and a report (npm start).',
  )
  .option('--users <n>', 'how many demo users', integerFlag('--users'), 10_000)
  .option('--latency <duration>', "the provider's latency", durationFlag('--latency'), 1_600)
  .option('--concurrency <n>', 'requests in flight', integerFlag('--concurrency'), 1_000)
  .option(
    '--dashboard [port]',
    'watch it in the web dashboard (default: a free port, printed)',
    integerFlag('--dashboard'),
  )
  .option(
    '--linger <duration>',
    'after the run, keep the dashboard up this long',
    durationFlag('--linger'),
  )
  .addHelpText(
    'after',
    examples(
      `$ bulkbill demo --users 10000 --latency 1.6s --concurrency 1000`,
      `$ npm start -- --dashboard 8080 --linger 10m     # then open http://127.0.0.1:8080/`,
    ),
  )
  .action(async (flags) => {
    const { demoCommand } = await import('./demo.js');
    process.exitCode = await demoCommand(flags);
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
  } finally {
    exitOnLateStopSignals();
  }
}

await main();
