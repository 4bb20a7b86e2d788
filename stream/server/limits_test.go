package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/protocol"
	"github.com/tickstream/tickstream/stream/server"
)

// tryWS dials /ws with header and returns the HTTP status of the answer
// (101 when upgraded) and the error body; an upgraded connection is
// returned open (closed at cleanup).
func (e *env) tryWS(t testing.TB, header http.Header) (int, apiErr, *websocket.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, "ws://"+e.addr+"/ws", &websocket.DialOptions{HTTPHeader: header})
	if err == nil {
		t.Cleanup(func() { _ = conn.CloseNow() })
		return http.StatusSwitchingProtocols, apiErr{}, conn
	}
	if resp == nil {
		t.Fatalf("dial /ws: %v", err)
	}
	var ae apiErr
	raw, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(raw, &ae)
	return resp.StatusCode, ae, nil
}

// trySSE opens path and returns the status and error body; a 200 stream
// is closed at cleanup.
func (e *env) trySSE(t testing.TB, path string, header http.Header) (int, apiErr) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url(path), nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := e.http.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", path, err)
	}
	if resp.StatusCode == http.StatusOK {
		t.Cleanup(func() { cancel(); resp.Body.Close() })
		return resp.StatusCode, apiErr{}
	}
	defer cancel()
	defer resp.Body.Close()
	var ae apiErr
	raw, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(raw, &ae)
	return resp.StatusCode, ae
}

func origin(o string) http.Header { return http.Header{"Origin": {o}} }

// TestAllowedOrigins: /ws and /sse refuse a browser origin that is not
// allowed with 403 forbidden_origin; the server's own host, localhost and
// clients that send no Origin are allowed by default; * allows any.
func TestAllowedOrigins(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	for _, tt := range []struct {
		origin string
		ok     bool
	}{
		{"", true},
		{"http://" + e.addr, true},
		{"http://localhost:5173", true},
		{"https://127.0.0.1", true},
		{"https://evil.example", false},
		{"http://localhost.evil.example", false},
		{"null", false},
	} {
		var h http.Header
		if tt.origin != "" {
			h = origin(tt.origin)
		}
		status, ae, _ := e.tryWS(t, h)
		if tt.ok != (status == http.StatusSwitchingProtocols) || !tt.ok && (status != http.StatusForbidden || ae.Error != server.CodeForbiddenOrigin) {
			t.Errorf("/ws with Origin %q: %d %+v, want allowed %v (else 403 %s)", tt.origin, status, ae, tt.ok, server.CodeForbiddenOrigin)
		}
		status, ae = e.trySSE(t, "/sse?topics=A", h)
		if tt.ok != (status == http.StatusOK) || !tt.ok && (status != http.StatusForbidden || ae.Error != server.CodeForbiddenOrigin) {
			t.Errorf("/sse with Origin %q: %d %+v, want allowed %v (else 403 %s)", tt.origin, status, ae, tt.ok, server.CodeForbiddenOrigin)
		}
	}
	if n := e.metric("tickstream_limited_total"); n != 6 {
		t.Errorf("tickstream_limited_total = %v, want 6", n)
	}

	o, err := server.ParseOrigins("https://app.example.com")
	if err != nil {
		t.Fatal(err)
	}
	e2 := startServer(t, func(_ *stream.BusConfig, sc *server.Config) { sc.AllowedOrigins = o })
	if status, _, _ := e2.tryWS(t, origin("https://app.example.com")); status != http.StatusSwitchingProtocols {
		t.Errorf("listed origin refused: %d", status)
	}
	if status, _, _ := e2.tryWS(t, origin("http://localhost:5173")); status != http.StatusForbidden {
		t.Errorf("localhost not in the list, allowed: %d", status)
	}
	any, _ := server.ParseOrigins("*")
	e3 := startServer(t, func(_ *stream.BusConfig, sc *server.Config) { sc.AllowedOrigins = any })
	if status, _, _ := e3.tryWS(t, origin("https://evil.example")); status != http.StatusSwitchingProtocols {
		t.Errorf("* refused an origin: %d", status)
	}
}

