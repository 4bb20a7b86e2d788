package websocket

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/coder/websocket"

	"github.com/tickstream/tickstream/feeds"
)

func init() { feeds.Register("websocket", New) }

// Options are the websocket feed's settings. See README.md for a table.
type Options struct {
	// URL is the exchange's WebSocket endpoint, ws:// or wss://. Required.
	URL string `yaml:"url"`
	// Format is how messages map to ticks: coinbase, binance or generic.
	// Required.
	Format string `yaml:"format"`
	// Symbols are the products to subscribe to (BTC-USD for Coinbase,
	// BTCUSDT for Binance). With coinbase and binance, the subscribe
	// message is built from them. Zero value means no built subscription
	// (Subscribe, or streams in the URL, say what to receive).
	Symbols []string `yaml:"symbols"`
	// Channels are what to subscribe to for each symbol: Coinbase channel
	// names, or Binance stream names without the symbol. Zero value means
	// [ticker, heartbeat] for coinbase (ticker carries the trade and the
	// best bid/ask; adding matches would count each trade's size twice)
	// and [trade, bookTicker] for binance.
	Channels []string `yaml:"channels"`
	// Subscribe are messages sent after connecting, in order, instead of
	// the built ones: a string is sent as is, anything else as JSON. Zero
	// value means the built subscription, if any.
	Subscribe []any `yaml:"subscribe"`
	// Rename maps exchange symbols to published topics, e.g.
	// {BTCUSDT: BTC-USD}. Zero value means symbols are kept.
	Rename map[string]string `yaml:"rename"`
	// Generic configures format generic.
	Generic GenericOptions `yaml:"generic"`
	// ReadTimeout is how long the connection may stay silent before the
	// feed reconnects. Zero value means 60 s.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// DialTimeout bounds connecting and subscribing. Zero value means
	// 10 s.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// MaxMessageBytes bounds one message. Zero value means 16 MiB, enough
	// for a full order-book snapshot.
	MaxMessageBytes int64 `yaml:"max_message_bytes"`
}

// Source is a WebSocket client feed. Each Run is one connection: it dials,
// subscribes and maps messages until the connection fails, then returns
// the error so that the supervisor reconnects with backoff (and the feed's
// state shows it).
type Source struct {
	name   string
	opts   Options
	mapper mapper
	subs   [][]byte
	log    *slog.Logger
	now    func() time.Time
}

var _ feeds.Source = (*Source)(nil)

// New builds a websocket source from its config.
var New = feeds.FactoryFor(NewSource)

// NewSource checks the options and builds the subscribe messages. It does
// no network I/O.
func NewSource(name string, o Options) (*Source, error) {
	bad := func(opt, format string, args ...any) error { return feeds.BadOption(name, opt, format, args...) }
	u, err := url.Parse(o.URL)
	switch {
	case o.URL == "":
		return nil, bad("url", "missing")
	case err != nil:
		return nil, bad("url", "%v", err)
	case u.Scheme != "ws" && u.Scheme != "wss":
		return nil, bad("url", "%q: want ws:// or wss://", o.URL)
	case u.Host == "":
		return nil, bad("url", "%q has no host", o.URL)
	case o.ReadTimeout < 0 || o.DialTimeout < 0 || o.MaxMessageBytes < 0:
		return nil, bad("read_timeout", "read_timeout, dial_timeout and max_message_bytes must not be negative")
	}
	if o.ReadTimeout == 0 {
		o.ReadTimeout = time.Minute
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = 10 * time.Second
	}
	if o.MaxMessageBytes == 0 {
		o.MaxMessageBytes = 16 << 20
	}
	for from, to := range o.Rename {
		if !feeds.ValidTopic(to) {
			return nil, bad("rename", "%s: %q is not a valid topic", from, to)
		}
	}
	s := &Source{name: name, opts: o, log: slog.Default().With("feed", name), now: time.Now}
	switch o.Format {
	case "coinbase":
		s.mapper = coinbase{}
		if len(o.Symbols) > 0 {
			channels := o.Channels
			if len(channels) == 0 {
				channels = []string{"ticker", "heartbeat"}
			}
			msg, _ := json.Marshal(map[string]any{"type": "subscribe", "product_ids": o.Symbols, "channels": channels})
			s.subs = [][]byte{msg}
		}
	case "binance":
		s.mapper = binance{}
		if len(o.Symbols) > 0 {
			channels := o.Channels
			if len(channels) == 0 {
				channels = []string{"trade", "bookTicker"}
			}
			var params []string
			for _, sym := range o.Symbols {
				for _, ch := range channels {
					params = append(params, strings.ToLower(sym)+"@"+ch)
				}
			}
			msg, _ := json.Marshal(map[string]any{"method": "SUBSCRIBE", "params": params, "id": 1})
			s.subs = [][]byte{msg}
		}
	case "generic":
		g, err := newGeneric(o.Generic)
		if err != nil {
			return nil, fmt.Errorf("feed %q: options.%w", name, err)
		}
		s.mapper = g
	case "":
		return nil, bad("format", "missing; want coinbase, binance or generic")
	default:
		return nil, bad("format", "%q: want coinbase, binance or generic", o.Format)
	}
	if o.Format != "generic" && (o.Generic.Topic != "" || len(o.Generic.Fields) > 0 || o.Generic.Each != "") {
		return nil, bad("generic", "set, but format is %q", o.Format)
	}
	if len(o.Subscribe) > 0 {
		s.subs = nil
		for i, m := range o.Subscribe {
			var b []byte
			if str, ok := m.(string); ok {
				b = []byte(str)
			} else if b, err = json.Marshal(m); err != nil {
				return nil, bad(fmt.Sprintf("subscribe[%d]", i), "%v", err)
			}
			s.subs = append(s.subs, b)
		}
	}
	return s, nil
}

