package stream

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/tickstream/tickstream/stream/protocol"
)

// Message is one outgoing message as a transport sees it.
type Message struct {
	Type  string // protocol.TypeUpdate, protocol.TypeSnapshot, …
	Topic string // for snapshot, update and reset
	Epoch string // for snapshot and update
	Seq   uint64 // for snapshot and update
	JSON  []byte // the encoded message, no trailing newline; do not modify
	// Accepted is when the bus accepted the newest tick in an update.
	Accepted time.Time
	// Parts is set when the message is several updates of one topic in
	// seq order (an update run, see updateRun): JSON holds them joined by
	// '\n' (a WebSocket frame's form), Parts each one. Fields above are
	// the last one's. Transports that write messages one by one (SSE)
	// write the parts; do not modify them.
	Parts []Message
}

// queued is a Message waiting on a subscriber's queue.
type queued struct {
	Message
	upd     *Update    // set for updates
	run     *updateRun // set for update runs
	private bool       // upd is this subscriber's own merged copy, not yet encoded
}

// entryOverhead is what one queued message costs besides its JSON: its
// slot on the queue and its slot in the batch Deliver hands to the
// transport (224 bytes on 64-bit). The pending bytes count it, so that a
// flood of small messages (pongs) is bounded by what it costs, not by its
// few bytes of JSON.
const entryOverhead = int(unsafe.Sizeof(queued{}) + unsafe.Sizeof(Message{}))

// keepBytes is the most a queue or batch slice keeps for reuse once
// drained (8 KiB each: 68 queue slots, 78 batch slots); a burst's bigger
// slices go back to the garbage collector, so that an idle connection
// does not keep them. It is in bytes, not slots, because append rounds a
// slice up to the allocator's size class: a bound of 64 slots refused the
// 68 that append gives 33-64 entries, and a queue of that length was
// reallocated (grown from one slot) on every pass.
const keepBytes = 8 << 10

// keepQueue and keepBatch report whether a drained slice is kept.
func keepQueue(q []queued) bool  { return cap(q)*int(unsafe.Sizeof(queued{})) <= keepBytes }
func keepBatch(b []Message) bool { return cap(b)*int(unsafe.Sizeof(Message{})) <= keepBytes }

// Transport writes a subscriber's messages to one connection.
type Transport interface {
	// WriteBatch writes msgs in as few writes as it can (one frame, one
	// syscall). It must give up with an error once its write deadline
	// passes.
	WriteBatch(msgs []Message) error
	// Heartbeat sends a keep-alive (a WebSocket ping, an SSE comment).
	Heartbeat() error
}

// DirectTransport is a Transport that can also write without blocking.
// Then the flusher that queued a subscriber's messages writes them itself
// at the end of its pass, when the subscriber's writer is idle, instead
// of waking the writer goroutine: a wake-up and a park per delivery were
// a fifth of a fan-out server's CPU, and the pass's updates go out at
// once. Whatever the socket does not take stays with the transport and
// goes first in the next WriteBatch (the writer is then woken for it).
type DirectTransport interface {
	Transport
	// TryWrite writes msgs without blocking. started is false when it
	// wrote nothing and keeps nothing (the transport is busy or closed):
	// the messages are still the caller's. incomplete is true when part
	// of the batch waits for the next WriteBatch, which then writes it
	// first, even when called with no messages.
	TryWrite(msgs []Message) (started, incomplete bool)
}

// Subscriber is one connection's subscriptions and outbound queue.
type Subscriber struct {
	bus       *Bus
	session   string
	transport string
	sentMsgs  prometheus.Counter
	sentBytes prometheus.Counter

	mu        sync.Mutex
	queue     []queued
	spare     []queued
	pending   int            // accounted bytes queued: JSON + entryOverhead each
	inflight  int            // accounted bytes of the batch being written
	mergeable map[string]int // topic → queue index of its mergeable update, while lagging
	lagging   bool
	closed    bool
	reason    error
	ready     chan struct{} // cap 1: output is pending
	done      chan struct{} // closed by close
	// direct is the transport flushers write to themselves (nil: none);
	// writing is set while one batch is being written, by the writer
	// goroutine or a flusher, so batches go out in queue order; waiter:
	// the writer found a flusher writing and waits to be signalled.
	direct  DirectTransport
	writing bool
	waiter  bool

	subMu    sync.Mutex
	released bool // set by Bus.release: no new memberships after it
	members  map[string]*membership
	patterns map[string]time.Duration
	errLevel float64 // protocol-error budget spent, leaks 1 per second
	errAt    time.Time

	subs subState // subscriptions not yet in effect (subscribe.go); guarded by subMu

	readCheck atomic.Pointer[ReadCheck] // nil: every topic may be read (see SetReadCheck)
}

