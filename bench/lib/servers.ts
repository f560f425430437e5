import { type ServerProcess, startServerProcess } from './server-process.js';

/** The baseline server, bench/bare-server.ts, in its own process. */
export function startBareServer(nodeArgs: readonly string[] = []): Promise<ServerProcess> {
  return startServerProcess({ name: 'bare server', script: 'bench/bare-server.ts', nodeArgs });
}

/** What else a mock provider process is started with. */
export interface MockProviderServerOptions {
  /** `--shape`: the wire format it speaks (`stripe`, `adyen`, …). Default: none given, the mock's own. */
  readonly shape?: string;
  /** `--capacity`: most requests processed at once. Default: none given (unlimited). */
  readonly capacity?: number;
  /** `--overload`: past the capacity, `503` at once or `queue` (latency grows). Default: none given (503). */
  readonly overload?: '503' | 'queue';
}

/**
 * `bulkbill mock-provider` with a fixed latency, no jitter and seed 1, in its own process
 * (with `--shape <shape>`, `--capacity <n>` and `--overload <mode>` when given).
 */
export function startMockProviderServer(
  latency: string,
  nodeArgs: readonly string[] = [],
  options: MockProviderServerOptions = {},
): Promise<ServerProcess> {
  const shape = options.shape === undefined ? [] : ['--shape', options.shape];
  const capacity = options.capacity === undefined ? [] : ['--capacity', String(options.capacity)];
  const overload = options.overload === undefined ? [] : ['--overload', options.overload];
  const traits = [
    ...(options.shape === undefined ? [] : [options.shape]),
    ...(options.capacity === undefined ? [] : [`capacity ${options.capacity}`]),
    ...(options.overload === undefined ? [] : [`overload ${options.overload}`]),
  ];
  return startServerProcess({
    name: traits.length === 0 ? 'mock provider' : `mock provider (${traits.join(', ')})`,
    script: 'src/cli/main.ts',
    args: [
      'mock-provider',
      '--port',
      '0',
      '--latency',
      latency,
      '--jitter',
      '0',
      '--seed',
      '1',
      ...shape,
      ...capacity,
      ...overload,
    ],
    nodeArgs,
  });
}

/** Stops every server that started, even when another one failed to. */
export async function stopServers(servers: readonly ServerProcess[]): Promise<void> {
  await Promise.allSettled(servers.map((server) => server.stop()));
}
