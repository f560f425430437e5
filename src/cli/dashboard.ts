import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { DispatchReport } from '../domain/dispatch.js';
import { UsageError } from '../domain/errors.js';
import { checkReachable, closeRedis, connectRedis } from '../engine/distributed/connection.js';
import { DEFAULT_PREFIX, DEFAULT_QUEUE } from '../engine/distributed/jobs.js';
import { DistributedStatusReader } from '../engine/distributed/status.js';
import type { ChargeRecord, Ledger } from '../ledger/ledger.js';
import { redactedUrl } from '../ledger/redis-ledger.js';
import type { Problem, UserView } from '../observe/dashboard/api.js';
import {
  type Dashboard,
  type DashboardSource,
  isLoopback,
  pointsOf,
  startDashboard,
} from '../observe/dashboard/server.js';
import { createLogger, type LogLevel } from '../observe/log.js';
import { BillingMetrics } from '../observe/metrics.js';
import { openLedger } from './ledger-access.js';
import { TOKEN_ENV } from './observers-flags.js';
import { onStopSignals } from './signals.js';

/** What the dashboard shows, read from a ledger (SQLite or Redis). */
export function ledgerSource(ledger: Ledger): DashboardSource {
  return {
    async runs() {
      return (await ledger.listRuns()).map((run) => ({
        runId: run.runId,
        createdAt: run.createdAt,
        finishedAt: run.finishedAt,
        total: run.total,
        inputPath: run.inputPath,
      }));
    },
    async run(runId) {
      const run = await ledger.findRun(runId);
      if (run === undefined) return undefined;
      const [counts, chargedAmounts] = await Promise.all([
        ledger.counts(runId),
        ledger.totals(runId, 'charged'),
      ]);
      return {
        runId,
        inputPath: run.inputPath,
        endpoint: run.endpoint,
        createdAt: run.createdAt,
        finishedAt: run.finishedAt,
        total: run.total,
        counts,
        chargedAmounts,
        dispatch: run.dispatch,
      };
    },
    samples: (runId, afterAt) => ledger.samples(runId, afterAt),
    async problems(runId, filter) {
      const { rows, matching } = await ledger.problems(runId, filter);
      return { problems: rows.map(problemOf), matching };
    },
    async user(runId, userId): Promise<UserView | undefined> {
      const charge = await ledger.charge(runId, userId);
      if (charge === undefined) return undefined;
      const history = await ledger.attemptHistory(runId, charge.userId);
      return {
        runId,
        userId: charge.userId,
        line: charge.line,
        state: charge.state,
        amount: charge.amount,
        currency: charge.currency,
        attempts: charge.attempts,
        ambiguous: charge.ambiguous,
        httpStatus: charge.httpStatus,
        latencyMs: charge.latencyMs,
        chargeId: charge.chargeId,
        error: charge.error,
        history,
      };
    },
  };
}

/**
 * A distributed run's source: the ledger's, and how the run is paced as the queue says (its
 * decider's limit and deadline, its shared breaker), with the most in flight and the refusals
 * from the workers' samples.
 */
export function queueSource(reader: DistributedStatusReader): DashboardSource {
  const base = ledgerSource(reader.ledger);
  // Most in flight and refusals so far, per run, folded from the samples as they settle: each
  // read asks only for the samples after the last second folded, not the whole run's again.
  const folded = new Map<
    string,
    { through: number; maxInFlight: number; refusals: number; limit: number | undefined }
  >();
  const fold = async (runId: string) => {
    const seen = folded.get(runId) ?? {
      through: 0,
      maxInFlight: 0,
      refusals: 0,
      limit: undefined,
    };
    // Seconds settle once every worker's sample of them is in (the server's 2 s, and a margin).
    const settled = Date.now() - SETTLED_MS;
    const points = pointsOf(await reader.ledger.samples(runId, seen.through));
    for (const point of points) {
      if (point.at + 1_000 > settled) break;
      seen.through = point.at;
      seen.maxInFlight = Math.max(seen.maxInFlight, point.inFlight);
      seen.refusals += point.refusalsPerSecond;
    }
    seen.limit = points.at(-1)?.limit ?? seen.limit;
    folded.set(runId, seen);
    return seen;
  };
  return {
    ...base,
    async run(runId) {
      const basics = await base.run(runId);
      if (basics === undefined) return undefined;
      const [status, samples] = await Promise.all([reader.read(runId, 0), fold(runId)]);
      const pacing = status.runPaced ? status.pacing : undefined;
      const dispatch: DispatchReport = {
        mode: pacing?.mode ?? 'fixed',
        limit: pacing?.limit ?? samples.limit ?? 0,
        maxInFlight: samples.maxInFlight,
        throttled: samples.refusals,
        ...(pacing?.capacity === undefined ? {} : { capacity: pacing.capacity }),
        ...(pacing?.baselineMs === undefined ? {} : { baselineMs: pacing.baselineMs }),
        ...(pacing?.deadline === undefined ? {} : { deadline: pacing.deadline }),
        breaker: {
          state: status.breaker.state,
          opened: status.breaker.opened,
          probes: status.breaker.probes,
          excused: 0,
        },
      };
      return { ...basics, dispatch };
    },
  };
}

