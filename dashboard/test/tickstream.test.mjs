// Unit tests for the pure parts of static/tickstream.js. Run with
// `node --test dashboard/test/` (go test runs them too, see node_test.go).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  splitFrame, backoffDelay, parseRetryHint, Cursors, Candles, bucketStart,
  mergeUpdates, coalesce, SSEParser, inlineCursor, decAdd, updateParts, foldCandles,
} from '../static/tickstream.js';

test('splitFrame splits on \\n and skips blank and bad lines', () => {
  const bad = [];
  const msgs = splitFrame('{"type":"ack","id":1}\n\n{"type":"pong"}\nnot json\n[1]\n  {"type":"update"}  \n', (l) => bad.push(l));
  assert.deepEqual(msgs.map((m) => m.type), ['ack', 'pong', 'update']);
  assert.deepEqual(bad, ['not json', '[1]']);
  assert.deepEqual(splitFrame(''), []);
  assert.deepEqual(splitFrame('{"a":1}'), [{ a: 1 }]);
  assert.deepEqual(splitFrame('{"a":1}\r\n{"b":2}'), [{ a: 1 }, { b: 2 }]);
});

test('backoffDelay is full jitter, doubling, capped', () => {
  assert.equal(backoffDelay(0, { random: () => 0.999999 }), 499);
  assert.equal(backoffDelay(3, { random: () => 0.5 }), 2000);
  assert.equal(backoffDelay(50, { random: () => 0.999999 }), 29999);
  assert.equal(backoffDelay(50, { random: () => 0 }), 0);
  assert.equal(backoffDelay(10, { capMs: 1000, random: () => 0.5 }), 500);
  for (let i = 0; i < 200; i++) {
    const d = backoffDelay(i % 12);
    assert.ok(d >= 0 && d < 30000, `delay ${d}`);
  }
});

test('parseRetryHint reads retry_ms from a close reason', () => {
  assert.equal(parseRetryHint('server shutting down retry_ms=1500'), 1500);
  assert.equal(parseRetryHint('retry_ms=20'), 20);
  assert.equal(parseRetryHint('client too slow'), null);
  assert.equal(parseRetryHint(''), null);
  assert.equal(parseRetryHint(undefined), null);
  assert.equal(parseRetryHint('xretry_ms=5'), null);
});

test('Cursors drop duplicates, count gaps and build resume maps', () => {
  const c = new Cursors();
  assert.equal(c.classify({ type: 'snapshot', topic: 'A', epoch: 'e1', seq: 10 }), 'apply');
  assert.equal(c.classify({ type: 'update', topic: 'A', epoch: 'e1', seq: 13, agg: { n: 3 } }), 'apply');
  assert.equal(c.gaps, 0);
  assert.equal(c.classify({ type: 'update', topic: 'A', epoch: 'e1', seq: 13, agg: { n: 1 } }), 'drop');
  assert.equal(c.classify({ type: 'update', topic: 'A', epoch: 'e1', seq: 12, agg: { n: 1 } }), 'drop');
  assert.equal(c.dups, 2);
  assert.equal(c.classify({ type: 'update', topic: 'A', epoch: 'e1', seq: 20, agg: { n: 2 } }), 'apply');
  assert.equal(c.gaps, 1, 'seqs 14..18 missing');
  assert.equal(c.classify({ type: 'update', topic: 'A', epoch: 'e1', seq: 22, agg: { n: 4 } }), 'apply');
  assert.equal(c.overlaps, 1, 'seqs 19..20 applied twice');
  assert.equal(c.gaps, 1);
  // a snapshot that jumps ahead in the same epoch is a gap too
  c.classify({ type: 'snapshot', topic: 'A', epoch: 'e1', seq: 25 });
  assert.equal(c.gaps, 2);
  // a new epoch (after a reset) starts over
  c.delete('A');
  c.classify({ type: 'snapshot', topic: 'A', epoch: 'e2', seq: 3 });
  assert.equal(c.gaps, 2);
  c.classify({ type: 'update', topic: 'B', epoch: 'e2', seq: 7, agg: { n: 7 } });
  assert.deepEqual(c.resume(), { A: { epoch: 'e2', seq: 3 }, B: { epoch: 'e2', seq: 7 } });
  assert.deepEqual(c.resume(new Set(['B'])), { B: { epoch: 'e2', seq: 7 } });
});

test('bucketStart floors to the interval', () => {
  assert.equal(bucketStart(61_500, 60_000), 60_000);
  assert.equal(bucketStart(60_000, 60_000), 60_000);
  assert.equal(bucketStart(999, 1000), 0);
});

