package cluster_test

import (
	"bufio"
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
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	_ "github.com/tickstream/tickstream/feeds/sim"
	"github.com/tickstream/tickstream/stream/app"
	"github.com/tickstream/tickstream/stream/client"
	"github.com/tickstream/tickstream/stream/protocol"
)

// startNATS starts an in-process NATS server with JetStream in a temporary
// directory, on a loopback port.
func startNATS(t *testing.T) string {
	t.Helper()
	ns, err := server.NewServer(&server.Options{
		Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("NATS did not start")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns.ClientURL()
}

// link is a TCP proxy between a node and NATS that a test can cut, as a
// crash or a network partition would: the node's NATS connection dies
// without a goodbye, so its leases are not released.
type link struct {
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
	cut   bool
	wg    sync.WaitGroup
}

func newLink(t *testing.T, natsURL string) (*link, string) {
	t.Helper()
	target := strings.TrimPrefix(natsURL, "nats://")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &link{ln: ln}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			l.mu.Lock()
			if l.cut {
				l.mu.Unlock()
				c.Close()
				u.Close()
				continue
			}
			l.conns = append(l.conns, c, u)
			l.mu.Unlock()
			l.wg.Add(2)
			go func() { defer l.wg.Done(); _, _ = io.Copy(u, c); u.Close() }()
			go func() { defer l.wg.Done(); _, _ = io.Copy(c, u); c.Close() }()
		}
	}()
	t.Cleanup(l.Cut)
	return l, "nats://" + ln.Addr().String()
}

// Cut closes the proxy and every connection through it.
func (l *link) Cut() {
	l.mu.Lock()
	if !l.cut {
		l.cut = true
		l.ln.Close()
		for _, c := range l.conns {
			c.Close()
		}
	}
	l.mu.Unlock()
	l.wg.Wait()
}

// node is a tickstream node started in-process with RunListener.
type node struct {
	name string
	base string
	stop func() error // graceful; returns RunListener's error
}

const quietFeeds = "feeds:\n  - name: quiet\n    type: sim\n    options: {symbols: [SIM-QUIET], rate: 1}\n"

