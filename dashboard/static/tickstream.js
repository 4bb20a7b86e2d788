// tickstream.js — browser client for a tickstream server.
//
// A plain ES module with no dependencies:
//
//   import { Tickstream } from '/tickstream.js';
//   const ts = new Tickstream({ topics: ['*'], throttleMs: 250 });
//   ts.onBatch((msgs) => { for (const m of msgs) if (m.type === 'update') … });
//   ts.onState((s) => badge.textContent = s.state);
//   ts.start();
//
// It connects over WebSocket (/ws), falls back to one SSE stream (/sse)
// when WebSocket cannot connect or delivers nothing within a timeout, and
// to long-polling (/poll) when SSE delivers nothing either (a proxy that
// buffers event streams); reconnects with exponential backoff and
// full jitter, honouring the server's retry hints; resumes every topic from
// its (epoch, seq) cursor so that nothing is lost or repeated; detects a
// dead link from missing heartbeats; and hands messages to the page in one
// batch per animation frame. publish() sends ticks (over the WebSocket, or
// POST /api/publish on the other transports) with message ids, queues them
// while offline and resends them on reconnect with the same ids, so that
// the server publishes each once. See dashboard/README.md.

/** Splits one WebSocket frame or SSE data block into messages. A frame may
 * carry several JSON messages separated by "\n". Lines that are not JSON
 * objects are passed to onBad (if given) and skipped. */
export function splitFrame(text, onBad) {
  const out = [];
  if (typeof text !== 'string' || text === '') return out;
  let start = 0;
  while (start <= text.length) {
    let end = text.indexOf('\n', start);
    if (end < 0) end = text.length;
    const line = text.slice(start, end).trim();
    start = end + 1;
    if (line === '') continue;
    let msg;
    try {
      msg = JSON.parse(line);
    } catch (e) {
      if (onBad) onBad(line, e);
      continue;
    }
    if (msg !== null && typeof msg === 'object' && !Array.isArray(msg)) out.push(msg);
    else if (onBad) onBad(line, new Error('not a JSON object'));
  }
  return out;
}

/** Reconnect delay for the given attempt (0-based): "full jitter"
 * exponential backoff, uniform in [0, min(cap, base·2^attempt)). */
export function backoffDelay(attempt, { baseMs = 500, capMs = 30000, random = Math.random } = {}) {
  const ceiling = Math.min(capMs, baseMs * Math.pow(2, Math.max(0, Math.min(attempt, 30))));
  return Math.floor(random() * ceiling);
}

/** Reads the server's retry hint from a WebSocket close reason
 * ("server shutting down retry_ms=1500"), or returns null. */
export function parseRetryHint(reason) {
  const m = /(?:^|\s)retry_ms=(\d+)/.exec(reason || '');
  return m ? Number(m[1]) : null;
}

/** Per-topic resume cursors: the last (epoch, seq) applied. classify()
 * decides what to do with a snapshot or update before it is applied. */
export class Cursors {
  constructor() {
    this.map = new Map();
    this.gaps = 0; // updates or snapshots that skipped seqs
    this.dups = 0; // updates dropped as already applied
    this.overlaps = 0; // updates that held some ticks already applied
  }
  get(topic) { return this.map.get(topic); }
  delete(topic) { this.map.delete(topic); }
  clear() { this.map.clear(); }
  get size() { return this.map.size; }

  /** Returns 'apply' or 'drop' for a snapshot or update, and advances the
   * cursor when it returns 'apply'. An update whose first seq (seq − n + 1)
   * does not follow the cursor counts as a gap but is still applied. */
  classify(msg) {
    const cur = this.map.get(msg.topic);
    if (msg.type === 'snapshot') {
      // A snapshot past our cursor in the same epoch skips ticks: the
      // server did not resume us (no reset came first).
      if (cur && cur.epoch === msg.epoch && msg.seq > cur.seq) this.gaps++;
      this.map.set(msg.topic, { epoch: msg.epoch, seq: msg.seq });
      return 'apply';
    }
    if (msg.type !== 'update') return 'apply';
    if (cur && cur.epoch === msg.epoch) {
      if (msg.seq <= cur.seq) {
        this.dups++;
        return 'drop';
      }
      const n = msg.agg && msg.agg.n > 0 ? msg.agg.n : 1;
      const first = msg.seq - n + 1;
      if (first > cur.seq + 1) this.gaps++;
      else if (first < cur.seq + 1) this.overlaps++; // partly applied before: applied again
    }
    this.map.set(msg.topic, { epoch: msg.epoch, seq: msg.seq });
    return 'apply';
  }

  /** The resume map of a subscribe message. */
  resume(topics) {
    const out = {};
    for (const [t, c] of this.map) {
      if (!topics || topics.has(t)) out[t] = { epoch: c.epoch, seq: c.seq };
    }
    return out;
  }
}

/** The inline cursor (an SSE event id) of the positions in cursors:
 * epoch~topic=seq,…!epoch~…, as /sse and /poll take it. */
export function inlineCursor(cursors) {
  const byEpoch = new Map();
  for (const [t, c] of cursors.map) {
    if (!byEpoch.has(c.epoch)) byEpoch.set(c.epoch, []);
    byEpoch.get(c.epoch).push(t + '=' + c.seq);
  }
  return [...byEpoch].map(([e, items]) => e + '~' + items.join(',')).join('!');
}

/** Start of the bar that holds ts, for bars of ms milliseconds. */
export function bucketStart(ts, ms) {
  return ts - (((ts % ms) + ms) % ms);
}

/** Candles is one topic's OHLCV bars at one interval, oldest first, kept
 * live from update aggregates. Bars are {t, o, h, l, c, v, n} with t the
 * bar's start in Unix ms, as /api/candles returns them. */
export class Candles {
  constructor(intervalMs, maxBars = 2000) {
    this.ms = intervalMs;
    this.max = maxBars;
    this.bars = [];
  }