// Name is the feed's name.
func (s *Source) Name() string { return s.name }

// maxLoggedErrors bounds the warnings about bad messages per connection;
// an exchange that changes its format should not flood the log.
const maxLoggedErrors = 5

// Run connects, subscribes and publishes ticks until ctx ends (nil), the
// bus is closed (nil) or the connection fails (an error naming the feed
// and its url, so that the supervisor reconnects with backoff and
// resubscribes). Messages it cannot map and ticks the bus refuses are
// skipped and counted as dropped.
func (s *Source) Run(ctx context.Context, out feeds.Sink) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("feed %q: options.url %s: %w", s.name, s.opts.URL, err)
		}
	}()
	dialCtx, cancel := context.WithTimeout(ctx, s.opts.DialTimeout)
	defer cancel()
	c, _, err := websocket.Dial(dialCtx, s.opts.URL, nil)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer c.CloseNow()
	c.SetReadLimit(s.opts.MaxMessageBytes)
	for _, m := range s.subs {
		if err := c.Write(dialCtx, websocket.MessageText, m); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("subscribe: %w", err)
		}
	}
	cancel()
	s.log.Info("websocket connected", "url", s.opts.URL, "subscriptions", len(s.subs))

	var (
		ticks []feeds.Tick
		bad   int
	)
	warn := func(msg string, args ...any) {
		if bad++; bad <= maxLoggedErrors {
			s.log.Warn(msg, args...)
		}
	}
	for {
		readCtx, cancel := context.WithTimeout(ctx, s.opts.ReadTimeout)
		_, data, err := c.Read(readCtx)
		timedOut := readCtx.Err() != nil
		cancel()
		switch {
		case ctx.Err() != nil:
			c.Close(websocket.StatusNormalClosure, "")
			return nil
		case timedOut:
			return fmt.Errorf("no message for %v", s.opts.ReadTimeout)
		case err != nil:
			return err
		}
		ticks, err = s.mapper.mapMessage(data, s.now(), ticks[:0])
		if ee := (*ExchangeError)(nil); errors.As(err, &ee) {
			return err
		} else if err != nil {
			// Not mapped: the whole message, or (ElementErrors) some of
			// its elements, whose siblings still become ticks.
			n := 1
			if pe := (*ElementErrors)(nil); errors.As(err, &pe) {
				n = pe.N
			}
			for range n {
				feeds.Drop(out, feeds.DropUnmapped, err)
			}
			warn("websocket: skipping message", "err", err, "message", truncate(data, 200))
		}
		for i := range ticks {
			t := &ticks[i]
			if to, ok := s.opts.Rename[t.Topic]; ok {
				t.Topic = to
			}
			// A refused tick (say a symbol that is not a valid topic) is
			// skipped; the supervisor's sink counts it.
			if err := feeds.Deliver(out, *t); err != nil {
				return feeds.Stopped(err)
			}
		}
	}
}

func truncate(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "…"
}
