package server_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/protocol"
	"github.com/tickstream/tickstream/stream/server"
)

// An SSE stream over 2,000 topics keeps every event id under 1 KiB, and
// a reconnect with the last id it processed resumes every topic with no
// loss and no duplicate, including the events the client never read.
func TestSSEResumeManyTopics(t *testing.T) {
	t.Parallel()
	const topics = 2000
	e := startServer(t, func(bc *stream.BusConfig, _ *server.Config) {
		bc.MaxTopicsPerSubscriber = 3 * topics
		// The test publishes 6,000 updates before it reads one, about the
		// default 1 MiB queue bound: room enough that the stream is not
		// stepped down (a status event, merged updates) while it waits.
		bc.MaxPendingBytes = 8 << 20
	})
	name := func(i int) string { return fmt.Sprintf("M.%04d", i) }
	for i := range topics {
		e.publish(name(i), 1, f("price", 1))
	}
	checkID := func(ev sseEvent) {
		t.Helper()
		if len(ev.ID) >= 1024 {
			t.Fatalf("event id of %d bytes: %.80s…", len(ev.ID), ev.ID)
		}
	}
	c := e.openSSE(t, "/sse?topics=M.*&throttle_ms=0", nil)
	c.expect(protocol.TypeWelcome)
	c.expect(protocol.TypeAck)
	seqs := newSeqTracker()
	for range topics {
		ev, m := c.expect(protocol.TypeSnapshot)
		checkID(ev)
		seqs.start(m.Topic, m.Seq)
	}
	for round := range 3 {
		for i := range topics {
			e.publish(name(i), int64(2+round), f("price", float64(2+round)))
		}
	}
	// Read about half of the updates, then drop the stream: the rest were
	// written (or queued) but never processed.
	var lastID string
	for range topics * 3 / 2 {
		ev, m := c.expect(protocol.TypeUpdate)
		checkID(ev)
		seqs.update(t, m)
		lastID = ev.ID
	}
	if lastID[0] != '@' {
		t.Fatalf("id %.60s… of a 2,000-topic stream is not a reference", lastID)
	}
	c.close()
	for i := range topics {
		e.publish(name(i), 5, f("price", 5))
	}

	c = e.openSSE(t, "/sse?topics=M.*&throttle_ms=0", http.Header{"Last-Event-ID": {lastID}})
	c.expect(protocol.TypeWelcome)
	c.expect(protocol.TypeAck)
	done := 0
	for done < topics {
		ev, m := c.nextEvent(10 * time.Second)
		if m.Type != protocol.TypeUpdate {
			t.Fatalf("after resume got %s %s, want only updates", ev.Event, ev.Data)
		}
		checkID(ev)
		seqs.update(t, m)
		if m.Seq == 5 {
			done++
		}
	}
	for i := range topics {
		if got := seqs.last[name(i)]; got != 5 {
			t.Fatalf("%s ends at seq %d, want 5", name(i), got)
		}
	}
}

// A reference id that the server no longer knows starts the stream afresh
// with an error event, rather than an HTTP error the browser would retry
// with the same id forever.
func TestSSEExpiredReferenceStartsAfresh(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	e.publish("A", 1, f("price", 1))
	c := e.openSSE(t, "/sse?topics=A&throttle_ms=0", http.Header{"Last-Event-ID": {"@nosuchstream.42"}})
	c.expect(protocol.TypeWelcome)
	_, m := c.expect(protocol.TypeError)
	if m.Code != protocol.CodeBadResume {
		t.Fatalf("error %s, want code %s", m, protocol.CodeBadResume)
	}
	c.expect(protocol.TypeAck)
	if _, s := c.expect(protocol.TypeSnapshot); s.Topic != "A" {
		t.Fatalf("snapshot %s, want A", s)
	}
}
