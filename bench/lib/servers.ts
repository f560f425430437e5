import { type ServerProcess, startServerProcess } from './server-process.js';

/** The baseline server, bench/bare-server.ts, in its own process. */
export function startBareServer(nodeArgs: readonly string[] = []): Promise<ServerProcess> {
  return startServerProcess({ name: 'bare server', script: 'bench/bare-server.ts', nodeArgs });
}

/** What else a mock provider process is started with. */
export interface MockProviderServerOptions {
  /** `--shape`: the wire format it speaks (`stripe`, `adyen`, …). Default: none given, the mock's own. */
  readonly shape?: string;
}

/**
 * `bulkbill mock-provider` with a fixed latency, no jitter and seed 1, in its own process
 * (with `--shape <shape>` when one is given).
 */
export function startMockProviderServer(
  latency: string,
  nodeArgs: readonly string[] = [],
  options: MockProviderServerOptions = {},
): Promise<ServerProcess> {
  const shape = options.shape === undefined ? [] : ['--shape', options.shape];
  return startServerProcess({
    name: options.shape === undefined ? 'mock provider' : `mock provider (${options.shape})`,
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
    ],
    nodeArgs,
  });
}

/** Stops every server that started, even when another one failed to. */
export async function stopServers(servers: readonly ServerProcess[]): Promise<void> {
  await Promise.allSettled(servers.map((server) => server.stop()));
}
