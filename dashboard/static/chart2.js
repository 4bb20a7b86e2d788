// chart2.js — the second chart of the split layout: its own symbol and
// interval, candles and volume backfilled from GET /api/candles and kept
// live by folding updates exactly (Candles#foldUpdate), with the same
// overlays as the main chart. Plain ES module.

import { Candles } from './tickstream.js';
import { Overlays } from './overlays.js';

const BACKFILL_BARS = 500;

export class SecondChart {
  /** opts: {el (chart container), msg (message element), legend, LWC,
   * intervals ({name: ms}), toTime(t), colors(), decimals(topic),
   * fmtPrice(p, d), headers, overlay ({settings(), sessionOf(t)}),
   * onError(text)}. */
  constructor(opts) {
    this.o = opts;
    this.topic = null;
    this.interval = '1m';
    this.candles = null;
    this.loading = false;
    this.token = 0;
    this.buffer = [];
    this.epoch = '';
    this.needFull = false;
    this.unknown = false;
    this.chart = null;
    this.pending = new Map(); // t -> bar changed since the last frame
  }

  /** create builds the chart (once the container is shown). */
  create() {
    if (this.chart || !this.o.LWC) return;
    const { LWC } = this.o;
    const c = this.o.colors();
    this.chart = LWC.createChart(this.o.el, {
      autoSize: true,
      layout: { background: { type: 'solid', color: c.bg }, textColor: c.text, fontSize: 11, attributionLogo: true },
      grid: { vertLines: { color: c.line }, horzLines: { color: c.line } },
      crosshair: { mode: LWC.CrosshairMode.Normal },
      localization: { priceFormatter: (p) => this.o.fmtPrice(p, this.o.decimals(this.topic)) },
      rightPriceScale: { borderColor: c.line, entireTextOnly: true, scaleMargins: { top: 0.1, bottom: 0.25 } },
      timeScale: { borderColor: c.line, timeVisible: true, secondsVisible: this.interval === '1s', rightOffset: 4 },
    });
    this.candleSeries = this.chart.addSeries(LWC.CandlestickSeries, {
      upColor: c.up, downColor: c.down, borderVisible: false, wickUpColor: c.up, wickDownColor: c.down,
    });
    this.volumeSeries = this.chart.addSeries(LWC.HistogramSeries, {
      priceFormat: { type: 'volume' }, priceScaleId: 'vol', lastValueVisible: false, priceLineVisible: false,
    });
    this.chart.priceScale('vol').applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
    this.overlays = new Overlays(LWC, this.chart, {
      toTime: this.o.toTime, sessionOf: this.o.overlay.sessionOf, settings: this.o.overlay.settings, colors: this.o.colors,
    });
    this.needFull = true;
  }

  applyTheme() {
    if (!this.chart) return;
    const c = this.o.colors();
    this.chart.applyOptions({
      layout: { background: { type: 'solid', color: c.bg }, textColor: c.text },
      grid: { vertLines: { color: c.line }, horzLines: { color: c.line } },
      rightPriceScale: { borderColor: c.line },
      timeScale: { borderColor: c.line },
    });
    this.candleSeries.applyOptions({ upColor: c.up, downColor: c.down, wickUpColor: c.up, wickDownColor: c.down });
    this.overlays.applyTheme();
    this.needFull = true;
  }

  showMsg(text) {
    this.o.msg.textContent = text || '';
    this.o.msg.hidden = !text;
  }

