import { formatDuration } from '../domain/duration.js';
import { type ShapeName, startMockProvider } from '../mock-provider/index.js';
import { ExitStatus } from './exit-codes.js';
import { flagName } from './parse.js';
import { onStopSignals } from './signals.js';

interface MockProviderFlags {
  port: number;
  host: string;
  latency: number;
  jitter: number;
  capacity?: number;
  overload: '503' | 'queue';
  rate?: number;
  burst?: number;
  retryAfter: boolean;
  failRate: number;
  lostRate: number;
  resetRate: number;
  slowRate: number;
  slow: number;
  declineRate: number;
  declineSuffix?: string;
  seed?: number;
  apiKey?: string;
  shape: ShapeName;
}

const FLAG_OF_OPTION: Record<string, string> = { latencyMs: '--latency', slowMs: '--slow' };

export async function mockProviderCommand(flags: MockProviderFlags): Promise<number> {
  const apiKey = flags.apiKey ?? process.env.MOCK_PROVIDER_API_KEY;
  const provider = await startMockProvider(
    {
      port: flags.port,
      host: flags.host,
      latencyMs: flags.latency,
      jitter: flags.jitter,
      overload: flags.overload,
      retryAfter: flags.retryAfter,
      failRate: flags.failRate,
      lostRate: flags.lostRate,
      resetRate: flags.resetRate,
      slowRate: flags.slowRate,
      slowMs: flags.slow,
      declineRate: flags.declineRate,
      shape: flags.shape,
      ...(flags.capacity === undefined ? {} : { capacity: flags.capacity }),
      ...(flags.rate === undefined ? {} : { rate: flags.rate }),
      ...(flags.burst === undefined ? {} : { burst: flags.burst }),
      ...(flags.declineSuffix === undefined ? {} : { declineSuffix: flags.declineSuffix }),
      ...(flags.seed === undefined ? {} : { seed: flags.seed }),
      ...(apiKey ? { apiKey } : {}),
    },
    (name) => FLAG_OF_OPTION[name] ?? flagName(name),
  );
  const { options } = provider;
  const limits = [
    options.shape === 'default' ? undefined : `shape ${options.shape}`,
    `latency ${formatDuration(options.latencyMs)} ±${Math.round(options.jitter * 100)}%`,
    options.capacity === undefined
      ? undefined
      : `capacity ${options.capacity} (${options.overload})`,
    options.rate === undefined
      ? undefined
      : `rate ${options.rate}/s${options.retryAfter ? '' : ' (429 without Retry-After)'}`,
    options.failRate > 0 ? `fail ${options.failRate}` : undefined,
    options.lostRate > 0 ? `lost ${options.lostRate}` : undefined,
    options.resetRate > 0 ? `reset mid-answer ${options.resetRate}` : undefined,
    options.slowRate > 0
      ? `slow ${options.slowRate} (+${formatDuration(options.slowMs)})`
      : undefined,
    options.declineRate > 0 ? `decline ${options.declineRate}` : undefined,
    options.declineSuffix === undefined
      ? undefined
      : `decline suffix ${JSON.stringify(options.declineSuffix)}`,
    options.apiKey === undefined ? undefined : 'API key required',
    `seed ${options.seed}`,
  ].filter((part) => part !== undefined);
  process.stdout.write(
    `bulkbill mock provider (a simulated billing API, not a real one) listening on ${provider.url}\n` +
      `  ${limits.join(', ')}\n` +
      `  POST ${provider.chargeUrl}  GET ${provider.url}/stats  GET ${provider.url}/charges/:user_id  POST ${provider.url}/reset\n` +
      '  Ctrl-C stops it.\n',
  );

  await new Promise<void>((resolve) => {
    onStopSignals(
      () => {
        process.stderr.write(
          'bulkbill mock provider: stopping, letting requests in flight finish…\n',
        );
        resolve();
      },
      () => {
        process.stderr.write('bulkbill mock provider: second signal, exiting at once\n');
      },
    );
  });
  await provider.close();
  process.stdout.write(`bulkbill mock provider stopped: ${JSON.stringify(provider.stats())}\n`);
  return ExitStatus.Ok;
}
