package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/tickstream/tickstream/feeds/tick"
	"github.com/tickstream/tickstream/stream/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// checkFor calls fn every interval until it returns nil, and fails the
// test with fn's last error once total has passed (nats-server's helper).
func checkFor(t testing.TB, total, every time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(total)
	var err error
	for {
		if err = fn(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v: %v", total, err)
		}
		time.Sleep(every)
	}
}

// newTestBus returns a bus that is closed (and its flushers waited for)
// when the test ends.
func newTestBus(t testing.TB, cfg BusConfig) *Bus {
	t.Helper()
	if cfg.Epoch == "" {
		cfg.Epoch = "e1"
	}
	b, err := NewBus(cfg)
	if err != nil {
		t.Fatalf("NewBus: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := b.Close(ctx); err != nil {
			t.Errorf("Bus.Close: %v", err)
		}
	})
	return b
}

func newTestSub(t testing.TB, b *Bus) *Subscriber {
	t.Helper()
	s, err := b.NewSubscriber("test")
	if err != nil {
		t.Fatalf("NewSubscriber: %v", err)
	}
	t.Cleanup(func() { s.Close(nil) })
	return s
}

// delivering returns a new subscriber of b whose messages Deliver writes
// to a fresh memTransport until the test ends.
func delivering(t testing.TB, b *Bus) (*Subscriber, *memTransport) {
	t.Helper()
	s := newTestSub(t, b)
	tr := &memTransport{}
	deliver(t, s, tr)
	return s, tr
}

// memTransport is an in-memory Transport that records what it is given.
// It can be made to block (until unblock) or fail.
type memTransport struct {
	mu         sync.Mutex
	batches    int
	msgs       []Message // deep copies
	heartbeats int
	fail       error
	blocked    chan struct{} // non-nil: WriteBatch waits until it is closed
	inWrite    chan struct{} // receives once per WriteBatch entry, if non-nil and there is room
}

var _ Transport = (*memTransport)(nil)

func (m *memTransport) WriteBatch(msgs []Message) error {
	m.mu.Lock()
	block, fail, in := m.blocked, m.fail, m.inWrite
	m.mu.Unlock()
	if in != nil {
		select {
		case in <- struct{}{}:
		default:
		}
	}
	if block != nil {
		<-block
	}
	if fail != nil {
		return fail
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.batches++
	m.record(msgs)
	return nil
}

// expandRuns returns msgs with each update run's parts in its place, as a
// client reading the frame would see them.
func expandRuns(msgs []Message) []Message {
	var out []Message
	for _, m := range msgs {
		if len(m.Parts) > 0 {
			out = append(out, expandRuns(m.Parts)...)
			continue
		}
		out = append(out, m)
	}
	return out
}

// record keeps deep copies of msgs, an update run's parts one by one, as a
// client reading the frame would see them.
func (m *memTransport) record(msgs []Message) {
	for _, msg := range msgs {
		if len(msg.Parts) > 0 {
			m.record(msg.Parts)
			continue
		}
		msg.JSON = slices.Clone(msg.JSON)
		m.msgs = append(m.msgs, msg)
	}
}

func (m *memTransport) Heartbeat() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.heartbeats++
	return m.fail
}

// block makes later writes wait until the returned function (or the
// test's cleanup) is called.
func (m *memTransport) block() (unblock func()) {
	m.mu.Lock()
	m.blocked = make(chan struct{})
	m.mu.Unlock()
	return m.release
}

// release unblocks writes; it may be called any number of times.
func (m *memTransport) release() {
	m.mu.Lock()
	ch := m.blocked
	m.blocked = nil
	m.mu.Unlock()
	if ch != nil {
		close(ch)
	}
}

func (m *memTransport) messages() []Message {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.msgs)
}

// deliver runs s.Deliver(tr) until the test ends; the returned channel
// gets Deliver's result.
func deliver(t testing.TB, s *Subscriber, tr Transport) <-chan error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	fin := make(chan struct{})
	go func() {
		defer close(fin)
		done <- s.Deliver(ctx, tr)
	}()
	t.Cleanup(func() {
		cancel()
		if mt, ok := tr.(*memTransport); ok {
			mt.release()
		}
		select {
		case <-fin:
		case <-time.After(10 * time.Second):
			t.Errorf("Deliver did not return")
		}
	})
	return done
}

// wireMsg and wireAgg are server messages as a Go client decodes them.
type (
	wireMsg = protocol.WireMessage
	wireAgg = protocol.WireAgg
)

