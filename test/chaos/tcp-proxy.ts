import { once } from 'node:events';
import { createConnection, createServer, type Server, type Socket } from 'node:net';

/**
 * A TCP proxy in front of a server (Redis), for a network partition between one client and
 * it: `partition(ms)` stops carrying bytes either way on every connection, and holds new ones
 * unanswered, for `ms`, as a dropped link does (nothing is refused or reset, packets just stop);
 * then the connections are cut, as TCP does once a link has been gone too long, and new ones
 * are carried again. Written by hand: a proxy that pauses on command is forty lines, and the
 * packages that simulate network faults (toxiproxy) are servers of their own.
 */
export class TcpProxy {
  readonly #server: Server;
  readonly #target: { host: string; port: number };
  readonly #pairs = new Set<[Socket, Socket]>();
  readonly #held = new Set<Socket>();
  #partitionedUntil = 0;
  #port = 0;

  constructor(target: { host: string; port: number }) {
    this.#target = target;
    this.#server = createServer((client) => this.#accept(client));
  }

  get url(): string {
    return `redis://127.0.0.1:${this.#port}`;
  }

  async start(): Promise<void> {
    this.#server.listen(0, '127.0.0.1');
    await once(this.#server, 'listening');
    const address = this.#server.address();
    if (address === null || typeof address === 'string') throw new Error('no port');
    this.#port = address.port;
  }

  /** Carries nothing for `ms`, then cuts every connection it held. */
  partition(ms: number): void {
    this.#partitionedUntil = Date.now() + ms;
    for (const [client, upstream] of this.#pairs) {
      client.pause();
      upstream.pause();
    }
    setTimeout(() => {
      this.#partitionedUntil = 0;
      for (const [client, upstream] of this.#pairs) {
        client.destroy();
        upstream.destroy();
      }
      this.#pairs.clear();
      for (const socket of this.#held) socket.destroy();
      this.#held.clear();
    }, ms).unref();
  }

  async close(): Promise<void> {
    for (const [client, upstream] of this.#pairs) {
      client.destroy();
      upstream.destroy();
    }
    for (const socket of this.#held) socket.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #accept(client: Socket): void {
    client.on('error', () => client.destroy());
    if (Date.now() < this.#partitionedUntil) {
      // The SYN got through, nothing else will: held until the partition ends.
      this.#held.add(client);
      client.pause();
      return;
    }
    const upstream = createConnection(this.#target);
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
    const pair: [Socket, Socket] = [client, upstream];
    this.#pairs.add(pair);
    const forget = () => {
      this.#pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('close', forget);
    upstream.on('close', forget);
    client.pipe(upstream);
    upstream.pipe(client);
  }
}
