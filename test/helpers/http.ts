import { Agent, request } from 'undici';

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