// Session is the subscriber's session id, as sent in welcome.
func (s *Subscriber) Session() string { return s.session }

// Done is closed when the subscriber is closed.
func (s *Subscriber) Done() <-chan struct{} { return s.done }

// Err is why the subscriber was closed, nil while it is open.
func (s *Subscriber) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reason
}

// Lagging reports whether the subscriber is stepped down.
func (s *Subscriber) Lagging() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lagging
}

// PendingBytes is what the subscriber's outbound messages cost: the queue
// and the batch being written, each message counted as its encoded bytes
// plus a fixed per-entry overhead. Past BusConfig.MaxPendingBytes the
// subscriber steps down; past four times that it is closed.
func (s *Subscriber) PendingBytes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pending + s.inflight
}

func (s *Subscriber) signal() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// Send queues a message the transport made itself (welcome).
func (s *Subscriber) Send(typ string, json []byte) { s.push(Message{Type: typ, JSON: json}) }

// push queues a control message (anything but an update).
func (s *Subscriber) push(m Message) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.queue = append(s.queue, queued{Message: m})
	s.pending += len(m.JSON) + entryOverhead
	if m.Topic != "" {
		// A snapshot or reset is a barrier: later updates of the topic
		// must not merge into ones queued before it.
		delete(s.mergeable, m.Topic)
	}
	s.checkHardLimitLocked()
	s.mu.Unlock()
	s.signal()
}

// pushUpdate queues an encoded update and signals the writer; it never
// blocks. While lagging, the update merges into the topic's pending one.
func (s *Subscriber) pushUpdate(u *Update) {
	if s.queueUpdate(u) {
		s.signal()
	}
}

// queueUpdate queues an encoded update without signalling. It reports
// whether the writer needs a signal: only when the queue was empty, since
// a non-empty queue was signalled when it became non-empty and the writer
// drains it whole.
func (s *Subscriber) queueUpdate(u *Update) bool {
	return s.enqueue(queued{Message: updateMessage(u), upd: u}, []*Update{u})
}

// enqueue queues e, which holds upds (one update, or a run's), and
// reports whether the writer needs a signal, as queueUpdate does. While
// lagging, upds merge update by update into the topic's pending entry.
func (s *Subscriber) enqueue(e queued, upds []*Update) bool {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return false
	}
	wasEmpty := len(s.queue) == 0
	if s.lagging {
		added := false
		for _, u := range upds {
			added = s.queueLaggingLocked(u) || added
		}
		if !added {
			s.mu.Unlock()
			return false // already signalled when the entry was queued
		}
	} else {
		s.queue = append(s.queue, e)
		s.pending += len(e.JSON) + entryOverhead
		if s.pending+s.inflight > s.bus.cfg.MaxPendingBytes {
			s.stepDownLocked()
		}
	}
	s.checkHardLimitLocked()
	s.mu.Unlock()
	return wasEmpty
}

// queueLaggingLocked queues u for a lagging subscriber: merged into the
// topic's pending update, if there is one. It reports whether it queued
// a new entry.
func (s *Subscriber) queueLaggingLocked(u *Update) bool {
	if i, ok := s.mergeable[u.Topic]; ok {
		s.queue[i].merge(u)
		s.bus.metrics.ticksCoalesced.Add(float64(u.Agg.N))
		return false
	}
	s.mergeable[u.Topic] = len(s.queue)
	s.queue = append(s.queue, queued{Message: updateMessage(u), upd: u})
	s.pending += len(u.json) + entryOverhead
	return true
}

