package server

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"

	"github.com/gofiber/fiber/v2"

	"github.com/tickstream/tickstream/feeds"
	"github.com/tickstream/tickstream/stream"
	"github.com/tickstream/tickstream/stream/protocol"
)

// handleTopics answers a page of topics sorted by name: ?limit= (default
// 1000, at most 10000) after the name ?after=. When more follow, the
// X-Tickstream-Next header holds the after of the next page and a Link
// header its URL. With feeds that report sources (feeds.SourceReporter),
// each topic says which feed last published it and, if that feed is a
// backup standing in, for whom.
func (s *Server) handleTopics(c *fiber.Ctx) error {
	claims, err := s.authenticate(c)
	if err != nil {
		return err
	}
	limit, err := queryInt(c, "limit", 1000, 1, 10_000)
	if err != nil {
		return err
	}
	page, next := s.bus.TopicsAfter(c.Query("after"), int(limit))
	if next != "" {
		c.Set("X-Tickstream-Next", next)
		c.Set(fiber.HeaderLink, fmt.Sprintf("</api/topics?limit=%d&after=%s>; rel=\"next\"", limit, url.QueryEscape(next)))
	}
	if claims != nil {
		// A page holds only the topics the token may read (it may hold
		// fewer than limit; the next cursor still pages on).
		page = slices.DeleteFunc(page, func(t stream.TopicInfo) bool { return !claims.CanRead(t.Topic) })
	}
	if src, ok := s.cfg.Feeds.(feeds.SourceReporter); ok {
		for i := range page {
			page[i].Feed, page[i].BackupFor = src.SourceOf(page[i].Topic)
		}
	}
	return c.JSON(page)
}