  /** Replaces the bars with a backfill (sorted, deduplicated by t). */
  load(bars) {
    const sorted = (bars || [])
      .filter((b) => b && Number.isFinite(b.t) && Number.isFinite(b.c))
      .map((b) => ({ t: b.t, o: b.o, h: b.h, l: b.l, c: b.c, v: b.v || 0, n: b.n || 0 }))
      .sort((a, b) => a.t - b.t);
    const out = [];
    for (const b of sorted) {
      if (out.length && out[out.length - 1].t === b.t) out[out.length - 1] = b;
      else out.push(b);
    }
    this.bars = out.slice(-this.max);
  }

  last() { return this.bars.length ? this.bars[this.bars.length - 1] : null; }

  /** Folds one candle run (see updateParts) with the server's rule: a new
   * bar after the newest, the newest bar extended, or a late run into its
   * own older bar, inserted in order if missing (unless older than every
   * kept bar of a full ring); an older bar's open and close stay. v is
   * summed exactly (vs holds the decimal text). Returns {kind, bar}. */
  foldPart(p) {
    if (!p || !(p.n > 0) || !Number.isFinite(p.t)) return { kind: 'none' };
    const t = bucketStart(p.t, this.ms);
    const last = this.last();
    const fresh = () => ({ t, o: p.o, h: p.h, l: p.l, c: p.c, v: Number(p.v ?? 0), vs: decAdd(p.v ?? 0, 0), n: p.n });
    if (!last || t > last.t) {
      const bar = fresh();
      this.bars.push(bar);
      if (this.bars.length > this.max) this.bars.splice(0, this.bars.length - this.max);
      return { kind: 'new', bar };
    }
    let lo = 0;
    let hi = this.bars.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.bars[mid].t < t) lo = mid + 1;
      else hi = mid;
    }
    let bar = this.bars[lo];
    if (bar.t !== t) {
      if (lo === 0 && this.bars.length >= this.max) return { kind: 'none' };
      bar = fresh();
      this.bars.splice(lo, 0, bar);
      if (this.bars.length > this.max) this.bars.shift();
      return { kind: 'past', bar };
    }
    bar.h = Math.max(bar.h, p.h);
    bar.l = Math.min(bar.l, p.l);
    bar.vs = decAdd(bar.vs ?? bar.v ?? 0, p.v ?? 0);
    bar.v = Number(bar.vs);
    bar.n += p.n;
    if (bar === last) { bar.c = p.c; return { kind: 'last', bar }; }
    return { kind: 'past', bar };
  }

  /** Folds every candle run of an update (see foldCandles). */
  foldUpdate(msg) {
    return updateParts(msg).map((p) => this.foldPart(p));
  }

  /** Folds one update's aggregate into the bar of its ts. Returns
   * {kind, bar}: kind 'new' (a later bar was appended), 'last' (the last
   * bar changed), 'past' (an earlier bar changed: the update was late) or
   * 'none' (nothing to do: no price, or the bar is no longer kept). Time
   * only moves forward: a late update never creates a bar, and the close
   * of an earlier bar stays with its later tick, as on the server. */
  fold(ts, agg) {
    if (!agg || !Number.isFinite(ts)) return { kind: 'none' };
    const hasPrice = Number.isFinite(agg.c);
    const t = bucketStart(ts, this.ms);
    const last = this.last();
    const v = Number.isFinite(agg.v) ? agg.v : 0;
    const n = agg.n > 0 ? agg.n : 1;
    if (!last || t > last.t) {
      if (!hasPrice) return { kind: 'none' };
      const bar = { t, o: agg.o, h: agg.h, l: agg.l, c: agg.c, v, n };
      this.bars.push(bar);
      if (this.bars.length > this.max) this.bars.splice(0, this.bars.length - this.max);
      return { kind: 'new', bar };
    }
    if (t === last.t) {
      if (hasPrice) {
        last.h = Math.max(last.h, agg.h);
        last.l = Math.min(last.l, agg.l);
        last.c = agg.c;
      }
      last.v += v;
      last.n += n;
      return { kind: 'last', bar: last };
    }
    // Late: find its bar, if still kept.
    let lo = 0;
    let hi = this.bars.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.bars[mid].t < t) lo = mid + 1;
      else hi = mid;
    }
    const bar = this.bars[lo];
    if (!bar || bar.t !== t) return { kind: 'none' };
    if (hasPrice) {
      bar.h = Math.max(bar.h, agg.h);
      bar.l = Math.min(bar.l, agg.l);
    }
    bar.v += v;
    bar.n += n;
    return { kind: 'past', bar };
  }
}

/** Parses a decimal (a Number, taken at its shortest round-trip text, or a
 * decimal string) into {m: BigInt mantissa, s: decimals}. */
function parseDec(x) {
  let str = typeof x === 'string' ? x.trim() : String(x);
  let exp = 0;
  const e = str.search(/[eE]/);
  if (e >= 0) { exp = parseInt(str.slice(e + 1), 10); str = str.slice(0, e); }
  let neg = false;
  if (str[0] === '-' || str[0] === '+') { neg = str[0] === '-'; str = str.slice(1); }
  const dot = str.indexOf('.');
  let digits = str;
  let s = 0;
  if (dot >= 0) { digits = str.slice(0, dot) + str.slice(dot + 1); s = str.length - dot - 1; }
  s -= exp;
  let m = BigInt(digits || '0');
  if (s < 0) { m *= 10n ** BigInt(-s); s = 0; }
  return { m: neg ? -m : m, s };
}

function formatDec({ m, s }) {
  const neg = m < 0n;
  let d = (neg ? -m : m).toString();
  if (s > 0) {
    d = d.padStart(s + 1, '0');
    d = d.slice(0, d.length - s) + '.' + d.slice(d.length - s);
  }
  return (neg ? '-' : '') + d;
}

/** Exact decimal sum of a and b (Numbers or decimal strings), as a decimal
 * string with the finer of their decimals: decAdd(0.0161, 0.01052) is
 * "0.02662". Numbers are read at their shortest text, so a value of up to
 * 15 significant digits is taken exactly as the server sent it. */
export function decAdd(a, b) {
  const x = parseDec(a ?? 0);
  const y = parseDec(b ?? 0);
  const s = Math.max(x.s, y.s);
  return formatDec({ m: x.m * 10n ** BigInt(s - x.s) + y.m * 10n ** BigInt(s - y.s), s });
}

