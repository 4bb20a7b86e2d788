package nats

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/tickstream/tickstream/feeds"
)

func init() { feeds.Register("nats", New) }

// Options are the nats feed's settings. See README.md for a table.
type Options struct {
	// URL is the NATS server, e.g. nats://user:pass@host:4222; a comma
	// separated list names several servers of one cluster. Zero value
	// means nats://127.0.0.1:4222.
	URL string `yaml:"url"`
	// Subjects to subscribe to; wildcards (* and >) are allowed.
	// Required.
	Subjects []string `yaml:"subjects"`
	// Queue is a queue group, so that several tickstream nodes share the
	// messages instead of each getting all of them. Zero value means no
	// queue group.
	Queue string `yaml:"queue"`
	// SubjectTopic uses the subject as the topic when the JSON has no
	// "topic". Zero value means such messages are refused.
	SubjectTopic bool `yaml:"subject_topic"`
	// StripPrefix is removed from the subject before it is used as a
	// topic, e.g. "ticks." turns ticks.BTC-USD into BTC-USD. Zero value
	// means the whole subject.
	StripPrefix string `yaml:"strip_prefix"`
	// Rename maps topics to published topics. Zero value means topics are
	// kept.
	Rename map[string]string `yaml:"rename"`
	// Token authenticates with a token. Zero value means none (or what
	// the URL carries).
	Token string `yaml:"token"`
	// CredsFile is a NATS credentials file (JWT and nkey). Zero value
	// means none.
	CredsFile string `yaml:"creds_file"`
	// ConnectTimeout bounds connecting. Zero value means 5 s.
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	// Buffer is how many messages may wait for the feed; past it the NATS
	// client drops messages and logs a slow-consumer error. Zero value
	// means 65536, about a second of a busy market.
	Buffer int `yaml:"buffer"`
}

// Source subscribes to NATS subjects.
type Source struct {
	name string
	opts Options
	log  *slog.Logger
}

var _ feeds.Source = (*Source)(nil)

// New builds a nats source from its config.
var New = feeds.FactoryFor(NewSource)

// NewSource checks the options. It does no network I/O.
func NewSource(name string, o Options) (*Source, error) {
	bad := func(opt, format string, args ...any) error { return feeds.BadOption(name, opt, format, args...) }
	if o.URL == "" {
		o.URL = natsgo.DefaultURL
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = 5 * time.Second
	}
	if o.Buffer == 0 {
		o.Buffer = 1 << 16
	}
	switch {
	case len(o.Subjects) == 0:
		return nil, bad("subjects", "missing; give at least one subject, e.g. ticks.>")
	case o.ConnectTimeout < 0:
		return nil, bad("connect_timeout", "%v is negative", o.ConnectTimeout)
	case o.Buffer < 0:
		return nil, bad("buffer", "%d is negative", o.Buffer)
	case o.StripPrefix != "" && !o.SubjectTopic:
		return nil, bad("strip_prefix", "set, but subject_topic is false")
	}
	for _, u := range strings.Split(o.URL, ",") {
		if !strings.Contains(u, "://") {
			return nil, bad("url", "%q: want nats://host:port", u)
		}
	}
	for i, s := range o.Subjects {
		if !validSubject(s) {
			return nil, bad(fmt.Sprintf("subjects[%d]", i), "%q is not a valid subject", s)
		}
	}
	for from, to := range o.Rename {
		if !feeds.ValidTopic(to) {
			return nil, bad("rename", "%s: %q is not a valid topic", from, to)
		}
	}
	return &Source{name: name, opts: o, log: slog.Default().With("feed", name)}, nil
}

// validSubject checks tokens separated by dots: not empty, no spaces, with
// ">" only as the last token.
func validSubject(s string) bool {
	if s == "" || strings.ContainsAny(s, " \t\r\n") {
		return false
	}
	toks := strings.Split(s, ".")
	for i, t := range toks {
		if t == "" || (t == ">" && i != len(toks)-1) || (strings.ContainsAny(t, "*>") && len(t) > 1) {
			return false
		}
	}
	return true
}

// Name is the feed's name.
func (s *Source) Name() string { return s.name }

// maxLoggedErrors bounds warnings about bad messages per connection.
const maxLoggedErrors = 5

