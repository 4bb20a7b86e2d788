// app.js — the tickstream dashboard: a ticker board, a live chart and a
// time & sales tape, built on tickstream.js and TradingView Lightweight
// Charts (loaded as the global LightweightCharts by the vendored standalone
// build).
//
// What it subscribes to: the board's visible rows (plus a margin), the
// watchlist and the selected symbol. Every other row is refreshed by polling
// GET /api/topics (following its pages), which also brings in topics that
// appear later and says which feed each topic comes from.
//
// Change and volume are the server's 24-hour reference figures (`ref` in the
// snapshot and in /api/topics: change = last price − ref.o), carried forward
// by the updates of a live row, so they mean the same on every reload.
//
// The depth view, the second chart of the split layout and the overlays
// live in depth.js, chart2.js and overlays.js.

import { Tickstream, Candles, TransportName } from './tickstream.js';
import { DepthView } from './depth.js';
import { Overlays } from './overlays.js';
import { SecondChart } from './chart2.js';

const LWC = globalThis.LightweightCharts;
const INTERVALS = { '1s': 1000, '1m': 60000, '5m': 300000, '1h': 3600000 };
const BACKFILL_BARS = 500;
const SORT_EVERY_MS = 500;
const RATE_WINDOW_MS = 2000; // ticks/s is counted over this sliding window
const RATE_BUCKET_MS = 250;
const RATE_MIN_MS = 1000; // until this much was counted, the server's figure
const FLASH_MS = 200;
const TOPICS_EVERY_MS = 2000; // rows not subscribed are refreshed this often
const TOPICS_PAGE = 1000; // /api/topics?limit=
const TOPICS_MAX_PAGES = 50; // a poll reads at most this many pages
const REF_TAIL = 64; // updates kept per live row to re-anchor its ref from a poll
const FEEDS_EVERY_MS = 5000;
const SUB_MARGIN_ROWS = 10; // rows above and below the visible ones
const TAPE_ROWS = 60;
const TAPE_MIN_GAP_MS = 150; // at most one /api/history request this often

const $ = (id) => document.getElementById(id);
const store = {
  get(k, d) { try { return localStorage.getItem('tickstream.' + k) ?? d; } catch { return d; } },
  set(k, v) { try { localStorage.setItem('tickstream.' + k, String(v)); } catch { /* private mode */ } },
};
function storedJSON(k, d) {
  try { const v = JSON.parse(store.get(k, '')); return v ?? d; } catch { return d; }
}

// ---- formatting ------------------------------------------------------------

// One Intl.NumberFormat per number of decimals, built once.
const nfCache = new Map();
function nf(d) {
  let f = nfCache.get(d);
  if (!f) {
    f = new Intl.NumberFormat('en-US', { minimumFractionDigits: d, maximumFractionDigits: d });
    nfCache.set(d, f);
  }
  return f;
}
const nfSize = new Intl.NumberFormat('en-US', { maximumFractionDigits: 8 });
const nfSmall = new Intl.NumberFormat('en-US', { maximumSignificantDigits: 3 });

// decimalsOf counts the decimals of a number as published (JSON numbers
// parse to the shortest round-trip form, so String() gives them back).
function decimalsOf(x) {
  if (!Number.isFinite(x)) return 0;
  const s = String(Math.abs(x));
  const e = s.indexOf('e-');
  if (e >= 0) {
    const dot = s.indexOf('.');
    const mant = dot >= 0 && dot < e ? e - dot - 1 : 0;
    return Math.min(8, mant + Number(s.slice(e + 2)));
  }
  const dot = s.indexOf('.');
  return dot < 0 ? 0 : Math.min(8, s.length - dot - 1);
}
function fmtPrice(p, d) {
  if (!Number.isFinite(p)) return '—';
  return nf(d).format(p);
}
// A signed figure that rounds to zero shows no sign (never −0.00).
function signed(x, text) {
  if (!/[1-9]/.test(text)) return text;
  return (x > 0 ? '+' : x < 0 ? '−' : '') + text;
}
function fmtSigned(x, d) {
  if (!Number.isFinite(x)) return '—';
  return signed(x, nf(d).format(Math.abs(x)));
}
function fmtPct(x) {
  if (!Number.isFinite(x)) return '—';
  return signed(x, nf(2).format(Math.abs(x))) + '%';
}
function fmtVol(v) {
  if (!Number.isFinite(v)) return '—';
  const a = Math.abs(v);
  if (a >= 1e9) return nf(2).format(v / 1e9) + 'B';
  if (a >= 1e6) return nf(2).format(v / 1e6) + 'M';
  if (a >= 1e4) return nf(1).format(v / 1e3) + 'K';
  if (a >= 100) return nf(0).format(v);
  if (a >= 1 || a === 0) return nf(2).format(v);
  return nfSmall.format(v);
}
// A trade size as published: 0.0012 stays 0.0012.
function fmtSize(v) {
  if (!Number.isFinite(v)) return '—';
  return Math.abs(v) >= 1e6 ? fmtVol(v) : nfSize.format(v);
}
function fmtAge(ms) {
  if (!Number.isFinite(ms)) return '—';
  if (ms < 0) ms = 0;
  if (ms < 10000) return (ms / 1000).toFixed(1) + 's';
  if (ms < 60000) return Math.round(ms / 1000) + 's';
  if (ms < 3600000) return Math.round(ms / 60000) + 'm';
  return Math.round(ms / 3600000) + 'h';
}

// ---- time zone -------------------------------------------------------------
// One time zone for the clock, the chart's axis and time & sales: the
// browser's (local) or UTC, chosen in the top bar and remembered.

