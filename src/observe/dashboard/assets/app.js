// The bulkbill dashboard page. Plain browser JavaScript, no build step; uPlot is the global
// `uPlot` from /assets/uPlot.iife.min.js. The JSON API is described in ../api.ts.
//
// Every string that comes from the API goes into the DOM through textContent or an attribute
// (never innerHTML): user ids and reasons come from input files.

const STATES = ['charged', 'declined', 'failed', 'unknown', 'invalid', 'pending'];
const PROBLEM_STATES = ['all', 'failed', 'unknown', 'declined', 'invalid', 'pending'];
const STATE_LABELS = {
  charged: 'Charged',
  declined: 'Declined',
  failed: 'Failed',
  unknown: 'Unknown',
  invalid: 'Invalid',
  pending: 'Pending',
};

/** Points kept client-side (about 5.5 hours at one point per second). */
const MAX_POINTS = 20000;
/** Live updates refetch the problems table at most this often. */
const PROBLEM_REFRESH_MS = 2000;
const FILTER_DEBOUNCE_MS = 250;
/** When the browser gives up on the stream (a non-SSE answer), reopen it after this. */
const STREAM_REOPEN_MS = 5000;
const PROBLEM_LIMIT = 100;
const CHART_HEIGHT = 150;

const $ = (id) => document.getElementById(id);

/** Everything the page knows; reset when another run is chosen. */
const app = {
  /** Bumped on every run change: answers for an older run are dropped. */
  gen: 0,
  runId: undefined,
  run: undefined,
  series: emptySeries(),
  cursor: undefined,
  seriesLoaded: false,
  /** Updates that arrived before the full series did. */
  buffered: [],
  source: undefined,
  reopenTimer: undefined,
  streamFailed: false,
  charts: [],
  problemSeq: 0,
  problemTimer: undefined,
  lastProblemFetch: 0,
  problemCountsKey: '',
  userSeq: 0,
};

// ---------------------------------------------------------------------------------------------
// Small helpers

