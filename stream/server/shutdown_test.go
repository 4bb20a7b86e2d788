package server_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/protocol"
	"github.com/tickstream/tickstream/stream/server"
)

func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	e.publish("A", 1, f("price", 1))
	var ws []*wsClient
	for i := range 2 {
		c, _ := e.welcomeWS(t, wsOpts{})
		c.send(subscribeMsg{Op: "subscribe", ID: i, Topics: []string{"A"}, ThrottleMS: ms(0)})
		c.expect(protocol.TypeAck)
		c.expect(protocol.TypeSnapshot)
		ws = append(ws, c)
	}
	sse := e.openSSE(t, "/sse?topics=A", nil)
	sse.next(5 * time.Second)
	sse.expect(protocol.TypeWelcome)
	sse.expect(protocol.TypeAck)
	sse.expect(protocol.TypeSnapshot)
	// A client that does not read never answers the close frame: the server
	// waits for it a moment, long enough to see the draining state.
	e.dialWS(t, wsOpts{noReader: true})
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := e.bus.Subscribers(); n != 4 {
			return fmt.Errorf("%d subscribers", n)
		}
		return nil
	})

	took := make(chan time.Duration, 1)
	go func() { took <- e.shutdown() }()

	checkFor(t, 3*time.Second, 5*time.Millisecond, func() error {
		resp, err := e.http.Get(e.url("/readyz"))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			return fmt.Errorf("/readyz %d while draining", resp.StatusCode)
		}
		return nil
	})
	// New streams are refused while draining.
	e.expectAPIError(t, http.MethodGet, "/sse?topics=A", "", http.StatusServiceUnavailable, "shutting_down")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if c, resp, err := websocket.Dial(ctx, "ws://"+e.addr+"/ws", &websocket.DialOptions{HTTPClient: e.http}); err == nil {
		c.CloseNow()
		t.Errorf("a WebSocket was accepted while draining")
	} else if resp != nil && resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("WebSocket while draining: status %d, want 503", resp.StatusCode)
	}

	for i, c := range ws {
		ce := c.closeStatus(5 * time.Second)
		if ce.Code != websocket.StatusGoingAway || !strings.Contains(ce.Reason, "retry_ms=") {
			t.Errorf("client %d closed with %v, want 1001 with retry_ms=", i, ce)
		}
	}
	var last sseEvent
	for ev := range sse.events {
		last = ev
	}
	if last.Retry == "" || sse.err == nil {
		t.Errorf("SSE stream ended with %+v (%v), want a retry: line, then the end", last, sse.err)
	}
	select {
	case d := <-took:
		if d > 4*time.Second {
			t.Errorf("Shutdown took %v", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	if conn, err := net.DialTimeout("tcp", e.addr, time.Second); err == nil {
		conn.Close()
		t.Errorf("a connection was accepted after Shutdown")
	}
}

func TestAcceptTokenBucket(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(_ *stream.BusConfig, sc *server.Config) {
		sc.AcceptRate = 0.01
		sc.AcceptBurst = 2
	})
	e.welcomeWS(t, wsOpts{})
	sse := e.openSSE(t, "/sse", nil)
	sse.next(5 * time.Second)
	sse.expect(protocol.TypeWelcome)

	e.expectAPIError(t, http.MethodGet, "/sse", "", http.StatusServiceUnavailable, "busy")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws://"+e.addr+"/ws", &websocket.DialOptions{HTTPClient: e.http})
	if err == nil {
		c.CloseNow()
		t.Fatalf("a WebSocket past the token bucket was accepted")
	}
	if resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("WebSocket past the token bucket: %v, want 503 with Retry-After", resp)
	}
	// The API is not rate limited.
	if status, _ := e.get("/api/topics", nil); status != 200 {
		t.Errorf("/api/topics: %d", status)
	}
	if n := e.bus.Subscribers(); n != 2 {
		t.Errorf("%d subscribers, want the 2 admitted", n)
	}
}