func decodeMsg(t testing.TB, m Message) wireMsg {
	t.Helper()
	var w wireMsg
	if !json.Valid(m.JSON) {
		t.Fatalf("invalid JSON in %s message: %s", m.Type, m.JSON)
	}
	if err := json.Unmarshal(m.JSON, &w); err != nil {
		t.Fatalf("decode %s: %v", m.JSON, err)
	}
	if w.Type != m.Type {
		t.Fatalf("Message.Type %q, JSON type %q: %s", m.Type, w.Type, m.JSON)
	}
	switch m.Type {
	case protocol.TypeUpdate, protocol.TypeSnapshot:
		if w.Topic != m.Topic || w.Seq != m.Seq || w.Epoch != m.Epoch {
			t.Fatalf("Message says %s/%s/%d, JSON %s", m.Topic, m.Epoch, m.Seq, m.JSON)
		}
	}
	return w
}

func decodeAll(t testing.TB, ms []Message) []wireMsg {
	t.Helper()
	out := make([]wireMsg, len(ms))
	for i, m := range ms {
		out[i] = decodeMsg(t, m)
	}
	return out
}

// ref is the reference model of one window: what the spec says an update
// over ticks must carry.
type ref struct {
	n          int64
	o, h, l, c tick.Num
	hasPrice   bool
	v          tick.Num
	data       map[string]tick.Num
	seq        uint64
	runs       []protocol.Part // priced ticks in a row in one 1s bucket
}

func refOf(ticks []tick.Tick, seqs []uint64) ref {
	r := ref{data: map[string]tick.Num{}}
	for i, tk := range ticks {
		r.n++
		sz, _ := tk.GetNum(tick.FieldSize)
		r.v = r.v.Add(sz)
		if p, ok := tk.GetNum(tick.FieldPrice); ok {
			if !r.hasPrice {
				r.o, r.h, r.l, r.hasPrice = p, p, p, true
			}
			if p.Cmp(r.h) > 0 {
				r.h = p
			}
			if p.Cmp(r.l) < 0 {
				r.l = p
			}
			r.c = p
			bucket := tk.TS - tk.TS%1000
			if k := len(r.runs) - 1; k >= 0 && r.runs[k].T == bucket {
				q := &r.runs[k]
				q.N++
				q.V = q.V.Add(sz)
				if p.Cmp(q.H) > 0 {
					q.H = p
				}
				if p.Cmp(q.L) < 0 {
					q.L = p
				}
				q.C = p
			} else {
				r.runs = append(r.runs, protocol.Part{T: bucket, N: 1, O: p, H: p, L: p, C: p, V: sz})
			}
		}
		for _, f := range tk.Fields {
			r.data[f.Name] = f.Value
		}
		r.seq = seqs[i]
	}
	return r
}

func (r ref) checkUpdate(u *Update) error {
	if u.Agg.N != r.n || u.Agg.HasPrice != r.hasPrice || u.Agg.V != r.v || u.Seq != r.seq {
		return fmt.Errorf("update n=%d hasPrice=%v v=%v seq=%d, want n=%d hasPrice=%v v=%v seq=%d",
			u.Agg.N, u.Agg.HasPrice, u.Agg.V, u.Seq, r.n, r.hasPrice, r.v, r.seq)
	}
	if r.hasPrice && (u.Agg.O != r.o || u.Agg.H != r.h || u.Agg.L != r.l || u.Agg.C != r.c) {
		return fmt.Errorf("update ohlc %v/%v/%v/%v, want %v/%v/%v/%v", u.Agg.O, u.Agg.H, u.Agg.L, u.Agg.C, r.o, r.h, r.l, r.c)
	}
	var runs []protocol.Part
	if u.Agg.Cur.N > 0 {
		runs = append(append(runs, u.Agg.B...), u.Agg.Cur)
	}
	if !slices.Equal(runs, r.runs) {
		return fmt.Errorf("update runs %+v, want %+v", runs, r.runs)
	}
	return checkData(u.Data, r.data)
}