// queueRun queues an update run as one entry (while lagging, update by
// update, merging). It reports whether the writer needs a signal, as
// queueUpdate does.
func (s *Subscriber) queueRun(r *updateRun) bool {
	return s.enqueue(queued{Message: r.msg, run: r}, r.upds)
}

func updateMessage(u *Update) Message {
	return Message{Type: protocol.TypeUpdate, Topic: u.Topic, Epoch: u.Epoch, Seq: u.Seq, JSON: u.json, Accepted: u.Accepted}
}

// merge folds the later update u into q, copying q's update first if it
// is shared with other subscribers.
func (q *queued) merge(u *Update) {
	if q.private {
		q.upd.Data = mergeFields(q.upd.Data, u.Data)
		q.upd.Agg.Merge(u.Agg)
		q.upd.Epoch, q.upd.Seq, q.upd.TS, q.upd.Accepted = u.Epoch, u.Seq, u.TS, u.Accepted
	} else {
		q.upd = q.upd.mergedWith(u)
		q.private = true
	}
	q.Epoch, q.Seq, q.Accepted, q.JSON = u.Epoch, u.Seq, u.Accepted, nil
}

// stepDownLocked switches to lagging: the queued updates merge per topic
// and the client is told its effective throttle.
func (s *Subscriber) stepDownLocked() {
	s.lagging = true
	s.bus.metrics.lagging.Add(1)
	s.bus.metrics.stepDowns.Inc()
	if s.mergeable == nil {
		s.mergeable = make(map[string]int)
	}
	old := s.queue
	s.queue = make([]queued, 0, len(old)/4+8)
	s.pending = 0
	for _, q := range old {
		if q.run != nil {
			// A run merges update by update, like updates queued apart.
			for _, u := range q.run.upds {
				s.queueLaggingLocked(u)
			}
			continue
		}
		if q.upd != nil {
			if i, ok := s.mergeable[q.Topic]; ok {
				s.queue[i].merge(q.upd)
				s.bus.metrics.ticksCoalesced.Add(float64(q.upd.Agg.N))
				continue
			}
			s.mergeable[q.Topic] = len(s.queue)
		} else if q.Topic != "" {
			delete(s.mergeable, q.Topic)
		}
		s.queue = append(s.queue, q)
		s.pending += len(q.upd.jsonOr(q.JSON)) + entryOverhead
	}
	st := protocol.EncodeStatus(true, s.bus.cfg.LagThrottle.Milliseconds())
	s.queue = append(s.queue, queued{Message: Message{Type: protocol.TypeStatus, JSON: st}})
	s.pending += len(st) + entryOverhead
}

// jsonOr returns the update's bytes, or b for a nil update.
func (u *Update) jsonOr(b []byte) []byte {
	if u == nil || u.json == nil {
		return b
	}
	return u.json
}

// checkHardLimitLocked closes a subscriber whose queue and batch in flight
// still cost over four times the bound after merging: it cannot be kept at
// bounded memory.
func (s *Subscriber) checkHardLimitLocked() {
	if s.pending+s.inflight > 4*s.bus.cfg.MaxPendingBytes {
		s.bus.metrics.slowCloses.Inc()
		s.closeLocked(protocol.DisconnectSlow)
	}
}

// closeLocked marks the subscriber closed and wakes Deliver. The
// subscriptions are released by Close, which the transport calls when it
// is done; pushes to a closed subscriber are dropped until then.
func (s *Subscriber) closeLocked(reason error) {
	if s.closed {
		return
	}
	s.closed = true
	s.reason = reason
	clear(s.queue)
	s.queue, s.spare, s.pending, s.inflight, s.mergeable = nil, nil, 0, 0, nil
	if s.lagging {
		s.lagging = false
		s.bus.metrics.lagging.Add(-1)
	}
	close(s.done)
	s.signal() // wake Deliver
}

// Close disconnects the subscriber with reason (nil when the client went
// away) and releases all its subscriptions. It is idempotent.
func (s *Subscriber) Close(reason error) {
	s.mu.Lock()
	s.closeLocked(reason)
	s.mu.Unlock()
	s.bus.release(s)
}

