package server_test

import (
	"bytes"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/protocol"
	"github.com/tickstream/tickstream/stream/server"
)

func TestSSEStream(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(bc *stream.BusConfig, _ *server.Config) { bc.Heartbeat = 100 * time.Millisecond })
	e.publish("A", 1, f("price", 10))

	c := e.openSSE(t, "/sse?topics=A&throttle_ms=0", nil)
	h := c.resp.Header
	if ct := h.Get("Content-Type"); !strings.HasPrefix(ct, "text/event-stream") {
		t.Errorf("Content-Type %q", ct)
	}
	if cc := h.Get("Cache-Control"); cc != "no-cache" {
		t.Errorf("Cache-Control %q", cc)
	}
	if xa := h.Get("X-Accel-Buffering"); xa != "no" {
		t.Errorf("X-Accel-Buffering %q", xa)
	}
	if ev := c.next(5 * time.Second); ev.Retry == "" || ev.Event != "" {
		t.Fatalf("stream starts with %+v, want a retry: line", ev)
	} else if n, err := strconv.Atoi(ev.Retry); err != nil || n <= 0 {
		t.Errorf("retry: %q is not a positive number of ms", ev.Retry)
	}
	_, w := c.expect(protocol.TypeWelcome)
	if w.Session == "" || w.HeartbeatMS != 100 {
		t.Errorf("welcome %s: want a session and heartbeat_ms 100", w)
	}
	c.expect(protocol.TypeAck)
	ev, snap := c.expect(protocol.TypeSnapshot)
	if snap.Topic != "A" || snap.Seq != 1 || ev.ID == "" {
		t.Fatalf("snapshot %+v: want A seq 1 with an id", ev)
	}
	for i := range 20 {
		e.publish("A", int64(2+i), f("price", float64(11+i)))
	}
	for i := range 20 {
		ev, u := c.expect(protocol.TypeUpdate)
		if u.Seq != uint64(2+i) || u.Data["price"].Float() != float64(11+i) || ev.ID == "" {
			t.Fatalf("event %+v: want update seq %d with an id", ev, 2+i)
		}
	}
	// Heartbeat comments keep the stream alive.
	deadline := time.Now().Add(5 * time.Second)
	for hb := 0; hb < 2; {
		ev := c.next(time.Until(deadline))
		if ev.Event != "" {
			t.Fatalf("unexpected event %+v", ev)
		}
		if ev.Comment == "hb" {
			hb++
		}
	}
}

// sseRead reads events until every topic in want reaches its seq, checking
// them with tr, and returns the last event id.
func sseRead(t *testing.T, c *sseClient, tr *seqTracker, want map[string]uint64, snapshots bool) string {
	t.Helper()
	var id string
	deadline := time.Now().Add(10 * time.Second)
	for {
		behind := false
		for tp, seq := range want {
			behind = behind || tr.last[tp] < seq
		}
		if !behind {
			return id
		}
		ev, m := c.nextEvent(time.Until(deadline))
		switch m.Type {
		case protocol.TypeUpdate:
			tr.update(t, m)
			if m.Agg.N != 1 {
				t.Fatalf("throttle 0 update with n %d: %s", m.Agg.N, m)
			}
		case protocol.TypeSnapshot:
			if !snapshots {
				t.Fatalf("unexpected %s while resuming", m)
			}
			tr.start(m.Topic, m.Seq)
		case protocol.TypeAck, protocol.TypeWelcome:
		default:
			t.Fatalf("unexpected %s %s", ev.Event, ev.Data)
		}
		if ev.ID != "" {
			id = ev.ID
		}
	}
}