/** Creates an element; string children become text nodes (never parsed as HTML). */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = String(value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  node.append(...children.filter((child) => child !== undefined && child !== null));
  return node;
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function getJson(path) {
  const res = await fetch(path, {
    credentials: 'same-origin',
    headers: { Accept: 'application/json' },
  });
  if (!res.ok) {
    let message = `${res.status} ${res.statusText}`.trim();
    try {
      const body = await res.json();
      if (body && typeof body.error === 'string') message = body.error;
    } catch {
      // Not JSON: keep the status line.
    }
    throw new HttpError(res.status, message);
  }
  return res.json();
}

function runPath(suffix = '') {
  return `/api/runs/${encodeURIComponent(app.runId)}${suffix}`;
}

function showBanner(message) {
  const banner = $('banner');
  banner.textContent = message;
  banner.hidden = !message;
}

function errorMessage(error) {
  if (error instanceof HttpError && error.status === 401) {
    return 'Not authorized: open the dashboard with the link bulkbill printed (it carries ?token=).';
  }
  return error instanceof Error ? error.message : String(error);
}

// ---------------------------------------------------------------------------------------------
// Formatting

const pad2 = (n) => String(n).padStart(2, '0');

/** `3m 12s`, `1h 04m`, `2d 3h`; `—` when unknown. */
function formatDuration(ms) {
  if (ms === undefined || ms === null || !Number.isFinite(ms) || ms < 0) return '—';
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${pad2(s % 60)}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h ${pad2(m % 60)}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

function formatRate(value) {
  if (!Number.isFinite(value)) return '—';
  return value >= 100 ? value.toFixed(0) : value.toFixed(1);
}

function formatPct(part, whole) {
  if (!whole) return '0%';
  const pct = (part / whole) * 100;
  if (part > 0 && pct < 0.1) return '<0.1%';
  if (part < whole && pct > 99.9) return '>99.9%';
  return `${pct.toFixed(1)}%`;
}

/** Local wall-clock time; with the date when it is not today. */
function formatTime(epochMs) {
  if (!Number.isFinite(epochMs)) return '—';
  const d = new Date(epochMs);
  const clock = `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  const today = new Date();
  if (d.toDateString() === today.toDateString()) return clock;
  return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${clock}`;
}

function formatIso(epochMs) {
  return Number.isFinite(epochMs) ? new Date(epochMs).toISOString() : '—';
}

const minorDigitsCache = new Map();

/** Decimal places of a currency's minor unit (USD 2, JPY 0, BHD 3); 2 when unknown. */
function minorDigits(currency) {
  if (!minorDigitsCache.has(currency)) {
    let digits = 2;
    try {
      digits = new Intl.NumberFormat('en-US', { style: 'currency', currency }).resolvedOptions()
        .maximumFractionDigits;
    } catch {
      // Not an ISO 4217 code: assume cents.
    }
    minorDigitsCache.set(currency, digits);
  }
  return minorDigitsCache.get(currency);
}

/** Minor units to `1,234.56 USD`. */
function formatAmount(minor, currency) {
  if (!Number.isFinite(minor)) return '—';
  const digits = minorDigits(currency);
  const major = minor / 10 ** digits;
  const text = major.toLocaleString('en-US', {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
  return currency ? `${text} ${currency}` : text;
}

const dash = (value) => (value === undefined || value === null || value === '' ? '—' : value);

// ---------------------------------------------------------------------------------------------
// Run picker

function runLabel(run) {
  const state = run.finishedAt ? 'finished' : 'not finished';
  return `${run.runId} · ${formatTime(Date.parse(run.createdAt))} · ${run.total} rows · ${state}`;
}

function renderRunList(list) {
  const runs = [...list.runs].sort((a, b) => String(b.createdAt).localeCompare(a.createdAt));
  const select = $('runs');
  select.replaceChildren(
    ...runs.map((run) =>
      el('option', { value: run.runId, text: runLabel(run), title: run.inputPath }),
    ),
  );
  return runs;
}

/** The shown run's option follows its view (it finishes while the page is open). */
function relabelRunOption(run) {
  const option = [...$('runs').options].find((each) => each.value === run.runId);
  if (option) option.textContent = runLabel(run);
}

function selectRunOption(runId) {
  const select = $('runs');
  // A run missing from the list (created after it was read) still gets an option.
  if (![...select.options].some((option) => option.value === runId)) {
    select.prepend(el('option', { value: runId, text: runId }));
  }
  select.value = runId;
}

function onRunPicked() {
  const runId = $('runs').value;
  if (!runId || runId === app.runId) return;
  const url = new URL(location.href);
  url.searchParams.set('run', runId);
  history.replaceState(null, '', url);
  loadRun(runId).catch((error) => showBanner(errorMessage(error)));
}

// ---------------------------------------------------------------------------------------------
// Progress card

function buildProgress() {
  $('bar').replaceChildren(
    ...STATES.map((state) => el('div', { class: `seg st-${state}`, dataset: { state } })),
  );
  $('legend').replaceChildren(
    ...STATES.map((state) =>
      el(
        'li',
        { class: 'legend-item' },
        el('span', { class: `swatch st-${state}`, 'aria-hidden': 'true' }),
        el('span', { class: 'legend-name', text: STATE_LABELS[state] }),
        el('span', { class: 'legend-count', dataset: { count: state }, text: '0' }),
        el('span', { class: 'legend-pct', dataset: { pct: state }, text: '0%' }),
      ),
    ),
  );
}

function renderRun(run) {
  app.run = run;
  relabelRunOption(run);
  $('run-id').textContent = run.runId;
  $('run-input').textContent = dash(run.inputPath);
  $('run-endpoint').textContent = dash(run.endpoint);
  $('run-created').textContent = formatTime(Date.parse(run.createdAt));
  renderBadge(run);
  renderCounts(run);
  $('per-second').textContent = formatRate(run.perSecond);
  $('eta').textContent = formatDuration(run.etaMs);
  $('elapsed').textContent = formatDuration(run.elapsedMs);
  renderDispatch(run.dispatch);
  renderDeadline(run.deadline);
  renderAmounts(run.chargedAmounts);
  document.title = `${formatPct(run.done, run.total)} · ${run.runId} · bulkbill`;
}

function renderBadge(run) {
  const badge = $('live');
  let text = 'stopped';
  if (run.finishedAt) text = 'finished';
  else if (run.live) text = 'live';
  badge.textContent = text;
  badge.className = `badge badge-${text}`;
  badge.title = run.finishedAt
    ? `Finished ${formatTime(Date.parse(run.finishedAt))}`
    : run.live
      ? 'A process is billing this run now'
      : 'Not finished, and no process is billing it now';
}

function renderCounts(run) {
  const total = run.total;
  $('done').textContent = String(run.done);
  $('total').textContent = String(total);
  $('done-pct').textContent = formatPct(run.done, total);
  for (const state of STATES) {
    const count = run.counts?.[state] ?? 0;
    const pct = formatPct(count, total);
    const seg = $('bar').querySelector(`[data-state="${state}"]`);
    seg.style.flexGrow = String(count);
    seg.classList.toggle('empty', count === 0);
    seg.title = `${STATE_LABELS[state]}: ${count} (${pct})`;
    document.querySelector(`[data-count="${state}"]`).textContent = String(count);
    document.querySelector(`[data-pct="${state}"]`).textContent = pct;
  }
}

function renderDispatch(dispatch) {
  const lastLimit = app.series.limit.at(-1);
  const limit = dispatch?.limit ?? lastLimit;
  $('limit').textContent = limit === undefined ? '—' : String(limit);
  const mode = $('mode');
  mode.hidden = !dispatch;
  mode.textContent = dispatch ? dispatch.mode : '';
  $('capacity').textContent = dispatch?.capacity === undefined ? '—' : String(dispatch.capacity);
  $('max-in-flight').textContent = dispatch ? String(dispatch.maxInFlight) : '—';
  $('throttled').textContent = dispatch ? String(dispatch.throttled) : '—';
  const breaker = $('breaker');
  const report = dispatch?.breaker;
  breaker.textContent = report ? report.state : 'none';
  breaker.className = report ? `pill breaker-${report.state}` : 'muted';
  breaker.title = report
    ? `opened ${report.opened}×, ${report.probes} probes, ${report.excused} attempts excused`
    : 'No circuit breaker';
}

/** `#deadline` exists only while the run has a deadline. */
function renderDeadline(deadline) {
  const slot = $('deadline-slot');
  if (!deadline) {
    slot.replaceChildren();
    return;
  }
  const ok = deadline.feasible;
  const parts = [
    el('span', { class: 'deadline-label', text: 'Deadline' }),
    el('strong', { class: 'deadline-at', text: formatTime(deadline.at) }),
    el('span', {
      class: `pill ${ok ? 'pill-ok' : 'pill-risk'}`,
      text: ok ? 'on track' : 'AT RISK',
    }),
    el('span', { text: 'expected end' }),
    el('strong', { text: formatTime(deadline.expectedEndAt) }),
    el('span', { class: 'muted', text: `needs ${deadline.need} in flight` }),
  ];
  if (deadline.bound) parts.push(el('span', { class: 'muted', text: `bound: ${deadline.bound}` }));
  slot.replaceChildren(
    el('div', { id: 'deadline', class: `deadline ${ok ? 'ok' : 'risk'}` }, ...parts),
  );
}

function renderAmounts(amounts) {
  const entries = Object.entries(amounts ?? {}).sort(([a], [b]) => a.localeCompare(b));
  const box = $('amounts');
  if (entries.length === 0) {
    box.replaceChildren(el('span', { class: 'muted', text: 'nothing charged yet' }));
    return;
  }
  box.replaceChildren(
    el('span', { class: 'muted', text: 'charged' }),
    ...entries.map(([currency, minor]) =>
      el('span', { class: 'amount', text: formatAmount(minor, currency) }),
    ),
  );
}

// ---------------------------------------------------------------------------------------------
// Series and charts

function emptySeries() {
  return {
    x: [],
    charges: [],
    attempts: [],
    p50: [],
    p95: [],
    inFlight: [],
    limit: [],
    retries: [],
    refusals: [],
    breaker: [],
  };
}

/** How each column is read from a SeriesPoint (`null` stays null: a gap). */
const COLUMNS = {
  charges: (p) => p.chargesPerSecond,
  attempts: (p) => p.attemptsPerSecond,
  p50: (p) => p.p50Ms,
  p95: (p) => p.p95Ms,
  inFlight: (p) => p.inFlight,
  limit: (p) => p.limit,
  retries: (p) => p.retriesPerSecond,
  refusals: (p) => p.refusalsPerSecond,
  breaker: (p) => p.breaker,
};

/**
 * Adds points in time order. The stream and the series page may overlap: a point older than the
 * last one kept is dropped, one for the same second replaces it.
 */
function mergePoints(points) {
  const s = app.series;
  for (const p of points ?? []) {
    const x = p.at / 1000;
    const last = s.x.length - 1;
    if (last >= 0 && x < s.x[last]) continue;
    const replace = last >= 0 && x === s.x[last];
    if (!replace) s.x.push(x);
    for (const [key, read] of Object.entries(COLUMNS)) {
      const value = read(p) ?? null;
      if (replace) s[key][last] = value;
      else s[key].push(value);
    }
  }
  const excess = s.x.length - MAX_POINTS;
  if (excess > 0) for (const column of Object.values(s)) column.splice(0, excess);
}

const AXIS_FONT = '11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';
const GRID = { stroke: '#edf0f4', width: 1 };
const TICKS = { stroke: '#d5dbe3', width: 1, size: 4 };

function compactNumber(value) {
  if (value === null || value === undefined) return '';
  const abs = Math.abs(value);
  if (abs >= 1e6) return `${+(value / 1e6).toFixed(1)}M`;
  if (abs >= 1e3) return `${+(value / 1e3).toFixed(1)}k`;
  return String(+value.toFixed(2));
}

/** x axis labels: 24 h clock, seconds only for short spans. */
function timeTicks(u, splits) {
  const span = (u.scales.x.max ?? 0) - (u.scales.x.min ?? 0);
  return splits.map((s) => {
    const d = new Date(s * 1000);
    const hm = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
    return span > 3600 ? hm : `${hm}:${pad2(d.getSeconds())}`;
  });
}

const BREAKER_LABELS = new Map([
  [0, 'closed'],
  [0.5, 'half'],
  [1, 'open'],
]);

/** From zero to a bit above the highest value (1 when all are zero). */
const fromZero = (_u, _min, max) => [0, max > 0 ? max * 1.1 : 1];

/** The six charts: which columns they draw and how. */
function chartSpecs() {
  const stepped = uPlot.paths.stepped?.({ align: 1 });
  return [
    {
      id: 'chart-throughput',
      series: [
        { key: 'charges', label: 'charges/s', stroke: '#2563eb', fill: 'rgba(37,99,235,0.08)' },
        { key: 'attempts', label: 'attempts/s', stroke: '#94a3b8' },
      ],
    },
    {
      id: 'chart-latency',
      series: [
        { key: 'p50', label: 'p50 ms', stroke: '#0d9488' },
        { key: 'p95', label: 'p95 ms', stroke: '#d97706' },
      ],
    },
    {
      id: 'chart-inflight',
      series: [
        { key: 'inFlight', label: 'in flight', stroke: '#7c3aed', fill: 'rgba(124,58,237,0.08)' },
        { key: 'limit', label: 'limit', stroke: '#475569', dash: [5, 4], paths: stepped },
      ],
    },
    {
      id: 'chart-retries',
      series: [{ key: 'retries', label: 'retries/s', stroke: '#ea580c' }],
    },
    {
      id: 'chart-refusals',
      series: [{ key: 'refusals', label: '429/503 /s', stroke: '#dc2626' }],
    },
    {
      id: 'chart-breaker',
      range: [-0.1, 1.1],
      splits: [0, 0.5, 1],
      values: (_u, splits) => splits.map((v) => BREAKER_LABELS.get(v) ?? ''),
      legendValue: (v) => (v === null ? '—' : (BREAKER_LABELS.get(v) ?? String(v))),
      series: [
        {
          key: 'breaker',
          label: 'breaker',
          stroke: '#b91c1c',
          fill: 'rgba(185,28,28,0.08)',
          paths: stepped,
        },
      ],
      note: 'no breaker',
    },
  ];
}

function chartOptions(spec, width) {
  const legendValue = spec.legendValue ?? ((v) => (v === null ? '—' : compactNumber(v)));
  return {
    width,
    height: CHART_HEIGHT,
    padding: [8, 18, 0, 0],
    // Live updates call setData every second, which would undo a zoom: keep the full range.
    cursor: { sync: { key: 'bulkbill' }, drag: { x: false, y: false } },
    legend: { live: true },
    scales: {
      x: { time: true },
      y: { range: spec.range ?? fromZero },
    },
    axes: [
      {
        font: AXIS_FONT,
        stroke: '#5b6676',
        grid: GRID,
        ticks: TICKS,
        size: 30,
        values: timeTicks,
      },
      {
        font: AXIS_FONT,
        stroke: '#5b6676',
        grid: GRID,
        ticks: TICKS,
        size: spec.splits ? 50 : 44,
        splits: spec.splits ? () => spec.splits : undefined,
        values: spec.values ?? ((_u, splits) => splits.map(compactNumber)),
      },
    ],
    series: [
      { label: 'time', value: (_u, v) => (v === null ? '—' : formatTime(v * 1000)) },
      ...spec.series.map((s) => ({
        label: s.label,
        stroke: s.stroke,
        fill: s.fill,
        width: 1.5,
        dash: s.dash,
        paths: s.paths,
        spanGaps: false,
        points: { size: 4 },
        value: (_u, v) => legendValue(v),
      })),
    ],
  };
}

function buildCharts() {
  app.charts = chartSpecs().map((spec) => {
    const container = $(spec.id);
    const note = el('div', { class: 'chart-note', hidden: true });
    container.parentElement.append(note);
    const plot = new uPlot(chartOptions(spec, chartWidth(container)), chartData(spec), container);
    return { spec, container, note, plot };
  });
  // Charts follow their card's width (the grid decides it, not the chart).
  const observer = new ResizeObserver(() => {
    for (const chart of app.charts) {
      const width = chartWidth(chart.container);
      if (width !== chart.plot.width) chart.plot.setSize({ width, height: CHART_HEIGHT });
    }
  });
  for (const chart of app.charts) observer.observe(chart.container);
}

function chartWidth(container) {
  return Math.max(200, Math.floor(container.clientWidth));
}

function chartData(spec) {
  return [app.series.x, ...spec.series.map((s) => app.series[s.key])];
}

function redrawCharts() {
  const points = app.series.x.length;
  for (const { spec, container, note, plot } of app.charts) {
    plot.setData(chartData(spec));
    container.dataset.points = String(points);
    let text = points === 0 ? 'no data yet' : '';
    if (spec.note && points > 0 && app.series.breaker.every((v) => v === null)) text = spec.note;
    note.textContent = text;
    note.hidden = !text;
  }
}

// ---------------------------------------------------------------------------------------------
// Problems table

function buildProblemControls() {
  $('problem-state').replaceChildren(
    ...PROBLEM_STATES.map((state) => el('option', { value: state, text: state })),
  );
  $('problem-state').addEventListener('change', () => refreshProblems());
  let timer;
  $('problem-filter').addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(() => refreshProblems(), FILTER_DEBOUNCE_MS);
  });
  $('problems').addEventListener('click', (event) => {
    const button = event.target.closest('button.user-link');
    if (button) openUser(button.closest('tr').dataset.user);
  });
}

async function refreshProblems() {
  const seq = ++app.problemSeq;
  app.lastProblemFetch = Date.now();
  const params = new URLSearchParams();
  const state = $('problem-state').value;
  const q = $('problem-filter').value.trim();
  if (state && state !== 'all') params.set('state', state);
  if (q) params.set('q', q);
  params.set('limit', String(PROBLEM_LIMIT));
  try {
    const page = await getJson(runPath(`/problems?${params}`));
    if (seq === app.problemSeq) renderProblems(page);
  } catch (error) {
    // A run that fails to load says so itself; this would only hide it.
    if (seq === app.problemSeq && $('banner').hidden) {
      showBanner(`Problems: ${errorMessage(error)}`);
    }
  }
}

function renderProblems(page) {
  const problems = page.problems ?? [];
  $('problem-count').textContent = `${page.matching} matching`;
  $('problem-shown').textContent =
    page.matching > problems.length ? `(latest ${problems.length} shown)` : '';
  $('problems').tBodies[0].replaceChildren(...problems.map(problemRow));
  $('problems-empty').hidden = problems.length > 0;
}

function problemRow(p) {
  return el(
    'tr',
    { dataset: { testid: 'problem-row', user: p.userId } },
    el(
      'td',
      { class: 'user-cell' },
      el('button', { type: 'button', class: 'user-link mono', text: p.userId, title: p.userId }),
    ),
    el('td', { class: 'num', text: p.line }),
    el('td', {}, statePill(p.state)),
    el('td', { class: 'num', text: dash(p.httpStatus) }),
    el('td', { class: 'num', text: p.attempts }),
    el('td', { class: 'num', text: formatAmount(p.amount, p.currency) }),
    el('td', { class: 'reason', text: dash(p.error), title: p.error }),
  );
}

function statePill(state) {
  return el('span', { class: `pill st-${state}`, text: state });
}

/**
 * On a live update: refetch the problems when the counts moved, at most once per
 * PROBLEM_REFRESH_MS (one timer pending at most).
 */
function noteCounts(run) {
  const key = STATES.map((state) => run.counts?.[state] ?? 0).join(',');
  if (key === app.problemCountsKey) return;
  app.problemCountsKey = key;
  if (app.problemTimer !== undefined) return;
  const wait = Math.max(0, app.lastProblemFetch + PROBLEM_REFRESH_MS - Date.now());
  const gen = app.gen;
  app.problemTimer = setTimeout(() => {
    app.problemTimer = undefined;
    if (gen === app.gen) refreshProblems();
  }, wait);
}

// ---------------------------------------------------------------------------------------------
// User search

function buildUserSearch() {
  $('user-form').addEventListener('submit', (event) => {
    event.preventDefault();
    searchUser($('user-search').value);
  });
}

function openUser(userId) {
  $('user-search').value = userId;
  searchUser(userId);
  $('user-result').scrollIntoView({ block: 'nearest', behavior: 'smooth' });
}

async function searchUser(raw) {
  const userId = raw.trim();
  if (!userId || !app.runId) return;
  const seq = ++app.userSeq;
  const panel = $('user-result');
  panel.replaceChildren(el('p', { class: 'empty', text: 'Looking up…' }));
  try {
    const user = await getJson(runPath(`/users/${encodeURIComponent(userId)}`));
    if (seq === app.userSeq) panel.replaceChildren(...userView(user));
  } catch (error) {
    if (seq !== app.userSeq) return;
    if (error instanceof HttpError && error.status === 404) {
      panel.replaceChildren(
        el(
          'p',
          { id: 'user-missing', class: 'missing' },
          'User ',
          el('strong', { class: 'mono', text: userId }),
          ' is not in this run.',
        ),
      );
    } else {
      panel.replaceChildren(el('p', { class: 'error', text: errorMessage(error) }));
    }
  }
}

function userView(user) {
  const fields = [
    ['State', el('span', { id: 'user-state', class: `pill st-${user.state}`, text: user.state })],
    ['Amount', formatAmount(user.amount, user.currency)],
    ['Attempts', String(user.attempts)],
    [
      'Ambiguous',
      user.ambiguous
        ? el('span', { class: 'warn', text: 'yes: may have reached the provider' })
        : 'no',
    ],
    ['HTTP status', String(dash(user.httpStatus))],
    ['Latency', user.latencyMs === undefined ? '—' : `${Math.round(user.latencyMs)} ms`],
    ['Charge id', el('span', { id: 'user-charge-id', class: 'mono', text: dash(user.chargeId) })],
    ['Line', String(user.line)],
    ['Error', el('span', { class: 'reason-full', text: dash(user.error) })],
  ];
  const head = el(
    'div',
    { class: 'user-head' },
    el('span', { class: 'mono user-id', text: user.userId }),
  );
  const dl = el(
    'dl',
    { class: 'fields' },
    ...fields.map(([name, value]) => el('div', {}, el('dt', { text: name }), el('dd', {}, value))),
  );
  return [head, dl, attemptsTable(user.history ?? [])];
}

function attemptsTable(history) {
  if (history.length === 0) return el('p', { class: 'empty', text: 'No attempts recorded.' });
  const head = el(
    'tr',
    {},
    ...['#', 'Time (UTC)', 'HTTP', 'Latency', 'Outcome', 'Reason'].map((name, i) =>
      el('th', { class: [0, 2, 3].includes(i) ? 'num' : undefined, text: name }),
    ),
  );
  const rows = history.map((a) =>
    el(
      'tr',
      { dataset: { testid: 'attempt-row' } },
      el('td', { class: 'num', text: a.attempt }),
      el('td', { class: 'mono nowrap', text: formatIso(a.at) }),
      el('td', { class: 'num', text: dash(a.httpStatus) }),
      el('td', {
        class: 'num',
        text: a.latencyMs === undefined ? '—' : `${Math.round(a.latencyMs)} ms`,
      }),
      el('td', {}, el('span', { class: `pill out-${a.outcome}`, text: a.outcome })),
      el('td', { class: 'reason', text: dash(a.reason), title: a.reason }),
    ),
  );
  return el(
    'div',
    { class: 'table-wrap' },
    el('table', { class: 'grid attempts' }, el('thead', {}, head), el('tbody', {}, ...rows)),
  );
}

// ---------------------------------------------------------------------------------------------
// Live updates

function setStreamStatus(text) {
  const status = $('stream-status');
  status.textContent = text;
  status.parentElement.dataset.status = text;
}

function closeStream() {
  clearTimeout(app.reopenTimer);
  app.source?.close();
  app.source = undefined;
}

function openStream(gen) {
  closeStream();
  const source = new EventSource(runPath('/events'));
  app.source = source;
  setStreamStatus('connecting');
  source.addEventListener('open', () => {
    if (gen !== app.gen) return;
    setStreamStatus('connected');
    // Back after an outage: fetch the points the stream may have missed.
    if (app.streamFailed && app.seriesLoaded) backfill(gen);
    app.streamFailed = false;
  });
  source.addEventListener('stale', (event) => {
    if (gen !== app.gen) return;
    let said = {};
    try {
      said = JSON.parse(event.data);
    } catch {
      // The word is enough.
    }
    app.stale = true;
    setStreamStatus('ledger not answering');
    const since = typeof said.since === 'number' ? formatTime(said.since) : 'the last update';
    showBanner(
      `The ledger does not answer (${said.error ?? 'no answer'}): the figures are as of ${since}.`,
    );
  });
  source.addEventListener('update', (event) => {
    if (gen !== app.gen) return;
    let update;
    try {
      update = JSON.parse(event.data);
    } catch {
      return;
    }
    if (app.stale) {
      app.stale = false;
      setStreamStatus('connected');
      showBanner('');
    }
    if (app.seriesLoaded) applyUpdate(update);
    else app.buffered.push(update);
  });
  source.addEventListener('error', () => {
    if (gen !== app.gen) return;
    app.streamFailed = true;
    setStreamStatus('reconnecting');
    // EventSource retries by itself unless the answer was not an event stream (then CLOSED).
    if (source.readyState === EventSource.CLOSED) {
      app.reopenTimer = setTimeout(() => {
        if (gen === app.gen) openStream(gen);
      }, STREAM_REOPEN_MS);
    }
  });
}

async function backfill(gen) {
  try {
    const after = app.cursor === undefined ? '' : `?after=${encodeURIComponent(app.cursor)}`;
    const page = await getJson(runPath(`/series${after}`));
    if (gen !== app.gen) return;
    mergePoints(page.points);
    noteCursor(page.cursor);
    redrawCharts();
  } catch {
    // The next update brings new points anyway.
  }
}

function noteCursor(cursor) {
  if (typeof cursor === 'number' && !(cursor <= app.cursor)) app.cursor = cursor;
}

function applyUpdate(update) {
  // Updates that raced the first load may be older than the view already shown.
  if (update.run && !(update.run.at < app.run?.at)) {
    renderRun(update.run);
    noteCounts(update.run);
  }
  if (update.points?.length) {
    mergePoints(update.points);
    redrawCharts();
  }
  noteCursor(update.cursor);
}

// ---------------------------------------------------------------------------------------------
// Loading

function resetRunState(runId) {
  app.gen += 1;
  closeStream();
  clearTimeout(app.problemTimer);
  app.problemTimer = undefined;
  app.runId = runId;
  app.run = undefined;
  app.series = emptySeries();
  app.cursor = undefined;
  app.seriesLoaded = false;
  app.buffered = [];
  app.streamFailed = false;
  app.userSeq += 1;
  // Nothing of the previous run stays on screen while this one loads.
  redrawCharts();
  $('live').textContent = '—';
  $('live').className = 'badge';
  $('problems').tBodies[0].replaceChildren();
  $('user-result').replaceChildren(
    el('p', { class: 'empty', text: 'Search a user id, or click one in the problems table.' }),
  );
  return app.gen;
}

/** Shows one run: its view, its full series and its problems, then follows its stream. */
async function loadRun(runId) {
  const gen = resetRunState(runId);
  selectRunOption(runId);
  $('run-id').textContent = runId;
  showBanner('');
  // The stream opens first and buffers: nothing falls between the series page and it.
  openStream(gen);
  let run;
  let page;
  try {
    [run, page] = await Promise.all([
      getJson(runPath()),
      getJson(runPath('/series')),
      refreshProblems(),
    ]);
  } catch (error) {
    if (gen !== app.gen) return;
    if (error instanceof HttpError && error.status === 404) {
      // No such run: following its stream would only retry forever.
      closeStream();
      setStreamStatus('closed');
    } else {
      // Something else went wrong: live updates can still bring the run in.
      app.seriesLoaded = true;
      flushBuffered();
    }
    throw new Error(`Run ${runId}: ${errorMessage(error)}`);
  }
  if (gen !== app.gen) return;
  mergePoints(page.points);
  noteCursor(page.cursor);
  renderRun(run);
  app.problemCountsKey = STATES.map((state) => run.counts?.[state] ?? 0).join(',');
  redrawCharts();
  app.seriesLoaded = true;
  flushBuffered();
}

function flushBuffered() {
  const updates = app.buffered;
  app.buffered = [];
  for (const update of updates) applyUpdate(update);
}

async function start() {
  // The requests go out first; the page is built while they are answered. With `?run=` the
  // run loads while the list is read; else the list says which run to show.
  const wanted = new URLSearchParams(location.search).get('run');
  const fail = (error) => showBanner(errorMessage(error));
  const listed = getJson('/api/runs');
  const loading = wanted ? loadRun(wanted).catch(fail) : undefined;
  buildProgress();
  buildCharts();
  buildProblemControls();
  buildUserSearch();
  $('runs').addEventListener('change', onRunPicked);
  try {
    const list = await listed;
    const runs = renderRunList(list);
    if (wanted) selectRunOption(wanted);
    const runId = wanted || list.current || runs[0]?.runId;
    if (!runId) showBanner('No runs yet: start one with `bulkbill run`.');
    else if (!wanted) await loadRun(runId);
  } catch (error) {
    fail(error);
  }
  await loading;
  document.body.dataset.ready = '1';
}

start();
