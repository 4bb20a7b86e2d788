package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// command is a running tickstream command.
type command struct {
	cmd    *exec.Cmd
	addr   string
	stderr *syncBuffer
	exited chan struct{}
	err    error // set before exited is closed
	http   *http.Client
}

// startCommand runs bin on a free loopback address with args and waits
// until it answers /healthz.
func startCommand(t *testing.T, bin string, args ...string) *command {
	t.Helper()
	c := &command{
		addr: freeAddr(t), stderr: newSyncBuffer(), exited: make(chan struct{}),
		http: &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second},
	}
	// A fresh data directory per run (args may name another): nothing is
	// written into the repository.
	c.cmd = exec.Command(bin, append([]string{"--addr", c.addr, "--data-dir", t.TempDir()}, args...)...)
	c.cmd.Stderr = c.stderr
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.err = c.cmd.Wait(); close(c.exited) }()
	t.Cleanup(func() {
		c.http.CloseIdleConnections()
		select {
		case <-c.exited:
		default:
			_ = c.cmd.Process.Kill()
			<-c.exited
		}
	})
	checkFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		select {
		case <-c.exited:
			t.Fatalf("exited early: %v\n%s", c.err, c.stderr)
		default:
		}
		resp, err := c.http.Get("http://" + c.addr + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	return c
}

// publish posts ticks as NDJSON to /api/publish.
func (c *command) publish(ticks ...string) error {
	resp, err := c.http.Post("http://"+c.addr+"/api/publish", "application/x-ndjson", strings.NewReader(strings.Join(ticks, "\n")))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("publish: %s", resp.Status)
	}
	return nil
}

// metric returns the value of an unlabelled metric from /metrics.
func (c *command) metric(name string) (float64, error) {
	resp, err := c.http.Get("http://" + c.addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			var f float64
			_, err := fmt.Sscan(v, &f)
			return f, err
		}
	}
	return 0, fmt.Errorf("no metric %s", name)
}

// waitExit waits up to d for the command to exit and returns how it did.
func (c *command) waitExit(t *testing.T, d time.Duration, after string) error {
	t.Helper()
	select {
	case <-c.exited:
		return c.err
	case <-time.After(d):
		t.Fatalf("still running %v after %s\n%s", d, after, c.stderr)
		return nil
	}
}

// bigTick is one NDJSON tick of about 600 bytes.
func bigTick(topic string, i int) string {
	var b strings.Builder
	fmt.Fprintf(&b, `{"topic":%q,"price":%d.5,"size":1,"fields":{`, topic, 100+i%100)
	for j := range 28 {
		if j > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"f%02d":%d.%03d`, j, i, j)
	}
	b.WriteString("}}")
	return b.String()
}

// startStuckClient fills topic X in a loop and opens a WebSocket that
// subscribes to it at throttle 0 with a small receive buffer and never
// reads; it returns once the server sees that client lagging (its socket
// takes nothing more). The publisher stops when the test ends or the
// server stops answering.
func startStuckClient(t *testing.T, c *command) {
	t.Helper()
	if err := c.publish(bigTick("X", 0)); err != nil {
		t.Fatal(err)
	}
	d := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	stuck, _, err := websocket.Dial(ctx, "ws://"+c.addr+"/ws", &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: &http.Transport{DialContext: d.DialContext}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stuck.CloseNow() })
	if err := stuck.Write(ctx, websocket.MessageText, []byte(`{"op":"subscribe","id":1,"topics":["X"],"throttle_ms":0}`)); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	done := make(chan struct{})
	t.Cleanup(func() { close(stop); <-done })
	go func() {
		defer close(done)
		batch := make([]string, 100)
		for i := 1; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			for j := range batch {
				batch[j] = bigTick("X", i*len(batch)+j)
			}
			if c.publish(batch...) != nil {
				return // the server has stopped
			}
		}
	}()
	checkFor(t, 15*time.Second, 20*time.Millisecond, func() error {
		if n, err := c.metric("tickstream_lagging_clients"); err != nil || n < 1 {
			return fmt.Errorf("the stuck client is not lagging yet: %v %v", n, err)
		}
		return nil
	})
}

// readingClient opens a WebSocket that subscribes to BTC-USD and reads
// until the connection ends; the channel then gives its close error.
func readingClient(t *testing.T, c *command) <-chan error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws://"+c.addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.CloseNow() })
	if err := conn.Write(ctx, websocket.MessageText, []byte(`{"op":"subscribe","id":1,"topics":["BTC-USD"],"throttle_ms":100}`)); err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	acked := make(chan struct{})
	go func() {
		for {
			_, frame, err := conn.Read(context.Background())
			if err != nil {
				ended <- err
				return
			}
			if bytes.Contains(frame, []byte(`"type":"ack"`)) {
				close(acked)
			}
		}
	}()
	select {
	case <-acked:
	case err := <-ended:
		t.Fatalf("reading client ended before its ack: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("no ack for the reading client")
	}
	return ended
}

func TestCommandShutdown(t *testing.T) {
	t.Parallel()
	bin := buildCommand(t)

	// A WebSocket client whose socket is full holds a write for up to
	// write_timeout_ms; SIGTERM still ends the command within
	// shutdown_timeout_ms, and a client that reads gets 1001.
	t.Run("SIGTERM with a stuck client", func(t *testing.T) {
		t.Parallel()
		const timeout = time.Second
		c := startCommand(t, bin, "--write-timeout-ms", "10000", "--shutdown-timeout-ms", fmt.Sprint(timeout.Milliseconds()),
			"--send-buffer-bytes", "16384", "--max-pending-bytes", "65536", "--lag-throttle-ms", "100")
		startStuckClient(t, c)
		ended := readingClient(t, c)

		if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := c.waitExit(t, timeout+4*time.Second, "SIGTERM"); err != nil {
			t.Errorf("exit after SIGTERM: %v\n%s", err, c.stderr)
		}
		select {
		case err := <-ended:
			var ce websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != websocket.StatusGoingAway || !strings.Contains(ce.Reason, "retry_ms=") {
				t.Errorf("reading client ended with %v, want 1001 with retry_ms=", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("the reading client's connection is still open after the command exited")
		}
	})

	// The second Ctrl-C exits at once, while the first shutdown still
	// waits (here on a request that never completes, for up to a minute).
	t.Run("second signal exits at once", func(t *testing.T) {
		t.Parallel()
		c := startCommand(t, bin, "--shutdown-timeout-ms", "60000", "--send-buffer-bytes", "16384",
			"--max-pending-bytes", "65536", "--lag-throttle-ms", "100")
		startStuckClient(t, c)
		half, err := net.DialTimeout("tcp", c.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer half.Close()
		if _, err := half.Write([]byte("GET /healthz HTTP/1.1\r\nHost: x\r\n")); err != nil {
			t.Fatal(err)
		}

		if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		checkFor(t, 10*time.Second, 10*time.Millisecond, func() error {
			if !strings.Contains(c.stderr.String(), "shutting down") {
				return errors.New("no shutting down line yet")
			}
			return nil
		})
		select {
		case <-c.exited:
			t.Fatalf("exited before the second signal: %v\n%s", c.err, c.stderr)
		default:
		}
		if err := c.cmd.Process.Signal(os.Interrupt); err != nil {
			t.Fatal(err)
		}
		err = c.waitExit(t, 5*time.Second, "the second signal")
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 128+int(syscall.SIGINT) {
			t.Errorf("exit after the second signal: %v, want exit code %d\n%s", err, 128+int(syscall.SIGINT), c.stderr)
		}
	})
}
