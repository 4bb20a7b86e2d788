// app.js — the tickstream dashboard: a ticker board and a live chart,
// built on tickstream.js and TradingView Lightweight Charts (loaded as the
// global LightweightCharts by the vendored standalone build).

import { Tickstream, Candles, TransportName } from './tickstream.js';

const LWC = globalThis.LightweightCharts;
const INTERVALS = { '1s': 1000, '1m': 60000, '5m': 300000, '1h': 3600000 };
const BACKFILL_BARS = 500;
const SORT_EVERY_MS = 500;
const RATE_WINDOW_S = 3;

const $ = (id) => document.getElementById(id);
const store = {
  get(k, d) { try { return localStorage.getItem('tickstream.' + k) ?? d; } catch { return d; } },
  set(k, v) { try { localStorage.setItem('tickstream.' + k, String(v)); } catch { /* private mode */ } },
};

// ---- formatting ------------------------------------------------------------

function decimalsFor(p) {
  if (!Number.isFinite(p) || p === 0) return 2;
  const a = Math.abs(p);
  if (a >= 1000) return 2;
  // six significant digits, like the quotes themselves, at least two decimals
  return Math.min(8, Math.max(2, 5 - Math.floor(Math.log10(a))));
}
function fmtPrice(p, d) {
  if (!Number.isFinite(p)) return '—';
  return p.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d });
}
function fmtSigned(x, d) {
  if (!Number.isFinite(x)) return '—';
  return (x > 0 ? '+' : x < 0 ? '−' : '') + fmtPrice(Math.abs(x), d);
}
function fmtPct(x) {
  if (!Number.isFinite(x)) return '—';
  return (x > 0 ? '+' : x < 0 ? '−' : '') + Math.abs(x).toFixed(2) + '%';
}
function fmtVol(v) {
  if (!Number.isFinite(v)) return '—';
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(2) + 'B';
  if (a >= 1e6) return (v / 1e6).toFixed(2) + 'M';
  if (a >= 1e4) return (v / 1e3).toFixed(1) + 'K';
  return v.toFixed(a >= 100 ? 0 : 2);
}
function fmtAge(ms) {
  if (!Number.isFinite(ms)) return '—';
  if (ms < 0) ms = 0;
  if (ms < 10000) return (ms / 1000).toFixed(1) + 's';
  if (ms < 60000) return Math.round(ms / 1000) + 's';
  if (ms < 3600000) return Math.round(ms / 60000) + 'm';
  return Math.round(ms / 3600000) + 'h';
}

// ---- state -----------------------------------------------------------------

const rows = new Map(); // topic -> row
const ui = {
  sortKey: store.get('sortKey', 'topic'),
  sortDir: Number(store.get('sortDir', '1')) || 1,
  filter: '',
  order: [], // topics in display order
  orderDirty: true,
  lastSort: 0,
  selected: null,
  msgCount: 0,
  lastError: '',
};

const throttle = Number(store.get('throttle', '250')) || 250;
// A server with auth on needs a token: open the page as /?token=<jwt>.
const token = new URLSearchParams(location.search).get('token') || null;
const authHeaders = token ? { Authorization: 'Bearer ' + token } : {};
const client = new Tickstream({ topics: ['*'], throttleMs: throttle, token });

// ---- board -----------------------------------------------------------------

const tbody = $('rows');
const COLS = ['topic', 'price', 'chg', 'pct', 'bid', 'ask', 'volume', 'rate', 'age'];
const COL_CLASS = { topic: 'sym', price: 'num', chg: 'num', pct: 'num', bid: 'num opt', ask: 'num opt', volume: 'num opt2', rate: 'num opt', age: 'num opt2' };

function rowFor(topic) {
  let r = rows.get(topic);
  if (r) return r;
  r = {
    topic, price: NaN, open: NaN, bid: NaN, ask: NaN, volume: NaN, volSum: 0,
    ts: NaN, seq: 0, epoch: '', dir: 0, flip: 0, rate: 0, counts: [], dirty: true, el: null, cells: null,
  };
  rows.set(topic, r);
  ui.orderDirty = true;
  return r;
}

function countTick(r, n, now) {
  const sec = Math.floor(now / 1000);
  const last = r.counts[r.counts.length - 1];
  if (last && last[0] === sec) last[1] += n;
  else r.counts.push([sec, n]);
  while (r.counts.length && r.counts[0][0] <= sec - RATE_WINDOW_S - 1) r.counts.shift();
}

