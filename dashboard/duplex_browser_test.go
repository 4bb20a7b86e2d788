package dashboard_test

import (
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// fallbackProxy is a reverse proxy on loopback in front of the server that
// can refuse WebSocket upgrades (as a proxy without WebSocket support
// does) and buffer /sse responses until the stream ends (as a buffering
// proxy does: the event stream never delivers).
type fallbackProxy struct {
	addr      string
	blockWS   atomic.Bool
	bufferSSE atomic.Bool
	wsBlocked atomic.Int64
	sseHeld   atomic.Int64
	polls     atomic.Int64
}

func newFallbackProxy(t *testing.T, target string) *fallbackProxy {
	t.Helper()
	up, _ := url.Parse("http://" + target)
	rp := httputil.NewSingleHostReverseProxy(up)
	rp.FlushInterval = -1
	p := &fallbackProxy{}
	client := &http.Client{}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case p.blockWS.Load() && strings.EqualFold(r.Header.Get("Upgrade"), "websocket"):
			p.wsBlocked.Add(1)
			http.Error(w, "no WebSocket through this proxy", http.StatusForbidden)
			return
		case p.bufferSSE.Load() && r.URL.Path == "/sse":
			p.sseHeld.Add(1)
			req, _ := http.NewRequestWithContext(r.Context(), r.Method, "http://"+target+r.URL.RequestURI(), nil)
			req.Header = r.Header.Clone()
			res, err := client.Do(req)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			defer res.Body.Close()
			body, err := io.ReadAll(res.Body) // until the stream ends
			if err != nil {
				return // the browser gave up
			}
			for k, v := range res.Header {
				w.Header()[k] = v
			}
			w.WriteHeader(res.StatusCode)
			_, _ = w.Write(body)
			return
		case r.URL.Path == "/poll":
			p.polls.Add(1)
		}
		rp.ServeHTTP(w, r)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	p.addr = ln.Addr().String()
	return p
}

// TestTransportFallback: through a proxy that refuses WebSocket the page
// streams over SSE; through one that also buffers SSE it long-polls. The
// badge names the transport in use, and the board keeps moving on each.
func TestTransportFallback(t *testing.T) {
	ts := startServer(t, false, nil)
	px := newFallbackProxy(t, ts.addr)
	px.blockWS.Store(true)
	b := newBrowser(t, 1280, 800)
	b.do(t, chromedp.Navigate("http://"+px.addr+"/"))
	b.waitFor(t, "a live SSE badge", 30*time.Second, `document.getElementById('badge').dataset.state === 'live' && document.getElementById('badge').dataset.transport === 'sse'`)
	if _, _, label := b.badge(t); !strings.Contains(label, "SSE") {
		t.Errorf("badge says %q, want it to name SSE", label)
	}
	waitBoardMoves(t, b)
	if px.wsBlocked.Load() == 0 {
		t.Fatal("the page never tried WebSocket")
	}

	// Now SSE is buffered too: a fresh page goes WebSocket → SSE → poll.
	px.bufferSSE.Store(true)
	blocked := px.wsBlocked.Load()
	b.do(t, chromedp.Reload())
	b.waitFor(t, "a live long-poll badge", 45*time.Second, `document.getElementById('badge').dataset.state === 'live' && document.getElementById('badge').dataset.transport === 'poll'`)
	if _, _, label := b.badge(t); !strings.Contains(label, "Long-poll") {
		t.Errorf("badge says %q, want it to name long-polling", label)
	}
	if px.wsBlocked.Load() == blocked || px.sseHeld.Load() == 0 {
		t.Fatalf("the page did not try WebSocket (%d refused) and SSE (%d held) first", px.wsBlocked.Load()-blocked, px.sseHeld.Load())
	}
	waitBoardMoves(t, b)
	st := b.stats(t)
	if st.Fallbacks < 1 || st.Gaps != 0 || st.Bad != 0 {
		t.Errorf("stats = %+v, want a fallback, no gaps or bad messages", st)
	}
	if px.polls.Load() < 2 {
		t.Errorf("%d polls", px.polls.Load())
	}
	b.checkNoErrors(t)
}

// cutProxy forwards TCP connections to the server; cut closes every open
// one, while refusing it closes new ones at once, and while muted it
// drops what the server sends (the server's acks are lost on the way).
type cutProxy struct {
	ln       net.Listener
	target   string
	refusing atomic.Bool
	muted    atomic.Bool
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if p.refusing.Load() {
				c.Close()
				continue
			}
			p.wg.Add(1)
			go func() { defer p.wg.Done(); p.serve(c) }()
		}
	}()
	t.Cleanup(func() { ln.Close(); p.cut(); p.wg.Wait() })
	return p
}