// TestCORSForAPI: /api answers CORS for allowed origins only, and refuses
// a state-changing request from another origin.
func TestCORSForAPI(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	do := func(method, path, org, ct, body string) *http.Response {
		req, _ := http.NewRequest(method, e.url(path), strings.NewReader(body))
		req.Header.Set("Origin", org)
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		if method == http.MethodOptions {
			req.Header.Set("Access-Control-Request-Method", "POST")
		}
		resp, err := e.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	resp := do(http.MethodOptions, "/api/publish", "http://localhost:5173", "", "")
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Access-Control-Allow-Origin") != "http://localhost:5173" || !strings.Contains(resp.Header.Get("Access-Control-Allow-Headers"), "Content-Type") {
		t.Errorf("preflight from an allowed origin: %d %v", resp.StatusCode, resp.Header)
	}
	if resp := do(http.MethodGet, "/api/topics", "http://localhost:5173", "", ""); resp.Header.Get("Access-Control-Allow-Origin") != "http://localhost:5173" {
		t.Errorf("GET from an allowed origin has no CORS header: %v", resp.Header)
	}
	if resp := do(http.MethodGet, "/api/topics", "https://evil.example", "", ""); resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("GET from another origin got CORS headers: %v", resp.Header)
	}
	if resp := do(http.MethodPost, "/api/publish", "https://evil.example", "application/json", `{"topic":"EVIL","price":1}`); resp.StatusCode != http.StatusForbidden {
		t.Errorf("publish from another origin: %d, want 403", resp.StatusCode)
	}
	if e.bus.HasTopic("EVIL") {
		t.Error("a cross-origin publish landed")
	}
}

// TestConnectionLimits: streams per client address and in total are
// bounded (429 too_many_connections), a closed stream frees its place, and
// each address has its own connection bucket (429 busy).
func TestConnectionLimits(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(_ *stream.BusConfig, sc *server.Config) { sc.MaxConnsPerIP = 3 })
	var conns []*websocket.Conn
	for range 3 {
		status, _, c := e.tryWS(t, nil)
		if status != http.StatusSwitchingProtocols {
			t.Fatalf("stream within the limit refused: %d", status)
		}
		conns = append(conns, c)
	}
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := e.bus.Subscribers(); n != 3 {
			return errorf("%d subscribers", n)
		}
		return nil
	})
	if status, ae, _ := e.tryWS(t, nil); status != http.StatusTooManyRequests || ae.Error != server.CodeTooManyConns {
		t.Fatalf("4th /ws: %d %+v, want 429 %s", status, ae, server.CodeTooManyConns)
	}
	if status, ae := e.trySSE(t, "/sse?topics=A", nil); status != http.StatusTooManyRequests || ae.Error != server.CodeTooManyConns {
		t.Fatalf("4th stream over SSE: %d %+v, want 429 %s", status, ae, server.CodeTooManyConns)
	}
	_ = conns[0].CloseNow()
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if status, _, _ := e.tryWS(t, nil); status != http.StatusSwitchingProtocols {
			return errorf("still refused: %d", status)
		}
		return nil
	})

	total := startServer(t, func(_ *stream.BusConfig, sc *server.Config) { sc.MaxConns = 1 })
	total.tryWS(t, nil)
	checkFor(t, 5*time.Second, 5*time.Millisecond, func() error {
		if n := total.bus.Subscribers(); n != 1 {
			return errorf("%d subscribers", n)
		}
		return nil
	})
	if status, ae := total.trySSE(t, "/sse?topics=A", nil); status != http.StatusTooManyRequests || ae.Error != server.CodeTooManyConns {
		t.Fatalf("stream over max_conns: %d %+v", status, ae)
	}

	bucket := startServer(t, func(_ *stream.BusConfig, sc *server.Config) {
		sc.AcceptRatePerIP, sc.AcceptBurstPerIP = 0.001, 2
	})
	bucket.tryWS(t, nil)
	bucket.tryWS(t, nil)
	if status, ae, _ := bucket.tryWS(t, nil); status != http.StatusTooManyRequests || ae.Error != server.CodeBusy {
		t.Fatalf("3rd connection with a per-address burst of 2: %d %+v, want 429 busy", status, ae)
	}
	if n := bucket.metric("tickstream_limited_total"); n != 1 {
		t.Errorf("tickstream_limited_total = %v, want 1", n)
	}
}

// TestMessageRateLimited: past max_msgs_per_sec a client's messages are
// dropped and it gets a rate_limited error, staying connected; a client
// that keeps on is closed with 1008.
func TestMessageRateLimited(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(_ *stream.BusConfig, sc *server.Config) { sc.MaxMsgsPerSec = 5 })
	c, _ := e.welcomeWS(t, wsOpts{})
	write := func(i int) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return c.conn.Write(ctx, websocket.MessageText, []byte(`{"op":"ping","id":`+itoa(i)+`}`))
	}
	// A burst a little over the rate's burst (10): some dropped, told once.
	for i := range 15 {
		if err := write(i); err != nil {
			t.Fatal(err)
		}
	}
	pongs, limited := 0, 0
	for pongs+limited < 11 {
		m := c.next(5 * time.Second)
		switch {
		case m.Type == protocol.TypePong:
			pongs++
		case m.Type == protocol.TypeError && m.Code == protocol.CodeRateLimited:
			limited++
		}
	}
	if limited != 1 || pongs < 10 {
		t.Fatalf("%d pongs and %d rate_limited errors, want 10 or more and 1", pongs, limited)
	}
	// A flood: closed with 1008.
	for i := range 500 {
		if write(i) != nil {
			break
		}
	}
	if ce := c.closeStatus(10 * time.Second); ce.Code != websocket.StatusPolicyViolation || !strings.Contains(ce.Reason, "rate") {
		t.Fatalf("close %v, want 1008 naming the rate limit", ce)
	}
	if n := e.metric("tickstream_limited_total"); n < 5 {
		t.Errorf("tickstream_limited_total = %v, want every drop counted", n)
	}
}

