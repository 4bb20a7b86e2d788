// Tests of the Tickstream connection logic against a fake WebSocket and a
// fake fetch: subscribe with resume, re-subscribe on a throttle change,
// retry hints, fallback to SSE and lagging status.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tickstream } from '../static/tickstream.js';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function until(what, fn, ms = 2000) {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error('timed out waiting for ' + what);
    await sleep(2);
  }
}

class FakeWS {
  static all = [];
  static refuse = false;
  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.sent = [];
    this.readyState = 0;
    FakeWS.all.push(this);
    setTimeout(() => {
      if (FakeWS.refuse) {
        this.readyState = 3;
        this.onclose && this.onclose({ code: 1006, reason: '' });
        return;
      }
      this.readyState = 1;
      this.onopen && this.onopen();
    }, 1);
  }
  send(text) { this.sent.push(JSON.parse(text)); }
  close() { this.readyState = 3; }
  // server side
  deliver(...msgs) { this.onmessage({ data: msgs.map((m) => JSON.stringify(m)).join('\n') }); }
  drop(code, reason) { this.readyState = 3; this.onclose({ code, reason }); }
}

function setup(t, opts = {}) {
  FakeWS.all = [];
  FakeWS.refuse = false;
  globalThis.WebSocket = FakeWS;
  const c = new Tickstream({ url: 'http://tick.test', topics: ['*'], throttleMs: 100, ...opts });
  const got = [];
  const states = [];
  c.onBatch((b) => got.push(...b));
  c.onState((s) => states.push(s.state + '/' + (s.transport || '')));
  t.after(() => c.stop());
  return { c, got, states };
}

const welcome = { type: 'welcome', session: 's1', heartbeat_ms: 15000, server_time: Date.now() };
const upd = (topic, seq, n, price) => ({ type: 'update', topic, epoch: 'e1', seq, ts: 1000 + seq, data: { price }, agg: { n, o: price, h: price, l: price, c: price, v: n } });

test('subscribes, drops duplicates, resumes after a close with a retry hint', async (t) => {
  const { c, got, states } = setup(t);
  c.start();
  await until('open', () => FakeWS.all.length === 1 && FakeWS.all[0].sent.length === 1);
  const ws = FakeWS.all[0];
  assert.equal(ws.url, 'ws://tick.test/ws');
  assert.deepEqual(ws.sent[0], { op: 'subscribe', id: 1, topics: ['*'], throttle_ms: 100 });
  ws.deliver(welcome, { type: 'ack', id: 1, topics: ['*'] }, { type: 'snapshot', topic: 'A', epoch: 'e1', seq: 10, ts: 1, data: { price: 1 } });
  ws.deliver(upd('A', 12, 2, 2), upd('A', 12, 1, 2), upd('A', 13, 1, 3));
  await until('batch', () => got.some((m) => m.seq === 13));
  assert.deepEqual(got.filter((m) => m.topic === 'A').map((m) => m.type + m.seq), ['snapshot10', 'update12', 'update13']);
  assert.equal(c.cursors.dups, 1);
  assert.equal(c.cursors.gaps, 0);
  assert.ok(states.includes('live/ws'));

  // Graceful shutdown: 1001 with a retry hint; the reconnect waits for it
  // and resumes from the cursor.
  const t0 = Date.now();
  ws.drop(1001, 'server shutting down retry_ms=60');
  assert.equal(c.status().state, 'reconnecting');
  await until('reconnect', () => FakeWS.all.length === 2 && FakeWS.all[1].sent.length === 1);
  assert.ok(Date.now() - t0 >= 55, 'honours retry_ms');
  assert.deepEqual(FakeWS.all[1].sent[0].resume, { A: { epoch: 'e1', seq: 13 } });
  FakeWS.all[1].deliver(welcome, upd('A', 15, 2, 4));
  await until('resumed', () => got.some((m) => m.seq === 15));
  assert.equal(c.cursors.gaps, 0);
  assert.equal(c.stats.connects, 2);
});

