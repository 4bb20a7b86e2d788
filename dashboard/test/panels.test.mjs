// Unit tests of the pure parts of overlays.js and depth.js.
import test from 'node:test';
import assert from 'node:assert/strict';
import { sma, vwap } from '../static/overlays.js';
import { bookLevels } from '../static/depth.js';

const bars = [
  { t: 0, o: 1, h: 2, l: 1, c: 2, v: 1 },
  { t: 1000, o: 2, h: 4, l: 2, c: 3, v: 3 },
  { t: 2000, o: 3, h: 3, l: 3, c: 3, v: 0 },
  { t: 86400000, o: 5, h: 6, l: 4, c: 5, v: 2 },
];

test('sma averages the closes of the last period bars', () => {
  assert.deepEqual(sma(bars, 2), [{ t: 1000, value: 2.5 }, { t: 2000, value: 3 }, { t: 86400000, value: 4 }]);
  assert.deepEqual(sma(bars, 5), []);
});

test('vwap weighs the typical price by volume per session', () => {
  const day = (t) => Math.floor(t / 86400000);
  const got = vwap(bars, day);
  const tp0 = 5 / 3;
  const tp1 = 3;
  assert.equal(got.length, 4);
  assert.equal(got[0].value, tp0);
  assert.equal(got[1].value, (tp0 * 1 + tp1 * 3) / 4);
  assert.equal(got[2].value, got[1].value); // no volume: unchanged
  assert.equal(got[3].value, 5); // a new session starts over
});

test('bookLevels reads bid_<i>/ask_<i> levels, best first, without empty ones', () => {
  const b = bookLevels({ bid_1: 10, bid_size_1: 2, bid_2: 9, bid_size_2: 0, bid_3: 8, bid_size_3: 1, ask_1: 11, ask_size_1: 4, ask_2: 12 });
  assert.deepEqual(b.bids, [{ level: 1, price: 10, size: 2 }, { level: 3, price: 8, size: 1 }]);
  assert.deepEqual(b.asks, [{ level: 1, price: 11, size: 4 }]);
  assert.deepEqual(bookLevels({ bid: 1, bid_size: 2 }), { bids: [], asks: [] });
});
