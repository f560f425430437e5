/**
 * The baseline server of the benchmarks: a plain node:http server that drains the request body
 * and answers 200 `{}`, nothing else. Whatever the mock provider costs beyond this is its own.
 *
 * Usage: node --import tsx bench/bare-server.ts   (prints `listening on http://127.0.0.1:PORT`)
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

const BODY = '{}';
const HEADERS = {
  'content-type': 'application/json',
  'content-length': Buffer.byteLength(BODY),
} as const;

// The same keep-alive as the mock provider, so both hold client connections equally long.
const server = createServer({ keepAliveTimeout: 10_000, noDelay: true }, (req, res) => {
  req.resume();
  req.on('end', () => {
    res.writeHead(200, HEADERS);
    res.end(BODY);
  });
});

// The default of 511 pending connections drops SYNs when thousands of clients connect at once.
server.listen({ port: 0, host: '127.0.0.1', backlog: 65_535 }, () => {
  const { port } = server.address() as AddressInfo;
  process.stdout.write(`listening on http://127.0.0.1:${port}\n`);
});

// Ending by closing (not process.exit) lets `--cpu-prof` write its profile.
process.once('SIGTERM', () => {
  server.close();
  server.closeAllConnections();
});