function rateOf(r, now) {
  const sec = Math.floor(now / 1000);
  let sum = 0;
  for (const [s, n] of r.counts) if (s < sec && s >= sec - RATE_WINDOW_S) sum += n;
  // until a whole window has passed, keep the server's figure
  return r.counts.length && r.counts[0][0] <= sec - RATE_WINDOW_S ? sum / RATE_WINDOW_S : (r.rate || sum);
}

function applyData(r, data, ts) {
  if (!data) return;
  if (Number.isFinite(data.price)) {
    const p = data.price;
    if (Number.isFinite(r.price) && p !== r.price) {
      r.dir = p > r.price ? 1 : -1;
      r.flash = r.dir;
    }
    r.price = p;
    if (!Number.isFinite(r.open)) r.open = p;
  }
  if (Number.isFinite(data.bid)) r.bid = data.bid;
  if (Number.isFinite(data.ask)) r.ask = data.ask;
  if (Number.isFinite(data.volume)) r.volume = data.volume;
  if (Number.isFinite(ts)) r.ts = ts;
  r.dirty = true;
}

function buildRow(r) {
  const tr = document.createElement('tr');
  tr.tabIndex = 0;
  tr.dataset.topic = r.topic;
  r.cells = {};
  for (const k of COLS) {
    const td = document.createElement('td');
    td.className = COL_CLASS[k];
    td.dataset.col = k;
    tr.appendChild(td);
    r.cells[k] = td;
  }
  r.cells.topic.textContent = r.topic;
  r.el = tr;
  r.text = {};
  if (r.topic === ui.selected) tr.classList.add('sel');
}

function setText(r, k, text) {
  if (r.text[k] !== text) {
    r.text[k] = text;
    r.cells[k].textContent = text;
  }
}

function setDir(td, dir) {
  td.classList.toggle('up', dir > 0);
  td.classList.toggle('down', dir < 0);
}

function renderRow(r) {
  if (!r.el) buildRow(r);
  const d = decimalsFor(r.price);
  const chg = r.price - r.open;
  const pct = r.open ? (chg / r.open) * 100 : NaN;
  setText(r, 'price', fmtPrice(r.price, d));
  setText(r, 'chg', fmtSigned(chg, d));
  setText(r, 'pct', fmtPct(pct));
  setText(r, 'bid', fmtPrice(r.bid, decimalsFor(r.bid)));
  setText(r, 'ask', fmtPrice(r.ask, decimalsFor(r.ask)));
  setText(r, 'volume', fmtVol(Number.isFinite(r.volume) ? r.volume : r.volSum));
  setDir(r.cells.price, r.dir);
  const cdir = Math.sign(chg) || 0;
  setDir(r.cells.chg, cdir);
  setDir(r.cells.pct, cdir);
  if (r.flash) {
    // Two identical animations, alternated, restart the flash without a
    // forced reflow.
    const cls = (r.flash > 0 ? 'flash-up-' : 'flash-down-') + r.flip;
    r.flip ^= 1;
    for (const k of ['price', 'bid', 'ask']) {
      const td = r.cells[k];
      td.classList.remove('flash-up-0', 'flash-up-1', 'flash-down-0', 'flash-down-1');
      td.classList.add(cls);
    }
    r.flash = 0;
  }
  r.dirty = false;
}

function renderAges(now) {
  for (const r of rows.values()) {
    if (!r.el) continue;
    const age = now - r.ts;
    setText(r, 'age', fmtAge(age));
    r.cells.age.classList.toggle('stale', age > 10000);
    const rate = rateOf(r, now);
    setText(r, 'rate', rate >= 100 ? rate.toFixed(0) : rate.toFixed(1));
  }
}

function sortValue(r, k, now) {
  switch (k) {
    case 'topic': return r.topic;
    case 'chg': return r.price - r.open;
    case 'pct': return r.open ? (r.price - r.open) / r.open : NaN;
    case 'volume': return Number.isFinite(r.volume) ? r.volume : r.volSum;
    case 'rate': return rateOf(r, now);
    case 'age': return now - r.ts;
    default: return r[k];
  }
}

