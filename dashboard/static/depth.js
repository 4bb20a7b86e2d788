// depth.js — the depth view of the selected symbol: the best bid and ask
// sizes over time (a sparkline drawn on a canvas, one sample per snapshot or
// update that carries them) and, when the feed publishes a full order book,
// a ladder of its levels. Plain ES module, no dependencies.
//
// Book convention (see dashboard/README.md): level i (1 = best) is the
// fields bid_<i>, bid_size_<i>, ask_<i>, ask_size_<i>. Updates merge fields
// (a field absent from data did not change), so a feed publishes every
// level it has on each book change, and a size of 0 empties a level.

export const DEPTH_SAMPLES = 600; // kept per symbol (a few minutes)
export const MAX_LEVELS = 10;

/** bookLevels reads the order book from merged tick data:
 * {bids: [{level, price, size}], asks: [...]}, best first, levels with a
 * price and a size above 0 only. Empty when the feed sends no book. */
export function bookLevels(data) {
  const bids = [];
  const asks = [];
  if (!data) return { bids, asks };
  for (let i = 1; i <= MAX_LEVELS; i++) {
    for (const [side, list] of [['bid', bids], ['ask', asks]]) {
      const price = data[`${side}_${i}`];
      const size = data[`${side}_size_${i}`];
      if (Number.isFinite(price) && Number.isFinite(size) && size > 0) list.push({ level: i, price, size });
    }
  }
  return { bids, asks };
}

export class DepthView {
  /** opts: {spark: canvas, best: element for the text, book: table,
   * bookBody: its tbody, colors(), fmtPrice(p, topic), fmtSize(v)}. */
  constructor(opts) {
    this.o = opts;
    this.topic = null;
    this.data = {}; // merged fields of the topic
    this.samples = []; // {ts, bid, ask, bidSize, askSize}
    this.dirty = true;
  }

  reset(topic) {
    this.topic = topic;
    this.data = {};
    this.samples = [];
    this.dirty = true;
  }

  /** take merges a snapshot's or an update's data (of the shown topic). */
  take(m) {
    if (!m || m.topic !== this.topic || !m.data) return;
    if (m.type === 'snapshot') this.data = {};
    Object.assign(this.data, m.data);
    const d = this.data;
    const has = ['bid_size', 'ask_size'].some((k) => k in m.data) || ['bid', 'ask'].some((k) => k in m.data);
    if (has && (Number.isFinite(d.bid_size) || Number.isFinite(d.ask_size))) {
      this.samples.push({ ts: m.ts, bid: d.bid, ask: d.ask, bidSize: d.bid_size, askSize: d.ask_size });
      if (this.samples.length > DEPTH_SAMPLES) this.samples.splice(0, this.samples.length - DEPTH_SAMPLES);
    }
    this.dirty = true;
  }

  render(force = false) {
    if (!this.dirty && !force) return;
    this.dirty = false;
    this.renderBest();
    this.renderSpark();
    this.renderBook();
  }

  renderBest() {
    const s = this.samples[this.samples.length - 1];
    const { fmtPrice, fmtSize } = this.o;
    const text = s
      ? `Bid ${fmtSize(s.bidSize)} @ ${fmtPrice(s.bid, this.topic)} · Ask ${fmtSize(s.askSize)} @ ${fmtPrice(s.ask, this.topic)}`
      : 'No bid/ask sizes from this feed';
    if (this.o.best.textContent !== text) {
      if (!s) this.o.best.textContent = text;
      else {
        // "Bid" and "Ask" in the colours of their lines: the sparkline's key.
        const bid = document.createElement('span');
        bid.className = 'up';
        bid.textContent = 'Bid';
        const ask = document.createElement('span');
        ask.className = 'down';
        ask.textContent = 'Ask';
        this.o.best.replaceChildren(bid, text.slice(3, text.indexOf(' · Ask') + 3), ask, text.slice(text.indexOf(' · Ask') + 6));
      }
    }
    const label = s
      ? `Best bid and ask sizes of ${this.topic} over the last ${this.samples.length} updates; now bid ${fmtSize(s.bidSize)}, ask ${fmtSize(s.askSize)}`
      : `No bid and ask sizes for ${this.topic || 'the selected symbol'}`;
    this.o.spark.setAttribute('aria-label', label);
  }

  renderSpark() {
    const cv = this.o.spark;
    const w = cv.clientWidth;
    const h = cv.clientHeight;
    if (!w || !h) return;
    const dpr = globalThis.devicePixelRatio || 1;
    if (cv.width !== Math.round(w * dpr) || cv.height !== Math.round(h * dpr)) {
      cv.width = Math.round(w * dpr);
      cv.height = Math.round(h * dpr);
    }
    const g = cv.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const pts = this.samples;
    if (pts.length < 1) return;
    let max = 0;
    for (const p of pts) {
      if (Number.isFinite(p.bidSize)) max = Math.max(max, p.bidSize);
      if (Number.isFinite(p.askSize)) max = Math.max(max, p.askSize);
    }
    if (!(max > 0)) return;
    const t0 = pts[0].ts;
    const span = Math.max(1, pts[pts.length - 1].ts - t0);
    const c = this.o.colors();
    const x = (p) => (pts.length === 1 ? w - 2 : 2 + ((p.ts - t0) / span) * (w - 4));
    const y = (v) => h - 2 - (v / max) * (h - 4);
    for (const [key, color] of [['bidSize', c.up], ['askSize', c.down]]) {
      g.strokeStyle = color;
      g.lineWidth = 1.25;
      g.beginPath();
      let lastY = NaN;
      for (const p of pts) {
        const v = p[key];
        if (!Number.isFinite(v)) continue;
        // A step line: a size holds until the next sample.
        if (Number.isNaN(lastY)) g.moveTo(x(p), y(v));
        else { g.lineTo(x(p), lastY); g.lineTo(x(p), y(v)); }
        lastY = y(v);
      }
      g.stroke();
    }
  }

  renderBook() {
    const { bids, asks } = bookLevels(this.data);
    const table = this.o.book;
    const show = bids.length > 0 || asks.length > 0;
    table.hidden = !show;
    if (!show) { this.o.bookBody.replaceChildren(); return; }
    const { fmtPrice, fmtSize } = this.o;
    const n = Math.max(bids.length, asks.length);
    const frag = document.createDocumentFragment();
    for (let i = 0; i < n; i++) {
      const b = bids[i];
      const a = asks[i];
      const tr = document.createElement('tr');
      const cells = [
        [b ? fmtSize(b.size) : '', 'num'],
        [b ? fmtPrice(b.price, this.topic) : '', 'num up'],
        [a ? fmtPrice(a.price, this.topic) : '', 'num down'],
        [a ? fmtSize(a.size) : '', 'num'],
      ];
      for (const [text, cls] of cells) {
        const td = document.createElement('td');
        td.className = cls;
        td.textContent = text;
        tr.appendChild(td);
      }
      frag.appendChild(tr);
    }
    this.o.bookBody.replaceChildren(frag);
  }

  /** For tests: the samples and the book as read. */
  view() {
    return { topic: this.topic, samples: this.samples.map((s) => ({ ...s })), book: bookLevels(this.data) };
  }
}