// TestSSEPatternsCountedBeforeStream: an SSE URL whose patterns expand
// past max_topics_per_conn is refused with 400 before the stream starts.
func TestSSEPatternsCountedBeforeStream(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(bc *stream.BusConfig, _ *server.Config) { bc.MaxTopicsPerSubscriber = 4 })
	for _, name := range []string{"P.1", "P.2", "P.3", "P.4"} {
		e.publish(name, 1, f("price", 1))
	}
	if status, ae := e.trySSE(t, "/sse?topics=P.*", nil); status != http.StatusBadRequest || ae.Error != protocol.CodeTooManyTopics {
		t.Fatalf("P.* over 4 topics with a limit of 4: %d %+v, want 400 %s", status, ae, protocol.CodeTooManyTopics)
	}
	if status, _ := e.trySSE(t, "/sse?topics=P.1,P.2,P.3,P.4", nil); status != http.StatusOK {
		t.Fatalf("4 named topics with a limit of 4: %d", status)
	}
}

// TestFrameOverHardCapCloses1009: a client message over the 1 MiB hard
// cap closes the connection with 1009 (SPEC).
func TestFrameOverHardCapCloses1009(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	c, _ := e.welcomeWS(t, wsOpts{})
	big := []byte(`{"op":"ping","pad":"` + strings.Repeat("x", 1<<20) + `"}`)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = c.conn.Write(ctx, websocket.MessageText, big)
	if ce := c.closeStatus(10 * time.Second); ce.Code != websocket.StatusMessageTooBig {
		t.Fatalf("close %v, want 1009", ce)
	}
	checkFor(t, 5*time.Second, 10*time.Millisecond, func() error {
		if n := e.metric("tickstream_limited_total"); n != 1 {
			return errorf("tickstream_limited_total = %v, want 1", n)
		}
		return nil
	})
}

// TestSlowlorisHeadersCut: a client that sends request headers and then
// stalls is disconnected after read_timeout_ms.
func TestSlowlorisHeadersCut(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(_ *stream.BusConfig, sc *server.Config) { sc.ReadTimeout = 300 * time.Millisecond })
	for _, path := range []string{"/healthz", "/sse?topics=A"} {
		conn, err := net.DialTimeout("tcp", e.addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = conn.Write([]byte("GET " + path + " HTTP/1.1\r\nHost: x\r\nX-Slow: "))
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.ReadAll(conn)
		var ne net.Error
		if errorsAs(err, &ne) && ne.Timeout() {
			t.Errorf("%s: the server kept a stalled request open 10 s", path)
		}
		conn.Close()
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

func errorsAs(err error, target any) bool { return errors.As(err, target) }

// TestOversizedRequestGetsItsAnswer: a request refused before it was read
// whole (a URL past the header buffer: 431; a body past max_publish_bytes:
// 413) still gets its answer. Closing a socket with unread input makes the
// kernel send a reset, and an HTTP client still writing the request then
// fails with "connection reset by peer" instead of reading the answer, so
// the server reads and drops the rest of the request for a moment before
// it closes.
func TestOversizedRequestGetsItsAnswer(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(_ *stream.BusConfig, sc *server.Config) { sc.MaxPublishBytes = 64 << 10 })
	topics := make([]string, 1500)
	for i := range topics {
		topics[i] = fmt.Sprintf("LONG.TOPIC.%05d", i)
	}
	body := strings.Repeat(`{"topic":"X","price":1}`+"\n", 40_000) // about 1 MB
	hc := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	for _, tc := range []struct {
		name string
		req  func() (*http.Response, error)
		want int
	}{
		{"URL past the header buffer", func() (*http.Response, error) {
			return hc.Get(e.url("/sse?topics=" + strings.Join(topics, ",")))
		}, http.StatusRequestHeaderFieldsTooLarge},
		{"body past the limit", func() (*http.Response, error) {
			return hc.Post(e.url("/api/publish"), "application/x-ndjson", strings.NewReader(body))
		}, http.StatusRequestEntityTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for round := range 5 {
				resp, err := tc.req()
				if err != nil {
					t.Fatalf("round %d: no answer: %v", round, err)
				}
				resp.Body.Close()
				if resp.StatusCode != tc.want {
					t.Fatalf("round %d: status %d, want %d", round, resp.StatusCode, tc.want)
				}
			}
		})
	}
}
