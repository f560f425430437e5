import type { IncomingMessage, Server } from 'node:http';
import { Agent, request } from 'undici';

/** A request's whole body, as text: what a test's own HTTP server reads before it answers. */
export async function readBody(req: IncomingMessage): Promise<string> {
  let body = '';
  req.setEncoding('utf8');
  for await (const chunk of req) body += chunk as string;
  return body;
}

/** Closes a test's own HTTP server, dropping its connections (keep-alive ones too), and waits. */
export function closeServer(server: Server): Promise<void> {
  return new Promise<void>((resolve) => {
    server.closeAllConnections();
    server.close(() => resolve());
  });
}

export interface Answer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  json: Record<string, unknown>;
}

/** An undici agent for a test file; close it in afterAll. */
export function testAgent(connections = 256): Agent {
  return new Agent({ connections, keepAliveTimeout: 1_000 });
}

/** POSTs a charge body (an object, or raw text) with optional headers; never retries. */
export async function postCharge(
  agent: Agent,
  baseUrl: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<Answer> {
  const response = await request(`${baseUrl}/charge`, {
    dispatcher: agent,
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await response.body.text();
  return {
    status: response.statusCode,
    headers: response.headers,
    body: text,
    json: text ? (JSON.parse(text) as Record<string, unknown>) : {},
  };
}

/** GETs a JSON document. */
export async function getJson<T = Record<string, unknown>>(agent: Agent, url: string): Promise<T> {
  const response = await request(url, { dispatcher: agent });
  return (await response.body.json()) as T;
}