function renderOrder(now) {
  const f = ui.filter;
  const k = ui.sortKey;
  const dir = ui.sortDir;
  const list = [...rows.values()].filter((r) => !f || r.topic.toLowerCase().includes(f));
  const vals = new Map(list.map((r) => [r, sortValue(r, k, now)]));
  list.sort((a, b) => {
    const va = vals.get(a);
    const vb = vals.get(b);
    if (typeof va === 'string') return dir * va.localeCompare(vb);
    const na = Number.isFinite(va);
    const nb = Number.isFinite(vb);
    if (na !== nb) return na ? -1 : 1; // blanks last
    if (!na || va === vb) return a.topic.localeCompare(b.topic);
    return dir * (va - vb);
  });
  const order = list.map((r) => r.topic);
  const same = order.length === ui.order.length && order.every((t, i) => t === ui.order[i]);
  if (!same) {
    for (const r of list) {
      if (!r.el) renderRow(r);
    }
    const frag = document.createDocumentFragment();
    for (const r of list) frag.appendChild(r.el);
    tbody.replaceChildren(frag);
    ui.order = order;
  }
  ui.orderDirty = false;
  ui.lastSort = now;
  $('empty').hidden = rows.size > 0;
  $('empty').textContent = rows.size ? '' : 'Waiting for topics…';
  $('count').textContent = f ? `${list.length} of ${rows.size}` : `${rows.size} topics`;
  $('st-topics').textContent = `${rows.size} topics`;
  for (const th of document.querySelectorAll('#board th')) {
    th.setAttribute('aria-sort', th.dataset.key === k ? (dir > 0 ? 'ascending' : 'descending') : 'none');
  }
}

// ---- time & sales ----------------------------------------------------------

const TAPE_ROWS = 60;
const tape = { topic: null, pending: [], prev: NaN };
const tapeBody = $('tape-rows');

function tapeReset(topic) {
  tape.topic = topic;
  tape.pending = [];
  tape.prev = NaN;
  tapeBody.replaceChildren();
  $('tape-topic').textContent = topic || '';
}

function tapeAdd(m) {
  if (!m.agg || !Number.isFinite(m.agg.c)) return;
  tape.pending.push(m);
  if (tape.pending.length > TAPE_ROWS) tape.pending.splice(0, tape.pending.length - TAPE_ROWS);
}

function renderTape() {
  if (!tape.pending.length) return;
  const frag = document.createDocumentFragment();
  const r = rows.get(tape.topic);
  const d = decimalsFor(r ? r.price : tape.pending[0].agg.c);
  for (let i = tape.pending.length - 1; i >= 0; i--) {
    const m = tape.pending[i];
    const prev = i > 0 ? tape.pending[i - 1].agg.c : tape.prev;
    const dir = Number.isFinite(prev) ? Math.sign(m.agg.c - prev) : 0;
    const tr = document.createElement('tr');
    const cells = [
      [new Date(m.ts).toISOString().slice(11, 23), ''],
      [fmtPrice(m.agg.c, d), 'num' + (dir > 0 ? ' up' : dir < 0 ? ' down' : '')],
      [fmtVol(m.agg.v), 'num'],
      [String(m.agg.n), 'num'],
    ];
    for (const [text, cls] of cells) {
      const td = document.createElement('td');
      td.textContent = text;
      if (cls) td.className = cls;
      tr.appendChild(td);
    }
    frag.appendChild(tr);
  }
  tape.prev = tape.pending[tape.pending.length - 1].agg.c;
  tape.pending = [];
  tapeBody.prepend(frag);
  while (tapeBody.childElementCount > TAPE_ROWS) tapeBody.lastElementChild.remove();
}

// ---- chart -----------------------------------------------------------------

const chartState = {
  topic: null,
  interval: store.get('interval', '1m') in INTERVALS ? store.get('interval', '1m') : '1m',
  candles: null,
  loading: false,
  loadToken: 0,
  buffer: [],
  needFull: false,
  pending: new Map(), // t -> bar changed since the last frame
  lastRenderedT: -Infinity,
  reloadAfterSnapshot: false,
  decimals: 2,
  hover: null,
};
const tzOffsetSec = -new Date().getTimezoneOffset() * 60;
const toChartTime = (t) => Math.floor(t / 1000) + tzOffsetSec;

function themeColors() {
  const cs = getComputedStyle(document.documentElement);
  const v = (n) => cs.getPropertyValue(n).trim();
  return { bg: v('--panel'), text: v('--muted'), line: v('--line'), up: v('--up'), down: v('--down'), accent: v('--accent') };
}

let chart = null;
let candleSeries = null;
let volumeSeries = null;