/** How long after its end a second's samples are folded into a distributed run's totals. */
const SETTLED_MS = 5_000;

function problemOf(charge: ChargeRecord): Problem {
  return {
    userId: charge.userId,
    line: charge.line,
    state: charge.state,
    amount: charge.amount,
    currency: charge.currency,
    attempts: charge.attempts,
    httpStatus: charge.httpStatus,
    error: charge.error,
  };
}

/** `--dashboard-token`, else the environment's; '' counts as none. */
export function dashboardToken(flag: string | undefined): string | undefined {
  const token = flag ?? process.env[TOKEN_ENV];
  return token === undefined || token === '' ? undefined : token;
}

/** A port flag's value: `--dashboard` alone means 0 (any free port). */
export function portOf(value: true | number | undefined): number | undefined {
  if (value === undefined) return undefined;
  return value === true ? 0 : value;
}

/** Serves prom-client's text on /metrics, and nothing else. */
export async function startMetricsServer(
  metrics: BillingMetrics,
  port: number,
  host: string,
): Promise<{ url: string; close(): Promise<void> }> {
  const server: Server = createServer((request, response) => {
    if (request.url?.split('?')[0] !== '/metrics') {
      response.writeHead(404, { 'Content-Type': 'text/plain' });
      response.end('metrics are on /metrics\n');
      return;
    }
    metrics.text().then(
      (text) => {
        response.writeHead(200, { 'Content-Type': metrics.contentType });
        response.end(text);
      },
      (error: unknown) => {
        response.writeHead(500, { 'Content-Type': 'text/plain' });
        response.end(`${(error as Error).message}\n`);
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error) =>
      reject(new UsageError(`--metrics-port: cannot listen on ${host}:${port}: ${error.message}`)),
    );
    server.listen(port, host, () => resolve());
  });
  const bound = (server.address() as AddressInfo).port;
  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${bound}/metrics`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export interface DashboardFlags {
  ledger: string;
  redis?: string;
  prefix: string;
  queue?: string;
  port: number;
  host: string;
  runId?: string;
  dashboardToken?: string;
  logLevel?: LogLevel;
  logFile?: string;
}

/** `bulkbill dashboard`: serves any run of a ledger, live or finished, until a signal. */
export async function dashboardCommand(flags: DashboardFlags): Promise<number> {
  const token = dashboardToken(flags.dashboardToken);
  const log = createLogger({
    level: flags.logLevel,
    file: flags.logFile,
    base: { component: 'dashboard' },
  });
  let ledger: Ledger;
  let redis: ReturnType<typeof connectRedis> | undefined;
  let reader: DistributedStatusReader | undefined;
  let where: string;
  if (flags.redis !== undefined) {
    redis = connectRedis(flags.redis, 'patient');
    try {
      await checkReachable(redis, flags.redis);
    } catch (error) {
      await closeRedis(redis);
      throw error;
    }
    reader = new DistributedStatusReader({
      redis,
      prefix: flags.prefix ?? DEFAULT_PREFIX,
      queue: flags.queue ?? DEFAULT_QUEUE,
    });
    ledger = reader.ledger;
    where = redactedUrl(flags.redis);
  } else {
    ledger = await openLedger(flags.ledger);
    where = flags.ledger;
  }
  let dashboard: Dashboard | undefined;
  try {
    if (flags.runId !== undefined && (await ledger.findRun(flags.runId)) === undefined) {
      throw new UsageError(`--run-id: no run ${flags.runId} in ${where}`);
    }
    const metrics = new BillingMetrics();
    const source = reader === undefined ? ledgerSource(ledger) : queueSource(reader);
    dashboard = await startDashboard({
      source,
      host: flags.host,
      port: flags.port,
      token,
      current: flags.runId,
      metrics: async () => {
        // The runs' rows per state, as the ledger counts them now.
        for (const run of await ledger.listRuns()) {
          metrics.counts(run.runId, await ledger.counts(run.runId));
        }
        return { contentType: metrics.contentType, text: await metrics.text() };
      },
    });
    const url = dashboard.url;
    process.stderr.write(
      `bulkbill: dashboard of ${where} on ${url}${token === undefined ? '' : ' (token required: open it as ?token=…)'}${isLoopback(flags.host) ? '' : ' — reachable from other machines'}; Ctrl-C to stop\n`,
    );
    log.info({ url, ledger: where, run: flags.runId ?? null }, 'dashboard started');
    await new Promise<void>((resolve) => {
      const remove = onStopSignals(
        () => {
          remove();
          resolve();
        },
        () => {},
      );
    });
    log.info('dashboard stopped');
    return 0;
  } finally {
    await dashboard?.close();
    if (reader !== undefined) await reader.close();
    else await ledger.close();
    if (redis !== undefined) await closeRedis(redis);
  }
}