test('a throttle change re-subscribes and drops the old subscription in flight', async (t) => {
  const { c, got } = setup(t);
  c.start();
  await until('open', () => FakeWS.all.length === 1 && FakeWS.all[0].sent.length === 1);
  const ws = FakeWS.all[0];
  ws.deliver(welcome, { type: 'snapshot', topic: 'A', epoch: 'e1', seq: 10, ts: 1, data: { price: 1 } });
  await until('live', () => c.status().state === 'live');
  c.setThrottle(1000);
  const [unsub, sub] = ws.sent.slice(1);
  assert.equal(unsub.op, 'unsubscribe');
  assert.deepEqual(unsub.topics, ['*']);
  assert.equal(sub.op, 'subscribe');
  assert.equal(sub.throttle_ms, 1000);
  assert.deepEqual(sub.resume, { A: { epoch: 'e1', seq: 10 } });
  // In flight from the old subscription, then the acks, then the replay
  // from seq 10 (which covers 11..12 again, folded differently).
  ws.deliver(upd('A', 11, 1, 2), upd('A', 12, 1, 3), { type: 'ack', id: unsub.id, topics: ['*'] },
    { type: 'ack', id: sub.id, topics: ['*'] }, upd('A', 13, 3, 4));
  await until('replay', () => got.some((m) => m.seq === 13));
  const updates = got.filter((m) => m.type === 'update');
  assert.deepEqual(updates.map((m) => [m.seq, m.agg.n]), [[13, 3]], 'no tick twice');
  assert.equal(c.cursors.gaps, 0);
  assert.equal(c.status().throttleMs, 1000);
});

test('lagging status shows in the state', async (t) => {
  const { c, states } = setup(t);
  c.start();
  await until('open', () => FakeWS.all.length === 1 && FakeWS.all[0].sent.length === 1);
  const ws = FakeWS.all[0];
  ws.deliver(welcome, { type: 'status', lagging: true, throttle_ms: 2000 });
  assert.equal(c.status().state, 'lagging');
  assert.equal(c.status().throttleMs, 2000);
  ws.deliver({ type: 'status', lagging: false, throttle_ms: 100 });
  assert.equal(c.status().state, 'live');
  assert.ok(states.includes('lagging/ws'));
});

test('falls back to one SSE stream when WebSocket is refused', async (t) => {
  const posts = [];
  let streamCtl;
  const enc = new TextEncoder();
  const realFetch = globalThis.fetch;
  globalThis.fetch = async (url, init = {}) => {
    if (init.method === 'POST') {
      posts.push({ url, body: JSON.parse(init.body) });
      return new Response('{"ok":true}', { status: 200 });
    }
    const body = new ReadableStream({ start(ctl) { streamCtl = ctl; } });
    posts.push({ url, get: true });
    return new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
  };
  t.after(() => { globalThis.fetch = realFetch; });
  const { c, got } = setup(t);
  FakeWS.refuse = true;
  c.start();
  await until('sse', () => streamCtl);
  assert.match(posts[0].url, /^http:\/\/tick\.test\/sse\?throttle_ms=100&topics=\*$/);
  const ev = (type, id, data) => `event: ${type}\n${id ? 'id: ' + id + '\n' : ''}data: ${JSON.stringify(data)}\n\n`;
  streamCtl.enqueue(enc.encode('retry: 1500\n\n' + ev('welcome', '', { ...welcome, session: 'sse1' })));
  streamCtl.enqueue(enc.encode(ev('snapshot', 'e1~A=10', { type: 'snapshot', topic: 'A', epoch: 'e1', seq: 10, ts: 1, data: { price: 1 } }) + ': hb\n\n'));
  await until('live sse', () => c.status().state === 'live' && got.length === 2);
  assert.equal(c.status().transport, 'sse');
  assert.equal(c.stats.fallbacks, 1);

  // A throttle change POSTs unsubscribe then subscribe with resume.
  c.setThrottle(500);
  await until('posts', () => posts.length === 3);
  assert.equal(posts[1].url, 'http://tick.test/api/sse/sse1');
  assert.equal(posts[1].body.op, 'unsubscribe');
  assert.equal(posts[2].body.op, 'subscribe');
  assert.deepEqual(posts[2].body.resume, { A: { epoch: 'e1', seq: 10 } });

  // The stream ends: reconnect after the retry hint... which we shorten by
  // ending with a new retry line.
  streamCtl.enqueue(enc.encode(ev('ack', 'e1~A=10', { type: 'ack', id: posts[1].body.id, topics: ['*'] }) + 'retry: 20\n\n'));
  streamCtl.close();
  await until('reconnect', () => posts.filter((p) => p.get).length === 2);
  const again = posts.filter((p) => p.get)[1].url;
  // The id was not trusted after the re-subscribe: no last_event_id; the
  // cursors go in a POST after welcome instead.
  assert.doesNotMatch(again, /last_event_id/);
  assert.doesNotMatch(again, /topics=/);
  assert.match(again, /throttle_ms=500/);
  assert.equal(FakeWS.all.length, 1, 'no second WebSocket attempt once SSE worked');
  streamCtl.enqueue(enc.encode(ev('welcome', '', { ...welcome, session: 'sse2' })));
  await until('resume post', () => posts.length === 5);
  assert.equal(posts[4].url, 'http://tick.test/api/sse/sse2');
  assert.deepEqual(posts[4].body.resume, { A: { epoch: 'e1', seq: 10 } });
  assert.deepEqual(posts[4].body.topics, ['*']);
});