function createChart() {
  if (!LWC) {
    showChartMsg('Chart library failed to load');
    return;
  }
  const c = themeColors();
  chart = LWC.createChart($('chart'), {
    autoSize: true,
    layout: { background: { type: 'solid', color: c.bg }, textColor: c.text, fontSize: 11, attributionLogo: true },
    grid: { vertLines: { color: c.line }, horzLines: { color: c.line } },
    crosshair: { mode: LWC.CrosshairMode.Normal },
    localization: { priceFormatter: (p) => fmtPrice(p, chartState.decimals) },
    rightPriceScale: { borderColor: c.line, scaleMargins: { top: 0.1, bottom: 0.25 } },
    timeScale: { borderColor: c.line, timeVisible: true, secondsVisible: chartState.interval === '1s', rightOffset: 4 },
  });
  candleSeries = chart.addSeries(LWC.CandlestickSeries, {
    upColor: c.up, downColor: c.down, borderVisible: false, wickUpColor: c.up, wickDownColor: c.down,
    priceLineVisible: true, lastValueVisible: true,
  });
  volumeSeries = chart.addSeries(LWC.HistogramSeries, {
    priceFormat: { type: 'volume' }, priceScaleId: 'vol', lastValueVisible: false, priceLineVisible: false,
  });
  chart.priceScale('vol').applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
  chart.subscribeCrosshairMove((param) => {
    chartState.hover = param && param.time !== undefined ? param.time : null;
    renderLegend();
  });
}

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  store.set('theme', theme);
  if (!chart) return;
  const c = themeColors();
  chart.applyOptions({
    layout: { background: { type: 'solid', color: c.bg }, textColor: c.text },
    grid: { vertLines: { color: c.line }, horzLines: { color: c.line } },
    rightPriceScale: { borderColor: c.line },
    timeScale: { borderColor: c.line },
  });
  candleSeries.applyOptions({ upColor: c.up, downColor: c.down, wickUpColor: c.up, wickDownColor: c.down });
  chartState.needFull = true; // volume colours
  scheduleRender();
}

function showChartMsg(text) {
  const el = $('chart-msg');
  el.textContent = text || '';
  el.hidden = !text;
}

function volColor(b) {
  const c = themeColors();
  return (b.c >= b.o ? c.up : c.down) + '66';
}

function chartBar(b) {
  return { time: toChartTime(b.t), open: b.o, high: b.h, low: b.l, close: b.c };
}

function volBar(b, color) {
  return { time: toChartTime(b.t), value: b.v, color };
}

function selectTopic(topic) {
  if (!topic || topic === chartState.topic) return;
  ui.selected = topic;
  for (const r of rows.values()) if (r.el) r.el.classList.toggle('sel', r.topic === topic);
  if (location.hash.slice(1) !== topic) history.replaceState(null, '', '#' + encodeURIComponent(topic));
  store.set('topic', topic);
  tapeReset(topic);
  loadChart(topic, chartState.interval);
}

function setIntervalName(name) {
  if (!(name in INTERVALS)) return;
  store.set('interval', name);
  for (const b of document.querySelectorAll('#intervals button')) b.setAttribute('aria-pressed', String(b.dataset.interval === name));
  if (chart) chart.applyOptions({ timeScale: { secondsVisible: name === '1s' } });
  if (chartState.topic) loadChart(chartState.topic, name);
  else chartState.interval = name;
}