test('Candles fold aggregates into bars keyed by the update time', () => {
  const c = new Candles(60_000);
  c.load([{ t: 120_000, o: 5, h: 6, l: 4, c: 5, v: 1, n: 1 }, { t: 60_000, o: 1, h: 2, l: 1, c: 2, v: 3, n: 2 }]);
  assert.deepEqual(c.bars.map((b) => b.t), [60_000, 120_000], 'sorted');
  // same bar: high/low widen, close moves, volume and count add
  let r = c.fold(150_000, { n: 3, o: 5.5, h: 9, l: 3, c: 7, v: 2 });
  assert.equal(r.kind, 'last');
  assert.deepEqual(c.last(), { t: 120_000, o: 5, h: 9, l: 3, c: 7, v: 3, n: 4 });
  // next bar
  r = c.fold(180_001, { n: 1, o: 8, h: 8, l: 8, c: 8, v: 1 });
  assert.equal(r.kind, 'new');
  assert.deepEqual(c.last(), { t: 180_000, o: 8, h: 8, l: 8, c: 8, v: 1, n: 1 });
  // late update into a kept bar: high/low/volume, but the close stays
  r = c.fold(61_000, { n: 1, o: 0.5, h: 0.5, l: 0.5, c: 0.5, v: 1 });
  assert.equal(r.kind, 'past');
  assert.deepEqual(c.bars[0], { t: 60_000, o: 1, h: 2, l: 0.5, c: 2, v: 4, n: 3 });
  // late update for a bar no longer kept: ignored, time never goes back
  r = c.fold(1_000, { n: 1, o: 9, h: 9, l: 9, c: 9, v: 1 });
  assert.equal(r.kind, 'none');
  assert.equal(c.bars.length, 3);
  // no price: volume only into an existing bar
  r = c.fold(180_500, { n: 1, v: 2 });
  assert.equal(r.kind, 'last');
  assert.equal(c.last().v, 3);
  assert.equal(c.last().c, 8);
  r = c.fold(240_000, { n: 1, v: 2 });
  assert.equal(r.kind, 'none');
});

test('Candles keep at most max bars', () => {
  const c = new Candles(1000, 3);
  for (let i = 0; i < 10; i++) c.fold(i * 1000, { n: 1, o: i, h: i, l: i, c: i, v: 1 });
  assert.deepEqual(c.bars.map((b) => b.t), [7000, 8000, 9000]);
});

test('Candles: throttled updates give the same bar as raw ticks', () => {
  const ticks = [];
  let p = 100;
  for (let i = 0; i < 500; i++) {
    p += Math.sin(i * 1.7) * 2;
    ticks.push({ ts: 1_000_000 + i * 37, price: Math.round(p * 100) / 100, size: (i % 7) + 1 });
  }
  const raw = new Candles(60_000);
  for (const t of ticks) raw.fold(t.ts, { n: 1, o: t.price, h: t.price, l: t.price, c: t.price, v: t.size });
  // windows of 250 ms that never straddle a bar boundary, as the server's
  // windows do when bars are much longer than the throttle
  const thr = new Candles(60_000);
  let win = null;
  let winKey = null;
  const flush = () => { if (win) thr.fold(win.ts, win.agg); win = null; };
  for (const t of ticks) {
    const key = Math.floor(t.ts / 250);
    if (key !== winKey || Math.floor(t.ts / 60_000) !== Math.floor((win ? win.ts : t.ts) / 60_000)) flush();
    winKey = key;
    const one = { ts: t.ts, agg: { n: 1, o: t.price, h: t.price, l: t.price, c: t.price, v: t.size } };
    win = win ? { ts: t.ts, agg: mergeUpdates({ agg: win.agg, data: {} }, { agg: one.agg, data: {} }).agg } : one;
  }
  flush();
  assert.deepEqual(thr.bars, raw.bars);
});

test('mergeUpdates and coalesce keep aggregates exact', () => {
  const u = (topic, seq, o, h, l, c, v, n) => ({ type: 'update', topic, epoch: 'e', seq, ts: seq, data: { price: c, [`f${seq}`]: 1 }, agg: { n, o, h, l, c, v } });
  const q = [
    u('A', 1, 10, 12, 9, 11, 1, 2),
    u('B', 1, 5, 5, 5, 5, 1, 1),
    u('A', 3, 11, 15, 11, 14, 2, 2),
    { type: 'reset', topic: 'B' },
    u('B', 2, 6, 6, 6, 6, 1, 1),
    u('A', 4, 13, 13, 8, 8, 1, 1),
    { type: 'status', lagging: true },
  ];
  const out = coalesce(q);
  assert.deepEqual(out.map((m) => m.type + ':' + (m.topic || '')), ['update:A', 'update:B', 'reset:B', 'update:B', 'status:']);
  const a = out[0];
  assert.equal(a.seq, 4);
  assert.deepEqual(a.agg, { n: 5, o: 10, h: 15, l: 8, c: 8, v: 4 });
  assert.deepEqual(a.data, { price: 8, f1: 1, f3: 1, f4: 1 });
  // an update without a price keeps the OHLC
  const m = mergeUpdates(a, { type: 'update', topic: 'A', epoch: 'e', seq: 5, data: { bid: 1 }, agg: { n: 1, v: 0 } });
  // (its candle run is no longer the whole agg, so it comes in b)
  assert.deepEqual(m.agg, { n: 6, o: 10, h: 15, l: 8, c: 8, v: 4, b: [{ t: 0, n: 5, o: 10, h: 15, l: 8, c: 8, v: 4 }] });
  assert.equal(m.seq, 5);
});