  /** load fetches topic's bars at interval; updates that arrive meanwhile
   * are buffered and folded in after it when the server names the seq the
   * candles were read at (X-Tickstream-Seq), as for the main chart. */
  async load(topic, interval) {
    const token = ++this.token;
    this.topic = topic;
    this.interval = interval;
    this.candles = new Candles(this.o.intervals[interval], 2000);
    this.loading = true;
    this.buffer = [];
    this.pending.clear();
    this.unknown = false;
    if (this.chart) this.chart.applyOptions({ timeScale: { secondsVisible: interval === '1s' } });
    if (!topic) { this.loading = false; this.showMsg('Choose a symbol'); return; }
    this.showMsg('Loading…');
    let bars = [];
    let seq = null;
    try {
      const res = await fetch(`api/candles?topic=${encodeURIComponent(topic)}&interval=${interval}&limit=${BACKFILL_BARS}`, { cache: 'no-store', headers: this.o.headers });
      if (res.ok) {
        bars = await res.json();
        const h = res.headers.get('X-Tickstream-Seq');
        if (h !== null && /^\d+$/.test(h)) seq = Number(h);
      } else if (res.status === 404) {
        this.unknown = true;
      } else {
        this.o.onError(`candles: HTTP ${res.status}`);
      }
    } catch (e) {
      this.o.onError('candles: ' + (e && e.message || e));
    }
    if (token !== this.token) return;
    this.candles.load(Array.isArray(bars) ? bars : []);
    if (seq !== null) for (const m of this.buffer) if (m.seq > seq) this.candles.foldUpdate(m);
    this.buffer = [];
    this.loading = false;
    this.needFull = true;
    if (this.unknown) this.showMsg(`Unknown symbol “${topic}”`);
    else this.showMsg(this.candles.bars.length ? '' : 'No trades yet');
  }

  /** take handles a snapshot or an update of the chart's topic. */
  take(m) {
    if (m.topic !== this.topic) return;
    if (m.type === 'snapshot') {
      // A new epoch (a server restart without its history): start over.
      if (this.epoch && m.epoch !== this.epoch) this.load(this.topic, this.interval);
      this.epoch = m.epoch;
      if (this.unknown) this.load(this.topic, this.interval);
      return;
    }
    if (m.type !== 'update') return;
    this.epoch = m.epoch;
    if (this.loading) { this.buffer.push(m); return; }
    if (this.unknown) { this.load(this.topic, this.interval); return; }
    for (const r of this.candles.foldUpdate(m)) {
      if (r.kind === 'none') continue;
      if (r.kind === 'new') this.showMsg('');
      this.dirty = true;
      this.pending.set(r.bar.t, r.bar);
      if (r.kind === 'past') this.needFull = true;
    }
  }

  render() {
    if (!this.chart || this.loading || !this.candles) return;
    const bars = this.candles.bars;
    const full = this.needFull;
    if (full) {
      this.needFull = false;
      this.candleSeries.setData(bars.map((b) => ({ time: this.o.toTime(b.t), open: b.o, high: b.h, low: b.l, close: b.c })));
      this.volumeSeries.setData(bars.map((b) => this.volBar(b)));
    } else if (this.dirty) {
      for (const b of [...this.pending.values()].sort((x, y) => x.t - y.t)) {
        this.candleSeries.update({ time: this.o.toTime(b.t), open: b.o, high: b.h, low: b.l, close: b.c });
        this.volumeSeries.update(this.volBar(b));
      }
    }
    this.pending.clear();
    if (full || this.dirty) this.overlays.render(bars, full);
    this.dirty = false;
    const last = this.candles.last();
    const d = this.o.decimals(this.topic);
    const text = last ? `${this.topic} · ${this.interval}  C ${this.o.fmtPrice(last.c, d)}` : `${this.topic || ''} · ${this.interval}`;
    if (this.o.legend.textContent !== text) this.o.legend.textContent = text;
  }

  /** overlaysChanged redraws the overlays (settings changed). */
  overlaysChanged() {
    if (this.overlays && this.candles && !this.loading) this.overlays.render(this.candles.bars, true);
  }

  volBar(b) {
    const c = this.o.colors();
    return { time: this.o.toTime(b.t), value: b.v, color: b.c >= b.o ? c.upVol : c.downVol };
  }

  /** For tests. */
  view(n = 50) {
    return {
      topic: this.topic, interval: this.interval, loading: this.loading, unknown: this.unknown,
      bars: this.candles ? this.candles.bars.slice(-n).map((b) => ({ t: b.t, o: b.o, h: b.h, l: b.l, c: b.c, v: b.v, n: b.n })) : [],
      seriesLen: this.candleSeries ? this.candleSeries.data().length : 0,
      overlays: this.overlays ? this.overlays.values() : null,
    };
  }
}