func TestSSEResume(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		open func(t *testing.T, e *env, id string) *sseClient
	}{
		{"Last-Event-ID header", func(t *testing.T, e *env, id string) *sseClient {
			return e.openSSE(t, "/sse?topics=A&throttle_ms=0", http.Header{"Last-Event-Id": {id}})
		}},
		{"last_event_id query", func(t *testing.T, e *env, id string) *sseClient {
			return e.openSSE(t, "/sse?topics=A&throttle_ms=0&last_event_id="+url.QueryEscape(id), nil)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := startServer(t, nil)
			e.publish("A", 1, f("price", 1))
			e.publish("B", 1, f("price", 1))
			tr := newSeqTracker()

			c1 := e.openSSE(t, "/sse?topics=A,B&throttle_ms=0", nil)
			// The stream subscribes once it starts: take the snapshots
			// (at seq 1) before the ticks the test counts.
			sseRead(t, c1, tr, map[string]uint64{"A": 1, "B": 1}, true)
			for i := range 10 {
				e.publish("A", int64(2+i), f("price", float64(i)))
				e.publish("B", int64(2+i), f("price", float64(i)))
			}
			id := sseRead(t, c1, tr, map[string]uint64{"A": 11, "B": 11}, true)
			c1.close()

			// Missed while away; B is named only in the cursor.
			for i := range 15 {
				e.publish("A", int64(20+i), f("price", float64(i)))
				e.publish("B", int64(20+i), f("price", float64(i)))
			}
			c2 := tt.open(t, e, id)
			c2.next(5 * time.Second) // retry:
			c2.expect(protocol.TypeWelcome)
			sseRead(t, c2, tr, map[string]uint64{"A": 26, "B": 26}, false)
			for i := range 3 { // then live, for both topics
				e.publish("A", int64(40+i), f("price", 1))
				e.publish("B", int64(40+i), f("price", 1))
			}
			sseRead(t, c2, tr, map[string]uint64{"A": 29, "B": 29}, false)
			if tr.n["A"] != 28 || tr.n["B"] != 28 {
				t.Errorf("got %d and %d ticks of A and B after the snapshots, want 28 each", tr.n["A"], tr.n["B"])
			}
			select {
			case ev := <-c2.events:
				if ev.Event != "" {
					t.Errorf("unexpected event %+v", ev)
				}
			case <-time.After(100 * time.Millisecond):
			}
		})
	}
}

func TestSSEControl(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	e.publish("A", 1, f("price", 1))
	e.publish("C", 1, f("price", 1))
	c := e.openSSE(t, "/sse?topics=A&throttle_ms=0", nil)
	c.next(5 * time.Second)
	_, w := c.expect(protocol.TypeWelcome)
	c.expect(protocol.TypeAck)
	c.expect(protocol.TypeSnapshot)
	ctl := "/api/sse/" + w.Session

	type ctlAnswer struct {
		OK     bool     `json:"ok"`
		Op     string   `json:"op"`
		Topics []string `json:"topics"`
	}
	var got ctlAnswer
	status, raw := e.post(ctl, "application/json", []byte(`{"op":"subscribe","topics":["C"],"throttle_ms":0}`), &got)
	if status != http.StatusOK || !got.OK || got.Op != "subscribe" || len(got.Topics) != 1 || got.Topics[0] != "C" {
		t.Fatalf("subscribe: %d %s", status, raw)
	}
	// In effect once answered: the next tick of C is on the stream.
	e.publish("C", 2, f("price", 2))
	c.expect(protocol.TypeAck)
	if _, s := c.expect(protocol.TypeSnapshot); s.Topic != "C" || s.Seq != 1 {
		t.Fatalf("snapshot %s: want C seq 1", s)
	}
	if _, u := c.expect(protocol.TypeUpdate); u.Topic != "C" || u.Seq != 2 {
		t.Fatalf("update %s: want C seq 2", u)
	}

	status, raw = e.post(ctl, "application/json", []byte(`{"op":"unsubscribe","topics":["C"]}`), &got)
	if status != http.StatusOK || !got.OK || got.Op != "unsubscribe" {
		t.Fatalf("unsubscribe: %d %s", status, raw)
	}
	e.publish("C", 3, f("price", 3))
	e.publish("A", 2, f("price", 2))
	c.expect(protocol.TypeAck)
	if _, u := c.expect(protocol.TypeUpdate); u.Topic != "A" || u.Seq != 2 {
		t.Fatalf("update %s: want A seq 2 (and nothing of C)", u)
	}

	tests := []struct {
		name, path, body string
		status           int
		code             string
	}{
		{"unknown session", "/api/sse/nosuchsession", `{"op":"subscribe","topics":["C"]}`, 404, "unknown_session"},
		{"not JSON", ctl, `subscribe C`, 400, protocol.CodeBadJSON},
		{"unknown op", ctl, `{"op":"dance"}`, 400, protocol.CodeUnknownOp},
		{"bad topic", ctl, `{"op":"subscribe","topics":["no spaces"]}`, 400, protocol.CodeBadTopic},
		{"no topics", ctl, `{"op":"subscribe","topics":[]}`, 400, protocol.CodeBadTopic},
		{"bad throttle", ctl, `{"op":"subscribe","topics":["A"],"throttle_ms":99999999}`, 400, protocol.CodeBadThrottle},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.expectAPIError(t, http.MethodPost, tt.path, tt.body, tt.status, tt.code)
		})
	}
	// Bad input was also reported on the stream, and the stream goes on.
	e.publish("A", 3, f("price", 3))
	for {
		_, m := c.nextEvent(5 * time.Second)
		if m.Type == protocol.TypeError {
			continue
		}
		if m.Type != protocol.TypeUpdate || m.Topic != "A" || m.Seq != 3 {
			t.Fatalf("got %s, want update A seq 3", m)
		}
		break
	}
}