func (r ref) checkWire(w wireMsg) error {
	if w.Agg == nil {
		return fmt.Errorf("update without agg")
	}
	a := w.Agg
	if a.N != r.n || a.V != r.v || w.Seq != r.seq {
		return fmt.Errorf("wire n=%d v=%v seq=%d, want n=%d v=%v seq=%d", a.N, a.V, w.Seq, r.n, r.v, r.seq)
	}
	if (a.O != nil) != r.hasPrice || (a.H != nil) != r.hasPrice || (a.L != nil) != r.hasPrice || (a.C != nil) != r.hasPrice {
		return fmt.Errorf("wire ohlc presence, want %v", r.hasPrice)
	}
	if r.hasPrice && (*a.O != r.o || *a.H != r.h || *a.L != r.l || *a.C != r.c) {
		return fmt.Errorf("wire ohlc %v/%v/%v/%v, want %v/%v/%v/%v", *a.O, *a.H, *a.L, *a.C, r.o, r.h, r.l, r.c)
	}
	if runs := a.Runs(w.TS); !slices.Equal(runs, r.runs) {
		return fmt.Errorf("wire runs %+v, want %+v", runs, r.runs)
	}
	if len(a.B) > 0 && len(r.runs) == 1 && r.runs[0].N == r.n {
		return fmt.Errorf("wire b %+v sent for a single run of every tick", a.B)
	}
	if len(w.Data) != len(r.data) {
		return fmt.Errorf("wire data %v, want %v", w.Data, r.data)
	}
	for k, v := range r.data {
		if got, ok := w.Data[k]; !ok || got != v {
			return fmt.Errorf("wire data %v, want %v", w.Data, r.data)
		}
	}
	return nil
}

func checkData(got []tick.Field, want map[string]tick.Num) error {
	seen := map[string]bool{}
	for _, f := range got {
		if seen[f.Name] {
			return fmt.Errorf("data %v: field %q twice", got, f.Name)
		}
		seen[f.Name] = true
		if v, ok := want[f.Name]; !ok || v != f.Value {
			return fmt.Errorf("data %v, want %v", got, want)
		}
	}
	if len(seen) != len(want) {
		return fmt.Errorf("data %v, want %v", got, want)
	}
	return nil
}

var extraFields = []string{tick.FieldBid, tick.FieldAsk, tick.FieldVolume, "oi", "x.y", "z_1"}

// randTick returns a valid tick with a random subset of fields. Sizes
// are decimals with 0 to 8 places, so float64 sums of them would not be
// exact; prices are arbitrary.
func randTick(rng *rand.Rand, topic string, ts int64) tick.Tick {
	tk := tick.Tick{Topic: topic, TS: ts}
	if rng.IntN(5) != 0 {
		tk.Set(tick.FieldPrice, 100+rng.NormFloat64()*20)
	}
	if rng.IntN(4) != 0 {
		m := rng.IntN(40_000_000) // one draw, as tests' seeds expect
		tk.SetNum(tick.FieldSize, tick.MustNum(fmt.Sprintf("%de-%d", m/10, m%9)))
	}
	for _, name := range extraFields {
		if rng.IntN(3) == 0 {
			tk.Set(name, rng.Float64()*1000-500)
		}
	}
	rng.Shuffle(len(tk.Fields), func(i, j int) { tk.Fields[i], tk.Fields[j] = tk.Fields[j], tk.Fields[i] })
	return tk
}

func priceTick(topic string, ts int64, price, size float64) tick.Tick {
	tk := tick.Tick{Topic: topic, TS: ts}
	tk.Set(tick.FieldPrice, price)
	tk.Set(tick.FieldSize, size)
	return tk
}

// mustPublish publishes and returns the seq.
func mustPublish(t testing.TB, b *Bus, tk tick.Tick) uint64 {
	t.Helper()
	seq, err := b.Publish("test", tk)
	if err != nil {
		t.Fatalf("Publish %+v: %v", tk, err)
	}
	return seq
}

// mustHandle sends a client message and fails on a protocol error.
func mustHandle(t testing.TB, s *Subscriber, frame string) Result {
	t.Helper()
	res, err := s.Handle([]byte(frame))
	if err != nil {
		t.Fatalf("Handle %s: %v", frame, err)
	}
	return res
}

// drainAll takes everything queued as a transport would, and reports it
// written.
func drainAll(s *Subscriber) []Message {
	settle(s.bus)
	batch, _ := s.drain(nil)
	s.wrote(batch, 0, false)
	s.endWrite()
	return expandRuns(batch)
}

// settle waits until the instant flushers have fanned out every
// throttle-0 tick published so far, so that tests read queues
// deterministically.
func settle(b *Bus) {
	deadline := time.Now().Add(10 * time.Second)
	for i := range b.instant {
		f := b.instant[i].Load()
		for f != nil && f.queued.Load() > 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Microsecond)
		}
	}
}

// tickLog records published ticks by topic and seq, safe for concurrent
// use, so that any update can be checked against the ticks it covers.
type tickLog struct {
	mu    sync.Mutex
	ticks map[string]map[uint64]tick.Tick
}

func newTickLog() *tickLog { return &tickLog{ticks: map[string]map[uint64]tick.Tick{}} }

