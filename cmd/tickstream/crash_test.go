package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tickstream/tickstream/stream/client"
	"github.com/tickstream/tickstream/stream/protocol"
)

// SIGKILL in the middle of publishing loses nothing the sync policy
// promised and never corrupts the store. With sync always, every publish
// that was answered is on disk: after a restart the store opens, the
// topic's seq is at least the number of answered ticks, /api/history holds
// each tick once, in order, with no gap, and a WebSocket client resuming
// with the cursor it had before the kill (a tick that was answered) gets
// the rest with no reset.
func TestCrashLosesNothingAcknowledged(t *testing.T) {
	t.Parallel()
	bin := buildCommand(t)
	dir := t.TempDir()
	args := []string{"--data-dir", dir, "--sync", "always"}
	c := startCommand(t, bin, args...)

	// One publisher, one tick per request: tick i has seq i+1 and field i.
	var acked atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := c.publish(fmt.Sprintf(`{"topic":"CRASH-A","price":%d,"size":1,"fields":{"i":%d}}`, 100+i%7, i)); err != nil {
				return // killed
			}
			acked.Store(int64(i + 1))
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ws, err := client.Dial(ctx, "ws://"+c.addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ws.Subscribe(ctx, []string{"CRASH-A"}, 0, nil); err != nil {
		t.Fatal(err)
	}
	// The client reads until seq 30 or more, and keeps that cursor.
	var cursor protocol.Cursor
	for cursor.Seq < 30 {
		m, err := ws.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m.Type == protocol.TypeSnapshot || m.Type == protocol.TypeUpdate {
			cursor = protocol.Cursor{Epoch: m.Epoch, Seq: m.Seq}
		}
	}
	ws.Close()
	// Kill it mid-publish, once the ticks up to the cursor and 50 more
	// have been answered.
	checkFor(t, 20*time.Second, time.Millisecond, func() error {
		if n := acked.Load(); n < int64(cursor.Seq)+50 {
			return fmt.Errorf("%d ticks answered", n)
		}
		return nil
	})
	if err := c.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-c.exited
	wg.Wait()
	answered := uint64(acked.Load())

	c = startCommand(t, bin, args...)
	var topics []struct {
		Topic string
		Epoch string
		Seq   uint64
	}
	if err := getJSON(c, "/api/topics", &topics); err != nil {
		t.Fatal(err)
	}
	var seq uint64
	for _, tp := range topics {
		if tp.Topic == "CRASH-A" {
			seq = tp.Seq
		}
	}
	if seq < answered {
		t.Fatalf("seq %d after the restart: %d ticks had been answered", seq, answered)
	}
	var h struct {
		Oldest uint64 `json:"oldest_seq"`
		Last   uint64 `json:"last_seq"`
		Ticks  []struct {
			Seq  uint64
			Data map[string]float64
		}
	}
	if err := getJSON(c, "/api/history?topic=CRASH-A&after_seq=0&limit=10000", &h); err != nil {
		t.Fatal(err)
	}
	if h.Oldest != 1 || h.Last != seq || uint64(len(h.Ticks)) != seq {
		t.Fatalf("history: oldest %d, last %d, %d ticks; want 1, %d, %d", h.Oldest, h.Last, len(h.Ticks), seq, seq)
	}
	for k, tk := range h.Ticks {
		if tk.Seq != uint64(k+1) || tk.Data["i"] != float64(k) {
			t.Fatalf("history tick %d: seq %d i %v; want seq %d i %d (no gap, no duplicate)", k, tk.Seq, tk.Data["i"], k+1, k)
		}
	}

	// The client resumes with its old cursor: no reset, every tick after
	// it, then the ones published now.
	if err := c.publish(`{"topic":"CRASH-A","price":1,"fields":{"i":-1}}`); err != nil {
		t.Fatal(err)
	}
	ws, err = client.Dial(ctx, "ws://"+c.addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if _, err := ws.Subscribe(ctx, []string{"CRASH-A"}, 0, map[string]protocol.Cursor{"CRASH-A": cursor}); err != nil {
		t.Fatal(err)
	}
	for at := cursor.Seq; at < seq+1; {
		m, err := ws.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		switch m.Type {
		case protocol.TypeUpdate:
			if m.Agg == nil || m.Seq != at+uint64(m.Agg.N) {
				t.Fatalf("update seq %d agg %+v after seq %d: a gap or a duplicate", m.Seq, m.Agg, at)
			}
			at = m.Seq
		case protocol.TypeReset, protocol.TypeSnapshot, protocol.TypeError:
			t.Fatalf("resuming %+v after the crash: got %+v, want updates only", cursor, m)
		}
	}
}

func getJSON(c *command, path string, v any) error {
	resp, err := c.http.Get("http://" + c.addr + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}