test('SSE with exact topics resumes with last_event_id', async (t) => {
  const gets = [];
  let streamCtl;
  const enc = new TextEncoder();
  const realFetch = globalThis.fetch;
  globalThis.fetch = async (url, init = {}) => {
    if (init.method === 'POST') return new Response('{"ok":true}', { status: 200 });
    gets.push(url);
    const body = new ReadableStream({ start(ctl) { streamCtl = ctl; } });
    return new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
  };
  t.after(() => { globalThis.fetch = realFetch; });
  const { c } = setup(t, { topics: ['A', 'B'], transport: 'sse' });
  c.start();
  await until('sse', () => streamCtl);
  assert.equal(gets[0], 'http://tick.test/sse?throttle_ms=100&topics=A%2CB');
  const ev = (type, id, data) => `event: ${type}\n${id ? 'id: ' + id + '\n' : ''}data: ${JSON.stringify(data)}\n\n`;
  streamCtl.enqueue(enc.encode(ev('welcome', '', welcome)));
  streamCtl.enqueue(enc.encode(ev('snapshot', 'e1~A=10', { type: 'snapshot', topic: 'A', epoch: 'e1', seq: 10, ts: 1, data: {} })));
  streamCtl.enqueue(enc.encode(ev('update', 'e1~A=10,B=4', { type: 'update', topic: 'B', epoch: 'e1', seq: 4, ts: 1, data: {}, agg: { n: 4, v: 0 } })));
  streamCtl.enqueue(enc.encode('retry: 5\n\n'));
  await until('cursors', () => c.cursors.size === 2);
  const first = streamCtl;
  first.close();
  await until('reconnect', () => gets.length === 2);
  assert.equal(gets[1], 'http://tick.test/sse?throttle_ms=100&topics=A%2CB&last_event_id=e1%7EA%3D10%2CB%3D4');
  assert.equal(FakeWS.all.length, 0, 'transport sse never tries WebSocket');
});