async function loadChart(topic, interval) {
  const token = ++chartState.loadToken;
  chartState.topic = topic;
  chartState.interval = interval;
  chartState.candles = new Candles(INTERVALS[interval], 2000);
  chartState.loading = true;
  chartState.buffer = [];
  chartState.pending.clear();
  chartState.reloadAfterSnapshot = false;
  chartState.lastRenderedT = -Infinity;
  const r = rows.get(topic);
  chartState.decimals = decimalsFor(r ? r.price : NaN);
  $('chart-topic').textContent = topic;
  if (candleSeries) {
    candleSeries.setData([]);
    volumeSeries.setData([]);
    candleSeries.applyOptions({ priceFormat: { type: 'price', precision: chartState.decimals, minMove: Math.pow(10, -chartState.decimals) } });
  }
  showChartMsg('Loading…');
  let bars = [];
  let seq = null;
  try {
    const res = await fetch(`api/candles?topic=${encodeURIComponent(topic)}&interval=${interval}&limit=${BACKFILL_BARS}`, { cache: 'no-store', headers: authHeaders });
    if (res.ok) {
      bars = await res.json();
      const h = res.headers.get('X-Tickstream-Seq');
      if (h !== null && /^\d+$/.test(h)) seq = Number(h);
    } else if (res.status !== 404) {
      noteError(`candles: HTTP ${res.status}`);
    }
  } catch (e) {
    noteError('candles: ' + (e && e.message || e));
  }
  if (token !== chartState.loadToken) return;
  chartState.candles.load(Array.isArray(bars) ? bars : []);
  // Updates that arrived during the fetch: with the server's seq we know
  // exactly which ones the backfill holds; without it, they are in the
  // backfill already (their ticks were published before it was built).
  if (seq !== null) {
    for (const m of chartState.buffer) if (m.seq > seq) chartState.candles.fold(m.ts, m.agg);
  }
  chartState.buffer = [];
  chartState.loading = false;
  chartState.needFull = true;
  showChartMsg(chartState.candles.bars.length ? '' : 'No trades yet');
  scheduleRender();
}

function chartUpdate(m) {
  if (chartState.loading) {
    chartState.buffer.push(m);
    return;
  }
  const res = chartState.candles.fold(m.ts, m.agg);
  if (res.kind === 'none') return;
  chartState.pending.set(res.bar.t, res.bar);
  if (res.kind === 'new') showChartMsg('');
}

function renderChart() {
  if (!candleSeries || chartState.loading || !chartState.candles) return;
  const bars = chartState.candles.bars;
  if (chartState.needFull) {
    chartState.needFull = false;
    chartState.pending.clear();
    const c = themeColors();
    candleSeries.setData(bars.map(chartBar));
    volumeSeries.setData(bars.map((b) => volBar(b, (b.c >= b.o ? c.up : c.down) + '66')));
    chartState.lastRenderedT = bars.length ? bars[bars.length - 1].t : -Infinity;
    renderLegend();
    return;
  }
  if (!chartState.pending.size) return;
  const changed = [...chartState.pending.values()].sort((a, b) => a.t - b.t);
  chartState.pending.clear();
  try {
    for (const b of changed) {
      // Lightweight Charts refuses a time before its last bar without the
      // historical flag: late bars use it, and never move time backwards.
      const past = b.t < chartState.lastRenderedT;
      candleSeries.update(chartBar(b), past);
      volumeSeries.update(volBar(b, volColor(b)), past);
      if (!past) chartState.lastRenderedT = b.t;
    }
  } catch {
    chartState.needFull = true; // redraw everything next frame
    scheduleRender();
  }
  renderLegend();
}

function renderLegend() {
  const cs = chartState;
  if (!cs.candles) return;
  let bar = null;
  if (cs.hover !== null) {
    const t = (cs.hover - tzOffsetSec) * 1000;
    bar = cs.candles.bars.find((b) => b.t === t) || null;
  }
  if (!bar) bar = cs.candles.last();
  const el = $('legend');
  if (!bar) {
    el.textContent = '';
    return;
  }
  const d = cs.decimals;
  const cls = bar.c >= bar.o ? 'up' : 'down';
  el.innerHTML = '';
  const add = (label, value, c, title) => {
    const b = document.createElement('b');
    if (title) b.className = 'lg-title';
    b.textContent = label + ' ';
    const s = document.createElement('span');
    s.textContent = value;
    if (c) s.className = c;
    b.appendChild(s);
    el.appendChild(b);
  };
  add(cs.topic + ' · ' + cs.interval, '', '', true);
  add('O', fmtPrice(bar.o, d), cls);
  add('H', fmtPrice(bar.h, d), cls);
  add('L', fmtPrice(bar.l, d), cls);
  add('C', fmtPrice(bar.c, d), cls);
  add('V', fmtVol(bar.v), '');
}

function renderChartHead() {
  const r = rows.get(chartState.topic);
  if (!r) return;
  const d = decimalsFor(r.price);
  $('chart-price').textContent = fmtPrice(r.price, d);
  const chg = r.price - r.open;
  const el = $('chart-chg');
  el.textContent = fmtSigned(chg, d) + ' (' + fmtPct(r.open ? (chg / r.open) * 100 : NaN) + ')';
  el.className = 'chart-chg ' + (chg > 0 ? 'up' : chg < 0 ? 'down' : '');
  if (d !== chartState.decimals && candleSeries && Number.isFinite(r.price)) {
    chartState.decimals = d;
    candleSeries.applyOptions({ priceFormat: { type: 'price', precision: d, minMove: Math.pow(10, -d) } });
  }
}

