import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pollUntil } from './poll.js';

/** A free TCP port on 127.0.0.1 (free when asked; nothing else here takes ports by number). */
export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const address = server.address();
  server.close();
  await once(server, 'close');
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

/**
 * A redis-server of a test file's own, on a free port with its data in a temp folder: one that
 * the file may stop and start (the machine's Redis on 6379 is shared by every test file), and
 * that can persist (`appendonly`) or not, as a test needs.
 */
export class OwnRedisServer {
  readonly #persist: boolean;
  readonly #fsync: 'always' | 'everysec';
  #port = 0;
  #dir = '';
  #child: ChildProcess | undefined;

  /**
   * `fsync`: how often the append-only file is synced (default `always`: a stop loses no
   * write); `everysec`, Redis's own default, may lose the last second's writes to a kill -9.
   */
  constructor(options: { readonly appendonly: boolean; readonly fsync?: 'always' | 'everysec' }) {
    this.#persist = options.appendonly;
    this.#fsync = options.fsync ?? 'always';
  }

  get url(): string {
    return `redis://127.0.0.1:${this.#port}`;
  }

  get port(): number {
    return this.#port;
  }

  /** Starts it (the same port and folder on a restart); resolves once it accepts connections. */
  async start(): Promise<void> {
    if (this.#port === 0) this.#port = await freePort();
    if (this.#dir === '') this.#dir = await mkdtemp(join(tmpdir(), 'bulkbill-redis-'));
    const persistence = this.#persist
      ? ['--appendonly', 'yes', '--appendfsync', this.#fsync, '--save', '']
      : ['--appendonly', 'no', '--save', ''];
    const child = spawn(
      'redis-server',
      ['--port', String(this.#port), '--bind', '127.0.0.1', '--dir', this.#dir, ...persistence],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.#child = child;
    let log = '';
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      log += chunk;
    });
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      log += chunk;
    });
    await pollUntil(
      'redis-server ready',
      async () => {
        if (child.exitCode !== null) throw new Error(`redis-server ended: ${log}`);
        return /Ready to accept connections/.test(log) ? true : undefined;
      },
      10_000,
    );
  }

  /** Stops it as an operator would (SIGTERM: it syncs its append-only file and exits). */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const child = this.#child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill(signal);
    await exited;
  }

  /** Kills it whatever happened, and deletes its data. */
  async destroy(): Promise<void> {
    await this.stop('SIGKILL');
    if (this.#dir !== '') await rm(this.#dir, { recursive: true, force: true });
  }
}