func TestSSEBadRequest(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(bc *stream.BusConfig, _ *server.Config) { bc.MaxTopicsPerSubscriber = 2 })
	tests := []struct {
		name, path string
		header     string
		code       string
	}{
		{"throttle not a number", "/sse?topics=A&throttle_ms=abc", "", protocol.CodeBadThrottle},
		{"throttle negative", "/sse?topics=A&throttle_ms=-5", "", protocol.CodeBadThrottle},
		{"throttle too large", "/sse?topics=A&throttle_ms=99999999", "", protocol.CodeBadThrottle},
		{"bad topic", "/sse?topics=A,b%20c", "", protocol.CodeBadTopic},
		{"too many topics", "/sse?topics=A,B,C", "", protocol.CodeTooManyTopics},
		{"bad cursor query", "/sse?topics=A&last_event_id=garbage", "", protocol.CodeBadResume},
		{"bad cursor header", "/sse?topics=A", "e1~A=x", protocol.CodeBadResume},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req, _ := http.NewRequest(http.MethodGet, e.url(tt.path), nil)
			if tt.header != "" {
				req.Header.Set("Last-Event-ID", tt.header)
			}
			resp, err := e.http.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var ae apiErr
			if err := decodeJSON(resp, &ae); err != nil || resp.StatusCode != http.StatusBadRequest || ae.Error != tt.code {
				t.Errorf("got %d %+v (%v), want 400 with error %q", resp.StatusCode, ae, err, tt.code)
			}
		})
	}
}

// An SSE stream runs on one goroutine of the server, writing straight to
// its socket: no second goroutine copying the stream through a pipe to the
// connection (as fasthttp's body stream writer does).
func TestSSEStreamIsOneGoroutine(t *testing.T) {
	e := startServer(t, nil)
	open := func() net.Conn {
		c, err := net.DialTimeout("tcp", e.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte("GET /sse HTTP/1.1\r\nHost: " + e.addr + "\r\nAccept: text/event-stream\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		var got []byte
		buf := make([]byte, 4096)
		for !bytes.Contains(got, []byte("event: welcome")) {
			n, err := c.Read(buf)
			if err != nil {
				t.Fatalf("reading the stream's head: %v (got %q)", err, got)
			}
			got = append(got, buf[:n]...)
		}
		if !bytes.HasPrefix(got, []byte("HTTP/1.1 200 OK\r\n")) || !bytes.Contains(got, []byte("Content-Type: text/event-stream")) {
			t.Fatalf("response %q: want 200 and text/event-stream", got)
		}
		return c
	}
	open() // warm: fasthttp's worker pool, the bus
	const n = 20
	before := runtime.NumGoroutine()
	for range n {
		open()
	}
	var per float64
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if per = float64(runtime.NumGoroutine()-before) / n; per <= 1.25 {
			return
		}
	}
	t.Fatalf("%.2f goroutines per open SSE stream, want 1", per)
}
