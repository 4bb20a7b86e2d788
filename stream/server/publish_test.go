package server_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/protocol"
	"github.com/tickstream/tickstream/stream/server"
)

// publishMsg is a publish op.
type publishMsg struct {
	Op       string            `json:"op"`
	ID       int               `json:"id"`
	Producer string            `json:"producer,omitempty"`
	Mid      string            `json:"mid,omitempty"`
	Ticks    []json.RawMessage `json:"ticks"`
}

func pub(id int, producer string, ticks ...string) publishMsg {
	m := publishMsg{Op: "publish", ID: id, Producer: producer}
	for _, t := range ticks {
		m.Ticks = append(m.Ticks, json.RawMessage(t))
	}
	return m
}

// expectAck reads messages up to the ack of id and returns it.
func (c *wsClient) expectAck(id int) msg {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m := c.next(time.Until(deadline))
		if m.Type == protocol.TypeError {
			c.t.Fatalf("error %s while waiting for ack %d", m, id)
		}
		if m.Type != protocol.TypeAck || m.Accepted == nil {
			continue
		}
		if string(m.ID) != fmt.Sprint(id) {
			c.t.Fatalf("ack %s, want the ack of %d next", m, id)
		}
		return m
	}
}

// historySeqs returns the seqs of topic's history.
func (e *env) historySeqs(t testing.TB, topic string) []uint64 {
	t.Helper()
	var h struct {
		Ticks []struct {
			Seq uint64 `json:"seq"`
		} `json:"ticks"`
	}
	e.doT(t, http.MethodGet, "/api/history?topic="+topic+"&limit=10000", "", nil, &h)
	var out []uint64
	for _, tk := range h.Ticks {
		out = append(out, tk.Seq)
	}
	return out
}

// A connection that only publishes gets an ack per publish, in order,
// with the same refusal codes as the HTTP publish of the same ticks.
func TestWSPublishAck(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	c, _ := e.welcomeWS(t, wsOpts{})
	c.send(pub(7, "", `{"topic":"WP","price":1}`, `{"topic":"bad topic","price":1}`, `{"topic":"WP","price":"NaN"}`, `{"topic":"WP","price":2}`, `42`))
	a := c.expectAck(7)
	if *a.Accepted != 2 || a.Seqs["WP"] != 2 || len(a.Refused) != 3 {
		t.Fatalf("ack %s: want 2 accepted, seqs WP=2, 3 refused", a)
	}
	wantCodes := map[int]string{1: protocol.CodeBadTopic, 2: protocol.CodeNonFinite, 4: protocol.CodeBadJSON}
	for _, r := range a.Refused {
		if wantCodes[r.Index] != r.Code || r.Error == "" {
			t.Errorf("refused %+v: want code %q", r, wantCodes[r.Index])
		}
	}
	// The same batch over HTTP refuses the same ticks with the same codes.
	var res struct {
		Accepted int
		Refused  []struct {
			Line int
			Code string
		}
		Seqs map[string]uint64
	}
	e.doT(t, http.MethodPost, "/api/publish", "application/json",
		[]byte(`[{"topic":"WP","price":1},{"topic":"bad topic","price":1},{"topic":"WP","price":"NaN"},{"topic":"WP","price":2},42]`), &res)
	if res.Accepted != 2 || res.Seqs["WP"] != 4 || len(res.Refused) != 3 {
		t.Fatalf("HTTP %+v: want 2 accepted, seqs WP=4", res)
	}
	for _, r := range res.Refused {
		if wantCodes[r.Line-1] != r.Code {
			t.Errorf("HTTP refused %+v: want code %q", r, wantCodes[r.Line-1])
		}
	}
	// Acks come in order; a bad publish op is an error with its id.
	for i := 10; i < 40; i++ {
		c.send(pub(i, "", fmt.Sprintf(`{"topic":"WP","price":%d}`, i)))
	}
	c.send(publishMsg{Op: "publish", ID: 99})
	for i := 10; i < 40; i++ {
		if a := c.expectAck(i); a.Seqs["WP"] != uint64(i-5) {
			t.Fatalf("ack %s: want seq %d", a, i-5)
		}
	}
	if m := c.expect(protocol.TypeError); m.Code != protocol.CodeEmpty || string(m.ID) != "99" {
		t.Fatalf("got %s, want an empty error for id 99", m)
	}
}