// Run connects, subscribes and publishes every valid tick until ctx ends
// (nil), the bus is closed (nil) or the connection is lost (an error
// naming the feed and its url). Invalid messages and refused ticks are
// skipped, logged and counted as dropped.
func (s *Source) Run(ctx context.Context, out feeds.Sink) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("feed %q: options.url %s: %w", s.name, redact(s.opts.URL), err)
		}
	}()
	closed := make(chan struct{})
	asyncErr := make(chan error, 1)
	opts := []natsgo.Option{
		natsgo.Name("tickstream feed " + s.name),
		natsgo.Timeout(s.opts.ConnectTimeout),
		// The supervisor reconnects, so that an outage shows in the
		// feed's state instead of hiding inside the client.
		natsgo.NoReconnect(),
		natsgo.ClosedHandler(func(*natsgo.Conn) { close(closed) }),
		natsgo.ErrorHandler(func(_ *natsgo.Conn, sub *natsgo.Subscription, err error) {
			if errors.Is(err, natsgo.ErrSlowConsumer) {
				s.log.Warn("nats: dropping messages, the feed cannot keep up", "err", err)
				return
			}
			select {
			case asyncErr <- err:
			default:
			}
		}),
	}
	if s.opts.Token != "" {
		opts = append(opts, natsgo.Token(s.opts.Token))
	}
	if s.opts.CredsFile != "" {
		opts = append(opts, natsgo.UserCredentials(s.opts.CredsFile))
	}
	nc, err := natsgo.Connect(s.opts.URL, opts...)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer func() {
		nc.Close()
		// Wait until the client's goroutines are done with our callbacks,
		// but never hang a shutdown on it.
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
		}
	}()
	msgs := make(chan *natsgo.Msg, s.opts.Buffer)
	for _, subj := range s.opts.Subjects {
		var err error
		if s.opts.Queue != "" {
			_, err = nc.ChanQueueSubscribe(subj, s.opts.Queue, msgs)
		} else {
			_, err = nc.ChanSubscribe(subj, msgs)
		}
		if err != nil {
			return fmt.Errorf("subscribe %q: %w", subj, err)
		}
	}
	if err := nc.FlushTimeout(s.opts.ConnectTimeout); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	s.log.Info("nats subscribed", "url", redact(s.opts.URL), "subjects", s.opts.Subjects)
	bad := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-closed:
			if ctx.Err() != nil {
				return nil
			}
			if e := nc.LastError(); e != nil {
				return fmt.Errorf("connection closed: %w", e)
			}
			return errors.New("connection closed")
		case err := <-asyncErr:
			return err
		case m := <-msgs:
			t, err := s.decode(m.Subject, m.Data)
			if err != nil {
				// Not a tick: skipped and counted as dropped.
				feeds.Drop(out, feeds.DropUnmapped, err)
				if bad++; bad <= maxLoggedErrors {
					s.log.Warn("nats: skipping message", "subject", m.Subject, "err", err)
				}
				continue
			}
			// A refused tick is skipped (the supervisor's sink counts
			// it); a closed bus ends the feed.
			if err := feeds.Deliver(out, t); err != nil {
				if errors.Is(err, feeds.ErrClosed) {
					return nil
				}
				return err
			}
		}
	}
}

// decode parses one message. With SubjectTopic, the subject is put in
// front of the object as its "topic"; JSON objects keep the last of
// duplicate keys, so a topic in the message still wins.
func (s *Source) decode(subject string, data []byte) (feeds.Tick, error) {
	if s.opts.SubjectTopic {
		body := bytes.TrimSpace(data)
		if len(body) > 0 && body[0] == '{' {
			q, _ := json.Marshal(strings.TrimPrefix(subject, s.opts.StripPrefix))
			rest := bytes.TrimSpace(body[1:])
			b := make([]byte, 0, len(data)+len(q)+12)
			b = append(b, `{"topic":`...)
			b = append(b, q...)
			if len(rest) > 0 && rest[0] != '}' {
				b = append(b, ',')
			}
			data = append(b, rest...)
		}
	}
	t, err := feeds.ParseTick(data)
	if err != nil {
		return t, err
	}
	if to, ok := s.opts.Rename[t.Topic]; ok {
		t.Topic = to
	}
	return t, nil
}

// redact hides a password in a URL for logs and errors.
func redact(u string) string {
	if at := strings.LastIndex(u, "@"); at >= 0 {
		if i := strings.Index(u, "://"); i >= 0 && i < at {
			return u[:i+3] + "***" + u[at:]
		}
	}
	return u
}