const tz = {
  mode: store.get('tz', 'local') === 'utc' ? 'utc' : 'local',
  fmt: null,
  nameFmt: null,
  offCache: new Map(),
};
function setTzFormat() {
  const opts = { hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23' };
  if (tz.mode === 'utc') opts.timeZone = 'UTC';
  tz.fmt = new Intl.DateTimeFormat('en-GB', opts);
  tz.nameFmt = new Intl.DateTimeFormat('en-US', { timeZoneName: 'short' });
}
setTzFormat();
function tzLabel(ts) {
  if (tz.mode === 'utc') return 'UTC';
  try {
    const p = tz.nameFmt.formatToParts(new Date(ts)).find((x) => x.type === 'timeZoneName');
    return p ? p.value : 'local';
  } catch { return 'local'; }
}
// Offset of the chosen zone at ts, in seconds (cached per hour).
function tzOffsetSec(ts) {
  if (tz.mode === 'utc') return 0;
  const h = Math.floor(ts / 3600000);
  let o = tz.offCache.get(h);
  if (o === undefined) {
    o = -new Date(ts).getTimezoneOffset() * 60;
    if (tz.offCache.size > 5000) tz.offCache.clear();
    tz.offCache.set(h, o);
  }
  return o;
}
function fmtTime(ts, ms) {
  if (!Number.isFinite(ts)) return '—';
  const s = tz.fmt.format(new Date(ts));
  return ms ? s + '.' + String(((ts % 1000) + 1000) % 1000).padStart(3, '0') : s;
}
// Lightweight Charts shows its time axis in UTC: shift by the zone's offset.
const toChartTime = (t) => Math.floor(t / 1000) + tzOffsetSec(t);

// ---- state -----------------------------------------------------------------

const rows = new Map(); // topic -> row
const ui = {
  sortKey: store.get('sortKey', 'topic'),
  sortDir: Number(store.get('sortDir', '1')) || 1,
  filter: store.get('filter', ''),
  order: [], // topics in display order
  orderDirty: true,
  forceOrder: true, // a user action: re-sort even under the pointer
  lastSort: 0,
  selected: null,
  pointerOver: false,
  msgCount: 0,
  lastError: '',
  watch: new Set(storedJSON('watchlist', []).filter((t) => typeof t === 'string')),
  reducedMotion: false,
  feeds: new Map(), // feed name -> its last /api/feeds status
  feedProblem: '', // the feed strip's text, '' when no feed has a problem
  topicsLoaded: false,
  topicsPolling: false,
  window: [0, 0], // rows of ui.order in the DOM
  windowDirty: true,
};

const throttle = Number(store.get('throttle', '250')) || 250;
// A server with auth on needs a token: open the page as /?token=<jwt>.
const token = new URLSearchParams(location.search).get('token') || null;
const authHeaders = token ? { Authorization: 'Bearer ' + token } : {};
const client = new Tickstream({ topics: [], throttleMs: throttle, token });

// ---- subscriptions -----------------------------------------------------------
// The page subscribes to what it shows: the rows in view (and a margin), the
// watchlist and the selected symbol. A row that leaves the view is
// unsubscribed and its cursor dropped, so that coming back starts from a
// fresh snapshot rather than replaying what it missed.

const subs = new Set();
let subsTimer = 0;
function scheduleSyncSubs() {
  if (subsTimer) return;
  subsTimer = setTimeout(() => { subsTimer = 0; syncSubs(); }, 100);
}
// The board is windowed: only the rows in view (and a margin) are in the
// DOM, between two spacer bodies that keep the scroll height. Rows have a
// fixed height (CSS), measured once.
let rowH = 0;
function rowHeight() {
  if (!rowH) {
    const first = tbody.firstElementChild;
    if (first && first.offsetHeight) rowH = first.offsetHeight;
  }
  return rowH || 25;
}
function visibleRange() {
  const wrap = $('table-wrap');
  const n = ui.order.length;
  if (!n) return [0, 0];
  const rh = rowHeight();
  const view = wrap.clientHeight || 800;
  const head = board.tHead ? board.tHead.offsetHeight : 0;
  const a = Math.floor((wrap.scrollTop - head) / rh);
  const b = Math.ceil((wrap.scrollTop + view - head) / rh);
  return [Math.max(0, a - SUB_MARGIN_ROWS), Math.min(n, Math.max(0, b) + SUB_MARGIN_ROWS)];
}
function wantedSubs() {
  const want = new Set();
  const [a, b] = visibleRange();
  for (let i = a; i < b; i++) want.add(ui.order[i]);
  for (const t of ui.watch) want.add(t);
  if (ui.selected) want.add(ui.selected);
  for (const t of sideTopics()) want.add(t);
  return want;
}
function syncSubs() {
  // Only on a live connection: tickstream.js sends the subscribe of a new
  // connection when it opens, and drops a subscribe() made between the
  // open and the welcome. A connection that becomes live syncs again.
  const st = client.status().state;
  if (st !== 'live' && st !== 'lagging') return;
  const want = wantedSubs();
  const add = [...want].filter((t) => !subs.has(t));
  const del = [...subs].filter((t) => !want.has(t));
  if (del.length) {
    client.unsubscribe(del);
    for (const t of del) {
      subs.delete(t);
      client.cursors.delete(t);
      const r = rows.get(t);
      if (r) { r.live = false; r.counts = []; }
    }
  }
  if (add.length) {
    for (const t of add) subs.add(t);
    client.subscribe(add);
  }
  if (add.length || del.length) $('st-topics').textContent = `${rows.size} topics · ${subs.size} live`;
}

// ---- board -----------------------------------------------------------------

const tbody = $('rows');
const board = $('board');
const padTop = document.querySelector('#pad-top td');
const padBottom = document.querySelector('#pad-bottom td');
const COLS = ['topic', 'price', 'chg', 'pct', 'bid', 'ask', 'volume', 'rate', 'age'];
const COL_CLASS = { topic: 'sym', price: 'num', chg: 'num', pct: 'num', bid: 'num opt', ask: 'num opt', volume: 'num opt2', rate: 'num opt', age: 'num opt2' };
let rowIds = 0;

function rowFor(topic) {
  let r = rows.get(topic);
  if (r) return r;
  r = {
    topic, id: 'row-' + (++rowIds), price: NaN, bid: NaN, ask: NaN,
    // The 24-hour reference: open (NaN while the period had no price) and
    // volume, as of seq refAt (-1: none yet); tail holds the live updates
    // since, [seq, v, o], so a poll's ref can take over exactly.
    refO: NaN, refV: NaN, refAt: -1, tail: [], feed: '', backupFor: [],
    ts: NaN, seq: 0, epoch: '', dir: 0, flash: 0, rate: 0, counts: [], live: false, liveSince: 0,
    dec: 0, dirty: true, el: null, cells: null, text: null,
  };
  rows.set(topic, r);
  ui.orderDirty = true;
  return r;
}

// Price decimals of the instrument: the most seen in its quotes (at least 2).
function rowDecimals(r) { return Math.max(2, r.dec); }

function countTick(r, n, now) {
  const b = Math.floor(now / RATE_BUCKET_MS);
  const last = r.counts[r.counts.length - 1];
  if (last && last[0] === b) last[1] += n;
  else r.counts.push([b, n]);
  const lo = b - RATE_WINDOW_MS / RATE_BUCKET_MS;
  while (r.counts.length && r.counts[0][0] <= lo) r.counts.shift();
}

// Ticks per second over the last RATE_WINDOW_MS, live; before a second of
// live counting (or for a row not subscribed), the server's figure.
function rateOf(r, now) {
  if (!r.live || now - r.liveSince < RATE_MIN_MS) return r.rate;
  const span = Math.min(RATE_WINDOW_MS, now - r.liveSince);
  const lo = Math.floor((now - span) / RATE_BUCKET_MS);
  let sum = 0;
  for (const [b, n] of r.counts) if (b >= lo) sum += n;
  return (sum * 1000) / span;
}

function applyData(r, data, ts, flash) {
  if (!data) return;
  if (Number.isFinite(data.price)) {
    const p = data.price;
    if (flash && Number.isFinite(r.price) && p !== r.price) {
      r.dir = p > r.price ? 1 : -1;
      r.flash = r.dir;
    }
    r.price = p;
    const d = decimalsOf(p);
    if (d > r.dec) r.dec = d;
  }
  if (Number.isFinite(data.bid)) { r.bid = data.bid; const d = decimalsOf(data.bid); if (d > r.dec) r.dec = d; }
  if (Number.isFinite(data.ask)) { r.ask = data.ask; const d = decimalsOf(data.ask); if (d > r.dec) r.dec = d; }
  if (Number.isFinite(ts)) r.ts = ts;
  r.dirty = true;
}

// setRef takes the server's reference figures as of seq (a snapshot's, or a
// poll's): absent means no price in the period, so no open and no volume.
function setRef(r, ref, seq) {
  const o = ref && Number.isFinite(ref.o) ? ref.o : NaN;
  const v = ref && Number.isFinite(ref.v) ? ref.v : 0;
  if (!Object.is(o, r.refO) || v !== r.refV) r.dirty = true;
  r.refO = o;
  r.refV = v;
  r.refAt = seq;
  r.tail = [];
}

// foldRef carries a live row's reference forward with an update whose
// window follows the ref (ticks after seq prev): its first price opens a
// period that had none, its volume adds up. (The period's older hours
// leave it only when a poll or snapshot brings a new ref.)
function foldRef(r, m, prev) {
  if (r.refAt < 0 && prev === 0) setRef(r, null, 0); // a new topic: nothing before
  if (r.refAt < 0) return;
  const a = m.agg || {};
  const v = Number.isFinite(a.v) ? a.v : 0;
  const o = Number.isFinite(a.o) ? a.o : NaN;
  if (!Number.isFinite(r.refO)) r.refO = o;
  r.refV += v;
  r.refAt = m.seq;
  r.tail.push([m.seq, v, o]);
  if (r.tail.length > REF_TAIL) r.tail.shift();
}

// pollRef takes a poll's ref for a live row when it is at a seq the row's
// updates start or end at: the updates after it are added back.
function pollRef(r, t) {
  if (t.seq === r.refAt) { setRef(r, t.ref, t.seq); return; }
  const i = r.tail.findIndex((x) => x[0] === t.seq);
  if (i < 0) return;
  const after = r.tail.slice(i + 1);
  setRef(r, t.ref, t.seq);
  for (const [seq, v, o] of after) {
    if (!Number.isFinite(r.refO)) r.refO = o;
    r.refV += v;
    r.refAt = seq;
  }
  r.tail = after;
}

function refChange(r) { return r.price - r.refO; }
function refPct(r) { return r.refO ? (refChange(r) / r.refO) * 100 : NaN; }
function refVolume(r) { return Number.isFinite(r.refO) ? r.refV : NaN; }

function buildRow(r) {
  const tr = document.createElement('tr');
  tr.id = r.id;
  tr.dataset.topic = r.topic;
  tr.setAttribute('aria-selected', String(r.topic === ui.selected));
  r.cells = {};
  for (const k of COLS) {
    const td = document.createElement('td');
    td.className = COL_CLASS[k];
    td.dataset.col = k;
    tr.appendChild(td);
    r.cells[k] = td;
  }
  r.el = tr;
  r.text = {};
  renderSym(r);
  if (r.topic === ui.selected) tr.classList.add('sel');
}

function renderSym(r) {
  if (!r.el) return;
  const td = r.cells.topic;
  const watched = ui.watch.has(r.topic);
  const warn = rowWarning(r);
  const key = r.topic + (watched ? '*' : '') + (warn ? '!' + warn : '');
  if (r.text.symKey === key) return;
  r.text.symKey = key;
  td.replaceChildren();
  if (watched) {
    const s = document.createElement('span');
    s.className = 'star';
    s.textContent = '★';
    s.title = 'In the watchlist';
    td.append(s, ' ');
  }
  td.append(r.topic);
  if (warn) {
    const w = document.createElement('span');
    w.className = 'feed-warn';
    w.textContent = ' ⚠';
    w.title = warn;
    w.setAttribute('aria-label', 'Warning: ' + warn);
    td.append(w);
  }
  r.el.classList.toggle('warn', !!warn);
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

// Flashes are plain classes (no CSS animation), added while rendering a
// row and removed in one pass per frame once they are FLASH_MS old.
const flashing = new Map(); // td -> until
let flashTimer = 0;
function flashCell(td, dir, now) {
  td.classList.toggle('fl-up', dir > 0);
  td.classList.toggle('fl-down', dir < 0);
  flashing.set(td, now + FLASH_MS);
  if (!flashTimer) flashTimer = setTimeout(() => { flashTimer = 0; scheduleRender(); }, FLASH_MS + 20);
}
function expireFlashes(now) {
  if (!flashing.size) return;
  for (const [td, until] of flashing) {
    if (until <= now) {
      td.classList.remove('fl-up', 'fl-down');
      flashing.delete(td);
    }
  }
  if (flashing.size && !flashTimer) flashTimer = setTimeout(() => { flashTimer = 0; scheduleRender(); }, FLASH_MS);
}

function renderRow(r, now) {
  if (!r.el) buildRow(r);
  const d = rowDecimals(r);
  const chg = refChange(r);
  const pct = refPct(r);
  setText(r, 'price', fmtPrice(r.price, d));
  setText(r, 'chg', fmtSigned(chg, d));
  setText(r, 'pct', fmtPct(pct));
  setText(r, 'bid', fmtPrice(r.bid, d));
  setText(r, 'ask', fmtPrice(r.ask, d));
  setText(r, 'volume', fmtVol(refVolume(r)));
  setDir(r.cells.price, r.dir);
  const cdir = /[1-9]/.test(r.text.chg) ? Math.sign(chg) : 0;
  setDir(r.cells.chg, cdir);
  setDir(r.cells.pct, cdir);
  if (r.flash) {
    if (!ui.reducedMotion) flashCell(r.cells.price, r.flash, now);
    r.flash = 0;
  }
  r.dirty = false;
}

function renderAges(now) {
  const [a, b] = ui.window;
  for (let i = a; i < b; i++) {
    const r = rows.get(ui.order[i]);
    if (!r || !r.el) continue;
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
    case 'chg': return refChange(r);
    case 'pct': return refPct(r);
    case 'volume': return refVolume(r);
    case 'rate': return rateOf(r, now);
    case 'age': return now - r.ts;
    default: return r[k];
  }
}

function renderOrder(now) {
  const f = ui.filter.toLowerCase();
  const k = ui.sortKey;
  const dir = ui.sortDir;
  const list = [...rows.values()].filter((r) => !f || r.topic.toLowerCase().includes(f));
  const vals = new Map(list.map((r) => [r, sortValue(r, k, now)]));
  list.sort((a, b) => {
    // The watchlist is pinned to the top.
    const wa = ui.watch.has(a.topic);
    if (wa !== ui.watch.has(b.topic)) return wa ? -1 : 1;
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
    ui.order = order;
    ui.windowDirty = true;
    renderWindow(now);
    if (document.activeElement === board) revealSelected();
    scheduleSyncSubs();
  }
  ui.orderDirty = false;
  ui.forceOrder = false;
  ui.lastSort = now;
  const empty = $('empty');
  if (!rows.size) {
    empty.hidden = false;
    empty.textContent = 'Waiting for topics…';
  } else if (!list.length) {
    empty.hidden = false;
    empty.textContent = `No symbols match “${ui.filter}”`;
  } else {
    empty.hidden = true;
    empty.textContent = '';
  }
  $('count').textContent = f ? `${list.length} of ${rows.size}` : `${rows.size} topics`;
  $('st-topics').textContent = `${rows.size} topics · ${subs.size} live`;
  for (const th of document.querySelectorAll('#board th')) {
    th.setAttribute('aria-sort', th.dataset.key === k ? (dir > 0 ? 'ascending' : 'descending') : 'none');
  }
}

// Rows shown before the pointer came over the board stay where they are
// while it is there: periodic re-sorts wait, new rows go at the end.
function appendNewRows(now) {
  const f = ui.filter.toLowerCase();
  const shown = new Set(ui.order);
  let added = false;
  for (const r of rows.values()) {
    if (shown.has(r.topic) || (f && !r.topic.toLowerCase().includes(f))) continue;
    ui.order.push(r.topic);
    added = true;
  }
  if (added) {
    ui.windowDirty = true;
    scheduleSyncSubs();
  }
  ui.orderDirty = false;
}

// renderWindow puts the rows of the visible range into the DOM, in order,
// moving only the ones out of place (the board keeps its focus: it is on
// the table, not on a row).
function renderWindow(now) {
  const [a, b] = visibleRange();
  if (!ui.windowDirty && a === ui.window[0] && b === ui.window[1]) return;
  ui.windowDirty = false;
  ui.window = [a, b];
  const list = [];
  for (let i = a; i < b; i++) {
    const r = rows.get(ui.order[i]);
    if (!r) continue;
    if (!r.el || r.dirty) renderRow(r, now);
    r.el.setAttribute('aria-rowindex', String(i + 2)); // the header is row 1
    list.push(r);
  }
  const keep = new Set(list.map((r) => r.el));
  for (const el of [...tbody.children]) if (!keep.has(el)) el.remove();
  let at = tbody.firstElementChild;
  for (const r of list) {
    if (r.el === at) at = at.nextElementSibling;
    else tbody.insertBefore(r.el, at);
  }
  const rh = rowHeight();
  padTop.style.height = a * rh + 'px';
  padBottom.style.height = Math.max(0, ui.order.length - b) * rh + 'px';
  board.setAttribute('aria-rowcount', String(ui.order.length + 1));
  updateActiveDescendant();
}

// revealSelected scrolls the selected row into view.
function revealSelected() {
  const i = ui.order.indexOf(ui.selected);
  if (i < 0) return;
  const wrap = $('table-wrap');
  const rh = rowHeight();
  const head = board.tHead ? board.tHead.offsetHeight : 0;
  const top = head + i * rh;
  if (top - head < wrap.scrollTop) wrap.scrollTop = top - head;
  else if (top + rh > wrap.scrollTop + wrap.clientHeight) wrap.scrollTop = top + rh - wrap.clientHeight;
  renderWindow(Date.now());
}

// ---- time & sales ----------------------------------------------------------
// One row per trade (tick with a price), from GET /api/history: filled when
// a symbol is selected, then read on from the last seq shown whenever an
// update says there is more. Outages are marked.

const tape = {
  topic: null, epoch: '', seq: 0, rows: [], dirty: false, inflight: false, want: false, lastFetch: 0, token: 0, prev: NaN, msg: '',
};
const tapeBody = $('tape-rows');

function tapeReset(topic) {
  tape.topic = topic;
  tape.epoch = '';
  tape.seq = 0;
  tape.rows = [];
  tape.prev = NaN;
  tape.msg = '';
  tape.token++;
  tape.inflight = false;
  tape.dirty = true;
  $('tape-topic').textContent = topic || '';
  tapeWant();
}

function tapeMark(text, ts) {
  tape.rows.unshift({ mark: true, text, ts });
  if (tape.rows.length > TAPE_ROWS) tape.rows.length = TAPE_ROWS;
  tape.dirty = true;
  scheduleRender();
}

function tapeWant() {
  tape.want = true;
  if (tape.inflight || !tape.topic) return;
  const wait = tape.lastFetch + TAPE_MIN_GAP_MS - Date.now();
  if (wait > 0) {
    tape.inflight = true;
    const token = tape.token;
    setTimeout(() => { if (token === tape.token) { tape.inflight = false; tapeWant(); } }, wait);
    return;
  }
  tapeFetch();
}

async function tapeFetch() {
  const topic = tape.topic;
  const token = tape.token;
  tape.want = false;
  tape.inflight = true;
  tape.lastFetch = Date.now();
  try {
    let after = tape.seq;
    if (!after) {
      const r = rows.get(topic);
      after = r && r.seq ? Math.max(0, r.seq - TAPE_ROWS) : 0;
    }
    let h = await getHistory(topic, after);
    if (token !== tape.token) return;
    if (h && !tape.seq && h.last_seq - after > h.ticks.length) {
      // First fill: only the newest rows matter.
      after = Math.max(0, h.last_seq - TAPE_ROWS);
      h = await getHistory(topic, after);
      if (token !== tape.token) return;
    }
    if (h === 404) {
      tape.msg = 'Unknown symbol';
      tape.dirty = true;
    } else if (h) {
      tapeTake(h);
    }
  } catch (e) {
    noteError('history: ' + (e && e.message || e));
  } finally {
    if (token === tape.token) {
      tape.inflight = false;
      scheduleRender();
      if (tape.want) tapeWant();
    }
  }
}

async function getHistory(topic, after, limit = 1000) {
  const res = await fetch(`api/history?topic=${encodeURIComponent(topic)}&after_seq=${after}&limit=${limit}`, { cache: 'no-store', headers: authHeaders });
  if (res.status === 404) return 404;
  if (!res.ok) {
    noteError(`history: HTTP ${res.status}`);
    return null;
  }
  const h = await res.json();
  if (!h || !Array.isArray(h.ticks)) return null;
  return h;
}

function tapeTake(h) {
  tape.msg = '';
  if (tape.epoch && h.epoch !== tape.epoch) {
    tape.seq = 0;
    tapeMark('Server restarted: earlier trades are gone', Date.now());
  }
  tape.epoch = h.epoch;
  let ticks = h.ticks;
  if (tape.seq && ticks.length && ticks[0].seq > tape.seq + 1) {
    tapeMark(`${ticks[0].seq - tape.seq - 1} trades not shown`, ticks[0].ts);
  }
  if (ticks.length > TAPE_ROWS) ticks = ticks.slice(-TAPE_ROWS);
  for (const t of ticks) {
    const d = t.data || {};
    if (!Number.isFinite(d.price)) continue;
    const dir = Number.isFinite(tape.prev) ? Math.sign(d.price - tape.prev) : 0;
    tape.prev = d.price;
    tape.rows.unshift({ seq: t.seq, ts: t.ts, price: d.price, size: d.size, dir });
  }
  if (tape.rows.length > TAPE_ROWS) tape.rows.length = TAPE_ROWS;
  if (h.ticks.length) tape.seq = h.ticks[h.ticks.length - 1].seq;
  else if (!tape.seq) tape.seq = h.last_seq;
  if (h.last_seq > tape.seq) tape.want = true; // more to read
  tape.dirty = true;
}

function renderTape() {
  if (!tape.dirty) return;
  tape.dirty = false;
  const r = rows.get(tape.topic);
  const d = r ? rowDecimals(r) : 2;
  const frag = document.createDocumentFragment();
  if (tape.msg || !tape.rows.length) {
    const tr = document.createElement('tr');
    const td = document.createElement('td');
    td.colSpan = 3;
    td.className = 'tape-msg';
    td.textContent = tape.msg || (tape.topic ? 'No trades yet' : '');
    tr.appendChild(td);
    frag.appendChild(tr);
  }
  for (const x of tape.rows) {
    const tr = document.createElement('tr');
    tr.dataset.ts = String(x.ts);
    if (x.mark) {
      tr.className = 'tape-mark';
      const td = document.createElement('td');
      td.colSpan = 3;
      td.textContent = fmtTime(x.ts, false) + ' · ' + x.text;
      tr.appendChild(td);
    } else {
      tr.dataset.seq = String(x.seq);
      const cells = [
        [fmtTime(x.ts, true), ''],
        [fmtPrice(x.price, d), 'num' + (x.dir > 0 ? ' up' : x.dir < 0 ? ' down' : '')],
        [fmtSize(x.size), 'num'],
      ];
      for (const [text, cls] of cells) {
        const td = document.createElement('td');
        td.textContent = text;
        if (cls) td.className = cls;
        tr.appendChild(td);
      }
    }
    frag.appendChild(tr);
  }
  tapeBody.replaceChildren(frag);
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
  unknown: false,
  outages: [], // {from, to, lost} in Unix ms: marked on the chart
  epoch: '',
  hover: null,
};

// Theme colours, read once per theme change (reading them forces a style
// recalculation).
let colors = null;
function readThemeColors() {
  const cs = getComputedStyle(document.documentElement);
  const v = (n) => cs.getPropertyValue(n).trim();
  colors = { bg: v('--panel'), text: v('--muted'), line: v('--line'), up: v('--up'), down: v('--down'), accent: v('--accent'), warn: v('--warn') };
  colors.upVol = colors.up + '66';
  colors.downVol = colors.down + '66';
}

let chart = null;
let candleSeries = null;
let volumeSeries = null;
let markers = null;

function createChart() {
  if (!LWC) {
    showChartMsg('Chart library failed to load');
    return;
  }
  const c = colors;
  chart = LWC.createChart($('chart'), {
    autoSize: true,
    layout: { background: { type: 'solid', color: c.bg }, textColor: c.text, fontSize: 11, attributionLogo: true },
    grid: { vertLines: { color: c.line }, horzLines: { color: c.line } },
    crosshair: { mode: LWC.CrosshairMode.Normal },
    localization: { priceFormatter: (p) => fmtPrice(p, chartDecimals()) },
        // entireTextOnly: no half-drawn label at the top or bottom of the scale.
    rightPriceScale: { borderColor: c.line, entireTextOnly: true, scaleMargins: { top: 0.1, bottom: 0.25 } },
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
  if (LWC.createSeriesMarkers) markers = LWC.createSeriesMarkers(candleSeries, []);
  chart.subscribeCrosshairMove((param) => {
    chartState.hover = param && param.time !== undefined ? param.time : null;
    renderLegend();
  });
}

function chartDecimals() {
  const r = rows.get(chartState.topic);
  return r ? rowDecimals(r) : 2;
}

function applyTheme(theme) {
  document.documentElement.dataset.theme = theme;
  store.set('theme', theme);
  readThemeColors();
  if (!chart) return;
  const c = colors;
  chart.applyOptions({
    layout: { background: { type: 'solid', color: c.bg }, textColor: c.text },
    grid: { vertLines: { color: c.line }, horzLines: { color: c.line } },
    rightPriceScale: { borderColor: c.line },
    timeScale: { borderColor: c.line },
  });
  candleSeries.applyOptions({ upColor: c.up, downColor: c.down, wickUpColor: c.up, wickDownColor: c.down });
  chartState.needFull = true; // volume colours, markers
  scheduleRender();
}

function showChartMsg(text) {
  const el = $('chart-msg');
  el.textContent = text || '';
  el.hidden = !text;
}

function chartBar(b) {
  return { time: toChartTime(b.t), open: b.o, high: b.h, low: b.l, close: b.c };
}

function volBar(b) {
  return { time: toChartTime(b.t), value: b.v, color: b.c >= b.o ? colors.upVol : colors.downVol };
}

function selectTopic(topic) {
  if (!topic || topic === chartState.topic) return;
  const prev = rows.get(ui.selected);
  if (prev && prev.el) { prev.el.classList.remove('sel'); prev.el.setAttribute('aria-selected', 'false'); }
  ui.selected = topic;
  const r = rows.get(topic);
  if (r && r.el) { r.el.classList.add('sel'); r.el.setAttribute('aria-selected', 'true'); }
  updateActiveDescendant();
  if (decodeURIComponent(location.hash.slice(1)) !== topic) history.replaceState(null, '', '#' + encodeURIComponent(topic));
  store.set('topic', topic);
  $('announce').textContent = `${topic} selected`;
  renderWatchButton();
  syncSubs();
  tapeReset(topic);
  chartState.outages = [];
  loadChart(topic, chartState.interval);
}

function updateActiveDescendant() {
  const r = rows.get(ui.selected);
  if (r && r.el && r.el.isConnected) board.setAttribute('aria-activedescendant', r.id);
  else board.removeAttribute('aria-activedescendant');
}

function setIntervalName(name) {
  if (!(name in INTERVALS)) return;
  store.set('interval', name);
  for (const b of document.querySelectorAll('#intervals button')) b.setAttribute('aria-pressed', String(b.dataset.interval === name));
  if (chart) chart.applyOptions({ timeScale: { secondsVisible: name === '1s' } });
  if (chartState.topic) loadChart(chartState.topic, name);
  else chartState.interval = name;
}

// foldUpdateIntoBars folds one live update into the chart's bars, exactly:
// each of the update's candle runs (agg.b, or the agg itself in the second
// of its ts) goes into its own bar, as the server folds ticks, so the bars
// equal /api/candles at any throttle and any lag (docs/protocol.md). It
// returns the bars that changed, with kind 'new', 'last' or 'past'.
function foldUpdateIntoBars(candles, m) {
  return candles.foldUpdate(m).filter((r) => r.kind !== 'none');
}

// loadChart fetches the bars of topic at interval. With keep (after a
// server restart with a new epoch), the bars before the new server's first
// bar are kept and the outage is marked, instead of starting over.
async function loadChart(topic, interval, keep = false) {
  const token = ++chartState.loadToken;
  const old = keep && chartState.candles && chartState.topic === topic && chartState.interval === interval ? chartState.candles.bars : null;
  chartState.topic = topic;
  chartState.interval = interval;
  chartState.candles = new Candles(INTERVALS[interval], 2000);
  chartState.loading = true;
  chartState.buffer = [];
  chartState.pending.clear();
  chartState.reloadAfterSnapshot = false;
  chartState.lastRenderedT = -Infinity;
  chartState.unknown = false;
  $('chart-topic').textContent = topic;
  renderFeedWarning();
  if (candleSeries && !old) {
    candleSeries.setData([]);
    volumeSeries.setData([]);
    if (markers) markers.setMarkers([]);
  }
  if (!old) showChartMsg('Loading…');
  let bars = [];
  let seq = null;
  let missing = false;
  try {
    const res = await fetch(`api/candles?topic=${encodeURIComponent(topic)}&interval=${interval}&limit=${BACKFILL_BARS}`, { cache: 'no-store', headers: authHeaders });
    if (res.ok) {
      bars = await res.json();
      const h = res.headers.get('X-Tickstream-Seq');
      if (h !== null && /^\d+$/.test(h)) seq = Number(h);
    } else if (res.status === 404) {
      missing = true;
    } else {
      noteError(`candles: HTTP ${res.status}`);
    }
  } catch (e) {
    noteError('candles: ' + (e && e.message || e));
  }
  if (token !== chartState.loadToken) return;
  bars = Array.isArray(bars) ? bars : [];
  if (old && old.length) {
    const first = bars.length ? bars[0].t : Infinity;
    bars = old.filter((b) => b.t < first).concat(bars);
  }
  chartState.candles.load(bars);
  // Updates that arrived during the fetch: with the server's seq we know
  // exactly which ones the backfill holds; without it, they are in the
  // backfill already (their ticks were published before it was built).
  if (seq !== null) {
    for (const m of chartState.buffer) if (m.seq > seq) foldUpdateIntoBars(chartState.candles, m);
  }
  chartState.buffer = [];
  chartState.loading = false;
  chartState.needFull = true;
  chartState.unknown = missing && !rows.has(topic);
  if (chartState.unknown) showChartMsg(`Unknown symbol “${topic}”: no such topic on this server`);
  else showChartMsg(chartState.candles.bars.length ? '' : 'No trades yet');
  scheduleRender();
}

function chartUpdate(m) {
  if (chartState.unknown) {
    loadChart(m.topic, chartState.interval); // it exists now
    return;
  }
  if (chartState.loading) {
    chartState.buffer.push(m);
    return;
  }
  for (const res of foldUpdateIntoBars(chartState.candles, m)) {
    chartState.pending.set(res.bar.t, res.bar);
    if (res.kind === 'new') showChartMsg('');
    // A bar inserted before the newest (a late tick in a second with no
    // bar yet) cannot be added by an update: redraw the series.
    if (res.kind === 'past' && res.bar.t < chartState.lastRenderedT) chartState.needFull = true;
  }
}

function renderMarkers() {
  if (!markers || !chartState.candles) return;
  const bars = chartState.candles.bars;
  const list = [];
  for (const o of chartState.outages) {
    // On the first bar after the outage.
    const b = bars.find((x) => x.t + INTERVALS[chartState.interval] > o.to) || null;
    if (!b) continue;
    list.push({ time: toChartTime(b.t), position: 'aboveBar', shape: 'arrowDown', color: colors.warn, text: o.lost ? 'restart: data lost' : 'reconnected' });
  }
  markers.setMarkers(list);
}

function renderChart() {
  if (!candleSeries || chartState.loading || !chartState.candles) return;
  const bars = chartState.candles.bars;
  if (chartState.needFull) {
    chartState.needFull = false;
    chartState.pending.clear();
    candleSeries.setData(bars.map(chartBar));
    volumeSeries.setData(bars.map(volBar));
    chartState.lastRenderedT = bars.length ? bars[bars.length - 1].t : -Infinity;
    renderMarkers();
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
      volumeSeries.update(volBar(b), past);
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
  if (cs.hover !== null) bar = cs.candles.bars.find((b) => toChartTime(b.t) === cs.hover) || null;
  if (!bar) bar = cs.candles.last();
  const el = $('legend');
  if (!bar) {
    el.textContent = '';
    return;
  }
  const d = chartDecimals();
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

let chartHeadDecimals = -1;
function renderChartHead() {
  const r = rows.get(chartState.topic);
  if (!r) return;
  const d = rowDecimals(r);
  $('chart-price').textContent = fmtPrice(r.price, d);
  const chg = refChange(r);
  const el = $('chart-chg');
  el.textContent = fmtSigned(chg, d) + ' (' + fmtPct(refPct(r)) + ')';
  $('chart-vol').textContent = fmtVol(refVolume(r));
  const shown = /[1-9]/.test(el.textContent.split('(')[0]);
  el.className = 'chart-chg ' + (shown && chg > 0 ? 'up' : shown && chg < 0 ? 'down' : '');
  if (d !== chartHeadDecimals && candleSeries && Number.isFinite(r.price)) {
    chartHeadDecimals = d;
    candleSeries.applyOptions({ priceFormat: { type: 'price', precision: d, minMove: Math.pow(10, -d) } });
  }
}

// ---- feeds -----------------------------------------------------------------
// GET /api/feeds: a feed that is not running, degraded, or a backup standing
// in for a primary is shown in the strip. A symbol is marked (⚠) when its
// feed (/api/topics `feed`, the feed that last published it) has such a
// problem, or is a backup standing in (`backup_for`).

const FEED_BAD = new Set(['failed', 'restarting', 'stopped', 'degraded', 'starting']);
async function loadFeeds() {
  try {
    const res = await fetch('api/feeds', { cache: 'no-store', headers: authHeaders });
    if (!res.ok) return;
    const list = await res.json();
    if (Array.isArray(list)) renderFeeds(list);
  } catch { /* the connection badge says it */ }
}

// rowWarning is the warning on a symbol, '' when its prices are its own
// feed's and that feed is fine.
function rowWarning(r) {
  if (!r.feed) return '';
  if (r.backupFor.length) return `${r.feed} stands in for ${r.backupFor.join(', ')}: substituted prices`;
  const f = ui.feeds.get(r.feed);
  if (f && FEED_BAD.has(f.state)) return `${f.name} ${f.state}${f.last_error ? ': ' + f.last_error : ''}: prices may be stale`;
  return '';
}

function renderFeeds(list) {
  const problems = [];
  const byName = new Map();
  for (const f of list) {
    byName.set(f.name, f);
    if (f.external) continue;
    if (Array.isArray(f.stands_in_for) && f.stands_in_for.length) {
      problems.push(`${f.name} stands in for ${f.stands_in_for.join(', ')}`);
    } else if (FEED_BAD.has(f.state)) {
      problems.push(`${f.name} ${f.state}${f.last_error ? ': ' + f.last_error : ''}`);
    }
  }
  ui.feeds = byName;
  const strip = $('feed-strip');
  const st = $('st-feeds');
  const text = problems.join(' · ');
  if (text !== ui.feedProblem) {
    ui.feedProblem = text;
    strip.hidden = !text;
    $('feed-strip-text').textContent = text ? 'Feed problem: ' + text + '. Prices may be stale or substituted.' : '';
  }
  for (const r of rows.values()) renderSym(r);
  renderFeedWarning();
  const ok = list.filter((f) => !f.external).map((f) => f.name + ' ' + f.state);
  st.textContent = ok.length ? 'feeds: ' + ok.join(', ') : '';
  st.classList.toggle('err', !!text);
}

// The chart's warning: the selected symbol's.
function renderFeedWarning() {
  const r = rows.get(chartState.topic);
  const warn = r ? rowWarning(r) : '';
  const el = $('chart-warn');
  el.hidden = !warn;
  el.textContent = warn ? '⚠ ' + warn : '';
}

// ---- watchlist -------------------------------------------------------------

function toggleWatch(topic) {
  if (!topic) return;
  if (ui.watch.has(topic)) ui.watch.delete(topic);
  else ui.watch.add(topic);
  store.set('watchlist', JSON.stringify([...ui.watch]));
  const r = rows.get(topic);
  if (r) renderSym(r);
  renderWatchButton();
  ui.orderDirty = true;
  ui.forceOrder = true;
  syncSubs();
  scheduleRender();
}

function renderWatchButton() {
  const on = ui.watch.has(ui.selected);
  const b = $('watch');
  b.setAttribute('aria-pressed', String(on));
  b.textContent = on ? '★' : '☆';
  b.title = on ? 'Remove from the watchlist' : 'Add to the watchlist (pinned to the top of the board)';
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
        if (!subs.has(m.topic)) { client.cursors.delete(m.topic); break; }
        const r = rowFor(m.topic);
        applyData(r, m.data, m.ts, false);
        setRef(r, m.ref, m.seq);
        if (r.epoch && m.epoch !== r.epoch && m.topic === chartState.topic) noteOutage(true);
        r.seq = m.seq;
        r.epoch = m.epoch;
        if (!r.live) { r.live = true; r.liveSince = now; r.counts = []; }
        if (m.topic === chartState.topic) {
          if (chartState.reloadAfterSnapshot || chartState.unknown) loadChart(m.topic, chartState.interval, !chartState.unknown);
          tapeWant();
        }
        sideTake(m);
        break;
      }
      case 'update': {
        // In flight when it was unsubscribed: the row is polled now.
        if (!subs.has(m.topic)) { client.cursors.delete(m.topic); break; }
        const r = rowFor(m.topic);
        if (r.epoch && r.epoch !== m.epoch) r.refAt = -1; // another epoch: wait for its ref
        foldRef(r, m, r.epoch === m.epoch ? r.seq : 0);
        applyData(r, m.data, m.ts, true);
        r.seq = m.seq;
        r.epoch = m.epoch;
        if (!r.live) { r.live = true; r.liveSince = now; r.counts = []; }
        const n = m.agg && m.agg.n > 0 ? m.agg.n : 1;
        countTick(r, n, now);
        if (m.topic === chartState.topic) {
          chartUpdate(m);
          tapeWant();
        }
        sideTake(m);
        break;
      }
      case 'reset':
        // History was lost (server restarted, or we were away too long):
        // the snapshot that follows carries the latest value; the chart is
        // backfilled from the new server once it arrives, keeping the bars
        // from before the outage.
        if (m.topic === chartState.topic) {
          chartState.reloadAfterSnapshot = true;
          const topic = m.topic;
          setTimeout(() => {
            if (chartState.topic === topic && chartState.reloadAfterSnapshot) {
              loadTopics();
              loadChart(topic, chartState.interval, true);
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

// An outage of the selected topic's stream: marked on the chart and in
// time & sales. lost: the server came back with a new epoch (its history
// is gone, so the chart has a hole).
const conn = { downSince: 0, lastDown: null };
function noteOutage(lost) {
  const o = conn.lastDown || { from: Date.now(), to: Date.now() };
  chartState.outages.push({ from: o.from, to: o.to, lost });
  if (lost) tapeMark(`Server restarted: trades since ${fmtTime(o.from, false)} may be missing`, o.to);
  chartState.needFull = true;
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
  if (ui.pointerOver && !ui.forceOrder) {
    if (ui.orderDirty) appendNewRows(now);
  } else if (ui.orderDirty || (ui.sortKey !== 'topic' && now - ui.lastSort > SORT_EVERY_MS)) {
    renderOrder(now);
  }
  renderWindow(now);
  for (let i = ui.window[0]; i < ui.window[1]; i++) {
    const r = rows.get(ui.order[i]);
    if (r && r.dirty && r.el) renderRow(r, now);
  }
  expireFlashes(now);
  renderChart();
  renderChartHead();
  renderTape();
  renderSide();
}

const STATE_TEXT = { live: 'Live', lagging: 'Lagging', reconnecting: 'Reconnecting', offline: 'Offline', connecting: 'Connecting' };
let lastState = '';
function renderBadge(s) {
  const badge = $('badge');
  badge.dataset.state = s.state;
  badge.dataset.transport = s.transport || '';
  badge.dataset.queued = String(s.queued || 0);
  const tr = TransportName[s.transport] || s.transport;
  let text;
  switch (s.state) {
    case 'live': text = 'Live · ' + tr; break;
    case 'lagging': text = `Lagging · ${s.throttleMs} ms · ${tr}`; break;
    case 'reconnecting': text = `Reconnecting in ${Math.ceil(s.retryInMs / 1000)} s`; break;
    case 'offline': text = 'Offline'; break;
    default: text = 'Connecting…';
  }
  if (s.queued > 0) text += ` · ${s.queued} queued`;
  badge.querySelector('.label').textContent = text;
  badge.title = client.stats.lastError && s.state !== 'live' ? 'Last problem: ' + client.stats.lastError : '';
  $('st-conn').textContent = s.transport ? `${s.transport} · session ${client.session ? client.session.slice(0, 8) : '—'}` : '';
  // The screen-reader announcement changes with the state only, never with
  // the countdown.
  const said = (STATE_TEXT[s.state] || 'Connecting') + (s.state === 'live' || s.state === 'lagging' ? ' over ' + tr : '');
  if (said !== lastState) {
    $('conn-live').textContent = 'Connection: ' + said;
    const wasUp = lastState.startsWith('Live') || lastState.startsWith('Lagging');
    const isUp = s.state === 'live' || s.state === 'lagging';
    if (wasUp && !isUp) conn.downSince = Date.now();
    if (!wasUp && isUp && conn.downSince) {
      conn.lastDown = { from: conn.downSince, to: Date.now() };
      const secs = ((conn.lastDown.to - conn.lastDown.from) / 1000).toFixed(1);
      if (tape.topic) tapeMark(`Connection lost for ${secs} s, resumed`, conn.lastDown.to);
      conn.downSince = 0;
    }
    lastState = said;
    if (isUp) setTimeout(syncSubs, 0); // after the connection's own subscribe
  }
}

function wantedTopic() {
  let h = '';
  try { h = decodeURIComponent(location.hash.slice(1)); } catch { h = ''; }
  return h || store.get('topic', '');
}

// loadTopics reads every page of /api/topics (at most TOPICS_MAX_PAGES),
// following X-Tickstream-Next; one poll at a time.
async function loadTopics() {
  if (ui.topicsPolling) return;
  ui.topicsPolling = true;
  try {
    let after = '';
    for (let page = 0; page < TOPICS_MAX_PAGES; page++) {
      const q = 'api/topics?limit=' + TOPICS_PAGE + (after ? '&after=' + encodeURIComponent(after) : '');
      const res = await fetch(q, { cache: 'no-store', headers: authHeaders });
      if (!res.ok) return;
      takeTopics(await res.json());
      after = res.headers.get('X-Tickstream-Next') || '';
      if (!after) break;
    }
  } catch (e) {
    noteError('topics: ' + (e && e.message || e));
  } finally {
    ui.topicsPolling = false;
  }
}
function takeTopics(body) {
  {
    const list = Array.isArray(body) ? body : (body && body.topics) || [];
    for (const t of list) {
      if (!t || !t.topic) continue;
      const r = rowFor(t.topic);
      r.rate = Number.isFinite(t.rate) ? t.rate : 0;
      const feed = typeof t.feed === 'string' ? t.feed : '';
      const backupFor = Array.isArray(t.backup_for) ? t.backup_for : [];
      if (feed !== r.feed || backupFor.join() !== r.backupFor.join()) {
        r.feed = feed;
        r.backupFor = backupFor;
        renderSym(r);
        if (r.topic === chartState.topic) renderFeedWarning();
      }
      // A row streamed live is fresher than the poll: its ref is taken
      // only at a seq its updates line up with.
      if (subs.has(t.topic) && r.live) {
        if (r.epoch === t.epoch) pollRef(r, t);
        continue;
      }
      if (r.epoch === t.epoch && t.seq < r.seq) continue;
      setRef(r, t.ref, t.seq);
      if (r.epoch === t.epoch && t.seq === r.seq) continue;
      applyData(r, t.data, t.ts, true);
      r.seq = t.seq;
      r.epoch = t.epoch;
    }
    ui.topicsLoaded = true;
    if (!chartState.topic) {
      const want = wantedTopic();
      selectTopic(want || (list.length ? list[0].topic : null));
    }
    scheduleSyncSubs();
    scheduleRender();
  }
}

// ---- wiring ----------------------------------------------------------------

function moveSelection(delta, abs) {
  const n = ui.order.length;
  if (!n) return;
  let i = ui.order.indexOf(ui.selected);
  if (abs !== undefined) i = abs < 0 ? n - 1 : abs;
  else i = i < 0 ? 0 : Math.max(0, Math.min(n - 1, i + delta));
  selectTopic(ui.order[i]);
  revealSelected();
}

function sortBy(k) {
  if (ui.sortKey === k) ui.sortDir = -ui.sortDir;
  else {
    ui.sortKey = k;
    ui.sortDir = k === 'topic' ? 1 : -1;
  }
  store.set('sortKey', ui.sortKey);
  store.set('sortDir', ui.sortDir);
  ui.orderDirty = true;
  ui.forceOrder = true;
  scheduleRender();
}

function setTz(mode) {
  tz.mode = mode === 'utc' ? 'utc' : 'local';
  store.set('tz', tz.mode);
  tz.offCache.clear();
  setTzFormat();
  $('tz').value = tz.mode;
  const label = tzLabel(Date.now());
  $('tape-tz').textContent = `Time (${label})`;
  $('clock').title = `Server time (${tz.mode === 'utc' ? 'UTC' : 'local time, ' + label})`;
  renderClock();
  chartState.needFull = true;
  tape.dirty = true;
  scheduleRender();
}

function renderClock() {
  const now = client.serverNow();
  $('clock').textContent = fmtTime(now, false) + ' ' + tzLabel(now);
}

function init() {
  const mq = globalThis.matchMedia ? matchMedia('(prefers-reduced-motion: reduce)') : null;
  ui.reducedMotion = !!(mq && mq.matches);
  if (mq && mq.addEventListener) mq.addEventListener('change', () => { ui.reducedMotion = mq.matches; });
  applyTheme(store.get('theme', 'dark') === 'light' ? 'light' : 'dark');
  createChart();
  setIntervalName(chartState.interval);
  setTz(tz.mode);
  const sel = $('throttle');
  sel.value = String(throttle);
  sel.addEventListener('change', () => {
    const ms = Number(sel.value);
    store.set('throttle', ms);
    client.setThrottle(ms);
  });
  $('tz').addEventListener('change', (e) => setTz(e.target.value));
  $('theme').addEventListener('click', () => applyTheme(document.documentElement.dataset.theme === 'dark' ? 'light' : 'dark'));
  $('watch').addEventListener('click', () => toggleWatch(ui.selected));
  const filter = $('filter');
  filter.value = ui.filter;
  filter.addEventListener('input', (e) => {
    ui.filter = e.target.value.trim();
    store.set('filter', ui.filter);
    ui.orderDirty = true;
    ui.forceOrder = true;
    scheduleRender();
  });
  for (const th of document.querySelectorAll('#board th')) {
    th.querySelector('button').addEventListener('click', () => sortBy(th.dataset.key));
  }
  tbody.addEventListener('click', (e) => {
    const tr = e.target.closest('tr');
    if (tr) selectTopic(tr.dataset.topic);
  });
  // One tab stop: the table holds the focus and arrow keys move the
  // selection (announced through aria-activedescendant and aria-selected).
  board.addEventListener('keydown', (e) => {
    if (e.target !== board) return;
    const page = Math.max(1, Math.floor($('table-wrap').clientHeight / rowHeight()) - 1);
    switch (e.key) {
      case 'ArrowDown': moveSelection(1); break;
      case 'ArrowUp': moveSelection(-1); break;
      case 'PageDown': moveSelection(page); break;
      case 'PageUp': moveSelection(-page); break;
      case 'Home': moveSelection(0, 0); break;
      case 'End': moveSelection(0, -1); break;
      case 'Enter': case ' ': revealSelected(); break;
      case '*': case 'w': toggleWatch(ui.selected); break;
      default: return;
    }
    e.preventDefault();
  });
  board.addEventListener('focus', () => {
    if (!ui.selected && ui.order.length) selectTopic(ui.order[0]);
    updateActiveDescendant();
  });
  // No re-sorting under the pointer: a click lands on the row it aimed at.
  tbody.addEventListener('pointerenter', () => { ui.pointerOver = true; });
  tbody.addEventListener('pointerleave', () => { ui.pointerOver = false; scheduleRender(); });
  $('table-wrap').addEventListener('scroll', () => { scheduleRender(); scheduleSyncSubs(); }, { passive: true });
  addEventListener('resize', () => { rowH = 0; ui.windowDirty = true; scheduleRender(); scheduleSyncSubs(); });
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
    renderAges(client.serverNow());
    renderClock();
    const t = Date.now();
    if (t - lastCountAt >= 1000) {
      $('st-msgs').textContent = `${Math.round(((ui.msgCount - lastCount) * 1000) / (t - lastCountAt))} msg/s`;
      lastCount = ui.msgCount;
      lastCountAt = t;
    }
  }, 250);
  setInterval(loadTopics, TOPICS_EVERY_MS);
  setInterval(loadFeeds, FEEDS_EVERY_MS);
  setInterval(syncSubs, 1000);

  initSide();
  const want = wantedTopic();
  if (want) selectTopic(want);
  loadTopics();
  loadFeeds();
  client.start();
}


// ---- depth, split layout, overlays -------------------------------------------
// The depth view of the selected symbol (depth.js), the second chart of the
// split layout (chart2.js) and the VWAP and SMA overlays of both charts
// (overlays.js). Settings live in localStorage with the rest of the layout:
// tickstream.split ('1' or '2'), tickstream.chart2 ({topic, interval}) and
// tickstream.overlays ({vwap, sma, period}).

const OVERLAY_PERIODS = [5, 10, 20, 50, 100, 200];
const side = {
  overlay: (() => {
    const o = storedJSON('overlays', {});
    const period = OVERLAY_PERIODS.includes(Number(o.period)) ? Number(o.period) : 20;
    return { vwap: o.vwap === true, sma: o.sma === true, period };
  })(),
  split: store.get('split', '1') === '2' ? 2 : 1,
  chart2: (() => {
    const c = storedJSON('chart2', {});
    return { topic: typeof c.topic === 'string' ? c.topic : '', interval: c.interval in INTERVALS ? c.interval : '1m' };
  })(),
  data: new Map(), // topic -> merged data of its snapshots and updates
  depth: null,
  second: null,
  mainOverlays: null,
  mainDirty: true,
  mainCandles: null,
  mainForce: false,
};

// A VWAP session is a calendar day in the chosen time zone.
const sessionOf = (t) => Math.floor((t / 1000 + tzOffsetSec(t)) / 86400);

function sideTopics() {
  return side.split === 2 && side.chart2.topic ? [side.chart2.topic] : [];
}

function sideTake(m) {
  if (m.data) {
    let d = side.data.get(m.topic);
    if (!d || m.type === 'snapshot') { d = {}; side.data.set(m.topic, d); }
    Object.assign(d, m.data);
  }
  if (side.depth && m.topic === side.depth.topic) side.depth.take(m);
  if (m.topic === chartState.topic) side.mainDirty = true;
  if (side.second && side.split === 2) side.second.take(m);
}

function renderSide() {
  if (side.depth) {
    if (side.depth.topic !== chartState.topic) {
      side.depth.reset(chartState.topic);
      const d = side.data.get(chartState.topic);
      if (d) side.depth.data = { ...d };
    }
    side.depth.render();
  }
  const mo = side.mainOverlays;
  if (mo && chartState.candles && !chartState.loading) {
    const fresh = side.mainCandles !== chartState.candles;
    if (fresh || side.mainDirty || side.mainForce) {
      mo.render(chartState.candles.bars, fresh || side.mainForce);
      side.mainCandles = chartState.candles;
      side.mainDirty = false;
      side.mainForce = false;
    }
  }
  if (side.second && side.split === 2) {
    if (!side.chart2.topic) {
      const t = ui.order.find((x) => x !== ui.selected);
      if (t) setChart2(t, side.chart2.interval);
    }
    side.second.render();
  }
}

function saveLayout() {
  store.set('split', side.split);
  store.set('chart2', JSON.stringify(side.chart2));
  store.set('overlays', JSON.stringify(side.overlay));
}

function setSplit(n) {
  side.split = n === 2 ? 2 : 1;
  saveLayout();
  $('charts').dataset.split = String(side.split);
  for (const b of document.querySelectorAll('#split button')) b.setAttribute('aria-pressed', String(Number(b.dataset.split) === side.split));
  $('chart2-pane').hidden = side.split !== 2;
  if (side.split === 2) {
    side.second.create();
    if (side.chart2.topic && side.second.topic !== side.chart2.topic) setChart2(side.chart2.topic, side.chart2.interval);
  }
  syncSubs();
  scheduleRender();
}

function setChart2(topic, interval) {
  if (!(interval in INTERVALS)) interval = '1m';
  side.chart2 = { topic, interval };
  saveLayout();
  $('chart2-topic').value = topic;
  $('chart2-interval').value = interval;
  side.second.load(topic, interval).then(scheduleRender);
  syncSubs();
}

function setOverlay(change) {
  Object.assign(side.overlay, change);
  saveLayout();
  renderOverlayControls();
  side.mainForce = true;
  if (side.second) side.second.overlaysChanged();
  scheduleRender();
}

function renderOverlayControls() {
  $('ov-vwap').setAttribute('aria-pressed', String(side.overlay.vwap));
  $('ov-sma').setAttribute('aria-pressed', String(side.overlay.sma));
  $('ov-period').value = String(side.overlay.period);
  $('ov-period').disabled = !side.overlay.sma;
}

function initSide() {
  const colorsNow = () => colors;
  side.depth = new DepthView({
    spark: $('depth-spark'), best: $('depth-best'), book: $('depth-book'), bookBody: $('depth-book-rows'), colors: colorsNow,
    fmtPrice: (p, topic) => { const r = rows.get(topic); return fmtPrice(p, r ? rowDecimals(r) : 2); },
    fmtSize,
  });
  const overlayOpts = { settings: () => side.overlay, sessionOf };
  if (chart) side.mainOverlays = new Overlays(LWC, chart, { toTime: toChartTime, sessionOf, settings: overlayOpts.settings, colors: colorsNow });
  side.second = new SecondChart({
    el: $('chart2'), msg: $('chart2-msg'), legend: $('legend2'), LWC, intervals: INTERVALS, toTime: toChartTime, colors: colorsNow,
    decimals: (topic) => { const r = rows.get(topic); return r ? rowDecimals(r) : 2; },
    fmtPrice, headers: authHeaders, overlay: overlayOpts, onError: noteError,
  });
  renderOverlayControls();
  $('ov-vwap').addEventListener('click', () => setOverlay({ vwap: !side.overlay.vwap }));
  $('ov-sma').addEventListener('click', () => setOverlay({ sma: !side.overlay.sma }));
  $('ov-period').addEventListener('change', (e) => setOverlay({ period: Number(e.target.value) || 20 }));
  for (const b of document.querySelectorAll('#split button')) b.addEventListener('click', () => setSplit(Number(b.dataset.split)));
  const input = $('chart2-topic');
  input.value = side.chart2.topic;
  $('chart2-interval').value = side.chart2.interval;
  // The datalist is filled when the field is used (thousands of symbols).
  input.addEventListener('focus', () => {
    const list = $('chart2-topics');
    const frag = document.createDocumentFragment();
    for (const t of [...rows.keys()].sort().slice(0, 1000)) {
      const o = document.createElement('option');
      o.value = t;
      frag.appendChild(o);
    }
    list.replaceChildren(frag);
  });
  input.addEventListener('change', () => {
    const t = input.value.trim();
    if (t && t !== side.chart2.topic) setChart2(t, side.chart2.interval);
  });
  $('chart2-interval').addEventListener('change', (e) => setChart2(side.chart2.topic, e.target.value));
  // After the page's own handlers (theme colours, time zone) have run.
  $('theme').addEventListener('click', () => {
    if (side.mainOverlays) side.mainOverlays.applyTheme();
    side.second.applyTheme();
    side.depth.render(true);
    scheduleRender();
  });
  $('tz').addEventListener('change', () => {
    side.mainForce = true;
    side.second.needFull = true;
    scheduleRender();
  });
  addEventListener('resize', () => side.depth.render(true));
  setSplit(side.split);
  Object.assign(globalThis.__tickstream, {
    depth: () => side.depth.view(),
    chart2: (n = 50) => side.second.view(n),
    overlays: () => ({ ...side.overlay, main: side.mainOverlays ? side.mainOverlays.values() : null }),
    layout: () => ({ split: side.split, chart2: { ...side.chart2 } }),
  });
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
        price: r.price, open: r.refO, chg: refChange(r), bid: r.bid, ask: r.ask,
        volume: refVolume(r), refAt: r.refAt, feed: r.feed, backupFor: [...r.backupFor], warning: rowWarning(r),
        ts: r.ts, seq: r.seq, epoch: r.epoch,
        live: r.live, decimals: rowDecimals(r),
        cells: r.text ? { ...r.text } : null,
      };
    }
    return out;
  },
  subscribed: () => [...client.topics],
  chart: (n = 50) => ({
    topic: chartState.topic,
    interval: chartState.interval,
    loading: chartState.loading,
    unknown: chartState.unknown,
    outages: chartState.outages.map((o) => ({ ...o })),
    bars: chartState.candles ? chartState.candles.bars.slice(-n).map((b) => ({ ...b })) : [],
    // What the chart library holds: the time it was given for the last bar.
    seriesLastTime: candleSeries && candleSeries.data().length ? candleSeries.data()[candleSeries.data().length - 1].time : null,
  }),
  tape: () => tape.rows.map((x) => ({ ...x })),
  ui: () => ({ sortKey: ui.sortKey, sortDir: ui.sortDir, pointerOver: ui.pointerOver, order: [...ui.order], watch: [...ui.watch], selected: ui.selected }),
  tz: () => ({ mode: tz.mode, label: tzLabel(Date.now()), offsetSec: tzOffsetSec(Date.now()) }),
  select: selectTopic,
  setInterval: setIntervalName,
  setThrottle: (ms) => {
    $('throttle').value = String(ms);
    client.setThrottle(ms);
  },
};

init();