// blockingSink holds every publish until released, counting them.
type blockingSink struct {
	next    feeds.Sink
	release chan struct{}
	entered atomic.Int64
}

func (b *blockingSink) Publish(t feeds.Tick) error {
	b.entered.Add(1)
	<-b.release
	return b.next.Publish(t)
}

// Publishing on a connection never holds up its deliveries: with the
// publisher stuck (the bus does not take the ticks), and the publish
// queue full so that the server stops reading, the connection's
// subscriptions still get their updates; the acks come once the bus takes
// the ticks, none lost.
func TestWSPublishDoesNotSlowDeliveries(t *testing.T) {
	t.Parallel()
	sink := &blockingSink{release: make(chan struct{})}
	var once sync.Once
	releaseSink := func() { once.Do(func() { close(sink.release) }) }
	e := startServer(t, func(_ *stream.BusConfig, sc *server.Config) {
		sc.PublishSink = feeds.SinkFunc(func(t feeds.Tick) error { return sink.Publish(t) })
	})
	t.Cleanup(releaseSink)
	sink.next = e.bus.Sink("test")
	e.publish("D", 1, f("price", 1))
	c, _ := e.welcomeWS(t, wsOpts{})
	c.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: []string{"D"}, ThrottleMS: ms(0)})
	c.expect(protocol.TypeAck)
	c.expect(protocol.TypeSnapshot)
	const n = 100 // more than the publish queue holds
	go func() {
		for i := range n {
			c.send(pub(100+i, "", `{"topic":"DP","price":1}`))
		}
	}()
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if sink.entered.Load() == 0 {
			return fmt.Errorf("no publish reached the sink")
		}
		return nil
	})
	for i := range 5 {
		e.publish("D", int64(2+i), f("price", float64(2+i)))
		if m := c.expect(protocol.TypeUpdate); m.Seq != uint64(2+i) {
			t.Fatalf("update %s: want seq %d", m, 2+i)
		}
	}
	releaseSink()
	for i := range n {
		if a := c.expectAck(100 + i); *a.Accepted != 1 {
			t.Fatalf("ack %s: want 1 accepted", a)
		}
	}
	if got := len(e.historySeqs(t, "DP")); got != n {
		t.Fatalf("%d ticks published, want %d", got, n)
	}
}

// A producer whose connection drops before it reads its ack resends the
// batch on a new connection with the same ids: nothing is published
// twice, and the ack carries the original seqs.
func TestWSPublishRetryAfterDrop(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	batch := func(id int) publishMsg {
		return pub(id, "dev-1", `{"topic":"R","price":1,"mid":"m1"}`, `{"topic":"R","price":2,"mid":"m2"}`, `{"topic":"R","price":3,"mid":"m3"}`)
	}
	c1, _ := e.welcomeWS(t, wsOpts{})
	c1.send(batch(1))
	// The ack may or may not have been sent: the client never reads it.
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := len(e.historySeqs(t, "R")); n != 3 {
			return fmt.Errorf("%d ticks", n)
		}
		return nil
	})
	c1.close()
	c2, _ := e.welcomeWS(t, wsOpts{})
	c2.send(batch(1))
	a := c2.expectAck(1)
	if *a.Accepted != 3 || a.Duplicates != 3 || a.Seqs["R"] != 3 {
		t.Fatalf("resend ack %s: want 3 accepted, 3 duplicates, seq 3", a)
	}
	// A batch mid answers the whole batch from the window, over HTTP too.
	m := batch(2)
	m.Mid = "batch-1"
	m.Ticks = append(m.Ticks, json.RawMessage(`{"topic":"R","price":4}`))
	c2.send(m)
	if a := c2.expectAck(2); *a.Accepted != 4 || a.Duplicates != 3 || a.Seqs["R"] != 4 {
		t.Fatalf("ack %s: want 4 accepted, 3 duplicates, seq 4", a)
	}
	m.ID = 3
	c2.send(m)
	if a := c2.expectAck(3); *a.Accepted != 4 || a.Duplicates != 4 || a.Seqs["R"] != 4 {
		t.Fatalf("ack %s: want the original result, all duplicates", a)
	}
	if got := e.historySeqs(t, "R"); len(got) != 4 {
		t.Fatalf("history seqs %v: want 4 ticks", got)
	}
}