test('publish() queues while offline, overflows by refusing the newest, resends with the same ids', async (t) => {
  const { c } = setup(t, { producer: 'pg', maxQueue: 3 });
  const overflow = [];
  c.onOverflow((e) => overflow.push(e));
  const acks = [];
  const p1 = c.publish({ topic: 'A', price: 1 }).then((a) => acks.push(a));
  const p2 = c.publish([{ topic: 'A', price: 2 }, { topic: 'B', price: 3 }]).then((a) => acks.push(a));
  const p3 = c.publish({ topic: 'A', price: 4, mid: 'own' });
  assert.equal(c.status().queued, 3);
  await assert.rejects(c.publish({ topic: 'A', price: 5 }), (e) => e.code === 'queue_full');
  assert.equal(overflow.length, 1);
  assert.equal(overflow[0].queued, 3);

  c.start();
  await until('open', () => FakeWS.all.length === 1 && FakeWS.all[0].readyState === 1);
  const ws = FakeWS.all[0];
  ws.deliver(welcome);
  await until('publishes sent', () => ws.sent.filter((m) => m.op === 'publish').length === 3);
  const pubs = ws.sent.filter((m) => m.op === 'publish');
  assert.deepEqual(pubs.map((m) => m.ticks.map((tk) => tk.mid)), [['pg.1'], ['pg.2', 'pg.3'], ['own']]);
  assert.ok(pubs.every((m) => m.producer === 'pg'));
  // The first is acknowledged, then the connection drops.
  ws.deliver({ type: 'ack', id: pubs[0].id, accepted: 1, refused: [], seqs: { A: 1 } });
  await p1;
  ws.drop(1006, '');
  await until('reconnect', () => FakeWS.all.length === 2 && FakeWS.all[1].readyState === 1);
  const ws2 = FakeWS.all[1];
  ws2.deliver(welcome);
  await until('resent', () => ws2.sent.filter((m) => m.op === 'publish').length === 2);
  const again = ws2.sent.filter((m) => m.op === 'publish');
  assert.deepEqual(again.map((m) => [m.id, m.ticks.map((tk) => tk.mid)]), [[pubs[1].id, ['pg.2', 'pg.3']], [pubs[2].id, ['own']]]);
  ws2.deliver({ type: 'ack', id: pubs[1].id, accepted: 2, duplicates: 2, refused: [], seqs: { A: 2, B: 1 } },
    { type: 'error', id: pubs[2].id, code: 'forbidden', message: 'no publish right' });
  await p2;
  await assert.rejects(p3, (e) => e.code === 'forbidden');
  assert.deepEqual(acks.map((a) => a.accepted), [1, 2]);
  assert.equal(c.status().queued, 0);
});

