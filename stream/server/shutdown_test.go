package server_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
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