func (p *cutProxy) track(cs ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
}

func (p *cutProxy) serve(c net.Conn) {
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.track(c, s)
	done := make(chan struct{}, 2)
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := s.Read(buf)
			if n > 0 && !p.muted.Load() {
				if _, werr := c.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		done <- struct{}{}
	}()
	go func() { _, _ = io.Copy(s, c); done <- struct{}{} }()
	<-done
	c.Close()
	s.Close()
	<-done
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, s)
	p.mu.Unlock()
}

// cut closes every connection through the proxy.
func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}

// TestPublishExactlyOnce: the page publishes a steady burst of ticks with
// publish(); the connection is cut in the middle of it, then refused for
// a while (the calls queue and the badge shows how many), then let
// through: every call is acknowledged and every tick is on the server
// exactly once, counted by the topic's seq.
func TestPublishExactlyOnce(t *testing.T) {
	ts := startServer(t, false, nil)
	px := newCutProxy(t, ts.addr)
	b := newBrowser(t, 1280, 800)
	b.do(t, chromedp.Navigate("http://"+px.ln.Addr().String()+"/"))
	b.waitFor(t, "a live WebSocket badge", 30*time.Second, `document.getElementById('badge').dataset.state === 'live' && document.getElementById('badge').dataset.transport === 'ws'`)
	b.do(t, chromedp.Evaluate[chromedp.Void](`(() => {
		const p = window.__pub = { sent: 0, acked: 0, dups: 0, failed: [], stop: false, finished: false };
		const c = __tickstream.client;
		(async () => {
			const all = [];
			while (!p.stop) {
				for (let k = 0; k < 5; k++) {
					const i = p.sent++;
					all.push(c.publish({ topic: 'PUB-X', ts: Date.now(), price: 100 + (i % 50), size: 1 }).then(
						(a) => { p.acked++; p.dups += a.duplicates || 0; if (a.accepted !== 1) p.failed.push(JSON.stringify(a)); },
						(e) => p.failed.push(String(e))));
				}
				await new Promise((r) => setTimeout(r, 10));
			}
			await Promise.all(all);
			p.finished = true;
		})();
	})()`))
	seq := func() uint64 {
		for _, ti := range ts.bus.Topics() {
			if ti.Topic == "PUB-X" {
				return ti.Seq
			}
		}
		return 0
	}
	waitSeq := func(what string, min uint64) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for seq() < min {
			if time.Now().After(deadline) {
				var p any
				b.eval(t, `window.__pub`, &p)
				t.Fatalf("waiting for %s: seq %d, want %d; page: %v; status: %v", what, seq(), min, p, b.consoleErrors())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitSeq("the first ticks", 100)
	// The server publishes while its acks are lost; then the connection
	// is cut mid-burst: those calls are sent again with the same ids.
	px.muted.Store(true)
	waitSeq("ticks whose acks are lost", seq()+50)
	px.cut()
	px.muted.Store(false)
	waitSeq("ticks after the cut", seq()+200)
	// Offline for a while: publish() calls queue, and the page says so.
	px.refusing.Store(true)
	px.cut()
	b.waitFor(t, "queued publishes on the badge", 30*time.Second, `Number(document.getElementById('badge').dataset.queued) > 20 && /queued/.test(document.getElementById('badge').textContent)`)
	px.refusing.Store(false)
	waitSeq("ticks after the outage", seq()+200)
	b.do(t, chromedp.Evaluate[chromedp.Void](`window.__pub.stop = true`))
	b.waitFor(t, "every publish() acknowledged", 60*time.Second, `window.__pub.finished`)
	var p struct {
		Sent, Acked, Dups int
		Failed            []string
	}
	b.eval(t, `window.__pub`, &p)
	if len(p.Failed) > 0 || p.Acked != p.Sent {
		t.Fatalf("page: %+v: want every publish acknowledged with 1 accepted", p)
	}
	if got := seq(); got != uint64(p.Sent) {
		t.Fatalf("PUB-X is at seq %d after %d publish() calls: want each tick exactly once", got, p.Sent)
	}
	b.waitFor(t, "an empty queue on the badge", 10*time.Second, `document.getElementById('badge').dataset.queued === '0' && !/queued/.test(document.getElementById('badge').textContent)`)
	if p.Dups == 0 {
		t.Errorf("no resend was answered from the idempotency window: the lost acks were not tested")
	}
	t.Logf("%d ticks published once each, %d resends answered from the window", p.Sent, p.Dups)
}
