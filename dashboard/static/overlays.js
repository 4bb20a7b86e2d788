// overlays.js — standard chart overlays computed from a chart's bars:
// the volume-weighted average price (VWAP) of the session and a simple
// moving average (SMA) of the closes. Plain ES module, no dependencies; the
// Overlays class draws them with Lightweight Charts line series.

/** sma returns [{t, value}] for the bars from the period-th on: the mean
 * of the closes of the period bars ending at each bar. */
export function sma(bars, period) {
  const out = [];
  const p = Math.max(1, Math.floor(period));
  let sum = 0;
  for (let i = 0; i < bars.length; i++) {
    sum += bars[i].c;
    if (i >= p) sum -= bars[i - p].c;
    if (i >= p - 1) out.push({ t: bars[i].t, value: sum / p });
  }
  return out;
}

/** vwap returns [{t, value}]: per bar, Σ(typical price × volume) / Σ volume
 * over the bars of its session so far, the typical price being
 * (high + low + close) / 3. sessionOf(t) names a bar's session (a new
 * session starts the sums over). Bars without volume carry the previous
 * value (or none before the session's first traded bar). */
export function vwap(bars, sessionOf = () => 0) {
  const out = [];
  let session;
  let pv = 0;
  let vol = 0;
  for (const b of bars) {
    const s = sessionOf(b.t);
    if (s !== session) { session = s; pv = 0; vol = 0; }
    const v = Number(b.v) || 0;
    if (v > 0) {
      pv += ((b.h + b.l + b.c) / 3) * v;
      vol += v;
    }
    if (vol > 0) out.push({ t: b.t, value: pv / vol });
  }
  return out;
}

/** Overlays draws the VWAP and the SMA on one chart. settings is shared
 * by every chart: {vwap: bool, sma: bool, period: number}. */
export class Overlays {
  constructor(LWC, chart, opts) {
    this.opts = opts; // {toTime(t), sessionOf(t), settings(), colors()}
    const c = opts.colors();
    const line = { lineWidth: 1.5, priceLineVisible: false, lastValueVisible: false, crosshairMarkerVisible: false };
    this.vwapSeries = chart.addSeries(LWC.LineSeries, { ...line, color: c.warn, title: 'VWAP' });
    this.smaSeries = chart.addSeries(LWC.LineSeries, { ...line, color: c.accent, title: 'SMA' });
    this.shown = { vwap: [], sma: [] }; // the points given to each series
  }

  applyTheme() {
    const c = this.opts.colors();
    this.vwapSeries.applyOptions({ color: c.warn });
    this.smaSeries.applyOptions({ color: c.accent });
  }

  /** render recomputes both overlays from bars and hands the series only
   * what changed: the last point when it is the only difference (a live
   * bar), everything otherwise (a late tick, a reload, a time-zone
   * change). force redraws everything. */
  render(bars, force = false) {
    const s = this.opts.settings();
    const toTime = this.opts.toTime;
    const want = {
      vwap: s.vwap ? vwap(bars, this.opts.sessionOf) : [],
      sma: s.sma ? sma(bars, s.period) : [],
    };
    for (const k of ['vwap', 'sma']) {
      const series = k === 'vwap' ? this.vwapSeries : this.smaSeries;
      series.applyOptions({ visible: s[k], title: k === 'sma' ? `SMA ${s.period}` : 'VWAP' });
      const pts = want[k].map((p) => ({ time: toTime(p.t), value: p.value }));
      const old = this.shown[k];
      let same = !force && old.length >= pts.length - 1 && old.length <= pts.length;
      const n = Math.min(old.length, pts.length);
      for (let i = 0; same && i < n; i++) {
        if (i === pts.length - 1) break; // the last point may change
        if (old[i].time !== pts[i].time || old[i].value !== pts[i].value) same = false;
      }
      if (same && old.length === pts.length && n && old[n - 1].time === pts[n - 1].time && old[n - 1].value === pts[n - 1].value) continue;
      if (same && pts.length && (!old.length || pts[pts.length - 1].time >= old[old.length - 1].time)) {
        series.update(pts[pts.length - 1]);
      } else {
        series.setData(pts);
      }
      this.shown[k] = pts;
    }
  }

  /** Last values drawn, for tests: {vwap: [{time, value}], sma: [...]}. */
  values() {
    return { vwap: this.vwapSeries.data().map((p) => ({ ...p })), sma: this.smaSeries.data().map((p) => ({ ...p })) };
  }
}