// queryInt reads an optional whole-number query parameter within [lo, hi].
func queryInt(c *fiber.Ctx, name string, def, lo, hi int64) (int64, error) {
	v := c.Query(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < lo || n > hi {
		return 0, answered(apiError(c, fiber.StatusBadRequest, "bad_request", fmt.Sprintf("%s=%q: want a whole number from %d to %d", name, v, lo, hi)))
	}
	return n, nil
}

// topicParam reads the topic query parameter of a read API, which needs
// a right to read it when auth is on.
func (s *Server) topicParam(c *fiber.Ctx) (string, error) {
	claims, err := s.authenticate(c)
	if err != nil {
		return "", err
	}
	t := c.Query("topic")
	if !feeds.ValidTopic(t) {
		return "", answered(apiError(c, fiber.StatusBadRequest, protocol.CodeBadTopic, fmt.Sprintf("topic=%q: want 1-128 characters of [A-Za-z0-9._:/-]", t)))
	}
	if !canRead(claims, t) {
		return "", answered(forbidden(c, fmt.Sprintf("topic=%q: the token does not allow reading it", t)))
	}
	return t, nil
}

func lookupError(c *fiber.Ctx, err error) error {
	switch {
	case errors.Is(err, stream.ErrUnknownTopic):
		return apiError(c, fiber.StatusNotFound, protocol.CodeUnknownTopic, err.Error())
	case errors.Is(err, stream.ErrBadInterval):
		return apiError(c, fiber.StatusBadRequest, "bad_interval", err.Error())
	}
	return apiError(c, fiber.StatusInternalServerError, "internal", err.Error())
}

func (s *Server) handleHistory(c *fiber.Ctx) error {
	topic, err := s.topicParam(c)
	if err != nil {
		return err
	}
	after, err := queryInt(c, "after_seq", 0, 0, 1<<62)
	if err != nil {
		return err
	}
	limit, err := queryInt(c, "limit", 100, 1, 10_000)
	if err != nil {
		return err
	}
	h, err := s.bus.History(topic, uint64(after), int(limit))
	if err != nil {
		return lookupError(c, err)
	}
	return c.JSON(h)
}

func (s *Server) handleCandles(c *fiber.Ctx) error {
	topic, err := s.topicParam(c)
	if err != nil {
		return err
	}
	limit, err := queryInt(c, "limit", 500, 1, 100_000)
	if err != nil {
		return err
	}
	bars, seq, err := s.bus.CandlesSeq(topic, c.Query("interval", "1m"), int(limit))
	if err != nil {
		return lookupError(c, err)
	}
	// The bars hold exactly the ticks up to this seq: a chart folds in only
	// the live updates after it.
	c.Set("X-Tickstream-Seq", strconv.FormatUint(seq, 10))
	return c.JSON(bars)
}

// refusedTick says why one tick of a publish was refused.
type refusedTick struct {
	Line  int    `json:"line"` // 1-based line (NDJSON) or array index + 1
	Code  string `json:"code"`
	Error string `json:"error"`
}

type publishResult struct {
	Accepted   int               `json:"accepted"`
	Duplicates int               `json:"duplicates,omitempty"`
	Refused    []refusedTick     `json:"refused"`
	Seqs       map[string]uint64 `json:"seqs"`
}

// handlePublish accepts ticks as a JSON array or as NDJSON. Good ticks land
// even when others in the batch are refused; each refusal says why. An
// Idempotency-Key header makes the whole request idempotent, a "mid" in a
// tick that tick, within the producer's window (X-Producer-Id; see
// idemStore).
//
// Who may publish is checked first: with auth on the token's publish
// right, with auth off the peer's address (checkPublisher); then the
// content type, then each new topic against the address's topic quota.
func (s *Server) handlePublish(c *fiber.Ctx) error {
	claims, err := s.authenticate(c)
	if err != nil {
		return err
	}
	if claims == nil {
		if err := s.checkPublisher(c); err != nil {
			return err
		}
	}
	if err := s.checkPublishType(c); err != nil {
		return err
	}
	rateKey := "ip:" + c.IP()
	if claims != nil {
		rateKey = "sub:" + claims.Subject()
	}
	if !s.pubRates.allow(rateKey) {
		c.Set(fiber.HeaderRetryAfter, "1")
		return s.limited(c, fiber.StatusTooManyRequests, protocol.CodeRateLimited,
			fmt.Sprintf("more than %g publish requests a second from this producer (max_publish_per_sec): retry later", s.cfg.MaxPublishPerSec))
	}
	producer, allowed, perr := s.authorizePublish(claims, c.Get("X-Producer-Id"))
	if perr == nil && c.Get("X-Producer-Id") != "" && !protocol.ValidProducer(c.Get("X-Producer-Id")) {
		perr = &protocol.Error{Code: protocol.CodeBadProducer, Message: "X-Producer-Id: want 1-64 characters of [A-Za-z0-9._:-]"}
	}
	if perr != nil {
		status := fiber.StatusBadRequest
		if perr.Code == protocol.CodeForbidden {
			status = fiber.StatusForbidden
		}
		return apiError(c, status, perr.Code, perr.Message)
	}
	var batchMid json.RawMessage
	if key := c.Get("Idempotency-Key"); key != "" {
		batchMid, _ = json.Marshal(key)
		if !protocol.ValidMid(batchMid) {
			return apiError(c, fiber.StatusBadRequest, protocol.CodeBadMid, fmt.Sprintf("Idempotency-Key: at most %d bytes", protocol.MaxMidLen-2))
		}
	}
	body := bytes.TrimSpace(c.Body())
	if len(body) == 0 {
		return apiError(c, fiber.StatusBadRequest, "empty", "send ticks as a JSON array or as NDJSON, one tick per line")
	}
	var items []json.RawMessage
	var lines []int // the line (or array position) of each item
	if body[0] != '[' {
		// NDJSON: one item a line at most; size both lists once.
		n := bytes.Count(body, []byte{'\n'}) + 1
		items, lines = make([]json.RawMessage, 0, n), make([]int, 0, n)
	}
	res := publishResult{Refused: []refusedTick{}}
	split := func(line int, raw []byte, err error) {
		if err != nil {
			res.Refused = append(res.Refused, refusedTick{Line: line, Code: protocol.CodeBadJSON, Error: err.Error()})
			return
		}
		items = append(items, raw)
		lines = append(lines, line)
	}
	if err := ParsePublish(body, s.cfg.MaxPublishBytes, split); err != nil {
		return apiError(c, fiber.StatusBadRequest, "bad_json", err.Error())
	}
	r := s.publishTicks(producer, allowed, c.IP(), batchMid, items)
	res.Accepted, res.Duplicates, res.Seqs = r.Accepted, r.Duplicates, r.Seqs
	for _, f := range r.Refused {
		res.Refused = append(res.Refused, refusedTick{Line: lines[f.Index], Code: f.Code, Error: f.Error})
	}
	slices.SortStableFunc(res.Refused, func(a, b refusedTick) int { return cmp.Compare(a.Line, b.Line) })
	status := fiber.StatusOK
	if res.Accepted == 0 && len(res.Refused) > 0 {
		status = fiber.StatusBadRequest
		if slices.ContainsFunc(res.Refused, func(r refusedTick) bool { return r.Code == protocol.CodeForbidden }) {
			status = fiber.StatusForbidden
		}
	}
	return c.Status(status).JSON(res)
}

// errTopicQuota refuses a tick for a new topic from an address that has
// created MaxTopicsPerPublisher topics already.
var errTopicQuota = errors.New(CodeTopicQuota)

// ParsePublish splits a publish body, a JSON array of ticks or NDJSON (one
// tick per line); fn gets each item's 1-based line (or array position)
// and its raw JSON, or why that line cannot be one (too long). It returns
// an error only for a body that starts with [ but is not a JSON array.
// maxLine bounds an NDJSON line. Each item is then parsed like a tick of
// a WebSocket publish (publishTicks), so both refuse the same way.
func ParsePublish(body []byte, maxLine int, fn func(line int, raw []byte, err error)) error {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil
	}
	if body[0] == '[' {
		var items []json.RawMessage
		if err := json.Unmarshal(body, &items); err != nil {
			return errors.New("the body starts with [ but is not a JSON array: " + err.Error())
		}
		for i, raw := range items {
			fn(i+1, raw, nil)
		}
		return nil
	}
	// The body is in memory: split it in place (a Scanner would allocate
	// a 64 KiB buffer per request).
	rest := body
	for line := 1; len(rest) > 0; line++ {
		raw := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			raw, rest = rest[:i], rest[i+1:]
		} else {
			rest = nil
		}
		if len(raw) > maxLine {
			fn(line, nil, fmt.Errorf("line too long: %d bytes, at most %d", len(raw), maxLine))
			continue
		}
		raw = bytes.TrimSpace(raw)
		if len(raw) == 0 {
			continue
		}
		fn(line, raw, nil)
	}
	return nil
}

func (s *Server) handleFeeds(c *fiber.Ctx) error {
	if s.cfg.Feeds == nil {
		return c.JSON([]feeds.Status{})
	}
	return c.JSON(s.cfg.Feeds.Statuses())
}

func (s *Server) handleReady(c *fiber.Ctx) error {
	ready := !s.draining.Load() && (s.cfg.Feeds == nil || s.cfg.Feeds.Ready())
	var sts []feeds.Status
	if s.cfg.Feeds != nil {
		sts = s.cfg.Feeds.Statuses()
	}
	status := fiber.StatusOK
	if !ready {
		status = fiber.StatusServiceUnavailable
	}
	return c.Status(status).JSON(fiber.Map{"ready": ready, "draining": s.draining.Load(), "feeds": sts})
}