// drain moves the queued messages to dst and marks a write in progress
// (endWrite ends it). Their cost stays counted (as in flight) until
// wrote. It reports false, with nothing taken, while a flusher is writing
// (the flusher signals once it is done).
func (s *Subscriber) drain(dst []Message) ([]Message, bool) {
	s.mu.Lock()
	if s.writing {
		s.waiter = true
		s.mu.Unlock()
		return dst, false
	}
	s.writing = true
	q := s.takeLocked()
	s.mu.Unlock()
	dst = appendMessages(dst, q)
	s.keepSpare(q)
	return dst, true
}

// takeLocked takes the queue, whose cost is then in flight.
func (s *Subscriber) takeLocked() []queued {
	q := s.queue
	s.queue, s.spare = s.spare[:0], nil
	s.inflight, s.pending = s.pending, 0
	clear(s.mergeable)
	return q
}

// appendMessages appends q's messages to dst, encoding merged updates.
func appendMessages(dst []Message, q []queued) []Message {
	for i := range q {
		if q[i].private {
			q[i].upd.encoded()
			q[i].JSON = q[i].upd.json
		}
		dst = append(dst, q[i].Message)
	}
	return dst
}

// keepSpare clears a taken queue and keeps it for reuse.
func (s *Subscriber) keepSpare(q []queued) {
	clear(q)
	s.mu.Lock()
	if s.spare == nil && !s.closed && keepQueue(q) {
		s.spare = q[:0]
	}
	s.mu.Unlock()
}

// endWrite ends the write drain began.
func (s *Subscriber) endWrite() {
	s.mu.Lock()
	s.writing = false
	s.mu.Unlock()
}

// maxKeptScratch is the longest batch a flusher or its writer keeps for
// the next direct write (about 400 KiB; there are a few of them, not one
// per connection).
const maxKeptScratch = 4096

// writeDirect writes the subscriber's queue on the calling flusher's
// goroutine, without blocking, when its transport can (DirectTransport)
// and nothing else is under way: no write in progress, not lagging (the
// writer paces those), no subscribe still queueing snapshots. It reports
// whether the writer goroutine may stay asleep; if not, the caller
// signals it. scratch is the caller's reusable batch.
func (s *Subscriber) writeDirect(scratch *[]Message) bool {
	if !s.subMu.TryLock() {
		return false
	}
	joining := len(s.subs.order) > 0
	s.subMu.Unlock()
	s.mu.Lock()
	dt := s.direct
	if dt == nil || joining || s.writing || s.lagging || s.closed || len(s.queue) == 0 {
		s.mu.Unlock()
		return false
	}
	s.writing = true
	q := s.takeLocked()
	s.mu.Unlock()
	batch := appendMessages((*scratch)[:0], q)
	start := time.Now()
	started, incomplete := dt.TryWrite(batch)
	if !started {
		// Busy: the queue goes back in front of what came meanwhile,
		// for the writer goroutine.
		s.mu.Lock()
		if !s.closed {
			s.queue = append(q, s.queue...)
			s.pending += s.inflight
		}
		s.inflight = 0
		s.writing, s.waiter = false, false
		s.mu.Unlock()
		s.bus.metrics.directDeferred.Inc()
		clear(batch)
		*scratch = batch[:0]
		return false
	}
	s.wrote(batch, time.Since(start), false)
	if incomplete {
		s.bus.metrics.directPartial.Inc()
	} else {
		s.bus.metrics.directWhole.Inc()
	}
	clear(batch)
	if cap(batch) > maxKeptScratch {
		batch = nil
	}
	*scratch = batch[:0]
	s.keepSpare(q)
	s.mu.Lock()
	s.writing = false
	wake := incomplete || s.waiter || len(s.queue) > 0
	s.waiter = false
	s.mu.Unlock()
	return !wake
}

// Catching up. While lagging, a subscriber is written at most once per
// BusConfig.LagThrottle (a pace). It has caught up, and is told
// "lagging":false, as soon as
//   - a pace ends with nothing queued (everything was written and no
//     update came meanwhile), or
//   - a paced write (the first write after a pace) was quick and small:
//     the socket took it at once, so the client reads as fast as we write.
//
// So the flag clears at most one LagThrottle after the queue drained,
// whether or not ticks still come. The write that carries the step-down
// itself is not paced and never counts.

