import { type ServerProcess, startServerProcess } from './server-process.js';

/** The baseline server, bench/bare-server.ts, in its own process. */
export function startBareServer(nodeArgs: readonly string[] = []): Promise<ServerProcess> {
  return startServerProcess({ name: 'bare server', script: 'bench/bare-server.ts', nodeArgs });
}

/** `bulkbill mock-provider` with a fixed latency, no jitter and seed 1, in its own process. */
export function startMockProviderServer(
  latency: string,
  nodeArgs: readonly string[] = [],
): Promise<ServerProcess> {
  return startServerProcess({
    name: 'mock provider',
    script: 'src/cli/main.ts',
    args: ['mock-provider', '--port', '0', '--latency', latency, '--jitter', '0', '--seed', '1'],
    nodeArgs,
  });
}

/** Stops every server that started, even when another one failed to. */
export async function stopServers(servers: readonly ServerProcess[]): Promise<void> {
  await Promise.allSettled(servers.map((server) => server.stop()));
}
