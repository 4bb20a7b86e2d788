package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tickstream/tickstream/feeds/feedtest"
	_ "github.com/tickstream/tickstream/feeds/sim"
	"github.com/tickstream/tickstream/stream/app"
	"github.com/tickstream/tickstream/stream/client"
	"github.com/tickstream/tickstream/stream/protocol"
)

// running is a tickstream started in-process with RunListener.
type running struct {
	base string
	stop func()
}

func startApp(t *testing.T, dataDir string, args ...string) *running {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "tickstream.yaml")
	if err := os.WriteFile(cfg, []byte("feeds:\n  - name: quiet\n    type: sim\n    options: {symbols: [SIM-QUIET], rate: 1}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := app.LoadSettings(append([]string{"--config", cfg, "--data-dir", dataDir, "--shutdown-timeout-ms", "3000"}, args...),
		func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- app.RunListener(ctx, s, ln, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	r := &running{base: "http://" + ln.Addr().String()}
	stopped := false
	r.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("RunListener: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("tickstream did not stop within 10 s")
		}
	}
	t.Cleanup(r.stop)
	return r
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

func (r *running) get(t *testing.T, path string) string {
	t.Helper()
	resp, err := httpClient.Get(r.base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %s %v", path, resp.StatusCode, b, err)
	}
	return string(b)
}

// publish posts ticks from..to-1 of topic, ts 300 ms apart from base.
func (r *running) publish(t *testing.T, topic string, from, to int, base int64) {
	t.Helper()
	var body bytes.Buffer
	for i := from; i < to; i++ {
		fmt.Fprintf(&body, `{"topic":%q,"ts":%d,"price":%g,"size":%g}`+"\n", topic, base+int64(i)*300, 100+float64(i%11), 0.5+float64(i%3))
	}
	resp, err := httpClient.Post(r.base+"/api/publish", "application/x-ndjson", &body)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct{ Accepted int }
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Accepted != to-from {
		t.Fatalf("publish: accepted %d of %d (%v)", out.Accepted, to-from, err)
	}
}

// readUntil reads updates of one topic until seq, checking that they
// continue from seq from with no gap, duplicate, reset or snapshot.
func readUntil(t *testing.T, ctx context.Context, c *client.Conn, from, seq uint64) string {
	t.Helper()
	epoch := ""
	for from < seq {
		m, err := c.Next(ctx)
		if err != nil {
			t.Fatalf("reading at seq %d (want %d): %v", from, seq, err)
		}
		switch m.Type {
		case protocol.TypeUpdate:
			if m.Agg == nil || m.Seq != from+uint64(m.Agg.N) {
				t.Fatalf("update seq %d agg %+v after seq %d: a gap or a duplicate", m.Seq, m.Agg, from)
			}
			from, epoch = m.Seq, m.Epoch
		case protocol.TypeReset, protocol.TypeSnapshot, protocol.TypeError:
			t.Fatalf("got %+v at seq %d, want only updates", m, from)
		}
	}
	return epoch
}

// A graceful restart with the store keeps the epoch, seqs, history and
// candles: a WebSocket client resumes with its old cursor with no loss and
// no reset, and the history after the restart is gap-free (the memory ring
// holds 20 ticks, the store the rest).
func TestRestartResumesWithoutLossOrReset(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	base := time.Now().Add(-10 * time.Minute).UnixMilli()
	a := startApp(t, dir, "--history-depth", "20")
	a.publish(t, "DUR-A", 0, 60, base)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c1, err := client.Dial(ctx, strings.Replace(a.base, "http", "ws", 1)+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c1.Subscribe(ctx, []string{"DUR-A"}, 0, nil); err != nil {
		t.Fatal(err)
	}
	if m, err := c1.Next(ctx); err != nil || m.Type != protocol.TypeSnapshot || m.Seq != 60 {
		t.Fatalf("first message %+v, %v: want the snapshot at seq 60", m, err)
	}
	a.publish(t, "DUR-A", 60, 80, base)
	epoch := readUntil(t, ctx, c1, 60, 80)
	cursor := c1.Cursors()
	a.publish(t, "DUR-A", 80, 90, base) // the client misses these

	// What the server says before it stops: once the store has every
	// tick, /api/history reads past the ring from it.
	var before map[string]string
	feedtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		before = snapshotAPI(t, a, "DUR-A")
		var h struct {
			Oldest uint64 `json:"oldest_seq"`
			Ticks  []struct{ Seq uint64 }
		}
		_ = json.Unmarshal([]byte(before["history"]), &h)
		if h.Oldest != 1 || len(h.Ticks) != 90 {
			return fmt.Errorf("history from %d, %d ticks: the store has not all yet", h.Oldest, len(h.Ticks))
		}
		return nil
	})
	a.stop()
	c1.Close()

	b := startApp(t, dir, "--history-depth", "20")
	after := snapshotAPI(t, b, "DUR-A")
	for k := range before {
		if before[k] != after[k] {
			t.Errorf("%s after the restart:\n%s\nwant\n%s", k, after[k], before[k])
		}
	}
	if !strings.Contains(after["topics"], `"epoch":"`+epoch+`"`) {
		t.Fatalf("topics after the restart %s: want epoch %s", after["topics"], epoch)
	}
	b.publish(t, "DUR-A", 90, 100, base)

	c2, err := client.Dial(ctx, strings.Replace(b.base, "http", "ws", 1)+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if cursor["DUR-A"] != (protocol.Cursor{Epoch: epoch, Seq: 80}) {
		t.Fatalf("cursor %+v", cursor)
	}
	if _, err := c2.Subscribe(ctx, []string{"DUR-A"}, 0, cursor); err != nil {
		t.Fatal(err)
	}
	if got := readUntil(t, ctx, c2, 80, 100); got != epoch {
		t.Fatalf("epoch %q after the restart, want %q", got, epoch)
	}

	// The store's size and writes are in the metrics.
	metrics := b.get(t, "/metrics")
	for _, name := range []string{"tickstream_store_bytes ", "tickstream_store_file_bytes ", "tickstream_store_ticks_written_total ", "tickstream_store_queue_ticks ", "tickstream_store_lag_seconds "} {
		if !strings.Contains(metrics, "\n"+name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

// snapshotAPI is what the HTTP API says of topic: its entry in
// /api/topics (less the rate), its history and its candles.
func snapshotAPI(t *testing.T, r *running, topic string) map[string]string {
	t.Helper()
	out := map[string]string{
		"history": r.get(t, "/api/history?topic="+topic+"&after_seq=0&limit=1000"),
	}
	for _, iv := range []string{"1s", "1m", "5m", "1h"} {
		out["candles "+iv] = r.get(t, "/api/candles?topic="+topic+"&interval="+iv+"&limit=1000")
	}
	var topics []map[string]any
	if err := json.Unmarshal([]byte(r.get(t, "/api/topics")), &topics); err != nil {
		t.Fatal(err)
	}
	for _, tp := range topics {
		if tp["topic"] == topic {
			delete(tp, "rate")
			delete(tp, "feed") // the feed that published it since this process started
			b, _ := json.Marshal(tp)
			out["topics"] = string(b)
		}
	}
	return out
}
