package server_test

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/protocol"
	"github.com/tickstream/tickstream/stream/server"
)

type publishAnswer struct {
	Accepted int `json:"accepted"`
	Refused  []struct {
		Line  int    `json:"line"`
		Error string `json:"error"`
	} `json:"refused"`
}

// TestPublishNeedsJSONContentType: a body a web page could send cross-site
// without a preflight (text/plain, a form) is refused with 415 and counted.
func TestPublishNeedsJSONContentType(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	body := []byte(`{"topic":"CT","price":1}`)
	for _, ct := range []string{"", "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"} {
		var ae apiErr
		status, raw := e.post("/api/publish", ct, body, &ae)
		if status != http.StatusUnsupportedMediaType || ae.Error != server.CodeUnsupportedMedia || !strings.Contains(ae.Message, "application/json") {
			t.Errorf("Content-Type %q: got %d %s, want 415 %s naming the JSON types", ct, status, raw, server.CodeUnsupportedMedia)
		}
	}
	if e.bus.HasTopic("CT") {
		t.Fatal("a refused publish created its topic")
	}
	for _, ct := range []string{"application/json", "application/json; charset=utf-8", "application/x-ndjson"} {
		var res publishAnswer
		if status, raw := e.post("/api/publish", ct, body, &res); status != http.StatusOK || res.Accepted != 1 {
			t.Errorf("Content-Type %q: got %d %s, want 200 with the tick accepted", ct, status, raw)
		}
	}
	if n := e.metric("tickstream_limited_total"); n != 5 {
		t.Errorf("tickstream_limited_total = %v, want 5", n)
	}
}

// TestPublishFromAllowedAddressesOnly: with auth off, only the addresses
// of publish_from may publish; others get 403 forbidden_publisher saying
// how to turn auth on.
func TestPublishFromAllowedAddressesOnly(t *testing.T) {
	t.Parallel()
	from, err := server.ParsePublishFrom("10.0.0.0/8, 192.168.1.7")
	if err != nil {
		t.Fatal(err)
	}
	e := startServer(t, func(_ *stream.BusConfig, sc *server.Config) { sc.PublishFrom = from })
	var ae apiErr
	status, raw := e.post("/api/publish", "application/json", []byte(`{"topic":"PF","price":1}`), &ae)
	if status != http.StatusForbidden || ae.Error != server.CodeForbiddenPublisher || !strings.Contains(ae.Message, "auth") {
		t.Fatalf("publish from 127.0.0.1 with publish_from 10.0.0.0/8: got %d %s, want 403 %s mentioning auth", status, raw, server.CodeForbiddenPublisher)
	}
	if e.bus.HasTopic("PF") {
		t.Fatal("a refused publish created its topic")
	}
	if n := e.metric("tickstream_limited_total"); n != 1 {
		t.Errorf("tickstream_limited_total = %v, want 1", n)
	}
}

