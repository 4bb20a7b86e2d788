package server_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/tickstream/tickstream/stream/protocol"
)

type pollAnswer struct {
	Messages []json.RawMessage `json:"messages"`
	Cursor   string            `json:"cursor"`
}

func (e *env) poll(t testing.TB, topics, cursor string, timeoutMS int) []msg {
	t.Helper()
	_, ms := e.pollCursor(t, topics, cursor, timeoutMS)
	return ms
}

func (e *env) pollCursor(t testing.TB, topics, cursor string, timeoutMS int) (string, []msg) {
	t.Helper()
	q := url.Values{"topics": {topics}, "cursor": {cursor}, "timeout_ms": {fmt.Sprint(timeoutMS)}, "throttle_ms": {"0"}}
	var a pollAnswer
	status, raw := e.doT(t, http.MethodGet, "/poll?"+q.Encode(), "", nil, &a)
	if status != 200 {
		t.Fatalf("poll: %d %s", status, raw)
	}
	var out []msg
	for _, m := range a.Messages {
		out = append(out, parseMsg(t, m))
	}
	return a.Cursor, out
}

// A long poll returns the messages since its cursor, and the cursor that
// the next poll resumes from; with nothing new it waits for the first
// message; the cursors are SSE event ids, good on /sse, and SSE's are good
// on /poll.
func TestPoll(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	e.publish("PA", 1, f("price", 1))
	e.publish("PB", 1, f("price", 10))
	cur, ms := e.pollCursor(t, "PA,PB", "", 5000)
	if len(ms) != 2 || ms[0].Type != protocol.TypeSnapshot || ms[1].Type != protocol.TypeSnapshot || cur == "" {
		t.Fatalf("first poll: %v cursor %q: want two snapshots and a cursor", ms, cur)
	}
	// Nothing new: a short poll answers empty with the same position.
	cur2, ms := e.pollCursor(t, "PA,PB", cur, 50)
	if len(ms) != 0 || cur2 != cur {
		t.Fatalf("empty poll: %v cursor %q, want none and %q", ms, cur2, cur)
	}
	// Ticks published meanwhile come as updates, in order, none lost.
	for i := range 5 {
		e.publish("PA", int64(2+i), f("price", float64(2+i)))
	}
	cur, ms = e.pollCursor(t, "PA,PB", cur, 5000)
	if len(ms) != 5 || ms[0].Seq != 2 || ms[4].Seq != 6 {
		t.Fatalf("resumed poll: %v, want updates 2-6", ms)
	}
	// A poll that waits gets the first tick published while it waits.
	got := make(chan []msg, 1)
	go func() { got <- e.poll(t, "PA,PB", cur, 30000) }()
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := e.bus.Subscribers(); n != 1 {
			return fmt.Errorf("%d subscribers", n)
		}
		return nil
	})
	e.publish("PB", 2, f("price", 11))
	select {
	case ms := <-got:
		if len(ms) != 1 || ms[0].Topic != "PB" || ms[0].Seq != 2 {
			t.Fatalf("waiting poll: %v, want PB's update 2", ms)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the waiting poll did not answer")
	}
	// An SSE stream resumes from a poll's cursor, and a poll from an SSE id.
	cur, _ = e.pollCursor(t, "PA,PB", cur, 0)
	e.publish("PA", 7, f("price", 7))
	sse := e.openSSE(t, "/sse?throttle_ms=0&last_event_id="+url.QueryEscape(cur), nil)
	sse.expect(protocol.TypeWelcome)
	sse.expect(protocol.TypeAck)
	ev, m := sse.expect(protocol.TypeUpdate)
	if m.Topic != "PA" || m.Seq != 7 {
		t.Fatalf("SSE resumed from the poll cursor: %s, want PA 7", m)
	}
	sse.close()
	e.publish("PA", 8, f("price", 8))
	if ms := e.poll(t, "PA", ev.ID, 5000); len(ms) != 1 || ms[0].Seq != 8 {
		t.Fatalf("poll from the SSE id: %v, want PA 8", ms)
	}
}

// A poll takes the same limits as a stream.
func TestPollLimits(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	// No topics yet is an empty poll, not an error: a client that has not
	// chosen its topics waits on the transport like any other.
	var empty struct {
		Messages []json.RawMessage `json:"messages"`
	}
	if code, body := e.doT(t, http.MethodGet, "/poll?topics=&timeout_ms=0", "", nil, &empty); code != 200 || len(empty.Messages) != 0 {
		t.Errorf("empty poll: %d %s, want 200 with no messages", code, body)
	}
	e.expectAPIError(t, http.MethodGet, "/poll?topics=a%20b", "", 400, protocol.CodeBadTopic)
	e.expectAPIError(t, http.MethodGet, "/poll?topics=A&cursor=nope", "", 400, protocol.CodeBadResume)
	e.expectAPIError(t, http.MethodGet, "/poll?topics=A&throttle_ms=-1", "", 400, protocol.CodeBadThrottle)
	e.expectAPIError(t, http.MethodGet, "/poll?topics=A&timeout_ms=999999", "", 400, "bad_request")
	// An expired reference cursor starts afresh and says so.
	e.publish("PX", 1, f("price", 1))
	ms := e.poll(t, "PX", "@gone.5", 5000)
	if len(ms) != 2 || ms[0].Code != protocol.CodeBadResume || ms[1].Type != protocol.TypeSnapshot {
		t.Fatalf("expired cursor: %v, want a bad_resume error, then the snapshot", ms)
	}
	// Shutdown answers a waiting poll at once.
	done := make(chan []msg, 1)
	go func() { done <- e.poll(t, "PX", "", 0) }()
	<-done
	cur, _ := e.pollCursor(t, "PX", "", 0)
	waiting := make(chan int, 1)
	go func() {
		q := url.Values{"topics": {"PX"}, "cursor": {cur}, "timeout_ms": {"60000"}}
		resp, err := http.Get(e.url("/poll?" + q.Encode()))
		if err != nil {
			waiting <- -1
			return
		}
		resp.Body.Close()
		waiting <- resp.StatusCode
	}()
	checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if n := e.bus.Subscribers(); n != 1 {
			return fmt.Errorf("%d subscribers", n)
		}
		return nil
	})
	if d := e.shutdown(); d > 5*time.Second {
		t.Errorf("shutdown took %v", d)
	}
	if s := <-waiting; s != 200 {
		t.Fatalf("waiting poll at shutdown: %d, want 200", s)
	}
}
