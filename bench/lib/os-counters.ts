import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

// Linux exposes these in /proc; elsewhere the figures are simply absent from the report.

let clockTicksPerSecond: number | undefined;

/** CPU time (user + system) a process has used so far, in ms; undefined where /proc is absent. */
export function processCpuMs(pid: number): number | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const user = Number(fields[11]);
  const system = Number(fields[12]);
  if (!Number.isFinite(user) || !Number.isFinite(system)) return undefined;
  clockTicksPerSecond ??= readClockTicks();
  return ((user + system) * 1_000) / clockTicksPerSecond;
}

function readClockTicks(): number {
  try {
    const ticks = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isFinite(ticks) && ticks > 0 ? ticks : 100;
  } catch {
    return 100;
  }
}

/** The kernel's counts of connections refused for want of room in a listen queue. */
export interface ListenQueueDrops {
  /** Accept queue full (backlog, capped by net.core.somaxconn): the handshake's last ACK was dropped. */
  readonly listenOverflows: number;
  /** Every SYN or ACK dropped at a listening socket, overflows included. */
  readonly listenDrops: number;
  /** SYN queue full: the kernel answered with a SYN cookie instead of remembering the SYN. */
  readonly syncookiesSent: number;
}

/** This network namespace's listen-queue drop counters; undefined where /proc is absent. */
export function listenQueueDrops(): ListenQueueDrops | undefined {
  let netstat: string;
  try {
    netstat = readFileSync('/proc/net/netstat', 'utf8');
  } catch {
    return undefined;
  }
  const lines = netstat.split('\n');
  const header = lines.findIndex((line) => line.startsWith('TcpExt:'));
  const names = lines[header]?.split(/\s+/) ?? [];
  const values = lines[header + 1]?.split(/\s+/) ?? [];
  const counter = (name: string) => Number(values[names.indexOf(name)] ?? Number.NaN);
  const listenOverflows = counter('ListenOverflows');
  const listenDrops = counter('ListenDrops');
  const syncookiesSent = counter('SyncookiesSent');
  if (![listenOverflows, listenDrops, syncookiesSent].every(Number.isFinite)) return undefined;
  return { listenOverflows, listenDrops, syncookiesSent };
}

/** What the counters grew by between two readings. */
export function listenQueueDropsSince(
  before: ListenQueueDrops | undefined,
  after: ListenQueueDrops | undefined,
): ListenQueueDrops | undefined {
  if (!before || !after) return undefined;
  return {
    listenOverflows: after.listenOverflows - before.listenOverflows,
    listenDrops: after.listenDrops - before.listenDrops,
    syncookiesSent: after.syncookiesSent - before.syncookiesSent,
  };
}

/** CPU time the whole machine has spent busy so far (every core, every process), in ms. */
export function machineBusyCpuMs(): number | undefined {
  let stat: string;
  try {
    stat = readFileSync('/proc/stat', 'utf8');
  } catch {
    return undefined;
  }
  const [label, ...ticks] = (stat.split('\n')[0] ?? '').trim().split(/\s+/);
  if (label !== 'cpu') return undefined;
  // user nice system idle iowait irq softirq steal; guest time is already counted in user.
  const [user, nice, system, idle, iowait, irq, softirq, steal] = ticks.map(Number);
  const busy = [user, nice, system, irq, softirq, steal];
  if (idle === undefined || iowait === undefined || !busy.every(Number.isFinite)) return undefined;
  clockTicksPerSecond ??= readClockTicks();
  const busyTicks = busy.reduce<number>((sum, value) => sum + (value ?? 0), 0);
  return (busyTicks * 1_000) / clockTicksPerSecond;
}

/**
 * CPU time (user + system) used so far by this process's children that have exited and been
 * waited for, with their own waited-for children, in ms: how a child that is gone is measured.
 */
export function exitedChildrenCpuMs(): number | undefined {
  let stat: string;
  try {
    stat = readFileSync('/proc/self/stat', 'utf8');
  } catch {
    return undefined;
  }
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // cutime and cstime, fields 16 and 17 of proc(5).
  const user = Number(fields[13]);
  const system = Number(fields[14]);
  if (!Number.isFinite(user) || !Number.isFinite(system)) return undefined;
  clockTicksPerSecond ??= readClockTicks();
  return ((user + system) * 1_000) / clockTicksPerSecond;
}

/** A process's resident memory now and at its peak, in bytes. */
export interface ProcessMemory {
  /** VmRSS. */
  readonly rssBytes: number;
  /** VmHWM: the most it has been resident since it started. */
  readonly peakRssBytes: number;
}

/** A live process's memory from /proc/<pid>/status; undefined where /proc is absent. */
export function processMemory(pid: number): ProcessMemory | undefined {
  let status: string;
  try {
    status = readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const kibibytes = (name: string) => {
    const match = new RegExp(`^${name}:\\s+(\\d+) kB$`, 'm').exec(status);
    return match ? Number(match[1]) * 1_024 : Number.NaN;
  };
  const rssBytes = kibibytes('VmRSS');
  const peakRssBytes = kibibytes('VmHWM');
  if (!Number.isFinite(rssBytes) || !Number.isFinite(peakRssBytes)) return undefined;
  return { rssBytes, peakRssBytes };
}