// ---- stream ----------------------------------------------------------------

function noteError(text) {
  ui.lastError = text;
  $('st-err').textContent = text;
  $('st-err').title = text;
}

function handleBatch(msgs) {
  const now = Date.now();
  for (const m of msgs) {
    ui.msgCount++;
    switch (m.type) {
      case 'snapshot': {
        const r = rowFor(m.topic);
        applyData(r, m.data, m.ts);
        r.seq = m.seq;
        r.epoch = m.epoch;
        if (m.topic === chartState.topic && chartState.reloadAfterSnapshot) {
          loadChart(m.topic, chartState.interval);
        }
        if (!ui.selected && !chartState.topic) selectTopic(wantedTopic() || m.topic);
        break;
      }
      case 'update': {
        const r = rowFor(m.topic);
        // The session open is the first price seen: for an update, the
        // first price of its window.
        if (!Number.isFinite(r.open) && m.agg && Number.isFinite(m.agg.o)) r.open = m.agg.o;
        applyData(r, m.data, m.ts);
        r.seq = m.seq;
        r.epoch = m.epoch;
        const n = m.agg && m.agg.n > 0 ? m.agg.n : 1;
        countTick(r, n, now);
        if (m.agg && Number.isFinite(m.agg.v)) r.volSum += m.agg.v;
        if (m.topic === chartState.topic) {
          chartUpdate(m);
          tapeAdd(m);
        }
        if (!ui.selected && !chartState.topic) selectTopic(wantedTopic() || m.topic);
        break;
      }
      case 'reset':
        // History was lost (server restarted, or we were away too long):
        // the snapshot that follows carries the latest value; the chart is
        // refetched once it arrives.
        if (m.topic === chartState.topic) {
          chartState.reloadAfterSnapshot = true;
          // The snapshot should follow at once; if it does not, refetch
          // the topic list and the chart anyway.
          const topic = m.topic;
          setTimeout(() => {
            if (chartState.topic === topic && chartState.reloadAfterSnapshot) {
              loadTopics();
              loadChart(topic, chartState.interval);
            }
          }, 2000);
        }
        break;
      case 'error':
        noteError(`${m.code}: ${m.message}`);
        break;
      default:
        break;
    }
  }
  render(now);
}

let renderScheduled = false;
function scheduleRender() {
  if (renderScheduled) return;
  renderScheduled = true;
  requestAnimationFrame(() => {
    renderScheduled = false;
    render(Date.now());
  });
}

function render(now) {
  if (ui.orderDirty || (ui.sortKey !== 'topic' && now - ui.lastSort > SORT_EVERY_MS)) renderOrder(now);
  for (const r of rows.values()) if (r.dirty && r.el) renderRow(r);
  renderChart();
  renderChartHead();
  renderTape();
}

function renderBadge(s) {
  const badge = $('badge');
  badge.dataset.state = s.state;
  badge.dataset.transport = s.transport || '';
  badge.dataset.queued = String(s.queued || 0);
  const via = TransportName[s.transport] || s.transport;
  let text;
  switch (s.state) {
    case 'live': text = 'Live · ' + via; break;
    case 'lagging': text = `Lagging · ${s.throttleMs} ms · ${via}`; break;
    case 'reconnecting': text = `Reconnecting in ${Math.ceil(s.retryInMs / 1000)} s`; break;
    case 'offline': text = 'Offline'; break;
    default: text = 'Connecting…';
  }
  if (s.queued > 0) text += ` · ${s.queued} queued`;
  badge.querySelector('.label').textContent = text;
  badge.title = client.stats.lastError && s.state !== 'live' ? 'Last problem: ' + client.stats.lastError : '';
  $('st-conn').textContent = s.transport ? `${s.transport} · session ${client.session ? client.session.slice(0, 8) : '—'}` : '';
}

function wantedTopic() {
  const h = decodeURIComponent(location.hash.slice(1));
  return h || store.get('topic', '');
}