/** The candle runs of an update: agg.b when present, else the agg itself
 * in the second of the update's ts, else none (no price in the window).
 * See docs/protocol.md, "Candles from updates". */
export function updateParts(msg) {
  const agg = msg && msg.agg;
  if (!agg) return [];
  if (Array.isArray(agg.b)) return agg.b;
  if (!Number.isFinite(agg.c)) return [];
  return [{ t: bucketStart(msg.ts, 1000), n: agg.n, o: agg.o, h: agg.h, l: agg.l, c: agg.c, v: agg.v ?? 0 }];
}

/** Folds every run of an update into candles (one Candles per interval,
 * e.g. 1s/1m/5m/1h) with the server's rule, so the bars equal
 * /api/candles exactly at any throttle and lag. Each bar's v stays a
 * Number and its exact decimal text is in vs. Returns, per Candles, the
 * kinds of change ('new', 'last', 'past'), for redrawing. */
export function foldCandles(candlesList, msg) {
  const parts = updateParts(msg);
  return candlesList.map((c) => parts.map((p) => c.foldPart(p).kind));
}

/** Merges update b, which came after a, into a copy of a (MERGE data, exact
 * aggregates), as the server does for a lagging client. */
export function mergeUpdates(a, b) {
  const agg = { ...a.agg };
  const bg = b.agg || {};
  const pa = updateParts(a);
  const pb = updateParts(b);
  agg.n = (agg.n || 0) + (bg.n || 0);
  agg.v = Number(decAdd(agg.v || 0, bg.v || 0));
  if (pa.length + pb.length > 0) {
    // Runs of the same second that meet join, as on the server.
    const runs = pa.map((p) => ({ ...p }));
    for (const p of pb) {
      const last = runs[runs.length - 1];
      if (last && last.t === p.t) {
        last.n += p.n; last.h = Math.max(last.h, p.h); last.l = Math.min(last.l, p.l);
        last.c = p.c; last.v = Number(decAdd(last.v, p.v));
      } else runs.push({ ...p });
    }
    // One run of every tick is the agg itself: no b, as the server sends.
    if (runs.length === 1 && runs[0].n === agg.n) delete agg.b;
    else agg.b = runs;
  }
  if (Number.isFinite(bg.c)) {
    if (!Number.isFinite(agg.c)) {
      agg.o = bg.o; agg.h = bg.h; agg.l = bg.l; agg.c = bg.c;
    } else {
      agg.h = Math.max(agg.h, bg.h);
      agg.l = Math.min(agg.l, bg.l);
      agg.c = bg.c;
    }
  }
  return { ...b, data: { ...a.data, ...b.data }, agg };
}

/** Coalesces a queue of messages: consecutive updates of one topic (with no
 * snapshot or reset of that topic between them) merge into one. */
export function coalesce(queue) {
  const out = [];
  const lastUpdate = new Map(); // topic -> index in out
  for (const m of queue) {
    if (m.type === 'update') {
      const i = lastUpdate.get(m.topic);
      if (i !== undefined && out[i].epoch === m.epoch) {
        out[i] = mergeUpdates(out[i], m);
        continue;
      }
      lastUpdate.set(m.topic, out.length);
    } else if (m.topic) {
      lastUpdate.delete(m.topic);
    }
    out.push(m);
  }
  return out;
}

/** SSEParser reads a text/event-stream incrementally (fetch streaming, so
 * that comments such as ": hb" and "retry:" are seen). push() takes a chunk
 * of text and calls onEvent({event, data, id}), onComment(text) and
 * onRetry(ms). */
export class SSEParser {
  constructor({ onEvent, onComment, onRetry } = {}) {
    this.onEvent = onEvent || (() => {});
    this.onComment = onComment || (() => {});
    this.onRetry = onRetry || (() => {});
    this.buf = '';
    this.event = '';
    this.data = [];
    this.id = null;
    this.skipLF = false;
  }

  push(chunk) {
    let text = this.buf + chunk;
    if (this.skipLF && text.startsWith('\n')) text = text.slice(1);
    this.skipLF = false;
    let start = 0;
    for (;;) {
      const cr = text.indexOf('\r', start);
      const lf = text.indexOf('\n', start);
      let end;
      if (cr < 0 && lf < 0) break;
      if (cr >= 0 && (lf < 0 || cr < lf)) {
        end = cr;
        if (cr + 1 === text.length) this.skipLF = true;
        this.line(text.slice(start, end));
        start = text[cr + 1] === '\n' ? cr + 2 : cr + 1;
      } else {
        end = lf;
        this.line(text.slice(start, end));
        start = lf + 1;
      }
    }
    this.buf = text.slice(start);
  }

  line(line) {
    if (line === '') {
      if (this.data.length) {
        this.onEvent({ event: this.event || 'message', data: this.data.join('\n'), id: this.id });
      }
      this.event = '';
      this.data = [];
      return;
    }
    if (line[0] === ':') {
      this.onComment(line.slice(1).trim());
      return;
    }
    const i = line.indexOf(':');
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? '' : line.slice(i + 1);
    if (value[0] === ' ') value = value.slice(1);
    switch (field) {
      case 'event': this.event = value; break;
      case 'data': this.data.push(value); break;
      case 'id': if (!value.includes('\0')) this.id = value; break;
      case 'retry': if (/^\d+$/.test(value)) this.onRetry(Number(value)); break;
      default: break;
    }
  }
}

/** Connection states, as onState reports them. */
export const State = Object.freeze({
  CONNECTING: 'connecting',
  LIVE: 'live',
  LAGGING: 'lagging',
  RECONNECTING: 'reconnecting',
  OFFLINE: 'offline',
});

const DEFAULT_HEARTBEAT_MS = 15000;
const OPEN_TIMEOUT_MS = 8000; // a WebSocket that has not opened by then is refused
const STABLE_MS = 5000; // a connection live this long resets the backoff
const COALESCE_AT = 2000; // queued messages past which updates merge per topic
const ACK_TIMEOUT_MS = 10000;
const DELIVER_TIMEOUT_MS = 8000; // a transport that delivers nothing by then is given up (auto)
const MAX_POLL_MS = 25000; // the longest a long poll waits
const DEFAULT_MAX_QUEUE = 1000; // publish() calls waiting for their ack