// Two copies of one id in a batch publish it once; a different producer
// has its own ids.
func TestPublishDuplicateIDsInBatch(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	c, _ := e.welcomeWS(t, wsOpts{})
	c.send(pub(1, "p", `{"topic":"DB","price":1,"mid":"a"}`, `{"topic":"DB","price":1,"mid":"a"}`, `{"topic":"DB","price":2,"mid":7}`, `{"topic":"DB","price":2,"mid":7}`, `{"topic":"DB","price":3,"mid":""}`))
	a := c.expectAck(1)
	if *a.Accepted != 4 || a.Duplicates != 2 || a.Seqs["DB"] != 2 || len(a.Refused) != 1 || a.Refused[0].Code != protocol.CodeBadMid {
		t.Fatalf("ack %s: want 4 accepted, 2 duplicates, seq 2, the empty mid refused", a)
	}
	c.send(pub(2, "q", `{"topic":"DB","price":1,"mid":"a"}`))
	if a := c.expectAck(2); a.Duplicates != 0 || a.Seqs["DB"] != 3 {
		t.Fatalf("ack %s: another producer's id is new", a)
	}
	if got := e.historySeqs(t, "DB"); len(got) != 3 {
		t.Fatalf("history %v: want 3 ticks", got)
	}
}

// An id is remembered for the window only: past IdempotencyIDs newer ids
// or past IdempotencyTTL, a repeat is published again.
func TestPublishIDsOlderThanWindow(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(_ *stream.BusConfig, sc *server.Config) {
		sc.IdempotencyIDs = 3
		sc.IdempotencyTTL = time.Minute
	})
	var mu sync.Mutex
	now := time.Unix(1_000_000, 0)
	server.SetIdempotencyClock(e.srv, func() time.Time { mu.Lock(); defer mu.Unlock(); return now })
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	c, _ := e.welcomeWS(t, wsOpts{})
	send := func(id int, mids ...string) msg {
		t.Helper()
		var ticks []string
		for _, m := range mids {
			ticks = append(ticks, `{"topic":"W","price":1,"mid":"`+m+`"}`)
		}
		c.send(pub(id, "w", ticks...))
		return c.expectAck(id)
	}
	send(1, "a", "b", "c")
	if a := send(2, "a"); a.Duplicates != 1 {
		t.Fatalf("ack %s: a is within the window", a)
	}
	send(3, "d") // a is now the 4th newest
	if a := send(4, "a"); a.Duplicates != 0 || a.Seqs["W"] != 5 {
		t.Fatalf("ack %s: a fell out of the window by count: published again as seq 5", a)
	}
	advance(30 * time.Second)
	if a := send(5, "a"); a.Duplicates != 1 {
		t.Fatalf("ack %s: a is 30 s old, within the TTL", a)
	}
	advance(31 * time.Second)
	if a := send(6, "a"); a.Duplicates != 0 || a.Seqs["W"] != 6 {
		t.Fatalf("ack %s: a is 61 s old, past the TTL: published again", a)
	}
	if got := e.historySeqs(t, "W"); len(got) != 6 {
		t.Fatalf("history %v: want 6 ticks", got)
	}
}