test('SSEParser handles chunks, comments, retry, ids and CRLF', () => {
  const events = [];
  const comments = [];
  const retries = [];
  const p = new SSEParser({
    onEvent: (e) => events.push(e),
    onComment: (c) => comments.push(c),
    onRetry: (ms) => retries.push(ms),
  });
  const stream = 'retry: 1500\n\nevent: welcome\ndata: {"type":"welcome"}\n\n: hb\n\nevent: update\r\nid: e~A=5\r\ndata: {"seq":5}\r\n\r\ndata: a\ndata: b\n\n';
  // feed it one character at a time, the hardest split
  for (const ch of stream) p.push(ch);
  assert.deepEqual(retries, [1500]);
  assert.deepEqual(comments, ['hb']);
  assert.deepEqual(events, [
    { event: 'welcome', data: '{"type":"welcome"}', id: null },
    { event: 'update', data: '{"seq":5}', id: 'e~A=5' },
    { event: 'message', data: 'a\nb', id: 'e~A=5' },
  ]);
  // the same in one chunk
  const all = [];
  const q = new SSEParser({ onEvent: (e) => all.push(e) });
  q.push(stream);
  assert.deepEqual(all, events);
});

test('inlineCursor writes the positions as an SSE event id', () => {
  const c = new Cursors();
  assert.equal(inlineCursor(c), '');
  c.classify({ type: 'snapshot', topic: 'A', epoch: 'e1', seq: 3 });
  c.classify({ type: 'snapshot', topic: 'B', epoch: 'e2', seq: 7 });
  c.classify({ type: 'snapshot', topic: 'C', epoch: 'e1', seq: 1 });
  assert.equal(inlineCursor(c), 'e1~A=3,C=1!e2~B=7');
});

test('decAdd sums decimals exactly', () => {
  assert.equal(decAdd(0.0161, 0.01052), '0.02662');
  assert.equal(decAdd('0.01610000', '0.01052000'), '0.02662000');
  assert.equal(decAdd(0.1, 0.2), '0.3');
  assert.equal(decAdd(-1.5, 1e-7), '-1.4999999');
});

test('foldCandles rebuilds bars from runs, late runs included', () => {
  const s1 = new Candles(1000);
  const m1 = new Candles(60_000);
  const upd = (ts, agg) => ({ type: 'update', ts, agg });
  // one run, no b: the agg in the second of ts
  foldCandles([s1, m1], upd(59_900, { n: 2, o: 1, h: 2, l: 1, c: 2, v: 0.1 }));
  // a window across the minute, going back once into 59 s (late)
  foldCandles([s1, m1], upd(60_050, { n: 4, o: 3, h: 5, l: 0.5, c: 4, v: 0.6, b: [
    { t: 60_000, n: 2, o: 3, h: 5, l: 3, c: 5, v: 0.2 },
    { t: 59_000, n: 1, o: 0.5, h: 0.5, l: 0.5, c: 0.5, v: 0.3 },
    { t: 60_000, n: 1, o: 4, h: 4, l: 4, c: 4, v: 0.1 },
  ] }));
  // a late run for a second with no bar yet gets its bar, in order
  foldCandles([s1, m1], upd(58_100, { n: 1, o: 7, h: 7, l: 7, c: 7, v: 1 }));
  assert.deepEqual(s1.bars.map((b) => [b.t, b.o, b.h, b.l, b.c, b.vs, b.n]), [
    [58_000, 7, 7, 7, 7, '1', 1], [59_000, 1, 2, 0.5, 2, '0.4', 3], [60_000, 3, 5, 3, 4, '0.3', 3]]);
  assert.deepEqual(m1.bars.map((b) => [b.t, b.o, b.h, b.l, b.c, b.vs, b.n]), [
    [0, 1, 7, 0.5, 2, '1.4', 4], [60_000, 3, 5, 3, 4, '0.3', 3]]);
  assert.deepEqual(updateParts(upd(1500, { n: 1, v: 2 })), []);
});