/** Transport names, as status().transport reports them. */
export const TransportName = Object.freeze({ ws: 'WebSocket', sse: 'SSE', poll: 'Long-poll' });

/** Tickstream is one live connection to a tickstream server. */
export class Tickstream {
  /**
   * @param {object} opts
   * @param {string} [opts.url] server base URL (default: the page's origin)
   * @param {string[]} [opts.topics] topics or patterns ("crypto.*", "*")
   * @param {number} [opts.throttleMs] coalescing window, 0 = every tick
   * @param {'auto'|'ws'|'sse'|'poll'} [opts.transport] default 'auto':
   *   WebSocket, falling back to SSE, then to long-polling
   * @param {number} [opts.maxBackoffMs] reconnect cap (default 30000)
   * @param {string|function(): string} [opts.token] a JWT for a server with
   *   auth on, or a function that returns the current one (asked at each
   *   connect, so a reconnect after expiry picks up a fresh token). Sent as
   *   the WebSocket subprotocol `bearer.<token>` (beside `tickstream`) and
   *   as `?token=` on SSE, long-poll and HTTP publish.
   * @param {number} [opts.deliverTimeoutMs] how long a transport may take
   *   to deliver its first message (welcome) before 'auto' gives it up for
   *   the next one (default 8000)
   * @param {string} [opts.producer] producer id for publish() (default: a
   *   random one per instance)
   * @param {number} [opts.maxQueue] publish() calls that may wait for their
   *   ack (default 1000); past it publish() rejects (see onOverflow)
   */
  constructor(opts = {}) {
    const loc = globalThis.location;
    this.base = (opts.url || (loc ? loc.origin : 'http://localhost:8080')).replace(/\/+$/, '');
    this.topics = new Set(opts.topics || []);
    this.throttleMs = opts.throttleMs ?? 100;
    this.transportPref = opts.transport || 'auto';
    this.maxBackoffMs = opts.maxBackoffMs || 30000;
    this.token = opts.token || null;
    this.deliverTimeoutMs = opts.deliverTimeoutMs || DELIVER_TIMEOUT_MS;
    this.producer = opts.producer || 'js-' + Math.random().toString(36).slice(2, 12) + Date.now().toString(36);
    this.maxQueue = opts.maxQueue || DEFAULT_MAX_QUEUE;
    this.cursors = new Cursors();
    this.stats = { connects: 0, resets: 0, fallbacks: 0, messages: 0, bad: 0, lastError: null };

    this.state = State.OFFLINE;
    this.transport = null; // 'ws' | 'sse' | 'poll' while connected
    this.lagging = false;
    this.laggingThrottleMs = 0;
    this.retryAt = 0;
    this.session = null;
    this.heartbeatMs = DEFAULT_HEARTBEAT_MS;
    this.clockSkewMs = 0; // server time − local time, from welcome

    this._batchFns = [];
    this._stateFns = [];
    this._queue = [];
    this._flushScheduled = false;
    this._attempt = 0;
    this._retryHint = null;
    this._wsRefused = false; // WebSocket failed to open but SSE worked
    this._wsWorked = false; // a WebSocket opened on this page
    this._sseRefused = false; // SSE delivered nothing but long-polling worked
    this._sseWorked = false; // an SSE stream delivered on this page
    this._pub = []; // publish() calls waiting for their ack, oldest first
    this._pubSeq = 0; // message ids handed out
    this._pubBusy = false; // an HTTP publish is in flight
    this._overflowFns = [];
    this._conn = null; // current connection object
    this._gen = 0; // connection generation; stale callbacks compare it
    this._timers = new Set();
    this._nextId = 1;
    this._discardUntilAck = null; // id of the ack that ends a re-subscribe
    this._lastTraffic = 0;
    this._sseLastId = null;
    this._sseIdTopics = new Set(); // topics the last event id is known to hold
    this._sseIdTrusted = true;
    this._connectStarted = 0;
    this._running = false;
    this._onOnline = () => { if (this._running && this.state !== State.LIVE && this.state !== State.LAGGING) this._reconnectNow(); };
    this._onOffline = () => { if (this._running) this._setState(State.OFFLINE); };
  }

  /** Registers fn(messages) called once per animation frame with every
   * message that arrived since the last call (snapshot, update, reset,
   * status, ack, error, welcome). */
  onBatch(fn) { this._batchFns.push(fn); return this; }

  /** Registers fn({queued, rejected}) called when publish() finds the
   * queue full: the new call is rejected (with an Error whose code is
   * 'queue_full'), the queued ones are kept. */
  onOverflow(fn) { this._overflowFns.push(fn); return this; }

  /** Registers fn({state, transport, retryInMs, lagging, throttleMs,
   * queued}). */
  onState(fn) { this._stateFns.push(fn); fn(this.status()); return this; }

  /** The current connection status. */
  status() {
    return {
      state: this.state,
      transport: this.transport,
      retryInMs: this.state === State.RECONNECTING ? Math.max(0, this.retryAt - Date.now()) : 0,
      lagging: this.lagging,
      throttleMs: this.lagging ? this.laggingThrottleMs : this.throttleMs,
      queued: this._pub.length,
    };
  }

  /** Server time now, in Unix ms, from the skew measured at welcome. */
  serverNow() { return Date.now() + this.clockSkewMs; }

  start() {
    if (this._running) return this;
    this._running = true;
    if (globalThis.addEventListener) {
      globalThis.addEventListener('online', this._onOnline);
      globalThis.addEventListener('offline', this._onOffline);
    }
    this._every(1000, () => this._watchdog());
    this._connect();
    return this;
  }

  stop() {
    this._running = false;
    if (globalThis.removeEventListener) {
      globalThis.removeEventListener('online', this._onOnline);
      globalThis.removeEventListener('offline', this._onOffline);
    }
    for (const t of this._timers) { clearTimeout(t); clearInterval(t); }
    this._timers.clear();
    this._closeConn();
    this._setState(State.OFFLINE);
  }