// A client that stops reading, its socket full, must not hold shutdown up:
// with a write deadline longer than the shutdown timeout, Shutdown still
// returns within its timeout, every client that reads gets its close frame
// or retry: line, the stuck one is cut off and the listener stops.
func TestShutdownCutsOffStuckClient(t *testing.T) {
	t.Parallel()
	for _, transport := range []string{"ws", "sse"} {
		t.Run(transport, func(t *testing.T) {
			t.Parallel()
			e := startServer(t, func(bc *stream.BusConfig, sc *server.Config) {
				bc.MaxPendingBytes = 64 << 10
				bc.LagThrottle = 100 * time.Millisecond
				sc.WriteTimeout = 10 * time.Second
				sc.SendBufferBytes = 16 << 10 // fills sooner
			})
			busy := []string{"B0", "B1", "B2", "B3"}
			for _, tp := range busy {
				e.publish(tp, 1, f("price", 1))
			}
			e.publish("N", 1, f("price", 1))

			// The stuck client subscribes to the busy topics and never reads.
			switch transport {
			case "ws":
				stuck := e.dialWS(t, wsOpts{noReader: true, rcvBuf: 4096})
				stuck.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: busy, ThrottleMS: ms(0)})
			case "sse":
				conn := dialSmallRcvBuf(t, e.addr)
				if _, err := conn.Write([]byte("GET /sse?topics=" + strings.Join(busy, ",") + "&throttle_ms=0 HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
					t.Fatal(err)
				}
			}
			pub := startPublisher(t, e.bus, busy, 10, 5*time.Millisecond, 10_000_000)
			defer pub.finish()
			// Its queue passes the bound only once its socket takes nothing:
			// then it steps down. The publisher keeps going, so that its
			// writer stays stuck on the full socket.
			checkFor(t, 15*time.Second, 5*time.Millisecond, func() error {
				if n := e.metric("tickstream_lagging_clients"); n < 1 {
					return fmt.Errorf("the stuck client is not lagging yet (%d ticks, pending %v bytes)", pub.n.Load(), e.metric("tickstream_pending_bytes"))
				}
				return nil
			})

			// Clients that read, on a quiet topic.
			ws, _ := e.welcomeWS(t, wsOpts{})
			ws.send(subscribeMsg{Op: "subscribe", ID: 1, Topics: []string{"N"}, ThrottleMS: ms(0)})
			ws.expect(protocol.TypeAck)
			ws.expect(protocol.TypeSnapshot)
			sse := e.openSSE(t, "/sse?topics=N", nil)
			sse.next(5 * time.Second)
			sse.expect(protocol.TypeWelcome)
			sse.expect(protocol.TypeAck)
			sse.expect(protocol.TypeSnapshot)

			const timeout = time.Second
			if took := e.shutdownWithin(timeout); took > timeout+2*time.Second {
				t.Errorf("Shutdown took %v with a %v timeout", took, timeout)
			}
			if ce := ws.closeStatus(5 * time.Second); ce.Code != websocket.StatusGoingAway || !strings.Contains(ce.Reason, "retry_ms=") {
				t.Errorf("WebSocket client closed with %v, want 1001 with retry_ms=", ce)
			}
			var last sseEvent
			for ev := range sse.events {
				last = ev
			}
			if last.Retry == "" {
				t.Errorf("SSE stream ended with %+v (%v), want a retry: line", last, sse.err)
			}
			if conn, err := net.DialTimeout("tcp", e.addr, time.Second); err == nil {
				conn.Close()
				t.Errorf("a connection was accepted after Shutdown")
			}
			checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
				if n := e.bus.Subscribers(); n != 0 {
					return fmt.Errorf("%d subscribers after Shutdown", n)
				}
				return nil
			})
		})
	}
}

// dialSmallRcvBuf opens a TCP connection whose receive buffer is small
// (set before connecting, so that the TCP window stays small).
func dialSmallRcvBuf(t testing.TB, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
	}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// A connection whose client never sends a request (a browser's preconnect)
// does not hold Shutdown up: fasthttp counts it as busy from the start.
func TestShutdownClosesSilentConnection(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	conn, err := net.DialTimeout("tcp", e.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The server has accepted it once it answers a request on another one.
	if status, _ := e.get("/healthz", nil); status != 200 {
		t.Fatalf("/healthz: %d", status)
	}
	e.shutdown() // fails if Shutdown does not succeed within its timeout
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the silent connection is still open after Shutdown: %v", err)
	}
}