// POST /api/publish: an Idempotency-Key makes a retried request publish
// nothing and answer the original result; ticks' mids are shared with the
// WebSocket publishes of the same producer.
func TestHTTPPublishIdempotency(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	post := func(key, producer, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, e.url("/api/publish"), strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if key != "" {
			req.Header.Set("Idempotency-Key", key)
		}
		if producer != "" {
			req.Header.Set("X-Producer-Id", producer)
		}
		resp, err := e.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}
	body := `[{"topic":"H","price":1},{"topic":"H","price":2}]`
	s1, b1 := post("k-1", "", body)
	s2, b2 := post("k-1", "", body)
	if s1 != 200 || s2 != 200 || !strings.Contains(b1, `"seqs":{"H":2}`) || !strings.Contains(b2, `"duplicates":2`) || !strings.Contains(b2, `"seqs":{"H":2}`) {
		t.Fatalf("got %d %s then %d %s: want the retry answered with the original seqs", s1, b1, s2, b2)
	}
	if got := e.historySeqs(t, "H"); len(got) != 2 {
		t.Fatalf("history %v: want 2 ticks", got)
	}
	// Per-tick mids, NDJSON, then the same mid over WebSocket.
	if s, b := post("", "dev-9", "{\"topic\":\"H\",\"price\":3,\"mid\":\"x\"}\n{\"topic\":\"H\",\"price\":4,\"mid\":\"x\"}"); s != 200 || !strings.Contains(b, `"duplicates":1`) {
		t.Fatalf("got %d %s: want the second x a duplicate", s, b)
	}
	c, _ := e.welcomeWS(t, wsOpts{})
	c.send(pub(1, "dev-9", `{"topic":"H","price":3,"mid":"x"}`))
	if a := c.expectAck(1); a.Duplicates != 1 || a.Seqs["H"] != 3 {
		t.Fatalf("ack %s: want x answered with seq 3", a)
	}
	if s, _ := post("", "bad producer", body); s != 400 {
		t.Fatalf("bad X-Producer-Id: %d, want 400", s)
	}
	if got := e.historySeqs(t, "H"); len(got) != 3 {
		t.Fatalf("history %v: want 3 ticks", got)
	}
}

// TestPublishNDJSONMids: POST /api/publish reads each line's tick and
// "mid" in one pass (tick.ParsePublished, issue #12): repeated mids are
// answered as duplicates, a bad mid refuses its line before anything else,
// a "mid" inside fields is a field, the last of two mids counts, and a
// line with data after its object is refused as bad JSON.
func TestPublishNDJSONMids(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	body := strings.Join([]string{
		`{"topic":"NM","ts":1000,"price":"61837.63","mid":"a"}`,
		`{"topic":"NM","ts":1000,"price":"61837.63","mid":"a"}`,
		`{"topic":"NM","price":1,"mid":""}`,
		`{"topic":"bad topic","mid":{"x":1}}`,
		`{"topic":"NM","ts":2000,"price":2,"fields":{"mid":3}}`,
		`{"topic":"NM","price":3,"mid":"b"} trailing`,
		`{"topic":"NM","ts":3000,"price":4,"mid":7,"mid":"c"}`,
		`{"topic":"NM","price":5,"mid":"c"}`,
	}, "\n")
	var res struct {
		Accepted   int               `json:"accepted"`
		Duplicates int               `json:"duplicates"`
		Seqs       map[string]uint64 `json:"seqs"`
		Refused    []struct {
			Line int    `json:"line"`
			Code string `json:"code"`
		} `json:"refused"`
	}
	status, raw := e.doT(t, http.MethodPost, "/api/publish", "application/x-ndjson", []byte(body), &res)
	codes := map[int]string{}
	for _, r := range res.Refused {
		codes[r.Line] = r.Code
	}
	want := map[int]string{3: protocol.CodeBadMid, 4: protocol.CodeBadMid, 6: protocol.CodeBadJSON}
	if status != http.StatusOK || res.Accepted != 5 || res.Duplicates != 2 || res.Seqs["NM"] != 3 || fmt.Sprint(codes) != fmt.Sprint(want) {
		t.Fatalf("got %d %s: want 5 accepted (2 duplicates), seq 3, refused %v", status, raw, want)
	}
	_, hist := e.doT(t, http.MethodGet, "/api/history?topic=NM", "", nil, nil)
	for _, s := range []string{`"price":61837.63`, `"mid":3`} {
		if !strings.Contains(string(hist), s) {
			t.Errorf("history %s: want %s", hist, s)
		}
	}
}