// quickWrite is how long a paced write may take to count as quick.
const quickWrite = 100 * time.Millisecond

// wrote records a finished write; a paced write that was quick and small
// ends lagging.
func (s *Subscriber) wrote(batch []Message, took time.Duration, paced bool) {
	size := 0
	now := s.bus.cfg.Now()
	msgs := 0
	for _, m := range batch {
		size += len(m.JSON) + 1
		msgs++
		if m.Type == protocol.TypeUpdate && !m.Accepted.IsZero() {
			s.bus.metrics.latency.Observe(now.Sub(m.Accepted).Seconds())
		}
		if len(m.Parts) > 1 {
			msgs += len(m.Parts) - 1
			for _, p := range m.Parts[:len(m.Parts)-1] {
				s.bus.metrics.latency.Observe(now.Sub(p.Accepted).Seconds())
			}
		}
	}
	s.sentMsgs.Add(float64(msgs))
	s.sentBytes.Add(float64(size))

	s.mu.Lock()
	defer s.mu.Unlock()
	s.inflight = 0
	if s.lagging && !s.closed && paced && took < quickWrite && size < s.bus.cfg.MaxPendingBytes/4 {
		s.catchUpLocked()
	}
}

// paceEnded ends lagging if nothing was queued during the pace. It
// reports whether the subscriber is still lagging: the next write is
// then a paced one.
func (s *Subscriber) paceEnded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lagging && !s.closed && len(s.queue) == 0 {
		s.catchUpLocked()
	}
	return s.lagging
}

// catchUpLocked ends lagging and queues the status that says so.
func (s *Subscriber) catchUpLocked() {
	s.lagging = false
	s.bus.metrics.lagging.Add(-1)
	clear(s.mergeable)
	st := protocol.EncodeStatus(false, 0)
	s.queue = append(s.queue, queued{Message: Message{Type: protocol.TypeStatus, JSON: st}})
	s.pending += len(st) + entryOverhead
	s.signal()
}

// Deliver writes the subscriber's messages to t until the subscriber is
// closed (it returns the close reason, a *protocol.Disconnect, or ErrClientGone
// when Close had no reason), t fails (its error)
// or ctx ends. While lagging, writes are paced at BusConfig.LagThrottle so
// that updates merge in between (see wrote and paceEnded for when lagging
// ends). After a long batch it lets the next one gather briefly (gatherAt).
func (s *Subscriber) Deliver(ctx context.Context, t Transport) error {
	w := newWakes(ctx, s, s.bus.cfg.Heartbeat)
	defer w.stop()
	dt, direct := t.(DirectTransport)
	if direct {
		s.setDirect(dt)
		defer s.setDirect(nil)
	}
	var batch []Message
	paced := false // the next write comes after a pace
	for {
		if err := w.wait(t, nil); err != nil {
			return err
		}
		var ok bool
		if batch, ok = s.drain(batch[:0]); !ok {
			continue // a flusher is writing; it signals when done
		}
		if len(batch) == 0 {
			// Woken for no message: a direct write's rest, or a
			// subscribe's snapshots to pump.
			var err error
			if direct {
				err = t.WriteBatch(nil)
			}
			s.endWrite()
			if err != nil {
				return err
			}
			s.pumpJoins()
			continue
		}
		start := time.Now()
		err := t.WriteBatch(batch)
		if err != nil {
			s.endWrite()
			return err
		}
		s.wrote(batch, time.Since(start), paced)
		s.endWrite()
		written := len(batch)
		clear(batch)
		if !keepBatch(batch) {
			batch = nil // a burst's batch is not kept
		}
		s.pumpJoins() // the client took that: queue more of a big subscribe
		paced = false
		lagging := s.Lagging()
		if !lagging && written >= gatherAt {
			// A long batch: the client gets a stream of messages. Let the
			// next ones gather for a moment, so that they go out in one
			// write instead of one write each as they come. A short batch
			// is written at once.
			if err := w.sleep(t, gatherFor); err != nil {
				return err
			}
		}
		if lagging {
			// Whatever is queued meanwhile waits (and merges) until the
			// pace ends; a pace that ends with nothing queued ends
			// lagging, so a client that has drained everything is told
			// it caught up even when no more ticks come.
			if err := w.sleep(t, s.bus.cfg.LagThrottle); err != nil {
				return err
			}
			paced = s.paceEnded()
		}
	}
}