func (l *tickLog) add(tk tick.Tick, seq uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := l.ticks[tk.Topic]
	if m == nil {
		m = map[uint64]tick.Tick{}
		l.ticks[tk.Topic] = m
	}
	m[seq] = tk.Clone()
}

// ref is the reference update over the topic's ticks with seq in (from, to].
func (l *tickLog) ref(topic string, from, to uint64) (ref, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ticks []tick.Tick
	var seqs []uint64
	for s := from + 1; s <= to; s++ {
		tk, ok := l.ticks[topic][s]
		if !ok {
			return ref{}, fmt.Errorf("tick %s#%d not logged", topic, s)
		}
		ticks = append(ticks, tk)
		seqs = append(seqs, s)
	}
	return refOf(ticks, seqs), nil
}

// publishLogged publishes and records a tick.
func (l *tickLog) publish(t testing.TB, b *Bus, tk tick.Tick) uint64 {
	t.Helper()
	seq := mustPublish(t, b, tk)
	l.add(tk, seq)
	return seq
}

// seqChecker follows one subscriber's messages per topic and checks the
// delivery contract: after a snapshot at S every update covers exactly
// the ticks after the previous message (no loss, no duplicate), seqs
// strictly increase and the aggregates are exact.
type seqChecker struct {
	log  *tickLog
	last map[string]uint64
	have map[string]bool // a snapshot or update was seen
	// needSnap: a reset must be followed by a snapshot.
	needSnap map[string]bool
	updates  int
}

func newSeqChecker(l *tickLog) *seqChecker {
	return &seqChecker{log: l, last: map[string]uint64{}, have: map[string]bool{}, needSnap: map[string]bool{}}
}

// typeResumeMarker is a test-only message a test queues just before a
// subscribe with a resume cursor, for seqChecker.
const typeResumeMarker = "x-resume"

// start makes the checker expect updates after seq of topic (a resume).
func (c *seqChecker) start(topic string, seq uint64) { c.last[topic], c.have[topic] = seq, true }

func (c *seqChecker) check(w wireMsg) error {
	switch w.Type {
	case typeResumeMarker:
		c.start(w.Topic, w.Seq)
	case protocol.TypeReset:
		c.needSnap[w.Topic] = true
	case protocol.TypeSnapshot:
		if c.have[w.Topic] && w.Seq < c.last[w.Topic] {
			return fmt.Errorf("%s: snapshot seq %d after seq %d", w.Topic, w.Seq, c.last[w.Topic])
		}
		c.last[w.Topic], c.have[w.Topic] = w.Seq, true
		delete(c.needSnap, w.Topic)
	case protocol.TypeUpdate:
		c.updates++
		if c.needSnap[w.Topic] {
			return fmt.Errorf("%s: update after reset without snapshot", w.Topic)
		}
		prev := c.last[w.Topic]
		if w.Seq <= prev {
			return fmt.Errorf("%s: update seq %d after seq %d", w.Topic, w.Seq, prev)
		}
		if c.log != nil {
			r, err := c.log.ref(w.Topic, prev, w.Seq)
			if err != nil {
				return err
			}
			if err := r.checkWire(w); err != nil {
				return fmt.Errorf("%s: update (%d, %d]: %v", w.Topic, prev, w.Seq, err)
			}
		}
		c.last[w.Topic], c.have[w.Topic] = w.Seq, true
	}
	return nil
}

func (c *seqChecker) checkAll(t testing.TB, ws []wireMsg) {
	t.Helper()
	for i, w := range ws {
		if err := c.check(w); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
}

// waitSeq polls tr until it has an update (or snapshot) of topic at seq
// or later.
func waitSeq(t testing.TB, tr *memTransport, topic string, seq uint64) {
	t.Helper()
	checkFor(t, 10*time.Second, time.Millisecond, func() error {
		for _, m := range tr.messages() {
			if (m.Type == protocol.TypeUpdate || m.Type == protocol.TypeSnapshot) && m.Topic == topic && m.Seq >= seq {
				return nil
			}
		}
		return fmt.Errorf("no message of %s at seq %d yet", topic, seq)
	})
}

func ofType(ms []wireMsg, typ string) []wireMsg {
	var out []wireMsg
	for _, m := range ms {
		if m.Type == typ {
			out = append(out, m)
		}
	}
	return out
}

var errTransport = errors.New("transport failed")

// appendUpdate is the encoding the bus shares for u.
func appendUpdate(b []byte, u *Update) []byte {
	return protocol.AppendUpdate(b, u.Topic, u.Epoch, u.Seq, u.TS, u.Data, &u.Agg)
}
