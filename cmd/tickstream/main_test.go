package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/feeds/feedtest"
)

// checkFor polls fn until it returns nil or total has passed.
var checkFor = feedtest.CheckFor

// buildCommand builds the tickstream command into a temporary directory.
func buildCommand(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the command")
	}
	bin := filepath.Join(t.TempDir(), "tickstream")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// freeAddr returns a free loopback address below the ephemeral port range,
// so that no other test's listener or outgoing connection takes the port
// between this check and the command's own listen.
func freeAddr(t *testing.T) string {
	t.Helper()
	for range 100 {
		addr := fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(10000))
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			ln.Close()
			return addr
		}
	}
	t.Fatal("no free port in 20000-29999")
	return ""
}

// syncBuffer is a bytes.Buffer safe for the command's output goroutine.
type syncBuffer struct {
	mu  chan struct{}
	buf bytes.Buffer
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{mu: make(chan struct{}, 1)} }
func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu <- struct{}{}
	defer func() { <-b.mu }()
	return b.buf.Write(p)
}
func (b *syncBuffer) String() string {
	b.mu <- struct{}{}
	defer func() { <-b.mu }()
	return b.buf.String()
}

func TestCommand(t *testing.T) {
	t.Parallel()
	bin := buildCommand(t)

	t.Run("serves the simulator and stops on SIGTERM", func(t *testing.T) {
		t.Parallel()
		addr := freeAddr(t)
		cmd := exec.Command(bin, "--addr", addr, "--heartbeat-ms", "500", "--data-dir", t.TempDir())
		stderr := newSyncBuffer()
		cmd.Stderr = stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		var exitErr error
		go func() { exitErr = cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			select {
			case <-exited:
			default:
				_ = cmd.Process.Kill()
				<-exited
			}
		})
		client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
		defer client.CloseIdleConnections()
		base := "http://" + addr

		// /api/topics fills with the simulator's symbols.
		checkFor(t, 10*time.Second, 50*time.Millisecond, func() error {
			select {
			case <-exited:
				t.Fatalf("exited early: %v\n%s", exitErr, stderr)
			default:
			}
			resp, err := client.Get(base + "/api/topics")
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			var topics []struct {
				Topic string `json:"topic"`
				Seq   uint64 `json:"seq"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&topics); err != nil {
				return err
			}
			names := map[string]bool{}
			for _, tp := range topics {
				if tp.Seq > 0 {
					names[tp.Topic] = true
				}
			}
			for _, want := range []string{"BTC-USD", "ETH-USD", "AAPL"} {
				if !names[want] {
					return fmt.Errorf("no ticks of %s yet in %v", want, topics)
				}
			}
			return nil
		})

		// An SSE client (curl -N) gets live updates.
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/sse?topics=BTC-USD&throttle_ms=0", nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || !strings.HasPrefix(ct, "text/event-stream") {
			t.Fatalf("/sse: %d %s", resp.StatusCode, ct)
		}
		sc := bufio.NewScanner(resp.Body)
		updates := 0
		for updates < 3 && sc.Scan() {
			if line := sc.Text(); strings.HasPrefix(line, "data: ") && strings.Contains(line, `"type":"update"`) {
				updates++
			}
		}
		if updates < 3 {
			t.Fatalf("got %d SSE updates: %v\n%s", updates, sc.Err(), stderr)
		}

		recordFromCommand(t, bin, addr)

		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		// The open SSE stream ends with a retry: hint.
		var last string
		for sc.Scan() {
			if l := sc.Text(); l != "" {
				last = l
			}
		}
		resp.Body.Close()
		if !strings.HasPrefix(last, "retry: ") {
			t.Errorf("SSE stream ended with %q, want a retry: line", last)
		}
		select {
		case <-exited:
			if exitErr != nil {
				t.Errorf("exit after SIGTERM: %v\n%s", exitErr, stderr)
			}
		case <-time.After(8 * time.Second):
			t.Fatalf("still running 8 s after SIGTERM\n%s", stderr)
		}
	})

	t.Run("bad setting", func(t *testing.T) {
		t.Parallel()
		tests := []struct {
			name string
			args []string
			env  []string
			want string
		}{
			{"flag", []string{"--heartbeat-ms", "abc"}, nil, "heartbeat_ms"},
			{"env", nil, []string{"TICKSTREAM_HEARTBEAT_MS=abc"}, "heartbeat_ms"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				t.Parallel()
				ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
				defer cancel()
				cmd := exec.CommandContext(ctx, bin, append([]string{"--addr", "127.0.0.1:0", "--data-dir", t.TempDir()}, tt.args...)...)
				cmd.Env = append(cmd.Environ(), tt.env...)
				var stdout, stderr bytes.Buffer
				cmd.Stdout, cmd.Stderr = &stdout, &stderr
				err := cmd.Run()
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() == 0 {
					t.Fatalf("exit %v, want a non-zero exit code", err)
				}
				out := strings.TrimRight(stderr.String(), "\n")
				if strings.Contains(out, "\n") || !strings.Contains(out, tt.want) {
					t.Errorf("stderr %q: want one line naming %s", out, tt.want)
				}
			})
		}
	})
}

// recordFromCommand runs `tickstream record` against the server at addr
// until it has written a few ticks, stops it with SIGINT and checks that
// the file holds valid ticks in the replay format, in order per topic.
func recordFromCommand(t *testing.T, bin, addr string) {
	t.Helper()
	out := filepath.Join(t.TempDir(), "rec.ndjson")
	rec := exec.Command(bin, "record", "--topics", "BTC-USD,ETH-USD", "--out", out, "--url", "ws://"+addr+"/ws")
	stderr := newSyncBuffer()
	rec.Stderr = stderr
	if err := rec.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- rec.Wait() }()
	// The simulator's symbols tick at their own rates, with bursts and
	// lulls, so 20 lines may all be one symbol's: wait for both.
	checkFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		b, err := os.ReadFile(out)
		if n := bytes.Count(b, []byte("\n")); err != nil || n < 20 {
			return fmt.Errorf("%d lines recorded (%v)", n, err)
		}
		for _, topic := range []string{"BTC-USD", "ETH-USD"} {
			if !bytes.Contains(b, []byte(`"topic":"`+topic+`"`)) {
				return fmt.Errorf("no line of %s yet", topic)
			}
		}
		return nil
	})
	if err := rec.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("record exit: %v\n%s", err, stderr)
		}
	case <-time.After(5 * time.Second):
		_ = rec.Process.Kill()
		t.Fatalf("record still running 5 s after SIGINT\n%s", stderr)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	lastTS := map[string]int64{}
	for i, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		tick, err := feeds.ParseTick([]byte(line))
		if err != nil {
			t.Fatalf("line %d %q: %v", i+1, line, err)
		}
		if _, ok := tick.Get(feeds.FieldPrice); !ok || tick.TS < lastTS[tick.Topic] {
			t.Fatalf("line %d %q: want a price and ts not before %d", i+1, line, lastTS[tick.Topic])
		}
		lastTS[tick.Topic] = tick.TS
	}
	if len(lastTS) != 2 {
		t.Errorf("recorded topics %v, want BTC-USD and ETH-USD", lastTS)
	}
}