// setDirect sets the transport flushers write to (nil: none). Clearing it
// waits for a flusher's write in progress, so that the transport is the
// caller's alone afterwards (a close frame goes after every update).
func (s *Subscriber) setDirect(dt DirectTransport) {
	for i := 0; ; i++ {
		s.mu.Lock()
		if dt != nil || !s.writing || i >= 10000 {
			s.direct = dt
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		// A direct write never blocks: it is over in microseconds.
		time.Sleep(10 * time.Microsecond)
	}
}

// wakes is what a Deliver loop waits for. Every reason to wake (output
// queued, the subscriber closed, a heartbeat or timer due, ctx ended)
// sends on the subscriber's one ready channel, and the loop then looks at
// flags: a receive on one channel costs a fraction of a select over four,
// and the writer waits once per delivery (the select was a tenth of the
// server's CPU at 50,000 deliveries/s).
type wakes struct {
	s        *Subscriber
	ctx      context.Context
	hbEvery  time.Duration
	hb       *time.Timer // sets hbDue
	timer    *time.Timer // sets timerDue (gather, pace)
	stopCtx  func() bool
	hbDue    atomic.Bool
	timerDue atomic.Bool
	ctxDone  atomic.Bool
	// owed: a wake-up was taken while waiting for a timer; it may have
	// been for queued output, which signals only once (when the queue
	// stops being empty), so the next wait for output must not block.
	owed bool
}

func newWakes(ctx context.Context, s *Subscriber, heartbeat time.Duration) *wakes {
	w := &wakes{s: s, ctx: ctx, hbEvery: heartbeat}
	w.hb = time.AfterFunc(heartbeat, func() { w.hbDue.Store(true); s.signal() })
	w.timer = time.AfterFunc(time.Hour, func() { w.timerDue.Store(true); s.signal() })
	w.timer.Stop()
	w.stopCtx = context.AfterFunc(ctx, func() { w.ctxDone.Store(true); s.signal() })
	return w
}

func (w *wakes) stop() {
	w.hb.Stop()
	w.timer.Stop()
	w.stopCtx()
}

// sleep waits d, sending heartbeats meanwhile; queued output waits.
func (w *wakes) sleep(t Transport, d time.Duration) error {
	w.timerDue.Store(false)
	w.timer.Reset(d)
	return w.wait(t, &w.timerDue)
}

// wait waits for a wake-up: for due to be set (nil: for any wake-up,
// queued output among them), sending heartbeats meanwhile. It returns the
// close reason once the subscriber is closed, ctx's error, or a
// heartbeat's.
func (w *wakes) wait(t Transport, due *atomic.Bool) error {
	if due == nil && w.owed {
		w.owed = false
		return w.check(t)
	}
	for {
		<-w.s.ready
		if err := w.check(t); err != nil {
			return err
		}
		if due == nil || due.Swap(false) {
			return nil
		}
		w.owed = true
	}
}

// check returns why Deliver must end, if it must, and sends a heartbeat
// that is due.
func (w *wakes) check(t Transport) error {
	select {
	case <-w.s.done:
		if err := w.s.Err(); err != nil {
			return err
		}
		return ErrClientGone
	default:
	}
	if w.ctxDone.Load() {
		return w.ctx.Err()
	}
	if w.hbDue.Swap(false) {
		w.hb.Reset(w.hbEvery)
		if err := t.Heartbeat(); err != nil {
			return err
		}
	}
	return nil
}

// Adaptive batching: after writing a batch of at least gatherAt messages,
// Deliver waits gatherFor before draining again, so that a client under a
// stream of updates gets them in fewer, bigger writes (most of a fan-out
// server's CPU is the kernel's cost per write). Shorter batches are
// written as soon as they are queued, so a client at low rates sees no
// added latency, and one at high rates at most gatherFor.
const (
	gatherAt  = 16
	gatherFor = 2 * time.Millisecond
)