async function loadTopics() {
  try {
    const res = await fetch('api/topics', { cache: 'no-store', headers: authHeaders });
    if (!res.ok) return;
    const body = await res.json();
    const list = Array.isArray(body) ? body : (body && body.topics) || [];
    for (const t of list) {
      if (!t || !t.topic) continue;
      const fresh = !rows.has(t.topic);
      const r = rowFor(t.topic);
      if (fresh) {
        applyData(r, t.data, t.ts);
        r.dir = 0;
        r.flash = 0;
        r.rate = t.rate || 0;
      }
    }
    const want = wantedTopic();
    if (!chartState.topic) selectTopic(rows.has(want) ? want : list.length ? list[0].topic : null);
    scheduleRender();
  } catch (e) {
    noteError('topics: ' + (e && e.message || e));
  }
}

// ---- wiring ----------------------------------------------------------------

function init() {
  applyTheme(store.get('theme', 'dark') === 'light' ? 'light' : 'dark');
  createChart();
  setIntervalName(chartState.interval);
  const sel = $('throttle');
  sel.value = String(throttle);
  sel.addEventListener('change', () => {
    const ms = Number(sel.value);
    store.set('throttle', ms);
    client.setThrottle(ms);
  });
  $('theme').addEventListener('click', () => applyTheme(document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark'));
  $('filter').addEventListener('input', (e) => {
    ui.filter = e.target.value.trim().toLowerCase();
    ui.orderDirty = true;
    scheduleRender();
  });
  for (const th of document.querySelectorAll('#board th')) {
    th.addEventListener('click', () => {
      const k = th.dataset.key;
      if (ui.sortKey === k) ui.sortDir = -ui.sortDir;
      else {
        ui.sortKey = k;
        ui.sortDir = k === 'topic' ? 1 : -1;
      }
      store.set('sortKey', ui.sortKey);
      store.set('sortDir', ui.sortDir);
      ui.orderDirty = true;
      scheduleRender();
    });
  }
  tbody.addEventListener('click', (e) => {
    const tr = e.target.closest('tr');
    if (tr) selectTopic(tr.dataset.topic);
  });
  tbody.addEventListener('keydown', (e) => {
    const tr = e.target.closest('tr');
    if (!tr) return;
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      selectTopic(tr.dataset.topic);
    } else if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      e.preventDefault();
      const next = e.key === 'ArrowDown' ? tr.nextElementSibling : tr.previousElementSibling;
      if (next) {
        next.focus();
        selectTopic(next.dataset.topic);
      }
    }
  });
  for (const b of document.querySelectorAll('#intervals button')) {
    b.addEventListener('click', () => setIntervalName(b.dataset.interval));
  }
  addEventListener('hashchange', () => {
    const t = wantedTopic();
    if (t) selectTopic(t);
  });

  client.onState(renderBadge);
  client.onBatch(handleBatch);

  // Ages, rates, the clock and the message rate tick on their own.
  let lastCount = 0;
  let lastCountAt = Date.now();
  setInterval(() => {
    const now = client.serverNow();
    renderAges(now);
    $('clock').textContent = new Date(now).toISOString().slice(11, 19) + ' UTC';
    const t = Date.now();
    if (t - lastCountAt >= 1000) {
      $('st-msgs').textContent = `${Math.round(((ui.msgCount - lastCount) * 1000) / (t - lastCountAt))} msg/s`;
      lastCount = ui.msgCount;
      lastCountAt = t;
    }
  }, 250);

  loadTopics();
  client.start();
}

// Debug and test hook: read-only views of what the page shows.
globalThis.__tickstream = {
  client,
  status: () => client.status(),
  stats: () => ({ ...client.stats, gaps: client.cursors.gaps, dups: client.cursors.dups, overlaps: client.cursors.overlaps }),
  board: () => {
    const out = {};
    for (const r of rows.values()) {
      out[r.topic] = {
        price: r.price, open: r.open, chg: r.price - r.open, bid: r.bid, ask: r.ask,
        volume: Number.isFinite(r.volume) ? r.volume : r.volSum, ts: r.ts, seq: r.seq, epoch: r.epoch,
        cells: r.text ? { ...r.text } : null,
      };
    }
    return out;
  },
  chart: (n = 50) => ({
    topic: chartState.topic,
    interval: chartState.interval,
    loading: chartState.loading,
    bars: chartState.candles ? chartState.candles.bars.slice(-n).map((b) => ({ ...b })) : [],
  }),
  select: selectTopic,
  setInterval: setIntervalName,
  setThrottle: (ms) => {
    $('throttle').value = String(ms);
    client.setThrottle(ms);
  },
};

init();
