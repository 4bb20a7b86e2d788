package bench

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	_ "github.com/tickstream/tickstream/feeds/sim"
	"github.com/tickstream/tickstream/stream/app"
)

// startTickstream runs a real tickstream (app.RunListener) on
// 127.0.0.1:0 with one quiet sim feed whose topic the benchmark does not
// use, and returns its base URL. It stops when the test ends.
func startTickstream(t *testing.T) string {
	t.Helper()
	cfgPath := filepath.Join(t.TempDir(), "tickstream.yaml")
	yaml := "feeds:\n  - name: quiet\n    type: sim\n    options: {symbols: [SIM-QUIET], rate: 1}\n"
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := app.LoadSettings([]string{"--config", cfgPath, "--accept-rate", "10000", "--accept-burst", "10000",
		"--accept-rate-per-ip", "10000", "--accept-burst-per-ip", "10000", "--max-conns-per-ip", "100000", "--shutdown-timeout-ms", "3000", "--data-dir", ""},
		func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatalf("settings: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- app.RunListener(ctx, s, ln, slog.New(slog.NewTextHandler(io.Discard, nil))) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("RunListener: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("tickstream did not stop within 10s")
		}
	})
	return "http://" + ln.Addr().String()
}

func TestEndToEndTickstream(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a real server and generator for a few seconds")
	}
	url := startTickstream(t)
	for _, tc := range []struct {
		name      string
		transport string
		throttle  int
	}{
		{"ws throttle 0", "ws", 0},
		{"ws throttle 50ms", "ws", 50},
		{"sse throttle 0", "sse", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
			defer cancel()
			res, err := Run(ctx, Config{
				URL: url, Transport: tc.transport, Clients: 8, Topics: 4, PerClient: 2,
				TopicPrefix: "e2e." + tc.transport + ".", ThrottleMS: tc.throttle, Rate: 400,
				Duration: 2 * time.Second, Drain: 3 * time.Second, PID: os.Getpid(), Label: tc.name,
			})
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if testing.Verbose() {
				WriteTable(os.Stderr, res, true)
			}
			if res.Ready != 8 || res.Connected != 8 || res.ClientErrors != 0 {
				t.Fatalf("ready %d connected %d errors %d (%s)", res.Ready, res.Connected, res.ClientErrors, res.FirstError)
			}
			if res.Published < 600 || res.Refused != 0 || res.PubFailed != 0 {
				t.Fatalf("published %d refused %d failed %d (%s)", res.Published, res.Refused, res.PubFailed, res.FirstError)
			}
			// Every client subscribes to 2 of 4 topics: it should see half
			// of every tick.
			if want := uint64(res.Published) * 8 * 2 / 4; res.Expected != want || res.Covered != want {
				t.Errorf("expected %d covered %d, want both %d", res.Expected, res.Covered, want)
			}
			if res.Missing != 0 || res.Dup != 0 || res.OutOfOrder != 0 || res.CtrMismatch != 0 {
				t.Errorf("missing %d dup %d out-of-order %d ctr mismatch %d", res.Missing, res.Dup, res.OutOfOrder, res.CtrMismatch)
			}
			if res.P50ms <= 0 || res.P99ms < res.P50ms || res.MaxMs < res.P99ms {
				t.Errorf("latency p50 %v p99 %v max %v", res.P50ms, res.P99ms, res.MaxMs)
			}
			if tc.throttle == 0 && res.Delivered != res.Covered {
				t.Errorf("throttle 0: %d updates for %d ticks", res.Delivered, res.Covered)
			}
			if tc.throttle > 0 && res.Delivered >= res.Covered {
				t.Errorf("throttle %d: %d updates for %d ticks, want coalescing", tc.throttle, res.Delivered, res.Covered)
			}
			if !res.ServerMeasured || res.ServerRSS <= 0 || res.ServerCPUSec <= 0 {
				t.Errorf("process not measured: %+v", res)
			}
		})
	}
}

func TestIdleMode(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a real server")
	}
	url := startTickstream(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	res, err := Run(ctx, Config{URL: url, Clients: 20, Idle: true, IdleTopic: "e2e.idle", Duration: 300 * time.Millisecond, PID: os.Getpid()})
	if err != nil {
		t.Fatal(err)
	}
	if res.Mode != "idle" || res.Ready != 20 || res.ClientErrors != 0 || res.Delivered != 0 {
		t.Fatalf("idle: %+v", res)
	}
}

func TestRefusesNonLoopback(t *testing.T) {
	_, err := Run(t.Context(), Config{URL: "http://192.0.2.1:8080", Clients: 1})
	if err == nil {
		t.Fatal("a non-loopback target was accepted")
	}
}
