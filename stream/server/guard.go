package server

import (
	"fmt"
	"mime"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"golang.org/x/time/rate"
)

// Limit codes: the "error" of the JSON body of an HTTP refusal, and the
// limit label of tickstream_limited_total.
const (
	CodeForbiddenPublisher = "forbidden_publisher"    // publish from an address publish_from does not allow
	CodeForbiddenOrigin    = "forbidden_origin"       // an Origin allowed_origins does not allow
	CodeUnsupportedMedia   = "unsupported_media_type" // publish that is not JSON or NDJSON
	CodeTooManyConns       = "too_many_connections"   // max_conns_per_ip or max_conns
	CodeBusy               = "busy"                   // a connection-rate bucket is empty
	CodeTopicQuota         = "topic_quota"            // max_topics_per_publisher
)

// PublishFrom is who may POST /api/publish while auth is off.
type PublishFrom struct {
	any      bool
	loopback bool
	nets     []netip.Prefix
}

// ParsePublishFrom parses a publish_from setting: "loopback", "any", or a
// comma-separated list of CIDR prefixes and "loopback".
func ParsePublishFrom(s string) (PublishFrom, error) {
	var p PublishFrom
	for _, f := range strings.Split(s, ",") {
		switch f = strings.TrimSpace(f); f {
		case "":
		case "loopback":
			p.loopback = true
		case "any":
			p.any = true
		default:
			pfx, err := netip.ParsePrefix(f)
			if err != nil {
				if a, aerr := netip.ParseAddr(f); aerr == nil {
					pfx = netip.PrefixFrom(a, a.BitLen())
				} else {
					return p, fmt.Errorf("%q: want loopback, any, or CIDR prefixes such as 10.0.0.0/8", f)
				}
			}
			p.nets = append(p.nets, pfx.Masked())
		}
	}
	if !p.any && !p.loopback && len(p.nets) == 0 {
		p.loopback = true
	}
	return p, nil
}

func (p PublishFrom) isZero() bool { return !p.any && !p.loopback && len(p.nets) == 0 }

// Allows says whether ip may publish.
func (p PublishFrom) Allows(ip net.IP) bool {
	if p.any {
		return true
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return false
	}
	a = a.Unmap()
	if p.loopback && a.IsLoopback() {
		return true
	}
	for _, n := range p.nets {
		if n.Contains(a) {
			return true
		}
	}
	return false
}

// checkPublisher decides whether the request may publish. With auth off
// this is the publish_from address check; an authorizer (a publish right
// in the request's token) takes its place when auth is on.
//
// A request that a proxy forwarded (it has Forwarded, X-Forwarded-For or
// X-Real-IP) is not local even when the proxy is: loopback does not let
// it in, so that nginx on the same machine does not open publishing to
// the world.
func (s *Server) checkPublisher(c *fiber.Ctx) error {
	p := s.cfg.PublishFrom
	if proxied(c) {
		p.loopback = false
	}
	if !p.Allows(c.Context().RemoteIP()) {
		return s.limited(c, fiber.StatusForbidden, CodeForbiddenPublisher,
			"publishing is allowed only from "+s.publishFromText()+" while auth is off; turn auth on (see README, Deploying) or widen publish_from")
	}
	return nil
}

func proxied(c *fiber.Ctx) bool {
	return c.Get("Forwarded") != "" || c.Get(fiber.HeaderXForwardedFor) != "" || c.Get("X-Real-IP") != ""
}

func (s *Server) publishFromText() string {
	p := s.cfg.PublishFrom
	var parts []string
	if p.loopback {
		parts = append(parts, "loopback")
	}
	for _, n := range p.nets {
		parts = append(parts, n.String())
	}
	return strings.Join(parts, ", ")
}

// checkPublishType refuses a publish body that is not declared JSON or
// NDJSON: a web page can send text/plain or a form cross-site without a
// CORS preflight, but not these.
func (s *Server) checkPublishType(c *fiber.Ctx) error {
	mt, _, err := mime.ParseMediaType(c.Get(fiber.HeaderContentType))
	if err == nil && (mt == "application/json" || mt == "application/x-ndjson") {
		return nil
	}
	return s.limited(c, fiber.StatusUnsupportedMediaType, CodeUnsupportedMedia,
		"send ticks with Content-Type: application/json (an array) or application/x-ndjson (one tick per line)")
}

// limited answers a refusal by a limit and counts it.
func (s *Server) limited(c *fiber.Ctx, status int, code, msg string) error {
	s.bus.Metrics().Limited(code)
	return answered(apiError(c, status, code, msg))
}

// Origins is the allowed_origins setting.
type Origins struct {
	parsed    bool
	any       bool
	localhost bool
	list      map[string]bool // scheme://host[:port], lower case
}

// ParseOrigins parses allowed_origins: a comma-separated list of origins
// (https://app.example.com), "localhost" (any port of localhost,
// 127.0.0.1 or [::1]) and "*" (any origin). The request's own host is
// always allowed.
func ParseOrigins(s string) (Origins, error) {
	o := Origins{parsed: true, list: make(map[string]bool)}
	for _, f := range strings.Split(s, ",") {
		switch f = strings.TrimSpace(f); f {
		case "":
		case "*":
			o.any = true
		case "localhost":
			o.localhost = true
		default:
			u, err := url.Parse(f)
			if err != nil || u.Scheme == "" || u.Host == "" || (u.Path != "" && u.Path != "/") {
				return o, fmt.Errorf("%q: want an origin such as https://app.example.com, localhost or *", f)
			}
			o.list[strings.ToLower(u.Scheme+"://"+u.Host)] = true
		}
	}
	return o, nil
}