  /** Publishes one tick or an array of ticks ({topic, ts, price, …}) and
   * resolves with the server's ack ({accepted, duplicates, refused:
   * [{index, code, error}], seqs}); it rejects only when the server
   * refuses the request as a whole, or when the queue is full. Every tick
   * gets a message id ("mid") under this client's producer id. While the
   * client is not live the call waits in a queue, bounded by maxQueue;
   * on reconnect the unacknowledged calls are sent again, in order, with
   * the same ids, and the server answers a repeat with the original result
   * instead of publishing it twice (within its idempotency window). */
  publish(ticks) {
    const list = Array.isArray(ticks) ? ticks : [ticks];
    if (this._pub.length >= this.maxQueue) {
      const err = new Error('publish queue full (' + this.maxQueue + ' waiting)');
      err.code = 'queue_full';
      for (const fn of this._overflowFns) fn({ queued: this._pub.length, rejected: list });
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => {
      const entry = {
        id: this._nextId++,
        ticks: list.map((t) => ({ ...t, mid: t.mid !== undefined ? t.mid : this.producer + '.' + (++this._pubSeq) })),
        resolve, reject, sentGen: -1,
      };
      this._pub.push(entry);
      this._emitState();
      this._pumpPublish();
    });
  }

  /** Replaces the token (see opts.token) and, while connected, refreshes
   * it on the live connection, so that the server does not close it when
   * the old token expires. Resolves to true when the server sent or
   * accepted the refresh. */
  refresh(token) {
    this.token = token;
    const t = this._token();
    if (!t || !this._isLive()) return Promise.resolve(false);
    return this._send({ op: 'refresh', token: t });
  }

  /** headers plus Authorization: Bearer when a token is set. */
  _authHeaders(headers) {
    const t = this._token();
    return t ? { ...headers, Authorization: 'Bearer ' + t } : headers;
  }

  /** The current token, or null. */
  _token() {
    const t = typeof this.token === 'function' ? this.token() : this.token;
    return t ? String(t) : null;
  }

  /** Adds topics or patterns to the live subscription. */
  subscribe(topics) {
    const add = topics.filter((t) => !this.topics.has(t));
    add.forEach((t) => this.topics.add(t));
    if (add.length && this._canSend()) this._send({ op: 'subscribe', topics: add, throttle_ms: this.throttleMs, resume: this.cursors.resume() });
  }

  /** Removes topics or patterns. */
  unsubscribe(topics) {
    const del = topics.filter((t) => this.topics.has(t));
    del.forEach((t) => this.topics.delete(t));
    if (del.length && this._canSend()) this._send({ op: 'unsubscribe', topics: del });
  }

  /** Changes the throttle by re-subscribing on the live connection:
   * unsubscribe, then subscribe with every resume cursor. Messages of the
   * old subscription still in flight are dropped until the unsubscribe is
   * acknowledged, so the replay from the cursors neither loses nor repeats
   * a tick. */
  setThrottle(ms) {
    if (ms === this.throttleMs) return;
    this.throttleMs = ms;
    if (!this._isLive() || this.topics.size === 0 || this.transport === 'poll') return;
    const topics = [...this.topics];
    const unsubId = this._nextId++;
    this._discardUntilAck = unsubId;
    this._sseIdTrusted = false;
    const unsub = { op: 'unsubscribe', id: unsubId, topics };
    const sub = () => ({ op: 'subscribe', id: this._nextId++, topics, throttle_ms: ms, resume: this.cursors.resume() });
    const gen = this._gen;
    this._after(ACK_TIMEOUT_MS, () => {
      if (gen === this._gen && this._discardUntilAck === unsubId) this._drop('re-subscribe not acknowledged');
    });
    if (this.transport === 'ws') {
      this._send(unsub);
      this._send(sub());
    } else {
      // SSE: each POST answers once the change is in effect, so the
      // subscribe goes after the unsubscribe.
      this._post(unsub).then((ok) => {
        if (ok && gen === this._gen) return this._post(sub());
        return false;
      }).then((ok) => {
        if (!ok && gen === this._gen) this._drop('re-subscribe failed');
      });
    }
  }

  // --- connection ---------------------------------------------------------

  _isLive() { return this.state === State.LIVE || this.state === State.LAGGING; }

  /** Whether a subscription change can go out now: live, or a WebSocket
   * that is open but not yet welcomed (its subscribe went out at open, so
   * a later change must follow it on the same socket, not wait). */
  _canSend() {
    return this._isLive() || (this.transport === 'ws' && !!this._conn && !!this._conn.opened);
  }

  _connect() {
    if (!this._running) return;
    this._closeConn();
    this._gen++;
    this._connectStarted = Date.now();
    this._setState(State.CONNECTING);
    const pref = this.transportPref;
    if (pref === 'poll' || (pref === 'auto' && this._sseRefused)) this._connectPoll(false);
    else if (pref === 'sse' || (pref === 'auto' && this._wsRefused)) this._connectSSE(false);
    else this._connectWS();
    // A transport that connects but delivers nothing (a proxy that holds
    // the upgrade, or buffers the event stream) is given up for the next.
    const gen = this._gen;
    this._after(this.deliverTimeoutMs, () => {
      if (gen !== this._gen || this.state !== State.CONNECTING) return;
      if (this.transport === 'ws' || (this._conn && this._conn.ws)) this._wsFailed(gen, new Error('WebSocket delivered nothing in ' + this.deliverTimeoutMs + ' ms'));
      else if (this._conn && this._conn.sse) this._sseFailed(gen, new Error('SSE delivered nothing in ' + this.deliverTimeoutMs + ' ms'));
    });
  }

  _closeConn() {
    const c = this._conn;
    this._conn = null;
    this.transport = null;
    this.session = null;
    this._discardUntilAck = null;
    if (!c) return;
    try {
      if (c.ws) {
        c.ws.onopen = c.ws.onmessage = c.ws.onerror = c.ws.onclose = null;
        c.ws.close(1000, 'client closing');
      }
      if (c.abort) c.abort.abort();
    } catch { /* already closed */ }
  }

