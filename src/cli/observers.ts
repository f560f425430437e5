import type { Logger } from 'pino';
import { UsageError } from '../domain/errors.js';
import type { AttemptEvent } from '../observe/attempts.js';
import {
  type Dashboard,
  type DashboardSource,
  refuseOpenDashboard,
  startDashboard,
} from '../observe/dashboard/server.js';
import { createLogger, LOG_LEVELS, type LogLevel, RunLog } from '../observe/log.js';
import { BillingMetrics } from '../observe/metrics.js';
import type { ProgressEvent } from '../observe/progress.js';
import { dashboardToken, portOf, startMetricsServer } from './dashboard.js';

/** The flags `run` and `worker` share for watching them: metrics, logs, and (run) the dashboard. */
export interface ObserveFlags {
  dashboard?: true | number;
  dashboardHost?: string;
  dashboardToken?: string;
  metricsPort?: number;
  metricsHost?: string;
  logLevel?: LogLevel;
  logFile?: string;
}

/** A dashboard's source and how to let go of it. */
export interface OpenSource {
  readonly source: DashboardSource;
  close(): Promise<void>;
}

/** What watches a billing process: every part optional, each fed the same events. */
export class Observers {
  readonly metrics: BillingMetrics | undefined;
  readonly log: Logger | undefined;
  readonly #runLog: RunLog | undefined;
  #dashboard: Dashboard | undefined;
  #dashboardSource: OpenSource | undefined;
  #metricsServer: { url: string; close(): Promise<void> } | undefined;
  #runId: string | undefined;

  private constructor(metrics: BillingMetrics | undefined, log: Logger | undefined) {
    this.metrics = metrics;
    this.log = log;
    this.#runLog = log === undefined ? undefined : new RunLog(log);
  }

  /**
   * Starts what the flags ask for. `log`: `always` (a worker: JSON on stderr by default), or
   * `asked` (`run`: its stderr is for people; JSON goes to --log-file, or stderr with --log-level).
   * `openSource` opens a second connection to the run's ledger for the dashboard.
   */
  static async start(
    flags: ObserveFlags,
    options: {
      readonly log: 'always' | 'asked';
      readonly component: string;
      readonly openSource?: () => Promise<OpenSource>;
    },
  ): Promise<Observers> {
    if (flags.logLevel !== undefined && !LOG_LEVELS.includes(flags.logLevel)) {
      throw new UsageError(
        `--log-level: expected one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(flags.logLevel)}`,
      );
    }
    const wantsLog =
      options.log === 'always' || flags.logFile !== undefined || flags.logLevel !== undefined;
    const log = wantsLog
      ? createLogger({
          level: flags.logLevel,
          file: flags.logFile,
          base: { component: options.component },
        })
      : undefined;
    const dashboardPort = portOf(flags.dashboard);
    const wantsMetrics = flags.metricsPort !== undefined || dashboardPort !== undefined;
    const observers = new Observers(wantsMetrics ? new BillingMetrics() : undefined, log);
    try {
      if (flags.metricsPort !== undefined && observers.metrics !== undefined) {
        observers.#metricsServer = await startMetricsServer(
          observers.metrics,
          flags.metricsPort,
          flags.metricsHost ?? '127.0.0.1',
        );
      }
      if (dashboardPort !== undefined && options.openSource !== undefined) {
        // Checked before the ledger is opened: a refused dashboard charges nobody.
        const token = dashboardToken(flags.dashboardToken);
        refuseOpenDashboard(flags.dashboardHost ?? '127.0.0.1', token);
        const opened = await options.openSource();
        observers.#dashboardSource = opened;
        const metrics = observers.metrics;
        observers.#dashboard = await startDashboard({
          source: opened.source,
          host: flags.dashboardHost,
          port: dashboardPort,
          token,
          current: () => observers.#runId,
          ...(metrics === undefined
            ? {}
            : {
                metrics: async () => ({
                  contentType: metrics.contentType,
                  text: await metrics.text(),
                }),
              }),
        });
      }
    } catch (error) {
      await observers.close();
      throw error;
    }
    return observers;
  }

  /** Where to look, for the operator: lines for stderr. */
  describe(): string {
    const lines: string[] = [];
    if (this.#dashboard) lines.push(`bulkbill: dashboard on ${this.#dashboard.url}`);
    if (this.#metricsServer) lines.push(`bulkbill: metrics on ${this.#metricsServer.url}`);
    return lines.length === 0 ? '' : `${lines.join('\n')}\n`;
  }

  /** Whether a dashboard or metrics server is up. */
  get serving(): boolean {
    return this.#dashboard !== undefined || this.#metricsServer !== undefined;
  }

  get dashboardUrl(): string | undefined {
    return this.#dashboard?.url;
  }

  get metricsUrl(): string | undefined {
    return this.#metricsServer?.url;
  }

  /** The run being billed: the dashboard opens on it. */
  run(runId: string): void {
    this.#runId = runId;
  }

  /** An attempt of `runId` (default: the run being billed). */
  attempt(event: AttemptEvent, runId = this.#runId ?? ''): void {
    this.metrics?.attempt(event);
    this.#runLog?.attempt(runId, event);
  }

  /** The run's end, at info. */
  end(fields: Readonly<Record<string, unknown>>, message: string): void {
    this.#runLog?.end(fields, message);
  }

  progress(event: ProgressEvent): void {
    this.#runId ??= event.runId;
    this.metrics?.progress(event);
    this.#runLog?.progress(event);
  }

  async close(): Promise<void> {
    await this.#dashboard?.close();
    this.#dashboard = undefined;
    await this.#dashboardSource?.close();
    this.#dashboardSource = undefined;
    await this.#metricsServer?.close();
    this.#metricsServer = undefined;
  }
}
