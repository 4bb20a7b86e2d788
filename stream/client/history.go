package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/tickstream/tickstream/feeds/tick"
)

// HistoryTick is one raw tick of a history page: its own fields, as
// published (not merged with earlier ticks).
type HistoryTick struct {
	Seq  uint64              `json:"seq"`
	TS   int64               `json:"ts"`
	Data map[string]tick.Num `json:"data"`
}

// History is one page of GET /api/history.
type History struct {
	Topic  string        `json:"topic"`
	Epoch  string        `json:"epoch"`
	Oldest uint64        `json:"oldest_seq"` // oldest seq the server still keeps
	Last   uint64        `json:"last_seq"`   // the topic's current seq
	Ticks  []HistoryTick `json:"ticks"`
}

// APIError is an HTTP API answer other than 200, with the server's JSON
// error body ({"error": code, "message": …}) when it had one.
type APIError struct {
	Status  int
	Code    string `json:"error"`
	Message string `json:"message"`
}

func (e *APIError) Error() string {
	return fmt.Sprintf("client: HTTP %d: %s: %s", e.Status, e.Code, e.Message)
}

// ErrEpochChanged: Backfill found the topic in another epoch than the
// one asked for; its seqs say nothing about the ticks asked for.
var ErrEpochChanged = errors.New("client: the topic's epoch changed")

// HistoryPageSize is how many ticks Backfill asks for per request.
const HistoryPageSize = 1000

// historyEndpoint is the /api/history URL of the server behind a /ws URL.
type historyEndpoint struct {
	url    url.URL
	http   *http.Client
	header http.Header
}

// newHistoryEndpoint derives the HTTP base from a WebSocket URL: ws → http,
// wss → https, and a path ending in /ws is replaced by /api/history (so a
// prefix a proxy adds is kept). The URL's query (a token, say) is kept.
func newHistoryEndpoint(wsURL string, hc *http.Client, header http.Header) (historyEndpoint, error) {
	u, err := url.Parse(wsURL)
	if err != nil {
		return historyEndpoint{}, fmt.Errorf("client: URL %q: %w", wsURL, err)
	}
	switch u.Scheme {
	case "ws", "http":
		u.Scheme = "http"
	case "wss", "https":
		u.Scheme = "https"
	default:
		return historyEndpoint{}, fmt.Errorf("client: URL %q: want ws:// or wss://", wsURL)
	}
	u.Path = strings.TrimSuffix(strings.TrimSuffix(u.Path, "/"), "/ws") + "/api/history"
	u.RawPath, u.Fragment = "", ""
	return historyEndpoint{url: *u, http: hc, header: header}, nil
}

// HistoryURL is the /api/history URL that History and Backfill use.
func (c *Conn) HistoryURL() string { return c.hist.url.String() }

// History fetches one page of GET /api/history: up to limit raw ticks of
// topic after seq afterSeq (the server caps limit at 10000). Ticks older
// than the server's history are gone: a page then starts at Oldest.
func (c *Conn) History(ctx context.Context, topic string, afterSeq uint64, limit int) (History, error) {
	return c.hist.page(ctx, topic, afterSeq, limit)
}

// Backfill calls fn, in seq order, for every tick of topic with
// afterSeq < seq <= upTo that the server's history still holds, paging
// through /api/history. It returns the first page, whose Oldest says what
// history no longer had (seqs afterSeq+1 to Oldest-1 are gone), and stops
// at fn's first error. If epoch is not empty and the topic is in another
// epoch, it calls fn for nothing and returns an error wrapping
// ErrEpochChanged.
func (c *Conn) Backfill(ctx context.Context, topic, epoch string, afterSeq, upTo uint64, fn func(HistoryTick) error) (History, error) {
	var first History
	for pageNo := 0; afterSeq < upTo; pageNo++ {
		h, err := c.hist.page(ctx, topic, afterSeq, int(min(upTo-afterSeq, HistoryPageSize)))
		if err != nil {
			return first, err
		}
		if pageNo == 0 {
			first = h
		}
		if epoch != "" && h.Epoch != epoch {
			return first, fmt.Errorf("%w: %s is in epoch %q, not %q", ErrEpochChanged, topic, h.Epoch, epoch)
		}
		from := afterSeq
		for _, t := range h.Ticks {
			if t.Seq <= afterSeq {
				continue
			}
			if t.Seq > upTo {
				return first, nil
			}
			if err := fn(t); err != nil {
				return first, err
			}
			afterSeq = t.Seq
		}
		if afterSeq == from {
			break // nothing newer is kept
		}
	}
	return first, nil
}

func (e historyEndpoint) page(ctx context.Context, topic string, afterSeq uint64, limit int) (History, error) {
	u := e.url
	q := u.Query()
	q.Set("topic", topic)
	q.Set("after_seq", strconv.FormatUint(afterSeq, 10))
	q.Set("limit", strconv.Itoa(limit))
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return History{}, err
	}
	for k, v := range e.header {
		req.Header[k] = v
	}
	resp, err := e.http.Do(req)
	if err != nil {
		return History{}, fmt.Errorf("client: history: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return History{}, fmt.Errorf("client: history: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		ae := &APIError{Status: resp.StatusCode}
		if json.Unmarshal(body, ae) != nil || ae.Code == "" {
			ae.Code, ae.Message = http.StatusText(resp.StatusCode), string(body)
		}
		return History{}, ae
	}
	var h History
	if err := json.Unmarshal(body, &h); err != nil {
		return History{}, fmt.Errorf("client: history: %w", err)
	}
	return h, nil
}
