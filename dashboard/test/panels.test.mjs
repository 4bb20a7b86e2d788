// Unit tests of the pure parts of depth.js.
import test from 'node:test';
import assert from 'node:assert/strict';
import { bookLevels } from '../static/depth.js';

test('bookLevels reads bid_<i>/ask_<i> levels, best first, without empty ones', () => {
  const b = bookLevels({ bid_1: 10, bid_size_1: 2, bid_2: 9, bid_size_2: 0, bid_3: 8, bid_size_3: 1, ask_1: 11, ask_size_1: 4, ask_2: 12 });
  assert.deepEqual(b.bids, [{ level: 1, price: 10, size: 2 }, { level: 3, price: 8, size: 1 }]);
  assert.deepEqual(b.asks, [{ level: 1, price: 11, size: 4 }]);
  assert.deepEqual(bookLevels({ bid: 1, bid_size: 2 }), { bids: [], asks: [] });
});