// TestPublishThroughLocalProxyRefused: a request a proxy on the same
// machine forwarded is not local: the default publish_from refuses it.
func TestPublishThroughLocalProxyRefused(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	for _, h := range []string{"X-Forwarded-For", "Forwarded", "X-Real-IP"} {
		req, _ := http.NewRequest(http.MethodPost, e.url("/api/publish"), strings.NewReader(`{"topic":"PX","price":1}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set(h, "203.0.113.9")
		resp, err := e.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("publish with %s from loopback: %d, want 403", h, resp.StatusCode)
		}
	}
	if e.bus.HasTopic("PX") {
		t.Fatal("a forwarded publish landed")
	}
}

func TestParsePublishFrom(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		setting string
		ip      string
		want    bool
	}{
		{"loopback", "127.0.0.1", true},
		{"loopback", "127.3.2.1", true},
		{"loopback", "::1", true},
		{"loopback", "::ffff:127.0.0.1", true},
		{"loopback", "192.0.2.1", false},
		{"loopback", "10.1.2.3", false},
		{"", "192.0.2.1", false},
		{"10.0.0.0/8", "10.1.2.3", true},
		{"10.0.0.0/8", "127.0.0.1", false},
		{"loopback,10.0.0.0/8", "127.0.0.1", true},
		{"2001:db8::/32", "2001:db8::1", true},
		{"any", "192.0.2.1", true},
	} {
		p, err := server.ParsePublishFrom(tt.setting)
		if err != nil {
			t.Fatalf("%q: %v", tt.setting, err)
		}
		if got := p.Allows(net.ParseIP(tt.ip)); got != tt.want {
			t.Errorf("publish_from %q allows %s = %v, want %v", tt.setting, tt.ip, got, tt.want)
		}
	}
	if _, err := server.ParsePublishFrom("10.0.0.0/33"); err == nil {
		t.Error("a bad prefix was accepted")
	}
}

// TestPublishTopicQuota: one address creates at most
// max_topics_per_publisher topics; ticks for its topics still land, a feed
// can still create topics, and an evicted topic gives its slot back.
func TestPublishTopicQuota(t *testing.T) {
	t.Parallel()
	clk := &clock{now: time.Now()}
	e := startServer(t, func(bc *stream.BusConfig, sc *server.Config) {
		bc.Now = clk.Now
		bc.TopicIdleEvict = time.Hour
		sc.MaxTopicsPerPublisher = 5
	})
	var lines []string
	for i := range 10 {
		lines = append(lines, fmt.Sprintf(`{"topic":"Q.%d","price":1}`, i))
	}
	var res publishAnswer
	status, raw := e.post("/api/publish", "application/x-ndjson", []byte(strings.Join(lines, "\n")), &res)
	if status != http.StatusOK || res.Accepted != 5 || len(res.Refused) != 5 {
		t.Fatalf("10 new topics: got %d %s, want 5 accepted, 5 refused", status, raw)
	}
	for _, r := range res.Refused {
		if !strings.HasPrefix(r.Error, server.CodeTopicQuota) {
			t.Errorf("refusal %q does not start with %s", r.Error, server.CodeTopicQuota)
		}
	}
	if n := e.metric("tickstream_limited_total"); n != 5 {
		t.Errorf("tickstream_limited_total = %v, want 5", n)
	}
	// Its own topics still take ticks; a feed still creates topics.
	if status, raw := e.post("/api/publish", "application/json", []byte(`[{"topic":"Q.0","price":2}]`), &res); status != 200 || res.Accepted != 1 {
		t.Fatalf("tick for an existing topic: %d %s", status, raw)
	}
	e.publish("FEED.1", 1, f("price", 1))
	// Idle topics go, and their slots come back.
	clk.add(2 * time.Hour)
	e.publish("FEED.1", 2, f("price", 1)) // FEED.1 stays: it just ticked
	if n := e.bus.EvictIdle(); n != 5 {
		t.Fatalf("evicted %d topics, want the 5 Q topics", n)
	}
	if status, raw := e.post("/api/publish", "application/x-ndjson", []byte(strings.Join(lines[5:], "\n")), &res); status != 200 || res.Accepted != 5 {
		t.Fatalf("5 new topics after eviction: %d %s, want all accepted", status, raw)
	}
}

// clock is a clock a test moves by hand.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// TestTopicsPaged: /api/topics answers pages of ?limit= after ?after=,
// with the next page's cursor while more follow.
func TestTopicsPaged(t *testing.T) {
	t.Parallel()
	e := startServer(t, nil)
	for i := range 25 {
		e.publish(fmt.Sprintf("T.%02d", i), 1, f("price", 1))
	}
	var seen []string
	after := ""
	for page := 0; ; page++ {
		if page > 5 {
			t.Fatal("pages never end")
		}
		req, _ := http.NewRequest(http.MethodGet, e.url("/api/topics?limit=10&after="+after), nil)
		resp, err := e.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var infos []struct {
			Topic string `json:"topic"`
		}
		if err := decodeJSON(resp, &infos); err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		for _, ti := range infos {
			seen = append(seen, ti.Topic)
		}
		next := resp.Header.Get("X-Tickstream-Next")
		if next == "" {
			if len(infos) != 5 {
				t.Fatalf("last page has %d topics, want 5", len(infos))
			}
			break
		}
		if len(infos) != 10 || next != infos[9].Topic || !strings.Contains(resp.Header.Get("Link"), `rel="next"`) {
			t.Fatalf("page %d: %d topics, next %q, Link %q", page, len(infos), next, resp.Header.Get("Link"))
		}
		after = next
	}
	if len(seen) != 25 || seen[0] != "T.00" || seen[24] != "T.24" {
		t.Fatalf("pages listed %v", seen)
	}
	e.expectAPIError(t, http.MethodGet, "/api/topics?limit=0", "", http.StatusBadRequest, "bad_request")
}

// TestPublishRatePerProducer: POST /api/publish requests past
// max_publish_per_sec from one producer are answered 429 rate_limited with
// a Retry-After, while another producer (another address) still publishes.
func TestPublishRatePerProducer(t *testing.T) {
	t.Parallel()
	e := startServer(t, func(_ *stream.BusConfig, sc *server.Config) { sc.MaxPublishPerSec = 2 }) // burst 4
	body := []byte(`{"topic":"PR","price":1}`)
	limited := 0
	for range 20 {
		var ae apiErr
		status, _ := e.post("/api/publish", "application/json", body, &ae)
		if status == http.StatusTooManyRequests {
			if ae.Error != protocol.CodeRateLimited {
				t.Fatalf("429 with code %q, want %s", ae.Error, protocol.CodeRateLimited)
			}
			limited++
		}
	}
	if limited < 10 {
		t.Fatalf("%d of 20 quick requests were limited, want most past the burst of 4", limited)
	}
	// Another address is another producer.
	req, _ := http.NewRequest(http.MethodPost, e.url("/api/publish"), bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	hc := httpFrom("127.0.0.77")
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("another producer got %d, want 200", resp.StatusCode)
	}
}