func startNode(t *testing.T, name, natsURL, dataDir, feedsYAML string, args ...string) *node {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "tickstream.yaml")
	if err := os.WriteFile(cfg, []byte(feedsYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := app.LoadSettings(append([]string{"--config", cfg, "--nats", natsURL, "--data-dir", dataDir,
		"--shutdown-timeout-ms", "5000", "--heartbeat-ms", "1000"}, args...),
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
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("tickstream", name)
	}
	go func() { done <- app.RunListener(ctx, s, ln, log) }()
	n := &node{name: name, base: "http://" + ln.Addr().String()}
	var once sync.Once
	var stopErr error
	n.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(20 * time.Second):
				stopErr = errors.New("did not stop within 20 s")
			}
		})
		return stopErr
	}
	t.Cleanup(func() { _ = n.stop() })
	// RunListener serves once it has replayed the stream: wait for it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := httpClient.Get(n.base + "/healthz")
		if err == nil {
			resp.Body.Close()
			break
		}
		select {
		case err := <-done:
			t.Fatalf("node %s: %v", name, err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s did not start: %v", name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return n
}

var httpClient = &http.Client{Timeout: 15 * time.Second}

func (n *node) get(t *testing.T, path string) string {
	t.Helper()
	resp, err := httpClient.Get(n.base + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s%s: %d %s %v", n.base, path, resp.StatusCode, b, err)
	}
	return string(b)
}

// publishErr posts ticks from..to-1 of topic (price 100+i, ts from base).
func (n *node) publishErr(topic string, from, to int, base int64) error {
	var body bytes.Buffer
	for i := from; i < to; i++ {
		fmt.Fprintf(&body, `{"topic":%q,"ts":%d,"price":%d,"size":1}`+"\n", topic, base+int64(i)*250, 100+i)
	}
	resp, err := httpClient.Post(n.base+"/api/publish", "application/x-ndjson", &body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out struct{ Accepted int }
	if err := json.Unmarshal(b, &out); err != nil || out.Accepted != to-from {
		return fmt.Errorf("publish to %s: accepted %d of %d: %s", n.name, out.Accepted, to-from, b)
	}
	return nil
}

func (n *node) publish(t *testing.T, topic string, from, to int, base int64) {
	t.Helper()
	if err := n.publishErr(topic, from, to, base); err != nil {
		t.Fatal(err)
	}
}

// seqOf is topic's seq in /api/topics (0 when absent).
func (n *node) seqOf(t *testing.T, topic string) (uint64, string) {
	t.Helper()
	var topics []struct {
		Topic string
		Seq   uint64
		Epoch string
	}
	if err := json.Unmarshal([]byte(n.get(t, "/api/topics")), &topics); err != nil {
		t.Fatal(err)
	}
	for _, tp := range topics {
		if tp.Topic == topic {
			return tp.Seq, tp.Epoch
		}
	}
	return 0, ""
}

func wsURL(n *node) string { return strings.Replace(n.base, "http", "ws", 1) + "/ws" }

// event is one delivered tick as a client saw it.
type event struct {
	Epoch string
	Seq   uint64
	TS    int64
	Data  string
}

// readWS reads a throttle-0 subscription's updates of one topic after seq
// from until seq to (or until the connection ends), failing on a gap, a
// duplicate, a reset or a snapshot.
func readWS(t *testing.T, ctx context.Context, c *client.Conn, from, to uint64) ([]event, error) {
	t.Helper()
	var out []event
	for from < to {
		m, err := c.Next(ctx)
		if err != nil {
			return out, err
		}
		switch m.Type {
		case protocol.TypeUpdate:
			if m.Agg == nil || m.Agg.N != 1 || m.Seq != from+1 {
				t.Fatalf("update seq %d agg %+v after seq %d: a gap or a duplicate", m.Seq, m.Agg, from)
			}
			from = m.Seq
			out = append(out, event{m.Epoch, m.Seq, m.TS, fmt.Sprint(m.Data)})
		case protocol.TypeReset, protocol.TypeSnapshot, protocol.TypeError:
			t.Fatalf("got %+v after seq %d, want only updates", m, from)
		}
	}
	return out, nil
}

// sseStream is a minimal SSE client.
type sseStream struct {
	resp   *http.Response
	r      *bufio.Reader
	lastID string
}

func dialSSE(t *testing.T, n *node, query, lastID string) *sseStream {
	t.Helper()
	req, _ := http.NewRequest("GET", n.base+"/sse?"+query, nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("GET /sse: %d %s", resp.StatusCode, b)
	}
	s := &sseStream{resp: resp, r: bufio.NewReader(resp.Body), lastID: lastID}
	t.Cleanup(func() { resp.Body.Close() })
	return s
}

// next returns the next event's type and data.
func (s *sseStream) next() (string, []byte, error) {
	var typ, id string
	var data []byte
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return "", nil, err
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "":
			if typ != "" || data != nil {
				if id != "" {
					s.lastID = id
				}
				return typ, data, nil
			}
		case strings.HasPrefix(line, "event:"):
			typ = strings.TrimSpace(line[6:])
		case strings.HasPrefix(line, "id:"):
			id = strings.TrimSpace(line[3:])
		case strings.HasPrefix(line, "data:"):
			data = append(data, strings.TrimSpace(line[5:])...)
		}
	}
}

// readSSE is readWS over SSE.
func readSSE(t *testing.T, s *sseStream, from, to uint64) ([]event, error) {
	t.Helper()
	var out []event
	for from < to {
		typ, data, err := s.next()
		if err != nil {
			return out, err
		}
		var m protocol.WireMessage
		if typ != "" && typ != "welcome" && typ != "status" {
			if err := json.Unmarshal(data, &m); err != nil {
				t.Fatalf("event %s %s: %v", typ, data, err)
			}
		}
		switch typ {
		case protocol.TypeUpdate:
			if m.Agg == nil || m.Agg.N != 1 || m.Seq != from+1 {
				t.Fatalf("SSE update seq %d agg %+v after seq %d: a gap or a duplicate", m.Seq, m.Agg, from)
			}
			from = m.Seq
			out = append(out, event{m.Epoch, m.Seq, m.TS, fmt.Sprint(m.Data)})
		case protocol.TypeReset, protocol.TypeSnapshot, protocol.TypeError:
			t.Fatalf("SSE got %s %s after seq %d, want only updates", typ, data, from)
		}
	}
	return out, nil
}