// allows says whether a request with this Origin header, for host (the
// request's Host header), may proceed. No Origin header is not a browser's
// cross-site request: it is allowed.
func (o Origins) allows(origin, host string) bool {
	if origin == "" || o.any {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	if strings.EqualFold(u.Host, host) {
		return true
	}
	if o.localhost {
		switch strings.ToLower(u.Hostname()) {
		case "localhost", "127.0.0.1", "::1":
			return true
		}
	}
	return o.list[strings.ToLower(u.Scheme+"://"+u.Host)]
}

// checkOrigin refuses a request whose Origin is not allowed.
func (s *Server) checkOrigin(c *fiber.Ctx) error {
	if s.cfg.AllowedOrigins.allows(c.Get(fiber.HeaderOrigin), c.Hostname()) {
		return nil
	}
	return s.limited(c, fiber.StatusForbidden, CodeForbiddenOrigin,
		"origin "+c.Get(fiber.HeaderOrigin)+" is not allowed; add it to allowed_origins")
}

// cors answers CORS for /api: allowed origins get the headers (and
// preflights a 204); a state-changing request from another origin is
// refused with 403.
func (s *Server) cors(c *fiber.Ctx) error {
	origin := c.Get(fiber.HeaderOrigin)
	if origin == "" {
		return c.Next()
	}
	if !s.cfg.AllowedOrigins.allows(origin, c.Hostname()) {
		if c.Method() == fiber.MethodGet || c.Method() == fiber.MethodHead {
			return c.Next() // no CORS headers: the browser keeps the answer from the page
		}
		return s.checkOrigin(c)
	}
	c.Set(fiber.HeaderAccessControlAllowOrigin, origin)
	c.Vary(fiber.HeaderOrigin)
	if c.Method() == fiber.MethodOptions {
		c.Set(fiber.HeaderAccessControlAllowMethods, "GET, POST, OPTIONS")
		c.Set(fiber.HeaderAccessControlAllowHeaders, "Content-Type, Authorization, Last-Event-ID")
		c.Set(fiber.HeaderAccessControlMaxAge, "600")
		return c.SendStatus(fiber.StatusNoContent)
	}
	c.Set(fiber.HeaderAccessControlExposeHeaders, "X-Tickstream-Seq, X-Tickstream-Next, Link, Retry-After")
	return c.Next()
}

// clients tracks, per client address, the open streams and a
// connection-rate bucket. The map is bounded: past maxClients addresses,
// those with no open stream and a full bucket (the same as a fresh one)
// go first, then any with no open stream.
type clients struct {
	mu      sync.Mutex
	m       map[string]*client
	total   int
	rate    rate.Limit
	burst   int
	maxSize int
}

type client struct {
	lim   *rate.Limiter
	conns int
}

const maxClients = 100_000

func newClients(r float64, burst int) *clients {
	return &clients{m: make(map[string]*client), rate: rate.Limit(r), burst: burst, maxSize: maxClients}
}

// getLocked returns ip's entry, making room for it.
func (cs *clients) getLocked(ip string, now time.Time) *client {
	if c := cs.m[ip]; c != nil {
		return c
	}
	if len(cs.m) >= cs.maxSize {
		cs.evictLocked(now)
	}
	c := &client{lim: rate.NewLimiter(cs.rate, cs.burst)}
	cs.m[ip] = c
	return c
}

func (cs *clients) evictLocked(now time.Time) {
	target := cs.maxSize * 9 / 10
	for ip, c := range cs.m {
		if len(cs.m) <= target {
			return
		}
		if c.conns == 0 && c.lim.TokensAt(now) >= float64(cs.burst) {
			delete(cs.m, ip)
		}
	}
	for ip, c := range cs.m { // still full: forget some recent ones
		if len(cs.m) <= target {
			return
		}
		if c.conns == 0 {
			delete(cs.m, ip)
		}
	}
}

// allow takes a token from ip's bucket.
func (cs *clients) allow(ip string) bool {
	now := time.Now()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.getLocked(ip, now).lim.AllowN(now, 1)
}

// count returns ip's open streams and the total.
func (cs *clients) count(ip string) (int, int) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	n := 0
	if c := cs.m[ip]; c != nil {
		n = c.conns
	}
	return n, cs.total
}

// add counts a stream of ip if both limits leave room.
func (cs *clients) add(ip string, perIP, total int) bool {
	now := time.Now()
	cs.mu.Lock()
	defer cs.mu.Unlock()
	c := cs.getLocked(ip, now)
	if c.conns >= perIP || cs.total >= total {
		return false
	}
	c.conns++
	cs.total++
	return true
}

func (cs *clients) done(ip string) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if c := cs.m[ip]; c != nil && c.conns > 0 {
		c.conns--
		cs.total--
	}
}

// topicQuota counts the topics each client address created through
// publish (MaxTopicsPerPublisher); an evicted topic gives its slot back.
type topicQuota struct {
	mu    sync.Mutex
	max   int
	owner map[string]string // topic → address that created it
	n     map[string]int    // address → topics it created
}

func newTopicQuota(max int) *topicQuota {
	return &topicQuota{max: max, owner: make(map[string]string), n: make(map[string]int)}
}

// reserve counts topic for ip, unless ip has created max topics already.
func (q *topicQuota) reserve(ip, topic string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if _, ok := q.owner[topic]; ok {
		return true
	}
	if q.n[ip] >= q.max {
		return false
	}
	q.owner[topic] = ip
	q.n[ip]++
	return true
}

// release gives topic's slot back to the address that created it.
func (q *topicQuota) release(topic string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	ip, ok := q.owner[topic]
	if !ok {
		return
	}
	delete(q.owner, topic)
	if q.n[ip]--; q.n[ip] <= 0 {
		delete(q.n, ip)
	}
}