  _connectWS() {
    const gen = this._gen;
    const url = this.base.replace(/^http/, 'ws') + '/ws';
    let ws;
    const token = this._token();
    try {
      // The token goes in the subprotocol list, not in the URL: the server
      // answers "tickstream".
      ws = token ? new WebSocket(url, ['tickstream', 'bearer.' + token]) : new WebSocket(url);
    } catch (e) {
      this._wsFailed(gen, e);
      return;
    }
    const conn = { ws, opened: false };
    this._conn = conn;
    this._after(OPEN_TIMEOUT_MS, () => {
      if (gen === this._gen && !conn.opened) this._wsFailed(gen, new Error('WebSocket open timed out'));
    });
    ws.onopen = () => {
      if (gen !== this._gen) return;
      conn.opened = true;
      this._lastTraffic = Date.now();
      this.transport = 'ws';
      this._sendSubscribe();
    };
    ws.onmessage = (ev) => {
      if (gen !== this._gen) return;
      this._lastTraffic = Date.now();
      if (typeof ev.data === 'string') this._receive(splitFrame(ev.data, () => this.stats.bad++));
    };
    ws.onerror = () => {}; // onclose follows with the details
    ws.onclose = (ev) => {
      if (gen !== this._gen) return;
      if (!conn.opened || !this._isLive()) {
        this._wsFailed(gen, new Error('WebSocket refused (close ' + ev.code + ')'));
        return;
      }
      this._lost('WebSocket closed (' + ev.code + (ev.reason ? ' ' + ev.reason : '') + ')', parseRetryHint(ev.reason));
    };
  }

  _wsFailed(gen, err) {
    if (gen !== this._gen) return;
    this.stats.lastError = String(err && err.message || err);
    if (this.transportPref === 'auto') {
      // A proxy refusing the upgrade looks like this: try SSE right away.
      this._closeConn();
      this._gen++;
      this._connectStarted = Date.now(); // the watchdog judges each transport on its own
      this._connectSSE(true);
      this._deliverOrFallback();
      return;
    }
    this._lost(this.stats.lastError, null);
  }

  _sseFailed(gen, err) {
    if (gen !== this._gen) return;
    this.stats.lastError = String(err && err.message || err);
    if (this.transportPref === 'auto') {
      // A proxy buffering the event stream looks like this: long-poll.
      this._closeConn();
      this._gen++;
      this._connectStarted = Date.now();
      this._connectPoll(true);
      return;
    }
    this._lost(this.stats.lastError, null);
  }

  /** Gives the fallback SSE stream deliverTimeoutMs to deliver. */
  _deliverOrFallback() {
    const gen = this._gen;
    this._after(this.deliverTimeoutMs, () => {
      if (gen === this._gen && this.state === State.CONNECTING) this._sseFailed(gen, new Error('SSE delivered nothing in ' + this.deliverTimeoutMs + ' ms'));
    });
  }

  _sendSubscribe() {
    if (this.topics.size === 0) return;
    this._send({ op: 'subscribe', id: this._nextId++, topics: [...this.topics], throttle_ms: this.throttleMs, resume: this.cursors.resume() });
  }

  _send(msg) {
    if (msg.id === undefined) msg.id = this._nextId++;
    if (msg.resume && Object.keys(msg.resume).length === 0) delete msg.resume;
    const c = this._conn;
    if (this.transport === 'ws' && c && c.ws && c.ws.readyState === 1) {
      c.ws.send(JSON.stringify(msg));
      return Promise.resolve(true);
    }
    if (this.transport === 'sse') return this._post(msg);
    return Promise.resolve(false);
  }

  // --- publishing ---------------------------------------------------------

  /** Sends what waits in the publish queue: over a live WebSocket every
   * entry not yet sent on it (acks come in order); on SSE or long-poll one
   * POST /api/publish at a time. */
  _pumpPublish() {
    if (!this._pub.length || !this._isLive()) return;
    const c = this._conn;
    if (this.transport === 'ws') {
      if (!c || !c.ws || c.ws.readyState !== 1) return;
      for (const e of this._pub) {
        if (e.sentGen === this._gen) continue;
        e.sentGen = this._gen;
        c.ws.send(JSON.stringify({ op: 'publish', id: e.id, producer: this.producer, ticks: e.ticks }));
      }
      return;
    }
    if (this._pubBusy) return;
    this._pubBusy = true;
    const gen = this._gen;
    const e = this._pub[0];
    this._postPublish(e).then((res) => {
      this._pubBusy = false;
      if (res.ack) this._settlePublish(e, res.ack, null);
      else if (res.error) this._settlePublish(e, null, res.error);
      else if (gen === this._gen) {
        // The network failed: try again a little later, same ids.
        this._after(backoffDelay(1, { capMs: 2000 }) + 250, () => this._pumpPublish());
        return;
      }
      this._pumpPublish();
    });
  }

  async _postPublish(e) {
    try {
      const res = await fetch(this.base + '/api/publish', {
        method: 'POST',
        headers: this._authHeaders({ 'Content-Type': 'application/json', 'X-Producer-Id': this.producer }),
        body: JSON.stringify(e.ticks),
      });
      const body = await res.json().catch(() => null);
      if (body && Number.isFinite(body.accepted)) {
        return {
          ack: {
            type: 'ack', id: e.id, accepted: body.accepted, duplicates: body.duplicates || 0, seqs: body.seqs || {},
            refused: (body.refused || []).map((r) => ({ index: r.line - 1, code: r.code, error: r.error })),
          },
        };
      }
      if (res.status >= 400 && res.status < 500 && res.status !== 429 && body && body.error) {
        const err = new Error(body.message || body.error);
        err.code = body.error;
        return { error: err };
      }
      return {};
    } catch (err) {
      this.stats.lastError = String(err && err.message || err);
      return {};
    }
  }

  _settlePublish(e, ack, err) {
    const i = this._pub.indexOf(e);
    if (i < 0) return;
    this._pub.splice(i, 1);
    this._emitState();
    if (err) e.reject(err);
    else e.resolve(ack);
  }

  /** Routes a WebSocket ack or error to its publish() call. Returns true
   * when m answered one. */
  _publishAnswer(m) {
    if (m.id === undefined || !this._pub.length) return false;
    const e = this._pub.find((x) => x.id === m.id);
    if (!e) return false;
    if (m.type === 'ack') {
      this._settlePublish(e, m, null);
    } else {
      const err = new Error(m.message || m.code);
      err.code = m.code;
      this._settlePublish(e, null, err);
    }
    return true;
  }

