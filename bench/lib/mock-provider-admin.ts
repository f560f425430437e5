import { type Dispatcher, request } from 'undici';
import type { MockProviderStats } from '../../src/mock-provider/index.js';

/** POST /reset: forgets every charge, key and counter, and the in-flight peaks. */
export async function resetMockProvider(url: string, dispatcher: Dispatcher): Promise<void> {
  const { statusCode, body } = await request(`${url}/reset`, { method: 'POST', dispatcher });
  await body.dump();
  if (statusCode !== 200) throw new Error(`POST ${url}/reset answered ${statusCode}`);
}

/** GET /stats: what the mock provider counted since the last reset. */
export async function mockProviderStats(
  url: string,
  dispatcher: Dispatcher,
): Promise<MockProviderStats> {
  const { statusCode, body } = await request(`${url}/stats`, { dispatcher });
  if (statusCode !== 200) {
    await body.dump();
    throw new Error(`GET ${url}/stats answered ${statusCode}`);
  }
  return (await body.json()) as MockProviderStats;
}