test('a WebSocket without welcome falls back to SSE, a silent SSE stream to long-polling, which resumes and publishes over HTTP', async (t) => {
  const gets = [];
  const polls = [];
  const posts = [];
  let pollAnswer = null; // resolves the pending long poll
  const realFetch = globalThis.fetch;
  globalThis.fetch = async (url, init = {}) => {
    if (url.includes('/sse?')) {
      gets.push(url);
      // A buffering proxy: the stream never delivers.
      return new Response(new ReadableStream({}), { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
    }
    if (url.includes('/api/publish')) {
      posts.push({ headers: init.headers, body: JSON.parse(init.body) });
      return new Response(JSON.stringify({ accepted: 1, refused: [], seqs: { A: 12 } }), { status: 200 });
    }
    polls.push(url);
    if (polls.length === 1) {
      return new Response(JSON.stringify({ messages: [upd('A', 11, 1, 1)], cursor: 'e1~A=11' }), { status: 200 });
    }
    const body = await new Promise((r) => { pollAnswer = r; });
    return new Response(JSON.stringify(body), { status: 200 });
  };
  t.after(() => { globalThis.fetch = realFetch; pollAnswer && pollAnswer({ messages: [], cursor: '' }); });
  const { c, got, states } = setup(t, { deliverTimeoutMs: 30, producer: 'pp' });
  c.cursors.classify({ type: 'snapshot', topic: 'A', epoch: 'e1', seq: 10 });
  c.start();
  await until('long-poll', () => c.status().transport === 'poll' && c.status().state === 'live');
  assert.equal(FakeWS.all.length, 1);
  assert.equal(gets.length, 1);
  assert.ok(states.includes('live/poll'));
  // The first poll resumes from the applied cursors and does not wait.
  const q1 = new URL(polls[0]).searchParams;
  assert.equal(q1.get('cursor'), 'e1~A=10');
  assert.equal(q1.get('timeout_ms'), '0');
  assert.equal(q1.get('topics'), '*');
  await until('second poll', () => polls.length === 2 && pollAnswer);
  assert.equal(new URL(polls[1]).searchParams.get('cursor'), 'e1~A=11');
  pollAnswer({ messages: [upd('A', 12, 1, 2)], cursor: 'e1~A=12' });
  await until('update', () => got.some((m) => m.seq === 12));
  assert.equal(c.cursors.gaps, 0);
  // publish() goes over HTTP with the producer id.
  const ack = await c.publish({ topic: 'A', price: 3 });
  assert.equal(ack.accepted, 1);
  assert.equal(posts[0].headers['X-Producer-Id'], 'pp');
  assert.equal(posts[0].body[0].mid, 'pp.1');
});

test('passes a token: WebSocket subprotocol, refresh, fresh token on reconnect, SSE ?token=', async (t) => {
  let current = 'T1';
  const { c } = setup(t, { token: () => current });
  c.start();
  await until('open', () => FakeWS.all.length === 1 && FakeWS.all[0].sent.length === 1);
  const ws = FakeWS.all[0];
  assert.equal(ws.url, 'ws://tick.test/ws', 'the token is not in the URL');
  assert.deepEqual(ws.protocols, ['tickstream', 'bearer.T1']);
  ws.deliver(welcome, { type: 'ack', id: 1, topics: ['*'] });
  await until('live', () => c.status().state === 'live');

  assert.equal(await c.refresh('T2'), true);
  assert.deepEqual(ws.sent[1], { op: 'refresh', id: 2, token: 'T2' });

  // The token expired anyway: the reconnect asks for the current token.
  current = 'T3';
  c.token = () => current;
  ws.drop(1008, 'token expired retry_ms=5');
  await until('reconnect', () => FakeWS.all.length === 2);
  assert.deepEqual(FakeWS.all[1].protocols, ['tickstream', 'bearer.T3']);
});

test('without a token no subprotocol is asked for', async (t) => {
  const { c } = setup(t);
  c.start();
  await until('open', () => FakeWS.all.length === 1);
  assert.equal(FakeWS.all[0].protocols, undefined);
  assert.equal(await c.refresh(null), false);
});

test('SSE passes the token as ?token= and refreshes by POST', async (t) => {
  const gets = [];
  const posts = [];
  let streamCtl;
  const enc = new TextEncoder();
  const realFetch = globalThis.fetch;
  globalThis.fetch = async (url, init = {}) => {
    if (init.method === 'POST') {
      posts.push({ url, body: JSON.parse(init.body) });
      return new Response('{"ok":true}', { status: 200 });
    }
    gets.push(url);
    const body = new ReadableStream({ start(ctl) { streamCtl = ctl; } });
    return new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
  };
  t.after(() => { globalThis.fetch = realFetch; });
  const { c } = setup(t, { topics: ['A'], transport: 'sse', token: 'a.b.c' });
  c.start();
  await until('sse', () => streamCtl);
  assert.equal(gets[0], 'http://tick.test/sse?throttle_ms=100&topics=A&token=a.b.c');
  streamCtl.enqueue(enc.encode(`event: welcome\ndata: ${JSON.stringify({ ...welcome, session: 'S' })}\n\n`));
  await until('live', () => c.status().state === 'live');
  assert.equal(await c.refresh('d.e.f'), true);
  assert.equal(posts[0].url, 'http://tick.test/api/sse/S');
  assert.equal(posts[0].body.op, 'refresh');
  assert.equal(posts[0].body.token, 'd.e.f');
});

test('a subscribe between the WebSocket opening and the welcome goes out on that socket', async (t) => {
  const { c } = setup(t);
  c.start();
  await until('open', () => FakeWS.all.length === 1 && FakeWS.all[0].sent.length === 1);
  const ws = FakeWS.all[0];
  c.subscribe(['LATE']);
  assert.equal(ws.sent.length, 2, 'the subscribe was not sent');
  assert.equal(ws.sent[1].op, 'subscribe');
  assert.deepEqual(ws.sent[1].topics, ['LATE']);
});