  async _post(msg) {
    if (msg.id === undefined) msg.id = this._nextId++;
    if (msg.resume && Object.keys(msg.resume).length === 0) delete msg.resume;
    const session = this.session;
    if (!session) return false;
    try {
      const res = await fetch(this.base + '/api/sse/' + encodeURIComponent(session), {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(msg),
      });
      await res.text();
      return res.ok;
    } catch (e) {
      this.stats.lastError = String(e && e.message || e);
      return false;
    }
  }

  async _connectSSE(fallback) {
    const gen = this._gen;
    const abort = new AbortController();
    const conn = { abort, opened: false, sse: true };
    this._conn = conn;
    const q = new URLSearchParams();
    q.set('throttle_ms', String(this.throttleMs));
    // Resume with the last event id when it covers every topic we hold a
    // cursor for (an SSE id only names topics that had an event on that
    // stream, and a re-subscribe makes it run ahead of what was applied);
    // else open the stream without topics and subscribe after welcome with
    // our own cursors (POST with resume).
    // Only for exact topics: with a pattern in the URL, the server would
    // join a cursor's topics twice (by name and by pattern) and replay them
    // twice.
    let useId = !!this._sseLastId && this._sseIdTrusted && ![...this.topics].some((t) => t.endsWith('*'));
    if (useId) for (const t of this.cursors.map.keys()) if (!this._sseIdTopics.has(t)) { useId = false; break; }
    const resumeByPost = !useId && this.cursors.size > 0;
    if (!resumeByPost && this.topics.size) q.set('topics', [...this.topics].join(','));
    if (useId) q.set('last_event_id', this._sseLastId);
    const token = this._token();
    if (token) q.set('token', token);
    if (this.transportPref !== 'auto') {
      this._after(OPEN_TIMEOUT_MS, () => {
        if (gen === this._gen && !conn.opened) this._lost('SSE open timed out', null);
      });
    }
    let res;
    try {
      res = await fetch(this.base + '/sse?' + q.toString(), {
        headers: { Accept: 'text/event-stream' },
        cache: 'no-store',
        signal: abort.signal,
      });
    } catch (e) {
      if (gen === this._gen) this._lost('SSE: ' + (e && e.message || e), null);
      return;
    }
    if (gen !== this._gen) { abort.abort(); return; }
    if (!res.ok || !res.body) {
      let hint = null;
      try {
        const body = await res.json();
        if (body && Number.isFinite(body.retry_ms)) hint = body.retry_ms;
      } catch { /* not JSON */ }
      const ra = Number(res.headers.get('Retry-After'));
      if (hint === null && ra > 0) hint = ra * 1000;
      if (gen === this._gen) this._lost('SSE: HTTP ' + res.status, hint);
      return;
    }
    conn.opened = true;
    this.transport = 'sse';
    const fellBack = fallback;
    fallback = false; // counted at the first event, when SSE has delivered
    // The new stream's ids start afresh.
    this._sseLastId = null;
    this._sseIdTopics = new Set();
    this._sseIdTrusted = true;
    this._lastTraffic = Date.now();
    let delivered = false;
    const parser = new SSEParser({
      onEvent: (ev) => {
        if (!delivered) {
          delivered = true;
          this._sseWorked = true;
          if (fellBack) {
            // Stay on SSE only if WebSocket never worked on this page: a
            // WebSocket that worked before and fails now is more likely an
            // outage than a proxy, so the next reconnect tries it first
            // again.
            if (!this._wsWorked) this._wsRefused = true;
            this.stats.fallbacks++;
          }
        }
        const msgs = splitFrame(ev.data, () => this.stats.bad++);
        if (ev.id) {
          this._sseLastId = ev.id;
          for (const m of msgs) if (m.topic && m.epoch) this._sseIdTopics.add(m.topic);
        }
        this._receive(msgs);
        if (resumeByPost && msgs.some((m) => m.type === 'welcome')) {
          this._sendSubscribe();
        }
      },
      onRetry: (ms) => { this._retryHint = ms; },
    });
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (gen !== this._gen) { abort.abort(); return; }
        if (done) break;
        this._lastTraffic = Date.now();
        parser.push(value);
      }
    } catch (e) {
      if (gen !== this._gen) return;
    }
    if (gen === this._gen) this._lost('SSE stream ended', this._retryHint);
  }

  /** Long-polling: GET /poll in a loop, each answer's cursor the next
   * request's. The first request resumes from the cursors of what was
   * applied and does not wait, so that the connection is known to work. */
  async _connectPoll(fallback) {
    const gen = this._gen;
    const abort = new AbortController();
    const conn = { abort, opened: false, poll: true };
    this._conn = conn;
    let cursor = inlineCursor(this.cursors);
    for (;;) {
      const q = new URLSearchParams();
      q.set('topics', [...this.topics].join(','));
      q.set('throttle_ms', String(this.throttleMs));
      q.set('timeout_ms', String(conn.opened ? Math.min(this.heartbeatMs || DEFAULT_HEARTBEAT_MS, MAX_POLL_MS) : 0));
      if (cursor) q.set('cursor', cursor);
      const token = this._token();
      if (token) q.set('token', token);
      let res;
      let body;
      try {
        res = await fetch(this.base + '/poll?' + q.toString(), { cache: 'no-store', signal: abort.signal });
        body = res.ok ? await res.json() : await res.json().catch(() => null);
      } catch (e) {
        if (gen === this._gen) this._lost('long-poll: ' + (e && e.message || e), null);
        return;
      }
      if (gen !== this._gen) return;
      if (!res.ok || !body || !Array.isArray(body.messages)) {
        let hint = body && Number.isFinite(body.retry_ms) ? body.retry_ms : null;
        const ra = Number(res.headers.get('Retry-After'));
        if (hint === null && ra > 0) hint = ra * 1000;
        this._lost('long-poll: HTTP ' + res.status, hint);
        return;
      }
      this._lastTraffic = Date.now();
      if (!conn.opened) {
        conn.opened = true;
        this.transport = 'poll';
        if (fallback) {
          if (!this._sseWorked) this._sseRefused = true;
          if (!this._wsWorked) this._wsRefused = true;
          this.stats.fallbacks++;
        }
        this.stats.connects++;
        this.lagging = false;
        this._setState(State.LIVE);
        this._after(STABLE_MS, () => { if (gen === this._gen) this._attempt = 0; });
        this._pumpPublish();
      }
      this._receive(body.messages);
      if (typeof body.cursor === 'string') cursor = body.cursor;
    }
  }

  /** The connection is gone: schedule a reconnect. */
  _lost(why, hintMs) {
    if (!this._running) return;
    this.stats.lastError = why;
    this._closeConn();
    this._gen++;
    this.lagging = false;
    let delay;
    if (hintMs !== null && hintMs !== undefined && Number.isFinite(hintMs)) {
      delay = Math.min(hintMs, this.maxBackoffMs);
    } else {
      delay = backoffDelay(this._attempt, { capMs: this.maxBackoffMs });
    }
    this._retryHint = null;
    this._attempt++;
    this.retryAt = Date.now() + delay;
    const gen = this._gen;
    this._setState(globalThis.navigator && globalThis.navigator.onLine === false ? State.OFFLINE : State.RECONNECTING);
    this._after(delay, () => { if (gen === this._gen) this._connect(); });
  }

  _reconnectNow() {
    this._gen++;
    this._connect();
  }

  /** Closes the current connection as dead and reconnects. */
  _drop(why) {
    this._lost(why, null);
  }

  _watchdog() {
    if (!this._running) return;
    const now = Date.now();
    const last = this._lastWatch || now;
    this._lastWatch = now;
    if (now - last > 3000 && this._isLive()) {
      // The page was frozen (busy main thread, background throttling,
      // sleep): messages may be waiting to be dispatched, so judge the link
      // one heartbeat from now rather than now, and ask for a pong.
      const hbf = this.heartbeatMs || DEFAULT_HEARTBEAT_MS;
      this._lastTraffic = Math.max(this._lastTraffic, now - 1.5 * hbf);
      if (this.transport === 'ws') {
        this._lastPing = now;
        this._send({ op: 'ping' });
      }
      return;
    }
    if (this.state === State.RECONNECTING) {
      this._emitState(); // the countdown
      return;
    }
    const hb0 = this.heartbeatMs || DEFAULT_HEARTBEAT_MS;
    if (this.state === State.CONNECTING && now - this._connectStarted > OPEN_TIMEOUT_MS + hb0) {
      this._drop('no welcome from the server');
      return;
    }
    if (!this._isLive()) return;
    const hb = this.heartbeatMs || DEFAULT_HEARTBEAT_MS;
    if (now - this._lastTraffic > 2.5 * hb) {
      this._drop('no traffic for ' + Math.round((now - this._lastTraffic) / 1000) + ' s');
      return;
    }
    // Browsers do not expose WebSocket pings: ask for a pong so that a
    // quiet but healthy link still shows traffic.
    if (this.transport === 'ws' && now - this._lastTraffic > hb / 2 && now - (this._lastPing || 0) > hb / 2) {
      this._lastPing = now;
      this._send({ op: 'ping' });
    }
  }

  // --- messages -----------------------------------------------------------

  _receive(msgs) {
    for (const m of msgs) {
      this.stats.messages++;
      switch (m.type) {
        case 'welcome': {
          this.session = m.session || null;
          if (m.heartbeat_ms > 0) this.heartbeatMs = m.heartbeat_ms;
          if (Number.isFinite(m.server_time)) this.clockSkewMs = m.server_time - Date.now();
          this.stats.connects++;
          this.lagging = false;
          if (this.transport === 'ws') this._wsWorked = true;
          this._setState(State.LIVE);
          const gen = this._gen;
          this._after(STABLE_MS, () => { if (gen === this._gen) this._attempt = 0; });
          this._pumpPublish();
          break;
        }
        case 'error':
          if (this._publishAnswer(m)) continue;
          break;
        case 'ack':
          if (m.accepted !== undefined && this._publishAnswer(m)) continue;
          if (this._discardUntilAck !== null && m.id === this._discardUntilAck) {
            this._discardUntilAck = null;
            continue; // the unsubscribe half of a re-subscribe
          }
          break;
        case 'snapshot':
        case 'update':
          if (this._discardUntilAck !== null) continue;
          if (this.cursors.classify(m) === 'drop') continue;
          break;
        case 'reset':
          if (this._discardUntilAck !== null) continue;
          this.cursors.delete(m.topic);
          this.stats.resets++;
          break;
        case 'status':
          this.lagging = !!m.lagging;
          this.laggingThrottleMs = m.throttle_ms || 0;
          this._setState(this.lagging ? State.LAGGING : State.LIVE);
          break;
        case 'pong':
          continue;
        default:
          break;
      }
      this._queue.push(m);
    }
    if (this._queue.length) this._scheduleFlush();
  }

  _scheduleFlush() {
    if (this._flushScheduled) return;
    this._flushScheduled = true;
    let raf = 0;
    let to = 0;
    const run = () => {
      if (raf && globalThis.cancelAnimationFrame) globalThis.cancelAnimationFrame(raf);
      if (to) clearTimeout(to);
      this._flush();
    };
    // Frames stop in a hidden tab: a timer then delivers, less often.
    if (globalThis.requestAnimationFrame) raf = globalThis.requestAnimationFrame(run);
    to = setTimeout(run, globalThis.requestAnimationFrame ? 250 : 0);
  }

  _flush() {
    this._flushScheduled = false;
    let batch = this._queue;
    this._queue = [];
    if (batch.length > COALESCE_AT) batch = coalesce(batch);
    for (const fn of this._batchFns) {
      try {
        fn(batch);
      } catch (e) {
        // A failing handler must not stop the stream; report it once per batch.
        setTimeout(() => { throw e; });
      }
    }
  }

  _setState(state) {
    this.state = state;
    this._emitState();
  }

  _emitState() {
    const s = this.status();
    for (const fn of this._stateFns) fn(s);
  }

  _after(ms, fn) {
    const t = setTimeout(() => { this._timers.delete(t); fn(); }, ms);
    this._timers.add(t);
    return t;
  }

  _every(ms, fn) {
    const t = setInterval(fn, ms);
    this._timers.add(t);
    return t;
  }
}
